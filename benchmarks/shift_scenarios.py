"""The shift benchmark's scenarios (`shift.py` runs them): derived replay pools, the two
initial lite policies, the question streams, and each scenario's phases.

MMLU-Pro's 12 recorded models, train split only (the test split is never read). The train
questions are cut by hashed id into part A, on which two initial lite policies are trained
(`train-lite`, fixed dollar penalty), and part B, whose questions are the traffic. Four
scenarios, each a stream of questions, first from the world the initial policy knows, then
from a shifted one:

  (a) mix: the questions move from mostly math to mostly law;
  (b) price: the best worker (best single-call reward on part A) costs ten times more: the
      same recorded answers, served under a worker config whose price is ten times higher
      (a price-only change: its answer fingerprint is unchanged, nothing is asked again);
  (c) degrade: the best worker's recorded answers are replaced by a weaker model's;
  (d) new worker: the best worker is held out of the pool at first, then joins.

A seed draws the streamed questions (and the loop's own seed); the initial policies and the
derived part-A pools are shared by every seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
POOL = f"mmlu_pro:{ROOT.parent / 'shared' / 'data' / 'mmlu_pro'}"
WEAK = "Meta-Llama-3_1-8B-Instruct"  # whose answers replace the degraded worker's
NAMES = {"a": "mix", "b": "price", "c": "degrade", "d": "new_worker"}
PRICE_RISE = 10.0


# -- derived pools ----------------------------------------------------------------------


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


# -- the scenarios ----------------------------------------------------------------------


@dataclass
class Phase:
    pool: Path  # the recorded answers served
    questions: list[Any]
    grow: list[str] = field(default_factory=list)  # workers this phase adds (scenario d)
    workers: Path | None = None  # a worker YAML over `pool` (scenario b: the new prices)
    reference: Path | None = None  # the pool whose costs are the phase's truth (else `pool`)

    @property
    def truth(self) -> Path:
        return self.reference or self.pool


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


def price_workers(pool: Path, worker: str, factor: float, path: Path) -> Path:
    """A worker YAML: `pool`'s replay workers at their recorded prices, `worker`'s times
    `factor` (what an operator writes when a provider raises a price)."""
    import yaml

    from ray_conductor.data.pools import load_pool
    from ray_conductor.workers.base import WorkerInfo
    from ray_conductor.workers.config import replay_workers

    spec = f"parquet:{pool}"
    infos = [WorkerInfo(i.name, i.description, i.input_price_per_mtok * f,
                        i.output_price_per_mtok * f)
             for i in load_pool(spec).worker_infos()
             for f in [factor if i.name == worker else 1.0]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"workers": [asdict(w) for w in replay_workers(spec, infos)],
                                    "replay": spec}))
    return path


def scenario_phases(key: str, w: World, n_before: int, n_after: int, seed: int = 0
                    ) -> tuple[Path, list[Phase]]:
    """(initial policy, phases) of scenario `key` for `seed`; pools hold the streamed
    questions and part A's (the online loop's anchor questions, never streamed)."""
    d = w.work / "pools" / f"{NAMES[key]}_s{seed}"
    s = 10 * seed
    if key == "a":
        before = stream(w.part_b, n_before, 1 + s, "math")
        after = stream(w.part_b, n_after, 2 + s, "law", avoid={q.query_id for q in before})
        pool = derive(w.table, d / "pool.parquet",
                      {q.query_id for q in before + after} | w.part_a)
        return w.policy, [Phase(pool, before), Phase(pool, after)]
    qs = stream(w.part_b, n_before + n_after, 3 + s)
    ids = {q.query_id for q in qs} | w.part_a
    before, after = qs[:n_before], qs[n_before:]
    if key == "b":
        pool = derive(w.table, d / "before.parquet", ids)
        return w.policy, [Phase(pool, before), Phase(
            pool, after, workers=price_workers(pool, w.best, PRICE_RISE, d / "workers.yaml"),
            reference=derive(w.table, d / "after.parquet", ids, price=(w.best, PRICE_RISE)))]
    if key == "c":
        return w.policy, [Phase(derive(w.table, d / "before.parquet", ids), before),
                          Phase(derive(w.table, d / "after.parquet", ids,
                                       degrade=(w.best, WEAK)), after)]
    return w.policy_minus, [Phase(derive(w.table, d / "before.parquet", ids, drop=w.best),
                                  before),
                            Phase(derive(w.table, d / "after.parquet", ids), after,
                                  grow=[w.best])]


def after_world(key: str, w: World, qids: set[str], path: Path) -> Path | None:
    """Part B's questions `qids` as the world looks after scenario `key`'s shift: the best
    worker's price x10 (b), its answers degraded (c), every worker (d). None for (a), whose
    shift is the question mix, not the world."""
    if key == "b":
        return derive(w.table, path, qids, price=(w.best, PRICE_RISE))
    if key == "c":
        return derive(w.table, path, qids, degrade=(w.best, WEAK))
    if key == "d":
        return derive(w.table, path, qids)
    return None


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
        pool = derive(w.table, d / "price.parquet", w.part_a, price=(w.best, PRICE_RISE))
    elif key == "c":
        pool = derive(w.table, d / "degrade.parquet", w.part_a, degrade=(w.best, WEAK))
    else:
        return w.policy
    return initial_policy(pool, w.work / f"refit_{NAMES[key]}", w.penalty, w.train_s)
