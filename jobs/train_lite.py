"""Ray job: train the lite conductor on a replay pool (`ray-conductor train-lite`).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train_lite.py pool=demo run_dir=runs/lite
"""

from _entry import run

if __name__ == "__main__":
    run("train-lite")
