"""The policies a Serve app offers by model name, loaded from a reference, and the set the
planner holds (swapped atomically on a hot-swap). Pure: no Ray.

References (the values of `policies: {served name: reference}`):

- `knn`, `cheapest`, `random`, `single:WORKER`: the baselines of `policy.baselines`, fit on the
  replay pool's train split where they learn (kNN);
- `scripted:FILE`: a fixed plan script (`policy.scripted_engine`), e.g. a pinned workflow;
- `pinned:WORKER`: one worker answers every request (the default with live workers and no
  policy trained on them);
- `lite:DIR`: a lite conductor policy directory (`ray_conductor.lite`), which decides call by
  call, so it runs interactively rather than planning up front;
- `registry:DIR[@N]`: the promoted (or Nth) version of a policy registry, of any kind above
  or an LM conductor (the version's `kind`: lm | lite | scripted, a `plans.json` inside);
- anything else (or `conductor:REF`): an LM conductor, `policy.runner.load_conductor`
  (a model name or directory, a training run or checkpoint directory).

A plan-then-execute policy answers `PlanRequest`s with `PlanReply`s; the version a request
started on is in its reply, and nested (recursive) plans ask for that same version.

`policy_kind` says where a reference plans without loading it: an LM conductor needs the
planner deployment (`lm`); everything else plans in the ingress (`local`). `check_policy`
says, before anything starts, why a reference cannot be served on these workers.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ray_conductor.errors import ConfigError
from ray_conductor.workers.base import WorkerInfo
from ray_conductor.workflow import Workflow

BASELINES = ("knn", "cheapest", "random")
SCRIPT_FILE = "plans.json"  # inside a registry version of kind "scripted"
PINNED_SUBTASK = "Answer the last user message."


@dataclass
class PlanRequest:
    """One question to plan. `previous` is set for a nested (recursive) plan, `version` pins
    the policy version the request started on, `answer_format` is the recorded question's
    (None: free text; a program head then offers no vote)."""

    model: str
    question: str
    workers: list[WorkerInfo]
    previous: str | None = None
    version: str | None = None
    answer_format: str | None = None


@dataclass
class PlanReply:
    """A plan and what it took: the conductor's own tokens are orchestration tokens."""

    model: str
    version: str
    workflow: Workflow | None
    text: str = ""
    attempts: int = 1
    fell_back: bool = False
    errors: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    recursion_depth: int = 0
    self_name: str = "conductor"
    interactive: bool = False
    max_steps: int = 0  # the most steps a nested (recursive) plan may have


def _sha8(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:8]


class RouterPolicy:
    """A baseline that names one worker per question (kNN, cheapest, ...). `embedder`: the
    kNN router's question embeddings (planning blocks only to encode a new question)."""

    interactive = False
    recursion_depth = 0
    self_name = "conductor"
    max_calls = 1

    def __init__(self, policy: Any, version: str, embedder: Any = None):
        self.policy, self.version, self.embedder = policy, version, embedder

    def blocking(self, question: str) -> bool:
        """Would planning `question` take more than microseconds (an encoder call)?"""
        return self.embedder is not None and question not in self.embedder.memo

    def plan(self, reqs: Sequence[PlanRequest]) -> list[PlanReply]:
        queries = [SimpleNamespace(query=r.question, query_id=None) for r in reqs]
        plans = self.policy.plan_batch(queries, reqs[0].workers)
        return [PlanReply(r.model, self.version, p.workflow, fell_back=p.fell_back)
                for r, p in zip(reqs, plans)]


class PinnedPolicy:
    """One worker answers every request: a one-step workflow, planned in no time."""

    interactive = False
    recursion_depth = 0
    self_name = "conductor"
    max_calls = 1

    def __init__(self, worker: str):
        self.workflow = Workflow.single(worker, PINNED_SUBTASK)
        self.version = f"pinned-{worker}"

    def blocking(self, question: str) -> bool:
        return False

    def plan(self, reqs: Sequence[PlanRequest]) -> list[PlanReply]:
        return [PlanReply(r.model, self.version, self.workflow) for r in reqs]


class ServedConductor:
    """A `Conductor` (an LM, or a script through the same machinery). Top-level requests are
    offered the conductor itself as a worker while recursion is on, as `RecursivePool` does."""

    interactive = False

    def __init__(self, conductor: Any, version: str, temperature: float = 0.0):
        self.conductor, self.version, self.temperature = conductor, version, temperature
        self.recursion_depth = int(conductor.cfg.recursion_depth)
        self.self_name = conductor.cfg.self_name
        self.max_calls = int(conductor.cfg.max_steps) * (1 + self.recursion_depth)

    def blocking(self, question: str) -> bool:
        return not isinstance(self.conductor.engine, _scripted_engine())

    def offered(self, req: PlanRequest) -> list[WorkerInfo]:
        if req.previous is not None or self.recursion_depth <= 0:
            return list(req.workers)
        from ray_conductor.policy.recursion import SELF_DESCRIPTION

        return [*req.workers, WorkerInfo(self.self_name, SELF_DESCRIPTION)]

    def plan(self, reqs: Sequence[PlanRequest]) -> list[PlanReply]:
        results = self.conductor.plan_many([r.question for r in reqs], self.offered(reqs[0]),
                                           previous=[r.previous for r in reqs],
                                           temperature=self.temperature,
                                           formats=[r.answer_format for r in reqs])
        return [PlanReply(
            r.model, self.version, p.workflow, p.texts[-1] if p.texts else "", p.n_attempts,
            p.fell_back, list(p.errors), sum(len(s.prompt_ids) for s in p.samples),
            sum(len(s.completion_ids) for s in p.samples), self.recursion_depth,
            self.self_name, max_steps=int(self.conductor.cfg.max_steps))
            for r, p in zip(reqs, results)]


def _scripted_engine() -> type:
    from ray_conductor.policy.scripted_engine import ScriptedEngine

    return ScriptedEngine


class InteractivePolicy:
    """A policy that decides call by call (the lite conductor): it runs over a pool itself."""

    interactive = True
    recursion_depth = 0
    self_name = "conductor"

    def __init__(self, conductor: Any, version: str):
        self.conductor, self.version = conductor, version
        self.max_calls = int(getattr(conductor, "max_calls", 4))

    def blocking(self, question: str) -> bool:
        return False

    def plan(self, reqs: Sequence[PlanRequest]) -> list[PlanReply]:
        return [PlanReply(r.model, self.version, None, interactive=True) for r in reqs]

    async def run(self, question: str, pool: Any, *, query_id: str | None,
                  answer_format: str | None, params: dict[str, Any]) -> tuple[Workflow, Any]:
        return await self.conductor.run(question, pool, query_id=query_id,
                                        answer_format=answer_format or "mc", params=params)


@dataclass
class LoadContext:
    """What loading a policy may need: the workers it plans over, the replay data baselines
    fit on (loaded on first use), LM conductor overrides and the serving temperature."""

    workers: list[WorkerInfo]
    data: Callable[[], Any] | None = None
    pool: str | None = None
    knn_k: int = 40
    conductor: Mapping[str, Any] = field(default_factory=dict)
    temperature: float = 0.0


class _Embedder:
    """Question embeddings for the kNN router. While fitting, through the disk cache (the
    train split, the recorded test questions); then served questions are encoded directly (a
    cache file per served question would only fill the disk), and the last `capacity`
    vectors are kept by text: a repeated question, and every recorded question of a replay
    pool, is not encoded again (one encode is ~10-150 ms of CPU; a lookup is microseconds)."""

    def __init__(self, capacity: int = 50_000) -> None:
        self.fitting, self.capacity = True, capacity
        self.memo: OrderedDict[str, Any] = OrderedDict()

    def _remember(self, texts: Sequence[str], emb: Any) -> None:
        for t, v in zip(texts, emb):
            self.memo[t] = v
            self.memo.move_to_end(t)
        while len(self.memo) > self.capacity:
            self.memo.popitem(last=False)

    def __call__(self, texts: Sequence[str]) -> Any:
        import numpy as np

        from ray_conductor.features import embed_texts, encode

        texts = list(texts)
        if self.fitting:
            emb = embed_texts(texts)
            self._remember(texts, emb)
            return emb
        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            self._remember(missing, encode(missing, progress=False))
        for t in texts:
            self.memo.move_to_end(t)
        return np.stack([self.memo[t] for t in texts])


def _baseline(ref: str, ctx: LoadContext) -> RouterPolicy:
    from ray_conductor.policy.baselines import make_policies

    needs_data = ref == "knn"
    if needs_data and ctx.data is None:
        raise ConfigError(f"policy {ref!r} is fit on a replay pool's train split: set pool=...")
    data = ctx.data() if needs_data else None
    embed = _Embedder()
    (policy,) = make_policies([ref], data, ctx.workers, knn_k=ctx.knn_k, embed=embed)
    if needs_data:  # the recorded test questions too (train ones came with the fit), in
        # the evaluation's order, so the disk cache an evaluation filled is reused
        policy.embed([q.query for q in sorted(data.queries("test"), key=lambda q: q.query_id)])
    embed.fitting = False
    policy.plan_batch([SimpleNamespace(query="warm up", query_id=None)], ctx.workers)  # loads
    # the encoder now (a fit from the disk cache did not), not in the first request
    names = {w.name for w in ctx.workers}
    missing = sorted(set(getattr(policy, "models", ())) - names)
    if missing:
        raise ConfigError(f"policy {ref!r} routes to the pool's recorded models, but the "
                          f"workers lack {missing}: name the workers after them, or serve "
                          "another policy")
    version = f"knn-k{ctx.knn_k}-{_sha8(ctx.pool or '')}" if needs_data else ref
    return RouterPolicy(policy, version, embed if needs_data else None)


def _scripted(path: str, ctx: LoadContext, version: str | None = None) -> ServedConductor:
    """A team's pinned workflow (a vote, a cascade), as `eval` judges it: offered the vote
    worker, every plan checked against the pool's workers before it serves. Served plans may
    call the conductor itself (recursion, as an LM conductor's may), unless
    `conductor.recursion_depth=0`."""
    from ray_conductor.policy.conductor import ConductorConfig
    from ray_conductor.policy.runner import check_script, scripted_conductor

    known = set(ConductorConfig.__dataclass_fields__) - {"engine", "model"}
    overrides = {"recursion_depth": ConductorConfig().recursion_depth,
                 **{k: v for k, v in ctx.conductor.items() if k in known}}
    conductor = scripted_conductor(path, **overrides)
    workers = list(ctx.workers)
    if conductor.cfg.recursion_depth > 0:  # top-level plans may name the conductor itself
        from ray_conductor.policy.recursion import SELF_DESCRIPTION

        workers.append(WorkerInfo(conductor.cfg.self_name, SELF_DESCRIPTION))
    check_script(conductor, workers)
    return ServedConductor(conductor, version or f"scripted-{_sha8(Path(path).read_bytes())}",
                           ctx.temperature)


def _lite(path: str, ctx: LoadContext, version: str | None = None) -> InteractivePolicy:
    from ray_conductor.lite import LiteConductor, default_policy_dir

    if path == "default":  # the policy shipped for the demo pool
        path = str(default_policy_dir())
    conductor = LiteConductor.load(path, ctx.workers)
    conductor.embed(["warm up"])  # loads the encoder now: concurrent first requests raced
    # on importing transformers in their threads (ImportError: cannot import AutoModel)
    return InteractivePolicy(conductor, version or f"lite-{Path(path).name}")


def _lm(ref: str, ctx: LoadContext) -> ServedConductor:
    from ray_conductor.policy.runner import load_conductor

    conductor, tag = load_conductor(ref, **dict(ctx.conductor))
    return ServedConductor(conductor, tag, ctx.temperature)


def _registry(ref: str, ctx: LoadContext) -> Any:
    from ray_conductor.policy.registry import resolve_policy

    path, pv = resolve_policy(ref)
    assert pv is not None
    if pv.kind == "lite":
        return _lite(path, ctx, pv.tag)
    if pv.kind == "scripted":
        return _scripted(str(Path(path) / SCRIPT_FILE), ctx, pv.tag)
    if pv.kind == "lm":
        policy = _lm(pin(ref), ctx)
        policy.version = pv.tag
        return policy
    raise ConfigError(f"policy {ref!r}: registry version {pv.tag} is of kind {pv.kind!r}; this "
                      "server serves lm, lite and scripted policies")


def load_policy(ref: str, ctx: LoadContext) -> Any:
    """The policy a reference names (see the module docstring)."""
    ref = str(ref).strip()
    if not ref:
        raise ConfigError("an empty policy reference; use knn, scripted:FILE, lite:DIR, "
                          "registry:DIR[@N] or a conductor model or run directory")
    if ref in BASELINES or ref.startswith("single:"):
        return _baseline(ref, ctx)
    if ref.startswith("pinned:"):
        worker = ref.split(":", 1)[1]
        if worker not in {w.name for w in ctx.workers}:
            raise ConfigError(f"policy {ref!r}: no worker {worker!r} in the pool")
        return PinnedPolicy(worker)
    if ref.startswith("scripted:"):
        return _scripted(ref.split(":", 1)[1], ctx)
    if ref.startswith("lite:"):
        return _lite(ref.split(":", 1)[1], ctx)
    if ref.startswith("registry:"):
        return _registry(ref, ctx)
    return _lm(ref.removeprefix("conductor:"), ctx)


def policy_kind(ref: str) -> str:
    """Where a reference plans: "lm" (an LM conductor: the planner deployment) or "local"
    (everything else: in the ingress). A registry is resolved to its version's kind."""
    ref = str(ref).strip()
    if ref in BASELINES or ref.startswith(("single:", "pinned:", "scripted:", "lite:")):
        return "local"
    if ref.startswith("registry:"):
        from ray_conductor.policy.registry import resolve_policy

        _, pv = resolve_policy(ref)
        return "lm" if pv is not None and pv.kind == "lm" else "local"
    return "lm"


def check_policy(name: str, ref: str, workers: Sequence[str], pool: str | None) -> None:
    """Why `ref` cannot be served as `name` on `workers`, as one `ConfigError` naming the
    policy, the reason and the fix; quiet when it can (as far as can be told without loading
    it: an LM conductor is checked when it loads)."""
    ref = str(ref).strip()
    what = f"policy {name}={ref}"
    try:
        if ref == "knn" and not pool:
            raise ConfigError("it is fit on a replay pool's train split and no pool is set; "
                              "set pool=... or serve another policy (pinned:WORKER)")
        if ref.startswith(("single:", "pinned:")) and ref.split(":", 1)[1] not in workers:
            raise ConfigError(f"worker {ref.split(':', 1)[1]!r} is not in the pool "
                              f"{list(workers)}; name one of them")
        if ref.startswith("lite:"):
            _check_lite(ref.split(":", 1)[1], workers)
        if ref.startswith("scripted:") and not Path(ref.split(":", 1)[1]).is_file():
            raise ConfigError("no such plan script; give a JSON file (see "
                              "policy/scripted_engine.py)")
        if ref.startswith("registry:"):
            from ray_conductor.policy.registry import resolve_policy

            path, pv = resolve_policy(ref)
            if pv is not None and pv.kind == "lite":
                _check_lite(path, workers)
    except ConfigError as e:
        raise ConfigError(f"{what} cannot be served: {e.message}") from None


def _check_lite(path: str, workers: Sequence[str]) -> None:
    """A lite policy runs only on the workers it was trained on (read from its lite.json,
    without loading the network)."""
    import json

    if path == "default":  # lite.default_policy_dir, without importing torch with the package
        path = str(Path(__file__).resolve().parents[1] / "assets" / "lite_demo")
    meta = Path(path) / "lite.json"
    if not meta.is_file() and (Path(path) / "policy" / "lite.json").is_file():
        meta = Path(path) / "policy" / "lite.json"  # a train-lite run directory
    try:
        trained = json.loads(meta.read_text())["workers"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a lite policy (no readable lite.json); train one "
                          "with `ray-conductor train-lite`") from None
    missing, extra = sorted(set(trained) - set(workers)), sorted(set(workers) - set(trained))
    if missing or extra:
        raise ConfigError(f"it was trained on other workers (the pool lacks {missing[:6]} and "
                          f"adds {extra[:6]}); train a lite policy on these workers "
                          "(ray-conductor train-lite ...) or serve another policy, e.g. "
                          f"policy=pinned:{workers[0] if workers else 'WORKER'}")


def pin(ref: str) -> str:
    """`registry:DIR` -> `registry:DIR@N` (its promoted version now), so every replica and
    every restart serves the same version until the next swap; other references as given."""
    if not ref.startswith("registry:") or "@" in ref:
        return ref
    from ray_conductor.policy.registry import resolve_policy

    _, pv = resolve_policy(ref)
    assert pv is not None
    return f"{ref}@{pv.version}"


class PolicySet:
    """The live policies by served name. `update` loads what changed, then swaps the whole
    mapping in one assignment: a plan that already picked its policy object keeps it. The
    last `keep` versions of each name stay reachable for the nested plans of requests that
    started on them."""

    def __init__(self, loader: Callable[[str], Any], keep: int = 4):
        self._load, self._keep = loader, keep
        self._live: dict[str, tuple[str, Any]] = {}  # name -> (reference, policy)
        self._recent: dict[tuple[str, str], Any] = {}  # (name, version) -> policy
        self._lock = threading.Lock()  # one update at a time

    def update(self, refs: Mapping[str, str], allow_empty: bool = False) -> dict[str, str]:
        """Serve `refs` ({name: reference}); returns {name: version}. Nothing changes when any
        reference fails to load (the error says which)."""
        if not isinstance(refs, Mapping) or (not refs and not allow_empty):
            raise ConfigError("the planner needs `policies`: a mapping of served model names "
                              "to policy references")
        with self._lock:
            live = dict(self._live)
            new = {}
            for name, ref in refs.items():
                same = live.get(name)
                new[name] = same if same and same[0] == ref else (ref, self._load(ref))
            for name, (_, policy) in new.items():
                self._recent.pop((name, policy.version), None)  # re-inserted as the newest
                self._recent[(name, policy.version)] = policy
                for k in [k for k in self._recent if k[0] == name][:-self._keep]:
                    del self._recent[k]
            self._live = new
        return {n: p.version for n, (_, p) in new.items()}

    def names(self) -> list[str]:
        return list(self._live)

    def get(self, name: str, version: str | None = None) -> Any:
        live = self._live.get(name)
        if live is None:
            raise ConfigError(f"no policy is served as {name!r}")
        if version is not None and version != live[1].version:
            old = self._recent.get((name, version))
            if old is not None:
                return old
        return live[1]

    def describe(self) -> dict[str, dict[str, Any]]:
        return {n: {"policy": ref, "policy_version": p.version,
                    "kind": "interactive" if p.interactive else "plan",
                    "recursion_depth": p.recursion_depth,
                    "max_calls": getattr(p, "max_calls", 1)}
                for n, (ref, p) in self._live.items()}

    def plan(self, reqs: Sequence[PlanRequest]) -> list[PlanReply]:
        """Replies in request order; requests for the same policy version and the same
        offered workers are planned in one call (one engine batch for an LM)."""
        groups: dict[tuple, tuple[Any, list[int]]] = {}
        out: list[PlanReply | None] = [None] * len(reqs)
        for i, r in enumerate(reqs):
            try:
                policy = self.get(r.model, r.version)  # picked once: a swap cannot split it
            except ConfigError:  # removed by a swap since the ingress looked
                out[i] = PlanReply(r.model, "", None, errors=["unknown_model"])
                continue
            key = (id(policy), tuple(w.name for w in r.workers))
            groups.setdefault(key, (policy, []))[1].append(i)
        for policy, idx in groups.values():
            for i, reply in zip(idx, policy.plan([reqs[i] for i in idx])):
                out[i] = reply
        return out  # type: ignore[return-value]
