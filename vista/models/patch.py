"""The in-place patch: ``apply_vista`` / ``remove_vista`` and the wrappers they install.

``apply_vista`` wraps, on the model *instance*, the inner model's ``forward`` /
``get_video_features`` / ``get_image_features`` and the outer model's ``generate`` /
``_expand_multimodal_outputs`` (one ``_make_*`` factory each, built through
:class:`vista.models.common.PatchedMethod`), lets the family adapter patch the rest (Qwen's rope
index) and the processor, and records everything in a :class:`vista.models.common.VistaState`.
The wrappers keep no per-call state of their own: what one ``generate()`` call saw lives in the
state's thread-local fields.

See :mod:`vista.models.common` for the design (placeholder-count contract, flow of a prefill).
"""
from __future__ import annotations

import functools
import json
from typing import List, Optional

import torch

from ..config import VistaConfig
from .common import (
    PatchedMethod,
    PhaseClock,
    VideoItem,
    VistaState,
    assign_questions,
    bind_arguments,
    check_config,
    check_scout,
    denormalize_frames,
    get_state,
    launch_scout,
    notice_once,
    record_ready,
    patch_attr,
    prune_items,
    resolve_info,
    unpatch_all,
    _STATE_ATTR,
)
from .llava_onevision import ADAPTER as _LLAVA
from .load import family_of
from .qwen2_5_vl import ADAPTER as _QWEN

_ADAPTERS = {
    "llava_onevision": _LLAVA,
    "qwen2_5_vl": _QWEN,
}


# ----------------------------------------------------------------------------------------------
# patching
# ----------------------------------------------------------------------------------------------
def _make_generate(model, inner, adapter, orig):
    @functools.wraps(orig)
    def generate(*args, question=None, vista_cache=None, **kwargs):
        st = get_state(model)
        if st is None:
            return orig(*args, **kwargs)
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        prev = st.pending
        st.pending = {"input_ids": ids, "attention_mask": kwargs.get("attention_mask"), "question": question,
                      "cache": vista_cache}
        try:
            return orig(*args, **kwargs)
        finally:
            st.pending = prev

    return generate


def _make_get_video_features(model, inner, adapter, orig):
    @functools.wraps(orig)
    def get_video_features(*args, **kwargs):
        st = get_state(model)
        if st is None:
            return orig(*args, **kwargs)
        a = bind_arguments(orig, args, kwargs)
        ragged = isinstance(a.get("pixel_values_videos"), (list, tuple))
        cache = _call_cache(st, a, ragged, adapter, inner)
        if not st.active and not ragged and cache is None:
            return orig(*args, **kwargs)
        if ragged:
            call = lambda: _ragged_video_features(inner, orig, a)  # noqa: E731
        elif cache is not None:
            call = lambda: _cached_video_features(inner, adapter, orig, a, args, kwargs, cache)  # noqa: E731
        else:
            call = lambda: orig(*args, **kwargs)  # noqa: E731
        if st.scout is None or st.pending is None or a.get("pixel_values_videos") is None or not st.active:
            return _tag(call(), a, None)
        items = [VideoItem(index=k, grid=g) for k, g in enumerate(adapter.grids(inner, a))]
        assign_questions(st, inner, items, st.pending.get("input_ids"), st.pending.get("attention_mask"),
                         st.pending.get("question"))
        proc = st.processors[0] if st.processors else None
        mean, std = adapter.norm_stats(proc)
        isz = getattr(st.scout, "image_size", None)
        size = int(isz[0] if isinstance(isz, (tuple, list)) else isz) if isz is not None else None
        dev = _video_device(inner, a["pixel_values_videos"])
        # the scout's ViT embeddings depend on the backbone's pixels (frames are rebuilt from them)
        variant = json.dumps({"mean": list(mean), "std": list(std), "size": size})
        splittable = (cache is not None and cache.enabled and callable(getattr(st.scout, "vision_embeddings", None))
                      and callable(getattr(st.scout, "scores_from_embeddings", None)))
        work = []
        for it in items:
            if it.question is None:
                continue
            emb = cache.scout_embeds(it.index, variant, dev) if splittable else None
            frames = None
            if emb is None:
                frames = denormalize_frames(adapter.scout_pixels(a, it.index, inner), mean, std, size)
            store = (functools.partial(cache.store_scout_embeds, it.index, variant)
                     if splittable and emb is None else None)
            work.append((it.index, frames, it.question, it.grid[1:], adapter.temporal_pairs, it.grid[0],
                         emb, store))
        ready = record_ready(dev)  # frames exist: the side stream may start
        out = call()  # the vision tower is queued on the main stream first ...
        handle = launch_scout(st, work, dev, ready, cache)  # ... then the scout on a side stream
        return _tag(out, a, handle)

    return get_video_features


def _call_cache(st, args, ragged, adapter, inner):
    """The ``vista_cache=`` handle of this generate() call when it can serve this batch (one
    stacked batch whose video count matches the handle's keys), else None."""
    pend = st.pending
    cache = pend.get("cache") if pend is not None else None
    if cache is None or ragged or args.get("pixel_values_videos") is None:
        return None
    try:
        n = len(adapter.grids(inner, args))
    except (ValueError, TypeError, AttributeError):
        return None
    return cache if n == cache.num_videos else None


def _cached_video_features(inner, adapter, orig, args, call_args, call_kwargs, cache):
    """The video features through the per-video cache: all videos cached -> no vision tower;
    otherwise the stock encoder runs and its per-video blocks are stored. Times the vision phase."""
    variant = adapter.feature_variant(args)
    dev = _video_device(inner, args["pixel_values_videos"])
    clock = PhaseClock(torch.device(dev).type == "cuda")
    t0 = clock.mark()
    blocks = [cache.features(k, variant, dev) for k in range(cache.num_videos)] if cache.enabled else [None]
    if all(b is not None for b in blocks):
        out = adapter.features_output(blocks)
        if call_kwargs.get("return_dict") is False:  # as the stock @can_return_tuple would
            out = out.to_tuple()
    else:
        out = orig(*call_args, **call_kwargs)
        if cache.enabled and getattr(out, "pooler_output", None) is not None:  # (not a return_dict=False tuple)
            for k, b in enumerate(adapter.feature_blocks(out)):
                cache.store_features(k, variant, b)
    cache.add_time("vision_s", clock.since(t0))
    return out


def _make_get_image_features(model, inner, adapter, orig):
    """Tag image-encoder outputs with their ``image_grid_thw`` (generate() pops it from the
    forward's kwargs once the encoder ran; the Qwen position fix-up needs it)."""

    @functools.wraps(orig)
    def get_image_features(*args, **kwargs):
        out = orig(*args, **kwargs)
        if get_state(model) is not None:
            try:
                out._vista_image_grid_thw = bind_arguments(orig, args, kwargs).get("image_grid_thw")
            except Exception:  # tuple outputs
                pass
        return out

    return get_image_features


def _make_expand(model, inner, adapter, orig):
    """generate(num_beams>1 / num_return_sequences>1) repeats every sample's encoder outputs; the
    stock helper matches encoder output lengths with placeholder counts, which pruning changes.
    Expand the (still unpruned) video outputs here by the pruned counts; images go the stock way."""

    @functools.wraps(orig)
    def _expand_multimodal_outputs(input_ids, mm_encoder_output, expand_size=1, inputs_embeds=None):
        st = get_state(model)
        if st is None or expand_size == 1 or not mm_encoder_output or input_ids is None:
            return orig(input_ids, mm_encoder_output, expand_size=expand_size, inputs_embeds=inputs_embeds)
        # the image output's tag (Qwen's image_grid_thw) must follow the stock image expansion
        image = mm_encoder_output.get("image")
        image_grid = getattr(image, "_vista_image_grid_thw", None)
        image_order = None
        if isinstance(image_grid, torch.Tensor) and getattr(image, "pooler_output", None) is not None:
            image_order = _expansion_order(input_ids, inner.config.image_token_id,
                                           [len(o) for o in image.pooler_output], expand_size)
        out = _expand_video(st, inner, adapter, orig, input_ids, mm_encoder_output, expand_size, inputs_embeds)
        if image_order is not None and out.get("image") is not None:
            try:
                out["image"]._vista_image_grid_thw = image_grid[torch.tensor(image_order, device=image_grid.device)]
            except Exception:  # tuple outputs
                pass
        return out

    return _expand_multimodal_outputs


def _expand_video(st, inner, adapter, orig, input_ids, mm_encoder_output, expand_size, inputs_embeds):
    """The encoder outputs expanded as ``orig`` (the stock helper) would, except an unpruned video
    output, which is repeated by its pruned placeholder counts (:func:`_reorder_video`)."""
    video = mm_encoder_output.get("video")
    if video is None or getattr(video, "_vista_pruned", False):
        return orig(input_ids, mm_encoder_output, expand_size=expand_size, inputs_embeds=inputs_embeds)
    ragged = bool(getattr(video, "_vista_ragged", False))
    if not st.active and not ragged:
        return orig(input_ids, mm_encoder_output, expand_size=expand_size, inputs_embeds=inputs_embeds)
    grid_thw = getattr(video, "_vista_grid_thw", None)
    items = adapter.split(inner, video, {"video_grid_thw": grid_thw})
    counts = [adapter.placeholder_count(it, st.config) for it in items]
    order = _expansion_order(input_ids, adapter.video_token_id(inner.config), counts, expand_size)
    if order is None:
        raise ValueError("video placeholders of a sample do not match its videos' pruned token counts")
    new = _reorder_video(video, order, grid_thw, ragged)
    rest = {key: v for key, v in mm_encoder_output.items() if key != "video"}
    out = orig(input_ids, rest, expand_size=expand_size, inputs_embeds=inputs_embeds) if rest else {}
    out = dict(out)
    out["video"] = new
    return out


def _reorder_video(video, order, grid_thw, ragged):
    """A copy of the video-features output with its per-video features, scout results and grids
    taken in ``order`` (expanded video -> original video); the order is recorded (composed with
    an earlier expansion) as ``_vista_order``."""
    po = video.pooler_output
    if isinstance(po, torch.Tensor):
        new_po = po[torch.tensor(order, device=po.device)]
    else:
        new_po = type(po)(po[i] for i in order) if isinstance(po, tuple) else [po[i] for i in order]
    new = type(video)(**dict(video.items()))
    new.pooler_output = new_po
    handle = getattr(video, "_vista_scout", None)
    if handle is not None:
        handle = dict(handle, raw={j: handle["raw"][i] for j, i in enumerate(order) if i in handle["raw"]})
    new._vista_scout = handle
    new._vista_grid_thw = None if grid_thw is None else grid_thw[torch.tensor(order, device=grid_thw.device)]
    new._vista_ragged = ragged
    prev_order = getattr(video, "_vista_order", None)  # expanded twice: compose
    new._vista_order = order if prev_order is None else [prev_order[i] for i in order]
    return new


def _expansion_order(input_ids, token_id, counts, expand_size):
    """Order of the encoder outputs after generate()'s expansion, as the stock helper does it:
    each sample's group of outputs (in placeholder order) repeated ``expand_size`` times
    ([A, B] -> [A, B, A, B]). ``counts``: placeholder tokens of each output. None when the
    placeholders of a sample do not add up to whole outputs."""
    per_row = (input_ids == token_id).sum(-1).tolist()
    order, k = [], 0
    for n in per_row:
        mine = []
        while n > 0 and k < len(counts):
            mine.append(k)
            n -= counts[k]
            k += 1
        if n != 0:
            return None
        order += mine * expand_size
    return order if k == len(counts) else None


def _video_device(inner, pixel_values_videos):
    if isinstance(pixel_values_videos, torch.Tensor) and pixel_values_videos.device.type != "cpu":
        return pixel_values_videos.device
    return next(inner.parameters()).device


def _ragged_video_features(inner, orig, args):
    """Stock get_video_features run video by video (a list of (T_k, 3, H, W) tensors); the
    output's pooler_output is a list of per-video features."""
    p = next(inner.parameters())
    vt = getattr(inner, "vision_tower", None)
    dtype = next(vt.parameters()).dtype if vt is not None else p.dtype
    rest = {k: v for k, v in args.items() if k != "pixel_values_videos"}
    rest["return_dict"] = True
    outs = [orig(v.to(device=p.device, dtype=dtype)[None], **rest) for v in args["pixel_values_videos"]]
    out = outs[0]
    out.pooler_output = [o.pooler_output[0] for o in outs]
    out._vista_ragged = True  # a list of per-video features the stock model cannot take
    return out


def _tag(out, args, handle):
    """Attach the scout handle and the grid (generate() pops ``video_grid_thw`` from the forward's
    kwargs once the encoder ran) to a video-features output."""
    try:
        out._vista_scout = handle
        out._vista_grid_thw = args.get("video_grid_thw")
    except Exception:  # tuple outputs (return_dict=False): nothing to attach to
        pass
    return out


def _make_forward(model, inner, adapter, orig):
    """The inner model's forward: prunes the videos of a prefill (encoding them first when the
    caller gave pixels only) and hands the stock forward the pruned features; every other call
    (no state, retention 1.0, no placeholders, already pruned) goes to the stock forward as is."""

    @functools.wraps(orig)
    def forward(*args, question=None, **kwargs):
        st = get_state(model)
        if st is None:
            return orig(*args, **kwargs)
        a = bind_arguments(orig, args, kwargs)
        mm = a.get("mm_encoder_outputs") or {}
        video_out = mm.get("video")
        if not _prunes(st, inner, adapter, a, video_out):
            return orig(*args, **kwargs)
        ids = a.get("input_ids")
        if question is None and st.pending is not None:
            question = st.pending.get("question")
        mask = a.get("attention_mask") if isinstance(a.get("attention_mask"), torch.Tensor) else None
        mm = dict(mm)
        if video_out is None:
            video_out = _encode_videos(st, inner, adapter, a, ids, mask, question)
        _encode_images_and_grids(inner, adapter, a, mm, video_out)
        items = adapter.split(inner, video_out, a)
        assign_questions(st, inner, items, ids, mask, question, order=getattr(video_out, "_vista_order", None))
        handle = getattr(video_out, "_vista_scout", None)
        if st.scout is not None and handle is None:
            notice_once("scout:nopixels", "vista: video features were given without pixel values (or without "
                        "input_ids); the scout is skipped for them")
        pruned = prune_items(st, inner, items, handle)
        new_out = adapter.assemble(video_out, items, pruned, st.config)
        new_out._vista_pruned = True
        mm["video"] = new_out
        a["mm_encoder_outputs"] = mm
        try:
            adapter.before_forward(st, inner, a, items, pruned)
            return orig(**a)
        finally:
            st.kept = None

    return forward


def _prunes(st, inner, adapter, a, video_out) -> bool:
    """Whether this forward call (bound arguments ``a``) prunes videos: False for retention 1.0
    (the stock path, untouched; ragged LLaVA batches excepted), for calls without videos, with
    already pruned features, or without video placeholders in ``input_ids`` (decoding steps)."""
    pvv = a.get("pixel_values_videos")
    # ragged LLaVA batches (marked by _ragged_video_features); a list pooler_output alone is
    # no sign of one: the stock beam expansion turns Qwen's tuple into a list
    ragged = isinstance(pvv, (list, tuple)) or bool(getattr(video_out, "_vista_ragged", False))
    if not st.active and not ragged:
        return False
    if (pvv is None and video_out is None) or getattr(video_out, "_vista_pruned", False):
        return False
    ids = a.get("input_ids")
    vid = adapter.video_token_id(inner.config)
    return not (ids is not None and not bool((ids == vid).any()))


def _encode_videos(st, inner, adapter, a, ids, mask, question):
    """Run the (patched) video encoder on the pixels of a forward call made without
    ``generate()``, with this call's ids / mask / question as the pending call; the pixels are
    then dropped from ``a`` so the stock forward does not encode them again."""
    prev = st.pending
    st.pending = {"input_ids": ids, "attention_mask": mask, "question": question,
                  "cache": prev.get("cache") if prev is not None else None}
    try:
        video_out = inner.get_video_features(**adapter.video_kwargs(a), return_dict=True)
    finally:
        st.pending = prev
    a["pixel_values_videos"] = None
    return video_out


def _encode_images_and_grids(inner, adapter, a, mm, video_out) -> None:
    """Encode the call's images into ``mm["image"]`` (the stock forward gets features only), and
    put back the image / video grids generate() popped from the kwargs (from the outputs' tags)."""
    if a.get("pixel_values") is not None and mm.get("image") is None:
        mm["image"] = adapter.image_features(inner, a)
        a["pixel_values"] = None
    if a.get("image_grid_thw") is None and getattr(mm.get("image"), "_vista_image_grid_thw", None) is not None:
        a["image_grid_thw"] = mm["image"]._vista_image_grid_thw
    if a.get("video_grid_thw") is None and getattr(video_out, "_vista_grid_thw", None) is not None:
        a["video_grid_thw"] = video_out._vista_grid_thw


def apply_vista(model, config: Optional[VistaConfig] = None, scout=None, processor=None):
    """Patch a loaded transformers backbone (and its processor) in place to prune video tokens.

    Args:
        model: ``LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision / LLaVA-Video) or
            ``Qwen2_5_VLForConditionalGeneration``.
        config: VistaConfig (default ``VistaConfig()``: retention 0.15).
        scout: optional semantic scout with ``.scores(frames (T, 3, S, S) float in [0, 1], question)
            -> (T, P)`` (``vista.scout.SemanticScout``); ``grid_hw`` / ``image_size`` attributes are
            used when present.
        processor: the model's processor. Patched to emit the pruned placeholder count; needed for
            retention < 1 with inputs built by the processor, for ``question=`` overrides and for
            the scout's question text.
    Returns:
        the same model. Applying twice replaces config and scout (and links a new processor).
        ``remove_vista(model)`` undoes everything. ``copy.deepcopy(model)`` gives a patched copy
        running its own weights; it shares the scout, the tokenizer and the processor link (the
        processor stays patched by the original, so give the copy the same retention/newline).
        Concurrent ``generate()`` calls on one model keep their own questions and prune info
        (per-thread state); Qwen2.5-VL's stock ``rope_deltas`` cache is still one per model.
    """
    config = check_config(config)
    scout = check_scout(scout)
    family = family_of(model)
    adapter = _ADAPTERS[family]
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a transformers model), got {type(model).__name__}")
    if processor is not None:
        adapter.check_processor(processor)
    st = get_state(model)
    if st is not None:  # idempotent: replace settings
        _reapply(st, adapter, config, scout, processor)
        return model
    inner = adapter.inner(model)
    st = VistaState(config=config, family=family, adapter=adapter, scout=scout)
    try:
        _install_wrappers(st, model, inner, adapter)
        if processor is not None:
            _link_processor(st, adapter, processor)
    except Exception:
        unpatch_all(st)
        raise
    model.__dict__[_STATE_ATTR] = st
    return model


def _reapply(st, adapter, config, scout, processor) -> None:
    """``apply_vista`` on a patched model: new config and scout, a fresh prune info, and the
    processor linked (patched) unless it is linked and still patched already."""
    st.config = config
    st.scout = scout
    st.reset_info()
    linked = processor is not None and any(p is processor for p in st.processors)
    # a deep copy shares the original's processor link; once the original let go of it
    # (remove_vista), the copy patches it itself
    if processor is not None and (not linked or "replace_video_token" not in vars(processor)):
        _link_processor(st, adapter, processor, linked=linked)


def _link_processor(st, adapter, processor, linked=False) -> None:
    """Patch ``processor`` to emit the pruned placeholder counts and take its tokenizer (for the
    question spans); record it in ``st.processors`` unless ``linked`` already."""
    adapter.patch_processor(st, processor)
    if not linked:
        st.processors.append(processor)
    st.tokenizer = getattr(processor, "tokenizer", None)
    st._tok_cache = None


def _install_wrappers(st, model, inner, adapter) -> None:
    """Wrap the instance methods (inner forward / get_video_features / get_image_features; outer
    generate / _expand_multimodal_outputs) and let the adapter patch its own extras."""

    def wrap(obj, name, factory):
        patch_attr(st, obj, name, PatchedMethod(factory, model, inner, adapter, getattr(obj, name)))

    wrap(inner, "forward", _make_forward)
    wrap(inner, "get_video_features", _make_get_video_features)
    if hasattr(inner, "get_image_features"):
        wrap(inner, "get_image_features", _make_get_image_features)
    if hasattr(model, "generate") and model is not inner:
        wrap(model, "generate", _make_generate)
    if hasattr(model, "_expand_multimodal_outputs") and model is not inner:
        wrap(model, "_expand_multimodal_outputs", _make_expand)
    if hasattr(adapter, "patch_model_extra"):
        adapter.patch_model_extra(st, model, inner)


def remove_vista(model):
    """Undo :func:`apply_vista` on the model and every processor it patched. Returns the model.
    A model that was never patched is returned unchanged."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a transformers model), got {type(model).__name__}")
    st = get_state(model)
    if st is None:
        return model
    unpatch_all(st)
    st.processors.clear()
    model.__dict__.pop(_STATE_ATTR, None)
    # Qwen caches rope deltas from the last prefill; a stale pruned value must not leak
    inner = getattr(model, "model", model)
    if hasattr(inner, "rope_deltas"):
        inner.rope_deltas = None
    return model


def is_patched(model) -> bool:
    """True when ``apply_vista`` is active on ``model``."""
    return get_state(model) is not None


def vista_config(model) -> Optional[VistaConfig]:
    """The VistaConfig in force on ``model`` (None when not patched)."""
    st = get_state(model)
    return None if st is None else st.config


def last_prune_info(model) -> List[dict]:
    """Per video of the last forward that pruned a video (batch order)::

        {"pruned": PrunedVideo, "grid": (T, h, w), "question": str | None,
         "timings": {"prune_s": float, "scout_s": float}}

    Empty when the model is not patched, no video was pruned yet, or retention is 1.0 (the stock
    path runs untouched). Per thread: the last prune of the calling thread (of any thread when
    this one never pruned). On CUDA this waits for the recorded timing events.
    """
    st = get_state(model)
    if st is None:
        return []
    return resolve_info(st)


__all__ = ["apply_vista", "is_patched", "last_prune_info", "remove_vista", "vista_config"]
