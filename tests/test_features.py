"""`ray_conductor.features`: which part of a prompt is embedded (the last user turn, without
the openings a pool's prompts share, head and tail when long), the bf16 encoder against fp32,
cache keys per precision, and the kNN router on a pool whose prompts share a 2,000-character
few-shot opening (issue 12 'Also', issue 14 item 3)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ray_conductor.errors import ConfigError
from ray_conductor.features import QuestionFeaturizer, last_user_turn, shared_openings
from ray_conductor.features.text import GAP, shared_endings

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "ray_conductor" / "assets" / "demo_pool" / "mmlu_pro_demo.parquet"
SYSTEM = "You are a careful assistant. Think step by step and answer with a letter.\n\n"


def demo_questions() -> list[tuple[str, str]]:
    """(subject, question text) of the demo pool, in query-id order."""
    import pyarrow.parquet as pq

    rows = pq.read_table(DEMO, columns=["query_id", "query", "task"]).to_pylist()
    seen: dict[str, tuple[str, str]] = {}
    for r in rows:
        seen.setdefault(r["query_id"], (r["task"].split("/")[-1], r["query"]))
    return [seen[k] for k in sorted(seen, key=lambda q: int(q.rsplit("/", 1)[1]))]


def few_shot_opening(examples: list[str], chars: int = 2000) -> str:
    shots = "".join(f"Question: {q}\nAnswer: Let's think step by step. The answer is (A).\n\n"
                    for q in examples)
    assert len(shots) >= chars
    return shots[:chars] + "\n\n"


# -- the part of a prompt that asks ------------------------------------------------------------
def test_the_last_user_turn_of_messages_and_of_routerbench_literals():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]
    assert last_user_turn(msgs) == "and 3+3?"
    assert last_user_turn(str(msgs)) == "and 3+3?"  # a Python-literal list of messages
    assert last_user_turn("['Write a function.', 'Now test it.']") == "Now test it."
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"},
                                          {"type": "text", "text": "b"}]}]
    assert last_user_turn(parts) == "ab"
    for text in ("[1, 2, 3] is a list. What is its sum?", "[x] marks the spot]", "plain"):
        assert last_user_turn(text) == text  # brackets that are not a list of turns


def test_shared_openings_by_hand():
    a = ["SHARED OPENING that is long enough to count. Q: " + q for q in
         ("alpha one", "beta two", "gamma three", "delta four")]
    b = ["Another template, also longer than the minimum. Q: " + q for q in
         ("red", "green", "blue")]
    outlier = ["SHARED OPENING that is long - but it diverges early here and then some"]
    found = shared_openings(a + b + outlier, min_count=3, min_chars=32)
    assert found == ["Another template, also longer than the minimum. Q: ",
                     "SHARED OPENING that is long enough to count. Q: "]
    assert shared_openings(a[:2] + b[:2], min_count=3) == []  # two of each: no run of three
    # a prefix cut mid-word moves back to the word's start
    words = [f"The same long opening for every question: Wh{x}" for x in ("ich", "at", "o")]
    assert shared_openings(words, 3, 16) == ["The same long opening for every question: "]


def test_question_stems_that_extend_an_opening_are_kept():
    stems = [f"{SYSTEM}Which of the following is true of item {i}?" for i in range(6)]
    others = [f"{SYSTEM}Compute {i} plus {i + 1}." for i in range(6)]
    f = QuestionFeaturizer.fit(stems + others, min_count=3)
    assert f.openings == (SYSTEM,)
    assert f.transform_one(stems[0]) == "Which of the following is true of item 0?"


def test_fit_strips_the_few_shot_opening_and_the_shared_ending():
    qs = [q for _, q in demo_questions()]
    opening = few_shot_opening(qs[-40:])
    ending = "\nAnswer: Let's think step by step and end with 'The answer is (X)'."
    pool = [f"{opening}Question: {q}{ending}" for q in qs[:300]]
    outliers = ["An unrelated prompt " + "x" * 50, "Another one, " + "y" * 80]
    f = QuestionFeaturizer.fit(pool + outliers)
    assert f.openings == (opening + "Question: ",) and f.endings == (ending,)
    assert f.transform_one(pool[5]) == f.transform_one(qs[5]) and qs[5].startswith(
        f.transform_one(pool[5])[:100])
    assert f.transform(outliers) == outliers  # what matches no opening is kept as it is


def test_the_featurizer_is_plain_data_and_cuts_one_served_question_alike():
    qs = [q for _, q in demo_questions()][:200]
    pool = [SYSTEM + q for q in qs]
    f = QuestionFeaturizer.fit(pool)
    g = QuestionFeaturizer.from_dict(json.loads(json.dumps(f.to_dict())))
    assert g == f and g.transform_one(SYSTEM + "A new question?") == "A new question?"
    served = [{"role": "user", "content": SYSTEM + qs[0]}]
    assert g.transform_one(served) == f.transform([pool[0]])[0]
    with pytest.raises(ConfigError):
        QuestionFeaturizer.from_dict({"version": 9})
    with pytest.raises(ConfigError):
        QuestionFeaturizer.from_dict({"openings": [], "head_chars": "many"})


def test_long_questions_keep_head_and_tail():
    f = QuestionFeaturizer(head_chars=20, tail_chars=10)
    text = "HEAD " + "middle " * 50 + "the TAIL?"
    assert f.transform_one(text) == text[:20].rstrip() + GAP + text[-10:].lstrip()
    assert f.transform_one("short one") == "short one"
    assert shared_endings(["a" * 40 + " same ending here", "b" * 40 + " same ending here",
                           "c" * 40 + " same ending here"], 3, 10) == [" same ending here"]


def test_features_is_a_bottom_floor():
    """No Ray, eval, rl, lite, serve at all; torch, transformers and tqdm only lazily."""
    allowed = {"ray_conductor.errors", "ray_conductor.features"}
    lazy = {"torch", "transformers", "tqdm"}
    for path in (ROOT / "ray_conductor" / "features").glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                for n in names:
                    if n.startswith("ray_conductor"):
                        assert any(n.startswith(a) for a in allowed), (path.name, n)
                    assert n.split(".")[0] != "ray", (path.name, n)
                    if n.split(".")[0] in lazy:
                        assert node not in top, f"{path.name} imports {n} at module level"
    probe = ("import sys, ray_conductor.features; "
             "assert not {'torch', 'transformers', 'ray'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", probe], check=True)


# -- the encoder --------------------------------------------------------------------------------
def test_cache_keys_name_the_precision(tmp_path, monkeypatch):
    from ray_conductor.features import embed

    texts = ["What is 2+2?", "Name a prime."]
    assert embed.cache_path(texts, "fp32") != embed.cache_path(texts, "bf16")
    assert "bf16" in embed.cache_path(texts, "bf16").name
    monkeypatch.setattr(embed, "CACHE", tmp_path)
    calls = []
    monkeypatch.setattr(embed, "encode", lambda t, p, **kw: calls.append(p) or
                        np.full((len(t), 3), 1.0 if p == "fp32" else 2.0, np.float32))
    a, b = embed.embed_texts(texts, "fp32"), embed.embed_texts(texts, "bf16")
    assert a[0, 0] == 1.0 and b[0, 0] == 2.0 and calls == ["fp32", "bf16"]
    assert embed.embed_texts(texts, "bf16")[0, 0] == 2.0 and len(calls) == 2  # from disk
    with pytest.raises(ConfigError):
        embed.embed_texts(texts, "int4")
    monkeypatch.setenv("RAY_CONDUCTOR_EMBED_PRECISION", "fp32")
    assert embed.default_precision() == "fp32"


@pytest.mark.slow
def test_bf16_finds_the_same_neighbours_as_fp32():
    from ray_conductor.features import encode

    texts = [q for _, q in demo_questions()][:300]
    a, b = encode(texts, "fp32", progress=False), encode(texts, "bf16", progress=False)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
    assert (a * b).sum(1).min() > 0.99

    def top10(e):
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :10]

    overlap = [len(set(x) & set(y)) / 10 for x, y in zip(top10(a), top10(b))]
    assert np.mean(overlap) >= 0.9, np.mean(overlap)


# -- kNN on a pool whose prompts share a 2,000-character few-shot opening ------------------------
@dataclass
class Q:
    query: str


class FewShotPool:
    """Two subjects; `mathbot` is right on math, `lawbot` on law; every prompt opens with the
    same 2,000-character block of few-shot examples."""

    models = ["mathbot", "lawbot"]

    def __init__(self, per_subject: int = 40):
        qs = demo_questions()
        by = {s: [q for t, q in qs if t == s] for s in ("math", "law")}
        opening = few_shot_opening([q for _, q in qs[-60:]])
        self.rows = {"train": [], "test": []}
        for subject, questions in by.items():
            for i, q in enumerate(questions[: per_subject + 15]):
                split = "train" if i < per_subject else "test"
                self.rows[split].append((f"{opening}Question: {q}\nAnswer:", subject))

    def queries(self, split):
        return [Q(text) for text, _ in self.rows[split]]

    def subjects(self, split):
        return [s for _, s in self.rows[split]]

    def matrix(self, split):
        correct = np.array([[s == "math", s == "law"] for s in self.subjects(split)], float)
        return correct, np.zeros_like(correct)


def mean_pairwise_cosine(e: np.ndarray) -> float:
    s = e @ e.T
    return float((s.sum() - np.trace(s)) / (len(e) * (len(e) - 1)))


@pytest.mark.slow
def test_knn_tells_few_shot_prompts_apart_by_their_question():
    from ray_conductor.eval.policies import KNNRouter
    from ray_conductor.features import embed_questions, encode

    pool = FewShotPool()
    train = [q.query for q in pool.queries("train")]
    raw = encode(train, progress=False)  # the old path: the first 128 tokens of the prompt
    assert mean_pairwise_cosine(raw) > 0.99
    f = QuestionFeaturizer.fit(train)
    assert len(f.openings) == 1 and len(f.openings[0]) >= 2000
    assert mean_pairwise_cosine(embed_questions(train, f, cache=False)) < 0.9

    knn = KNNRouter.fit(pool, lambda t: encode(t, progress=False), k=5)
    assert knn.featurizer.openings == f.openings
    picks = [knn.models[i] for i in knn.choose(knn.embed([q.query for q in
                                                          pool.queries("test")]))]
    wanted = {"math": "mathbot", "law": "lawbot"}
    right = np.mean([p == wanted[s] for p, s in zip(picks, pool.subjects("test"))])
    assert right >= 0.8, (right, picks)
    # and the neighbours of a test prompt are questions of its own subject
    emb = knn.embed([pool.queries("test")[0].query])
    nn = np.argsort(-(emb @ knn.emb.T)[0])[:5]
    assert [pool.subjects("train")[i] for i in nn].count(pool.subjects("test")[0]) >= 4
