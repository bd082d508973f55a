"""Triton anchor_aggregate (nearest-kept assignment + cluster-mean blend) vs the PyTorch reference."""
from __future__ import annotations

import pytest
import torch

import vista_kernels as vk
from tests.kernels.oracle import oracle_anchor_aggregate
from vista_kernels.ops import anchor_aggregate as aa
from vista_kernels.reference import anchor_aggregate_torch
from vista_kernels.utils import kernel_interpreted

_INTERP = kernel_interpreted(aa._anchor_aggregate_kernel)
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not _INTERP, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(_INTERP, reason="interpreter mode")]),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# x_out tolerance: fp32 math on both sides, then one rounding to x.dtype (may differ by an ulp)
OUT_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-3, atol=1e-3),
           torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def make(F, N, D, dtype, device, seed=0, keep_p=0.25):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(F, N, D, generator=g).to(dtype)
    valid = torch.rand(F, N, generator=g) < 0.8
    keep = (torch.rand(F, N, generator=g) < keep_p) & valid
    for f in range(F):  # every frame with valid tokens keeps at least one
        if valid[f].any() and not keep[f].any():
            keep[f, int(torch.nonzero(valid[f])[0, 0])] = True
    if F > 2:
        valid[-1] = False
        keep[-1] = False
    return x.to(device), keep.to(device), valid.to(device)


def check_against_reference(x, keep, valid, alpha, dtype):
    out, assign = vk.anchor_aggregate(x, keep, alpha=alpha, valid=valid, backend="triton")
    ref_out, ref_assign = anchor_aggregate_torch(x, keep, alpha, valid)
    assert out.dtype == x.dtype and assign.dtype == torch.int64
    assert torch.equal(assign, ref_assign)
    torch.testing.assert_close(out.float(), ref_out.float(), **OUT_TOL[dtype])
    # every row that is not an updated anchor is bit-identical to x
    upd = (ref_out != x).any(-1)
    assert bool((upd <= keep).all())
    assert torch.equal(out[~keep], x[~keep])
    return out, assign


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 17, 64])
def test_matches_reference(device, dtype, N):
    x, keep, valid = make(3, N, 40, dtype, device, seed=N)
    out, assign = check_against_reference(x, keep, valid, 0.5, dtype)
    assert bool((assign[~valid] == -1).all())
    idx = torch.arange(N, device=device).expand(3, N)
    assert torch.equal(assign[keep], idx[keep])


@pytest.mark.parametrize("device", DEVICES)
def test_vs_fp64_oracle_and_alpha(device):
    x, keep, valid = make(2, 17, 16, torch.float32, device, seed=77)
    for alpha in (0.0, 0.3, 1.0):
        out, assign = aa.anchor_aggregate_triton(x, keep, alpha, valid)
        o64, a64 = oracle_anchor_aggregate(x.cpu(), keep.cpu(), alpha, valid.cpu())
        assert torch.equal(assign.cpu(), a64)
        torch.testing.assert_close(out.cpu().double(), o64, rtol=1e-5, atol=1e-5)
    out0, _ = aa.anchor_aggregate_triton(x, keep, 0.0, valid)
    assert torch.equal(out0, x)  # a = 0: (1 - 0) v + 0 mean == v exactly


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_n196_chunking_and_determinism(device, dtype):
    x, keep, valid = make(3, 196, 32, dtype, device, seed=196, keep_p=0.15)
    out, assign = check_against_reference(x, keep, valid, 0.5, dtype)
    out2, assign2 = aa.anchor_aggregate_triton(x, keep, 0.5, valid, max_gram_elems=196 * 196)  # 3 chunks
    assert torch.equal(out, out2) and torch.equal(assign, assign2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_assignment_ties_go_to_lower_index(device, dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-2, 3, (1, 17, 8), generator=g).float()
    x[0, 9] = x[0, 3]  # two kept copies of the same token: everything nearest to them picks 3
    x[0, 14] = x[0, 3]
    x[0, 1] = 0.0
    x[0, 1, 0] = 1.0  # token 1 is equidistant from kept tokens 4 and 6:
    x[0, 4] = 0.0
    x[0, 4, 1] = 1.0  # |e0 - e1|^2 = 2
    x[0, 6] = 0.0
    x[0, 6, 2] = -1.0  # |e0 + e2|^2 = 2
    x = x.to(dtype).to(device)
    keep = torch.zeros(1, 17, dtype=torch.bool, device=device)
    keep[0, [3, 4, 6, 9, 16]] = True
    out, assign = check_against_reference(x, keep, None, 0.5, dtype)
    assert int(assign[0, 14]) == 3
    assert int(assign[0, 1]) == 4
    assert int((assign[0] == 9).sum()) == 1  # only itself: its copy 3 wins every tie


@pytest.mark.parametrize("device", DEVICES)
def test_frames_without_valid_tokens(device):
    x, keep, valid = make(3, 7, 16, torch.float16, device, seed=1)
    valid[1] = False
    keep[1] = False
    out, assign = check_against_reference(x, keep, valid, 0.5, torch.float16)
    assert bool((assign[1] == -1).all()) and torch.equal(out[1], x[1])
