"""The conductor's prompt with program workers and conditional steps."""

import re

from ray_conductor.workers.base import WorkerInfo
from ray_conductor.workflow import Step, build_prompt, parse, with_programs

POOL = [WorkerInfo("flash", "cheap", 0.1, 0.4), WorkerInfo("pro", "", 1.25, 10),
        WorkerInfo("gpt-4o", "strong", 2.5, 10), WorkerInfo("conductor", "myself")]


def user_text(workers, **kw):
    _, user = build_prompt("What is 2+2?", workers, self_name="conductor", **kw)
    return user["content"]


def example_plans(text, names, max_steps=5):
    """Every example plan in the prompt, parsed with the offered names."""
    blocks = re.findall(r"model_id = .*\nsubtasks = .*\naccess_list = .*", text)
    return [parse(b, names, max_steps=max_steps) for b in blocks]


def test_program_workers_are_listed_free_with_their_description():
    text = user_text(with_programs(POOL))
    assert "4: vote (free, no model) - gives the most common answer among the steps" in text
    assert "0: flash ($0.1/$0.4 per 1M in/out tokens) - cheap" in text


def test_conditions_are_explained_with_one_example_when_programs_are_offered():
    offered = with_programs(POOL)
    names = [w.name for w in offered]
    text = user_text(offered)
    assert "'disagree:0,1' runs the step only if steps 0 and 1 gave different answers" in text
    assert "the answer is the output of the last step that ran" in text
    plans = example_plans(text, names)
    assert len(plans) == 3
    cascade = plans[-1]
    assert cascade.workers == ("flash", "pro", "gpt-4o", "vote")  # cheap, cheap, strong, vote
    assert cascade[2].when == "disagree" and cascade[2].access == (0, 1)
    assert cascade[3] == Step("vote", "Give the most common answer.", "all")
    assert "access_list = [[], [], 'disagree:0,1', 'all']" in text
    assert all("conductor" not in p.workers for p in plans)
    assert all("vote" not in p.workers[:-1] for p in plans)  # vote only votes


def test_without_programs_the_prompt_is_as_before_unless_asked():
    plain = user_text(POOL)
    assert "disagree" not in plain and "vote" not in plain
    assert len(example_plans(plain, [w.name for w in POOL])) == 2
    asked = user_text(POOL, conditions=True)
    assert "'disagree:0,1'" in asked
    cascade = example_plans(asked, [w.name for w in POOL])[-1]
    assert cascade.workers == ("flash", "pro", "gpt-4o")  # no vote offered: none in the plan


def test_the_example_fits_max_steps():
    offered = with_programs(POOL)
    names = [w.name for w in offered]
    three = user_text(offered, max_steps=3)
    assert example_plans(three, names, max_steps=3)[-1].workers == ("flash", "pro", "gpt-4o")
    two = user_text(offered, max_steps=2)
    assert "'disagree:0,1' runs" in two and len(example_plans(two, names, max_steps=2)) == 2


def test_without_few_shot_the_rule_is_still_stated():
    text = user_text(with_programs(POOL), few_shot=False)
    assert "'agree:0,1' only if they gave the same answer" in text
    assert "Example" not in text


def test_a_one_worker_pool_still_gets_a_valid_example():
    offered = with_programs([WorkerInfo("solo", "", 1, 1)])
    plans = example_plans(user_text(offered), ["solo", "vote"])
    assert plans[-1].workers == ("solo", "solo", "solo", "vote")


def test_a_pool_of_programs_only_gets_no_examples_rather_than_a_crash():
    text = user_text(with_programs([]))
    assert "0: vote (free, no model)" in text and "Example question" not in text
