"""Reference reduction of Q-Former cross-attention to patch scores (PAPER eq. 6)."""
from __future__ import annotations

import torch

from .._guard import all_finite


def scout_score_reduce_torch(attn: torch.Tensor) -> torch.Tensor:
    """s[b, p] = sum_queries max_heads attn[b, h, q, p].

    Args:
        attn: (B, H, Q, P) float tensor (cross-attention probabilities).
    Returns:
        (B, P) float32.
    """
    if not isinstance(attn, torch.Tensor):
        raise TypeError(f"attn must be a torch.Tensor of shape (B, heads, queries, patches), got {type(attn).__name__}")
    if not attn.is_floating_point():
        raise TypeError(f"attn must be a floating tensor, got dtype {attn.dtype}")
    if attn.dim() != 4:
        raise ValueError(f"attn must have shape (B, heads, queries, patches), got shape {tuple(attn.shape)}")
    if min(attn.shape[1:]) < 1:
        raise ValueError(f"attn needs at least one head, query and patch, got shape {tuple(attn.shape)}")
    if not all_finite(attn):
        raise ValueError("attn contains NaN or inf values")
    return attn.float().amax(1).sum(1)
