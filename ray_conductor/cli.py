"""`ray-conductor COMMAND key=value ...`: the one entry point for people and Ray jobs.

Commands are a registry (`COMMANDS`): each names its config dataclass and its run function,
as objects or as "module:name" strings imported only when the command runs (so the CLI starts
without torch). Each takes `config=FILE` (a YAML under configs/) and `key=value` overrides;
`COMMAND --help` is generated from the dataclass: every key with its type, default, range
and one-line description, and examples.

Exit codes: 0 done; 2 bad input, as one line naming the problem and what to do (our own
errors, also when raised inside a Ray actor); 1 a run that produced nothing (`RunFailed`), or
an unexpected error: one line here, the full traceback in a log file it names.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ray_conductor import errors
from ray_conductor.config import describe, load
from ray_conductor.errors import ConductorError, RunFailed


@dataclass(frozen=True)
class Command:
    """One command: its config dataclass and `run(cfg)` (objects, or "module:name")."""

    schema: Any
    run: Any
    summary: str
    examples: tuple[str, ...] = ()
    defaults: str | None = None  # the YAML under configs/ read when no config= is given
    outputs: tuple[str, ...] = ()  # keys naming what it writes: resolved under `storage`
    inputs: tuple[str, ...] = ()  # keys naming policy references an earlier command wrote
    remote_ok: bool = True  # may write to object storage (staged, uploaded at the end)


COMMANDS: dict[str, Command] = {
    "eval": Command("ray_conductor.eval.command:EvalConfig", "ray_conductor.eval.command:run_eval",
                    "evaluate policies on a replay pool: pool=... policies=[...] split=test", (
                        "ray-conductor eval pool=demo split=test policies=[singles,knn,oracle] "
                        "out=reports/demo.json",
                        "ray-conductor eval pool=demo backend=ray workers=workers_example "
                        "limit=50 concurrency=8"), outputs=("out", "plot"), inputs=("policies",)),
    "import": Command("ray_conductor.data.commands:ImportConfig",
                      "ray_conductor.data.commands:run_import",
                      "import recorded outputs into the canonical table: pool=... out=...", (
                          "ray-conductor import pool=mmlu_pro:../shared/data/mmlu_pro "
                          "out=reports/mmlu_pro.parquet",
                          "ray-conductor import pool=routerbench:a.csv,b.csv out=rb.parquet "
                          "overwrite=true",
                          "ray-conductor import pool=records:my_records.jsonl "
                          "out=data/pool.parquet"), outputs=("out",)),
    "record": Command("ray_conductor.record.command:RecordConfig",
                      "ray_conductor.record.command:run_record",
                      "ask live workers every question of a file; write a records table", (
                          "ray-conductor record questions=questions.jsonl "
                          "workers=workers_example out=data/records.parquet max_dollars=5",
                          "ray-conductor record questions=q.csv workers=my_workers.yaml "
                          "models=[gpt-5] limit=100 out=data/records.jsonl"),
                      outputs=("out", "cache"), remote_ok=False),
    "train": Command("ray_conductor.rl.trainer:TrainConfig", "ray_conductor.rl.trainer:train",
                     "train the conductor with GRPO on Ray: config=train_cpu key=value ...", (
                         "ray-conductor train config=train_cpu iterations=20 "
                         "run_dir=runs/my_run",
                         "ray-conductor train run_dir=runs/my_run resume=true iterations=40"),
                     defaults="train_cpu", outputs=("run_dir", "registry"), inputs=("model",),
                     remote_ok=False),
    "train-lite": Command("ray_conductor.lite.train:LiteTrainConfig",
                          "ray_conductor.lite.train:train_lite",
                          "train the lite conductor (RLlib PPO, selector warm start) on a pool", (
                              "ray-conductor train-lite config=lite run_dir=runs/lite_mmlu",
                              "ray-conductor train-lite pool=demo run_dir=runs/lite_demo "
                              "budget=0.002 iterations=10"), outputs=("run_dir",)),
    "fit-head": Command("ray_conductor.rl.program_head:FitHeadConfig",
                        "ray_conductor.rl.program_head:run_fit_head",
                        "fit the LM conductor's program head on a pool's recorded answers "
                        "(serve it with conductor.head=OUT)", (
                            "ray-conductor fit-head conductor=smollm2 pool=demo "
                            "out=runs/head_demo",
                            "ray-conductor fit-head conductor=runs/my_run pool=records:rec.jsonl "
                            "budget=0.001 out=runs/head_mine"),
                        outputs=("out",), inputs=("conductor",), remote_ok=False),
    "retrain": Command("ray_conductor.online.config:RetrainConfig",
                       "ray_conductor.online.command:run_retrain",
                       "retrain the served lite conductor on its rewarded traffic, promote "
                       "only what a paired test says is better", (
                           "ray-conductor retrain model=conductor once=true force=true",
                           "ray-conductor retrain app=conductor model=conductor mode=actor "
                           "trigger.every_rows=100"),
                       defaults="online", outputs=("state_dir", "registry", "log_dir"),
                       remote_ok=False),
    "serve": Command("ray_conductor.serve.config:ServeConfig",
                     "ray_conductor.serve.command:run_serve",
                     "serve the conductor as an OpenAI-compatible API on Ray Serve", (
                         "ray-conductor serve port=8000",
                         "ray-conductor serve policy=registry:runs/my_run/registry "
                         "api_keys=[k1,k2] host=0.0.0.0"),
                     defaults="serve", outputs=("log_dir",), inputs=("policy", "policies"),
                     remote_ok=False),
    "demo": Command("ray_conductor.serve.config:ServeConfig", "ray_conductor.demo:demo",
                    "start the server, ask it recorded questions, evaluate, shut down", (
                        "ray-conductor demo demo.questions=3",
                        "ray-conductor demo port=8100 policy=lite:runs/my_lite/policy"),
                    defaults="serve", outputs=("log_dir", "demo.eval_out"),
                    inputs=("policy", "policies"), remote_ok=False),
}


def _obj(ref: Any) -> Any:
    """A registry entry's object; "module:name" is imported here."""
    if not isinstance(ref, str):
        return ref
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    lines = ["usage: ray-conductor COMMAND [config=FILE] [key=value ...]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    lines += ["", "`ray-conductor COMMAND --help` lists the command's keys."]
    return "\n".join(lines)


_HELP_COL = 40  # where a key's description starts in `--help`


def command_help(name: str) -> str:
    """Keys (default, type, description, range) from the config dataclass, and examples."""
    c = COMMANDS[name]
    schema = _obj(c.schema)
    keys = describe(schema, load(schema, [], defaults=c.defaults))
    doc = (schema.__doc__ or "").strip()
    doc = c.summary if not doc or doc.startswith(f"{schema.__name__}(") else doc.splitlines()[0]
    lines = [f"usage: ray-conductor {name} [config=FILE] [key=value ...]", "", doc, ""]
    if c.defaults:
        lines += [f"defaults: configs/{c.defaults}.yaml (when no config= is given)", ""]
    lines.append("keys, as key=default (nested keys with dots, e.g. ray.namespace=x; lists as "
                 "[a,b]; null for none):")
    for k in keys:
        left = f"  {k.name}={_render(k.default)}"
        right = f"{k.kind}: {k.help}" if k.help else k.kind
        right += f" [{k.range}]" if k.range else ""
        if len(left) > _HELP_COL - 2:
            lines += [left, " " * _HELP_COL + right]
        else:
            lines.append(f"{left:<{_HELP_COL}}{right}")
    lines += ["", "examples:"] + [f"  {e}" for e in c.examples]
    return "\n".join(lines)


def _render(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v) if str(v) else "''"


# -- errors --------------------------------------------------------------------------------

_OUR_ERRORS = {n for n, c in vars(errors).items()
               if isinstance(c, type) and issubclass(c, ConductorError)}
_REMOTE_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+): (.+)$")


def user_error(e: BaseException) -> ConductorError | None:
    """Our own error behind `e`: itself, the cause of a Ray task error (which Ray wraps in a
    class that is both), or the last line of an actor's failed constructor."""
    if "ray" in sys.modules:
        from ray.exceptions import RayActorError, RayTaskError

        seen = 0
        while isinstance(e, RayTaskError) and getattr(e, "cause", None) is not None and seen < 8:
            e, seen = e.cause, seen + 1
        if isinstance(e, RayActorError):
            for line in reversed(str(getattr(e, "error_msg", "") or e).splitlines()):
                m = _REMOTE_LINE.match(line)
                if m and m.group(1) in _OUR_ERRORS:
                    return getattr(errors, m.group(1))(m.group(2).strip())
            return None
        if isinstance(e, RayTaskError):
            return None
    return e if isinstance(e, ConductorError) else None


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _crash_log(cmd: str, e: BaseException) -> Path | None:
    """Write the traceback to a log file; its path, or None when it could not be written."""
    root = Path(os.environ.get("RAY_CONDUCTOR_LOG_DIR") or Path(tempfile.gettempdir())
                / "ray_conductor")
    path = root / f"crash-{cmd}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(f"ray-conductor {' '.join(sys.argv[1:])}\n\n"
                        + "".join(traceback.format_exception(e)))
    except OSError:
        return None
    return path


def _unexpected(cmd: str, e: BaseException) -> int:
    path = _crash_log(cmd, e)
    head = f"ray-conductor {cmd}: internal error: {type(e).__name__}: {one_line(str(e))[:300]}"
    if path is None:  # never swallowed: the traceback goes to stderr instead
        traceback.print_exception(e)
        print(head, file=sys.stderr)
    else:
        print(f"{head} (full traceback: {path}; please report it)", file=sys.stderr)
    return 1


_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EEXIST}


def _is_path_error(e: BaseException) -> bool:
    """A file that could not be read or written: the environment's fault, not ours."""
    return isinstance(e, OSError) and e.errno in _PATH_ERRNOS


def _path_error(cmd: str, e: BaseException) -> int:
    path = _crash_log(cmd, e)
    where = f"; traceback: {path}" if path else ""
    print(f"ray-conductor {cmd}: error: {one_line(str(e))[:300]}: check the path, its "
          f"permissions and free space{where}", file=sys.stderr)
    return 2


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds, so `finally` blocks remove temporary files


# -- main ----------------------------------------------------------------------------------


def run_command(cmd: str, argv: Sequence[str]) -> Any:
    """Load the command's config from `argv`, resolve its outputs under `storage` (and say
    where they go), run it, and upload what it staged for remote storage (exceptions
    propagate)."""
    from ray_conductor.storage import place

    c = COMMANDS[cmd]
    cfg = load(_obj(c.schema), argv, defaults=c.defaults)
    placed = place(cfg, c.outputs, c.inputs, remote_ok=c.remote_ok,
                   command=f"ray-conductor {cmd}")
    print(f"ray-conductor {cmd}: outputs under {placed.describe()}", flush=True)
    result = _obj(c.run)(cfg)
    uploaded = placed.finish()
    if uploaded:
        print(f"ray-conductor {cmd}: uploaded {', '.join(uploaded)}", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help", "help"):
        return _show(command_help(argv[1]) if len(argv) > 1 and argv[1] in COMMANDS
                     else usage())
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"ray-conductor: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help", "help") for a in rest):
        return _show(command_help(cmd))
    previous = _catch_sigterm()
    try:
        run_command(cmd, rest)
    except KeyboardInterrupt:
        print(f"ray-conductor {cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error ends as one line (and a log file)
        ours = user_error(e)
        if ours is None and _is_path_error(e):
            return _path_error(cmd, e)
        if ours is None:
            return _unexpected(cmd, e)
        print(f"ray-conductor {cmd}: error: {one_line(ours.message or str(ours))}",
              file=sys.stderr)
        return 1 if isinstance(ours, RunFailed) else 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _show(text: str) -> int:
    """Print help; a reader that stops early (`| head`) is no error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _catch_sigterm() -> Any:
    """SIGTERM (`ray job stop`, `kill`) unwinds like an exception, so `finally` blocks remove
    temporary files; returns the handler to put back (None: left alone)."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    return None


if __name__ == "__main__":
    sys.exit(main())
