"""scout_score_reduce: (B, heads, queries, patches) -> (B, patches), max heads, sum queries. The Triton
kernel vs the reference, the reference and the public op vs the fp64 oracle, malformed calls."""
from __future__ import annotations

import pytest
import torch

import vista_kernels as vk
from tests.kernels.cases import IMPLS, T, assert_close, impl_of, kernel_devices, malformed_calls
from tests.kernels.oracle import oracle_scout_score_reduce
from vista_kernels.ops import scout_score_reduce as sr
from vista_kernels.reference import scout_score_reduce_torch
from vista_kernels.utils import kernel_interpreted

_INTERP = kernel_interpreted(sr._scout_score_reduce_kernel)
DEVICES = kernel_devices(_INTERP)


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


# ================================= reference and public op (backend="torch") vs the fp64 oracle


@IMPLS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scout_score_reduce_vs_oracle(which, dtype):
    g = torch.Generator().manual_seed(4)
    attn = torch.softmax(torch.randn(2, 3, 5, 17, generator=g), dim=-1).to(dtype)
    out = impl_of(which, "scout_score_reduce")(attn)
    assert out.dtype == torch.float32 and tuple(out.shape) == (2, 17)
    assert_close(out, oracle_scout_score_reduce(attn), rtol=1e-5, atol=1e-6)



# ============================================================ malformed calls name the argument


# (id, call, exception type, regex the message must match: the argument's name)
BAD_CALLS = [
    ("scout-attn-rank3", lambda: vk.scout_score_reduce(torch.rand(2, 3, 4), **T), ValueError, r"^attn must have shape \(B, heads, queries, patches\)"),
    ("scout-attn-int", lambda: vk.scout_score_reduce(torch.ones(1, 2, 3, 4, dtype=torch.int64), **T), TypeError, r"^attn must be a floating tensor"),
    ("scout-attn-list", lambda: vk.scout_score_reduce([[[[0.5]]]], **T), TypeError, r"^attn must be a torch\.Tensor"),
    ("scout-attn-no-heads", lambda: vk.scout_score_reduce(torch.rand(1, 0, 3, 4), **T), ValueError, r"^attn needs at least one head"),
]


@malformed_calls(BAD_CALLS)
def test_malformed_call_names_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
