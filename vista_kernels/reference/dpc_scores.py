"""Reference DPC-KNN scores (PAPER eq. 8-10): kNN density rho, separation delta, gamma = rho * delta.

Distances are d_ij = ||x_i - x_j||_2 / sqrt(D) in fp32 (any input dtype), from one Gram matrix per
frame. Only ``valid`` tokens (the candidates) take part; invalid rows get 0.

Tie rules (DESIGN.md): token j counts as "denser" than i when rho_j > rho_i, or rho_j == rho_i and
j < i; duplicates (distance 0 by the duplicate rule) are ordered by index alone (the lower one is
denser, so exactly one of them can become an anchor on every backend); so every frame with candidates has exactly one density peak (highest rho, lowest index), whose
delta is its largest distance to any candidate. Top-k on gamma prefers the lower index on ties.
"""
from __future__ import annotations

import math

import torch

from ..checks import check_k, check_k_keep, check_rho, check_tokens, check_valid
from ._common import frame_chunks, pairwise_sqdist, stable_topk_mask


def _knn_rho_inplace(d2: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """rho from d2 (F, N, N); leaves d2 with +inf on the diagonal and in invalid columns."""
    N = d2.shape[-1]
    d2.diagonal(dim1=1, dim2=2).fill_(math.inf)
    d2.masked_fill_(~valid[:, None, :], math.inf)
    kk = min(k, N - 1)
    if kk == 0:
        mean = torch.zeros(d2.shape[:2], dtype=torch.float32, device=d2.device)
    else:
        vals = torch.topk(d2, kk, dim=-1, largest=False).values  # ascending
        fin = torch.isfinite(vals)
        mean = vals.masked_fill(~fin, 0.0).sum(-1) / fin.sum(-1).clamp(min=1)
    return torch.exp(-mean).masked_fill(~valid, 0.0)


def _delta_inplace(d2: torch.Tensor, rho: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """delta from d2 (F, N, N) whose invalid columns may hold anything; d2 is overwritten."""
    N = d2.shape[-1]
    d2.diagonal(dim1=1, dim2=2).fill_(0.0)
    dup = d2 == 0  # duplicates by the rule (and the diagonal); read before the masking below
    d2.masked_fill_(~valid[:, None, :], -math.inf)
    dmax = d2.amax(-1)  # farthest candidate (self distance 0 when alone)
    r = rho.float()
    idx = torch.arange(N, device=d2.device)
    lower = idx[None, :] < idx[:, None]  # [i, j]: j < i
    # duplicates are one token: the lower index is the denser, whatever their rho (rho of two
    # bit-identical tokens can differ by an ulp when their Gram rows come from different tiles)
    higher = torch.where(dup, lower, (r[:, None, :] > r[:, :, None]) | ((r[:, None, :] == r[:, :, None]) & lower))
    higher &= valid[:, None, :]
    d2.masked_fill_(~higher, math.inf)
    dmin = d2.amin(-1)
    has = higher.any(-1)
    delta2 = torch.where(has, dmin, dmax).clamp(min=0.0)
    # sqrt in fp64 then rounded once: the correctly rounded fp32 sqrt on every libm and SIMD path
    # (the Triton kernels use sqrt_rn), so delta is bit-identical across backends and machines
    return delta2.double().sqrt().float().masked_fill(~valid, 0.0)


def _per_chunk(x: torch.Tensor, score) -> torch.Tensor:
    """(F, N) fp32 zeros filled frame chunk by frame chunk (``frame_chunks``) with
    ``score(sl, d2)``, d2 the chunk's (chunk, N, N) scaled squared distances (``score`` may overwrite it)."""
    F, N, _ = x.shape
    out = torch.zeros(F, N, dtype=torch.float32, device=x.device)
    for sl in frame_chunks(F, N):
        out[sl] = score(sl, pairwise_sqdist(x[sl]))
    return out


def knn_density_torch(x: torch.Tensor, k: int = 7, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Local density rho_i = exp(-mean_{j in kNN(i)} d_ij^2) over valid tokens of each frame.

    Args:
        x: (F, N, D) float32/float16/bfloat16.
        k: neighbours (>= 1); a frame with fewer than k+1 valid tokens uses all the others, and a
            lone valid token gets rho = 1 (empty mean).
        valid: optional (F, N) bool; invalid rows get 0 and are nobody's neighbour.
    Returns:
        (F, N) float32.
    """
    x = check_tokens(x)
    valid = check_valid(valid, x)
    k = check_k(k)
    return _per_chunk(x, lambda sl, d2: _knn_rho_inplace(d2, valid[sl], k))


def dpc_delta_torch(x: torch.Tensor, rho: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """delta_i = distance to the nearest denser valid token (the peak: its farthest valid token).

    Args:
        x: (F, N, D) float32/float16/bfloat16.
        rho: (F, N) densities (compared in fp32; ties by lower index).
        valid: optional (F, N) bool; invalid rows get 0.
    Returns:
        (F, N) float32.
    """
    x = check_tokens(x)
    valid = check_valid(valid, x)
    rho = check_rho(rho, x)
    return _per_chunk(x, lambda sl, d2: _delta_inplace(d2, rho[sl], valid[sl]))


def dpc_gamma_torch(x: torch.Tensor, valid: torch.Tensor | None = None, k: int = 7) -> torch.Tensor:
    """gamma = rho * delta, (F, N) float32, one Gram matrix per frame chunk shared by both."""
    x = check_tokens(x)
    valid = check_valid(valid, x)
    k = check_k(k)

    def gamma(sl, d2):
        rho = _knn_rho_inplace(d2, valid[sl], k)
        return rho * _delta_inplace(d2, rho, valid[sl])

    return _per_chunk(x, gamma)


def dpc_select_torch(
    x: torch.Tensor, k_keep, valid: torch.Tensor | None = None, k: int = 7
) -> torch.Tensor:
    """(F, N) bool: the k_keep[f] valid tokens of frame f with the highest gamma (ties: lower index).

    Args:
        x: (F, N, D) float32/float16/bfloat16.
        k_keep: int or integer tensor (F,), 0 <= k_keep[f] <= valid tokens in frame f.
        valid: optional (F, N) bool candidate mask.
        k: kNN size for the density.
    """
    x = check_tokens(x)
    valid = check_valid(valid, x)
    k_keep = check_k_keep(k_keep, x, valid)
    gamma = dpc_gamma_torch(x, valid, k)
    return stable_topk_mask(gamma, k_keep, valid)
