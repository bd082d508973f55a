"""vista: query-guided visual token pruning for video LLMs (Vista-LLM).

Quick use::

    import vista
    pruned = vista.prune_video(x, q, scout_scores=None, config=vista.VistaConfig(retention=0.15))
    vista.apply_vista(model, vista.VistaConfig(retention=0.15))   # patch a transformers model

``import vista`` is light (no torch / transformers import): every public name is loaded from its
module on first use (PEP 562 module ``__getattr__``).
"""

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package). To export a new name, add a
# line here and to __all__ (it is derived from this table).
_LAZY = {
    "BudgetPlan": ".budget",
    "allocate_budgets": ".budget",
    "frame_budgets": ".budget",
    "plan_budgets": ".budget",
    "retained_count": ".budget",
    "VistaConfig": ".config",
    "PrunedVideo": ".prune",
    "prune_video": ".prune",
    "prune_videos": ".prune",
    "apply_vista": ".models",
    "remove_vista": ".models",
    "SemanticScout": ".scout",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'vista' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
