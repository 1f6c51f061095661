"""Named training presets, one per task family (``envs.registry.FAMILIES[i].preset``).

Sources, cited next to the values below:

[MAML]   Finn, Abbeel & Levine 2017, sec. 5.3 and appendix A.2: policy 2 x 100 ReLU; one
         vanilla-policy-gradient inner step with alpha = 0.1; TRPO meta-optimiser; meta batch
         20 tasks (2D navigation) and 40 tasks (locomotion); 20 rollouts per gradient step, except
         ant forward/backward with 40; "trained for up to 500 meta-iterations".
[pmrl]   tristandeleu/pytorch-maml-rl, configs/maml/{2d-navigation,halfcheetah-vel,
         halfcheetah-dir,ant-vel,ant-dir,ant-goal}.yaml: fast-lr 0.1, num-steps 1,
         fast-batch-size 20, num-batches 500, meta-batch-size 20 (navigation) / 40 (the others),
         max-kl 1e-2, cg-iters 10, cg-damping 1e-5, ls-max-steps 15, ls-backtrack-ratio 0.8,
         gamma 0.99, gae-lambda 1.0. (It uses 64 x 64 tanh and a 100-step horizon for the MuJoCo
         tasks; we keep the paper's network and the registry's 200-step horizon.)
[ProMP]  jonasrothfuss/ProMP: run_scripts/maml_run_mujoco.py and pro-mp_run_mujoco.py defaults
         (rollouts_per_meta_task 20, meta_batch_size 40, inner_lr 0.1, num_inner_grad_steps 1,
         TRPO step_size 0.01, n_itr 1001), and experiments/all_envs_eval/{trpo,ppo}_run_all.py
         (max_path_length 200; AntRandGoalEnv num_inner_grad_steps 2; HopperRandParamsEnv and
         Walker2DRandParamsEnv inner_lr 0.05). ProMP's policies are 64 x 64 tanh; we keep MAML's
         2 x 100 ReLU on every family so that families compare under one architecture.

[rllab]  rll/rllab ConjugateGradientOptimizer ``subsample_factor``: TRPO's Fisher-vector products
         estimated on a fraction of the data (its default 1.0, which cbfinn/maml_rl kept).

Every preset uses the TRPO settings of [MAML]/[pmrl] (max_kl 0.01, 10 CG iterations, damping
1e-5, 15 line-search steps, ratio 0.8: the :class:`OuterConfig` defaults) and gamma 0.99,
gae_lambda 1.0 ([pmrl], [ProMP]: the :class:`MamlConfig` defaults). One deviation: the
40-task presets estimate the Fisher-vector products on 4 of the 40 tasks
(``outer.fisher_subsample=0.1``, after [rllab]); the gradient and the line search's exact KL
check use all 40. It makes a halfcheetah-vel iteration about 2x faster (7.5 s against 15.1 s,
``adaptbed bench``). The cost, measured by ``python -m experiments.bench_fisher`` on three
meta-batches, is a less effective single step later in training: 0.99, 0.59 and 0.44 of the
full Fisher's surrogate improvement on a fresh policy and after 87 and 500 iterations. Over
whole runs of the same seed the return after adaptation was the same up to iteration 86 (-119.8
against -120.3). At iteration 500 (a full-Fisher run of seed 0, 2026-11-29) the full Fisher
read -77.1 after one step over iterations 490-499 against -82.4 with the subsample, and -83.1
against -87.4 on the test split: within one seed's noise. README, "One meta-iteration, and the
outer update" and "HalfCheetah at paper scale", has the commands. ``outer.fisher_subsample=1`` restores the paper's full Fisher.

halfcheetah-dir is the exception: it uses the full Fisher. With the 4-task Fisher its seed-0
run peaked near iteration 75-125 and fell (return after one step +12.3 over iterations
490-499, -44.7 on the test split at iteration 500); with the full Fisher the same seed kept
climbing (+453.4 over iterations 490-499; -86.3 before and +374.8 after one step on the test
split, +410.4 after three; the oracle: +506.3), and seed 1 with the full Fisher too (+503
over iterations 490-499, +449.3 after one step on the test split). Two seeds; README,
"HalfCheetah at paper scale" and "Results on halfcheetah-dir", has the commands. It costs about 15.6 s per
iteration here instead of about 12.7 s.
"""

from __future__ import annotations

from experiments.config import (Config, ConfigError, EnvConfig, MamlConfig, OuterConfig,
                                PolicyConfig, RunConfig)

FISHER_SUBSAMPLE_40_TASKS = 0.1  # [rllab] subsample_factor, by task: 4 of 40 (see above)


def _preset(name: str, *, meta_batch_size: int, episodes_per_task: int, fast_lr: float,
            num_inner_steps: int, iterations: int, fisher_subsample: float | None = None) -> Config:
    """A TRPO-MAML config for the family whose preset is ``name`` (2 x 100 ReLU policy);
    ``fisher_subsample`` defaults to 0.1 with 40 tasks or more, else 1 (see above)."""
    subsample = fisher_subsample
    if subsample is None:
        subsample = FISHER_SUBSAMPLE_40_TASKS if meta_batch_size >= 40 else 1.0
    return Config(
        env=EnvConfig(family=name),
        policy=PolicyConfig(hidden_sizes=(100, 100), activation="relu"),  # [MAML] sec. 5.3
        maml=MamlConfig(meta_batch_size=meta_batch_size, episodes_per_task=episodes_per_task,
                        fast_lr=fast_lr, num_inner_steps=num_inner_steps),
        outer=OuterConfig(fisher_subsample=subsample),
        run=RunConfig(iterations=iterations),
        preset=name,
    )


PRESETS: dict[str, Config] = {
    "navigation-2d": _preset(
        "navigation-2d",
        meta_batch_size=20,  # [MAML] A.2; [pmrl] 2d-navigation.yaml meta-batch-size 20
        episodes_per_task=20,  # [MAML] sec. 5.3; [pmrl] fast-batch-size 20
        fast_lr=0.1,  # [MAML] A.2; [pmrl] fast-lr 0.1
        num_inner_steps=1,  # [MAML] A.2 (one gradient step); [pmrl] num-steps 1
        iterations=500,  # [pmrl] num-batches 500 ([MAML] A.2: "up to 500 meta-iterations")
    ),
    "halfcheetah-vel": _preset(
        "halfcheetah-vel",
        meta_batch_size=40,  # [MAML] A.2; [pmrl] halfcheetah-vel.yaml meta-batch-size 40
        episodes_per_task=20,  # [MAML] sec. 5.3; [pmrl] fast-batch-size 20
        fast_lr=0.1,  # [MAML] A.2; [pmrl] fast-lr 0.1
        num_inner_steps=1,  # [MAML] A.2; [pmrl] num-steps 1
        iterations=500,  # [MAML] A.2; [pmrl] num-batches 500
    ),
    "halfcheetah-dir": _preset(
        "halfcheetah-dir",
        meta_batch_size=40,  # [MAML] A.2; [pmrl] halfcheetah-dir.yaml meta-batch-size 40
        episodes_per_task=20,  # [MAML] sec. 5.3; [pmrl] fast-batch-size 20
        fast_lr=0.1,  # [MAML] A.2; [pmrl] fast-lr 0.1
        num_inner_steps=1,  # [MAML] A.2; [pmrl] num-steps 1
        iterations=500,  # [MAML] A.2; [pmrl] num-batches 500
        fisher_subsample=1.0,  # the paper's full Fisher: the 4-task one lost the return (above)
    ),
    "ant-vel": _preset(
        "ant-vel",
        meta_batch_size=40,  # [MAML] A.2; [pmrl] ant-vel.yaml meta-batch-size 40
        episodes_per_task=20,  # [MAML] sec. 5.3; [pmrl] fast-batch-size 20
        fast_lr=0.1,  # [MAML] A.2; [pmrl] fast-lr 0.1
        num_inner_steps=1,  # [MAML] A.2; [pmrl] num-steps 1
        iterations=500,  # [MAML] A.2; [pmrl] num-batches 500
    ),
    "ant-dir": _preset(
        "ant-dir",
        meta_batch_size=40,  # [MAML] A.2; [pmrl] ant-dir.yaml meta-batch-size 40
        episodes_per_task=40,  # [MAML] sec. 5.3: ant forward/backward used 40 rollouts ([pmrl]: 20)
        fast_lr=0.1,  # [MAML] A.2; [pmrl] fast-lr 0.1
        num_inner_steps=1,  # [MAML] A.2; [pmrl] num-steps 1
        iterations=500,  # [MAML] A.2; [pmrl] num-batches 500
    ),
    "ant-dir-2d": _preset(
        "ant-dir-2d",
        meta_batch_size=40,  # [ProMP] run-script default meta_batch_size 40 ([MAML] is silent)
        episodes_per_task=20,  # [ProMP] rollouts_per_meta_task 20
        fast_lr=0.1,  # [ProMP] inner_lr 0.1
        num_inner_steps=1,  # [ProMP] run-script default num_inner_grad_steps 1
        iterations=1000,  # [ProMP] n_itr 1001 (iterations 0..1000)
    ),
    "ant-goal": _preset(
        "ant-goal",
        meta_batch_size=40,  # [ProMP] all_envs_eval AntRandGoalEnv meta_batch_size 40; [pmrl] 40
        episodes_per_task=20,  # [ProMP] rollouts_per_meta_task 20; [pmrl] fast-batch-size 20
        fast_lr=0.1,  # [ProMP] inner_lr 0.1; [pmrl] ant-goal.yaml fast-lr 0.1
        num_inner_steps=2,  # [ProMP] all_envs_eval AntRandGoalEnv num_inner_grad_steps 2
        #                     ([pmrl] ant-goal.yaml and cbfinn/maml_rl's ant goal script: 1)
        iterations=1000,  # [ProMP] n_itr 1001 ([pmrl]: num-batches 500)
    ),
    "hopper-params": _preset(
        "hopper-params",
        meta_batch_size=40,  # [ProMP] all_envs_eval HopperRandParamsEnv meta_batch_size 40
        episodes_per_task=20,  # [ProMP] rollouts_per_meta_task 20
        fast_lr=0.05,  # [ProMP] all_envs_eval inner_lr 0.05 for the rand-params envs (not 0.1)
        num_inner_steps=1,  # [ProMP] num_inner_grad_steps 1
        iterations=1000,  # [ProMP] n_itr 1001
    ),
    "walker-params": _preset(
        "walker-params",
        meta_batch_size=40,  # [ProMP] all_envs_eval Walker2DRandParamsEnv meta_batch_size 40
        episodes_per_task=20,  # [ProMP] rollouts_per_meta_task 20
        fast_lr=0.05,  # [ProMP] all_envs_eval inner_lr 0.05 for the rand-params envs (not 0.1)
        num_inner_steps=1,  # [ProMP] num_inner_grad_steps 1
        iterations=1000,  # [ProMP] n_itr 1001
    ),
}


def get_preset(name: str) -> Config:
    """The preset called ``name`` (configs are frozen, so it can be shared and overridden).

    Raises:
        ConfigError: unknown name; the message lists the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
