"""Query-guided dynamic budgeting (PAPER §3.2, eq. 1–5).

Segments the video where consecutive frame means stop resembling each other, scores each segment
against the question embedding, and splits the total token budget into exact integer per-frame
budgets: a floor b_min for every frame plus a bonus proportional to the segment's relevance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import vista_kernels as vk
from vista_kernels.reference.frame_cosine import cosine_of_means
from vista_kernels._guard import all_finite, check_tokens, check_valid

from .config import VistaConfig, check_retention


def retained_count(T: int, N: int, retention: float) -> int:
    """Total kept tokens: floor(retention * T * N + 0.5), clamped to [T, T * N]."""
    for name, v in (("T", T), ("N", N)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    retention = check_retention(retention)
    return int(min(T * N, max(T, math.floor(retention * T * N + 0.5))))


def check_question(q, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor of shape (D,), got {type(q).__name__}")
    if not q.is_floating_point():
        raise TypeError(f"q must be a floating tensor, got dtype {q.dtype}")
    if q.dim() != 1 or q.shape[0] != x.shape[-1]:
        raise ValueError(f"q must have shape (D,) = ({x.shape[-1]},) to match x, got {tuple(q.shape)}")
    if q.device != x.device:
        raise ValueError(f"q is on {q.device} but x is on {x.device}; put both on the same device")
    if not all_finite(q):
        raise ValueError("q contains NaN or inf values")
    return q


def _largest_remainder(shares: torch.Tensor, total: int) -> torch.Tensor:
    """Integers that sum to ``total``: floors of ``shares`` plus one for the largest fractional
    parts (ties: earlier index). ``shares`` (fp64) must sum to ``total`` up to rounding."""
    base = torch.floor(shares + 1e-9)
    rest = int(total - int(base.sum()))
    if rest > 0:
        frac = shares - base
        order = torch.sort(-frac, stable=True).indices
        base[order[:rest]] += 1
    elif rest < 0:  # only from rounding noise: take back from the smallest fractional parts
        frac = shares - base
        order = torch.sort(frac, stable=True).indices
        base[order[: -rest]] -= 1
    return base.to(torch.int64)


def allocate_budgets(
    segment_id: torch.Tensor, alpha: torch.Tensor, T: int, N: int, total: int, min_frame_ratio: float
) -> torch.Tensor:
    """Integer per-frame budgets (T,) in [1, N] that sum to ``total`` (eq. 5).

    Each segment m gets |S_m|·b_min + alpha_m·(total − T·b_min), split evenly over its frames;
    any real share above N is capped and its excess handed to frames with room in proportion to
    their per-frame bonus weight alpha_m / |S_m| (water-filling, repeated until no share exceeds
    N); then one largest-remainder pass (ties to the earlier frame) makes the integers.
    """
    if not (T <= total <= T * N):
        raise ValueError(f"total budget must be in [T, T*N] = [{T}, {T * N}], got {total}")
    b_min = max(1, math.floor(min_frame_ratio * N + 0.5))
    b_min = min(b_min, total // T)
    seg = segment_id.cpu()
    a = alpha.detach().double().cpu()
    sizes = torch.bincount(seg, minlength=a.shape[0]).double()
    w = a[seg] / sizes[seg]  # per-frame bonus weight
    shares = b_min + w * (total - T * b_min)
    # Water-fill in real numbers first: cap shares at N and hand the excess to frames with room in
    # proportion to w (equally if none of them has weight); repeat until nothing is above N.
    capped = torch.zeros(T, dtype=torch.bool)
    for _ in range(T + 1):
        over = shares > N
        if not bool(over.any()):
            break
        excess = float((shares[over] - N).sum())
        shares[over] = float(N)
        capped |= over
        if bool(capped.all()):  # every frame at N: the total is T*N
            break
        ww = torch.where(capped, torch.zeros_like(w), w)
        if float(ww.sum()) <= 0:
            ww = (~capped).double()
        shares = shares + excess * ww / ww.sum()
    # One largest-remainder pass turns the real shares into integers with the exact sum.
    budgets = _largest_remainder(shares, total)
    # Guard against rounding noise pushing a frame to N + 1 (moves single tokens to frames with room).
    for _ in range(T + 1):
        over = (budgets - N).clamp(min=0)
        excess = int(over.sum())
        if excess == 0:
            break
        budgets = budgets - over
        room = (N - budgets).double()
        ww = torch.where(room > 0, w, torch.zeros_like(w))
        if float(ww.sum()) <= 0:
            ww = (room > 0).double()
        budgets = budgets + _largest_remainder(excess * ww / ww.sum(), excess)
    else:  # pragma: no cover - terminates since total <= T*N
        raise RuntimeError("budget redistribution did not converge")
    return budgets


@dataclass
class BudgetPlan:
    """Everything the budgeting step decided for one video."""

    budgets: torch.Tensor  # (T,) int64 in [1, N], sums to retained_count
    segment_id: torch.Tensor  # (T,) int64, 0-based, non-decreasing
    relevance: torch.Tensor  # (M,) float32 softmax weights alpha_m of the M segments
    cosine: torch.Tensor  # (T-1,) float32 consecutive frame-mean cosines
    tau: float


def frame_budgets(
    x: torch.Tensor,
    q: torch.Tensor,
    retention: float | None = None,
    config: VistaConfig | None = None,
    valid: torch.Tensor | None = None,
):
    """Per-frame token budgets for one video: ``(budgets (T,) int64, segment_id (T,) int64)``.

    See :func:`plan_budgets` for the arguments; this is its DESIGN.md-named short form.
    """
    plan = plan_budgets(x, q, retention, config, valid)
    return plan.budgets, plan.segment_id


def plan_budgets(
    x: torch.Tensor,
    q: torch.Tensor,
    retention: float | None = None,
    config: VistaConfig | None = None,
    valid: torch.Tensor | None = None,
    frame_stats: tuple | None = None,
) -> BudgetPlan:
    """Per-frame token budgets for one video.

    Args:
        x: (T, N, D) frame tokens (float32/float16/bfloat16).
        q: (D,) question embedding.
        retention: kept fraction in (0, 1]; defaults to ``config.retention``.
        config: VistaConfig (tau, min_frame_ratio, backend).
        valid: optional (T, N) bool; frame means use valid tokens only (padding excluded).
        frame_stats: optional precomputed ``(means (T, D) fp32, cosine (T-1,) fp32)`` of x (e.g.
            from the fused Triton geometry pass) so x is not read again here.
    Returns:
        BudgetPlan with budgets (T,) int64 in [1, N] summing to retained_count(T, N, retention),
        segment_id (T,) int64, relevance (M,) float32, the cosines and the tau used.
    """
    config = config or VistaConfig()
    if retention is None:
        retention = config.retention
    retention = check_retention(retention)
    x = check_tokens(x)
    if x.shape[0] < 1:
        raise ValueError(f"x must hold at least one frame (T >= 1), got shape {tuple(x.shape)}")
    q = check_question(q, x)
    valid = check_valid(valid, x)
    T, N, _ = x.shape
    tau = config.tau if config.tau is not None else (0.80 if retention >= 0.20 else 0.95)
    if frame_stats is not None:
        f, cos = frame_stats
    else:
        f = vk.frame_means_torch(x, valid)  # (T, D) fp32, one pass over x
        cos = cosine_of_means(f)
    boundary = (cos < tau).to(torch.int64)
    segment_id = torch.cat([torch.zeros(1, dtype=torch.int64, device=x.device), boundary.cumsum(0)])
    M = int(segment_id[-1]) + 1
    proto = torch.zeros(M, f.shape[1], dtype=torch.float32, device=x.device).index_add_(0, segment_id, f)
    proto /= torch.bincount(segment_id, minlength=M).to(torch.float32)[:, None]
    qf = q.float()
    r = (proto @ qf) / (proto.norm(dim=1) * qf.norm()).clamp(min=1e-12)
    alpha = torch.softmax(r, dim=0)
    total = retained_count(T, N, retention)
    budgets = allocate_budgets(segment_id, alpha, T, N, total, config.min_frame_ratio).to(x.device)
    return BudgetPlan(budgets, segment_id, alpha, cos, tau)
