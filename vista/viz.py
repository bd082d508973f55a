"""Token-map pictures: which visual tokens Vista kept, and how the budget was spread over time.

``save_token_map(path, frames, pruned, grid)`` writes a PNG (matplotlib, Agg; no display needed):

* top: a strip of sampled frames (up to ``max_frames``, ``cols`` a row). On each frame the token
  grid is overlaid: kept tokens are outlined -- foveal tokens chosen by the semantic scout in
  amber, DPC-KNN anchor tokens in cyan -- and dropped tokens are dimmed. Each frame is labelled
  (token frame, video frames it covers, segment, kept/foveal counts) on one line where that fits the
  tile, else on two (Qwen2.5-VL pairs), at one font size for all tiles, so labels never overlap.
* bottom: a bar chart of every frame's token budget, coloured by segment (darker part: foveal
  tokens, lighter part: anchors), with each segment's query relevance written above it and the
  uniform budget (B_total / T) as a dashed line.

The picture's pixel size is fixed by its layout (``token_map_size``), not by the content.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

FOVEAL_RGB = (255, 176, 0)  # amber: scout (foveal) tokens
ANCHOR_RGB = (0, 210, 255)  # cyan: DPC-KNN anchors
DIM = 0.28  # brightness kept by dropped tokens

# layout, inches
_TILE_W = 2.0
_MARGIN = 0.25
_TITLE_H = 0.75
_LABEL_H = 0.28
_LEGEND_H = 0.35
_CHART_H = 2.6
_MIN_W = 6.5  # room for the legend and the chart title when few frames are shown
# tile labels: the largest font that fits the tile's width and the label band (one line if it fits
# at a readable size, else two lines, else two shorter lines), so neighbouring labels never overlap
_LABEL_FS = 6.5  # points
_LABEL_MIN_FS = 4.0
_LABEL_GAP = 0.04  # inches: between a tile and its label, and kept clear on each side of a label


@dataclass
class TokenMap:
    """What ``save_token_map`` drew: the file, its pixel size and the frames shown."""

    path: str
    width: int
    height: int
    shown: Tuple[int, ...]


def _grid_of(N: int, grid) -> Tuple[int, int]:
    if grid is None:
        s = int(round(math.sqrt(N)))
        if s * s != N:
            raise ValueError(f"grid: {N} tokens a frame is not a square grid; pass grid=(h, w)")
        return s, s
    if len(grid) == 3:  # (T, h, w) as in last_prune_info
        grid = grid[1:]
    if len(grid) != 2:
        raise ValueError(f"grid must be (h, w) or (T, h, w), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1 or h * w != N:
        raise ValueError(f"grid {h}x{w} = {h * w} does not match {N} tokens a frame")
    return h, w


def _check_frames(frames) -> np.ndarray:
    frames = getattr(frames, "frames", frames)  # a vista.video.Video
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"frames must be a (T, H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    return arr


def shown_frames(T: int, max_frames: int) -> Tuple[int, ...]:
    """Indices (token frames) shown in the strip: all of them, or ``max_frames`` spread evenly."""
    if T <= max_frames:
        return tuple(range(T))
    if max_frames == 1:
        return ((T - 1) // 2,)
    return tuple(int(i) for i in np.round(np.linspace(0, T - 1, max_frames)).astype(int))


def token_map_size(num_shown: int, frame_hw: Tuple[int, int], cols: int = 8, dpi: int = 100) -> Tuple[int, int]:
    """(width, height) in pixels of the picture for ``num_shown`` frames of aspect ``frame_hw``."""
    c = max(1, min(cols, num_shown))
    rows = math.ceil(num_shown / c)
    tile_h = _TILE_W * frame_hw[0] / frame_hw[1]
    w_in = max(_MIN_W, 2 * _MARGIN + c * _TILE_W)
    h_in = _TITLE_H + rows * (tile_h + _LABEL_H) + _LEGEND_H + _CHART_H
    return int(round(w_in * dpi)), int(round(h_in * dpi))


def compose_tile(frame: np.ndarray, keep: np.ndarray, foveal: np.ndarray, h: int, w: int) -> np.ndarray:
    """One frame with its token grid drawn in: dropped cells dimmed, kept cells outlined.

    keep, foveal: (h*w,) bool in raster order. Returns an RGB uint8 image of (h*c, w*c) pixels.
    """
    from PIL import Image

    c = max(6, 196 // max(h, w))
    img = np.asarray(Image.fromarray(frame).resize((w * c, h * c), Image.BILINEAR), dtype=np.float32)
    keep = np.asarray(keep, dtype=bool).reshape(h, w)
    fov = np.asarray(foveal, dtype=bool).reshape(h, w) & keep
    cell = np.ones((c, c), dtype=np.float32)
    shade = np.kron(np.where(keep, 1.0, DIM).astype(np.float32), cell)
    img *= shade[..., None]
    b = max(1, c // 6)
    border = np.zeros((c, c), dtype=bool)
    border[:b, :] = border[-b:, :] = border[:, :b] = border[:, -b:] = True
    for mask, rgb in ((fov, FOVEAL_RGB), (keep & ~fov, ANCHOR_RGB)):
        if mask.any():
            m = np.kron(mask, border).astype(bool)
            img[m] = rgb
    return np.clip(img, 0, 255).astype(np.uint8)


def save_token_map(
    path,
    frames,
    pruned,
    grid: Optional[Sequence[int]] = None,
    *,
    question: Optional[str] = None,
    title: Optional[str] = None,
    note: Optional[str] = None,
    max_frames: int = 16,
    cols: int = 8,
    dpi: int = 100,
) -> TokenMap:
    """Draw the token map of one pruned video and write it to ``path`` (PNG).

    Args:
        path: output file (parent folders are created).
        frames: (F, H, W, 3) uint8 RGB frames (or a ``vista.video.Video``). F may differ from the
            pruned video's T (e.g. Qwen2.5-VL merges 2 frames per token frame): token frame t
            is drawn on frame ``t * F // T``.
        pruned: a ``vista.PrunedVideo`` (keep, foveal: (T, N); budgets, segment_id: (T,);
            relevance: (S,)).
        grid: (h, w) or (T, h, w) of the token grid, h*w = N; default: square.
        question: written in the title.
        note: an extra line under the title's counts (e.g. that nothing was pruned).
        max_frames: at most this many frames in the strip (spread evenly); the chart shows all.
    Returns:
        TokenMap with the path and pixel size.
    """
    fig, info, _ = _draw_token_map(path, frames, pruned, grid, question=question, title=title, note=note,
                                   max_frames=max_frames, cols=cols, dpi=dpi)
    path = info.path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", facecolor="white")
    return info


@dataclass
class _PrunedArrays:
    """The parts of a PrunedVideo the token map draws, as host numpy arrays."""

    keep: np.ndarray  # (T, N) bool
    foveal: np.ndarray  # (T, N) bool
    budgets: np.ndarray  # (T,) int64
    seg: np.ndarray  # (T,) int64 segment id
    rel: np.ndarray  # (S,) float64 segment relevance

    @property
    def T(self) -> int:
        return self.keep.shape[0]

    @property
    def N(self) -> int:
        return self.keep.shape[1]


def _pruned_arrays(pruned) -> _PrunedArrays:
    """Read and check (TypeError / ValueError) the arrays of a ``vista.PrunedVideo``."""
    for name in ("keep", "foveal", "budgets", "segment_id", "relevance"):
        if not hasattr(pruned, name):
            raise TypeError(f"pruned must be a vista.PrunedVideo (missing .{name}), got {type(pruned).__name__}")
    keep = np.asarray(pruned.keep.detach().cpu() if hasattr(pruned.keep, "detach") else pruned.keep, dtype=bool)
    foveal = np.asarray(pruned.foveal.detach().cpu() if hasattr(pruned.foveal, "detach") else pruned.foveal, dtype=bool)
    budgets = np.asarray(_np(pruned.budgets), dtype=np.int64)
    seg = np.asarray(_np(pruned.segment_id), dtype=np.int64)
    rel = np.asarray(_np(pruned.relevance), dtype=np.float64).reshape(-1)
    if keep.ndim != 2 or foveal.shape != keep.shape:
        raise ValueError(f"pruned.keep and pruned.foveal must be (T, N), got {keep.shape} and {foveal.shape}")
    T = keep.shape[0]
    if budgets.shape != (T,) or seg.shape != (T,):
        raise ValueError(f"pruned.budgets and pruned.segment_id must be ({T},)")
    return _PrunedArrays(keep, foveal, budgets, seg, rel)


def _draw_token_map(path, frames, pruned, grid=None, *, question=None, title=None, note=None,
                    max_frames=16, cols=8, dpi=100):
    """Build (not save) the token-map figure: (Figure, TokenMap, the tile labels' Text objects)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = _check_frames(frames)
    pa = _pruned_arrays(pruned)
    h, w = _grid_of(pa.N, grid)
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be an int >= 1, got {max_frames!r}")
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols must be an int >= 1, got {cols!r}")
    shown = shown_frames(pa.T, max_frames)
    W_px, H_px = token_map_size(len(shown), frames.shape[1:3], cols, dpi)
    W_in, H_in = W_px / dpi, H_px / dpi

    fig = Figure(figsize=(W_in, H_in), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    _draw_title(fig, H_in, pa, title, question, note)
    labels = _draw_strip(fig, W_in, H_in, frames, pa, shown, h, w, cols)
    _draw_legend(fig, H_in)
    _draw_budget_chart(fig, W_in, H_in, pa, frames.shape[0], shown)
    return fig, TokenMap(path=os.fspath(path), width=W_px, height=H_px, shown=shown), labels


def _draw_title(fig, H_in, pa: _PrunedArrays, title, question, note) -> None:
    """The title band: the title, the (shortened) question, the kept-token counts and the note."""
    T, N, rel = pa.T, pa.N, pa.rel
    kept_total = int(pa.keep.sum())
    head = title or "Vista token map"
    sub = f"{kept_total} of {T * N} visual tokens kept ({100.0 * kept_total / (T * N):.1f}%), {T} frames x {N} tokens, {len(rel)} segment{'s' if len(rel) != 1 else ''}"
    if question:
        q = question if len(question) <= 110 else question[:107] + "..."
        sub = f"Q: {q}\n{sub}"
    if note:
        n = " ".join(str(note).split())
        sub = f"{sub}\n{n if len(n) <= 130 else n[:127] + '...'}"
    fig.text(0.5, 1 - 0.08 / H_in, head, ha="center", va="top", fontsize=12, weight="bold")
    fig.text(0.5, 1 - 0.28 / H_in, sub, ha="center", va="top", fontsize=8, linespacing=1.3)


def _draw_strip(fig, W_in, H_in, frames, pa: _PrunedArrays, shown, h, w, cols):
    """The frame strip (centred, ``cols`` tiles a row): each shown token frame with its token grid
    (:func:`compose_tile`), framed in its segment's colour, and its label fitted below
    (:func:`_fit_labels`). Returns the labels' Text objects."""
    from matplotlib.transforms import offset_copy

    T, N, keep, foveal, seg = pa.T, pa.N, pa.keep, pa.foveal, pa.seg
    F = frames.shape[0]
    frame_hw = frames.shape[1:3]
    c = max(1, min(cols, len(shown)))
    tile_h = _TILE_W * frame_hw[0] / frame_hw[1]
    y_top = H_in - _TITLE_H
    labels, label_variants = [], []
    for k, t in enumerate(shown):
        r, col = divmod(k, c)
        x0 = (W_in - c * _TILE_W) / 2 + col * _TILE_W  # the strip is centred
        y0 = y_top - (r + 1) * (tile_h + _LABEL_H) + _LABEL_H
        ax = fig.add_axes((x0 / W_in, y0 / H_in, _TILE_W / W_in, tile_h / H_in))
        fr = frames[min(F - 1, t * F // T)]
        ax.imshow(compose_tile(fr, keep[t], foveal[t], h, w), interpolation="nearest", aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_color(_seg_color(int(seg[t])))
            s.set_linewidth(2.0)
        nf = int((foveal[t] & keep[t]).sum())
        variants = _label_variants(t, F, T, int(seg[t]), int(keep[t].sum()), N, nf)
        below = offset_copy(ax.transAxes, fig=fig, y=-_LABEL_GAP, units="inches")
        labels.append(ax.text(0.5, 0.0, variants[0], transform=below, ha="center", va="top",
                              fontsize=_LABEL_FS, linespacing=1.15))
        label_variants.append(variants)
    _fit_labels(fig, labels, label_variants, _TILE_W - 2 * _LABEL_GAP, _LABEL_H - 1.5 * _LABEL_GAP)
    return labels


def _draw_legend(fig, H_in) -> None:
    """The legend band between the strip and the chart (foveal, anchor, dropped tokens)."""
    from matplotlib.patches import Patch

    y_leg = _CHART_H + _LEGEND_H / 2
    handles = [
        Patch(facecolor="none", edgecolor=np.array(FOVEAL_RGB) / 255, linewidth=2, label="foveal token (scout)"),
        Patch(facecolor="none", edgecolor=np.array(ANCHOR_RGB) / 255, linewidth=2, label="anchor token (DPC-KNN)"),
        Patch(facecolor=(0.28, 0.28, 0.28), label="dropped token (dimmed)"),
    ]
    fig.legend(handles=handles, loc="center", bbox_to_anchor=(0.5, y_leg / H_in), ncol=3, fontsize=8, frameon=False)


def _draw_budget_chart(fig, W_in, H_in, pa: _PrunedArrays, F, shown) -> None:
    """The per-frame budget bars (coloured by segment; solid: foveal, light: anchors), the
    uniform budget line, each segment's relevance above it, and marks under the frames drawn in
    the strip when not all are."""
    from matplotlib.ticker import MaxNLocator

    T, budgets, seg, rel = pa.T, pa.budgets, pa.seg, pa.rel
    ax = fig.add_axes((0.75 / W_in, 0.5 / H_in, (W_in - 1.0) / W_in, (_CHART_H - 0.85) / H_in))
    xs = np.arange(T)
    colors = [_seg_color(int(s)) for s in seg]
    nfov = (pa.foveal & pa.keep).sum(axis=1)
    ax.bar(xs, nfov, width=0.85, color=colors, edgecolor="none")
    ax.bar(xs, budgets - nfov, bottom=nfov, width=0.85, color=colors, alpha=0.45, edgecolor="none")
    if T > 0:
        ax.axhline(budgets.sum() / T, color="0.3", linestyle="--", linewidth=0.8)
        ax.text(-0.5, budgets.sum() / T, "uniform budget ", va="bottom", ha="left", fontsize=6.5, color="0.3")
    ymax = max(1, int(budgets.max()) if T else 1)
    ax.set_ylim(0, ymax * 1.28)
    ax.set_xlim(-0.6, T - 0.4)
    for m in range(len(rel)):
        idx = np.nonzero(seg == m)[0]
        if idx.size == 0:
            continue
        lo, hi = idx.min(), idx.max()
        if hi > lo or T <= 24:
            ax.text((lo + hi) / 2, ymax * 1.06, f"S{m}\n{rel[m]:.2f}" if (hi - lo) < 3 else f"S{m}  rel {rel[m]:.2f}",
                    ha="center", va="bottom", fontsize=6.5, color=_seg_color(m))
    ax.set_xlabel("frame" if F == T else f"token frame t (each covers {F / T:.3g} video frames)", fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("token budget", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("per-frame budgets by segment (solid: foveal, light: anchors; text: segment relevance)",
                 fontsize=8)
    for t in (shown if len(shown) < T else ()):  # mark the frames drawn in the strip
        ax.plot([t], [0], marker="^", color="black", markersize=3, clip_on=False)


def _label_variants(t: int, F: int, T: int, seg: int, kept: int, N: int, nf: int) -> Tuple[str, ...]:
    """A tile's label, longest first: one line, two lines, two shorter lines."""
    lo, hi = t * F // T, max(t * F // T, (t + 1) * F // T - 1)
    where = f"t={t}" if F == T else (f"t={t} (frame {lo})" if hi == lo else f"t={t} (frames {lo}-{hi})")
    short = f"t={t}" if F == T else (f"t={t} (fr {lo})" if hi == lo else f"t={t} (fr {lo}-{hi})")
    stats = f"seg {seg}  kept {kept}/{N} ({nf} foveal)"
    return (f"{where}  {stats}", f"{where}\n{stats}", f"{short}\n{stats}", f"{short}\ns{seg} {kept}/{N} ({nf} fov)")


def _fit_labels(fig, labels, variants, max_w: float, max_h: float) -> None:
    """Give every label the same wording and font size: the first variant (one line only at
    ``_LABEL_FS``) whose largest label fits ``max_w`` x ``max_h`` inches at a size >= ``_LABEL_MIN_FS``."""
    if not labels:
        return
    renderer = fig.canvas.get_renderer()
    dpi = fig.dpi

    def fits(fs):
        for lab in labels:
            lab.set_fontsize(fs)
        boxes = [lab.get_window_extent(renderer) for lab in labels]
        return max(b.width for b in boxes) <= max_w * dpi and max(b.height for b in boxes) <= max_h * dpi

    n = len(variants[0])
    for i in range(n):
        for lab, v in zip(labels, variants):
            lab.set_text(v[i])
        lowest = _LABEL_FS if i == 0 else _LABEL_MIN_FS
        fs = _LABEL_FS
        while fs >= lowest - 1e-9:
            if fits(fs):
                return
            fs = round(fs - 0.25, 2)
    # nothing fits (absurdly long numbers): the shortest wording, shrunk until it does
    fs = _LABEL_MIN_FS
    while fs > 1.0 and not fits(fs):
        fs = round(fs - 0.25, 2)


def _np(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


_TAB10 = [
    (0.122, 0.467, 0.706), (1.0, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133), (0.090, 0.745, 0.812),
]


def _seg_color(m: int):
    return _TAB10[m % len(_TAB10)]


__all__ = ["ANCHOR_RGB", "FOVEAL_RGB", "TokenMap", "compose_tile", "save_token_map", "shown_frames", "token_map_size"]
