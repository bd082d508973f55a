"""Tie-breaking of the PyTorch reference ops on inputs BUILT with ties (DESIGN.md: every tie - equal
density in delta, equal gamma or scout score in a top-k, equal distance in an assignment - goes to the
lower token index).

Inputs use small integer coordinates, so every Gram product, squared norm and squared distance is
exact in fp32 and the ties are exact in the reference as well as in the fp64 oracle. Each case is
checked against a hand-derived expectation and against the oracle.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import vista_kernels as vk
import vista_kernels.reference as R
from tests.kernels.oracle import (
    oracle_anchor_aggregate,
    oracle_dpc_delta,
    oracle_dpc_gamma,
    oracle_dpc_select,
    oracle_knn_density,
    oracle_topk,
)
from vista_kernels.reference._common import stable_topk_mask

E25 = math.exp(-0.25)
E625 = math.exp(-0.625)


def impl_of(which: str, op: str):
    if which == "reference":
        return getattr(R, f"{op}_torch")
    return functools.partial(getattr(vk, op), backend="torch")


IMPLS = pytest.mark.parametrize("which", ["reference", "public"])


def on_line(points, D=4):
    """(1, len(points), D) tokens p * e1."""
    x = torch.zeros(1, len(points), D)
    x[0, :, 0] = torch.tensor(points, dtype=torch.float32)
    return x


def close(a, b, tol=1e-6):
    torch.testing.assert_close(a.double(), torch.as_tensor(b).double(), rtol=tol, atol=tol)


# ============================================================== equal densities and equal gamma

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
    close(rho[0], LINE_RHO[name])
    # exact ties in the reference itself (the tie rule only applies to equal fp32 values)
    for group in ([i for i, r in enumerate(LINE_RHO[name]) if r == E25], [i for i, r in enumerate(LINE_RHO[name]) if r == E625]):
        assert len(set(rho[0, group].tolist())) == 1, f"rho of {group} should be exactly equal"
    close(rho, oracle_knn_density(x, 2))

    delta = impl_of(which, "dpc_delta")(x, rho)
    close(delta[0], delta_hand)
    close(delta, oracle_dpc_delta(x, rho))

    gamma = impl_of(which, "dpc_gamma")(x, k=2)
    close(gamma[0], [r * d for r, d in zip(LINE_RHO[name], delta_hand)])
    close(gamma, oracle_dpc_gamma(x, None, 2))

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
    close(rho, oracle_knn_density(x, k))
    delta = impl_of(which, "dpc_delta")(x, rho)
    # a duplicate of a lower-index token with the same density has that token as a denser neighbour
    assert delta[0, 6] == 0 and delta[0, 8] == 0 and delta[0, 7] == 0
    assert bool((delta[0, [0, 1, 2, 3, 4, 5, 9]] > 0).all())
    close(delta, oracle_dpc_delta(x, rho))
    gamma = impl_of(which, "dpc_gamma")(x, k=k)
    assert bool((gamma[0, [6, 7, 8]] == 0).all())
    close(gamma, oracle_dpc_gamma(x, None, k))
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
    close(delta, oracle_dpc_delta(x, rho))
    # tokens 1, 2 tied on top (peak 1: delta = max(3, 2, 1) = 3; 2: denser {1} -> 2);
    # 0, 3 tied below (0: denser {1, 2} -> 1; 3: denser {0, 1, 2} -> min(4, 1, 3) = 1).
    rho = torch.tensor([[0.5, 0.7, 0.7, 0.5]])
    delta = impl_of(which, "dpc_delta")(x, rho)
    assert delta.tolist() == [[1.0, 3.0, 2.0, 1.0]]
    close(delta, oracle_dpc_delta(x, rho))
    # an invalid token with the highest rho and lowest index is nobody's denser neighbour, nor part
    # of the peak's farthest distance: peak 1 -> max(d to 2, d to 3) = 2; 2 -> 2; 3 -> min(1, 3) = 1.
    valid = torch.tensor([[False, True, True, True]])
    rho = torch.tensor([[0.9, 0.5, 0.5, 0.5]])
    delta = impl_of(which, "dpc_delta")(x, rho, valid=valid)
    assert delta.tolist() == [[0.0, 2.0, 2.0, 1.0]]
    close(delta, oracle_dpc_delta(x, rho, valid))


# ======================================================================= equidistant anchors


def _anchor_case(n, D, coords, kept):
    x = torch.zeros(1, n, D)
    for i, c in coords.items():
        x[0, i] = torch.tensor(c, dtype=torch.float32)
    keep = torch.zeros(1, n, dtype=torch.bool)
    keep[0, kept] = True
    return x, keep


ANCHOR_TIES = {
    # dropped 0 at the origin, anchors +e1 (1) and -e1 (2): tie -> 1
    "origin-between": (3, {0: [0, 0, 0, 0], 1: [1, 0, 0, 0], 2: [-1, 0, 0, 0]}, [1, 2], {0: 1}),
    # dropped token between its anchors in index order: 0 and 2 anchors, 1 dropped -> 0
    "dropped-between": (3, {0: [1, 0, 0, 0], 1: [0, 0, 0, 0], 2: [-1, 0, 0, 0]}, [0, 2], {1: 0}),
    # four anchors at +-e1, +-e2 listed out of index order; dropped origin at 0 -> lowest index 1
    "four-way": (
        5,
        {0: [0, 0, 0, 0], 4: [1, 0, 0, 0], 1: [0, -1, 0, 0], 3: [-1, 0, 0, 0], 2: [0, 1, 0, 0]},
        [1, 2, 3, 4],
        {0: 1},
    ),
    # two kept duplicates (2 and 5) and a dropped third copy (0): distance 0 to both -> 2; dropped 4
    # at distance 1 from 1 and 3 (2 away from the copies) -> 1
    "kept-duplicates": (
        6,
        {0: [1, 1, 0, 0], 2: [1, 1, 0, 0], 5: [1, 1, 0, 0], 1: [3, 1, 1, 0], 3: [3, 1, -1, 0], 4: [3, 1, 0, 0]},
        [1, 2, 3, 5],
        {0: 2, 4: 1},
    ),
}


@IMPLS
@pytest.mark.parametrize("name", list(ANCHOR_TIES))
@pytest.mark.parametrize("alpha", [0.5, 0.25])
def test_equidistant_anchor_goes_to_lower_index(which, name, alpha):
    n, coords, kept, dropped_to = ANCHOR_TIES[name]
    x, keep = _anchor_case(n, 4, coords, kept)
    out, assign = impl_of(which, "anchor_aggregate")(x, keep, alpha=alpha)
    expected_assign = list(range(n))
    for j, a in dropped_to.items():
        expected_assign[j] = a
    assert assign.tolist() == [expected_assign]
    exp_out, exp_assign = oracle_anchor_aggregate(x, keep, alpha)
    assert torch.equal(assign, exp_assign)
    close(out, exp_out)
    # hand-derived blend: anchor a <- (1 - alpha) x_a + alpha * mean(its dropped tokens)
    for a in set(dropped_to.values()):
        members = [j for j, b in dropped_to.items() if b == a]
        mean = x[0, members].mean(0)
        close(out[0, a], (1 - alpha) * x[0, a] + alpha * mean)
    # every other row bit-identical
    untouched = [i for i in range(n) if i not in dropped_to.values()]
    assert torch.equal(out[0, untouched], x[0, untouched])


@IMPLS
def test_equidistant_anchor_with_invalid_tokens(which):
    # an invalid token at the same point as the lower-index anchor is no anchor, and is not absorbed
    x, keep = _anchor_case(4, 4, {0: [1, 0, 0, 0], 1: [0, 0, 0, 0], 2: [1, 0, 0, 0], 3: [-1, 0, 0, 0]}, [2, 3])
    valid = torch.tensor([[False, True, True, True]])
    out, assign = impl_of(which, "anchor_aggregate")(x, keep, alpha=0.5, valid=valid)
    assert assign.tolist() == [[-1, 2, 2, 3]]
    assert torch.equal(out[0, 0], x[0, 0])
    close(out[0, 2], [0.5, 0, 0, 0])


# ========================================================================= scout-style top-k


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


# ============================ exact symmetry and duplicate tokens (Gram formula: (sq_i + sq_j) - 2G)


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
