"""`TransformersEngine`: batched sampling with a plain transformers causal LM, on CPU or CUDA.

A small hand-written decode loop rather than `model.generate`, because we need exactly three
things `generate` makes awkward: the log-prob of each sampled token under the untempered
policy (see `engine`), a private `torch.Generator` so a seed makes a call reproducible
without touching global RNG state, and no logits kept beyond the current step.
Prompts are left-padded; positions come from the attention mask, so padding does not shift
RoPE and a padded row's numbers match an unpadded forward pass. The prefix that all rows of a
batch share (the conductor's long instructions; a GRPO group's repeated prompt) is run once.

With `constraints` (one `PlanGrammar`-like checker per prompt), a row only ever writes text
its checker accepts: a drawn token that would leave the language is refused and the row draws
again (exactly a draw from the allowed tokens, renormalised), and after `MAX_REJECTIONS`
misses every token is checked. EOS is allowed only where the text
may end. Log-probs stay the unconstrained policy's (the learner's convention, see `engine`).

On a CPU, torch's thread count matters more than anything here: on a busy 2-core box one
thread per process beat two by 4-8x in our measurements (benchmarks/generation_throughput.py).
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
import sys
from typing import Any, Sequence

import torch

from ray_conductor.errors import ConfigError
from ray_conductor.policy.engine import (
    Prompt, Sample, check_sampling, common_prefix, prompt_ids,
)
from ray_conductor.policy.loading import load_causal_lm

MIN_SHARED_PREFIX = 8  # tokens; below this, sharing a prefix saves less than it costs
EMBED_TOKENS = 160  # tokens of a question a feature row reads (`embed`)
MAX_REJECTIONS = 16  # constrained decoding: redraws of one row before checking every token
_AUTOCAST = {None: None, "": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersEngine:
    """`GenerationEngine` over a Hugging Face causal LM.

    `model_name_or_model` is a name for `load_causal_lm` ("smollm2", "tiny-smollm2", a local
    directory) or a loaded model, in which case `tokenizer` is required. `dtype` is the
    weights' dtype; `autocast` ("bfloat16") runs the forward passes under torch.autocast
    (log-probs are still taken in fp32). It pays on GPUs and CPUs with fast bf16 (AMX); on
    other CPUs measure first, it can be slower.
    """

    def __init__(
        self,
        model_name_or_model: Any = "smollm2",
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        autocast: str | None = None,
        tokenizer: Any = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if autocast not in _AUTOCAST:
            raise ConfigError(f"autocast must be 'bfloat16', 'float16' or empty, got {autocast!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
        if isinstance(model_name_or_model, str):
            model, tokenizer = load_causal_lm(model_name_or_model, dtype=dtype, device=device)
        else:
            if tokenizer is None:
                raise ConfigError("TransformersEngine got a model object but no tokenizer")
            model = model_name_or_model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.autocast = _AUTOCAST[autocast]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = _eos_ids(model, tokenizer)
        # transformers 5.x renamed `past_key_values` to `cache` (argument and output field)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._vocab: tuple[list[str | None], tuple[list[str], list[int]]] | None = None

    # -- the protocol --------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        temperature: float,
        max_tokens: int,
        top_p: float = 1.0,
        seed: int | None = None,
        constraints: Sequence[Any] | None = None,
    ) -> list[list[Sample]]:
        check_sampling(n, temperature, max_tokens, top_p)
        if constraints is not None and len(constraints) != len(prompts):
            raise ConfigError(f"generate got {len(prompts)} prompts but {len(constraints)} "
                              "constraints; pass one per prompt (None for free text)")
        encoded = [prompt_ids(self.tokenizer, p) for p in prompts]
        rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(n)]
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        out: list[list[Sample]] = [[] for _ in prompts]
        for lo in range(0, len(rows), self.batch_size):
            chunk = rows[lo : lo + self.batch_size]
            checks = None if constraints is None else [constraints[i] for i, _ in chunk]
            samples = self._sample_batch([ids for _, ids in chunk], temperature, max_tokens,
                                         top_p, gen, checks)
            for (i, _), s in zip(chunk, samples):
                out[i].append(s)
        return out

    def embed(self, texts: Sequence[str], max_length: int = EMBED_TOKENS) -> Any:
        """One feature row per text (a float32 numpy array [N, hidden]): the model's last
        hidden state, mean-pooled over the text's first `max_length` tokens. What a
        `ProgramHead` reads (policy/program_head.py); no chat template, no prompt."""
        with torch.no_grad(), self._forward_ctx():
            return mean_pooled(self.model, self.tokenizer, texts, max_length=max_length,
                               batch=self.batch_size, device=self.device)

    def get_state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the weights (safe to ship to another process)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.model.load_state_dict(state_dict, strict=True)

    # -- decoding ------------------------------------------------------------------------

    def _forward_ctx(self) -> Any:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                 cache: Any) -> tuple[torch.Tensor, Any]:
        """Last-position logits (fp32) and the updated KV cache."""
        with self._forward_ctx():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                             use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        return out.logits[:, -1, :].float(), getattr(out, self._cache_kw)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _prefill(self, batch: list[list[int]]) -> tuple[torch.Tensor, Any, torch.Tensor,
                                                         torch.Tensor]:
        """Run the prompts; returns (logits, cache, attention mask, last positions).

        Conductor prompts share a long head (instructions, pool, examples) and a GRPO group
        repeats one prompt, so the common prefix is computed once and its cache copied to
        every row; the rest is left-padded after it ([prefix][pad][suffix]), which the mask
        and mask-derived positions make equivalent to separate forward passes."""
        shared = common_prefix(batch)
        cache, head = None, None
        if len(batch) > 1 and shared >= MIN_SHARED_PREFIX:
            prefix = torch.tensor([batch[0][:shared]], device=self.device)
            ones = torch.ones_like(prefix)
            _, cache = self._forward(prefix, ones, torch.arange(shared, device=self.device)[None],
                                     None)
            if hasattr(cache, "batch_repeat_interleave"):
                cache.batch_repeat_interleave(len(batch))
                head = ones.expand(len(batch), shared)
            else:  # a legacy cache we cannot copy: prefill every row in full
                cache = None
        rows = [r[shared:] for r in batch] if head is not None else batch
        ids, mask = self._left_pad(rows)
        if head is not None:
            mask = torch.cat([head, mask], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        logits, cache = self._forward(ids, mask, pos, cache)
        return logits, cache, mask, pos[:, -1:]

    @torch.no_grad()
    def _sample_batch(self, batch: list[list[int]], temperature: float, max_tokens: int,
                      top_p: float, gen: torch.Generator,
                      checks: Sequence[Any] | None = None) -> list[Sample]:
        logits, cache, mask, pos = self._prefill(batch)
        eos = torch.tensor(sorted(self.eos_ids), device=self.device)
        done = torch.zeros(len(batch), dtype=torch.bool, device=self.device)
        states = [None if c is None else c.start() for c in checks] if checks else None
        tokens, logps = [], []
        for step in range(max_tokens):
            nxt = _pick(logits, temperature, top_p, gen)
            if states is not None:
                nxt = self._constrain(logits, nxt, checks, states, done, temperature, top_p,
                                      gen)
            logps.append(torch.log_softmax(logits, -1).gather(1, nxt[:, None]).squeeze(1))
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            tokens.append(nxt)
            done |= torch.isin(nxt, eos)
            if step == max_tokens - 1 or bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos + 1
            logits, cache = self._forward(nxt[:, None], mask, pos, cache)
        toks = torch.stack(tokens, 1).tolist()
        lps = torch.stack(logps, 1).tolist()
        return [self._sample(row, toks[r], lps[r]) for r, row in enumerate(batch)]

    # -- constrained decoding ------------------------------------------------------------

    def _texts(self) -> tuple[list[str | None], tuple[list[str], list[int]]]:
        """Each token id's text as decoding appends it (None for special tokens, which the
        decoded text drops and no constraint may accept), and the other texts sorted with
        their ids, for `_allowed`. Built once, on the first constrained call."""
        if self._vocab is None:
            tok = self.tokenizer
            special = set(getattr(tok, "all_special_ids", []) or [])
            n = max(len(tok), int(getattr(self.model.config, "vocab_size", 0) or 0))
            decoded = tok.batch_decode([[i] for i in range(len(tok))])
            texts: list[str | None] = [None if i in special or i >= len(decoded)
                                       or not decoded[i] else decoded[i] for i in range(n)]
            pairs = sorted((t, i) for i, t in enumerate(texts) if t is not None)
            self._vocab = (texts, ([t for t, _ in pairs], [i for _, i in pairs]))
        return self._vocab

    def _advance(self, check: Any, state: Any, tok: int) -> Any:
        """The checker's state after token `tok`, or None if `tok` is not allowed."""
        if tok in self.eos_ids:
            return state if check.complete(state) else None
        texts = self._texts()[0]
        text = texts[tok] if tok < len(texts) else None
        return None if text is None else check.feed(state, text)

    def _constrain(self, logits: torch.Tensor, nxt: torch.Tensor, checks: Sequence[Any],
                   states: list, done: torch.Tensor, temperature: float, top_p: float,
                   gen: torch.Generator) -> torch.Tensor:
        """Replace each constrained row's token by an allowed one (see the module doc) and
        advance the row's checker state."""
        out = nxt.clone()
        for r, check in enumerate(checks):
            if check is None or bool(done[r]):
                continue
            tok = int(nxt[r])
            new = self._advance(check, states[r], tok)
            if new is None:
                row = logits[r : r + 1].clone()
                row[0, tok] = float("-inf")
                tok, new = self._redraw(row, check, states[r], temperature, top_p, gen)
            out[r] = tok
            states[r] = new if new is not None else states[r]
        return out

    def _redraw(self, row: torch.Tensor, check: Any, state: Any, temperature: float,
                top_p: float, gen: torch.Generator) -> tuple[int, Any]:
        """A token the checker allows, drawn from `row` (refused tokens at -inf) restricted to
        the allowed ones. Sampling at top_p=1: `MAX_REJECTIONS` independent draws at once,
        the first allowed one wins (exactly a draw from the allowed tokens, renormalised).
        Greedy or top-p: one at a time, each refused token masked. None allowed: `_scan`."""
        if temperature > 0 and top_p >= 1.0:
            draws = _draws(torch.softmax(row / temperature, -1), MAX_REJECTIONS, gen)
            for tok in dict.fromkeys(draws[0].tolist()):
                new = self._advance(check, state, tok)
                if new is not None:
                    return tok, new
                row[0, tok] = float("-inf")
        else:
            for _ in range(MAX_REJECTIONS):
                tok = int(_pick(row, temperature, top_p, gen)[0])
                new = self._advance(check, state, tok)
                if new is not None:
                    return tok, new
                row[0, tok] = float("-inf")
        return self._scan(row, check, state, temperature, top_p, gen)

    def _scan(self, row: torch.Tensor, check: Any, state: Any, temperature: float,
              top_p: float, gen: torch.Generator) -> tuple[int, Any]:
        """Check every token still possible; draw among the allowed ones. None allowed (a
        checker with a dead end) ends the row with EOS and an unparsable text."""
        finite = torch.isfinite(row[0]).tolist()
        allowed = {t: new for t, new in self._allowed(check, state).items()
                   if t < len(finite) and finite[t]}
        if not allowed:
            return min(self.eos_ids), None
        keep = torch.full_like(row, float("-inf"))
        idx = torch.tensor(sorted(allowed), device=row.device)
        keep[0, idx] = row[0, idx]
        tok = int(_pick(keep, temperature, top_p, gen)[0])
        return tok, allowed[tok]

    def _allowed(self, check: Any, state: Any) -> dict[int, Any]:
        """Every token the checker allows after `state`, with the state it leads to. The
        vocabulary is walked in sorted order as a prefix tree: tokens that share a prefix
        the checker refuses are skipped together (after a list item a space is allowed, and a
        third of the vocabulary starts with one; checking each token cost ~0.1 s a scan)."""
        texts, ids = self._texts()[1]
        allowed: dict[int, Any] = {}

        def walk(lo: int, hi: int, depth: int, st: Any) -> None:
            # texts[lo:hi] share their first `depth` characters; `st` is the state after them
            while lo < hi and len(texts[lo]) == depth:
                allowed[ids[lo]] = st
                lo += 1
            while lo < hi:
                prefix = texts[lo][:depth + 1]
                ch = prefix[-1]
                end = hi if ord(ch) == sys.maxunicode else bisect.bisect_left(
                    texts, prefix[:-1] + chr(ord(ch) + 1), lo, hi)
                new = check.feed(st, ch)
                if new is not None:
                    walk(lo, end, depth + 1, new)
                lo = end

        walk(0, len(texts), 0, state)
        for t in self.eos_ids:  # EOS ends the text, whatever its own text is (`_advance`)
            allowed.pop(t, None)
            if check.complete(state):
                allowed[t] = state
        return allowed

    def _sample(self, prompt: list[int], toks: list[int], lps: list[float]) -> Sample:
        end = next((k + 1 for k, t in enumerate(toks) if t in self.eos_ids), None)
        reason = "length" if end is None else "stop"
        toks, lps = toks[:end], lps[:end]
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        return Sample(list(prompt), toks, text, lps, reason)


def _pick(logits: torch.Tensor, temperature: float, top_p: float,
          gen: torch.Generator) -> torch.Tensor:
    """The next token per row: argmax at temperature 0, else a draw from the tempered,
    top-p-truncated distribution."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # keeps at least the top token
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return _draws(probs, 1, gen).squeeze(1)


def _draws(probs: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """`n` independent draws per row, by inverse CDF. `torch.multinomial` draws a single
    sample with exponential noise over the whole row: ~1 ms a row of 49k tokens on a CPU,
    most of a constrained plan's sampling time; this costs ~0.05 ms."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], n, generator=gen, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)


def mean_pooled(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int,
                batch: int = 16, device: Any = "cpu") -> Any:
    """The last hidden state of `model`, mean-pooled over each text's tokens (right-padded,
    truncated to `max_length`), as float32 numpy rows. The caller sets no_grad and autocast."""
    import numpy as np

    if not texts:
        return np.zeros((0, int(model.config.hidden_size)), np.float32)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for lo in range(0, len(texts), batch):
        rows = [tokenizer(t, add_special_tokens=False, truncation=True,
                          max_length=max_length)["input_ids"] or [pad]
                for t in texts[lo:lo + batch]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                  logits_to_keep=1).hidden_states[-1].float()
        m = mask.unsqueeze(-1).float()
        out.append(((h * m).sum(1) / m.sum(1)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (cfg_eos, tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    if not ids:
        raise ConfigError("the model has no EOS token id; sampling would never stop early")
    return ids
