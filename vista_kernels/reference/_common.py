"""Helpers shared by the PyTorch reference ops: fp32 pairwise geometry, frame chunking, stable top-k."""
from __future__ import annotations

import math
from typing import Iterator

import torch

#: Upper bound on the elements of one (F_chunk, N, N) fp32 pairwise tensor (256 MiB).
MAX_PAIR_ELEMS = 1 << 26

#: The duplicate rule, applied identically by every backend: a squared distance computed as
#: (sq_i + sq_j) - 2 G_ij in fp32 that is at most DUPLICATE_RTOL * max(sq_i, sq_j) counts as 0.
#: A matmul's G_ij for bit-identical rows is not always bit-equal to G_ii (blocking order differs;
#: the error grows like sqrt(D) ulps of |x|^2), so exact duplicates would otherwise land a few ulps
#: apart and the lower-index tie rules would not see them as ties. 2^-16 of |x|^2 absorbs that
#: noise up to D ~ 10^4; tokens that close (within 0.4 % of their norm) are the same token for DPC.
DUPLICATE_RTOL = 2.0 ** -16


def sqdist_from_gram(g: torch.Tensor, sq_i: torch.Tensor, sq_j: torch.Tensor) -> torch.Tensor:
    """Unscaled squared distances (sq_i + sq_j) - 2 g with the duplicate rule (<= rule -> 0) and a
    clamp at 0; ``sq_i``/``sq_j`` broadcast against ``g``. Returns a new fp32 tensor."""
    t = sq_i + sq_j
    t.add_(g, alpha=-2.0)  # (sq_i + sq_j) + (-2 G_ij); -2 G is exact
    thr = torch.maximum(sq_i, sq_j) * DUPLICATE_RTOL  # a power of two: exact
    return t.masked_fill_(t <= thr, 0.0)


def frame_chunks(F: int, N: int, max_pair_elems: int | None = None) -> Iterator[slice]:
    """Slices over frames such that each chunk's (chunk, N, N) fp32 tensor stays under the bound
    (``MAX_PAIR_ELEMS``, read at call time, when ``max_pair_elems`` is None)."""
    if max_pair_elems is None:
        max_pair_elems = MAX_PAIR_ELEMS
    step = max(1, max_pair_elems // max(1, N * N))
    for start in range(0, F, step):
        yield slice(start, min(F, start + step))


#: Working-set target of one frame chunk on CPU (fp32 tokens of the chunk): stays in cache.
CPU_CHUNK_BYTES = 4 << 20
#: Bound on the elements of one chunk's (chunk, N, max(N, D)) fp32 temporaries on GPUs (256 MiB).
GPU_CHUNK_ELEMS = 1 << 26


def token_chunks(F: int, N: int, D: int, device: torch.device):
    """Frame slices: cache-sized on CPU, bounded (chunk, N, max(N, D)) temporaries on GPUs."""
    if device.type == "cpu":
        step = max(1, CPU_CHUNK_BYTES // max(1, N * D * 4))
    else:
        step = max(1, GPU_CHUNK_ELEMS // max(1, N * max(N, D)))
    return [slice(t, min(F, t + step)) for t in range(0, F, step)]


def gram(xf: torch.Tensor) -> torch.Tensor:
    """(F, N, N) fp32 Gram matrices X X^T, exactly symmetric: the upper triangle (i <= j) is kept
    and mirrored, whatever summation order the matmul used for (i, j) and (j, i) (the Triton
    kernel applies the same rule to its diagonal tiles)."""
    g = torch.bmm(xf, xf.transpose(1, 2))
    N = g.shape[-1]
    upper = torch.ones(N, N, dtype=torch.bool, device=g.device).triu_()
    return torch.where(upper, g, g.transpose(1, 2))


def pairwise_sqdist(x: torch.Tensor) -> torch.Tensor:
    """Scaled squared distances d2[f, i, j] = ||x_i - x_j||^2 / D, fp32, shape (F, N, N).

    Computed from one Gram matrix G = X X^T as (sq_i + sq_j) - 2 G_ij with sq = diag(G) (the same
    formula the Triton kernels use), clamped at 0, with an exact 0 diagonal; values within the
    duplicate rule (``DUPLICATE_RTOL``) of 0 are 0. Adding sq_i + sq_j
    first keeps d2 exactly symmetric (G is), so mathematically equal densities stay bit-equal and
    the lower-index tie rule decides them; taking sq from G's diagonal puts bit-identical tokens
    at distance 0 when the Gram products are computed alike.
    """
    xf = x.float()
    D = x.shape[-1]
    F, N, _ = x.shape
    g = gram(xf)
    sq = g.diagonal(dim1=1, dim2=2).clone()  # (F, N)
    # d2 = (sq_i + sq_j) + (-2 G) with the duplicate rule, built into G's buffer one frame chunk at
    # a time so the only extra memory is a (chunk, N, N) temporary of at most 1/8 of the buffer.
    step = max(1, F // 8)
    for s0 in range(0, F, step):
        sl = slice(s0, min(F, s0 + step))
        g[sl] = sqdist_from_gram(g[sl], sq[sl, :, None], sq[sl, None, :]).div_(D)
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
