"""Reference reduction of Q-Former cross-attention to patch scores (PAPER eq. 6)."""
from __future__ import annotations

import torch

from ..checks import check_attn


def scout_score_reduce_torch(attn: torch.Tensor) -> torch.Tensor:
    """s[b, p] = sum_queries max_heads attn[b, h, q, p].

    Args:
        attn: (B, H, Q, P) float tensor (cross-attention probabilities).
    Returns:
        (B, P) float32.
    """
    attn = check_attn(attn)
    return attn.float().amax(1).sum(1)
