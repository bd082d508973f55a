"""lmms-eval task functions for local multiple-choice video questions.

The records are those of ``vista eval --bench jsonl``: ``{"video": path, "question": str,
"options": [str, ...], "answer": "B" | 1 | "option text"}``. An lmms-eval task YAML points at them
by absolute module path (lmms-eval imports ``!function`` targets that are not next to the YAML as
modules), so the prompt and the letter extraction are exactly those of ``vista eval``
(:func:`vista.eval.prompt.build_prompt`, :func:`vista.eval.prompt.extract_letter`)::

    task: my_local_mc
    dataset_path: json
    dataset_kwargs: {data_files: {test: /data/my_questions.json}}
    test_split: test
    output_type: generate_until
    doc_to_visual: !function vista.integrations.lmms_tasks.doc_to_visual
    doc_to_text: !function vista.integrations.lmms_tasks.doc_to_text
    doc_to_target: !function vista.integrations.lmms_tasks.doc_to_target
    process_results: !function vista.integrations.lmms_tasks.process_results
    generation_kwargs: {max_new_tokens: 16, temperature: 0, do_sample: false}
    metric_list:
      - {metric: accuracy, aggregation: mean, higher_is_better: true}

Relative ``video`` paths are resolved against ``$VISTA_VIDEO_DIR`` (else the working directory).
``lmms_eval_specific_kwargs: {default: {prompt_style: qwen}}`` selects the Qwen2.5-VL prompt
layout (default ``llava``).
"""
from __future__ import annotations

import os
from typing import List, Optional

from ..eval.prompt import LETTERS, build_prompt, extract_letter, strip_option_label
from ..eval.readers import _answer_letter

VIDEO_DIR_ENV = "VISTA_VIDEO_DIR"


def _options(doc) -> List[str]:
    opts = doc.get("options") if isinstance(doc, dict) else None
    if isinstance(opts, (str, bytes)) or not isinstance(opts, (list, tuple)):
        raise ValueError(f"doc['options'] must be a list of option strings, got {type(opts).__name__}")
    return [strip_option_label(o, i) for i, o in enumerate(opts)]


def doc_to_visual(doc) -> List[str]:
    """``[video path]``: absolute, or relative to ``$VISTA_VIDEO_DIR`` (else the working dir)."""
    v = doc.get("video") if isinstance(doc, dict) else None
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"doc['video'] must be a non-empty path string, got {v!r}")
    v = os.path.expanduser(v)
    if not os.path.isabs(v):
        v = os.path.join(os.environ.get(VIDEO_DIR_ENV) or os.getcwd(), v)
    return [v]


def doc_to_text(doc, lmms_eval_specific_kwargs: Optional[dict] = None) -> str:
    """The question, lettered options and the answer instruction (``vista eval``'s prompt)."""
    kw = lmms_eval_specific_kwargs or {}
    style = kw.get("prompt_style", "llava")
    q = doc.get("question") if isinstance(doc, dict) else None
    text = build_prompt(q, _options(doc), style)
    return f"{kw.get('pre_prompt', '')}{text}{kw.get('post_prompt', '')}"


def doc_to_target(doc) -> str:
    """The answer as a letter (a letter, 0-based index or option text in the record)."""
    letter = _answer_letter(doc.get("answer"), _options(doc))
    if letter is None:
        raise ValueError(f"doc['answer'] {doc.get('answer')!r} names none of the {len(_options(doc))} options")
    return letter


def process_results(doc, results) -> dict:
    """``{"accuracy": 1.0 | 0.0}`` from the reply's extracted letter (``extract_letter``)."""
    reply = results[0] if results else ""
    opts = _options(doc)
    pred = extract_letter(reply, opts)
    return {"accuracy": float(pred is not None and pred == doc_to_target(doc))}


__all__ = ["LETTERS", "VIDEO_DIR_ENV", "doc_to_target", "doc_to_text", "doc_to_visual", "process_results"]
