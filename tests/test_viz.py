"""vista.viz: the token-map PNG (frames with kept tokens outlined, budget chart)."""
import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

import vista  # noqa: E402
from vista.video import synthetic_video  # noqa: E402
from vista.viz import ANCHOR_RGB, DIM, FOVEAL_RGB, compose_tile, save_token_map, shown_frames, token_map_size  # noqa: E402


def _pruned(T=8, h=14, w=14, with_scout=True, seed=0):
    """A real PrunedVideo on three synthetic scenes (so there are several segments)."""
    g = torch.Generator().manual_seed(seed)
    D = 16
    scenes = torch.randn(3, h * w, D, generator=g)
    cut = [min(2, 3 * t // T) for t in range(T)]
    x = torch.stack([scenes[c] + 0.2 * torch.randn(h * w, D, generator=g) for c in cut])
    q = scenes[1].mean(0)
    s = torch.rand(T, h * w, generator=g) if with_scout else None
    return vista.prune_video(x, q, s, vista.VistaConfig(retention=0.2))


def _count(img, rgb, tol=40):
    return int((np.abs(img.astype(int) - np.array(rgb)).sum(-1) < tol).sum())


def test_token_map_png(tmp_path):
    frames = synthetic_video(8, height=96, width=128).frames
    p = _pruned(8)
    assert len(p.relevance) >= 2  # the picture has segments to colour
    out = save_token_map(tmp_path / "sub" / "map.png", frames, p, (14, 14), question="what is red?")
    img = np.asarray(Image.open(out.path).convert("RGB"))
    # 8 frames in one row of 2-inch tiles + margins at 100 dpi; fixed layout height
    assert (out.width, out.height) == (1650, 548) == token_map_size(8, (96, 128))
    assert img.shape == (548, 1650, 3)
    assert img.std() > 20  # not blank
    assert _count(img, FOVEAL_RGB) > 200 and _count(img, ANCHOR_RGB) > 50
    assert out.shown == tuple(range(8))


def test_token_map_without_scout_has_no_foveal_outline(tmp_path):
    frames = synthetic_video(4, height=64, width=64).frames
    p = _pruned(4, with_scout=False)
    assert not p.foveal.any()
    out = save_token_map(tmp_path / "m.png", frames, p)  # square grid by default
    img = np.asarray(Image.open(out.path).convert("RGB"))
    tiles = img[: int(0.75 * 100) + 210]  # title + the row of tiles, above the legend and chart
    assert _count(tiles, FOVEAL_RGB, tol=30) == 0
    assert _count(tiles, ANCHOR_RGB, tol=30) > 50


def test_many_frames_shows_a_subset(tmp_path):
    frames = synthetic_video(12, height=48, width=64).frames
    p = _pruned(12, h=6, w=6)
    out = save_token_map(tmp_path / "m.png", frames, p, (6, 6), max_frames=5, cols=3)
    assert out.shown == shown_frames(12, 5) == (0, 3, 6, 8, 11)
    assert (out.width, out.height) == token_map_size(5, (48, 64), cols=3) == (650, 726)  # 2 rows of 3
    assert Image.open(out.path).size == (out.width, out.height)


def test_fewer_token_frames_than_frames(tmp_path):
    """Qwen2.5-VL: one token frame per pair of video frames."""
    frames = synthetic_video(8, height=32, width=32).frames
    p = _pruned(4, h=4, w=6)
    out = save_token_map(tmp_path / "q.png", frames, p, (4, 4, 6))
    assert Image.open(out.path).size == token_map_size(4, (32, 32))


def test_single_frame_keeps_a_readable_width(tmp_path):
    frames = synthetic_video(1, height=32, width=64).frames
    p = _pruned(1)
    out = save_token_map(tmp_path / "one.png", frames, p)
    assert (out.width, out.height) == token_map_size(1, (32, 64)) == (650, 498)
    assert Image.open(out.path).size == (650, 498)


def test_note_line_keeps_the_layout(tmp_path):
    """``note`` (e.g. the all-kept map of retention 1.0) adds a subtitle line, not pixels."""
    frames = synthetic_video(4, height=48, width=64).frames
    p = vista.prune_video(torch.randn(4, 36, 8), torch.randn(8), None, vista.VistaConfig(retention=1.0))
    assert p.keep.all()
    plain = save_token_map(tmp_path / "a.png", frames, p, (6, 6), question="q?")
    noted = save_token_map(tmp_path / "b.png", frames, p, (6, 6), question="q?",
                           note="retention 1.0: nothing pruned -- segments and relevance not computed " * 3)
    a, b = (np.asarray(Image.open(m.path).convert("L")) for m in (plain, noted))
    assert a.shape == b.shape == (noted.height, noted.width)
    title = int(0.75 * 100)  # the note is drawn in the title band only
    assert (a[:title] != b[:title]).any() and (a[title:] == b[title:]).all()


def test_compose_tile_dims_and_outlines():
    frame = np.full((28, 28, 3), 200, dtype=np.uint8)
    keep = np.zeros(4, bool)
    keep[[0, 3]] = True
    foveal = np.zeros(4, bool)
    foveal[0] = True
    tile = compose_tile(frame, keep, foveal, 2, 2)
    c = tile.shape[0] // 2
    assert tile.shape == (2 * c, 2 * c, 3)
    # dropped cells (1, 2) are dimmed everywhere
    assert np.all(np.abs(tile[:c, c:].astype(int) - round(200 * DIM)) <= 1)
    assert np.all(np.abs(tile[c:, :c].astype(int) - round(200 * DIM)) <= 1)
    # kept cells: border in the stream's colour, centre untouched
    assert tuple(tile[0, 0]) == FOVEAL_RGB and tuple(tile[c, c]) == ANCHOR_RGB
    assert tuple(tile[c // 2, c // 2]) == (200, 200, 200)
    assert tuple(tile[c + c // 2, c + c // 2]) == (200, 200, 200)


def test_bad_inputs(tmp_path):
    frames = synthetic_video(4, height=32, width=32).frames
    p = _pruned(4)
    with pytest.raises(ValueError, match="does not match"):
        save_token_map(tmp_path / "x.png", frames, p, (13, 14))
    with pytest.raises(ValueError, match="frames"):
        save_token_map(tmp_path / "x.png", frames[0], p)
    with pytest.raises(TypeError, match="PrunedVideo"):
        save_token_map(tmp_path / "x.png", frames, object())
    with pytest.raises(ValueError, match="max_frames"):
        save_token_map(tmp_path / "x.png", frames, p, max_frames=0)
    p2 = _pruned(2, h=3, w=5)
    with pytest.raises(ValueError, match="square"):
        save_token_map(tmp_path / "x.png", frames, p2)
