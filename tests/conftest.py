"""Test-wide settings: one intra-op thread (the test models are tiny, and OpenMP threads that
spin while another process holds the cores make small ops many times slower); subprocesses inherit it."""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
