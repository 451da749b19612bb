"""Property-based fuzzing of the config loader: whatever the command line or a YAML file holds,
the only outcomes are a config or our own `ConfigError` with a one-line message."""

import string
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_conductor.config import describe, load
from ray_conductor.errors import ConfigError
from ray_conductor.eval.command import EvalConfig
from ray_conductor.rl.trainer import TrainConfig

SCHEMAS = [EvalConfig, TrainConfig]
KEYS = sorted({k.name for s in SCHEMAS for k in describe(s)} | {
    "ray", "graph", "graph.rollout", "conductor", "learner.betas", "graph.learner.resources.x",
    "policies.0", "colour", "ray.nope", "a..b", "", ".", "x[0", "config"})
WORDS = st.sampled_from(["0", "-1", "1", "2.5", "1e400", "nan", "-inf", "true", "null", "~",
                         "", "[]", "[a,b]", "[[1]]", "{a: 1}", "{", "[", "${nope}",
                         "${oc.env:HOME}", "${oc.env:NOPE_XYZ}", "???", "'quoted'", "a=b",
                         "demo", "test", "ray", "local", "\x00", "é", "a" * 300])
VALUES = st.one_of(WORDS, st.text(max_size=40), st.integers().map(str),
                   st.floats(allow_nan=True).map(str))
ARGS = st.one_of(st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
                 st.text(max_size=30))
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def outcome(schema, argv):
    """A config, or None after a one-line ConfigError; anything else fails the test."""
    try:
        return load(schema, argv)
    except ConfigError as e:
        msg = str(e)
        assert msg.strip() and "\n" not in msg, repr(msg)
        return None


@FUZZ
@given(st.sampled_from(SCHEMAS), st.lists(ARGS, max_size=6))
def test_random_command_lines(schema, argv):
    outcome(schema, argv)


@FUZZ
@given(st.sampled_from(SCHEMAS), st.sampled_from(KEYS), VALUES)
def test_one_known_key_with_any_value(schema, key, value):
    outcome(schema, [f"{key}={value}"])


# YAML: junk bytes, junk text, and well-formed YAML with wrong shapes and values
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)),
                                            inner, max_size=3)),
    max_leaves=12)
YAML_DOCS = st.one_of(
    st.binary(max_size=200),
    st.text(alphabet=string.printable + "é€\t", max_size=200).map(str.encode),
    JSONISH.map(lambda d: yaml.safe_dump(d).encode()),
    st.dictionaries(st.sampled_from(KEYS), JSONISH, max_size=4).map(
        lambda d: yaml.safe_dump(d).encode()))


@pytest.fixture(scope="module")
def yaml_dir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@FUZZ
@given(doc=YAML_DOCS, schema=st.sampled_from(SCHEMAS), extra=st.lists(ARGS, max_size=2))
def test_yaml_files_with_junk(yaml_dir, doc, schema, extra):
    path = yaml_dir / "fuzz.yaml"
    path.write_bytes(doc)
    outcome(schema, [f"config={path}", *extra])
