"""The MAML core on a CUDA device gives the numbers it gives on the CPU.

Skipped cleanly on machines without a CUDA GPU (CI has none); run with `make gpu-check`.
"""

import numpy as np
import pytest
import torch

import envs
from agents.policies import GaussianMLPPolicy
from envs.vector import make_vector_env
from meta.adaptation import AdvantageSettings, collect_meta_batch
from meta.maml import InnerLoop
from meta.outer import make_outer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def one_iteration(device: str, algo: str) -> tuple[dict, dict]:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (16, 16)).to(device)
    tasks = envs.make("navigation-2d").unwrapped.sample_tasks(3, np.random.default_rng(0))
    venv = make_vector_env("navigation-2d", 3 * 4, device)
    inner = InnerLoop((0.1,), False, "batched")
    batch, metrics = collect_meta_batch(venv, policy, dict(policy.named_parameters()), tasks,
                                        inner, 4, AdvantageSettings(), seeds=[1, 2])
    metrics.update(make_outer(algo, policy, inner).step(batch))
    return metrics, {k: v.detach().cpu() for k, v in policy.state_dict().items()}


@pytest.mark.parametrize("algo", ["trpo", "ppo", "adam"])
def test_meta_iteration_runs_on_cuda_and_matches_shapes(algo):
    metrics, params = one_iteration("cuda", algo)
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(torch.isfinite(p).all() for p in params.values())


def test_adaptation_on_cuda_matches_cpu_given_the_same_episodes():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (16, 16))
    tasks = envs.make("navigation-2d").unwrapped.sample_tasks(3, np.random.default_rng(0))
    inner = InnerLoop((0.1,), False, "batched")
    venv = make_vector_env("navigation-2d", 12, "cpu")
    batch, _ = collect_meta_batch(venv, policy, dict(policy.named_parameters()), tasks, inner,
                                  4, AdvantageSettings(), seeds=[1, 2])
    from meta.maml import adapt

    cpu = adapt(policy, dict(policy.named_parameters()), batch.train, inner)
    policy_gpu = GaussianMLPPolicy(2, 2, (16, 16)).cuda()
    policy_gpu.load_state_dict(policy.state_dict())
    train_gpu = [ep.to("cuda") for ep in batch.train]
    gpu = adapt(policy_gpu, dict(policy_gpu.named_parameters()), train_gpu, inner)
    for k in cpu:
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-4, atol=1e-5)
