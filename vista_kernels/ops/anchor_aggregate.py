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

from typing import Optional

import torch
import triton
import triton.language as tl

from .._guard import check_aggregate_args
from ..utils import check_input_precision, check_triton_device, kernel_interpreted, next_pow2, upcast_flag
from .frame_geometry import Geometry


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
def _anchor_assign_kernel(g_ptr, sq_ptr, valid_ptr, keep_ptr, assign_ptr, f0, N,
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
        # the reference's argmin score |x_j|^2 - 2 G_ij: ||x_i - x_j||^2 without the row's own
        # |x_i|^2 (which cannot change the order), no clamp, no / D
        g = tl.load(g_f + rows[:, None] * N + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        sqj = tl.load(sq_f + cols, mask=cmask, other=0.0)
        d2 = g * -2.0 + sqj[None, :]
        d2 = tl.where(kj[None, :], d2, float("inf"))
        m, mi = tl.min(d2, axis=1, return_indices=True)
        upd = m < best
        best = tl.where(upd, m, best)
        bidx = tl.where(upd, c0 + mi, bidx)
    a = tl.where(ki, rows, bidx)
    a = tl.where(vi, a, -1)
    tl.store(assign_ptr + f * N + rows, a.to(tl.int64), mask=rmask)


@triton.jit
def _anchor_aggregate_kernel(x_ptr, out_ptr, valid_ptr, keep_ptr, assign_ptr, f0, N, D, stride_xf,
                             one_minus_a, alpha,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                             ROUND_BF16: tl.constexpr):
    f = tl.program_id(0).to(tl.int64) + f0
    rb = tl.program_id(1)
    db = tl.program_id(2)
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
    tl.store(out_ptr + f * stride_xf + rows[:, None] * D + dd[None, :], res, mask=m2)


def assign_config(N: int) -> dict:
    return {"BLOCK_M": max(16, min(32, next_pow2(N))), "BLOCK_N": max(16, min(64, next_pow2(N))), "num_warps": 8}


def aggregate_config(N: int, D: int, dtype: torch.dtype) -> dict:
    """Anchor rows per program: the whole frame when N <= 128 (x read once), else 128-row blocks."""
    block_m = max(16, min(128, next_pow2(N)))
    block_n = max(16, min(32, next_pow2(N)))
    block_d = max(16, min(64, next_pow2(D)))
    warps = 8 if block_m >= 128 else 4
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "num_warps": warps}


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
    ac = assign_config(N)
    gc = aggregate_config(N, D, x.dtype)
    upcast = upcast_flag(_anchor_aggregate_kernel, x.dtype)
    one_minus_a = float(torch.tensor(1.0 - alpha, dtype=torch.float32))
    for f0, f1, g in geo.chunks(max_gram_elems):
        nf = f1 - f0
        _anchor_assign_kernel[(nf, triton.cdiv(N, ac["BLOCK_M"]))](
            g, geo.sq, geo.valid_u8, keep_u8, assign, f0, N,
            BLOCK_M=ac["BLOCK_M"], BLOCK_N=ac["BLOCK_N"], num_warps=ac["num_warps"],
        )
        _anchor_aggregate_kernel[(nf, triton.cdiv(N, gc["BLOCK_M"]), triton.cdiv(D, gc["BLOCK_D"]))](
            x, out, geo.valid_u8, keep_u8, assign, f0, N, D, N * D, one_minus_a, alpha,
            BLOCK_M=gc["BLOCK_M"], BLOCK_N=gc["BLOCK_N"], BLOCK_D=gc["BLOCK_D"],
            UPCAST=upcast, INPUT_PRECISION=input_precision, num_warps=gc["num_warps"],
            ROUND_BF16=bool(kernel_interpreted(_anchor_aggregate_kernel) and x.dtype == torch.bfloat16),
        )
    return out, assign
