"""Ray job: evaluate policies on a replay pool (`ray-conductor eval`).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/evaluate.py pool=demo split=test backend=ray
"""

from _entry import run

if __name__ == "__main__":
    run("eval")
