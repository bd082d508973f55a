"""Triton DPC-KNN scores (knn_density, dpc_delta, dpc_gamma, dpc_select) vs the PyTorch reference.

Tie-free random inputs must give identical selections; inputs built with exact ties (integer
coordinates, duplicated tokens) check the lower-index tie rules. CPU under TRITON_INTERPRET=1, CUDA
when present (``gpu`` marker).
"""
from __future__ import annotations

import pytest
import torch

import vista_kernels as vk
from tests.kernels.oracle import oracle_dpc_delta, oracle_knn_density
from tests.kernels.ulp import assert_ulp_close
from vista_kernels.ops import dpc_scores as ds
from vista_kernels.reference import dpc_delta_torch, dpc_gamma_torch, dpc_select_torch, knn_density_torch
from vista_kernels.utils import kernel_interpreted

_INTERP = kernel_interpreted(ds._dpc_scores_kernel)
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not _INTERP, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(_INTERP, reason="interpreter mode")]),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = dict(rtol=1e-5, atol=1e-6)


def make(F, N, D, dtype, device, seed=0, valid_p=0.75):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(F, N, D, generator=g).to(dtype)
    valid = torch.rand(F, N, generator=g) < valid_p
    if F > 1:
        valid[-1] = False  # a frame without candidates
        valid[-1, 0] = F > 2  # ... or with a single one
    return x.to(device), valid.to(device)


def assert_gap(score, k_keep, valid, rel=1e-4):
    """Precondition of the exact-index tests: no near-tie at any frame's top-k boundary."""
    for f in range(score.shape[0]):
        s = score[f][valid[f]].double().sort(descending=True).values
        k = int(k_keep[f])
        if 0 < k < s.numel():
            assert (s[k - 1] - s[k]) > rel * s[k - 1].abs(), f"seed gives a near-tie in frame {f}; pick another"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 17, 64])
def test_scores_match_reference(device, dtype, N):
    x, valid = make(3, N, 24, dtype, device, seed=N)
    rho, delta, gamma = ds.dpc_scores_triton(x, valid, k=7)
    r0 = knn_density_torch(x, 7, valid)
    torch.testing.assert_close(rho, r0, **TOL)
    torch.testing.assert_close(delta, dpc_delta_torch(x, r0, valid), **TOL)
    torch.testing.assert_close(gamma, dpc_gamma_torch(x, valid, 7), **TOL)
    # public ops through the dispatcher
    torch.testing.assert_close(vk.knn_density(x, 7, valid=valid, backend="triton"), r0, **TOL)
    torch.testing.assert_close(vk.dpc_delta(x, r0, valid=valid, backend="triton"), dpc_delta_torch(x, r0, valid), **TOL)
    torch.testing.assert_close(vk.dpc_gamma(x, valid=valid, backend="triton"), gamma, rtol=0, atol=0)
    assert bool((rho[~valid] == 0).all() and (delta[~valid] == 0).all() and (gamma[~valid] == 0).all())


@pytest.mark.parametrize("device", DEVICES)
def test_scores_vs_fp64_oracle(device):
    x, valid = make(2, 17, 16, torch.float32, device, seed=5)
    rho = vk.knn_density(x, 5, valid=valid, backend="triton")
    torch.testing.assert_close(rho.cpu().double(), oracle_knn_density(x.cpu(), 5, valid.cpu()), rtol=1e-5, atol=1e-6)
    delta = vk.dpc_delta(x, rho, valid=valid, backend="triton")
    torch.testing.assert_close(delta.cpu().double(), oracle_dpc_delta(x.cpu(), rho.cpu(), valid.cpu()),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 3, 16, 32, 40])
def test_knn_k_values(device, k):
    # k = 40 > 32: rho from the reference formula on the kernel's Gram matrix (documented fallback)
    x, valid = make(2, 64 if k >= 32 else 17, 16, torch.float32, device, seed=k, valid_p=0.9)
    torch.testing.assert_close(ds.knn_density_triton(x, k, valid), knn_density_torch(x, k, valid), **TOL)
    torch.testing.assert_close(ds.dpc_gamma_triton(x, valid, k), dpc_gamma_torch(x, valid, k), **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N", [7, 64])
def test_fused_row_grid_and_chunking_identical(device, N):
    x, valid = make(4, N, 16, torch.bfloat16, device, seed=11)
    a = ds.dpc_scores_triton(x, valid, 7, fused=True)
    b = ds.dpc_scores_triton(x, valid, 7, fused=False)
    c = ds.dpc_scores_triton(x, valid, 7, max_gram_elems=N * N)  # 4 chunks of one frame
    for u, v, w in zip(a, b, c):
        assert torch.equal(u, v) and torch.equal(u, w)
    assert torch.equal(ds.knn_density_triton(x, 7, valid, max_gram_elems=3 * N * N), a[0])
    assert torch.equal(ds.dpc_delta_triton(x, a[0], valid, max_gram_elems=3 * N * N), a[1])
    # deterministic run to run
    assert torch.equal(ds.dpc_scores_triton(x, valid, 7)[2], a[2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [7, 17, 64])
def test_select_exact_on_tie_free_inputs(device, dtype, N):
    x, valid = make(3, N, 32, dtype, device, seed=40 + N, valid_p=0.8)
    n_valid = valid.sum(1)
    k_keep = torch.tensor([(int(n) * (f + 1)) // 4 for f, n in enumerate(n_valid)], device=device)  # per frame
    assert_gap(dpc_gamma_torch(x, valid, 7), k_keep, valid)
    got = vk.dpc_select(x, k_keep, valid=valid, backend="triton")
    assert torch.equal(got, dpc_select_torch(x, k_keep, valid))
    assert torch.equal(got.sum(1), k_keep)
    assert torch.equal(ds.dpc_select_triton(x, 0, valid), torch.zeros_like(valid))


@pytest.mark.parametrize("device", DEVICES)
def test_n196(device):
    x, valid = make(2, 196, 32, torch.bfloat16, device, seed=196, valid_p=0.85)
    r0 = knn_density_torch(x, 7, valid)
    rho, delta, gamma = ds.dpc_scores_triton(x, valid, 7)
    torch.testing.assert_close(rho, r0, **TOL)
    torch.testing.assert_close(gamma, dpc_gamma_torch(x, valid, 7), **TOL)
    k_keep = torch.tensor([30, 0], device=device)  # frame 1 has no candidates
    assert_gap(gamma, k_keep, valid)
    assert torch.equal(ds.dpc_select_triton(x, k_keep, valid), dpc_select_torch(x, k_keep, valid))


def _tied_tokens(device):
    """Integer coordinates (exact Gram math in fp32) with duplicated tokens: exact rho/gamma ties."""
    g = torch.Generator().manual_seed(123)
    x = torch.randint(-3, 4, (2, 17, 16), generator=g).float()
    x[:, 5] = x[:, 2]
    x[:, 9] = x[:, 2]
    x[:, 12] = x[:, 11]
    x[1, 14] = x[1, 3]
    return x.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_go_to_lower_index(device, dtype):
    x = _tied_tokens(device).to(dtype)
    valid = torch.ones(2, 17, dtype=torch.bool, device=device)
    valid[1, 0] = False
    rho, delta, gamma = ds.dpc_scores_triton(x, valid, k=3)
    # duplicates have identical densities; the later copies' nearest denser token is the first copy
    assert rho[0, 2] == rho[0, 5] == rho[0, 9] and rho[0, 11] == rho[0, 12]
    assert delta[0, 5] == 0 and delta[0, 9] == 0 and delta[0, 12] == 0 and delta[1, 14] == 0
    assert delta[0, 2] > 0 and delta[0, 11] > 0
    r0 = knn_density_torch(x, 3, valid)
    torch.testing.assert_close(rho, r0, rtol=1e-6, atol=0)  # exp may differ by an ulp
    # integer coordinates: d^2 is exact in both backends; delta = sqrt(d^2 / D) is rounded by each
    # backend's sqrt (torch's CPU sqrt is not correctly rounded on every SIMD path): 1 ulp, zeros exact
    assert_ulp_close(ds.dpc_delta_triton(x, r0, valid), dpc_delta_torch(x, r0, valid), msg="delta")
    for kk in (1, 4, 9, 15, 16):  # the kept sets are the contract: exact
        assert torch.equal(ds.dpc_select_triton(x, kk, valid, k=3), dpc_select_torch(x, kk, valid, k=3)), kk
    # equal rho given by the caller: j < i wins (the exact zeros of the later copies say which)
    rho_eq = torch.ones(2, 17, device=device)
    d = ds.dpc_delta_triton(x, rho_eq, valid)
    assert_ulp_close(d, dpc_delta_torch(x, rho_eq, valid), msg="delta, equal rho")
    assert d[0, 5] == 0 and d[0, 9] == 0 and d[0, 12] == 0 and d[0, 2] > 0 and d[0, 11] > 0


@pytest.mark.parametrize("device", DEVICES)
def test_lone_and_invalid_tokens(device):
    x, _ = make(3, 7, 8, torch.float32, device, seed=9)
    valid = torch.zeros(3, 7, dtype=torch.bool, device=device)
    valid[0, 3] = True  # lone candidate: rho = 1, delta = max distance to itself = 0
    valid[1, 1] = valid[1, 4] = True
    rho, delta, gamma = ds.dpc_scores_triton(x, valid, 7)
    assert rho[0, 3] == 1.0 and delta[0, 3] == 0.0
    assert bool((rho[2] == 0).all() and (delta[2] == 0).all())
    torch.testing.assert_close(rho, knn_density_torch(x, 7, valid), **TOL)
    torch.testing.assert_close(delta, dpc_delta_torch(x, rho, valid), **TOL)
    # N = 1: no neighbours at all
    x1, _ = make(2, 1, 8, torch.float32, device)
    assert torch.equal(ds.knn_density_triton(x1, 7), torch.ones(2, 1, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["gram", "no_gram", "chunked"])  # G from frame_stats / recomputed / per chunk
def test_prune_frames_equals_op_composition(device, dtype, mode):
    from vista_kernels.ops.frame_stats import frame_stats_triton
    from vista_kernels.ops.prune_frames import prune_frames_triton
    from vista_kernels.reference import anchor_aggregate_torch, frame_cosine_torch, frame_means_torch
    from vista_kernels.reference.prune_frames import prune_frames_torch

    x, valid = make(4, 17, 24, dtype, device, seed=21, valid_p=0.9)
    valid[-1, :3] = True
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(4, 17, generator=g).to(device)
    budgets = torch.clamp(valid.sum(1) // 2, min=1).to(device)
    k_foveal = budgets // 3
    means, cos, gram = frame_stats_triton(x, valid, keep_gram=mode == "gram")
    torch.testing.assert_close(cos, frame_cosine_torch(x, valid), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(means, frame_means_torch(x, valid), rtol=1e-5, atol=1e-6)
    assert gram.shape == ((4, 17, 17) if mode == "gram" else (0, 17, 17))
    M = int(budgets.sum())
    out = prune_frames_triton(x, budgets, k_foveal, scores, valid, num_kept=M, k=7, alpha=0.5,
                              gram=gram if mode == "gram" else None,
                              max_gram_elems=2 * 17 * 17 if mode == "chunked" else None)
    ref = prune_frames_torch(x, budgets, k_foveal, scores, valid, num_kept=M, k=7, alpha=0.5)
    # the same result spelled with the public per-step ops
    foveal = vk_stable_topk(scores, k_foveal, valid)
    cand = valid & ~foveal
    assert_gap(dpc_gamma_torch(x, cand, 7), budgets - k_foveal, cand)
    keep = foveal | dpc_select_torch(x, budgets - k_foveal, cand, 7)
    x_out, assign = anchor_aggregate_torch(x, keep, 0.5, valid)
    fi, ti = torch.nonzero(keep, as_tuple=True)
    for got in (out, ref):
        assert torch.equal(got.keep, keep) and torch.equal(got.foveal, foveal)
        assert torch.equal(got.assign, assign)
        assert torch.equal(got.frame_index, fi) and torch.equal(got.token_index, ti)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(got.tokens.float(), x_out[fi, ti].float(), rtol=tol, atol=tol)
        assert got.tokens.dtype == dtype and got.tokens.shape == (M, 24)


def vk_stable_topk(score, k, eligible):
    import vista_kernels as vk

    return vk.stable_topk_mask(score, k, eligible)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False])
def test_running_topk_across_column_tiles(device, fused):
    # 100 tokens = 2 column tiles of 64, ordered along a direction (reversed in frame 1) so that the
    # nearest neighbours of many rows sit in the other tile: the register top-k must merge tiles
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 100, 12, generator=g)
    order = (x[0] @ torch.randn(12, generator=g)).argsort()
    x = x[:, order]
    x[1] = x[0].flip(0)
    x = x.to(device)
    valid = torch.ones(2, 100, dtype=torch.bool, device=device)
    valid[0, 60:70] = False
    for k in (1, 7, 20):
        rho, delta, gamma = ds.dpc_scores_triton(x, valid, k, fused=fused)
        r0 = knn_density_torch(x, k, valid)
        torch.testing.assert_close(rho, r0, **TOL)
        torch.testing.assert_close(gamma, dpc_gamma_torch(x, valid, k), **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_symmetric_distances_decide_density_ties_by_index(device):
    # N = 2: the two densities are equal in exact arithmetic; the kernel's d2 = (sq_i + sq_j) - 2G
    # is exactly symmetric, so the tie must go to the lower index on every seed (as the reference).
    for seed in range(12):
        x = torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(seed)).to(device)
        keep = vk.dpc_select(x, 1, backend="triton")
        assert bool(keep[0, 0]) and not bool(keep[0, 1]), seed


@pytest.mark.parametrize("device", DEVICES)
def test_duplicate_token_has_zero_delta(device):
    # Squared norms come from G's diagonal, so a bit-identical duplicate is exactly 0 away.
    x = torch.randn(1, 17, 8, generator=torch.Generator().manual_seed(7))
    x[0, 9] = x[0, 3]
    x = x.to(device)
    rho = vk.knn_density(x, backend="triton")
    delta = vk.dpc_delta(x, rho, backend="triton")
    assert rho[0, 3] == rho[0, 9]
    assert float(delta[0, 9]) == 0.0
