"""Token counts and dollar prices for recordings that carry no cost of their own (MMLU-Pro).

Tokens: `litellm.token_counter` with a model name that litellm maps to its bundled tiktoken
encoding (cl100k_base), so nothing is downloaded; for Llama/Cohere/Claude names litellm would
fetch a Hugging Face tokenizer, which is why every model is counted with the same encoding.
That is an approximation of each model's own tokenizer. If litellm cannot be imported or its
counter fails, a documented estimate of 4 characters per token is used, and the import report
says which counter ran.

Prices: our model name -> a key of `litellm.model_cost` (`litellm:` in configs/prices.yaml, or
the name itself), else the cited `table:` of configs/prices.yaml, else a `DataError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ray_conductor.config import CONFIG_DIR
from ray_conductor.errors import DataError

PRICES_FILE = CONFIG_DIR / "prices.yaml"
TOKENIZER_MODEL = "gpt-4o"  # litellm counts it with its bundled tiktoken: no download
CHARS_PER_TOKEN = 4  # the fallback estimate (OpenAI's rule of thumb for English text)


@dataclass(frozen=True)
class Price:
    """Dollars per million input and output tokens, and where the numbers came from."""

    input_per_mtok: float
    output_per_mtok: float
    source: str  # "litellm" | "price_table"
    key: str

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


def estimate_tokens(text: str) -> int:
    """The fallback: ceil(len / 4) characters per token."""
    return -(-len(text) // CHARS_PER_TOKEN)


@lru_cache(maxsize=1)
def _litellm_counter() -> Callable[[str], int] | None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm

        litellm.token_counter(model=TOKENIZER_MODEL, text="probe")
    except Exception:  # no litellm, or a counter that fails offline: use the estimate
        return None
    return lambda text: litellm.token_counter(model=TOKENIZER_MODEL, text=text)


def token_counter_name() -> str:
    """What `count_tokens` uses, for the import report."""
    if _litellm_counter() is None:
        return f"estimate: ceil(chars / {CHARS_PER_TOKEN}) (litellm token_counter unavailable)"
    return f"litellm.token_counter(model={TOKENIZER_MODEL!r}): bundled tiktoken cl100k_base"


def count_tokens(text: str | None) -> int:
    if not text:
        return 0
    counter = _litellm_counter()
    return counter(text) if counter else estimate_tokens(text)


def load_price_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """`{"litellm": {model: key}, "table": {model: {"input": $, "output": $}}}`; empty if the
    default file is absent (e.g. an installed wheel without the repo's configs/)."""
    from omegaconf import OmegaConf

    p = Path(path) if path else PRICES_FILE
    if not p.is_file():
        if path:
            raise DataError(f"{p}: no such price file (expected YAML with litellm: and table:)")
        return {"litellm": {}, "table": {}}
    d = OmegaConf.to_container(OmegaConf.load(p)) or {}
    return {"litellm": dict(d.get("litellm") or {}), "table": dict(d.get("table") or {})}


def _litellm_price(key: str) -> Price | None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError:
        return None
    info = litellm.model_cost.get(key) or {}
    pin, pout = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if pin is None or pout is None:
        return None
    return Price(pin * 1e6, pout * 1e6, "litellm", key)


def price_for(model: str, config: dict[str, Any] | None = None) -> Price:
    """litellm's price for the mapped key (or the name itself), else the price table."""
    config = config if config is not None else load_price_config()
    price = _litellm_price(config["litellm"].get(model, model))
    if price is not None:
        return price
    row = config["table"].get(model)
    if row is not None:
        return Price(float(row["input"]), float(row["output"]), "price_table", model)
    raise DataError(f"no price for model {model!r}: litellm.model_cost has no such key; add "
                    f"`{model}: <litellm key>` under litellm: or `{model}: {{input: $, output: $}}`"
                    f" (per 1M tokens) under table: in {PRICES_FILE}")


def fit_prices(input_tokens: np.ndarray, output_tokens: np.ndarray,
               cost: np.ndarray) -> tuple[float, float]:
    """$/1M (input, output) that best explain `cost` (least squares); exact for priced rows.
    Falls back to one blended price for both when the fit is singular or negative."""
    x, y, c = (np.asarray(a, dtype=np.float64) for a in (input_tokens, output_tokens, cost))
    a = np.array([[x @ x, x @ y], [x @ y, y @ y]])
    det = np.linalg.det(a)
    if abs(det) > 1e-9 * max(a[0, 0] * a[1, 1], 1.0):
        pin, pout = np.linalg.solve(a, [x @ c, y @ c])
        if pin >= 0 and pout >= 0:
            return float(pin * 1e6), float(pout * 1e6)
    total = float((x + y).sum())
    blended = float(c.sum()) / total * 1e6 if total else 0.0
    return blended, blended
