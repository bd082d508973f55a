"""Reference for the whole per-frame pruning of a video: frame statistics, then foveal top-k,
DPC-KNN anchors, nearest-anchor aggregation and compaction of the kept rows (PAPER §3.2-3.4).

    means, cos = frame_stats_torch(x, valid)                  # reference/frame_stats.py
    out = prune_frames_torch(x, budgets, k_foveal, scores, valid, num_kept=M, k=7, alpha=0.5)
    out.tokens (M, D) x.dtype, out.frame_index / out.token_index (M,) int64,
    out.keep / out.foveal (F, N) bool, out.assign (F, N) int64

Every size is known from shapes and ``num_kept`` (= budgets.sum(), given by the caller), so this
runs on a GPU without a host synchronisation: no ``nonzero``, no boolean-mask indexing, no
``.item()``. Frames are processed in chunks whose temporaries stay bounded (cache-sized on CPU).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ._common import pairwise_sqdist, stable_topk_mask, token_chunks
from .dpc_scores import _delta_inplace, _knn_rho_inplace


class PrunedFrames(NamedTuple):
    """Result of :func:`prune_frames_torch` / the Triton op (M kept tokens of F frames x N)."""

    tokens: torch.Tensor  # (M, D) x.dtype, kept rows after blending, frame-major raster order
    frame_index: torch.Tensor  # (M,) int64
    token_index: torch.Tensor  # (M,) int64
    keep: torch.Tensor  # (F, N) bool
    foveal: torch.Tensor  # (F, N) bool, subset of keep
    assign: torch.Tensor  # (F, N) int64 anchor of every token (kept: itself; invalid: -1)


def compact_positions(keep: torch.Tensor, num_kept: int):
    """Output row of every kept token and the flat index of every output row, from a prefix sum.

    Returns (pos (F, N) int64: row of token (f, i) in the (M, D) output, ``num_kept`` for dropped
    tokens; kept_flat (M,) int64: f * N + i of each output row, ascending).
    """
    F, N = keep.shape
    flat = keep.reshape(-1)
    pos = torch.cumsum(flat, 0) - 1
    # rows past num_kept (only when the caller's budgets break their contract) go to the dummy slot
    pos = torch.where(flat & (pos < num_kept), pos, torch.full_like(pos, num_kept))
    kept_flat = torch.empty(num_kept + 1, dtype=torch.int64, device=keep.device)
    kept_flat.scatter_(0, pos, torch.arange(F * N, device=keep.device))  # slot M: a discarded dummy
    return pos.view(F, N), kept_flat[:num_kept]


def nearest_kept(d2: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """assign (F, N) int64: argmin over kept columns of d2 (F, N, N) (first minimum: lower index);
    kept tokens point to themselves, invalid ones get -1."""
    N = d2.shape[-1]
    score = d2.masked_fill(~keep[:, None, :], math.inf)
    idx = torch.arange(N, device=d2.device)
    a = torch.where(keep, idx[None, :], score.argmin(-1))
    return a.masked_fill(~valid, -1)


def cluster_sums(xf: torch.Tensor, assign: torch.Tensor, dropped: torch.Tensor):
    """Per anchor token: sum of the fp32 rows of the dropped tokens assigned to it, and their count.

    Deterministic on every device: a sequential ``index_add_`` on CPU, a 0/1 membership matmul
    (fixed order, no atomics) on GPUs. Returns (sums (F, N, D) fp32, count (F, N) fp32).
    """
    F, N, D = xf.shape
    if xf.device.type == "cpu":
        target = torch.where(dropped, assign + torch.arange(F, device=xf.device)[:, None] * N,
                             torch.full_like(assign, F * N)).reshape(-1)
        sums = torch.zeros(F * N + 1, D, dtype=torch.float32).index_add_(0, target, xf.reshape(F * N, D))
        cnt = torch.zeros(F * N + 1, dtype=torch.float32).index_add_(0, target, torch.ones(F * N))
        return sums[: F * N].view(F, N, D), cnt[: F * N].view(F, N)
    idx = torch.arange(N, device=xf.device)
    members = ((assign[:, None, :] == idx[None, :, None]) & dropped[:, None, :]).float()  # (F, anchor, j)
    return torch.bmm(members, xf), members.sum(-1)


def blend_rows(x: torch.Tensor, xf: torch.Tensor, sums: torch.Tensor, cnt: torch.Tensor, alpha: float):
    """(1 - a) v + a mean(cluster) for rows with a non-empty cluster (fp32 math, cast to x's dtype);
    the other rows keep x's exact bits."""
    upd = (cnt > 0)[..., None]
    blended = (1.0 - alpha) * xf + alpha * (sums / cnt.clamp(min=1.0)[..., None])
    return torch.where(upd, blended.to(x.dtype), x)


def prune_frames_torch(
    x: torch.Tensor,
    budgets: torch.Tensor,
    k_foveal: Optional[torch.Tensor] = None,
    scores: Optional[torch.Tensor] = None,
    valid: Optional[torch.Tensor] = None,
    *,
    num_kept: int,
    k: int = 7,
    alpha: float = 0.5,
) -> PrunedFrames:
    """Select, aggregate and compact the kept tokens of every frame (inputs already validated).

    Args:
        x: (F, N, D) float32/float16/bfloat16 tokens.
        budgets: (F,) int64 kept tokens per frame, each <= the frame's valid tokens.
        k_foveal: (F,) int64 foveal tokens per frame (the scout's top scores), <= budgets; None = 0.
        scores: (F, N) float scout scores or None (then k_foveal must be None or all 0).
        valid: (F, N) bool or None (= all valid); invalid tokens are never kept nor absorbed.
        num_kept: M = budgets.sum() (from shapes: ``retained_count``), the output length.
        k: kNN size for the DPC density; alpha: blend weight.
    Returns:
        PrunedFrames.
    """
    F, N, D = x.shape
    dev = x.device
    if valid is None:
        valid = torch.ones(F, N, dtype=torch.bool, device=dev)
    if k_foveal is None:
        k_foveal = torch.zeros_like(budgets)
    if scores is not None:
        foveal = stable_topk_mask(scores, k_foveal, valid)
    else:
        foveal = torch.zeros(F, N, dtype=torch.bool, device=dev)
    cand = valid & ~foveal
    k_anchor = budgets - k_foveal
    keep = torch.empty(F, N, dtype=torch.bool, device=dev)
    assign = torch.empty(F, N, dtype=torch.int64, device=dev)
    chunks = token_chunks(F, N, D, dev)
    sliced = []
    for sl in chunks:  # selection: needs the whole keep mask before the output offsets exist
        d2 = pairwise_sqdist(x[sl])
        rho = _knn_rho_inplace(d2.clone(), cand[sl], k)
        gamma = rho * _delta_inplace(d2.clone(), rho, cand[sl])
        kc = stable_topk_mask(gamma, k_anchor[sl], cand[sl]) | foveal[sl]
        keep[sl] = kc
        assign[sl] = nearest_kept(d2, kc, valid[sl])
        sliced.append(sl)
    pos, kept_flat = compact_positions(keep, num_kept)
    tokens = torch.empty(num_kept + 1, D, dtype=x.dtype, device=dev)
    dropped = valid & ~keep
    for sl in sliced:  # aggregation, written straight into the compacted rows
        xs = x[sl]
        xf = xs.float()
        sums, cnt = cluster_sums(xf, assign[sl], dropped[sl])
        rows = blend_rows(xs, xf, sums, cnt, alpha)
        tokens.index_copy_(0, pos[sl].reshape(-1), rows.reshape(-1, D))  # dropped rows -> dummy slot M
    return PrunedFrames(tokens[:num_kept], kept_flat // N, kept_flat % N, keep, foveal, assign)
