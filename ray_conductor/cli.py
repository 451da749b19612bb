"""`ray-conductor COMMAND key=value ...`: the one entry point for people and Ray jobs.

Commands: eval, import, train. Each takes `config=FILE` (a YAML under configs/) and
`key=value` overrides. Errors in what the user gave print one line and exit 2.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence

from ray_conductor.config import load
from ray_conductor.errors import ConductorError


def _eval(argv: Sequence[str]) -> None:
    from ray_conductor.eval.command import EvalConfig, run_eval

    run_eval(load(EvalConfig, argv))


def _import(argv: Sequence[str]) -> None:
    from ray_conductor.data.commands import ImportConfig, run_import

    run_import(load(ImportConfig, argv))


def _train(argv: Sequence[str]) -> None:
    from ray_conductor.rl.trainer import TrainConfig, train

    train(load(TrainConfig, argv, defaults="train_cpu"))


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], None], str]] = {
    "eval": (_eval, "evaluate policies on a replay pool: pool=... policies=[...] split=test"),
    "import": (_import, "import recorded outputs into the canonical table: pool=... out=..."),
    "train": (_train, "train the conductor with GRPO on Ray: config=train_cpu key=value ..."),
}


def usage() -> str:
    lines = ["usage: ray-conductor COMMAND [config=FILE] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"ray-conductor: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        COMMANDS[cmd][0](rest)
    except ConductorError as e:
        print(f"ray-conductor {cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
