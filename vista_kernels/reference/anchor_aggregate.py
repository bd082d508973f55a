"""Reference soft aggregation (PAPER eq. 11-12): every dropped token joins its nearest kept token."""
from __future__ import annotations

import math

import torch

from .._guard import check_alpha, check_mask, check_tokens, check_valid
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
    x = check_tokens(x)
    keep = check_mask(keep, x, "keep")
    alpha = check_alpha(alpha)
    valid = check_valid(valid, x)
    if bool((keep & ~valid).any()):
        raise ValueError("keep marks tokens that are not valid; keep must be a subset of valid")
    lonely = valid.any(1) & ~keep.any(1)
    if bool(lonely.any()):
        f = int(torch.nonzero(lonely)[0, 0])
        raise ValueError(f"keep has no kept token in frame {f}, which has valid tokens to aggregate")
    F, N, _ = x.shape
    out = x.clone()
    assign = torch.full((F, N), -1, dtype=torch.int64, device=x.device)
    if F == 0:
        return out, assign
    n_keep = keep.sum(1)
    K = max(1, int(n_keep.max()))
    # kept_idx[f, :n_keep[f]] = kept token indices of frame f in ascending order (stable sort).
    kept_idx = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :K]
    kept_ok = torch.arange(K, device=x.device)[None, :] < n_keep[:, None]  # (F, K)
    dropped = valid & ~keep
    idx = torch.arange(N, device=x.device)
    for sl in frame_chunks(F, max(N, K)):
        xs = x[sl].float()
        xk = torch.gather(xs, 1, kept_idx[sl, :, None].expand(-1, -1, xs.shape[-1]))  # (f, K, D)
        # d2 to the kept tokens only (same Gram formula as pairwise_sqdist, K columns instead of N)
        d2 = torch.bmm(xs, xk.transpose(1, 2))
        sq = xs.square().sum(-1)
        d2.mul_(-2.0).add_(sq[:, :, None]).add_(torch.gather(sq, 1, kept_idx[sl])[:, None, :])
        d2.clamp_(min=0.0).masked_fill_(~kept_ok[sl][:, None, :], math.inf)
        nearest = torch.gather(kept_idx[sl], 1, d2.argmin(-1))  # first minimum -> lower index
        del d2
        a = torch.where(keep[sl], idx[None, :], nearest).masked_fill(~valid[sl], -1)
        assign[sl] = a
        # members[f, r, j] = 1 when dropped token j joins the r-th kept token: a fixed-order fp32
        # sum through bmm (deterministic on CPU and CUDA, no atomics).
        members = ((a[:, None, :] == kept_idx[sl][:, :, None]) & dropped[sl][:, None, :]).float()
        sums = torch.bmm(members, xs)  # (f, K, D)
        cnt = members.sum(-1)  # (f, K)
        del members
        upd = kept_ok[sl] & (cnt > 0)
        if bool(upd.any()):
            blended = (1.0 - alpha) * xk + alpha * (sums / cnt.clamp(min=1.0)[..., None])
            fi, ri = torch.nonzero(upd, as_tuple=True)
            o = out[sl]
            o[fi, kept_idx[sl][fi, ri]] = blended[fi, ri].to(x.dtype)
    return out, assign
