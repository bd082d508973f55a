"""pytest plugin of the GPU suite (``bench/gpu_suite.sh`` loads it with ``-p gpu_suite_plugin``).

* ``VISTA_NO_TF32=1`` (applied by tests/conftest.py; reported in the header here): TF32 off for
  matmuls and cuDNN, so float references on the GPU are computed in full fp32.
* ``VISTA_SUITE_DEADLINE=<unix time>``: tests that would start after the deadline are skipped with
  the reason "suite time box", so the session still ends normally and writes its JUnit report
  (an outer ``timeout`` kill would lose it).
"""
from __future__ import annotations

import os
import time

import pytest


def _deadline():
    v = os.environ.get("VISTA_SUITE_DEADLINE", "").strip()
    try:
        return float(v) if v else None
    except ValueError:
        raise pytest.UsageError(f"VISTA_SUITE_DEADLINE must be a unix time in seconds, got {v!r}") from None


def pytest_configure(config):
    config._vista_deadline = _deadline()


def pytest_report_header(config):
    import torch

    return (f"vista gpu suite: allow_tf32 matmul={torch.backends.cuda.matmul.allow_tf32} "
            f"cudnn={torch.backends.cudnn.allow_tf32}; deadline={config._vista_deadline}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    d = item.config._vista_deadline
    if d is not None and time.time() > d:
        pytest.skip("suite time box: not started before the GPU suite's deadline")
