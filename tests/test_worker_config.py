"""Worker configs: OmegaConf loading, validation messages, replay worker helpers."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ray_conductor.errors import ConfigError
from ray_conductor.workers.config import (
    WorkerConfig, WorkerPoolConfig, as_pool_config, replay_workers)


def test_a_pool_config_loads_from_yaml_text():
    """Where proxies run (namespace, processes) is the graph's business, not the worker YAML's."""
    yaml = """
    queue_timeout_s: 120
    workers:
      - {name: fast, model: openai/gpt-4o-mini, api_key_env: OPENAI_API_KEY, rpm: 500,
         fallbacks: [slow]}
      - {name: slow, model: anthropic/claude-3-5-sonnet-20240620, tpm: 40000}
    """
    cfg = as_pool_config(OmegaConf.create(yaml))
    assert isinstance(cfg, WorkerPoolConfig) and isinstance(cfg.workers[0], WorkerConfig)
    assert cfg.workers[0].rpm == 500.0 and cfg.workers[0].fallbacks == ["slow"]
    assert cfg.workers[1].window_s == 60.0 and cfg.queue_timeout_s == 120


@pytest.mark.parametrize("workers, message", [
    ([{"name": "a", "model": "openai/x"}, {"name": "a", "model": "openai/y"}], "defined twice"),
    ([{"name": "a", "model": "openai/x", "fallbacks": ["b"]}], "fallback 'b'"),
    ([{"name": "a", "model": "openai/x", "rpm": 30, "window_s": 1}], "less than one request"),
    ([{"name": "a"}], r"workers\[0\].model.*missing"),
    ([{"name": "", "model": "openai/x"}], "needs a name and a litellm model"),
    ([{"name": "a", "model": "openai/x", "max_concurrency": 0}], "max_concurrency >= 1"),
])
def test_bad_configs_say_what_is_wrong(workers, message):
    with pytest.raises(ConfigError, match=message):
        as_pool_config({"workers": workers})


def test_unknown_keys_are_config_errors():
    with pytest.raises(ConfigError, match="rpmm"):
        as_pool_config({"workers": [{"name": "a", "model": "openai/x", "rpmm": 3}]})


def test_replay_workers():
    ws = replay_workers("demo", ["gpt-4o", "claude"], rpm=600, description="recorded")
    assert [(w.name, w.model, w.api_base, w.rpm, w.description) for w in ws] == [
        ("gpt-4o", "replay/gpt-4o", "demo", 600, "recorded"),
        ("claude", "replay/claude", "demo", 600, "recorded")]
    assert replay_workers(None, ["m"])[0].description == ""
