"""Every PyTorch reference op (and the public ``vk.<op>(..., backend="torch")``) against the brute-force
fp64 oracle in ``tests/kernels/oracle.py``.

Fixed-seed cases are built tie-free (random normal tokens, small D) and compared with exact kept
indices and exact assignments; the test data's tie-freeness is asserted as a precondition so a seed
that happens to produce a near-tie is reported as such and not as an op failure. fp16/bf16 inputs
are compared with the oracle run on the rounded values; the hypothesis property test uses
tolerances derived from the fp32 Gram-matrix error (d = sqrt(d2) amplifies it near d = 0).
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vista_kernels as vk
import vista_kernels.reference as R
import vista_kernels.reference._common as common
from tests.kernels.oracle import (
    oracle_anchor_aggregate,
    oracle_dpc_delta,
    oracle_dpc_gamma,
    oracle_dpc_select,
    oracle_frame_cosine,
    oracle_knn_density,
    oracle_pairwise_dist,
    oracle_scout_score_reduce,
    oracle_topk,
)

FP32_TOL = dict(rtol=1e-5, atol=1e-5)
# Round-to-nearest relative error bound 2^-p, doubled: fp16 p=11, bf16 p=8.
OUT_RTOL = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
LOWP = [torch.float16, torch.bfloat16]
# Fixed-seed data must separate every decision by more than this (fp32 errors here are ~1.5e-7).
TIE_GAP = 1e-5
RHO_GAP = 1e-6

OPS = ("frame_cosine", "knn_density", "dpc_delta", "dpc_gamma", "dpc_select", "anchor_aggregate", "scout_score_reduce")


def impl_of(which: str, op: str):
    if which == "reference":
        return getattr(R, f"{op}_torch")
    return functools.partial(getattr(vk, op), backend="torch")


IMPLS = pytest.mark.parametrize("which", ["reference", "public"])


# ------------------------------------------------------------------------------------------ data

# (F, N, D, valid pattern, k). Pattern "all" -> valid=None; "mixed" -> frame f gets, by f % 4:
# all valid, a random ~60% subset, exactly one valid token, no valid token.
CASES = [
    (3, 1, 4, "all", 7),
    (2, 1, 4, "mixed", 7),
    (3, 2, 4, "all", 7),
    (2, 8, 8, "all", 3),
    (4, 8, 4, "mixed", 50),  # k far larger than the candidates
    (4, 17, 16, "mixed", 7),
    (2, 17, 5, "all", 16),  # k = N - 1
    (2, 196, 16, "mixed", 7),
]
CASE_IDS = [f"F{c[0]}-N{c[1]}-D{c[2]}-{c[3]}-k{c[4]}" for c in CASES]
CASES_P = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
# N = 2 frames are tied by symmetry (rho_0 == rho_1 exactly in exact math), so they cannot be built
# tie-free; they are covered in test_reference_ties.py.
TIEFREE = [(c, i) for c, i in zip(CASES, CASE_IDS) if c[1] != 2]
TIEFREE_P = pytest.mark.parametrize("case", [c for c, _ in TIEFREE], ids=[i for _, i in TIEFREE])


def make_x(F, N, D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(F, N, D, generator=g).to(dtype)


def make_valid(F, N, pattern, seed=0):
    if pattern == "all":
        return None
    g = torch.Generator().manual_seed(2000 + seed)
    v = torch.zeros(F, N, dtype=torch.bool)
    for f in range(F):
        kind = f % 4
        if kind == 0:
            v[f] = True
        elif kind == 1:
            v[f] = torch.rand(N, generator=g) < 0.6
        elif kind == 2:
            v[f, int(torch.randint(N, (1,), generator=g))] = True
    return v


def full_valid(valid, x):
    return torch.ones(x.shape[:2], dtype=torch.bool) if valid is None else valid


@functools.lru_cache(maxsize=None)
def case_data(case, dtype=torch.float32):
    F, N, D, pattern, k = case
    return make_x(F, N, D, dtype=dtype), make_valid(F, N, pattern)


@functools.lru_cache(maxsize=None)
def case_oracle(case, dtype=torch.float32):
    """Oracle rho, gamma and distances of a case (cached: the N = 196 oracle takes ~1 s)."""
    x, valid = case_data(case, dtype)
    k = case[4]
    rho = oracle_knn_density(x, k, valid)
    gamma = rho * oracle_dpc_delta(x, rho, valid)
    return rho, gamma, oracle_pairwise_dist(x)


def k_keep_variants(valid, x):
    n = full_valid(valid, x).sum(1)
    F = n.shape[0]
    per_frame = torch.tensor(
        [[int(n[f]), 0, int(n[f]) // 2, max(0, int(n[f]) - 1)][f % 4] for f in range(F)], dtype=torch.int64
    )
    return {"int-min": int(n.min()), "int-0": 0, "tensor": per_frame, "tensor-int32": per_frame.to(torch.int32),
            "all": n.clone()}


def make_keep(valid, x, seed=0):
    """Random keep mask: about a third of each frame's valid tokens, at least one where any is valid."""
    v = full_valid(valid, x)
    g = torch.Generator().manual_seed(3000 + seed)
    score = torch.rand(v.shape, generator=g)
    cnt = torch.clamp(v.sum(1) // 3, min=1) * v.any(1)
    return oracle_topk(score, cnt, v)


# ------------------------------------------------------------------------------- tie-free guards


def sorted_gaps(vals):
    s = sorted(vals)
    return [b - a for a, b in zip(s, s[1:])]


def assert_rho_tie_free(rho, valid, gap=RHO_GAP):
    for f in range(rho.shape[0]):
        vals = rho[f][valid[f]].tolist()
        assert all(d > gap for d in sorted_gaps(vals)), f"test data: near-tie densities in frame {f}"


def topk_boundary_gap(score, k_keep, valid):
    """Smallest gap, over frames, between the k-th and (k+1)-th largest eligible score (inf if none)."""
    F = score.shape[0]
    ks = torch.as_tensor(k_keep).reshape(-1).expand(F).tolist() if not isinstance(k_keep, int) else [k_keep] * F
    gap = math.inf
    for f in range(F):
        vals = sorted(score[f][valid[f]].tolist(), reverse=True)
        k = int(ks[f])
        if 0 < k < len(vals):
            gap = min(gap, vals[k - 1] - vals[k])
    return gap


def assign_margin(dist, keep, valid):
    """Smallest gap, over dropped tokens, between their nearest and second-nearest kept token."""
    gap = math.inf
    F, N, _ = dist.shape
    for f in range(F):
        kept = keep[f].nonzero().flatten().tolist()
        if len(kept) < 2:
            continue
        for j in range(N):
            if valid[f, j] and not keep[f, j]:
                ds = sorted(dist[f, j, kept].tolist())
                gap = min(gap, ds[1] - ds[0])
    return gap


# --------------------------------------------------------------------------- tolerant comparisons


def check_select(sel, gamma_o, k_keep, valid, tie_tol):
    """Structural checks + exact equality with the oracle in frames whose top-k boundary is clear
    by more than ``tie_tol``; elsewhere the selection must be optimal up to ``tie_tol``."""
    F, N = gamma_o.shape
    assert sel.dtype == torch.bool and tuple(sel.shape) == (F, N)
    assert not bool((sel & ~valid).any()), "selected an invalid token"
    ks = [k_keep] * F if isinstance(k_keep, int) else [int(v) for v in torch.as_tensor(k_keep).reshape(-1).expand(F)]
    assert sel.sum(1).tolist() == ks
    expected = oracle_topk(gamma_o, ks, valid)
    for f in range(F):
        s, v, g = sel[f], valid[f], gamma_o[f]
        rest = v & ~s
        if s.any() and rest.any():
            assert float(g[s].min()) >= float(g[rest].max()) - tie_tol, f"frame {f}: a lower gamma was kept"
        if topk_boundary_gap(gamma_o[f : f + 1], ks[f], v[None]) > tie_tol:
            assert torch.equal(s, expected[f]), f"frame {f}: kept set differs from the oracle"


def check_assign(assign, dist, keep, valid, tie_tol):
    """Structural checks; every dropped token's anchor is a nearest kept token up to ``tie_tol``,
    and exactly the oracle's (lower index on ties) where the two nearest differ by more."""
    F, N = keep.shape
    assert assign.dtype == torch.int64 and tuple(assign.shape) == (F, N)
    idx = torch.arange(N).expand(F, N)
    assert torch.equal(assign[keep], idx[keep]), "kept tokens must point to themselves"
    assert bool((assign[~valid] == -1).all()), "invalid tokens must get -1"
    dl, kl, vl, al = dist.tolist(), keep.tolist(), valid.tolist(), assign.tolist()
    for f in range(F):
        kept = [a for a in range(N) if kl[f][a]]
        for j in range(N):
            if not vl[f][j] or kl[f][j]:
                continue
            a = al[f][j]
            assert 0 <= a < N and kl[f][a], f"token {j} of frame {f} assigned to a non-kept token {a}"
            ds = sorted((dl[f][j][b], b) for b in kept)  # (distance, index): the oracle's choice first
            assert dl[f][j][a] <= ds[0][0] + tie_tol
            if len(ds) == 1 or ds[1][0] - ds[0][0] > tie_tol:
                assert a == ds[0][1], f"token {j} of frame {f}: anchor {a}, oracle {ds[0][1]}"


def close(actual, expected, rtol, atol, msg=""):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=msg or None)


# =============================================================================== fixed-seed, fp32


@IMPLS
@CASES_P
def test_frame_cosine_vs_oracle(which, case):
    x, valid = case_data(case)
    out = impl_of(which, "frame_cosine")(x, valid=valid)
    assert out.dtype == torch.float32 and tuple(out.shape) == (x.shape[0] - 1,)
    close(out, oracle_frame_cosine(x, valid), **FP32_TOL)


@IMPLS
def test_frame_cosine_empty_frame_gives_zero(which):
    x = make_x(4, 6, 8, seed=5)
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[2] = False
    out = impl_of(which, "frame_cosine")(x, valid=valid)
    assert out[1].item() == 0.0 and out[2].item() == 0.0
    assert out[0].item() != 0.0
    close(out, oracle_frame_cosine(x, valid), **FP32_TOL)
    # Zero tokens (zero-norm means) -> 0 as well, not NaN.
    z = torch.zeros(3, 4, 2)
    assert torch.equal(impl_of(which, "frame_cosine")(z), torch.zeros(2))


def test_frame_cosine_tiny_norm_means():
    x = torch.zeros(2, 1, 2)
    x[0, 0, 0] = 1e-7
    x[1, 0, 0] = 2e-7
    out = R.frame_cosine_torch(x)
    assert out.item() in (0.0, 1.0) or abs(out.item() - 1.0) < 1e-5, out
    close(out, oracle_frame_cosine(x), **FP32_TOL)


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
    close(out, torch.tensor([1.0, 0.0, -1.0]), rtol=0, atol=1e-6)


@IMPLS
@CASES_P
def test_knn_density_vs_oracle(which, case):
    x, valid = case_data(case)
    k = case[4]
    rho = impl_of(which, "knn_density")(x, k=k, valid=valid)
    assert rho.dtype == torch.float32 and tuple(rho.shape) == tuple(x.shape[:2])
    rho_o, _, _ = case_oracle(case)
    close(rho, rho_o, **FP32_TOL)
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
    close(out, oracle_knn_density(x, 7, valid), **FP32_TOL)


@IMPLS
@pytest.mark.parametrize("k", [1, 2, 4, 7, 100])
def test_knn_density_k_values(which, k):
    case = (2, 17, 16, "mixed", k)
    x, valid = case_data(case)
    out = impl_of(which, "knn_density")(x, k=k, valid=valid)
    close(out, oracle_knn_density(x, k, valid), **FP32_TOL)


@IMPLS
@CASES_P
def test_dpc_delta_vs_oracle(which, case):
    x, valid = case_data(case)
    rho = R.knn_density_torch(x, k=case[4], valid=valid)  # the same fp32 rho for both sides
    delta = impl_of(which, "dpc_delta")(x, rho, valid=valid)
    assert delta.dtype == torch.float32 and tuple(delta.shape) == tuple(x.shape[:2])
    close(delta, oracle_dpc_delta(x, rho, valid), **FP32_TOL)
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
    close(delta, oracle_dpc_delta(x, rho.float(), valid), **FP32_TOL)


@IMPLS
@TIEFREE_P
def test_dpc_gamma_vs_oracle(which, case):
    x, valid = case_data(case)
    v = full_valid(valid, x)
    rho_o, gamma_o, _ = case_oracle(case)
    assert_rho_tie_free(rho_o, v)
    gamma = impl_of(which, "dpc_gamma")(x, valid=valid, k=case[4])
    assert gamma.dtype == torch.float32
    close(gamma, gamma_o, **FP32_TOL)
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
    close(gamma, expected, **FP32_TOL)
    close(gamma, oracle_dpc_gamma(x, None, 7), **FP32_TOL)


@IMPLS
def test_dpc_select_zero_dim_k_keep(which):
    x, valid = case_data((2, 8, 8, "all", 3))
    sel = impl_of(which, "dpc_select")(x, torch.tensor(3), valid=valid, k=3)
    assert sel.sum(1).tolist() == [3, 3]
    assert torch.equal(sel, oracle_dpc_select(x, 3, valid, 3))


@IMPLS
@CASES_P
@pytest.mark.parametrize("alpha", [0.5, 0.0, 1.0, 0.3])
def test_anchor_aggregate_vs_oracle_exact(which, case, alpha):
    x, valid = case_data(case)
    v = full_valid(valid, x)
    keep = make_keep(valid, x)
    _, _, dist = case_oracle(case)
    assert assign_margin(dist, keep, v) > TIE_GAP, "test data: near-tie assignment"
    out, assign = impl_of(which, "anchor_aggregate")(x, keep, alpha=alpha, valid=valid)
    assert out.dtype == x.dtype and tuple(out.shape) == tuple(x.shape)
    assert assign.dtype == torch.int64 and tuple(assign.shape) == tuple(x.shape[:2])
    exp_out, exp_assign = oracle_anchor_aggregate(x, keep, alpha, valid)
    assert torch.equal(assign, exp_assign)
    close(out, exp_out, **FP32_TOL)
    # Rows that are not kept anchors with a non-empty cluster are bit-identical to the input.
    has_members = torch.zeros_like(keep)
    for f in range(x.shape[0]):
        for j in range(x.shape[1]):
            if v[f, j] and not keep[f, j]:
                has_members[f, int(assign[f, j])] = True
    same = ~(keep & has_members)
    assert torch.equal(out[same], x[same])


@IMPLS
def test_anchor_aggregate_known_values(which):
    # Frame 0: anchors 0 (at 0) and 3 (at 10 e1); 1, 2 near anchor 0, 4 near anchor 3.
    x = torch.zeros(1, 5, 2)
    x[0, 1] = torch.tensor([1.0, 0.0])
    x[0, 2] = torch.tensor([0.0, 3.0])
    x[0, 3] = torch.tensor([10.0, 0.0])
    x[0, 4] = torch.tensor([12.0, 2.0])
    keep = torch.tensor([[True, False, False, True, False]])
    out, assign = impl_of(which, "anchor_aggregate")(x, keep, alpha=0.25)
    assert assign.tolist() == [[0, 0, 0, 3, 3]]
    close(out[0, 0], torch.tensor([0.125, 0.375]), rtol=0, atol=1e-7)  # 0.75*0 + 0.25*mean((1,0),(0,3))
    close(out[0, 3], torch.tensor([10.5, 0.5]), rtol=0, atol=1e-6)  # 0.75*(10,0) + 0.25*(12,2)
    assert torch.equal(out[0, [1, 2, 4]], x[0, [1, 2, 4]])


@IMPLS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_anchor_aggregate_keep_all_is_noop(which, dtype):
    x = make_x(3, 17, 8, seed=7, dtype=dtype)
    keep = torch.ones(3, 17, dtype=torch.bool)
    out, assign = impl_of(which, "anchor_aggregate")(x, keep, alpha=0.5)
    assert torch.equal(out, x) and out.dtype == dtype
    assert torch.equal(assign, torch.arange(17).expand(3, 17))
    # keep == valid (a partial mask): nothing dropped -> no-op as well; invalid -> -1.
    valid = make_valid(3, 17, "mixed")
    out, assign = impl_of(which, "anchor_aggregate")(x, valid.clone(), alpha=0.5, valid=valid)
    assert torch.equal(out, x)
    assert torch.equal(assign, torch.where(valid, torch.arange(17).expand(3, 17), torch.full((3, 17), -1)))


@IMPLS
def test_anchor_aggregate_does_not_modify_input(which):
    x, valid = case_data((4, 17, 16, "mixed", 7))
    before = x.clone()
    keep = make_keep(valid, x)
    impl_of(which, "anchor_aggregate")(x, keep, alpha=0.5, valid=valid)
    assert torch.equal(x, before)


@IMPLS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scout_score_reduce_vs_oracle(which, dtype):
    g = torch.Generator().manual_seed(4)
    attn = torch.softmax(torch.randn(2, 3, 5, 17, generator=g), dim=-1).to(dtype)
    out = impl_of(which, "scout_score_reduce")(attn)
    assert out.dtype == torch.float32 and tuple(out.shape) == (2, 17)
    close(out, oracle_scout_score_reduce(attn), rtol=1e-5, atol=1e-6)


# ============================================================================== fp16 / bf16 inputs

LOWP_CASES = [(2, 17, 8, "mixed", 7), (1, 196, 8, "all", 7)]


@IMPLS
@pytest.mark.parametrize("dtype", LOWP, ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", LOWP_CASES, ids=["N17", "N196"])
def test_low_precision_inputs_vs_oracle(which, dtype, case):
    x, valid = case_data(case, dtype)
    assert x.dtype == dtype
    v = full_valid(valid, x)
    k = case[4]
    rho_o, gamma_o, dist = case_oracle(case, dtype)  # oracle on the rounded values, upcast to fp64
    tol = dict(rtol=1e-3, atol=1e-4)

    close(impl_of(which, "frame_cosine")(x, valid=valid), oracle_frame_cosine(x, valid), **tol)
    rho = impl_of(which, "knn_density")(x, k=k, valid=valid)
    assert rho.dtype == torch.float32
    close(rho, rho_o, **tol)
    delta = impl_of(which, "dpc_delta")(x, rho, valid=valid)
    close(delta, oracle_dpc_delta(x, rho, valid), **tol)
    gamma = impl_of(which, "dpc_gamma")(x, valid=valid, k=k)
    close(gamma, oracle_dpc_gamma(x, valid, k, order_rho=rho), **tol)

    k_keep = torch.div(v.sum(1), 3, rounding_mode="floor")
    sel = impl_of(which, "dpc_select")(x, k_keep, valid=valid, k=k)
    check_select(sel, gamma_o, k_keep, v, tie_tol=1e-4)

    keep = make_keep(valid, x)
    out, assign = impl_of(which, "anchor_aggregate")(x, keep, alpha=0.5, valid=valid)
    assert out.dtype == dtype
    check_assign(assign, dist, keep, v, tie_tol=1e-4)
    exp_out, _ = oracle_anchor_aggregate(x, keep, 0.5, valid, assign=assign)
    close(out, exp_out, rtol=OUT_RTOL[dtype], atol=1e-5)


# ================================================================================ determinism


@IMPLS
def test_determinism_20_calls(which):
    x, valid = make_x(3, 64, 8, seed=9), make_valid(3, 64, "mixed", seed=9)
    v = full_valid(valid, x)
    keep = make_keep(valid, x)
    rho = R.knn_density_torch(x, 7, valid)
    k_keep = v.sum(1) // 4
    f = {op: impl_of(which, op) for op in OPS}
    calls = [
        lambda: (f["frame_cosine"](x, valid=valid),),
        lambda: (f["knn_density"](x, k=7, valid=valid),),
        lambda: (f["dpc_delta"](x, rho, valid=valid),),
        lambda: (f["dpc_gamma"](x, valid=valid, k=7),),
        lambda: (f["dpc_select"](x, k_keep, valid=valid, k=7),),
        lambda: f["anchor_aggregate"](x, keep, alpha=0.5, valid=valid),
    ]
    for call in calls:
        first = call()
        for _ in range(19):
            again = call()
            assert all(torch.equal(a, b) for a, b in zip(first, again))


# ============================================================================= frame chunking


def _record_chunks(monkeypatch):
    """Wrap frame_chunks in the op modules; returns the list of chunk sizes each call yielded."""
    import vista_kernels.reference.anchor_aggregate as m_anchor
    import vista_kernels.reference.dpc as m_dpc

    seen = []
    real = common.frame_chunks

    def spy(*args, **kwargs):
        sizes = []
        seen.append(sizes)
        for sl in real(*args, **kwargs):
            sizes.append(sl.stop - sl.start)
            yield sl

    monkeypatch.setattr(m_dpc, "frame_chunks", spy)
    monkeypatch.setattr(m_anchor, "frame_chunks", spy)
    return seen


def _all_outputs(x, valid, keep, rho, k_keep):
    return [
        R.knn_density_torch(x, 7, valid),
        R.dpc_delta_torch(x, rho, valid),
        R.dpc_gamma_torch(x, valid, 7),
        R.dpc_select_torch(x, k_keep, valid, 7),
        *R.anchor_aggregate_torch(x, keep, 0.5, valid),
    ]


def test_frame_chunks_reads_max_pair_elems_at_call_time(monkeypatch):
    assert [(s.start, s.stop) for s in common.frame_chunks(5, 17)] == [(0, 5)]
    monkeypatch.setattr(common, "MAX_PAIR_ELEMS", 2 * 17 * 17 + 5)
    assert [(s.start, s.stop) for s in common.frame_chunks(5, 17)] == [(0, 2), (2, 4), (4, 5)]
    monkeypatch.setattr(common, "MAX_PAIR_ELEMS", 1)  # never less than one frame per chunk
    assert len(list(common.frame_chunks(5, 17))) == 5
    assert [(s.start, s.stop) for s in common.frame_chunks(5, 17, max_pair_elems=3 * 17 * 17)] == [(0, 3), (3, 5)]


@pytest.mark.parametrize("frames_per_chunk", [1, 2, 3])
def test_frame_chunking_gives_identical_results(monkeypatch, frames_per_chunk):
    F, N = 5, 17
    x, valid = case_data((F, N, 16, "mixed", 7))
    keep = make_keep(valid, x)
    rho = R.knn_density_torch(x, 7, valid)
    k_keep = valid.sum(1) // 2
    whole = _all_outputs(x, valid, keep, rho, k_keep)
    seen = _record_chunks(monkeypatch)
    monkeypatch.setattr(common, "MAX_PAIR_ELEMS", frames_per_chunk * N * N)
    chunked = _all_outputs(x, valid, keep, rho, k_keep)
    sizes = [min(frames_per_chunk, F - s) for s in range(0, F, frames_per_chunk)]
    # knn, delta, gamma, gamma inside select, anchor: each one pass over the same chunks
    assert seen == [sizes] * 5, seen
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)


# ======================================================================== hypothesis property


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    F=st.integers(1, 3),
    N=st.integers(1, 20),
    D=st.integers(1, 12),
    k=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
    p_valid=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    alpha=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    public=st.booleans(),
    data=st.data(),
)
def test_property_all_ops_vs_oracle(F, N, D, k, seed, p_valid, alpha, dtype, public, data):
    which = "public" if public else "reference"
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(F, N, D, generator=g).to(dtype)
    v = torch.rand(F, N, generator=g) < p_valid
    valid = None if p_valid == 1.0 else v
    v = full_valid(valid, x)
    # d2 from the Gram formula carries ~eps32 * |x|^2 / D of absolute error; sqrt turns that into
    # ~sqrt(error) near d = 0, so delta/gamma/assignment tolerances are derived from it.
    max_sq = float(x.double().square().sum(-1).max()) if x.numel() else 0.0
    e2 = 64 * 2.0**-23 * (1.0 + max_sq) / D
    e1 = math.sqrt(e2) + 1e-6

    close(impl_of(which, "frame_cosine")(x, valid=valid), oracle_frame_cosine(x, valid), rtol=1e-4, atol=1e-5)

    rho = impl_of(which, "knn_density")(x, k=k, valid=valid)
    close(rho, oracle_knn_density(x, k, valid), rtol=1e-5, atol=e2 + 1e-6)
    assert bool((rho[~v] == 0).all())

    delta = impl_of(which, "dpc_delta")(x, rho, valid=valid)
    close(delta, oracle_dpc_delta(x, rho, valid), rtol=1e-5, atol=e1)

    gamma = impl_of(which, "dpc_gamma")(x, valid=valid, k=k)
    gamma_o = oracle_dpc_gamma(x, valid, k, order_rho=rho)
    close(gamma, gamma_o, rtol=1e-5, atol=e1)

    n_valid = v.sum(1)
    k_keep = torch.tensor([data.draw(st.integers(0, int(n))) for n in n_valid], dtype=torch.int64)
    sel = impl_of(which, "dpc_select")(x, k_keep, valid=valid, k=k)
    check_select(sel, gamma_o, k_keep, v, tie_tol=2 * e1)

    score = torch.rand(F, N, generator=g)
    keep = oracle_topk(score, torch.clamp(n_valid // 2, min=1) * v.any(1), v)
    out, assign = impl_of(which, "anchor_aggregate")(x, keep, alpha=alpha, valid=valid)
    check_assign(assign, oracle_pairwise_dist(x), keep, v, tie_tol=2 * e1)
    exp_out, _ = oracle_anchor_aggregate(x, keep, alpha, valid, assign=assign)
    close(out, exp_out, rtol=OUT_RTOL[dtype], atol=1e-5)
