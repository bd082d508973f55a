"""Reference soft aggregation (PAPER eq. 11-12): every dropped token joins its nearest kept token."""
from __future__ import annotations

import math

import torch

from ..checks import check_aggregate_args
from ._common import frame_chunks


def anchor_aggregate_torch(
    x: torch.Tensor, keep: torch.Tensor, alpha: float = 0.5, valid: torch.Tensor | None = None
):
    """Blend each kept token with the mean of the dropped tokens nearest to it.

    Args:
        x: (F, N, D) float32/float16/bfloat16 tokens.
        keep: (F, N) bool, kept tokens (a subset of ``valid``; at least one per frame that has
            valid tokens).
        alpha: blend weight a in [0, 1]: kept row -> (1 - a) * v + a * mean(cluster).
        valid: optional (F, N) bool; invalid tokens are neither anchors nor absorbed.
    Returns:
        x_out: (F, N, D) in x's dtype; kept rows with a non-empty cluster updated (fp32 math),
            every other row bit-identical to x.
        assign: (F, N) int64; assign[f, j] = index of j's anchor (the nearest kept token, L2, ties
            to the lower index); kept tokens point to themselves; invalid tokens get -1.
    """
    x, keep, alpha, valid = check_aggregate_args(x, keep, alpha, valid)
    kept_idx, kept_ok, rows, assign = anchor_aggregate_kept_torch(x, keep, alpha, valid, _checked=True)
    out = x.clone()
    if rows.numel():
        fi, ri = torch.nonzero(kept_ok, as_tuple=True)
        out[fi, kept_idx[fi, ri]] = rows[fi, ri]
    return out, assign


def anchor_aggregate_kept_torch(x, keep, alpha: float = 0.5, valid=None, _checked: bool = False):
    """The aggregation of :func:`anchor_aggregate_torch`, returning only the kept rows.

    Returns:
        kept_idx: (F, K) int64, frame f's kept token indices ascending in [:, :n_keep[f]]
            (K = max kept per frame; padding entries are 0);
        kept_ok: (F, K) bool, which kept_idx entries are real;
        rows: (F, K, D) x.dtype, the kept tokens after blending (padding rows unspecified);
        assign: (F, N) int64 as in anchor_aggregate_torch.
    ``rows[kept_ok]`` lists every kept token, frames in order and raster order within a frame,
    without materialising a copy of the whole of x.
    """
    if not _checked:
        x, keep, alpha, valid = check_aggregate_args(x, keep, alpha, valid)
    elif valid is None:
        valid = torch.ones_like(keep)
    F, N, D = x.shape
    assign = torch.full((F, N), -1, dtype=torch.int64, device=x.device)
    n_keep = keep.sum(1)
    K = max(1, int(n_keep.max())) if F else 1
    # kept_idx[f, :n_keep[f]] = kept token indices of frame f in ascending order (stable sort).
    kept_idx = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :K]
    kept_ok = torch.arange(K, device=x.device)[None, :] < n_keep[:, None]  # (F, K)
    rows = torch.empty(F, K, D, dtype=x.dtype, device=x.device)
    dropped = valid & ~keep
    idx = torch.arange(N, device=x.device)
    for sl in frame_chunks(F, max(N, K)):
        xs = x[sl].float()
        ki = kept_idx[sl]
        xk = torch.gather(xs, 1, ki[:, :, None].expand(-1, -1, D))  # (f, K, D) fp32
        # argmin_k d2(j, k) = argmin_k (sq_k - 2 G_jk): the row's own sq_j cannot change the order.
        score = torch.bmm(xs, xk.transpose(1, 2)).mul_(-2.0)
        score.add_(xk.square().sum(-1)[:, None, :])
        score.masked_fill_(~kept_ok[sl][:, None, :], math.inf)
        nearest = torch.gather(ki, 1, score.argmin(-1))  # first minimum -> lower index
        del score
        a = torch.where(keep[sl], idx[None, :], nearest).masked_fill(~valid[sl], -1)
        assign[sl] = a
        # members[f, r, j] = 1 when dropped token j joins the r-th kept token: a fixed-order fp32
        # sum through bmm (deterministic on CPU and CUDA, no atomics).
        members = ((a[:, None, :] == ki[:, :, None]) & dropped[sl][:, None, :]).float()
        sums = torch.bmm(members, xs)  # (f, K, D)
        cnt = members.sum(-1)  # (f, K)
        del members
        upd = (cnt > 0)[..., None]
        blended = torch.where(upd, (1.0 - alpha) * xk + alpha * (sums / cnt.clamp(min=1.0)[..., None]), xk)
        r = blended.to(x.dtype)
        # rows without a cluster keep x's exact bits
        r = torch.where(upd, r, torch.gather(x[sl], 1, ki[:, :, None].expand(-1, -1, D)))
        rows[sl] = r
    return kept_idx, kept_ok, rows, assign
