"""The DAG executor: concurrency, what each step sees, traces, and failures as data."""

import asyncio
import time

from ray_conductor.errors import ConfigError, PoolError
from ray_conductor.workers.base import Completion, WorkerInfo
from ray_conductor.workflow import Step, Workflow, execute


class SleepyPool:
    """Each worker sleeps, then echoes which agent blocks it saw; 'broken' always fails."""

    def __init__(self, delay=0.0):
        self.delay = delay
        self.calls = []

    def workers(self):
        return [WorkerInfo(n) for n in ("a", "b", "c", "broken")]

    async def complete(self, worker, messages, **params):
        self.calls.append((worker, messages, params))
        await asyncio.sleep(self.delay)
        if worker == "broken":
            return Completion(worker, error="HTTP 500 from provider", error_code="server_error")
        if worker == "raises":
            raise PoolError("no such worker 'raises'")
        seen = [k for k in range(5) if f"<Agent {k} response>" in messages[0]["content"]]
        return Completion(worker, text=f"{worker} saw {seen}", input_tokens=10,
                          output_tokens=5, cost=0.01)


async def test_independent_steps_run_concurrently():
    pool = SleepyPool(delay=1.0)
    wf = Workflow((Step("a", "x", ()), Step("b", "y", ())))
    t0 = time.perf_counter()
    trace = await execute(wf, "Q", pool)
    wall = time.perf_counter() - t0
    assert 0.9 < wall < 1.5, wall
    assert abs(trace.steps[0].start_s - trace.steps[1].start_s) < 0.2


async def test_dependent_step_waits_and_sees_only_its_access():
    pool = SleepyPool(delay=0.2)
    wf = Workflow((Step("a", "x", ()), Step("b", "y", ()), Step("c", "z", (1,))))
    trace = await execute(wf, "Q", pool, query_id="q1")
    assert trace.answer == "c saw [1]"
    assert trace.steps[2].start_s >= trace.steps[1].end_s - 1e-3
    assert 0.35 < trace.wall_s < 0.7  # two levels of 0.2 s, not three


async def test_messages_hold_question_subtask_and_agent_blocks():
    pool = SleepyPool()
    wf = Workflow((Step("a", "solve", ()), Step("b", "check", "all")))
    await execute(wf, "What is 2+2?", pool, query_id="q7", params={"temperature": 0})
    _, msgs, params = pool.calls[1]
    text = msgs[0]["content"]
    assert "What is 2+2?" in text and "check" in text
    assert "<Agent 0 response>\na saw []\n</Agent 0 response>" in text
    assert params["temperature"] == 0
    assert params["metadata"] == {"query_id": "q7", "question": "What is 2+2?",
                                  "answer_format": None}


async def test_trace_contents_and_totals():
    trace = await execute(Workflow((Step("a", "x", ()), Step("b", "y", "all"))), "Q", SleepyPool())
    s0, s1 = trace.steps
    assert (s0.index, s0.worker, s0.subtask, s0.access) == (0, "a", "x", [])
    assert s1.access == [0]
    assert (s1.input_tokens, s1.output_tokens, s1.cost) == (10, 5, 0.01)
    assert trace.calls == 2 and abs(trace.cost - 0.02) < 1e-12
    assert trace.final_worker == "b"
    d = trace.to_dict()
    assert d["calls"] == 2 and d["steps"][1]["worker"] == "b"


async def test_failed_step_is_recorded_and_dependents_still_run():
    wf = Workflow((Step("broken", "x", ()), Step("a", "y", ()), Step("c", "z", "all")))
    trace = await execute(wf, "Q", SleepyPool())
    assert trace.steps[0].error == "HTTP 500 from provider"
    assert trace.steps[0].error_code == "server_error"
    assert trace.answer == "c saw [1]"  # the failed output is simply absent
    assert trace.errors == ["step 0 (broken): HTTP 500 from provider"]


async def test_failed_last_step_gives_empty_answer_and_raising_pool_is_contained():
    trace = await execute(Workflow.single("raises"), "Q", SleepyPool())
    assert trace.answer == ""
    assert trace.steps[0].error_code == "pool_error"
    assert "no such worker" in trace.steps[0].error


async def test_step_timeout_is_recorded():
    trace = await execute(Workflow.single("a"), "Q", SleepyPool(delay=1.0), step_timeout_s=0.1)
    assert trace.steps[0].error_code == "timeout"
    assert trace.wall_s < 0.5


# -- conditional steps and program workers (issue 14) ------------------------------------

class AnswerPool:
    """Each worker returns a fixed text; its completion carries the extracted answer the way
    a replay pool does (`meta["answer"]`: the letter in the text's last parentheses, or
    `answers[worker]`) unless `meta_answers` is off. Prices: a $1, b $2, c $5, d $2 in + out
    per 1M; each call costs 0.01."""

    PRICES = {"a": 1.0, "b": 2.0, "c": 5.0, "d": 2.0, "broken": 1.0}

    def __init__(self, texts, delay=0.0, meta_answers=True, answers=None):
        self.texts, self.delay, self.meta_answers = texts, delay, meta_answers
        self.answers = answers or {}
        self.calls = []

    def workers(self):
        return [WorkerInfo(n, "", p / 2, p / 2) for n, p in self.PRICES.items()]

    async def complete(self, worker, messages, **params):
        self.calls.append((worker, messages[0]["content"]))
        await asyncio.sleep(self.delay)
        if worker == "broken":
            return Completion(worker, error="HTTP 500", error_code="server_error")
        text = self.texts[worker]
        recorded = self.answers.get(worker, text.rsplit("(", 1)[-1][:1])
        meta = {"answer": recorded} if self.meta_answers else {}
        return Completion(worker, text=text, input_tokens=10, output_tokens=5, cost=0.01,
                          meta=meta)


def mc(letter, who="w"):
    return f"{who} thinks the answer is ({letter})."


CASCADE = Workflow((Step("a", "solve", ()), Step("b", "solve", ()),
                    Step("c", "decide", (0, 1), "disagree")))


async def test_cascade_is_skipped_when_the_first_two_agree():
    pool = AnswerPool({"a": mc("B", "a"), "b": mc("B", "b"), "c": mc("C", "c")})
    trace = await execute(CASCADE, "Q", pool, answer_format="mc")
    s0, s1, s2 = trace.steps
    assert s2.skipped and not s2.program and s2.when == "disagree"
    assert (s2.cost, s2.attempts, s2.text, s2.answer) == (0.0, 0, "", None)
    assert [w for w, _ in pool.calls] == ["a", "b"]
    assert trace.calls == 2 and abs(trace.cost - 0.02) < 1e-12
    assert trace.answer == mc("B", "b")  # the last step that ran
    assert trace.final_worker == "b" and trace.final_step is s1
    assert (s0.answer, s1.answer) == ("B", "B")


async def test_cascade_runs_when_the_first_two_disagree():
    pool = AnswerPool({"a": mc("A", "a"), "b": mc("B", "b"), "c": mc("C", "c")})
    trace = await execute(CASCADE, "Q", pool, answer_format="mc")
    assert not trace.steps[2].skipped
    assert trace.calls == 3 and abs(trace.cost - 0.03) < 1e-12
    assert trace.answer == mc("C", "c") and trace.final_worker == "c"
    c_view = pool.calls[2][1]
    assert "<Agent 0 response>" in c_view and "<Agent 1 response>" in c_view


async def test_agree_runs_only_on_agreement_and_conditions_over_all_earlier_steps():
    wf = Workflow((Step("a", "x", ()), Step("b", "y", ()), Step("d", "z", (), None),
                   Step("c", "only if all three agree", "all", "agree")))
    agree = AnswerPool({"a": mc("D"), "b": mc("D"), "c": mc("A"), "d": mc("D")})
    assert not (await execute(wf, "Q", agree, answer_format="mc")).steps[3].skipped
    split = AnswerPool({"a": mc("D"), "b": mc("D"), "c": mc("A"), "d": mc("E")})
    trace = await execute(wf, "Q", split, answer_format="mc")
    assert trace.steps[3].skipped and trace.answer == mc("E") and trace.calls == 3


async def test_failed_and_unreadable_answers_in_conditions():
    # a cheap step failed: agreement is not shown, so "disagree" holds and the strong step runs
    wf = Workflow((Step("broken", "x", ()), Step("b", "y", ()),
                   Step("c", "z", (0, 1), "disagree")))
    pool = AnswerPool({"b": mc("B"), "c": mc("C")})
    trace = await execute(wf, "Q", pool, answer_format="mc")
    assert not trace.steps[2].skipped and trace.answer == mc("C")
    # ... and "agree" does not
    agree = Workflow(wf.steps[:2] + (Step("c", "z", (0, 1), "agree"),))
    trace = await execute(agree, "Q", pool, answer_format="mc")
    assert trace.steps[2].skipped and trace.answer == mc("B")
    # an unreadable answer counts as its own: "disagree" holds, the strong step runs
    pool = AnswerPool({"a": "no letter here", "b": mc("B"), "c": mc("C")}, meta_answers=False)
    trace = await execute(CASCADE, "Q", pool, answer_format="mc")
    assert trace.steps[0].answer is None and not trace.steps[2].skipped


async def test_answers_come_from_the_pool_else_from_the_text():
    texts = {"a": "The answer is (A). Later: Answer: C", "b": mc("B"), "c": mc("C")}
    live = await execute(Workflow.single("a"), "Q", AnswerPool(texts, meta_answers=False),
                         answer_format="mc")
    assert live.steps[0].answer == "A"  # extract_choice on the text
    replayed = await execute(Workflow.single("a"), "Q", AnswerPool(texts, answers={"a": "C"}),
                             answer_format="mc")
    assert replayed.steps[0].answer == "C"  # the pool's recorded answer wins
    none = await execute(Workflow.single("a"), "Q", AnswerPool(texts, meta_answers=False))
    assert none.steps[0].answer is None  # no answer_format: nothing extracted


VOTE3 = Workflow((Step("a", "x", ()), Step("b", "y", ()), Step("c", "z", ()),
                  Step("vote", "v", "all")))


async def test_vote_picks_the_plurality_and_repeats_the_winners_text():
    pool = AnswerPool({"a": mc("A", "a"), "b": mc("B", "b"), "c": mc("B", "c")})
    trace = await execute(VOTE3, "Q", pool, answer_format="mc")
    v = trace.steps[3]
    assert v.program and not v.skipped and v.error is None
    assert (v.winner, v.answer, v.text) == (2, "B", mc("B", "c"))  # c outranks b on price
    assert v.cost == 0.0 and v.attempts == 0 and v.input_tokens == 0
    assert trace.calls == 3 and abs(trace.cost - 0.03) < 1e-12
    assert trace.answer == mc("B", "c") and trace.final_worker == "c"
    assert [w for w, _ in pool.calls] == ["a", "b", "c"]  # the vote called nobody


async def test_vote_tie_goes_to_the_strongest_step():
    wf = Workflow((Step("a", "x", ()), Step("b", "y", ()), Step("vote", "v", "all")))
    pool = AnswerPool({"a": mc("A"), "b": mc("B")})
    by_price = await execute(wf, "Q", pool, answer_format="mc")
    assert by_price.steps[2].winner == 1  # b ($2) over a ($1)
    by_strength = await execute(wf, "Q", pool, answer_format="mc", strength={"a": 0.9, "b": 0.4})
    assert by_strength.steps[2].winner == 0 and by_strength.answer == mc("A")
    same = await execute(Workflow((Step("b", "x", ()), Step("d", "y", ()),
                                   Step("vote", "v", "all"))),
                         "Q", AnswerPool({"b": mc("A"), "d": mc("B")}), answer_format="mc")
    assert same.steps[2].winner == 0  # equal strength ($2 each): the earliest step


async def test_vote_has_no_comparable_answer_for_code_or_unreadable_answers():
    pool = AnswerPool({"a": mc("A"), "b": mc("A"), "c": mc("B")})
    trace = await execute(VOTE3, "Q", pool, answer_format="code")
    v = trace.steps[3]
    assert v.error_code == "no_comparable_answer" and "code" in v.error
    assert trace.answer == "" and trace.final_worker == "vote"
    unreadable = AnswerPool({"a": "hmm", "b": "no idea", "c": "pass"}, meta_answers=False)
    trace = await execute(VOTE3, "Q", unreadable, answer_format="mc")
    assert trace.steps[3].error_code == "no_comparable_answer" and trace.answer == ""


async def test_vote_after_a_cascade_ignores_the_skipped_step():
    wf = Workflow(CASCADE.steps + (Step("vote", "v", "all"),))
    pool = AnswerPool({"a": mc("D"), "b": mc("D"), "c": mc("A")})
    trace = await execute(wf, "Q", pool, answer_format="mc")
    assert trace.steps[2].skipped and trace.steps[3].winner in (0, 1)
    assert trace.steps[3].answer == "D" and trace.calls == 2


async def test_a_vote_can_read_a_vote_and_carries_its_winners_strength():
    wf = Workflow((Step("a", "x", ()), Step("c", "y", ()), Step("vote", "v", "all"),
                   Step("d", "z", ()), Step("vote", "v2", (2, 3))))
    pool = AnswerPool({"a": mc("A"), "c": mc("C", "c"), "d": mc("D")})
    trace = await execute(wf, "Q", pool, answer_format="mc")
    assert trace.steps[2].winner == 1  # tie A/C: c ($5) beats a ($1)
    # tie C (the inner vote, as strong as c: $5) / D (d: $2): the inner vote wins
    assert trace.steps[4].winner == 2 and trace.steps[4].answer == "C"
    assert trace.answer == mc("C", "c") and trace.final_worker == "c"


async def test_steps_run_concurrently_around_conditions_and_votes():
    pool = AnswerPool({"a": mc("A"), "b": mc("B"), "c": mc("C")}, delay=0.5)
    wf = Workflow(CASCADE.steps + (Step("vote", "v", "all"),))
    trace = await execute(wf, "Q", pool, answer_format="mc")
    s0, s1, s2, s3 = trace.steps
    assert s1.start_s < s0.end_s and s0.start_s < s1.end_s  # a and b overlap
    assert s2.start_s >= max(s0.end_s, s1.end_s) - 1e-3 and s3.start_s >= s2.end_s - 1e-3
    assert trace.wall_s < 1.4  # two levels of 0.5 s, not three


async def test_trace_dict_carries_the_new_fields():
    pool = AnswerPool({"a": mc("B"), "b": mc("B"), "c": mc("C")})
    wf = Workflow(CASCADE.steps + (Step("vote", "v", "all"),))
    d = (await execute(wf, "Q", pool, answer_format="mc")).to_dict()
    assert d["calls"] == 2 and abs(d["cost"] - 0.02) < 1e-12
    s2, s3 = d["steps"][2], d["steps"][3]
    assert (s2["skipped"], s2["program"], s2["when"], s2["answer"]) == (True, False, "disagree",
                                                                        None)
    assert (s3["skipped"], s3["program"], s3["answer"], s3["winner"]) == (False, True, "B", 1)


async def test_a_pool_worker_named_like_a_program_is_refused():
    class Clash(AnswerPool):
        def workers(self):
            return super().workers() + [WorkerInfo("vote")]

    pool = Clash({"a": mc("A"), "b": mc("A")})
    try:
        await execute(Workflow((Step("a", "x", ()), Step("vote", "v", "all"))), "Q", pool,
                      answer_format="mc")
    except ConfigError as e:
        assert e.code == "program_name_clash" and "'vote'" in str(e)
    else:
        raise AssertionError("expected ConfigError")
    assert pool.calls == []  # refused before any call


async def test_unknown_answer_format_is_refused_before_any_call():
    pool = AnswerPool({"a": mc("A")})
    try:
        await execute(Workflow.single("a"), "Q", pool, answer_format="multiple-choice")
    except ConfigError as e:
        assert "known: mc" in str(e)
    else:
        raise AssertionError("expected ConfigError")
    assert pool.calls == []
