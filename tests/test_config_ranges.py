"""Options declare their help and range once, beside their default (`opt`, or `field` with the
same metadata keys), and `config.load`/`config.check` enforce every range, nested configs
included, with one-line messages that name the key, the value and what is allowed."""

import dataclasses
import math
import re

import pytest

from ray_conductor.config import check, describe, load, opt
from ray_conductor.errors import ConfigError
from ray_conductor.eval.command import EvalConfig
from ray_conductor.rl.trainer import TrainConfig


def refused(schema, argv, *needles, defaults=None):
    with pytest.raises(ConfigError) as e:
        load(schema, argv, defaults=defaults)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


def test_opt_declares_help_and_range_and_copies_mutable_defaults():
    @dataclasses.dataclass
    class C:
        n: int = opt(3, "how many", min=1, max=5)
        xs: list[str] = opt(["a"], "names", nonempty=True)
        mode: str = opt("a", "which", choices=("a", "b"))

    f = {x.name: x for x in dataclasses.fields(C)}
    assert f["n"].metadata == {"help": "how many", "min": 1, "max": 5}
    a, b = C(), C()
    a.xs.append("b")
    assert b.xs == ["a"]
    check(C())
    for bad, needle in [(C(n=0), "n=0: must be >= 1 (how many)"), (C(n=6), "n=6: must be <= 5"),
                        (C(xs=[]), "xs=[]: must not be empty"),
                        (C(mode="c"), "mode=c: must be one of a, b (which)")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            check(bad)


def test_check_reaches_nested_configs_of_plain_dataclass_instances():
    cfg = TrainConfig()
    cfg.graph.learner.count = 0
    with pytest.raises(ConfigError, match=r"graph\.learner\.count=0: must be >= 1"):
        check(cfg)
    cfg = TrainConfig()
    cfg.learner.lr = math.nan
    with pytest.raises(ConfigError, match=r"learner\.lr=nan: must be > 0"):
        check(cfg)


def test_a_programmatic_train_call_is_checked_too(tmp_path):
    from ray_conductor.rl.trainer import train

    with pytest.raises(ConfigError, match="group_size=1"):
        train(TrainConfig(group_size=1, run_dir=str(tmp_path)))


def test_every_key_has_a_description_in_eval_and_train():
    for schema in (EvalConfig, TrainConfig):
        missing = [k.name for k in describe(schema) if not k.help
                   and not k.name.startswith("reward.")]  # RewardConfig: see the report
        assert missing == [], missing


def test_yaml_files_are_checked_like_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("ray:\n  namespce: x\n")
    refused(EvalConfig, [f"config={f}"], f"config={f}", "unknown key 'ray.namespce'",
            "did you mean 'ray.namespace'")
    f.write_text("ray:\n  num_cpus: lots\n")
    refused(EvalConfig, [f"config={f}"], f"config={f}: ray.num_cpus must be an integer or null")
    f.write_text("graph:\n  rollout:\n    count: 0\n")
    refused(EvalConfig, [f"config={f}"], "graph.rollout.count=0: must be >= 1")
    f.write_text("42\n")
    refused(EvalConfig, [f"config={f}"], "not a readable YAML file")
    f.write_bytes(b"\xff\xfe\x00junk")
    refused(EvalConfig, [f"config={f}"], "not a readable YAML file")
    refused(EvalConfig, [f"config={tmp_path}"], "not found")  # a directory


@pytest.mark.parametrize("argv, needles", [
    (["pool=???"], ["pool=???: give it a value"]),
    (["out=${oc.env:RAY_CONDUCTOR_NO_SUCH_VAR}"], ["out: cannot resolve"]),
    (["limit=${nope}"], ["limit: cannot resolve"]),
    (["a..b=1"], ["'a..b' is not a key"]),
    (["=3"], ["'' is not a key"]),
    (["ray.namespace.x=1"], ["ray.namespace is a single value"]),
    (["graph.rollout=7"], ["graph.rollout is a group of settings"]),
    (["seed=1e400"], ["seed=1e400: must be an integer"]),
    (["policies=abc"], ["policies=abc: must be a list like [a,b]"]),
    (["split="], ["split= has no value: give a text"]),
])
def test_odd_overrides_are_one_line(argv, needles):
    refused(EvalConfig, argv, *needles)


def test_empty_optional_values_mean_null():
    assert load(EvalConfig, ["limit="]).limit is None
    assert load(EvalConfig, ["limit=null", "plot="]).plot is None
