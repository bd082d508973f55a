"""Shared test set-up: Triton runs in its CPU interpreter when there is no CUDA device."""
import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported by the kernels under test.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still runs in CI)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Tiny tensors everywhere: one intra-op thread avoids OpenMP spin/contention overheads that made
# small ops 10-25x slower on the 2-core CI machine.
torch.set_num_threads(1)
