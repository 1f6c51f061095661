"""Tests of meta/adaptation.py's timing: CUDA timers wait for the GPU (checked without one)."""

from __future__ import annotations

import torch

from meta import adaptation


def test_clock_waits_for_cuda_work_and_not_on_cpu(monkeypatch):
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    adaptation.device_clock("cpu")
    assert waited == []
    adaptation.device_clock("cuda:0")
    assert waited == ["cuda:0"]
