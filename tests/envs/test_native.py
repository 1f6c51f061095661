"""The native stepping loop (envs/native.py, envs/mjbatch.c): building, falling back, MuJoCo
errors, gathered fields, threads. Its episodes equal the Python loop's and the single env's in
tests/envs/test_mujoco_batch.py (parametrized over both loops)."""

from __future__ import annotations

import os
import time

import mujoco
import numpy as np
import pytest
import torch

from envs import native
from envs.mujoco_batch import MujocoBatchEnv

needs_native = pytest.mark.skipif(
    native.library() is None, reason=f"native loop unavailable: {native.unavailable_reason()}")


@pytest.fixture
def reload_library():
    """``native.library()`` loaded afresh in the test, and again after it."""
    native.library.cache_clear()
    yield
    native.library.cache_clear()


@needs_native
def test_loads_the_extension_that_pip_install_built(reload_library):
    lib = native.library()
    assert lib is not None and native.unavailable_reason() is None
    assert native.extension_path().name.startswith("_mjbatch")
    venv = MujocoBatchEnv("HalfCheetahVel", 4, num_threads=2, min_envs_per_thread=1)
    try:
        assert venv.native
        venv.reset(seed=0)
        assert torch.isfinite(venv.step(torch.zeros(4, 6)).observations).all()
    finally:
        venv.close()


def test_without_the_extension_it_falls_back_to_the_python_loop(reload_library, monkeypatch):
    def not_built() -> None:
        raise ImportError("No module named 'envs._mjbatch'")

    monkeypatch.setattr(native, "extension_path", not_built)
    assert native.library() is None
    assert "envs._mjbatch" in native.unavailable_reason()
    with MujocoBatchEnv("HalfCheetahVel", 2, num_threads=1) as venv:
        assert not venv.native
        venv.reset(seed=0)
        assert torch.isfinite(venv.step(torch.zeros(2, 6)).observations).all()
    with pytest.raises(RuntimeError, match="native stepping loop is not available"):
        MujocoBatchEnv("HalfCheetahVel", 2, native=True)


@needs_native
def test_a_build_of_another_source_version_is_refused(reload_library, monkeypatch):
    monkeypatch.setattr(native, "source_sha256", lambda: "0" * 64)
    assert native.library() is None
    assert "another version of mjbatch.c" in native.unavailable_reason()
    assert "pip install -e ." in native.unavailable_reason()


def test_adaptbed_native_0_forces_the_python_loop(reload_library, monkeypatch):
    monkeypatch.setenv("ADAPTBED_NATIVE", "0")
    with MujocoBatchEnv("AntVel", 2, num_threads=1) as venv:
        assert not venv.native
    assert native.unavailable_reason() == "ADAPTBED_NATIVE=0"


@needs_native
def test_a_mujoco_fatal_error_raises_instead_of_ending_the_process(overflow_model):
    model = overflow_model
    datas = [mujoco.MjData(model) for _ in range(3)]
    stepper = native.Stepper(native.library(), 2, [model] * 3, datas, [d.ctrl for d in datas],
                             {"qpos": [d.qpos for d in datas]}, nstep=1, contacts=False)
    running = np.array([False, True, False])
    try:
        with pytest.raises(RuntimeError, match=r"env 1: .*stack overflow"):
            for _ in range(500):  # it falls, touches the plane, the solver's stack overflows
                stepper.step(np.zeros((3, 0)), running, threads=2, block=1)
        assert datas[0].time == datas[2].time == 0.0  # not running: never stepped
        with pytest.raises(mujoco.FatalError, match="stack overflow"):  # as the Python call
            fresh = mujoco.MjData(model)
            for _ in range(500):
                mujoco.mj_step(model, fresh)
    finally:
        stepper.close()


@needs_native
def test_step_gathers_every_field_and_steps_only_running_envs():
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><body><joint name="x" type="slide" axis="1 0 0"/><geom size=".1"/></body>'
        '</worldbody><actuator><motor joint="x" gear="1"/></actuator></mujoco>')
    datas = [mujoco.MjData(model) for _ in range(5)]
    fields = {"qpos": [d.qpos for d in datas], "qvel": [d.qvel for d in datas]}
    stepper = native.Stepper(native.library(), 2, [model] * 5, datas, [d.ctrl for d in datas],
                             fields, nstep=3, contacts=False)
    reference = mujoco.MjData(model)
    try:
        actions = np.arange(5, dtype=np.float64)[:, None]
        running = np.array([True, True, False, True, True])
        out = stepper.step(actions, running, threads=2, block=2)
        for i, data in enumerate(datas):
            np.testing.assert_array_equal(out["qpos"][i], data.qpos)
            np.testing.assert_array_equal(out["qvel"][i], data.qvel)
        assert datas[2].time == 0.0 and datas[2].ctrl[0] == 0.0
        mujoco.mj_resetData(model, reference)
        reference.ctrl[:] = 4.0
        mujoco.mj_step(model, reference, 3)
        np.testing.assert_array_equal(out["qpos"][4], reference.qpos)
        with pytest.raises(ValueError, match="expected actions"):  # before reading any memory
            stepper.step(np.zeros((4, 1)), running, threads=1, block=1)
    finally:
        stepper.close()
    with pytest.raises(RuntimeError, match="closed"):
        stepper.step(actions, running, threads=1, block=1)


@needs_native
@pytest.mark.parametrize("running_at", [(1, 6, 11), (0,), (11,), tuple(range(12))])
def test_the_running_envs_handed_out_first_keep_their_own_actions_and_slots(running_at):
    """The loop steps the running envs before the others (for balance); each env still gets
    its own action and its state lands in its own row."""
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><body><joint name="x" type="slide" axis="1 0 0"/><geom size=".1"/></body>'
        '</worldbody><actuator><motor joint="x" gear="1"/></actuator></mujoco>')
    datas = [mujoco.MjData(model) for _ in range(12)]
    fields = {"qvel": [d.qvel for d in datas]}
    stepper = native.Stepper(native.library(), 2, [model] * 12, datas, [d.ctrl for d in datas],
                             fields, nstep=2, contacts=False)
    try:
        actions = 1.0 + np.arange(12, dtype=np.float64)[:, None]
        running = np.isin(np.arange(12), running_at)
        out = stepper.step(actions, running, threads=2, block=1)
        for i, data in enumerate(datas):
            reference = mujoco.MjData(model)
            if running[i]:
                reference.ctrl[:] = actions[i]
                mujoco.mj_step(model, reference, 2)
            np.testing.assert_array_equal(out["qvel"][i], reference.qvel)
            assert data.time == reference.time
    finally:
        stepper.close()


@needs_native
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_pool_threads_end_at_close():
    def os_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    def settled() -> int:  # a joined Python thread's OS thread may take a moment to go
        deadline = time.monotonic() + 5
        while os_threads() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        return os_threads()

    before = os_threads()
    venv = MujocoBatchEnv("HalfCheetahDir", 16, num_threads=4, min_envs_per_thread=1,
                          native=True)
    venv.reset(seed=0)
    venv.step(torch.zeros(16, 6))
    assert os_threads() > before
    venv.close()
    assert settled() <= before  # (fewer if a thread of an earlier test was still going)


def _reset_and_step_in_child(venv: MujocoBatchEnv, out) -> None:
    venv.reset(seed=1)
    out.put(bool(torch.isfinite(venv.step(torch.zeros(8, 6)).observations).all()))
    venv.close()


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False])
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_resets_and_steps_with_its_own_threads_instead_of_hanging(native):
    """The pools' threads do not survive fork: a child resetting or stepping the parent's
    simulator would wait for them forever unless it starts pools of its own there (the
    native loop's, and the Python thread pool that resets, and steps without it)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    venv = MujocoBatchEnv("HalfCheetahVel", 8, num_threads=2, min_envs_per_thread=1,
                          native=native)
    try:
        venv.reset(seed=0)
        venv.step(torch.zeros(8, 6))
        out = ctx.Queue()
        child = ctx.Process(target=_reset_and_step_in_child, args=(venv, out))
        child.start()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
        assert child.exitcode == 0, "the child hung or failed"
        assert out.get(timeout=5) is True
        venv.reset(seed=2)  # the parent's pools still work
        assert torch.isfinite(venv.step(torch.zeros(8, 6)).observations).all()
    finally:
        venv.close()
