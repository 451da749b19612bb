"""Ray job entrypoint: train the conductor.

    ray job submit --working-dir . -- python jobs/train.py config=train_cpu iterations=20

On a cluster the job joins it (`ray.address=auto` is the default when RAY_ADDRESS is set).
"""

import os
import sys

from ray_conductor.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if os.environ.get("RAY_ADDRESS") and not any(a.startswith("ray.address=") for a in args):
        args.append("ray.address=auto")
    sys.exit(main(["train", *args]))
