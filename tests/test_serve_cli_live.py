"""`ray-conductor serve workers=FILE pool=null`, run as a user runs it (its own process and
local Ray cluster), over two live workers on the loopback fault server: it starts with a
pinned default workflow named in its banner, answers through the official client, takes a
chat message holding a lone surrogate (valid JSON) in its stride, and after SIGINT every row
is on disk and the shutdown line says how many. A policy trained on other workers is a
one-line error, exit status 2, before Ray starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]
openai = pytest.importorskip("openai")


def _workers(tmp_path: Path, url: str) -> Path:
    live = {"api_base": url, "retries": 0}
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump({"workers": [
        {**live, "name": "small", "model": "openai/small", "input_price_per_mtok": 0.15,
         "output_price_per_mtok": 0.6, "description": "cheap"},
        {**live, "name": "big", "model": "openai/big", "input_price_per_mtok": 2.5,
         "output_price_per_mtok": 10.0, "description": "strong"}]}))
    return path


def _serve(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "ray_conductor.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)


def _until(proc: subprocess.Popen, marker: str, timeout_s: float) -> str:
    seen, end = [], time.monotonic() + timeout_s
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError("serve did not start:\n" + "".join(seen)[-3000:])


def test_serve_with_live_workers_answers_and_keeps_every_row(tmp_path, fault_server):
    from ray_conductor.serve.command import free_port
    from ray_conductor.serve.traffic import read_traffic

    port, log_dir = free_port(), tmp_path / "traffic"
    proc = _serve(f"workers={_workers(tmp_path, fault_server.url)}", "pool=null",
                  f"port={port}", f"log_dir={log_dir}", "ray.num_cpus=2",
                  "ray.log_to_driver=false", "log_flush_s=30")
    try:
        banner = _until(proc, "Stop with Ctrl-C", 300)
        assert "pinned default workflow: model_id = ['big']" in banner
        url = f"http://127.0.0.1:{port}/v1"
        lone = (b'{"model": "conductor", "messages": [{"role": "user", "content": '
                b'"a lone \\ud800 surrogate"}]}')
        r = httpx.post(f"{url}/chat/completions", content=lone, timeout=60,
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert "a lone \ufffd surrogate" in r.json()["choices"][0]["message"]["content"]
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        for i in range(40):
            a = c.chat.completions.create(model="conductor",
                                          messages=[{"role": "user", "content": f"q{i}"}])
            assert f" q{i} " in a.choices[0].message.content
            assert a.model_dump()["conductor"]["steps"][0]["worker"] == "big"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert "41 requests and 0 feedback rows written" in out, out[-2000:]
    df = read_traffic(log_dir)
    assert len(df) == 41 and (df["status"] == 200).all()
    assert "a lone \ufffd surrogate" in set(df["question"])
    assert len([r for r in fault_server.requests() if r["model"] == "big"]) == 41


def test_a_policy_trained_on_other_workers_is_refused_before_start(tmp_path, fault_server):
    proc = _serve(f"workers={_workers(tmp_path, fault_server.url)}", "pool=null",
                  "policy=lite:default", f"log_dir={tmp_path / 'traffic'}")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-2000:]
    last = [ln for ln in out.splitlines() if ln.strip()][-1]
    assert "policy conductor=lite:default cannot be served" in last
    assert "trained on other workers" in last and "train-lite" in last
    assert "Started a local Ray instance" not in out
