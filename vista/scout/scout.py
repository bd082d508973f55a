"""The semantic scout: question-conditioned patch scores from a BLIP-2 image-text-matching Q-Former.

PAPER.md §3.3: the question tokens and the learned query tokens go through the Q-Former together;
the query tokens' cross-attention to the frame's patches, A (heads × queries × patches), gives every
patch the score ``s_i = Σ_queries max_heads A``. This module runs that on transformers'
``Blip2ForImageTextRetrieval`` (no LAVIS):

* the vision tower runs with sdpa attention (bf16 on CUDA by default), chunked over frames;
* the Q-Former (kept in fp32 by transformers) runs layer by layer with its configured attention
  (:func:`qformer_scored_attention`); the attention probabilities are formed explicitly only for the
  one cross-attention layer that is scored, from that layer's own query/key projections with
  call-local tensors (no hooks, no state on the shared modules: thread-safe), and the Q-Former
  stops right after that layer (the layers above it and the ITM head do not affect the scores);
* the (B, heads, queries, patches) map is reduced with ``vista_kernels.scout_score_reduce``.

Loading helpers (:func:`check_checkpoint_dir`, :func:`load_scout_model`, :func:`load_scout_processor`)
and :meth:`SemanticScout.cross_attention` (differentiable) are public so that a fine-tuning recipe
(``vista.scout.train``) can reuse them.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import threading
import warnings
from typing import List, Optional, Sequence, Tuple

import torch

import vista_kernels as vk

__all__ = [
    "SemanticScout",
    "ScoutCheckpointError",
    "check_checkpoint_dir",
    "load_scout_model",
    "load_scout_processor",
    "frames_to_tensor",
    "frames_from_pixel_values",
    "frames_from_qwen_pixel_values",
    "qformer_scored_attention",
]

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TOKENIZER_LOCK = threading.Lock()


class ScoutCheckpointError(ValueError, FileNotFoundError):
    """A scout checkpoint directory is missing or incomplete (a ValueError and a FileNotFoundError)."""


# ----------------------------------------------------------------------------------------------
# checkpoints


def check_checkpoint_dir(path) -> str:
    """Check that ``path`` is a complete BLIP-2 ITM checkpoint directory; return it as a str.

    A complete directory holds ``config.json``, the weights (``model.safetensors``, a sharded
    ``model.safetensors.index.json``, or ``pytorch_model.bin``), the image processor's
    ``preprocessor_config.json`` and the tokenizer (``tokenizer.json`` or ``vocab.txt``), as written by
    ``SemanticScout.save_pretrained`` or ``huggingface-cli download Salesforce/blip2-itm-vit-g
    --local-dir DIR``.

    Raises:
        TypeError: ``path`` is not a str / os.PathLike.
        ScoutCheckpointError (a ValueError): the directory or one of its files is missing.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike checkpoint directory, got {type(path).__name__}")
    path = os.fspath(path)
    hint = (
        "pass a directory written by SemanticScout.save_pretrained / vista.scout.build_tiny_scout(path), "
        "or a local copy of an ITM checkpoint, e.g. `huggingface-cli download Salesforce/blip2-itm-vit-g "
        "--local-dir DIR` then SemanticScout.from_pretrained(DIR)"
    )
    if not os.path.exists(path):
        raise ScoutCheckpointError(f"scout checkpoint directory {path!r} does not exist; {hint}")
    if not os.path.isdir(path):
        raise ScoutCheckpointError(f"scout checkpoint path {path!r} is a file, not a directory; {hint}")
    have = set(os.listdir(path))
    missing = []
    if "config.json" not in have:
        missing.append("config.json (the Blip2Config)")
    if not any(f in have for f in _WEIGHT_FILES):
        missing.append("model weights (" + " or ".join(_WEIGHT_FILES[:3]) + ")")
    if not any(f in have for f in _IMAGE_PROCESSOR_FILES):
        missing.append("preprocessor_config.json (the BlipImageProcessor settings)")
    if not any(f in have for f in _TOKENIZER_FILES):
        missing.append("tokenizer.json or vocab.txt (the Q-Former's BERT tokenizer)")
    if missing:
        raise ScoutCheckpointError(
            f"scout checkpoint directory {path!r} is incomplete: missing " + "; ".join(missing) + f". {hint}"
        )
    from ..checkpoint import CheckpointFileError, check_checkpoint_files

    try:  # damaged files (malformed or null JSON, truncated weights): name the file and the damage
        model_type = check_checkpoint_files(path, "the Blip2Config").get("model_type")
    except CheckpointFileError as e:
        raise ScoutCheckpointError(f"scout checkpoint: {e}") from None
    if model_type != "blip-2":
        raise ScoutCheckpointError(
            f"{path!r} holds a {model_type!r} model, not a BLIP-2 one (config.json model_type must be 'blip-2'); {hint}"
        )
    return path


def _resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        named = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                 "fp16": torch.float16, "half": torch.float16, "float32": torch.float32,
                 "fp32": torch.float32, "float": torch.float32}
        if dtype not in named:
            raise ValueError(f"dtype must be one of {sorted(named)} or a torch.dtype, got {dtype!r}")
        return named[dtype]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, a dtype name or None, got {type(dtype).__name__}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    return dtype


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cuda", device)
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str, torch.device, int or None, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a valid torch device: {e}") from None


def load_scout_model(path, dtype=None, device=None, attn_implementation: str = "sdpa"):
    """Load a ``Blip2ForImageTextRetrieval`` from a local checkpoint directory (or a hub id that
    transformers can resolve, e.g. from the local cache), in eval mode on ``device``.

    The vision tower uses ``attn_implementation`` (default sdpa; ``flash_attention_2`` falls back to
    sdpa with a warning when flash-attn is unavailable or unsupported); the Q-Former and the query
    tokens stay in float32 (transformers' ``_keep_in_fp32_modules``). ``dtype=None`` means bfloat16 on
    CUDA, float32 on CPU.
    """
    from transformers import Blip2ForImageTextRetrieval

    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    if not isinstance(attn_implementation, str):
        raise TypeError(f"attn_implementation must be a str, got {type(attn_implementation).__name__}")
    src = _local_or_repo(path)
    try:
        try:
            model = Blip2ForImageTextRetrieval.from_pretrained(src, dtype=dtype, attn_implementation=attn_implementation)
        except (ImportError, ValueError) as e:
            if attn_implementation == "sdpa":
                raise
            warnings.warn(f"attn_implementation={attn_implementation!r} is unavailable for the scout ({e}); using sdpa")
            model = Blip2ForImageTextRetrieval.from_pretrained(src, dtype=dtype, attn_implementation="sdpa")
    except pickle.UnpicklingError as e:  # transformers reads *.bin weights with torch.load(weights_only=True)
        why = str(e).strip().splitlines()
        why = next((ln.strip() for ln in why if "Unsupported" in ln or "GLOBAL" in ln), why[0] if why else "")
        raise ScoutCheckpointError(
            f"scout checkpoint {src!r}: the pytorch_model.bin weights hold objects other than tensors and were "
            f"refused without running anything ({why}); use a checkpoint saved as model.safetensors"
        ) from None
    _keep_qformer_fp32(model)
    return model.to(device).eval()


def _keep_qformer_fp32(model) -> None:
    """Cast everything but the vision tower (Q-Former, query tokens, text embeddings, heads) to fp32.

    transformers keeps ``_keep_in_fp32_modules`` in fp32 only for float16 loads; a bfloat16 load
    would otherwise put the Q-Former (whose attention the scores are read from) in bf16 too. The
    Q-Former is ~10% of BLIP-2's compute, so fp32 there costs little.
    """
    for name, child in model.named_children():
        if name != "vision_model":
            child.float()
    for name, p in model.named_parameters(recurse=False):
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def load_scout_processor(path):
    """Load the scout's ``Blip2Processor`` (BlipImageProcessor + BERT tokenizer) from ``path``."""
    from transformers import Blip2Processor

    return Blip2Processor.from_pretrained(_local_or_repo(path))


def _local_or_repo(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike checkpoint directory, got {type(path).__name__}")
    p = os.fspath(path)
    if not os.path.exists(p) and _REPO_ID.match(p) and not p.startswith("."):
        return p  # a hub id: let transformers resolve it (cache / download per the user's HF settings)
    return check_checkpoint_dir(p)


# ----------------------------------------------------------------------------------------------
# frames


def _as_tensor_frame(f, i: Optional[int]):
    """One frame (PIL image, ndarray or tensor; HWC or CHW) -> CHW tensor (uint8 or float32)."""
    where = "frames" if i is None else f"frames[{i}]"
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(f, Image.Image):
        import numpy as np

        f = torch.from_numpy(np.asarray(f.convert("RGB")).copy())
    elif not isinstance(f, torch.Tensor):
        try:
            import numpy as np
        except ImportError:  # pragma: no cover
            np = None
        if np is not None and isinstance(f, np.ndarray):
            if f.dtype == np.float64:
                f = f.astype(np.float32)
            try:
                f = torch.from_numpy(np.ascontiguousarray(f))
            except TypeError:
                raise TypeError(f"{where} has unsupported numpy dtype {f.dtype}; use uint8 or float") from None
        else:
            raise TypeError(
                f"{where} must be a PIL image, a uint8 HWC numpy array or a torch tensor, got {type(f).__name__}"
            )
    if f.dim() != 3:
        raise ValueError(f"{where} must be one frame of shape (H, W, 3) or (3, H, W), got shape {tuple(f.shape)}")
    return f


def _to_chw(x: torch.Tensor, where: str) -> torch.Tensor:
    """(..., H, W, 3) or (..., 3, H, W) -> (..., 3, H, W)."""
    if x.shape[-1] == 3 and x.shape[-3] != 3:
        return x.movedim(-1, -3)
    if x.shape[-3] == 3:
        return x
    if x.shape[-1] == 3:
        return x.movedim(-1, -3)
    raise ValueError(f"{where} must have 3 (RGB) channels first or last, got shape {tuple(x.shape)}")


def frames_to_tensor(frames) -> torch.Tensor:
    """Bring a video's frames to one (T, 3, H, W) tensor: uint8 (0..255) or float32 (in [0, 1]).

    Accepts a list/tuple of frames (PIL images, (H, W, 3) uint8 arrays/tensors, (3, H, W) tensors),
    a stacked (T, H, W, 3) / (T, 3, H, W) uint8 array or tensor, a (T, 3, H, W) float tensor in
    [0, 1] (e.g. from :func:`frames_from_pixel_values`), or one frame. Memory stays on the input's
    device.

    Raises:
        ValueError: no frames, frames of different sizes, not RGB, float values outside [0, 1],
            NaN/inf.
        TypeError: unsupported container or dtype (e.g. int64, bool, or a mix of uint8 and float).
    """
    if isinstance(frames, (list, tuple)):
        if len(frames) == 0:
            raise ValueError("frames is empty: pass at least one frame")
        items = [_to_chw(_as_tensor_frame(f, i), f"frames[{i}]") for i, f in enumerate(frames)]
        size0, dt0 = tuple(items[0].shape[-2:]), items[0].dtype
        for i, it in enumerate(items):
            if tuple(it.shape[-2:]) != size0:
                raise ValueError(
                    f"frames of mixed sizes: frames[0] is {size0[0]}x{size0[1]} but frames[{i}] is "
                    f"{it.shape[-2]}x{it.shape[-1]} (H x W); resize them to one size first"
                )
            if it.dtype != dt0:
                raise TypeError(f"frames of mixed dtypes: frames[0] is {dt0} but frames[{i}] is {it.dtype}")
        x = torch.stack(items)
    else:
        if not isinstance(frames, torch.Tensor):
            x = _as_tensor_frame(frames, None) if _is_single_frame(frames) else _stacked_to_tensor(frames)
        else:
            x = frames
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(
                f"frames must be (T, H, W, 3), (T, 3, H, W) or one (H, W, 3) frame, got shape {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError("frames is empty: pass at least one frame")
        x = _to_chw(x, "frames")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = x.to(torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError("frames contains NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"float frames must be RGB in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; pass uint8 frames for "
                "0..255 data, or use frames_from_pixel_values() to undo a processor's normalisation"
            )
        return x.clamp(0, 1).contiguous()
    raise TypeError(f"frames must be uint8 (0..255) or float (0..1), got dtype {x.dtype}")


def frames_from_pixel_values(pixel_values, image_mean, image_std, size: Optional[int] = 224) -> torch.Tensor:
    """Recover scout-ready frames from a backbone processor's ``pixel_values`` (no second decode).

    Undoes the processor's normalisation (x·std + mean; its rescale by 1/255 is implied, since the
    result is in [0, 1]) and resizes to ``size``×``size`` with antialiased bicubic interpolation.

    Args:
        pixel_values: (T, 3, H, W) frames of one video, or (1, T, 3, H, W) as LLaVA-OneVision's
            ``pixel_values_videos`` for one video; any float dtype, any device.
        image_mean, image_std: the backbone processor's per-channel mean and std (3 floats each, or
            one float), e.g. ``processor.video_processor.image_mean``.
        size: the scout's input resolution (``scout.image_size[0]``, 224 for BLIP-2); None keeps
            the backbone's resolution (``SemanticScout.scores`` then resizes with its processor).

    Returns:
        (T, 3, size, size) float32 in [0, 1] on ``pixel_values.device``; pass it to
        ``SemanticScout.scores`` (which normalises it with the scout's own mean/std).
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if not pixel_values.is_floating_point():
        raise TypeError(f"pixel_values must be a float tensor (normalised pixels), got dtype {pixel_values.dtype}")
    x = pixel_values
    if x.dim() == 5:
        if x.shape[0] != 1:
            raise ValueError(
                f"pixel_values holds {x.shape[0]} videos (shape {tuple(x.shape)}); pass one video, e.g. pixel_values[i]"
            )
        x = x[0]
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"pixel_values must be (T, 3, H, W) or (1, T, 3, H, W), got shape {tuple(pixel_values.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("pixel_values holds no frames")
    return _denormalize_resize(x, image_mean, image_std, size)


def _denormalize_resize(x: torch.Tensor, image_mean, image_std, size) -> torch.Tensor:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    mean = _channel_stat(image_mean, "image_mean", x.device)
    std = _channel_stat(image_std, "image_std", x.device)
    if (std <= 0).any():
        raise ValueError(f"image_std must be positive, got {image_std!r}")
    x = (x.float() * std + mean).clamp_(0, 1)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp_(0, 1)
    return x.contiguous()


def frames_from_qwen_pixel_values(
    pixel_values_videos,
    video_grid_thw,
    image_mean,
    image_std,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    size: Optional[int] = 224,
) -> List[torch.Tensor]:
    """Recover scout-ready frames from Qwen2-VL / Qwen2.5-VL's flattened video patches.

    The Qwen video processor cuts each video into (temporal_patch_size × patch_size × patch_size)
    patches, ordered by merge window, and concatenates all videos along the first axis. This undoes
    that layout and the normalisation.

    Args:
        pixel_values_videos: (sum_i t_i·h_i·w_i, 3·temporal_patch_size·patch_size²) float.
        video_grid_thw: (V, 3) int (t, h, w) patch grid per video, as the processor returns it.
        image_mean, image_std: the video processor's mean/std (3 floats each).
        patch_size, temporal_patch_size, merge_size: the video processor's settings.
        size: output resolution (None keeps the processor's resized H×W).

    Returns:
        list of V tensors (t_i·temporal_patch_size, 3, size, size) float32 in [0, 1]. A video
        whose frame count was padded by the processor (repeat of its last frame) keeps that copy,
        so ``map_scores_to_grid(scores, scout.grid_hw, (h_i // merge_size, w_i // merge_size),
        temporal_pairs=True)`` gives exactly t_i rows, one per Qwen token frame.
    """
    thw, counts = _qwen_video_grid(pixel_values_videos, video_grid_thw, patch_size, temporal_patch_size, merge_size)
    C, tp, p, m = 3, temporal_patch_size, patch_size, merge_size
    out = []
    for (t, h, w), chunk in zip(thw, pixel_values_videos.split(counts, 0)):
        if h % m or w % m:
            raise ValueError(f"video grid {h}x{w} is not divisible by merge_size={m}")
        x = chunk.view(t, h // m, w // m, m, m, C, tp, p, p)
        # -> (t, tp, C, h//m, m, p, w//m, m, p)
        x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t * tp, C, h * p, w * p)
        out.append(_denormalize_resize(x, image_mean, image_std, size))
    return out


def _qwen_video_grid(pixel_values_videos, video_grid_thw, patch_size: int, temporal_patch_size: int,
                     merge_size: int) -> Tuple[List[Tuple[int, int, int]], List[int]]:
    """Check the Qwen patch layout; returns the (t, h, w) grid of each video and its patch count."""
    if not isinstance(pixel_values_videos, torch.Tensor) or not pixel_values_videos.is_floating_point():
        raise TypeError("pixel_values_videos must be a float torch.Tensor of flattened patches")
    if not isinstance(video_grid_thw, torch.Tensor):
        try:
            video_grid_thw = torch.as_tensor(video_grid_thw)
        except Exception:
            raise TypeError(f"video_grid_thw must be a (V, 3) int tensor, got {type(video_grid_thw).__name__}") from None
    if video_grid_thw.is_floating_point() or video_grid_thw.dim() != 2 or video_grid_thw.shape[1] != 3:
        raise ValueError(f"video_grid_thw must be a (V, 3) int tensor, got shape {tuple(video_grid_thw.shape)}")
    for name, v in (("patch_size", patch_size), ("temporal_patch_size", temporal_patch_size), ("merge_size", merge_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    C, tp, p = 3, temporal_patch_size, patch_size
    if pixel_values_videos.dim() != 2 or pixel_values_videos.shape[1] != C * tp * p * p:
        raise ValueError(
            f"pixel_values_videos must be (patches, {C * tp * p * p}) for patch_size={p}, "
            f"temporal_patch_size={tp}, got shape {tuple(pixel_values_videos.shape)}"
        )
    thw = [tuple(int(v) for v in row) for row in video_grid_thw.tolist()]
    counts = [t * h * w for t, h, w in thw]
    if sum(counts) != pixel_values_videos.shape[0]:
        raise ValueError(
            f"video_grid_thw accounts for {sum(counts)} patches but pixel_values_videos has "
            f"{pixel_values_videos.shape[0]}"
        )
    return thw, counts


def _channel_stat(v, name: str, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        t = v.detach().to(device=device, dtype=torch.float32).flatten()
    else:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [float(v)]
        if not isinstance(v, (list, tuple)) or not all(
            isinstance(e, (int, float)) and not isinstance(e, bool) for e in v
        ):
            raise TypeError(f"{name} must be a float or a sequence of 3 floats, got {v!r}")
        t = torch.tensor([float(e) for e in v], dtype=torch.float32, device=device)
    if t.numel() == 1:
        t = t.expand(3)
    if t.numel() != 3:
        raise ValueError(f"{name} must have 1 or 3 entries (one per RGB channel), got {t.numel()}")
    return t.view(1, 3, 1, 1)


def _is_single_frame(f) -> bool:
    try:
        from PIL import Image

        return isinstance(f, Image.Image)
    except ImportError:  # pragma: no cover
        return False


def _stacked_to_tensor(frames) -> torch.Tensor:
    import numpy as np

    if not isinstance(frames, np.ndarray):
        raise TypeError(
            "frames must be a list of frames, a (T, H, W, 3) uint8 array/tensor or a (T, 3, H, W) float "
            f"tensor in [0, 1], got {type(frames).__name__}"
        )
    if frames.dtype == np.float64:
        frames = frames.astype(np.float32)
    try:
        return torch.from_numpy(np.ascontiguousarray(frames))
    except TypeError:
        raise TypeError(f"frames has unsupported numpy dtype {frames.dtype}; use uint8 or float") from None


def _check_question(question, where: str = "question") -> str:
    if not isinstance(question, str):
        raise TypeError(f"{where} must be a str, got {type(question).__name__}")
    if not question.strip():
        raise ValueError(f"{where} is empty: the scout needs the question text to condition on")
    return question


def _check_chunk(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


# ----------------------------------------------------------------------------------------------
# the scout


class SemanticScout:
    """Question-conditioned patch scores from a BLIP-2 ITM Q-Former (PAPER.md §3.3, eq. 6).

    Args:
        model: a ``transformers.Blip2ForImageTextRetrieval`` whose Q-Former reads text
            (``qformer_config.use_qformer_text_input=True``, as in ``Salesforce/blip2-itm-vit-g``).
        processor: its ``Blip2Processor`` (``image_processor`` + ``tokenizer``).
        layer: which cross-attention layer is scored, indexed among the Q-Former layers that *have*
            cross-attention (BLIP-2: layers 0, 2, ..., 10); -1 (default) = the last of them.

    Attributes:
        grid_hw: (h, w) of the patch grid, e.g. (16, 16) at 224 px / patch 14.
        qformer_layer: the Q-Former layer index that ``layer`` resolved to.
    """

    def __init__(self, model, processor, layer: int = -1):
        for attr in ("vision_model", "qformer", "query_tokens", "embeddings"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"model must be a transformers Blip2ForImageTextRetrieval (missing .{attr}), got "
                    f"{type(model).__name__}"
                )
        for attr in ("image_processor", "tokenizer"):
            if not hasattr(processor, attr):
                raise TypeError(f"processor must be a Blip2Processor (missing .{attr}), got {type(processor).__name__}")
        qcfg = model.config.qformer_config
        if not getattr(qcfg, "use_qformer_text_input", False):
            raise ValueError(
                "model's Q-Former cannot read the question (qformer_config.use_qformer_text_input is False): "
                "use an image-text-matching checkpoint such as Salesforce/blip2-itm-vit-g"
            )
        self.model = model
        self.processor = processor
        layers = model.qformer.encoder.layer
        self._xattn_layers = [i for i, l in enumerate(layers) if getattr(l, "has_cross_attention", False)]
        if not self._xattn_layers:
            raise ValueError("model's Q-Former has no cross-attention layer to score")
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        n = len(self._xattn_layers)
        if not -n <= layer < n:
            raise ValueError(
                f"layer={layer} is out of range: this Q-Former has {n} cross-attention layers "
                f"(Q-Former layers {self._xattn_layers}); use -{n}..{n - 1}"
            )
        self.layer = layer
        self.qformer_layer = self._xattn_layers[layer]
        vcfg = model.config.vision_config
        self.image_size = _as_hw(vcfg.image_size)
        patch = _as_hw(vcfg.patch_size)
        self.grid_hw: Tuple[int, int] = (self.image_size[0] // patch[0], self.image_size[1] // patch[1])
        self.num_patches = self.grid_hw[0] * self.grid_hw[1]
        self.max_text_len = int(getattr(qcfg, "max_position_embeddings", 512))

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None, layer: int = -1, attn_implementation: str = "sdpa"):
        """Load a scout from a checkpoint directory (model + processor).

        Args:
            path: a directory from :meth:`save_pretrained` / ``build_tiny_scout(path)``, or a local
                copy of ``Salesforce/blip2-itm-vit-g`` (or a fine-tuned scout). A hub id such as
                ``"Salesforce/blip2-itm-vit-g"`` that is not a local path is handed to transformers.
            dtype: vision-tower dtype; None = bfloat16 on CUDA, float32 on CPU. The Q-Former stays fp32.
            device: None = CUDA when available, else CPU.
            layer: scored cross-attention layer (see the class docstring).
            attn_implementation: vision-tower attention (default ``"sdpa"``).
        """
        model = load_scout_model(path, dtype=dtype, device=device, attn_implementation=attn_implementation)
        processor = load_scout_processor(path)
        return cls(model, processor, layer=layer)

    def save_pretrained(self, path) -> None:
        """Write model + processor to directory ``path`` (created if needed), reloadable by
        :meth:`from_pretrained`."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike directory, got {type(path).__name__}")
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    def to(self, device=None, dtype=None) -> "SemanticScout":
        """Move the scout (in place) to ``device``; ``dtype`` recasts the vision tower only."""
        if device is not None:
            self.model.to(_resolve_device(device))
        if dtype is not None:
            self.model.vision_model.to(_resolve_dtype(dtype, self.device))
        return self

    @property
    def device(self) -> torch.device:
        return self.model.query_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the vision tower (the Q-Former runs in float32)."""
        return self.model.vision_model.embeddings.patch_embedding.weight.dtype

    def __repr__(self) -> str:
        return (
            f"SemanticScout(grid_hw={self.grid_hw}, layer={self.layer} (Q-Former layer {self.qformer_layer}), "
            f"device={self.device}, dtype={self.dtype})"
        )

    # --- inputs ------------------------------------------------------------------------------
    def preprocess(self, frames) -> torch.Tensor:
        """Frames -> ``pixel_values`` (T, 3, S, S) on the scout's device in its vision dtype, with the
        scout processor's resize (its resampling filter, to the model's image size), rescale and
        normalisation. Accepts everything :func:`frames_to_tensor` accepts."""
        x = frames_to_tensor(frames)
        return self._pixel_values(x)

    def _pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) uint8 or float32-in-[0,1] tensor -> normalised pixel_values on device."""
        ip = self.processor.image_processor
        is_float = x.is_floating_point()
        x = x.to(self.device, non_blocking=True)
        out = ip(
            images=list(x.unbind(0)),
            size={"height": self.image_size[0], "width": self.image_size[1]},
            do_rescale=not is_float,
            return_tensors="pt",
            device=self.device,
        )
        pv = out["pixel_values"]
        return pv.to(device=self.device, dtype=self.dtype)

    def tokenize(self, questions: Sequence[str]):
        """Questions -> (input_ids (Q, L) int64, attention_mask (Q, L) int64) on the scout's device,
        padded to the longest, truncated to the Q-Former's text positions."""
        tok = self.processor.tokenizer
        with _TOKENIZER_LOCK:  # a fast tokenizer sets its padding/truncation state on every call
            enc = tok(
                list(questions),
                padding=True,
                truncation=True,
                max_length=self.max_text_len,
                return_tensors="pt",
            )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    # --- core --------------------------------------------------------------------------------
    def cross_attention(self, pixel_values, input_ids, attention_mask=None, full_forward: bool = False,
                        image_embeds=None):
        """Cross-attention probabilities of the query tokens to the image patches at the scored layer.

        Differentiable (no ``no_grad`` inside), for fine-tuning; :meth:`scores` wraps it in
        ``inference_mode``.

        Args:
            pixel_values: (B, 3, S, S) normalised images.
            input_ids: (B, L) question token ids (no image-token prefix).
            attention_mask: (B, L) 1 for real tokens, 0 for padding; None = all ones.
            full_forward: run the whole Q-Former and return its output too (else it stops right
                after the scored layer).
            image_embeds: (B, 1 + P, Dv) ViT outputs (:meth:`vision_embeddings`) used instead of
                running the ViT on ``pixel_values`` (which may then be None).

        Returns:
            attn: (B, heads, num_query_tokens, P) float32, rows sum to 1 over the P+1 keys (the ViT's
            CLS key is dropped). With ``full_forward``: ``(attn, qformer_last_hidden_state)``, the latter
            (B, num_query_tokens + L, hidden) as the ITM head reads it.
        """
        m = self.model
        src = pixel_values if image_embeds is None else image_embeds
        if image_embeds is None and pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got shape {tuple(pixel_values.shape)}")
        if input_ids.dim() != 2 or input_ids.shape[0] != src.shape[0]:
            raise ValueError(
                f"input_ids must be (B, L) with B = {src.shape[0]} rows, got shape {tuple(input_ids.shape)}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_embeds is None:
            image_embeds = m.vision_model(pixel_values=pixel_values).last_hidden_state  # (B, 1+P, Dv)
        return self._scored_attention(image_embeds, input_ids, attention_mask, full_forward=full_forward)

    def _scored_attention(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          full_forward: bool = False):
        """The scored layer's cross-attention probabilities from given ViT outputs.

        Args:
            image_embeds: (B, 1+P, Dv) the vision tower's ``last_hidden_state`` (CLS first), any
                float dtype.
            input_ids, attention_mask: (B, L) question tokens (int64) and their 0/1 mask.
            full_forward: also return the whole Q-Former's output.

        Returns:
            (B, heads, num_query_tokens, P) float32 (CLS key dropped), and with ``full_forward`` the
            Q-Former's last hidden state (B, num_query_tokens + L, hidden). Only call-local tensors
            are involved: safe to call from several threads on one scout.
        """
        return qformer_scored_attention(self.model, self.qformer_layer, image_embeds, input_ids, attention_mask,
                                        full_forward=full_forward)

    def _scores_flat(self, frames_x: torch.Tensor, qids: torch.Tensor, input_ids, attention_mask, chunk_size):
        """frames_x (N, 3, H, W) on any device; qids (N,) question row per frame -> (N, P) fp32."""
        out = []
        for s in range(0, frames_x.shape[0], chunk_size):
            pv = self._pixel_values(frames_x[s : s + chunk_size])
            q = qids[s : s + chunk_size]
            attn = self.cross_attention(pv, input_ids[q], attention_mask[q])
            out.append(vk.scout_score_reduce(attn, backend="auto"))
        return torch.cat(out, 0)

    def scores(self, frames, question: str, chunk_size: int = 16) -> torch.Tensor:
        """Patch importance s[t, i] = Σ_queries max_heads A (PAPER eq. 6) for one video.

        Args:
            frames: T frames of one video: a list of PIL images / (H, W, 3) uint8 arrays, a
                (T, H, W, 3) uint8 array/tensor, or a (T, 3, H, W) float tensor in [0, 1]. All frames
                must have one size; the processor resizes them to the model's resolution.
            question: the user's question (non-empty).
            chunk_size: frames per forward pass (bounds activation memory).

        Returns:
            (T, P) float32 on the scout's device, P = grid_h * grid_w in raster order. A row sums
            to between num_query_tokens·(1 − the CLS key's share) and num_query_tokens·heads.
        """
        question = _check_question(question)
        chunk_size = _check_chunk(chunk_size)
        x = frames_to_tensor(frames)
        with torch.inference_mode():
            ids, am = self.tokenize([question])
            qids = torch.zeros(x.shape[0], dtype=torch.long, device=self.device)
            s = self._scores_flat(x, qids, ids, am, chunk_size)
        return s.clone()  # a normal tensor (not an inference tensor) for the caller

    def scores_batch(self, videos: Sequence, questions: Sequence[str], chunk_size: int = 16) -> List[torch.Tensor]:
        """Scores for several (video, question) pairs, batched across videos.

        Frames of all videos (which may have different sizes and lengths) are resized per video and
        run together in chunks of ``chunk_size`` frames, each frame with its own video's question.

        Returns:
            list of (T_i, P) float32 tensors on the scout's device, one per pair, equal (up to float
            rounding) to ``[scores(v, q) for v, q in zip(videos, questions)]``.
        """
        if not isinstance(videos, (list, tuple)):
            raise TypeError(f"videos must be a list of videos, got {type(videos).__name__}")
        if isinstance(questions, str) or not isinstance(questions, (list, tuple)):
            raise TypeError(f"questions must be a list of str, got {type(questions).__name__}")
        if len(videos) != len(questions):
            raise ValueError(f"videos and questions differ in length: {len(videos)} videos, {len(questions)} questions")
        if len(videos) == 0:
            return []
        chunk_size = _check_chunk(chunk_size)
        qs = [_check_question(q, f"questions[{i}]") for i, q in enumerate(questions)]
        xs = []
        for i, v in enumerate(videos):
            try:
                xs.append(frames_to_tensor(v))
            except (ValueError, TypeError) as e:
                raise type(e)(f"videos[{i}]: {e}") from None
        lengths = [x.shape[0] for x in xs]
        with torch.inference_mode():
            ids, am = self.tokenize(qs)
            qid = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(lengths)]).to(self.device)
            flat = [(i, t) for i, n in enumerate(lengths) for t in range(n)]
            out = []
            for s in range(0, len(flat), chunk_size):
                part = flat[s : s + chunk_size]
                pv = torch.cat([self._pixel_values(xs[i][sl]) for i, sl in _runs(part)], 0)
                attn = self.cross_attention(pv, ids[qid[s : s + chunk_size]], am[qid[s : s + chunk_size]])
                out.append(vk.scout_score_reduce(attn, backend="auto"))
            flat_scores = torch.cat(out, 0)
        return [r.clone() for r in flat_scores.split(lengths, 0)]

    # --- question-independent half (per-video feature cache, vista.cache) ----------------------
    def vision_embeddings(self, frames, chunk_size: int = 16) -> torch.Tensor:
        """The ViT's patch embeddings of one video's frames: the question-independent half of
        :meth:`scores`, worth caching when several questions are asked about one video.

        Args:
            frames: as for :meth:`scores`.
            chunk_size: frames per ViT pass (the same chunks as :meth:`scores`, so that
                ``scores_from_embeddings(vision_embeddings(f), q)`` equals ``scores(f, q)``).

        Returns:
            (T, 1 + P, Dv) tensor in the vision tower's dtype on the scout's device (row 0 of
            each frame is the ViT's CLS token).
        """
        chunk_size = _check_chunk(chunk_size)
        x = frames_to_tensor(frames)
        with torch.inference_mode():
            out = [self.model.vision_model(pixel_values=self._pixel_values(x[s : s + chunk_size])).last_hidden_state
                   for s in range(0, x.shape[0], chunk_size)]
            emb = torch.cat(out, 0)
        return emb.clone()

    def scores_from_embeddings(self, image_embeds: torch.Tensor, question: str, chunk_size: int = 16) -> torch.Tensor:
        """:meth:`scores` from cached ViT embeddings: runs only the Q-Former with ``question``.

        Args:
            image_embeds: (T, 1 + P, Dv) from :meth:`vision_embeddings` (any device; moved to the
                scout's).
            question: the question (non-empty).
            chunk_size: frames per Q-Former pass.

        Returns:
            (T, P) float32 on the scout's device, equal to ``scores(frames, question)``.
        """
        question = _check_question(question)
        chunk_size = _check_chunk(chunk_size)
        if not isinstance(image_embeds, torch.Tensor) or image_embeds.dim() != 3:
            raise ValueError("image_embeds must be a (T, 1 + P, Dv) tensor from vision_embeddings(), got "
                             + (f"shape {tuple(image_embeds.shape)}" if isinstance(image_embeds, torch.Tensor)
                                else type(image_embeds).__name__))
        if image_embeds.shape[1] != self.num_patches + 1:
            raise ValueError(f"image_embeds has {image_embeds.shape[1]} tokens a frame, expected "
                             f"{self.num_patches + 1} (CLS + {self.grid_hw[0]}x{self.grid_hw[1]} patches)")
        emb = image_embeds.to(self.device)
        with torch.inference_mode():
            ids, am = self.tokenize([question])
            out = []
            for s in range(0, emb.shape[0], chunk_size):
                e = emb[s : s + chunk_size]
                n = e.shape[0]
                q = torch.zeros(n, dtype=torch.long, device=self.device)  # as scores() indexes them
                attn = self.cross_attention(None, ids[q], am[q], image_embeds=e)
                out.append(vk.scout_score_reduce(attn, backend="auto"))
            s = torch.cat(out, 0)
        return s.clone()


def _runs(part):
    """Group consecutive (video, frame) pairs into (video, slice) runs for batched preprocessing."""
    runs = []
    for i, t in part:
        if runs and runs[-1][0] == i and runs[-1][1].stop == t:
            runs[-1] = (i, slice(runs[-1][1].start, t + 1))
        else:
            runs.append((i, slice(t, t + 1)))
    return runs


def qformer_scored_attention(model, qformer_layer: int, image_embeds: torch.Tensor, input_ids: torch.Tensor,
                             attention_mask: torch.Tensor, full_forward: bool = False):
    """Run the question-conditioned Q-Former of a ``Blip2ForImageTextRetrieval`` and return the
    cross-attention probabilities of its query tokens to the image at Q-Former layer ``qformer_layer``.

    The Q-Former's layers are called one by one (the same modules, masks and dtypes as
    ``model.qformer``'s own forward); at the scored layer the probabilities softmax(QKᵀ·scale) are
    formed from that layer's own query/key projections, *before* attention dropout, in float32.
    No hook and no state is put on the shared modules, so concurrent calls are independent. In train
    mode the layers' dropouts act as in a normal forward; the returned probabilities are the
    pre-dropout ones of that same forward.

    Args:
        model: ``Blip2ForImageTextRetrieval`` (text-reading Q-Former).
        qformer_layer: index of a Q-Former layer that has cross-attention.
        image_embeds: (B, 1+P, Dv) the ViT's last hidden state (CLS first); every position is valid.
        input_ids: (B, L) int64 question tokens; attention_mask: (B, L) 1 = token, 0 = padding.
        full_forward: also run the layers above ``qformer_layer`` and return the Q-Former output.

    Returns:
        attn (B, heads, Nq, P) float32, rows summing to 1 over the P+1 keys (CLS dropped); with
        ``full_forward``: ``(attn, last_hidden_state (B, Nq + L, hidden))``.
    """
    layers = model.qformer.encoder.layer
    layer = layers[qformer_layer]
    if not getattr(layer, "has_cross_attention", False):
        raise ValueError(f"Q-Former layer {qformer_layer} has no cross-attention")
    hidden, ext_mask, enc, nq = _qformer_inputs(model, image_embeds, input_ids, attention_mask)
    for i in range(qformer_layer):
        hidden = layers[i](hidden, ext_mask, enc, encoder_attention_mask=None, query_length=nq)
    # the scored layer, step by step: self-attention, then the queries' cross-attention
    self_out = layer.attention(hidden_states=hidden, attention_mask=ext_mask)
    queries = self_out[:, :nq, :]
    attn = _attention_probs(layer.crossattention.attention, queries, enc)[..., 1:]  # drop the CLS key
    if not full_forward:
        return attn
    hidden = _finish_cross_attention_layer(layer, self_out, ext_mask, enc, nq)
    for i in range(qformer_layer + 1, len(layers)):
        hidden = layers[i](hidden, ext_mask, enc, encoder_attention_mask=None, query_length=nq)
    return attn, hidden


def _qformer_inputs(model, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """What ``Blip2QFormerModel.forward`` feeds its first layer, for query tokens + question.

    Returns ``(hidden (B, Nq + L, hidden), extended attention mask, image states, Nq)``: the
    embeddings after the fp32 layer norm + dropout, a bidirectional mask over queries + tokens, and
    ``image_embeds`` in the hidden states' dtype.
    """
    from transformers.masking_utils import create_bidirectional_mask

    qf = model.qformer
    B = image_embeds.shape[0]
    query_tokens = model.query_tokens.expand(B, -1, -1)
    nq = query_tokens.shape[1]
    embeds = model.embeddings(input_ids=input_ids, query_embeds=query_tokens)
    mask = torch.cat(
        [torch.ones(B, nq, dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], dim=1
    )
    # as Blip2QFormerModel.forward: fp32 layer norm + dropout, a bidirectional mask, fp32 image states
    hidden = qf.dropout(qf.layernorm(embeds.to(qf.layernorm.weight.dtype)))
    ext_mask = create_bidirectional_mask(config=qf.config, inputs_embeds=hidden.to(embeds.dtype), attention_mask=mask)
    return hidden, ext_mask, image_embeds.to(hidden.dtype), nq


def _finish_cross_attention_layer(layer, self_out: torch.Tensor, ext_mask, enc: torch.Tensor, nq: int) -> torch.Tensor:
    """The rest of a Q-Former layer after its self-attention ``self_out`` (B, Nq + L, hidden): the
    queries' cross-attention to ``enc`` and feed-forward, the text tokens' feed-forward; the layer's output."""
    from transformers.pytorch_utils import apply_chunking_to_forward

    queries = self_out[:, :nq, :]
    cross_out = layer.crossattention(hidden_states=queries, attention_mask=ext_mask, encoder_hidden_states=enc,
                                     encoder_attention_mask=None)
    hidden = apply_chunking_to_forward(layer.feed_forward_chunk_query, layer.chunk_size_feed_forward,
                                       layer.seq_len_dim, cross_out)
    if self_out.shape[1] > nq:
        text = apply_chunking_to_forward(layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim,
                                         self_out[:, nq:, :])
        hidden = torch.cat([hidden, text], dim=1)
    return hidden


def _attention_probs(module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ · scale) of a ``Blip2QFormerMultiHeadAttention`` cross-attention, in float32.

    hidden_states (B, Nq, Dq) are the query tokens entering the layer's cross-attention,
    encoder_hidden_states (B, S, Dv) the image embeddings (all valid). Returns (B, H, Nq, S).
    """
    B, nq, _ = hidden_states.shape
    S = encoder_hidden_states.shape[1]
    H = module.num_attention_heads
    d = module.attention_head_size
    enc = encoder_hidden_states.to(module.key.weight.dtype)
    q = module.query(hidden_states.to(module.query.weight.dtype)).view(B, nq, H, d).transpose(1, 2).float()
    k = module.key(enc).view(B, S, H, d).transpose(1, 2).float()
    scale = getattr(module, "scaling", 1.0 / math.sqrt(d))
    return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)


def _as_hw(v) -> Tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)
