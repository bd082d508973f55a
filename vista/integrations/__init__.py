"""Integrations of Vista with other tools.

* :mod:`vista.integrations.lmms_eval` -- an lmms-eval model (``--model vista``), registered through
  the ``lmms_eval.models`` entry-point group by :func:`lmms_eval_manifests` (``pip install
  "vista-llm[lmms]"``).
* :mod:`vista.integrations.lmms_tasks` -- task functions for local multiple-choice JSON/JSONL files
  (the ``vista eval --bench jsonl`` record layout) usable from an lmms-eval task YAML.

Importing this package is cheap: lmms-eval is imported only when its model class is loaded.
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
