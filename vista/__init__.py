"""vista: query-guided visual token pruning for video LLMs (Vista-LLM).

Quick use::

    import vista
    pruned = vista.prune_video(x, q, scout_scores=None, config=vista.VistaConfig(retention=0.15))
    vista.apply_vista(model, vista.VistaConfig(retention=0.15))   # patch a transformers model
"""
from .budget import BudgetPlan, allocate_budgets, frame_budgets, plan_budgets, retained_count
from .config import VistaConfig
from .prune import PrunedVideo, prune_video, prune_videos

__version__ = "0.1.0"

_LAZY = {
    "apply_vista": ("vista.models", "apply_vista"),
    "remove_vista": ("vista.models", "remove_vista"),
    "SemanticScout": ("vista.scout", "SemanticScout"),
}


def __getattr__(name):  # lazy: keep `import vista` free of transformers' import cost
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'vista' has no attribute {name!r}")


__all__ = [
    "BudgetPlan",
    "PrunedVideo",
    "SemanticScout",
    "VistaConfig",
    "allocate_budgets",
    "apply_vista",
    "frame_budgets",
    "plan_budgets",
    "prune_video",
    "prune_videos",
    "remove_vista",
    "retained_count",
]
