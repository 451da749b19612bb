"""TransformersEngine on the tiny model: shapes, log-probs against a fresh forward pass,
seeding, padding invariance, stopping at EOS, weights in and out."""

from __future__ import annotations

import pytest
import torch

from ray_conductor.errors import ConfigError
from ray_conductor.policy.engine import GenerationEngine, prompt_ids
from ray_conductor.policy.hf_engine import TransformersEngine

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
LONG = "a much longer raw prompt, with many more tokens than the chat one has in it " * 3
SHORT = "hi"


@pytest.fixture(scope="module")
def engine():
    return TransformersEngine("tiny-smollm2", batch_size=8)


def fresh_logprobs(model, sample):
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    start = len(sample.prompt_ids) - 1
    logp = torch.log_softmax(logits[start:-1], -1)
    return logp.gather(1, torch.tensor(sample.completion_ids)[:, None]).squeeze(1), logits


def test_meets_the_protocol(engine):
    assert isinstance(engine, GenerationEngine)


def test_one_list_of_n_samples_per_prompt(engine):
    out = engine.generate([CHAT, LONG], n=3, temperature=1.0, max_tokens=12, seed=0)
    assert [len(o) for o in out] == [3, 3]
    assert out[0][0].prompt_ids == prompt_ids(engine.tokenizer, CHAT)
    assert out[1][0].prompt_ids == prompt_ids(engine.tokenizer, LONG)
    for s in out[0] + out[1]:
        assert 1 <= len(s.completion_ids) == len(s.logprobs) <= 12
        assert (s.finish_reason == "stop") == (s.completion_ids[-1] in engine.eos_ids)
        assert s.text == engine.tokenizer.decode(s.completion_ids, skip_special_tokens=True)


def test_chat_prompt_uses_the_template_with_generation_prompt(engine):
    text = engine.tokenizer.decode(prompt_ids(engine.tokenizer, CHAT))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_logprobs_match_a_fresh_forward_pass(engine, temperature, top_p):
    """Convention: log pi at temperature 1 on the raw logits, whatever we sampled with;
    mixed prompt lengths check that left padding leaves the numbers alone."""
    out = engine.generate([SHORT, CHAT, LONG], n=2, temperature=temperature, max_tokens=16,
                          top_p=top_p, seed=1)
    for s in (s for group in out for s in group):
        expected, _ = fresh_logprobs(engine.model, s)
        assert torch.allclose(torch.tensor(s.logprobs), expected, atol=1e-4)


def test_greedy_is_argmax_and_ignores_padding(engine):
    [[alone]] = engine.generate([SHORT], n=1, temperature=0, max_tokens=10)
    batched = engine.generate([LONG, SHORT], n=1, temperature=0, max_tokens=10)
    assert batched[1][0].completion_ids == alone.completion_ids
    _, logits = fresh_logprobs(engine.model, alone)
    start = len(alone.prompt_ids) - 1
    assert logits[start:-1].argmax(-1).tolist() == alone.completion_ids


def test_seed_makes_calls_reproducible(engine):
    a = engine.generate([CHAT, SHORT], n=2, temperature=1.0, max_tokens=8, seed=7)
    b = engine.generate([CHAT, SHORT], n=2, temperature=1.0, max_tokens=8, seed=7)
    c = engine.generate([CHAT, SHORT], n=2, temperature=1.0, max_tokens=8, seed=8)
    ids = lambda out: [s.completion_ids for g in out for s in g]  # noqa: E731
    assert ids(a) == ids(b) != ids(c)
    assert a[0][0].completion_ids != a[0][1].completion_ids  # the n samples differ


def test_batches_smaller_than_the_rows_give_the_same_greedy_answers(engine):
    small = TransformersEngine(engine.model, tokenizer=engine.tokenizer, batch_size=2)
    a = small.generate([CHAT, LONG, SHORT], n=2, temperature=0, max_tokens=6)
    b = engine.generate([CHAT, LONG, SHORT], n=2, temperature=0, max_tokens=6)
    assert [[s.completion_ids for s in g] for g in a] == [[s.completion_ids for s in g] for g in b]


def test_stops_at_eos(engine):
    [[first]] = engine.generate([SHORT], n=1, temperature=0, max_tokens=5)
    stopper = TransformersEngine(engine.model, tokenizer=engine.tokenizer)
    stopper.eos_ids = {first.completion_ids[0]}  # pretend the greedy first token is EOS
    [[s]] = stopper.generate([SHORT], n=1, temperature=0, max_tokens=5)
    assert s.completion_ids == first.completion_ids[:1] and s.finish_reason == "stop"
    assert first.finish_reason == "length" and len(first.completion_ids) == 5


def test_bf16_autocast_runs_and_stays_close(engine):
    fast = TransformersEngine(engine.model, tokenizer=engine.tokenizer, autocast="bfloat16")
    out = fast.generate([CHAT, LONG], n=2, temperature=1.0, max_tokens=8, seed=0)
    for s in (s for g in out for s in g):
        expected, _ = fresh_logprobs(engine.model, s)
        assert all(map(lambda x: x == x and x <= 0, s.logprobs))
        assert torch.allclose(torch.tensor(s.logprobs), expected, atol=0.2)


def test_state_dict_round_trip(engine):
    other = TransformersEngine("tiny-smollm2")
    sd = engine.get_state_dict()
    assert all(t.device.type == "cpu" for t in sd.values())
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.5)
    before = other.generate([SHORT], n=1, temperature=0, max_tokens=6)[0][0].completion_ids
    other.load_state_dict(sd)
    after = other.generate([SHORT], n=1, temperature=0, max_tokens=6)[0][0].completion_ids
    ref = engine.generate([SHORT], n=1, temperature=0, max_tokens=6)[0][0].completion_ids
    assert after == ref != before


def test_bad_arguments_are_config_errors(engine):
    with pytest.raises(ConfigError, match="n must"):
        engine.generate([SHORT], n=0, temperature=1.0, max_tokens=4)
    with pytest.raises(ConfigError, match="top_p"):
        engine.generate([SHORT], n=1, temperature=1.0, max_tokens=4, top_p=0)
    with pytest.raises(ConfigError, match="no tokenizer"):
        TransformersEngine(engine.model)
    with pytest.raises(ConfigError, match="autocast"):
        TransformersEngine(engine.model, tokenizer=engine.tokenizer, autocast="int8")


def chat(question):
    return [{"role": "system", "content": "You plan workflows. " * 5},
            {"role": "user", "content": question}]


def test_shared_prefix_rows_match_separate_runs(engine):
    """Prompts with a common head (and repeats of one prompt) share its cache; the samples
    must be those of running every prompt alone."""
    from ray_conductor.policy.engine import common_prefix as _common_prefix
    from ray_conductor.policy.hf_engine import MIN_SHARED_PREFIX

    prompts = [chat("What is 2+2?"), chat("Name the largest planet in the solar system, please.")]
    rows = [prompt_ids(engine.tokenizer, p) for p in prompts]
    assert _common_prefix(rows) >= MIN_SHARED_PREFIX  # the shared path is the one under test
    out = engine.generate(prompts, n=2, temperature=0.8, max_tokens=10, seed=3)
    for s in (s for g in out for s in g):
        expected, _ = fresh_logprobs(engine.model, s)
        assert torch.allclose(torch.tensor(s.logprobs), expected, atol=1e-4)
    greedy = engine.generate(prompts, n=2, temperature=0, max_tokens=10)
    for p, group in zip(prompts, greedy):
        [[alone]] = engine.generate([p], n=1, temperature=0, max_tokens=10)
        assert [s.completion_ids for s in group] == [alone.completion_ids] * 2


def test_common_prefix_leaves_each_row_a_token():
    from ray_conductor.policy.engine import common_prefix as _common_prefix

    assert _common_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert _common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert _common_prefix([[9], [1, 2]]) == 0


def test_draws_follow_the_distribution_and_never_pick_a_zero():
    from ray_conductor.policy.hf_engine import _draws

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    d = _draws(probs, 100_000, gen)
    share = torch.stack([torch.bincount(row, minlength=6) for row in d]).float() / 100_000
    assert share[0].tolist() == pytest.approx([0.0, 0.5, 0.0, 0.3, 0.2, 0.0], abs=0.01)
    assert share[0, [0, 2, 5]].sum() == 0 and share[1].tolist() == [0, 0, 0, 0, 0, 1.0]
    again = _draws(probs, 100_000, torch.Generator().manual_seed(0))
    assert torch.equal(d, again)  # a seed makes it reproducible
