"""Conditional steps and votes over a real `ReplayPool`: the same decisions as with live
workers (which give only text), and the judge agrees with the vote."""

import pytest

from ray_conductor.data.replay import ReplayData, ReplayPool
from ray_conductor.data.table import TableBuilder
from ray_conductor.workers.base import Completion
from ray_conductor.workflow import Step, Workflow, execute

Q = "Which planet is the largest?\n\nA. Mars\nB. Jupiter\nC. Venus"
# query -> model -> recorded response; the letter is also the recorded extracted answer
RECORDED = {
    "agree": {"cheap": "B", "mid": "B", "strong": "B"},
    "split": {"cheap": "A", "mid": "B", "strong": "B"},
    "three": {"cheap": "A", "mid": "C", "strong": "B"},
}
PRICE = {"cheap": (0.1, 0.4), "mid": (1.0, 2.0), "strong": (5.0, 15.0)}


@pytest.fixture(scope="module")
def data():
    b = TableBuilder()
    for qid, by_model in RECORDED.items():
        for model, letter in by_model.items():
            pin, pout = PRICE[model]
            b.add(query_id=qid, query=f"{Q} ({qid})", task="mmlu_pro/astronomy",
                  answer_format="mc", reference="B", model=model,
                  response=f"I think the answer is ({letter}).", answer=letter, correct=None,
                  input_tokens=1000, output_tokens=100, cost=(1000 * pin + 100 * pout) / 1e6,
                  cost_source="price_table")
    return ReplayData(b.table())


class LivePool(ReplayPool):
    """The same recordings, but answering like a live worker: text only, no extracted answer."""

    async def complete(self, worker, messages, **params):
        c = await super().complete(worker, messages, **params)
        return Completion(c.worker, c.text, c.input_tokens, c.output_tokens, c.cost,
                          error=c.error, error_code=c.error_code)


CASCADE_VOTE = Workflow((Step("cheap", "Answer.", ()), Step("mid", "Answer.", ()),
                         Step("strong", "Decide.", (0, 1), "disagree"),
                         Step("vote", "Give the most common answer.", "all")))


def summary(trace):
    return [(s.skipped, s.answer, s.winner, round(s.cost, 9)) for s in trace.steps]


@pytest.mark.parametrize("qid, strong_runs, winner", [
    ("agree", False, 1),  # cheap and mid agree on B: strong is skipped; tie-free vote
    ("split", True, 2),  # A vs B: strong runs (B); B wins 2-1, strong outranks mid
    ("three", True, 2),  # A, C, B: a three-way tie goes to the strongest (priciest) worker
])
async def test_replay_and_live_make_the_same_decisions(data, qid, strong_runs, winner):
    replay = await execute(CASCADE_VOTE, f"{Q} ({qid})", ReplayPool(data), query_id=qid,
                           answer_format="mc")
    live = await execute(CASCADE_VOTE, f"{Q} ({qid})", LivePool(data), query_id=qid,
                         answer_format="mc")
    assert summary(replay) == summary(live)
    assert replay.steps[2].skipped is (not strong_runs)
    assert replay.steps[3].winner == winner and replay.answer == live.answer
    assert replay.calls == (3 if strong_runs else 2)
    recorded = sum(data.record(qid, m).cost for m in ("cheap", "mid", "strong")[:replay.calls])
    assert abs(replay.cost - recorded) < 1e-12
    assert data.judge(qid, replay.answer) is (replay.steps[3].answer == "B")
