"""The whole per-frame Vista pruning math of a video on as few passes over x as possible.

``FusedPruner(x, valid)`` runs the geometry kernel once. When the (F, N, N) fp32 Gram tensor of the
whole video fits the memory bound (64 x 196 x 196 x 4 B = 9.8 MB for LLaVA-OneVision frames) it is
kept, and that single pass also yields the frame means and cosines; DPC scores, the nearest-anchor
assignment and the aggregation then reuse it, and x is read a second (and last) time by the
aggregation. For larger videos the first pass computes only the means (no Gram), and
``select_and_aggregate`` processes frame chunks, each with its own Gram launch (three passes).

    fp = FusedPruner(x, valid)
    cos, means = fp.frame_cosine(), fp.frame_means()         # budgets are computed from these
    keep, x_out, assign = fp.select_and_aggregate(k_anchor, candidates, foveal, alpha=0.5, k=7)

Results equal the composition of the public ops (dpc_select on ``candidates`` with ``k_anchor``,
keep = foveal | anchors, anchor_aggregate(keep, valid)).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from .._guard import check_alpha, check_k, check_k_keep, check_mask, check_tokens, check_valid
from ..reference._common import stable_topk_mask
from ..utils import check_triton_device, upcast_flag, kernel_interpreted
from . import anchor_aggregate as _agg
from . import dpc_scores as _dpc
from .frame_geometry import Geometry, frames_per_chunk


class FusedPruner:
    def __init__(self, x, valid=None, *, max_gram_elems: Optional[int] = None, input_precision: str = "ieee"):
        x = check_tokens(x)
        valid = check_valid(valid, x)
        check_triton_device(x, _dpc._dpc_scores_kernel)
        self.x = x.contiguous()
        self.valid = valid
        self.geo = Geometry(self.x, valid, input_precision)
        self.max_gram_elems = max_gram_elems
        F, N, _ = x.shape
        self.gram: Optional[torch.Tensor] = None
        if F and frames_per_chunk(F, N, max_gram_elems) >= F:
            self.gram = next(iter(self.geo.chunks(max_gram_elems)))[2]  # one launch: G, norms, means
            self.passes = 1
        else:
            self.geo.means_only()
            self.passes = 1

    # ------------------------------------------------------------------ frame statistics
    def frame_means(self) -> torch.Tensor:
        if self.geo.F == 0:
            return torch.zeros((0, self.geo.D), dtype=torch.float32, device=self.x.device)
        return self.geo.means()

    def frame_cosine(self) -> torch.Tensor:
        return self.geo.cosine()

    # ------------------------------------------------------------------ chunks of G
    def _chunks(self):
        if self.gram is not None:
            yield 0, self.geo.F, self.gram
        else:
            self.passes += 1
            yield from self.geo.chunks(self.max_gram_elems)

    def dpc_scores(self, candidates=None, k: int = 7):
        """(rho, delta, gamma) (F, N) fp32 over ``candidates`` (default: valid)."""
        cand = self.valid if candidates is None else check_mask(candidates, self.x, "candidates")
        k = check_k(k)
        F, N = self.geo.F, self.geo.N
        out = [torch.zeros((F, N), dtype=torch.float32, device=self.x.device) for _ in range(3)]
        c8 = cand.contiguous().view(torch.uint8)
        for f0, f1, g in self._chunks():
            self._scores_chunk(f0, f1, g, c8, cand, k, *out)
        return tuple(out)

    def _scores_chunk(self, f0, f1, g, c8, cand, k, rho, delta, gamma):
        if min(k, self.geo.N - 1) > _dpc.MAX_K:
            rho[f0:f1] = _dpc._rho_from_gram(g, self.geo.sq[f0:f1], cand[f0:f1], self.geo.D, k)
            _dpc._launch(self.geo, f0, f1, g, c8, None, delta, gamma, rho, k, False, True, None)
        else:
            _dpc._launch(self.geo, f0, f1, g, c8, rho, delta, gamma, None, k, True, True, None)

    def select_and_aggregate(self, k_keep, candidates=None, extra_keep=None, alpha: float = 0.5, k: int = 7):
        """keep = extra_keep | top-k_keep[f] gamma among candidates; then anchor aggregation over valid.

        Returns (keep (F, N) bool, x_out (F, N, D) x.dtype, assign (F, N) int64).
        """
        x, valid = self.x, self.valid
        cand = valid if candidates is None else check_mask(candidates, x, "candidates")
        if bool((cand & ~valid).any()):
            raise ValueError("candidates must be a subset of valid")
        k_keep = check_k_keep(k_keep, x, cand)
        extra = None if extra_keep is None else check_mask(extra_keep, x, "extra_keep")
        if extra is not None and bool((extra & ~valid).any()):
            raise ValueError("extra_keep marks tokens that are not valid; it must be a subset of valid")
        alpha = check_alpha(alpha)
        k = check_k(k)
        F, N, D = x.shape
        keep = torch.zeros((F, N), dtype=torch.bool, device=x.device)
        assign = torch.full((F, N), -1, dtype=torch.int64, device=x.device)
        out = torch.empty_like(x)
        if F == 0:
            return keep, out, assign
        c8 = cand.contiguous().view(torch.uint8)
        ac = _agg.assign_config(N)
        gc = _agg.aggregate_config(N, D, x.dtype)
        upcast = upcast_flag(_agg._anchor_aggregate_kernel, x.dtype)
        round_bf16 = bool(kernel_interpreted(_agg._anchor_aggregate_kernel) and x.dtype == torch.bfloat16)
        one_minus_a = float(torch.tensor(1.0 - alpha, dtype=torch.float32))
        z = lambda: torch.zeros((F, N), dtype=torch.float32, device=x.device)  # noqa: E731
        rho, delta, gamma = z(), z(), z()
        for f0, f1, g in self._chunks():
            self._scores_chunk(f0, f1, g, c8, cand, k, rho, delta, gamma)
            kc = stable_topk_mask(gamma[f0:f1], k_keep[f0:f1], cand[f0:f1])
            if extra is not None:
                kc |= extra[f0:f1]
            lonely = valid[f0:f1].any(1) & ~kc.any(1)
            if bool(lonely.any()):
                f = f0 + int(torch.nonzero(lonely)[0, 0])
                raise ValueError(f"keep has no kept token in frame {f}, which has valid tokens to aggregate")
            keep[f0:f1] = kc
            k8 = keep.view(torch.uint8)
            nf = f1 - f0
            _agg._anchor_assign_kernel[(nf, triton.cdiv(N, ac["BLOCK_M"]))](
                g, self.geo.sq, self.geo.valid_u8, k8, assign, f0, N,
                BLOCK_M=ac["BLOCK_M"], BLOCK_N=ac["BLOCK_N"], num_warps=ac["num_warps"],
            )
            _agg._anchor_aggregate_kernel[(nf, triton.cdiv(N, gc["BLOCK_M"]), triton.cdiv(D, gc["BLOCK_D"]))](
                x, out, self.geo.valid_u8, k8, assign, f0, N, D, N * D, one_minus_a, alpha,
                BLOCK_M=gc["BLOCK_M"], BLOCK_N=gc["BLOCK_N"], BLOCK_D=gc["BLOCK_D"],
                UPCAST=upcast, INPUT_PRECISION=self.geo.input_precision, ROUND_BF16=round_bf16,
                num_warps=gc["num_warps"],
            )
        self.passes += 1
        return keep, out, assign
