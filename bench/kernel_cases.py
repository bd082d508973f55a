"""Shapes, inputs and timed callables of the kernel microbenchmarks, shared by the table-printing
script (``bench/bench_kernels.py``), the pytest-benchmark suite (``bench/test_bench_kernels.py``)
and the one-shot GPU suite (``bench/gpu_suite.sh``).

Only the public API is used (``vista_kernels.<op>(..., backend=...)``, ``vista.prune_video``,
``vista.frame_budgets``), so the benchmarks survive changes inside the packages.

Implementations ("impl") of every op:

* ``triton``    - the op with ``backend="triton"`` (timed only on a real GPU: interpreter timings say
  nothing about kernel speed);
* ``reference`` - the batched PyTorch reference, ``backend="torch"``;
* ``per-frame`` - the reference called once per frame (the loop a naive port would write).

Byte model: ``x_bytes = F * N * D * element_size``. Each op has a floor of ``FLOOR_PASSES[op]``
passes over x (one read for the scoring ops; two for aggregation and whole pruning: the geometry
read and the aggregation read/write of the kept rows). ``floor_us = passes * x_bytes / peak``;
``GBps = passes * x_bytes / time`` and ``floor_share = floor_us / time_us`` (1.0 = at the floor).
For whole pruning this is the "two-pass floor" ``2 * bytes(x) / peak HBM bandwidth``.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import vista  # noqa: E402
import vista_kernels as vk  # noqa: E402

RETENTION = 0.15
KNN_K = 7
ALPHA = 0.5
SCOUT_SHAPE = (12, 32, 257)  # heads, queries, patches per frame (BLIP-2 Q-Former at 224 px)

#: the GPU benchmark shape: one video of 64 frames x 196 tokens, D in {1152, 3584}, bf16
GPU_SHAPE = dict(frames=64, tokens=196, dims=(1152, 3584))
#: small enough for the 2-core CPU machine (reference backend only)
CPU_SHAPE = dict(frames=8, tokens=196, dims=(256,))
#: the dry run of the GPU suite: tiny, seconds in all
TINY_SHAPE = dict(frames=4, tokens=17, dims=(32,))

_ALL_OPS = ("frame_cosine", "knn_density", "dpc_delta", "dpc_gamma", "dpc_select", "anchor_aggregate",
            "scout_score_reduce", "prune_video")
#: the ops this version of vista_kernels exports (dpc_gamma is not part of the DESIGN.md contract)
OPS = tuple(op for op in _ALL_OPS if op == "prune_video" or hasattr(vk, op))
IMPLS = ("triton", "reference", "per-frame")
FLOOR_PASSES = {"frame_cosine": 1, "knn_density": 1, "dpc_delta": 1, "dpc_gamma": 1, "dpc_select": 1,
                "anchor_aggregate": 2, "scout_score_reduce": 1, "prune_video": 2}

#: peak HBM bandwidth in GB/s by device-name substring (vendor figures; first match wins)
PEAK_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H100": 3350.0,
             "A100-SXM4-80GB": 2039.0, "A100 80GB": 1935.0, "A100": 1555.0, "L40S": 864.0, "RTX 4090": 1008.0}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def peak_gbps(name: str) -> Optional[float]:
    for key, v in PEAK_GBPS.items():
        if key in name:
            return v
    return None


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def can_time_kernels(device: str) -> bool:
    """Kernel timings need a real GPU: never time the interpreter (``do_bench`` does not work there)."""
    return device == "cuda" and torch.cuda.is_available() and not interpreter_active()


def default_shape(device: str) -> dict:
    """The benchmark shape for ``device``; ``VISTA_BENCH_SHAPE="F,N,D[,D...]"`` overrides it."""
    env = os.environ.get("VISTA_BENCH_SHAPE", "").strip()
    if env:
        try:
            v = [int(p) for p in env.split(",")]
        except ValueError:
            raise ValueError(f"VISTA_BENCH_SHAPE must be 'F,N,D[,D...]' integers, got {env!r}") from None
        if len(v) < 3 or min(v) < 1:
            raise ValueError(f"VISTA_BENCH_SHAPE must be 'F,N,D[,D...]' positive integers, got {env!r}")
        return dict(frames=v[0], tokens=v[1], dims=tuple(v[2:]))
    return dict(GPU_SHAPE if device == "cuda" else CPU_SHAPE)


def stable_topk_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(F, N) bool: per frame the k[f] highest scores, ties to the lower index."""
    F, N = scores.shape
    order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=scores.device).expand(F, N).contiguous())
    return rank < k.view(F, 1)


@dataclass
class Inputs:
    """One benchmark video: x (F, N, D), q (D,), scout scores s (F, N) fp32, cross-attention attn
    (F, heads, queries, patches), per-frame budgets (F,) int64, keep (F, N) bool (the scout's top
    budgets[f]), rho (F, N) fp32 (reference knn_density of x)."""

    x: torch.Tensor
    q: torch.Tensor
    s: torch.Tensor
    attn: torch.Tensor
    budgets: torch.Tensor
    keep: torch.Tensor
    rho: torch.Tensor

    @property
    def x_bytes(self) -> int:
        return self.x.numel() * self.x.element_size()


def make_inputs(F: int, N: int, D: int, device: str = "cpu", dtype: torch.dtype = torch.bfloat16,
                seed: int = 0) -> Inputs:
    """Scene-structured random video (a new scene every 16 frames plus noise), deterministic in seed."""
    g = torch.Generator().manual_seed(seed)
    scene = torch.randn(F // 16 + 1, D, generator=g).repeat_interleave(16, 0)[:F]
    x = scene[:, None, :] + 0.2 * torch.randn(F, 1, D, generator=g) + torch.randn(F, N, D, generator=g)
    q = torch.randn(D, generator=g)
    s = torch.rand(F, N, generator=g)
    attn = torch.rand(F, *SCOUT_SHAPE, generator=g).softmax(-1)
    x = x.to(device=device, dtype=dtype)
    s = s.to(device)
    budgets = torch.full((F,), max(1, round(RETENTION * N)), dtype=torch.int64, device=device)
    return Inputs(x=x, q=q.to(device=device, dtype=dtype), s=s, attn=attn.to(device=device, dtype=dtype),
                  budgets=budgets, keep=stable_topk_mask(s, budgets),
                  rho=vk.knn_density(x, k=KNN_K, backend="torch"))


def _op_args(op: str, inp: Inputs):
    return {
        "frame_cosine": ((inp.x,), {}),
        "knn_density": ((inp.x,), {"k": KNN_K}),
        "dpc_delta": ((inp.x, inp.rho), {}),
        "dpc_gamma": ((inp.x,), {"k": KNN_K}),
        "dpc_select": ((inp.x, inp.budgets), {"k": KNN_K}),
        "anchor_aggregate": ((inp.x, inp.keep), {"alpha": ALPHA}),
        "scout_score_reduce": ((inp.attn,), {}),
    }[op]


def _per_frame(fn: Callable, args, kwargs) -> Callable:
    """Run a batched op frame by frame (frame_cosine: consecutive pairs)."""
    F = args[0].shape[0]

    def cut(t, f, w):
        return t[f:f + w] if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == F else t

    def run():
        w = 2 if fn is vk.frame_cosine else 1
        return [fn(*[cut(a, f, w) for a in args], backend="torch", **{k: cut(v, f, w) for k, v in kwargs.items()})
                for f in range(max(1, F - w + 1))]
    return run


def _prune_per_frame(inp: Inputs) -> Callable:
    """Whole pruning with budgets planned once and selection + aggregation looped over frames."""
    cfg = vista.VistaConfig(retention=RETENTION, backend="torch")
    x, s = inp.x, inp.s

    def run():
        budgets, _ = vista.frame_budgets(x, inp.q, RETENTION, cfg)
        k_f = torch.floor(budgets.double() * cfg.scout_ratio + 1e-9).to(torch.int64)
        rows = []
        for f in range(x.shape[0]):
            xf = x[f:f + 1]
            fov = stable_topk_mask(s[f:f + 1], k_f[f:f + 1])
            anchors = vk.dpc_select(xf, budgets[f:f + 1] - k_f[f:f + 1], valid=~fov, k=cfg.knn_k, backend="torch")
            keep = fov | anchors
            out, _ = vk.anchor_aggregate(xf, keep, alpha=cfg.alpha, backend="torch")
            rows.append(out[keep])
        return torch.cat(rows)
    return run


def make_callable(op: str, impl: str, inp: Inputs) -> Callable:
    """A zero-argument callable running ``op`` with implementation ``impl`` on ``inp``."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if op == "prune_video":
        if impl == "per-frame":
            return _prune_per_frame(inp)
        cfg = vista.VistaConfig(retention=RETENTION, backend="triton" if impl == "triton" else "torch")
        # check_finite=False: the path models take (projector outputs), free of host syncs (graph-capturable)
        return lambda: vista.prune_video(inp.x, inp.q, scout_scores=inp.s, config=cfg, check_finite=False)
    fn = getattr(vk, op)
    args, kwargs = _op_args(op, inp)
    if impl == "per-frame":
        return _per_frame(fn, args, kwargs)
    backend = "triton" if impl == "triton" else "torch"
    return lambda: fn(*args, backend=backend, **kwargs)


def op_bytes(op: str, inp: Inputs) -> int:
    """Bytes of one pass of the op's main operand (x; the attention tensor for scout_score_reduce)."""
    if op == "scout_score_reduce":
        return inp.attn.numel() * inp.attn.element_size()
    return inp.x_bytes


def row_metrics(op: str, inp: Inputs, us: float, peak: Optional[float]) -> Dict[str, Optional[float]]:
    """GB/s against the op's floor traffic and the share of the floor (None without a known peak)."""
    moved = FLOOR_PASSES[op] * op_bytes(op, inp)
    gbps = moved / (us * 1e-6) / 1e9 if us > 0 else None
    floor_us = moved / (peak * 1e9) * 1e6 if peak else None
    return {"floor_passes": FLOOR_PASSES[op], "bytes_floor": moved,
            "GBps": None if gbps is None else round(gbps, 1),
            "floor_us": None if floor_us is None else round(floor_us, 2),
            "floor_share": None if (floor_us is None or us <= 0) else round(floor_us / us, 4)}


def timer(device: str, reps: int, quick: bool = False) -> Callable[[Callable], float]:
    """A function returning the median microseconds of a callable: ``triton.testing.do_bench`` on a
    GPU, a perf_counter loop (with a warm-up call) elsewhere."""
    if can_time_kernels(device):
        import triton.testing

        warm, rep = (10, 40) if quick else (max(5, reps), max(25, reps * 5))

        def bench(fn):
            return 1e3 * float(triton.testing.do_bench(fn, warmup=warm, rep=rep, return_mode="median"))
        return bench

    def bench_host(fn):
        fn()
        ts = []
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            ts.append((time.perf_counter() - t) * 1e6)
        return statistics.median(ts)
    return bench_host


def graph_replay(fn: Callable, warmup: int = 3):
    """Capture ``fn`` in a CUDA graph after warm-up on a side stream; returns (replay callable,
    the output captured in the graph's static memory). Raises whatever capture raises."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    torch.cuda.synchronize()
    return g.replay, out, g


def outputs_equal(a, b) -> bool:
    """Exact equality of op outputs (tensors, tuples, lists, PrunedVideo)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(outputs_equal(u, v) for u, v in zip(a, b))
    if hasattr(a, "tokens") and hasattr(a, "keep"):
        return all(outputs_equal(getattr(a, n), getattr(b, n)) for n in ("tokens", "keep", "assign", "budgets"))
    return a == b


def write_json(path: str, obj) -> None:
    """Atomic JSON write for every bench script: temp file in the same folder, fsync, rename
    (a kill leaves the previous file or none, never a torn one)."""
    import json
    import tempfile

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
