"""Reference soft aggregation (PAPER eq. 11-12): every dropped token joins its nearest kept token."""
from __future__ import annotations

import torch

from ..checks import check_aggregate_args
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
        assign: (F, N) int64; assign[f, j] = index of j's anchor: the nearest kept token by the
            scaled squared distance with the duplicate rule (``pairwise_sqdist``), ties to the lower
            index; kept tokens point to themselves; invalid tokens get -1.
    """
    from .prune_frames import blend_rows, cluster_sums, nearest_kept

    x, keep, alpha, valid = check_aggregate_args(x, keep, alpha, valid)
    F, N, D = x.shape
    out = torch.empty_like(x)
    assign = torch.empty(F, N, dtype=torch.int64, device=x.device)
    dropped = valid & ~keep
    for sl in frame_chunks(F, max(N, D)):
        xs = x[sl]
        xf = xs.float()
        a = nearest_kept(pairwise_sqdist(xs), keep[sl], valid[sl])
        assign[sl] = a
        sums, cnt = cluster_sums(xf, a, dropped[sl])
        out[sl] = blend_rows(xs, xf, sums, cnt, alpha)
    return out, assign
