"""Vista on stock transformers backbones: one-line, in-place, reversible.

Supported families (``family_of``): ``"llava_onevision"`` (LLaVA-OneVision and LLaVA-Video, both
``LlavaOnevisionForConditionalGeneration``) and ``"qwen2_5_vl"`` (``Qwen2_5_VLForConditionalGeneration``).

Usage::

    from vista.models import load_pretrained, apply_vista
    model, processor = load_pretrained("/models/llava-onevision-qwen2-7b-ov-hf", device="cuda")
    apply_vista(model, vista.VistaConfig(retention=0.15), processor=processor)
    inputs = processor(text=prompt, videos=[frames], return_tensors="pt").to(model.device)
    out = model.generate(**inputs, max_new_tokens=64)           # question inferred from the prompt
    out = model.generate(**inputs, max_new_tokens=64, question="what is the man holding?")  # override

Where things live:

* :mod:`vista.models.load` -- ``family_of`` and ``load_pretrained`` (checkpoint checks, dtype and
  attention implementation).
* :mod:`vista.models.patch` -- ``apply_vista`` / ``remove_vista`` / ``last_prune_info`` and the
  instance wrappers they install (``forward``, ``get_video_features``, ``get_image_features``,
  ``generate``, ``_expand_multimodal_outputs``).
* :mod:`vista.models.common` -- the family-independent machinery and the design notes
  (placeholder-count contract, flow of one prefill, thread-local per-call state, scout launch,
  pruning of the items, ``AdapterBase``).
* one adapter per backbone family: :mod:`vista.models.llava_onevision` (pooling, image newline,
  ragged batches) and :mod:`vista.models.qwen2_5_vl` (temporal pairs, M-RoPE position ids of the
  kept tokens).

Adding a backbone: write ``vista/models/<family>.py`` with an adapter class derived from
``common.AdapterBase`` (``grids``, ``split``, ``assemble``, ``placeholder_count``,
``scout_pixels``, ``video_kwargs``, ``image_features``, ``before_forward``, the processor patch and
the feature-cache hooks; the two existing adapters show each) and a module-level ``ADAPTER``; then
register its ``model_type`` in ``load._MODEL_TYPES`` (and its transformers class in
``load_pretrained``) and the adapter in ``patch._ADAPTERS``. Tests go to ``tests/models/``.
"""
from __future__ import annotations

from . import common
from .load import family_of, load_pretrained
from .patch import apply_vista, is_patched, last_prune_info, remove_vista, vista_config

__all__ = [
    "apply_vista",
    "common",
    "family_of",
    "is_patched",
    "last_prune_info",
    "load_pretrained",
    "remove_vista",
    "vista_config",
]
