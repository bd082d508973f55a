"""Pure-PyTorch references of every vista_kernels op (batched over frames, fp32 math, CPU/CUDA)."""
from .anchor_aggregate import anchor_aggregate_torch
from .dpc_scores import dpc_delta_torch, dpc_gamma_torch, dpc_select_torch, knn_density_torch
from .frame_stats import frame_cosine_torch, frame_means_torch, frame_stats_torch
from .scout_score_reduce import scout_score_reduce_torch

__all__ = [
    "anchor_aggregate_torch",
    "dpc_delta_torch",
    "dpc_gamma_torch",
    "dpc_select_torch",
    "frame_cosine_torch",
    "frame_means_torch",
    "frame_stats_torch",
    "knn_density_torch",
    "scout_score_reduce_torch",
]
