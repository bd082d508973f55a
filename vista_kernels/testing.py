"""Instruments for tests and the GPU suite: count host synchronisations and Triton launches.

    from vista_kernels.testing import count_host_syncs, count_triton_launches
    with count_host_syncs() as syncs, count_triton_launches() as launches:
        vista.prune_video(x, q, s, cfg, check_finite=False)
    assert syncs.count == 0 and launches.count <= 6

``count_host_syncs`` is a ``TorchFunctionMode`` that records every torch call that would make the
host wait for a GPU: reading values (``item``, ``tolist``, ``bool``/``int``/``float`` of a tensor,
``torch.equal``/``allclose``, printing), copies to the host (``cpu``, ``numpy``, ``to("cpu")``) and
ops whose output size depends on the values (``nonzero``, ``masked_select``, ``unique``,
``bincount``, ``repeat_interleave`` without ``output_size``, indexing with a boolean mask). It
counts them on CPU tensors too, so a CPU test proves the GPU path has none. Calls made by Triton's
own interpreter (``TRITON_INTERPRET=1``) are ignored: on a GPU they do not exist.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import List

import torch
from torch.overrides import TorchFunctionMode

_T = torch.Tensor
_SYNC_METHODS = {
    _T.item, _T.tolist, _T.__bool__, _T.__int__, _T.__float__, _T.__index__, _T.numpy, _T.cpu,
    _T.nonzero, _T.bincount, _T.unique, _T.unique_consecutive, _T.masked_select, _T.__repr__,
    _T.__format__, _T.is_nonzero, _T.argwhere, _T.__contains__, _T.__array__, _T.__complex__,
}
_SYNC_FUNCS = {
    torch.nonzero, torch.argwhere, torch.masked_select, torch.unique, torch.unique_consecutive,
    torch.bincount, torch.equal, torch.allclose, torch.is_nonzero,
}


def _is_bool_index(idx) -> bool:
    if isinstance(idx, torch.Tensor):
        return idx.dtype == torch.bool
    if isinstance(idx, (tuple, list)):
        return any(_is_bool_index(i) for i in idx)
    return False


def _syncs(func, args, kwargs) -> bool:
    if func in _SYNC_METHODS or func in _SYNC_FUNCS:
        return True
    if func in (_T.__getitem__, _T.__setitem__) and len(args) > 1 and _is_bool_index(args[1]):
        return True
    if func in (torch.repeat_interleave, _T.repeat_interleave):
        if kwargs.get("output_size") is not None:
            return False
        if len(args) == 1 and "repeats" not in kwargs:  # repeat_interleave(repeats): size from the values
            return True
        return isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), torch.Tensor)
    if func in (_T.index_put_, _T.index_put, torch.index_put, torch.index_put_):
        return len(args) > 1 and _is_bool_index(args[1])
    if func in (torch.tensor, torch.as_tensor):  # a list holding tensors: their values are read
        return bool(args) and isinstance(args[0], (list, tuple)) and _holds_tensor(args[0])
    if func is torch.where and len(args) == 1 and not kwargs:
        return True
    if func is _T.to:
        dev = kwargs.get("device")
        for a in args[1:]:
            if isinstance(a, (str, torch.device)):
                dev = a
        return dev is not None and torch.device(dev).type == "cpu"
    return False


def _holds_tensor(data) -> bool:
    return any(isinstance(d, torch.Tensor) or (isinstance(d, (list, tuple)) and _holds_tensor(d)) for d in data)


_TRITON_DIR = None


def _from_triton() -> bool:
    """True when a frame of the current stack belongs to the triton package (its interpreter)."""
    global _TRITON_DIR
    if _TRITON_DIR is None:
        try:
            import triton

            _TRITON_DIR = os.path.dirname(triton.__file__) + os.sep
        except ImportError:  # pragma: no cover
            _TRITON_DIR = "\0"
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename.startswith(_TRITON_DIR):
            return True
        f = f.f_back
    return False


class _SyncCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: List[str] = []

    @property
    def count(self) -> int:
        return len(self.calls)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs) and not _from_triton():
            caller = sys._getframe(1)
            self.calls.append(f"{getattr(func, '__qualname__', func)} at "
                              f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}")
        return func(*args, **kwargs)


# Explicit waits are not torch functions (TorchFunctionMode never sees them): while a counter is
# active they are wrapped process-wide and recorded by the counters of the calling thread.
_EXPLICIT_WAITS = (("torch.cuda", "synchronize"), ("torch.cuda.Stream", "synchronize"),
                   ("torch.cuda.Event", "synchronize"), ("torch.cuda.Event", "wait"))
_ACTIVE: List[tuple] = []  # (thread id, counter)
_ACTIVE_LOCK = threading.Lock()
_SAVED: List[tuple] = []


def _resolve(path: str):
    obj = torch
    for part in path.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def _install_waits() -> None:
    for path, name in _EXPLICIT_WAITS:
        owner = _resolve(path)
        orig = getattr(owner, name)

        def wrapper(*args, _orig=orig, _name=f"{path}.{name}", **kwargs):
            me = threading.get_ident()
            with _ACTIVE_LOCK:
                counters = [c for tid, c in _ACTIVE if tid == me]
            if counters:
                caller = sys._getframe(1)
                where = f"{_name} at {os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}"
                for c in counters:
                    c.calls.append(where)
            return _orig(*args, **kwargs)

        setattr(owner, name, wrapper)
        _SAVED.append((owner, name, orig))


@contextlib.contextmanager
def count_host_syncs():
    """Context manager yielding a counter: ``.count`` host-synchronising torch calls, ``.calls``
    their names and call sites. Explicit waits (``torch.cuda.synchronize``, ``Stream`` /
    ``Event.synchronize``) made by the same thread count too."""
    mode = _SyncCounter()
    entry = (threading.get_ident(), mode)
    with _ACTIVE_LOCK:
        if not _ACTIVE:
            _install_waits()
        _ACTIVE.append(entry)
    try:
        with mode:
            yield mode
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.remove(entry)
            if not _ACTIVE:
                while _SAVED:
                    owner, name, orig = _SAVED.pop()
                    setattr(owner, name, orig)


class _LaunchCounter:
    def __init__(self):
        self.kernels: List[str] = []

    @property
    def count(self) -> int:
        return len(self.kernels)


_LAUNCH_LOCK = threading.RLock()


@contextlib.contextmanager
def count_triton_launches():
    """Context manager yielding a counter of Triton kernel launches (``.count``, ``.kernels``),
    compiled or interpreted, made inside the block (process-wide while it is active)."""
    import triton.runtime.jit as jit

    counter = _LaunchCounter()
    patched = []
    classes = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass
    with _LAUNCH_LOCK:
        for cls in classes:
            orig = cls.run

            def run(self, *args, _orig=orig, **kwargs):
                if not kwargs.get("warmup", False):
                    fn = getattr(self, "fn", None)
                    counter.kernels.append(getattr(fn, "__name__", None) or getattr(self, "__name__", "kernel"))
                return _orig(self, *args, **kwargs)

            cls.run = run
            patched.append((cls, orig))
        try:
            yield counter
        finally:
            for cls, orig in patched:
                cls.run = orig


__all__ = ["count_host_syncs", "count_triton_launches"]
