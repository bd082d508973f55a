"""Reference soft aggregation (PAPER eq. 11-12): every dropped token joins its nearest kept token."""
from __future__ import annotations

import math

import torch

from .._guard import check_alpha, check_mask, check_tokens, check_valid
from ._common import frame_chunks, pairwise_sqdist


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
    idx = torch.arange(N, device=x.device)
    assign = torch.full((F, N), -1, dtype=torch.int64, device=x.device)
    out = x.clone()
    dropped = valid & ~keep
    for sl in frame_chunks(F, N):
        d2 = pairwise_sqdist(x[sl])
        d2.masked_fill_(~keep[sl][:, None, :], math.inf)
        a = d2.argmin(-1)  # first minimum -> lower index on ties
        del d2
        a = torch.where(keep[sl], idx[None, :], a)
        a = a.masked_fill(~valid[sl], -1)
        assign[sl] = a
        # members[f, anchor, j] = 1 when dropped token j joins anchor (fixed-order fp32 sum via bmm)
        members = ((a[:, None, :] == idx[None, :, None]) & dropped[sl][:, None, :]).float()
        sums = torch.bmm(members, x[sl].float())
        cnt = members.sum(-1)
        del members
        upd = keep[sl] & (cnt > 0)
        if bool(upd.any()):
            mean = sums / cnt.clamp(min=1.0)[..., None]
            blended = (1.0 - alpha) * x[sl].float() + alpha * mean
            o = out[sl]
            o[upd] = blended[upd].to(x.dtype)
    return out, assign
