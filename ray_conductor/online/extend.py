"""A new worker joins the pool: grow a trained lite policy's action space in place instead of
training a new one from scratch.

The policy net reads [question features | episode state] and scores [workers | vote | stop].
For each new worker the state gains three inputs (called, answered, agrees: `Episode`'s
layout) and the output one action, placed after the old workers. The new inputs get zero
weights, so on every state where the new worker was not called the net computes exactly what
it computed before; the new action's output row is either the mean of the old workers' rows
(`init="average"`: its logit is the mean of theirs, so greedy decisions change only where the
mean beats every legal action, and PPO explores it from there) or a row that is never chosen
(`init="never"`: the old policy, unchanged, on the bigger pool). Question features and the
prior keep their old meaning (the prior knows only the old workers; the net learns the new
one's worth from its reward). Pure torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ray_conductor.errors import ConfigError
from ray_conductor.lite.conductor import LiteConductor
from ray_conductor.lite.episode import n_actions, state_dim
from ray_conductor.lite.net import LiteNet

INITS = ("average", "never", "like:WORKER")
NEVER_LOGIT = -1.0e4  # far below any trained logit, far above the mask's float32 minimum


def state_columns(n_old: int, n_new: int, max_calls: int) -> np.ndarray:
    """Where each of the old episode-state features sits in the new layout: called,
    answered and agrees are blocks of one column per worker; the rest keeps its order."""
    cols = []
    for block in range(3):
        cols += [block * n_new + i for i in range(n_old)]
    tail = state_dim(n_old, max_calls) - 3 * n_old
    cols += [3 * n_new + i for i in range(tail)]
    return np.array(cols, dtype=np.int64)


def _grow_input(layer: torch.nn.Linear, keep: np.ndarray, width: int,
                copies: dict[int, int]) -> torch.nn.Linear:
    """The same layer over a wider input: old columns moved to `keep`, new ones zero, or a
    copy of an old one (`copies`: new column -> old column)."""
    out = torch.nn.Linear(width, layer.out_features)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:, torch.as_tensor(keep)] = layer.weight
        for new, old in copies.items():
            out.weight[:, new] = layer.weight[:, old]
        out.bias.copy_(layer.bias)
    return out


def _grow_output(layer: torch.nn.Linear, n_old: int, added: int, init: str,
                 like: int | None) -> torch.nn.Linear:
    out = torch.nn.Linear(layer.in_features, layer.out_features + added)
    with torch.no_grad():
        w, b = layer.weight, layer.bias
        out.weight[:n_old], out.bias[:n_old] = w[:n_old], b[:n_old]
        out.weight[n_old + added:], out.bias[n_old + added:] = w[n_old:], b[n_old:]
        if like is not None:
            out.weight[n_old:n_old + added], out.bias[n_old:n_old + added] = w[like], b[like]
        elif init == "average":
            out.weight[n_old:n_old + added] = w[:n_old].mean(0)
            out.bias[n_old:n_old + added] = b[:n_old].mean()
        else:
            out.weight[n_old:n_old + added] = 0.0
            out.bias[n_old:n_old + added] = NEVER_LOGIT
    return out


def extend_net(net: LiteNet, n_question: int, n_old: int, added: int, max_calls: int,
               init: str = "average", like: int | None = None) -> LiteNet:
    """A copy of `net` for a pool of `n_old + added` workers (see the module docstring);
    `like`: the old worker index a `like:` init copies."""
    n_new = n_old + added
    if not net.hidden:
        raise ConfigError("a lite net without hidden layers cannot be extended in place")
    if net.obs_dim != n_question + state_dim(n_old, max_calls):
        raise ConfigError(f"the lite net reads {net.obs_dim} inputs, not {n_question} question "
                          f"features and the state of {n_old} workers: not this policy's net")
    keep = np.concatenate([np.arange(n_question),
                           n_question + state_columns(n_old, n_new, max_calls)])
    copies = {}
    if like is not None:  # the newcomer's called/answered/agrees read as the old worker's
        for block in range(3):
            for k in range(added):
                copies[n_question + block * n_new + n_old + k] = (
                    n_question + block * n_old + like)
    width = n_question + state_dim(n_new, max_calls)
    grown = LiteNet(width, n_actions(n_new), net.hidden)
    grown.pi = torch.nn.Sequential(_grow_input(net.pi[0], keep, width, copies),
                                   *[m for m in list(net.pi)[1:-1]],
                                   _grow_output(net.pi[-1], n_old, added, init, like))
    grown.vf = torch.nn.Sequential(_grow_input(net.vf[0], keep, width, copies),
                                   *list(net.vf)[1:])
    grown.load_state_dict({k: v.detach().clone() for k, v in grown.state_dict().items()})
    grown.eval()
    return grown


def extend_workers(conductor: LiteConductor, names: Sequence[str], strength: Sequence[float],
                   init: str = "average") -> LiteConductor:
    """`conductor` over its workers plus `names` (vote tie-break `strength` each), as a new
    `LiteConductor`; the original is left as it was."""
    if conductor.net is None:
        raise ConfigError("only a PPO lite policy (kind ppo) can grow its action space; a "
                          "selector policy is refitted instead (ray-conductor train-lite)")
    names = list(names)
    like = None
    if init.startswith("like:"):
        if init[5:] not in conductor.workers:
            raise ConfigError(f"init={init!r}: {init[5:]!r} is not one of the policy's workers")
        like = conductor.workers.index(init[5:])
    elif init not in INITS[:2]:
        raise ConfigError(f"init={init!r}: use one of {INITS}")
    clash = sorted(set(names) & set(conductor.workers))
    if clash or len(set(names)) != len(names) or len(strength) != len(names):
        raise ConfigError(f"new workers must be new, distinct and each have a strength: "
                          f"{names} (already known: {clash})")
    n_q = conductor.net.obs_dim - state_dim(len(conductor.workers), conductor.max_calls)
    import copy

    net = extend_net(copy.deepcopy(conductor.net), n_q, len(conductor.workers), len(names),
                     conductor.max_calls, init, like)
    info = {**conductor.info, "extended": [*conductor.info.get("extended", []),
                                           {"workers": names, "init": init}]}
    return LiteConductor([*conductor.workers, *names],
                         np.concatenate([conductor.strength, np.asarray(strength, np.float64)]),
                         conductor.projection, net=net, prior=conductor.prior,
                         max_calls=conductor.max_calls, cost_scale=conductor.cost_scale,
                         comparable=conductor.comparable, embed_model=conductor.embed_model,
                         featurizer=conductor.featurizer, info=info)


def clone_worker(conductor: LiteConductor, name: str, like: str) -> None:
    """In place: worker `name` starts again as a clone of `like` (its output row, and the
    weights reading its called/answered/agrees inputs); for a worker added with
    `init="never"` that now has data to be trained on."""
    net, w = conductor.net, len(conductor.workers)
    if net is None or name not in conductor.workers or like not in conductor.workers:
        raise ConfigError(f"cannot clone {like!r} into {name!r}: both must be workers of a "
                          "PPO lite policy")
    j, k = conductor.workers.index(name), conductor.workers.index(like)
    n_q = net.obs_dim - state_dim(w, conductor.max_calls)
    with torch.no_grad():
        for layer in (net.pi[0], net.vf[0]):
            for block in range(3):
                layer.weight[:, n_q + block * w + j] = layer.weight[:, n_q + block * w + k]
        net.pi[-1].weight[j] = net.pi[-1].weight[k]
        net.pi[-1].bias[j] = net.pi[-1].bias[k]


def prepare_for_pool(conductor: LiteConductor, workers: Sequence[tuple[str, float]]
                     ) -> LiteConductor:
    """The policy for a pool that gained `workers` (name, vote strength): it loads and
    serves there as before, never calling them (`init="never"`), and lists them as
    `pending_workers`, which continued training first clones from a similar worker."""
    names = [n for n, _ in workers if n not in conductor.workers]
    if not names:
        return conductor
    grown = extend_workers(conductor, names, [s for n, s in workers if n in names], "never")
    grown.info["pending_workers"] = [*conductor.info.get("pending_workers", []), *names]
    return grown
