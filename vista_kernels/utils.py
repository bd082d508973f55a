"""Helpers shared by the Triton host wrappers: interpreter detection, the fp32-upcast switch,
device checks and block-size helpers."""
from __future__ import annotations

import contextlib
import os
import threading

import torch


#: Triton's CPU interpreter keeps the running grid in module globals: two threads interpreting
#: kernels at once corrupt each other's program ids ("x >= grid_dim[0]"), so interpreted launches
#: are serialised. Compiled launches on GPUs need no lock.
_INTERPRETER_LOCK = threading.RLock()


def on_device_of(t: torch.Tensor):
    """Context for running Triton kernels on ``t``: makes ``t``'s CUDA device current (Triton
    launches on the current device and its current stream, not on the tensors' device); for CPU
    tensors (the interpreter) it holds the interpreter lock instead."""
    if isinstance(t, torch.Tensor) and t.is_cuda:
        return torch.cuda.device(t.device)
    if interpreter_active():
        return _INTERPRETER_LOCK
    return contextlib.nullcontext()


def interpreter_active() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_interpreted(kernel) -> bool:
    """True when ``kernel`` (a ``@triton.jit`` object) was built for the interpreter.

    ``triton.jit`` decides at decoration time, so this is the authoritative check (the environment
    variable may have changed since the ops were imported).
    """
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return interpreter_active()
    return isinstance(kernel, InterpretedFunction)


def upcast_flag(kernel, dtype: torch.dtype) -> bool:
    """Value of the kernels' ``UPCAST`` constexpr: cast loaded tiles to fp32 before ``tl.dot``.

    Always on under the interpreter (a bf16/fp16 ``tl.dot`` there returns garbage); on GPUs the
    16-bit tiles go to the tensor cores as they are (exact products, fp32 accumulation).
    """
    return kernel_interpreted(kernel) or dtype == torch.float32


def check_triton_device(t: torch.Tensor, kernel, name: str = "x") -> None:
    """Triton kernels need CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    interp = kernel_interpreted(kernel)
    if t.is_cuda and not interp:
        return
    if (not t.is_cuda) and t.device.type == "cpu" and interp:
        return
    if t.is_cuda and interp:
        raise ValueError(
            f"{name} is a CUDA tensor but Triton runs in interpreter mode (TRITON_INTERPRET=1); "
            "unset TRITON_INTERPRET before importing triton or use backend='torch'"
        )
    raise ValueError(
        f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), "
        f"but {name} is on {t.device}; use backend='torch' or 'auto'"
    )


def check_input_precision(p: str) -> str:
    """Only "ieee": fp32 Gram products through TF32 (10-bit mantissas) lose the accuracy the
    distances need, d2 = (|a|^2 + |b|^2) - 2G cancels catastrophically for close tokens (16-bit
    inputs are exact on the tensor cores either way)."""
    if p != "ieee":
        raise ValueError(
            f"input_precision must be 'ieee', got {p!r}: TF32 Gram products cancel in "
            "|a|^2 + |b|^2 - 2G and break the distance (and duplicate) rules"
        )
    return p


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def tl_dtype_name(dtype: torch.dtype) -> str:
    """Triton signature name of a torch dtype (for AOT compilation)."""
    return {
        torch.float32: "fp32",
        torch.float16: "fp16",
        torch.bfloat16: "bf16",
        torch.float64: "fp64",
        torch.int64: "i64",
        torch.int32: "i32",
        torch.uint8: "u8",
    }[dtype]
