"""vista_kernels: the Vista pruning math as standalone ops, each with a PyTorch reference and a
Triton implementation, selected with ``backend=``:

* ``"torch"``  - the batched PyTorch reference (CPU or CUDA).
* ``"triton"`` - fused Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``).
* ``"auto"``   - ``$VISTA_BACKEND`` if set, else triton for CUDA tensors and torch otherwise.

Shapes: x is (F, N, D) float32/float16/bfloat16, valid an optional (F, N) bool mask (None = all).

The whole per-frame pruning of a video is two ops, both sync-free on a GPU:
``frame_stats`` (frame means, consecutive cosines and the Gram matrices, one read of x) and
``prune_frames`` (foveal top-k, DPC-KNN anchors, nearest-anchor aggregation, compacted output;
x read a second time). Every public op is registered with ``torch.library`` (namespace
``vista_kernels``), so ``torch.compile(fullgraph=True)`` and CUDA graphs accept them.

One name per op group, used for its Triton kernel, its PyTorch reference and its tests:

| op group: public ops | kernel ``ops/`` | reference ``reference/`` | tests ``tests/kernels/`` |
|---|---|---|---|
| frame_stats: frame_stats, frame_cosine | frame_stats.py | frame_stats.py | test_frame_stats.py |
| dpc_scores: knn_density, dpc_delta, dpc_gamma, dpc_select | dpc_scores.py | dpc_scores.py | test_dpc_scores.py |
| anchor_aggregate: anchor_aggregate | anchor_aggregate.py | anchor_aggregate.py | test_anchor_aggregate.py |
| prune_frames: prune_frames | prune_frames.py | prune_frames.py | test_prune_frames.py |
| scout_score_reduce: scout_score_reduce | scout_score_reduce.py | scout_score_reduce.py | test_scout_score_reduce.py |

Around them: ``dispatch.py`` (the public ops: argument checks, backend choice), ``checks.py``
(argument checks, ``test_checks.py``), ``library.py`` (``torch.library`` registration),
``reference/_common.py`` (geometry, chunking and top-k helpers of the references), ``aot.py``
(ahead-of-time compilation and spill check, ``test_aot.py``), ``testing.py`` (sync and launch counters).
"""
from __future__ import annotations

from . import reference
from .checks import check_finite, token_limit
from .dispatch import (
    BACKENDS,
    anchor_aggregate,
    dpc_delta,
    dpc_gamma,
    dpc_select,
    frame_cosine,
    frame_stats,
    interpreter_active,
    knn_density,
    prune_frames,
    resolve_backend,
    scout_score_reduce,
)
from .reference import (  # the references, reachable from the package as before the layout change
    anchor_aggregate_torch,
    dpc_delta_torch,
    dpc_gamma_torch,
    dpc_select_torch,
    frame_cosine_torch,
    frame_means_torch,
    frame_stats_torch,
    knn_density_torch,
    scout_score_reduce_torch,
)
from .reference._common import DUPLICATE_RTOL, stable_topk_mask
from .reference.prune_frames import PrunedFrames

__all__ = [
    "BACKENDS",
    "DUPLICATE_RTOL",
    "PrunedFrames",
    "stable_topk_mask",
    "check_finite",
    "frame_stats",
    "prune_frames",
    "token_limit",
    "anchor_aggregate",
    "dpc_delta",
    "dpc_gamma",
    "dpc_select",
    "frame_cosine",
    "frame_means_torch",
    "interpreter_active",
    "knn_density",
    "reference",
    "resolve_backend",
    "scout_score_reduce",
]
