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


def _build_tiny(base, kind: str) -> str:
    """A tiny saved model ("llava", "qwen" or "scout") under ``base``, built once per session."""
    if kind not in ("llava", "qwen", "scout"):
        raise ValueError(f"kind must be 'llava', 'qwen' or 'scout', got {kind!r}")
    d = base / "vista_tiny" / kind
    if not (d / "config.json").exists():
        if kind == "llava":
            from vista.tiny_models import build_tiny_llava_onevision as build
        elif kind == "qwen":
            from vista.tiny_models import build_tiny_qwen2_5_vl as build
        else:
            from vista.scout import build_tiny_scout as build
        build(str(d), seed=0)
    return str(d)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(kind)``: the directory of a tiny random model saved once per test session
    (kind "llava" = LLaVA-OneVision, "qwen" = Qwen2.5-VL, "scout" = BLIP-2 ITM scout)."""
    base = tmp_path_factory.getbasetemp()
    return lambda kind: _build_tiny(base, kind)


@pytest.fixture(scope="session")
def load_tiny(tiny_model_dir):
    """``load_tiny(kind)``: a fresh ``(model, processor)`` of the tiny saved "llava" or "qwen" model,
    loaded by path with ``vista.models.load_pretrained`` (transformers' warnings silenced)."""

    def load(kind: str):
        import warnings

        from vista.models import load_pretrained

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_pretrained(tiny_model_dir(kind))

    return load


@pytest.fixture(scope="module")
def llava(tiny_model_dir):
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def qwen(tiny_model_dir):
    return tiny_model_dir("qwen")


@pytest.fixture(scope="module")
def scout(tiny_model_dir):
    return tiny_model_dir("scout")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module, restored afterwards (use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models gain nothing from threads,
    and on a loaded 2-core box OpenMP synchronisation makes every op ~20-25x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
