"""frame_stats: the Triton frame geometry (Gram matrix, squared norms, frame means) and frame_cosine vs
the reference, the reference and the public frame_cosine vs the fp64 oracle, and malformed calls.

Runs on CPU tensors under TRITON_INTERPRET=1 (set by conftest.py without CUDA) and on CUDA when
present (``gpu`` marker).
"""
from __future__ import annotations

import pytest
import torch

import vista_kernels as vk
import vista_kernels.reference as R
from tests.kernels.cases import (CASES_P, D, F, FP32_TOL, IMPLS, N, T, X, assert_close, case_data, impl_of,
                                 kernel_devices, make_x, malformed_calls)
from tests.kernels.oracle import oracle_frame_cosine, oracle_frame_means
from vista_kernels.ops import frame_stats as fs
from vista_kernels.reference import frame_cosine_torch, frame_means_torch
from vista_kernels.utils import kernel_interpreted

_INTERP = kernel_interpreted(fs._frame_geometry_kernel)
DEVICES = kernel_devices(_INTERP)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = 2e-5


def make(F, N, D, dtype, device, seed=0, valid_p=0.7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(F, N, D, generator=g).to(dtype).to(device)
    valid = (torch.rand(F, N, generator=g) < valid_p).to(device)
    return x, valid


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 17, 64])
def test_gram_norms_means_vs_fp64(device, dtype, N):
    x, valid = make(3, N, 40, dtype, device, seed=N)
    G, sq, means = fs.frame_geometry_triton(x, valid)
    xd = x.double().cpu()
    torch.testing.assert_close(G.cpu().double(), xd @ xd.transpose(1, 2), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sq.cpu().double(), xd.square().sum(-1), rtol=1e-5, atol=1e-4)
    assert torch.equal(G, G.transpose(1, 2)), "G must be exactly symmetric"
    torch.testing.assert_close(means.cpu().double(), oracle_frame_means(x.cpu(), valid.cpu()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(means, frame_means_torch(x, valid), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fs.frame_means_triton(x, valid), means, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 17, 64])
def test_frame_cosine_matches_reference(device, dtype, N):
    x, valid = make(4, N, 24, dtype, device, seed=100 + N)
    x[2] = x[1] * 0.5 + 0.1  # a near-repeat frame: cosine close to 1
    valid[3] = False  # a frame without valid tokens: zero mean -> cosine 0
    got = vk.frame_cosine(x, valid=valid, backend="triton")
    ref = frame_cosine_torch(x, valid)
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=TOL, atol=TOL)
    torch.testing.assert_close(got.cpu().double(), oracle_frame_cosine(x.cpu(), valid.cpu()), rtol=1e-5, atol=1e-5)
    assert float(got[2]) == 0.0
    # no mask = all valid
    torch.testing.assert_close(vk.frame_cosine(x, backend="triton"), frame_cosine_torch(x), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_frame_cosine_one_frame_and_n196(device):
    x, _ = make(1, 5, 8, torch.float32, device)
    assert vk.frame_cosine(x, backend="triton").shape == (0,)
    x, valid = make(3, 196, 32, torch.bfloat16, device, seed=7)
    torch.testing.assert_close(vk.frame_cosine(x, valid=valid, backend="triton"), frame_cosine_torch(x, valid),
                               rtol=TOL, atol=TOL)
    G, sq, _ = fs.frame_geometry_triton(x, valid)
    xd = x.double().cpu()
    torch.testing.assert_close(G.cpu().double(), xd @ xd.transpose(1, 2), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_geometry_chunking_is_identical(device, dtype):
    x, valid = make(5, 17, 24, dtype, device, seed=3)
    G1, sq1, m1 = fs.frame_geometry_triton(x, valid)
    # a bound of 2 frames' Gram matrices forces 3 chunks
    G2, sq2, m2 = fs.frame_geometry_triton(x, valid, max_gram_elems=2 * 17 * 17)
    assert fs.frames_per_chunk(5, 17, 2 * 17 * 17) == 2
    assert torch.equal(G1, G2) and torch.equal(sq1, sq2) and torch.equal(m1, m2)
    with pytest.raises(ValueError, match="max_gram_elems"):
        fs.frame_geometry_triton(x, valid, max_gram_elems=0)


@pytest.mark.parametrize("device", DEVICES)
def test_input_precision_option(device):
    x, _ = make(2, 7, 16, torch.float32, device)
    G, _, _ = fs.frame_geometry_triton(x, input_precision="ieee")
    xd = x.double().cpu()
    torch.testing.assert_close(G.cpu().double(), xd @ xd.transpose(1, 2), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="input_precision"):
        fs.frame_geometry_triton(x, input_precision="fp8")


def test_configs_and_chunking_helpers():
    c = fs.geometry_config(196, 3584, torch.bfloat16)
    assert c["BLOCK_N"] == 64 and c["num_warps"] == 8
    assert fs.geometry_config(7, 8, torch.float32)["BLOCK_D"] == 16  # >= 16 for tl.dot
    assert fs.frames_per_chunk(64, 196, None) == 64
    assert fs.frames_per_chunk(64, 4096, 4096 * 4096 * 3) == 3
    assert fs.frames_per_chunk(64, 4096, 10) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_frame_cosine_tiny_norms_clamped_per_norm(device):
    # |m0| = 1e-7, |m1| = 1e-6: each norm is above the 1e-12 clamp, their product is not
    u = torch.zeros(8)
    u[3] = 1.0
    x = torch.stack([1e-7 * u.expand(4, 8), 1e-6 * u.expand(4, 8), torch.zeros(4, 8)]).to(device)
    got = vk.frame_cosine(x, backend="triton")
    torch.testing.assert_close(got, frame_cosine_torch(x), rtol=1e-5, atol=1e-6)
    assert abs(float(got[0]) - 1.0) < 1e-5 and float(got[1]) == 0.0


# ================================= reference and public op (backend="torch") vs the fp64 oracle


@IMPLS
@CASES_P
def test_frame_cosine_vs_oracle(which, case):
    x, valid = case_data(case)
    out = impl_of(which, "frame_cosine")(x, valid=valid)
    assert out.dtype == torch.float32 and tuple(out.shape) == (x.shape[0] - 1,)
    assert_close(out, oracle_frame_cosine(x, valid), **FP32_TOL)


@IMPLS
def test_frame_cosine_empty_frame_gives_zero(which):
    x = make_x(4, 6, 8, seed=5)
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[2] = False
    out = impl_of(which, "frame_cosine")(x, valid=valid)
    assert out[1].item() == 0.0 and out[2].item() == 0.0
    assert out[0].item() != 0.0
    assert_close(out, oracle_frame_cosine(x, valid), **FP32_TOL)
    # Zero tokens (zero-norm means) -> 0 as well, not NaN.
    z = torch.zeros(3, 4, 2)
    assert torch.equal(impl_of(which, "frame_cosine")(z), torch.zeros(2))


def test_frame_cosine_tiny_norm_means():
    x = torch.zeros(2, 1, 2)
    x[0, 0, 0] = 1e-7
    x[1, 0, 0] = 2e-7
    out = R.frame_cosine_torch(x)
    assert out.item() in (0.0, 1.0) or abs(out.item() - 1.0) < 1e-5, out
    assert_close(out, oracle_frame_cosine(x), **FP32_TOL)


@IMPLS
def test_frame_cosine_single_frame_is_empty(which):
    out = impl_of(which, "frame_cosine")(make_x(1, 5, 4))
    assert out.shape == (0,) and out.dtype == torch.float32


@IMPLS
def test_frame_cosine_known_values(which):
    # Frame means e1, e1, e2, -e2 -> cosines 1, 0, -1.
    x = torch.zeros(4, 2, 3)
    x[0, :, 0] = 1.0
    x[1, 0, 0] = 2.0
    x[2, :, 1] = 1.0
    x[3, :, 1] = -3.0
    out = impl_of(which, "frame_cosine")(x)
    assert_close(out, torch.tensor([1.0, 0.0, -1.0]), rtol=0, atol=1e-6)



# ============================================================ malformed calls name the argument


# (id, call, exception type, regex the message must match: the argument's name)
BAD_CALLS = [
    ("cos-x-rank2", lambda: vk.frame_cosine(torch.randn(N, D), **T), ValueError, r"^x must have shape \(F, N, D\)"),
    ("cos-x-rank4", lambda: vk.frame_cosine(torch.randn(1, F, N, D), **T), ValueError, r"^x must have shape"),
    ("cos-x-int", lambda: vk.frame_cosine(torch.ones(F, N, D, dtype=torch.int32), **T), TypeError, r"^x must be float32"),
    ("cos-x-float64", lambda: vk.frame_cosine(X(dtype=torch.float64), **T), TypeError, r"^x must be float32"),
    ("cos-x-list", lambda: vk.frame_cosine([[[1.0]]], **T), TypeError, r"^x must be a torch\.Tensor"),
    # ---- valid
    ("cos-valid-uint8", lambda: vk.frame_cosine(X(), valid=torch.ones(F, N, dtype=torch.uint8), **T), TypeError, r"^valid must have dtype"),
]


@malformed_calls(BAD_CALLS)
def test_malformed_call_names_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
