"""Smoke test of ``adaptbed bench`` (experiments/bench.py): keys, finite positive numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from experiments import bench, memory

KEYS = ("physics_limit_sps", "physics_limit_python_sps", "physics_batch_sps", "sampler_sps",
        "gym_sync_sps", "gym_async_sps", "sampler_over_physics", "sampler_over_physics_batch",
        "sampler_over_best_gym", "iteration_over_physics", "peak_rss_mb",
        "iteration_sampling_sps", "iteration_physics_batch_sps",
        "iteration_over_physics_batch")
SPLIT = ("sampling", "adaptation", "outer_update", "total")


def test_quick_json_run_reports_every_measurement(capsys):
    assert bench.main(["--quick", "--family", "HalfCheetahVel", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["family"] == "HalfCheetahVel" and result["preset"] == "halfcheetah-vel"
    for key in KEYS:
        assert math.isfinite(result[key]) and result[key] > 0, key
    for name in ("iteration_seconds", "first_iteration_seconds"):  # warm, then the first
        split = result[name]
        for key in SPLIT:
            assert math.isfinite(split[key]) and split[key] > 0, key
        assert split["total"] >= split["sampling"] + split["outer_update"]
    assert result["iteration_env_steps"] == 2 * 2 * 2 * 200  # 2 rounds, 2 tasks x 2 episodes
    assert (result["iteration_tasks"], result["iteration_episodes_per_task"]) == (2, 2)
    for key in ("physics_limit_sps", "sampler_sps", "physics_batch_sps", "sampler_over_physics"):
        rounds = result[f"{key}_rounds"]  # three rounds by default; the key holds the median
        assert len(rounds) == 3 and result[key] == sorted(rounds)[1]
    per_round = [s / p for s, p in zip(result["sampler_sps_rounds"],
                                       result["physics_limit_sps_rounds"])]
    assert result["sampler_over_physics_rounds"] == pytest.approx(per_round)
    assert result["iteration_over_physics_batch"] == pytest.approx(
        result["iteration_sampling_sps"] / result["iteration_physics_batch_sps"])
    # CPU seconds per wall second: some, and at most one per thread (the policy's included)
    assert len(result["sampler_cores_busy_rounds"]) == 3
    assert all(0 < c <= result["threads"] + 1.5 for c in result["sampler_cores_busy_rounds"])
    assert result["native_loop"] == (bench.envs_native.library() is not None)
    if result["native_loop"]:  # the Python loop measured beside it
        assert len(result["sampler_python_loop_sps_rounds"]) == 3
        assert result["python_loop_over_physics_rounds"] == pytest.approx(
            [s / p for s, p in zip(result["sampler_python_loop_sps_rounds"],
                                   result["physics_limit_sps_rounds"])])
        assert len(result["sampler_native_sps_rounds"]) == 3  # and the native sampler
        assert result["native_sampler_over_physics_rounds"] == pytest.approx(
            [s / p for s, p in zip(result["sampler_native_sps_rounds"],
                                   result["physics_limit_sps_rounds"])])


def test_iteration_only_measures_the_meta_iteration_with_overrides(capsys):
    argv = ["outer.fisher_subsample=1", "--quick", "--family", "HalfCheetahVel",
            "--iteration-only"]
    assert bench.main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "sampler_sps" not in result and result["overrides"] == ["outer.fisher_subsample=1"]
    assert result["iteration_seconds"]["total"] > 0 and result["peak_rss_mb"] > 0
    assert result["peak_cuda_mb"] is None  # on the CPU
    assert result["malloc_keeps_freed"] == memory.supported()  # as `adaptbed` does
    assert bench.main(argv) == 0
    assert "meta-iteration halfcheetah-vel" in capsys.readouterr().out


def test_physics_batch_steps_every_environment_every_round_python_loop(monkeypatch):
    spec = bench.family("HalfCheetahVel")
    work = bench.Workload(tasks=2, episodes_per_task=3, horizon=4)
    calls = []
    real = bench.mujoco.mj_step

    def counting(model, data, nstep):
        calls.append((id(data), nstep))
        real(model, data, nstep)

    monkeypatch.setattr(bench.envs_native, "library", lambda: None)
    monkeypatch.setattr(bench.mujoco, "mj_step", counting)
    sps = bench.physics_batch_sps(spec, work, threads=2)
    assert sps > 0
    assert len(calls) == 6 * 4 and len({d for d, _ in calls}) == 6
    assert {n for _, n in calls} == {5}  # HalfCheetah's frame skip


@pytest.mark.skipif(bench.envs_native.library() is None, reason="native loop unavailable")
def test_physics_batch_steps_every_environment_every_round_native_loop(monkeypatch):
    spec = bench.family("HalfCheetahVel")
    work = bench.Workload(tasks=2, episodes_per_task=3, horizon=4)
    datas = []
    real = bench.mujoco.MjData

    def recording(model):
        datas.append(real(model))
        return datas[-1]

    monkeypatch.setattr(bench.mujoco, "MjData", recording)
    assert bench.physics_batch_sps(spec, work, threads=2) > 0
    timestep = bench.make(spec.name).unwrapped.model.opt.timestep
    stepped = [data for data in datas if data.time > 0]  # the prototype env's is not
    assert len(stepped) == 6
    for data in stepped:  # 4 rounds x frame skip 5 substeps each
        assert data.time == pytest.approx(4 * 5 * timestep)


@pytest.mark.parametrize("argv, message", [
    (["--family", "Navigation2D"], "not a MuJoCo family"),
    (["--family", "NoSuchFamily"], "unknown task family"),
    (["--quick", "--envs", "3"], "--envs"),
    (["--quick", "--rounds", "0"], "--rounds"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_exits_2_with_one_line(capsys):
    assert bench.main(["--quick", "--device", "cuda", "--family", "HalfCheetahVel"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0]


@pytest.mark.parametrize("name", ["HalfCheetahVel", "AntVel"])
def test_physics_limit_rolls_out_the_envs_physics(name):
    """The limit's C rollout steps what the env steps: from a fresh ``MjData``, ``frame_skip``
    ``mj_step`` calls per env step with the control held, whole episodes, on two threads
    (checked against Python stepping; no warning may stop an episode early)."""
    spec = bench.family(name)
    work = bench.Workload(tasks=1, episodes_per_task=3, horizon=200)
    model, frame_skip = bench._model_and_frame_skip(spec)
    initial, controls = bench.limit_rollout_inputs(model, frame_skip, work)
    assert initial.shape[0] == 1 and controls.shape == (3, 200 * frame_skip, model.nu)
    datas = [bench.mujoco.MjData(model) for _ in range(2)]
    with bench.rollout.Rollout(nthread=2) as pool:
        states, _ = pool.rollout(model, datas, initial, controls, chunk_size=1)
    nq, nv = model.nq, model.nv
    for b in range(3):
        data = bench.mujoco.MjData(model)
        for t in range(work.horizon):
            data.ctrl[:] = controls[b, t * frame_skip]
            bench.mujoco.mj_step(model, data, frame_skip)
        assert not any(w.number for w in data.warning)
        np.testing.assert_array_equal(data.qpos, states[b, -1, 1:1 + nq])
        np.testing.assert_array_equal(data.qvel, states[b, -1, 1 + nq:1 + nq + nv])
    assert bench.physics_limit_sps(spec, work, threads=2) > 0
    assert bench.physics_limit_python_sps(spec, work, threads=2) > 0


def test_peak_cuda_memory_is_the_allocators_peak_on_cuda_only(monkeypatch):
    """Faked here (no GPU): on ``cuda`` the key is ``torch.cuda.max_memory_allocated`` in MiB,
    and the readable output shows it; on the CPU it is ``None`` and not shown."""
    asked = []
    monkeypatch.setattr(bench.torch.cuda, "max_memory_allocated",
                        lambda device=None: asked.append(device) or 3 * 2**20)
    assert bench.peak_cuda_mb("cpu") is None and asked == []
    assert bench.peak_cuda_mb("cuda") == 3.0 and asked == [torch.device("cuda")]
    result = {"family": "X", "preset": "p", "meta_batch": "2x2", "peak_rss_mb": 100.0,
              "iteration_seconds": {"sampling": 1.0}}
    assert "CUDA" not in bench.render_iteration({**result, "peak_cuda_mb": None})
    assert "peak CUDA memory 3 MB" in bench.render_iteration({**result, "peak_cuda_mb": 3.0})
