"""The table of task families: one record per family, the single source for registration,
``adaptbed envs`` and the README's table."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym

NAMESPACE = "adaptbed"


class UnknownFamilyError(KeyError):
    """An env id, family name or preset name that adaptbed does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class FamilySpec:
    """One task family.

    Attributes:
        name: class-like name, e.g. ``"HalfCheetahVel"``.
        version: Gymnasium id version; bumped whenever rewards, dynamics or tasks change.
        entry_point: ``"module:Class"`` of the environment.
        horizon: ``max_episode_steps`` of the registered id.
        task_variable: what a task sets, in words.
        train: the training task distribution.
        test: how the fixed held-out split is made.
        ood: the out-of-distribution split ("none" where the task set is exhaustive).
        reference: where the definition comes from.
        preset: name of the training preset for this family.
        mujoco: whether the family needs MuJoCo.
    """

    name: str
    version: int
    entry_point: str
    horizon: int
    task_variable: str
    train: str
    test: str
    ood: str
    reference: str
    preset: str
    mujoco: bool = True

    @property
    def env_id(self) -> str:
        return f"{NAMESPACE}/{self.name}-v{self.version}"


_TEST = "40 tasks from train, fixed seed"
FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("Navigation2D", 0, "envs.navigation:Navigation2D", 100, "goal (x, y)",
               "U[-0.5, 0.5]^2", _TEST, "0.5 < max(|x|,|y|) <= 1", "Finn et al. 2017, sec. 5.3",
               "navigation-2d", mujoco=False),
    FamilySpec("HalfCheetahVel", 0, "envs.half_cheetah:HalfCheetahVel", 200, "goal velocity",
               "U[0, 2]", _TEST, "U[2, 3]", "Finn et al. 2017, sec. 5.3", "halfcheetah-vel"),
    FamilySpec("HalfCheetahDir", 0, "envs.half_cheetah:HalfCheetahDir", 200, "direction",
               "{-1, +1}", _TEST, "none (exhaustive)", "Finn et al. 2017, sec. 5.3",
               "halfcheetah-dir"),
    FamilySpec("AntVel", 0, "envs.ant:AntVel", 200, "goal velocity", "U[0, 3]", _TEST,
               "U[3, 4]", "Finn et al. 2017, sec. 5.3", "ant-vel"),
    FamilySpec("AntDir", 0, "envs.ant:AntDir", 200, "direction", "{-1, +1}", _TEST,
               "none (exhaustive)", "Finn et al. 2017, sec. 5.3", "ant-dir"),
    FamilySpec("AntDir2D", 0, "envs.ant:AntDir2D", 200, "unit direction (dx, dy)",
               "uniform on the circle", _TEST, "none (exhaustive)",
               "Rothfuss et al. 2019 (ProMP), MAML's costs", "ant-dir-2d"),
    FamilySpec("AntGoal", 0, "envs.ant:AntGoal", 200, "goal (x, y)", "U[-3, 3]^2", _TEST,
               "3 < max(|x|,|y|) <= 5", "Finn et al. 2017 code (rllab)", "ant-goal"),
    FamilySpec("HopperRandParams", 0, "envs.rand_params:HopperRandParams", 200,
               "mass, inertia, friction, damping multipliers", "1.5^U(-3,3), damping 1.3^U(-3,3)",
               _TEST, "exponents with |u| in [3, 4]", "Rothfuss et al. 2019 (ProMP)",
               "hopper-params"),
    FamilySpec("Walker2dRandParams", 0, "envs.rand_params:Walker2dRandParams", 200,
               "mass, inertia, friction, damping multipliers", "1.5^U(-3,3), damping 1.3^U(-3,3)",
               _TEST, "exponents with |u| in [3, 4]", "Rothfuss et al. 2019 (ProMP)",
               "walker-params"),
)


def family(key: str) -> FamilySpec:
    """Look a family up by name (``HalfCheetahVel``), id (``adaptbed/HalfCheetahVel-v0``) or preset.

    Raises:
        UnknownFamilyError: with the list of known names.
    """
    for spec in FAMILIES:
        if key in (spec.name, spec.env_id, spec.preset):
            return spec
    known = ", ".join(s.env_id for s in FAMILIES)
    raise UnknownFamilyError(f"unknown task family or env id {key!r}; known: {known}")


def register_all() -> None:
    """Register every family with Gymnasium (idempotent)."""
    for spec in FAMILIES:
        if spec.env_id not in gym.registry:
            gym.register(id=spec.env_id, entry_point=spec.entry_point,
                         max_episode_steps=spec.horizon)


def make(key: str, task=None, **kwargs) -> gym.Env:
    """``gymnasium.make`` for a family given by name, id or preset, with an optional task.

    Raises:
        UnknownFamilyError: unknown family (the message lists the known ids).
        TaskError: a task of the wrong type or outside the family's valid range.
    """
    spec = family(key)
    register_all()
    env = gym.make(spec.env_id, **kwargs)
    if task is not None:
        env.unwrapped.set_task(task)
    return env


def table_rows() -> list[dict[str, str]]:
    """The rows of ``adaptbed envs`` and of README's family table."""
    return [
        {
            "id": s.env_id,
            "task": s.task_variable,
            "train": s.train,
            "test": s.test,
            "ood": s.ood,
            "horizon": str(s.horizon),
            "reference": s.reference,
        }
        for s in FAMILIES
    ]


def markdown_table() -> str:
    """README's family table, from the same rows as ``adaptbed envs``."""
    rows = table_rows()
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in header) + " |" for r in rows]
    return "\n".join(lines)
