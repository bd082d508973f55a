"""Microbenchmarks of the vista_kernels ops and of whole-video pruning: fused Triton kernels vs the
batched PyTorch reference vs a per-frame loop of the reference.

    python bench/bench_kernels.py [--frames 64] [--tokens 196] [--dims 1152 3584] [--reps 20]
                                  [--device cuda|cpu] [--out bench/results]

Shape: one video of 64 frames x 196 tokens x D in {1152, 3584}, bf16, retention 0.15, with scout
scores (and a (64, 12, 32, 257) cross-attention tensor for scout_score_reduce).

Per op and implementation it reports: median ms, speedup over the batched reference, effective
bandwidth (the bytes the fused kernel path must move, divided by the time) in GB/s and as a share of
the GPU's peak HBM bandwidth, and the modelled number of HBM passes over x of the kernel path.

Without CUDA it says so and times only the references: Triton's CPU interpreter
(TRITON_INTERPRET=1) is a debugging tool, its timings say nothing about kernel speed, and
``triton.testing.do_bench`` does not work there. Results go to bench/results/kernels_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import vista  # noqa: E402
import vista_kernels as vk  # noqa: E402
from vista_kernels.reference import _common  # noqa: E402
from vista_kernels.utils import interpreter_active  # noqa: E402

RETENTION = 0.15
SCOUT_SHAPE = (12, 32, 257)  # heads, queries, patches per frame
#: peak HBM bandwidth in GB/s by device-name substring (vendor figures)
PEAK_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
             "A100 80GB": 1935.0, "A100": 1555.0, "L40S": 864.0, "RTX 4090": 1008.0}


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def peak_gbps(name: str):
    for key, v in PEAK_GBPS.items():
        if key in name:
            return v
    return None


def can_time_kernels(device: str) -> bool:
    """Kernel timings need a real GPU: never time the interpreter, where do_bench does not work."""
    return device == "cuda" and not interpreter_active()


def timer(device: str, reps: int):
    if can_time_kernels(device):
        import triton.testing

        def bench(fn):
            return float(triton.testing.do_bench(fn, warmup=max(5, reps // 4), rep=max(20, reps * 5)))
        return bench

    def bench_cpu(fn):
        fn()  # warm-up
        ts = []
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)
    return bench_cpu


def make_inputs(F: int, N: int, D: int, device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scene = torch.randn(F // 16 + 1, D, generator=g).repeat_interleave(16, 0)[:F]
    x = scene[:, None, :] + 0.2 * torch.randn(F, 1, D, generator=g) + torch.randn(F, N, D, generator=g)
    q = torch.randn(D, generator=g)
    s = torch.rand(F, N, generator=g)
    attn = torch.rand(F, *SCOUT_SHAPE, generator=g).softmax(-1)
    return (x.to(device=device, dtype=dtype), q.to(device=device, dtype=dtype), s.to(device),
            attn.to(device=device, dtype=dtype))


def per_frame(fn, *args, **kw):
    """Run a batched op frame by frame (the per-frame loop baseline)."""
    def run():
        F = args[0].shape[0]
        outs = []
        for f in range(F):
            a = [t[f:f + 1] if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == F else t for t in args]
            k = {n: (t[f:f + 1] if isinstance(t, torch.Tensor) and t.shape[0] == F else t) for n, t in kw.items()}
            outs.append(fn(*a, **k))
        return outs
    return run


def prune_per_frame(x, q, s):
    """Whole pruning with selection + aggregation looped over frames (budgets batched)."""
    cfg = vista.VistaConfig(retention=RETENTION, backend="torch")

    def run():
        budgets, _ = vista.frame_budgets(x, q, RETENTION, cfg)
        k_f = torch.floor(budgets.double() * cfg.scout_ratio + 1e-9).to(torch.int64)
        outs = []
        for f in range(x.shape[0]):
            xf, sf = x[f:f + 1], s[f:f + 1]
            valid = torch.ones(1, x.shape[1], dtype=torch.bool, device=x.device)
            fov = _common.stable_topk_mask(sf, k_f[f:f + 1], valid)
            anchors = vk.dpc_select(xf, budgets[f:f + 1] - k_f[f:f + 1], valid=~fov, k=cfg.knn_k, backend="torch")
            outs.append(vk.anchor_aggregate(xf, fov | anchors, alpha=cfg.alpha, backend="torch"))
        return outs
    return run


#: modelled HBM passes over x of the kernel paths: (reads, writes)
X_PASSES = {
    "frame_cosine": (1, 0), "knn_density": (1, 0), "dpc_delta": (1, 0), "dpc_gamma": (1, 0),
    "dpc_select": (1, 0),
    "anchor_aggregate": (2, 1),  # geometry read, aggregation read, x_out write
    # public ops: frame_cosine + torch frame means (vista/budget.py) + dpc_select + anchor_aggregate
    "prune_video": (5, 1),
    # plan_budgets (cosine + torch means) + FusedPruner (one geometry pass) + aggregation;
    # 2 reads + 1 write if plan_budgets took FusedPruner's cosines and means
    "prune_video_fused": (4, 1),
    "scout_score_reduce": (0, 0),
}


def model_bytes(key: str, F: int, N: int, D: int, esize: int, attn_numel: int):
    """(bytes the kernel path must move, (reads, writes) of x) for one call."""
    x = F * N * D * esize
    if key == "scout_score_reduce":
        return attn_numel * esize + F * SCOUT_SHAPE[2] * 4, (0, 0)
    r, w = X_PASSES[key]
    gram = 0 if key == "frame_cosine" else F * N * N * 4 * 2  # G written once, read back (L2-sized)
    return (r + w) * x + gram + F * N * 4 * 4, (r, w)


def fused_prune(x, q, s):
    """Whole pruning on FusedPruner: budgets from plan_budgets, then one geometry pass + aggregation."""
    from vista.budget import plan_budgets
    from vista_kernels.ops import FusedPruner

    cfg = vista.VistaConfig(retention=RETENTION, backend="triton")

    def run():
        plan = plan_budgets(x, q, RETENTION, cfg)
        budgets = plan.budgets
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        k_f = torch.floor(budgets.double() * cfg.scout_ratio + 1e-9).to(torch.int64)
        foveal = _common.stable_topk_mask(s, k_f, valid)
        fp = FusedPruner(x, valid)
        keep, out, assign = fp.select_and_aggregate(budgets - k_f, valid & ~foveal, foveal, cfg.alpha, cfg.knn_k)
        return out[keep]
    return run


def run(args) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    name = device_name(device)
    peak = peak_gbps(name) if device == "cuda" else None
    kernels = can_time_kernels(device)
    note = None
    if not kernels:
        note = ("no CUDA device: Triton kernel timings skipped (interpreter timings are not kernel speed); "
                "reference timings only") if device != "cuda" else "TRITON_INTERPRET=1: kernel timings skipped"
        print(f"NOTE: {note}")
    bench = timer(device, args.reps)
    F, N = args.frames, args.tokens
    rows = []
    for D in args.dims:
        x, q, s, attn = make_inputs(F, N, D, device, dtype)
        esize = x.element_size()
        valid = torch.ones(F, N, dtype=torch.bool, device=device)
        budgets = torch.full((F,), max(1, round(RETENTION * N)), dtype=torch.int64, device=device)
        keep = _common.stable_topk_mask(s, budgets, valid)
        rho = vk.knn_density(x, backend="torch")
        ops = {
            "frame_cosine": ((x,), {}),
            "knn_density": ((x,), {"k": 7}),
            "dpc_delta": ((x, rho), {}),
            "dpc_gamma": ((x,), {}),
            "dpc_select": ((x, budgets), {}),
            "anchor_aggregate": ((x, keep), {"alpha": 0.5}),
            "scout_score_reduce": ((attn,), {}),
        }
        for op, (a, kw) in ops.items():
            fn = getattr(vk, op)
            impls = {"reference (batched)": lambda: fn(*a, backend="torch", **kw),
                     "reference (per-frame loop)": per_frame(lambda *aa, **kk: fn(*aa, backend="torch", **kk), *a, **kw)}
            if kernels:
                impls = {"triton": lambda: fn(*a, backend="triton", **kw), **impls}
                if op == "dpc_gamma":  # the other launch mode (two row-grid launches), for tuning FUSED_MAX_N
                    from vista_kernels.ops.dpc_scores import dpc_gamma_triton
                    impls["triton row-grid (fused=False)"] = lambda: dpc_gamma_triton(x, fused=False)
            rows += measure(op, D, impls, bench, F, N, esize, attn.numel(), peak, args)
        cfg = {b: vista.VistaConfig(retention=RETENTION, backend=b) for b in ("torch", "triton")}
        impls = {"reference (batched)": lambda: vista.prune_video(x, q, scout_scores=s, config=cfg["torch"]),
                 "reference (per-frame loop)": prune_per_frame(x, q, s)}
        if kernels:
            impls = {"triton": lambda: vista.prune_video(x, q, scout_scores=s, config=cfg["triton"]),
                     "triton FusedPruner": fused_prune(x, q, s), **impls}
        rows += measure("prune_video", D, impls, bench, F, N, esize, attn.numel(), peak, args)
    result = {
        "device": name, "kernels_timed": kernels, "note": note, "dtype": args.dtype,
        "shape": {"frames": F, "tokens": N, "dims": list(args.dims), "retention": RETENTION,
                  "scout_attn": [F, *SCOUT_SHAPE]},
        "peak_hbm_gbps": peak, "torch": torch.__version__, "python": platform.python_version(),
        "rows": rows,
    }
    return result


def measure(op, D, impls, bench, F, N, esize, attn_numel, peak, args):
    out, base = [], None
    times = {}
    for impl, fn in impls.items():
        times[impl] = bench(fn)
    base = times.get("reference (batched)")
    for impl, ms in times.items():
        # effective bandwidth of every implementation against the kernel path's byte count
        nbytes, passes = model_bytes("prune_video_fused" if impl == "triton FusedPruner" else op,
                                     F, N, D, esize, attn_numel)
        gbps = nbytes / (ms * 1e-3) / 1e9
        row = {"op": op, "D": D, "impl": impl, "ms": round(ms, 4),
               "speedup_vs_batched_ref": round(base / ms, 2) if base else None,
               "effective_GBps": round(gbps, 1), "bandwidth_share": round(gbps / peak, 3) if peak else None,
               "x_passes_model": list(passes) if impl.startswith("triton") else None, "model_bytes": nbytes}
        out.append(row)
        share = f"{100 * row['bandwidth_share']:.1f}%" if row["bandwidth_share"] is not None else "-"
        print(f"{op:<20} D={D:<5} {impl:<28} {ms:10.3f} ms  x{row['speedup_vs_batched_ref'] or 0:<6} "
              f"{gbps:9.1f} GB/s  {share:>6}  x passes (r, w)={tuple(row['x_passes_model']) if row['x_passes_model'] is not None else '-'}",
              flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=196)
    ap.add_argument("--dims", type=int, nargs="+", default=[1152, 3584])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 20 on CUDA, 3 on CPU)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    if args.reps is None:
        args.reps = 20 if (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda" else 3
    result = run(args)
    os.makedirs(args.out, exist_ok=True)
    tag = result["device"].replace(" ", "_").replace("/", "_")
    path = os.path.join(args.out, f"kernels_{tag}.json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
