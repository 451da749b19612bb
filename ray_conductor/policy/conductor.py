"""The `Conductor`: question + worker pool -> a `Workflow`, via the policy LM.

It builds the prompt, samples, parses, re-samples a malformed plan up to `max_resamples`
times and then falls back to a configured default plan. It never raises: engine failures
and unparsable text become a fallback plan, with the reasons in `PlanResult.errors`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ray_conductor.errors import ConductorError, ConfigError, EngineError, WorkflowError
from ray_conductor.policy.engine import GenerationEngine, Sample
from ray_conductor.verify.answers import comparable
from ray_conductor.workers.base import Message, WorkerInfo
from ray_conductor.workflow import Workflow, build_prompt, parse

log = logging.getLogger(__name__)


@dataclass
class ConductorConfig:
    """The policy's settings; an OmegaConf structured config (plain data)."""

    model: str = field(default="smollm2", metadata={  # or a local HF directory
        "help": "smollm2, tiny-smollm2, or a local HF directory"})
    engine: str = field(default="hf", metadata={  # hf: CPU/CUDA, vllm: GPU, scripted: fixed
        "help": "generation engine", "choices": ("hf", "vllm", "scripted")})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or cuda:N"})
    dtype: str = field(default="float32", metadata={
        "help": "weights' dtype", "choices": ("float32", "bfloat16", "float16")})
    autocast: Optional[str] = field(default=None, metadata={  # faster on AMX CPUs and GPUs
        "help": "run forward passes under autocast", "choices": ("bfloat16", "float16")})
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass", "min": 1})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens per plan", "min": 1})
    temperature: float = field(default=0.7, metadata={  # 0 for greedy plans at evaluation
        "help": "sampling temperature (0: greedy)", "min": 0})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling", "gt": 0, "max": 1})
    resample_temperature: float = field(default=0.7, metadata={  # greedy repeats itself
        "help": "temperature of re-samples when temperature is 0", "gt": 0})
    # Temperature-0 planning. 1: token-by-token argmax. n > 1: draw n plans from the policy
    # (temperature 1) and keep the parsable one with the highest log-prob, a closer
    # approximation of the most likely plan when a choice spans several tokens: a
    # digit-splitting tokenizer (SmolLM2, Qwen2.5) writes worker ids 10, 11, ... as "1" plus
    # a digit, so the argmax of the first token favours ids starting with 1 whatever each
    # id's own probability.
    greedy_samples: int = field(default=1, metadata={
        "help": "plans drawn at temperature 0, the most likely kept", "min": 1})
    seed: Optional[int] = field(default=None, metadata={"help": "sampling seed"})
    max_steps: int = field(default=5, metadata={"help": "steps a workflow may have", "min": 1})
    max_resamples: int = field(default=5, metadata={  # at most 1 + max_resamples per plan
        "help": "re-samples of an unparsable plan before the fallback", "min": 0})
    few_shot: bool = field(default=True, metadata={"help": "examples in the prompt"})
    max_question_chars: Optional[int] = field(default=None, metadata={
        "help": "the conductor's view of long questions (null: whole)", "min": 1})
    fallback_worker: str = field(default="0", metadata={  # used when no sample parses
        "help": "worker id or name of the fallback plan", "nonempty": True})
    fallback_subtask: str = field(default="Answer the question.", metadata={
        "help": "subtask of the fallback plan"})
    recursion_depth: int = field(default=1, metadata={  # 0 disables it
        "help": "how deep the conductor may call itself", "min": 0})
    programs: bool = field(default=False, metadata={  # and teach conditional steps
        "help": "offer the program workers (vote)"})
    worker_ids: str = field(default="index", metadata={  # name: the conductor writes names
        "help": "how plans name workers", "choices": ("index", "name")})
    self_name: str = field(default="conductor", metadata={
        "help": "the conductor's worker name", "nonempty": True})
    # Structure-constrained decoding: the engine writes only text in the plan language
    # (`policy.plan_grammar`), so every plan parses, with as many subtasks and access
    # entries as steps. The transformers engine only; no reasoning before the lists.
    constrain: bool = field(default=False, metadata={
        "help": "decode only well-formed plans (engine=hf)"})
    max_subtask_chars: Optional[int] = field(default=None, metadata={  # null: the parser's
        "help": "longest subtask a constrained plan may write", "min": 1})
    # A `ProgramHead` directory (`ray-conductor fit-head`): fresh plans are the program a
    # read-out of the LM's own hidden state scores best (predicted correctness minus its
    # price in reward), written in the plan language; no text is sampled for them. The
    # transformers engine only; not for GRPO rollouts, which train the written plans.
    head: Optional[str] = field(default=None, metadata={
        "help": "program head directory: plans chosen from the LM's hidden state (null: "
                "the LM writes them)"})
    gpu_memory_utilization: float = field(default=0.5, metadata={  # vLLM only
        "help": "vLLM's share of GPU memory", "gt": 0, "max": 1})


@dataclass
class PlanResult:
    """The plan for one question, and everything tried on the way (for the learner)."""

    question: str
    workflow: Workflow
    prompt: list[Message] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # raw conductor text per attempt
    samples: list[Sample] = field(default_factory=list)  # the engine's sample per attempt
    n_attempts: int = 0
    fell_back: bool = False
    errors: list[str] = field(default_factory=list)  # WorkflowError codes, or "engine_error"
    workers: list[str] = field(default_factory=list)  # names in id order, as offered

    @property
    def sample(self) -> Sample | None:
        """The sample the workflow was parsed from; None after a fallback."""
        return None if self.fell_back or not self.samples else self.samples[-1]


def build_engine(cfg: ConductorConfig) -> GenerationEngine:
    """The engine `cfg` names; vLLM is imported only when asked for."""
    if cfg.engine == "hf":
        from ray_conductor.policy.hf_engine import TransformersEngine

        return TransformersEngine(cfg.model, device=cfg.device, dtype=cfg.dtype,
                                  batch_size=cfg.batch_size, autocast=cfg.autocast)
    if cfg.engine == "vllm":
        if cfg.constrain:
            raise ConfigError("conductor.constrain=true needs conductor.engine=hf; the vLLM "
                              "engine does not constrain its plans yet: set it to false")
        from ray_conductor.policy.vllm_engine import VLLMEngine

        return VLLMEngine(cfg.model, dtype=cfg.dtype,
                          gpu_memory_utilization=cfg.gpu_memory_utilization)
    if cfg.engine == "scripted":
        from ray_conductor.policy.scripted_engine import ScriptedEngine

        return ScriptedEngine.from_file(cfg.model)
    raise ConfigError(f"policy engine {cfg.engine!r} is not 'hf', 'vllm' or 'scripted'")


def offered_workers(workers: Sequence[WorkerInfo], cfg: ConductorConfig) -> list[WorkerInfo]:
    """The workers the prompt lists: the conductor itself only while recursion is on, the
    program workers (vote) after the pool's when `cfg.programs`."""
    from ray_conductor.workflow.programs import is_program, with_programs

    out = [w for w in workers if cfg.recursion_depth > 0 or w.name != cfg.self_name]
    if cfg.programs:
        return with_programs([w for w in out if not is_program(w.name)])
    return out


def conductor_prompt(question: str, offered: Sequence[WorkerInfo], cfg: ConductorConfig, *,
                     previous: str | None = None) -> list[Message]:
    """The chat prompt for one question over the offered workers (no engine needed). The
    conductor may see only the first `max_question_chars` of a long question (routing needs
    the topic, not every option); the workers always get the whole question."""
    cap = cfg.max_question_chars
    if cap and len(question) > cap:
        question = question[:cap] + " [...]"
    return build_prompt(question, offered, max_steps=cfg.max_steps, few_shot=cfg.few_shot,
                        previous=previous, self_name=cfg.self_name, ids=cfg.worker_ids)


class Conductor:
    """Writes workflows with a `GenerationEngine`. Thread-safe: engine calls are serialised."""

    def __init__(self, engine: GenerationEngine, cfg: ConductorConfig | None = None):
        self.engine = engine
        self.cfg = cfg or ConductorConfig()
        self._lock = threading.Lock()
        self.head = None
        if self.cfg.head:
            from ray_conductor.policy.program_head import ProgramHead

            if not callable(getattr(engine, "embed", None)):
                raise ConfigError(f"conductor.head needs an engine that reads hidden states "
                                  f"(engine=hf), not {type(engine).__name__}: set "
                                  "conductor.engine=hf or conductor.head=null")
            if not self.cfg.programs:
                raise ConfigError("conductor.head writes cascades that end in a vote: set "
                                  "conductor.programs=true")
            self.head = ProgramHead.load(self.cfg.head)

    def offered(self, workers: Sequence[WorkerInfo]) -> list[WorkerInfo]:
        return offered_workers(workers, self.cfg)

    def prompt(self, question: str, offered: Sequence[WorkerInfo], *,
               previous: str | None = None) -> list[Message]:
        return conductor_prompt(question, offered, self.cfg, previous=previous)

    def fallback(self, workers: Sequence[WorkerInfo], previous: str | None = None) -> Workflow:
        """The default plan. Inside a recursive call it is the empty plan (keep the answer)."""
        from ray_conductor.workflow.programs import is_program

        if previous is not None:
            return Workflow(())
        names = [w.name for w in workers if w.name != self.cfg.self_name
                 and not is_program(w.name)]
        if not names:
            return Workflow(())
        want = str(self.cfg.fallback_worker).strip()
        if want in names:
            worker = want
        elif want.isdigit() and int(want) < len(workers) and workers[int(want)].name in names:
            worker = workers[int(want)].name
        else:
            worker = names[0]
        return Workflow.single(worker, self.cfg.fallback_subtask)

    def plan(self, question: str, workers: Sequence[WorkerInfo], *, previous: str | None = None,
             temperature: float | None = None, seed: int | None = None) -> PlanResult:
        """One plan for `question`; see `plan_many`."""
        return self.plan_many([question], workers, previous=[previous], temperature=temperature,
                              seed=seed)[0]

    def plan_many(
        self,
        questions: Sequence[str],
        workers: Sequence[WorkerInfo],
        *,
        previous: Sequence[str | None] | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        strict: bool = False,
        formats: Sequence[str | None] | None = None,
    ) -> list[PlanResult]:
        """Plans for many questions: the first attempt of all of them is one engine call, and
        each re-sampling round re-asks only the ones still malformed. Repeat a question to get
        a group of independent plans (GRPO). With `previous[i]` set (a recursive call), three
        empty lists are a valid plan and the fallback is the empty plan.

        Never raises on a malformed plan. A failing engine falls back to the default plan
        (serving keeps answering), unless `strict` (rollouts): then `EngineError`, because a
        batch the engine did not sample has nothing to learn from.

        `formats[i]`: question i's answer format where the caller knows it (None: free text).
        A program head then offers a cascade only where answers can be compared; without
        `formats` every question is taken to have comparable answers.
        """
        cfg = self.cfg
        if previous is not None and len(previous) != len(questions):
            raise ConfigError(f"plan_many got {len(questions)} questions but {len(previous)} "
                              "previous entries; pass one per question (None for a fresh plan)")
        if formats is not None and len(formats) != len(questions):
            raise ConfigError(f"plan_many got {len(questions)} questions but {len(formats)} "
                              "answer formats; pass one per question (None for free text)")
        offered = self.offered(workers)
        names = [w.name for w in offered]
        prevs = list(previous) if previous is not None else [None] * len(questions)
        results = [
            PlanResult(q, Workflow(()), workers=names,
                       prompt=self.prompt(q, offered, previous=p) if names else [])
            for q, p in zip(questions, prevs)
        ]
        temp = cfg.temperature if temperature is None else temperature
        seed = cfg.seed if seed is None else seed
        pending = list(range(len(results)))
        rounds = 1 + max(cfg.max_resamples, 0) if names else 0
        if not names:
            if strict:
                raise ConfigError("the conductor has no workers to plan over")
            for r in results:
                r.errors.append("no_workers")
        if self.head is not None and names:
            pending = self._head_plans(results, prevs, names, strict, formats)
        best_of = max(cfg.greedy_samples, 1) if temp == 0 else 1
        grammars = self._grammars(names, prevs) if cfg.constrain and names else None
        for rnd in range(rounds):
            if not pending:
                break
            checks = None if grammars is None else [grammars[i] for i in pending]
            if rnd == 0 and best_of > 1:  # most likely of n: deterministic unless seeded
                drawn = self._sample([results[i].prompt for i in pending], 1.0,
                                     0 if seed is None else seed, n=best_of, strict=strict,
                                     checks=checks)
                if drawn is None:
                    for i in pending:
                        results[i].errors.append("engine_error")
                    break
                pending = [i for i, group in zip(pending, drawn)
                           if not self._accept_likeliest(results[i], group, names,
                                                         allow_empty=prevs[i] is not None)]
                continue
            round_temp = temp if rnd == 0 or temp > 0 else cfg.resample_temperature
            samples = self._sample([results[i].prompt for i in pending], round_temp,
                                   None if seed is None else seed + rnd, strict=strict,
                                   checks=checks)
            if samples is None:  # the engine failed: no point in asking it again
                for i in pending:
                    results[i].errors.append("engine_error")
                break
            pending = [i for i, s in zip(pending, samples)
                       if not self._accept(results[i], s[0], names,
                                           allow_empty=prevs[i] is not None)]
        for i in pending:
            results[i].fell_back = True
            results[i].workflow = self.fallback(workers, prevs[i])
        return results

    def _head_plans(self, results: list[PlanResult], prevs: list[str | None], names: list[str],
                    strict: bool, formats: Sequence[str | None] | None = None) -> list[int]:
        """Fresh plans chosen by the program head; returns the rows left to the LM (recursive
        calls, and every row if the head cannot choose: the engine failed, or no program's
        workers are all offered). Where `formats` says a question's answers cannot be
        compared, the head chooses a single worker (a vote there would answer nothing)."""
        head = self.head
        assert head is not None
        if strict:
            raise ConfigError("conductor.head chooses plans without sampling text, and GRPO "
                              "rollouts train the written plans: set conductor.head=null")
        fresh = [i for i, p in enumerate(prevs) if p is None]
        if not fresh:
            return list(range(len(results)))
        try:
            with self._lock:
                x = self.engine.embed(  # type: ignore[attr-defined]
                    [results[i].question[:head.question_chars] for i in fresh])
            cascades = None if formats is None else [comparable(formats[i]) for i in fresh]
            picks = head.choose(x, names, cascades)
        except Exception as e:  # serving never raises from planning: the LM writes them
            log.warning("program head failed, the LM writes these plans: %s: %s",
                        type(e).__name__, e)
            return list(range(len(results)))
        chosen = set()
        for i, k in zip(fresh, picks):
            if k >= 0:
                results[i].workflow = head.workflow(int(k))
                chosen.add(i)
        return [i for i in range(len(results)) if i not in chosen]

    def _grammars(self, names: list[str], prevs: list[str | None]) -> list:
        """One plan checker per question (a recursive call may also write the empty plan)."""
        from ray_conductor.policy.plan_grammar import PlanGrammar

        cfg = self.cfg
        cap = {"max_subtask_chars": cfg.max_subtask_chars} if cfg.max_subtask_chars else {}
        free, empty = (PlanGrammar(names, ids=cfg.worker_ids, max_steps=cfg.max_steps,
                                   allow_empty=a, **cap) for a in (False, True))
        return [free if p is None else empty for p in prevs]

    def _sample(self, prompts: list[list[Message]], temperature: float,
                seed: int | None, n: int = 1, strict: bool = False,
                checks: list | None = None) -> list[list[Sample]] | None:
        try:
            extra = {} if checks is None else {"constraints": checks}
            with self._lock:
                out = self.engine.generate(prompts, n=n, temperature=temperature,
                                           max_tokens=self.cfg.max_new_tokens,
                                           top_p=self.cfg.top_p, seed=seed, **extra)
            if len(out) != len(prompts) or any(len(o) != n for o in out):
                raise ConductorError(f"engine returned {len(out)} results for {len(prompts)} "
                                     f"prompts (expected {n} sample(s) each)")
            return [list(o) for o in out]
        except Exception as e:  # serving never raises from planning: it gets the fallback plan
            if strict:
                first = (str(e).strip().splitlines() or [""])[0][:300]
                raise EngineError(f"the conductor's generation engine failed: "
                                  f"{type(e).__name__}: {first}") from e
            log.warning("conductor engine failed, falling back to the default plan: %s: %s",
                        type(e).__name__, e)
            return None

    def _accept_likeliest(self, result: PlanResult, group: list[Sample], names: list[str], *,
                          allow_empty: bool) -> bool:
        """One attempt that drew several samples: keep the parsable one with the highest
        log-prob. The errors of the others are recorded only when none parses."""
        result.n_attempts += 1
        best, errors = None, []
        for sample in group:
            result.texts.append(sample.text)
            try:
                wf = parse(sample.text, names, max_steps=self.cfg.max_steps,
                           allow_empty=allow_empty)
            except WorkflowError as e:
                errors.append(e.code)
                continue
            except Exception as e:  # a parser bug must not break planning; record it
                errors.append(type(e).__name__)
                continue
            score = sum(sample.logprobs)
            if best is None or score > best[0]:
                best = (score, sample, wf)
        if best is None:
            result.samples.append(group[0])
            result.errors.extend(errors)
            return False
        result.samples.append(best[1])
        result.workflow = best[2]
        return True

    def _accept(self, result: PlanResult, sample: Sample, names: list[str], *,
                allow_empty: bool) -> bool:
        result.n_attempts += 1
        result.samples.append(sample)
        result.texts.append(sample.text)
        try:
            result.workflow = parse(sample.text, names, max_steps=self.cfg.max_steps,
                                    allow_empty=allow_empty)
            return True
        except WorkflowError as e:
            result.errors.append(e.code)
        except Exception as e:  # a parser bug must not break planning; record it
            result.errors.append(type(e).__name__)
        return False
