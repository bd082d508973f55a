"""Per-video feature cache: ask many questions about one video without re-encoding it.

A video's decoded frames, the backbone's video features after its projector (and LLaVA's 2x2
pooling) *before* pruning, and the scout's ViT patch embeddings do not depend on the question.
:class:`FeatureCache` keeps them, keyed by

* the video's identity: a file's absolute path + size + mtime (an image folder: every image's
  name, size and mtime), or a content hash of a frame array;
* the frame sampling: number of frames, time range (start, end), max_side;
* for features: the model and processor settings (a fingerprint of the model class and config,
  dtype and device, a digest of the vision-side weights and the video processor's settings);
  for scout embeddings also the scout's fingerprint.

Three kinds of entries: ``"frames"`` (uint8 (T, H, W, 3) + sampling metadata), ``"features"``
(one video's feature block: LLaVA (T*N + 1, D) with the newline row, Qwen2.5-VL (T*h*w, D)) and
``"scout"`` (ViT embeddings (T_frames, 1 + P, Dv)). A follow-up question then skips decoding, the
backbone's vision tower and the scout's ViT, and runs only the scout's Q-Former, the pruning and
the LLM (see :mod:`vista.pipeline`).

Memory layer: least-recently-used, bounded by bytes (``max_bytes``; 0 disables it), thread-safe
(one lock), with hit / miss counters per kind. Tensors stay on the device they were computed on
(GPU features stay on the GPU).

Disk layer (optional, ``cache_dir=``): one safetensors file per entry plus a small JSON index
(``index.json``). Files are written to a temporary name, fsynced, and renamed into place
(``os.replace``), so a writer killed at any moment leaves either no entry or a complete one; a
reader checks that the file's own header names the entry's key, and treats anything unreadable as
a miss. Only safetensors is read back: nothing is unpickled. The disk layer is not size-bounded
(delete the folder, or ``clear(disk=True)``, to reclaim space).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

from .atomic import TMP_PREFIX, write_file_atomically

# torch is imported where it is used: `import vista.pipeline` stays light

DEFAULT_CACHE_BYTES = 4 << 30  # 4 GiB: a few long videos' features on a GPU (64 x 196 x 3584 bf16 = 90 MB)
KINDS = ("frames", "features", "scout")
INDEX_NAME = "index.json"
_STALE_TMP_S = 600.0  # temporary files older than this are leftovers of killed writers
_FORMAT = "vista-cache-1"


def check_cache_bytes(value) -> int:
    """``cache_bytes`` validated: an int >= 0 (0 disables the memory layer)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"cache_bytes must be an int number of bytes >= 0 (0 disables the cache), got {value!r}")
    if value < 0:
        raise ValueError(f"cache_bytes must be >= 0 (0 disables the cache), got {value}")
    return int(value)


def key_string(parts: Dict[str, Any]) -> str:
    """A canonical string for a key made of JSON-able parts (sorted keys, no spaces)."""
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CacheEntry:
    """One cached item: named tensors plus JSON-able metadata.

    tensors: name -> tensor (any dtype safetensors can hold; device as stored).
    meta: JSON-able dict (e.g. a video's timestamps and notes).
    source: "memory" or "disk" (where the lookup found it).
    """

    kind: str
    key: str
    tensors: Dict[str, Any]  # name -> torch.Tensor
    meta: Dict[str, Any] = field(default_factory=dict)
    source: str = "memory"

    @property
    def nbytes(self) -> int:
        return int(sum(t.numel() * t.element_size() for t in self.tensors.values()))


class FeatureCache:
    """LRU cache of per-video tensors, bounded by bytes, with an optional on-disk layer.

    Args:
        max_bytes: bound of the memory layer in bytes (default 4 GiB); 0 disables it.
        cache_dir: optional folder for the disk layer (created if needed); entries found there are
            loaded onto the device the caller asks for and kept in memory as well.

    Thread-safe: every public method takes the cache's lock (disk writes take a second lock, so
    lookups are not blocked by a slow write).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, cache_dir=None):
        self.max_bytes = check_cache_bytes(max_bytes)
        if cache_dir is not None:
            if not isinstance(cache_dir, (str, os.PathLike)):
                raise TypeError(f"cache_dir must be a folder path (str or os.PathLike) or None, got {type(cache_dir).__name__}")
            cache_dir = os.path.abspath(os.fspath(cache_dir))
            if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
                raise ValueError(f"cache_dir {cache_dir}: exists and is not a folder")
            os.makedirs(cache_dir, exist_ok=True)
        self.cache_dir: Optional[str] = cache_dir
        self._lock = threading.RLock()
        self._disk_lock = threading.Lock()
        self._items: "OrderedDict[Tuple[str, str], CacheEntry]" = OrderedDict()
        self._bytes = 0
        self._stats = {k: {"hits": 0, "misses": 0, "disk_hits": 0} for k in KINDS}
        self._counters = {"evictions": 0, "too_large": 0, "disk_writes": 0, "disk_errors": 0}
        if cache_dir is not None:
            self._remove_stale_tmp()

    # ------------------------------------------------------------------------------ state
    @property
    def enabled(self) -> bool:
        """True when either layer can hold something."""
        return self.max_bytes > 0 or self.cache_dir is not None

    def info(self) -> Dict[str, Any]:
        """Counters and sizes: ``hits``, ``misses`` (over all kinds), ``entries``, ``bytes``,
        ``max_bytes``, ``by_kind`` (per kind: hits, misses, disk_hits, entries, bytes),
        ``evictions``, ``too_large`` (entries larger than max_bytes, not kept), ``disk_writes``,
        ``disk_errors``, ``cache_dir`` and ``disk_entries`` (entries in the disk index)."""
        with self._lock:
            by = {}
            for k in KINDS:
                es = [e for (kind, _), e in self._items.items() if kind == k]
                by[k] = dict(self._stats[k], entries=len(es), bytes=sum(e.nbytes for e in es))
            out = {
                "hits": sum(s["hits"] for s in self._stats.values()),
                "misses": sum(s["misses"] for s in self._stats.values()),
                "entries": len(self._items),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "by_kind": by,
                **self._counters,
                "cache_dir": self.cache_dir,
            }
        out["disk_entries"] = len(self._read_index()) if self.cache_dir is not None else 0
        return out

    def clear(self, disk: bool = False) -> None:
        """Drop every memory entry and reset the counters; ``disk=True`` also deletes the disk
        layer's files and index."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
            for s in self._stats.values():
                for k in s:
                    s[k] = 0
            for k in self._counters:
                self._counters[k] = 0
        if disk and self.cache_dir is not None:
            with self._disk_lock, self._index_lock():
                for name in os.listdir(self.cache_dir):
                    if name.endswith(".safetensors") or name.startswith(TMP_PREFIX) or name == INDEX_NAME:
                        with contextlib.suppress(OSError):
                            os.remove(os.path.join(self.cache_dir, name))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    # ------------------------------------------------------------------------------ lookups
    def get(self, kind: str, key: str, device=None) -> Optional[CacheEntry]:
        """The entry for (kind, key), or None (a miss). Memory first, then disk; a disk entry is
        loaded onto ``device`` (default: CPU) and kept in memory when it fits."""
        _check_kind(kind)
        with self._lock:
            e = self._items.get((kind, key))
            if e is not None:
                self._items.move_to_end((kind, key))
                self._stats[kind]["hits"] += 1
                return CacheEntry(e.kind, e.key, dict(e.tensors), dict(e.meta), "memory")
        e = self._disk_get(kind, key, device) if self.cache_dir is not None else None
        with self._lock:
            if e is None:
                self._stats[kind]["misses"] += 1
                return None
            self._stats[kind]["hits"] += 1
            self._stats[kind]["disk_hits"] += 1
            self._keep(e)
        return e

    def put(self, kind: str, key: str, tensors: Dict[str, Any], meta: Optional[Dict[str, Any]] = None) -> None:
        """Store an entry (replacing one with the same key): in memory (evicting the least
        recently used entries to stay within ``max_bytes``) and on disk when ``cache_dir`` is set.
        Tensors are stored as given (detached); don't modify them in place afterwards."""
        import torch

        _check_kind(kind)
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise TypeError("tensors must be a dict of name -> torch.Tensor")
        meta = dict(meta or {})
        json.dumps(meta)  # fail early (TypeError) on metadata that cannot be written
        e = CacheEntry(kind, key, {n: t.detach() for n, t in tensors.items()}, meta, "memory")
        with self._lock:
            self._keep(e)
        if self.cache_dir is not None:
            self._disk_put(e)

    def _keep(self, e: CacheEntry) -> None:
        """Insert into the memory LRU (lock held)."""
        k = (e.kind, e.key)
        old = self._items.pop(k, None)
        if old is not None:
            self._bytes -= old.nbytes
        n = e.nbytes
        if self.max_bytes <= 0:
            return
        if n > self.max_bytes:
            self._counters["too_large"] += 1
            return
        while self._items and self._bytes + n > self.max_bytes:
            _, victim = self._items.popitem(last=False)
            self._bytes -= victim.nbytes
            self._counters["evictions"] += 1
        self._items[k] = CacheEntry(e.kind, e.key, e.tensors, e.meta, "memory")
        self._bytes += n

    # ------------------------------------------------------------------------------ disk layer
    def _path(self, kind: str, key: str) -> str:
        return os.path.join(self.cache_dir, f"{kind}-{digest(key)[:40]}.safetensors")

    def _disk_get(self, kind: str, key: str, device) -> Optional[CacheEntry]:
        import torch
        from safetensors import safe_open

        path = self._path(kind, key)
        if not os.path.isfile(path):
            return None
        try:
            dev = "cpu" if device is None else str(torch.device(device))
            with safe_open(path, framework="pt", device=dev) as f:
                md = f.metadata() or {}
                if md.get("format") != _FORMAT or md.get("kind") != kind or md.get("key") != key:
                    raise ValueError("header does not name this entry")
                meta = json.loads(md.get("meta", "{}"))
                tensors = {n: f.get_tensor(n) for n in f.keys()}
        except Exception:  # noqa: BLE001 - a damaged or foreign file is a miss, never an error
            with self._lock:
                self._counters["disk_errors"] += 1
            return None
        return CacheEntry(kind, key, tensors, meta, "disk")

    def _disk_put(self, e: CacheEntry) -> None:
        from safetensors.torch import save

        try:
            tensors = {n: t.detach().to("cpu").contiguous() for n, t in e.tensors.items()}
            md = {"format": _FORMAT, "kind": e.kind, "key": e.key, "meta": json.dumps(e.meta)}
            blob = save(tensors, metadata=md)
            path = self._path(e.kind, e.key)
            with self._disk_lock:
                write_file_atomically(path, blob)
                with self._index_lock():
                    idx = self._read_index()
                    idx[os.path.basename(path)] = {"kind": e.kind, "key_sha256": digest(e.key), "bytes": len(blob),
                                                   "created": time.time()}
                    write_file_atomically(os.path.join(self.cache_dir, INDEX_NAME),
                                  json.dumps({"format": _FORMAT, "entries": idx}, indent=1).encode("utf-8"))
            with self._lock:
                self._counters["disk_writes"] += 1
        except Exception:  # noqa: BLE001 - a failed disk write (full disk, ...) never fails an answer
            with self._lock:
                self._counters["disk_errors"] += 1

    def _read_index(self) -> Dict[str, Any]:
        """The index's entries whose files exist (an unreadable index reads as empty)."""
        try:
            with open(os.path.join(self.cache_dir, INDEX_NAME), encoding="utf-8") as f:
                data = json.load(f)
            entries = data.get("entries", {}) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}
        return {n: v for n, v in entries.items()
                if isinstance(v, dict) and os.path.isfile(os.path.join(self.cache_dir, n))}

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        """An inter-process lock on the index (fcntl where available)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: the thread lock only
            yield
            return
        fd = os.open(os.path.join(self.cache_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        for name in os.listdir(self.cache_dir):
            if name.startswith(TMP_PREFIX):
                p = os.path.join(self.cache_dir, name)
                with contextlib.suppress(OSError):
                    if now - os.path.getmtime(p) > _STALE_TMP_S:
                        os.remove(p)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


# ----------------------------------------------------------------------------------------------
# keys
# ----------------------------------------------------------------------------------------------
def file_identity(path) -> Dict[str, Any]:
    """Identity of a video file or image folder: absolute path, size and mtime (ns) -- for a
    folder, of every entry in it (names sorted). Raises OSError when it cannot be read."""
    p = os.path.abspath(os.fspath(path))
    st = os.stat(p)
    if os.path.isdir(p):
        files = []
        for name in sorted(os.listdir(p)):
            s = os.stat(os.path.join(p, name))
            files.append([name, s.st_size, s.st_mtime_ns])
        return {"path": p, "folder": digest(json.dumps(files))}
    return {"path": p, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def array_identity(frames) -> Dict[str, Any]:
    """Identity of a frame array (numpy or tensor): a BLAKE2b digest of its bytes, shape and dtype."""
    import numpy as np
    import torch

    a = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(a.view(np.uint8).reshape(-1), digest_size=20) if a.size else hashlib.blake2b(b"", digest_size=20)
    return {"array": h.hexdigest(), "shape": list(a.shape), "dtype": str(a.dtype)}


def weights_digest(named_tensors, max_elems: int = 1 << 16) -> str:
    """A digest of model weights: names, shapes, dtypes and a strided sample of each tensor's
    values (at most ``max_elems`` each), so even a 400M-parameter tower digests in well under a
    second while any fine-tune (which changes nearly every weight) changes it."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in named_tensors:
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // max_elems)
            sample = flat[::step].float().cpu().numpy()
            h.update(sample.tobytes())
    return h.hexdigest()


__all__ = [
    "CacheEntry",
    "VideoCacheHandle",
    "DEFAULT_CACHE_BYTES",
    "FeatureCache",
    "array_identity",
    "check_cache_bytes",
    "file_identity",
    "key_string",
    "weights_digest",
]


# ----------------------------------------------------------------------------------------------
# the per-call link between a pipeline's cache and the patched model
# ----------------------------------------------------------------------------------------------
class VideoCacheHandle:
    """What one ``generate()`` call of a patched model may reuse for its video(s).

    Passed as ``model.generate(..., vista_cache=handle)`` (``VistaPipeline.ask`` does it); the
    patched ``get_video_features`` then takes the video features and the scout's ViT embeddings
    from the cache when present (skipping the vision tower and the scout's ViT) and stores them
    otherwise. ``video_keys``: one key string per video of the batch, in placeholder order;
    ``model_key`` / ``scout_key``: fingerprints of the backbone (+ processor) and the scout.
    ``cache=None`` (or a disabled cache) makes a handle that only collects timings.

    Filled in by the model: ``status`` (kind -> "hit" | "disk" | "miss") and ``timings``
    (``vision_s``, ``scout_vit_s``, ``scout_qformer_s``: seconds, or a pair of CUDA events;
    :meth:`resolved_timings` turns them into seconds).
    """

    def __init__(self, cache: Optional[FeatureCache], video_keys, model_key: str, scout_key: Optional[str] = None):
        self.cache = cache if cache is not None and cache.enabled else None
        self.video_keys = list(video_keys)
        self.model_key = model_key
        self.scout_key = scout_key
        self.status: Dict[str, str] = {}
        self.timings: Dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.cache is not None

    @property
    def num_videos(self) -> int:
        return len(self.video_keys)

    def _key(self, k: int, variant: str, scout: bool) -> str:
        parts = {"video": self.video_keys[k], "model": self.model_key, "variant": variant}
        if scout:
            parts["scout"] = self.scout_key
        return key_string(parts)

    def _note(self, kind: str, entry: Optional[CacheEntry]) -> None:
        got = "miss" if entry is None else ("disk" if entry.source == "disk" else "hit")
        with self._lock:
            prev = self.status.get(kind)
            # several videos: a miss anywhere is a miss
            self.status[kind] = got if prev is None or prev == got else "miss"

    def features(self, k: int, variant: str, device) -> Optional[Any]:
        """Video k's cached feature block on ``device`` (None: a miss, or caching is off)."""
        if self.cache is None:
            return None
        e = self.cache.get("features", self._key(k, variant, False), device=device)
        self._note("features", e)
        return None if e is None else e.tensors["features"].to(device)

    def store_features(self, k: int, variant: str, block) -> None:
        if self.cache is not None:
            self.cache.put("features", self._key(k, variant, False), {"features": block})

    def scout_embeds(self, k: int, variant: str, device) -> Optional[Any]:
        """Video k's cached scout ViT embeddings (None: a miss, caching off, or no scout key)."""
        if self.cache is None or self.scout_key is None:
            return None
        e = self.cache.get("scout", self._key(k, variant, True), device=device)
        self._note("scout", e)
        return None if e is None else e.tensors["embeds"].to(device)

    def store_scout_embeds(self, k: int, variant: str, emb) -> None:
        if self.cache is not None and self.scout_key is not None:
            self.cache.put("scout", self._key(k, variant, True), {"embeds": emb})

    def add_time(self, name: str, value) -> None:
        """Record a phase time (seconds, or a (start, end) pair of CUDA events); adds up."""
        with self._lock:
            prev = self.timings.get(name)
            if prev is None:
                self.timings[name] = value
            else:
                self.timings[name] = _as_list(prev) + [value]

    def resolved_timings(self) -> Dict[str, float]:
        """``timings`` in seconds (waits for recorded CUDA events)."""
        out = {}
        for name, v in self.timings.items():
            total = 0.0
            for part in _as_list(v):
                if isinstance(part, tuple):
                    part[1].synchronize()
                    total += part[0].elapsed_time(part[1]) / 1000.0
                else:
                    total += float(part)
            out[name] = total
        return out


def _as_list(v):
    return list(v) if isinstance(v, list) else [v]
