"""Tests of experiments/bench_fisher.py: the Fisher-estimate benchmark on a tiny meta-batch."""

from __future__ import annotations

import json
import shutil

import pytest

from experiments import bench_fisher, memory

TINY = ["--preset", "navigation-2d", "maml.meta_batch_size=4", "maml.episodes_per_task=4",
        "policy.hidden_sizes=16,16", "--torch-threads", "1"]


def test_parse_settings():
    assert bench_fisher.parse_settings("exact:1, first_order:0.1,exact") == [
        ("exact", 1.0), ("first_order", 0.1), ("exact", 1.0)]


@pytest.mark.parametrize("text", ["diagonal:1", "exact:0", "exact:1.5", "exact:half"])
def test_parse_settings_rejects(text):
    with pytest.raises(ValueError, match="setting"):
        bench_fisher.parse_settings(text)


def test_every_setting_steps_from_the_same_parameters(capsys):
    assert bench_fisher.main([*TINY, "--settings", "exact:1,exact:0.5,first_order:0.25"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["fisher"], r["fisher_tasks"]) for r in rows] == [
        ("exact", 4), ("exact", 2), ("first_order", 1)]
    assert rows[0]["speedup"] == 1.0 and rows[0]["improvement_ratio"] == 1.0
    assert len({r["return_before_adaptation"] for r in rows}) == 1  # one meta-batch
    for row in rows:
        assert row["accepted"] == 1.0
        assert 0 < row["kl"] <= 0.01 * (1 + 1e-6)  # the exact KL bound, whatever the estimate
        assert row["surrogate_improvement"] > 0
        # every line-search trial re-adapts from a candidate; it was timed, inside the step
        assert row["line_search_adaptations"] == row["ls_steps"] >= 1
        assert 0 < row["line_search_adaptation_seconds"] < row["seconds"]
        assert 0 < row["conjugate_gradient_seconds"] < row["seconds"]
        assert row["collect_seconds"] == rows[0]["collect_seconds"] > 0  # one meta-batch
        assert isinstance(row["minor_page_faults"], int) and row["minor_page_faults"] >= 0
        # the step's matrix products were counted and replayed
        assert row["matmul_gflop"] > 0 and row["matmul_isolated_seconds"] > 0
        assert row["matmul_share"] == pytest.approx(row["matmul_isolated_seconds"] / row["seconds"])
        assert row["malloc_keeps_freed"] == memory.supported()
        assert row["improvement_per_iteration_second"] == pytest.approx(
            row["surrogate_improvement"] / (row["collect_seconds"] + row["seconds"]))
    from meta import outer
    assert outer.candidate_loss_and_kl.__module__ == "meta.outer"  # timers removed afterwards


@pytest.mark.parametrize("argv, needle", [
    (["--settings", "exact:2"], "setting"),
    (["--run-dir", "/nonexistent/run"], "config.json"),
    (["outer.fisher_subsample=0"], "fisher_subsample"),
    (["--checkpoint", "/nonexistent.pt"], "--run-dir"),
])
def test_bad_input_is_one_line(argv, needle, capsys):
    assert bench_fisher.main([*TINY, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_checkpoint_chooses_the_starting_parameters(tmp_path, capsys):
    from experiments import train

    run = tmp_path / "run"
    tiny = ["maml.meta_batch_size=4", "maml.episodes_per_task=4", "policy.hidden_sizes=16,16"]
    assert train.main(["--preset", "navigation-2d", "--iterations", "1", "--run-dir", str(run),
                       "--quiet", *tiny]) == 0
    first = run / "checkpoints" / "iteration-1.pt"
    shutil.copy(run / "checkpoints" / "latest.pt", first)
    assert train.main(["--resume", "--run-dir", str(run), "--iterations", "2", "--quiet"]) == 0
    capsys.readouterr()

    def row(*extra: str) -> dict:
        assert bench_fisher.main(["--run-dir", str(run), "--settings", "exact:1",
                                  "--torch-threads", "1", *extra]) == 0
        return json.loads(capsys.readouterr().out.splitlines()[0])

    latest, older = row(), row("--checkpoint", str(first))
    assert latest["checkpoint"] is None and older["checkpoint"] == str(first)
    assert latest["return_before_adaptation"] != older["return_before_adaptation"]
    first.write_bytes(b"garbage")
    assert bench_fisher.main(["--run-dir", str(run), "--checkpoint", str(first)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_timed_outer_parts_use_the_clock(monkeypatch):
    """Every sub-timer reads the clock (``meta.adaptation.device_clock``, which waits for queued
    CUDA work: ``tests/meta/test_adaptation.py``) on the given device before and after its
    call."""
    from meta import outer

    reads = []
    monkeypatch.setattr(bench_fisher, "clock", lambda device: reads.append(device) or len(reads))
    monkeypatch.setattr(outer, "conjugate_gradient_and_product", lambda *a, **k: "cg")
    monkeypatch.setattr(outer, "candidate_loss_and_kl", lambda *a, **k: "trial")
    timers: dict[str, float] = {}
    with bench_fisher.timed_outer_parts(timers, "cuda"):
        assert outer.conjugate_gradient_and_product() == "cg"
        assert outer.candidate_loss_and_kl() == "trial"
    assert reads == ["cuda"] * 4
    assert timers["conjugate_gradient"] == 1 and timers["line_search"] == 1
    assert timers["line_search_calls"] == 1


def test_the_step_and_its_parts_are_timed_by_the_clock(monkeypatch, capsys):
    """A clock that ticks once per read: the step's ``seconds`` counts the reads inside it, so
    it is read around the step, and every part twice (conjugate gradient once, each trial)."""
    ticks = []
    monkeypatch.setattr(bench_fisher, "clock", lambda device: ticks.append(device) or len(ticks))
    assert bench_fisher.main([*TINY, "--settings", "exact:1"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(ticks) == {"cpu"}
    assert row["conjugate_gradient_seconds"] == 1
    assert row["line_search_adaptation_seconds"] == row["line_search_adaptations"] >= 1
    assert row["seconds"] == 1 + 2 * (1 + row["line_search_adaptations"])
