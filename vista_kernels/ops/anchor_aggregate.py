"""Soft aggregation: each dropped token joins its nearest kept token; kept rows are blended.

Two kernels per frame chunk, after the geometry pass:
* ``_anchor_assign_kernel``: for every row, argmin over the kept columns of |x_j|^2 - 2 G_ij
  (= ||x_i - x_j||^2 - |x_i|^2, from G and the squared norms: the reference's score and order),
  ties to the lower index (``tl.min`` with left tie-break inside a tile, strict ``<`` across
  tiles). Kept tokens point to themselves, invalid tokens get -1.
* ``_anchor_aggregate_kernel``: program (frame, anchor row block, D block) sums its anchors'
  clusters as a fixed-order ``tl.dot(members, X)`` (members is the 0/1 cluster matrix, exact in any
  dtype; fp32 accumulation) - no atomics, deterministic run to run - then writes
  (1 - a) v + a mean(cluster) for the kept rows with a non-empty cluster, in x's dtype, and the other
  rows of its block unchanged (the raw loaded bits), so x_out needs no separate copy of x.
"""
from __future__ import annotations

import struct
from typing import Optional

import torch
import triton
import triton.language as tl

from ..checks import check_aggregate_args
from ..utils import check_input_precision, check_triton_device, kernel_interpreted, next_pow2, upcast_flag
from .dpc_scores import _d2_tile
from .frame_stats import Geometry


@triton.jit
def _round_fp32_to_bf16_rne(v):
    """fp32 -> bf16 with round-to-nearest-even done by hand (exact for finite values).

    The interpreter truncates fp32 -> bf16 casts; GPUs round to nearest even. Rounding the fp32 bits
    first makes the (then exact) cast agree with torch and the GPU under the interpreter too.
    """
    bits = v.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    bits = bits & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def _anchor_assign_kernel(g_ptr, sq_ptr, valid_ptr, keep_ptr, assign_ptr, f0, N, Df,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    fl = tl.program_id(0).to(tl.int64)
    f = fl + f0
    rb = tl.program_id(1)
    g_f = g_ptr + fl * N * N
    sq_f = sq_ptr + f * N
    rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    vi = tl.load(valid_ptr + f * N + rows, mask=rmask, other=0) != 0
    ki = tl.load(keep_ptr + f * N + rows, mask=rmask, other=0) != 0
    best = tl.full((BLOCK_M,), float("inf"), dtype=tl.float32)
    bidx = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for c0 in range(0, N, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        kj = (tl.load(keep_ptr + f * N + cols, mask=cmask, other=0) != 0) & cmask
        # the reference's distances (duplicate rule, / D): nearest kept column, lower index on ties
        d2 = _d2_tile(g_f, sq_f, rows, cols, rmask, cmask, N, Df)
        d2 = tl.where(kj[None, :], d2, float("inf"))
        m, mi = tl.min(d2, axis=1, return_indices=True)
        upd = m < best
        best = tl.where(upd, m, best)
        bidx = tl.where(upd, c0 + mi, bidx)
    a = tl.where(ki, rows, bidx)
    a = tl.where(vi, a, -1)
    tl.store(assign_ptr + f * N + rows, a.to(tl.int64), mask=rmask)


@triton.jit
def _anchor_aggregate_kernel(x_ptr, out_ptr, pos_ptr, fidx_ptr, tidx_ptr, valid_ptr, keep_ptr, assign_ptr,
                             f0, N, D, M, stride_xf, one_minus_a, alpha,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                             ROUND_BF16: tl.constexpr, COMPACT: tl.constexpr):
    # grid = (row blocks, D blocks, frames): the row blocks of one (frame, D block) are adjacent
    rb = tl.program_id(0)
    db = tl.program_id(1)
    f = tl.program_id(2).to(tl.int64) + f0
    rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    dd = db * BLOCK_D + tl.arange(0, BLOCK_D)
    md = dd < D
    x_f = x_ptr + f * stride_xf
    ki = tl.load(keep_ptr + f * N + rows, mask=rmask, other=0) != 0
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    cnt = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if tl.max(ki.to(tl.int32), axis=0) > 0:
        for c0 in range(0, N, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            cmask = cols < N
            aj = tl.load(assign_ptr + f * N + cols, mask=cmask, other=-1)
            vj = tl.load(valid_ptr + f * N + cols, mask=cmask, other=0) != 0
            kj = tl.load(keep_ptr + f * N + cols, mask=cmask, other=0) != 0
            dropped = vj & (~kj) & cmask
            mem = (aj[None, :] == rows[:, None]) & dropped[None, :]
            xj = tl.load(x_f + cols[:, None] * D + dd[None, :], mask=cmask[:, None] & md[None, :], other=0.0)
            if UPCAST:
                xj = xj.to(tl.float32)
            acc = tl.dot(mem.to(xj.dtype), xj, acc, input_precision=INPUT_PRECISION)
            cnt += tl.sum(mem.to(tl.float32), axis=1)
    m2 = rmask[:, None] & md[None, :]
    xi = tl.load(x_f + rows[:, None] * D + dd[None, :], mask=m2, other=0.0)
    mean = tl.math.div_rn(acc, tl.maximum(cnt, 1.0)[:, None] + tl.zeros_like(acc))
    blended = one_minus_a * xi.to(tl.float32) + alpha * mean
    upd = ki & (cnt > 0.0)
    if ROUND_BF16:
        res = tl.where(upd[:, None], _round_fp32_to_bf16_rne(blended), xi)
    else:
        res = tl.where(upd[:, None], blended.to(xi.dtype), xi)
    if COMPACT:
        # kept rows only, straight into their output rows (offsets from the prefix sum of keep)
        orow = tl.load(pos_ptr + f * N + rows, mask=rmask & ki, other=0)
        ko = ki & (orow < M)  # never past the (M, D) output, even for budgets that break their contract
        tl.store(out_ptr + orow[:, None] * D + dd[None, :], res, mask=m2 & ko[:, None])
        if db == 0:
            tl.store(fidx_ptr + orow, tl.zeros_like(orow) + f, mask=rmask & ko)
            tl.store(tidx_ptr + orow, rows.to(tl.int64), mask=rmask & ko)
    else:
        tl.store(out_ptr + f * stride_xf + rows[:, None] * D + dd[None, :], res, mask=m2)


def assign_config(N: int) -> dict:
    return {"BLOCK_M": max(16, min(32, next_pow2(N))), "BLOCK_N": max(16, min(64, next_pow2(N))), "num_warps": 8}


#: Largest anchor-row block: a frame of up to this many tokens is one row block, so each D block of
#: its tokens is read from HBM once (LLaVA's 196-token frames); larger frames use 256-row blocks.
AGG_MAX_BLOCK_M = 256


def aggregate_config(N: int, D: int, dtype: torch.dtype) -> dict:
    """Anchor rows per program: the whole frame when N <= 256 (x read once), else 256-row blocks."""
    block_m = max(16, min(AGG_MAX_BLOCK_M, next_pow2(N)))
    block_n = max(16, min(32, next_pow2(N)))
    block_d = max(16, min(64 if block_m <= 128 else 32, next_pow2(D)))
    warps = 8 if block_m >= 128 else 4
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "num_warps": warps}


def launch_assign(g, geo: Geometry, keep_u8, assign, f0: int, nf: int) -> None:
    """Nearest kept token of every token of frames [f0, f0 + nf) from their Gram matrices ``g``."""
    N = geo.N
    ac = assign_config(N)
    _anchor_assign_kernel[(nf, triton.cdiv(N, ac["BLOCK_M"]))](
        g, geo.sq, geo.valid_u8, keep_u8, assign, f0, N, float(geo.D),
        BLOCK_M=ac["BLOCK_M"], BLOCK_N=ac["BLOCK_N"], num_warps=ac["num_warps"],
    )


def launch_aggregate(x, out, keep_u8, assign, geo: Geometry, f0: int, nf: int, alpha: float,
                     pos=None, fidx=None, tidx=None) -> None:
    """Blend the kept rows of frames [f0, f0 + nf): into ``out`` (F, N, D) in place of x, or, with
    ``pos`` (F, N) output rows, compacted into ``out`` (M, D) plus ``fidx``/``tidx`` (M,)."""
    N, D = geo.N, geo.D
    gc = aggregate_config(N, D, x.dtype)
    compact = pos is not None
    dummy = assign
    _anchor_aggregate_kernel[(triton.cdiv(N, gc["BLOCK_M"]), triton.cdiv(D, gc["BLOCK_D"]), nf)](
        x, out, pos if compact else dummy, fidx if compact else dummy, tidx if compact else dummy,
        geo.valid_u8, keep_u8, assign, f0, N, D, out.shape[0] if compact else 0, N * D, one_minus(alpha), alpha,
        BLOCK_M=gc["BLOCK_M"], BLOCK_N=gc["BLOCK_N"], BLOCK_D=gc["BLOCK_D"],
        UPCAST=upcast_flag(_anchor_aggregate_kernel, x.dtype), INPUT_PRECISION=geo.input_precision,
        ROUND_BF16=bool(kernel_interpreted(_anchor_aggregate_kernel) and x.dtype == torch.bfloat16),
        COMPACT=compact, num_warps=gc["num_warps"],
    )


def one_minus(alpha: float) -> float:
    """1 - alpha rounded to fp32 exactly as the reference's ``(1.0 - alpha) * xf`` sees it."""
    return struct.unpack("f", struct.pack("f", 1.0 - alpha))[0]


def anchor_aggregate_triton(x, keep, alpha: float = 0.5, valid=None, *, max_gram_elems: Optional[int] = None,
                            input_precision: str = "ieee"):
    """(x_out (F, N, D) x.dtype, assign (F, N) int64); same contract as ``anchor_aggregate_torch``."""
    x, keep, alpha, valid = check_aggregate_args(x, keep, alpha, valid)
    check_triton_device(x, _anchor_aggregate_kernel)
    input_precision = check_input_precision(input_precision)
    F, N, D = x.shape
    x = x.contiguous()
    keep_u8 = keep.contiguous().view(torch.uint8)
    assign = torch.full((F, N), -1, dtype=torch.int64, device=x.device)
    out = torch.empty_like(x)
    geo = Geometry(x, valid, input_precision)
    for f0, f1, g in geo.chunks(max_gram_elems):
        launch_assign(g, geo, keep_u8, assign, f0, f1 - f0)
        launch_aggregate(x, out, keep_u8, assign, geo, f0, f1 - f0, alpha)
    return out, assign
