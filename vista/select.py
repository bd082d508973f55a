"""Hybrid spatial selection (PAPER §3.3–3.4): scout foveal tokens + DPC-KNN anchor tokens."""
from __future__ import annotations


import torch

import vista_kernels as vk


def foveal_counts(budgets: torch.Tensor, scout_ratio: float, has_scout: bool) -> torch.Tensor:
    """K_f = floor(rho * B_t) per frame (0 without a scout)."""
    if not has_scout:
        return torch.zeros_like(budgets)
    return torch.floor(budgets.double() * scout_ratio + 1e-9).to(torch.int64)


def select_tokens(
    x: torch.Tensor,
    budgets: torch.Tensor,
    scout_scores: torch.Tensor | None,
    scout_ratio: float = 0.85,
    knn_k: int = 7,
    valid: torch.Tensor | None = None,
    backend: str = "auto",
    has_scout: torch.Tensor | None = None,
):
    """Choose the kept tokens of every frame.

    Args:
        x: (F, N, D) tokens; budgets: (F,) int64 with budgets[f] <= valid tokens of frame f.
        scout_scores: (F, N) float or None.
        valid: optional (F, N) bool (padding for ragged batches).
        has_scout: optional (F,) bool, frames whose scores count (default: all when
            scout_scores is given); other frames get no foveal tokens.
    Returns:
        keep (F, N) bool and foveal (F, N) bool (foveal ⊆ keep).
    """
    F, N, _ = x.shape
    if valid is None:
        valid = torch.ones(F, N, dtype=torch.bool, device=x.device)
    k_f = foveal_counts(budgets, scout_ratio, scout_scores is not None)
    if has_scout is not None:
        k_f = torch.where(has_scout, k_f, torch.zeros_like(k_f))
    if scout_scores is not None:
        foveal = vk.stable_topk_mask(scout_scores, k_f, valid)
    else:
        foveal = torch.zeros(F, N, dtype=torch.bool, device=x.device)
    candidates = valid & ~foveal
    anchors = vk.dpc_select(x, budgets - k_f, valid=candidates, k=knn_k, backend=backend)
    return foveal | anchors, foveal
