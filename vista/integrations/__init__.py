"""Integrations of Vista with other tools.

* :mod:`vista.integrations.lmms_eval` -- an lmms-eval model (``--model vista``), registered through
  the ``lmms_eval.models`` entry-point group by :func:`lmms_eval_manifests` (``pip install
  "vista-llm[lmms]"``; the entry point itself is in :mod:`vista.integrations.registry`).
* :mod:`vista.integrations.lmms_tasks` -- task functions for local multiple-choice JSON/JSONL files
  (the ``vista eval --bench jsonl`` record layout) usable from an lmms-eval task YAML.

Importing this package is cheap: lmms-eval is imported only when its model class is loaded.
"""
from .registry import LMMS_CLASS_PATH, LMMS_MODEL_ID, lmms_eval_manifests

__all__ = ["LMMS_CLASS_PATH", "LMMS_MODEL_ID", "lmms_eval_manifests"]
