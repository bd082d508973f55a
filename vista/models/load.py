"""Loading a supported backbone from a local checkpoint directory, and family detection.

``family_of`` names the backbone family of a model, config, ``model_type`` or directory;
``load_pretrained`` checks a checkpoint directory (files present, not damaged), picks the
attention implementation and dtype, and returns ``(model, processor)``.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .common import notice_once

_MODEL_TYPES = {"llava_onevision": "llava_onevision", "qwen2_5_vl": "qwen2_5_vl"}


def family_of(model) -> str:
    """Backbone family of a model, a config, a ``model_type`` string or a checkpoint directory.

    Returns ``"llava_onevision"`` (LLaVA-OneVision, LLaVA-Video) or ``"qwen2_5_vl"``.
    Raises ValueError for anything else (naming the model_type found).
    """
    if isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
        cfg_path = os.path.join(model, "config.json")
        if not os.path.isfile(cfg_path):
            raise ValueError(f"model directory {os.fspath(model)!r} has no config.json")
        from ..checkpoint import read_json_object

        mt = read_json_object(cfg_path, "the model config").get("model_type")
    elif isinstance(model, str):
        mt = model
    else:
        cfg = getattr(model, "config", model)
        mt = getattr(cfg, "model_type", None)
        if mt is None:
            raise TypeError(f"model must be a transformers model or config, got {type(model).__name__}")
    if mt in _MODEL_TYPES:
        return _MODEL_TYPES[mt]
    raise ValueError(
        f"unsupported model_type {mt!r}: vista supports llava_onevision (LLaVA-OneVision, LLaVA-Video) "
        "and qwen2_5_vl (Qwen2.5-VL)"
    )


def _flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _pick_attn(attn_implementation, device) -> str:
    want = attn_implementation
    dev = torch.device(device)
    if want is None or want == "flash_attention_2":
        if _flash_attn_available() and dev.type == "cuda":
            return "flash_attention_2"
        why = "flash-attn is not installed" if not _flash_attn_available() else f"device is {dev.type}"
        notice_once(f"attn:{why}", f"vista: {why}; using attn_implementation='sdpa' instead of flash_attention_2")
        return "sdpa"
    if not isinstance(want, str):
        raise TypeError(f"attn_implementation must be a str or None, got {type(want).__name__}")
    return want


def _check_checkpoint_dir(path) -> str:
    """The checkpoint directory as a str, after checking that config, weights, processor and
    tokenizer files are there and not damaged (ValueError / TypeError naming what is wrong)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike directory, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"path {path!r} is not a directory (give a local checkpoint directory)")
    files = set(os.listdir(path))
    if "config.json" not in files:
        raise ValueError(f"checkpoint {path!r} is missing config.json")
    if not any(f.endswith((".safetensors", ".bin")) or f.endswith(".index.json") for f in files):
        raise ValueError(f"checkpoint {path!r} is missing the weights (model.safetensors or pytorch_model.bin)")
    if not ({"processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json"} & files):
        raise ValueError(f"checkpoint {path!r} is missing processor_config.json / preprocessor_config.json")
    if not ({"tokenizer.json", "tokenizer_config.json", "vocab.json"} & files):
        raise ValueError(f"checkpoint {path!r} is missing the tokenizer (tokenizer.json / tokenizer_config.json)")
    from ..checkpoint import check_checkpoint_files

    check_checkpoint_files(path)  # damaged files: a ValueError naming the file, not a transformers crash
    return path


def _device_and_dtype(device, dtype):
    """``(torch.device, torch.dtype)`` from the user's arguments (dtype None: bfloat16 on CUDA,
    float32 elsewhere)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a valid torch device") from e
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
    return dev, dtype


def _load_or_explain(path, what, load):
    """``load()``, with a failure the file checks could not see (wrong shapes, bad config values)
    turned into a ValueError naming the directory and ``what`` could not be loaded."""
    try:
        return load()
    except (ImportError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as e:
        raise ValueError(f"{path}: the {what} could not be loaded from this directory "
                         f"({type(e).__name__}: {e})") from e


def load_pretrained(path, *, device="cpu", dtype=None, attn_implementation=None):
    """Load a supported backbone and its processor from a local directory.

    Args:
        path: directory holding ``config.json``, the weights (``*.safetensors`` / ``*.bin``) and
            the processor files (``processor_config.json`` / ``preprocessor_config.json`` +
            tokenizer files), as written by ``save_pretrained``.
        device: where to put the model ("cpu", "cuda", "cuda:1", torch.device).
        dtype: torch dtype; None = bfloat16 on CUDA, float32 on CPU.
        attn_implementation: None = flash_attention_2 when flash-attn is importable (on CUDA),
            else sdpa (one notice, once). An explicit "flash_attention_2" without flash-attn
            also falls back to sdpa.
    Returns:
        (model, processor); the model in eval mode.
    """
    path = _check_checkpoint_dir(path)
    family = family_of(path)
    dev, dtype = _device_and_dtype(device, dtype)
    attn = _pick_attn(attn_implementation, dev)
    from transformers import AutoProcessor

    if family == "llava_onevision":
        from transformers import LlavaOnevisionForConditionalGeneration as cls
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration as cls
    model = _load_or_explain(path, "model", lambda: cls.from_pretrained(path, dtype=dtype, attn_implementation=attn))
    model.to(dev).eval()
    processor = _load_or_explain(path, "processor", lambda: AutoProcessor.from_pretrained(path))
    return model, processor
