"""The LM conductor's vocabulary: program workers and conditional steps offered when
`programs=true`, worker names as ids when `worker_ids=name`, and the format warm-up writing
every form it may later be asked for."""

from __future__ import annotations

import random

from ray_conductor.policy.conductor import ConductorConfig, conductor_prompt, offered_workers
from ray_conductor.rl.rollout import random_plan
from ray_conductor.workers.base import WorkerInfo
from ray_conductor.workflow import parse, render

POOL = [WorkerInfo(f"w{i}", "", 0.1 * i, 0.2 * i) for i in range(1, 12)]


def test_programs_are_offered_after_the_pool_and_explained():
    plain = ConductorConfig(recursion_depth=0)
    assert [w.name for w in offered_workers(POOL, plain)] == [w.name for w in POOL]
    cfg = ConductorConfig(recursion_depth=0, programs=True)
    names = [w.name for w in offered_workers(POOL, cfg)]
    assert names == [w.name for w in POOL] + ["vote"]
    text = conductor_prompt("Q?", offered_workers(POOL, cfg), cfg)[1]["content"]
    assert "11: vote (free, no model)" in text and "disagree:0,1" in text


def test_names_as_ids_keep_digits_out_of_the_plan():
    cfg = ConductorConfig(recursion_depth=0, programs=True, worker_ids="name")
    offered = offered_workers(POOL, cfg)
    text = conductor_prompt("Q?", offered, cfg)[1]["content"]
    assert "- w10 (" in text and "10: w10" not in text
    assert "model_id = ['w1'" in text  # the examples write names
    assert "model_id = [0" not in text


def test_the_warm_up_writes_every_form_and_each_parses():
    cfg = ConductorConfig(recursion_depth=0, programs=True, worker_ids="name")
    offered = offered_workers(POOL, cfg)
    names = [w.name for w in offered]
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        wf = random_plan(rng, offered, cfg)
        assert parse(render(wf), names) == wf
        seen.add("vote" if "vote" in wf.workers else
                 "cascade" if any(s.when for s in wf) else len(wf))
    assert seen == {1, 2, "cascade", "vote"}
