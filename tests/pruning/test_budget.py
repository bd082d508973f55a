"""Dynamic budgeting (PAPER §3.2, eq. 1-5; DESIGN.md step 1).

Checks retained_count, allocate_budgets (eq. 5 with largest-remainder rounding and overflow
redistribution) and frame_budgets / plan_budgets (segmentation by tau, relevance softmax) against
the contract and against an independent exact (fractions.Fraction) implementation of eq. 5.
"""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vista import VistaConfig, allocate_budgets, frame_budgets, plan_budgets, retained_count

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


# ------------------------------------------------------------------------------------- helpers


def seg_ids(sizes):
    return torch.cat([torch.full((s,), m, dtype=torch.int64) for m, s in enumerate(sizes)])


def expected_b_min(N, total, T, ratio=0.10):
    """max(1, round(ratio * N)) (round half up, as retained_count), capped at floor(total / T)."""
    return min(max(1, math.floor(ratio * N + 0.5)), total // T)


def brute_eq5(sizes, alpha, N, total, ratio=0.10):
    """Independent exact eq. 5 for cases without overflow: shares in Fractions, floors, then +1 to
    the largest fractional parts (ties to the earlier frame). Returns (budgets, shares)."""
    T = sum(sizes)
    b_min = expected_b_min(N, total, T, ratio)
    bonus = total - T * b_min
    shares = []
    for m, s in enumerate(sizes):
        a = Fraction(float(alpha[m]))  # the exact value of the fp64 alpha the code sees
        shares += [b_min + a * bonus / s] * s
    # the alphas sum to 1 only up to fp64 rounding; the code targets `total` regardless
    floors = [math.floor(v) for v in shares]
    rest = total - sum(floors)
    order = sorted(range(T), key=lambda t: (-(shares[t] - floors[t]), t))
    out = list(floors)
    for t in order[:rest]:
        out[t] += 1
    return out, shares


def alpha_from_weights(weights):
    w = torch.tensor(weights, dtype=torch.float64)
    return w / w.sum()


@st.composite
def alloc_case(draw, allow_zero=True, max_seg=8, max_size=6, max_N=64):
    sizes = draw(st.lists(st.integers(1, max_size), min_size=1, max_size=max_seg))
    T = sum(sizes)
    N = draw(st.integers(1, max_N))
    lo = 0 if allow_zero else 1
    weights = draw(st.lists(st.integers(lo, 40), min_size=len(sizes), max_size=len(sizes)))
    if sum(weights) == 0:
        weights[0] = 1
    total = draw(st.integers(T, T * N))
    ratio = draw(st.sampled_from([0.10, 0.10, 0.0, 0.05, 0.25, 0.5, 1.0]))
    return sizes, N, weights, total, ratio


# ------------------------------------------------------------------------------ retained_count


@pytest.mark.parametrize(
    "T, N, r, expected",
    [
        (10, 196, 0.15, 294),
        (64, 196, 0.15, 1882),  # 1881.6 -> 1882
        (64, 196, 0.10, 1254),  # 1254.4 -> 1254
        (1, 10, 0.25, 3),  # 2.5 rounds half up
        (4, 4, 0.5, 8),
        (3, 5, 1.0, 15),
        (10, 10, 0.01, 10),  # 1 -> clamped up to T
        (7, 3, 1e-9, 7),  # ~0 -> clamped up to T
        (1, 1, 0.3, 1),
        (1, 1, 1.0, 1),
    ],
)
def test_retained_count_examples(T, N, r, expected):
    assert retained_count(T, N, r) == expected


@settings(max_examples=300, **SETTINGS)
@given(st.integers(1, 200), st.integers(1, 2000), st.floats(1e-6, 1.0))
def test_retained_count_rounding_and_clamp(T, N, r):
    n = retained_count(T, N, r)
    assert isinstance(n, int)
    assert T <= n <= T * N
    exact = r * T * N
    if T < n < T * N:
        assert abs(n - exact) <= 0.5 + 1e-9
    if n == T and exact > T + 0.5 + 1e-9:
        pytest.fail("clamped to T although r*T*N is larger")


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((0, 10, 0.5), ValueError, "T"),
        ((4, 0, 0.5), ValueError, "N"),
        ((4.0, 10, 0.5), TypeError, "T"),
        ((True, 10, 0.5), TypeError, "T"),
        ((4, 10, 0.0), ValueError, "retention"),
        ((4, 10, 1.01), ValueError, "retention"),
        ((4, 10, float("nan")), ValueError, "retention"),
    ],
)
def test_retained_count_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        retained_count(*args)


# ---------------------------------------------------------------------------- allocate_budgets


@settings(max_examples=400, **SETTINGS)
@given(alloc_case())
def test_allocate_sum_range_and_monotone(case):
    sizes, N, weights, total, ratio = case
    T = sum(sizes)
    seg = seg_ids(sizes)
    alpha = alpha_from_weights(weights)
    b = allocate_budgets(seg, alpha, T, N, total, ratio)
    assert b.dtype == torch.int64 and tuple(b.shape) == (T,)
    assert int(b.sum()) == total
    assert int(b.min()) >= 1 and int(b.max()) <= N
    # every frame gets at least b_min (the bonus is non-negative), as far as N allows
    b_min = expected_b_min(N, total, T, ratio)
    assert int(b.min()) >= b_min
    # per-frame weight w = alpha_m / |S_m| (exact rationals): a larger w never gets fewer tokens;
    # equal w differ by at most one token.
    wexact = [Fraction(weights[m], sizes[m]) for m in range(len(sizes)) for _ in range(sizes[m])]
    bl = b.tolist()
    for s in range(T):
        for t in range(T):
            if wexact[s] > wexact[t]:
                assert bl[s] >= bl[t], (s, t, bl)
            elif wexact[s] == wexact[t] and s < t and seg[s] == seg[t]:
                assert bl[s] >= bl[t], "remainder ties must go to the earlier frame"


@settings(max_examples=400, **SETTINGS)
@given(alloc_case(allow_zero=True))
def test_allocate_matches_exact_eq5_without_overflow(case):
    sizes, N, weights, total, ratio = case
    T = sum(sizes)
    alpha = alpha_from_weights(weights)
    expected, shares = brute_eq5(sizes, alpha, N, total, ratio)
    assume(max(shares) <= N)  # no overflow: eq. 5 + largest remainder alone decides
    assume(sum(shares) == total or abs(float(sum(shares)) - total) < 1e-9)
    # avoid fractional parts within fp64 noise of each other / of an integer boundary, which the
    # fp64 implementation cannot order the way exact arithmetic does (exact ties are kept)
    fr = [s - math.floor(s) for s in shares]
    for v in fr:
        assume(v == 0 or 1e-9 < v < 1 - 1e-9)
    for u in fr:
        for v in fr:
            assume(u == v or abs(float(u - v)) > 1e-9)
    b = allocate_budgets(seg_ids(sizes), alpha, T, N, total, ratio)
    assert b.tolist() == expected


@pytest.mark.parametrize(
    "sizes, weights, N, total, expected",
    [
        # equal shares 8/3 per frame: +1 to the two earliest frames
        ([3], [1], 10, 8, [3, 3, 2]),
        # two equal segments: shares 2.5 each -> the earlier frame of the tie gets the extra token
        ([1, 1], [1, 1], 10, 5, [3, 2]),
        # b_min=1 (N=10); bonus 6 split 2:1 over segments of sizes 2 and 1 -> 2 per frame each
        ([2, 1], [2, 1], 10, 9, [3, 3, 3]),
        # b_min=1, bonus 4, alpha=(3/4, 1/4): shares 4, 2
        ([1, 1], [3, 1], 10, 6, [4, 2]),
    ],
)
def test_allocate_hand_examples(sizes, weights, N, total, expected):
    T = sum(sizes)
    b = allocate_budgets(seg_ids(sizes), alpha_from_weights(weights), T, N, total, 0.10)
    assert b.tolist() == expected


@pytest.mark.parametrize(
    "N, ratio, T, total",
    [
        (40, 0.10, 4, 30),  # b_min = 4
        (40, 0.10, 4, 12),  # b_min = 4 capped at floor(12/4) = 3
        (40, 0.10, 4, 13),  # capped at 3
        (196, 0.10, 4, 200),  # b_min = round(19.6) = 20
        (196, 0.10, 4, 60),  # capped at 15
        (15, 0.10, 4, 20),  # round(1.5) = 2
        (14, 0.10, 4, 14),  # round(1.4) = 1
        (3, 0.10, 4, 6),  # round(0.3) = 0 -> max(1, .) = 1
        (16, 0.25, 3, 20),  # b_min = 4
        (16, 0.0, 3, 12),  # ratio 0 -> max(1, 0) = 1
    ],
)
def test_b_min_rule(N, ratio, T, total):
    # one relevant frame takes the whole bonus; the others (alpha = 0) get exactly b_min
    sizes = [1, T - 1]
    alpha = torch.tensor([1.0, 0.0], dtype=torch.float64)
    b_min = expected_b_min(N, total, T, ratio)
    assert b_min + (total - T * b_min) <= N, "test case must not overflow"
    b = allocate_budgets(seg_ids(sizes), alpha, T, N, total, ratio)
    assert b.tolist() == [total - (T - 1) * b_min] + [b_min] * (T - 1)


def test_b_min_half_rounds_up():
    # round(0.10 * 25) = round(2.5): the package rounds half up (like retained_count) -> b_min 3
    # (Python's banker's round() would give 2 and budgets [24, 2, 2, 2])
    b = allocate_budgets(seg_ids([1, 3]), torch.tensor([1.0, 0.0], dtype=torch.float64), 4, 25, 30, 0.10)
    assert b.tolist() == [21, 3, 3, 3]


def test_overflow_capped_and_redistributed_by_alpha():
    # T=10, N=16, total=80, b_min=2, bonus 60; the one-frame segment would get 2 + 0.9*60 = 56
    sizes, N, total = [1, 4, 5], 16, 80
    alpha = torch.tensor([0.9, 0.06, 0.04], dtype=torch.float64)
    b = allocate_budgets(seg_ids(sizes), alpha, 10, N, total, 0.10)
    assert int(b.sum()) == total
    assert int(b[0]) == N
    assert int(b.min()) >= 1 and int(b.max()) <= N
    # water-filling: excess 40 goes to the other frames in proportion to alpha_m/|S_m|:
    # segment 1 gets 40*0.06/0.10 = 24 (6 a frame), segment 2 gets 16 (3.2 a frame)
    ideal1, ideal2 = 2 + 0.06 * 60 / 4 + 6, 2 + 0.04 * 60 / 5 + 3.2  # 8.9, 5.68
    assert all(abs(int(v) - ideal1) < 2 for v in b[1:5])
    assert all(abs(int(v) - ideal2) < 2 for v in b[5:])
    assert int(b[1:5].min()) >= int(b[5:].max())
    assert int(b[1:5].sum()) + int(b[5:].sum()) == total - N


def test_overflow_with_zero_alpha_elsewhere_goes_to_frames_with_room():
    # alpha (1, 0): the relevant frame wants 1 + 26 = 27 > N = 10, the rest have no weight;
    # the excess 17 is spread over the three frames with room (ties to the earlier frame)
    b = allocate_budgets(seg_ids([1, 3]), torch.tensor([1.0, 0.0], dtype=torch.float64), 4, 10, 30, 0.10)
    assert b.tolist() == [10, 7, 7, 6]


def _water_fill(sizes, weights, N, total, ratio=0.10):
    """Continuous eq. 5 with overflow: cap shares at N and hand the excess to frames with room in
    proportion to alpha_m/|S_m| (frames with room but zero weight only when nobody else has room)."""
    T = sum(sizes)
    b_min = expected_b_min(N, total, T, ratio)
    W = sum(weights)
    w = [Fraction(weights[m], W * sizes[m]) for m in range(len(sizes)) for _ in range(sizes[m])]
    share = [b_min + wt * (total - T * b_min) for wt in w]
    capped = [False] * T
    while True:
        over = [t for t in range(T) if not capped[t] and share[t] > N]
        if not over:
            return share
        excess = sum(share[t] - N for t in over)
        for t in over:
            share[t], capped[t] = Fraction(N), True
        open_ = [t for t in range(T) if not capped[t]]
        ws = sum(w[t] for t in open_)
        for t in open_:
            share[t] += excess * (w[t] / ws if ws > 0 else Fraction(1, len(open_)))


def test_overflow_rounding_stays_within_one_token_of_eq5():
    # sizes [1,1,1,3], alpha (0, 0, 1/2, 1/2), N=7, total=26, b_min=1, bonus 20:
    # frame 2 wants 11 -> capped at 7; its excess 4 goes to frames 3..5 (4/3 each):
    # continuous shares 1, 1, 7, 17/3, 17/3, 17/3 -> largest remainder gives [1, 1, 7, 6, 6, 5].
    sizes, weights, N, total = [1, 1, 1, 3], [0, 0, 1, 1], 7, 26
    ideal = _water_fill(sizes, weights, N, total)
    assert ideal[3:] == [Fraction(17, 3)] * 3
    b = allocate_budgets(seg_ids(sizes), alpha_from_weights(weights), 6, N, total, 0.10).tolist()
    assert sum(b) == total
    assert all(abs(v - float(i)) < 1 for v, i in zip(b, ideal)), (b, [float(i) for i in ideal])
    assert b == [1, 1, 7, 6, 6, 5]


@pytest.mark.parametrize("slack", [0, 1, 2, 5])
def test_overflow_cascade_near_full(slack):
    sizes, N = [1, 2, 3, 1], 9
    T = sum(sizes)
    total = T * N - slack
    alpha = torch.tensor([0.7, 0.2, 0.05, 0.05], dtype=torch.float64)
    b = allocate_budgets(seg_ids(sizes), alpha, T, N, total, 0.10)
    assert int(b.sum()) == total and int(b.max()) <= N and int(b.min()) >= 1
    assert int(b[0]) == N and int(b[1]) == N and int(b[2]) == N


def test_allocate_single_frame_and_determinism():
    b = allocate_budgets(seg_ids([1]), torch.ones(1, dtype=torch.float64), 1, 196, 29, 0.10)
    assert b.tolist() == [29]
    seg = seg_ids([2, 3, 1, 4])
    alpha = torch.softmax(torch.tensor([0.3, -0.2, 0.9, 0.1]), 0)
    ref = allocate_budgets(seg, alpha, 10, 50, 123, 0.10)
    for _ in range(10):
        assert torch.equal(allocate_budgets(seg, alpha, 10, 50, 123, 0.10), ref)


@pytest.mark.parametrize("total", [3, 41])
def test_allocate_rejects_total_outside_range(total):
    with pytest.raises(ValueError, match="total"):
        allocate_budgets(seg_ids([4]), torch.ones(1, dtype=torch.float64), 4, 10, total, 0.10)


# ----------------------------------------------------------------------- frame_budgets / plan


def frames_with_cosines(cosines, N=6, D=8, q_dir=None, seed=0):
    """x (T, N, D) whose frame means are unit vectors in a plane with consecutive cosines
    exactly ``cosines``; tokens are mean +/- a random offset (pairs), so means are exact-ish."""
    g = torch.Generator().manual_seed(seed)
    angles = [0.0]
    for c in cosines:
        angles.append(angles[-1] + math.acos(c))
    T = len(angles)
    x = torch.zeros(T, N, D, dtype=torch.float64)
    for t, th in enumerate(angles):
        f = torch.zeros(D, dtype=torch.float64)
        f[0], f[1] = math.cos(th), math.sin(th)
        off = torch.randn(N // 2, D, generator=g, dtype=torch.float64) * 0.3
        off[:, :2] = 0.0  # keep the offsets orthogonal to the plane of the means
        x[t, 0::2] = f + off
        x[t, 1::2] = f - off
    return x.float()


@pytest.mark.parametrize(
    "retention, tau, cosines, expected_seg",
    [
        # default rule, retention >= 0.20 -> tau 0.80
        (0.25, None, [0.801, 0.799, 0.90, 0.7999], [0, 0, 1, 1, 2]),
        (0.20, None, [0.8005, 0.7995], [0, 0, 1]),
        # retention < 0.20 -> tau 0.95
        (0.15, None, [0.951, 0.949, 0.9499, 0.99], [0, 0, 1, 2, 2]),
        (0.1999, None, [0.9505, 0.9495], [0, 0, 1]),
        # an explicit tau overrides the rule either way
        (0.15, 0.5, [0.501, 0.499, 0.80, 0.949], [0, 0, 1, 1, 1]),
        (0.50, 0.99, [0.991, 0.989, 0.95], [0, 0, 1, 2]),
    ],
)
def test_tau_rule_splits_and_merges(retention, tau, cosines, expected_seg):
    x = frames_with_cosines(cosines)
    q = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(1))
    cfg = VistaConfig(retention=retention, tau=tau, backend="torch")
    plan = plan_budgets(x, q, config=cfg)
    torch.testing.assert_close(plan.cosine.double(), torch.tensor(cosines, dtype=torch.float64), atol=2e-5, rtol=0)
    assert plan.tau == (tau if tau is not None else (0.80 if retention >= 0.20 else 0.95))
    assert plan.segment_id.tolist() == expected_seg
    b, s = frame_budgets(x, q, config=cfg)
    assert torch.equal(s, plan.segment_id) and torch.equal(b, plan.budgets)
    assert int(b.sum()) == retained_count(x.shape[0], x.shape[1], retention)


def test_retention_argument_overrides_config_and_picks_tau():
    x = frames_with_cosines([0.9, 0.9, 0.9])
    q = torch.randn(8)
    cfg = VistaConfig(retention=0.5)  # tau 0.80: one segment
    assert plan_budgets(x, q, config=cfg).segment_id.tolist() == [0, 0, 0, 0]
    p = plan_budgets(x, q, retention=0.1, config=cfg)  # retention 0.1 -> tau 0.95: all split
    assert p.segment_id.tolist() == [0, 1, 2, 3]
    assert p.tau == 0.95
    assert int(p.budgets.sum()) == retained_count(4, 6, 0.1)


def _independent_relevance(x, seg, q):
    f = x.double().mean(1)
    M = int(seg.max()) + 1
    proto = torch.stack([f[seg == m].mean(0) for m in range(M)])
    qd = q.double()
    r = (proto @ qd) / (proto.norm(dim=1) * qd.norm())
    return torch.softmax(r, 0)


def test_query_relevance_drives_budgets():
    # three clear segments (cosine 0 across boundaries); q points at segment 1's mean
    cos = [0.99, 0.0, 0.99, 0.0, 0.99]
    x = frames_with_cosines(cos, N=20, D=8)
    seg_expected = [0, 0, 1, 1, 2, 2]
    f = x.double().mean(1)
    q = f[2].float() * 3.0
    plan = plan_budgets(x, q, config=VistaConfig(retention=0.3))
    assert plan.segment_id.tolist() == seg_expected
    torch.testing.assert_close(plan.relevance.double(), _independent_relevance(x, plan.segment_id, q), atol=1e-5, rtol=0)
    assert int(plan.relevance.argmax()) == 1
    b = plan.budgets
    assert int(b[2:4].min()) > int(b[0:2].max()) and int(b[2:4].min()) > int(b[4:6].max())
    assert int(b.sum()) == retained_count(6, 20, 0.3)


@st.composite
def video_case(draw):
    T = draw(st.integers(1, 12))
    N = draw(st.integers(1, 20))
    D = draw(st.integers(2, 12))
    retention = draw(st.floats(0.01, 1.0))
    tau = draw(st.sampled_from([None, None, 0.0, 0.5, 0.9, 0.99]))
    seed = draw(st.integers(0, 2**31 - 1))
    drift = draw(st.sampled_from([0.0, 0.3, 1.0, 3.0]))
    return T, N, D, retention, tau, seed, drift


def _make_video(T, N, D, seed, drift):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, generator=g)
    steps = torch.randn(T, D, generator=g) * drift
    means = base + steps.cumsum(0)
    x = means[:, None, :] + 0.5 * torch.randn(T, N, D, generator=g)
    q = torch.randn(D, generator=g)
    return x, q


@settings(max_examples=150, **SETTINGS)
@given(video_case())
def test_frame_budgets_properties(case):
    T, N, D, retention, tau, seed, drift = case
    x, q = _make_video(T, N, D, seed, drift)
    cfg = VistaConfig(retention=retention, tau=tau, backend="torch")
    plan = plan_budgets(x, q, config=cfg)
    b, s = plan.budgets, plan.segment_id
    assert b.dtype == torch.int64 and s.dtype == torch.int64
    assert tuple(b.shape) == (T,) and tuple(s.shape) == (T,)
    assert int(b.sum()) == retained_count(T, N, retention)
    assert int(b.min()) >= 1 and int(b.max()) <= N
    # segments: start at 0, step by one exactly where cos < tau
    used_tau = tau if tau is not None else (0.80 if retention >= 0.20 else 0.95)
    assert s[0] == 0
    steps = (s[1:] - s[:-1]).tolist()
    assert steps == [int(c < used_tau) for c in plan.cosine.tolist()]
    M = int(s[-1]) + 1
    assert tuple(plan.relevance.shape) == (M,)
    assert abs(float(plan.relevance.sum()) - 1.0) < 1e-5
    torch.testing.assert_close(plan.relevance.double(), _independent_relevance(x, s, q), atol=1e-5, rtol=0)
    # same-length segments: clearly more relevant -> never a smaller per-frame budget
    sizes = torch.bincount(s, minlength=M).tolist()
    rel = plan.relevance.tolist()
    for m1 in range(M):
        for m2 in range(M):
            if sizes[m1] == sizes[m2] and rel[m1] > rel[m2] * (1 + 1e-5):
                assert int(b[s == m1].min()) >= int(b[s == m2].max()), (rel, b.tolist(), s.tolist())
    # deterministic
    b2, s2 = frame_budgets(x, q, config=cfg)
    assert torch.equal(b, b2) and torch.equal(s, s2)


@pytest.mark.parametrize("N, retention", [(196, 0.15), (1, 0.5), (7, 1.0), (10, 0.01)])
def test_single_frame_video(N, retention):
    x = torch.randn(1, N, 5)
    b, s = frame_budgets(x, torch.randn(5), retention=retention)
    assert b.tolist() == [retained_count(1, N, retention)]
    assert s.tolist() == [0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_frame_budgets_dtypes_deterministic(dtype):
    x, q = _make_video(9, 17, 6, seed=3, drift=1.0)
    x, q = x.to(dtype), q.to(dtype)
    ref = frame_budgets(x, q, retention=0.15)
    for _ in range(5):
        b, s = frame_budgets(x, q, retention=0.15)
        assert torch.equal(b, ref[0]) and torch.equal(s, ref[1])
    assert int(ref[0].sum()) == retained_count(9, 17, 0.15)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda x, q: (x[0], q), ValueError, "x"),
        (lambda x, q: (x, q[:-1]), ValueError, "q"),
        (lambda x, q: (x, q[None]), ValueError, "q"),
        (lambda x, q: (x[:0], q), ValueError, "x"),
        (lambda x, q: (x.to(torch.int32), q), TypeError, "x"),
        (lambda x, q: (x, q.to(torch.int64)), TypeError, "q"),
        (lambda x, q: (x, q.tolist()), TypeError, "q"),
    ],
)
def test_frame_budgets_errors(make, exc, match):
    x, q = torch.randn(3, 4, 5), torch.randn(5)
    xx, qq = make(x, q)
    with pytest.raises(exc, match=match):
        frame_budgets(xx, qq, retention=0.5)


def test_frame_budgets_bad_retention():
    with pytest.raises(ValueError, match="retention"):
        frame_budgets(torch.randn(3, 4, 5), torch.randn(5), retention=0.0)
