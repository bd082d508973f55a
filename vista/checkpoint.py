"""Checks of a checkpoint directory's files before transformers reads them.

A damaged directory (a truncated ``model.safetensors``, a ``config.json`` holding ``null``, malformed
JSON, a shard the index names but the folder lacks) otherwise surfaces as an exception from deep
inside transformers or safetensors (``SafetensorError``, ``AttributeError``, ``KeyError``) that
names neither the file nor the damage. :func:`check_checkpoint_files` raises one
:class:`CheckpointFileError` (a ValueError) whose message starts with the file's path and says what
is wrong with it. Only the standard library is used (no torch import), and nothing is unpickled:
``pytorch_model.bin`` is only checked to be a complete zip archive.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from typing import Optional

__all__ = ["CheckpointFileError", "check_checkpoint_files", "read_json_object"]

# safetensors: 8-byte little-endian header size, then a JSON header, then the tensor bytes
_ST_MAX_HEADER = 100 * 1024 * 1024


class CheckpointFileError(ValueError):
    """A file of a checkpoint directory is damaged; the message names the file and the damage."""


def read_json_object(path, what: str = "a JSON object") -> dict:
    """Parse ``path`` as a JSON object (dict), or raise CheckpointFileError naming the file.

    Args:
        path: a JSON file (``config.json``, ``preprocessor_config.json``, ...).
        what: what the object is, for the message ("the model config").
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CheckpointFileError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CheckpointFileError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                                  f"expected {what} in JSON") from None
    if not text.strip():
        raise CheckpointFileError(f"{path}: is empty; expected {what} in JSON")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointFileError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                                  f"expected {what}") from None
    except RecursionError:
        raise CheckpointFileError(f"{path}: JSON nested too deeply; expected {what}") from None
    if not isinstance(obj, dict):
        kind = "null" if obj is None else f"a JSON {type(obj).__name__}"
        raise CheckpointFileError(f"{path}: holds {kind}, expected {what}")
    return obj


def _check_safetensors(path: str) -> None:
    """Header readable and every tensor's byte range inside the file (a truncated copy fails)."""
    size = os.path.getsize(path)
    if size < 8:
        raise CheckpointFileError(f"{path}: truncated or not a safetensors file ({size} bytes, "
                                  f"shorter than the 8-byte header size)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n < 2 or n > _ST_MAX_HEADER:
            raise CheckpointFileError(f"{path}: not a safetensors file (header size field {n} is implausible)")
        if 8 + n > size:
            raise CheckpointFileError(f"{path}: truncated ({size} bytes; its header alone needs {8 + n})")
        head = f.read(n)
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointFileError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointFileError(f"{path}: not a safetensors file (its header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = (int(v) for v in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise CheckpointFileError(f"{path}: not a safetensors file (tensor {name!r} has no valid "
                                      f"data_offsets)") from None
        if not 0 <= lo <= hi:
            raise CheckpointFileError(f"{path}: corrupt (tensor {name!r} has data_offsets [{lo}, {hi}])")
        end = max(end, hi)
    need = 8 + n + end
    if size < need:
        raise CheckpointFileError(f"{path}: truncated ({size} bytes; its header promises {need})")


def _check_zip(path: str) -> None:
    """``pytorch_model.bin`` (torch.save's zip format) must be a complete archive; nothing is loaded."""
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointFileError(f"{path}: truncated or not a torch.save zip archive ({e})") from None


def _check_index(path: str, folder: str) -> list:
    index = read_json_object(path, "a weight index ({'weight_map': {tensor: shard file}})")
    wm = index.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise CheckpointFileError(f"{path}: has no 'weight_map' object naming the weight shards")
    shards = sorted({str(v) for v in wm.values()})
    for s in shards:
        p = os.path.join(folder, s)
        if not os.path.isfile(p):
            raise CheckpointFileError(f"{path}: names the shard {s}, which is missing from {folder}")
    return [os.path.join(folder, s) for s in shards]


def check_checkpoint_files(folder, config_what: str = "the model config") -> dict:
    """Check the files of a ``save_pretrained`` directory; return ``config.json`` as a dict.

    Every top-level ``*.json`` file must be a JSON object; weights (``*.safetensors``, shards named
    by ``*.safetensors.index.json``, ``pytorch_model.bin``) must be complete. Missing files are the
    callers' concern (they know which files their model needs); this checks the ones present.

    Raises:
        CheckpointFileError (ValueError): ``"<file>: <what is wrong>"``.
    """
    folder = os.fspath(folder)
    names = sorted(os.listdir(folder))
    config: Optional[dict] = None
    weights = []
    for name in names:
        p = os.path.join(folder, name)
        if not os.path.isfile(p):
            continue
        if name.endswith(".safetensors.index.json"):
            weights += _check_index(p, folder)
        elif name.endswith(".json"):
            obj = read_json_object(p, config_what if name == "config.json" else "a JSON object")
            if name == "config.json":
                config = obj
        elif name.endswith(".safetensors"):
            weights.append(p)
        elif name.endswith(".bin") and name.startswith("pytorch_model"):
            _check_zip(p)
    for p in sorted(set(weights)):
        _check_safetensors(p)
    if config is None:
        raise CheckpointFileError(f"{os.path.join(folder, 'config.json')}: missing")
    return config
