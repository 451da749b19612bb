"""The CLI's promise: `--help` for every command, generated from its config; every bad input is
one line and exit 2, checked before any work; a run whose worker calls all failed says why
and exits non-zero; unexpected errors are one line plus a log file, never a wall of text."""

import dataclasses
import json
import re
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_conductor import cli
from ray_conductor.cli import COMMANDS, Command, main, user_error
from ray_conductor.config import describe, load, opt
from ray_conductor.errors import ConfigError, RunFailed

FAST = ["policies=[cheapest]", "limit=3", "progress=false"]


RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")  # an actor's log, sent by Ray


def err_line(capsys) -> str:
    """stderr, which must be exactly one line without a traceback (the actors' own log lines,
    forwarded by the session's Ray, are theirs, not the command's)."""
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not RAY_FORWARDED.match(x)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- --help ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_every_command_has_help_generated_from_its_config(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    c = COMMANDS[cmd]
    schema = cli._obj(c.schema)
    for key in describe(schema):
        assert f"  {key.name}=" in out, key.name
    for f in dataclasses.fields(schema):  # every top-level key says what it is for
        assert f.metadata.get("help"), f"{cmd}: {f.name} has no help text"
    assert out.count(f"ray-conductor {cmd} ") >= 3  # usage and two examples
    assert main(["help", cmd]) == 0 and capsys.readouterr().out == out


def test_help_shows_types_defaults_and_ranges(capsys):
    assert main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("concurrency="))
    assert "concurrency=64" in line and "int" in line and ">= 1" in line and "at once" in line
    assert main(["train", "-h"]) == 0
    out = capsys.readouterr().out
    assert "run_dir=runs/conductor_cpu" in out  # the defaults file's value, not the schema's


def test_a_new_command_is_one_registry_entry_and_gets_help_for_free(monkeypatch, capsys):
    @dataclasses.dataclass
    class EchoConfig:
        """Echo a word."""

        word: str = opt("hi", "what to say", nonempty=True)
        times: int = opt(1, "how often", min=1)

    seen = []
    monkeypatch.setitem(COMMANDS, "echo", Command(EchoConfig, seen.append, "echo a word"))
    assert main(["echo", "--help"]) == 0
    assert "times=1" in capsys.readouterr().out
    assert main(["echo", "times=3"]) == 0 and seen[0].times == 3
    assert main(["echo", "times=0"]) == 2
    assert "times=0: must be >= 1 (how often)" in err_line(capsys)


# -- ranges, types, keys -------------------------------------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["concurrency=0"], "concurrency=0: must be >= 1 (how many workflows run at once)"),
    (["limit=-1"], "limit=-1: must be >= 1"),
    (["knn_k=0"], "knn_k=0: must be >= 1"),
    (["concurrency="], "concurrency= has no value: give an integer"),
    (["limit=abc"], "limit=abc: must be an integer or null"),
    (["graph.rollout.count=0"], "graph.rollout.count=0: must be >= 1"),
    (["ray.object_store_memory_mb=10"], "ray.object_store_memory_mb=10: must be >= 75"),
    (["split=validation"], "split=validation: must be one of train, test, all"),
    (["concurency=4"], "did you mean 'concurrency'"),
    (["ray=3"], "ray is a group of settings"),
])
def test_bad_options_are_refused_at_load_with_the_value_and_what_is_allowed(argv, needle,
                                                                             capsys):
    from ray_conductor.eval.command import EvalConfig

    with pytest.raises(ConfigError) as e:
        load(EvalConfig, argv)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert "None" not in str(e.value)  # the value the user gave, never OmegaConf's None
    assert main(["eval", *argv]) == 2  # and the CLI says the same, before any work
    assert needle in err_line(capsys)


def test_concurrency_zero_no_longer_hangs(capsys):
    t0 = time.perf_counter()
    assert main(["eval", "concurrency=0", "limit=3", "policies=[cheapest]"]) == 2
    assert time.perf_counter() - t0 < 30 and "concurrency=0" in err_line(capsys)


@pytest.mark.parametrize("argv, needle", [
    (["group_size=1"], "group_size=1: must be >= 2"),
    (["learner.lr=0"], "learner.lr=0.0: must be > 0"),
    (["conductor.top_p=2"], "conductor.top_p=2.0: must be <= 1"),
    (["conductor.engine=tpu"], "conductor.engine=tpu: must be one of hf, vllm, scripted"),
    (["iterations=0"], "iterations=0: must be >= 1"),
])
def test_train_ranges_nested_configs_included(argv, needle):
    from ray_conductor.rl.trainer import TrainConfig

    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        load(TrainConfig, argv, defaults="train_cpu")


# -- outputs checked before the evaluation runs ---------------------------------------------


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail the test if the pool is even loaded: the checks must come first."""
    def boom(*a, **k):
        raise AssertionError("the evaluation started before its outputs were checked")

    monkeypatch.setattr("ray_conductor.data.pools.load_pool", boom)


def test_out_that_is_a_directory_is_refused_before_the_run(tmp_path, no_evaluation, capsys):
    (tmp_path / "d").mkdir()
    assert main(["eval", f"out={tmp_path / 'd'}", *FAST]) == 2
    assert "is a directory" in err_line(capsys)


def test_out_in_a_read_only_place_is_refused_before_the_run(tmp_path, no_evaluation, capsys):
    # /sys refuses new files even to root, for whom permission bits mean nothing
    assert main(["eval", "out=/sys/ray_conductor_eval.json", *FAST]) == 2
    assert "cannot write in /sys" in err_line(capsys)


def test_out_under_a_file_and_plot_over_report_are_refused(tmp_path, no_evaluation, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["eval", f"out={tmp_path}/f/sub/r.json", *FAST]) == 2
    assert "is a file" in err_line(capsys)
    assert main(["eval", f"out={tmp_path}/r.png", *FAST]) == 2
    assert "plot would be written over the report" in err_line(capsys)


def test_an_input_or_a_foreign_file_is_never_written_over(tmp_path, capsys):
    from ray_conductor.data.pools import DEMO_PATH

    pool = tmp_path / "pool.parquet"
    shutil.copy(DEMO_PATH, pool)
    before = pool.read_bytes()
    assert main(["eval", f"pool=parquet:{pool}", f"out={pool}", "overwrite=true", *FAST]) == 2
    assert "one of the inputs" in err_line(capsys) and pool.read_bytes() == before
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    assert main(["eval", f"out={notes}", *FAST]) == 2
    assert "already exists" in err_line(capsys) and notes.read_text() == '{"mine": true}'


def test_an_earlier_report_is_replaced_and_nothing_is_left_behind(tmp_path, capsys):
    out = tmp_path / "missing" / "dir" / "r.json"  # made on the way
    assert main(["eval", f"out={out}", *FAST]) == 0
    first = json.loads(out.read_text())
    assert main(["eval", f"out={out}", "limit=2", "policies=[cheapest]",
                 "progress=false"]) == 0  # a re-run replaces its own report
    assert json.loads(out.read_text())["n_queries"] == 2 != first["n_queries"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json", "r.png"]
    capsys.readouterr()


def test_knn_on_a_pool_without_a_train_split_is_one_line(tmp_path, capsys):
    from ray_conductor.data.pools import DEMO_PATH
    from ray_conductor.data.splits import split_of

    table = pq.read_table(DEMO_PATH)
    keep = [split_of(q) == "test" for q in table.column("query_id").to_pylist()]
    path = tmp_path / "test_only.parquet"
    pq.write_table(table.filter(pa.array(keep)), path)
    assert main(["eval", f"pool=parquet:{path}", "policies=[knn]", "progress=false",
                 f"out={tmp_path}/r.json"]) == 2
    assert "knn fits on the pool's train split" in err_line(capsys)


def test_a_bad_conductor_path_is_one_line(tmp_path, capsys):
    assert main(["eval", f"policies=[conductor:{tmp_path}/nope]", f"out={tmp_path}/r.json",
                 "progress=false"]) == 2
    assert "no such directory" in err_line(capsys)
    (tmp_path / "notamodel").mkdir()
    assert main(["eval", f"policies=[conductor:{tmp_path}/notamodel]",
                 f"out={tmp_path}/r.json", "progress=false"]) == 2
    assert "neither a model directory" in err_line(capsys)


def test_a_broken_config_or_worker_yaml_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("concurrency: 3\n\t: [\n")
    assert main(["eval", f"config={bad}", *FAST]) == 2
    assert "not a readable YAML file" in err_line(capsys)
    bad.write_text("- a\n- b\n")
    assert main(["eval", f"config={bad}", *FAST]) == 2
    assert "must be a mapping" in err_line(capsys)
    bad.write_text("concurrency: 0\n")
    assert main(["eval", f"config={bad}", *FAST]) == 2
    assert "concurrency=0: must be >= 1" in err_line(capsys)
    bad.write_text("workers: [\n")
    assert main(["eval", "backend=ray", f"workers={bad}", f"out={tmp_path}/r.json", *FAST]) == 2
    assert "workers=" in err_line(capsys)


# -- failures: counted, summarised, never silent --------------------------------------------


class Data:
    def judge(self, query_id, answer):
        return answer == "right"


class HalfBrokenPool:
    """`good` answers; `bad` fails as a proxy does when its key is missing."""

    def workers(self):
        from ray_conductor.workers.base import WorkerInfo

        return [WorkerInfo("good"), WorkerInfo("bad")]

    async def complete(self, worker, messages, **params):
        from ray_conductor.workers.base import Completion

        if worker == "bad":
            return Completion(worker, error="environment variable K (the API key of worker "
                              "bad) is not set", error_code="missing_api_key")
        return Completion(worker, text="right")


def queries(n):
    from ray_conductor.data.replay import Query

    return [Query(f"q{i}", f"Question {i}?") for i in range(n)]


def test_failed_calls_are_counted_per_policy_and_shown_beside_the_table(tmp_path, capsys):
    from ray_conductor.eval.judge import judge_policies
    from ray_conductor.eval.policies import SingleWorker

    report = judge_policies([SingleWorker("good"), SingleWorker("bad")], Data(), queries(4),
                            HalfBrokenPool(), out=tmp_path / "r.json", progress=False)
    bad = report["policies"]["single:bad"]["failures"]
    assert (bad["calls"], bad["failed"], bad["rate"]) == (4, 4, 1.0)
    assert bad["errors"][0]["code"] == "missing_api_key" and bad["errors"][0]["count"] == 4
    assert report["policies"]["single:good"]["failures"]["failed"] == 0
    assert report["failures"]["rate"] == 0.5
    assert json.loads((tmp_path / "r.json").read_text())["failures"]["failed"] == 4
    out = capsys.readouterr().out
    assert "failed" in out.splitlines()[0] and "100.0%" in out
    assert "failed worker calls: 4 of 8 (50.0%); 4x missing_api_key" in out


def test_a_run_whose_every_call_failed_raises_with_the_cause(tmp_path):
    from ray_conductor.eval.judge import judge_policies
    from ray_conductor.eval.policies import SingleWorker

    with pytest.raises(RunFailed, match=r"every worker call failed \(3 of 3\).*3x "
                                         r"missing_api_key \(e.g. environment variable K"):
        judge_policies([SingleWorker("bad")], Data(), queries(3), HalfBrokenPool(),
                       out=tmp_path / "r.json", progress=False)
    assert not (tmp_path / "r.json").exists()  # zeros are not a report


@pytest.mark.ray
@pytest.mark.slow
def test_missing_api_keys_through_the_proxies_exit_non_zero_with_the_cause(ray_cluster,
                                                                          tmp_path, capsys):
    from ray_conductor.graph import stop_worker_proxies

    env = "RAY_CONDUCTOR_TEST_KEY_THAT_IS_NOT_SET"
    workers = tmp_path / "workers.yaml"
    workers.write_text("workers:\n" + "".join(
        f"  - name: {w}\n    model: openai/{w}\n    api_base: http://127.0.0.1:9/v1\n"
        f"    api_key_env: {env}\n" for w in ("w1", "w2")))
    ns = "test_cli_missing_keys"
    try:
        rc = main(["eval", "backend=ray", f"workers={workers}", "pool=demo", "limit=4",
                   "policies=[singles]", "progress=false", f"out={tmp_path}/r.json",
                   "graph.workers_per_proxy=50", f"ray.namespace={ns}"])
    finally:
        stop_worker_proxies(ns)
    assert rc == 1
    line = err_line(capsys)
    assert "every worker call failed (8 of 8)" in line and "missing_api_key" in line
    assert env in line and "8x missing_api_key" in line  # counted per cause, both workers
    assert not (tmp_path / "r.json").exists()


# -- errors from Ray actors, and the unexpected -----------------------------------------------


def test_our_error_inside_a_ray_task_or_actor_reaches_the_cli_as_its_line():
    from ray.exceptions import ActorDiedError, RayTaskError

    cause = ConfigError("model='/x': no such directory")
    wrapped = RayTaskError("RolloutActor.ready", "Traceback ...\nlong remote text",
                           cause).as_instanceof_cause()
    assert isinstance(wrapped, ConfigError)  # Ray's class is both, with a long str()
    got = user_error(wrapped)
    assert got is cause and str(got) == "model='/x': no such directory"
    died = ActorDiedError(RayTaskError("RolloutActor.__init__", "Traceback (most recent call "
                                       "last):\n  File \"x.py\", line 1, in f\n"
                                       "ray_conductor.errors.ConfigError: cannot load model "
                                       "'/x' offline", cause))
    got = user_error(died)
    assert isinstance(got, ConfigError) and str(got) == "cannot load model '/x' offline"
    assert user_error(RayTaskError("f", "tb", ZeroDivisionError("x"))) is None


def test_an_unexpected_error_is_one_line_and_a_log_with_the_traceback(tmp_path, monkeypatch,
                                                                      capsys):
    @dataclasses.dataclass
    class Nothing:
        pass

    def crash(cfg):
        return 1 / 0

    monkeypatch.setenv("RAY_CONDUCTOR_LOG_DIR", str(tmp_path))
    monkeypatch.setitem(COMMANDS, "crash", Command(Nothing, crash, "divide by zero"))
    assert main(["crash"]) == 1
    line = err_line(capsys)
    assert "internal error: ZeroDivisionError: division by zero" in line
    logs = list(tmp_path.glob("crash-crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    assert "Traceback" in logs[0].read_text() and "1 / 0" in logs[0].read_text()
