"""The RL math as pure functions over tensors: advantages (GRPO, GAE), log-probs, PPO and
value losses. No model, no Ray; every function is checked against hand-computed numbers.

Shapes: B sequences, G samples per group, T completion tokens, V vocabulary. `mask[B, T]` is
1 on real completion tokens and 0 on padding.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import Tensor

# -- advantages --------------------------------------------------------------------------------


def group_advantages(rewards: Tensor, group_size: int | None = None, eps: float = 1e-6,
                     normalize_std: bool = True) -> Tensor:
    """GRPO: (r - mean of its group) / (std of its group + eps).

    `rewards` is [B, G], or flat [B*G] with `group_size` (the result has the input's shape).
    The std is the unbiased one, as in TRL; a group of one, or of equal rewards, gets 0.
    """
    flat = rewards.dim() == 1
    r = rewards.view(-1, group_size) if flat else rewards
    if r.dim() != 2:
        raise ValueError(
            f"rewards must be [B, G] or flat with group_size, got {tuple(rewards.shape)}")
    centred = r - r.mean(dim=1, keepdim=True)
    if normalize_std and r.shape[1] > 1:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.reshape(rewards.shape)


def grouped_advantages(rewards: Tensor, group_ids: Sequence[Hashable], eps: float = 1e-6,
                       normalize_std: bool = True) -> Tensor:
    """`group_advantages` for a flat batch whose groups are named by `group_ids` (any order,
    any sizes)."""
    out = torch.zeros_like(rewards, dtype=torch.float32)
    index: dict[Hashable, list[int]] = {}
    for i, g in enumerate(group_ids):
        index.setdefault(g, []).append(i)
    for members in index.values():
        idx = torch.tensor(members)
        out[idx] = group_advantages(rewards[idx].float()[None], eps=eps,
                                    normalize_std=normalize_std)[0]
    return out


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over tokens: (advantages[B, T], returns[B, T]).

    `rewards[B, T]` are per-token rewards (usually the outcome on the last real token);
    `values[B, T]` are V(state before token t). A sequence ends at its last masked token, so
    the value after it is 0.
    """
    mask = mask.to(values.dtype)
    T = rewards.shape[1]
    adv = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        cont = mask[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        next_value = values[:, t + 1] * cont if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * cont * running) * mask[:, t]
        adv[:, t] = running
    return adv, (adv + values) * mask


def outcome_rewards(final: Tensor, mask: Tensor) -> Tensor:
    """[B] outcome rewards placed on each sequence's last real token, as [B, T]."""
    last = (mask.long().cumsum(dim=1) == mask.long().sum(dim=1, keepdim=True)) & mask.bool()
    return last.to(final.dtype) * final[:, None]


# -- log-probs -----------------------------------------------------------------------------------


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token], in float32: logits [B, T, V], tokens [B, T] -> [B, T]."""
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


# -- losses ----------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros_like(x)).sum()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


def _aggregate(per_token: Tensor, mask: Tensor, loss_agg: str, normalizer: float | None) -> Tensor:
    """token_mean: sum over all tokens / tokens; seq_mean: mean over sequences of their means.

    `normalizer` replaces the denominator (tokens, or sequences), so micro-batches and
    data-parallel shards add up to the loss of the whole batch."""
    if loss_agg == "token_mean":
        denom = mask.sum() if normalizer is None else normalizer
        return masked_sum(per_token, mask) / denom
    if loss_agg == "seq_mean":
        per_seq = (torch.where(mask.bool(), per_token, 0.0).sum(dim=1)
                   / mask.sum(dim=1).clamp(min=1))
        denom = per_seq.shape[0] if normalizer is None else normalizer
        return per_seq.sum() / denom
    raise ValueError(f"loss_agg must be 'token_mean' or 'seq_mean', got {loss_agg!r}")


def k3_kl(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate with samples from pi (Schulman's k3, always >= 0)."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1


def ppo_loss(logp_new: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor,
             clip_eps: float = 0.2, clip_eps_high: float | None = None, kl_coef: float = 0.0,
             logp_ref: Tensor | None = None, loss_agg: str = "token_mean",
             normalizer: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The PPO clipped surrogate over completion tokens, plus an optional k3 KL to a reference.

    `advantages` is [B] (one per sequence, GRPO) or [B, T] (per token, GAE). Returns the loss
    and detached metrics: clip_frac (tokens whose clipped branch is active), approx_kl
    (k3 of pi_old vs pi_new), ratio_mean, kl (to the reference; 0 without one).
    """
    mask = mask.to(logp_new.dtype)
    real = mask.bool()  # padding is zeroed before exp(), so garbage there cannot become nan
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = torch.where(real, logp_new - logp_old, 0.0)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    kl = torch.zeros_like(per_token)
    if kl_coef and logp_ref is not None:
        kl = k3_kl(torch.where(real, logp_new, 0.0), torch.where(real, logp_ref, 0.0))
        per_token = per_token + kl_coef * kl
    loss = _aggregate(per_token, mask, loss_agg, normalizer)
    with torch.no_grad():
        is_clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + high) & (adv > 0))
        metrics = {
            "clip_frac": masked_mean(is_clipped.to(mask.dtype), mask),
            "approx_kl": masked_mean(torch.exp(log_ratio) - 1 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "kl": masked_mean(kl, mask),
        }
    return loss, metrics


def value_loss(values: Tensor, returns: Tensor, mask: Tensor, old_values: Tensor | None = None,
               clip: float | None = None, loss_agg: str = "token_mean",
               normalizer: float | None = None) -> Tensor:
    """0.5 * (V - R)^2 over real tokens; with `clip`, PPO's clipped value loss (the max of the
    plain and the clipped error, V kept within `clip` of `old_values`)."""
    mask = mask.to(values.dtype)
    err = (values - returns) ** 2
    if clip is not None and old_values is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err = torch.maximum(err, (v_clipped - returns) ** 2)
    return 0.5 * _aggregate(err, mask, loss_agg, normalizer)


def sft_loss(logp: Tensor, mask: Tensor, normalizer: float | None = None) -> Tensor:
    """Behaviour cloning: the negative log-likelihood of the target tokens, summed over the
    mask and divided by `normalizer` (default: the mask's token count)."""
    total = -masked_sum(logp, mask)
    return total / (normalizer if normalizer is not None else mask.sum().clamp(min=1.0))
