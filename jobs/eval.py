"""Ray job entrypoint: evaluate policies on a replay pool.

    ray job submit --working-dir . -- python jobs/eval.py pool=demo backend=ray
"""

import os
import sys

from ray_conductor.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if os.environ.get("RAY_ADDRESS") and not any(a.startswith("ray.address=") for a in args):
        args.append("ray.address=auto")
    sys.exit(main(["eval", *args]))
