"""Microbenchmarks of the vista_kernels ops and of whole-video pruning: Triton kernels vs the
batched PyTorch reference vs a per-frame loop of the reference, eager and CUDA-graph-replayed.

    python bench/bench_kernels.py [--frames 64] [--tokens 196] [--dims 1152 3584] [--reps N]
                                  [--device cuda|cpu] [--ops OP ...] [--no-graph] [--quick]
                                  [--out bench/results | --json FILE]

Default shape: one video of 64 frames x 196 tokens x D in {1152, 3584}, bf16, retention 0.15, with
scout scores (and a (64, 12, 32, 257) cross-attention tensor for scout_score_reduce). The same cases
run under pytest-benchmark: ``pytest bench/ --benchmark-only`` (shared code: bench/kernel_cases.py).

Per op and implementation it reports the median in microseconds, the speed-up over the batched
reference, GB/s against the op's floor traffic and the share of the floor (two passes over x for
whole pruning: ``2 * bytes(x) / peak HBM bandwidth``). On a GPU every Triton op and the whole
``prune_video(backend="triton")`` are also captured in a CUDA graph and replayed (``graph`` rows);
a capture that fails is recorded with its error and the run continues.

Without CUDA it says so and times only the references: Triton's CPU interpreter (TRITON_INTERPRET=1)
is a debugging tool, its timings say nothing about kernel speed, and ``triton.testing.do_bench``
does not work there. Results go to bench/results/kernels_<device>.json (or ``--json FILE``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import kernel_cases as kc  # noqa: E402


_write_json = kc.write_json


def _row(op, D, impl, mode, us, base_us, inp, peak, **extra):
    row = {"op": op, "D": D, "impl": impl, "mode": mode, "us": None if us is None else round(us, 2),
           "speedup_vs_reference": round(base_us / us, 2) if (us and base_us) else None}
    if us is not None:
        row.update(kc.row_metrics(op, inp, us, peak))
    row.update(extra)
    share = row.get("floor_share")
    if us is not None:
        print(f"{op:<19} D={D:<5} {impl:<10} {mode:<6} {us:11.1f} us  x{row['speedup_vs_reference'] or 0:<7} "
              f"{row['GBps'] or 0:9.1f} GB/s  floor share {'-' if share is None else f'{100 * share:.1f}%'}",
              flush=True)
    else:
        print(f"{op:<19} D={D:<5} {impl:<10} {mode:<6} {'-':>11}     {extra.get('error', '')}", flush=True)
    return row


def run(args, on_progress=None) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = kc.DTYPES[args.dtype]
    name = kc.device_name(device)
    peak = kc.peak_gbps(name) if device == "cuda" else None
    kernels = kc.can_time_kernels(device)
    note = None
    if not kernels:
        note = ("no CUDA device: Triton kernel timings and CUDA graphs skipped (interpreter timings are not "
                "kernel speed); reference timings only") if device != "cuda" else \
            "TRITON_INTERPRET=1: kernel timings skipped"
        print(f"NOTE: {note}", flush=True)
    bench = kc.timer(device, args.reps, quick=args.quick)
    F, N = args.frames, args.tokens
    ops = args.ops or list(kc.OPS)
    result = {
        "device": name, "kernels_timed": kernels, "note": note, "dtype": args.dtype,
        "shape": {"frames": F, "tokens": N, "dims": list(args.dims), "retention": kc.RETENTION,
                  "scout_attn": [F, *kc.SCOUT_SHAPE]},
        "peak_hbm_gbps": peak, "torch_threads": torch.get_num_threads() if device == "cpu" else None,
        "torch": torch.__version__, "python": platform.python_version(),
        "byte_model": "floor = floor_passes * bytes(main operand) / peak; prune_video: 2 * bytes(x) / peak",
        "rows": [],
    }
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:  # pragma: no cover
        result["triton"] = None
    graphs = []
    for D in args.dims:
        inp = kc.make_inputs(F, N, D, device, dtype)
        for op in ops:
            impls = [i for i in kc.IMPLS if kernels or i != "triton"]
            times = {}
            for impl in impls:
                try:
                    times[impl] = bench(kc.make_callable(op, impl, inp))
                except Exception as e:  # a broken op is recorded, the rest still runs
                    times[impl] = None
                    result["rows"].append(_row(op, D, impl, "eager", None, None, inp, peak,
                                               error=f"{type(e).__name__}: {e}"[:500]))
            base = times.get("reference")
            for impl, us in times.items():
                if us is not None:
                    result["rows"].append(_row(op, D, impl, "eager", us, base, inp, peak))
            if kernels and not args.no_graph and times.get("triton") is not None:
                graphs.append((op, D, inp, base))
        if on_progress:
            on_progress(result)
    # CUDA graphs last: a failed capture can leave the stream unusable for later eager work.
    for op, D, inp, base in graphs:
        fn = kc.make_callable(op, "triton", inp)
        try:
            replay, out, g = kc.graph_replay(fn)
            replay()
            torch.cuda.synchronize()
            same = kc.outputs_equal(out, fn())
            us = bench(replay)
            result["rows"].append(_row(op, D, "triton", "graph", us, base, inp, peak, replay_equals_eager=same))
            del g
        except Exception as e:
            result["rows"].append(_row(op, D, "triton", "graph", None, None, inp, peak,
                                       error=f"capture failed: {type(e).__name__}: {e}"[:500]))
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001 - the context may stay broken; later rows record it
                pass
        if on_progress:
            on_progress(result)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=None, help="frames (default 64)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per frame (default 196)")
    ap.add_argument("--dims", type=int, nargs="+", default=None, help="D values (default 1152 3584)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(kc.DTYPES))
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 20 on CUDA, 3 on CPU)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None)
    ap.add_argument("--ops", nargs="+", choices=kc.OPS, default=None, help="ops to time (default all)")
    ap.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph replays")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads on CPU (default 1; 0 = leave as is)")
    ap.add_argument("--quick", action="store_true", help="shorter do_bench windows (the GPU suite)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for kernels_<device>.json")
    ap.add_argument("--json", default=None, help="write the JSON to this file instead")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the GPU shape on every device (as the committed results); VISTA_BENCH_SHAPE overrides it
    shape = kc.default_shape(device) if os.environ.get("VISTA_BENCH_SHAPE", "").strip() else kc.GPU_SHAPE
    args.frames = args.frames or shape["frames"]
    args.tokens = args.tokens or shape["tokens"]
    args.dims = args.dims or list(shape["dims"])
    for name in ("frames", "tokens", "reps"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name} must be >= 1, got {v}")
    if min(args.dims) < 1:
        ap.error(f"--dims must be >= 1, got {args.dims}")
    if args.reps is None:
        args.reps = 20 if device == "cuda" else 3
    if device == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)  # OpenMP contention on small shared machines is noise
    if args.json:
        path = args.json
    else:
        tag = kc.device_name(device).replace(" ", "_").replace("/", "_")
        path = os.path.join(args.out, f"kernels_{tag}.json")
    result = run(args, on_progress=lambda r: _write_json(path, r))
    _write_json(path, result)
    print(f"wrote {path}")
    # an op that raised fails the run (its row says why); a CUDA-graph capture that fails does not:
    # capturability is measured here, not assumed
    broken = [f"{r['op']} D={r['D']} {r['impl']}" for r in result["rows"] if r["mode"] == "eager" and "error" in r]
    if broken:
        print(f"bench_kernels: error: {len(broken)} eager case(s) raised: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
