"""Behaviour cloning: start the PPO policy from a teacher's moves (the supervised selector's
chosen program per train question) instead of from uniform over legal actions.

Demonstrations are the teacher's episodes replayed through `Episode` and `observe`, so the
cloned net sees exactly what it will see under PPO; the value head learns the teacher's
returns so PPO's first advantages are not noise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ray_conductor.lite.env import observe
from ray_conductor.lite.episode import Episode
from ray_conductor.lite.net import LiteNet
from ray_conductor.lite.programs import Program
from ray_conductor.lite.table import NO_ANSWER, LiteTable


def demonstrations(table: LiteTable, programs: Sequence[Program], choice: np.ndarray, *,
                   max_calls: int, cost_scale: float, cost_penalty: float
                   ) -> dict[str, np.ndarray]:
    """obs, mask, action and return-to-go for every step of every row's chosen program."""
    obs, masks, acts, rets = [], [], [], []
    for i, k in enumerate(choice):
        ep, prog, rewards = Episode(table.strength, max_calls, table.comparable), programs[k], []
        while True:
            o = observe(table.features[i], ep, cost_scale)
            a = prog.act(ep)
            obs.append(o["observations"])
            masks.append(o["action_mask"])
            acts.append(a)
            if a < ep.n_workers:
                code = int(table.answers[i, a])
                ep.record(a, None if code == NO_ANSWER else code, table.cost[i, a],
                          bool(table.responded[i, a]))
                rewards.append(-cost_penalty * table.cost[i, a])
                continue
            win = ep.final(a)
            rewards.append(float(win is not None and table.correct[i, ep.calls[win]]))
            break
        rets += list(np.cumsum(rewards[::-1])[::-1])
    return {"obs": np.stack(obs).astype(np.float32), "mask": np.stack(masks).astype(np.float32),
            "action": np.array(acts, dtype=np.int64), "ret": np.array(rets, dtype=np.float32)}


def behaviour_clone(net: LiteNet, demos: dict[str, np.ndarray], *, steps: int = 2000,
                    lr: float = 1e-3, batch_size: int = 512, seed: int = 0) -> dict[str, float]:
    """Fit the policy head to the teacher's actions (cross-entropy) and the value head to its
    returns (MSE) for `steps` minibatches (a count of updates, not of epochs, so a small
    teacher set is learnt as well as a big one); returns the final losses and how often the
    net's greedy action agrees with the teacher."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, m = torch.as_tensor(demos["obs"]), torch.as_tensor(demos["mask"])
    a, r = torch.as_tensor(demos["action"]), torch.as_tensor(demos["ret"])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ce, mse = nn.CrossEntropyLoss(), nn.MSELoss()
    net.train()
    done = 0
    while done < steps:
        for idx in torch.randperm(len(x), generator=gen).split(batch_size)[: steps - done]:
            opt.zero_grad()
            loss = ce(net.logits(x[idx], m[idx]), a[idx]) + mse(net.value(x[idx]), r[idx])
            loss.backward()
            opt.step()
            done += 1
    net.eval()
    with torch.no_grad():
        logits = net.logits(x, m)
        return {"bc_policy_loss": float(ce(logits, a)),
                "bc_value_loss": float(mse(net.value(x), r)),
                "bc_agreement": float((logits.argmax(-1) == a).float().mean())}
