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


def _label_boxes(fig, labels):
    r = fig.canvas.get_renderer()
    return [lab.get_window_extent(r) for lab in labels], r


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("F,T,h,w,fh,fw,crowded", [
    (32, 16, 8, 12, 224, 336, True),  # Qwen2.5-VL: a token frame per pair of frames, non-square grid
    (64, 32, 18, 32, 252, 448, True),  # Qwen, 16 of 32 shown: 2-digit frame pairs, 3-digit token counts
    (31, 16, 6, 4, 128, 64, True),  # odd F (tile 0 covers one frame, the last a pair), tall frames
    (32, 32, 14, 14, 96, 128, False),  # LLaVA: 14x14, 16 of 32 shown
    (8, 8, 14, 14, 96, 128, False),
])
def test_tile_labels_never_overlap(tmp_path, F, T, h, w, fh, fw, crowded):
    """Tile labels are sized to the tile: none overlaps another label or a tile, on any layout."""
    from vista.viz import _LABEL_FS, _LABEL_MIN_FS, _draw_token_map

    frames = synthetic_video(F, height=fh, width=fw).frames
    p = _pruned(T, h=h, w=w)
    fig, info, labels = _draw_token_map(tmp_path / "m.png", frames, p, (T, h, w))
    assert len(labels) == len(info.shown) == min(T, 16)
    assert (info.width, info.height) == token_map_size(len(info.shown), (fh, fw))
    boxes, r = _label_boxes(fig, labels)
    tiles = [lab.axes.get_window_extent(r) for lab in labels]
    W, H = fig.bbox.width, fig.bbox.height
    for i, (b, tile) in enumerate(zip(boxes, tiles)):
        assert b.width > 0 and b.height > 0
        assert _LABEL_MIN_FS <= labels[i].get_fontsize() <= _LABEL_FS
        assert tile.x0 <= b.x0 and b.x1 <= tile.x1  # within its own tile's width
        assert b.y1 <= tile.y0 and 0 <= b.y0 and b.y1 <= H and 0 <= b.x0 and b.x1 <= W
        for j in range(len(boxes)):
            assert j == i or not _overlap(b, boxes[j]), (labels[i].get_text(), labels[j].get_text())
            assert not _overlap(b, tiles[j])  # nor runs into a tile of the next row
    assert all(("\n" in lab.get_text()) == crowded for lab in labels)  # one line where it fits
    if crowded:  # ... and here the one-line wording at full size would run into the neighbours
        wide = max((lab.get_text() for lab in labels), key=len).replace("\n", "  ")
        for lab in labels:
            lab.set_text(wide)
            lab.set_fontsize(_LABEL_FS)
        boxes, _ = _label_boxes(fig, labels)
        assert any(_overlap(a, b) for a, b in zip(boxes, boxes[1:]))
