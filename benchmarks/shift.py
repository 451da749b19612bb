"""Shift scenarios on replay data, driven through the served app: does online retraining
recover when the world moves under a served lite conductor?

Setup (MMLU-Pro's 12 recorded models, train split only; the test split is never read):
the train questions are cut by hashed id into part A, on which two initial lite policies
are trained (`train-lite`, fixed dollar penalty), and part B, whose questions are the
traffic. Four scenarios, each a stream of questions in ticks, first from the world the
initial policy knows, then from a shifted one (derived canonical pools, written with the
project's own table code and served by replay workers through the shared proxies):

  (a) mix: the questions move from mostly math to mostly law;
  (b) price: the best worker (best single-call reward on part A) costs ten times more;
  (c) degrade: the best worker's recorded answers are replaced by a weaker model's;
  (d) new worker: the best worker is held out of the pool at first, then joins (the
      online policy's action space grows in place; the frozen one is served on the
      bigger pool unchanged, never calling it).

One Serve app serves `frozen` (the initial policy, never swapped) and `online` (a registry
the online loop promotes into and rolls back); every question is asked of both through the
official `openai` client, and label feedback is posted (POST /v1/feedback). After each tick
one round of the online loop runs (the same `Retrainer` as `ray-conductor retrain`) while a
load thread keeps asking `online` (no feedback), so every hot-swap happens under traffic:
its failed requests are counted. Where a shift changes the workers the app is redeployed
with the new pool (registry and policies survive). The loop's anchor questions
(`--anchor-rows`, `training.anchor`) are part A's: re-asked of the served workers as they
are after the shift and trained on beside the traffic (the served pools hold part A's
questions for that; they are never streamed), while half the traffic is held back for the
paired test, and up to `--held-anchor-rows` held-back part A questions join the evaluation
(a candidate better on them and not worse on held-back traffic is promoted, and one better
on held-back traffic but significantly worse on them is not; `--anchor-rows 0`: traffic
only, 30% held back). A promotion is watched for one tick: its live rewards against the
previous version replayed on the same questions (the paired watch). Best single worker
(chosen in hindsight on the phase's questions) and the oracle (per question, the best
single-call reward) come from the served pool's table for the same questions.

Summary per scenario, on the last `--after-window` questions: `frozen_after`,
`online_after`, `oracle_after`, `best_single_after`, `recovered` = (online - frozen) /
(oracle - frozen), requests failed during swaps (must be 0), promotions, rollbacks,
rejections by the anchor guard (`guarded`) and paired watches; and
the lite tier's own ceiling: `refit_after`, a lite policy trained from scratch on part A as
the world looks after the shift, judged offline on the same questions beside the frozen
policy (`frozen_after_offline`), and `recovered_vs_refit` = (online - frozen) / (refit -
frozen offline). `--refit-only` adds these to an existing report.

    cd benchmarks && nice python shift.py          # ~65 min on 2 cores
    nice python shift.py --scenarios b --before 100 --after 200 --after-window 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, environment, write_report

for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parent.parent
POOL = f"mmlu_pro:{ROOT.parent / 'shared' / 'data' / 'mmlu_pro'}"
WEAK = "Meta-Llama-3_1-8B-Instruct"  # whose answers replace the degraded worker's
NAMES = {"a": "mix", "b": "price", "c": "degrade", "d": "new_worker"}


# -- derived pools ------------------------------------------------------------------------------


def derive(table: Any, path: Path, qids: set[str] | None = None, drop: str | None = None,
           price: tuple[str, float] | None = None, degrade: tuple[str, str] | None = None
           ) -> Path:
    """A canonical table derived from `table`: some questions, a worker dropped, a worker's
    cost multiplied, or a worker's answers replaced by another's; written atomically."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ray_conductor.data.table import conform, write_table

    t = table
    if qids is not None:
        t = t.filter(pc.is_in(t["query_id"], pa.array(sorted(qids))))
    if drop is not None:
        t = t.filter(pc.not_equal(t["model"], drop))
    cols = t.to_pydict()
    if price is not None:
        cols["cost"] = [c * price[1] if m == price[0] else c
                        for m, c in zip(cols["model"], cols["cost"])]
    if degrade is not None:
        who, weak = degrade
        donor = {q: i for i, (q, m) in enumerate(zip(cols["query_id"], cols["model"]))
                 if m == weak}
        for i, (q, m) in enumerate(zip(cols["query_id"], cols["model"])):
            if m == who and q in donor:
                for c in ("response", "answer", "correct"):
                    cols[c][i] = cols[c][donor[q]]
    return write_table(conform(pa.table(cols)), path)


def initial_policy(pool: Path, run_dir: Path, penalty: float, seconds: float) -> Path:
    """A lite policy trained on `pool` (part A, every question of it, all train split)."""
    from ray_conductor.lite.train import LiteTrainConfig, train_lite

    if (run_dir / "policy" / "lite.json").is_file():
        return run_dir / "policy"
    cfg = LiteTrainConfig(pool=f"parquet:{pool}", split="all", run_dir=str(run_dir),
                          cost_penalty=penalty, budget=None, iterations=30,
                          time_budget_s=seconds, progress=False, overwrite=True)
    cfg.ppo.hidden = [128, 128]
    train_lite(cfg)
    return run_dir / "policy"


# -- the scenarios ------------------------------------------------------------------------------


@dataclass
class Phase:
    pool: Path
    questions: list[Any]
    grow: list[str] = field(default_factory=list)  # workers this phase adds (scenario d)


@dataclass
class World:
    """Everything the scenarios share."""

    data: Any
    table: Any
    penalty: float
    best: str
    work: Path
    part_b: list[Any]
    policy: Path = Path()
    policy_minus: Path = Path()
    part_a: set[str] = field(default_factory=set)
    train_s: float = 150.0


def build_world(work: Path, penalty: float, train_s: float) -> World:
    from ray_conductor.data.pools import load_pool, load_table
    from ray_conductor.data.splits import unit_hash

    data = load_pool(POOL)
    table, _ = load_table(POOL)
    train = data.queries("train")
    a_ids = {q.query_id for q in train if unit_hash(f"shift-a/{q.query_id}") < 0.35}
    full = [q for q in train if q.query_id not in a_ids
            and all((r := data.record(q.query_id, m)) is not None and r.response is not None
                    for m in data.models)]
    m = data.matrix("train")
    rows = [i for i, q in enumerate(train) if q.query_id in a_ids]
    reward = (m.correct[rows] - penalty * m.cost[rows]).mean(axis=0)
    best = data.models[int(np.argmax(reward))]
    world = World(data, table, penalty, best, work, full, part_a=a_ids, train_s=train_s)
    pool_a = derive(table, work / "pools" / "part_a.parquet", a_ids)
    pool_a_minus = derive(table, work / "pools" / "part_a_minus.parquet", a_ids, drop=best)
    world.policy = initial_policy(pool_a, work / "initial", penalty, train_s)
    world.policy_minus = initial_policy(pool_a_minus, work / "initial_minus", penalty, train_s)
    return world


def stream(qs: list[Any], n: int, seed: int, mostly: str | None = None,
           share: float = 0.8, avoid: set[str] | None = None) -> list[Any]:
    """`n` questions, `share` of them from category `mostly`, never one of `avoid`."""
    rng = np.random.default_rng(seed)
    pool = [q for q in qs if q.query_id not in (avoid or set())]
    if mostly is None:
        return [pool[i] for i in rng.permutation(len(pool))[:n]]
    inside = [q for q in pool if q.task.endswith(f"/{mostly}")]
    outside = [q for q in pool if not q.task.endswith(f"/{mostly}")]
    k = round(share * n)
    pick = [inside[i] for i in rng.permutation(len(inside))[:k]]
    pick += [outside[i] for i in rng.permutation(len(outside))[:n - k]]
    return [pick[i] for i in rng.permutation(len(pick))]


def scenario_phases(key: str, w: World, n_before: int, n_after: int) -> tuple[Path, list[Phase]]:
    """(initial policy, phases) of scenario `key`; pools hold the streamed questions and
    part A's (the online loop's anchor questions, never streamed)."""
    d = w.work / "pools" / NAMES[key]
    if key == "a":
        before = stream(w.part_b, n_before, 1, "math")
        after = stream(w.part_b, n_after, 2, "law", avoid={q.query_id for q in before})
        pool = derive(w.table, d / "pool.parquet",
                      {q.query_id for q in before + after} | w.part_a)
        return w.policy, [Phase(pool, before), Phase(pool, after)]
    qs = stream(w.part_b, n_before + n_after, 3)
    ids = {q.query_id for q in qs} | w.part_a
    before, after = qs[:n_before], qs[n_before:]
    if key == "b":
        return w.policy, [Phase(derive(w.table, d / "before.parquet", ids), before),
                          Phase(derive(w.table, d / "after.parquet", ids,
                                       price=(w.best, 10.0)), after)]
    if key == "c":
        return w.policy, [Phase(derive(w.table, d / "before.parquet", ids), before),
                          Phase(derive(w.table, d / "after.parquet", ids,
                                       degrade=(w.best, WEAK)), after)]
    return w.policy_minus, [Phase(derive(w.table, d / "before.parquet", ids, drop=w.best),
                                  before),
                            Phase(derive(w.table, d / "after.parquet", ids), after,
                                  grow=[w.best])]


# -- traffic ------------------------------------------------------------------------------------


def ask(base_url: str, model: str, q: Any) -> dict[str, Any]:
    from openai import OpenAI

    c = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=300)
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": q.query}])
    d = r.model_dump()
    return {"id": r.id, "answer": r.choices[0].message.content or "",
            "cost": d["usage"].get("cost", 0.0), "version": d["conductor"]["policy_version"],
            "workers": [s["worker"] for s in d["conductor"]["steps"] if not s["program"]]}


class Load:
    """Keeps asking `online` (no feedback) while a retrain round runs: every swap happens
    under traffic; each outcome is recorded."""

    def __init__(self, base_url: str, qs: list[Any], threads: int = 2):
        self.base_url, self.qs = base_url, qs
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(threads)]

    def _run(self, k: int) -> None:
        i = k
        while not self._stop.is_set():
            try:
                q = self.qs[i % len(self.qs)]
                self.versions.add(ask(self.base_url, "online", q)["version"])
            except Exception as e:  # noqa: BLE001 - each failure is the measurement
                self.failed += 1
                self.errors.append(f"{type(e).__name__}: {str(e)[:200]}")
            self.sent += 1
            i += len(self._threads)

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(300)


def send_tick(base_url: str, qs: list[Any], data: Any, penalty: float) -> dict[str, list]:
    """Every question to both models (4 in flight), label feedback on each answer."""
    import httpx

    out: dict[str, list] = {"frozen": [], "online": [], "failed": []}

    def one(job: tuple[str, Any]) -> None:
        model, q = job
        try:
            r = ask(base_url, model, q)
        except Exception as e:  # noqa: BLE001
            out["failed"].append(f"{model}: {type(e).__name__}: {str(e)[:200]}")
            return
        correct = bool(data.judge(q.query_id, r["answer"]))
        out[model].append({"qid": q.query_id, "correct": correct, "cost": r["cost"],
                           "reward": correct - penalty * r["cost"], "version": r["version"],
                           "workers": r["workers"]})
        httpx.post(f"{base_url}/feedback", json={"request_id": r["id"], "label": q.reference},
                   timeout=60).raise_for_status()

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(one, [(m, q) for q in qs for m in ("frozen", "online")]))
    return out


def wait_rows(log_dir: str, model: str, n: int, timeout_s: float = 120.0) -> None:
    from ray_conductor.serve.traffic import read_traffic

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        df = read_traffic(log_dir)
        if len(df) and ((df["model"] == model) & df["label"].notna()).sum() >= n:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the traffic log {log_dir} did not get {n} labelled rows of {model}")


def references(pool: Path, qids: list[str], penalty: float) -> dict[str, Any]:
    """Per question and worker: the single-call reward in the served pool."""
    from ray_conductor.data.pools import load_pool

    data = load_pool(f"parquet:{pool}")
    r = np.array([[float(bool((rec := data.record(q, m)) and rec.correct))
                   - penalty * (rec.cost if rec else 0.0) for m in data.models] for q in qids])
    c = np.array([[bool((rec := data.record(q, m)) and rec.correct) for m in data.models]
                  for q in qids])
    k = np.array([[(rec.cost if (rec := data.record(q, m)) else 0.0) for m in data.models]
                  for q in qids])
    return {"models": data.models, "reward": r, "correct": c, "cost": k}


# -- one scenario -------------------------------------------------------------------------------


def serve_config(name: str, phase: Phase, frozen: str, registry: Path, log_dir: Path,
                 port: int) -> Any:
    from ray_conductor.serve.config import ServeConfig

    cfg = ServeConfig(app_name="shift", port=port, pool=f"parquet:{phase.pool}",
                      policies={"frozen": frozen, "online": f"registry:{registry}"},
                      log_dir=str(log_dir), log_flush_s=1.0, blocking=False)
    cfg.ray.namespace = f"shift_{name}"
    cfg.ingress.max_replicas = 1
    return cfg


def retrain_config(name: str, state: Path, args: argparse.Namespace) -> Any:
    from ray_conductor.online.config import RetrainConfig

    cfg = RetrainConfig(app="shift", model="online", state_dir=str(state), verifier="none")
    cfg.ray.namespace = f"shift_{name}"
    cfg.trigger.every_rows, cfg.trigger.every_minutes = args.every_rows, None
    # with anchors to train on, half the traffic can go to the paired test: its power is
    # what limits promotion on a few hundred questions
    cfg.evaluation.holdout = 0.5 if args.anchor_rows else 0.3
    cfg.evaluation.min_rows = 20
    cfg.training.iterations, cfg.training.min_rows = args.iterations, 30
    cfg.training.ppo.lr = args.lr
    cfg.rollback.window, cfg.rollback.min_baseline = args.tick, 20
    if args.anchor_rows:  # part A's questions, re-asked of the workers as they are now
        cfg.training.anchor.pool = f"parquet:{args.work}/pools/part_a.parquet"
        cfg.training.anchor.split, cfg.training.anchor.rows = "all", args.anchor_rows
        cfg.reroll.calls_per_round = 20 * args.anchor_rows + 20000
        cfg.reroll.concurrency = 128  # replay answers: the proxies' overhead, not a provider
        cfg.evaluation.anchor_rows = args.held_anchor_rows
    return cfg


def frozen_for(initial: Path, new: list[Any]) -> Any:
    """The frozen policy on a pool that gained `new` workers (`WorkerInfo`s): the initial
    policy, grown so that it loads there, never calling them (none: the initial policy)."""
    from ray_conductor.lite import LiteConductor
    from ray_conductor.online.extend import prepare_for_pool

    policy = LiteConductor.load(initial)
    if not new:
        return policy
    return prepare_for_pool(policy, [(i.name, i.input_price_per_mtok + i.output_price_per_mtok)
                                     for i in new])


def run_scenario(key: str, w: World, args: argparse.Namespace) -> dict[str, Any]:
    from ray_conductor.data.pools import load_pool
    from ray_conductor.graph import stop_worker_proxies
    from ray_conductor.online.command import build
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.command import free_port, start, stop

    name = NAMES[key]
    d = w.work / name
    shutil.rmtree(d, ignore_errors=True)  # a rerun starts from the initial policy, not the last
    initial, phases = scenario_phases(key, w, args.before, args.after)
    reg = PolicyRegistry(d / "registry")
    reg.publish(initial, kind="lite", meta={"source": "initial"})
    reg.promote(1, reason="initial policy")
    frozen, port = f"lite:{initial}", free_port()
    running = start(serve_config(name, phases[0], frozen, reg.root, d / "traffic", port))
    loop = build(retrain_config(name, d / "state", args))
    ticks, swap_load = [], {"sent": 0, "failed": 0, "errors": []}
    sent = 0
    try:
        for p, phase in enumerate(phases):
            if p > 0 and phase.pool != phases[p - 1].pool:  # new workers: redeploy (quiet)
                t0 = time.perf_counter()
                if phase.grow:
                    new = [i for i in load_pool(f"parquet:{phase.pool}").worker_infos()
                           if i.name in phase.grow]
                    loop.grow(new)
                    grown = frozen_for(initial, new)
                    frozen = f"lite:{grown.save(d / 'frozen_grown', overwrite=True)}"
                stop(running, shutdown_ray=False)
                stop_worker_proxies(f"shift_{name}")
                running = start(serve_config(name, phase, frozen, reg.root, d / "traffic",
                                             port))
                print(f"[{name}] redeployed for phase {p} in {time.perf_counter() - t0:.0f}s",
                      flush=True)
            ref = references(phase.pool, [q.query_id for q in phase.questions], w.penalty)
            for s in range(0, len(phase.questions), args.tick):
                qs = phase.questions[s:s + args.tick]
                t0 = time.perf_counter()
                got = send_tick(running.base_url, qs, w.data, w.penalty)
                sent += len(got["online"])
                wait_rows(running.cfg.log_dir, "online", sent)
                load_qs = phase.questions[:s + len(qs)]
                with Load(running.base_url, load_qs) as load:
                    made = loop.round()
                swap_load["sent"] += load.sent
                swap_load["failed"] += load.failed
                swap_load["errors"] += load.errors[:3]
                rows = list(range(s, s + len(qs)))
                ticks.append(tick_row(p, s, qs, got, ref, rows, made, time.perf_counter() - t0))
                print(f"[{name}] phase {p} q{s + len(qs)}: " + ", ".join(
                    f"{m} {np.mean([r['reward'] for r in got[m]]):.3f}"
                    for m in ("frozen", "online")) + f" oracle {ticks[-1]['oracle']['reward']:.3f}"
                    f" | {[x['kind'] for x in made]} | load {load.sent}/{load.failed} failed",
                    flush=True)
    finally:
        stop(running, shutdown_ray=False)
        stop_worker_proxies(f"shift_{name}")
    return summarize(name, ticks, phases, swap_load, loop.decisions.read(), args)


def tick_row(phase: int, start: int, qs: list[Any], got: dict[str, list], ref: dict[str, Any],
             rows: list[int], made: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    def stats(items: list[dict[str, Any]]) -> dict[str, float]:
        return {"reward": float(np.mean([r["reward"] for r in items])),
                "accuracy": float(np.mean([r["correct"] for r in items])),
                "cost": float(np.mean([r["cost"] for r in items])), "n": len(items)}

    best = int(np.argmax(ref["reward"].mean(axis=0)))  # the phase's best single, in hindsight
    o = ref["reward"][rows].argmax(axis=1)
    return {"phase": phase, "start": start, "frozen": stats(got["frozen"]),
            "online": stats(got["online"]),
            "best_single": {"worker": ref["models"][best],
                            "reward": float(ref["reward"][rows, best].mean()),
                            "accuracy": float(ref["correct"][rows, best].mean()),
                            "cost": float(ref["cost"][rows, best].mean())},
            "oracle": {"reward": float(ref["reward"][rows, o].mean()),
                       "accuracy": float(ref["correct"][rows, o].mean()),
                       "cost": float(ref["cost"][rows, o].mean())},
            "online_versions": sorted({r["version"] for r in got["online"]}),
            "failed": got["failed"], "decisions": [x["kind"] for x in made],
            "wall_s": wall_s}


def summarize(name: str, ticks: list[dict[str, Any]], phases: list[Phase], load: dict[str, Any],
              decisions: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    last = [t for t in ticks if t["phase"] == len(phases) - 1]
    window = [t for t in last if t["start"] >= len(phases[-1].questions) - args.after_window]

    def after(key: str, metric: str = "reward") -> float:
        n = sum(t["frozen"]["n"] for t in window)
        return float(sum(t[key][metric] * t["frozen"]["n"] for t in window) / max(n, 1))

    frozen, online, oracle = after("frozen"), after("online"), after("oracle")
    gap = oracle - frozen
    kinds = [d["kind"] for d in decisions]
    return {"scenario": name, "summary": {
        "frozen_after": round(frozen, 4), "online_after": round(online, 4),
        "oracle_after": round(oracle, 4), "best_single_after": round(after("best_single"), 4),
        "best_single_worker": window[-1]["best_single"]["worker"] if window else None,
        "recovered": round((online - frozen) / gap, 4) if gap > 1e-9 else None,
        "online_beats_frozen": online > frozen,
        "accuracy_after": {k: round(after(k, "accuracy"), 4)
                           for k in ("frozen", "online", "best_single", "oracle")},
        "cost_per_query_after": {k: round(after(k, "cost"), 6)
                                 for k in ("frozen", "online", "best_single", "oracle")},
        "after_questions": sum(t["frozen"]["n"] for t in window),
        "failed_during_swaps": load["failed"], "requests_during_swaps": load["sent"],
        "failed_measured": sum(len(t["failed"]) for t in ticks),
        "promotions": kinds.count("promoted"), "rejections": kinds.count("rejected"),
        "rollbacks": kinds.count("rolled_back"), "extended": kinds.count("extended"),
        "guarded": sum(bool(d.get("guarded")) for d in decisions if d["kind"] == "rejected"),
        "watches_paired": sum(d.get("test_kind") == "paired" for d in decisions
                              if d["kind"] in ("kept", "rolled_back"))},
        "ticks": ticks, "decisions": decisions, "swap_errors": load["errors"][:10]}


# -- the lite tier's own ceiling ----------------------------------------------------------------


def refit_policy(key: str, w: World) -> Path:
    """A lite policy trained from scratch, with the initial policy's budget, on part A as the
    world looks *after* the shift: what the lite tier reaches with plenty of data from the new
    world (the per-question oracle is no policy's target). (a) part A's questions in the new
    mix (every law question of part A, 80% of the set); (b) part A with the best worker's
    price x10; (c) part A with its answers degraded; (d) part A with every worker (the
    initial policy of the scenarios that start with the full pool)."""
    d = w.work / "pools" / "refit"
    if key == "a":
        qs = [q for q in w.data.queries("train") if q.query_id in w.part_a]
        law = [q for q in qs if q.task.endswith("/law")]
        rest = [q for q in qs if not q.task.endswith("/law")]
        keep = round(len(law) / 0.8) - len(law)
        pick = [rest[i] for i in np.random.default_rng(4).permutation(len(rest))[:keep]]
        pool = derive(w.table, d / "mix.parquet", {q.query_id for q in law + pick})
    elif key == "b":
        pool = derive(w.table, d / "price.parquet", w.part_a, price=(w.best, 10.0))
    elif key == "c":
        pool = derive(w.table, d / "degrade.parquet", w.part_a, degrade=(w.best, WEAK))
    else:
        return w.policy
    return initial_policy(pool, w.work / f"refit_{NAMES[key]}", w.penalty, w.train_s)


def refit_reference(key: str, w: World, args: argparse.Namespace) -> dict[str, Any]:
    """The refit policy and the frozen one, judged offline (replay table, the served
    reward) on the questions of the `_after` window."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.lite import LiteConductor
    from ray_conductor.lite.table import build_table

    initial, phases = scenario_phases(key, w, args.before, args.after)
    last = phases[-1]
    start = len(last.questions) - args.after_window
    first = -(-start // args.tick) * args.tick  # the first tick inside the window, as summarize
    window = {q.query_id for q in last.questions[first:]}
    data = load_pool(f"parquet:{last.pool}")
    refit = LiteConductor.load(refit_policy(key, w))
    frozen = frozen_for(initial, [i for i in data.worker_infos() if i.name in last.grow])
    table = build_table(data, "all", lambda texts: refit.embed(texts, cache=True))
    rows = [i for i, q in enumerate(table.query_ids) if q in window]
    table = table.take(rows)

    def reward(c: Any) -> float:
        r = c.rollout(table)
        return float(np.mean(r.correct - w.penalty * r.cost))

    return {"refit_after": round(reward(refit), 4),
            "frozen_after_offline": round(reward(frozen), 4), "questions": len(rows)}


def add_refit(report: dict[str, Any], w: World, args: argparse.Namespace) -> None:
    """Each scenario's summary gains the refit reference and `recovered_vs_refit`."""
    for key, name in NAMES.items():
        s = report["summary"].get(name)
        if s is None:
            continue
        ref = refit_reference(key, w, args)
        gap = ref["refit_after"] - ref["frozen_after_offline"]
        s.update(ref)
        s["recovered_vs_refit"] = (round((s["online_after"] - s["frozen_after"]) / gap, 4)
                                   if gap > 1e-9 else None)
        print(f"[{name}] refit {ref['refit_after']:.4f}, frozen offline "
              f"{ref['frozen_after_offline']:.4f} on {ref['questions']} questions", flush=True)


# -- the plot -----------------------------------------------------------------------------------


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("reward", "reward (correct - λ·$)"), ("accuracy", "accuracy"),
               ("cost", "$ / query")]
    fig, axes = plt.subplots(len(metrics), len(results), figsize=(4.2 * len(results), 9),
                             squeeze=False, sharex="col")
    styles = {"frozen": ("tab:red", "-"), "online": ("tab:blue", "-"),
              "best_single": ("tab:gray", "--"), "oracle": ("black", ":")}
    for j, res in enumerate(results):
        ticks = res["ticks"]
        x = np.cumsum([t["frozen"]["n"] for t in ticks])
        shift = next((x[i - 1] for i, t in enumerate(ticks) if t["phase"] > 0), None)
        for i, (m, label) in enumerate(metrics):
            ax = axes[i][j]
            for key, (color, ls) in styles.items():
                ax.plot(x, [t[key][m] for t in ticks], color=color, ls=ls, marker=".",
                        label=key.replace("_", " "))
            if shift is not None:
                ax.axvline(shift, color="tab:orange", lw=1)
            for xi, t in zip(x, ticks):
                if "promoted" in t["decisions"]:
                    ax.axvline(xi, color="tab:green", lw=0.6, alpha=0.6)
                if "rolled_back" in t["decisions"]:
                    ax.axvline(xi, color="tab:purple", lw=0.8, ls="--")
            ax.set_ylabel(label if j == 0 else "")
            if i == 0:
                s = res["summary"]
                ax.set_title(f"({'abcd'[list(NAMES.values()).index(res['scenario'])]}) "
                             f"{res['scenario']}: recovered {s['recovered']}", fontsize=10)
            if i == len(metrics) - 1:
                ax.set_xlabel("questions sent (shift: orange; promotions: green)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shift.json"))
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "shift.png"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_shift"))
    ap.add_argument("--scenarios", default="abcd")
    ap.add_argument("--before", type=int, default=150, help="questions before the shift")
    ap.add_argument("--after", type=int, default=350, help="questions after the shift")
    ap.add_argument("--after-window", type=int, default=150,
                    help="the last questions the `_after` figures are measured on")
    ap.add_argument("--tick", type=int, default=50, help="questions per retrain round")
    ap.add_argument("--every-rows", type=int, default=50, help="the loop's trigger")
    ap.add_argument("--iterations", type=int, default=12, help="PPO iterations per round")
    ap.add_argument("--lr", type=float, default=1e-4, help="PPO learning rate online")
    ap.add_argument("--penalty", type=float, default=30.0, help="λ: dollars' weight")
    ap.add_argument("--train-s", type=float, default=150.0, help="initial training budget")
    ap.add_argument("--anchor-rows", type=int, default=3000,
                    help="part A questions the loop re-asks and trains on (0: traffic only)")
    ap.add_argument("--held-anchor-rows", type=int, default=1000,
                    help="held-back part A questions the paired test also compares on")
    ap.add_argument("--refit-only", action="store_true",
                    help="only add the refit reference to the report at --out (same settings)")
    args = ap.parse_args()

    import ray
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=400 * 1024 * 1024)
    results = []
    try:
        world = build_world(Path(args.work), args.penalty, args.train_s)
        setup_s = time.perf_counter() - t0
        print(f"setup {setup_s:.0f}s; best worker {world.best}", flush=True)
        if args.refit_only:
            import json

            report = json.loads(Path(args.out).read_text())
            add_refit(report, world, args)
            report["refit_s"] = round(time.perf_counter() - t0)
            write_report(report, args.out)
            return
        for key in args.scenarios:
            results.append(run_scenario(key, world, args))
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    plot(results, Path(args.plot))
    report = {
        "summary": {r["scenario"]: r["summary"] for r in results},
        "setup": {"pool": "mmlu_pro (train split only)", "cost_penalty": args.penalty,
                  "best_worker": world.best, "weak_worker": WEAK,
                  "part_b_questions": len(world.part_b), "setup_s": round(setup_s, 1)},
        "config": vars(args), "scenarios": results, "wall_s": round(time.perf_counter() - t0),
        "environment": environment(1), "plot": args.plot}
    add_refit(report, world, args)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
