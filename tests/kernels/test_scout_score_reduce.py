"""Triton scout_score_reduce: (B, heads, queries, patches) -> (B, patches), max heads, sum queries."""
from __future__ import annotations

import pytest
import torch

import vista_kernels as vk
from tests.kernels.oracle import oracle_scout_score_reduce
from vista_kernels.ops import scout_score_reduce as sr
from vista_kernels.reference import scout_score_reduce_torch
from vista_kernels.utils import kernel_interpreted

_INTERP = kernel_interpreted(sr._scout_score_reduce_kernel)
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not _INTERP, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(_INTERP, reason="interpreter mode")]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 12, 32, 257), (3, 1, 1, 1), (1, 20, 5, 17)])
def test_matches_reference(device, dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    attn = torch.rand(*shape, generator=g).softmax(-1).to(dtype).to(device)
    got = vk.scout_score_reduce(attn, backend="triton")
    assert got.shape == (shape[0], shape[3]) and got.dtype == torch.float32
    torch.testing.assert_close(got, scout_score_reduce_torch(attn), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.cpu().double(), oracle_scout_score_reduce(attn.cpu()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_negative(device):
    attn = torch.randn(2, 4, 6, 33, device=device).transpose(1, 2)  # (2, 6, 4, 33) strided view
    torch.testing.assert_close(sr.scout_score_reduce_triton(attn), scout_score_reduce_torch(attn),
                               rtol=1e-5, atol=1e-5)
    attn = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
    torch.testing.assert_close(sr.scout_score_reduce_triton(attn), scout_score_reduce_torch(attn),
                               rtol=1e-5, atol=1e-5)
