"""How lmms-eval finds Vista: the ``lmms_eval.models`` entry point (declared in ``setup.py`` as
``vista.integrations:lmms_eval_manifests``) returns the manifest below.

Importing this module is cheap: lmms-eval is imported only when the entry point is called.
"""
from __future__ import annotations

LMMS_MODEL_ID = "vista"
LMMS_CLASS_PATH = "vista.integrations.lmms_eval.VistaLMMS"


def lmms_eval_manifests():
    """Entry point of the ``lmms_eval.models`` group: the manifest that makes ``--model vista``
    resolve to :class:`vista.integrations.lmms_eval.VistaLMMS` (also as ``vista_llm``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=LMMS_MODEL_ID, simple_class_path=LMMS_CLASS_PATH, aliases=("vista_llm",))]


__all__ = ["LMMS_CLASS_PATH", "LMMS_MODEL_ID", "lmms_eval_manifests"]
