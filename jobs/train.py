"""Ray job: train the conductor with GRPO (`ray-conductor train`).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train.py config=train_cpu iterations=20

On a cluster the job joins it (`ray.address=auto` when RAY_ADDRESS is set, see _entry.py).
"""

from _entry import run

if __name__ == "__main__":
    run("train")
