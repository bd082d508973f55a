"""The whole Vista pruner for one video or a ragged batch of videos (PAPER §3, DESIGN.md).

The GPU path makes no host synchronisation after the entry checks: budgets are planned with tensor
ops on x's device (``budget.plan_budgets``), every output size follows from shapes
(``retained_count``), and the per-frame work is one dispatching op, ``vista_kernels.prune_frames``
(foveal top-k, DPC-KNN anchors, aggregation, compacted output). With the Triton backend the frame
statistics come from the same geometry pass whose Gram matrices the selection reuses, so x is read
twice in all. The whole prune can be captured in a CUDA graph.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

import vista_kernels as vk
from vista_kernels.checks import check_scores, check_tokens

from .budget import BudgetPlan, _plan_from_stats, check_question, retained_count
from .config import VistaConfig, check_config
from .select import foveal_counts


class PrunedVideo:
    """Result of pruning one video of T frames x N tokens x D dims down to M tokens.

    tokens: (M, D) kept tokens after soft aggregation, in x's dtype, frames in time order and
        tokens in raster order within a frame.
    frame_index, token_index: (M,) int64 original (t, i) of every kept token.
    budgets: (T,) int64 per-frame budgets (sum = M); segment_id: (T,) int64.
    relevance: (S,) float32 softmax relevance of the S segments (sliced on first access from the
        (T,) ``relevance_all``: reading S is one host sync, done only when asked).
    keep, foveal: (T, N) bool kept tokens and the scout's foveal subset.
    assign: (T, N) int64 index of each token's anchor (kept tokens point to themselves).
    """

    __slots__ = ("tokens", "frame_index", "token_index", "budgets", "segment_id", "relevance_all", "keep",
                 "foveal", "assign")

    def __init__(self, tokens, frame_index, token_index, budgets, segment_id, relevance, keep, foveal, assign):
        self.tokens = tokens
        self.frame_index = frame_index
        self.token_index = token_index
        self.budgets = budgets
        self.segment_id = segment_id
        self.relevance_all = relevance  # (T,) padded with zeros after the last segment, or (S,)
        self.keep = keep
        self.foveal = foveal
        self.assign = assign

    @property
    def relevance(self) -> torch.Tensor:
        S = int(self.segment_id[-1]) + 1 if self.segment_id.numel() else 0
        return self.relevance_all[:S]

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def __repr__(self) -> str:
        T, N = self.keep.shape
        return f"PrunedVideo(T={T}, N={N}, kept={self.num_tokens}, D={self.tokens.shape[-1]}, dtype={self.tokens.dtype})"


def prune_video(
    x: torch.Tensor,
    q: torch.Tensor,
    scout_scores: Optional[torch.Tensor] = None,
    config: Optional[VistaConfig] = None,
    *,
    check_finite: bool = True,
) -> PrunedVideo:
    """Prune one video's visual tokens to ``retained_count(T, N, config.retention)``.

    Args:
        x: (T, N, D) float32/float16/bfloat16 frame tokens (after the projector).
        q: (D,) question embedding (mean of the question's input embeddings).
        scout_scores: optional (T, N) float patch scores from the semantic scout on x's grid.
        config: VistaConfig; ``retention=1.0`` returns every token unchanged.
        check_finite: scan x, q and the scores for NaN/inf and overflow-prone magnitudes first
            (one host sync); pass False for inputs that cannot hold them (e.g. a projector's output)
            to make the call entirely free of host synchronisation on a GPU.
    Returns:
        PrunedVideo.
    """
    return prune_videos([x], [q], None if scout_scores is None else [scout_scores], config,
                        check_finite=check_finite)[0]


def _check_batch(xs, qs, scout_scores):
    if isinstance(xs, torch.Tensor) or not isinstance(xs, (list, tuple)):
        raise TypeError("xs must be a list of (T, N, D) tensors")
    if not isinstance(qs, (list, tuple)) or len(qs) != len(xs):
        raise ValueError(f"qs must be a list with one (D,) tensor per video ({len(xs)}), got {type(qs).__name__}")
    if len(xs) == 0:
        raise ValueError("xs is empty: pass at least one video")
    if scout_scores is None:
        scout_scores = [None] * len(xs)
    if not isinstance(scout_scores, (list, tuple)) or len(scout_scores) != len(xs):
        raise ValueError(f"scout_scores must be None or a list with one entry per video ({len(xs)})")
    one = len(xs) == 1
    for b, (x, q, s) in enumerate(zip(xs, qs, scout_scores)):
        name = "x" if one else f"xs[{b}]"
        x = check_tokens(x, name, finite=False)
        if x.shape[0] < 1:
            raise ValueError(f"{name} is an empty video: expected T >= 1 frames, got shape {tuple(x.shape)}")
        if x.shape[-1] != xs[0].shape[-1] or x.device != xs[0].device:
            raise ValueError(f"{name} must share D and device with xs[0] to be pruned in one batch")
        check_question(q, x)
        if s is not None:
            check_scores(s, x, "scout_scores" if one else f"scout_scores[{b}]", finite=False)
    return list(scout_scores)


def _check_values(xs, qs, scout_scores) -> None:
    """NaN/inf and magnitude scan of every input: one host sync for the whole batch."""
    one = len(xs) == 1
    named, limits = {}, {}
    for b, (x, q, s) in enumerate(zip(xs, qs, scout_scores)):
        xn = "x" if one else f"xs[{b}]"
        named[xn] = x
        limits[xn] = vk.token_limit(x.shape[-1])
        named["q" if one else f"qs[{b}]"] = q
        named["scout_scores" if one else f"scout_scores[{b}]"] = s
    vk.check_finite(limits=limits, **named)


def prune_videos(
    xs: Sequence[torch.Tensor],
    qs: Sequence[torch.Tensor],
    scout_scores: Optional[Sequence[Optional[torch.Tensor]]] = None,
    config: Optional[VistaConfig] = None,
    *,
    check_finite: bool = True,
) -> List[PrunedVideo]:
    """Prune several videos at once (ragged: different T and N; same D and device).

    Budgets are planned per video; the per-frame selection and aggregation run once over all
    frames of all videos (padded to the largest N with a ``valid`` mask), so the result equals
    pruning each video alone. Videos of different dtypes are pruned in one batch per dtype, each
    keeping its own dtype. ``check_finite``: see :func:`prune_video`.
    """
    config = check_config(config)
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {check_finite!r}")
    scout_scores = _check_batch(xs, qs, scout_scores)
    if check_finite:
        _check_values(xs, qs, scout_scores)
    vk.resolve_backend(config.backend, xs[0])  # a bad backend fails even when nothing is pruned
    dtypes = list(dict.fromkeys(x.dtype for x in xs))
    if len(dtypes) > 1:  # one batch per dtype; results back in input order
        out: List[Optional[PrunedVideo]] = [None] * len(xs)
        for dt in dtypes:
            idx = [b for b, x in enumerate(xs) if x.dtype == dt]
            part = _prune_batch([xs[b] for b in idx], [qs[b] for b in idx], [scout_scores[b] for b in idx], config)
            for b, pv in zip(idx, part):
                out[b] = pv
        return out  # type: ignore[return-value]
    return _prune_batch(list(xs), list(qs), scout_scores, config)


def _prune_batch(xs, qs, scout_scores, config: VistaConfig) -> List[PrunedVideo]:
    """Checked videos of one dtype -> PrunedVideo each (no host synchronisation)."""
    device = xs[0].device
    Ts = [int(x.shape[0]) for x in xs]
    Ns = [int(x.shape[1]) for x in xs]
    Ms = [retained_count(T, n, config.retention) for T, n in zip(Ts, Ns)]
    # Budgets always sum to retained_count: when that is every token of every video (retention 1.0)
    # pruning is an exact no-op, decided from shapes before any padding or geometry pass.
    if all(M == T * n for M, T, n in zip(Ms, Ts, Ns)):
        return _keep_everything(xs, qs, scout_scores, config)
    backend = vk.resolve_backend(config.backend, xs[0])
    N = max(Ns)
    if len(xs) == 1:
        X, valid, S = xs[0], None, scout_scores[0]
    else:  # one (sum T, max N, D) tensor; padding tokens are invalid everywhere
        X = torch.zeros(sum(Ts), N, xs[0].shape[-1], dtype=xs[0].dtype, device=device)
        valid = torch.zeros(sum(Ts), N, dtype=torch.bool, device=device)
        S = None
        if any(s is not None for s in scout_scores):
            S = torch.zeros(sum(Ts), N, dtype=torch.float32, device=device)
        t0 = 0
        for x, s, T, n in zip(xs, scout_scores, Ts, Ns):
            X[t0 : t0 + T, :n] = x
            valid[t0 : t0 + T, :n] = True
            if s is not None:
                S[t0 : t0 + T, :n] = s.float()
            t0 += T
    gram = None
    if backend == "triton":  # one geometry pass gives the Gram matrices, means and cosines of all frames
        means, cos, gram = vk.frame_stats(X, valid, backend, keep_gram=True, check_finite=False)
        stats = _split_stats(means, cos, Ts)
    else:  # frame means per video from the unpadded tokens (cache-sized chunks on CPU)
        stats = [vk.frame_stats(x, None, "torch", check_finite=False)[:2] for x in xs]
    plans = [_plan(st, q, T, n, config) for st, q, T, n in zip(stats, qs, Ts, Ns)]
    budgets = torch.cat([p.budgets for p in plans])
    k_f = None
    if S is not None:
        has_scout = torch.cat([torch.full((T,), s is not None, dtype=torch.bool, device=device)
                               for s, T in zip(scout_scores, Ts)])
        k_f = torch.where(has_scout, foveal_counts(budgets, config.scout_ratio, True), torch.zeros_like(budgets))
    out = vk.prune_frames(X, budgets, k_f, S, valid, num_kept=sum(Ms), k=config.knn_k, alpha=config.alpha,
                          gram=gram, backend=backend, check_finite=False)
    results, t0, m0 = [], 0, 0
    for p, T, n, M in zip(plans, Ts, Ns, Ms):
        results.append(PrunedVideo(
            tokens=out.tokens[m0 : m0 + M], frame_index=out.frame_index[m0 : m0 + M] - t0,
            token_index=out.token_index[m0 : m0 + M], budgets=p.budgets, segment_id=p.segment_id,
            relevance=p.relevance_all, keep=out.keep[t0 : t0 + T, :n], foveal=out.foveal[t0 : t0 + T, :n],
            assign=out.assign[t0 : t0 + T, :n],
        ))
        t0 += T
        m0 += M
    return results


def _split_stats(means, cos, Ts):
    """Per-video (means, cosines) from the batch's: the cosine across two videos is dropped."""
    out, t0 = [], 0
    for T in Ts:
        out.append((means[t0 : t0 + T], cos[t0 : t0 + T - 1]))
        t0 += T
    return out


def _plan(stats, q, T: int, N: int, config: VistaConfig) -> BudgetPlan:
    return _plan_from_stats(stats[0], stats[1], q, T, N, config.retention, config.effective_tau(),
                            config.min_frame_ratio)


def _keep_everything(xs, qs, scout_scores, config) -> List[PrunedVideo]:
    """retention covering every token: each video comes back bit-identical (budgets = N)."""
    results = []
    for x, q, s in zip(xs, qs, scout_scores):
        T, n, _ = x.shape
        p = _plan(vk.frame_stats(x, None, "torch", check_finite=False)[:2], q, T, n, config)
        keep = torch.ones(T, n, dtype=torch.bool, device=x.device)
        foveal = torch.zeros_like(keep)
        if s is not None:
            foveal = vk.stable_topk_mask(s, foveal_counts(p.budgets, config.scout_ratio, True), keep)
        idx = torch.arange(T * n, device=x.device)
        results.append(PrunedVideo(
            tokens=x.reshape(T * n, -1), frame_index=idx // n, token_index=idx % n, budgets=p.budgets,
            segment_id=p.segment_id, relevance=p.relevance_all, keep=keep, foveal=foveal,
            assign=torch.arange(n, device=x.device).expand(T, n).clone(),
        ))
    return results


__all__ = ["PrunedVideo", "prune_video", "prune_videos", "retained_count"]
