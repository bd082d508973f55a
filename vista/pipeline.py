"""One call from a video and a question to an answer, with Vista pruning the visual tokens.

    from vista.pipeline import VistaPipeline
    pipe = VistaPipeline("path/to/llava-onevision", scout_path="path/to/blip2-itm", retention=0.15)
    res = pipe.ask("clip.mp4", "What is the man holding?", max_new_tokens=64)
    print(res.answer, res.summary())
    res.save_map("map.png")

``VistaPipeline`` loads the backbone (``vista.models.load_pretrained``) and optionally the semantic
scout, patches the model with ``vista.models.apply_vista``, and for each ``ask`` decodes and samples
the video (``vista.video``), builds the prompt with the processor's chat template, runs
``generate`` and returns an :class:`AskResult` with the answer, the token counts before and after
pruning, per-phase timings and the pruning record (``vista.models.last_prune_info``). An evaluation
harness can hold one pipeline and call ``ask`` many times; ``VistaPipeline.from_components`` wraps
an already loaded model/processor/scout.

Many questions about one video: the pipeline keeps a per-video feature cache
(:mod:`vista.cache`; ``cache_bytes=``, ``cache_dir=``, ``cache_info()``, ``clear_cache()``), so a
follow-up question skips decoding, the vision tower and the scout's ViT and runs only the scout's
Q-Former, the pruning and the LLM -- with the same kept tokens and answer as a fresh pipeline.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .cache import DEFAULT_CACHE_BYTES, FeatureCache
from .config import VistaConfig, check_config
from .video import DEFAULT_NUM_FRAMES, Video, VideoError, as_video, check_num_frames, check_time_range

# Phases reported by AskResult.timings (seconds), in display order. Phases measured inside the
# patched model (vision, scout, prune, ...) come from last_prune_info and are added when present.
PHASES = ("load", "decode", "preprocess", "vision", "scout", "scout_vit", "scout_qformer", "prune", "prefill",
          "generate", "total")
_SPLIT_PHASES = ("scout_vit", "scout_qformer")  # parts of "scout": in to_dict(), not in summary()


class PipelineError(ValueError):
    """A pipeline that cannot run: bad model/scout path, bad argument, unsupported model."""


def _clip_kwargs(clip) -> Dict[str, Any]:
    """``ask(clip=(start, end))`` as keyword arguments of ``load_video``."""
    if clip is None:
        return {}
    if isinstance(clip, (str, bytes)) or not hasattr(clip, "__len__") or len(clip) != 2:
        raise VideoError(f"clip must be a (start, end) pair of seconds, got {clip!r}")
    start, end = clip
    return {"start": start, "end": end}


@dataclass
class AskResult:
    """The answer to one question about one video, and what Vista did to get it.

    answer: the generated text (special tokens removed, stripped).
    question: the question asked.
    frames: number of video frames given to the model.
    frames_requested: number of frames asked for (more than ``frames`` for very short videos).
    tokens_before / tokens_after: visual tokens entering the LLM without / with Vista (the
        video placeholders of the prompt; LLaVA adds one newline token to a video's T*196).
    timings: seconds per phase (see ``PHASES``): ``load`` model (+ scout) loading, once per
        pipeline; ``decode`` video decoding and sampling (a cache lookup on a hit); ``preprocess``
        the processor; ``vision`` the backbone's vision tower + projector (+ pooling), ~0 when its
        output came from the cache; ``scout`` the semantic scout, with its parts ``scout_vit``
        (absent when cached) and ``scout_qformer`` when the feature cache is on; ``prune`` as
        measured inside the patched model; ``prefill`` the rest of the time to the first token
        (the LLM's prefill); ``generate`` the remaining tokens; ``total`` decode to the last
        token (without ``load``).
    prune: ``vista.models.last_prune_info(model)``: one dict per video with ``pruned`` (a
        ``vista.PrunedVideo``), ``grid`` (T, h, w), ``question`` and ``timings``. At retention
        1.0 the stock model runs and records nothing; ``ask`` then stores one all-kept record
        (budgets = N, one segment of relevance 1.0, ``"all_kept": True``; see
        ``VistaPipeline._all_kept_record``).
    new_tokens: number of generated tokens.
    video: the sampled :class:`vista.video.Video` (its frames are what the model saw; with the
        feature cache on they are the cached array: do not modify them in place).
    config: the VistaConfig used.
    notes: remarks, e.g. a short video that gave fewer frames than asked.
    cache: what the per-video feature cache gave (``VistaPipeline(cache_bytes=...)``): kind ->
        ``"hit"`` (memory), ``"disk"`` (the on-disk layer) or ``"miss"``, for ``"frames"``
        (decoding), ``"features"`` (the backbone's vision tower) and ``"scout"`` (the scout's
        ViT); empty when caching is off.
    """

    answer: str
    question: str
    frames: int
    frames_requested: int
    tokens_before: int
    tokens_after: int
    timings: Dict[str, float]
    prune: List[Dict[str, Any]]
    new_tokens: int = 0
    video: Optional[Video] = None
    config: Optional[VistaConfig] = None
    notes: List[str] = field(default_factory=list)
    cache: Dict[str, str] = field(default_factory=dict)

    @property
    def cache_hit(self) -> bool:
        """True when decoding and both vision towers were skipped (everything came from the cache)."""
        return bool(self.cache) and all(v in ("hit", "disk") for v in self.cache.values())

    def cache_summary(self) -> str:
        """``"cache hit"``, ``"cache miss"``, ``"cache partial (frames hit, features miss)"`` or ""."""
        if not self.cache:
            return ""
        vals = set(self.cache.values())
        if self.cache_hit:
            return "cache hit" + (" (disk)" if "disk" in vals else "")
        if vals == {"miss"}:
            return "cache miss"
        return "cache partial (" + ", ".join(f"{k} {v}" for k, v in self.cache.items()) + ")"

    @property
    def retention(self) -> float:
        """Fraction of visual tokens kept (tokens_after / tokens_before)."""
        return self.tokens_after / self.tokens_before if self.tokens_before else 1.0

    @property
    def ttft_s(self) -> Optional[float]:
        """Seconds from the start of video decoding to the first generated token."""
        if "total" not in self.timings or "generate" not in self.timings:
            return None
        return max(0.0, self.timings["total"] - self.timings["generate"])

    @property
    def pruned(self):
        """The first video's ``PrunedVideo`` (None when the model recorded none)."""
        return self.prune[0]["pruned"] if self.prune else None

    def summary(self) -> str:
        """One line: frames, tokens before -> after, per-phase timings."""
        fr = f"{self.frames} frames"
        if self.frames < self.frames_requested:
            fr += f" (of {self.frames_requested} asked)"
        parts = [fr, f"visual tokens {self.tokens_before} -> {self.tokens_after} ({100.0 * self.retention:.1f}%)"]
        times = "  ".join(f"{k} {self.timings[k]:.2f}s" for k in _ordered(self.timings)
                          if k not in ("total", "load") + _SPLIT_PHASES)
        if times:
            parts.append(times)
        if "total" in self.timings:
            parts.append(f"total {self.timings['total']:.2f}s"
                         + (f" (+ load {self.timings['load']:.2f}s)" if "load" in self.timings else ""))
        if self.cache:
            parts.append(self.cache_summary())
        return " | ".join(parts)

    def segments(self) -> List[Dict[str, Any]]:
        """Per segment of the first video: id, first/last frame, relevance, tokens kept."""
        p = self.pruned
        if p is None:
            return []
        seg = p.segment_id.tolist()
        bud = p.budgets.tolist()
        rel = p.relevance.tolist()
        out = []
        for m, r in enumerate(rel):
            idx = [t for t, s in enumerate(seg) if s == m]
            if idx:
                out.append({"segment": m, "first_frame": idx[0], "last_frame": idx[-1], "relevance": float(r),
                            "tokens": int(sum(bud[t] for t in idx))})
        return out

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable record (what ``vista ask --json`` prints)."""
        p = self.pruned
        rec: Dict[str, Any] = {
            "answer": self.answer,
            "question": self.question,
            "video": self.video.source if self.video is not None else None,
            "clip": None if self.video is None or self.video.clip is None else list(self.video.clip),
            "frames": self.frames,
            "frames_requested": self.frames_requested,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "retention": None if self.config is None else self.config.retention,
            "kept_fraction": round(self.retention, 6),
            "new_tokens": self.new_tokens,
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 6),
            "timings": {k: round(float(v), 6) for k, v in self.timings.items()},
            "budgets": None if p is None else [int(b) for b in p.budgets.tolist()],
            "segment_id": None if p is None else [int(s) for s in p.segment_id.tolist()],
            "segments": self.segments(),
            "grid": None if not self.prune else [int(g) for g in self.prune[0].get("grid") or ()],
            "config": None if self.config is None else self.config.to_dict(),
            "notes": list(self.notes),
            "cache": dict(self.cache),
            "summary": self.summary(),
        }
        return rec

    def save_map(self, path, max_frames: int = 16):
        """Write the token-map PNG of the first video (see ``vista.viz.save_token_map``)."""
        from .viz import save_token_map

        if self.pruned is None or self.video is None:
            raise PipelineError("no pruning record to draw: the model did not run Vista on a video")
        grid = self.prune[0].get("grid")
        note = None
        if self.prune[0].get("all_kept"):
            note = "retention 1.0: nothing pruned -- segments and relevance not computed (one segment, relevance 1.0)"
        return save_token_map(path, self.video.frames, self.pruned, grid, question=self.question,
                              max_frames=max_frames, note=note)


def _ordered(timings: Dict[str, float]) -> List[str]:
    known = [k for k in PHASES if k in timings]
    return known + sorted(k for k in timings if k not in PHASES)


def _check_config(config, retention) -> VistaConfig:
    config = check_config(config)
    if retention is not None:
        config = config.replace(retention=retention)
    return config


def _check_max_new_tokens(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise PipelineError(f"max_new_tokens must be an int >= 1, got {n!r}")
    return int(n)


class _TokenProgress:
    """Times the first generated token (prefill) and drives a tqdm bar, from inside generate().

    Passed to ``generate`` as a stopping criterion that never stops: transformers calls stopping
    criteria once per decoding step, right after the step's token(s) were appended, in greedy
    and sampling decoding, beam search and assisted decoding alike -- unlike a streamer, which
    ``generate`` refuses with beam search (``num_beams > 1``, also when set by the checkpoint's
    generation_config). One mechanism thus times every decoding mode the same way.
    """

    def __init__(self, total: int, show: bool, prompt_len: int):
        self.t_first: Optional[float] = None
        self.prompt_len = int(prompt_len)
        self.count = 0  # generated positions seen so far (per sequence)
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="generating", unit="tok", leave=False)

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        if self.t_first is None:
            # wait for the device (CUDA runs asynchronously) so the time is that of the token
            input_ids[..., -1:].cpu()
            self.t_first = time.perf_counter()
        n = max(0, int(input_ids.shape[-1]) - self.prompt_len)
        if n > self.count:
            if self.bar is not None:
                self.bar.update(n - self.count)
            self.count = n
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def __deepcopy__(self, memo):  # a copied criteria list must still report to this timer
        return self

    def criteria(self, user=None):
        """A StoppingCriteriaList with the user's criteria (if any) and this timer."""
        from transformers import StoppingCriteriaList

        out = StoppingCriteriaList(list(user) if user is not None else [])
        out.append(self)
        return out

    def end(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _ProgressScout:
    """A scout seen through a tqdm bar: scores the frames in chunks and counts them.

    Scores are per frame, so chunking gives the same result; every other attribute (grid_hw,
    image_size, ...) is the wrapped scout's.
    """

    def __init__(self, scout, chunk: int = 16):
        self._scout = scout
        self._chunk = chunk

    def __getattr__(self, name):
        return getattr(self._scout, name)

    def scores(self, frames, question, **kwargs):
        import torch
        from tqdm import tqdm

        n = len(frames)
        if n <= self._chunk:
            with tqdm(total=n, desc="scout", unit="frame", leave=False) as bar:
                out = self._scout.scores(frames, question, **kwargs)
                bar.update(n)
            return out
        parts = []
        with tqdm(total=n, desc="scout", unit="frame", leave=False) as bar:
            for s in range(0, n, self._chunk):
                part = frames[s : s + self._chunk]
                parts.append(self._scout.scores(part, question, **kwargs))
                bar.update(len(part))
        return torch.cat(parts, dim=0)

    def vision_embeddings(self, frames, **kwargs):
        """The scout's ViT half (feature cache path), in chunks under the same bar."""
        import torch
        from tqdm import tqdm

        n = len(frames)
        parts = []
        with tqdm(total=n, desc="scout", unit="frame", leave=False) as bar:
            for s in range(0, n, self._chunk):
                part = frames[s : s + self._chunk]
                parts.append(self._scout.vision_embeddings(part, **kwargs))
                bar.update(len(part))
        return torch.cat(parts, dim=0)


def _models():
    try:
        from . import models
    except ImportError as e:  # pragma: no cover - the backbones module is part of the package
        raise PipelineError(f"vista.models is not available ({e})") from None
    return models


class VistaPipeline:
    """Backbone (+ scout) patched with Vista, ready to answer questions about videos.

    Args:
        model_path: directory of a transformers LLaVA-OneVision / LLaVA-Video / Qwen2.5-VL
            checkpoint with its processor (``save_pretrained`` layout).
        scout_path: optional BLIP-2 ITM checkpoint directory for the semantic scout; without it
            every kept token is a DPC-KNN anchor.
        config: VistaConfig (default: retention 0.15); ``retention`` overrides its retention.
        device: "cpu", "cuda", "cuda:1", ...; dtype: torch dtype or its name ("bfloat16"), None =
            the loader's default.
        num_frames: frames sampled from each video (default 64, the paper's setting).
        progress: tqdm bars for decoding and generation.
        cache_bytes: bound of the per-video feature cache in memory (decoded frames, video
            features before pruning, the scout's ViT embeddings; see :mod:`vista.cache`), default
            4 GiB; 0 disables it. A follow-up question about a cached video skips decoding, the
            vision tower and the scout's ViT, with the same answer as a fresh pipeline.
        cache_dir: optional folder for the cache's on-disk layer (safetensors files + a JSON
            index), so that another process reuses the features.
    """

    def __init__(self, model_path, scout_path=None, config: Optional[VistaConfig] = None, device="cpu",
                 dtype=None, *, retention: Optional[float] = None, num_frames: int = DEFAULT_NUM_FRAMES,
                 attn_implementation: Optional[str] = None, progress: bool = False,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, cache_dir=None):
        self.config = _check_config(config, retention)
        self.num_frames = check_num_frames(num_frames)
        self.progress = bool(progress)
        self.timings: Dict[str, float] = {}
        self._init_cache(cache_bytes, cache_dir)
        if not isinstance(model_path, (str, os.PathLike)):
            raise PipelineError(f"model_path must be a directory path, got {type(model_path).__name__}")
        model_path = os.fspath(model_path)
        if not os.path.isdir(model_path):
            raise PipelineError(f"model path {model_path}: no such directory")
        if scout_path is not None:
            scout_path = os.fspath(scout_path)
            if not os.path.isdir(scout_path):
                raise PipelineError(f"scout path {scout_path}: no such directory")
        _check_device(device)
        models = _models()
        dtype = _resolve_dtype(dtype)
        if attn_implementation is None and str(device).startswith("cpu"):
            attn_implementation = "sdpa"  # flash-attn is CUDA-only: no fallback notice on CPU
        t0 = time.perf_counter()
        model, processor = models.load_pretrained(model_path, device=device, dtype=dtype,
                                                  attn_implementation=attn_implementation)
        scout = None
        if scout_path is not None:
            from .scout import SemanticScout

            scout = SemanticScout.from_pretrained(scout_path, device=str(_model_device(model)))
        self._setup(model, processor, scout)
        self.timings["load"] = time.perf_counter() - t0
        self.model_path, self.scout_path = model_path, scout_path

    @classmethod
    def from_components(cls, model, processor, scout=None, config: Optional[VistaConfig] = None, *,
                        retention: Optional[float] = None, num_frames: int = DEFAULT_NUM_FRAMES,
                        progress: bool = False, cache_bytes: int = DEFAULT_CACHE_BYTES,
                        cache_dir=None) -> "VistaPipeline":
        """A pipeline around an already loaded model, processor and (optional) scout."""
        self = cls.__new__(cls)
        self.config = _check_config(config, retention)
        self.num_frames = check_num_frames(num_frames)
        self.progress = bool(progress)
        self.timings = {}
        self._init_cache(cache_bytes, cache_dir)
        self.model_path = self.scout_path = None
        self._setup(model, processor, scout)
        return self

    def _setup(self, model, processor, scout):
        if processor is None or not hasattr(processor, "apply_chat_template"):
            raise PipelineError("processor must be a transformers multimodal processor with a chat template")
        self.model, self.processor, self.scout = model, processor, scout
        # with progress on, the model sees the scout through a wrapper that drives a tqdm bar
        self._model_scout = _ProgressScout(scout) if (self.progress and scout is not None) else scout
        _models().apply_vista(model, self.config, scout=self._model_scout, processor=processor)

    @property
    def device(self):
        return _model_device(self.model)

    # --------------------------------------------------------------------------------- cache
    def _init_cache(self, cache_bytes, cache_dir) -> None:
        try:
            self.cache = FeatureCache(cache_bytes, cache_dir)
        except (TypeError, ValueError, OSError) as e:
            raise PipelineError(str(e)) from None
        self._keys: Dict[str, Optional[str]] = {}
        self._keys_lock = threading.Lock()

    @property
    def _caching(self) -> bool:
        return getattr(self, "cache", None) is not None and self.cache.enabled

    def cache_info(self) -> Dict[str, Any]:
        """The feature cache's counters and sizes (see ``vista.cache.FeatureCache.info``)."""
        return self.cache.info()

    def clear_cache(self, disk: bool = False) -> None:
        """Empty the feature cache's memory layer (``disk=True``: its on-disk layer too)."""
        self.cache.clear(disk=disk)

    def _fingerprints(self) -> Tuple[str, Optional[str]]:
        """(model key, scout key): what the cached features depend on besides the video.

        Model: class, config, dtype and device type, a digest of every weight outside the
        language model (vision tower, projector, newline) and the video processor's settings.
        Scout: its config, vision dtype, device type, a digest of its ViT and its image
        processor's settings. Computed once per pipeline (weights are assumed not to change in
        place; call ``clear_cache()`` if they do)."""
        from .cache import digest, key_string, weights_digest

        with self._keys_lock:
            if "model" not in self._keys:
                m = self.model
                vision = [(n, p) for n, p in m.named_parameters()
                          if "language_model" not in n and not n.startswith("lm_head")]
                vp = getattr(self.processor, "video_processor", None)
                self._keys["model"] = digest(key_string({
                    "class": type(m).__name__, "config": m.config.to_json_string(use_diff=False),
                    "dtype": str(getattr(m, "dtype", None)), "device": self.device.type,
                    "weights": weights_digest(vision),
                    "processor": vp.to_json_string() if hasattr(vp, "to_json_string") else repr(vp),
                }))
                sc = self.scout
                if sc is None or not hasattr(sc, "model"):
                    self._keys["scout"] = None if sc is None else f"object:{id(sc)}"
                else:
                    ip = getattr(getattr(sc, "processor", None), "image_processor", None)
                    self._keys["scout"] = digest(key_string({
                        "config": sc.model.config.to_json_string(use_diff=False), "dtype": str(sc.dtype),
                        "device": sc.device.type, "weights": weights_digest(sc.model.vision_model.named_parameters()),
                        "processor": ip.to_json_string() if hasattr(ip, "to_json_string") else repr(ip),
                    }))
            return self._keys["model"], self._keys["scout"]

    def open_video(self, video, *, num_frames: Optional[int] = None,
                   clip: Optional[Tuple[Optional[float], Optional[float]]] = None) -> Video:
        """Decode and sample ``video`` as :meth:`ask` would, through the cache (a second call, or a
        later ``ask`` about the same file and sampling, does not decode again)."""
        n = self.num_frames if num_frames is None else check_num_frames(num_frames)
        return self._video(video, n, clip)[0]

    def _video(self, video, n: int, clip):
        """(Video, its cache key, frames status "hit" | "disk" | "miss" | None)."""
        from .cache import array_identity, file_identity, key_string

        kw = _clip_kwargs(clip)
        if isinstance(video, (str, os.PathLike)):
            try:
                ident = file_identity(video)
            except OSError:
                ident = None  # missing/unreadable: load_video reports it
            if ident is None or not self._caching:
                v = as_video(video, n, progress=self.progress, **kw)
                return v, None if ident is None else key_string({"file": ident, "frames": n, "clip": clip}), None
            rng = check_time_range(*clip) if clip is not None else None  # (None, 2) and (0, 2.0) are one clip
            key = key_string({"file": ident, "frames": n, "clip": list(rng) if rng is not None else None})
            t0 = time.perf_counter()
            hit = self.cache.get("frames", key)
            if hit is not None:
                v = _video_from_entry(hit)
                v.decode_seconds = time.perf_counter() - t0
                return v, key, "disk" if hit.source == "disk" else "hit"
            v = as_video(video, n, progress=self.progress, **kw)
            self.cache.put("frames", key, *_video_to_entry(v))
            return v, key, "miss"
        v = as_video(video, n, progress=self.progress, **kw)
        if not self._caching:
            return v, None, None
        return v, key_string({"array": array_identity(v.frames)}), None

    def set_config(self, config: VistaConfig) -> None:
        """Switch the patched model to another VistaConfig (e.g. another retention)."""
        config = _check_config(config, None)
        _models().apply_vista(self.model, config, scout=self._model_scout, processor=self.processor)
        self.config = config

    # ----------------------------------------------------------------------------------- ask
    def build_prompt(self, question: str, history: Optional[List[Tuple[str, str]]] = None) -> str:
        """The chat prompt: one user turn with the video and ``question``; with ``history``
        ((question, answer) pairs of earlier turns), those turns come first as text -- the video
        sits in the first user turn only, once."""
        turns = [(q, a) for q, a in (history or [])] + [(question, None)]
        messages = []
        for i, (q, a) in enumerate(turns):
            content = ([{"type": "video"}] if i == 0 else []) + [{"type": "text", "text": q}]
            messages.append({"role": "user", "content": content})
            if a is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # missing/broken template
            raise PipelineError(f"the processor's chat template failed: {e}") from None

    def prepare(self, video: Video, question: str, history: Optional[List[Tuple[str, str]]] = None):
        """Processor inputs (on the model's device) for one video and question."""
        import torch

        prompt = self.build_prompt(question, history)
        frames = video.frames
        inputs = self.processor(text=[prompt], videos=[frames], return_tensors="pt")
        dev = self.device
        dtype = getattr(self.model, "dtype", None)
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(dev)
                if v.is_floating_point() and dtype is not None:
                    v = v.to(dtype)
            out[k] = v
        return out

    def ask(self, video, question: str, max_new_tokens: int = 128, *, num_frames: Optional[int] = None,
            do_sample: bool = False, clip: Optional[Tuple[Optional[float], Optional[float]]] = None,
            history: Optional[List[Tuple[str, str]]] = None, **generate_kwargs) -> AskResult:
        """Answer ``question`` about ``video`` (a path, an image folder, a Video or a frame array).

        The video's decoded frames, its features before pruning and the scout's ViT embeddings
        are kept in the pipeline's feature cache (``cache_bytes`` / ``cache_dir``): asking again
        about the same video (same file, frames and clip) skips decoding and both vision towers
        and gives exactly what a fresh pipeline would (``AskResult.cache`` says what was reused).
        ``history``: earlier (question, answer) turns to put into the prompt as text.

        ``clip=(start, end)``: sample the frames of that time range only (seconds from the video's
        first frame; either end may be None), as ``vista.video.load_video(..., start=, end=)``
        does -- a video file path only; an end past the video's duration is clipped (see
        ``AskResult.notes``); a bad or empty range raises VideoError.
        Greedy decoding by default; other keyword arguments go to ``generate`` (``num_beams``,
        ``num_return_sequences``, ``stopping_criteria``, ...; the answer is the first returned
        sequence). Raises VideoError / PipelineError (ValueErrors) on bad input.
        """
        max_new_tokens, n, history = _check_ask_args(question, max_new_tokens, num_frames, self.num_frames,
                                                     history)
        timings: Dict[str, float] = {}
        if "load" in self.timings:
            timings["load"] = self.timings["load"]
        v, inputs, video_key, frames_status, t_start = self._decode_and_prepare(video, question, n, clip, history,
                                                                               timings)
        handle = self._cache_handle(video_key)
        input_len = inputs["input_ids"].shape[1]
        out, t_gen, t_first, t_end = self._generate(inputs, input_len, max_new_tokens, do_sample, question, handle,
                                                    generate_kwargs)
        prune = list(_models().last_prune_info(self.model) or [])
        _phase_timings(timings, prune, handle, self.device.type == "cpu", t_gen, t_first, t_end, t_start)

        new = out[0, input_len:] if out.shape[1] > input_len else out[0, :0]
        answer = self.processor.batch_decode(new[None], skip_special_tokens=True)[0].strip()
        before, after = self._token_counts(inputs, prune)
        prune, notes = self._with_all_kept_record(inputs, question, prune, list(v.notes))
        return AskResult(
            answer=answer, question=question, frames=v.num_frames, frames_requested=n,
            tokens_before=before, tokens_after=after, timings=timings, prune=prune,
            new_tokens=int(new.numel()), video=v, config=self.config, notes=notes,
            cache=_cache_status(frames_status, handle),
        )

    def _decode_and_prepare(self, video, question, n, clip, history, timings):
        """Decode and sample the video (through the cache) and build the processor inputs; records
        ``timings["decode"]`` and ``["preprocess"]``. Returns (Video, inputs, the video's cache key,
        frames cache status, start time of the ask -- moved back by the decode time of a Video
        decoded earlier)."""
        t_start = time.perf_counter()
        v, video_key, frames_status = self._video(video, n, clip)
        # a Video decoded earlier (vista.video.load_video) carries its own decode time
        timings["decode"] = v.decode_seconds if isinstance(video, Video) else time.perf_counter() - t_start
        t_start -= v.decode_seconds if isinstance(video, Video) else 0.0

        t = time.perf_counter()
        # (two arguments without history: overrides of prepare(video, question) keep working)
        inputs = self.prepare(v, question, history) if history else self.prepare(v, question)
        timings["preprocess"] = time.perf_counter() - t
        return v, inputs, video_key, frames_status, t_start

    def _cache_handle(self, video_key):
        """The ``vista_cache=`` handle for generate(): this pipeline's cache and fingerprints for
        a video with a cache key, a disabled handle otherwise."""
        from .cache import VideoCacheHandle

        use_cache = self._caching and video_key is not None
        model_key, scout_key = self._fingerprints() if use_cache else ("", None)
        return VideoCacheHandle(self.cache if use_cache else None, [video_key or ""], model_key, scout_key)

    def _generate(self, inputs, input_len, max_new_tokens, do_sample, question, handle, generate_kwargs):
        """Run the patched model's generate(); returns (sequences, start time, time of the first
        token (the end when none came), end time)."""
        import torch

        # times the first token through a stopping criterion, not a streamer: generate() refuses
        # streamers with beam search (num_beams > 1 here or in the checkpoint's generation_config)
        timer = _TokenProgress(max_new_tokens, self.progress, input_len)
        generate_kwargs["stopping_criteria"] = timer.criteria(generate_kwargs.get("stopping_criteria"))
        t = time.perf_counter()
        try:
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                          question=question, vista_cache=handle, **generate_kwargs)
        finally:
            timer.end()
        t_end = time.perf_counter()
        out = getattr(out, "sequences", out)  # return_dict_in_generate=True
        first = timer.t_first if timer.t_first is not None else t_end
        return out, t, first, t_end

    def _with_all_kept_record(self, inputs, question, prune, notes):
        """(prune, notes) of the answer: retention 1.0 runs the stock model (nothing pruned,
        nothing recorded), so record the all-kept result there, so that budgets, segments and the
        token map still describe the run."""
        if not prune and self.config.retention >= 1.0:
            rec = self._all_kept_record(inputs, question)
            if rec is not None:
                prune = [rec]
                notes.append("retention 1.0: nothing pruned, every visual token kept "
                             "(segments and relevance not computed: one segment, relevance 1.0)")
        return prune, notes

    def _all_kept_record(self, inputs, question) -> Optional[Dict[str, Any]]:
        """A ``last_prune_info``-like record of the video when pruning was a no-op (retention 1.0).

        Every token kept (budgets = N), no foveal tokens (the scout does not run), one segment with
        relevance 1.0 (the frame features that segmentation needs are not computed on the stock
        path), ``tokens`` of width 0 (the features are not recorded), ``"all_kept": True``.
        None when the token grid cannot be read from the inputs.
        """
        import torch

        from .prune import PrunedVideo

        grid = _video_grid(self.model, inputs)
        if grid is None:
            return None
        T, h, w = grid
        N = h * w
        keep = torch.ones(T, N, dtype=torch.bool)
        frame_index, token_index = torch.nonzero(keep, as_tuple=True)
        pv = PrunedVideo(
            tokens=torch.empty(T * N, 0),
            frame_index=frame_index,
            token_index=token_index,
            budgets=torch.full((T,), N, dtype=torch.int64),
            segment_id=torch.zeros(T, dtype=torch.int64),
            relevance=torch.ones(1, dtype=torch.float32),
            keep=keep,
            foveal=torch.zeros(T, N, dtype=torch.bool),
            assign=torch.arange(N).expand(T, N).clone(),
        )
        return {"pruned": pv, "grid": (T, h, w), "question": question, "timings": {}, "all_kept": True}

    def _token_counts(self, inputs, prune):
        """Visual tokens the LLM receives without Vista and with it.

        ``after`` counts the video placeholders in the prompt the patched processor built (kept
        tokens, plus LLaVA's newline token in the "one" layout); ``before`` adds back what the
        pruner removed (and the newline the "none" layout drops), i.e. the stock model's count.
        """
        cfg = getattr(self.model, "config", None)
        vid = getattr(cfg, "video_token_id", None)
        if vid is None:
            vid = getattr(cfg, "video_token_index", None)
        after = int((inputs["input_ids"] == int(vid)).sum()) if vid is not None else 0
        if not prune:
            return after, after
        removed = sum(int(r["pruned"].keep.numel()) - int(r["pruned"].num_tokens) for r in prune)
        if self.config.newline == "none" and _family(self.model) == "llava_onevision":
            removed += len(prune)
        if vid is None:  # unknown placeholder: fall back to the pruner's own counts
            return (sum(int(r["pruned"].keep.numel()) for r in prune),
                    sum(int(r["pruned"].num_tokens) for r in prune))
        return after + removed, after


def _check_ask_args(question, max_new_tokens, num_frames, default_frames, history):
    """(max_new_tokens, frame count, history) of an ``ask`` call, checked (PipelineError /
    VideoError on bad values)."""
    if not isinstance(question, str) or not question.strip():
        raise PipelineError("question must be a non-empty string")
    max_new_tokens = _check_max_new_tokens(max_new_tokens)
    n = default_frames if num_frames is None else check_num_frames(num_frames)
    return max_new_tokens, n, _check_history(history)


def _phase_timings(timings, prune, handle, on_cpu, t_gen, t_first, t_end, t_start) -> None:
    """Fill ``timings`` with the phases inside generate(): the pruner's and the scout's own
    timings (summed over videos), the cache handle's (vision), then prefill (first token minus
    what ran inline before it), generate (the tokens after the first) and total."""
    inner: Dict[str, float] = {}
    for rec in prune:
        for k, val in (rec.get("timings") or {}).items():
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                k = k[:-2] if k.endswith("_s") else k  # "scout_s" -> "scout"
                inner[k] = inner.get(k, 0.0) + float(val)
    timings.update(inner)
    for k, val in handle.resolved_timings().items():
        timings[k[:-2]] = val  # "vision_s" -> "vision"
    # the scout runs inline on CPU but beside the vision tower on a CUDA side stream
    inline = (inner.get("prune", 0.0) + timings.get("vision", 0.0)
              + (inner.get("scout", 0.0) if on_cpu else 0.0))
    timings["prefill"] = max(0.0, (t_first - t_gen) - inline)
    timings["generate"] = t_end - t_first
    timings["total"] = t_end - t_start


def _cache_status(frames_status, handle) -> Dict[str, str]:
    """AskResult.cache: what each cached part gave (parts never looked up are left out)."""
    if not handle.enabled:
        return {}
    out = {}
    if frames_status is not None:
        out["frames"] = frames_status
    out.update(handle.status)
    return out


def _check_history(history) -> List[Tuple[str, str]]:
    if history is None:
        return []
    if isinstance(history, (str, bytes)) or not isinstance(history, (list, tuple)):
        raise PipelineError(f"history must be a list of (question, answer) pairs, got {type(history).__name__}")
    out = []
    for i, turn in enumerate(history):
        if (not isinstance(turn, (list, tuple)) or len(turn) != 2
                or not all(isinstance(x, str) for x in turn)):
            raise PipelineError(f"history[{i}] must be a (question, answer) pair of str, got {turn!r}")
        out.append((turn[0], turn[1]))
    return out


def _video_to_entry(v: Video):
    """A Video as cache tensors + JSON metadata (frames uint8, timestamps, indices)."""
    import torch

    tensors = {"frames": torch.from_numpy(np.ascontiguousarray(v.frames)),
               "timestamps": torch.from_numpy(np.asarray(v.timestamps, dtype=np.float64).copy()),
               "indices": torch.from_numpy(np.asarray(v.indices, dtype=np.int64).copy())}
    meta = {"total_frames": int(v.total_frames), "requested": int(v.requested),
            "fps": None if v.fps is None else float(v.fps), "rotation": int(v.rotation), "source": v.source,
            "notes": list(v.notes), "clip": None if v.clip is None else [None if c is None else float(c) for c in v.clip]}
    return tensors, meta


def _video_from_entry(e) -> Video:
    m = e.meta
    return Video(frames=e.tensors["frames"].numpy(), timestamps=e.tensors["timestamps"].numpy(),
                 indices=e.tensors["indices"].numpy(), total_frames=int(m["total_frames"]),
                 requested=int(m["requested"]), fps=m.get("fps"), rotation=int(m.get("rotation", 0)),
                 source=m.get("source", ""), notes=list(m.get("notes", [])),
                 clip=None if m.get("clip") is None else tuple(m["clip"]))


def _video_grid(model, inputs):
    """(T, h, w) token grid of the first video of processor ``inputs`` (None when unknown)."""
    import math

    family = _family(model)
    cfg = getattr(model, "config", None)
    vcfg = getattr(cfg, "vision_config", None)
    try:
        if family == "llava_onevision":
            pv = inputs.get("pixel_values_videos")
            if pv is None:
                return None
            T = int(pv[0].shape[0]) if isinstance(pv, (list, tuple)) else int(pv.shape[1])
            side = math.ceil(int(vcfg.image_size) // int(vcfg.patch_size) / 2)  # 2x2-pooled grid
            return T, side, side
        if family == "qwen2_5_vl":
            thw = inputs.get("video_grid_thw")
            if thw is None:
                return None
            m = int(vcfg.spatial_merge_size)
            t, H, W = (int(x) for x in thw[0].tolist())
            return t, H // m, W // m
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return None


def _family(model) -> Optional[str]:
    try:
        return _models().family_of(model)
    except (ValueError, TypeError):
        return None


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _resolve_dtype(dtype):
    """None, a torch.dtype, or its name ("bfloat16", "bf16", "float16", "float32")."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().replace("torch.", "") in _DTYPES:
        return getattr(torch, _DTYPES[dtype.lower().replace("torch.", "")])
    raise PipelineError(f"dtype must be None, a torch dtype or one of {sorted(set(_DTYPES.values()))}, got {dtype!r}")


def _check_device(device) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PipelineError(f"device {device!r} is not a valid torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PipelineError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")


def _model_device(model):
    import torch

    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


__all__ = ["AskResult", "PHASES", "PipelineError", "VideoError", "VistaPipeline"]
