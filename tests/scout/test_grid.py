"""map_scores_to_grid: area-weighted resampling of scout scores onto a backbone's token grid."""
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vista.scout import area_weights, map_scores_to_grid


def brute_force(scores, src_hw, dst_hw, temporal_pairs=False):
    """Per-cell loop with exact rational overlaps: dst[a,b] = Σ src[i,j]·area(cell_ab ∩ cell_ij)/area(cell_ij)."""
    sh, sw = src_hw
    dh, dw = dst_hw
    T = scores.shape[0]
    s = scores.double().view(T, sh, sw)

    def overlap(a, n_a, i, n_i):
        lo = max(Fraction(a, n_a), Fraction(i, n_i))
        hi = min(Fraction(a + 1, n_a), Fraction(i + 1, n_i))
        return max(Fraction(0), hi - lo)

    out = torch.zeros(T, dh, dw, dtype=torch.float64)
    for a in range(dh):
        for b in range(dw):
            for i in range(sh):
                oy = overlap(a, dh, i, sh)
                if oy == 0:
                    continue
                for j in range(sw):
                    ox = overlap(b, dw, j, sw)
                    if ox == 0:
                        continue
                    frac = float(oy * ox * sh * sw)  # overlap area / source cell area
                    out[:, a, b] += s[:, i, j] * frac
    out = out.view(T, dh * dw)
    if temporal_pairs:
        rows = [torch.maximum(out[t], out[t + 1]) if t + 1 < T else out[t] for t in range(0, T, 2)]
        out = torch.stack(rows)
    return out.float()


@pytest.mark.parametrize(
    "src_hw,dst_hw",
    [((16, 16), (14, 14)), ((16, 16), (27, 27)), ((16, 16), (6, 9)), ((4, 6), (3, 5)), ((16, 16), (1, 1)),
     ((5, 3), (7, 2)), ((16, 16), (32, 32))],
)
def test_matches_brute_force(src_hw, dst_hw):
    g = torch.Generator().manual_seed(hash((src_hw, dst_hw)) % 2**31)
    scores = torch.rand(3, src_hw[0] * src_hw[1], generator=g)
    got = map_scores_to_grid(scores, src_hw, dst_hw)
    ref = brute_force(scores, src_hw, dst_hw)
    assert got.shape == (3, dst_hw[0] * dst_hw[1]) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    sh=st.integers(1, 17), sw=st.integers(1, 17), dh=st.integers(1, 17), dw=st.integers(1, 17),
    T=st.integers(1, 3), seed=st.integers(0, 2**16),
)
def test_mass_conservation(sh, sw, dh, dw, T, seed):
    scores = torch.rand(T, sh * sw, generator=torch.Generator().manual_seed(seed)) * 10
    out = map_scores_to_grid(scores, (sh, sw), (dh, dw))
    torch.testing.assert_close(out.double().sum(1), scores.double().sum(1), rtol=1e-5, atol=1e-5)
    assert (out >= 0).all()


@pytest.mark.parametrize("n_src,n_dst", [(16, 14), (14, 16), (3, 7), (7, 3), (5, 5), (1, 4)])
def test_area_weights_columns_sum_to_one(n_src, n_dst):
    w = area_weights(n_src, n_dst)
    assert w.shape == (n_dst, n_src)
    torch.testing.assert_close(w.sum(0), torch.ones(n_src, dtype=torch.float64))
    # each destination cell covers 1/n_dst of the line = n_src/n_dst source cells
    torch.testing.assert_close(w.sum(1), torch.full((n_dst,), n_src / n_dst, dtype=torch.float64))


def test_one_hot_lands_in_the_right_region():
    # 4x4 -> 2x2: source patch (1, 2) lies in destination cell (0, 1) only
    s = torch.zeros(1, 16)
    s[0, 1 * 4 + 2] = 1.0
    out = map_scores_to_grid(s, (4, 4), (2, 2)).view(2, 2)
    assert torch.equal(out, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    # 16x16 -> 14x14: the corners stay in the corners
    for (i, j), (a, b) in {(0, 0): (0, 0), (15, 15): (13, 13), (0, 15): (0, 13), (15, 0): (13, 0)}.items():
        s = torch.zeros(1, 256)
        s[0, i * 16 + j] = 1.0
        out = map_scores_to_grid(s, (16, 16), (14, 14)).view(14, 14)
        assert out[a, b] == pytest.approx(1.0) and out.sum() == pytest.approx(1.0)
    # 2x2 -> 3x3: the top-left source quarter covers dst (0,0) fully, (0,1)/(1,0) half, (1,1) a quarter
    s = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    out = map_scores_to_grid(s, (2, 2), (3, 3)).view(3, 3)
    expect = torch.tensor([[4, 2, 0], [2, 1, 0], [0, 0, 0]], dtype=torch.float32) / 9
    torch.testing.assert_close(out, expect)


def test_one_hot_region_general():
    sh, sw, dh, dw = 16, 16, 9, 12
    for i, j in [(3, 5), (8, 0), (15, 7)]:
        s = torch.zeros(1, sh * sw)
        s[0, i * sw + j] = 1.0
        out = map_scores_to_grid(s, (sh, sw), (dh, dw)).view(dh, dw)
        rows = {a for a in range(dh) if a / dh < (i + 1) / sh and (a + 1) / dh > i / sh}
        cols = {b for b in range(dw) if b / dw < (j + 1) / sw and (b + 1) / dw > j / sw}
        support = {(a, b) for a, b in (out > 0).nonzero().tolist()}
        assert support == {(a, b) for a in rows for b in cols}


def test_upsampling_spreads_mass_without_duplicating():
    s = torch.arange(4.0).view(1, 4)
    out = map_scores_to_grid(s, (2, 2), (4, 4)).view(4, 4)
    expect = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], dtype=torch.float32) / 4
    torch.testing.assert_close(out, expect)


def test_identity_when_grids_match():
    s = torch.rand(5, 16 * 16, dtype=torch.float64)
    out = map_scores_to_grid(s, (16, 16), (16, 16))
    assert torch.equal(out, s.float())
    s2 = torch.rand(2, 6 * 9)
    assert torch.equal(map_scores_to_grid(s2, (6, 9), [6, 9]), s2)


@pytest.mark.parametrize("T", [1, 2, 5, 6])
def test_qwen_temporal_pairs_non_square(T):
    g = torch.Generator().manual_seed(T)
    scores = torch.rand(T, 256, generator=g)
    dst = (9, 16)  # e.g. Qwen2.5-VL 252x448 frames: 18x32 patches, 2x2 merge
    out = map_scores_to_grid(scores, (16, 16), dst, temporal_pairs=True)
    assert out.shape == ((T + 1) // 2, 9 * 16)
    torch.testing.assert_close(out, brute_force(scores, (16, 16), dst, temporal_pairs=True), rtol=1e-5, atol=1e-6)
    single = map_scores_to_grid(scores, (16, 16), dst)
    torch.testing.assert_close(out[0], torch.maximum(single[0], single[1]) if T > 1 else single[0])
    if T % 2:
        torch.testing.assert_close(out[-1], single[-1])


def test_dtype_and_device_preserved():
    s = torch.rand(2, 256).half()
    out = map_scores_to_grid(s, (16, 16), (14, 14))
    assert out.dtype == torch.float32 and out.device == s.device and out.is_contiguous()
    out = map_scores_to_grid(s, torch.tensor([16, 16]), (torch.tensor(7), 7))
    assert out.shape == (2, 49)


def test_errors_name_the_argument():
    s = torch.rand(2, 256)
    with pytest.raises(ValueError, match="src_hw"):
        map_scores_to_grid(s, (16, 15), (14, 14))
    with pytest.raises(ValueError, match="scores"):
        map_scores_to_grid(s.view(2, 16, 16), (16, 16), (14, 14))
    with pytest.raises(TypeError, match="scores"):
        map_scores_to_grid(s.numpy(), (16, 16), (14, 14))
    with pytest.raises(TypeError, match="dst_hw"):
        map_scores_to_grid(s, (16, 16), 14)
    with pytest.raises(TypeError, match="dst_hw"):
        map_scores_to_grid(s, (16, 16), (14.0, 14))
    with pytest.raises(ValueError, match="dst_hw"):
        map_scores_to_grid(s, (16, 16), (0, 14))
    with pytest.raises(ValueError, match="NaN"):
        map_scores_to_grid(torch.full((1, 256), float("nan")), (16, 16), (14, 14))
    with pytest.raises(ValueError, match="at least one frame"):
        map_scores_to_grid(torch.zeros(0, 256), (16, 16), (14, 14))
    with pytest.raises(TypeError, match="temporal_pairs"):
        map_scores_to_grid(s, (16, 16), (14, 14), temporal_pairs=1)
    with pytest.raises(TypeError, match="scores"):
        map_scores_to_grid(torch.zeros(1, 256, dtype=torch.bool), (16, 16), (14, 14))
