"""Ray job entrypoint: serve the conductor on a running cluster until the job is stopped.

    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- \
        python jobs/serve.py host=0.0.0.0 api_keys_file=/secrets/keys.txt \
        policy=registry:/models/registry

Takes the same `config=FILE` and `key=value` arguments as `ray-conductor serve`
(defaults: configs/serve.yaml). `ray job stop` deletes the app and flushes its traffic log.
"""

import os
import sys

from ray_conductor.config import load
from ray_conductor.errors import ConductorError
from ray_conductor.serve.command import ServeConfig, run_serve


def main(argv: list[str]) -> int:
    args = list(argv)
    if os.environ.get("RAY_ADDRESS") and not any(a.startswith("ray.address=") for a in args):
        args.append("ray.address=auto")
    try:
        run_serve(load(ServeConfig, args, defaults="serve"))
    except ConductorError as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
