"""The policy registry: numbered immutable versions, an atomic pointer to the promoted one,
rollback, history, and `registry:DIR[@N]` references resolving to paths."""

from __future__ import annotations

import json

import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.policy.registry import PolicyRegistry, resolve_policy


def policy_dir(tmp_path, name: str, text: str):
    d = tmp_path / name
    d.mkdir()
    (d / "weights.txt").write_text(text)
    return d


def test_publish_promote_rollback(tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    assert reg.promoted() is None and reg.versions() == []
    v1 = reg.publish(policy_dir(tmp_path, "a", "one"), meta={"reward": 0.5})
    v2 = reg.publish(policy_dir(tmp_path, "b", "two"), kind="lite")
    assert (v1.version, v2.version) == (1, 2) and v2.kind == "lite"
    assert reg.promoted() is None  # publishing is not promoting
    reg.promote(1, reason="first")
    reg.promote(2, reason="better", figures={"delta": 0.03})
    assert reg.promoted().version == 2
    assert open(f"{reg.promoted().path}/weights.txt").read() == "two"
    assert reg.rollback(reason="live reward dropped").version == 1
    assert reg.promoted().meta == {"reward": 0.5}
    with pytest.raises(ConfigError, match="first promoted version"):
        reg.rollback()
    actions = [(h["action"], h["version"], h["from"]) for h in reg.history()]
    assert actions == [("promote", 1, None), ("promote", 2, 1), ("rollback", 1, 2)]
    assert reg.history()[1]["figures"] == {"delta": 0.03}


def test_versions_are_copies_and_half_written_ones_are_invisible(tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    src = policy_dir(tmp_path, "a", "one")
    v = reg.publish(src)
    (src / "weights.txt").write_text("changed after publishing")
    assert open(f"{v.path}/weights.txt").read() == "one"
    (reg.versions_dir / ".tmp-2-999").mkdir()  # a crash mid-copy
    assert [x.version for x in reg.versions()] == [1]
    assert reg.publish(src).version == 2 and not (reg.versions_dir / ".tmp-2-999").exists()
    pointer_files = {p.name for p in reg.root.iterdir()}
    reg.promote(2)
    assert json.loads((reg.root / "PROMOTED").read_text())["version"] == 2
    assert not any(".tmp" in p.name for p in reg.root.iterdir()) and pointer_files


def test_references_resolve_to_the_promoted_latest_or_given_version(tmp_path):
    reg = PolicyRegistry(tmp_path / "reg")
    with pytest.raises(ConfigError, match="holds no version yet"):
        resolve_policy(f"registry:{reg.root}")
    reg.publish(policy_dir(tmp_path, "a", "one"))
    reg.publish(policy_dir(tmp_path, "b", "two"))
    assert resolve_policy(f"registry:{reg.root}")[1].version == 2  # latest while none promoted
    reg.promote(1)
    path, pv = resolve_policy(f"registry:{reg.root}")
    assert pv.version == 1 and path.endswith("v000001")
    assert resolve_policy(f"registry:{reg.root}@2")[1].version == 2
    with pytest.raises(ConfigError, match="has no version 7"):
        resolve_policy(f"registry:{reg.root}@7")
    with pytest.raises(ConfigError, match="must be a number"):
        resolve_policy(f"registry:{reg.root}@latest")
    assert resolve_policy("smollm2") == ("smollm2", None)
    with pytest.raises(ConfigError, match="not a policy directory"):
        reg.publish(tmp_path / "missing")
