"""Shift scenarios on replay data, driven through the served app: does online retraining
recover when the world moves under a served lite conductor, and what does learning cost?

The scenarios (a) mix, (b) price, (c) degrade, (d) new worker are defined in
`shift_scenarios.py`. One Serve app serves `frozen` (the initial policy, never swapped) and
`online` (a registry the online loop promotes into and rolls back); every question is asked
of both through the official `openai` client, and label feedback is posted (POST
/v1/feedback). After each tick one round of the online loop runs (the same `Retrainer` as
`ray-conductor retrain`) while a load thread keeps asking `online`, so every hot-swap
happens under traffic: its failed requests are counted. Where a shift changes the workers
the app is redeployed with the new pool (registry and policies survive), and one round runs
before the next tick, as the loop's next poll would (a price change retrains there, on the
cached answers re-priced: `trigger.on_price_change`). The loop's anchor
questions are part A's; half the traffic is held back for the paired test.

By default the loop learns on a budget: at most `--calls-per-row` (1) extra worker calls per
rewarded traffic row, anchors and watches included, on top of the answers the served traces
already hold (`reroll.calls_per_row`); `--full-reroll` runs the earlier setting (every worker
asked every new question, a price change re-asks). Each scenario runs with `--seeds` seeds
(the streamed questions and the loop's seed); the summary fields are means over seeds with
`seeds` and a `*_sd` beside each figure; per seed figures are under `runs`.

Summary per scenario, on the last `--after-window` questions: `frozen_after`,
`online_after`, `oracle_after`, `best_single_after`, `recovered`, requests failed during
swaps, promotions, rollbacks; learning cost: `extra_calls_per_rewarded_row`,
`extra_dollars`, `traffic_dollars`, `learning_cost_per_served_dollar`,
`price_change_reasks` (answers asked again because of a price-only change); and the lite
tier's ceiling: `refit_after`, a lite policy trained from scratch on part A as the world
looks after the shift, judged offline beside the frozen one, and `recovered_vs_refit`.
The live window is 150 questions, so those ratios carry a wide spread; the end state is also
judged offline on the ~4,900 part-B questions the seed never streamed: the online loop's last
promoted policy, the frozen one and the refit (`online_final_unseen`, `frozen_unseen`,
`refit_unseen`, `recovered_vs_refit_unseen`), and the live window's online policies on the
same questions, each weighted by how many window questions it answered
(`online_live_unseen`, `recovered_vs_refit_live_unseen`: the live window's expected reward
given which policy served when, the wait for a promotion included, without the draw of its
150 questions; `*_shift_unseen` the same over every question after the shift). `--rejudge REPORT` adds these to an earlier report whose runs' registries
are still under its --work.
Timings come from a loaded shared 2-core machine.

    cd benchmarks && nice python shift.py --both          # budgeted, then --full-reroll
    nice python shift.py --scenarios b --seeds 1          # size one scenario first
    python shift.py --rejudge results/shift_unseen.json   # add the offline figures again
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ENV, environment, local_ray, write_report
from shift_report import (aggregate, plot, served_mix, share_of_gap, summarize, tick_row,
                          window_ticks)
from shift_scenarios import (NAMES, WEAK, Phase, World, after_world, build_world, refit_policy,
                             scenario_phases)

for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parent.parent


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
    while n > 0 and time.monotonic() < end:  # (a tick whose every request failed: none)
        df = read_traffic(log_dir)
        if len(df) and ((df["model"] == model) & df["label"].notna()).sum() >= n:
            return
        time.sleep(0.5)
    if n > 0:
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
    if phase.workers is not None:
        cfg.workers = str(phase.workers)
    cfg.ray.namespace = f"shift_{name}"
    cfg.ingress.max_replicas = 1
    return cfg


def retrain_config(name: str, state: Path, args: argparse.Namespace, seed: int) -> Any:
    from ray_conductor.online.config import RetrainConfig

    cfg = RetrainConfig(app="shift", model="online", state_dir=str(state), verifier="none")
    cfg.ray.namespace = f"shift_{name}"
    cfg.trigger.every_rows, cfg.trigger.every_minutes = args.every_rows, None
    cfg.evaluation.holdout = 0.5 if args.anchor_rows else 0.3
    cfg.evaluation.min_rows = 20
    cfg.training.iterations, cfg.training.min_rows = args.iterations, 30
    cfg.training.seed = seed
    cfg.training.ppo.lr = args.lr
    cfg.training.ppo.train_batch_size, cfg.training.ppo.minibatch_size = args.ppo_batch, 250
    cfg.rollback.window, cfg.rollback.min_baseline = args.tick, 20
    cfg.reroll.calls_per_row = None if args.full else args.calls_per_row
    cfg.reroll.reprice = not args.full  # the full re-roll is the earlier setting, whole
    cfg.reroll.concurrency = 128  # replay answers: the proxies' overhead, not a provider
    if args.anchor_rows:  # part A's questions, re-asked of the workers as they are now
        cfg.training.anchor.pool = f"parquet:{args.work}/pools/part_a.parquet"
        cfg.training.anchor.split, cfg.training.anchor.rows = "all", args.anchor_rows
        cfg.reroll.calls_per_round = 20 * args.anchor_rows + 20000
        cfg.evaluation.anchor_rows = args.held_anchor_rows
        if args.anchor_share is not None:
            cfg.evaluation.anchor_share = args.anchor_share
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


def run_scenario(key: str, w: World, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from ray_conductor.data.pools import load_pool
    from ray_conductor.graph import stop_worker_proxies
    from ray_conductor.online.command import build
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.command import free_port, start, stop

    name = NAMES[key]
    d = w.work / ("full" if args.full else "budget") / f"{name}_s{seed}"
    shutil.rmtree(d, ignore_errors=True)  # a rerun starts from the initial policy, not the last
    initial, phases = scenario_phases(key, w, args.before, args.after, seed)
    reg = PolicyRegistry(d / "registry")
    reg.publish(initial, kind="lite", meta={"source": "initial"})
    reg.promote(1, reason="initial policy")
    frozen, port = f"lite:{initial}", free_port()
    running = start(serve_config(name, phases[0], frozen, reg.root, d / "traffic", port))
    loop = build(retrain_config(name, d / "state", args, seed))
    ticks, polls, swap_load = [], [], {"sent": 0, "failed": 0, "errors": []}
    sent, t_run = 0, time.perf_counter()
    try:
        for p, phase in enumerate(phases):
            prev = phases[p - 1] if p else phase
            if (phase.pool, phase.workers) != (prev.pool, prev.workers):  # redeploy (quiet)
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
                print(f"[{name} s{seed}] redeployed for phase {p} in "
                      f"{time.perf_counter() - t0:.0f}s", flush=True)
                # the loop's next poll (the actor's every `poll_s`) comes before the next
                # tick's traffic: a price change retrains then (`trigger.on_price_change`)
                with Load(running.base_url, phase.questions[:args.tick], threads=1) as load:
                    made = loop.round()
                swap_load["sent"] += load.sent
                swap_load["failed"] += load.failed
                swap_load["errors"] += load.errors[:3]
                polls.append({"phase": p, "decisions": [x["kind"] for x in made]})
                print(f"[{name} s{seed}] poll after the redeploy: "
                      f"{[x['kind'] for x in made]}", flush=True)
            ref = references(phase.truth, [q.query_id for q in phase.questions], w.penalty)
            for s in range(0, len(phase.questions), args.tick):
                qs = phase.questions[s:s + args.tick]
                t0 = time.perf_counter()
                got = send_tick(running.base_url, qs, w.data, w.penalty)
                sent += len(got["online"])
                wait_rows(running.cfg.log_dir, "online", sent)
                with Load(running.base_url, phase.questions[:s + len(qs)], threads=1) as load:
                    made = loop.round()
                swap_load["sent"] += load.sent
                swap_load["failed"] += load.failed
                swap_load["errors"] += load.errors[:3]
                rows = list(range(s, s + len(qs)))
                ticks.append(tick_row(p, s, qs, got, ref, rows, made, time.perf_counter() - t0))
                ticks[-1]["learning"] = ledger(loop)
                print(f"[{name} s{seed}] phase {p} q{s + len(qs)}: " + ", ".join(
                    f"{m} {np.mean([r['reward'] for r in got[m]]):.3f}"
                    for m in ("frozen", "online")) + f" oracle {ticks[-1]['oracle']['reward']:.3f}"
                    f" | {[x['kind'] for x in made]} | extra calls "
                    f"{ticks[-1]['learning']['extra_calls']} | load {load.sent}/{load.failed} "
                    f"failed | {time.perf_counter() - t_run:.0f}s", flush=True)
    finally:
        stop(running, shutdown_ray=False)
        stop_worker_proxies(f"shift_{name}")
    out = summarize(name, ticks, phases, swap_load, loop.decisions.read(), args)
    out["summary"].update(learning_summary(loop))
    out["summary"]["wall_s"] = round(time.perf_counter() - t_run, 1)
    out["seed"] = seed
    final = reg.promoted()
    out["final_policy"] = {"version": final.version, "path": final.path} if final else None
    out["registry"] = str(reg.root)
    out["polls"] = polls
    return out


def ledger(loop: Any) -> dict[str, Any]:
    """The loop's running learning cost (written decisions and not yet written spending)."""
    t, p = loop.decisions.total, loop.decisions.pending
    calls, dollars, traffic = t.calls + p.calls, t.dollars + p.dollars, t.traffic + p.traffic
    return {"extra_calls": calls, "extra_dollars": dollars, "traffic_dollars": traffic,
            "rewarded_rows": loop.state.rewarded_rows,
            "learning_cost_per_served_dollar": dollars / traffic if traffic > 0 else None}


def learning_summary(loop: Any) -> dict[str, Any]:
    led = ledger(loop)
    reasks = 0
    for d in loop.decisions.read():
        reasks += int((d.get("reroll") or {}).get("price_change_reasks", 0))
    return {"extra_calls": led["extra_calls"], "rewarded_rows": led["rewarded_rows"],
            "extra_calls_per_rewarded_row": round(
                led["extra_calls"] / max(led["rewarded_rows"], 1), 4),
            "extra_dollars": round(led["extra_dollars"], 6),
            "traffic_dollars": round(led["traffic_dollars"], 6),
            "learning_cost_per_served_dollar": None if led["learning_cost_per_served_dollar"]
            is None else round(led["learning_cost_per_served_dollar"], 4),
            "price_change_reasks": reasks}


# -- the lite tier's own ceiling ----------------------------------------------------------------


def refit_reference(key: str, w: World, args: argparse.Namespace, initial: Path,
                    phases: list[Phase]) -> dict[str, Any]:
    """The refit policy (`shift_scenarios.refit_policy`) and the frozen one, judged offline
    (replay table, the served reward) on the questions of the seed's `_after` window."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.lite import LiteConductor
    from ray_conductor.lite.table import build_table

    last = phases[-1]
    start = len(last.questions) - args.after_window
    first = -(-start // args.tick) * args.tick  # the first tick inside the window, as summarize
    window = {q.query_id for q in last.questions[first:]}
    data = load_pool(f"parquet:{last.truth}")
    refit = LiteConductor.load(refit_policy(key, w))
    frozen = frozen_for(initial, [i for i in data.worker_infos() if i.name in last.grow])
    table = build_table(data, "all", lambda texts: refit.embed(texts, cache=True))
    table = table.take([i for i, q in enumerate(table.query_ids) if q in window])

    def reward(c: Any) -> float:
        r = c.rollout(table)
        return float(np.mean(r.correct - w.penalty * r.cost))

    return {"refit_after": round(reward(refit), 4),
            "frozen_after_offline": round(reward(frozen), 4), "questions": len(table)}


def unseen_reference(key: str, w: World, seed: int, initial: Path, phases: list[Phase],
                     online: str, served: dict[str, dict[str, float]] | None = None
                     ) -> dict[str, Any] | None:
    """The online loop's last promoted policy (`online`), the frozen one and the refit, judged
    offline (replay table, the served reward) on every part-B question the seed never
    streamed, as the world looks after the shift: the end state of online learning against
    the refit on ~30x the questions of the live `_after` window, none of them seen by any of
    the three. None for (a). `online_final_unseen - frozen_unseen` comes with the standard
    error of its paired per-question difference.

    `served` (label -> policy path -> questions it answered, `served_policies`): the online
    policies that served a stretch of the run, on the same unseen questions, weighted by
    their share of it (`online_{label}_unseen`, `recovered_vs_refit_{label}_unseen`); label
    `live` is the live `_after` window, `shift` every question after the shift. That is the
    stretch's expected reward given which policy served when, the time before a promotion
    included, without the noise of which questions the stretch happened to draw."""
    from ray_conductor.data.pools import load_pool
    from ray_conductor.lite import LiteConductor
    from ray_conductor.lite.table import build_table

    streamed = {q.query_id for p in phases for q in p.questions}
    unseen = {q.query_id for q in w.part_b} - streamed
    path = after_world(key, w, unseen, w.work / "pools" / f"{NAMES[key]}_s{seed}" /
                       "unseen_after.parquet")
    if path is None:
        return None
    data = load_pool(f"parquet:{path}")
    refit = LiteConductor.load(refit_policy(key, w))
    grown = [i for i in data.worker_infos() if i.name in phases[-1].grow]
    policies = {"online_final": LiteConductor.load(online), "frozen": frozen_for(initial, grown),
                "refit": refit}
    table = build_table(data, "all", lambda texts: refit.embed(texts, cache=True))

    def reward(c: Any) -> np.ndarray:
        r = c.rollout(table)
        return r.correct - w.penalty * r.cost

    got = {name: reward(c) for name, c in policies.items()}
    diff = got["online_final"] - got["frozen"]
    gap = float(got["refit"].mean() - got["frozen"].mean())
    out = {**{f"{k}_unseen": round(float(v.mean()), 4) for k, v in got.items()},
           "online_final_vs_frozen_unseen_se": paired_se(diff), "unseen_questions": len(table),
           "recovered_vs_refit_unseen": share_of_gap(float(diff.mean()), gap)}
    judged = {str(Path(online).resolve()): got["online_final"]}
    for label, mix in (served or {}).items():
        total = sum(mix.values())
        if total <= 0:
            continue
        mixed = np.zeros(len(table))
        for path, n in mix.items():
            key = str(Path(path).resolve())
            if key not in judged:
                judged[key] = reward(LiteConductor.load(path))
            mixed += (n / total) * judged[key]
        diff = mixed - got["frozen"]
        out.update({f"online_{label}_unseen": round(float(mixed.mean()), 4),
                    f"online_{label}_vs_frozen_unseen_se": paired_se(diff),
                    f"recovered_vs_refit_{label}_unseen": share_of_gap(float(diff.mean()),
                                                                       gap)})
    return out


def paired_se(diff: np.ndarray) -> float:
    """The standard error of a paired per-question difference's mean."""
    return round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)


def served_policies(run: dict[str, Any], phases: list[Phase], after_window: int
                    ) -> dict[str, dict[str, float]]:
    """Per stretch (`live`: the live `_after` window; `shift`: every question after the
    shift), policy path -> questions it answered there (`served_mix`), the version tags
    looked up in the run's registry (recorded, or the final policy's)."""
    from ray_conductor.policy.registry import PolicyRegistry

    root = run.get("registry") or (run.get("final_policy") or {}).get("path")
    if root is None:
        return {}
    root = Path(root) if run.get("registry") else Path(root).parents[1]
    paths = {v.tag: v.path for v in PolicyRegistry(root).versions()}
    last, n = len(phases) - 1, len(phases[-1].questions)
    out = {}
    for label, size in (("live", after_window), ("shift", n)):
        mix = served_mix(window_ticks(run["ticks"], last, n, size))
        missing = sorted(set(mix) - set(paths))
        if missing:
            raise SystemExit(f"registry {root} lacks the served versions {missing}: the "
                             "online policies cannot be judged offline; rerun the scenario")
        out[label] = {paths[tag]: k for tag, k in mix.items()}
    return out


def add_refit(run: dict[str, Any], key: str, w: World, args: argparse.Namespace) -> None:
    s = run["summary"]
    initial, phases = scenario_phases(key, w, args.before, args.after, run["seed"])
    ref = refit_reference(key, w, args, initial, phases)
    gap = ref["refit_after"] - ref["frozen_after_offline"]
    s.update(ref)
    s["refit_beats_frozen"] = gap > 1e-9
    s["recovered_vs_refit"] = share_of_gap(s["online_after"] - s["frozen_after"], gap)
    if run.get("final_policy"):
        s.update(unseen_reference(key, w, run["seed"], initial, phases,
                                  run["final_policy"]["path"],
                                  served_policies(run, phases, args.after_window)) or {})


# -- main ---------------------------------------------------------------------------------------


def run_mode(world: World, args: argparse.Namespace, out: str, png: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    scenarios: dict[str, list[dict[str, Any]]] = {}
    for key in args.scenarios:
        for seed in range(args.seeds):
            run = run_scenario(key, world, args, seed)
            add_refit(run, key, world, args)
            scenarios.setdefault(NAMES[key], []).append(run)
    mode = f"full re-roll" if args.full else f"budget: {args.calls_per_row:g} call(s) per row"
    report = {"summary": {n: aggregate(r) for n, r in scenarios.items()}, "mode": mode,
              "setup": {"pool": "mmlu_pro (train split only)", "cost_penalty": args.penalty,
                        "best_worker": world.best, "weak_worker": WEAK,
                        "part_b_questions": len(world.part_b)},
              "config": vars(args), "scenarios": scenarios,
              "wall_s": round(time.perf_counter() - t0), "environment": environment(1),
              "plot": png, "machine": "loaded shared 2-core machine (timings are not clean)"}
    plot(report, Path(png))
    write_report(report, out)
    return report


def rejudge(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """An earlier report's runs judged offline again with this version's `add_refit` (the
    live window's policies on the unseen questions, among others): the same world, policies
    and settings as recorded in its `config`; the live figures are kept as they were."""
    import json

    try:
        report = json.loads(path.read_text())
        cfg, scenarios = report["config"], report["scenarios"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--rejudge {path}: not a shift report ({type(e).__name__}: {e}); "
                         "name a JSON report shift.py wrote") from None
    for k in ("work", "before", "after", "after_window", "tick", "penalty", "train_s"):
        setattr(args, k, cfg[k])
    world = build_world(Path(args.work), args.penalty, args.train_s)
    keys = {name: key for key, name in NAMES.items()}
    for name, runs in scenarios.items():
        for run in runs:
            add_refit(run, keys[name], world, args)
            print(f"[{name} s{run['seed']}] " + ", ".join(
                f"{k} {run['summary'].get(k)}" for k in (
                    "recovered_vs_refit", "recovered_vs_refit_unseen",
                    "recovered_vs_refit_live_unseen", "recovered_vs_refit_shift_unseen")),
                flush=True)
    report["summary"] = {n: aggregate(r) for n, r in scenarios.items()}
    report["rejudged"] = {"by": "shift.py --rejudge", "from": str(path),
                          "environment": environment(1)}
    out = Path(args.out) if args.out else path
    plot(report, out.with_suffix(".png"))
    write_report(report, out)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    res = ROOT / "benchmarks" / "results"
    ap.add_argument("--out", default=None, help="default: results/shift.json")
    ap.add_argument("--plot", default=None, help="default: --out with .png")
    ap.add_argument("--full-out", default=str(res / "shift_full_reroll.json"))
    ap.add_argument("--full-plot", default=None, help="default: --full-out with .png")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_shift"))
    ap.add_argument("--scenarios", default="abcd")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per scenario (>= 3 to report)")
    ap.add_argument("--calls-per-row", type=float, default=1.0,
                    help="extra calls per rewarded row at most (reroll.calls_per_row)")
    ap.add_argument("--full-reroll", action="store_true",
                    help="only the earlier setting: every worker re-asked, a price re-asks")
    ap.add_argument("--both", action="store_true",
                    help="the budgeted run, then the full re-roll (two reports)")
    ap.add_argument("--before", type=int, default=50, help="questions before the shift")
    ap.add_argument("--after", type=int, default=100, help="questions after the shift")
    ap.add_argument("--after-window", type=int, default=50,
                    help="the last questions the `_after` figures are measured on")
    ap.add_argument("--tick", type=int, default=50, help="questions per retrain round")
    ap.add_argument("--every-rows", type=int, default=50, help="the loop's trigger")
    ap.add_argument("--iterations", type=int, default=3, help="PPO iterations per round")
    ap.add_argument("--ppo-batch", type=int, default=500, help="PPO env steps per iteration")
    ap.add_argument("--lr", type=float, default=1e-4, help="PPO learning rate online")
    ap.add_argument("--penalty", type=float, default=30.0, help="λ: dollars' weight")
    ap.add_argument("--train-s", type=float, default=60.0, help="initial training budget")
    ap.add_argument("--anchor-rows", type=int, default=300,
                    help="part A questions the loop re-asks and trains on (0: traffic only)")
    ap.add_argument("--held-anchor-rows", type=int, default=100,
                    help="held-back part A questions the paired test also compares on")
    ap.add_argument("--anchor-share", type=float, default=None,
                    help="share of the scoring calls kept for the held-back anchors "
                         "(evaluation.anchor_share; default: the config's, 0.5)")
    ap.add_argument("--rejudge", metavar="REPORT", default=None,
                    help="judge an earlier report's runs offline again (its --work with the "
                         "runs' registries still there) and add what this version computes "
                         "(e.g. online_live_unseen); writes --out, default REPORT itself")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    if args.rejudge:
        rejudge(Path(args.rejudge), args)
        return
    t0 = time.perf_counter()
    with local_ray(num_cpus=4, object_store_mb=400):
        try:
            world = build_world(Path(args.work), args.penalty, args.train_s)
            print(f"setup {time.perf_counter() - t0:.0f}s; best worker {world.best}", flush=True)
            modes = [True] if args.full_reroll else [False, True] if args.both else [False]
            for full in modes:
                args.full = full
                out = args.full_out if full else args.out or str(res / "shift.json")
                png = (args.full_plot if full else args.plot) or Path(out).with_suffix(".png")
                run_mode(world, args, out, str(png))
        finally:
            from ray import serve

            serve.shutdown()


if __name__ == "__main__":
    main()
