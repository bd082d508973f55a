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

    Computed from one Gram matrix G = X X^T and the squared norms (the same formula the Triton
    kernels use), clamped at 0, with an exact 0 diagonal. Built in place: one (F, N, N) buffer.
    """
    xf = x.float()
    D = x.shape[-1]
    sq = xf.square().sum(-1)  # (F, N)
    d2 = torch.bmm(xf, xf.transpose(1, 2))  # G
    d2.mul_(-2.0).add_(sq[:, :, None]).add_(sq[:, None, :]).clamp_(min=0.0).div_(D)
    d2.diagonal(dim1=1, dim2=2).fill_(0.0)
    return d2


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
