"""Brute-force fp64 oracle for the vista_kernels ops.

Deliberately naive: plain Python loops over frames and tokens, every pairwise distance computed
directly as a fp64 sum over the feature dims (never through the Gram-matrix formula the reference
and the kernels use), so it shares no numerical shortcut with the code under test.

Semantics (DESIGN.md, "The algorithm"):

* d_ij = ||x_i - x_j||_2 / sqrt(D), fp64, on the input values (fp16/bf16 are upcast after reading).
* Every tie is broken toward the lower token index.

All functions accept torch tensors and return torch tensors (float64 for values, bool / int64 for
masks and indices) on the CPU.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

NORM_EPS = 1e-12

# ----------------------------------------------------------------------------------------- helpers


def _tokens(x: torch.Tensor) -> List[List[List[float]]]:
    """(F, N, D) tensor -> nested lists of Python floats (fp64), read from x's own dtype."""
    return x.detach().to("cpu").to(torch.float64).tolist()


def _valid(valid: Optional[torch.Tensor], F: int, N: int) -> List[List[bool]]:
    if valid is None:
        return [[True] * N for _ in range(F)]
    return valid.detach().to("cpu").to(torch.bool).tolist()


#: DESIGN's duplicate rule (vista_kernels.DUPLICATE_RTOL, restated here on purpose): tokens whose
#: squared distance is at most 2^-16 of the larger squared norm are the same token (distance 0).
DUPLICATE_RTOL = 2.0 ** -16


def sqdist(a: Sequence[float], b: Sequence[float]) -> float:
    """Scaled squared distance ||a - b||^2 / D as a direct fp64 sum over dims (duplicate rule)."""
    s = 0.0
    na = nb = 0.0
    for u, v in zip(a, b):
        t = u - v
        s += t * t
        na += u * u
        nb += v * v
    if s <= DUPLICATE_RTOL * max(na, nb):
        return 0.0
    return s / len(a)


def dist(a: Sequence[float], b: Sequence[float]) -> float:
    return math.sqrt(sqdist(a, b))


def oracle_pairwise_dist(x: torch.Tensor) -> torch.Tensor:
    """(F, N, N) fp64 d_ij (for diagnostics and margins in tests)."""
    xs = _tokens(x)
    F, N = x.shape[0], x.shape[1]
    out = torch.zeros(F, N, N, dtype=torch.float64)
    for f in range(F):
        fr = xs[f]
        for i in range(N):
            for j in range(i + 1, N):
                d = dist(fr[i], fr[j])
                out[f, i, j] = d
                out[f, j, i] = d
    return out


# --------------------------------------------------------------------------------------------- ops


def oracle_frame_means(x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    xs = _tokens(x)
    F, N, D = x.shape
    vs = _valid(valid, F, N)
    out = torch.zeros(F, D, dtype=torch.float64)
    for f in range(F):
        acc = [0.0] * D
        cnt = 0
        for i in range(N):
            if vs[f][i]:
                cnt += 1
                for d in range(D):
                    acc[d] += xs[f][i][d]
        if cnt:
            out[f] = torch.tensor([a / cnt for a in acc], dtype=torch.float64)
    return out


def oracle_frame_cosine(x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(F-1,) fp64 cos(mean x[t], mean x[t+1]); each norm clamped at 1e-12 (zero mean -> 0)."""
    m = oracle_frame_means(x, valid).tolist()
    F = len(m)
    out = []
    for t in range(F - 1):
        a, b = m[t], m[t + 1]
        dot = sum(u * v for u, v in zip(a, b))
        na = math.sqrt(sum(u * u for u in a))
        nb = math.sqrt(sum(v * v for v in b))
        out.append(dot / (max(na, NORM_EPS) * max(nb, NORM_EPS)))
    return torch.tensor(out, dtype=torch.float64).reshape(max(F - 1, 0))


def oracle_knn_density(x: torch.Tensor, k: int = 7, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(F, N) fp64 rho_i = exp(-mean of the min(k, #others) smallest d_ij^2 over other valid j)."""
    xs = _tokens(x)
    F, N, _ = x.shape
    vs = _valid(valid, F, N)
    out = torch.zeros(F, N, dtype=torch.float64)
    for f in range(F):
        fr, vf = xs[f], vs[f]
        for i in range(N):
            if not vf[i]:
                continue
            d2 = sorted(sqdist(fr[i], fr[j]) for j in range(N) if j != i and vf[j])
            kk = min(k, len(d2))
            mean = sum(d2[:kk]) / kk if kk else 0.0
            out[f, i] = math.exp(-mean)
    return out


def oracle_dpc_delta(x: torch.Tensor, rho: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(F, N) fp64 delta_i = min d_ij over valid j denser than i (rho_j > rho_i, or equal and j < i);
    no denser token -> max d_ij over valid j (self included, 0); invalid rows 0.

    ``rho`` is compared exactly as given (pass the same tensor the implementation under test gets).
    """
    xs = _tokens(x)
    F, N, _ = x.shape
    vs = _valid(valid, F, N)
    r = rho.detach().to("cpu").to(torch.float64).tolist()
    out = torch.zeros(F, N, dtype=torch.float64)
    for f in range(F):
        fr, vf, rf = xs[f], vs[f], r[f]
        for i in range(N):
            if not vf[i]:
                continue
            best = math.inf
            far = 0.0
            for j in range(N):
                if not vf[j]:
                    continue
                d = 0.0 if j == i else dist(fr[i], fr[j])
                far = max(far, d)
                # duplicates (d == 0 by the rule) are ordered by index alone
                denser = (j < i) if d == 0.0 else (rf[j] > rf[i] or (rf[j] == rf[i] and j < i))
                if denser and d < best:
                    best = d
            out[f, i] = best if best < math.inf else far
    return out


def oracle_dpc_gamma(
    x: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
    k: int = 7,
    order_rho: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(F, N) fp64 gamma = rho * delta with the oracle's own fp64 rho.

    ``order_rho``: if given, the density *order* used for delta is taken from it (e.g. the fp32 rho of
    the implementation under test) instead of the oracle's fp64 rho; the rho factor stays fp64.
    Only needed when two densities are closer than fp32 resolution.
    """
    rho = oracle_knn_density(x, k, valid)
    delta = oracle_dpc_delta(x, rho if order_rho is None else order_rho, valid)
    return rho * delta


def oracle_topk(score: torch.Tensor, k_keep, eligible: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(F, N) bool: per frame the k_keep[f] eligible tokens with the largest score, ties -> lower index."""
    F, N = score.shape
    s = score.detach().to("cpu").to(torch.float64).tolist()
    el = _valid(eligible, F, N)
    if isinstance(k_keep, int):
        ks = [k_keep] * F
    else:
        ks = [int(v) for v in torch.as_tensor(k_keep).reshape(-1).expand(F).tolist()]
    out = torch.zeros(F, N, dtype=torch.bool)
    for f in range(F):
        cands = [i for i in range(N) if el[f][i]]
        cands.sort(key=lambda i: (-s[f][i], i))
        for i in cands[: ks[f]]:
            out[f, i] = True
    return out


def oracle_dpc_select(
    x: torch.Tensor, k_keep, valid: Optional[torch.Tensor] = None, k: int = 7, order_rho=None
) -> torch.Tensor:
    """(F, N) bool: per frame the k_keep[f] valid tokens with the largest gamma, ties -> lower index."""
    gamma = oracle_dpc_gamma(x, valid, k, order_rho=order_rho)
    F, N = gamma.shape
    return oracle_topk(gamma, k_keep, valid if valid is not None else torch.ones(F, N, dtype=torch.bool))


def oracle_anchor_assign(
    x: torch.Tensor, keep: torch.Tensor, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """(F, N) int64: dropped valid j -> nearest kept (min d, ties lower index); kept -> self; invalid -> -1."""
    xs = _tokens(x)
    F, N, _ = x.shape
    vs = _valid(valid, F, N)
    ks = keep.detach().to("cpu").tolist()
    out = torch.full((F, N), -1, dtype=torch.int64)
    for f in range(F):
        fr = xs[f]
        for j in range(N):
            if not vs[f][j]:
                continue
            if ks[f][j]:
                out[f, j] = j
                continue
            best, arg = math.inf, -1
            for a in range(N):  # ascending: strict '<' keeps the lower index on ties
                if ks[f][a]:
                    d = dist(fr[j], fr[a])
                    if d < best:
                        best, arg = d, a
            out[f, j] = arg
    return out


def oracle_anchor_aggregate(
    x: torch.Tensor,
    keep: torch.Tensor,
    alpha: float = 0.5,
    valid: Optional[torch.Tensor] = None,
    assign: Optional[torch.Tensor] = None,
):
    """(x_out (F, N, D) fp64, assign (F, N) int64).

    Kept rows with a non-empty cluster of dropped tokens -> (1 - a) v + a mean(cluster); every other
    row unchanged. ``assign``: if given, use it as the cluster assignment (to check the aggregation
    independently of near-tie assignment decisions); otherwise the oracle's own.
    """
    if assign is None:
        assign = oracle_anchor_assign(x, keep, valid)
    xs = _tokens(x)
    F, N, D = x.shape
    vs = _valid(valid, F, N)
    ks = keep.detach().to("cpu").tolist()
    asg = assign.detach().to("cpu").tolist()
    out = x.detach().to("cpu").to(torch.float64).clone()
    for f in range(F):
        fr = xs[f]
        for a in range(N):
            if not ks[f][a]:
                continue
            members = [j for j in range(N) if vs[f][j] and not ks[f][j] and asg[f][j] == a]
            if not members:
                continue
            mean = [sum(fr[j][d] for j in members) / len(members) for d in range(D)]
            out[f, a] = torch.tensor(
                [(1.0 - alpha) * fr[a][d] + alpha * mean[d] for d in range(D)], dtype=torch.float64
            )
    return out, assign.clone()


def oracle_scout_score_reduce(attn: torch.Tensor) -> torch.Tensor:
    """(B, P) fp64: s[b, p] = sum over queries of max over heads attn[b, h, q, p]."""
    a = attn.detach().to("cpu").to(torch.float64).tolist()
    B, H, Q, P = attn.shape
    out = torch.zeros(B, P, dtype=torch.float64)
    for b in range(B):
        for p in range(P):
            out[b, p] = sum(max(a[b][h][q][p] for h in range(H)) for q in range(Q))
    return out
