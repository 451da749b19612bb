"""`import` never loses data: no overwrite without overwrite=true, never over an input, every
check before any work, atomic writes without `.tmp` litter (also for the pool cache)."""

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from test_data_routerbench import write_csv

from ray_conductor import cli
from ray_conductor.data import files, pools
from ray_conductor.data.commands import ImportConfig, run_import
from ray_conductor.data.files import atomic_path, clean_stale_temps
from ray_conductor.data.pools import load_pool, load_table
from ray_conductor.data.routerbench import import_routerbench
from ray_conductor.data.table import read_table, write_table
from ray_conductor.errors import DataError


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "rb"
    d.mkdir()
    return write_csv(d / "mbpp_train.csv")


@pytest.fixture
def no_import(monkeypatch):
    """Any import work fails the test: the checks must come first."""

    def boom(paths):
        raise AssertionError("imported before the command was checked")

    monkeypatch.setitem(pools.IMPORTERS, "routerbench", (boom, (".csv",), "x"))


def cfg(pool, out, **kw):
    return ImportConfig(pool=pool, out=str(out), data_dir="/nonexistent", **kw)


def refused(c, *match):
    with pytest.raises(DataError) as e:
        run_import(c)
    assert "\n" not in str(e.value) and all(m in str(e.value) for m in match), str(e.value)


def test_an_import_never_writes_over_its_source_csv(src, no_import, tmp_path):
    """The reported defect: `import pool=routerbench:X.csv out=X.csv` replaced X.csv."""
    before = src.read_bytes()
    for out in (src, src.parent / ".." / "rb" / src.name):  # any spelling of the same file
        for overwrite in (False, True):
            refused(cfg(f"routerbench:{src}", out, overwrite=overwrite), "one of the inputs")
    link = tmp_path / "link.csv"
    link.symlink_to(src)
    refused(cfg(f"routerbench:{src}", link, overwrite=True), "one of the inputs")
    hard = tmp_path / "hard.csv"
    os.link(src, hard)
    refused(cfg(f"routerbench:{hard}", src, overwrite=True), "one of the inputs")
    assert src.read_bytes() == before


def test_an_input_directory_holding_the_output_is_refused(src, no_import):
    d = src.parent
    refused(cfg(f"routerbench:{d}", src, overwrite=True), "one of the inputs")
    # a new .csv there would be read as input by the next import of the directory
    refused(cfg(f"routerbench:{d}", d / "new.csv"), "inside the input directory")
    assert sorted(p.name for p in d.iterdir()) == ["mbpp_train.csv"]


def test_an_existing_output_needs_overwrite_true(src, tmp_path):
    out = tmp_path / "pool.parquet"
    out.write_bytes(b"precious")
    refused(cfg(f"routerbench:{src}", out), "already exists", "overwrite=true")
    assert out.read_bytes() == b"precious"
    args = ["import", f"pool=routerbench:{src}", f"out={out}"]
    assert cli.main(args) == 2 and out.read_bytes() == b"precious"
    assert cli.main([*args, "overwrite=true"]) == 0  # the typed config field, from the CLI
    assert read_table(out)[0].num_rows == 6


def test_bad_outputs_and_specs_are_refused_before_any_work(src, no_import, tmp_path,
                                                           monkeypatch):
    refused(cfg(f"routerbench:{src}", tmp_path), "is a directory")
    (tmp_path / "afile").write_text("x")
    refused(cfg(f"routerbench:{src}", tmp_path / "afile" / "t.parquet"), "is a file")
    refused(cfg("csv:x", tmp_path / "t.parquet"), "unknown pool")
    refused(cfg(f"routerbench:{tmp_path / 'missing.csv'}", tmp_path / "t.parquet"),
            "no such file")
    refused(cfg(f"routerbench:{src}", ""), "not a file name")

    def unreadable(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(files, "open", unreadable, raising=False)
    refused(cfg(f"routerbench:{src}", tmp_path / "t.parquet"), "cannot read this input")
    monkeypatch.undo()
    def no_space(*a, **k):  # the write probe fails, as on a read-only or full disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.tempfile, "mkstemp", no_space)
    refused(cfg(f"routerbench:{src}", tmp_path / "new" / "t.parquet"), "cannot write")
    assert not (tmp_path / "new").exists() and not (tmp_path / "t.parquet").exists()


def test_the_cli_prints_one_line_and_exits_2(src, capsys):
    before = src.read_bytes()
    assert cli.main(["import", f"pool=routerbench:{src}", f"out={src}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "one of the inputs" in err
    assert src.read_bytes() == before


def test_the_default_out_directory_is_created(src, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_import(cfg(f"routerbench:{src}", ImportConfig.out))
    assert (tmp_path / ImportConfig.out).is_file() and result["rows"] == 6


def _litter(d):
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temp(src, tmp_path, monkeypatch):
    out = tmp_path / "pool.parquet"
    run_import(cfg(f"routerbench:{src}", out))
    before = out.read_bytes()

    def half_then_interrupt(table, where, **kw):
        open(where, "wb").write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_import(cfg(f"routerbench:{src}", out, overwrite=True))
    assert out.read_bytes() == before and _litter(tmp_path) == []


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temps_of_dead_writers_are_cleaned_by_the_next_write(tmp_path, src):
    stale = tmp_path / f".pool.parquet.{_dead_pid()}.0123abcd.tmp"
    live = tmp_path / f".other.parquet.{os.getppid()}.0123abcd.tmp"  # a running writer's
    huge = tmp_path / f".x.{10**30}.0123abcd.tmp"  # no such pid can exist: kept, no crash
    mine = tmp_path / "notes.tmp"  # not ours: never touched
    for p in (stale, live, huge, mine):
        p.write_bytes(b"x")
    write_table(import_routerbench([src])[0], tmp_path / "pool.parquet")
    assert sorted(_litter(tmp_path)) == sorted([live.name, huge.name, mine.name])
    assert clean_stale_temps(tmp_path / "nonexistent") == []


def test_no_clobber_even_when_the_file_appears_meanwhile(tmp_path):
    out = tmp_path / "t.txt"
    with pytest.raises(DataError, match="already exists"):
        with atomic_path(out, overwrite=False) as tmp:
            tmp.write_text("new")
            out.write_text("someone else's")  # created after any check could have run
    assert out.read_text() == "someone else's" and _litter(tmp_path) == []


def test_the_pool_cache_is_written_atomically_and_heals(src, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    spec = f"routerbench:{src}"
    real_write = pq.write_table

    def interrupted(table, where, **kw):
        real_write(table, where, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_table(spec, cache_dir=cache)
    assert list(cache.iterdir()) == []  # neither a half entry nor a temp file
    monkeypatch.undo()
    load_pool(spec, cache_dir=cache)
    (entry,) = cache.glob("*.parquet")
    entry.write_bytes(entry.read_bytes()[:100])  # damaged on disk
    assert load_pool(spec, cache_dir=cache).record("routerbench/mbpp.dev.1", "m1").correct
    assert read_table(entry)[0].num_rows == 6  # re-imported and rewritten
