"""Helpers shared by the PyTorch reference ops: fp32 pairwise geometry, frame chunking, stable top-k."""
from __future__ import annotations

import math
from typing import Iterator

import torch

#: Upper bound on the elements of one (F_chunk, N, N) fp32 pairwise tensor (256 MiB).
MAX_PAIR_ELEMS = 1 << 26


def frame_chunks(F: int, N: int, max_pair_elems: int | None = None) -> Iterator[slice]:
    """Slices over frames such that each chunk's (chunk, N, N) fp32 tensor stays under the bound
    (``MAX_PAIR_ELEMS``, read at call time, when ``max_pair_elems`` is None)."""
    if max_pair_elems is None:
        max_pair_elems = MAX_PAIR_ELEMS
    step = max(1, max_pair_elems // max(1, N * N))
    for start in range(0, F, step):
        yield slice(start, min(F, start + step))


def pairwise_sqdist(x: torch.Tensor) -> torch.Tensor:
    """Scaled squared distances d2[f, i, j] = ||x_i - x_j||^2 / D, fp32, shape (F, N, N).

    Computed from one Gram matrix G = X X^T as (sq_i + sq_j) - 2 G_ij with sq = diag(G) (the same
    formula the Triton kernels use), clamped at 0, with an exact 0 diagonal. Adding sq_i + sq_j
    first keeps d2 exactly symmetric (G is), so mathematically equal densities stay bit-equal and
    the lower-index tie rule decides them; taking sq from G's diagonal puts bit-identical tokens
    at distance 0 when the Gram products are computed alike.
    """
    xf = x.float()
    D = x.shape[-1]
    F, N, _ = x.shape
    g = torch.bmm(xf, xf.transpose(1, 2))
    sq = g.diagonal(dim1=1, dim2=2).clone()  # (F, N)
    # d2 = (sq_i + sq_j) + (-2 G), built into G's buffer one frame chunk at a time so the only
    # extra memory is a (chunk, N, N) temporary of at most 1/8 of the buffer.
    step = max(1, F // 8)
    for s0 in range(0, F, step):
        sl = slice(s0, min(F, s0 + step))
        t = sq[sl, :, None] + sq[sl, None, :]
        t.add_(g[sl], alpha=-2.0)  # (sq_i + sq_j) + (-2 G_ij); -2 G is exact
        g[sl] = t.clamp_(min=0.0).div_(D)
    g.diagonal(dim1=1, dim2=2).fill_(0.0)
    return g


def stable_topk_mask(score: torch.Tensor, k: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """(F, N) bool: for each frame f the k[f] highest ``score`` among ``eligible`` tokens.

    Ties go to the lower token index (a stable descending sort). Caller guarantees
    k[f] <= eligible[f].sum().
    """
    F, N = score.shape
    s = score.float().masked_fill(~eligible, -math.inf)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=score.device).expand(F, N).contiguous())
    return (rank < k[:, None]) & eligible
