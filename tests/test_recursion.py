"""RecursivePool: the conductor as its own worker, over a fake pool, through the executor."""

from __future__ import annotations

import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.policy.conductor import Conductor, ConductorConfig
from ray_conductor.policy.engine import Sample
from ray_conductor.policy.recursion import RecursivePool, describe_previous, read_step_view
from ray_conductor.workers.base import Completion, WorkerInfo
from ray_conductor.workflow import Step, Workflow, execute_sync

EMPTY = "model_id = []\nsubtasks = []\naccess_list = []"


class EchoPool:
    """Two workers that answer '<worker>: <subtask>', 10 tokens in, 5 out, $0.01 a call."""

    def __init__(self):
        self.calls = []

    def workers(self):
        return [WorkerInfo("small"), WorkerInfo("big")]

    async def complete(self, worker, messages, **params):
        self.calls.append((worker, messages[-1]["content"], params))
        task = messages[-1]["content"].rsplit("Your task:\n", 1)[-1]
        return Completion(worker, text=f"{worker}: {task}", input_tokens=10, output_tokens=5,
                          cost=0.01)


class ScriptedEngine:
    tokenizer = None

    def __init__(self, texts):
        self.texts = list(texts)
        self.prompts = []

    def generate(self, prompts, n, temperature, max_tokens, top_p=1.0, seed=None):
        self.prompts.extend(prompts)
        return [[Sample([1], [2], self.texts.pop(0), [-0.1], "stop")] for _ in prompts]

    def get_state_dict(self):
        return {}

    def load_state_dict(self, sd):
        pass


def setup(texts, depth=1):
    engine = ScriptedEngine(texts)
    c = Conductor(engine, ConductorConfig(recursion_depth=depth))
    base = EchoPool()
    return RecursivePool(base, c), base, engine


OUTER = Workflow((Step("small", "Draft an answer.", ()), Step("conductor", "Improve it.", "all")))


def test_self_worker_offered_only_while_depth_remains():
    pool, _, _ = setup([], depth=1)
    assert [w.name for w in pool.workers()] == ["small", "big", "conductor"]
    pool0, _, _ = setup([], depth=0)
    assert [w.name for w in pool0.workers()] == ["small", "big"]


def test_inner_workflow_runs_one_level_deeper_and_sums_costs():
    inner = "model_id = [1]\nsubtasks = ['Check the draft.']\naccess_list = [[]]"
    pool, base, engine = setup([inner])
    trace = execute_sync(OUTER, "What is 6*7?", pool, query_id="q1")
    assert trace.answer == "big: Check the draft."
    step = trace.steps[1]
    assert (step.input_tokens, step.output_tokens, round(step.cost, 6)) == (10, 5, 0.01)
    assert step.error is None
    # the inner prompt shows what the step saw, and offers no conductor at depth 0
    [prompt] = engine.prompts
    body = prompt[-1]["content"]
    assert "<Agent 0 response>\nsmall: Draft an answer.\n</Agent 0 response>" in body
    assert "The calling step's task: Improve it." in body
    assert "2: conductor" not in body and "Question: What is 6*7?" in body
    # inner calls keep the run's query id
    assert base.calls[-1][2]["metadata"]["query_id"] == "q1"


def test_completion_meta_holds_the_inner_trace():
    import asyncio

    inner = "model_id = [0, 1]\nsubtasks = ['A.', 'B.']\naccess_list = [[], 'all']"
    pool, _, _ = setup([inner])
    msg = [{"role": "user", "content": "Original question:\nq\n\n<Agent 0 response>\nhello\n"
            "</Agent 0 response>\n\nYour task:\nImprove it."}]
    c = asyncio.run(pool.complete("conductor", msg, metadata={"question": "q"}))
    assert c.ok and c.text == "big: B." and c.input_tokens == 20 and c.output_tokens == 10
    assert abs(c.cost - 0.02) < 1e-12
    assert c.meta["depth"] == 1 and c.meta["plan_attempts"] == 1 and not c.meta["kept_previous"]
    assert [s["worker"] for s in c.meta["trace"]["steps"]] == ["small", "big"]


def test_empty_inner_plan_keeps_the_last_visible_output():
    pool, base, _ = setup([EMPTY])
    trace = execute_sync(OUTER, "q", pool)
    assert trace.answer == "small: Draft an answer."
    assert trace.steps[1].cost == 0 and len(base.calls) == 1


def test_malformed_inner_plans_fall_back_to_keeping_the_answer():
    pool, _, engine = setup(["nonsense"] * 6)
    trace = execute_sync(OUTER, "q", pool)
    assert trace.answer == "small: Draft an answer." and len(engine.prompts) == 6


def test_keeping_with_nothing_visible_is_an_error():
    pool, _, _ = setup([EMPTY])
    wf = Workflow((Step("conductor", "Solve.", ()),))
    trace = execute_sync(wf, "q", pool)
    assert trace.answer == "" and trace.steps[0].error_code == "nothing_to_keep"


def test_conductor_at_depth_zero_is_an_unknown_worker():
    pool, _, _ = setup([], depth=0)
    trace = execute_sync(OUTER, "q", pool)
    assert trace.steps[1].error_code == "unknown_worker"


def test_depth_two_recurses_twice():
    outer = "model_id = [2]\nsubtasks = ['Think again.']\naccess_list = ['all']"
    inner = "model_id = [1]\nsubtasks = ['Final.']\naccess_list = [[]]"
    pool, _, engine = setup([outer, inner], depth=2)
    trace = execute_sync(OUTER, "q", pool)
    assert trace.answer == "big: Final."
    assert "2: conductor" in engine.prompts[0][-1]["content"]
    assert "2: conductor" not in engine.prompts[1][-1]["content"]


def test_name_clash_is_a_config_error():
    class Clash(EchoPool):
        def workers(self):
            return [WorkerInfo("conductor")]

    with pytest.raises(ConfigError, match="self_name"):
        RecursivePool(Clash(), Conductor(ScriptedEngine([]), ConductorConfig()))


def test_step_view_parsing():
    content = ("Original question:\nq\n\n<Agent 0 response>\na\nb\n</Agent 0 response>\n\n"
               "<Agent 2 response>\nc\n</Agent 2 response>\n\nYour task:\nDo it.")
    assert read_step_view(content) == ([(0, "a\nb"), (2, "c")], "Do it.")
    assert describe_previous("free text") == "free text"
    assert describe_previous("Original question:\nq\n\nYour task:\nGo.").startswith(
        "(no earlier outputs are visible)")
