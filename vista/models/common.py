"""Family-independent machinery of the in-place backbone patch (``apply_vista``).

Design (placeholder-count contract, as vLLM's EVS): the total number of kept tokens of a video is
known before the model runs (``retained_count(T, N, retention)``), so

* the patched **processor** emits exactly that many video placeholders (plus LLaVA's newline in the
  "one" layout), and
* the patched **model** prunes the video features after the projector (and LLaVA's 2x2 pooling) and
  hands exactly that many rows to the stock ``forward``, which scatters them into the placeholders.

Attention masks, cache positions and ``generate()`` therefore see an ordinary, shorter prompt; the
per-frame split of the kept tokens stays dynamic (query-guided budgets). Nothing of the model code
is copied: the inner ``*Model.forward`` / ``get_video_features`` (and, for Qwen2.5-VL,
``get_rope_index``) and the outer ``generate`` are wrapped on the *instance*; ``remove_vista`` deletes
the instance attributes again, which restores the class methods.

Flow of one prefill with a video:

1. ``generate`` wrapper (outer model): stashes ``input_ids`` / ``attention_mask`` and pops the
   optional ``question=`` override, so the video encoder knows the questions.
2. ``get_video_features`` wrapper (inner model): rebuilds the scout's frames from the pixel values,
   queues the stock vision tower + projector on the current stream, then the scout on a side CUDA
   stream that waits (event) for the frames only, so both run concurrently (inline on CPU); the
   scout's pending result rides on the features output. Ragged LLaVA batches (a list of videos)
   are encoded video by video here.
   With ``generate(..., vista_cache=handle)`` (a ``vista.cache.VideoCacheHandle``; what
   ``VistaPipeline.ask`` passes), cached video features replace the vision tower and cached scout
   ViT embeddings leave only the scout's Q-Former to run (freshly computed ones are stored).
2b. ``_expand_multimodal_outputs`` wrapper (outer model, ``num_beams`` / ``num_return_sequences``):
   repeats each sample's (unpruned) videos by the pruned placeholder counts.
3. ``forward`` wrapper (inner model): finds each video's placeholder span, builds the question
   embedding q (mean of the LLM input embeddings of the question tokens), waits for the scout
   (stream event, no host sync), prunes all videos with one ``vista.prune_videos`` call and calls
   the stock ``forward`` with ``mm_encoder_outputs={"video": pruned}``.

Per-call state (what ``generate`` saw, Qwen's kept indices, the last prune info) is thread-local
(:class:`VistaState`), so concurrent ``generate()`` calls on one patched model keep their own
questions. The wrappers are :class:`PatchedMethod` objects: ``copy.deepcopy`` of a patched model
gives a patched copy that runs its own weights (and ``remove_vista`` on either leaves the other
patched). Ragged LLaVA features are marked ``_vista_ragged``; generate()'s expansion records
``_vista_order`` (expanded video -> caller's video), through which per-video ``question=`` lists
are mapped.

``retention == 1.0`` takes the stock path untouched (bit-identical logits); then the processor also
emits the stock placeholder count (the LLaVA newline is kept whatever ``config.newline`` says), and
``last_prune_info`` stays empty (except for ragged LLaVA batches, which the stock model cannot run).
"""
from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from ..config import VistaConfig, check_config
from ..prune import PrunedVideo, prune_videos

logger = logging.getLogger("vista.models")

_STATE_ATTR = "_vista_state"


# ----------------------------------------------------------------------------------------------
# state
# ----------------------------------------------------------------------------------------------
@dataclass
class VideoItem:
    """One video of a batch on its way through the pruner."""

    index: int  # order of the video in the batch (= placeholder order in input_ids)
    grid: tuple  # (T, h, w) token grid
    x: Optional[torch.Tensor] = None  # (T, N, D) features after projector (+ pooling)
    row: int = -1  # batch row holding the video's placeholders
    span: tuple = (0, 0)  # [start, end) of the placeholders in that row
    count: int = 0  # placeholders found
    question: Optional[str] = None
    question_ids: Optional[torch.Tensor] = None
    scores: Optional[torch.Tensor] = None  # (T, N) scout scores on the token grid
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class VistaState:
    """Everything apply_vista attached to one model (kept on the outer model instance).

    Per-call state (``pending``: what generate() saw; ``kept``: kept token indices during a Qwen
    prefill; ``last_info``: what the last prune of *this thread* did) lives in a
    ``threading.local``, so concurrent ``generate()`` calls on one model neither see each other's
    question nor leave state behind. ``last_info`` read from a thread that never pruned falls back
    to the last prune of any thread.
    """

    config: VistaConfig
    family: str
    adapter: Any
    scout: Any = None
    processors: List[Any] = field(default_factory=list)
    tokenizer: Any = None
    patched: List[tuple] = field(default_factory=list)  # (object, attribute name)
    side_streams: Dict[Any, Any] = field(default_factory=dict)
    _tok_cache: Optional[dict] = None
    _local: Any = field(default_factory=threading.local, repr=False, compare=False)
    _epoch: int = 0  # bumped by reset_info(): older per-thread infos are stale
    _latest_info: List[dict] = field(default_factory=list, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.config.retention < 1.0

    # --- per-call (thread-local) state -----------------------------------------------------------
    @property
    def pending(self) -> Optional[dict]:
        """What generate() saw (input ids, attention mask, question override), this thread."""
        return getattr(self._local, "pending", None)

    @pending.setter
    def pending(self, value: Optional[dict]) -> None:
        self._local.pending = value

    @property
    def kept(self) -> Optional[list]:
        """Per video kept token indices during a prefill (Qwen rope), this thread."""
        return getattr(self._local, "kept", None)

    @kept.setter
    def kept(self, value: Optional[list]) -> None:
        self._local.kept = value

    @property
    def last_info(self) -> List[dict]:
        mine = getattr(self._local, "info", None)
        if mine is not None and mine[0] == self._epoch:
            return mine[1]
        return self._latest_info

    @last_info.setter
    def last_info(self, value: List[dict]) -> None:
        value = list(value)
        self._local.info = (self._epoch, value)
        self._latest_info = value

    def reset_info(self) -> None:
        """Forget the prune info of every thread (apply_vista applied again)."""
        self._epoch += 1
        self._latest_info = []

    def __deepcopy__(self, memo):
        """The state of a deep copy of the patched model: the patched attributes of the copied
        modules (looked up in ``memo``), its own config and per-call state; scout, tokenizer and
        processors are shared (the processors stay patched by, and removable from, the original)."""
        new = VistaState(config=copy.deepcopy(self.config, memo), family=self.family, adapter=self.adapter,
                         scout=self.scout, processors=list(self.processors), tokenizer=self.tokenizer)
        new.patched = [(copy.deepcopy(obj, memo), name) for obj, name in self.patched  # memo: the copies
                       if isinstance(obj, torch.nn.Module)]
        new._tok_cache = self._tok_cache
        memo[id(self)] = new
        return new


def get_state(model) -> Optional[VistaState]:
    return getattr(model, _STATE_ATTR, None)


def check_scout(scout):
    if scout is None:
        return None
    if not callable(getattr(scout, "scores", None)):
        raise TypeError(
            f"scout must have a .scores(frames, question) method (e.g. vista.scout.SemanticScout), "
            f"got {type(scout).__name__}"
        )
    return scout


# ----------------------------------------------------------------------------------------------
# family adapters
# ----------------------------------------------------------------------------------------------
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class AdapterBase:
    """What every family adapter (llava_onevision.py, qwen2_5_vl.py) does alike."""

    family: str = ""
    model_types: tuple = ()  # config.model_type values of the family
    model_class: str = ""  # the transformers class, for error messages
    inner_attrs: tuple = ()  # attributes that mark the inner ``*Model`` (or the model itself)

    @classmethod
    def matches(cls, model) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in cls.model_types

    @classmethod
    def inner(cls, model):
        """The inner ``*Model`` (``model.model``), or ``model`` when it is that already."""
        inner = getattr(model, "model", None)
        if inner is not None and all(hasattr(inner, a) for a in cls.inner_attrs):
            return inner
        if all(hasattr(model, a) for a in cls.inner_attrs):
            return model
        raise TypeError(f"model must be a {cls.model_class}, got {type(model).__name__}")

    @staticmethod
    def video_token_id(config) -> int:
        return int(config.video_token_id)

    @staticmethod
    def norm_stats(processor):
        """(mean, std) of the processor's pixel normalisation (CLIP's when it does not say)."""
        vp = getattr(processor, "video_processor", None)
        mean = getattr(vp, "image_mean", None) or _CLIP_MEAN
        std = getattr(vp, "image_std", None) or _CLIP_STD
        return mean, std


# ----------------------------------------------------------------------------------------------
# instance patching helpers
# ----------------------------------------------------------------------------------------------
def patch_attr(state: VistaState, obj, name: str, value) -> None:
    """Set ``obj.name = value`` on the instance, remembering it for :func:`unpatch_all`."""
    if name in obj.__dict__:
        raise RuntimeError(f"{type(obj).__name__}.{name} is already patched on this instance")
    setattr(obj, name, value)
    state.patched.append((obj, name))


def unpatch_all(state: VistaState) -> None:
    for obj, name in reversed(state.patched):
        obj.__dict__.pop(name, None)
    state.patched.clear()


class _InstanceHook:
    """Callable stored as an instance attribute (e.g. a processor's ``replace_video_token``).

    Deep copies return the hook itself, so ``processor.save_pretrained`` (which deep-copies the
    instance ``__dict__`` before filtering it) neither copies the model state nor fails.
    """

    def __init__(self, fn):
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):  # pickling a patched processor drops the hook, not the processor
        return (_noop_hook, ())


def _noop_hook():
    return None


class PatchedMethod:
    """A model method wrapped by vista, stored as an instance attribute of the model (or of its
    inner ``*Model``): ``factory(model, inner, adapter, orig)`` builds the wrapper function.

    Deep copies rebuild the wrapper around the copies: ``copy.deepcopy(patched_model)`` gives a
    patched copy whose wrappers run the copy's own modules and weights (``orig``, a bound method,
    is re-bound to the copied module). A deep copy of a part of the model on its own (the outer
    model not being copied) gets the stock method back.
    """

    def __init__(self, factory, model, inner, adapter, orig):
        self._factory = factory
        self._parts = (model, inner, adapter, orig)
        self._fn = factory(model, inner, adapter, orig)
        functools.update_wrapper(self, orig)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        model, inner, adapter, orig = self._parts
        if id(model) not in memo:  # the patched model itself is not being copied
            return copy.deepcopy(orig, memo)
        new = type(self)(self._factory, copy.deepcopy(model, memo), copy.deepcopy(inner, memo), adapter,
                         copy.deepcopy(orig, memo))
        memo[id(self)] = new
        return new

    def __reduce__(self):
        raise TypeError(
            "a model patched by vista cannot be pickled: call vista.models.remove_vista(model) first "
            "and apply_vista again after loading"
        )


def bind_arguments(fn, args, kwargs) -> dict:
    """Named arguments of a call of ``fn`` (its ``**kwargs`` flattened in)."""
    sig = inspect.signature(fn)
    ba = sig.bind_partial(*args, **kwargs)
    out = {}
    for name, value in ba.arguments.items():
        p = sig.parameters[name]
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"unexpected positional arguments {value!r}")
        else:
            out[name] = value
    return out


# ----------------------------------------------------------------------------------------------
# questions
# ----------------------------------------------------------------------------------------------
def _token_info(state: VistaState, model_config) -> dict:
    """Token ids that delimit a chat turn and those that are never part of the question."""
    if state._tok_cache is not None:
        return state._tok_cache
    tok = state.tokenizer
    exclude = set(state.adapter.placeholder_ids(model_config))
    info = {"turn_start": None, "turn_end": set(), "role": set(), "blank": set(), "exclude": exclude}
    text_cfg = getattr(model_config, "text_config", model_config)
    eos = getattr(text_cfg, "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    pad = getattr(text_cfg, "pad_token_id", None)
    if pad is not None:
        exclude.add(int(pad))
    if tok is not None:
        unk = getattr(tok, "unk_token_id", None)

        def tid(s):
            i = tok.convert_tokens_to_ids(s)
            return None if i is None or i == unk else int(i)

        info["turn_start"] = tid("<|im_start|>")
        end = tid("<|im_end|>")
        info["turn_end"] = {end} if end is not None else set(int(e) for e in eos)
        exclude.update(int(i) for i in getattr(tok, "all_special_ids", []) or [])
        for role in ("user", "assistant", "system"):
            ids = tok.encode(role, add_special_tokens=False)
            if len(ids) == 1:
                info["role"].add(int(ids[0]))
        for s in ("\n", " ", "\n\n"):
            for i in tok.encode(s, add_special_tokens=False):
                if i != unk:
                    info["blank"].add(int(i))
    else:
        info["turn_end"] = set(int(e) for e in eos)
    exclude.update(info["turn_end"])
    if info["turn_start"] is not None:
        exclude.add(info["turn_start"])
    state._tok_cache = info
    return info


def question_token_ids(row_ids: torch.Tensor, valid: Optional[torch.Tensor], span, info: dict) -> torch.Tensor:
    """Ids of the question tokens of the chat turn holding the video placeholders ``span``.

    The turn runs from the last turn-start marker before the span (``<|im_start|>``) to the first
    turn-end marker after it (``<|im_end|>``); the role header (``user`` + newline), special tokens,
    placeholders and padding are left out. Without a tokenizer the turn starts after the previous
    end-of-turn (eos) token.
    """
    ids = row_ids.tolist()
    ok = [True] * len(ids) if valid is None else [bool(v) for v in valid.tolist()]
    s, e = span
    begin = 0
    for j in range(s - 1, -1, -1):
        if ok[j] and (ids[j] == info["turn_start"] or (info["turn_start"] is None and ids[j] in info["turn_end"])):
            begin = j + 1
            break
    end = len(ids)
    for j in range(e, len(ids)):
        if ok[j] and ids[j] in info["turn_end"]:
            end = j
            break
    head = [j for j in range(begin, s) if ok[j]]
    # drop the role header right after the turn start ("user", newline)
    while head and (ids[head[0]] in info["role"] or ids[head[0]] in info["blank"] or ids[head[0]] in info["exclude"]):
        head.pop(0)
    pos = head + [j for j in range(e, end) if ok[j]]
    keep = [ids[j] for j in pos if ids[j] not in info["exclude"] and ids[j] not in info["blank"]]
    return torch.tensor(keep, dtype=torch.long)


def _normalize_override(question, n_videos: int, order=None):
    """One question (or None) per video of the batch.

    ``order`` (from the beam / num_return_sequences expansion) gives, for each video of the
    expanded batch, the index of the caller's video it copies; a list with one entry per caller
    video is then mapped through it (a sample with videos [A, B] expands to [A, B, A, B])."""
    if question is None:
        return [None] * n_videos
    if isinstance(question, str):
        return [question] * n_videos
    if isinstance(question, (list, tuple)) and all(q is None or isinstance(q, str) for q in question):
        question = list(question)
        if order is not None and len(order) == n_videos and len(question) != n_videos:
            n_orig = max(order) + 1 if len(order) else 0
            if len(question) != n_orig:
                raise ValueError(f"question must be a str or a list with one str per video ({n_orig}), got {len(question)}")
            return [question[i] for i in order]
        if question and len(question) != n_videos and n_videos % len(question) == 0:
            r = n_videos // len(question)  # generate() copies each sample r times (one video a sample)
            question = [q for q in question for _ in range(r)]
        if len(question) != n_videos:
            raise ValueError(f"question must be a str or a list with one str per video ({n_videos}), got {len(question)}")
        return question
    raise TypeError(f"question must be a str or a list of str, got {type(question).__name__}")


def assign_questions(state: VistaState, inner, items: List[VideoItem], input_ids, attention_mask, override,
                     order=None) -> None:
    """Fill ``row``/``span``/``question``/``question_ids`` of every video item from ``input_ids``
    (``order``: see :func:`_normalize_override`)."""
    config = inner.config
    vid = state.adapter.video_token_id(config)
    overrides = _normalize_override(override, len(items), order)
    info = _token_info(state, config)
    tok = state.tokenizer
    if input_ids is not None:
        mask = input_ids == vid
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape == input_ids.shape:
            mask = mask & attention_mask.bool()
        rows, cols = torch.nonzero(mask, as_tuple=True)
        rows, cols = rows.tolist(), cols.tolist()
        expected = [state.adapter.placeholder_count(it, state.config) for it in items]
        if len(rows) != sum(expected):
            full = [state.adapter.full_count(it) for it in items]
            hint = ""
            if len(rows) == sum(full):
                hint = (
                    " -- the prompt holds the unpruned placeholder count: build the inputs with the processor "
                    "passed to apply_vista(model, config, processor=processor)"
                )
            raise ValueError(
                f"input_ids holds {len(rows)} video placeholder tokens but Vista expects {sum(expected)} "
                f"({expected} for retention={state.config.retention}){hint}"
            )
        k = 0
        for it, c in zip(items, expected):
            r, c0, c1 = rows[k], cols[k], cols[k + c - 1]
            it.row, it.span, it.count = r, (c0, c1 + 1), c
            k += c
    for it, ov in zip(items, overrides):
        if ov is not None:
            if tok is None:
                raise ValueError(
                    "question= needs the tokenizer: pass processor= to apply_vista(model, config, processor=...)"
                )
            it.question = ov
            it.question_ids = torch.tensor(tok.encode(ov, add_special_tokens=False), dtype=torch.long)
        elif input_ids is not None:
            am = attention_mask[it.row] if attention_mask is not None and attention_mask.dim() == 2 else None
            it.question_ids = question_token_ids(input_ids[it.row].cpu(), None if am is None else am.cpu(), it.span, info)
            if tok is not None and it.question_ids.numel():
                it.question = tok.decode(it.question_ids.tolist(), skip_special_tokens=True).strip() or None


def question_embedding(inner, item: VideoItem, D: int, device) -> torch.Tensor:
    """q (D,) float32: mean of the LLM input embeddings of the question tokens (zeros if none:
    uniform segment relevance)."""
    ids = item.question_ids
    if ids is None or ids.numel() == 0:
        return torch.zeros(D, dtype=torch.float32, device=device)
    emb = inner.get_input_embeddings()
    with torch.no_grad():
        e = emb(ids.to(emb.weight.device))
    return e.float().mean(0).to(device)


# ----------------------------------------------------------------------------------------------
# scout
# ----------------------------------------------------------------------------------------------
def _square(P: int):
    r = int(round(math.sqrt(P)))
    if r * r != P:
        raise ValueError(f"scout returned {P} patches a frame, not a square grid; give the scout a grid_hw attribute")
    return (r, r)


def scout_grid_scores(scout, frames: torch.Tensor, question: str, dst_hw, temporal_pairs: bool, T: int) -> torch.Tensor:
    """Scout scores of one video mapped onto the backbone's token grid: (T, h*w) float32."""
    return map_to_grid(scout, scout.scores(frames, question), dst_hw, temporal_pairs, T)


def map_to_grid(scout, s, dst_hw, temporal_pairs: bool, T: int) -> torch.Tensor:
    """(T_frames, P) scout scores -> (T, h*w) on the backbone's token grid (area resampling,
    temporal pairs max-pooled for Qwen2.5-VL)."""
    if not isinstance(s, torch.Tensor):
        s = torch.as_tensor(s)
    if s.dim() != 2:
        raise ValueError(f"scout.scores must return (T_frames, P), got shape {tuple(s.shape)}")
    s = s.float()
    h, w = dst_hw
    src_hw = getattr(scout, "grid_hw", None)
    if src_hw is None:
        src_hw = (h, w) if s.shape[1] == h * w else _square(s.shape[1])
    src_hw = tuple(int(v) for v in src_hw)
    if src_hw == (h, w) and not temporal_pairs:
        out = s
    else:
        try:
            from ..scout import map_scores_to_grid
        except Exception:  # pragma: no cover - scout package missing
            map_scores_to_grid = _map_scores_fallback
        out = map_scores_to_grid(s, src_hw, (h, w), temporal_pairs=temporal_pairs)
    if out.shape != (T, h * w):
        raise ValueError(f"scout scores map to shape {tuple(out.shape)}, expected (T, h*w) = ({T}, {h * w})")
    return out


def _map_scores_fallback(scores, src_hw, dst_hw, temporal_pairs=False):  # pragma: no cover
    T = scores.shape[0]
    x = scores.view(T, 1, *src_hw)
    x = torch.nn.functional.adaptive_avg_pool2d(x, dst_hw) if src_hw[0] >= dst_hw[0] else torch.nn.functional.interpolate(x, size=dst_hw)
    x = x.reshape(T, -1)
    if temporal_pairs:
        if T % 2:
            x = torch.cat([x, x[-1:]])
        x = x.view(-1, 2, x.shape[1]).amax(1)
    return x


def denormalize_frames(pixels: torch.Tensor, mean, std, size: Optional[int]) -> torch.Tensor:
    """(T, 3, H, W) normalised pixels -> (T, 3, S, S) float32 in [0, 1] for the scout."""
    try:
        from ..scout import frames_from_pixel_values

        if size is None:
            size = int(pixels.shape[-1]) if pixels.shape[-1] == pixels.shape[-2] else 224
        return frames_from_pixel_values(pixels, mean, std, size)
    except ImportError:  # pragma: no cover
        m = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
        return (pixels.float() * s + m).clamp(0, 1)


def _side_stream(state: VistaState, device):
    s = state.side_streams.get(device)
    if s is None:
        s = torch.cuda.Stream(device=device)
        state.side_streams[device] = s
    return s


def record_ready(device):
    """An event on the current CUDA stream marking the scout's inputs as ready (None on CPU)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    ev = torch.cuda.Event()
    ev.record(torch.cuda.current_stream(dev))
    return ev


def _run_scout(scout, frames, question, emb, store, cache, clock):
    """Scores of one video. With a cache handle (``cache``) and a scout that splits into
    ``vision_embeddings`` + ``scores_from_embeddings``: the ViT runs only when ``emb`` (cached
    embeddings) is None, its output goes to ``store``; each half is timed into the handle."""
    if emb is None and store is None:  # no cache: the scout's own one-pass scores
        return scout.scores(frames, question)
    if emb is None:
        t0 = clock.mark()
        emb = scout.vision_embeddings(frames)
        cache.add_time("scout_vit_s", clock.since(t0))
        store(emb)
    t0 = clock.mark()
    s = scout.scores_from_embeddings(emb, question)
    cache.add_time("scout_qformer_s", clock.since(t0))
    return s


class PhaseClock:
    """Phase timer without host syncs: perf_counter on CPU; CUDA events recorded on the current
    stream on GPUs (``since`` returns seconds, or a (start, end) event pair resolved later)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def since(self, start):
        return (start, self.mark()) if self.cuda else time.perf_counter() - start


def launch_scout(state: VistaState, items_frames: List[tuple], device, ready=None, cache=None) -> dict:
    """Run the scout for every (video index, frames, question, dst_hw, temporal_pairs, T[, emb,
    store]) -- ``emb``: cached ViT embeddings of the video (then ``frames`` may be None), ``store``:
    callable that keeps freshly computed embeddings (see ``vista.cache.VideoCacheHandle``, passed as
    ``cache``, which also collects the scout's phase times).

    On CUDA the work goes to a side stream that first waits for ``ready`` (an event recorded on the
    main stream once the frames exist, before the vision tower was launched), so scout and vision
    tower run concurrently; the handle holds the side stream's completion event, joined by
    :func:`join_scout` (``current_stream.wait_event``: no host synchronisation in vista's code; the
    mapping onto the token grid happens after the join). On CPU the scout runs inline.
    """
    scout = state.scout
    handle = {"raw": {}, "scores": {}, "event": None, "t0": None, "t1": None, "seconds": 0.0}
    if scout is None or not items_frames:
        return handle
    dev = torch.device(device)
    if dev.type == "cuda":
        side = _side_stream(state, dev)
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(side):
            if ready is not None:
                side.wait_event(ready)
            t0.record(side)
            clock = PhaseClock(True)
            for idx, frames, q, hw, pairs, T, *rest in items_frames:
                emb, store = rest if rest else (None, None)
                for t in (frames, emb):
                    if t is not None and t.is_cuda:
                        t.record_stream(side)  # made on the main stream, read on the side one
                handle["raw"][idx] = (_run_scout(scout, frames, q, emb, store, cache, clock), hw, pairs, T)
            t1.record(side)
        done = torch.cuda.Event()
        done.record(side)
        handle.update(event=done, t0=t0, t1=t1, stream=side)
    else:
        t = time.perf_counter()
        clock = PhaseClock(False)
        for idx, frames, q, hw, pairs, T, *rest in items_frames:
            emb, store = rest if rest else (None, None)
            handle["raw"][idx] = (_run_scout(scout, frames, q, emb, store, cache, clock), hw, pairs, T)
        handle["seconds"] = time.perf_counter() - t
    return handle


def join_scout(state: VistaState, handle: dict, device) -> None:
    """Make the current stream wait for the scout, then map its scores onto the token grids."""
    ev = handle.get("event")
    if ev is not None:
        main = torch.cuda.current_stream(torch.device(device))
        main.wait_event(ev)
        for raw in handle["raw"].values():
            if isinstance(raw[0], torch.Tensor) and raw[0].is_cuda:
                raw[0].record_stream(main)  # allocated on the side stream, used on the main one
    for idx, (s, hw, pairs, T) in handle["raw"].items():
        handle["scores"][idx] = map_to_grid(state.scout, s, hw, pairs, T)
    handle["raw"] = {}


# ----------------------------------------------------------------------------------------------
# the prune step
# ----------------------------------------------------------------------------------------------
def prune_items(state: VistaState, inner, items: List[VideoItem], scout_handle: Optional[dict]) -> List[PrunedVideo]:
    """Prune every video of the batch at once with ``vista.prune_videos``; record last_prune_info."""
    cfg = state.config
    dev = items[0].x.device
    D = items[0].x.shape[-1]
    qs = [question_embedding(inner, it, D, dev) for it in items]
    scores = [None] * len(items)
    if scout_handle is not None:
        join_scout(state, scout_handle, dev)
        for i, it in enumerate(items):
            s = scout_handle["scores"].get(it.index)
            if s is not None:
                scores[i] = s.to(dev)
    if dev.type == "cuda":
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        pruned = prune_videos([it.x for it in items], qs, scores, cfg, check_finite=False)
        e1.record()
        prune_t = (e0, e1)
    else:
        t = time.perf_counter()
        pruned = prune_videos([it.x for it in items], qs, scores, cfg, check_finite=False)
        prune_t = time.perf_counter() - t
    scout_t = None
    if scout_handle is not None:
        scout_t = (scout_handle["t0"], scout_handle["t1"]) if scout_handle.get("event") is not None else scout_handle["seconds"]
    state.last_info = [
        {
            "pruned": pv,
            "grid": tuple(int(v) for v in it.grid),
            "question": it.question,
            "timings": {"prune_s": prune_t, "scout_s": scout_t if scores[i] is not None else 0.0},
            "_batch_row": it.row,
        }
        for i, (it, pv) in enumerate(zip(items, pruned))
    ]
    return pruned


def resolve_info(state: VistaState) -> List[dict]:
    """last_info with CUDA event timings turned into seconds (this synchronises)."""
    out = []
    for d in state.last_info:
        t = {}
        for k, v in d["timings"].items():
            if isinstance(v, tuple):
                v[1].synchronize()
                t[k] = v[0].elapsed_time(v[1]) / 1000.0
            else:
                t[k] = float(v) if v is not None else 0.0
        out.append({"pruned": d["pruned"], "grid": d["grid"], "question": d["question"], "timings": t})
    return out


def notice_once(key: str, message: str, _seen=set()) -> None:
    if key in _seen:
        return
    _seen.add(key)
    logger.warning(message)  # one line on stderr (logging's last-resort handler) unless configured


__all__ = [
    "AdapterBase",
    "VideoItem",
    "PatchedMethod",
    "VistaState",
    "assign_questions",
    "bind_arguments",
    "check_config",
    "check_scout",
    "get_state",
    "launch_scout",
    "patch_attr",
    "prune_items",
    "question_token_ids",
    "resolve_info",
    "unpatch_all",
]
