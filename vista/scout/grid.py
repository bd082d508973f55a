"""Moving scout scores from the scout's patch grid onto a backbone's token grid.

The scout (BLIP-2 ViT, 224 px, patch 14) scores a 16×16 patch grid; backbones tokenize frames on
their own grids (LLaVA-OneVision: 14×14 after pooling; Qwen2.5-VL: a non-square grid whose tokens
each cover two consecutive frames). :func:`map_scores_to_grid` resamples by *area*: each source
patch's score is treated as mass spread uniformly over its cell, and every destination token
receives the mass of the part of the image it covers. Mass is conserved, every destination token
gets a score (no token is sampled twice, none skipped), and equal grids map to themselves exactly.
"""
from __future__ import annotations

import operator
from typing import Sequence, Tuple

import torch

__all__ = ["map_scores_to_grid", "area_weights"]


def _check_hw(name: str, hw) -> Tuple[int, int]:
    """Validate a (height, width) pair of positive ints (Python, NumPy or 0-d integer tensors)."""
    if isinstance(hw, torch.Tensor):
        hw = hw.tolist()
    if not isinstance(hw, (tuple, list, torch.Size)) or len(hw) != 2:
        raise TypeError(f"{name} must be a (height, width) pair of ints, got {hw!r}")
    out = []
    for v in hw:
        if isinstance(v, bool):
            raise TypeError(f"{name} must be a (height, width) pair of ints, got {hw!r}")
        try:
            v = operator.index(v)
        except TypeError:
            raise TypeError(f"{name} must be a (height, width) pair of ints, got {hw!r}") from None
        if v < 1:
            raise ValueError(f"{name} entries must be >= 1, got {tuple(hw)!r}")
        out.append(int(v))
    return out[0], out[1]


def area_weights(src: int, dst: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """1-D area-overlap matrix ``W`` of shape (dst, src).

    ``W[a, i]`` is the fraction of source cell ``i`` (the interval [i/src, (i+1)/src)) that falls in
    destination cell ``a`` ([a/dst, (a+1)/dst)). Every column sums to 1, so ``W @ v`` conserves
    ``v.sum()``. Computed exactly in integer units of 1/(src·dst).
    """
    if src < 1 or dst < 1:
        raise ValueError(f"grid sizes must be >= 1, got src={src}, dst={dst}")
    a = torch.arange(dst, dtype=torch.int64, device=device).view(dst, 1)
    i = torch.arange(src, dtype=torch.int64, device=device).view(1, src)
    # destination cell a spans [a*src, (a+1)*src), source cell i spans [i*dst, (i+1)*dst)
    lo = torch.maximum(a * src, i * dst)
    hi = torch.minimum((a + 1) * src, (i + 1) * dst)
    overlap = (hi - lo).clamp_min(0)
    return overlap.to(dtype) / dst


def map_scores_to_grid(
    scores: torch.Tensor,
    src_hw: Sequence[int],
    dst_hw: Sequence[int],
    temporal_pairs: bool = False,
) -> torch.Tensor:
    """Resample per-patch scores from the scout's grid to a backbone's token grid.

    Args:
        scores: (T, P_src) float tensor, ``P_src = src_h * src_w``, patches in raster order
            (row-major), one row per frame.
        src_hw: (src_h, src_w) of the scout's patch grid, e.g. ``scout.grid_hw`` = (16, 16).
        dst_hw: (h, w) of the backbone's token grid (may be non-square).
        temporal_pairs: the backbone merges two consecutive frames into one token (Qwen2.5-VL,
            temporal patch size 2). Frames are paired (0,1), (2,3), ...; each token takes the max
            over its pair of the area-resampled scores; with odd T the last frame stands alone.

    Returns:
        (T', h*w) float32 on ``scores.device``, raster order, T' = T, or ceil(T/2) when
        ``temporal_pairs``. Each destination token holds the score mass of the source area it
        covers, so (without temporal pairing) each row's sum equals the source row's sum.
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor of shape (T, P_src), got {type(scores).__name__}")
    if not (scores.is_floating_point() or scores.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"scores must be a real-valued tensor, got dtype {scores.dtype}")
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (T, P_src), got shape {tuple(scores.shape)}")
    sh, sw = _check_hw("src_hw", src_hw)
    dh, dw = _check_hw("dst_hw", dst_hw)
    T, P = scores.shape
    if P != sh * sw:
        raise ValueError(
            f"scores has {P} patches per frame but src_hw={sh}x{sw} needs {sh * sw}"
        )
    if T < 1:
        raise ValueError("scores must hold at least one frame (T >= 1)")
    if not isinstance(temporal_pairs, bool):
        raise TypeError(f"temporal_pairs must be a bool, got {type(temporal_pairs).__name__}")
    if scores.is_floating_point() and not torch.isfinite(scores).all():
        raise ValueError("scores contains NaN or inf")

    src = scores.to(torch.float64).view(T, sh, sw)
    if (sh, sw) == (dh, dw):
        out = src
    else:
        wh = area_weights(sh, dh, device=scores.device)  # (dh, sh)
        ww = area_weights(sw, dw, device=scores.device)  # (dw, sw)
        out = torch.einsum("ai,tij,bj->tab", wh, src, ww)
    out = out.reshape(T, dh * dw)
    if temporal_pairs:
        if T % 2:
            out = torch.cat([out, out[-1:]], dim=0)
        out = out.view(-1, 2, dh * dw).amax(dim=1)
    return out.to(torch.float32).contiguous()
