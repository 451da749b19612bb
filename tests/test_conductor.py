"""Conductor planning: re-sampling, fallback, batching in `plan_many`, recursion rules.

A scripted engine returns chosen texts, so every expectation is counted by hand."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ray_conductor.errors import ConfigError
from ray_conductor.policy.conductor import Conductor, ConductorConfig, build_engine
from ray_conductor.policy.engine import Sample
from ray_conductor.workers.base import WorkerInfo
from ray_conductor.workflow import Step, Workflow

WORKERS = [WorkerInfo("small", "a cheap model"), WorkerInfo("big", "a strong model")]
SELF = WorkerInfo("conductor", "me")
GOOD = "model_id = [1]\nsubtasks = ['Solve it.']\naccess_list = [[]]"
GOOD2 = "model_id = [0, 1]\nsubtasks = ['Draft.', 'Check.']\naccess_list = [[], 'all']"
BAD = "I think the big model should answer."  # no lists at all
BAD_RANGE = "model_id = [7]\nsubtasks = ['x']\naccess_list = [[]]"
EMPTY = "model_id = []\nsubtasks = []\naccess_list = []"


class ScriptedEngine:
    """Answers prompts with texts from a script, in order; records every call."""

    tokenizer = None

    def __init__(self, texts, fail=None):
        self.texts = list(texts)
        self.fail = fail
        self.calls = []

    def generate(self, prompts, n, temperature, max_tokens, top_p=1.0, seed=None):
        self.calls.append(dict(prompts=prompts, n=n, temperature=temperature, seed=seed,
                               max_tokens=max_tokens))
        if self.fail:
            raise self.fail
        return [[Sample([1], [2], self.texts.pop(0), [-0.5], "stop") for _ in range(n)]
                for _ in prompts]

    def get_state_dict(self):
        return {}

    def load_state_dict(self, sd):
        pass


def conductor(texts, **cfg):
    engine = ScriptedEngine(texts)
    return Conductor(engine, ConductorConfig(**cfg)), engine


def test_valid_first_sample():
    c, engine = conductor([GOOD])
    r = c.plan("What is 2+2?", WORKERS)
    assert r.workflow == Workflow((Step("big", "Solve it.", ()),))
    assert (r.n_attempts, r.fell_back, r.errors, r.texts) == (1, False, [], [GOOD])
    assert r.sample is r.samples[0] and len(engine.calls) == 1
    assert engine.calls[0]["n"] == 1 and engine.calls[0]["max_tokens"] == 256


def test_two_malformed_then_valid_is_three_attempts():
    c, engine = conductor([BAD, BAD_RANGE, GOOD2])
    r = c.plan("q", WORKERS)
    assert r.n_attempts == 3 and not r.fell_back
    assert r.errors == ["missing_list", "worker_out_of_range"]
    assert r.workflow.workers == ("small", "big") and r.texts == [BAD, BAD_RANGE, GOOD2]
    assert r.sample is r.samples[2]


def test_all_malformed_falls_back_after_one_plus_k_samples():
    c, engine = conductor([BAD] * 6)
    r = c.plan("q", WORKERS)
    assert r.n_attempts == 6 and len(engine.calls) == 6 and r.fell_back
    assert r.workflow == Workflow.single("small", "Answer the question.")
    assert r.sample is None and r.errors == ["missing_list"] * 6


def test_max_resamples_bounds_the_attempts():
    c, _ = conductor([BAD] * 3, max_resamples=2)
    assert c.plan("q", WORKERS).n_attempts == 3


def test_engine_error_falls_back_without_raising():
    engine = ScriptedEngine([], fail=RuntimeError("CUDA out of memory"))
    r = Conductor(engine, ConductorConfig()).plan("q", WORKERS)
    assert r.fell_back and r.errors == ["engine_error"] and r.n_attempts == 0
    assert r.workflow == Workflow.single("small", "Answer the question.")
    assert len(engine.calls) == 1  # a broken engine is not asked again


def test_engine_returning_the_wrong_shape_is_an_engine_error():
    class Short(ScriptedEngine):
        def generate(self, prompts, **kw):
            return []

    r = Conductor(Short([]), ConductorConfig()).plan("q", WORKERS)
    assert r.fell_back and r.errors == ["engine_error"]


@pytest.mark.parametrize("fallback,expected", [("big", "big"), ("1", "big"), ("0", "small"),
                                               ("9", "small"), ("nobody", "small")])
def test_fallback_worker_by_name_or_id(fallback, expected):
    c, _ = conductor([BAD] * 6, fallback_worker=fallback, fallback_subtask="Just answer.")
    assert c.plan("q", WORKERS).workflow == Workflow.single(expected, "Just answer.")


def test_fallback_never_picks_the_conductor_itself():
    c, _ = conductor([BAD] * 6, fallback_worker="conductor")
    assert c.plan("q", [SELF] + WORKERS).workflow.workers == ("small",)


def test_plan_many_batches_first_attempts_and_resamples_only_malformed():
    c, engine = conductor([GOOD, BAD, GOOD2, BAD, GOOD])
    results = c.plan_many(["q0", "q1", "q2"], WORKERS, seed=10)
    assert [len(call["prompts"]) for call in engine.calls] == [3, 1, 1]
    assert [call["seed"] for call in engine.calls] == [10, 11, 12]
    assert [r.n_attempts for r in results] == [1, 3, 1]
    assert [r.question for r in results] == ["q0", "q1", "q2"]
    assert results[1].workflow.workers == ("big",)
    assert results[2].workflow.workers == ("small", "big")
    assert "q1" in engine.calls[1]["prompts"][0][-1]["content"]


def test_greedy_plans_resample_with_the_resample_temperature():
    c, engine = conductor([BAD, BAD, GOOD], temperature=0.0, resample_temperature=0.9)
    c.plan("q", WORKERS)
    assert [call["temperature"] for call in engine.calls] == [0.0, 0.9, 0.9]
    c2, engine2 = conductor([GOOD])
    c2.plan("q", WORKERS, temperature=0.3)
    assert engine2.calls[0]["temperature"] == 0.3


def test_prompt_is_chat_messages_listing_the_pool():
    c, engine = conductor([GOOD])
    r = c.plan("What is the capital of Peru?", WORKERS)
    [messages] = engine.calls[0]["prompts"]
    assert messages == r.prompt and messages[0]["role"] == "system"
    assert "0: small" in messages[-1]["content"] and "1: big" in messages[-1]["content"]
    assert messages[-1]["content"].endswith("Question: What is the capital of Peru?")


def test_self_worker_is_legal_only_with_recursion():
    plan = "model_id = [0, 2]\nsubtasks = ['Draft.', 'Improve.']\naccess_list = [[], 'all']"
    c, _ = conductor([plan], recursion_depth=1)
    r = c.plan("q", WORKERS + [SELF])
    assert r.workflow.workers == ("small", "conductor") and r.workers[-1] == "conductor"
    c0, engine = conductor([plan] * 6, recursion_depth=0)
    r0 = c0.plan("q", WORKERS + [SELF])
    assert r0.workers == ["small", "big"] and r0.fell_back
    assert r0.errors[0] == "worker_out_of_range"
    assert "conductor" not in engine.calls[0]["prompts"][0][-1]["content"].split("Example")[0]


def test_recursive_call_may_keep_the_previous_answer():
    c, engine = conductor([EMPTY])
    r = c.plan("q", WORKERS, previous="<Agent 0 response>\n4\n</Agent 0 response>")
    assert r.workflow == Workflow(()) and not r.fell_back and r.n_attempts == 1
    assert "Agent 0 response" in engine.calls[0]["prompts"][0][-1]["content"]
    c2, _ = conductor([EMPTY] * 6)
    assert c2.plan("q", WORKERS).fell_back  # without `previous`, empty is malformed


def test_recursive_fallback_is_the_empty_plan():
    c, _ = conductor([BAD] * 6)
    r = c.plan("q", WORKERS, previous="earlier")
    assert r.fell_back and r.workflow == Workflow(())


def test_no_workers_falls_back_without_sampling():
    c, engine = conductor([])
    r = c.plan("q", [])
    assert r.fell_back and r.errors == ["no_workers"] and not engine.calls
    assert r.workflow == Workflow(())


def test_mismatched_previous_is_a_config_error():
    c, _ = conductor([])
    with pytest.raises(ConfigError, match="previous"):
        c.plan_many(["a", "b"], WORKERS, previous=[None])


def test_config_is_a_structured_config():
    cfg = OmegaConf.merge(OmegaConf.structured(ConductorConfig),
                          OmegaConf.from_dotlist(["temperature=0", "fallback_worker=big"]))
    assert cfg.temperature == 0.0 and cfg.fallback_worker == "big" and cfg.max_resamples == 5
    with pytest.raises(ConfigError, match="engine"):
        build_engine(ConductorConfig(engine="tensorrt"))


def test_tiny_model_end_to_end_never_raises():
    cfg = ConductorConfig(model="tiny-smollm2", max_new_tokens=12, max_resamples=1, seed=0)
    c = Conductor(build_engine(cfg), cfg)
    results = c.plan_many(["What is 2+2?", "Name a prime."], WORKERS)
    for r in results:
        assert 1 <= r.n_attempts <= 2 and len(r.samples) == r.n_attempts
        assert r.workflow.steps  # a random model's text is malformed: the fallback plan
        assert all(len(s.logprobs) == len(s.completion_ids) for s in r.samples)


class RankedEngine(ScriptedEngine):
    """Returns, per prompt, the scripted (text, total log-prob) candidates, n of them."""

    def generate(self, prompts, n, temperature, max_tokens, top_p=1.0, seed=None):
        self.calls.append(dict(prompts=prompts, n=n, temperature=temperature, seed=seed))
        out = []
        for _ in prompts:
            group = self.texts.pop(0)
            assert len(group) == n
            out.append([Sample([1], [2, 3], t, [lp / 2, lp / 2], "stop") for t, lp in group])
        return out


def test_greedy_samples_keeps_the_likeliest_parsable_plan():
    engine = RankedEngine([[(GOOD, -3.0), (GOOD2, -1.0), (BAD, -0.1)]])
    c = Conductor(engine, ConductorConfig(temperature=0.0, greedy_samples=3))
    r = c.plan("q", WORKERS)
    assert [s.worker for s in r.workflow] == ["small", "big"]  # GOOD2: the likeliest that parses
    assert (r.n_attempts, r.fell_back, r.errors) == (1, False, [])  # one attempt of 3 draws
    assert r.sample.text == GOOD2 and r.texts == [GOOD, GOOD2, BAD]
    assert engine.calls[0]["n"] == 3 and engine.calls[0]["temperature"] == 1.0
    assert engine.calls[0]["seed"] == 0  # reproducible, as greedy is


def test_greedy_samples_none_parsable_resamples_then_falls_back():
    engine = RankedEngine([[(BAD, -1.0), (BAD_RANGE, -2.0)], [(GOOD, -1.0)]])
    c = Conductor(engine, ConductorConfig(temperature=0.0, greedy_samples=2, max_resamples=1,
                                          resample_temperature=0.5))
    r = c.plan("q", WORKERS)
    assert r.errors == ["missing_list", "worker_out_of_range"]  # both draws of attempt 1
    assert (r.n_attempts, r.fell_back) == (2, False) and r.workflow.steps[0].worker == "big"
    assert [(k["n"], k["temperature"]) for k in engine.calls] == [(2, 1.0), (1, 0.5)]
    sampled = Conductor(RankedEngine([[(GOOD, -1.0)]]), ConductorConfig(greedy_samples=4))
    assert not sampled.plan("q", WORKERS).fell_back  # temperature > 0: one sample, as before
