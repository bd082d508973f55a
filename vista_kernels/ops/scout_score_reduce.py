"""Scout patch scores: (B, heads, queries, patches) cross-attention -> (B, patches) fp32,
max over heads then sum over queries, in one read of the attention tensor."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import check_attn
from ..utils import check_triton_device, next_pow2


@triton.jit
def _scout_score_reduce_kernel(attn_ptr, out_ptr, H, Q, P, stride_b, stride_h, stride_q,
                               BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    pb = tl.program_id(1)
    ps = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    mp = ps < P
    hs = tl.arange(0, BLOCK_H)
    base = attn_ptr + b * stride_b
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for q in range(0, Q):
        m = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hh = h0 + hs
            v = tl.load(base + hh[:, None].to(tl.int64) * stride_h + q * stride_q + ps[None, :],
                        mask=(hh[:, None] < H) & mp[None, :], other=float("-inf"))
            m = tl.maximum(m, tl.max(v.to(tl.float32), axis=0))
        acc += m
    tl.store(out_ptr + b * P + ps, acc, mask=mp)


def scout_config(H: int, P: int) -> dict:
    return {"BLOCK_H": max(2, min(16, next_pow2(H))), "BLOCK_P": max(16, min(256, next_pow2(P))), "num_warps": 4}


def scout_score_reduce_triton(attn: torch.Tensor) -> torch.Tensor:
    """(B, P) fp32 s[b, p] = sum_q max_h attn[b, h, q, p]; same contract as the reference."""
    attn = check_attn(attn)
    check_triton_device(attn, _scout_score_reduce_kernel, "attn")
    B, H, Q, P = attn.shape
    out = torch.empty((B, P), dtype=torch.float32, device=attn.device)
    if B == 0:
        return out
    a = attn.contiguous()
    c = scout_config(H, P)
    _scout_score_reduce_kernel[(B, triton.cdiv(P, c["BLOCK_P"]))](
        a, out, H, Q, P, a.stride(0), a.stride(1), a.stride(2),
        BLOCK_H=c["BLOCK_H"], BLOCK_P=c["BLOCK_P"], num_warps=c["num_warps"],
    )
    return out
