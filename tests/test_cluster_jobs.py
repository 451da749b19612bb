"""The jobs a platform team runs, on a real Ray head node started here (`ray start --head
--block` in the background, stopped by its PID, as .ci/run does), with `storage` set on the
node as on a cluster (RAY_CONDUCTOR_STORAGE before `ray start`):

- `jobs/train_lite.py` with a relative `run_dir`: the policy is under `storage`, nothing is in
  the job's working-directory cache, and the job said where its outputs went;
- two `jobs/serve.py` apps; `ray job stop` of one within Ray's 3 s window: the other keeps
  answering, and no named actor of the stopped app remains (its traffic flushed first);
- `serve deploy` of the shipped cluster/serve/conductor.yaml, traffic with feedback, one
  `jobs/retrain.py` round: the promoted version answers, and still does after the app is
  deleted and deployed again from the same file (as a RayService upgrade would).

Marked `cluster`: `make test` leaves them out (a head node and three jobs take minutes);
.ci/run runs them after the suite (`pytest -m cluster`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Head:
    address: str  # the dashboard (job server)
    gcs: str
    storage: Path
    temp: Path
    serve_port: int

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    work = Path(tempfile.mkdtemp(prefix="rc_head.", dir="/tmp"))  # short: Ray's socket paths
    storage = work / "storage"
    gcs, dash, client, agent_http, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr, serve \
        = free_ports(10)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_CONDUCTOR_STORAGE": str(storage), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}
    env.pop("RAY_ADDRESS", None)
    log = open(work / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=4", "--num-gpus=0",
         '--resources={"proxy": 100}', f"--object-store-memory={300 * 2**20}",
         f"--temp-dir={work / 'ray'}", f"--port={gcs}", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_mgr}",
         f"--object-manager-port={obj_mgr}", "--min-worker-port=22000",
         "--max-worker-port=22999", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dash}"
    try:
        end = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (work / "head.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                assert time.monotonic() < end, "the job server did not answer within 180 s"
                time.sleep(1)
        yield Head(address, f"127.0.0.1:{gcs}", storage, work / "ray", serve)
    finally:
        ray_logs = work / "ray" / "session_latest" / "logs"
        keep = tmp_path_factory.mktemp("head_logs")  # for a post-mortem; pytest rotates these
        if ray_logs.is_dir():
            shutil.copytree(ray_logs, keep, ignore_dangling_symlinks=True, dirs_exist_ok=True)
            shutil.copy(work / "head.log", keep / "head.log")
        proc.send_signal(signal.SIGTERM)  # never `ray stop`: it ends every Ray here
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def jobs(head: Head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address)


def submit(head: Head, argv: list[str], env_vars: dict[str, str] | None = None) -> str:
    """`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- ARGV`."""
    runtime_env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(ROOT)
    runtime_env["env_vars"] = {**runtime_env["env_vars"], **(env_vars or {})}
    import uuid

    import requests

    sid, end = f"test-{uuid.uuid4().hex[:12]}", time.monotonic() + 120
    while True:
        try:
            return jobs(head).submit_job(entrypoint=shlex.join(argv), runtime_env=runtime_env,
                                         submission_id=sid)
        except (RuntimeError, ConnectionError, requests.ConnectionError) as e:
            # the head's job agent comes up after its dashboard; a busy one drops a connection
            # (and may have taken the job: the same id is not taken twice)
            if "already exists" in str(e):
                return sid
            if isinstance(e, RuntimeError) and "No available agent" not in str(e) \
                    or time.monotonic() > end:
                raise
            time.sleep(2)


def wait_job(head: Head, sid: str, until: set[str], timeout_s: float) -> str:
    end = time.monotonic() + timeout_s
    while True:
        status = jobs(head).get_job_status(sid).value
        if status in until or status in {"FAILED", "STOPPED", "SUCCEEDED"}:
            return status
        assert time.monotonic() < end, f"job {sid}: still {status} after {timeout_s:g}s:\n" + \
            jobs(head).get_job_logs(sid)[-3000:]
        time.sleep(1)


def logs(head: Head, sid: str) -> str:
    return jobs(head).get_job_logs(sid)


def named_actors(head: Head) -> set[str]:
    from ray.util.state import list_actors

    return {a.name for a in list_actors(address=head.address, filters=[("state", "=", "ALIVE")],
                                        limit=10_000) if a.name}


def serve_apps(head: Head) -> dict:
    with urllib.request.urlopen(f"{head.address}/api/serve/applications/", timeout=30) as r:
        return json.loads(r.read())["applications"]


def wait_answering(head: Head, prefix: str, sid: str | None, timeout_s: float = 600) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{head.serve_url}{prefix}/healthz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if sid is not None:
            status = jobs(head).get_job_status(sid).value
            assert status in ("PENDING", "RUNNING"), f"{status}:\n{logs(head, sid)[-3000:]}"
        assert time.monotonic() < end, f"{prefix} did not answer within {timeout_s:g}s"
        time.sleep(2)


def ask(base: str, question: str, model: str = "conductor") -> dict:
    r = httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return r.json()


def job_caches(head: Head) -> list[Path]:
    return list(head.temp.glob("session_*/runtime_resources/working_dir_files/*"))


def test_a_lite_training_job_with_a_relative_run_dir_writes_under_storage(head):
    sid = submit(head, ["python", "jobs/train_lite.py", "pool=demo", "run_dir=runs/job_lite",
                        "iterations=1", "time_budget_s=60", "check_rows=100", "bc_steps=50",
                        "progress=false", "ppo.train_batch_size=200", "ppo.minibatch_size=100",
                        "ppo.num_epochs=1"])
    status = wait_job(head, sid, set(), 900)
    assert status == "SUCCEEDED", logs(head, sid)[-3000:]
    run = head.storage / "runs" / "job_lite"
    assert (run / "policy").is_dir() and (run / "summary.json").is_file()
    assert f"outputs under storage {head.storage}; run_dir={run}" in logs(head, sid)
    caches = job_caches(head)
    assert caches and not any((c / "runs").exists() for c in caches)  # the upload only


def test_stopping_a_serve_job_leaves_the_other_app_serving(head):
    from ray_conductor.serve.command import example_question
    from ray_conductor.serve.config import ServeConfig
    from ray_conductor.serve.traffic import read_traffic

    question = example_question(ServeConfig())

    def serve_job(app: str) -> str:
        return submit(head, ["python", "jobs/serve.py", f"app_name={app}",
                             f"route_prefix=/{app}", f"port={head.serve_port}",
                             "policy=cheapest", "log_flush_s=60"])

    stopped, kept = serve_job("stop_a"), serve_job("keep_b")
    try:
        wait_answering(head, "/stop_a", stopped)
        wait_answering(head, "/keep_b", kept)
        ask(f"{head.serve_url}/stop_a", question)
        ask(f"{head.serve_url}/keep_b", question)
        before = named_actors(head)
        assert {n.split("@")[0] for n in before if n.startswith("serve/stop_a/")} == {
            "serve/stop_a/traffic"}  # no API keys: no key-limits actor

        t0 = time.monotonic()
        jobs(head).stop_job(stopped)
        assert wait_job(head, stopped, {"STOPPED"}, 60) == "STOPPED"
        took = time.monotonic() - t0
        out = logs(head, stopped)
        # the whole clean-up ran before Ray's SIGKILL: the last line it prints is there
        assert "traffic log: 1 requests and 0 feedback rows written under" in out, out[-3000:]
        assert took < 3 + 10, took  # Ray's 3 s window, plus polling

        assert "stop_a" not in serve_apps(head) and "keep_b" in serve_apps(head)
        after = named_actors(head)
        assert not [n for n in after if n.startswith("serve/stop_a/")], after
        assert [n for n in after if n.startswith("serve/keep_b/traffic@")]
        assert ask(f"{head.serve_url}/keep_b", question)["choices"][0]["message"]["content"]
        logged = read_traffic(head.storage / "traffic" / "stop_a")  # flushed before it went
        assert len(logged) == 1 and logged["model"].tolist() == ["conductor"]
    finally:
        jobs(head).stop_job(kept)
        wait_job(head, kept, {"STOPPED"}, 60)
        jobs(head).stop_job(stopped)


def test_retrain_promotes_on_the_deployed_shipped_serve_config(head, tmp_path):
    from test_online_e2e import bad_policy

    from ray_conductor.data.pools import load_pool
    from ray_conductor.policy.registry import PolicyRegistry
    from ray_conductor.serve.command import demo_questions
    from ray_conductor.serve.traffic import read_traffic

    # a registry that already holds a weak version (so one round has something to gain):
    # the shipped config serves what is promoted there, and seeds only an empty one
    reg = PolicyRegistry(head.storage / "registries" / "conductor")
    reg.promote(reg.publish(bad_policy(tmp_path / "bad"), kind="lite").version)
    config = yaml.safe_load((ROOT / "cluster" / "serve" / "conductor.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": head.serve_port}  # this machine
    deploy = tmp_path / "conductor.yaml"
    deploy.write_text(yaml.safe_dump(config))

    def serve_deploy() -> None:
        subprocess.run([str(BIN / "serve"), "deploy", str(deploy), "--address", head.address],
                       check=True, capture_output=True, text=True, timeout=120)
        wait_answering(head, "", None)

    serve_deploy()
    data = load_pool("demo")
    qs = demo_questions(data, 160)
    assert len(qs) == 160

    def ask_and_label(q):
        r = ask(head.serve_url, q.query)
        fb = httpx.post(f"{head.serve_url}/v1/feedback", timeout=60,
                        json={"request_id": r["id"], "label": q.reference})
        assert fb.status_code == 200, fb.text
        return r["conductor"]["policy_version"]

    with ThreadPoolExecutor(4) as ex:
        assert set(ex.map(ask_and_label, qs)) == {"v1"}
    log_dir = head.storage / "traffic" / "conductor"
    end = time.monotonic() + 90
    while (read_traffic(log_dir)["label"].notna().sum() if log_dir.exists() else 0) < 160:
        assert time.monotonic() < end, "the feedback did not reach the traffic log"
        time.sleep(2)

    sid = submit(head, ["python", "jobs/retrain.py", "model=conductor", "once=true",
                        "force=true", "verifier=none", "evaluation.holdout=0.4",
                        "evaluation.min_rows=20", "training.iterations=12",
                        "training.min_rows=20", "training.ppo.lr=0.001"])
    status = wait_job(head, sid, set(), 900)
    out = logs(head, sid)
    assert status == "SUCCEEDED", out[-3000:]
    state = head.storage / "online" / "conductor" / "conductor"
    kinds = [json.loads(line)["kind"] for line in
             (state / "decisions.jsonl").read_text().splitlines()]
    assert kinds == ["trained", "evaluated", "promoted"], out[-3000:]
    assert reg.promoted().version == 2
    assert ask(head.serve_url, qs[0].query)["conductor"]["policy_version"] == "v2"

    # a new build of the same file (a redeploy, a RayService's new cluster) keeps it
    subprocess.run([str(BIN / "serve"), "shutdown", "--address", head.address, "-y"],
                   check=True, capture_output=True, text=True, timeout=120)
    serve_deploy()
    assert ask(head.serve_url, qs[1].query)["conductor"]["policy_version"] == "v2"
