"""The whole Vista pruner for one video or a ragged batch of videos (PAPER §3, DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

import vista_kernels as vk
from vista_kernels._guard import check_scores, check_tokens, trusted_inputs
from vista_kernels.reference._common import stable_topk_mask
from vista_kernels.reference.anchor_aggregate import anchor_aggregate_kept_torch
from vista_kernels.reference.frame_cosine import cosine_of_means
from vista_kernels.utils import on_device_of

from .budget import check_question, plan_budgets, retained_count
from .config import VistaConfig, check_config
from .select import foveal_counts, select_tokens


@dataclass
class PrunedVideo:
    """Result of pruning one video of T frames x N tokens x D dims down to M tokens.

    tokens: (M, D) kept tokens after soft aggregation, in x's dtype, frames in time order and
        tokens in raster order within a frame.
    frame_index, token_index: (M,) int64 original (t, i) of every kept token.
    budgets: (T,) int64 per-frame budgets (sum = M); segment_id: (T,) int64.
    relevance: (S,) float32 softmax relevance of the S segments.
    keep, foveal: (T, N) bool kept tokens and the scout's foveal subset.
    assign: (T, N) int64 index of each token's anchor (kept tokens point to themselves).
    """

    tokens: torch.Tensor
    frame_index: torch.Tensor
    token_index: torch.Tensor
    budgets: torch.Tensor
    segment_id: torch.Tensor
    relevance: torch.Tensor
    keep: torch.Tensor
    foveal: torch.Tensor
    assign: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def prune_video(
    x: torch.Tensor,
    q: torch.Tensor,
    scout_scores: Optional[torch.Tensor] = None,
    config: Optional[VistaConfig] = None,
) -> PrunedVideo:
    """Prune one video's visual tokens to ``retained_count(T, N, config.retention)``.

    Args:
        x: (T, N, D) float32/float16/bfloat16 frame tokens (after the projector).
        q: (D,) question embedding (mean of the question's input embeddings).
        scout_scores: optional (T, N) float patch scores from the semantic scout on x's grid.
        config: VistaConfig; ``retention=1.0`` returns every token unchanged.
    Returns:
        PrunedVideo.
    """
    return prune_videos([x], [q], None if scout_scores is None else [scout_scores], config)[0]


def prune_videos(
    xs: Sequence[torch.Tensor],
    qs: Sequence[torch.Tensor],
    scout_scores: Optional[Sequence[Optional[torch.Tensor]]] = None,
    config: Optional[VistaConfig] = None,
) -> List[PrunedVideo]:
    """Prune several videos at once (ragged: different T and N, same D and device).

    Budgets are planned per video; the per-frame selection and aggregation run once over all
    frames of all videos (padded to the largest N with a ``valid`` mask), so the result equals
    pruning each video alone.
    """
    config = check_config(config)
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
    for b, (x, q, s) in enumerate(zip(xs, qs, scout_scores)):
        name = "x" if len(xs) == 1 else f"xs[{b}]"
        x = check_tokens(x, name)
        if x.shape[0] < 1:
            raise ValueError(f"{name} is an empty video: expected T >= 1 frames, got shape {tuple(x.shape)}")
        if x.shape[-1] != xs[0].shape[-1] or x.device != xs[0].device:
            raise ValueError(f"{name} must share D and device with xs[0] to be pruned in one batch")
        check_question(q, x)
        if s is not None:
            check_scores(s, x, "scout_scores" if len(xs) == 1 else f"scout_scores[{b}]")

    device = xs[0].device
    Ns = [int(x.shape[1]) for x in xs]
    Ts = [int(x.shape[0]) for x in xs]
    N = max(Ns)
    starts = [sum(Ts[:b]) for b in range(len(xs))]
    backend = vk.resolve_backend(config.backend, xs[0])  # a bad backend fails even when nothing is pruned
    # Budgets always sum to retained_count: when that is every token of every video (retention 1.0)
    # pruning is an exact no-op, decided before any padding or geometry pass.
    if all(retained_count(T, n, config.retention) == T * n for T, n in zip(Ts, Ns)):
        return _keep_everything(xs, qs, scout_scores, config)
    if len(xs) == 1:
        X, valid, S = xs[0], None, scout_scores[0]
    else:  # one (sum T, max N, D) tensor; padding tokens are invalid everywhere
        D = xs[0].shape[-1]
        dtype = xs[0].dtype
        X = torch.zeros(sum(Ts), N, D, dtype=dtype, device=device)
        valid = torch.zeros(sum(Ts), N, dtype=torch.bool, device=device)
        for x, t0, T, n in zip(xs, starts, Ts, Ns):
            X[t0 : t0 + T, :n] = x.to(dtype)
            valid[t0 : t0 + T, :n] = True
        S = None
        if any(s is not None for s in scout_scores):
            S = torch.zeros(sum(Ts), N, dtype=torch.float32, device=device)
            for s, t0, T, n in zip(scout_scores, starts, Ts, Ns):
                if s is not None:
                    S[t0 : t0 + T, :n] = s.float()

    fused = None
    if backend == "triton":
        # One geometry pass gives the Gram matrices, frame means and cosines of every frame.
        from vista_kernels.ops import FusedPruner

        with on_device_of(X):
            fused = FusedPruner(X, valid)
            means, cos = fused.frame_means(), fused.frame_cosine()
    plans = _plans(xs, qs, config, None if fused is None else (means, cos))

    budgets = torch.cat([p.budgets for p in plans])
    has_scout = torch.cat(
        [torch.full((T,), s is not None, dtype=torch.bool, device=device) for s, T in zip(scout_scores, Ts)]
    )
    with trusted_inputs():
        if fused is not None:
            valid_all = valid if valid is not None else torch.ones(X.shape[:2], dtype=torch.bool, device=device)
            k_f = torch.where(has_scout, foveal_counts(budgets, config.scout_ratio, True), torch.zeros_like(budgets))
            foveal = stable_topk_mask(S, k_f, valid_all) if S is not None else torch.zeros_like(valid_all)
            with on_device_of(X):
                keep, x_out, assign = fused.select_and_aggregate(
                    budgets - k_f, valid_all & ~foveal, extra_keep=foveal, alpha=config.alpha, k=config.knn_k
                )
            kept_rows = lambda sl, n: x_out[sl, :n][keep[sl, :n]]  # noqa: E731
        else:
            # Reference path, over frame chunks: on CPU a chunk's fp32 copy stays cache-resident
            # (every op is per frame, so chunking changes nothing but speed); blend and gather only
            # the kept rows (no copy of the whole video).
            parts = [[] for _ in range(5)]
            for sl in _chunks(X):
                Xf = X[sl].float()
                v = None if valid is None else valid[sl]
                k_c, f_c = select_tokens(
                    Xf, budgets[sl], None if S is None else S[sl], config.scout_ratio, config.knn_k,
                    valid=v, backend=backend, has_scout=has_scout[sl],
                )
                _, ok_c, rows_c, a_c = anchor_aggregate_kept_torch(Xf, k_c, config.alpha, v, _checked=True)
                for lst, t in zip(parts, (k_c, f_c, a_c, rows_c[ok_c].to(X.dtype), k_c.sum(1))):
                    lst.append(t)
            keep, foveal, assign, tokens, counts = (torch.cat(p) for p in parts)
            offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).tolist()
            kept_rows = lambda sl, n: tokens[offsets[sl.start] : offsets[sl.stop]]  # noqa: E731

    results = []
    t0 = 0
    for p, T, n in zip(plans, Ts, Ns):
        sl = slice(t0, t0 + T)
        results.append(_assemble(kept_rows(sl, n), keep[sl, :n], foveal[sl, :n], assign[sl, :n], p))
        t0 += T
    return results


#: Working-set target of one frame chunk of the torch path on CPU (fp32 tokens of the chunk).
CPU_CHUNK_BYTES = 4 << 20


def _chunks(x: torch.Tensor):
    """Frame slices for the torch path: whole video on GPUs, cache-sized chunks on CPU."""
    F = x.shape[0]
    if x.device.type != "cpu":
        return [slice(0, F)]
    step = max(1, CPU_CHUNK_BYTES // max(1, x.shape[1] * x.shape[2] * 4))
    return [slice(t, min(F, t + step)) for t in range(0, F, step)]


def _plans(xs, qs, config, fused_stats=None):
    """Budget plans per video, from the fused pass's means/cosines or from chunked torch means."""
    plans, t0 = [], 0
    with trusted_inputs():
        for x, q in zip(xs, qs):
            T = x.shape[0]
            if fused_stats is not None:
                means, cos = fused_stats
                stats = (means[t0 : t0 + T], cos[t0 : t0 + T - 1])
            else:  # frame means chunk by chunk (cache-resident on CPU), from the unpadded video
                m = torch.cat([x[sl].float().mean(1) for sl in _chunks(x)])
                stats = (m, cosine_of_means(m))
            plans.append(plan_budgets(x, q, config.retention, config, frame_stats=stats))
            t0 += T
    return plans


def _keep_everything(xs, qs, scout_scores, config) -> List[PrunedVideo]:
    """retention covering every token: each video comes back bit-identical (budgets = N)."""
    results = []
    for x, s, p in zip(xs, scout_scores, _plans(xs, qs, config)):
        T, n, _ = x.shape
        keep = torch.ones(T, n, dtype=torch.bool, device=x.device)
        foveal = torch.zeros_like(keep)
        if s is not None:
            foveal = stable_topk_mask(s, foveal_counts(p.budgets, config.scout_ratio, True), keep)
        assign = torch.arange(n, device=x.device).expand(T, n).clone()
        results.append(_assemble(x.reshape(T * n, -1), keep, foveal, assign, p))
    return results


def _assemble(tokens, keep, foveal, assign, plan) -> PrunedVideo:
    frame_index, token_index = torch.nonzero(keep, as_tuple=True)  # row-major: time, then raster
    return PrunedVideo(
        tokens=tokens,
        frame_index=frame_index,
        token_index=token_index,
        budgets=plan.budgets,
        segment_id=plan.segment_id,
        relevance=plan.relevance,
        keep=keep,
        foveal=foveal,
        assign=assign,
    )


__all__ = ["PrunedVideo", "prune_video", "prune_videos", "retained_count"]
