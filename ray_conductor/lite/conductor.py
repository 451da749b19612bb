"""`LiteConductor`: decides turn by turn, after seeing each answer, whether to call another
worker, vote, or stop; emits the same `Workflow` and `Trace` as the LM conductor.

Its controller is either the PPO-trained `LiteNet` ("ppo") or the supervised `Selector`
("selector"); both see the question through the same frozen encoder and fitted projection,
and the state through the same `Episode`, offline (`rollout` over a `LiteTable`) and live
(`run` over a `WorkerPool`). Loading needs torch and numpy only, no Ray.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ray_conductor.errors import ConfigError, TrainingError
from ray_conductor.features import QuestionFeaturizer
from ray_conductor.lite.encoder import EMBED_MODEL, embed
from ray_conductor.lite.env import observe
from ray_conductor.lite.episode import Episode
from ray_conductor.lite.net import LiteNet, Projection
from ray_conductor.lite.schema import check_policy
from ray_conductor.lite.selector import Selector
from ray_conductor.lite.table import NO_ANSWER, LiteTable
from ray_conductor.verify.answers import COMPARABLE
from ray_conductor.workers.base import WorkerInfo, WorkerPool
from ray_conductor.workflow.executor import (
    StepTrace, Trace, call_worker, record_call, step_messages)
from ray_conductor.workflow.model import ROUTER_SUBTASK, Step, Workflow
from ray_conductor.workflow.programs import VOTE, VOTE_SUBTASK

FORMAT = 1
META_FILE, WEIGHTS_FILE = "lite.json", "policy.pt"
VOTE_WORKER = VOTE


SUBTASK = ROUTER_SUBTASK


@dataclass
class Rollouts:
    """Offline results per table row."""

    correct: np.ndarray
    cost: np.ndarray
    calls: np.ndarray
    voted: np.ndarray
    workflows: list[tuple[int, ...]] = field(default_factory=list)  # worker indices called

    def summary(self, workers: Sequence[str]) -> dict[str, Any]:
        first: dict[str, int] = {}
        for wf in self.workflows:
            if wf:
                first[workers[wf[0]]] = first.get(workers[wf[0]], 0) + 1
        return {"n": len(self.correct), "accuracy": float(self.correct.mean()),
                "cost_per_query": float(self.cost.mean()),
                "calls_per_query": float(self.calls.mean()),
                "vote_rate": float(self.voted.mean()),
                "first_worker": dict(sorted(first.items(), key=lambda kv: -kv[1]))}


class LiteConductor:
    name = "conductor-lite"

    def __init__(self, workers: Sequence[str], strength: Sequence[float], projection: Projection,
                 *, net: LiteNet | None = None, selector: Selector | None = None,
                 prior: Selector | None = None, max_calls: int = 4, cost_scale: float = 1.0,
                 comparable: bool = True, embed_model: str = EMBED_MODEL,
                 featurizer: QuestionFeaturizer | None = None,
                 info: dict[str, Any] | None = None):
        if (net is None) == (selector is None):
            raise ValueError("a LiteConductor needs exactly one controller: net or selector")
        self.workers, self.strength = list(workers), np.asarray(strength, np.float64)
        self.projection, self.net, self.selector, self.prior = projection, net, selector, prior
        self.max_calls, self.cost_scale, self.comparable = max_calls, cost_scale, comparable
        self.embed_model, self.info = embed_model, dict(info or {})
        self.featurizer = featurizer or QuestionFeaturizer()

    def embed(self, texts: Sequence[str], cache: bool = False) -> np.ndarray:
        """Question texts to the frozen encoder's vectors, cut as in training."""
        return embed(texts, self.featurizer, cache=cache)

    @property
    def kind(self) -> str:
        return "ppo" if self.net is not None else "selector"

    # -- deciding ------------------------------------------------------------------------

    def question_features(self, emb: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        """What the policy net sees of a question: the projected embedding, then (with a
        prior) the selector's predicted correctness of each single worker."""
        base = self.projection(emb)
        if self.prior is None:
            return base
        return np.concatenate([base, prior_features(self.prior, emb, leave_one_out)], axis=1)

    def new_episode(self, comparable: bool | None = None) -> Episode:
        return Episode(self.strength, self.max_calls,
                       self.comparable if comparable is None else comparable)

    def act(self, feats: np.ndarray, episodes: Sequence[Episode]) -> np.ndarray:
        """Greedy actions for a batch of (question features, episode) pairs."""
        if self.net is not None:
            obs = [observe(f, ep, self.cost_scale) for f, ep in zip(feats, episodes)]
            return self.net.act(np.stack([o["observations"] for o in obs]),
                                np.stack([o["action_mask"] for o in obs]))
        picks = self.selector.choose(feats)
        return np.array([self.selector.programs[k].act(ep) for k, ep in zip(picks, episodes)])

    def features_for(self, emb: np.ndarray) -> np.ndarray:
        """The controller's input: the net's features, or the selector's raw embedding."""
        return self.question_features(emb) if self.net is not None else np.asarray(emb)

    def rollout(self, table: LiteTable, features: np.ndarray | None = None) -> Rollouts:
        """Run every row of `table` (features: raw question embeddings) through the recorded
        answers, in lockstep batches: offline evaluation without a pool or an event loop.
        `features`: the controller's inputs for these rows, if already computed."""
        self._check_workers(table.workers)
        table = table.reorder(self.workers)
        feats = self.features_for(table.features) if features is None else features
        q = len(table)
        eps = [self.new_episode(table.comparable) for _ in range(q)]
        correct, voted = np.zeros(q, bool), np.zeros(q, bool)
        active = np.arange(q)
        while len(active):
            acts = self.act(feats[active], [eps[i] for i in active])
            still = []
            for i, a in zip(active, acts):
                ep = eps[i]
                if a < len(self.workers):
                    code = int(table.answers[i, a])
                    ep.record(a, None if code == NO_ANSWER else code, table.cost[i, a],
                              bool(table.responded[i, a]))
                    still.append(i)
                    continue
                win = ep.final(int(a))
                correct[i] = win is not None and bool(table.correct[i, ep.calls[win]])
                voted[i] = a == ep.vote_action
            active = np.array(still, dtype=np.int64)
        return Rollouts(correct, np.array([ep.cost for ep in eps]),
                        np.array([len(ep.calls) for ep in eps]), voted,
                        [tuple(ep.calls) for ep in eps])

    # -- running live --------------------------------------------------------------------

    async def run(self, query_text: str, pool: WorkerPool, *, query_id: str | None = None,
                  answer_format: str = "mc", params: dict[str, Any] | None = None,
                  step_timeout_s: float | None = None, embedding: np.ndarray | None = None
                  ) -> tuple[Workflow, Trace]:
        """Decide and call, turn by turn, until the policy votes or stops. A failed call is
        state (no answer), never an exception. `embedding`: the question's, if already
        encoded (batches)."""
        t0 = time.perf_counter()
        if embedding is None:  # ~10 ms of torch: off the event loop, so calls keep flowing
            emb = await asyncio.to_thread(self.embed, [query_text])
        else:
            emb = np.reshape(embedding, (1, -1))
        feats = self.features_for(emb)
        ep = self.new_episode(self.comparable and answer_format in COMPARABLE)
        call_params = dict(params or {})
        call_params["metadata"] = {**call_params.get("metadata", {}), "query_id": query_id,
                                   "question": query_text}
        steps: list[Step] = []
        traces: list[StepTrace] = []
        while True:
            a = int(self.act(feats, [ep])[0])
            if a >= len(self.workers):
                break
            step = Step(self.workers[a], SUBTASK, ())
            st = StepTrace(len(steps), step.worker, step.subtask, [])
            st.start_s = time.perf_counter() - t0
            c = await call_worker(pool, step.worker, step_messages(query_text, step, []),
                                  step_timeout_s, call_params)
            st.end_s = time.perf_counter() - t0
            record_call(st, c, answer_format if ep.comparable else None)
            steps.append(step)
            traces.append(st)
            ep.record(a, st.answer, c.cost, c.error is None)
        win = ep.final(a)
        answer = traces[win].text if win is not None else ""
        if a == ep.vote_action:
            steps.append(Step(VOTE_WORKER, VOTE_SUBTASK, "all"))
            now = time.perf_counter() - t0
            traces.append(StepTrace(index=len(traces), worker=VOTE_WORKER, subtask=VOTE_SUBTASK,
                                    access=list(range(len(traces))), start_s=now, end_s=now,
                                    text=answer, program=True, winner=win,
                                    answer=traces[win].answer if win is not None else None))
        trace = Trace(question=query_text, steps=traces, answer=answer,
                      wall_s=time.perf_counter() - t0)
        return Workflow(tuple(steps)), trace

    async def run_batch(self, queries: Sequence, pool: WorkerPool,
                        params: dict[str, Any] | None = None, concurrency: int = 64,
                        cache_embeddings: bool = False) -> list[tuple[Workflow, Trace]]:
        """`run` for `Query`-like objects (query_id, query, answer_format), concurrently; the
        questions are encoded in one batch (`cache_embeddings`: through the disk cache, for
        evaluation sets that come back)."""
        sem = asyncio.Semaphore(concurrency)
        embs = self.embed([q.query for q in queries], cache_embeddings) if queries else None

        async def one(i: int, q) -> tuple[Workflow, Trace]:
            async with sem:
                return await self.run(q.query, pool, query_id=q.query_id,
                                      answer_format=getattr(q, "answer_format", "mc"),
                                      params=params, embedding=embs[i])

        return list(await asyncio.gather(*(one(i, q) for i, q in enumerate(queries))))

    # -- saving and loading --------------------------------------------------------------

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write `lite.json` (readable config) and `policy.pt` (tensors only) into `path`;
        what `load` would refuse (a diverged net, a NaN cost) is a `TrainingError` and
        writes nothing."""
        path = Path(path)
        if (path / META_FILE).exists() and not overwrite:
            raise ConfigError(f"{path} already holds a lite policy; choose another run_dir or "
                              f"pass overwrite=true")
        meta, weights = self.to_saved()
        try:
            check_policy(meta, weights, str(path / META_FILE))
        except ConfigError as e:
            raise TrainingError(f"not saving the policy: {e}") from None
        path.mkdir(parents=True, exist_ok=True)
        _atomic(path / WEIGHTS_FILE, lambda f: torch.save(weights, f))
        _atomic(path / META_FILE, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        return path

    def to_saved(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(`lite.json`'s content, `policy.pt`'s tensors), as `save` writes them."""
        meta = {"format": FORMAT, "name": self.name, "kind": self.kind,
                "workers": self.workers, "strength": self.strength.tolist(),
                "max_calls": self.max_calls, "cost_scale": self.cost_scale,
                "comparable": self.comparable, "embed_model": self.embed_model,
                "featurizer": self.featurizer.to_dict(),
                "net": None if self.net is None else {
                    "obs_dim": self.net.obs_dim, "n_actions": self.net.n_actions,
                    "hidden": self.net.hidden},
                "info": self.info}
        weights: dict[str, Any] = {"projection": _tensors(self.projection.state())}
        if self.net is not None:
            weights["net"] = self.net.state_dict()
        for key in ("selector", "prior"):
            part = getattr(self, key)
            meta[key], arrays = part.state() if part is not None else (None, None)
            if arrays is not None:
                weights[key] = _tensors(arrays)
        return json.loads(json.dumps(meta)), weights

    @classmethod
    def load(cls, path: str | os.PathLike, workers: Sequence[WorkerInfo] | Sequence[str] | None
             = None) -> "LiteConductor":
        """A saved policy (its directory, or a `train-lite` run directory: its `policy/`);
        `workers` (the pool it will run on) must have the same names."""
        path = policy_dir(path)
        if not (path / META_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{path} is not a lite policy (no {META_FILE} and {WEIGHTS_FILE}) "
                              f"nor a train-lite run directory (no {path / 'policy'}); train "
                              f"one with `ray-conductor train-lite run_dir=...`")
        try:
            meta = json.loads((path / META_FILE).read_text())
            weights = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise ConfigError(f"{path}: cannot read the lite policy ({type(e).__name__}: "
                              f"{str(e)[:120]}); re-train it") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a lite policy of format {FORMAT}; re-train it")
        check_policy(meta, weights, str(path / META_FILE))
        try:
            conductor = cls._from_saved(meta, weights)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{path}: the lite policy is incomplete or from another version "
                              f"({type(e).__name__}: {str(e)[:120]}); re-train it") from None
        if workers is not None:
            conductor._check_workers([w if isinstance(w, str) else w.name for w in workers])
        return conductor

    @classmethod
    def _from_saved(cls, meta: dict[str, Any], weights: dict[str, Any]) -> "LiteConductor":
        net = None
        if meta["net"]:
            net = LiteNet(meta["net"]["obs_dim"], meta["net"]["n_actions"], meta["net"]["hidden"])
            net.load_state_dict(weights["net"])
            net.eval()
        pick = {k: Selector.from_state(meta[k], {n: t.numpy() for n, t in weights[k].items()})
                if meta.get(k) else None for k in ("selector", "prior")}
        proj = Projection.from_state({k: v.numpy() for k, v in weights["projection"].items()})
        return cls(meta["workers"], meta["strength"], proj, net=net, selector=pick["selector"],
                   prior=pick["prior"], max_calls=meta["max_calls"],
                   cost_scale=meta["cost_scale"], comparable=meta["comparable"],
                   embed_model=meta["embed_model"],
                   featurizer=QuestionFeaturizer.from_dict(meta["featurizer"]),
                   info=meta.get("info"))

    def _check_workers(self, names: Sequence[str]) -> None:
        missing = sorted(set(self.workers) - set(names))
        extra = sorted(set(names) - set(self.workers))
        if missing or extra:
            raise ConfigError(
                f"this lite policy was trained on a different pool: the pool lacks {missing} "
                f"and adds {extra}; train a lite policy on this pool "
                f"(ray-conductor train-lite pool=...)")


def policy_dir(path: str | os.PathLike) -> Path:
    """A lite policy's directory: `path` itself, or the `policy/` a `train-lite` run
    directory holds (what `conductor:RUN_DIR` does for LM runs)."""
    path = Path(path)
    if not (path / META_FILE).is_file() and (path / "policy" / META_FILE).is_file():
        return path / "policy"
    return path


def prior_features(prior: Selector, emb: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    """The prior's predicted correctness of each single worker, centred on 0.5."""
    singles = [k for k, p in enumerate(prior.programs) if len(p.workers) == 1]
    return (prior.probs(emb, leave_one_out)[:, singles] - 0.5).astype(np.float32)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}


def _atomic(path: Path, write: Callable) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
