"""prune_frames, the whole per-frame pruning: backend="triton" gives the same kept tokens as
backend="torch"; the per-frame ops chained as prune_frames chains them (reference and public op)
vs the fp64 oracle on fp16/bf16 inputs, run to run, frame chunk by frame chunk and on hypothesis-drawn
inputs; the stable top-k of the foveal and anchor selection on scores built with ties."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vista
import vista_kernels as vk
import vista_kernels.reference as R
import vista_kernels.reference._common as common
from tests.kernels.cases import (IMPLS, assert_close, assert_gap, case_data, case_oracle, full_valid, impl_of,
                                 kernel_devices, make_keep, make_tokens, make_valid, make_x, topk_boundary_gap)
from tests.kernels.oracle import (
    oracle_anchor_aggregate,
    oracle_dpc_delta,
    oracle_dpc_gamma,
    oracle_frame_cosine,
    oracle_knn_density,
    oracle_pairwise_dist,
    oracle_topk,
)
from vista_kernels.ops import dpc_scores as ds
from vista_kernels.reference import dpc_gamma_torch, dpc_select_torch
from vista_kernels.reference._common import stable_topk_mask
from vista_kernels.utils import kernel_interpreted

_INTERP = kernel_interpreted(ds._dpc_scores_kernel)
DEVICES = kernel_devices(_INTERP)
TOKEN_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_scout", [False, True])
def test_prune_video_triton_equals_torch(device, dtype, with_scout):
    g = torch.Generator().manual_seed(17)
    T, N, D = 5, 49, 32
    base = torch.randn(3, 1, D, generator=g)  # three scenes -> segments
    x = (base[[0, 0, 1, 1, 2]] + 0.6 * torch.randn(T, N, D, generator=g)).to(dtype).to(device)
    q = torch.randn(D, generator=g).to(dtype).to(device)
    s = torch.rand(T, N, generator=g).to(device) if with_scout else None
    res = {}
    for backend in ("triton", "torch"):
        cfg = vista.VistaConfig(retention=0.15, backend=backend)
        res[backend] = vista.prune_video(x, q, scout_scores=s, config=cfg)
    a, b = res["triton"], res["torch"]
    assert torch.equal(a.budgets, b.budgets) and torch.equal(a.segment_id, b.segment_id)
    assert torch.equal(a.frame_index, b.frame_index)
    assert torch.equal(a.token_index, b.token_index)
    assert torch.equal(a.keep, b.keep) and torch.equal(a.assign, b.assign)
    tol = TOKEN_TOL[dtype]
    torch.testing.assert_close(a.tokens.float(), b.tokens.float(), rtol=tol, atol=tol)
    assert a.tokens.dtype == dtype and a.tokens.shape[0] == vista.retained_count(T, N, 0.15)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["gram", "no_gram", "chunked"])  # G from frame_stats / recomputed / per chunk
def test_prune_frames_equals_op_composition(device, dtype, mode):
    from vista_kernels.ops.frame_stats import frame_stats_triton
    from vista_kernels.ops.prune_frames import prune_frames_triton
    from vista_kernels.reference import anchor_aggregate_torch, frame_cosine_torch, frame_means_torch
    from vista_kernels.reference.prune_frames import prune_frames_torch

    x, valid = make_tokens(4, 17, 24, dtype, device, seed=21, valid_p=0.9)
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


@pytest.mark.gpu
def test_triton_ops_run_on_the_tensors_device_not_the_current_one():
    # Triton launches on the *current* CUDA device; the dispatcher and prune_video make x's device
    # current first. Needs two GPUs: data on cuda:1 while cuda:0 is current.
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    import vista

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 17, 32, generator=g)
    q = torch.randn(32, generator=g)
    ref = vista.prune_video(x, q, config=vista.VistaConfig(retention=0.3, backend="torch"))
    torch.cuda.set_device(0)
    out = vista.prune_video(x.to("cuda:1"), q.to("cuda:1"), config=vista.VistaConfig(retention=0.3, backend="triton"))
    assert out.tokens.device == torch.device("cuda:1")
    assert torch.equal(out.keep.cpu(), ref.keep)
    torch.testing.assert_close(out.tokens.cpu(), ref.tokens, rtol=1e-5, atol=1e-5)
    rho = vk.knn_density(x.to("cuda:1"), backend="triton")
    torch.testing.assert_close(rho.cpu(), vk.knn_density(x, backend="torch"), rtol=1e-5, atol=1e-6)


# ============================= the per-frame ops chained as prune_frames chains them, vs the fp64 oracle


# Round-to-nearest relative error bound 2^-p, doubled: fp16 p=11, bf16 p=8.
OUT_RTOL = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
LOWP = [torch.float16, torch.bfloat16]
OPS = ("frame_cosine", "knn_density", "dpc_delta", "dpc_gamma", "dpc_select", "anchor_aggregate", "scout_score_reduce")


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

    assert_close(impl_of(which, "frame_cosine")(x, valid=valid), oracle_frame_cosine(x, valid), **tol)
    rho = impl_of(which, "knn_density")(x, k=k, valid=valid)
    assert rho.dtype == torch.float32
    assert_close(rho, rho_o, **tol)
    delta = impl_of(which, "dpc_delta")(x, rho, valid=valid)
    assert_close(delta, oracle_dpc_delta(x, rho, valid), **tol)
    gamma = impl_of(which, "dpc_gamma")(x, valid=valid, k=k)
    assert_close(gamma, oracle_dpc_gamma(x, valid, k, order_rho=rho), **tol)

    k_keep = torch.div(v.sum(1), 3, rounding_mode="floor")
    sel = impl_of(which, "dpc_select")(x, k_keep, valid=valid, k=k)
    check_select(sel, gamma_o, k_keep, v, tie_tol=1e-4)

    keep = make_keep(valid, x)
    out, assign = impl_of(which, "anchor_aggregate")(x, keep, alpha=0.5, valid=valid)
    assert out.dtype == dtype
    check_assign(assign, dist, keep, v, tie_tol=1e-4)
    exp_out, _ = oracle_anchor_aggregate(x, keep, 0.5, valid, assign=assign)
    assert_close(out, exp_out, rtol=OUT_RTOL[dtype], atol=1e-5)


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


def _record_chunks(monkeypatch):
    """Wrap frame_chunks in the op modules; returns the list of chunk sizes each call yielded."""
    import vista_kernels.reference.anchor_aggregate as m_anchor
    import vista_kernels.reference.dpc_scores as m_dpc

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

    assert_close(impl_of(which, "frame_cosine")(x, valid=valid), oracle_frame_cosine(x, valid), rtol=1e-4, atol=1e-5)

    rho = impl_of(which, "knn_density")(x, k=k, valid=valid)
    assert_close(rho, oracle_knn_density(x, k, valid), rtol=1e-5, atol=e2 + 1e-6)
    assert bool((rho[~v] == 0).all())

    delta = impl_of(which, "dpc_delta")(x, rho, valid=valid)
    assert_close(delta, oracle_dpc_delta(x, rho, valid), rtol=1e-5, atol=e1)

    gamma = impl_of(which, "dpc_gamma")(x, valid=valid, k=k)
    gamma_o = oracle_dpc_gamma(x, valid, k, order_rho=rho)
    assert_close(gamma, gamma_o, rtol=1e-5, atol=e1)

    n_valid = v.sum(1)
    k_keep = torch.tensor([data.draw(st.integers(0, int(n))) for n in n_valid], dtype=torch.int64)
    sel = impl_of(which, "dpc_select")(x, k_keep, valid=valid, k=k)
    check_select(sel, gamma_o, k_keep, v, tie_tol=2 * e1)

    score = torch.rand(F, N, generator=g)
    keep = oracle_topk(score, torch.clamp(n_valid // 2, min=1) * v.any(1), v)
    out, assign = impl_of(which, "anchor_aggregate")(x, keep, alpha=alpha, valid=valid)
    check_assign(assign, oracle_pairwise_dist(x), keep, v, tie_tol=2 * e1)
    exp_out, _ = oracle_anchor_aggregate(x, keep, alpha, valid, assign=assign)
    assert_close(out, exp_out, rtol=OUT_RTOL[dtype], atol=1e-5)



# ====== stable top-k (foveal and anchor selection) on scores built with ties: lower index first


TOPK_CASES = [
    # scores, eligible (None = all), k, expected kept indices
    ([1.0, 3.0, 3.0, 2.0, 3.0, 3.0], None, 2, [1, 2]),
    ([1.0, 3.0, 3.0, 2.0, 3.0, 3.0], None, 3, [1, 2, 4]),
    ([1.0, 3.0, 3.0, 2.0, 3.0, 3.0], None, 5, [1, 2, 3, 4, 5]),
    ([1.0, 3.0, 3.0, 2.0, 3.0, 3.0], [1, 1, 0, 1, 1, 1], 2, [1, 4]),
    ([5.0] * 7, None, 4, [0, 1, 2, 3]),
    ([5.0] * 7, [0, 1, 0, 1, 1, 0, 1], 3, [1, 3, 4]),
    ([-0.0, 0.0, -0.0], None, 2, [0, 1]),  # signed zeros are equal
    ([0.0, -1.0, 0.0, -1.0], None, 3, [0, 2, 1]),
    ([2.0, 1.0], None, 0, []),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", TOPK_CASES, ids=[f"c{i}" for i in range(len(TOPK_CASES))])
def test_scout_style_stable_topk(case, dtype):
    scores, eligible, k, expected = case
    s = torch.tensor([scores, scores[::-1]], dtype=dtype)  # frame 1: the same scores reversed
    el = torch.ones(s.shape, dtype=torch.bool) if eligible is None else torch.tensor([eligible, eligible[::-1]], dtype=torch.bool)
    ks = torch.tensor([k, k])
    mask = stable_topk_mask(s, ks, el)
    n = len(scores)
    exp0 = torch.zeros(n, dtype=torch.bool)
    exp0[expected] = True
    assert torch.equal(mask[0], exp0)
    assert torch.equal(mask, oracle_topk(s, ks, el))
    assert mask[1].sum() == k and not bool((mask & ~el).any())


def test_scout_topk_with_repeated_scores_random():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (6, 33), generator=g).float()  # heavy ties
    el = torch.rand(6, 33, generator=g) < 0.7
    ks = torch.tensor([0, 1, 5, int(el[3].sum()), 7, 2])
    assert torch.equal(stable_topk_mask(s, ks, el), oracle_topk(s, ks, el))

