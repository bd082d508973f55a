"""Query-guided dynamic budgeting (PAPER §3.2, eq. 1–5).

Segments the video where consecutive frame means stop resembling each other, scores each segment
against the question embedding, and splits the total token budget into exact integer per-frame
budgets: a floor b_min for every frame plus a bonus proportional to the segment's relevance.

Two implementations of the integer allocation give the same budgets:

* :func:`allocate_budgets` - the readable host version (a water-filling loop in fp64 on the CPU);
  kept as the test oracle and for callers that already hold host tensors.
* :func:`allocate_budgets_device` - the same rule as a fixed sequence of tensor ops on the tensors'
  device (sorts and cumulative sums, static shapes, no host round trip), used by
  :func:`plan_budgets` and so by ``prune_video``: planning never synchronises with a GPU.

Both decide which frames are capped at N by water-filling, then compute the final real shares with
one formula, ``b_min + w * c`` for the uncapped frames (``c`` from the remaining budget), so the two
agree bit for bit on the same device and the largest-remainder pass makes the same integers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import vista_kernels as vk
from vista_kernels.checks import check_tokens, check_valid

from .config import VistaConfig, check_retention


def retained_count(T: int, N: int, retention: float) -> int:
    """Total kept tokens: floor(retention * T * N + 0.5), clamped to [T, T * N]."""
    for name, v in (("T", T), ("N", N)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not torch.compiler.is_compiling():  # traced (dynamic=True): a symbolic float that
        retention = check_retention(retention)  # VistaConfig already checked; math.isfinite can't trace it
    return int(min(T * N, max(T, math.floor(retention * T * N + 0.5))))


def check_question(q, x: torch.Tensor) -> torch.Tensor:
    """``q`` must be a floating (D,) tensor on x's device (finite values are checked by the caller)."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor of shape (D,), got {type(q).__name__}")
    if not q.is_floating_point():
        raise TypeError(f"q must be a floating tensor, got dtype {q.dtype}")
    if q.dim() != 1 or q.shape[0] != x.shape[-1]:
        raise ValueError(f"q must have shape (D,) = ({x.shape[-1]},) to match x, got {tuple(q.shape)}")
    if q.device != x.device:
        raise ValueError(f"q is on {q.device} but x is on {x.device}; put both on the same device")
    return q


def _b_min(N: int, T: int, total: int, min_frame_ratio: float) -> int:
    """b_min = max(1, round-half-up(min_frame_ratio * N)), capped at floor(total / T)."""
    return min(max(1, math.floor(min_frame_ratio * N + 0.5)), total // T)


def _check_total(T: int, N: int, total: int) -> None:
    for name, v in (("T", T), ("N", N)):
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not (T <= total <= T * N):
        raise ValueError(f"total budget must be in [T, T*N] = [{T}, {T * N}], got {total}")


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


def _final_shares(w: torch.Tensor, capped: torch.Tensor, b_min: int, N: int, total: int) -> torch.Tensor:
    """Real shares once the capped set is known: N for capped frames, ``b_min + w_eff * c`` (at
    most N) for the others, c spending exactly the remaining budget; w_eff = w, or 1 for every
    uncapped frame when none of them has weight. Shared by both allocators (same ops, same order)."""
    T = w.shape[0]
    n_capped = capped.sum()
    zero = torch.zeros_like(w)
    w_open = torch.where(capped, zero, w)
    w_sum = w_open.sum()
    w_eff = torch.where(w_sum > 0, w_open, (~capped).to(w.dtype))
    remaining = (total - T * b_min) - n_capped.to(w.dtype) * (N - b_min)
    # remaining * (w / sum w): the weight ratio is <= 1, so tiny (even subnormal) weights cannot
    # overflow the way remaining / sum(w) would
    share = remaining * (w_eff / w_eff.sum())
    return torch.where(capped, torch.full_like(w, float(N)), torch.clamp(b_min + share, max=float(N)))


def _frame_weights(a: torch.Tensor, segment_id: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Per-frame bonus weights alpha_m / |S_m|, normalised to sum to 1 over the frames (so alpha
    need not sum to 1 exactly); NaN, inf and negative weights count as 0, all-zero weights give
    every frame the same weight. Static shapes, shared by both allocators."""
    T = segment_id.shape[0]
    w = a[segment_id] / sizes[segment_id]
    w = torch.where(torch.isfinite(w) & (w > 0), w, torch.zeros_like(w))
    w = w / w.max().clamp(min=torch.finfo(w.dtype).tiny)  # in [0, 1]: the sum below cannot overflow
    s = w.sum()
    return torch.where(s > 0, w / s.clamp(min=torch.finfo(w.dtype).tiny), torch.full_like(w, 1.0 / T))


def allocate_budgets(
    segment_id: torch.Tensor, alpha: torch.Tensor, T: int, N: int, total: int, min_frame_ratio: float
) -> torch.Tensor:
    """Integer per-frame budgets (T,) int64 in [1, N] that sum to ``total`` (eq. 5); host version.

    Each segment m gets |S_m|·b_min + alpha_m·(total − T·b_min), split evenly over its frames;
    any real share above N is capped and its excess handed to frames with room in proportion to
    their per-frame bonus weight alpha_m / |S_m| (water-filling, repeated until no share exceeds
    N); then one largest-remainder pass (ties to the earlier frame) makes the integers.

    Args:
        segment_id: (T,) int64 segment of each frame (0-based, non-decreasing).
        alpha: (M,) or longer relevance weights indexed by segment id (entries past the last
            segment are ignored).
    This loops in Python on the CPU; :func:`allocate_budgets_device` is the same rule without a
    host round trip (they agree exactly: the test suite checks it on drawn cases).
    """
    _check_total(T, N, total)
    b_min = _b_min(N, T, total, min_frame_ratio)
    w = _host_frame_weights(segment_id, alpha)  # per-frame bonus weight, sums to 1
    shares = _water_fill(w, T, b_min, N, total)
    budgets = _largest_remainder(shares, total)
    return _spill_over_n(budgets, w, T, N)


def _host_frame_weights(segment_id: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(T,) fp64 per-frame bonus weights on the CPU (:func:`_frame_weights`), after checking that
    the weights of the segments in use are finite and >= 0 (ValueError otherwise)."""
    seg = segment_id.cpu()
    a = alpha.detach().double().cpu()
    used = a[: int(seg.max()) + 1]
    if not bool(torch.isfinite(used).all()) or bool((used < 0).any()):
        raise ValueError(f"alpha must hold finite weights >= 0 (one per segment), got {used.tolist()}")
    sizes = torch.bincount(seg, minlength=a.shape[0]).double()
    return _frame_weights(a, seg, sizes)


def _water_fill(w: torch.Tensor, T: int, b_min: int, N: int, total: int) -> torch.Tensor:
    """(T,) fp64 real shares ``b_min + w * (total - T * b_min)``, water-filled: shares above N
    are capped and the excess handed to frames with room in proportion to w (equally if none of
    them has weight), repeated until nothing is above N; with any frame capped the result is
    the closed form :func:`_final_shares` (one formula for both allocators)."""
    shares = b_min + w * (total - T * b_min)
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
    if bool(capped.any()):  # the closed form of the loop's result (one formula for both allocators)
        shares = _final_shares(w, capped, b_min, N, total)
    return shares


def _spill_over_n(budgets: torch.Tensor, w: torch.Tensor, T: int, N: int) -> torch.Tensor:
    """Guard against rounding noise pushing a frame to N + 1: moves the single tokens above N to
    frames with room (in proportion to w; equally when none of them has weight)."""
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


def allocate_budgets_device(
    segment_id: torch.Tensor, alpha: torch.Tensor, T: int, N: int, total: int, min_frame_ratio: float
) -> torch.Tensor:
    """:func:`allocate_budgets` as tensor ops on ``segment_id``'s device: no host round trip.

    Args:
        segment_id: (T,) int64, 0-based, non-decreasing, on any device.
        alpha: (T,) float relevance per segment slot (slots past the last segment are ignored;
            padding them with 0 is fine). Weights >= 0, finite (a softmax, as ``plan_budgets``
            makes them); checking that would read device values, so NaN/inf/negative weights
            are counted as 0 here instead (the host version raises ValueError). They need not
            sum to 1: both allocators normalise them.
        T, N, total, min_frame_ratio: host numbers (from shapes and the config).
    Returns:
        (T,) int64 budgets in [1, N] summing to ``total``, on segment_id's device.

    Water-filling in closed form: with frames sorted by weight w (descending, stable), capping the
    k heaviest leaves c_k = (total - k·N - (T-k)·b_min) / (sum of the other weights) for the rest;
    the capped count is the first k whose heaviest uncapped frame fits under N (monotone in k).
    When every weighted frame is capped, the rest is split equally among the unweighted ones.
    """
    _check_total(T, N, total)
    b_min = _b_min(N, T, total, min_frame_ratio)
    dev = segment_id.device
    a = alpha.detach().to(torch.float64)
    sizes = torch.zeros(a.shape[0], dtype=torch.float64, device=dev).index_add_(
        0, segment_id, torch.ones(T, dtype=torch.float64, device=dev)
    )
    w = _frame_weights(a, segment_id, sizes)  # (T,) per-frame bonus weight, as the host version
    R = total - T * b_min
    shares0 = b_min + w * R  # no overflow: eq. 5 as it stands
    # --- capped count k* (static shapes: every k in [0, T) is tested at once)
    order = torch.sort(-w, stable=True).indices
    ws = w[order]
    suffix = ws.flip(0).cumsum(0).flip(0)  # suffix[k] = sum of ws[k:]
    k = torch.arange(T, device=dev, dtype=torch.float64)
    numer = R - k * (N - b_min)  # budget above b_min left for the uncapped frames
    # the formula of _final_shares (ws / suffix <= 1: no overflow); weightless frames never overflow
    fits = (ws <= 0) | (b_min + numer * (ws / suffix) <= N)
    # frames ranked before the first fitting one are capped (fits is monotone in k)
    k_star = (~fits).to(torch.int64).cumprod(0).sum()
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(T, device=dev))
    capped = rank < k_star
    shares = torch.where(k_star > 0, _final_shares(w, capped, b_min, N, total), shares0)
    # --- one largest-remainder pass (ties to the earlier frame)
    base = torch.floor(shares + 1e-9)
    rest = total - base.sum()
    frac = shares - base
    frac_order = torch.sort(-frac, stable=True).indices
    frac_rank = torch.empty_like(frac_order).scatter_(0, frac_order, torch.arange(T, device=dev))
    # rest < 0 (rounding noise only): take back from the smallest fractional parts, as the host does
    low_order = torch.sort(frac, stable=True).indices
    low_rank = torch.empty_like(low_order).scatter_(0, low_order, torch.arange(T, device=dev))
    step = (frac_rank < rest).to(base.dtype) - (low_rank < -rest).to(base.dtype)
    return (base + step).to(torch.int64)


@dataclass
class BudgetPlan:
    """Everything the budgeting step decided for one video (tensors on x's device).

    budgets: (T,) int64 in [1, N], sums to retained_count. segment_id: (T,) int64, 0-based,
    non-decreasing. relevance_all: (T,) float32 softmax weights alpha_m in the first M slots (one
    per segment), 0 after them (static shape: no host sync). cosine: (T-1,) float32 consecutive
    frame-mean cosines. tau: the threshold used.
    """

    budgets: torch.Tensor
    segment_id: torch.Tensor
    relevance_all: torch.Tensor
    cosine: torch.Tensor
    tau: float

    @property
    def num_segments(self) -> int:
        """M (reads segment_id[-1]: one host sync on a GPU)."""
        return int(self.segment_id[-1]) + 1

    @property
    def relevance(self) -> torch.Tensor:
        """(M,) float32 relevance of the M segments."""
        return self.relevance_all[: self.num_segments]


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
    check_finite: bool = True,
) -> BudgetPlan:
    """Per-frame token budgets for one video, planned on x's device without a host round trip.

    Args:
        x: (T, N, D) frame tokens (float32/float16/bfloat16).
        q: (D,) question embedding.
        retention: kept fraction in (0, 1]; defaults to ``config.retention``.
        config: VistaConfig (tau, min_frame_ratio, backend).
        valid: optional (T, N) bool; frame means use valid tokens only (padding excluded).
        frame_stats: optional precomputed ``(means (T, D) fp32, cosine (T-1,) fp32)`` of x (e.g.
            from the fused Triton geometry pass) so x is not read again here.
        check_finite: scan x and q for NaN/inf first (one host sync); False when the caller did.
    Returns:
        BudgetPlan with budgets (T,) int64 in [1, N] summing to retained_count(T, N, retention),
        segment_id (T,) int64, relevance (M,) float32, the cosines and the tau used.
    """
    config = config or VistaConfig()
    if retention is None:
        retention = config.retention
    retention = check_retention(retention)
    x = check_tokens(x, finite=False)
    if x.shape[0] < 1:
        raise ValueError(f"x must hold at least one frame (T >= 1), got shape {tuple(x.shape)}")
    q = check_question(q, x)
    if valid is not None:
        valid = check_valid(valid, x)
    if check_finite:
        vk.check_finite(limits={"x": vk.token_limit(x.shape[-1])}, x=x, q=q)
    T, N, _ = x.shape
    tau = config.tau if config.tau is not None else (0.80 if retention >= 0.20 else 0.95)
    if frame_stats is not None:
        f, cos = frame_stats
    else:
        f, cos = vk.frame_stats(x, valid, backend="torch", check_finite=False)[:2]
    return _plan_from_stats(f, cos, q, T, N, retention, tau, config.min_frame_ratio)


def _plan_from_stats(f, cos, q, T: int, N: int, retention: float, tau: float, min_frame_ratio: float) -> BudgetPlan:
    """Segments, relevance and budgets from the frame means f (T, D) fp32 and cosines (T-1,):
    static shapes (T segment slots), tensor ops only."""
    dev = f.device
    boundary = (cos < tau).to(torch.int64)
    segment_id = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), boundary.cumsum(0)])
    # prototypes h_m = mean of the segment's frame means: a 0/1 membership matmul (deterministic)
    slots = torch.arange(T, device=dev)
    member = (segment_id[None, :] == slots[:, None]).to(torch.float32)  # (T slots, T frames)
    count = member.sum(1)
    proto = (member @ f) / count.clamp(min=1.0)[:, None]
    # cosine of scaled copies (largest |entry| 1): a finite q or prototype of any magnitude (1e38,
    # subnormal) gives the same r as a unit-scale one instead of an inf/inf NaN or a clamped 0
    tiny = torch.finfo(torch.float32).tiny
    qf = q.float()
    qf = qf / qf.abs().amax().clamp(min=tiny)
    proto = proto / proto.abs().amax(dim=1, keepdim=True).clamp(min=tiny)
    r = (proto @ qf) / (proto.norm(dim=1) * qf.norm()).clamp(min=1e-12)
    present = count > 0
    alpha = torch.softmax(r.masked_fill(~present, float("-inf")), dim=0)
    total = retained_count(T, N, retention)
    budgets = allocate_budgets_device(segment_id, alpha, T, N, total, min_frame_ratio)
    return BudgetPlan(budgets, segment_id, alpha, cos, tau)
