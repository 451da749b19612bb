"""What every job script shares: run one `ray-conductor` command as a Ray job.

`ray job submit` gives the entrypoint RAY_ADDRESS; a job then joins the cluster it was
submitted to (`ray.address=auto`, also over a `config=` file's address) instead of starting a
second Ray inside it. Every other argument is the command's `key=value` overrides, exactly as
on the command line, so `python jobs/NAME.py ...` and `ray-conductor COMMAND ...` are one thing.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Mapping, Sequence


def _takes_ray_config(command: str) -> bool:
    """Whether the command's config has a `ray:` group (an unknown command: False, and the
    CLI itself then says it is unknown)."""
    from ray_conductor.cli import COMMANDS

    if command not in COMMANDS:
        return False
    schema = COMMANDS[command].schema
    if isinstance(schema, str):
        module, name = schema.split(":")
        try:
            schema = getattr(importlib.import_module(module), name)
        except ImportError:  # the CLI reports it, as one line and a log file
            return False
    return any(f.name == "ray" for f in dataclasses.fields(schema))


def job_argv(command: str, args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The CLI's argv for `command`: the job's arguments, plus `ray.address=auto` when the job
    runs on a cluster (RAY_ADDRESS set) and the arguments do not name an address."""
    args = list(args)
    on_cluster = bool(env.get("RAY_ADDRESS"))
    if on_cluster and not any(a.startswith("ray.address=") for a in args) \
            and _takes_ray_config(command):
        args.append("ray.address=auto")
    return [command, *args]


def run(command: str) -> None:
    from ray_conductor.cli import main

    sys.exit(main(job_argv(command, sys.argv[1:], os.environ)))
