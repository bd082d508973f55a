"""prune_video / prune_videos end to end (DESIGN.md steps 1-5) on tiny CPU shapes.

The kept set and the aggregated tokens are checked against the brute-force fp64 oracle
(tests/kernels/oracle.py) composed per the algorithm: foveal = top-K_f scout scores, anchors = top-K_r
DPC-KNN gamma among the remaining candidates, then soft aggregation into the nearest kept token.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.kernels.oracle import oracle_anchor_aggregate, oracle_anchor_assign, oracle_dpc_select, oracle_topk
from vista import PrunedVideo, VistaConfig, frame_budgets, prune_video, prune_videos, retained_count


def make_video(T=5, N=12, D=8, seed=0, dtype=torch.float32, drift=1.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(D, generator=g) + (torch.randn(T, D, generator=g) * drift).cumsum(0)
    x = means[:, None, :] + torch.randn(T, N, D, generator=g)
    q = torch.randn(D, generator=g)
    s = torch.rand(T, N, generator=g)
    return x.to(dtype), q.to(dtype), s


CFG = VistaConfig(retention=0.3, backend="torch")


def check_structure(pv: PrunedVideo, x: torch.Tensor, cfg: VistaConfig):
    T, N, D = x.shape
    M = retained_count(T, N, cfg.retention)
    assert isinstance(pv, PrunedVideo)
    assert pv.tokens.shape == (M, D) and pv.tokens.dtype == x.dtype
    assert pv.num_tokens == M
    assert pv.keep.shape == (T, N) and pv.keep.dtype == torch.bool
    assert pv.budgets.dtype == torch.int64 and pv.budgets.shape == (T,)
    assert torch.equal(pv.keep.sum(1), pv.budgets)
    assert int(pv.budgets.sum()) == M
    assert pv.frame_index.dtype == torch.int64 and pv.token_index.dtype == torch.int64
    assert pv.frame_index.shape == (M,) and pv.token_index.shape == (M,)
    # time order, then raster order within a frame (strictly increasing flat position)
    flat = pv.frame_index * N + pv.token_index
    assert bool((flat[1:] > flat[:-1]).all())
    assert bool(pv.keep[pv.frame_index, pv.token_index].all())
    assert int(pv.keep.sum()) == M  # so the indices cover every kept token exactly once
    assert not bool((pv.foveal & ~pv.keep).any())
    # assign: kept tokens point to themselves, dropped tokens to a kept token of their frame
    idx = torch.arange(N).expand(T, N)
    assert torch.equal(pv.assign[pv.keep], idx[pv.keep])
    assert bool(pv.keep.gather(1, pv.assign).all())


# --------------------------------------------------------------------------- structure / counts


@pytest.mark.parametrize(
    "T, N, D, retention, scout",
    [(5, 12, 8, 0.3, True), (5, 12, 8, 0.3, False), (3, 17, 5, 0.15, True), (1, 9, 4, 0.5, True),
     (4, 1, 3, 0.5, True), (6, 16, 4, 0.9, False), (2, 30, 6, 0.05, True), (3, 40, 6, 0.5, True)],
)
def test_structure_and_counts(T, N, D, retention, scout):
    x, q, s = make_video(T, N, D, seed=T * 100 + N)
    cfg = VistaConfig(retention=retention, backend="torch")
    pv = prune_video(x, q, s if scout else None, cfg)
    check_structure(pv, x, cfg)
    b, seg = frame_budgets(x, q, config=cfg)
    assert torch.equal(pv.budgets, b) and torch.equal(pv.segment_id, seg)
    kf = torch.floor(0.85 * pv.budgets.double()).long() if scout else torch.zeros(T, dtype=torch.long)
    assert torch.equal(pv.foveal.sum(1), kf)


@pytest.mark.parametrize("scout_ratio", [0.85, 0.5])
def test_foveal_count_is_floor_rho_budget_for_every_budget(scout_ratio):
    # one frame of 40 tokens: budgets 1..40 through retention k/40
    x, q, s = make_video(1, 40, 4, seed=23)
    for k in range(1, 41):
        cfg = VistaConfig(retention=k / 40, scout_ratio=scout_ratio, backend="torch")
        pv = prune_video(x, q, s, cfg)
        assert int(pv.budgets[0]) == k
        if k < 40:  # k = 40 keeps everything through the exact no-op path (foveal left empty)
            assert int(pv.foveal.sum()) == math.floor(scout_ratio * k + 1e-9), k
        assert int(pv.keep.sum()) == k
        assert int(prune_video(x, q, None, cfg).foveal.sum()) == 0


def test_foveal_are_top_scout_scores_with_lower_index_ties():
    x, q, _ = make_video(4, 20, 6, seed=7)
    g = torch.Generator().manual_seed(8)
    s = torch.randint(0, 4, (4, 20), generator=g).float()  # many ties
    cfg = VistaConfig(retention=0.5, backend="torch")
    pv = prune_video(x, q, s, cfg)
    kf = torch.floor(0.85 * pv.budgets.double()).long()
    expected = oracle_topk(s, kf)
    assert torch.equal(pv.foveal, expected)
    # direct check of the tie rule on one frame: every foveal score >= every non-foveal score,
    # and among equal scores at the boundary the lower indices are the foveal ones
    for t in range(4):
        fov, rest = s[t][pv.foveal[t]], s[t][~pv.foveal[t]]
        assert float(fov.min()) >= float(rest.max())
        edge = float(fov.min())
        tied = torch.nonzero(s[t] == edge).flatten()
        chosen = pv.foveal[t][tied]
        assert bool((chosen[:-1].int() >= chosen[1:].int()).all()), "ties must go to lower indices"


def test_scout_scores_change_the_kept_set_and_scale_invariance():
    x, q, s = make_video(3, 16, 6, seed=11)
    pv1 = prune_video(x, q, s, CFG)
    pv2 = prune_video(x, q, -s, CFG)
    assert not torch.equal(pv1.foveal, pv2.foveal)
    pv3 = prune_video(x, q, s * 10 + 3, CFG)  # monotone transform: same selection
    assert torch.equal(pv1.keep, pv3.keep) and torch.equal(pv1.tokens, pv3.tokens)


# ------------------------------------------------------------------------------ against oracle


def oracle_prune(x, q, s, cfg):
    budgets, _ = frame_budgets(x, q, config=cfg)
    T, N, _ = x.shape
    if s is not None:
        kf = torch.floor(cfg.scout_ratio * budgets.double() + 1e-9).long()
        foveal = oracle_topk(s, kf)
    else:
        kf = torch.zeros(T, dtype=torch.long)
        foveal = torch.zeros(T, N, dtype=torch.bool)
    anchors = oracle_dpc_select(x, budgets - kf, valid=~foveal, k=cfg.knn_k)
    keep = foveal | anchors
    return keep, foveal


@pytest.mark.parametrize("scout", [True, False])
@pytest.mark.parametrize("seed, T, N, D, retention", [(0, 4, 12, 8, 0.3), (1, 3, 17, 6, 0.2), (2, 2, 10, 16, 0.5)])
def test_kept_set_and_tokens_match_oracle(scout, seed, T, N, D, retention):
    x, q, s = make_video(T, N, D, seed=seed)
    cfg = VistaConfig(retention=retention, backend="torch")
    pv = prune_video(x, q, s if scout else None, cfg)
    keep, foveal = oracle_prune(x, q, s if scout else None, cfg)
    assert torch.equal(pv.foveal, foveal)
    assert torch.equal(pv.keep, keep)
    assert torch.equal(pv.assign, oracle_anchor_assign(x, keep))
    out, _ = oracle_anchor_aggregate(x, keep, alpha=cfg.alpha, assign=pv.assign)
    torch.testing.assert_close(pv.tokens.double(), out[keep], atol=1e-5, rtol=1e-5)


def test_tokens_loop_formula_and_empty_clusters_unchanged():
    x, q, s = make_video(4, 14, 5, seed=5)
    cfg = VistaConfig(retention=0.4, alpha=0.3, backend="torch")
    pv = prune_video(x, q, s, cfg)
    xd = x.double()
    k = 0
    n_empty = n_full = 0
    for t in range(4):
        for i in range(14):
            if not pv.keep[t, i]:
                continue
            members = [j for j in range(14) if not pv.keep[t, j] and int(pv.assign[t, j]) == i]
            if members:
                n_full += 1
                expect = (1 - cfg.alpha) * xd[t, i] + cfg.alpha * xd[t, members].mean(0)
                torch.testing.assert_close(pv.tokens[k].double(), expect, atol=1e-5, rtol=1e-5)
            else:
                n_empty += 1
                assert torch.equal(pv.tokens[k], x[t, i]), "kept token with an empty cluster must be unchanged"
            k += 1
    assert k == pv.num_tokens and n_empty > 0 and n_full > 0


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_extremes(alpha):
    x, q, s = make_video(3, 10, 4, seed=9)
    pv = prune_video(x, q, s, VistaConfig(retention=0.3, alpha=alpha, backend="torch"))
    if alpha == 0.0:
        assert torch.equal(pv.tokens, x[pv.keep])
    else:  # anchors with a cluster become exactly the cluster mean
        for n, (t, i) in enumerate(zip(pv.frame_index.tolist(), pv.token_index.tolist())):
            members = (~pv.keep[t]) & (pv.assign[t] == i)
            if members.any():
                torch.testing.assert_close(pv.tokens[n], x[t][members].mean(0), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- no-op / dtypes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scout", [True, False])
def test_retention_one_is_bit_identical(dtype, scout):
    x, q, s = make_video(4, 9, 6, seed=3, dtype=dtype)
    pv = prune_video(x, q, s if scout else None, VistaConfig(retention=1.0, backend="torch"))
    assert pv.tokens.dtype == dtype
    assert torch.equal(pv.tokens, x.reshape(-1, 6))
    assert bool(pv.keep.all())
    assert torch.equal(pv.frame_index, torch.arange(4).repeat_interleave(9))
    assert torch.equal(pv.token_index, torch.arange(9).repeat(4))
    assert torch.equal(pv.budgets, torch.full((4,), 9, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_run_and_keep_dtype(dtype):
    x32, q32, s = make_video(4, 12, 8, seed=21)
    x, q = x32.to(dtype), q32.to(dtype)
    pv = prune_video(x, q, s, CFG)
    check_structure(pv, x, CFG)
    assert pv.tokens.dtype == dtype
    assert bool(torch.isfinite(pv.tokens.float()).all())
    # the math runs in fp32 on the upcast values: same as pruning the upcast video, then casting
    ref = prune_video(x.float(), q.float(), s, CFG)
    assert torch.equal(pv.keep, ref.keep)
    assert torch.equal(pv.tokens, ref.tokens.to(dtype))


def test_deterministic_over_20_calls():
    x, q, s = make_video(5, 16, 8, seed=13)
    ref = prune_video(x, q, s, CFG)
    for _ in range(20):
        pv = prune_video(x, q, s, CFG)
        assert torch.equal(pv.keep, ref.keep)
        assert torch.equal(pv.tokens, ref.tokens)
        assert torch.equal(pv.assign, ref.assign)
        assert torch.equal(pv.budgets, ref.budgets)


def test_duplicate_tokens_are_deterministic_and_valid():
    # every token duplicated: ties everywhere (density, gamma, distances) -> lower index rules
    x, q, s = make_video(3, 6, 5, seed=17)
    x = x.repeat_interleave(2, dim=1)  # (3, 12, 5)
    cfg = VistaConfig(retention=0.5, backend="torch")
    a = prune_video(x, q, None, cfg)
    b = prune_video(x.clone(), q.clone(), None, cfg)
    check_structure(a, x, cfg)
    assert torch.equal(a.keep, b.keep) and torch.equal(a.tokens, b.tokens)


# --------------------------------------------------------------------------------- prune_videos


def test_prune_videos_ragged_equals_each_alone():
    vids = [
        make_video(4, 12, 8, seed=31),
        make_video(2, 7, 8, seed=32),
        make_video(5, 16, 8, seed=33),
        make_video(1, 3, 8, seed=34),
        make_video(3, 1, 8, seed=35),  # N=1: every token kept inside a batch that prunes
    ]
    use_scout = [True, False, True, False, True]
    xs = [v[0] for v in vids]
    qs = [v[1] for v in vids]
    ss = [v[2] if u else None for v, u in zip(vids, use_scout)]
    batch = prune_videos(xs, qs, ss, CFG)
    assert len(batch) == 5
    assert torch.equal(batch[4].tokens, xs[4].reshape(-1, 8))
    for x, q, s, pb in zip(xs, qs, ss, batch):
        alone = prune_video(x, q, s, CFG)
        check_structure(pb, x, CFG)
        assert torch.equal(pb.keep, alone.keep)
        assert torch.equal(pb.foveal, alone.foveal)
        assert torch.equal(pb.assign, alone.assign)
        assert torch.equal(pb.budgets, alone.budgets)
        assert torch.equal(pb.frame_index, alone.frame_index)
        assert torch.equal(pb.token_index, alone.token_index)
        torch.testing.assert_close(pb.tokens, alone.tokens, atol=1e-6, rtol=0)


def test_prune_videos_without_any_scout_and_retention_one():
    xs = [make_video(3, 5, 4, seed=41)[0], make_video(2, 8, 4, seed=42)[0]]
    qs = [torch.randn(4), torch.randn(4)]
    out = prune_videos(xs, qs, None, VistaConfig(retention=1.0))
    for x, pv in zip(xs, out):
        assert torch.equal(pv.tokens, x.reshape(-1, 4))
    out = prune_videos(xs, qs, None, CFG)
    for x, q, pv in zip(xs, qs, out):
        assert torch.equal(pv.keep, prune_video(x, q, None, CFG).keep)


def test_prune_videos_errors():
    x, q, s = make_video(2, 5, 4)
    with pytest.raises(ValueError, match="xs"):
        prune_videos([], [], None, CFG)
    with pytest.raises(TypeError, match="xs"):
        prune_videos(x, [q], None, CFG)
    with pytest.raises(ValueError, match="qs"):
        prune_videos([x, x], [q], None, CFG)
    with pytest.raises(ValueError, match="scout_scores"):
        prune_videos([x, x], [q, q], [s], CFG)
    with pytest.raises(ValueError, match=r"xs\[1\]"):
        prune_videos([x, torch.randn(2, 5, 3)], [q, torch.randn(3)], None, CFG)


# --------------------------------------------------------------------------------------- errors


def _bad(name):
    x, q, s = make_video(3, 6, 4)
    cases = {
        "rank": ((x[0], q, None, CFG), ValueError, r"\bx\b.*shape"),
        "rank4": ((x[None], q, None, CFG), ValueError, r"\bx\b.*shape"),
        "q_D": ((x, q[:3], None, CFG), ValueError, r"\bq\b.*shape"),
        "x_nan": ((x.index_put((torch.tensor([1]), torch.tensor([2]), torch.tensor([0])), torch.tensor(math.nan)), q, None, CFG), ValueError, r"\bx\b.*NaN"),
        "q_inf": ((x, q.index_put((torch.tensor([1]),), torch.tensor(math.inf)), None, CFG), ValueError, r"\bq\b.*inf"),
        "scores_shape": ((x, q, s[:, :5], CFG), ValueError, "scout_scores.*shape"),
        "scores_nan": ((x, q, s.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(math.nan)), CFG), ValueError, "scout_scores.*NaN"),
        "scores_int": ((x, q, s.long(), CFG), TypeError, "scout_scores"),
        "empty": ((x[:0], q, None, CFG), ValueError, r"\bx\b.*empty"),
        "int_x": ((x.to(torch.int32), q, None, CFG), TypeError, r"\bx\b.*dtype"),
        "x_not_tensor": ((x.tolist(), q, None, CFG), TypeError, r"\bx\b"),
        "config": ((x, q, None, {"retention": 0.3}), TypeError, "config"),
        "config_none_ok": None,
    }
    return cases[name]


@pytest.mark.parametrize(
    "name",
    ["rank", "rank4", "q_D", "x_nan", "q_inf", "scores_shape", "scores_nan", "scores_int", "empty",
     "int_x", "x_not_tensor", "config"],
)
def test_prune_video_errors_name_the_argument(name):
    args, exc, match = _bad(name)
    with pytest.raises(exc, match=match):
        prune_video(*args)


def test_config_none_means_defaults():
    x, q, s = make_video(3, 20, 4)
    a = prune_video(x, q, s, None)
    b = prune_video(x, q, s, VistaConfig())
    assert torch.equal(a.keep, b.keep) and a.num_tokens == retained_count(3, 20, 0.15)
