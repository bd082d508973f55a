"""Vista inside lmms-eval: ``lmms-eval --model vista --model_args pretrained=PATH,retention=0.15``.

:class:`VistaLMMS` implements lmms-eval's ``lmms`` model API (0.7.x) for the backbones
``vista.models`` supports -- LLaVA-OneVision, LLaVA-Video (``LlavaOnevisionForConditionalGeneration``)
and Qwen2.5-VL -- loaded from a local directory with :func:`vista.models.load_pretrained` and
patched with :func:`vista.models.apply_vista`. It is registered through the ``lmms_eval.models``
entry point (see :func:`vista.integrations.lmms_eval_manifests`), so installing
``vista-llm[lmms]`` is all it takes.

Model arguments (``--model_args k=v,...``):

* ``pretrained`` (required): local checkpoint directory (``save_pretrained`` layout).
* ``retention`` (default 0.15): fraction of visual tokens kept; 1.0 runs the stock model.
* ``scout``: local BLIP-2 ITM checkpoint directory for the semantic scout (optional).
* ``num_frames`` (default 64): frames sampled uniformly in time from each video.
* ``tau``, ``rho``, ``k``, ``alpha``, ``min_frame_ratio``, ``newline``, ``backend``: VistaConfig fields.
* ``device`` (default: this process's accelerator device, i.e. ``cuda:<local rank>`` under
  ``accelerate launch``, else ``cuda`` when available, else ``cpu``), ``dtype`` (default bfloat16
  on CUDA, float32 on CPU), ``attn_implementation``, ``batch_size`` (default 1), ``max_side``
  (downscale decoded frames), ``max_new_tokens`` (default when a task gives none: 1024).
* ``stats_path``: append one JSON line of pruning statistics per sample to this file
  (``<stats_path>.rank<r>`` per process under data parallelism).
* ``skip_bad_videos`` (default False): a video that cannot be decoded gives an empty answer (and a
  warning) instead of stopping the run.

Data parallelism: every process loads the model on its own device; lmms-eval gives each rank its
shard of the requests and gathers the results (``accelerate launch --num_processes 8 -m lmms_eval
...``). The prompt is built exactly as ``VistaPipeline``/``vista eval`` build it (the processor's
chat template around one video item and the task's text), so both harnesses show the model the same
thing for the same question.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import torch

try:
    from lmms_eval import utils as _lmms_utils
    from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
    from lmms_eval.api.model import lmms
except ImportError as e:  # pragma: no cover - exercised only without lmms-eval
    raise ImportError(
        "vista.integrations.lmms_eval needs lmms-eval: pip install \"vista-llm[lmms]\""
    ) from e
from loguru import logger as eval_logger

from ..config import VistaConfig
from ..pipeline import VistaPipeline
from ..video import DEFAULT_NUM_FRAMES, VideoError, as_video

_VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv", ".gif")
# generate() arguments a task's generation_kwargs may set (others are dropped with one warning)
_GEN_KEYS = ("max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "num_beams", "do_sample",
             "repetition_penalty", "length_penalty", "no_repeat_ngram_size")
_CONFIG_KEYS = ("tau", "rho", "k", "alpha", "min_frame_ratio", "newline", "backend")


def _as_bool(v, name: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "1", "yes", "false", "0", "no"):
        return v.lower() in ("true", "1", "yes")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ValueError(f"{name} must be true or false, got {v!r}")


def _visual_kind(v) -> str:
    """'video' (a path to a video file or a folder of frames), 'image' (a PIL image) or an error."""
    try:
        from PIL import Image

        if isinstance(v, Image.Image):
            return "image"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, (str, os.PathLike)):
        p = os.fspath(v)
        if os.path.isdir(p) or p.lower().endswith(_VIDEO_EXTS) or os.path.isfile(p):
            return "video"
    if isinstance(v, dict) and "array" in v:
        raise NotImplementedError("vista: audio inputs are not supported (the backbones are video LLMs)")
    raise TypeError(f"vista: a visual must be a video path, a frame folder or a PIL image, got {type(v).__name__}: {v!r:.80}")


def _check_model_args(pretrained, retention, batch_size, max_new_tokens, max_side, kwargs: dict):
    """(batch size, VistaConfig) from :class:`VistaLMMS`'s model_args; every bad value is a one-line error."""
    unknown = sorted(k for k in kwargs if k not in _CONFIG_KEYS)
    if unknown:
        raise TypeError(f"vista: unknown model_args {unknown}; known: pretrained, retention, scout, num_frames, "
                        f"device, dtype, batch_size, attn_implementation, max_new_tokens, max_side, stats_path, "
                        f"skip_bad_videos, {', '.join(_CONFIG_KEYS)}")
    if not pretrained:
        raise ValueError("vista: model_args needs pretrained=<local checkpoint directory>")
    if isinstance(retention, bool) or not isinstance(retention, (int, float)):
        raise ValueError(f"vista: retention must be a number in (0, 1], got {retention!r}")
    try:
        bs = int(batch_size)
    except (TypeError, ValueError):
        raise ValueError(f"vista: batch_size must be a positive integer (auto is not supported), got {batch_size!r}") from None
    if bs < 1:
        raise ValueError(f"vista: batch_size must be >= 1, got {batch_size!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"vista: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"vista: max_side must be an integer >= 1, got {max_side!r}")
    cfg_fields = {k: kwargs[k] for k in _CONFIG_KEYS if k in kwargs}
    return bs, VistaConfig(retention=float(retention), **cfg_fields)


def _accelerator_and_device(device: Optional[str]):
    """(accelerate's ``Accelerator``, this process's device): ``device`` if given (``cuda`` becomes
    ``cuda:<local rank>`` under data parallelism), else the accelerator's, else cuda / cpu."""
    from accelerate import Accelerator

    # cpu=True without CUDA: a torchrun / `accelerate launch` environment then sets up gloo data
    # parallelism across CPU processes (accelerate otherwise treats each one as a lone process)
    use_cpu = (device is not None and str(device).startswith("cpu")) or not torch.cuda.is_available()
    accelerator = Accelerator(cpu=use_cpu)
    env_world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if env_world != accelerator.num_processes:
        raise RuntimeError(
            f"vista: WORLD_SIZE={env_world} but accelerate set up {accelerator.num_processes} process(es); "
            "without GPUs launch with ACCELERATE_USE_CPU=1 (e.g. ACCELERATE_USE_CPU=1 torchrun "
            "--nproc_per_node N -m lmms_eval ...) so that every process takes its own shard"
        )
    if device is None:
        if accelerator.num_processes > 1 or accelerator.device.type != "cpu":
            device = str(accelerator.device)
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    elif accelerator.num_processes > 1 and str(device).startswith("cuda") and ":" not in str(device):
        device = f"cuda:{accelerator.local_process_index}"  # one GPU per process
    return accelerator, device


class VistaLMMS(lmms):
    """lmms-eval model: a LLaVA-OneVision / LLaVA-Video / Qwen2.5-VL checkpoint with Vista pruning.

    See the module docstring for the arguments. ``generate_until`` answers video, image and text
    requests in batches of ``batch_size`` (left-padded; each sample's answer equals its answer
    alone); ``loglikelihood`` and multi-round generation raise NotImplementedError.
    """

    is_simple = True

    def __init__(self, pretrained: Optional[str] = None, retention: float = 0.15, scout: Optional[str] = None,
                 num_frames: int = DEFAULT_NUM_FRAMES, device: Optional[str] = None, dtype: Optional[str] = None,
                 batch_size=1, attn_implementation: Optional[str] = None, max_new_tokens: int = 1024,
                 max_side: Optional[int] = None, stats_path: Optional[str] = None, skip_bad_videos=False,
                 max_batch_size=None, **kwargs) -> None:
        super().__init__()
        bs, config = _check_model_args(pretrained, retention, batch_size, max_new_tokens, max_side, kwargs)
        accelerator, device = _accelerator_and_device(device)
        self.accelerator = accelerator
        self.pipe = VistaPipeline(pretrained, scout_path=scout, config=config, device=device, dtype=dtype,
                                  num_frames=num_frames, attn_implementation=attn_implementation)
        self._model = self.pipe.model
        self.processor = self.pipe.processor
        self._tokenizer = getattr(self.processor, "tokenizer", None)
        if self._tokenizer is None:
            raise ValueError(f"vista: the processor of {pretrained} has no tokenizer")
        self._device = self.pipe.device
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        self.batch_size_per_gpu = bs
        self.default_max_new_tokens = max_new_tokens
        self.max_side = max_side
        self.skip_bad_videos = _as_bool(skip_bad_videos, "skip_bad_videos")
        self.stats_path = None
        if stats_path:
            self.stats_path = os.fspath(stats_path) + (f".rank{self._rank}" if self._world_size > 1 else "")
            d = os.path.dirname(os.path.abspath(self.stats_path))
            os.makedirs(d, exist_ok=True)
        self._dropped_gen_keys: set = set()
        if self._rank == 0:
            eval_logger.info(f"vista: {pretrained} on {self._device} (world size {self._world_size}), "
                             f"retention {config.retention}, {num_frames} frames, scout {scout or 'none'}")

    # ------------------------------------------------------------------------------ properties
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def config(self):
        return self._model.config

    @property
    def vista_config(self) -> VistaConfig:
        return self.pipe.config

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def eot_token_id(self):
        return self._tokenizer.eos_token_id

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    def clean(self):
        """Free the model (lmms-eval calls this once all requests ran, e.g. before an LLM judge)."""
        self.pipe = None
        super().clean()

    # ------------------------------------------------------------------------------ unsupported
    def loglikelihood(self, requests: List[Instance]) -> List[Tuple[float, bool]]:
        tasks = sorted({getattr(r, "task_name", None) or "?" for r in requests}) if requests else []
        raise NotImplementedError(
            "vista: loglikelihood requests (multiple_choice / loglikelihood task types"
            + (f", tasks {', '.join(map(str, tasks))}" if tasks else "")
            + ") are not supported; use the generate_until variant of the task"
        )

    def generate_until_multi_round(self, requests) -> List[str]:
        raise NotImplementedError("vista: generate_until_multi_round (multi-round task type) is not supported")

    # ------------------------------------------------------------------------------ generation
    def _gen_kwargs(self, gen_kwargs: dict) -> Tuple[dict, List[str]]:
        """(generate() keyword arguments, stop strings) from a task's generation_kwargs."""
        g = dict(gen_kwargs or {})
        until = g.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
            raise ValueError(f"vista: generation_kwargs['until'] must be a string or a list of strings, got {until!r}")
        out = {k: g[k] for k in _GEN_KEYS if k in g and g[k] is not None}
        dropped = sorted(set(g) - set(_GEN_KEYS) - self._dropped_gen_keys)
        if dropped:
            self._dropped_gen_keys.update(dropped)
            eval_logger.warning(f"vista: ignoring generation_kwargs {dropped} (not generate() arguments)")
        out.setdefault("max_new_tokens", self.default_max_new_tokens)
        out["max_new_tokens"] = int(out["max_new_tokens"])
        # lmms-eval's convention: temperature > 0 samples (unless do_sample is false); else greedy
        sample = float(out.get("temperature") or 0.0) > 0 and out.get("do_sample", True) is not False
        out["do_sample"] = sample
        if not sample:
            for k in ("temperature", "top_p", "top_k"):
                out.pop(k, None)
        return out, [u for u in until if u]

    def _messages_text(self, context: str, kinds: List[str]) -> str:
        """The chat-formatted prompt: the visual items, then the task's text (as VistaPipeline)."""
        for tag in ("<image>", "<video>"):
            context = context.replace(tag, "")
        context = context.strip()
        if kinds == ["video"]:
            return self.pipe.build_prompt(context)  # the same code path as vista eval / vista ask
        content: List[Dict[str, Any]] = [{"type": k} for k in kinds]
        content.append({"type": "text", "text": context})
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)

    def _run_batch(self, items: List[dict], gen_kwargs: dict) -> List[Any]:
        """Generate for ``items`` (dicts with context, visuals, kinds, doc_id, task) in one call."""
        from ..models import last_prune_info

        gkw, until = self._gen_kwargs(gen_kwargs)
        t0 = time.perf_counter()
        texts, videos, images = self._decode_items(items)
        decode_s = time.perf_counter() - t0
        batch = self._encode(texts, videos, images)
        questions = [it["question"] for it in items for kind in it["kinds"] if kind == "video"]
        extra = {"question": questions} if questions else {}
        tok = self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.eot_token_id
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = self._model.generate(**batch, pad_token_id=pad, **gkw, **extra)
        gen_s = time.perf_counter() - t1
        out = getattr(out, "sequences", out)
        prompt_len = batch["input_ids"].shape[1]
        new = out[:, prompt_len:]
        answers = tok.batch_decode(new, skip_special_tokens=True)
        records = list(last_prune_info(self._model) or []) if videos else []
        n_videos = len(videos)
        if records and len(records) != n_videos:  # e.g. beam expansion: per-sample counts unknown
            records = []
        timing = {"decode_s": round(decode_s, 6), "batch_generate_s": round(gen_s, 6), "batch_size": len(items)}
        results, k = [], 0
        for row, (it, ans) in enumerate(zip(items, answers)):
            for term in until:
                ans = ans.split(term)[0]
            n_v = it["kinds"].count("video")
            recs = records[k:k + n_v] if records else []
            k += n_v
            results.append(self._row_result(batch, row, it, ans.strip(), recs, new, pad, timing))
        return results

    def _decode_items(self, items: List[dict]) -> Tuple[List[str], list, list]:
        """(chat-formatted texts, decoded videos' frames, RGB images) of ``items``; records each
        video's frame count in its item's ``frames``."""
        texts, videos, images = [], [], []
        for it in items:
            texts.append(self._messages_text(it["context"], it["kinds"]))
            for v, kind in zip(it["visuals"], it["kinds"]):
                if kind == "video":
                    vid = as_video(v, self.pipe.num_frames, **({"max_side": self.max_side} if self.max_side else {}))
                    it.setdefault("frames", []).append(vid.num_frames)
                    videos.append(vid.frames)
                else:
                    images.append(v.convert("RGB"))
        return texts, videos, images

    def _encode(self, texts: List[str], videos: list, images: list) -> Dict[str, Any]:
        """The processor's left-padded batch, tensors on the model's device (floats in its dtype)."""
        proc_kw: Dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if videos:
            proc_kw["videos"] = videos
        if images:
            proc_kw["images"] = images
        tok = self._tokenizer
        old_side = getattr(tok, "padding_side", "left")
        tok.padding_side = "left"
        try:
            inputs = self.processor(**proc_kw)
        finally:
            tok.padding_side = old_side
        dtype = getattr(self._model, "dtype", None)
        batch = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self._device)
                if v.is_floating_point() and dtype is not None:
                    v = v.to(dtype)
            batch[k] = v
        return batch

    def _row_result(self, batch: Dict[str, Any], row: int, it: dict, ans: str, recs: List[dict],
                    new: torch.Tensor, pad, timing: dict):
        """The ``GenerationResult`` of batch row ``row`` (answer ``ans``, its videos' prune records
        ``recs``); logs its statistics (visual tokens before/after pruning, token counts, timings)."""
        n_v = it["kinds"].count("video")
        mask = batch.get("attention_mask")
        row_ids = batch["input_ids"][row]
        if mask is not None:
            row_ids = row_ids[mask[row].bool()]
        vid_id = _video_token_id(self._model)
        after = int((row_ids == vid_id).sum()) if vid_id is not None and n_v else 0
        removed = sum(int(r["pruned"].keep.numel()) - int(r["pruned"].num_tokens) for r in recs)
        if recs and self.pipe.config.newline == "none" and _family(self._model) == "llava_onevision":
            removed += len(recs)
        n_new = int((new[row] != pad).sum()) if new.shape[1] else 0
        stats = {
            "task": it["task"], "doc_id": it["doc_id"], "rank": self._rank,
            "visuals": [os.fspath(v) if isinstance(v, (str, os.PathLike)) else "<image>" for v in it["visuals"]],
            "frames": it.get("frames", []),
            "retention": self.pipe.config.retention,
            "tokens_before": after + removed, "tokens_after": after,
            "prompt_tokens": int(row_ids.numel()), "new_tokens": n_new,
            "prune_s": round(sum(float(r["timings"].get("prune_s", 0.0)) for r in recs), 6),
            "scout_s": round(sum(float(r["timings"].get("scout_s", 0.0)) for r in recs), 6),
            **timing,
        }
        self._log_stats(stats)
        return GenerationResult(text=ans, token_counts=TokenCounts(input_tokens=int(row_ids.numel()),
                                                                   output_tokens=n_new))

    def _log_stats(self, stats: dict) -> None:
        b, a = stats["tokens_before"], stats["tokens_after"]
        if b:
            eval_logger.info(f"vista: {stats['task']} doc {stats['doc_id']}: visual tokens {b} -> {a} "
                             f"({100.0 * a / b:.1f}%), prune {stats['prune_s'] * 1e3:.1f} ms")
        if self.stats_path:
            line = json.dumps(stats, sort_keys=True) + "\n"
            with open(self.stats_path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def generate_until(self, requests: List[Instance]) -> List[Any]:
        """Answer ``generate_until`` requests: ``(context, generation_kwargs, doc_to_visual, doc_id,
        task, split)`` each. Returns one ``GenerationResult`` (text + token counts) per request, in
        the requests' order."""
        if not requests:
            return []
        from tqdm import tqdm

        def _collate(x):
            return -len(self._tokenizer.encode(x[0])), x[0]

        re_ords = _lmms_utils.Collator([r.args for r in requests], _collate, grouping=True)
        chunks = re_ords.get_batched(n=self.batch_size, batch_fn=None)
        pbar = tqdm(total=len(requests), disable=(self.rank != 0), desc="Model Responding")
        res: List[Any] = []
        for chunk in chunks:
            contexts, all_gen_kwargs, doc_to_visual, doc_id, task, split = zip(*chunk)
            items = []
            for ctx, d2v, did, tk, sp in zip(contexts, doc_to_visual, doc_id, task, split):
                doc = self.task_dict[tk][sp][did]
                vis = d2v(doc) if d2v is not None else []
                vis = [] if vis is None else (list(vis) if isinstance(vis, (list, tuple)) else [vis])
                kinds = [_visual_kind(v) for v in vis]
                items.append({"context": ctx, "visuals": vis, "kinds": kinds, "doc_id": did, "task": tk,
                              "question": ctx.replace("<image>", "").replace("<video>", "").strip()})
            # one generate() per modality layout (video / image / text requests are not mixed)
            groups: Dict[Tuple[str, ...], List[int]] = {}
            for i, it in enumerate(items):
                groups.setdefault(tuple(sorted(set(it["kinds"]))), []).append(i)
            out: List[Any] = [None] * len(items)
            for idx in groups.values():
                sub = [items[i] for i in idx]
                for i, r in zip(idx, self._run_group(sub, all_gen_kwargs[0])):
                    out[i] = r
            for ctx, r in zip(contexts, out):
                self.cache_hook.add_partial("generate_until", (ctx, all_gen_kwargs[0]), r.text)
            res.extend(out)
            pbar.update(len(items))
        pbar.close()
        return re_ords.get_original(res)

    def _run_group(self, items: List[dict], gen_kwargs: dict) -> List[Any]:
        try:
            return self._run_batch(items, gen_kwargs)
        except VideoError as e:
            if not self.skip_bad_videos:
                docs = ", ".join(f"{it['task']} doc {it['doc_id']}" for it in items)
                raise VideoError(f"vista: {docs}: {e} (model_args skip_bad_videos=true answers such "
                                 f"questions with an empty string)") from e
            if len(items) > 1:  # find the bad video: one sample at a time
                return [r for it in items for r in self._run_group([it], gen_kwargs)]
            it = items[0]
            eval_logger.warning(f"vista: {it['task']} doc {it['doc_id']}: {e}; answering with an empty string")
            if self.stats_path:
                self._log_stats({"task": it["task"], "doc_id": it["doc_id"], "rank": self._rank, "error": str(e),
                                 "tokens_before": 0, "tokens_after": 0, "prune_s": 0.0})
            return [GenerationResult(text="", token_counts=TokenCounts())]


def _video_token_id(model) -> Optional[int]:
    cfg = getattr(model, "config", None)
    vid = getattr(cfg, "video_token_id", None)
    if vid is None:
        vid = getattr(cfg, "video_token_index", None)
    return None if vid is None else int(vid)


def _family(model) -> Optional[str]:
    from ..models import family_of

    try:
        return family_of(model)
    except (ValueError, TypeError):
        return None


__all__ = ["VistaLMMS"]
