"""Ray job: retrain the served conductor on its traffic (`ray-conductor retrain`).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/retrain.py key=value ...
"""

from _entry import run

if __name__ == "__main__":
    run("retrain")
