"""Triton implementations of the vista_kernels ops, keyed by the dispatcher's op names.

Every host wrapper has the reference's signature (plus keyword-only tuning knobs), runs the same
input guards, then launches the fused kernels. Importing this module imports triton; the dispatcher
falls back to the torch references when that fails.
"""
from .anchor_aggregate import anchor_aggregate_triton
from .dpc_scores import (
    dpc_delta_triton,
    dpc_gamma_triton,
    dpc_scores_triton,
    dpc_select_triton,
    knn_density_triton,
)
from .frame_stats import frame_cosine_triton, frame_geometry_triton, frame_means_triton, frame_stats_triton
from .prune_frames import prune_frames_triton
from .scout_score_reduce import scout_score_reduce_triton

TRITON_OPS = {
    "frame_cosine": frame_cosine_triton,
    "knn_density": knn_density_triton,
    "dpc_delta": dpc_delta_triton,
    "dpc_gamma": dpc_gamma_triton,
    "dpc_select": dpc_select_triton,
    "anchor_aggregate": anchor_aggregate_triton,
    "scout_score_reduce": scout_score_reduce_triton,
}

__all__ = [
    "TRITON_OPS",
    "anchor_aggregate_triton",
    "dpc_delta_triton",
    "dpc_gamma_triton",
    "dpc_scores_triton",
    "dpc_select_triton",
    "frame_cosine_triton",
    "frame_geometry_triton",
    "frame_means_triton",
    "frame_stats_triton",
    "prune_frames_triton",
    "knn_density_triton",
    "scout_score_reduce_triton",
]
