"""The `Learner`: one process's share of a policy update. Plain Python, no Ray.

It recomputes log-probs of the sampled completions with gradients, forms the PPO loss from
`losses`, and steps AdamW. Under `torch.distributed` (world size > 1) the policy is wrapped in
DDP: each rank trains on a `shard` of the batch, and every normaliser (tokens, sequences) is
summed over ranks, so the update equals one learner's update on the whole batch. Advantages
must then be computed on the whole batch before sharding (`with_advantages`), so that no
GRPO group is split.
"""

from __future__ import annotations

import copy
import inspect
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ray_conductor.errors import ConfigError
from ray_conductor.policy.engine import common_prefix
from ray_conductor.rl import losses as L
from ray_conductor.rl.types import Trajectory


@dataclass
class LearnerConfig:
    """Optimiser and loss settings. The paper: lr 1e-6 on a 7B model, GRPO, no KL; small
    models need far larger rates (1e-5 to 5e-5; the tiny test model learns at 1e-3)."""

    model: str = field(default="tiny-smollm2", metadata={
        "help": "the LM trained (train sets it from model=)"})
    lr: float = field(default=1e-6, metadata={"help": "learning rate", "gt": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={
        "help": "AdamW betas"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon", "gt": 0})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping", "gt": 0})
    clip_eps: float = field(default=0.2, metadata={"help": "PPO clip range", "gt": 0})
    clip_eps_high: float | None = field(default=None, metadata={
        "help": "upper clip range (null: clip_eps)", "gt": 0})
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty", "min": 0})
    loss_agg: str = field(default="token_mean", metadata={
        "help": "loss aggregation", "choices": ("token_mean", "seq_mean")})
    advantage: str = field(default="grpo", metadata={  # gae: value head
        "help": "advantage estimator", "choices": ("grpo", "gae")})
    normalize_std: bool = field(default=True, metadata={
        "help": "divide group advantages by their std"})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount", "min": 0, "max": 1})
    lam: float = field(default=1.0, metadata={"help": "GAE lambda", "min": 0, "max": 1})
    value_coef: float = field(default=0.5, metadata={"help": "value loss weight", "min": 0})
    value_clip: float | None = field(default=None, metadata={
        "help": "value clip range (null: none)", "gt": 0})
    ppo_epochs: int = field(default=1, metadata={"help": "passes over a batch", "min": 1})
    micro_batch_size: int = field(default=8, metadata={
        "help": "sequences per backward pass (keep a group in one)", "min": 1})
    gradient_checkpointing: bool = field(default=False, metadata={  # ~30% slower
        "help": "recompute activations: far less memory"})
    # Run the prompt prefix every sequence of a micro-batch shares (the conductor's
    # instructions and pool; all of a GRPO group's prompt) once, and backpropagate through its
    # KV cache: the same gradient for a fraction of the compute. Not with checkpointing (a
    # recomputed layer would append to the cache twice), which then runs every row in full.
    share_prefix: bool = field(default=True, metadata={
        "help": "run a micro-batch's shared prompt prefix once"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast in updates"})
    seed: int = field(default=0, metadata={"help": "seed of the learner"})


# -- pure helpers ------------------------------------------------------------------------------


def batch_advantages(batch: Sequence[Trajectory], cfg: LearnerConfig) -> list[float]:
    """GRPO advantages of a whole batch, grouped by `group_id`."""
    rewards = torch.tensor([t.reward for t in batch], dtype=torch.float32)
    adv = L.grouped_advantages(rewards, [t.group_id for t in batch],
                               normalize_std=cfg.normalize_std)
    return adv.tolist()


def with_advantages(batch: Sequence[Trajectory], cfg: LearnerConfig) -> list[Trajectory]:
    """Copies of the trajectories with `advantage` filled in (GRPO over the whole batch)."""
    return [replace(t, advantage=a) for t, a in zip(batch, batch_advantages(batch, cfg))]


def shard(batch: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Rank `rank`'s contiguous share of `batch`; shares differ in size by at most one."""
    n = len(batch)
    lo, hi = rank * n // world, (rank + 1) * n // world
    return list(batch[lo:hi])


MIN_SHARED_PREFIX = 8  # tokens; below this a separate prefix pass saves less than it costs


def collate(batch: Sequence[Trajectory], pad_id: int = 0,
            share_prefix: bool = False) -> dict[str, Tensor]:
    """Pad trajectories into one aligned block: prompts left-padded to P, completions
    right-padded to C, so completion token j of every row sits at position P + j.

    With `share_prefix` (and at least MIN_SHARED_PREFIX common tokens), the prompts' common
    prefix S moves to `prefix_ids` [1, S] and the rows hold only the rest: `input_ids` is
    [B, P - S + C], while `attention_mask` covers prefix and row ([B, S + P - S + C]) and
    `position_ids` continue the prefix's, so the numbers equal those of the full rows."""
    S = common_prefix([t.prompt_ids for t in batch]) if share_prefix and len(batch) > 1 else 0
    if S < MIN_SHARED_PREFIX:
        S = 0
    P = max(len(t.prompt_ids) for t in batch) - S
    C = max(len(t.completion_ids) for t in batch)
    B = len(batch)
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + C), dtype=torch.long)
    old = torch.zeros((B, C), dtype=torch.float32)
    has_old = torch.zeros(B, dtype=torch.bool)
    for i, t in enumerate(batch):
        p, c = len(t.prompt_ids) - S, len(t.completion_ids)
        ids[i, P - p:P] = torch.tensor(t.prompt_ids[S:], dtype=torch.long)
        ids[i, P:P + c] = torch.tensor(t.completion_ids, dtype=torch.long)
        attn[i, P - p:P + c] = 1
        if t.old_logprobs is not None:
            if len(t.old_logprobs) != c:
                raise ValueError(
                    f"trajectory {i}: {len(t.old_logprobs)} old log-probs for {c} tokens")
            old[i, :c] = torch.tensor(t.old_logprobs, dtype=torch.float32)
            has_old[i] = True
    full = torch.cat([torch.ones((B, S), dtype=torch.long), attn], dim=1)
    out = {
        "input_ids": ids, "attention_mask": full,
        "position_ids": ((full.cumsum(dim=1) - 1).clamp(min=0))[:, S:],
        "completion": ids[:, P:], "mask": attn[:, P:].float(), "old_logprobs": old,
        "has_old": has_old,
        "rewards": torch.tensor([t.reward for t in batch], dtype=torch.float32),
        "advantages": torch.tensor([t.advantage or 0.0 for t in batch], dtype=torch.float32),
    }
    if S:
        out["prefix_ids"] = torch.tensor([batch[0].prompt_ids[:S]], dtype=torch.long)
    return out


def policy_inputs(mb: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """The `PolicyModule` arguments in a collated micro-batch."""
    return (mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["completion"],
            mb.get("prefix_ids"))


def _require_no_dropout(lm: nn.Module) -> None:
    """Train mode (needed for checkpointing) must not switch dropout on: pi_old == pi_new."""
    for name, m in lm.named_modules():
        if isinstance(m, nn.Dropout) and m.p > 0:
            raise ConfigError(f"gradient_checkpointing needs a model without dropout; {name} "
                              f"has p={m.p}")
    for key in ("attention_dropout", "hidden_dropout", "dropout"):
        if float(getattr(lm.config, key, 0.0) or 0.0) > 0:
            raise ConfigError(f"gradient_checkpointing needs a model without dropout; "
                              f"config.{key}={getattr(lm.config, key)}")


# -- the model -----------------------------------------------------------------------------------


class PolicyModule(nn.Module):
    """The causal LM and an optional value head, as one module (so DDP wraps both)."""

    def __init__(self, lm: nn.Module, value_head: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        self.value_head = value_head
        params = inspect.signature(lm.forward).parameters
        self._keep_arg = "logits_to_keep" in params
        # transformers 5.x renamed `past_key_values` to `cache` (argument and output field)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                completion: Tensor, prefix_ids: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """Log-probs [B, C] of the completion tokens, and values [B, C] (None without head).

        With `prefix_ids` [1, S] (see `collate`), the shared prefix runs once and its KV
        cache, repeated over the rows, is what the rows attend to; gradients flow back
        through it to the prefix pass."""
        C = completion.shape[1]
        kw: dict[str, Any] = {"logits_to_keep": C + 1} if self._keep_arg else {}
        use_cache = False
        if prefix_ids is not None:
            S = prefix_ids.shape[1]
            head = self.lm(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids),
                           position_ids=torch.arange(S, device=prefix_ids.device)[None],
                           use_cache=True, **({"logits_to_keep": 1} if self._keep_arg else {}))
            cache = getattr(head, self._cache_kw)
            cache.batch_repeat_interleave(input_ids.shape[0])
            kw[self._cache_kw] = cache
            use_cache = True
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=use_cache,
                      output_hidden_states=self.value_head is not None, **kw)
        logits = out.logits[:, -(C + 1):-1]
        values = None
        if self.value_head is not None:
            hidden = out.hidden_states[-1][:, -(C + 1):-1]
            values = self.value_head(hidden).squeeze(-1).float()
        return L.token_logprobs(logits, completion), values


class Learner:
    """Holds the policy (and reference, value head, AdamW); `train_step` makes one update."""

    def __init__(self, model_name: str | None = None, cfg: LearnerConfig | None = None,
                 device: str = "cpu"):
        from ray_conductor.policy.loading import load_causal_lm

        self.cfg = cfg = cfg or LearnerConfig()
        if cfg.advantage not in ("grpo", "gae"):
            raise ConfigError(f"advantage must be 'grpo' or 'gae', got {cfg.advantage!r}")
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            lm, self.tokenizer = load_causal_lm(model_name or cfg.model, "float32", device)
        lm.eval()  # no dropout: the ratio must be 1 when nothing has changed
        if cfg.gradient_checkpointing:  # transformers checkpoints only in train mode
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            _require_no_dropout(lm)
            lm.train()
        self.reference = (PolicyModule(copy.deepcopy(lm).requires_grad_(False))
                          if cfg.kl_coef > 0 else None)
        head = None
        if cfg.advantage == "gae":
            head = nn.Linear(lm.config.hidden_size, 1).to(self.device)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.policy = PolicyModule(lm, head)
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.module: nn.Module = self.policy
        if self.world > 1:
            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.module = nn.parallel.DistributedDataParallel(self.policy, device_ids=ids)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
        )
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.steps = 0

    # -- helpers --

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def _all_reduce(self, x: Tensor, op: Any = None) -> Tensor:
        if self.world > 1:
            x = x.to(self.device)
            dist.all_reduce(x, op=op or dist.ReduceOp.SUM)
        return x.cpu()

    def _micro_batches(self, batch: Sequence[Trajectory]) -> list[tuple[dict[str, Tensor], bool]]:
        """(tensors, real) chunks; the same count on every rank, padded with zero-weight dummies
        (DDP needs each rank to run the same number of backward passes)."""
        n = math.ceil(len(batch) / self.cfg.micro_batch_size)
        n = int(self._all_reduce(torch.tensor([n]), dist.ReduceOp.MAX if self.world > 1 else None))
        chunks = [shard(batch, k, n) for k in range(n)]
        out = [(c, True) if c else ([batch[0]], False) for c in chunks]
        share = self.cfg.share_prefix and not self.cfg.gradient_checkpointing
        return [({k: v.to(self.device) for k, v in collate(c, self.pad_id, share).items()}, real)
                for c, real in out]

    @torch.no_grad()
    def _prepare(self, mb: dict[str, Tensor]) -> None:
        """Fill in what the loss needs from the policy before it changes: pi_old (when the
        sampler gave none), pi_ref, and the GAE advantages from V_old."""
        need_old = not bool(mb["has_old"].all())
        args = policy_inputs(mb)
        if need_old or self.policy.value_head is not None:
            with self._autocast():
                logp, values = self.policy(*args)
            if need_old:
                mb["old_logprobs"] = torch.where(mb["has_old"][:, None], mb["old_logprobs"],
                                                 logp.float())
            if values is not None:
                rewards = L.outcome_rewards(mb["rewards"], mb["mask"])
                adv, ret = L.gae(rewards, values, mb["mask"], self.cfg.gamma, self.cfg.lam)
                mb.update(old_values=values, token_advantages=adv, returns=ret)
        if self.reference is not None:
            with self._autocast():
                mb["ref_logprobs"] = self.reference(*args)[0].float()

    def _loss(self, mb: dict[str, Tensor], normalizer: float) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        with self._autocast():
            logp, values = self.module(*policy_inputs(mb))
        adv = mb["token_advantages"] if "token_advantages" in mb else mb["advantages"]
        loss, metrics = L.ppo_loss(
            logp.float(), mb["old_logprobs"], adv, mb["mask"], clip_eps=cfg.clip_eps,
            clip_eps_high=cfg.clip_eps_high, kl_coef=cfg.kl_coef, logp_ref=mb.get("ref_logprobs"),
            loss_agg=cfg.loss_agg, normalizer=normalizer,
        )
        if values is not None:
            vl = L.value_loss(values, mb["returns"], mb["mask"], mb["old_values"], cfg.value_clip,
                              cfg.loss_agg, normalizer)
            loss = loss + cfg.value_coef * vl
            metrics["value_loss"] = L.value_loss(values.detach(), mb["returns"], mb["mask"])
        return loss, metrics

    # -- the update --

    def _advantages(self, batch: Sequence[Trajectory]) -> list[Trajectory]:
        if all(t.advantage is not None for t in batch) or self.cfg.advantage == "gae":
            return list(batch)
        if self.world > 1:
            raise ValueError("under data parallelism, compute advantages on the whole batch "
                             "before sharding it (rl.learner.with_advantages)")
        return with_advantages(batch, self.cfg)

    def train_step(self, batch: Sequence[Trajectory]) -> dict[str, float]:
        """One optimiser step per PPO epoch over `batch` (this rank's shard); global metrics."""
        if not batch:
            raise ValueError("train_step needs at least one trajectory on every learner")
        cfg = self.cfg
        batch = self._advantages(batch)
        mbs = self._micro_batches(batch)
        for mb, _ in mbs:
            self._prepare(mb)
        tokens = sum(float(mb["mask"].sum()) for mb, real in mbs if real)
        counts = self._all_reduce(torch.tensor([tokens, float(len(batch))], dtype=torch.float64))
        normalizer = float(counts[0] if cfg.loss_agg == "token_mean" else counts[1])
        names = ("loss", "clip_frac", "approx_kl", "ratio_mean", "kl", "value_loss")
        sums = torch.zeros(len(names), dtype=torch.float64)
        grad_norm = 0.0
        for _ in range(cfg.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for k, (mb, real) in enumerate(mbs):
                sync = self.world == 1 or k == len(mbs) - 1
                with nullcontext() if sync else self.module.no_sync():
                    loss, m = self._loss(mb, max(normalizer, 1.0))
                    (loss * (self.world if real else 0.0)).backward()
                if real:
                    w = float(mb["mask"].sum())
                    sums[0] += float(loss.detach())
                    for j, name in enumerate(names[1:], start=1):
                        sums[j] += float(m.get(name, torch.tensor(0.0))) * w
            grad_norm = float(nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm))
            self.optimizer.step()
        self.steps += 1
        return self._metrics(batch, names, sums, grad_norm, counts)

    def sft_step(self, batch: Sequence[Trajectory]) -> dict[str, float]:
        """One supervised step (behaviour cloning): the mean negative log-likelihood of the
        completion tokens given their prompts, over this rank's shard; rewards and advantages
        are ignored. Returns the global loss (before the step), tokens and grad norm."""
        if not batch:
            raise ValueError("sft_step needs at least one example on every learner")
        mbs = self._micro_batches(batch)
        tokens = sum(float(mb["mask"].sum()) for mb, real in mbs if real)
        total = float(self._all_reduce(torch.tensor([tokens], dtype=torch.float64))[0])
        self.optimizer.zero_grad(set_to_none=True)
        nll = torch.zeros(1, dtype=torch.float64)
        for k, (mb, real) in enumerate(mbs):
            sync = self.world == 1 or k == len(mbs) - 1
            with nullcontext() if sync else self.module.no_sync():
                with self._autocast():
                    logp, _ = self.module(*policy_inputs(mb))
                loss = L.sft_loss(logp.float(), mb["mask"], normalizer=max(total, 1.0))
                (loss * (self.world if real else 0.0)).backward()
            if real:
                nll += float(loss.detach())
        grad_norm = float(nn.utils.clip_grad_norm_(self.policy.parameters(),
                                                   self.cfg.max_grad_norm))
        self.optimizer.step()
        self.steps += 1
        return {"sft_loss": float(self._all_reduce(nll)[0]), "tokens": total,
                "grad_norm": grad_norm, "step": float(self.steps),
                "lr": float(self.optimizer.param_groups[0]["lr"])}

    def _metrics(self, batch: Sequence[Trajectory], names: Sequence[str], sums: Tensor,
                 grad_norm: float, counts: Tensor) -> dict[str, float]:
        stats = torch.tensor([sum(t.reward for t in batch), sum(t.reward ** 2 for t in batch),
                              sum(t.advantage or 0.0 for t in batch)], dtype=torch.float64)
        sums, stats = self._all_reduce(sums), self._all_reduce(stats)
        tokens, n = float(counts[0]), float(counts[1])
        epochs = self.cfg.ppo_epochs
        out = {"loss": float(sums[0]) / epochs}
        out.update({name: float(sums[j]) / max(tokens, 1.0) / epochs
                    for j, name in enumerate(names) if j > 0})
        mean = float(stats[0]) / n
        out.update(reward_mean=mean, reward_std=max(float(stats[1]) / n - mean ** 2, 0.0) ** 0.5,
                   advantage_mean=float(stats[2]) / n, grad_norm=grad_norm, tokens=tokens,
                   sequences=n, step=float(self.steps),
                   lr=float(self.optimizer.param_groups[0]["lr"]))
        return out

    def set_lr(self, lr: float) -> None:
        """Change the optimiser's learning rate from the next step on (the format warm-up
        runs at its own rate)."""
        if not lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {lr}")
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr)

    # -- weights and checkpoints --

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The LM's weights on the CPU (a copy), for the rollout workers."""
        return {k: v.detach().to("cpu", dtype=dtype or v.dtype, copy=True)
                for k, v in self.policy.lm.state_dict().items()}

    def save(self, path: str) -> None:
        """Everything needed to resume: policy, value head, optimiser state, step, config."""
        torch.save({"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "steps": self.steps, "config": asdict(self.cfg)}, path)

    def export_pretrained(self, directory: str) -> None:
        """The LM and tokenizer as a Hugging Face directory: what `conductor.model=` loads."""
        self.policy.lm.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def load(self, path: str) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=True)
        self.policy.load_state_dict(ckpt["policy"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.steps = int(ckpt["steps"])
