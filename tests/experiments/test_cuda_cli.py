"""The command-line workflow on a CUDA device: train, resume, evaluate.

Run by ``make gpu-check`` (``pytest -m gpu``); skipped cleanly on machines without a CUDA GPU
(CI has none). The MAML core's own CUDA tests are in ``tests/meta/test_cuda.py``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from experiments import evaluate, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL = ["maml.meta_batch_size=4", "maml.episodes_per_task=4", "policy.hidden_sizes=16,16"]


def progress(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "progress.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def finite(row: dict[str, str], *keys: str) -> bool:
    return all(math.isfinite(float(row[k])) for k in keys)


def test_halfcheetah_trains_resumes_and_evaluates_on_cuda(tmp_path):
    run = tmp_path / "hc"
    # with the Fisher on 1 of the 4 tasks the first trials overshoot the KL bound; a tiny bound
    # made every CPU iteration reject some, so the line search's early stop runs on CUDA
    assert train.main(["--preset", "halfcheetah-vel", "--device", "cuda", "--iterations", "2",
                       "--run-dir", str(run), "--quiet", *SMALL, "outer.max_kl=1e-6"]) == 0
    assert train.main(["--resume", "--run-dir", str(run), "--iterations", "3", "--quiet"]) == 0
    rows = progress(run)
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    assert all(finite(r, "return_step_0", "return_step_1", "loss_before", "kl") for r in rows)
    assert max(float(r["ls_steps"]) for r in rows) > 1  # some trial was rejected
    assert json.loads((run / "config.json").read_text())["config"]["run"]["device"] == "cuda"
    assert torch.cuda.max_memory_allocated() > 0  # tensors did live on the GPU
    assert evaluate.main([str(run), "--max-tasks", "2", "--episodes-per-step", "4",
                          "--inner-steps", "2", "--baselines", "random,stand_still",
                          "--quiet"]) == 0
    doc = json.loads((run / "eval" / "test.json").read_text())
    assert set(doc["agents"]) == {"maml", "random", "stand_still"}
    maml = doc["agents"]["maml"]
    assert len(maml["mean"]) == 3 and all(math.isfinite(x) for x in maml["mean"])


def test_navigation_trains_on_cuda(tmp_path):
    run = tmp_path / "nav"
    assert train.main(["--preset", "navigation-2d", "--device", "cuda", "--iterations", "2",
                       "--run-dir", str(run), "--quiet", *SMALL]) == 0
    rows = progress(run)
    assert [int(r["iteration"]) for r in rows] == [0, 1]
    assert all(finite(r, "return_step_0", "return_step_1", "loss_before", "kl") for r in rows)
