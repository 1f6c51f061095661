"""Config dataclasses, presets, overrides, JSON round trip, validation and --help text."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from envs.registry import FAMILIES, family
from experiments.config import (
    Config,
    ConfigError,
    EnvConfig,
    MamlConfig,
    OuterConfig,
    PolicyConfig,
    RunConfig,
    apply_overrides,
    field_help,
    flatten,
    from_dict,
    help_text,
    load_json,
    save_json,
    to_dict,
    validate,
)
from experiments.presets import PRESETS, get_preset

SECTIONS = (EnvConfig, PolicyConfig, MamlConfig, OuterConfig, RunConfig, Config)
BASE = "navigation-2d"  # a valid starting point for the validation table
ALL_KEYS = [
    f"{section.name}.{f.name}"
    for section in dataclasses.fields(Config) if dataclasses.is_dataclass(section.default_factory)
    for f in dataclasses.fields(section.default_factory)
] + ["preset"]


# --------------------------------------------------------------------------- JSON round trip


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name):
    cfg = get_preset(name)
    text = json.dumps(to_dict(cfg))
    assert from_dict(json.loads(text)) == cfg


def test_round_trip_of_a_non_default_config():
    cfg = apply_overrides(Config(), ["policy.hidden_sizes=7,8,9", "maml.first_order=true",
                                     "outer.algo=ppo", "run.run_dir=out/x", "preset=custom"])
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_to_dict_is_json_ready_and_from_dict_restores_tuples():
    d = to_dict(Config())
    assert d["policy"]["hidden_sizes"] == [100, 100]
    assert isinstance(d["policy"]["hidden_sizes"], list)
    assert isinstance(from_dict(d).policy.hidden_sizes, tuple)


def test_from_dict_fills_missing_keys_with_defaults_and_widens_ints_to_floats():
    cfg = from_dict({"maml": {"fast_lr": 1}})
    assert cfg.maml.fast_lr == 1.0 and isinstance(cfg.maml.fast_lr, float)
    assert cfg.maml.meta_batch_size == MamlConfig().meta_batch_size


@pytest.mark.parametrize("d, key, valid", [
    ({"maml": {"fast_lrr": 0.1}}, "maml.fast_lrr", "fast_lr"),
    ({"mamll": {}}, "mamll", "maml"),
    ({"run": {"seed": 0, "colour": "red"}}, "run.colour", "seed"),
])
def test_from_dict_rejects_unknown_keys_and_lists_valid_ones(d, key, valid):
    with pytest.raises(ConfigError, match=key) as err:
        from_dict(d)
    assert valid in str(err.value)


def test_from_dict_ignores_the_retired_keys_of_older_run_directories():
    """A config.json written before ``run.eval_every`` was removed still loads, unchanged."""
    old = {"run": {"seed": 3, "eval_every": 0}, "maml": {"fast_lr": 0.2}}
    cfg = from_dict(old)
    assert cfg.run.seed == 3 and cfg.maml.fast_lr == 0.2
    assert old["run"] == {"seed": 3, "eval_every": 0}  # the caller's dict is not modified
    assert "eval_every" not in to_dict(cfg)["run"]


@pytest.mark.parametrize("d", [
    {"maml": {"meta_batch_size": "20"}},
    {"maml": {"meta_batch_size": True}},
    {"maml": {"first_order": 1}},
    {"policy": {"hidden_sizes": [64, "x"]}},
    {"maml": 3},
])
def test_from_dict_rejects_wrong_types(d):
    with pytest.raises(ConfigError):
        from_dict(d)


def test_save_and_load_json(tmp_path):
    cfg = apply_overrides(get_preset("ant-goal"), ["run.seed=7"])
    save_json(cfg, tmp_path / "config.json")
    assert load_json(tmp_path / "config.json") == cfg


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("override, section, name, expected", [
    ("maml.meta_batch_size=7", "maml", "meta_batch_size", 7),
    ("run.seed=-3", "run", "seed", -3),
    ("maml.fast_lr=0.05", "maml", "fast_lr", 0.05),
    ("outer.cg_damping=1e-3", "outer", "cg_damping", 1e-3),
    ("outer.max_kl=1", "outer", "max_kl", 1.0),
    ("maml.first_order=true", "maml", "first_order", True),
    ("maml.first_order=True", "maml", "first_order", True),
    ("maml.first_order=1", "maml", "first_order", True),
    ("maml.first_order=yes", "maml", "first_order", True),
    ("run.quiet=false", "run", "quiet", False),
    ("run.quiet=0", "run", "quiet", False),
    ("run.quiet=no", "run", "quiet", False),
    ("policy.hidden_sizes=64,64", "policy", "hidden_sizes", (64, 64)),
    ("policy.hidden_sizes=[64, 32]", "policy", "hidden_sizes", (64, 32)),
    ("policy.hidden_sizes=(16,)", "policy", "hidden_sizes", (16,)),
    ("policy.hidden_sizes=128", "policy", "hidden_sizes", (128,)),
    ("policy.hidden_sizes=[]", "policy", "hidden_sizes", ()),
    ("outer.algo=ppo", "outer", "algo", "ppo"),
    ("env.family=adaptbed/AntGoal-v0", "env", "family", "adaptbed/AntGoal-v0"),
    ("run.run_dir=runs/a=b", "run", "run_dir", "runs/a=b"),
])
def test_override_of_every_type(override, section, name, expected):
    value = getattr(getattr(apply_overrides(Config(), [override]), section), name)
    assert value == expected
    assert type(value) is type(expected)


def test_top_level_override_and_order():
    cfg = apply_overrides(Config(), ["preset=mine", "maml.fast_lr=0.3", "maml.fast_lr=0.2"])
    assert cfg.preset == "mine"
    assert cfg.maml.fast_lr == 0.2


def test_override_returns_a_new_config_and_leaves_the_original_unchanged():
    original = get_preset(BASE)
    snapshot = to_dict(original)
    new = apply_overrides(original, ["maml.fast_lr=0.05", "policy.hidden_sizes=8"])
    assert new is not original
    assert new.maml is not original.maml
    assert to_dict(original) == snapshot
    assert get_preset(BASE) == original
    assert (new.maml.fast_lr, new.policy.hidden_sizes) == (0.05, (8,))
    assert new.outer is original.outer  # untouched sections are shared, which frozen makes safe


def test_configs_are_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.maml.fast_lr = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("override, needle", [
    ("maml.fast_lr", "KEY=VALUE"),
    ("=3", "KEY=VALUE"),
    ("mamll.fast_lr=0.1", "mamll.fast_lr"),
    ("maml.fast_lrr=0.1", "maml.fast_lrr"),
    ("maml=0.1", "maml"),
    ("maml.fast_lr.x=0.1", "maml.fast_lr.x"),
    ("maml.fast_lr=fast", "float"),
    ("maml.fast_lr=inf", "float"),
    ("maml.meta_batch_size=2.5", "int"),
    ("maml.meta_batch_size=", "int"),
    ("maml.first_order=maybe", "bool"),
    ("policy.hidden_sizes=64,x", "list of int"),
    ("policy.hidden_sizes=64,,64", "list of int"),
])
def test_bad_overrides_raise_one_line_config_error(override, needle):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), [override])
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_bad_value_error_names_the_key():
    with pytest.raises(ConfigError, match=r"maml\.meta_batch_size: expected an int"):
        apply_overrides(Config(), ["maml.meta_batch_size=lots"])


def test_unknown_field_error_lists_valid_fields():
    with pytest.raises(ConfigError, match="fast_lr, first_order"):
        apply_overrides(Config(), ["maml.lr=0.1"])


# --------------------------------------------------------------------------- validation

INVALID = [
    (["maml.meta_batch_size=0"], "maml.meta_batch_size"),
    (["maml.meta_batch_size=-1"], "maml.meta_batch_size"),
    (["maml.episodes_per_task=0"], "maml.episodes_per_task"),
    (["maml.num_inner_steps=-1"], "maml.num_inner_steps"),
    (["run.iterations=0"], "run.iterations"),
    (["outer.cg_iters=0"], "outer.cg_iters"),
    (["outer.ls_max_steps=0"], "outer.ls_max_steps"),
    (["outer.ppo_epochs=0"], "outer.ppo_epochs"),
    (["run.checkpoint_every=0"], "run.checkpoint_every"),
    (["run.keep_every=-1"], "run.keep_every"),
    (["run.max_wave_envs=-1"], "run.max_wave_envs"),
    (["run.max_wave_envs=63"], "run.max_wave_envs"),
    (["policy.hidden_sizes=64,0"], "policy.hidden_sizes"),
    (["policy.hidden_sizes=-5"], "policy.hidden_sizes"),
    (["maml.fast_lr=0"], "maml.fast_lr"),
    (["maml.fast_lr=-0.1"], "maml.fast_lr"),
    (["outer.lr=0"], "outer.lr"),
    (["outer.max_kl=0"], "outer.max_kl"),
    (["outer.max_kl=-0.01"], "outer.max_kl"),
    (["maml.gamma=0"], "maml.gamma"),
    (["maml.gamma=1.01"], "maml.gamma"),
    (["maml.gae_lambda=0"], "maml.gae_lambda"),
    (["maml.gae_lambda=1.5"], "maml.gae_lambda"),
    (["outer.ls_backtrack_ratio=0"], "outer.ls_backtrack_ratio"),
    (["outer.ls_backtrack_ratio=1"], "outer.ls_backtrack_ratio"),
    (["outer.clip_eps=0"], "outer.clip_eps"),
    (["outer.clip_eps=-0.2"], "outer.clip_eps"),
    (["outer.cg_damping=-1e-5"], "outer.cg_damping"),
    (["outer.inner_kl_coef=-0.1"], "outer.inner_kl_coef"),
    (["policy.init_std=0"], "policy.init_std"),
    (["outer.algo=sgd"], "outer.algo"),
    (["outer.fisher=diagonal"], "outer.fisher"),
    (["outer.fisher_subsample=0"], "outer.fisher_subsample"),
    (["outer.fisher_subsample=1.5"], "outer.fisher_subsample"),
    (["policy.activation=gelu"], "policy.activation"),
    (["run.device=tpu"], "run.device"),
    (["maml.inner_batching=fast"], "maml.inner_batching"),
    (["maml.inner_objective=dice"], "maml.inner_objective"),
    (["env.family=NoSuchFamily"], "NoSuchFamily"),
    (["run.sampler=fast"], "run.sampler"),
    (["run.sampler=native"], "run.sampler=native runs the MuJoCo families"),  # Navigation2D
    (["env.family=HalfCheetahVel", "run.sampler=native", "run.device=cuda"],
     "run.sampler=native runs on the CPU"),
]


@pytest.mark.parametrize("overrides, needle", INVALID, ids=[o[0] for o, _ in INVALID])
def test_validate_rejects(overrides, needle):
    cfg = apply_overrides(get_preset(BASE), overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


VALID_EDGES = [
    ["maml.gamma=1", "maml.gae_lambda=1"],
    ["maml.gamma=1e-6", "maml.gae_lambda=0.01"],
    ["outer.cg_damping=0", "outer.inner_kl_coef=0"],
    ["outer.ls_backtrack_ratio=0.999", "outer.clip_eps=1e-3"],
    ["outer.algo=ppo", "policy.activation=tanh", "maml.inner_batching=loop"],
    ["outer.algo=adam", "maml.inner_batching=batched"],
    ["outer.algo=ppo", "maml.inner_objective=lvc"],
    ["policy.hidden_sizes=[]"],
    ["env.family=adaptbed/HalfCheetahVel-v0"],
    ["env.family=HalfCheetahVel"],
    ["env.family=AntGoal", "run.sampler=native"],
]


@pytest.mark.parametrize("overrides", VALID_EDGES, ids=[" ".join(o) for o in VALID_EDGES])
def test_validate_accepts_boundary_values(overrides):
    validate(apply_overrides(get_preset(BASE), overrides))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_cuda_without_a_gpu_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = apply_overrides(get_preset(BASE), ["run.device=cuda"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == "--device cuda was requested but no CUDA GPU is available"


def test_cuda_with_a_gpu_validates(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate(apply_overrides(get_preset(BASE), ["run.device=cuda"]))


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("cls", SECTIONS, ids=[c.__name__ for c in SECTIONS])
def test_every_field_has_a_docstring(cls):
    docs = field_help(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    assert sorted(docs) == sorted(names), f"fields without docstring: {set(names) - set(docs)}"
    assert all(docs[name].strip() for name in names)


def test_field_help_reads_the_docstring_under_the_field():
    assert "inner-loop" in field_help(MamlConfig)["fast_lr"]
    assert "trpo, ppo or adam" in field_help(OuterConfig)["algo"]


def test_help_text_lists_every_key_with_type_default_and_doc():
    text = help_text()
    assert "maml.fast_lr" in text
    for key in ALL_KEYS:
        assert key in text, key
    assert "maml.fast_lr (float, default 0.1)" in text
    assert "policy.hidden_sizes (tuple[int, ...], default 100,100)" in text
    assert field_help(MamlConfig)["fast_lr"] in text


def test_help_text_can_show_a_presets_defaults():
    assert "maml.meta_batch_size (int, default 40)" in help_text(get_preset("ant-vel"))


@pytest.mark.parametrize("argv, batch", [(["--help"], 20),
                                         (["--preset", "ant-vel", "--help"], 40),
                                         (["--preset=ant-vel", "--help"], 40),
                                         (["--preset", "rocket", "--help"], 20)])
def test_train_help_shows_the_given_presets_defaults(argv, batch, capsys):
    from experiments import train

    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert stop.value.code == 0
    assert f"maml.meta_batch_size (int, default {batch})" in capsys.readouterr().out


def test_flatten_has_every_key():
    flat = flatten(get_preset("ant-dir"))
    assert sorted(flat) == sorted(ALL_KEYS)
    assert flat["maml.episodes_per_task"] == get_preset("ant-dir").maml.episodes_per_task


# --------------------------------------------------------------------------- presets


def test_every_family_has_a_preset_and_nothing_else_does():
    assert sorted(PRESETS) == sorted(spec.preset for spec in FAMILIES)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_and_names_its_family(name):
    cfg = get_preset(name)
    validate(cfg)
    assert cfg.preset == name
    assert family(cfg.env.family).preset == name


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_follow_maml_defaults(name):
    cfg = get_preset(name)
    assert cfg.policy.hidden_sizes == (100, 100) and cfg.policy.activation == "relu"
    assert cfg.outer.algo == "trpo" and cfg.outer.max_kl == 0.01
    assert cfg.maml.meta_batch_size == (20 if name == "navigation-2d" else 40)
    assert cfg.maml.episodes_per_task == (40 if name == "ant-dir" else 20)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_subsample_the_fisher_only_with_40_tasks(name):
    """The one deviation from the paper's TRPO: the 40-task presets estimate the Fisher-vector
    products on 4 tasks (outer.fisher_subsample); navigation's 20 tasks keep all, and so does
    halfcheetah-dir, where the 4-task Fisher lost the return (README)."""
    cfg = get_preset(name)
    assert cfg.outer.fisher == "exact"
    full = name in ("navigation-2d", "halfcheetah-dir")
    assert cfg.outer.fisher_subsample == (1.0 if full else 0.1)


def test_maml_paper_families_use_the_papers_inner_loop():
    for name in ("navigation-2d", "halfcheetah-vel", "halfcheetah-dir", "ant-vel", "ant-dir"):
        cfg = get_preset(name)
        assert (cfg.maml.fast_lr, cfg.maml.num_inner_steps, cfg.run.iterations) == (0.1, 1, 500)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'tiny'") as err:
        get_preset("tiny")
    for name in PRESETS:
        assert name in str(err.value)


def test_the_configs_choice_lists_are_those_of_the_code_they_configure():
    """experiments/config.py imports nothing of the package, so it keeps copies: in step."""
    from experiments import config as cfglib
    from meta import maml, outer

    assert cfglib.INNER_OBJECTIVES == maml.INNER_OBJECTIVES
    assert cfglib.FISHER == outer.FISHER
    assert set(cfglib.INNER_BATCHING) == {"auto", *maml.BATCHING}
