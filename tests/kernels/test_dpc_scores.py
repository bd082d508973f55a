"""DPC-KNN scores (knn_density, dpc_delta, dpc_gamma, dpc_select): the Triton kernel vs the PyTorch
reference, the reference and the public ops vs the fp64 oracle (``oracle.py``), tie rules, and
malformed calls.

Tie-free random inputs must give identical selections; inputs built with exact ties (integer
coordinates, duplicated tokens) check the lower-index tie rules. CPU under TRITON_INTERPRET=1, CUDA
when present (``gpu`` marker).
"""
from __future__ import annotations

import math

import pytest
import torch

import vista_kernels as vk
import vista_kernels.reference as R
from tests.kernels.cases import (BOOL, CASES, CASES_P, CASE_IDS, D, F, FP32_TOL, IMPLS, N, RHO_GAP, T, TIE_GAP, VALID,
                                 X, assert_close, assert_gap, assert_near, case_data, case_oracle, full_valid, impl_of,
                                 kernel_devices, make_tokens, make_x, malformed_calls, topk_boundary_gap, with_value)
from tests.kernels.oracle import (
    oracle_dpc_delta,
    oracle_dpc_gamma,
    oracle_dpc_select,
    oracle_knn_density,
    oracle_pairwise_dist,
    oracle_topk,
)
from tests.kernels.ulp import assert_ulp_close
from vista_kernels.ops import dpc_scores as ds
from vista_kernels.reference import dpc_delta_torch, dpc_gamma_torch, dpc_select_torch, knn_density_torch
from vista_kernels.utils import kernel_interpreted

_INTERP = kernel_interpreted(ds._dpc_scores_kernel)
DEVICES = kernel_devices(_INTERP)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 7, 17, 64])
def test_scores_match_reference(device, dtype, N):
    x, valid = make_tokens(3, N, 24, dtype, device, seed=N)
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
    x, valid = make_tokens(2, 17, 16, torch.float32, device, seed=5)
    rho = vk.knn_density(x, 5, valid=valid, backend="triton")
    torch.testing.assert_close(rho.cpu().double(), oracle_knn_density(x.cpu(), 5, valid.cpu()), rtol=1e-5, atol=1e-6)
    delta = vk.dpc_delta(x, rho, valid=valid, backend="triton")
    torch.testing.assert_close(delta.cpu().double(), oracle_dpc_delta(x.cpu(), rho.cpu(), valid.cpu()),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 3, 16, 32, 40])
def test_knn_k_values(device, k):
    # k = 40 > 32: rho from the reference formula on the kernel's Gram matrix (documented fallback)
    x, valid = make_tokens(2, 64 if k >= 32 else 17, 16, torch.float32, device, seed=k, valid_p=0.9)
    torch.testing.assert_close(ds.knn_density_triton(x, k, valid), knn_density_torch(x, k, valid), **TOL)
    torch.testing.assert_close(ds.dpc_gamma_triton(x, valid, k), dpc_gamma_torch(x, valid, k), **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N", [7, 64])
def test_fused_row_grid_and_chunking_identical(device, N):
    x, valid = make_tokens(4, N, 16, torch.bfloat16, device, seed=11)
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
    x, valid = make_tokens(3, N, 32, dtype, device, seed=40 + N, valid_p=0.8)
    n_valid = valid.sum(1)
    k_keep = torch.tensor([(int(n) * (f + 1)) // 4 for f, n in enumerate(n_valid)], device=device)  # per frame
    assert_gap(dpc_gamma_torch(x, valid, 7), k_keep, valid)
    got = vk.dpc_select(x, k_keep, valid=valid, backend="triton")
    assert torch.equal(got, dpc_select_torch(x, k_keep, valid))
    assert torch.equal(got.sum(1), k_keep)
    assert torch.equal(ds.dpc_select_triton(x, 0, valid), torch.zeros_like(valid))


@pytest.mark.parametrize("device", DEVICES)
def test_n196(device):
    x, valid = make_tokens(2, 196, 32, torch.bfloat16, device, seed=196, valid_p=0.85)
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
    x, _ = make_tokens(3, 7, 8, torch.float32, device, seed=9)
    valid = torch.zeros(3, 7, dtype=torch.bool, device=device)
    valid[0, 3] = True  # lone candidate: rho = 1, delta = max distance to itself = 0
    valid[1, 1] = valid[1, 4] = True
    rho, delta, gamma = ds.dpc_scores_triton(x, valid, 7)
    assert rho[0, 3] == 1.0 and delta[0, 3] == 0.0
    assert bool((rho[2] == 0).all() and (delta[2] == 0).all())
    torch.testing.assert_close(rho, knn_density_torch(x, 7, valid), **TOL)
    torch.testing.assert_close(delta, dpc_delta_torch(x, rho, valid), **TOL)
    # N = 1: no neighbours at all
    x1, _ = make_tokens(2, 1, 8, torch.float32, device)
    assert torch.equal(ds.knn_density_triton(x1, 7), torch.ones(2, 1, device=device))


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


# ================================= reference and public op (backend="torch") vs the fp64 oracle


# N = 2 frames are tied by symmetry (rho_0 == rho_1 exactly in exact math), so they cannot be built
# tie-free; they are covered by the tie tests below.
TIEFREE = [(c, i) for c, i in zip(CASES, CASE_IDS) if c[1] != 2]
TIEFREE_P = pytest.mark.parametrize("case", [c for c, _ in TIEFREE], ids=[i for _, i in TIEFREE])


def k_keep_variants(valid, x):
    n = full_valid(valid, x).sum(1)
    F = n.shape[0]
    per_frame = torch.tensor(
        [[int(n[f]), 0, int(n[f]) // 2, max(0, int(n[f]) - 1)][f % 4] for f in range(F)], dtype=torch.int64
    )
    return {"int-min": int(n.min()), "int-0": 0, "tensor": per_frame, "tensor-int32": per_frame.to(torch.int32),
            "all": n.clone()}


def sorted_gaps(vals):
    s = sorted(vals)
    return [b - a for a, b in zip(s, s[1:])]


def assert_rho_tie_free(rho, valid, gap=RHO_GAP):
    for f in range(rho.shape[0]):
        vals = rho[f][valid[f]].tolist()
        assert all(d > gap for d in sorted_gaps(vals)), f"test data: near-tie densities in frame {f}"


@IMPLS
@CASES_P
def test_knn_density_vs_oracle(which, case):
    x, valid = case_data(case)
    k = case[4]
    rho = impl_of(which, "knn_density")(x, k=k, valid=valid)
    assert rho.dtype == torch.float32 and tuple(rho.shape) == tuple(x.shape[:2])
    rho_o, _, _ = case_oracle(case)
    assert_close(rho, rho_o, **FP32_TOL)
    v = full_valid(valid, x)
    assert bool((rho[~v] == 0).all()), "invalid rows must be exactly 0"
    assert bool((rho[v] > 0).all() & (rho[v] <= 1).all())


@IMPLS
def test_knn_density_lone_token_is_one(which):
    x = make_x(3, 5, 4, seed=3)
    valid = torch.zeros(3, 5, dtype=torch.bool)
    valid[0, 3] = True  # one valid token
    valid[1] = True
    out = impl_of(which, "knn_density")(x, k=7, valid=valid)
    assert out[0, 3].item() == 1.0
    assert bool((out[0, [0, 1, 2, 4]] == 0).all()) and bool((out[2] == 0).all())
    assert_close(out, oracle_knn_density(x, 7, valid), **FP32_TOL)


@IMPLS
@pytest.mark.parametrize("k", [1, 2, 4, 7, 100])
def test_knn_density_k_values(which, k):
    case = (2, 17, 16, "mixed", k)
    x, valid = case_data(case)
    out = impl_of(which, "knn_density")(x, k=k, valid=valid)
    assert_close(out, oracle_knn_density(x, k, valid), **FP32_TOL)


@IMPLS
@CASES_P
def test_dpc_delta_vs_oracle(which, case):
    x, valid = case_data(case)
    rho = R.knn_density_torch(x, k=case[4], valid=valid)  # the same fp32 rho for both sides
    delta = impl_of(which, "dpc_delta")(x, rho, valid=valid)
    assert delta.dtype == torch.float32 and tuple(delta.shape) == tuple(x.shape[:2])
    assert_close(delta, oracle_dpc_delta(x, rho, valid), **FP32_TOL)
    v = full_valid(valid, x)
    assert bool((delta[~v] == 0).all())


@IMPLS
@pytest.mark.parametrize("rho_kind", ["uniform", "float16-rho", "ones", "invalid-garbage"])
def test_dpc_delta_arbitrary_rho(which, rho_kind):
    x, valid = case_data((4, 17, 16, "mixed", 7))
    g = torch.Generator().manual_seed(11)
    rho = torch.rand(x.shape[:2], generator=g)
    if rho_kind == "float16-rho":
        rho = rho.half()
    elif rho_kind == "ones":
        rho = torch.ones(x.shape[:2])  # all tied: index order decides, token 0 of a frame is the peak
    elif rho_kind == "invalid-garbage":
        rho = rho.masked_fill(~valid, 5.0)  # huge rho on invalid tokens must not make them "denser"
    delta = impl_of(which, "dpc_delta")(x, rho, valid=valid)
    assert_close(delta, oracle_dpc_delta(x, rho.float(), valid), **FP32_TOL)


@IMPLS
@TIEFREE_P
def test_dpc_gamma_vs_oracle(which, case):
    x, valid = case_data(case)
    v = full_valid(valid, x)
    rho_o, gamma_o, _ = case_oracle(case)
    assert_rho_tie_free(rho_o, v)
    gamma = impl_of(which, "dpc_gamma")(x, valid=valid, k=case[4])
    assert gamma.dtype == torch.float32
    assert_close(gamma, gamma_o, **FP32_TOL)
    assert bool((gamma[~v] == 0).all())


@IMPLS
@TIEFREE_P
@pytest.mark.parametrize("kk_name", ["int-min", "int-0", "tensor", "tensor-int32", "all"])
def test_dpc_select_vs_oracle_exact(which, case, kk_name):
    x, valid = case_data(case)
    v = full_valid(valid, x)
    k_keep = k_keep_variants(valid, x)[kk_name]
    rho_o, gamma_o, _ = case_oracle(case)
    assert_rho_tie_free(rho_o, v)
    assert topk_boundary_gap(gamma_o, k_keep, v) > TIE_GAP, "test data: near-tie gamma at the top-k boundary"
    sel = impl_of(which, "dpc_select")(x, k_keep, valid=valid, k=case[4])
    assert sel.dtype == torch.bool and tuple(sel.shape) == tuple(x.shape[:2])
    assert torch.equal(sel, oracle_topk(gamma_o, k_keep, v))
    if x.shape[1] <= 17:  # the full oracle pipeline too (same gamma; N = 196 is covered above)
        assert torch.equal(sel, oracle_dpc_select(x, k_keep, valid, case[4]))


@IMPLS
def test_dpc_gamma_two_tokens(which):
    # N = 2: both tokens have rho = exp(-d^2) and delta = d whichever is the peak.
    x, _ = case_data((3, 2, 4, "all", 7))
    gamma = impl_of(which, "dpc_gamma")(x, k=7)
    d = oracle_pairwise_dist(x)[:, 0, 1]
    expected = (torch.exp(-d * d) * d)[:, None].expand(3, 2)
    assert_close(gamma, expected, **FP32_TOL)
    assert_close(gamma, oracle_dpc_gamma(x, None, 7), **FP32_TOL)


@IMPLS
def test_dpc_select_zero_dim_k_keep(which):
    x, valid = case_data((2, 8, 8, "all", 3))
    sel = impl_of(which, "dpc_select")(x, torch.tensor(3), valid=valid, k=3)
    assert sel.sum(1).tolist() == [3, 3]
    assert torch.equal(sel, oracle_dpc_select(x, 3, valid, 3))



# ================= inputs built with exact ties: the lower index wins (reference and public op)


E25 = math.exp(-0.25)
E625 = math.exp(-0.625)


def on_line(points, D=4):
    """(1, len(points), D) tokens p * e1."""
    x = torch.zeros(1, len(points), D)
    x[0, :, 0] = torch.tensor(points, dtype=torch.float32)
    return x


# Points on a line, k = 2: the three middle points all have mean kNN d^2 = 1/4 (exactly tied rho),
# the two outer points 5/8.  (points, expected delta, expected top-k order)
LINE_CASES = {
    # p = 0 (index 0) is the peak (lowest index of the tied trio): delta = farthest = |0 - 2| / 2.
    # index 1 (p=1): denser = {0} -> 1/2; index 2 (p=-1): denser = {0, 1} -> 1/2.
    # gamma: idx0 e^-.25, idx1 = idx2 = .5 e^-.25 (tie -> 1 first), idx3 = idx4 = .5 e^-.625.
    "peak-in-middle": ([0.0, 1.0, -1.0, 2.0, -2.0], [1.0, 0.5, 0.5, 0.5, 0.5], [0, 1, 2, 3, 4]),
    # p = 1 at index 0 is now the peak: delta = |1 - (-2)| / 2 = 1.5; index 1 (p=0): denser {0} ->
    # 1/2; index 2 (p=-1): denser {0, 1} -> min(1, 1/2).
    "peak-off-centre": ([1.0, 0.0, -1.0, 2.0, -2.0], [1.5, 0.5, 0.5, 0.5, 0.5], [0, 1, 2, 3, 4]),
    # Outer points first: index 0 (p=2) and 1 (p=-2) are tied at e^-.625, the trio at indices 2..4
    # with index 2 (p=0) its peak: delta 1; 3 (p=1) and 4 (p=-1): 1/2; 0 and 1: 1/2.
    # gamma order: 2, then 3, 4 (tie), then 0, 1 (tie).
    "outer-first": ([2.0, -2.0, 0.0, 1.0, -1.0], [0.5, 0.5, 1.0, 0.5, 0.5], [2, 3, 4, 0, 1]),
}


LINE_RHO = {
    "peak-in-middle": [E25, E25, E25, E625, E625],
    "peak-off-centre": [E25, E25, E25, E625, E625],
    "outer-first": [E625, E625, E25, E25, E25],
}


@IMPLS
@pytest.mark.parametrize("name", list(LINE_CASES))
def test_tied_densities_on_a_line(which, name):
    points, delta_hand, order_hand = LINE_CASES[name]
    x = on_line(points)
    rho = impl_of(which, "knn_density")(x, k=2)
    assert_near(rho[0], LINE_RHO[name])
    # exact ties in the reference itself (the tie rule only applies to equal fp32 values)
    for group in ([i for i, r in enumerate(LINE_RHO[name]) if r == E25], [i for i, r in enumerate(LINE_RHO[name]) if r == E625]):
        assert len(set(rho[0, group].tolist())) == 1, f"rho of {group} should be exactly equal"
    assert_near(rho, oracle_knn_density(x, 2))

    delta = impl_of(which, "dpc_delta")(x, rho)
    assert_near(delta[0], delta_hand)
    assert_near(delta, oracle_dpc_delta(x, rho))

    gamma = impl_of(which, "dpc_gamma")(x, k=2)
    assert_near(gamma[0], [r * d for r, d in zip(LINE_RHO[name], delta_hand)])
    assert_near(gamma, oracle_dpc_gamma(x, None, 2))

    for kk in range(len(points) + 1):
        sel = impl_of(which, "dpc_select")(x, kk, k=2)
        expected = torch.zeros(1, len(points), dtype=torch.bool)
        expected[0, order_hand[:kk]] = True
        assert torch.equal(sel, expected), f"k_keep={kk}: {sel.int().tolist()}"
        assert torch.equal(sel, oracle_dpc_select(x, kk, None, 2))


def _integer_tokens_with_duplicates():
    """(1, 10, 4) small-integer tokens; 6 and 8 duplicate 2, 7 duplicates 0; the rest distinct."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(-2, 3, (1, 10, 4), generator=g).float()
    x[0, 6] = x[0, 2]
    x[0, 8] = x[0, 2]
    x[0, 7] = x[0, 0]
    distinct = [0, 1, 2, 3, 4, 5, 9]
    rows = {tuple(x[0, i].tolist()) for i in distinct}
    assert len(rows) == len(distinct), "test data: the non-duplicate tokens must be distinct"
    return x


@IMPLS
@pytest.mark.parametrize("k", [1, 3, 7])
def test_duplicated_tokens(which, k):
    x = _integer_tokens_with_duplicates()
    rho = impl_of(which, "knn_density")(x, k=k)
    assert rho[0, 2] == rho[0, 6] == rho[0, 8] and rho[0, 0] == rho[0, 7]
    assert_near(rho, oracle_knn_density(x, k))
    delta = impl_of(which, "dpc_delta")(x, rho)
    # a duplicate of a lower-index token with the same density has that token as a denser neighbour
    assert delta[0, 6] == 0 and delta[0, 8] == 0 and delta[0, 7] == 0
    assert bool((delta[0, [0, 1, 2, 3, 4, 5, 9]] > 0).all())
    assert_near(delta, oracle_dpc_delta(x, rho))
    gamma = impl_of(which, "dpc_gamma")(x, k=k)
    assert bool((gamma[0, [6, 7, 8]] == 0).all())
    assert_near(gamma, oracle_dpc_gamma(x, None, k))
    # keeping 7 of 10 drops exactly the three duplicates; keeping 8 adds the lowest-index one (6)
    sel = impl_of(which, "dpc_select")(x, 7, k=k)
    assert sel[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 9]
    sel = impl_of(which, "dpc_select")(x, 8, k=k)
    assert sel[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 9]
    assert torch.equal(sel, oracle_dpc_select(x, 8, None, k))


@IMPLS
@pytest.mark.parametrize("base", ["zeros", "integer", "random-float"])
def test_identical_tokens_select_first_valid(which, base):
    N = 9
    if base == "zeros":
        x = torch.zeros(2, N, 4)
    elif base == "integer":
        x = torch.tensor([1.0, -2.0, 0.0, 3.0]).expand(2, N, 4).contiguous()
    else:
        x = torch.randn(1, 1, 6, generator=torch.Generator().manual_seed(3)).expand(2, N, 6).contiguous()
    valid = torch.ones(2, N, dtype=torch.bool)
    valid[1, [0, 2, 5]] = False
    gamma = impl_of(which, "dpc_gamma")(x, valid=valid)
    v1 = gamma[1][valid[1]]
    assert len(set(gamma[0].tolist())) == 1 and len(set(v1.tolist())) == 1, "identical tokens, equal gamma"
    for kk in range(0, 7):
        sel = impl_of(which, "dpc_select")(x, kk, valid=valid)
        assert sel[0].nonzero().flatten().tolist() == list(range(kk))
        assert sel[1].nonzero().flatten().tolist() == [1, 3, 4, 6, 7, 8][:kk]


@IMPLS
def test_delta_with_user_tied_rho(which):
    # D = 1 points 0, 3, 1, 4 (d = |p_i - p_j|).
    x = torch.tensor([0.0, 3.0, 1.0, 4.0]).reshape(1, 4, 1)
    # all rho equal: token 0 is the peak (delta = farthest = 4); others: nearest lower index.
    rho = torch.ones(1, 4)
    delta = impl_of(which, "dpc_delta")(x, rho)
    assert delta.tolist() == [[4.0, 3.0, 1.0, 1.0]]
    assert_near(delta, oracle_dpc_delta(x, rho))
    # tokens 1, 2 tied on top (peak 1: delta = max(3, 2, 1) = 3; 2: denser {1} -> 2);
    # 0, 3 tied below (0: denser {1, 2} -> 1; 3: denser {0, 1, 2} -> min(4, 1, 3) = 1).
    rho = torch.tensor([[0.5, 0.7, 0.7, 0.5]])
    delta = impl_of(which, "dpc_delta")(x, rho)
    assert delta.tolist() == [[1.0, 3.0, 2.0, 1.0]]
    assert_near(delta, oracle_dpc_delta(x, rho))
    # an invalid token with the highest rho and lowest index is nobody's denser neighbour, nor part
    # of the peak's farthest distance: peak 1 -> max(d to 2, d to 3) = 2; 2 -> 2; 3 -> min(1, 3) = 1.
    valid = torch.tensor([[False, True, True, True]])
    rho = torch.tensor([[0.9, 0.5, 0.5, 0.5]])
    delta = impl_of(which, "dpc_delta")(x, rho, valid=valid)
    assert delta.tolist() == [[0.0, 2.0, 2.0, 1.0]]
    assert_near(delta, oracle_dpc_delta(x, rho, valid))


def test_symmetric_density_tie_goes_to_lower_index():
    # N = 2: gamma_0 == gamma_1 exactly in exact arithmetic, so k_keep = 1 must keep token 0.
    # (e.g. seed 28: rho = [0.07015976, 0.07015979] in the reference)
    bad = []
    for seed in range(60):
        x = torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(seed))
        if not bool(vk.dpc_select(x, 1, backend="torch")[0, 0]):
            bad.append(seed)
    assert not bad, f"seeds where token 1 was kept: {bad}"


def test_mutual_nearest_neighbours_k1_gamma_matches_oracle():
    bad = []
    for seed in range(100):
        x = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(seed))
        gamma = vk.dpc_gamma(x, k=1, backend="torch")
        if not torch.allclose(gamma.double(), oracle_dpc_gamma(x, None, 1), rtol=1e-5, atol=1e-5):
            bad.append(seed)
    assert not bad, f"seeds with a gamma mismatch: {bad}"


def test_duplicate_of_random_float_token_has_zero_delta():
    worst = 0.0
    for seed in range(40):
        x = torch.randn(1, 17, 8, generator=torch.Generator().manual_seed(seed))
        x[0, 9] = x[0, 3]
        rho = vk.knn_density(x, backend="torch")
        delta = vk.dpc_delta(x, rho, backend="torch")
        assert rho[0, 3] == rho[0, 9]
        worst = max(worst, float(delta[0, 9]))
    assert worst <= 1e-5, f"largest delta of a duplicate: {worst}"



# ============================================================ malformed calls name the argument


# (id, call, exception type, regex the message must match: the argument's name)
BAD_CALLS = [
    # ---- x (tokens)
    ("knn-x-nan", lambda: vk.knn_density(with_value(float("nan")), **T), ValueError, r"^x contains NaN"),
    ("knn-x-inf", lambda: vk.knn_density(with_value(float("-inf")), **T), ValueError, r"^x contains NaN or inf"),
    ("knn-x-no-tokens", lambda: vk.knn_density(torch.zeros(F, 0, D), **T), ValueError, r"^x must have N >= 1"),
    ("knn-x-no-dims", lambda: vk.knn_density(torch.zeros(F, N, 0), **T), ValueError, r"^x must have N >= 1 tokens and D >= 1"),
    ("select-x-bf16-inf", lambda: vk.dpc_select(with_value(float("inf")).bfloat16(), 1, **T), ValueError, r"^x contains"),
    # ---- k
    ("knn-k-0", lambda: vk.knn_density(X(), k=0, **T), ValueError, r"^k must be >= 1"),
    ("knn-k-negative", lambda: vk.knn_density(X(), k=-3, **T), ValueError, r"^k must be >= 1"),
    ("knn-k-float", lambda: vk.knn_density(X(), k=1.5, **T), TypeError, r"^k must be an int"),
    ("knn-k-bool", lambda: vk.knn_density(X(), k=True, **T), TypeError, r"^k must be an int"),
    ("gamma-k-0", lambda: vk.dpc_gamma(X(), k=0, **T), ValueError, r"^k must be >= 1"),
    ("select-k-0", lambda: vk.dpc_select(X(), 1, k=0, **T), ValueError, r"^k must be >= 1"),
    ("select-k-str", lambda: vk.dpc_select(X(), 1, k="7", **T), TypeError, r"^k must be an int"),
    # ---- valid
    ("knn-valid-shape", lambda: vk.knn_density(X(), valid=torch.ones(F, N + 1, **BOOL), **T), ValueError, r"^valid must have shape \(F, N\)"),
    ("knn-valid-rank3", lambda: vk.knn_density(X(), valid=torch.ones(F, N, 1, **BOOL), **T), ValueError, r"^valid must have shape"),
    ("knn-valid-float", lambda: vk.knn_density(X(), valid=torch.ones(F, N), **T), TypeError, r"^valid must have dtype torch\.bool"),
    ("delta-valid-list", lambda: vk.dpc_delta(X(), torch.ones(F, N), valid=[[True] * N] * F, **T), TypeError, r"^valid must be a torch\.Tensor"),
    ("knn-valid-device", lambda: vk.knn_density(X(), valid=torch.ones(F, N, device="meta", **BOOL), **T), ValueError, r"^valid is on meta but x is on cpu"),
    # ---- rho
    ("delta-rho-shape", lambda: vk.dpc_delta(X(), torch.ones(F, N - 1), **T), ValueError, r"^rho must have shape \(F, N\)"),
    ("delta-rho-rank3", lambda: vk.dpc_delta(X(), torch.ones(F, N, 1), **T), ValueError, r"^rho must have shape"),
    ("delta-rho-int", lambda: vk.dpc_delta(X(), torch.ones(F, N, dtype=torch.int64), **T), TypeError, r"^rho must be a floating tensor"),
    ("delta-rho-nan", lambda: vk.dpc_delta(X(), torch.full((F, N), float("nan")), **T), ValueError, r"^rho contains NaN"),
    ("delta-rho-none", lambda: vk.dpc_delta(X(), None, **T), TypeError, r"^rho must be a torch\.Tensor"),
    ("delta-rho-device", lambda: vk.dpc_delta(X(), torch.ones(F, N, device="meta"), **T), ValueError, r"^rho is on meta"),
    # ---- k_keep
    ("select-kkeep-too-large-int", lambda: vk.dpc_select(X(), N + 1, **T), ValueError, r"^k_keep\[0\] = 6 is larger than the 5 valid"),
    ("select-kkeep-larger-than-valid", lambda: vk.dpc_select(X(), 4, valid=VALID(), **T), ValueError, r"^k_keep\[1\] = 4 is larger than the 3 valid"),
    ("select-kkeep-tensor-too-large", lambda: vk.dpc_select(X(), torch.tensor([5, 4]), valid=VALID(), **T), ValueError, r"^k_keep\[1\]"),
    ("select-kkeep-negative", lambda: vk.dpc_select(X(), -1, **T), ValueError, r"^k_keep must be >= 0"),
    ("select-kkeep-negative-tensor", lambda: vk.dpc_select(X(), torch.tensor([1, -2]), **T), ValueError, r"^k_keep must be >= 0"),
    ("select-kkeep-shape", lambda: vk.dpc_select(X(), torch.tensor([1, 1, 1]), **T), ValueError, r"^k_keep must have shape \(F,\)"),
    ("select-kkeep-rank2", lambda: vk.dpc_select(X(), torch.ones(F, 1, dtype=torch.int64), **T), ValueError, r"^k_keep must have shape"),
    ("select-kkeep-float-tensor", lambda: vk.dpc_select(X(), torch.tensor([1.0, 2.0]), **T), TypeError, r"^k_keep must be an integer tensor"),
    ("select-kkeep-float", lambda: vk.dpc_select(X(), 1.5, **T), TypeError, r"^k_keep must be an int"),
    ("select-kkeep-bool", lambda: vk.dpc_select(X(), True, **T), TypeError, r"^k_keep must be an int"),
    ("select-kkeep-bool-tensor", lambda: vk.dpc_select(X(), torch.tensor([True, False]), **T), TypeError, r"^k_keep must be an integer tensor"),
    ("select-kkeep-list", lambda: vk.dpc_select(X(), [1, 1], **T), TypeError, r"^k_keep must be an int or an integer tensor"),
    ("select-kkeep-device", lambda: vk.dpc_select(X(), torch.ones(F, dtype=torch.int64, device="meta"), **T), ValueError, r"^k_keep is on meta"),
]


@malformed_calls(BAD_CALLS)
def test_malformed_call_names_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
