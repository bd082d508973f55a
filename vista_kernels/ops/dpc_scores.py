"""DPC-KNN scores from the per-frame Gram matrices: kNN density rho, separation delta, gamma.

``_dpc_scores_kernel`` reads G (chunk, N, N), the squared norms and the candidate mask. For each
candidate row it keeps a running top-k of its smallest scaled squared distances in registers
(k <= 32: a (BLOCK_M, KP) tile; each column tile inserts its smallest values while any row still
improves, at most k rounds), then rho = exp(-mean of the finite ones, summed in ascending order). It then
finds delta: the distance to the nearest candidate of higher density (rho_j > rho_i, or equal rho
and j < i), or, for the frame's density peak, the largest distance to any candidate; gamma = rho *
delta. Distances use the reference's formula d2 = max(-2 G_ij + |x_i|^2 + |x_j|^2, 0) / D with a
0 diagonal, IEEE division and square root.

Launch modes:
* fused (N <= FUSED_MAX_N): one program per frame; phase 1 writes rho for every row block, a CTA
  barrier, phase 2 reads it back for delta and gamma. One launch per frame chunk.
* row grid: one program per (frame, row block) and one phase per launch (rho, then delta/gamma):
  used for large N, for ``knn_density`` and for ``dpc_delta`` with a caller-given rho.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..checks import check_k, check_k_keep, check_rho, check_tokens, check_valid
from ..reference import _common
from ..utils import check_triton_device, next_pow2
from .frame_stats import Geometry

_TRITON_BEFORE_3_7 = tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7)

#: Largest k the register top-k supports; larger k falls back to the reference for rho.
MAX_K = 32
#: Frames with at most this many tokens use the fused one-program-per-frame launch.
FUSED_MAX_N = 256


@triton.jit
def _d2_tile(g_f, sq_f, rows, cols, rmask, cmask, N, Df):
    """Scaled squared distances of a (rows x cols) tile, the reference's formula, 0 diagonal.

    (sq_i + sq_j) - 2 G_ij, then the duplicate rule (values <= 2^-16 * max(sq_i, sq_j) are 0,
    ``reference._common.DUPLICATE_RTOL``), then / D with IEEE division.
    """
    g = tl.load(g_f + rows[:, None] * N + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    sqi = tl.load(sq_f + rows, mask=rmask, other=0.0)
    sqj = tl.load(sq_f + cols, mask=cmask, other=0.0)
    d2 = (sqi[:, None] + sqj[None, :]) + g * -2.0  # symmetric, as the reference
    thr = tl.maximum(sqi[:, None], sqj[None, :]) * 0.0000152587890625  # DUPLICATE_RTOL = 2^-16
    d2 = tl.where(d2 <= thr, 0.0, d2)
    d2 = tl.math.div_rn(d2, tl.zeros_like(d2) + Df)
    return tl.where(rows[:, None] == cols[None, :], 0.0, d2)


@triton.jit
def _rho_rows(g_f, sq_f, v_f, rho_f, rb, N, Df,
              K: tl.constexpr, KP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    vi = tl.load(v_f + rows, mask=rmask, other=0) != 0
    kidx = tl.arange(0, KP)
    lidx = tl.arange(0, BLOCK_N)
    # slots >= K hold -inf: never the worst, never summed
    best = tl.where(kidx[None, :] < K, float("inf"), float("-inf")) + tl.zeros((BLOCK_M, KP), dtype=tl.float32)
    for c0 in range(0, N, BLOCK_N):
        cols = c0 + lidx
        cmask = cols < N
        vj = (tl.load(v_f + cols, mask=cmask, other=0) != 0) & cmask
        d2 = _d2_tile(g_f, sq_f, rows, cols, rmask, cmask, N, Df)
        d2 = tl.where((rows[:, None] == cols[None, :]) | (~vj[None, :]), float("inf"), d2)
        # insert the tile's smallest values while any row still improves (at most K rounds: once a
        # row has taken its tile's K smallest, the next one cannot beat its current worst)
        m, mi = tl.min(d2, axis=1, return_indices=True)
        worst, wi = tl.max(best, axis=1, return_indices=True)
        take = m < worst
        while tl.max(take.to(tl.int32), axis=0) > 0:
            best = tl.where(take[:, None] & (kidx[None, :] == wi[:, None]), m[:, None], best)
            d2 = tl.where(take[:, None] & (lidx[None, :] == mi[:, None]), float("inf"), d2)
            m, mi = tl.min(d2, axis=1, return_indices=True)
            worst, wi = tl.max(best, axis=1, return_indices=True)
            take = m < worst
    # mean of the finite values, summed in ascending order like the reference
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    c = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for _r in range(KP):
        m, mi = tl.min(best, axis=1, return_indices=True)
        fin = (m < float("inf")) & (m > float("-inf"))
        s += tl.where(fin, m, 0.0)
        c += fin.to(tl.float32)
        best = tl.where(kidx[None, :] == mi[:, None], float("inf"), best)
    mean = tl.math.div_rn(s, tl.maximum(c, 1.0))
    rho = tl.where(vi, tl.exp(-mean), 0.0)
    tl.store(rho_f + rows, rho, mask=rmask)


@triton.jit
def _delta_rows(g_f, sq_f, v_f, rsrc_f, delta_f, gamma_f, rb, N, Df,
                STORE_GAMMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    vi = tl.load(v_f + rows, mask=rmask, other=0) != 0
    ri = tl.load(rsrc_f + rows, mask=rmask, other=0.0)
    dmin = tl.full((BLOCK_M,), float("inf"), dtype=tl.float32)
    dmax = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    for c0 in range(0, N, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        vj = (tl.load(v_f + cols, mask=cmask, other=0) != 0) & cmask
        rj = tl.load(rsrc_f + cols, mask=cmask, other=0.0)
        d2 = _d2_tile(g_f, sq_f, rows, cols, rmask, cmask, N, Df)
        # duplicates (d2 == 0) compare as equal densities, so the lower index is the denser (reference)
        lower = cols[None, :] < rows[:, None]
        higher = tl.where(d2 == 0.0, lower, (rj[None, :] > ri[:, None]) | ((rj[None, :] == ri[:, None]) & lower))
        higher = higher & vj[None, :]
        dmin = tl.minimum(dmin, tl.min(tl.where(higher, d2, float("inf")), axis=1))
        dmax = tl.maximum(dmax, tl.max(tl.where(vj[None, :], d2, float("-inf")), axis=1))
    # a denser candidate exists iff dmin is finite (distances of finite tokens are finite); not
    # tracking a separate flag keeps the fused kernel within 128 registers (AOT: no spills)
    d = tl.maximum(tl.where(dmin < float("inf"), dmin, dmax), 0.0)
    delta = tl.where(vi, tl.sqrt_rn(d), 0.0)
    tl.store(delta_f + rows, delta, mask=rmask)
    if STORE_GAMMA:
        tl.store(gamma_f + rows, tl.where(vi, ri * delta, 0.0), mask=rmask)


@triton.jit
def _dpc_scores_kernel(
    g_ptr, sq_ptr, valid_ptr, rho_in_ptr, rho_ptr, delta_ptr, gamma_ptr,
    f0, N, Df,
    K: tl.constexpr, KP: tl.constexpr, DO_RHO: tl.constexpr, DO_DELTA: tl.constexpr,
    ROW_GRID: tl.constexpr, STORE_GAMMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    fl = tl.program_id(0).to(tl.int64)
    f = fl + f0
    g_f = g_ptr + fl * N * N
    sq_f = sq_ptr + f * N
    v_f = valid_ptr + f * N
    rho_f = rho_ptr + f * N
    delta_f = delta_ptr + f * N
    gamma_f = gamma_ptr + f * N
    if ROW_GRID:
        rb = tl.program_id(1)
        if DO_RHO:
            _rho_rows(g_f, sq_f, v_f, rho_f, rb, N, Df, K, KP, BLOCK_M, BLOCK_N)
        if DO_DELTA:
            _delta_rows(g_f, sq_f, v_f, rho_in_ptr + f * N, delta_f, gamma_f, rb, N, Df,
                        STORE_GAMMA, BLOCK_M, BLOCK_N)
    else:
        n_rb = tl.cdiv(N, BLOCK_M)
        if DO_RHO:
            for rb in range(0, n_rb):
                _rho_rows(g_f, sq_f, v_f, rho_f, rb, N, Df, K, KP, BLOCK_M, BLOCK_N)
            tl.debug_barrier()  # rho of every row is visible to the whole CTA
            rsrc_f = rho_f
        else:
            rsrc_f = rho_in_ptr + f * N
        if DO_DELTA:
            for rb in range(0, n_rb):
                _delta_rows(g_f, sq_f, v_f, rsrc_f, delta_f, gamma_f, rb, N, Df,
                            STORE_GAMMA, BLOCK_M, BLOCK_N)


def use_fused_launch(N: int, frames: int, device: torch.device) -> bool:
    """One CTA per frame (one launch) or one per (frame, row block) (two launches)?

    The fused launch needs N <= FUSED_MAX_N; on a GPU it also needs enough frames to fill the
    machine (at least twice the SM count), otherwise the row grid's extra parallelism wins. Under
    the interpreter (CPU) the fused launch is used whenever N allows.
    """
    if N > FUSED_MAX_N:
        return False
    if device.type != "cuda":
        return True
    return frames >= 2 * _sm_count(device)


_SM_COUNT = {}


def _sm_count(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def dpc_config(N: int, k: int) -> dict:
    """Block sizes / warps the wrappers launch ``_dpc_scores_kernel`` with (AOT uses it too)."""
    K = min(k, max(N - 1, 0))
    block_n = max(16, min(64, next_pow2(N)))
    block_m = max(16, min(32, next_pow2(N)))
    if K >= 16 and N <= 32:  # AOT-checked: a (32 x 16) running top-k spilled 8 bytes on sm_90
        block_m = 16
    if 32 < N <= FUSED_MAX_N and _TRITON_BEFORE_3_7:
        # AOT-checked per triton version: with triton 3.6 the 32 x 64 tiles spill 8-48 bytes (fused
        # and delta modes) and 32 x 32 do not; with triton 3.8 it is the other way round (k = 1)
        block_n = 32
    if K <= 2 and N > FUSED_MAX_N:  # AOT-checked: 32 x 64 tiles spilled 8 bytes on sm_90 (triton 3.6)
        block_n = 32
    # AOT-checked: 8 warps for the 32 < N <= 256 (fused) launches; 8 warps spilled 8-16 bytes on
    # sm_90 for N <= 32 (fused and rho row-grid) and for N > 256 (rho phase); 4 warps does not
    warps = 8 if 32 < N <= FUSED_MAX_N else 4
    return {"K": K, "KP": max(2, next_pow2(K)), "BLOCK_M": block_m, "BLOCK_N": block_n,
            "num_warps": warps, "fused": N <= FUSED_MAX_N}


def _launch(geo: Geometry, f0: int, f1: int, g: torch.Tensor, valid_u8, out_rho, out_delta, out_gamma,
            rho_in, k: int, do_rho: bool, do_delta: bool, fused: Optional[bool]):
    N = geo.N
    cfg = dpc_config(N, k)
    use_fused = cfg["fused"] if fused is None else bool(fused)
    nf = f1 - f0
    common = dict(K=cfg["K"], KP=cfg["KP"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                  num_warps=cfg["num_warps"])
    Df = float(geo.D)
    dummy = geo.sq
    args = lambda ri: (g, geo.sq, valid_u8, ri, out_rho if out_rho is not None else dummy,  # noqa: E731
                       out_delta if out_delta is not None else dummy,
                       out_gamma if out_gamma is not None else dummy, f0, N, Df)
    store_gamma = out_gamma is not None
    if use_fused and do_rho and do_delta:
        _dpc_scores_kernel[(nf,)](*args(dummy), DO_RHO=True, DO_DELTA=True, ROW_GRID=False,
                                  STORE_GAMMA=store_gamma, **common)
        return
    n_rb = triton.cdiv(N, cfg["BLOCK_M"])
    if do_rho:
        _dpc_scores_kernel[(nf, n_rb)](*args(dummy), DO_RHO=True, DO_DELTA=False, ROW_GRID=True,
                                       STORE_GAMMA=False, **common)
    if do_delta:
        ri = rho_in if rho_in is not None else out_rho
        _dpc_scores_kernel[(nf, n_rb)](*args(ri), DO_RHO=False, DO_DELTA=True, ROW_GRID=True,
                                       STORE_GAMMA=store_gamma, **common)


def dpc_scores_triton(x, valid=None, k: int = 7, *, max_gram_elems: Optional[int] = None,
                      input_precision: str = "ieee", fused: Optional[bool] = None):
    """(rho, delta, gamma), each (F, N) fp32, from one geometry pass and one scores launch per chunk."""
    x = check_tokens(x)
    valid = check_valid(valid, x)
    k = check_k(k)
    check_triton_device(x, _dpc_scores_kernel)
    F, N, _ = x.shape
    z = lambda: torch.zeros((F, N), dtype=torch.float32, device=x.device)  # noqa: E731
    rho, delta, gamma = z(), z(), z()
    geo = Geometry(x, valid, input_precision)
    for f0, f1, g in geo.chunks(max_gram_elems):
        scores_chunk(geo, f0, f1, g, valid, geo.valid_u8, k, rho, delta, gamma, fused)
    return rho, delta, gamma


def scores_chunk(geo: Geometry, f0: int, f1: int, g: torch.Tensor, cand: torch.Tensor, cand_u8: torch.Tensor,
                 k: int, rho, delta, gamma, fused: Optional[bool]) -> None:
    """rho, delta, gamma of frames [f0, f1) over the candidates ``cand`` (bool, and its uint8 view),
    from their Gram matrices ``g``; written into the (F, N) outputs."""
    if min(k, geo.N - 1) > MAX_K:  # register top-k holds 32 neighbours: rho from the reference formula on G
        rho[f0:f1] = _rho_from_gram(g, geo.sq[f0:f1], cand[f0:f1], geo.D, k)
        _launch(geo, f0, f1, g, cand_u8, None, delta, gamma, rho, k, False, True, fused)
    else:
        _launch(geo, f0, f1, g, cand_u8, rho, delta, gamma, None, k, True, True, fused)


def _rho_from_gram(g, sq, valid, D, k):
    d2 = _common.sqdist_from_gram(g, sq[:, :, None], sq[:, None, :]).div_(D)  # the duplicate rule too
    from ..reference.dpc_scores import _knn_rho_inplace
    return _knn_rho_inplace(d2, valid, k)


def knn_density_triton(x, k: int = 7, valid=None, *, max_gram_elems: Optional[int] = None,
                       input_precision: str = "ieee"):
    """(F, N) fp32 rho; same contract as ``knn_density_torch``."""
    x = check_tokens(x)
    valid = check_valid(valid, x)
    k = check_k(k)
    check_triton_device(x, _dpc_scores_kernel)
    F, N, _ = x.shape
    rho = torch.zeros((F, N), dtype=torch.float32, device=x.device)
    geo = Geometry(x, valid, input_precision)
    for f0, f1, g in geo.chunks(max_gram_elems):
        if min(k, N - 1) > MAX_K:
            rho[f0:f1] = _rho_from_gram(g, geo.sq[f0:f1], valid[f0:f1], geo.D, k)
        else:
            _launch(geo, f0, f1, g, geo.valid_u8, rho, None, None, None, k, True, False, False)
    return rho


def dpc_delta_triton(x, rho, valid=None, *, max_gram_elems: Optional[int] = None,
                     input_precision: str = "ieee"):
    """(F, N) fp32 delta for a given rho; same contract as ``dpc_delta_torch``."""
    x = check_tokens(x)
    valid = check_valid(valid, x)
    rho = check_rho(rho, x)
    check_triton_device(x, _dpc_scores_kernel)
    F, N, _ = x.shape
    rho32 = rho.float().contiguous()
    delta = torch.zeros((F, N), dtype=torch.float32, device=x.device)
    geo = Geometry(x, valid, input_precision)
    for f0, f1, g in geo.chunks(max_gram_elems):
        _launch(geo, f0, f1, g, geo.valid_u8, None, delta, None, rho32, 1, False, True, False)
    return delta


def dpc_gamma_triton(x, valid=None, k: int = 7, *, max_gram_elems: Optional[int] = None,
                     input_precision: str = "ieee", fused: Optional[bool] = None):
    """(F, N) fp32 gamma = rho * delta; same contract as ``dpc_gamma_torch``."""
    return dpc_scores_triton(x, valid, k, max_gram_elems=max_gram_elems,
                             input_precision=input_precision, fused=fused)[2]


def dpc_select_triton(x, k_keep, valid=None, k: int = 7, *, max_gram_elems: Optional[int] = None,
                      input_precision: str = "ieee", fused: Optional[bool] = None):
    """(F, N) bool top-k_keep[f] by gamma among valid (ties: lower index); the top-k is a torch op."""
    x = check_tokens(x)
    valid = check_valid(valid, x)
    k_keep = check_k_keep(k_keep, x, valid)
    k = check_k(k)
    gamma = dpc_gamma_triton(x, valid, k, max_gram_elems=max_gram_elems,
                             input_precision=input_precision, fused=fused)
    return _common.stable_topk_mask(gamma, k_keep, valid)
