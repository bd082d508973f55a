"""anchor_aggregate (nearest-kept assignment + cluster-mean blend): the Triton kernel vs the PyTorch
reference, the reference and the public op vs the fp64 oracle (``oracle.py``), equidistant anchors
built with exact ties, and malformed calls."""
from __future__ import annotations

import math

import pytest
import torch

import vista_kernels as vk
from tests.kernels.cases import (BOOL, CASES_P, F, FP32_TOL, IMPLS, N, T, TIE_GAP, VALID, X, assert_close, assert_near,
                                 case_data, case_oracle, full_valid, impl_of, keep_subset, kernel_devices, make_keep,
                                 make_valid, make_x, malformed_calls, with_value)
from tests.kernels.oracle import oracle_anchor_aggregate
from vista_kernels.ops import anchor_aggregate as aa
from vista_kernels.reference import anchor_aggregate_torch
from vista_kernels.utils import kernel_interpreted

_INTERP = kernel_interpreted(aa._anchor_aggregate_kernel)
DEVICES = kernel_devices(_INTERP)
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


# ================================= reference and public op (backend="torch") vs the fp64 oracle


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
    assert_close(out, exp_out, **FP32_TOL)
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
    assert_close(out[0, 0], torch.tensor([0.125, 0.375]), rtol=0, atol=1e-7)  # 0.75*0 + 0.25*mean((1,0),(0,3))
    assert_close(out[0, 3], torch.tensor([10.5, 0.5]), rtol=0, atol=1e-6)  # 0.75*(10,0) + 0.25*(12,2)
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



# ================= inputs built with exact ties: the lower index wins (reference and public op)


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
    assert_near(out, exp_out)
    # hand-derived blend: anchor a <- (1 - alpha) x_a + alpha * mean(its dropped tokens)
    for a in set(dropped_to.values()):
        members = [j for j, b in dropped_to.items() if b == a]
        mean = x[0, members].mean(0)
        assert_near(out[0, a], (1 - alpha) * x[0, a] + alpha * mean)
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
    assert_near(out[0, 2], [0.5, 0, 0, 0])



# ============================================================ malformed calls name the argument


# (id, call, exception type, regex the message must match: the argument's name)
BAD_CALLS = [
    # ---- x (tokens)
    ("anchor-x-nan", lambda: vk.anchor_aggregate(with_value(float("nan")), keep_subset(), **T), ValueError, r"^x contains NaN"),
    # ---- alpha
    ("anchor-alpha-negative", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha=-0.1, **T), ValueError, r"^alpha must be in \[0, 1\]"),
    ("anchor-alpha-above-1", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha=1.5, **T), ValueError, r"^alpha must be in \[0, 1\]"),
    ("anchor-alpha-nan", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha=float("nan"), **T), ValueError, r"^alpha must be in"),
    ("anchor-alpha-str", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha="0.5", **T), TypeError, r"^alpha must be a float"),
    ("anchor-alpha-tensor", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha=torch.tensor(0.5), **T), TypeError, r"^alpha must be a float"),
    # ---- keep
    ("anchor-keep-not-subset", lambda: vk.anchor_aggregate(X(), torch.ones(F, N, **BOOL), valid=VALID(), **T), ValueError, r"^keep marks tokens that are not valid"),
    ("anchor-keep-empty-frame", lambda: vk.anchor_aggregate(X(), torch.tensor([[True] + [False] * (N - 1), [False] * N]), **T), ValueError, r"^keep has no kept token in frame 1"),
    ("anchor-keep-empty-valid-frame", lambda: vk.anchor_aggregate(X(), torch.tensor([[True] + [False] * (N - 1), [False] * N]), valid=VALID(), **T), ValueError, r"^keep has no kept token in frame 1"),
    ("anchor-keep-int", lambda: vk.anchor_aggregate(X(), keep_subset().long(), **T), TypeError, r"^keep must have dtype torch\.bool"),
    ("anchor-keep-shape", lambda: vk.anchor_aggregate(X(), torch.ones(F + 1, N, **BOOL), **T), ValueError, r"^keep must have shape \(F, N\)"),
    ("anchor-keep-none", lambda: vk.anchor_aggregate(X(), None, **T), TypeError, r"^keep must be a torch\.Tensor"),
    ("anchor-keep-device", lambda: vk.anchor_aggregate(X(), torch.ones(F, N, device="meta", **BOOL), **T), ValueError, r"^keep is on meta"),
    ("anchor-valid-shape", lambda: vk.anchor_aggregate(X(), keep_subset(), valid=torch.ones(N, **BOOL), **T), ValueError, r"^valid must have shape"),
]


@malformed_calls(BAD_CALLS)
def test_malformed_call_names_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
