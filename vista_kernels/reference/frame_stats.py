"""Reference frame statistics: frame means and the cosine similarity of consecutive frame means
(segmentation signal, PAPER eq. 1-2)."""
from __future__ import annotations

from typing import Optional

import torch

from ..checks import check_tokens, check_valid
from ._common import token_chunks

_EPS = 1e-12


def frame_means_torch(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(F, D) fp32 mean of each frame's valid tokens (a frame with none gives a zero vector)."""
    x = check_tokens(x)
    if valid is None:
        return x.float().mean(1)
    valid = check_valid(valid, x)
    w = valid.to(torch.float32)
    s = torch.bmm(w[:, None, :], x.float()).squeeze(1)  # masked sum without an (F, N, D) temporary
    return s / w.sum(1, keepdim=True).clamp(min=1.0)


def cosine_of_means(f: torch.Tensor) -> torch.Tensor:
    """(F-1,) cosines of consecutive rows of ``f`` (F, D); each norm clamped at 1e-12."""
    a, b = f[:-1], f[1:]
    dot = (a * b).sum(-1)
    den = a.norm(dim=-1).clamp(min=_EPS) * b.norm(dim=-1).clamp(min=_EPS)
    return dot / den


def frame_cosine_torch(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """cos(mean x[t], mean x[t+1]) for t = 0..F-2.

    Args:
        x: (F, N, D) float32/float16/bfloat16 tokens.
        valid: optional (F, N) bool mask; means are over valid tokens only.
    Returns:
        (F-1,) float32 (empty for a single frame). Each norm is clamped at 1e-12, so a zero mean gives cosine 0.
    """
    return cosine_of_means(frame_means_torch(x, valid))


def frame_stats_torch(x: torch.Tensor, valid: Optional[torch.Tensor] = None):
    """(means (F, D) fp32 over valid tokens, cosine (F-1,) fp32 of consecutive means)."""
    if x.shape[0] == 0:
        f = torch.zeros((0, x.shape[2]), dtype=torch.float32, device=x.device)
    elif valid is None:  # chunk by chunk (cache-resident on CPU)
        f = torch.cat([x[sl].float().mean(1) for sl in token_chunks(x.shape[0], x.shape[1], x.shape[2], x.device)])
    else:
        f = frame_means_torch(x, valid)
    return f, cosine_of_means(f)
