"""vista_kernels: the Vista pruning math as standalone ops, each with a PyTorch reference and a
Triton implementation, selected with ``backend=``:

* ``"torch"``  - the batched PyTorch reference (CPU or CUDA).
* ``"triton"`` - fused Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``).
* ``"auto"``   - ``$VISTA_BACKEND`` if set, else triton for CUDA tensors and torch otherwise.

Shapes: x is (F, N, D) float32/float16/bfloat16, valid an optional (F, N) bool mask (None = all).
"""
from __future__ import annotations

import os
from typing import Callable, Dict

import torch

from . import reference
from .reference import (
    anchor_aggregate_torch,
    dpc_delta_torch,
    dpc_gamma_torch,
    dpc_select_torch,
    frame_cosine_torch,
    frame_means_torch,
    knn_density_torch,
    scout_score_reduce_torch,
)

BACKENDS = ("auto", "triton", "torch")

_TORCH: Dict[str, Callable] = {
    "frame_cosine": frame_cosine_torch,
    "knn_density": knn_density_torch,
    "dpc_delta": dpc_delta_torch,
    "dpc_gamma": dpc_gamma_torch,
    "dpc_select": dpc_select_torch,
    "anchor_aggregate": anchor_aggregate_torch,
    "scout_score_reduce": scout_score_reduce_torch,
}


def _triton_impls() -> Dict[str, Callable]:
    """Triton host wrappers keyed by op name; empty when the Triton ops are unavailable."""
    try:
        from .ops import TRITON_OPS  # noqa: WPS433 (imported lazily: triton import is slow)
    except ImportError:
        return {}
    return TRITON_OPS


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, tensor: torch.Tensor | None = None) -> str:
    """Map ``backend`` ("auto" | "triton" | "torch") to the concrete backend for ``tensor``."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("VISTA_BACKEND", "").strip()
        if env:
            if env not in ("triton", "torch"):
                raise ValueError(f"VISTA_BACKEND must be 'triton' or 'torch', got {env!r}")
            backend = env
        elif tensor is not None and tensor.is_cuda and _triton_impls():
            backend = "triton"
        else:
            backend = "torch"
    if backend == "triton":
        if not _triton_impls():
            raise ValueError("backend='triton' is not available: triton or the vista_kernels.ops kernels failed to import")
        if tensor is not None and not tensor.is_cuda and not interpreter_active():
            raise ValueError(
                "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); "
                "use backend='torch' or 'auto' for CPU tensors"
            )
    return backend


def _dispatch(op: str, backend: str, tensor):
    b = resolve_backend(backend, tensor if isinstance(tensor, torch.Tensor) else None)
    if b == "triton":
        impl = _triton_impls().get(op)
        if impl is not None:
            return _on_tensor_device(impl, tensor)
    return _TORCH[op]  # ops without a dedicated kernel fall back to the reference


def _on_tensor_device(impl: Callable, tensor) -> Callable:
    """Run ``impl`` with ``tensor``'s CUDA device current, so kernels launch where the data is."""
    from .utils import on_device_of

    def run(*args, **kwargs):
        with on_device_of(tensor):
            return impl(*args, **kwargs)

    return run


def frame_cosine(x, valid=None, backend: str = "auto"):
    """(F-1,) fp32: cos(mean x[t], mean x[t+1]) over valid tokens."""
    return _dispatch("frame_cosine", backend, x)(x, valid=valid)


def knn_density(x, k: int = 7, valid=None, backend: str = "auto"):
    """(F, N) fp32 rho_i = exp(-mean of the k smallest d_ij^2), d = L2 / sqrt(D); invalid -> 0."""
    return _dispatch("knn_density", backend, x)(x, k=k, valid=valid)


def dpc_delta(x, rho, valid=None, backend: str = "auto"):
    """(F, N) fp32 distance to the nearest denser valid token (peak: farthest); invalid -> 0."""
    return _dispatch("dpc_delta", backend, x)(x, rho, valid=valid)


def dpc_gamma(x, valid=None, k: int = 7, backend: str = "auto"):
    """(F, N) fp32 gamma = rho * delta over valid tokens; invalid -> 0."""
    return _dispatch("dpc_gamma", backend, x)(x, valid=valid, k=k)


def dpc_select(x, k_keep, valid=None, k: int = 7, backend: str = "auto"):
    """(F, N) bool: per frame the k_keep[f] valid tokens with the highest gamma (ties: lower index)."""
    return _dispatch("dpc_select", backend, x)(x, k_keep, valid=valid, k=k)


def anchor_aggregate(x, keep, alpha: float = 0.5, valid=None, backend: str = "auto"):
    """(x_out (F, N, D) x.dtype, assign (F, N) int64): dropped tokens blended into nearest kept."""
    return _dispatch("anchor_aggregate", backend, x)(x, keep, alpha=alpha, valid=valid)


def scout_score_reduce(attn, backend: str = "auto"):
    """(B, H, Q, P) cross-attention -> (B, P) fp32: max over heads, sum over queries."""
    return _dispatch("scout_score_reduce", backend, attn)(attn)


__all__ = [
    "BACKENDS",
    "anchor_aggregate",
    "dpc_delta",
    "dpc_gamma",
    "dpc_select",
    "frame_cosine",
    "frame_means_torch",
    "knn_density",
    "reference",
    "resolve_backend",
    "scout_score_reduce",
]
