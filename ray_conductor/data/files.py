"""Writing tables without losing data: atomic replaces, no clobbering, no `.tmp` litter.

A write goes to a temp file in the target's directory and is renamed over the target only when
complete, so a reader (or a crash) never sees half a file. Temp names carry the writer's pid,
`.<name>.<pid>.<random>.tmp`; an exception removes the temp file, and the next write to the same
directory removes temp files whose writer is no longer running (a SIGKILL leaves one behind).
"""

from __future__ import annotations

import errno
import os
import tempfile
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ray_conductor.errors import DataError

_TEMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def brief(e: BaseException) -> str:
    """The first line of an exception's message (pyarrow's run to several), else its type."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs; when unsure, yes (its temp file is kept)."""
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # someone else's, or not a pid
        return True
    return True


def clean_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove our temp files in `directory` whose writing process has died; return them."""
    d, gone = Path(directory), []
    if not d.is_dir():
        return gone
    for p in d.iterdir():
        m = _TEMP.match(p.name)
        if m and p.is_file() and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block ends cleanly it becomes `path`.

    `overwrite=False` never replaces an existing file, even one created meanwhile by someone
    else (a hard link is the no-clobber rename), and raises `DataError` instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _link_new(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise DataError(f"{path}: already exists; pass overwrite=true to replace it, or choose "
                        f"another out=", code="exists") from None
    except OSError as e:  # a filesystem without hard links: check, then rename
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():
            raise DataError(f"{path}: already exists; pass overwrite=true to replace it, or "
                            f"choose another out=", code="exists") from None
        os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`Path.write_text`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_readable(files: list[Path]) -> None:
    """Open each input once, so a permission or I/O problem is reported before any work."""
    for f in files:
        try:
            with open(f, "rb") as fh:
                fh.read(1)
        except OSError as e:
            raise DataError(f"{f}: cannot read this input ({e.strerror or brief(e)}); check "
                            f"the path and its permissions") from None


def check_output(out: str | os.PathLike, inputs: list[Path], input_dirs: list[Path],
                 input_suffixes: tuple[str, ...], overwrite: bool) -> Path:
    """Refuse an output that would lose or corrupt data, before anything is read or written:
    an input file (whatever the spelling or link), a directory, an existing file without
    `overwrite`, a file of the input format inside an input directory (the next import would
    read it as input), or a place that cannot be written."""
    out = Path(out).expanduser()
    if str(out).strip() == "" or out.name in ("", ".", ".."):
        raise DataError(f"out={str(out)!r} is not a file name: give out=PATH/TABLE.parquet")
    if out.is_dir():
        raise DataError(f"out={out} is a directory: give a file path, e.g. out={out}/pool.parquet")
    target = out.resolve()
    for f in inputs:
        if f.resolve() == target or (out.exists() and os.path.samefile(f, out)):
            raise DataError(f"out={out} is one of the inputs ({f}): choose another out=; an "
                            f"import never writes over its source")
    for d in input_dirs:
        if target.is_relative_to(d.resolve()) and target.name.endswith(input_suffixes):
            raise DataError(f"out={out} is a {'/'.join(input_suffixes)} file inside the input "
                            f"directory {d}: the next import would read it as input; choose "
                            f"another out=")
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; pass overwrite=true to replace it, or choose "
                        f"another out=", code="exists")
    _check_writable(out)
    return out


def _check_writable(out: Path) -> None:
    """The nearest existing ancestor must be a directory we can write (missing ones are made)."""
    parent = out.parent if str(out.parent) else Path(".")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(f"out={out}: {parent} is a file, not a directory; choose another out=")
    try:  # a real probe: permission bits say nothing to root or about a read-only mount
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"out={out}: cannot write in {parent} ({e.strerror or e}); choose "
                        f"another out=") from None
