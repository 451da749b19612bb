"""`ray-conductor retrain` (`run_retrain`): join the Ray cluster the Serve app runs on and
run the online loop against it: here, round after round (`once=true`: one round), or as the
`OnlineRetrainer` actor beside the app (`mode=actor`, returns at once)."""

from __future__ import annotations

import json
import logging
from typing import Any

from ray_conductor.errors import ConfigError
from ray_conductor.online.config import RetrainConfig, as_retrain_config

log = logging.getLogger(__name__)


def build(cfg: RetrainConfig) -> Any:
    """The loop over the running app, with the lite tier's trainer."""
    from ray_conductor.online.loop import Retrainer

    return Retrainer.over_app(cfg)


def describe(d: dict[str, Any]) -> str:
    """One line per decision, for people."""
    kind, model = d["kind"], d["model"]
    if kind == "evaluated":
        t = d["test"]
        line = (f"evaluated {model} {d['version']}: candidate {d['candidate_mean']:.4f} vs "
                f"serving {d['serving_mean']:.4f} on {d['n']} held-back questions, gain "
                f"{t['mean']:+.4f} (lower bound {t['lcb']:+.4f}, p={t['p_value']:.3g})"
                if d["n"] else f"evaluated {model} {d['version']}: no held-back question "
                               "scored within the call budget")
        if "anchors" in d:
            a = d["anchors"]
            line += (f"; {a['n']} held-back anchors: gain {a['test']['mean']:+.4f} (lower "
                     f"bound {a['test']['lcb']:+.4f})")
        return line
    if kind == "trained":
        t = d["training"]
        return (f"trained {model} from {d['version']} on {d['train_rows']} questions "
                f"({d['replayed']} replayed, {d.get('anchor_rows', 0)} anchors): reward "
                f"{t['start_reward']:.4f} -> {t['best_reward']:.4f} in {t['wall_s']:.0f}s; "
                f"{d.get('extra_calls', 0)} extra calls (${d.get('extra_dollars', 0.0):.4g})")
    if kind == "kept" and d.get("test_kind") == "paired":
        return (f"kept {model} {d['version']}: live reward {d['live_mean']:.4f} vs "
                f"{d['previous_replayed_mean']:.4f} for {d['previous']} replayed on the same "
                f"{d['n']} questions (p={d['test']['p_value']:.3g})")
    extra = d.get("reason") or ""
    return f"{kind} {model} {d.get('version', '')}{': ' + extra if extra else ''}"


def run_retrain(cfg: Any) -> dict[str, Any]:
    import ray

    from ray_conductor.online.loop import place_outputs
    from ray_conductor.runtime import init_ray

    cfg = as_retrain_config(cfg)
    if cfg.ray.address in ("local", "", None) and not ray.is_initialized():
        raise ConfigError("ray.address=local would start a new Ray cluster, where no Serve app "
                          "runs to retrain: join the app's cluster (ray.address=auto, or "
                          "ray://HOST:PORT)")
    place_outputs(cfg)
    try:
        init_ray(cfg.ray, quiet=True)
    except ConnectionError as e:
        raise ConfigError(f"cannot reach the Ray cluster the app runs on (ray.address="
                          f"{cfg.ray.address}): {str(e).splitlines()[0][:160]}; start the app "
                          "with `ray-conductor serve`, or name its cluster with ray.address=...") \
            from None
    from ray_conductor.online.serving import ServeApp

    ServeApp(cfg.app).settings()  # no app to retrain, in any mode: a one-line ConfigError
    if cfg.mode == "actor":
        from ray_conductor.online.actor import start_retrainer

        name = start_retrainer(cfg)
        print(f"ray-conductor retrain: the online loop runs beside {cfg.app!r} as actor "
              f"{name!r} (namespace {cfg.ray.namespace!r}); decisions go to "
              f"{cfg.state_dir}/decisions.jsonl", flush=True)
        return {"actor": name}
    import torch

    torch.set_num_threads(cfg.training.torch_threads)
    loop = build(cfg)
    if cfg.once:
        made = loop.round(force=cfg.force)
        for d in made:
            print(describe(d), flush=True)
        if not made:
            print(f"no decision this round ({loop.state.rounds} rounds so far); state in "
                  f"{cfg.state_dir}", flush=True)
        return {"decisions": made}
    print(f"ray-conductor retrain: watching {cfg.app!r}/{cfg.model!r} every {cfg.poll_s:g}s; "
          f"decisions go to {cfg.state_dir}/decisions.jsonl (Ctrl-C stops)", flush=True)
    before = len(loop.decisions.read())
    try:
        loop.run()
    except KeyboardInterrupt:
        print("stopping the online loop", flush=True)
    made = loop.decisions.read()[before:]
    log.info("online loop stopped: %s", json.dumps([d["kind"] for d in made]))
    return {"decisions": made}
