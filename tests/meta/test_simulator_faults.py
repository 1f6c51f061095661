"""A diverging simulation ends its own episode (flagged unstable); the batch goes on."""

import numpy as np
import torch

import envs
from agents.policies import GaussianMLPPolicy
from envs.vector import SyncTaskVectorEnv
from meta.adaptation import AdvantageSettings, collect_meta_batch
from meta.maml import InnerLoop


def test_unstable_environment_is_cut_short_and_flagged_not_truncated_while_the_batch_continues():
    venv = SyncTaskVectorEnv("HopperRandParams", num_envs=4, horizon=20)
    broken = venv._envs[1]
    real_step = broken.step
    calls = {"n": 0}

    def diverging_step(action):
        calls["n"] += 1
        if calls["n"] == 5:  # blow the state up mid-episode
            broken.data.qvel[:] = 1e9
        return real_step(action)

    broken.step = diverging_step
    tasks = envs.make("HopperRandParams").unwrapped.sample_tasks(2, np.random.default_rng(0))
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(11, 3, (8,), init_std=0.1)
    batch, metrics = collect_meta_batch(venv, policy, dict(policy.named_parameters()), tasks,
                                        InnerLoop((0.1,), False, "loop"), 2, AdvantageSettings(),
                                        seeds=[1, 2])
    pre = batch.train[0]
    lengths = pre.mask.sum(1)  # [N, E]
    # a diverged episode did not time out: it is never bootstrapped as a truncated one
    assert bool(pre.unstable[0, 1]) and not bool(pre.truncated[0, 1])
    assert lengths[0, 1] == 5
    assert not pre.unstable[0, 0] and not pre.unstable[1].any()
    assert metrics["unstable_episodes"] == 1.0
    for episodes in (pre, batch.valid):
        assert torch.isfinite(episodes.observations).all() and torch.isfinite(episodes.rewards).all()
        assert torch.isfinite(episodes.advantages).all()
