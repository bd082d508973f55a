"""Ahead-of-time compile every vista_kernels Triton kernel for given GPU archs and check spills.

    python -m vista_kernels.aot --arch 80 90 [--dtypes bf16 fp16 fp32]

For D in {1152, 3584}, N in {17, 196, 1024, 4096}, kNN k in {1, 7, 16, 32} (and the scout shape) it
compiles exactly the launch
configurations the host wrappers choose (block sizes, constexpr flags, ``num_warps``) with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32), options={"num_warps": ...})``
- no GPU needed - runs Triton's bundled ``cuobjdump --dump-resource-usage`` on each cubin and prints
a table (kernel, arch, blocks, registers, shared memory, spill bytes = STACK). Exits non-zero when a
kernel fails to compile or spills (STACK > 0 or LOCAL > 0).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    # the kernels must be real JITFunctions to compile; this must happen before triton is imported
    os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from .ops import anchor_aggregate as _agg  # noqa: E402
from .ops import dpc_scores as _dpc  # noqa: E402
from .ops import frame_stats as _geo  # noqa: E402
from .ops import scout_score_reduce as _scout  # noqa: E402
from .utils import tl_dtype_name  # noqa: E402

SHAPES_N = (17, 196, 1024, 4096)
SHAPES_D = (1152, 3584)
KNN_K = (1, 7, 16, 32)
SCOUT_SHAPE = (64, 12, 32, 257)  # (frames, heads, queries, patches): BLIP-2 Q-Former on 224px frames
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


class Spec:
    """One kernel launch configuration: runtime args (name -> (type, value)) and constexprs."""

    def __init__(self, fn, label: str, args: List[Tuple[str, str, object]], constexprs: Dict[str, object],
                 num_warps: int, num_stages: int = 3):
        self.fn, self.label, self.args, self.constexprs, self.num_warps = fn, label, args, constexprs, num_warps
        self.num_stages = num_stages

    def key(self):
        hint = tuple((t, (v % 16 == 0) if isinstance(v, int) and not t.startswith("*") and t != "fp32" else None)
                     for _, t, v in self.args)
        n = re.search(r"N=\d+ ", self.label)  # every N bucket keeps its own row, even when it compiles alike
        return (self.fn.__name__, hint, tuple(sorted(self.constexprs.items())), self.num_warps, self.num_stages,
                n.group(0) if n else "")

    def source(self) -> ASTSource:
        names = self.fn.arg_names
        sig, attrs = {}, {}
        for name, ty, val in self.args:
            sig[name] = ty
            i = names.index(name)
            # what the launcher specialises at run time: 16-byte aligned pointers, ints % 16 == 0
            if ty.startswith("*") or (ty in ("i32", "i64") and isinstance(val, int) and val % 16 == 0):
                attrs[(i,)] = [["tt.divisibility", 16]]
        for name in self.constexprs:
            sig[name] = "constexpr"
        ordered = {n: sig[n] for n in names}
        return ASTSource(fn=self.fn, signature=ordered, constexprs=dict(self.constexprs), attrs=attrs)

    def blocks(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.constexprs.items() if k.startswith("BLOCK") or k in ("K",)) + \
            f" warps={self.num_warps} stages={self.num_stages}"


def _geometry_specs(N: int, D: int, dtype: torch.dtype, tag: str) -> List[Spec]:
    """frame_stats: the geometry kernel with and without the Gram matrix, then the cosine kernel."""
    xt = "*" + tl_dtype_name(dtype)
    c = _geo.geometry_config(N, D, dtype)
    T = triton.cdiv(N, c["BLOCK_N"])
    specs = [Spec(
        _geo._frame_geometry_kernel, tag,
        [("x_ptr", xt, 0), ("valid_ptr", "*u8", 0), ("g_ptr", "*fp32", 0), ("sq_ptr", "*fp32", 0),
         ("msum_ptr", "*fp32", 0), ("mcnt_ptr", "*fp32", 0), ("f0", "i32", 0), ("N", "i32", N),
         ("D", "i32", D), ("T", "i32", T), ("stride_xf", "i32", N * D)],
        {"COMPUTE_GRAM": gram, "BLOCK_N": c["BLOCK_N"], "BLOCK_D": c["BLOCK_D"],
         "UPCAST": dtype == torch.float32, "INPUT_PRECISION": "ieee", "INTERPRETED": False},
        c["num_warps"], c["num_stages"]) for gram in (True, False)]
    cc = _geo.cosine_config(T, D)
    specs.append(Spec(
        _geo._frame_cosine_kernel, tag,
        [("msum_ptr", "*fp32", 0), ("mcnt_ptr", "*fp32", 0), ("out_ptr", "*fp32", 0), ("T", "i32", T),
         ("D", "i32", D), ("EPS", "fp32", 1e-12)],
        {"BLOCK_T": cc["BLOCK_T"], "BLOCK_D": cc["BLOCK_D"]}, cc["num_warps"]))
    return specs


def _dpc_specs(N: int, D: int, tag: str) -> List[Spec]:
    """dpc_scores: every mode of the DPC kernel for each kNN k (the fused one where it is chosen)."""
    specs = []
    for kk in KNN_K:
        dc = _dpc.dpc_config(N, kk)
        dargs = [("g_ptr", "*fp32", 0), ("sq_ptr", "*fp32", 0), ("valid_ptr", "*u8", 0),
                 ("rho_in_ptr", "*fp32", 0), ("rho_ptr", "*fp32", 0), ("delta_ptr", "*fp32", 0),
                 ("gamma_ptr", "*fp32", 0), ("f0", "i32", 0), ("N", "i32", N), ("Df", "fp32", float(D))]
        base = {"K": dc["K"], "KP": dc["KP"], "BLOCK_M": dc["BLOCK_M"], "BLOCK_N": dc["BLOCK_N"]}
        modes = [dict(DO_RHO=True, DO_DELTA=False, ROW_GRID=True, STORE_GAMMA=False),  # knn_density / row grid
                 dict(DO_RHO=False, DO_DELTA=True, ROW_GRID=True, STORE_GAMMA=False),  # dpc_delta
                 dict(DO_RHO=False, DO_DELTA=True, ROW_GRID=True, STORE_GAMMA=True)]  # row-grid gamma
        if dc["fused"]:
            modes.append(dict(DO_RHO=True, DO_DELTA=True, ROW_GRID=False, STORE_GAMMA=True))
        for m in modes:
            specs.append(Spec(_dpc._dpc_scores_kernel, f"{tag} k={kk}", dargs, {**base, **m}, dc["num_warps"]))
    return specs


def _aggregate_specs(N: int, D: int, dtype: torch.dtype, tag: str) -> List[Spec]:
    """anchor_aggregate / prune_frames: the assignment kernel, then aggregation (compact and full)."""
    xt = "*" + tl_dtype_name(dtype)
    ac = _agg.assign_config(N)
    specs = [Spec(
        _agg._anchor_assign_kernel, tag,
        [("g_ptr", "*fp32", 0), ("sq_ptr", "*fp32", 0), ("valid_ptr", "*u8", 0), ("keep_ptr", "*u8", 0),
         ("assign_ptr", "*i64", 0), ("f0", "i32", 0), ("N", "i32", N), ("Df", "fp32", float(D))],
        {"BLOCK_M": ac["BLOCK_M"], "BLOCK_N": ac["BLOCK_N"]}, ac["num_warps"])]
    gc = _agg.aggregate_config(N, D, dtype)
    for compact in (True, False):  # prune_frames (compacted rows) / anchor_aggregate (full x_out)
        specs.append(Spec(
            _agg._anchor_aggregate_kernel, tag,
            [("x_ptr", xt, 0), ("out_ptr", xt, 0), ("pos_ptr", "*i64", 0), ("fidx_ptr", "*i64", 0),
             ("tidx_ptr", "*i64", 0), ("valid_ptr", "*u8", 0), ("keep_ptr", "*u8", 0),
             ("assign_ptr", "*i64", 0), ("f0", "i32", 0), ("N", "i32", N), ("D", "i32", D),
             ("M", "i32", 7), ("stride_xf", "i32", N * D), ("one_minus_a", "fp32", 0.5), ("alpha", "fp32", 0.5)],
            {"BLOCK_M": gc["BLOCK_M"], "BLOCK_N": gc["BLOCK_N"], "BLOCK_D": gc["BLOCK_D"],
             "UPCAST": dtype == torch.float32, "INPUT_PRECISION": "ieee", "ROUND_BF16": False,
             "COMPACT": compact},
            gc["num_warps"]))
    return specs


def _scout_spec(dtype: torch.dtype) -> Spec:
    """scout_score_reduce at ``SCOUT_SHAPE``."""
    B, H, Q, P = SCOUT_SHAPE
    sc = _scout.scout_config(H, P)
    return Spec(
        _scout._scout_score_reduce_kernel, f"B={B} H={H} Q={Q} P={P} {tl_dtype_name(dtype)}",
        [("attn_ptr", "*" + tl_dtype_name(dtype), 0), ("out_ptr", "*fp32", 0), ("H", "i32", H), ("Q", "i32", Q),
         ("P", "i32", P), ("stride_b", "i32", H * Q * P), ("stride_h", "i32", Q * P), ("stride_q", "i32", P)],
        {"BLOCK_H": sc["BLOCK_H"], "BLOCK_P": sc["BLOCK_P"]}, sc["num_warps"])


def _dedupe(specs: List[Spec]) -> List[Spec]:
    """Identical compilations (e.g. dpc kernels do not depend on D) once, naming every D they serve."""
    seen: Dict[tuple, Spec] = {}
    for s in specs:
        k = s.key()
        if k in seen:  # same compilation for another D: name both shapes in the table
            first = seen[k]
            d_new = re.search(r"D=(\d+)", s.label)
            d_old = re.search(r"D=([\d|]+)", first.label)
            if d_new and d_old and d_new.group(1) not in d_old.group(1).split("|"):
                first.label = first.label.replace(d_old.group(0), f"{d_old.group(0)}|{d_new.group(1)}")
        else:
            seen[k] = s
    return list(seen.values())


def _specs(dtype: torch.dtype) -> List[Spec]:
    """Every launch configuration the host wrappers choose for ``dtype``, in table order."""
    specs: List[Spec] = []
    for N in SHAPES_N:
        for D in SHAPES_D:
            tag = f"N={N} D={D} {tl_dtype_name(dtype)}"
            specs += _geometry_specs(N, D, dtype, tag) + _dpc_specs(N, D, tag) + _aggregate_specs(N, D, dtype, tag)
    specs.append(_scout_spec(dtype))
    return _dedupe(specs)


_RES = re.compile(r"(REG|STACK|SHARED|LOCAL):(\d+)")


def resource_usage(cubin: bytes) -> Dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(cubin)
        path = fh.name
    try:
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(path)
    usage: Dict[str, int] = {}
    for line in out.splitlines():
        if "REG:" in line:
            for k, v in _RES.findall(line):
                usage[k] = max(usage.get(k, 0), int(v))
    if "REG" not in usage:
        raise RuntimeError(f"could not parse cuobjdump output:\n{out}")
    return usage


def mode_label(s: Spec) -> str:
    c = s.constexprs
    if "DO_RHO" in c:
        if c["DO_RHO"] and c["DO_DELTA"]:
            return "fused"
        return "rho" if c["DO_RHO"] else ("delta+gamma" if c["STORE_GAMMA"] else "delta")
    if "COMPUTE_GRAM" in c:
        return "gram" if c["COMPUTE_GRAM"] else "means"
    if "COMPACT" in c:
        return "compact" if c["COMPACT"] else "full"
    return ""


def _compile_row(s: Spec, arch: int):
    """Compile one spec for sm_<arch>: (table row, 1 if it failed or spilled else 0)."""
    name = f"{s.fn.__name__}[{mode_label(s)}]" if mode_label(s) else s.fn.__name__
    try:
        k = triton.compile(s.source(), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": s.num_warps, "num_stages": s.num_stages})
        u = resource_usage(k.asm["cubin"])
        smem = int(getattr(k.metadata, "shared", 0))
        spill = u.get("STACK", 0) + u.get("LOCAL", 0)
        return (name, f"sm_{arch}", s.label, s.blocks(), str(u["REG"]), str(smem), str(u.get("STACK", 0)),
                "OK" if spill == 0 else "SPILL"), int(spill > 0)
    except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
        msg = str(e).strip().splitlines()[-1][:80] if str(e).strip() else type(e).__name__
        return (name, f"sm_{arch}", s.label, s.blocks(), "-", "-", "-", f"FAIL {msg}"), 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="SM versions, e.g. 80 90")
    ap.add_argument("--dtypes", nargs="+", default=["bf16"], choices=sorted(DTYPES), help="input dtypes")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compilations")
    args = ap.parse_args(argv)
    rows, failures = [], 0
    t0 = time.time()
    jobs = [(s, arch) for dname in args.dtypes for s in _specs(DTYPES[dname]) for arch in args.arch]
    # compilations release the GIL in MLIR/ptxas: a few threads overlap them
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda job: _compile_row(*job), jobs))
    for row, failed in results:
        rows.append(row)
        failures += failed
    head = ("kernel", "arch", "shape", "blocks", "regs", "smem", "spill(STACK)", "status")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    print(fmt.format(*head))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))
    print(f"\n{len(rows)} compilations, {failures} failed or spilled, {time.time() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
