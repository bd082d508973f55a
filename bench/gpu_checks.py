"""Correctness checks of the GPU suite (``bench/gpu_suite.sh``): Triton vs the PyTorch reference on
the cases the interpreter tests cannot reach. One step per call, so the suite can time-box each:

    python bench/gpu_checks.py env      [--dry-run] [--json FILE]   # versions, device
    python bench/gpu_checks.py dups     [--dry-run] [--json FILE]   # bit-identical tokens
    python bench/gpu_checks.py large    [--dry-run] [--json FILE]   # N=4096, D=3584
    python bench/gpu_checks.py ksweep   [--dry-run] [--json FILE]   # k in {1, 7, 16, 32, 33}
    python bench/gpu_checks.py sanitize [--dry-run]                 # one small case per kernel
    python bench/gpu_checks.py env dups large ksweep sanitize --dry-run --record FILE  # several

With several steps in one call (the dry run: one interpreter start-up instead of five) each step's
status and wall time are appended to ``--record`` as tab-separated lines
``name, status, seconds, exit code, note`` (the suite's own record format).

* ``dups``: random bf16 x with row 3 copied to rows 70 and 150 (N=196) and to row 9 (N=17); the dry run
  copies row 3 to rows 20 and 35 at N=40 (two row tiles, as 70 and 150 are at N=196). On each
  backend the copies are exactly 0 apart: identical rho, delta 0 for the later copies (the lower
  index is the denser one on a tie), and an anchor that is a copy wins over its later copies in
  ``anchor_aggregate``; across backends ``dpc_select`` keeps the same indices and
  ``anchor_aggregate`` assigns the same anchors; ``prune_video`` keeps the same tokens.
* ``large``: 2 frames x 4096 tokens x 3584 dims, bf16: knn_density, dpc_delta, dpc_select and
  anchor_aggregate against the reference.
* ``ksweep``: knn_density, dpc_gamma and dpc_select for k in {1, 7, 16, 32, 33} (33: past the
  kernels' register top-k, the documented fallback).

Index comparisons are exact except where the reference itself has a near-tie (a gamma within a
relative 1e-4 of the frame's top-k boundary, an anchor distance within 1e-4 of the nearest): such
differences are counted as ``excused`` and reported, every other one fails the check.

``--dry-run`` uses tiny shapes on CPU (Triton under TRITON_INTERPRET=1). Exit status: 0 all checks
passed, 1 a check failed, 2 bad usage, 77 step skipped (printed reason).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

SKIP = 77
EXPECTED = {"torch": "2.11", "triton": "3.6", "transformers": "5.17"}
FLOAT_TOL = dict(rtol=2e-4, atol=1e-5)
TIE_REL = 1e-4


def update_json(path, key, value):
    """Atomically set ``key`` in the JSON object stored at ``path`` (created when missing)."""
    data = {}
    if os.path.exists(path):
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            data = {}
    data[key] = value
    from kernel_cases import write_json

    write_json(path, data)


class Report:
    """Named pass/fail checks with details, printed as they come."""

    def __init__(self, step):
        self.step, self.checks, self.t0 = step, [], time.perf_counter()

    def add(self, name, ok, **detail):
        self.checks.append({"check": name, "ok": bool(ok), **detail})
        extra = " ".join(f"{k}={v}" for k, v in detail.items())
        print(f"[{'PASS' if ok else 'FAIL'}] {name} {extra}", flush=True)
        return ok

    def guard(self, name, fn, *a, **kw):
        """Run one check function; an exception is a failed check with its message."""
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - recorded, the other checks still run
            traceback.print_exc()
            self.add(name, False, error=f"{type(e).__name__}: {e}"[:400])
            return None

    @property
    def ok(self):
        return all(c["ok"] for c in self.checks)

    def as_dict(self, **extra):
        return {"ok": self.ok, "seconds": round(time.perf_counter() - self.t0, 2),
                "failed": [c["check"] for c in self.checks if not c["ok"]], **extra, "checks": self.checks}


def _device(dry):
    import torch

    if dry:
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --dry-run on CPU)")
    return "cuda"


def _close(a, b):
    """(ok, max abs err, max rel err) of two float tensors with FLOAT_TOL."""
    import torch

    a, b = a.double(), b.double()
    err = (a - b).abs()
    ok = bool((err <= FLOAT_TOL["atol"] + FLOAT_TOL["rtol"] * b.abs()).all())
    rel = (err / b.abs().clamp_min(1e-30)).max().item() if err.numel() else 0.0
    return ok, float(err.max()) if err.numel() else 0.0, float(rel)


def _sqdist(x):
    """(F, N, N) fp64 squared distances / D (the reference's definition, in fp64)."""
    import torch

    x = x.double()
    return torch.cdist(x, x).pow(2) / x.shape[-1]


def _select_diff(got, ref, gamma, k_keep):
    """(unexcused, excused) membership differences; excused: gamma within TIE_REL of the boundary."""
    import torch

    bad, excused = 0, 0
    for f in range(got.shape[0]):
        diff = (got[f] != ref[f]).nonzero().flatten()
        if diff.numel() == 0:
            continue
        k = int(k_keep[f])
        g = gamma[f].double()
        srt = torch.sort(g, descending=True).values
        edge = srt[max(0, k - 1)] if k > 0 else srt[0]
        near = (g[diff] - edge).abs() <= TIE_REL * edge.abs().clamp_min(1e-30)
        excused += int(near.sum())
        bad += int((~near).sum())
    return bad, excused


def _assign_diff(got, ref, d2):
    """(unexcused, excused) anchor differences; excused: both anchors within TIE_REL of each other."""
    diff = (got != ref).nonzero()
    bad = excused = 0
    for f, j in diff.tolist():
        a, b = int(got[f, j]), int(ref[f, j])
        if a < 0 or b < 0:
            bad += 1
            continue
        da, db = float(d2[f, j, a]), float(d2[f, j, b])
        if abs(da - db) <= TIE_REL * max(abs(db), 1e-30):
            excused += 1
        else:
            bad += 1
    return bad, excused


def _gamma(x, k, backend):
    """dpc_gamma where the package exports it (its own fused path), else rho * delta."""
    import vista_kernels as vk

    if hasattr(vk, "dpc_gamma"):
        return vk.dpc_gamma(x, k=k, backend=backend)
    rho = vk.knn_density(x, k=k, backend=backend)
    return rho * vk.dpc_delta(x, rho, backend=backend)


def _compare_ops(rep, tag, x, k_keep, keep, k=7):
    """knn_density, dpc_delta, dpc_gamma, dpc_select, anchor_aggregate: triton vs torch on x."""
    import torch

    import vista_kernels as vk

    d2 = _sqdist(x)
    rho_r = vk.knn_density(x, k=k, backend="torch")
    rho_t = vk.knn_density(x, k=k, backend="triton")
    ok, ae, re = _close(rho_t, rho_r)
    rep.add(f"{tag} knn_density", ok, max_abs=f"{ae:.2e}", max_rel=f"{re:.2e}")
    dl_r = vk.dpc_delta(x, rho_r, backend="torch")
    dl_t = vk.dpc_delta(x, rho_r, backend="triton")
    ok, ae, re = _close(dl_t, dl_r)
    rep.add(f"{tag} dpc_delta", ok, max_abs=f"{ae:.2e}", max_rel=f"{re:.2e}")
    g_r = _gamma(x, k, "torch")
    g_t = _gamma(x, k, "triton")
    ok, ae, re = _close(g_t, g_r)
    rep.add(f"{tag} dpc_gamma", ok, max_abs=f"{ae:.2e}", max_rel=f"{re:.2e}")
    s_r = vk.dpc_select(x, k_keep, k=k, backend="torch")
    s_t = vk.dpc_select(x, k_keep, k=k, backend="triton")
    bad, exc = _select_diff(s_t.cpu(), s_r.cpu(), g_r.cpu(), k_keep.cpu())
    counts_ok = bool(torch.equal(s_t.sum(1).cpu(), k_keep.cpu()))
    rep.add(f"{tag} dpc_select", bad == 0 and counts_ok, identical=bool(torch.equal(s_t, s_r)), unexcused=bad,
            excused=exc, counts_ok=counts_ok)
    if keep is not None:
        o_r, a_r = vk.anchor_aggregate(x, keep, alpha=0.5, backend="torch")
        o_t, a_t = vk.anchor_aggregate(x, keep, alpha=0.5, backend="triton")
        bad, exc = _assign_diff(a_t.cpu(), a_r.cpu(), d2.cpu())
        tol = 2e-2 if x.dtype != torch.float32 else 1e-4
        same_rows = bool(torch.equal(a_t, a_r))
        out_ok = bool(torch.allclose(o_t.float(), o_r.float(), rtol=tol, atol=tol)) if same_rows else None
        rep.add(f"{tag} anchor_aggregate", bad == 0 and out_ok is not False, identical=same_rows,
                unexcused=bad, excused=exc, x_out_close=out_ok)
    return s_r


# ----------------------------------------------------------------------------------------------- env
def step_env(args):
    info = {"python": platform.python_version(), "platform": platform.platform(), "dry_run": args.dry_run,
            "expected": EXPECTED, "env": {k: os.environ.get(k) for k in
                                          ("TRITON_INTERPRET", "VISTA_NO_TF32", "CUDA_VISIBLE_DEVICES")}}
    mismatch = []
    for mod in ("torch", "triton", "transformers", "pytest", "pytest_benchmark", "numpy"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            info[mod] = f"missing ({type(e).__name__})"
        if mod in EXPECTED and not str(info[mod]).startswith(EXPECTED[mod]):
            mismatch.append(f"{mod} {info[mod]} (suite written for {EXPECTED[mod]})")
    for mod in ("av", "flash_attn"):
        try:
            __import__(mod)
            info[mod] = "present"
        except Exception:  # noqa: BLE001
            info[mod] = "absent"
    import torch

    info["cuda_available"] = torch.cuda.is_available()
    info["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1), device_count=torch.cuda.device_count())
        import kernel_cases as kc

        info["peak_hbm_gbps_assumed"] = kc.peak_gbps(p.name)
    info["compute_sanitizer"] = find_sanitizer()
    info["version_mismatch"] = mismatch
    for k, v in info.items():
        print(f"{k}: {v}")
    if args.json:
        update_json(args.json, "env", info)
    return 0


def find_sanitizer():
    p = shutil.which("compute-sanitizer")
    if p:
        return p
    for cand in ("/usr/local/cuda/bin/compute-sanitizer",):
        if os.path.exists(cand):
            return cand
    return None


# ---------------------------------------------------------------------------------------------- dups
def _dup_video(F, N, D, src, copies, device, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(F, N, D, generator=g).to(torch.bfloat16)
    for c in copies:
        x[:, c] = x[:, src]
    return x.to(device)


def _dup_case(rep, F, N, D, src, copies, device, seed):
    import torch

    import vista
    import vista_kernels as vk

    tag = f"dups N={N} D={D} {src}->{copies}"
    x = _dup_video(F, N, D, src, copies, device, seed)
    group = [src] + list(copies)
    for backend in ("triton", "torch"):
        rho = vk.knn_density(x, k=7, backend=backend)
        delta = vk.dpc_delta(x, rho, backend=backend)
        same_rho = all(bool((rho[:, c] == rho[:, src]).all()) for c in copies)
        zero_delta = all(bool((delta[:, c] == 0).all()) for c in copies)
        src_delta_pos = bool((delta[:, src] > 0).all())
        rep.add(f"{tag} {backend}: copies exactly equal rho, delta 0 for later copies", same_rho and zero_delta
                and src_delta_pos, same_rho=same_rho, zero_delta=zero_delta, src_delta_positive=src_delta_pos)
        # anchors: a kept copy wins over its later copies (distance exactly 0, lower index)
        base = torch.zeros(F, N, dtype=torch.bool, device=device)
        others = [i for i in range(0, N, 5) if i not in group]
        base[:, others] = True
        for kept in ([src] + list(copies[:-1]), list(copies)):
            keep = base.clone()
            keep[:, kept] = True
            _, assign = vk.anchor_aggregate(x, keep, alpha=0.5, backend=backend)
            dropped = [i for i in group if i not in kept]
            ok = all(bool((assign[:, j] == min(kept)).all()) for j in dropped)
            rep.add(f"{tag} {backend}: kept {kept} -> dropped copies {dropped} go to {min(kept)}", ok,
                    got=[assign[0, j].item() for j in dropped])
    k_keep = torch.full((F,), max(2, round(0.15 * N)), dtype=torch.int64, device=device)
    keep_src = torch.zeros(F, N, dtype=torch.bool, device=device)
    keep_src[:, ::3] = True
    keep_src[:, group] = False
    keep_src[:, src] = True
    s_r = _compare_ops(rep, tag, x, k_keep, keep_src)
    later_kept = bool(s_r[:, list(copies)].any())
    rep.add(f"{tag} torch: later copies never selected (gamma 0)", not later_kept)
    # whole pruning, both backends
    q = x.float().mean((0, 1)).to(x.dtype)
    s = torch.rand(F, N, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    res = {b: vista.prune_video(x, q, scout_scores=s, config=vista.VistaConfig(retention=0.15, backend=b))
           for b in ("triton", "torch")}
    a, b = res["triton"], res["torch"]
    same = bool(torch.equal(a.keep, b.keep) and torch.equal(a.assign, b.assign) and torch.equal(a.budgets, b.budgets))
    close = bool(torch.allclose(a.tokens.float(), b.tokens.float(), rtol=2e-2, atol=2e-2)) if same else None
    rep.add(f"{tag} prune_video triton == torch", same and bool(close), same_keep_assign=same, tokens_close=close)


def step_dups(args):
    rep = Report("dups")
    device = _device(args.dry_run)
    dims = (16,) if args.dry_run else (1152, 3584)
    F = 1 if args.dry_run else 4
    big = (40, [20, 35]) if args.dry_run else (196, [70, 150])  # the interpreter is slow at N=196
    for D in dims:
        rep.guard(f"dups N={big[0]} D={D}", _dup_case, rep, F, big[0], D, 3, big[1], device, seed=D)
        rep.guard(f"dups N=17 D={D}", _dup_case, rep, F, 17, D, 3, [9], device, seed=D + 1)
    return _finish(args, rep, shapes={"frames": F, "dims": list(dims)})


# --------------------------------------------------------------------------------------------- large
def step_large(args):
    import torch

    import vista_kernels as vk

    rep = Report("large")
    device = _device(args.dry_run)
    F, N, D = (2, 48, 16) if args.dry_run else (2, 4096, 3584)

    def run():
        g = torch.Generator().manual_seed(4096)
        x = torch.randn(F, N, D, generator=g).to(torch.bfloat16).to(device)
        k_keep = torch.full((F,), round(0.15 * N), dtype=torch.int64, device=device)
        keep = vk.dpc_select(x, k_keep, backend="torch")
        _compare_ops(rep, f"large F={F} N={N} D={D}", x, k_keep, keep)
        c_r, c_t = vk.frame_cosine(x, backend="torch"), vk.frame_cosine(x, backend="triton")
        ok, ae, re = _close(c_t, c_r)
        rep.add(f"large F={F} N={N} D={D} frame_cosine", ok, max_abs=f"{ae:.2e}")
    rep.guard("large", run)
    return _finish(args, rep, shapes={"frames": F, "tokens": N, "dim": D})


# -------------------------------------------------------------------------------------------- ksweep
def step_ksweep(args):
    import torch

    rep = Report("ksweep")
    device = _device(args.dry_run)
    F, N, D = (1, 34, 16) if args.dry_run else (4, 196, 1152)  # N >= 34: k=33 takes the fallback
    g = torch.Generator().manual_seed(33)
    x = torch.randn(F, N, D, generator=g).to(torch.bfloat16).to(device)
    k_keep = torch.tensor([(N * (f + 1)) // (2 * F) for f in range(F)], dtype=torch.int64, device=device)
    for k in (1, 7, 16, 32, 33):
        rep.guard(f"ksweep k={k}", _compare_ops, rep, f"k={k} N={N} D={D}", x, k_keep, None, k=k)
    return _finish(args, rep, shapes={"frames": F, "tokens": N, "dim": D, "k": [1, 7, 16, 32, 33]})


# ------------------------------------------------------------------------------------------ sanitize
def step_sanitize(args):
    """One small case per kernel, to run under compute-sanitizer (the sanitizer reports errors)."""
    import torch

    import vista
    import vista_kernels as vk

    device = _device(args.dry_run)
    F, N, D = (1, 33, 16) if args.dry_run else (2, 196, 1152)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(F, N, D, generator=g).to(torch.bfloat16).to(device)
    x17 = x[:, :17].contiguous()
    k_keep = torch.full((F,), 5, dtype=torch.int64, device=device)
    keep = torch.zeros(F, N, dtype=torch.bool, device=device)
    keep[:, ::4] = True
    attn = torch.rand(F, 12, 32, 257, generator=g).softmax(-1).to(torch.bfloat16).to(device)
    cases = {
        "frame_cosine": lambda: vk.frame_cosine(x, backend="triton"),
        "knn_density": lambda: vk.knn_density(x, backend="triton"),
        "knn_density N=17": lambda: vk.knn_density(x17, backend="triton"),
        "dpc_delta": lambda: vk.dpc_delta(x, vk.knn_density(x, backend="torch"), backend="triton"),
        "dpc_select": lambda: vk.dpc_select(x, k_keep, backend="triton"),
        "anchor_aggregate": lambda: vk.anchor_aggregate(x, keep, backend="triton"),
        "scout_score_reduce": lambda: vk.scout_score_reduce(attn, backend="triton"),
        "prune_video": lambda: vista.prune_video(x, x.float().mean((0, 1)).to(x.dtype), config=vista.VistaConfig(
            retention=0.15, backend="triton")).tokens,
    }
    cases["frame_stats"] = lambda: vk.frame_stats(x, backend="triton", keep_gram=True)
    failed = 0
    for name, fn in cases.items():
        try:
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            print(f"[RAN ] {name}", flush=True)
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"[FAIL] {name}: {type(e).__name__}: {e}", flush=True)
    return 1 if failed else 0


def _finish(args, rep, **extra):
    if args.json:
        update_json(args.json, rep.step, rep.as_dict(dry_run=args.dry_run, **extra))
    n_bad = sum(not c["ok"] for c in rep.checks)
    print(f"{rep.step}: {len(rep.checks) - n_bad}/{len(rep.checks)} checks passed")
    return 0 if rep.ok and rep.checks else 1


STEPS = {"env": step_env, "dups": step_dups, "large": step_large, "ksweep": step_ksweep, "sanitize": step_sanitize}


NAMES = {"env": "env", "dups": "dups", "large": "large", "ksweep": "ksweep", "sanitize": "sanitize_cases"}


def _record(path, step, status, seconds, rc, note=""):
    with open(path, "a") as fh:
        fh.write(f"{NAMES[step]}\t{status}\t{seconds:.1f}\t{rc}\t{note}\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("steps", nargs="+", choices=sorted(STEPS), metavar="step", help=f"one or more of {sorted(STEPS)}")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (Triton interpreter)")
    ap.add_argument("--json", default=None, help="JSON file collecting the steps' results (updated in place)")
    ap.add_argument("--record", default=None, help="append one status line per step to this file")
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch

    torch.manual_seed(0)
    if args.dry_run:
        torch.set_num_threads(1)
    if os.environ.get("VISTA_NO_TF32", "") not in ("", "0"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    worst = 0
    for step in args.steps:
        t0 = time.perf_counter()
        try:
            rc = STEPS[step](args)
        except SystemExit as e:  # a step that cannot run here
            print(f"{step}: {e}", flush=True)
            rc = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 - the next step still runs
            traceback.print_exc()
            rc = 1
        dt = time.perf_counter() - t0
        status = {0: "ok", SKIP: "skipped"}.get(rc, "failed")
        print(f"== {step}: {status} in {dt:.1f} s", flush=True)
        if args.record:
            _record(args.record, step, status, dt, rc, "dry run" if args.dry_run else "")
        if status == "failed":
            worst = 1
    return worst


if __name__ == "__main__":
    sys.exit(main())
