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


def apply_tf32_switch():
    """``VISTA_NO_TF32=1`` (set by bench/gpu_suite.sh): TF32 off for matmuls and cuDNN, so the float
    references of the ``gpu`` tests are computed in full fp32 on the GPU."""
    if os.environ.get("VISTA_NO_TF32", "") not in ("", "0"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


apply_tf32_switch()

# Tiny tensors everywhere: one intra-op thread avoids OpenMP spin/contention overheads that made
# small ops 10-25x slower on the 2-core CI machine.
torch.set_num_threads(1)


# Tiny saved models for tests/test_cli.py and tests/test_pipeline.py (built once per session,
# under the session's base temp dir; see tests/_fixtures.py).
from _fixtures import tiny_dir  # noqa: E402


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return tiny_dir(tmp_path_factory, "llava")


@pytest.fixture(scope="module")
def scout(tmp_path_factory):
    return tiny_dir(tmp_path_factory, "scout")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module, restored afterwards (use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models gain nothing from threads,
    and on a loaded 2-core box OpenMP synchronisation makes every op ~20-25x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
