"""``adaptbed rollout``: run a saved policy on its task; optionally render a video.

Usage::

    adaptbed rollout DIR_OR_RUN_DIR [--task JSON] [--episodes E] [--seed S]
                     [--video FILE.mp4|FILE.gif] [--video-steps N]
                     [--checkpoint latest|best|iteration-<k>]

``DIR`` is a folder written by ``adaptbed adapt`` (its task is the default) or a run directory
(the meta-trained policy before adaptation; ``--task`` is then required). The policy acts as in
evaluation (sampled actions, seeded), and the command prints the mean return over E episodes
with a 95% CI.

``--video`` renders one more episode with Gymnasium's ``rgb_array`` mode and writes it as a GIF
(Pillow) or an MP4 (needs ``imageio`` with ``imageio-ffmpeg``). MuJoCo renders off-screen only
with an OpenGL platform: on a headless machine set ``MUJOCO_GL=egl`` (GPU) or
``MUJOCO_GL=osmesa`` (software). When no renderer works the command says so in one line and
exits with status 2; Navigation2D has no renderer at all.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from agents.policies import dist_params
from envs.registry import family, make
from envs.tasks import task_to_dict
from envs.vector import make_vector_env
from experiments import config as cfglib
from experiments.adapt import POLICY_FILE, load_adapted, parse_task
from experiments.cliutil import Parser, seed as seed_arg
from experiments.evaluate import USER_ERRORS, checkpoint_name, load_run, mean_ci_text
from experiments.rundir import RunDirError, atomic_write_bytes
from meta.evaluation import ci95
from meta.sampler import sample_episodes

VIDEO_FORMATS = (".gif", ".mp4")


class RenderError(RunDirError):
    """No way to render or write the requested video (one-line message)."""


@dataclass
class Source:
    """The policy to roll out and where it came from."""

    policy: nn.Module
    cfg: cfglib.Config
    family: str
    task: Any  # None for a run directory without --task
    kind: str  # "adapted" or "run"


def load_source(path: Path, checkpoint: str) -> Source:
    """An adapted-policy folder (``policy.pt``) or a run directory (``config.json``).

    Raises:
        RunDirError: neither, or unreadable.
    """
    if (path / POLICY_FILE).exists():
        policy, cfg, task, _ = load_adapted(path)
        return Source(policy, cfg, family(cfg.env.family).name, task, "adapted")
    if (path / "config.json").exists():
        run = load_run(path, checkpoint)
        return Source(run.policy, run.cfg, run.family, None, "run")
    raise RunDirError(f"{path} is neither a folder written by `adaptbed adapt` (no {POLICY_FILE})"
                      " nor a run directory (no config.json)")


def episode_returns(policy: nn.Module, family_name: str, task: Any, episodes: int, seed: int,
                    device: str) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes of ``policy`` on ``task`` (sampled actions)."""
    venv = make_vector_env(family_name, episodes, device)
    try:
        batch = sample_episodes(venv, policy, dict(policy.named_parameters()), [task], episodes,
                                seed)
    finally:
        venv.close()
    return [float(r) for r in batch.episode_returns()[0].tolist()]


# --- video -------------------------------------------------------------------------------------
def check_video_path(path: Path) -> None:
    """Raise :class:`RenderError` unless ``path`` can be written in its format here."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise RenderError(f"--video must end in .gif or .mp4, got {path.name}")
    if suffix == ".mp4" and (importlib.util.find_spec("imageio") is None
                             or importlib.util.find_spec("imageio_ffmpeg") is None):
        raise RenderError("writing .mp4 needs imageio and imageio-ffmpeg (pip install imageio "
                          "imageio-ffmpeg); or write a .gif")


def render_env(family_name: str, task: Any, size: int = 256) -> Any:
    """A family env in ``rgb_array`` mode that has rendered one frame.

    Raises:
        RenderError: the family has no renderer, or rendering fails (no OpenGL platform).
    """
    env = make(family_name)
    modes = env.unwrapped.metadata.get("render_modes", [])
    env.close()
    if "rgb_array" not in modes:
        raise RenderError(f"{family(family_name).name} has no renderer (render modes: "
                          f"{modes or 'none'}); --video works for the MuJoCo families")
    try:
        with warnings.catch_warnings():  # GLFW warns about the missing display before failing
            warnings.simplefilter("ignore")
            env = make(family_name, task=task, render_mode="rgb_array", width=size, height=size)
            env.reset(seed=0)
            frame = env.render()
    except Exception as err:  # noqa: BLE001 - every OpenGL failure means "cannot render here"
        gl = os.environ.get("MUJOCO_GL", "unset")
        first = (str(err).splitlines() or [""])[0][:120]
        raise RenderError(f"cannot render {family(family_name).name} here (MUJOCO_GL={gl}: "
                          f"{type(err).__name__}{': ' + first if first else ''}); try "
                          "MUJOCO_GL=egl or MUJOCO_GL=osmesa") from None
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        env.close()
        raise RenderError(f"{family(family_name).name} rendered no image")
    return env


@torch.no_grad()
def render_episode(env: Any, policy: nn.Module, seed: int,
                   max_steps: int | None = None) -> list[np.ndarray]:
    """The frames of one episode of ``policy`` (sampled actions, as in evaluation), the first
    ``max_steps`` steps of it when given."""
    generator = torch.Generator().manual_seed(seed)
    params = {k: v.detach().cpu() for k, v in policy.named_parameters()}
    cpu_policy = policy.to("cpu")
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    horizon = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 1000
    for _ in range(min(horizon, max_steps or horizon)):
        dist = dist_params(cpu_policy, params, torch.as_tensor(obs, dtype=torch.float32))
        action = cpu_policy.sample(dist, generator).numpy()
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(env.render())
        if terminated or truncated:
            break
    return frames


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """Write ``frames`` (H x W x 3 uint8) as a GIF or MP4, atomically."""
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
        buffer = io.BytesIO()
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / fps)), loop=0)
        atomic_write_bytes(path, buffer.getvalue())
        return
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        with imageio.get_writer(tmp, fps=fps, macro_block_size=1) as writer:
            for f in frames:
                writer.append_data(np.asarray(f, dtype=np.uint8))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- command line ------------------------------------------------------------------------------
def parser() -> Parser:
    p = Parser(
        prog="adaptbed rollout",
        description="Evaluate a policy saved by `adaptbed adapt` (or a run's checkpoint) on its "
                    "task, optionally rendering one episode to a video.")
    p.add_argument("path", type=Path, metavar="DIR_OR_RUN_DIR")
    p.add_argument("--task", help="the task as JSON (required for a run directory; default for "
                                  "an adapted policy: the task it was adapted to)")
    p.add_argument("--episodes", type=int, default=10, help="episodes to average (default 10)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--video", type=Path, metavar="FILE", help="render one episode to FILE.gif/.mp4")
    p.add_argument("--video-steps", type=int, metavar="N",
                   help="render only the first N steps (default: the whole episode; software "
                        "rendering takes about 0.1 s per frame)")
    p.add_argument("--checkpoint", default="latest", type=checkpoint_name,
                   help="for a run directory: latest (default), best, or iteration-<k> (kept by "
                        "run.keep_every)")
    return p


def resolve(args: argparse.Namespace) -> tuple[Source, Any]:
    """The policy and the task to roll out (validated), and the render env for ``--video``.

    Raises:
        RunDirError, ConfigError, TaskError: one-line messages (RenderError for --video).
    """
    if args.episodes < 1:
        raise RunDirError(f"--episodes must be at least 1, got {args.episodes}")
    if args.video_steps is not None and args.video_steps < 1:
        raise RunDirError(f"--video-steps must be at least 1, got {args.video_steps}")
    source = load_source(args.path, args.checkpoint)
    if args.task is not None:
        source.task = parse_task(source.family, args.task)
    if source.task is None:
        raise RunDirError(f"{args.path} is a run directory: give the task with --task, e.g. "
                          f"--task '{json.dumps(task_to_dict(_example_task(source.family)))}'")
    env = None
    if args.video is not None:
        check_video_path(args.video)
        env = render_env(source.family, source.task)
    return source, env


def _example_task(family_name: str) -> Any:
    env = make(family_name)
    try:
        return env.unwrapped.get_task()
    finally:
        env.close()


def mujoco_gl_problem() -> str | None:
    """Why ``import mujoco`` fails under the ``MUJOCO_GL`` asked for, or None.

    ``MUJOCO_GL=osmesa`` without the OSMesa library breaks the import itself, before any
    rendering, so the command would otherwise end in a traceback while loading the policy.
    """
    gl = os.environ.get("MUJOCO_GL")
    if not gl:
        return None
    try:
        import mujoco  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return (f"MUJOCO_GL={gl} is not usable here: importing mujoco fails "
                f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:100]}); "
                "try another MUJOCO_GL (egl, osmesa, glfw) or unset it")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    gl_problem = mujoco_gl_problem()
    try:
        source, env = resolve(args)
    except USER_ERRORS as err:
        print(f"adaptbed rollout: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        if gl_problem is None:
            raise
        print(f"adaptbed rollout: error: {gl_problem}", file=sys.stderr)
        return 2
    returns = episode_returns(source.policy, source.family, source.task, args.episodes,
                              args.seed, source.cfg.run.device)
    what = "adapted policy" if source.kind == "adapted" else "meta-trained policy (not adapted)"
    print(f"{source.family} task {json.dumps(task_to_dict(source.task))}, {what}: mean return "
          f"{mean_ci_text(float(np.mean(returns)), ci95(returns), 2)} (95% CI) over {args.episodes} episodes "
          f"(min {min(returns):.2f}, max {max(returns):.2f})")
    if env is None:
        return 0
    try:
        frames = render_episode(env, source.policy, args.seed, args.video_steps)
        write_video(args.video, frames, float(env.metadata.get("render_fps", 30)))
    except Exception as err:  # noqa: BLE001 - a renderer or encoder failing mid-way
        print(f"adaptbed rollout: error: could not write {args.video} ({type(err).__name__}: "
              f"{(str(err).splitlines() or [''])[0][:120]})", file=sys.stderr)
        return 2
    finally:
        env.close()
    print(f"video: {args.video} ({len(frames)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
