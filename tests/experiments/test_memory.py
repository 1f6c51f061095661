"""experiments/memory.py: the allocator keeps freed memory, so big tensors stop page-faulting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from experiments import memory

# Allocate, touch and free a 64 MiB tensor 20 times (after 10 untimed), then print the page
# faults that took. 64 MiB is above glibc's largest dynamic mmap threshold (32 MiB), so by
# default every allocation is a fresh mmap whose 16,384 pages fault in again.
CHURN = """
import json, resource, sys, torch
from experiments.memory import keep_freed_memory
kept = keep_freed_memory()
for _ in range(10):  # warm-up: the heap grows to its working size
    torch.ones(16 * 1024 * 1024).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 1024 * 1024).sum()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def churn(allocator: str) -> dict[str, int | bool]:
    """Run ``CHURN`` in a fresh process with ``ADAPTBED_MALLOC=allocator``: whether the setting
    took effect (``kept``) and the page faults (``faults``)."""
    env = {**os.environ, "ADAPTBED_MALLOC": allocator}
    out = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout)


def test_system_setting_is_reported_unsupported_and_left_alone(monkeypatch):
    monkeypatch.setenv("ADAPTBED_MALLOC", "system")
    assert memory.supported() is False
    assert memory.keep_freed_memory() is False


@pytest.mark.skipif(memory._glibc() is None, reason="the setting exists for glibc only")
def test_freed_memory_is_reused_instead_of_faulting_in_again():
    default, kept = churn("system"), churn("")
    assert (default["kept"], kept["kept"]) == (False, True)
    pages = 20 * 16 * 1024 * 1024 * 4 // 4096  # every allocation paged in anew: 327,680
    # by default each allocation faults its pages in again (measured here: 327,700), unless
    # e.g. transparent huge pages back every mapping; kept, the heap's pages are reused
    # (measured here: 0)
    assert kept["faults"] < 0.05 * pages
    assert kept["faults"] <= default["faults"]
