"""Test-session settings.

The test problems are tiny, and torch's intra-op threads only add synchronisation overhead to
them; on a loaded 2-core machine two threads made small meta-iterations about 4x slower than one
(measured: 24 s against 6 s for 10 tiny iterations). Tests therefore use one thread, in-process
and in the subprocesses they start.
"""

import os

import torch

os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
