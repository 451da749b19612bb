"""The training loop's pieces: question sampling, run directories and checkpoints, rollouts
scored with the paper's reward, and a whole (tiny) run on the shared Ray cluster."""

import json

import pytest

from ray_conductor.config import load
from ray_conductor.errors import ConfigError
from ray_conductor.policy.conductor import ConductorConfig
from ray_conductor.policy.engine import Sample
from ray_conductor.rl.checkpoint import RunDir
from ray_conductor.rl.rewards import RewardConfig
from ray_conductor.data.replay import Query
from ray_conductor.rl.rollout import RolloutWorker
from ray_conductor.rl.trainer import TrainConfig, pick_questions, rollout_metrics, train
from ray_conductor.workers.base import Completion, WorkerInfo


def test_question_sampling_is_a_function_of_seed_and_iteration():
    qs = list(range(100))
    assert pick_questions(qs, 3, 4, seed=0) == pick_questions(qs, 3, 4, seed=0)
    assert pick_questions(qs, 3, 4, seed=0) != pick_questions(qs, 4, 4, seed=0)
    assert len(pick_questions(qs[:2], 0, 4, seed=0)) == 2


def test_checkpoints_are_invisible_until_committed_and_pruned(tmp_path):
    run = RunDir(tmp_path)
    assert run.latest() is None
    tmp = run.begin_checkpoint(0)
    (tmp / "learner.pt").write_text("x")
    assert run.latest() is None  # a job killed here resumes from nothing, not a half file
    for it in range(4):
        t = run.begin_checkpoint(it)
        run.commit_checkpoint(t, it, {"iteration": it, "weights_version": it + 1}, keep=2)
    assert [p.name for p in run.checkpoints()] == ["iter_000002", "iter_000003"]
    path, state = run.latest()
    assert path.name == "iter_000003" and state == {"iteration": 3, "weights_version": 4}


def test_metrics_log_and_truncate(tmp_path):
    run = RunDir(tmp_path)
    for it in range(5):
        run.log(it, {"reward_mean": it / 10})
        run.log_samples(it, [{"text": "model_id = ['a']", "reward": 0.5}] * 2)
    run.truncate_metrics(3)
    assert [r["iteration"] for r in run.metrics()] == [0, 1, 2]
    assert [r["iteration"] for r in run.samples()] == [0, 0, 1, 1, 2, 2]
    assert run.samples()[0] == {"iteration": 0, "text": "model_id = ['a']", "reward": 0.5}
    run.close()
    assert (tmp_path / "tb").exists()


WORKERS = [WorkerInfo("good"), WorkerInfo("bad")]


class ScriptedEngine:
    """Returns the given completions in order, as an engine would."""

    tokenizer = None

    def __init__(self, texts):
        self.texts = list(texts)

    def generate(self, prompts, n, temperature, max_tokens, top_p=1.0, seed=None):
        out = []
        for _ in prompts:
            t = self.texts.pop(0)
            out.append([Sample([1, 2], [3, 4, 5], t, [-0.1, -0.2, -0.3], "stop")])
        return out

    def load_state_dict(self, sd):
        self.loaded = sd


class FakePool:
    def workers(self):
        return WORKERS

    async def complete(self, worker, messages, metadata=None, **kw):
        return Completion(worker, text=f"answer from {worker}", cost=0.5 if worker == "good" else 0.1)


def plan(worker_id):
    return f"model_id = [{worker_id}]\nsubtasks = ['solve']\naccess_list = [[]]"


async def test_rollout_scores_each_sample_with_the_papers_reward():
    engine = ScriptedEngine([plan(0), plan(1), "I would ask someone.", plan(7)])
    w = RolloutWorker(ConductorConfig(max_resamples=0, recursion_depth=0), RewardConfig(),
                      FakePool(), judge=lambda qid, text: text == "answer from good",
                      engine=engine)
    trajs = await w.rollout([Query("q1", "What?"), Query("q2", "Why?")], group_size=2,
                            iteration=5)
    assert [t.reward for t in trajs] == [1.0, 0.5, 0.0, 0.0]
    assert [t.parsed for t in trajs] == [True, True, False, False]
    assert [t.group_id for t in trajs] == ["5:q1", "5:q1", "5:q2", "5:q2"]
    assert trajs[0].completion_ids == [3, 4, 5] and trajs[0].old_logprobs == [-0.1, -0.2, -0.3]
    assert trajs[0].cost == 0.5 and trajs[0].calls == 1 and trajs[2].calls == 0
    m = rollout_metrics(trajs)
    assert m["reward_mean"] == pytest.approx(0.375) and m["parse_rate"] == 0.5


def test_a_used_run_dir_needs_resume_or_overwrite(tmp_path):
    RunDir(tmp_path).log(0, {"reward_mean": 0.0})
    cfg = load(TrainConfig, [f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="resume=true"):
        train(cfg)


def test_bad_group_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="group_size"):
        train(load(TrainConfig, [f"run_dir={tmp_path}", "group_size=1"]))


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_training_run_through_the_worker_proxies(ray_cluster, tmp_path):
    cfg = load(TrainConfig, ["config=train_cpu", "model=tiny-smollm2", "iterations=2",
                             "questions_per_iter=2", "group_size=2", f"run_dir={tmp_path}",
                             "checkpoint_every=1", "eval_limit=8", "eval_baselines=[random]",
                             "progress=false", "conductor.max_new_tokens=16",
                             "warmup_steps=1", "warmup_batch=2", "warmup_lr=1e-3",
                             "graph.rollout.torch_threads=1", "graph.learner.torch_threads=1",
                             "graph.workers_per_proxy=4", "ray.namespace=test_trainer_run",
                             "eval_at_start=true"])
    result = train(cfg)
    rows = result["metrics"]
    assert [r["iteration"] for r in rows] == [-1, 0, 1]  # the format warm-up, then GRPO
    assert rows[0]["warmup"] == 1 and rows[0]["learner/sequences"] == 2
    assert rows[0]["learner/lr"] == 1e-3  # the warm-up's own rate ...
    assert rows[1]["learner/lr"] == rows[2]["learner/lr"] == cfg.learner.lr  # ... then GRPO's
    rows = rows[1:]
    assert rows[0]["trajectories"] == 4 and rows[0]["learner/sequences"] == 4
    assert [p.name for p in RunDir(tmp_path).checkpoints()] == ["iter_000000", "iter_000001"]
    assert (tmp_path / "checkpoints" / "iter_000001" / "model" / "config.json").exists()
    report = json.loads((tmp_path / "eval_trained.json").read_text())
    assert set(report["policies"]) == {"conductor:trained", "random"}
    assert report["policies"]["conductor:trained"]["n"] == 8
    untrained = json.loads((tmp_path / "eval_untrained.json").read_text())
    assert result["eval_start"] == untrained
    # every checkpoint is published; the last one is promoted, with its training settings
    from ray_conductor.policy.registry import PolicyRegistry

    reg = PolicyRegistry(tmp_path / "registry")
    assert [v.version for v in reg.versions()] == [1, 2] and reg.promoted().version == 2
    assert reg.promoted().meta["iteration"] == 1
    assert reg.promoted().meta["config"]["conductor"]["max_new_tokens"] == 16

    # Resumed, the run does not judge the untrained conductor again but still reports it.
    cfg.iterations, cfg.resume, cfg.eval_at_end = 3, True, False
    resumed = train(cfg)
    assert resumed["start_iteration"] == 2 and resumed["eval_start"] == untrained
    from ray_conductor.graph import stop_worker_proxies

    assert len(stop_worker_proxies("test_trainer_run")) == 3  # 12 workers, 4 per process


def test_warmup_demonstrations_are_valid_plans_over_the_offered_workers():
    from ray_conductor.workflow import parse

    cfg = ConductorConfig(model="tiny-smollm2", max_resamples=0, recursion_depth=0)
    w = RolloutWorker(cfg, RewardConfig(), FakePool(), judge=lambda q, t: False)
    demos = w.demonstrations([Query(f"q{i}", f"Question {i}?") for i in range(12)], seed=0)
    tok = w.conductor.engine.tokenizer
    seen = set()
    for d in demos:
        assert d.advantage == 1.0 and d.old_logprobs is None and d.completion_ids[-1] == tok.eos_token_id
        wf = parse(tok.decode(d.completion_ids[:-1]), [x.name for x in WORKERS])
        seen.update(wf.workers)
        assert tok.decode(d.prompt_ids).count("Question") >= 1
    assert seen == {"good", "bad"}  # uniform over workers: no preference is taught


def test_the_conductor_sees_a_truncated_question_but_workers_get_it_whole():
    from ray_conductor.policy.conductor import Conductor

    c = Conductor(ScriptedEngine([]), ConductorConfig(max_question_chars=20, recursion_depth=0))
    long_q = "Which of these is a prime number? " + "Options: A. 4 B. 6 C. 7 " * 20
    user = c.prompt(long_q, WORKERS)[1]["content"]
    assert user.endswith("Question: Which of these is a  [...]") and "Options" not in user
    full = Conductor(ScriptedEngine([]), ConductorConfig(recursion_depth=0)).prompt(long_q, WORKERS)
    assert long_q in full[1]["content"]


def test_rollout_metrics_report_the_share_of_each_final_worker():
    from ray_conductor.rl.trainer import rollout_metrics
    from ray_conductor.rl.types import Trajectory

    def t(worker, reward):
        return Trajectory([1], [2], None, reward, parsed=worker is not None,
                          info={"final_worker": worker})

    m = rollout_metrics([t("a", 1.0), t("a", 0.5), t("b", 1.0), t(None, 0.0)])
    assert m["workers/a"] == pytest.approx(2 / 3) and m["workers/b"] == pytest.approx(1 / 3)
    assert m["parse_rate"] == 0.75 and m["reward_mean"] == pytest.approx(0.625)
