"""``torch.library`` registration of the vista_kernels ops (namespace ``vista_kernels``).

Each op is a ``torch.library.custom_op`` whose implementation dispatches to the reference or the
Triton wrapper, with a fake (meta) implementation that derives every output shape from the input
shapes and plain ints. ``torch.compile(fullgraph=True)`` treats them as single graph nodes and a
CUDA graph captures them like any other launch sequence (they make no host synchronisation).

The public functions in ``vista_kernels`` (``dispatch.py``) validate their arguments in Python
first (types, shapes, devices; values once, skippable), then call these ops.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .reference.frame_stats import cosine_of_means, frame_stats_torch
from .reference.prune_frames import PrunedFrames, prune_frames_torch


def _triton():
    from . import ops  # imported lazily: importing triton is slow

    return ops


def _device_ctx(x: Tensor):
    from .utils import on_device_of

    return on_device_of(x)


def _gram_fits(F: int, N: int) -> bool:
    from .ops.frame_stats import MAX_GRAM_ELEMS

    return F > 0 and F * N * N <= MAX_GRAM_ELEMS


@torch.library.custom_op("vista_kernels::frame_stats", mutates_args=())
def _frame_stats_op(x: Tensor, valid: Optional[Tensor], backend: str, keep_gram: bool) -> Tuple[Tensor, Tensor, Tensor]:
    F, N, _ = x.shape
    if backend == "triton":
        with _device_ctx(x):
            means, cos, gram = _triton().frame_stats_triton(x, valid, keep_gram=keep_gram)
        return means, cos, gram
    means, cos = frame_stats_torch(x, valid)
    return means, cos, torch.empty((0, N, N), dtype=torch.float32, device=x.device)


@_frame_stats_op.register_fake
def _(x, valid, backend, keep_gram):
    F, N, D = x.shape
    g = F if (backend == "triton" and keep_gram and _gram_fits(F, N)) else 0
    return (x.new_empty((F, D), dtype=torch.float32), x.new_empty((max(F - 1, 0),), dtype=torch.float32),
            x.new_empty((g, N, N), dtype=torch.float32))


@torch.library.custom_op("vista_kernels::prune_frames", mutates_args=())
def _prune_frames_op(
    x: Tensor, budgets: Tensor, k_foveal: Optional[Tensor], scores: Optional[Tensor], valid: Optional[Tensor],
    gram: Optional[Tensor], num_kept: int, k: int, alpha: float, backend: str,
) -> List[Tensor]:
    if backend == "triton":
        with _device_ctx(x):
            out = _triton().prune_frames_triton(x, budgets, k_foveal, scores, valid, num_kept=num_kept, k=k,
                                                alpha=alpha, gram=gram)
    else:
        out = prune_frames_torch(x, budgets, k_foveal, scores, valid, num_kept=num_kept, k=k, alpha=alpha)
    return list(out)


@_prune_frames_op.register_fake
def _(x, budgets, k_foveal, scores, valid, gram, num_kept, k, alpha, backend):
    F, N, D = x.shape
    i64 = dict(dtype=torch.int64)
    return [x.new_empty((num_kept, D)), x.new_empty((num_kept,), **i64), x.new_empty((num_kept,), **i64),
            x.new_empty((F, N), dtype=torch.bool), x.new_empty((F, N), dtype=torch.bool), x.new_empty((F, N), **i64)]


def call_frame_stats(x, valid, backend: str, keep_gram: bool):
    return _frame_stats_op(x, valid, backend, bool(keep_gram))


def call_prune_frames(x, budgets, k_foveal, scores, valid, gram, num_kept, k, alpha, backend) -> PrunedFrames:
    return PrunedFrames(*_prune_frames_op(x, budgets, k_foveal, scores, valid, gram, int(num_kept), int(k),
                                          float(alpha), backend))


__all__ = ["call_frame_stats", "call_prune_frames", "cosine_of_means"]
