"""Synchronous, deterministic episode sampler for a meta-batch of tasks.

All environments of all tasks (or of one wave of tasks, below) advance together: one batched
policy forward per time step (``vmap`` over the tasks' own parameters), one batched simulator
step. No processes, no threads of our own, nothing that can hang.

A simulator smaller than the meta-batch runs it in *waves* of whole tasks, one after the other,
giving the same episodes: each environment keeps the reset seed and the action noise it would
have had in one wave. Fewer environments at a time keep the simulator's states closer to the
cores' caches (README, "Sampling in waves"). Bit for bit as long as the policy's matrix
products give each row the same bits whatever the number of rows: on the CPU checked (torch
2.13.0+cpu) they did from 16 rows on; :func:`tasks_per_wave` makes waves of at least
:data:`MIN_WAVE_ENVS`. Not checked on CUDA, where training samples at once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from agents.policies import LOG_MIN_STD, GaussianMLPPolicy, batched_dist_params, dist_params
from envs.vector import TaskVectorEnv, VectorStep
from meta.episodes import Episodes

if TYPE_CHECKING:
    from envs.mujoco_batch import EpisodeSteps, MujocoBatchEnv
    from envs.native import NativeMLP

#: ``sample_episodes``'s ways of sampling (``run.sampler``): ``"stepwise"``, one batched torch
#: forward and one batched simulator step per time step; ``"native"``, whole episodes in the
#: MuJoCo simulator's native loop with the policy evaluated there (:func:`_sample_native`).
SAMPLERS = ("stepwise", "native")


@contextlib.contextmanager
def _one_intra_op_thread(device: torch.device):
    """Run the per-step policy forwards on one CPU thread, then restore the setting.

    The forwards are tiny (a few hundred rows); with torch's default threads they only add
    synchronisation and fight the simulator's threads for the cores. Measured on the 2-core
    machine: HalfCheetahVel sampling at 26,064 env steps/s with one torch thread against 4,843
    with two (``adaptbed bench``). The outer update, which has large matrices, keeps the default.
    """
    previous = torch.get_num_threads()
    if device.type == "cpu" and previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


#: ``(t, dist params) -> actions``: how a wave draws the actions of its step ``t``.
SampleActions = Callable[[int, tuple[Tensor, ...]], Tensor]

#: Default largest wave, in envs (``run.max_wave_envs``): the presets' 800 envs run as 2 x 400.
MAX_WAVE_ENVS = 512
#: Fewest envs a wave may hold. With few rows the policy's matrix products may give a row other
#: bits than in a larger batch (seen on this CPU at 1-12 rows, never from 16 on), which would
#: change the episodes; 64 keeps a margin. (Speed asks for more: on HalfCheetah waves of 200
#: envs were no faster than 800 at once, README "Sampling in waves".)
MIN_WAVE_ENVS = 64


def tasks_per_wave(num_tasks: int, episodes_per_task: int, max_envs: int) -> int:
    """How many tasks to sample at a time.

    Args:
        num_tasks, episodes_per_task: the meta-batch, ``N x E`` envs.
        max_envs: the largest wave wanted, in envs; 0 (or below) for one wave.
    Returns:
        ``K``, a divisor of ``N``: the most tasks whose ``K x E`` envs fit ``max_envs`` (at least
        one task: a task's episodes stay in one wave, even above ``max_envs``). ``N``, one
        wave, when the meta-batch fits, or when such waves would hold fewer than
        ``max(MIN_WAVE_ENVS, max_envs / 2)`` envs (37 tasks x 20 episodes under 512 would be
        waves of one task, 20 envs: they run at once).
    Raises:
        ValueError: no task or no episode.
    """
    if num_tasks < 1 or episodes_per_task < 1:
        raise ValueError(f"need at least one task and one episode, got {num_tasks} tasks x "
                         f"{episodes_per_task} episodes")
    if max_envs <= 0 or num_tasks * episodes_per_task <= max_envs:
        return num_tasks
    fitting = [k for k in range(1, num_tasks + 1)
               if num_tasks % k == 0 and k * episodes_per_task <= max_envs]
    k = max(fitting, default=1)
    return num_tasks if k * episodes_per_task < max(MIN_WAVE_ENVS, max_envs / 2) else k


@torch.no_grad()
def sample_episodes(
    venv: TaskVectorEnv,
    policy: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence,
    episodes_per_task: int,
    seed: int,
    per_task_params: bool = False,
    sampler: str = "stepwise",
) -> Episodes:
    """Run ``episodes_per_task`` episodes of every task, up to ``venv.horizon`` steps.

    Args:
        venv: a batched simulator with ``num_envs == len(tasks) * episodes_per_task``, or with
            ``K * episodes_per_task`` envs for a ``K`` that divides ``len(tasks)``: the tasks
            then run ``K`` at a time, in waves, with the same episodes as in one wave where
            the policy's matrix products give each row the same bits whatever the number of
            rows (module docstring; :func:`tasks_per_wave` keeps waves large enough). Its
            ``reset`` must take ``offset``, and the policy must have ``draw_noise``.
        policy: the policy module (its own parameters are not used).
        params: the parameters to act with; with ``per_task_params`` every tensor has a leading
            task dim ``[N, ...]`` (adapted parameters), else they are shared by all tasks.
        tasks: the ``N`` tasks; environment ``n * E + e`` runs task ``n``.
        seed: seeds both the simulators' resets and the action noise.
        sampler: ``"stepwise"`` (default) or ``"native"``: whole episodes in the simulator's
            native loop, the policy's MLP evaluated there in float32 (README, "Whole episodes
            in the native loop"). The same environment, resets and noise; the policy's
            arithmetic is C's instead of torch's, so the episodes are not the stepwise ones
            bit for bit once a mean differs in its last bits. It needs a
            :class:`MujocoBatchEnv` with the native loop on the CPU and a float32
            :class:`GaussianMLPPolicy`.
    Returns:
        :class:`Episodes` with tensors ``[N, T, E, ...]`` on ``venv.device``, where ``T`` is
        the length of the longest episode.
    Raises:
        ValueError: the simulator's size fits neither one wave nor equal waves of whole tasks,
            or waves with a policy that cannot draw its noise beforehand, or an unknown
            ``sampler``, or ``"native"`` with what it cannot run.
    """
    n, e = len(tasks), episodes_per_task
    if venv.num_envs != n * e and (venv.num_envs % e or n % (venv.num_envs // e)):
        raise ValueError(f"the simulator holds {venv.num_envs} envs, need {n} tasks x {e} "
                         f"episodes, or a number of whole tasks x {e} episodes that divides "
                         f"the {n} tasks into equal waves")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {SAMPLERS}")
    if sampler == "native":
        return _sample_native(venv, policy, params, tasks, e, seed, per_task_params)
    with _one_intra_op_thread(torch.device(venv.device)):
        if venv.num_envs == n * e:
            generator = torch.Generator(device=venv.device).manual_seed(seed)
            wave = _run_wave(venv, policy, params, tasks, e, seed, per_task_params,
                             lambda t, dist: policy.sample(dist, generator))
            return _episodes(policy, [wave])
        return _run_waves(venv, policy, params, tasks, e, seed, per_task_params)


def _run_waves(venv: TaskVectorEnv, policy: nn.Module, params: Mapping[str, Tensor],
               tasks: Sequence, e: int, seed: int, per_task_params: bool) -> Episodes:
    """The meta-batch in waves of ``venv.num_envs // e`` tasks (see :func:`sample_episodes`)."""
    if not hasattr(policy, "draw_noise"):
        raise ValueError(f"sampling in waves needs the action noise drawn beforehand, which "
                         f"{type(policy).__name__} cannot do: give the simulator one env per "
                         f"episode of the meta-batch")
    n, k = len(tasks), venv.num_envs // e
    dtype = next(iter(params.values())).dtype
    generator = torch.Generator(device=venv.device).manual_seed(seed)
    # the draws one wave would make, one [N, E, A] per step, in the same order
    noise = _step_noise(policy, venv, n, e, generator, dtype)
    parts = [slice(first, first + k) for first in range(0, n, k)]

    def params_of(part: slice) -> Mapping[str, Tensor]:
        return {name: p[part] for name, p in params.items()} if per_task_params else params

    def sampler(part: slice) -> SampleActions:
        return lambda t, dist: policy.sample(dist, noise=noise[t][part])

    waves = [_run_wave(venv, policy, params_of(part), tasks[part], e, seed, per_task_params,
                       sampler(part), offset=part.start * e) for part in parts]
    horizon = max(len(wave.steps) for wave in waves)
    for wave, part in zip(waves, parts):
        _pad_frozen(wave, horizon, policy, params_of(part), per_task_params, sampler(part))
    return _episodes(policy, waves)


def _step_noise(policy: nn.Module, venv: TaskVectorEnv, n: int, e: int,
                generator: torch.Generator, dtype: torch.dtype) -> list[Tensor]:
    """The action noise one wave draws, one ``[N, E, A]`` per step of the horizon, in order."""
    return [policy.draw_noise((n, e, *venv.action_space.shape), generator, dtype, venv.device)
            for _ in range(venv.horizon)]


@dataclass
class _Wave:
    """One wave's episodes: per step ``(obs [K, E, D], actions [K, E, ...], rewards [K, E],
    running [K, E], dist params)``; the observations after the last step ``[K * E, D]``; the
    episodes' ends ``[K, E, ...]``."""

    steps: list
    obs: Tensor
    last_observations: Tensor
    truncated: Tensor
    unstable: Tensor


def _forward(policy: nn.Module, params: Mapping[str, Tensor], obs_ne: Tensor,
             per_task_params: bool) -> tuple[Tensor, ...]:
    """The dist params of ``obs [K, E, D]``, with per-task or shared ``params``."""
    if per_task_params:
        return batched_dist_params(policy, params, obs_ne)
    return dist_params(policy, params, obs_ne)


def _run_wave(venv: TaskVectorEnv, policy: nn.Module, params: Mapping[str, Tensor],
              tasks: Sequence, e: int, seed: int, per_task_params: bool,
              sample_actions: SampleActions, offset: int | None = None) -> _Wave:
    """Run one episode in each of the simulator's envs, until all have ended.

    ``sample_actions(t, dist)`` draws the actions of step ``t``; ``offset`` (waves) is the
    index of the wave's first env in the meta-batch, for the resets' seeds.
    """
    n = len(tasks)
    device = venv.device
    venv.set_tasks([task for task in tasks for _ in range(e)])
    obs = venv.reset(seed=seed) if offset is None else venv.reset(seed=seed, offset=offset)
    running = torch.ones(n * e, dtype=torch.bool, device=device)
    last_obs = obs.clone()
    truncated = torch.zeros_like(running)
    unstable = torch.zeros_like(running)
    steps: list[tuple[Tensor, ...]] = []
    dtype = next(iter(params.values())).dtype  # act in the policy's precision
    for t in range(venv.horizon):
        obs_ne = obs.reshape(n, e, -1).to(dtype)
        dist = _forward(policy, params, obs_ne, per_task_params)
        actions = sample_actions(t, dist)
        out = venv.step(actions.reshape(n * e, *actions.shape[2:]))
        steps.append((obs_ne, actions, out.rewards.reshape(n, e), running.reshape(n, e), dist))
        done = out.terminated | out.truncated
        last_obs = torch.where((running & done)[:, None], out.observations, last_obs)
        truncated |= running & out.truncated & ~out.unstable  # diverged: cut, not timed out
        unstable |= running & out.unstable
        running = running & ~done
        obs = out.observations
        if not running.any():
            break
    return _Wave(steps, obs, last_obs.reshape(n, e, -1), truncated.reshape(n, e),
                 unstable.reshape(n, e))


def _pad_frozen(wave: _Wave, horizon: int, policy: nn.Module, params: Mapping[str, Tensor],
                per_task_params: bool, sample_actions: SampleActions) -> None:
    """Extend a wave that ended early to ``horizon`` steps, as one wave would have run on.

    Its envs are all frozen then: the first extra step sees the observations of the last
    step, later ones the zeros of frozen envs; rewards are zero, no env runs.
    """
    n, e = wave.truncated.shape
    obs = wave.obs
    for t in range(len(wave.steps), horizon):
        obs_ne = obs.reshape(n, e, -1).to(wave.steps[0][0].dtype)
        dist = _forward(policy, params, obs_ne, per_task_params)
        actions = sample_actions(t, dist)
        zeros = torch.zeros((n, e), dtype=wave.steps[0][2].dtype, device=obs.device)
        wave.steps.append((obs_ne, actions, zeros, torch.zeros((n, e), dtype=torch.bool,
                                                               device=obs.device), dist))
        obs = torch.zeros_like(obs)


def native_mlp(policy: nn.Module, params: Mapping[str, Tensor],
               per_task_params: bool) -> "NativeMLP":
    """``params`` of a :class:`GaussianMLPPolicy` as :class:`envs.native.NativeMLP` arrays.

    Returns ``K`` parameter sets: one (shared) or one per task (``per_task_params``), with
    the standard deviations ``exp(max(log_std, LOG_MIN_STD))`` as the policy computes them.
    Raises:
        ValueError: another policy, an MLP with other layers than ``Linear`` and one kind of
            ``ReLU``/``Tanh`` between them, or parameters that are not float32 on the CPU.
    """
    from envs.native import NativeMLP

    if type(policy) is not GaussianMLPPolicy:
        raise ValueError(f"the native sampler runs a GaussianMLPPolicy, not "
                         f"{type(policy).__name__}: use sampler='stepwise'")
    layers = list(policy.mean)
    linear = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
    between = {type(m) for m in layers if not isinstance(m, nn.Linear)}
    if (linear != list(range(0, len(layers), 2)) or not layers
            or not isinstance(layers[-1], nn.Linear) or not between <= {nn.ReLU, nn.Tanh}
            or len(between) > 1):
        raise ValueError("the native sampler runs an MLP of Linear layers with ReLU or Tanh "
                         "between them: use sampler='stepwise'")
    for name, value in params.items():
        if value.dtype != torch.float32 or value.device.type != "cpu":
            raise ValueError(f"the native sampler runs float32 parameters on the CPU, got "
                             f"{name} as {value.dtype} on {value.device}: use "
                             f"sampler='stepwise'")

    def sets(value: Tensor) -> np.ndarray:  # [K, ...]
        value = value.detach()
        return (value if per_task_params else value.unsqueeze(0)).numpy()

    weights = [np.ascontiguousarray(sets(params[f"mean.{i}.weight"]).swapaxes(1, 2))
               for i in linear]
    biases = [np.ascontiguousarray(sets(params[f"mean.{i}.bias"])) for i in linear]
    std = torch.exp(params["log_std"].detach().clamp(min=LOG_MIN_STD))
    return NativeMLP(weights, biases, nn.Tanh in between, np.ascontiguousarray(sets(std)))


@torch.no_grad()
def _sample_native(venv: TaskVectorEnv, policy: nn.Module, params: Mapping[str, Tensor],
                   tasks: Sequence, e: int, seed: int, per_task_params: bool) -> Episodes:
    """:func:`sample_episodes` with ``sampler="native"``: every wave's episodes run to their
    ends in the simulator's native loop (``MujocoBatchEnv.run_episodes``), then one torch
    forward over all the observations gives the distributions and log-probabilities.

    The noise is that of the stepwise sampler (the same ``[N, E, A]`` draw per step from one
    generator); the recorded steps follow its conventions: an env that has ended observes its
    last observation once, then zeros, with zero reward and mask; its actions there are the
    torch policy's, from that noise.
    """
    if not hasattr(venv, "run_episodes") or not getattr(venv, "native", False):
        raise ValueError("the native sampler needs a MujocoBatchEnv with the native loop "
                         "(envs.native): use sampler='stepwise'")
    if torch.device(venv.device).type != "cpu":
        raise ValueError("the native sampler runs on the CPU: use sampler='stepwise' with "
                         f"device {venv.device}")
    mlp = native_mlp(policy, params, per_task_params)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.stack(_step_noise(policy, venv, len(tasks), e, generator, torch.float32))
    obs0, run = _native_waves(venv, mlp, tasks, e, seed, per_task_params, noise)
    return _native_episodes(policy, params, per_task_params, obs0, run, noise)


def _native_waves(venv: "MujocoBatchEnv", mlp: "NativeMLP", tasks: Sequence, e: int, seed: int,
                  per_task_params: bool, noise: Tensor) -> tuple[Tensor, "EpisodeSteps"]:
    """Run the tasks' episodes, ``venv.num_envs // e`` tasks at a time (waves).

    Returns:
        the observations after the resets ``[N * E, D]`` and the steps of every env
        (``envs.mujoco_batch.EpisodeSteps``, ``[T, N * E, ...]``, the waves' envs joined).
    """
    from envs.mujoco_batch import EpisodeSteps  # imports MuJoCo: only when sampling natively

    n, k, horizon = len(tasks), venv.num_envs // e, venv.horizon
    starts, waves = [], []
    for first in range(0, n, k):
        venv.set_tasks([task for task in tasks[first:first + k] for _ in range(e)])
        starts.append(venv.reset(seed=seed, offset=first * e))
        task_of = np.repeat(np.arange(first, first + k) if per_task_params
                            else np.zeros(k, dtype=np.int64), e)
        wave_noise = noise[:, first:first + k].reshape(horizon, k * e, -1).numpy()
        waves.append(venv.run_episodes(mlp, task_of, wave_noise))
    if len(waves) == 1:
        return starts[0], waves[0]
    join = lambda xs: torch.cat(xs, dim=1)  # noqa: E731  # along the envs
    steps = VectorStep(*(join([getattr(w.steps, f) for w in waves])
                         for f in ("observations", "rewards", "terminated", "truncated",
                                   "unstable")))
    return torch.cat(starts), EpisodeSteps(join([w.actions for w in waves]),
                                           join([w.running for w in waves]), steps,
                                           torch.cat([w.native_steps for w in waves]))


def _native_episodes(policy: nn.Module, params: Mapping[str, Tensor], per_task_params: bool,
                     obs0: Tensor, run: "EpisodeSteps", noise: Tensor) -> Episodes:
    """:class:`Episodes` ``[N, T, E, ...]`` from the native loop's steps ``run`` ``[T, B, ...]``
    (``B = N * E``), the observations after the resets ``obs0 [B, D]`` and the noise
    ``[T, N, E, A]``, trimmed to the longest episode."""
    n, e = noise.shape[1:3]
    steps, running = run.steps, run.running
    length = int(running.any(dim=1).sum())  # the longest episode
    obs = torch.cat((obs0[None], steps.observations[:length - 1]))  # what each step saw

    def nte(x: Tensor) -> Tensor:  # [T, B, ...] -> [N, T, E, ...], the first `length` steps
        x = x[:length]
        return x.reshape(length, n, e, *x.shape[2:]).transpose(0, 1)

    obs_nte, mask = nte(obs), nte(running)
    dist = (batched_dist_params(policy, params, obs_nte) if per_task_params
            else dist_params(policy, params, obs_nte))
    frozen_actions = policy.sample(dist, noise=noise[:length].transpose(0, 1))
    actions = torch.where(mask[..., None], nte(run.actions), frozen_actions)
    ended = running & (steps.terminated | steps.truncated)  # [T, B]: one step per env
    last_obs = steps.observations[ended.float().argmax(dim=0), torch.arange(n * e)]
    unstable = (running & steps.unstable).any(dim=0)
    truncated = (running & steps.truncated).any(dim=0) & ~unstable
    return Episodes(
        observations=obs_nte, actions=actions, rewards=nte(steps.rewards) * mask.float(),
        mask=mask.float(), log_probs=policy.log_prob(dist, actions),
        last_observations=last_obs.reshape(n, e, -1), truncated=truncated.reshape(n, e),
        unstable=unstable.reshape(n, e))


def _episodes(policy: nn.Module, waves: list[_Wave]) -> Episodes:
    """Stack the waves' steps into :class:`Episodes` ``[N, T, E, ...]``."""

    def cat(parts: list[Tensor]) -> Tensor:  # the waves' tasks joined
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def stack(i: int) -> Tensor:  # [N, T, E, ...]
        return cat([torch.stack([s[i] for s in w.steps], dim=1) for w in waves])

    actions, mask = stack(1), stack(3).float()
    # one log-probability computation for the whole batch: the same numbers as step by step
    width = len(waves[0].steps[0][4])
    dist = tuple(cat([torch.stack([s[4][j] for s in w.steps], dim=1) for w in waves])
                 for j in range(width))
    join = lambda name: cat([getattr(w, name) for w in waves])  # noqa: E731
    return Episodes(
        observations=stack(0), actions=actions, rewards=stack(2) * mask, mask=mask,
        log_probs=policy.log_prob(dist, actions), last_observations=join("last_observations"),
        truncated=join("truncated"), unstable=join("unstable"),
    )
