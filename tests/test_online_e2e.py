"""Online retraining end to end, on a real Serve app: serve a deliberately bad lite policy
from a registry, send traffic through the official `openai` client, post feedback, run one
retrain round (re-roll through the shared proxies, warm-started PPO, paired test), see the
new version promoted by hot-swap and answering, with no failed request while requests kept
flowing during the swap, the decision in the log and in Prometheus; then force a drop in
the live reward and see the `OnlineRetrainer` actor (the loop beside the app) roll back.

One app for the module (replay workers over the demo pool); Serve is shut down at the end,
never Ray.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

pytestmark = [pytest.mark.ray, pytest.mark.slow]

openai = pytest.importorskip("openai")
APP, MODEL, NAMESPACE = "online_e2e", "online", "test_online"


def bad_policy(path):
    """The shipped demo policy made to call the cheapest, weakest worker and stop: its last
    layer is softened (x0.2) and pushed toward Phi-3-mini and stop, so a few PPO iterations
    can find the better workers again."""
    from ray_conductor.lite import LiteConductor, default_policy_dir

    c = LiteConductor.load(default_policy_dir())
    last, w = c.net.pi[-1], len(c.workers)
    with torch.no_grad():
        last.weight.mul_(0.2)
        last.bias.mul_(0.2)
        last.bias[c.workers.index("Phi-3-mini-4k-instruct")] += 4.0
        last.bias[w + 1] += 4.0  # stop after one call
    return c.save(path)


@pytest.fixture(scope="module")
def app(ray_cluster, tmp_path_factory):
    from ray import serve

    from ray_conductor.data.pools import load_pool
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.command import demo_questions, free_port, start, stop
    from ray_conductor.serve.config import ServeConfig

    tmp = tmp_path_factory.mktemp("online_e2e")
    reg = PolicyRegistry(tmp / "registry")
    reg.publish(bad_policy(tmp / "bad"), kind="lite")
    reg.promote(1)
    cfg = ServeConfig(app_name=APP, port=free_port(), pool="demo",
                      policies={MODEL: f"registry:{reg.root}"}, log_dir=str(tmp / "traffic"),
                      log_flush_s=0.5, blocking=False)
    cfg.ray.namespace = NAMESPACE
    cfg.graph.workers_per_proxy = 16
    cfg.ingress.max_replicas = 1
    running = start(cfg)
    data = load_pool("demo")
    yield running, data, demo_questions(data, 220), reg, tmp
    stop(running, shutdown_ray=False)
    serve.shutdown()


def ask(running, q):
    c = openai.OpenAI(base_url=running.base_url, api_key="none", max_retries=0, timeout=120)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q.query}])
    return r.id, r.model_dump()["conductor"]["policy_version"]


def send(running, qs, feedback):
    """Ask every question (4 at a time), then post `feedback(q)` for each answer."""
    with ThreadPoolExecutor(4) as ex:
        answered = list(ex.map(lambda q: (q, *ask(running, q)), qs))
    for q, rid, _ in answered:
        r = httpx.post(f"{running.base_url}/feedback", json={"request_id": rid, **feedback(q)})
        assert r.status_code == 200, r.text
    return answered


def wait_for_feedback(log_dir, rows, timeout_s=60.0):
    from ray_conductor.serve.traffic import read_traffic

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        df = read_traffic(log_dir)
        if len(df) and (df["label"].notna() | df["reward"].notna()).sum() >= rows:
            return
        time.sleep(0.5)
    raise AssertionError(f"fewer than {rows} rows with feedback in {log_dir}")


class Load:
    """Requests to the retrained model in a loop (no feedback: they teach nothing), each
    outcome recorded with its time and the version that answered."""

    def __init__(self, running, qs):
        self.running, self.qs, self.seen, self.errors = running, qs, [], []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,)) for k in range(2)]

    def _run(self, k):
        i = k
        while not self.stop.is_set():
            try:
                _, version = ask(self.running, self.qs[i % len(self.qs)])
                self.seen.append((time.monotonic(), version))
            except Exception as e:  # noqa: BLE001 - every failure is what we count
                self.errors.append(e)
            i += 2

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(120)


def retrain_config(tmp):
    from ray_conductor.online.config import RetrainConfig

    cfg = RetrainConfig(app=APP, model=MODEL, state_dir=str(tmp / "state"), verifier="none")
    cfg.ray.namespace = NAMESPACE
    cfg.trigger.every_rows, cfg.trigger.every_minutes = 100, None
    cfg.evaluation.holdout, cfg.evaluation.min_rows = 0.4, 20
    cfg.training.iterations, cfg.training.min_rows = 12, 20
    cfg.training.ppo.lr = 1e-3
    cfg.rollback.window, cfg.rollback.min_baseline = 20, 20
    return cfg


def metric(name, kind, timeout_s=60.0, at_least=None, tag=None):
    """The value of Ray's Prometheus series `name` for decision `kind` on this node (waiting
    for it to reach `at_least`: the node exports every few seconds). The series is the
    node's, so other tests' loops on the shared cluster count in it too: compare deltas."""
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    end = time.monotonic() + timeout_s
    seen = None
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        for line in text.decode().splitlines():
            if line.startswith(f"ray_{name}") and (tag or f'kind="{kind}"') in line:
                seen = float(line.rsplit(" ", 1)[1])
        if (seen is not None and (at_least is None or seen >= at_least)) \
                or time.monotonic() >= end:
            return seen
        time.sleep(2.0)


def models(running):
    body = httpx.get(f"{running.base_url}/models").json()
    return {m["id"]: m["conductor"] for m in body["data"]}


def test_feedback_retrain_promote_by_hot_swap_then_roll_back(app):
    from ray_conductor.graph import GraphSpec
    from ray_conductor.online.actor import build_retrainer
    from ray_conductor.online.command import build
    from ray_conductor.policy.registry import PolicyRegistry

    running, data, qs, reg, tmp = app
    assert len(qs) >= 200
    first = send(running, qs[:160], lambda q: {"label": q.reference})
    assert {v for _, _, v in first} == {"v1"}
    wait_for_feedback(running.cfg.log_dir, 160)

    # one round: the trigger (100 rewarded rows) fires; train, evaluate, promote by hot-swap,
    # while two clients keep asking the same model
    cfg = retrain_config(tmp)
    promoted_before = metric("conductor_online_decisions_total", "promoted", timeout_s=0) or 0
    calls_tag = f'model="{MODEL}"'
    calls_before = metric("conductor_online_extra_calls_total", None, timeout_s=0,
                          tag=calls_tag) or 0
    loop = build(cfg)
    with Load(running, qs[160:200]) as load:
        time.sleep(1.0)
        made = loop.round()
        t_swapped = time.monotonic()
        time.sleep(2.0)
    assert [d["kind"] for d in made] == ["trained", "evaluated", "promoted"], made
    trained, evaluated, promoted = made
    assert trained["train_rows"] >= 20 and trained["reroll"]["calls"] >= 160 * 12 * 0.9
    assert evaluated["test"]["passed"] and evaluated["candidate_mean"] > evaluated["serving_mean"]
    assert promoted["version"] == "v2" and promoted["previous"] == "v1"
    assert load.errors == [], load.errors[:3]  # no failed request during the swap
    versions = [v for _, v in load.seen]
    assert "v1" in versions and "v2" in versions
    assert all(v == "v2" for t, v in load.seen if t > t_swapped + 0.5)
    assert models(running)[MODEL]["policy_version"] == "v2"
    assert ask(running, qs[0])[1] == "v2"
    on_disk = [d["kind"] for d in loop.decisions.read()]
    assert on_disk == ["trained", "evaluated", "promoted"]
    want = promoted_before + 1
    assert metric("conductor_online_decisions_total", "promoted", at_least=want) == want
    # what learning cost: decision log = Prometheus = /healthz
    spent = sum(d["extra_calls"] for d in loop.decisions.read())
    assert spent == trained["reroll"]["calls"] > 0
    want = calls_before + spent
    assert metric("conductor_online_extra_calls_total", None, at_least=want,
                  tag=calls_tag) == want
    health = httpx.get(f"{running.base_url.rsplit('/v1', 1)[0]}/healthz").json()
    learning = health["learning"][MODEL]
    assert learning["extra_calls"] == spent and learning["traffic_dollars"] > 0
    assert learning["learning_cost_per_served_dollar"] == pytest.approx(
        learning["extra_dollars"] / learning["traffic_dollars"])

    # the promoted version's live reward drops (forced by feedback): the actor beside the app
    # runs the next round from the same state, finds the drop and rolls back
    send(running, qs[200:220] + qs[:5], lambda q: {"reward": -1.0})
    wait_for_feedback(running.cfg.log_dir, 160 + 25)
    # built as `retrain mode=actor` builds it: from the app's own graph declaration
    actor = build_retrainer(cfg, GraphSpec.from_config(running.cfg.graph, NAMESPACE))
    import ray

    try:
        made = ray.get(actor.round.remote(), timeout=600)
    finally:
        ray.kill(actor)
    assert [d["kind"] for d in made] == ["rolled_back"], made
    back = made[0]
    assert back["version"] == "v1" and back["previous"] == "v2"
    assert back["test"]["mean_new"] == -1.0 and back["test"]["dropped"]
    assert "0 judgeable" in back["paired_skipped"]  # posted rewards alone: nothing to replay
    assert models(running)[MODEL]["policy_version"] == "v1"
    assert ask(running, qs[1])[1] == "v1"
    history = PolicyRegistry(reg.root).history()
    assert [h["action"] for h in history][-2:] == ["promote", "rollback"]
    assert loop.decisions.read()[-1]["kind"] == "rolled_back"  # the same decision log
