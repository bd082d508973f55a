"""Scout input from a backbone processor's pixel_values (LLaVA-OneVision, Qwen2-VL layouts)."""
import numpy as np
import pytest
import torch

from vista.scout import (
    build_tiny_scout,
    frames_from_pixel_values,
    frames_from_qwen_pixel_values,
    map_scores_to_grid,
)

Q = "what is the man holding?"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def scout():
    return build_tiny_scout(seed=1)


def _smooth_video(T, H, W, seed):
    """Natural-image-like frames: low-frequency content (so two resize paths agree closely)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(T, 3, 5, 7, generator=g)
    x = torch.nn.functional.interpolate(low, size=(H, W), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_llava_onevision_pixel_values_match_frames(scout):
    from transformers import LlavaOnevisionVideoProcessor

    vp = LlavaOnevisionVideoProcessor()
    vid = _smooth_video(3, 96, 128, seed=0)
    pv = vp(videos=[vid], return_tensors="pt")["pixel_values_videos"]
    assert pv.shape == (1, 3, 3, 384, 384)
    frames = frames_from_pixel_values(pv, vp.image_mean, vp.image_std, size=224)
    assert frames.shape == (3, 3, 224, 224) and frames.dtype == torch.float32
    assert frames.min() >= 0 and frames.max() <= 1
    # the scout's normalised input is close to the one made from the decoded frames
    direct_pv, via_pv = scout.preprocess(vid), scout.preprocess(frames)
    assert (direct_pv - via_pv).abs().mean() < 0.01
    a, b = scout.scores(vid, Q), scout.scores(frames, Q)
    err = (a - b).abs().max() / a.abs().max()
    assert err < 0.1, err
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99
    # a different video is far away (the tolerance above is discriminating)
    other = scout.scores(_smooth_video(3, 96, 128, seed=5), Q)
    assert (a - other).abs().max() / a.abs().max() > 3 * err


def test_frames_from_pixel_values_exact_inverse():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 20, 30, generator=g)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    pv = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(frames_from_pixel_values(pv, mean, std, size=None), x, rtol=0, atol=1e-6)
    torch.testing.assert_close(frames_from_pixel_values(pv[None], mean, std, size=None), x, rtol=0, atol=1e-6)
    torch.testing.assert_close(frames_from_pixel_values(pv.half(), torch.tensor(mean), std, size=None), x,
                               rtol=0, atol=2e-3)
    # scalar mean/std (SigLIP style 0.5/0.5), and resizing to the scout resolution
    pv2 = (x - 0.5) / 0.5
    out = frames_from_pixel_values(pv2, 0.5, 0.5, size=16)
    assert out.shape == (4, 3, 16, 16)
    ref = torch.nn.functional.interpolate(x, size=(16, 16), mode="bicubic", antialias=True).clamp(0, 1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_frames_from_pixel_values_errors():
    pv = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="one video"):
        frames_from_pixel_values(torch.zeros(2, 2, 3, 8, 8), 0.5, 0.5)
    with pytest.raises(TypeError, match="pixel_values"):
        frames_from_pixel_values(pv.to(torch.uint8), 0.5, 0.5)
    with pytest.raises(TypeError, match="pixel_values"):
        frames_from_pixel_values(pv.numpy(), 0.5, 0.5)
    with pytest.raises(ValueError, match="pixel_values"):
        frames_from_pixel_values(torch.zeros(2, 4, 8, 8), 0.5, 0.5)
    with pytest.raises(ValueError, match="image_mean"):
        frames_from_pixel_values(pv, [0.5, 0.5], 0.5)
    with pytest.raises(TypeError, match="image_std"):
        frames_from_pixel_values(pv, 0.5, "0.5")
    with pytest.raises(ValueError, match="image_std"):
        frames_from_pixel_values(pv, 0.5, [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="size"):
        frames_from_pixel_values(pv, 0.5, 0.5, size=0)


def test_qwen_patches_round_trip_and_token_rows(scout):
    from transformers import Qwen2VLVideoProcessor

    vp = Qwen2VLVideoProcessor()
    v1 = (np.random.default_rng(0).random((3, 56, 84, 3)) * 255).astype(np.uint8)  # odd T: padded to 4
    v2 = (np.random.default_rng(1).random((4, 28, 56, 3)) * 255).astype(np.uint8)
    out = vp(videos=[v1, v2], return_tensors="pt", do_resize=False, do_sample_frames=False,
             cap_pixels_per_frame=False)
    thw = out["video_grid_thw"]
    assert thw.tolist() == [[2, 4, 6], [2, 2, 4]]
    frames = frames_from_qwen_pixel_values(out["pixel_values_videos"], thw, vp.image_mean, vp.image_std, size=None)
    ref1 = torch.from_numpy(v1).permute(0, 3, 1, 2).float() / 255
    ref1 = torch.cat([ref1, ref1[-1:]])  # the processor repeats the last frame to fill the pair
    ref2 = torch.from_numpy(v2).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(frames[0], ref1, rtol=0, atol=1e-5)
    torch.testing.assert_close(frames[1], ref2, rtol=0, atol=1e-5)
    # scout scores for the recovered frames, on Qwen's merged token grid: one row per token frame
    small = frames_from_qwen_pixel_values(out["pixel_values_videos"], thw, vp.image_mean, vp.image_std, size=224)
    assert small[0].shape == (4, 3, 224, 224)
    s = scout.scores(small[0], Q)
    t, h, w = thw[0].tolist()
    tok = map_scores_to_grid(s, scout.grid_hw, (h // 2, w // 2), temporal_pairs=True)
    assert tok.shape == (t, (h // 2) * (w // 2))


def test_qwen_patches_errors():
    pv = torch.zeros(48, 3 * 2 * 14 * 14)
    with pytest.raises(ValueError, match="video_grid_thw"):
        frames_from_qwen_pixel_values(pv, torch.tensor([[2, 4, 4]]), 0.5, 0.5)  # 32 != 48
    with pytest.raises(ValueError, match="video_grid_thw"):
        frames_from_qwen_pixel_values(pv, torch.tensor([2, 4, 6]), 0.5, 0.5)
    with pytest.raises(ValueError, match="pixel_values_videos"):
        frames_from_qwen_pixel_values(pv, torch.tensor([[2, 4, 6]]), 0.5, 0.5, patch_size=16)
    with pytest.raises(TypeError, match="pixel_values_videos"):
        frames_from_qwen_pixel_values(pv.long(), torch.tensor([[2, 4, 6]]), 0.5, 0.5)
    with pytest.raises(ValueError, match="merge_size"):
        frames_from_qwen_pixel_values(torch.zeros(2 * 3 * 6, 1176), torch.tensor([[2, 3, 6]]), 0.5, 0.5)
