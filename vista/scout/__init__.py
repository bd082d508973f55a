"""Semantic scout (PAPER.md §3.3): question-conditioned patch scores from a BLIP-2 ITM Q-Former.

Quick use::

    from vista.scout import SemanticScout, map_scores_to_grid
    scout = SemanticScout.from_pretrained("/models/blip2-itm-vit-g")       # local checkpoint dir
    s = scout.scores(frames, "what is the man holding?")                  # (T, 256) fp32
    s14 = map_scores_to_grid(s, scout.grid_hw, (14, 14))                 # LLaVA-OneVision grid

``build_tiny_scout()`` makes a random-weight scout offline for tests and demos.
"""
from .grid import area_weights, map_scores_to_grid
from .scout import (
    ScoutCheckpointError,
    SemanticScout,
    check_checkpoint_dir,
    frames_from_pixel_values,
    frames_from_qwen_pixel_values,
    frames_to_tensor,
    load_scout_model,
    load_scout_processor,
)
from .tiny import build_tiny_scout

__all__ = [
    "ScoutCheckpointError",
    "SemanticScout",
    "area_weights",
    "build_tiny_scout",
    "check_checkpoint_dir",
    "frames_from_pixel_values",
    "frames_from_qwen_pixel_values",
    "frames_to_tensor",
    "load_scout_model",
    "load_scout_processor",
    "map_scores_to_grid",
]
