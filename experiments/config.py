"""Run configuration: nested frozen dataclasses, dotted CLI overrides, JSON round trip.

Every field carries an attribute docstring (a string literal right under it); :func:`field_help`
reads them back with :mod:`ast`, so the ``--help`` text of the train command and the code can
never disagree.

Typical use by a train script::

    cfg = apply_overrides(get_preset("navigation-2d"), ["maml.fast_lr=0.05", "run.seed=3"])
    validate(cfg)
    json.dump(to_dict(cfg), f)          # and later: from_dict(json.load(f))
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ALGOS = ("trpo", "ppo", "adam")
ACTIVATIONS = ("relu", "tanh")  # the keys of agents.policies.ACTIVATIONS
DEVICES = ("cpu", "cuda")
INNER_BATCHING = ("auto", "batched", "loop")
INNER_OBJECTIVES = ("reinforce", "lvc")  # meta.maml.INNER_OBJECTIVES
FISHER = ("exact", "first_order")
SAMPLERS = ("stepwise", "native")  # meta.sampler.SAMPLERS
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


class ConfigError(ValueError):
    """A malformed, unknown or invalid configuration value (the message is one line)."""


@dataclass(frozen=True)
class EnvConfig:
    """Which task family to meta-train on."""

    family: str = "navigation-2d"
    """Task family: a family name (HalfCheetahVel), env id (adaptbed/HalfCheetahVel-v0) or
    preset name (halfcheetah-vel). Only the family: the other settings stay the preset's
    (--preset P takes a family's settings too)."""


@dataclass(frozen=True)
class PolicyConfig:
    """The policy network."""

    hidden_sizes: tuple[int, ...] = (100, 100)
    """Hidden layer widths of the policy MLP, e.g. 100,100 (Finn et al. 2017: 2 x 100)."""
    activation: str = "relu"
    """Hidden-layer nonlinearity: relu or tanh."""
    init_std: float = 1.0
    """Initial standard deviation of the Gaussian policy (state-independent, learned)."""


@dataclass(frozen=True)
class MamlConfig:
    """The inner (adaptation) loop and the returns it is computed from."""

    meta_batch_size: int = 20
    """Tasks sampled per meta-iteration."""
    episodes_per_task: int = 20
    """Episodes sampled per task for each adaptation step and for the post-adaptation loss."""
    num_inner_steps: int = 1
    """Policy-gradient adaptation steps per task; 0 trains a multi-task policy without
    adaptation (the pretrained baseline)."""
    fast_lr: float = 0.1
    """Step size of the inner-loop (adaptation) gradient step."""
    first_order: bool = False
    """Drop second-order terms of the meta-gradient (first-order MAML)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0: Monte-Carlo returns minus the baseline)."""
    bootstrap_truncated: bool = False
    """Bootstrap the baseline's value at the time limit (the reference implementations don't).
    With the linear baseline, whose time features are fit to returns that fall to about 0 at
    the horizon, that value is close to 0, so this changes little."""
    inner_batching: str = "auto"
    """auto, batched or loop: adapt all tasks in one batched computation or in a per-task loop;
    auto picks the faster for the device."""
    inner_objective: str = "reinforce"
    """reinforce (the MAML paper's inner loss) or lvc (ProMP's low-variance curvature loss:
    the same inner steps, a meta-gradient with its curvature term; ProMP is outer.algo=ppo
    with lvc)."""


@dataclass(frozen=True)
class OuterConfig:
    """The outer (meta) optimiser."""

    algo: str = "trpo"
    """Meta-optimiser: trpo, ppo or adam."""
    max_kl: float = 0.01
    """TRPO trust-region size (mean KL between old and new adapted policies)."""
    cg_iters: int = 10
    """TRPO conjugate-gradient iterations."""
    cg_damping: float = 1e-5
    """TRPO damping added to the Fisher-vector product."""
    ls_max_steps: int = 15
    """TRPO line-search steps at most."""
    ls_backtrack_ratio: float = 0.8
    """TRPO line-search shrink factor per step, in (0, 1)."""
    fisher: str = "exact"
    """TRPO trust-region metric: exact (the KL's Hessian through the adaptation, as the paper)
    or first_order (inner gradient held constant: ~4x cheaper; the line search still checks
    the exact KL)."""
    fisher_subsample: float = 1.0
    """TRPO: fraction of the meta-batch's tasks whose KL the Fisher-vector products use (rllab's
    subsample_factor, by task), in (0, 1]; 1 uses every task, as the paper. The gradient and
    the line search always use every task."""
    lr: float = 1e-3
    """Learning rate of the adam and ppo meta-optimisers."""
    ppo_epochs: int = 5
    """PPO optimisation epochs per meta-batch (ProMP's num_promp_steps)."""
    clip_eps: float = 0.2
    """PPO clipping range of the likelihood ratio."""
    inner_kl_coef: float = 0.0
    """ProMP-style penalty on the KL between pre- and post-adaptation policies; 0 disables it."""


@dataclass(frozen=True)
class RunConfig:
    """Bookkeeping of one training run."""

    iterations: int = 500
    """Meta-iterations to train for."""
    seed: int = 0
    """Seed of every random generator of the run."""
    device: str = "cpu"
    """Torch device: cpu or cuda."""
    run_dir: str = ""
    """Output folder; empty: runs/<preset>-s<seed>-<timestamp>, chosen by the train script."""
    checkpoint_every: int = 1
    """Write a checkpoint every this many meta-iterations."""
    keep_every: int = 0
    """Also keep the checkpoint of every this many meta-iterations, as checkpoints/iteration-<k>.pt
    (evaluate it with --checkpoint iteration-<k>); 0 keeps none."""
    quiet: bool = False
    """Print no per-iteration progress."""
    max_consecutive_failures: int = 5
    """Stop the run after this many outer steps in a row were rejected for non-finite values."""
    max_wave_envs: int = 512
    """MuJoCo families on the CPU: sample the meta-batch in equal waves of whole tasks of at
    most this many envs, where such waves hold at least half that many and at least 64 envs
    (a task's episodes stay in one wave, even above the limit; meta.sampler.tasks_per_wave;
    README, "Sampling in waves"); 0: all envs at once. The episodes are the same either way;
    at the default, waves take less memory and, on HalfCheetah, less time."""
    sampler: str = "stepwise"
    """How training samples: stepwise (one torch policy forward and one simulator step per time
    step) or native (MuJoCo families on the CPU: whole episodes in the simulator's native loop,
    the policy's MLP evaluated there in float32; faster, not the stepwise episodes bit for bit;
    README, "Whole episodes in the native loop"). Evaluation always samples stepwise."""


@dataclass(frozen=True)
class Config:
    """A whole run: one sub-config per section, addressed as section.field on the command line."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The task family."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The policy network."""
    maml: MamlConfig = field(default_factory=MamlConfig)
    """The inner loop."""
    outer: OuterConfig = field(default_factory=OuterConfig)
    """The meta-optimiser."""
    run: RunConfig = field(default_factory=RunConfig)
    """Bookkeeping."""
    preset: str = ""
    """Name of the preset this config started from (empty: none)."""


# --------------------------------------------------------------------------- introspection


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config dataclass (they are strings under postponed evaluation)."""
    return typing.get_type_hints(cls)


def _type_name(cls: type, name: str) -> str:
    """The annotation as written in the source, e.g. ``tuple[int, ...]``."""
    ann = cls.__annotations__[name]
    return ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))


def field_help(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass, read from its source.

    Args:
        cls: a dataclass whose fields are each followed by a string literal.

    Returns:
        field name -> docstring (whitespace-normalised); fields without one are absent.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _format_value(value: Any) -> str:
    """A value as it would be written on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if value == "":
        return '""'
    return str(value)


def _leaf_fields(cls: type = Config, prefix: str = ""):
    """Yield ``(dotted_key, owner_class, field)`` for every non-section field, depth first."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if _is_section(hints[f.name]):
            yield from _leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", cls, f


def help_text(defaults: Config | None = None) -> str:
    """Every dotted key with its type, default and docstring, for the train command's epilog.

    Args:
        defaults: whose values to show as defaults (e.g. a preset); ``Config()`` when None.
    """
    lines = ["configuration keys (override with KEY=VALUE, e.g. maml.fast_lr=0.05):"]
    defaults = Config() if defaults is None else defaults
    for key, owner, f in _leaf_fields():
        default = _get(defaults, key.split("."))
        lines.append(f"  {key} ({_type_name(owner, f.name)}, default {_format_value(default)})")
        lines.append(f"      {field_help(owner).get(f.name, '')}")
    return "\n".join(lines)


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"maml.fast_lr": 0.1, ...}``: every leaf value by dotted key (e.g. for hparam logging)."""
    return {key: _get(cfg, key.split(".")) for key, _, _ in _leaf_fields()}


def _get(obj: Any, path: list[str]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


# --------------------------------------------------------------------------- dict / JSON


def to_dict(cfg: Config) -> dict[str, Any]:
    """A JSON-ready nested dict (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


#: Keys that older versions wrote to ``config.json`` and that never changed what a run does;
#: :func:`from_dict` ignores them, so older run directories still load. Key -> why it went.
RETIRED_KEYS = {
    "run.eval_every": "never used (removed in commit 214abe3)",
}


def from_dict(d: dict[str, Any]) -> Config:
    """The inverse of :func:`to_dict`; missing keys keep their defaults, and the
    :data:`RETIRED_KEYS` of older versions are ignored.

    Raises:
        ConfigError: an unknown key (the message lists the valid ones) or a value of the wrong type.
    """
    return _build(Config, _without_retired(d), "")


def _without_retired(d: Any) -> Any:
    """``d`` without the :data:`RETIRED_KEYS` (a copy; ``d`` itself is not changed)."""
    if not isinstance(d, dict):
        return d
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for key in RETIRED_KEYS:
        section, _, name = key.partition(".")
        if isinstance(d.get(section), dict):
            d[section].pop(name, None)
    return d


def _build(cls: type, d: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix + key!r}; valid keys in {where}: "
                              f"{', '.join(names)}")
        tp = hints[key]
        if _is_section(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_json(prefix + key, tp, value)
    return cls(**kwargs)


def _check_json(key: str, tp: Any, value: Any) -> Any:
    """A JSON value converted to the field's type (list -> tuple, int -> float), or ConfigError."""
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, (list, tuple)):
        elem = typing.get_args(tp)[0]
        return tuple(_check_json(key, elem, v) for v in value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, bool, str) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


def save_json(cfg: Config, path: str | Path) -> None:
    """Write ``to_dict(cfg)`` to ``path`` as indented JSON."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def load_json(path: str | Path) -> Config:
    """Read a config written by :func:`save_json`.

    Raises:
        ConfigError: as :func:`from_dict`.
    """
    return from_dict(json.loads(Path(path).read_text()))


# --------------------------------------------------------------------------- overrides


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"a comma-separated list of {typing.get_args(tp)[0].__name__} (e.g. 64,64)"
    if tp is bool:
        return "a bool (true/false/1/0/yes/no)"
    return {int: "an int", float: "a finite float", str: "a string"}.get(tp, str(tp))


def parse_value(key: str, tp: Any, text: str) -> Any:
    """Coerce a command-line string to the field type ``tp``.

    Raises:
        ConfigError: naming ``key`` and the expected type.
    """
    try:
        value = _parse(tp, text.strip())
    except ValueError:
        value = None
    if value is None:
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {text!r}")
    return value


def _parse(tp: Any, text: str) -> Any:
    """The parsed value, or None (or ValueError) when ``text`` is not a ``tp``."""
    if typing.get_origin(tp) is tuple:
        inner = text.strip("[]() ").removesuffix(",").strip()  # "(16,)" is a 1-tuple
        items = [s.strip() for s in inner.split(",")] if inner else []
        parsed = [_parse(typing.get_args(tp)[0], s) for s in items]
        return None if any(p is None for p in parsed) else tuple(parsed)
    if tp is bool:
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else None
    if tp is int:
        return int(text)
    if tp is float:
        value = float(text)
        return value if math.isfinite(value) else None
    if tp is str:
        return text
    return None


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A new config with ``section.field=value`` overrides applied in order.

    Args:
        cfg: the starting config; it is not modified.
        overrides: strings like ``"maml.fast_lr=0.05"`` or ``"policy.hidden_sizes=64,64"``.

    Raises:
        ConfigError: no ``=``, an unknown section or field, or a value that does not parse.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"malformed override {item!r}: expected KEY=VALUE, "
                              f"e.g. maml.fast_lr=0.05")
        cfg = _replace_path(cfg, key.split("."), text)
    return cfg


def check_command_line_overrides(overrides: Sequence[str]) -> None:
    """Refuse overrides a user would misread on a command line: ``preset=...`` relabels a run
    (its run directory's name, ``summary``) without changing any setting; ``--preset`` chooses.

    Raises:
        ConfigError: naming the key.
    """
    for item in overrides:
        if item.partition("=")[0].strip() == "preset":
            raise ConfigError("preset is chosen with --preset, not as an override (preset=... "
                              "would relabel the run without changing its settings)")


def _replace_path(obj: Any, path: list[str], text: str, prefix: str = "") -> Any:
    """``obj`` with the leaf at ``path`` replaced by ``text`` parsed to the leaf's type."""
    cls = type(obj)
    hints = _hints(cls)
    head, rest = path[0], path[1:]
    key = prefix + ".".join(path)
    if head not in hints:
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"unknown config key {key!r}; valid keys in {where}: "
                          f"{', '.join(f.name for f in dataclasses.fields(cls))}")
    tp = hints[head]
    if _is_section(tp) and not rest:
        raise ConfigError(f"config key {key!r} is a section; set one of its fields: "
                          f"{', '.join(f.name for f in dataclasses.fields(tp))}")
    if not _is_section(tp) and rest:
        raise ConfigError(f"unknown config key {key!r}; {prefix}{head} has no sub-keys")
    if rest:
        value = _replace_path(getattr(obj, head), rest, text, f"{prefix}{head}.")
    else:
        value = parse_value(key, tp, text)
    return dataclasses.replace(obj, **{head: value})


# --------------------------------------------------------------------------- validation


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _validate_sizes(cfg: Config) -> None:
    sizes = {
        "maml.meta_batch_size": cfg.maml.meta_batch_size,
        "maml.episodes_per_task": cfg.maml.episodes_per_task,
        "run.iterations": cfg.run.iterations,
        "outer.cg_iters": cfg.outer.cg_iters,
        "outer.ls_max_steps": cfg.outer.ls_max_steps,
        "outer.ppo_epochs": cfg.outer.ppo_epochs,
        "run.checkpoint_every": cfg.run.checkpoint_every,
        "run.max_consecutive_failures": cfg.run.max_consecutive_failures,
    }
    for key, value in sizes.items():
        _require(value > 0, f"{key} must be a positive integer; got {value}")
    from meta.sampler import MIN_WAVE_ENVS  # imports torch: only when validating

    _require(cfg.run.max_wave_envs == 0 or cfg.run.max_wave_envs >= MIN_WAVE_ENVS,
             f"run.max_wave_envs must be 0 (all envs at once) or at least {MIN_WAVE_ENVS} "
             f"(fewer rows may change the policy's arithmetic, and so the episodes); got "
             f"{cfg.run.max_wave_envs}")
    _require(cfg.run.keep_every >= 0,
             f"run.keep_every must be >= 0 (0: keep no extra checkpoints); got {cfg.run.keep_every}")
    for size in cfg.policy.hidden_sizes:
        _require(size > 0, f"policy.hidden_sizes must all be positive; got "
                           f"{_format_value(cfg.policy.hidden_sizes)}")
    _require(cfg.maml.num_inner_steps >= 0, f"maml.num_inner_steps must be >= 0 (0: no "
             f"adaptation, a multi-task policy); got {cfg.maml.num_inner_steps}")
    _require(0 <= cfg.run.seed < 2**32, f"run.seed must be in [0, 2**32 - 1]; got {cfg.run.seed}")


def _validate_reals(cfg: Config) -> None:
    for key, value in (("maml.fast_lr", cfg.maml.fast_lr), ("outer.lr", cfg.outer.lr),
                       ("outer.max_kl", cfg.outer.max_kl), ("outer.clip_eps", cfg.outer.clip_eps),
                       ("policy.init_std", cfg.policy.init_std)):
        _require(value > 0, f"{key} must be positive; got {value}")
    for key, value in (("maml.gamma", cfg.maml.gamma), ("maml.gae_lambda", cfg.maml.gae_lambda)):
        _require(0 < value <= 1, f"{key} must be in (0, 1]; got {value}")
    subsample = cfg.outer.fisher_subsample
    _require(0 < subsample <= 1, f"outer.fisher_subsample must be in (0, 1]; got {subsample}")
    ratio = cfg.outer.ls_backtrack_ratio
    _require(0 < ratio < 1, f"outer.ls_backtrack_ratio must be in (0, 1); got {ratio}")
    for key, value in (("outer.cg_damping", cfg.outer.cg_damping),
                       ("outer.inner_kl_coef", cfg.outer.inner_kl_coef)):
        _require(value >= 0, f"{key} must be >= 0; got {value}")


def _validate_choices(cfg: Config) -> None:
    _one_of("outer.algo", cfg.outer.algo, ALGOS)
    _one_of("policy.activation", cfg.policy.activation, ACTIVATIONS)
    _one_of("run.device", cfg.run.device, DEVICES)
    _one_of("maml.inner_batching", cfg.maml.inner_batching, INNER_BATCHING)
    _one_of("maml.inner_objective", cfg.maml.inner_objective, INNER_OBJECTIVES)
    _one_of("outer.fisher", cfg.outer.fisher, FISHER)
    _one_of("run.sampler", cfg.run.sampler, SAMPLERS)


def _validate_family(cfg: Config) -> None:
    from envs.registry import UnknownFamilyError, family

    try:
        spec = family(cfg.env.family)
    except UnknownFamilyError as err:
        raise ConfigError(f"env.family: {err}") from None
    if cfg.run.sampler == "native":
        _require(spec.mujoco, f"run.sampler=native runs the MuJoCo families' simulator; "
                              f"{spec.name} needs run.sampler=stepwise")
        _require(cfg.run.device == "cpu", "run.sampler=native runs on the CPU; with "
                                          "run.device=cuda use run.sampler=stepwise")


def _validate_device(cfg: Config) -> None:
    import torch

    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA GPU is available")


def validate(cfg: Config) -> None:
    """Check every value of ``cfg``.

    Raises:
        ConfigError: with a one-line message naming the first offending key.
    """
    _validate_sizes(cfg)
    _validate_reals(cfg)
    _validate_choices(cfg)
    _validate_family(cfg)
    _validate_device(cfg)
