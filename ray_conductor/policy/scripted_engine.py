"""`ScriptedEngine`: a generation engine that writes fixed plan texts instead of sampling a
model — a hand-written pipeline run through exactly the same machinery as the learned
conductor (rollout actors, recursion, evaluation, serving). Tests use it to drive the actor
graph deterministically; users can use it to pin a known-good workflow.

`ConductorConfig(engine="scripted", model=FILE)`: FILE is JSON
`{"rules": [{"match": "substring of the prompt", "plan": "model_id = [...] ..."}, ...],
"default": "plan text"}`; the first rule whose `match` occurs in the prompt's last message
wins (e.g. match "An earlier workflow already ran" for the inner plan of a recursive call).
Any other file (`.txt`, `.py`) is one plan, the three lists as the conductor writes them,
used for every question: a team's pinned workflow as it is written down.
Token ids are the UTF-8 bytes of the text, log-probs 0: enough for trajectories, not for
learning. Plain Python: no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ray_conductor.errors import ConfigError
from ray_conductor.policy.engine import Prompt, Sample


class _ByteTokenizer:
    eos_token_id = 0

    def __call__(self, text: str, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode())}


class ScriptedEngine:
    def __init__(self, rules: Sequence[tuple[str, str]], default: str):
        self.rules, self.default = list(rules), default
        self.tokenizer = _ByteTokenizer()
        self.calls = 0

    @classmethod
    def from_file(cls, path: str) -> "ScriptedEngine":
        try:
            text = Path(path).read_text()
            if not path.endswith(".json") and "model_id" in text:
                return cls([], text)  # one plan, for every question
            spec = json.loads(text)
            rules = [(r["match"], r["plan"]) for r in spec.get("rules", [])]
            return cls(rules, spec["default"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"scripted engine {path!r}: expected JSON with 'default' and "
                              f"'rules': [{{'match', 'plan'}}], or a file holding one plan "
                              f"(model_id = [...] ...) ({type(e).__name__}: {e})") from None

    def plans(self) -> list[str]:
        """Every plan text the script can write (rules first, then the default)."""
        return [plan for _, plan in self.rules] + [self.default]

    def _text(self, prompt: Prompt) -> str:
        last = prompt if isinstance(prompt, str) else (prompt[-1]["content"] if prompt else "")
        return next((plan for match, plan in self.rules if match in last), self.default)

    def generate(self, prompts: Sequence[Prompt], n: int, temperature: float, max_tokens: int,
                 top_p: float = 1.0, seed: int | None = None,
                 constraints: Sequence[Any] | None = None) -> list[list[Sample]]:
        """The scripted plans; `constraints` are ignored (a script is written, not decoded)."""
        self.calls += 1
        out = []
        for p in prompts:
            text = self._text(p)
            ids = list(text.encode())
            pid = list(str(p).encode()[:64])
            out.append([Sample(pid, ids + [0], text, [0.0] * (len(ids) + 1), "stop")
                        for _ in range(n)])
        return out

    def get_state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load: a script has no weights."""
