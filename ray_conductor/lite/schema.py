"""The schema a saved lite policy must meet before anything is built from it.

`check_policy(meta, weights, where)` reads `lite.json` (`meta`) and `policy.pt` (`weights`)
as untrusted input: every field's type and range, the shapes that must agree (the net's
observation size is the projection's width, the prior's per-worker estimates and the episode
state for this many workers and `max_calls`), finite numbers only, and the embedding model it
was trained with being the one this install embeds questions with. A violation is one
`ConfigError` line naming the file and the field, before any array is allocated: a
`max_calls` of 1e9 would otherwise build an array that size at every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ray_conductor.errors import ConfigError
from ray_conductor.lite.encoder import EMBED_MODEL
from ray_conductor.lite.episode import MAX_CALLS, n_actions, state_dim

KINDS = ("ppo", "selector")
MAX_HIDDEN = 1 << 16  # units in one hidden layer


class _Bad(Exception):
    """A field that breaks the schema: (field, what it must be)."""


def check_policy(meta: Any, weights: Any, where: str) -> None:
    """Raise a one-line `ConfigError` if the saved policy breaks the schema."""
    try:
        _check(meta, weights)
    except _Bad as e:
        field, rule = e.args
        raise ConfigError(f"{where}: `{field}` {rule}; re-train the policy with "
                          f"`ray-conductor train-lite`") from None


def _need(ok: bool, field: str, rule: str) -> None:
    if not ok:
        raise _Bad(field, rule)


def _int(x: Any, field: str, lo: int, hi: int) -> int:
    _need(isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi, field,
          f"must be an integer in [{lo}, {hi}], found {str(x)[:40]!r}")
    return x


def _number(x: Any, field: str, lo: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (
        x > lo if strict else x >= lo)
    _need(ok, field, f"must be a finite number {'>' if strict else '>='} {lo:g}, found "
                     f"{str(x)[:40]!r}")
    return float(x)


def _numbers(xs: Any, field: str, n: int) -> None:
    _need(isinstance(xs, list) and len(xs) == n, field, f"must be a list of {n} numbers")
    for i, x in enumerate(xs):
        _number(x, f"{field}[{i}]")


def _check(meta: Any, weights: Any) -> None:
    _need(isinstance(meta, dict), "lite.json", "must be a JSON object")
    _need(isinstance(weights, dict), "policy.pt", "must hold a dict of tensors")
    kind = meta.get("kind")
    _need(kind in KINDS, "kind", f"must be one of {', '.join(KINDS)}")
    _need(isinstance(meta.get("name"), str), "name", "must be text")
    workers = meta.get("workers")
    _need(isinstance(workers, list) and workers and all(
        isinstance(w, str) and w.strip() for w in workers) and len(set(workers)) == len(workers),
        "workers", "must be a non-empty list of distinct worker names")
    w = len(workers)
    _numbers(meta.get("strength"), "strength", w)
    max_calls = _int(meta.get("max_calls"), "max_calls", 1, MAX_CALLS)
    _number(meta.get("cost_scale"), "cost_scale", strict=True)
    _need(isinstance(meta.get("comparable"), bool), "comparable", "must be true or false")
    got = meta.get("embed_model")
    _need(got == EMBED_MODEL, "embed_model",
          f"is {str(got)[:60]!r}, but this install embeds questions with {EMBED_MODEL!r}: "
          f"the policy would read vectors of another model")
    _need(isinstance(meta.get("featurizer"), dict), "featurizer", "must be a JSON object")
    _need(meta.get("info") is None or isinstance(meta.get("info"), dict), "info",
          "must be a JSON object or null")
    proj = _projection(weights.get("projection"), "projection")
    parts = {k: _selector(meta.get(k), weights.get(k), k, w) for k in ("selector", "prior")}
    _need((kind == "selector") == (parts["selector"] is not None), "selector",
          f"must be given exactly when kind is selector (kind is {kind})")
    net = meta.get("net")
    _need((kind == "ppo") == (net is not None), "net",
          f"must be given exactly when kind is ppo (kind is {kind})")
    if net is not None:  # the prior shows the net its single-worker programs' estimates
        prior = parts["prior"]
        singles = sum(len(p) == 1 for p in prior["programs"]) if prior is not None else 0
        _net(net, weights.get("net"), proj + singles + state_dim(w, max_calls), n_actions(w))


def _net(net: Any, state: Any, obs_dim: int, actions: int) -> None:
    _need(isinstance(net, dict), "net", "must be a JSON object")
    _need(net.get("obs_dim") == obs_dim, "net.obs_dim",
          f"must be {obs_dim} (projection + prior + episode state for these workers and "
          f"max_calls), found {str(net.get('obs_dim'))[:20]!r}")
    _need(net.get("n_actions") == actions, "net.n_actions",
          f"must be {actions} (the workers, vote and stop)")
    hidden = net.get("hidden")
    _need(isinstance(hidden, list) and hidden, "net.hidden", "must be a non-empty list")
    for i, h in enumerate(hidden):
        _int(h, f"net.hidden[{i}]", 1, MAX_HIDDEN)
    _tensors(state, "net")


def _projection(arrays: Any, field: str) -> int:
    """Checks a fitted projection's arrays; returns its width."""
    _tensors(arrays, field)
    mean, scale, comps = (arrays.get(k) for k in ("mean", "scale", "components"))
    _need(mean is not None and mean.dim() == 1 and mean.shape[0] >= 1, f"{field}.mean",
          "must be a vector (the embedding's mean)")
    _need(scale is not None and scale.dim() == 1 and bool((scale > 0).all()), f"{field}.scale",
          "must be a vector of positive numbers")
    dim, width = int(mean.shape[0]), int(scale.shape[0])
    _need(comps is None and width == dim or comps is not None and tuple(comps.shape)
          == (dim, width), f"{field}.components", f"must be {dim} x {width}")
    return width


def _selector(meta: Any, arrays: Any, field: str, w: int) -> Any:
    if meta is None:
        return None
    _need(isinstance(meta, dict), field, "must be a JSON object or null")
    programs = meta.get("programs")
    _need(isinstance(programs, list) and programs and all(
        isinstance(p, list) and p and all(isinstance(i, int) and not isinstance(i, bool)
                                          and 0 <= i < w for i in p) for p in programs),
        f"{field}.programs", f"must be a non-empty list of worker index lists (0..{w - 1})")
    _numbers(meta.get("mean_cost"), f"{field}.mean_cost", len(programs))
    _int(meta.get("k"), f"{field}.k", 1, 1 << 30)
    _number(meta.get("penalty"), f"{field}.penalty")
    _number(meta.get("shrink"), f"{field}.shrink")
    _tensors(arrays, field)
    proj = _projection({k.split(".", 1)[1]: v for k, v in arrays.items()
                        if k.startswith("projection.")}, f"{field}.projection")
    keys, success = arrays.get("keys"), arrays.get("success")
    _need(keys is not None and keys.dim() == 2 and keys.shape[1] == proj and keys.shape[0] >= 1,
          f"{field}.keys", f"must be N x {proj}")
    _need(success is not None and tuple(success.shape) == (keys.shape[0],
                                                           (len(programs) + 7) // 8),
          f"{field}.success", "must hold one bit per (fit question, program)")
    return meta


def _tensors(arrays: Any, field: str) -> None:
    _need(isinstance(arrays, dict) and all(isinstance(v, torch.Tensor)
                                           for v in arrays.values()), field,
          "must be a dict of tensors")
    for name, t in arrays.items():
        _need(not t.is_floating_point() or bool(torch.isfinite(t).all()), f"{field}.{name}",
              "must hold finite numbers only")
