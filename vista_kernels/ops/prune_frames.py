"""The whole per-frame pruning of a video on the GPU in a fixed handful of launches, no host sync.

    means, cos, gram = frame_stats_triton(x, valid)           # ops/frame_stats.py: 1 launch (+1: cosines)
    out = prune_frames_triton(x, budgets, k_foveal, scores, valid, num_kept=M, gram=gram)

``frame_stats_triton`` reads x once: per frame the Gram matrix G = X·Xᵀ (kept when the (F, N, N)
fp32 buffer fits ``MAX_GRAM_ELEMS``), the squared norms and the frame means; a tiny second kernel
turns the means into consecutive cosines. The caller plans budgets from (means, cos) and hands G to
``prune_frames_triton``, which launches the DPC scores (one launch per frame chunk, two in row-grid
mode), a top-k (torch sort), the nearest-anchor assignment and the aggregation; the aggregation
reads x a second and last time and writes only the kept rows, compacted into the (M, D) output at
offsets from a prefix sum of ``keep``, with their frame and token indices.

Launches for a 64 x 196 video: geometry, cosine, DPC, assignment, aggregation = 5 (6 when the
row-grid DPC mode is chosen because there are fewer frames than twice the SM count).
For videos whose Gram tensor does not fit, G is recomputed per frame chunk (one more read of x).
Same results as ``reference.prune_frames.prune_frames_torch`` (kept sets and assignments exact,
values within fp32 rounding).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference._common import stable_topk_mask
from ..reference.prune_frames import PrunedFrames
from . import anchor_aggregate as _agg
from . import dpc_scores as _dpc
from .frame_stats import video_geometry


def prune_frames_triton(
    x: torch.Tensor,
    budgets: torch.Tensor,
    k_foveal: Optional[torch.Tensor] = None,
    scores: Optional[torch.Tensor] = None,
    valid: Optional[torch.Tensor] = None,
    *,
    num_kept: int,
    k: int = 7,
    alpha: float = 0.5,
    gram: Optional[torch.Tensor] = None,
    max_gram_elems: Optional[int] = None,
) -> PrunedFrames:
    """Triton version of ``prune_frames_torch`` (same arguments, inputs already validated), plus
    ``gram``: the (F, N, N) fp32 Gram tensor from :func:`frame_stats_triton` (None or empty: the
    Gram matrices are recomputed here, in frame chunks bounded by ``max_gram_elems``)."""
    F, N, D = x.shape
    dev = x.device
    x = x.contiguous()
    geo = video_geometry(x, valid)
    valid_b = geo.valid_u8.view(torch.bool)
    if k_foveal is None:
        k_foveal = torch.zeros_like(budgets)
    if scores is not None:
        foveal = stable_topk_mask(scores, k_foveal, valid_b)
    else:
        foveal = torch.zeros(F, N, dtype=torch.bool, device=dev)
    cand = valid_b & ~foveal
    k_anchor = budgets - k_foveal
    c8 = cand.view(torch.uint8)
    rho, delta, gamma = (torch.empty(F, N, dtype=torch.float32, device=dev) for _ in range(3))
    keep = torch.empty(F, N, dtype=torch.bool, device=dev)
    assign = torch.empty(F, N, dtype=torch.int64, device=dev)
    if gram is not None and gram.shape[0] == F and F > 0:
        chunks = [(0, F, gram)]
        # the norms of the geometry pass that produced ``gram``: recompute them from its diagonal
        geo.sq.copy_(gram.diagonal(dim1=1, dim2=2))
    else:
        chunks = None
    fused = _dpc.use_fused_launch(N, F, dev)
    for f0, f1, g in chunks if chunks is not None else geo.chunks(max_gram_elems):
        _dpc.scores_chunk(geo, f0, f1, g, cand, c8, k, rho, delta, gamma, fused)
        kc = stable_topk_mask(gamma[f0:f1], k_anchor[f0:f1], cand[f0:f1]) | foveal[f0:f1]
        keep[f0:f1] = kc
        _agg.launch_assign(g, geo, keep.view(torch.uint8), assign, f0, f1 - f0)
    pos = torch.cumsum(keep.reshape(-1), 0).sub_(1).view(F, N)
    tokens = torch.empty(num_kept, D, dtype=x.dtype, device=dev)
    fidx = torch.empty(num_kept, dtype=torch.int64, device=dev)
    tidx = torch.empty(num_kept, dtype=torch.int64, device=dev)
    if F:
        _agg.launch_aggregate(x, tokens, keep.view(torch.uint8), assign, geo, 0, F, alpha, pos, fidx, tidx)
    return PrunedFrames(tokens, fidx, tidx, keep, foveal, assign)
