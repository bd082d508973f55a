"""The public vista_kernels ops: argument checks, then the backend chosen by ``backend=``.

``resolve_backend`` maps "auto" | "triton" | "torch" to a concrete backend; every op then calls its
PyTorch reference (``reference/<op>.py``) or its Triton host wrapper (``ops/<op>.py``, imported
lazily). ``frame_stats`` and ``prune_frames`` go through their ``torch.library`` registrations
(``library.py``). Re-exported by ``vista_kernels``; see its docstring for the op table.
"""
from __future__ import annotations

import os
from typing import Callable, Dict

import torch

from . import checks
from .checks import token_limit
from .reference import (
    anchor_aggregate_torch,
    dpc_delta_torch,
    dpc_gamma_torch,
    dpc_select_torch,
    frame_cosine_torch,
    knn_density_torch,
    scout_score_reduce_torch,
)
from .reference.prune_frames import PrunedFrames
from .utils import interpreter_active

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


def frame_stats(x, valid=None, backend: str = "auto", *, keep_gram: bool = False, check_finite: bool = True):
    """Frame statistics for budgeting, in one read of x.

    Args:
        x: (F, N, D) float32/float16/bfloat16; valid: optional (F, N) bool.
        keep_gram: also return the per-frame Gram matrices (Triton backend, when the (F, N, N)
            fp32 tensor fits the memory bound) for :func:`prune_frames` to reuse.
        check_finite: scan x for NaN/inf (one host sync); False when the caller already did.
    Returns:
        (means (F, D) fp32, cosine (F-1,) fp32, gram (F, N, N) fp32 or an empty (0, N, N) tensor).
    """
    from .library import call_frame_stats

    x = checks.check_tokens(x, finite=check_finite is True)
    if valid is not None:
        checks.check_mask(valid, x, "valid")
    for name, flag in (("keep_gram", keep_gram), ("check_finite", check_finite)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    return call_frame_stats(x, valid, resolve_backend(backend, x), keep_gram)


def prune_frames(
    x,
    budgets,
    k_foveal=None,
    scores=None,
    valid=None,
    *,
    num_kept=None,
    k: int = 7,
    alpha: float = 0.5,
    gram=None,
    backend: str = "auto",
    check_finite: bool = True,
) -> PrunedFrames:
    """Select, aggregate and compact the kept tokens of every frame: the per-frame work of Vista.

    Per frame f: the ``k_foveal[f]`` highest ``scores`` among valid tokens are kept (foveal), then
    the ``budgets[f] - k_foveal[f]`` candidates (valid, not foveal) with the highest DPC-KNN
    gamma (anchors; kNN size ``k``); every other valid token joins its nearest kept token and each
    kept token with a non-empty cluster becomes (1 - alpha) v + alpha mean(cluster). Ties go to the
    lower token index.

    Args:
        x: (F, N, D) float32/float16/bfloat16 tokens.
        budgets: (F,) integer tensor, 1 <= budgets[f] <= valid tokens of frame f (0 for a frame
            without valid tokens).
        k_foveal: (F,) integer tensor, 0 <= k_foveal[f] <= budgets[f], or None (no foveal tokens).
        scores: (F, N) float scout scores (needed when k_foveal is given).
        valid: (F, N) bool or None (all valid).
        num_kept: M = budgets.sum(). Pass it (e.g. from ``vista.retained_count``) to keep the call
            free of host synchronisation; None reads it from budgets (one sync).
        gram: the Gram tensor from ``frame_stats(..., keep_gram=True)`` (Triton), or None.
        check_finite: scan x and scores for NaN/inf and check the counts' values (ranges above,
            ``budgets.sum() == num_kept``) before any math: one host sync for all of it.
    Returns:
        PrunedFrames(tokens (M, D) x.dtype, frame_index (M,), token_index (M,), keep (F, N) bool,
        foveal (F, N) bool, assign (F, N) int64); rows in frame order, raster order within a frame.
    With ``check_finite=False`` the counts are trusted to respect the limits above (checking them
    would read device values; ``vista.prune_video`` guarantees them by construction): a violation
    then gives undefined rows (never an out-of-bounds write), not an error.
    """
    from .library import call_prune_frames

    x = checks.check_tokens(x, finite=False)
    budgets, k_foveal, k, alpha, num_kept = _check_prune_args(x, budgets, k_foveal, scores, valid, num_kept, k,
                                                              alpha, check_finite)
    b = resolve_backend(backend, x)
    gram = _checked_gram(gram, x, b)
    return call_prune_frames(x, budgets, k_foveal, scores, valid, gram, num_kept, k, alpha, b)


def _check_prune_args(x, budgets, k_foveal, scores, valid, num_kept, k, alpha, check_finite):
    """The argument checks of :func:`prune_frames` (x already shape-checked), in the order its errors
    are reported; values of x, scores and the counts in one host sync when ``check_finite``.
    Returns (budgets, k_foveal, k, alpha, num_kept) as the op uses them."""
    F, N, _ = x.shape
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {check_finite!r}")
    budgets = checks.check_counts(budgets, x, "budgets")
    if k_foveal is not None:
        k_foveal = checks.check_counts(k_foveal, x, "k_foveal")
        if scores is None:
            raise ValueError("k_foveal needs scores: pass the (F, N) scout scores the foveal tokens come from")
    if scores is not None:
        checks.check_scores(scores, x, "scores", finite=False)
    if valid is not None:
        checks.check_mask(valid, x, "valid")
    k = checks.check_k(k)
    alpha = checks.check_alpha(alpha)
    if num_kept is None:
        num_kept = int(budgets.sum())
    if isinstance(num_kept, bool) or not isinstance(num_kept, int) or not 0 <= num_kept <= F * N:
        raise ValueError(f"num_kept must be an int in [0, F*N] = [0, {F * N}], got {num_kept!r}")
    if check_finite:  # values of x, scores and the counts: one host sync for all of them
        checks.check_values({"x": x, "scores": scores}, {"x": token_limit(x.shape[-1])},
                            checks.count_conditions(budgets, k_foveal, valid, num_kept, N))
    return budgets, k_foveal, k, alpha, num_kept


def _checked_gram(gram, x, backend: str):
    """``gram`` as :func:`prune_frames` passes it on: None unless a reusable (F, N, N) fp32 Gram
    tensor from ``frame_stats(keep_gram=True)`` and the Triton backend; a malformed one raises."""
    if gram is None:
        return None
    F, N, _ = x.shape
    if not isinstance(gram, torch.Tensor):
        raise TypeError(f"gram must be None or the tensor from frame_stats(keep_gram=True), got {type(gram).__name__}")
    if gram.shape[0] == 0 or backend != "triton":
        return None  # frame_stats kept none (too large), or the torch backend recomputes it
    if gram.dtype != torch.float32 or tuple(gram.shape) != (F, N, N) or gram.device != x.device:
        raise ValueError(f"gram must be a float32 (F, N, N) = {(F, N, N)} tensor on {x.device}, got "
                         f"{gram.dtype} {tuple(gram.shape)} on {gram.device}")
    return gram.contiguous()
