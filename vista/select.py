"""Hybrid spatial selection (PAPER §3.3–3.4): the scout's share of each frame's budget.

The selection itself (foveal top-k, DPC-KNN anchors, aggregation) is ``vista_kernels.prune_frames``.
"""
from __future__ import annotations

import torch


def foveal_counts(budgets: torch.Tensor, scout_ratio: float, has_scout: bool) -> torch.Tensor:
    """K_f = floor(rho * B_t) per frame (0 without a scout)."""
    if not has_scout:
        return torch.zeros_like(budgets)
    return torch.floor(budgets.double() * scout_ratio + 1e-9).to(torch.int64)
