"""``python -m vista_kernels.aot --arch 80 90`` compiles every kernel (no GPU needed), reports
registers / shared memory / spills from the bundled cuobjdump and fails on compile errors or spills."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

KERNELS = ["_frame_geometry_kernel[gram]", "_frame_geometry_kernel[means]", "_frame_cosine_kernel",
           "_dpc_scores_kernel[rho]", "_dpc_scores_kernel[delta]", "_dpc_scores_kernel[fused]",
           "_dpc_scores_kernel[delta+gamma]", "_anchor_assign_kernel", "_anchor_aggregate_kernel[compact]",
           "_anchor_aggregate_kernel[full]", "_scout_score_reduce_kernel"]


def _run(args, code=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "vista_kernels.aot", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_aot_compiles_every_kernel_without_spills():
    r = _run(["--arch", "80", "90"])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["kernel", "arch", "shape"]
    for arch in ("sm_80", "sm_90"):
        for k in KERNELS:
            rows = [ln for ln in lines if ln.startswith(k + " ") and f" {arch} " in ln]
            assert rows, f"{k} missing for {arch}:\n{r.stdout}"
            for ln in rows:
                cols = ln.split()
                assert cols[-1] == "OK" and cols[-2] == "0", ln  # STACK (spill bytes) 0
                assert 0 < int(cols[-4]) <= 255, ln  # registers
    for shape in ("N=17 D=1152|3584", "N=196 D=1152|3584", "N=1024 D=1152|3584", "N=4096 D=1152|3584"):
        assert shape in r.stdout
    # the DPC kernel: one row per k in {1, 7, 16, 32} and N bucket (N = 17 caps k at 16)
    for arch in ("sm_80", "sm_90"):
        for N, ks in ((17, (1, 7, 16)), (196, (1, 7, 16, 32)), (1024, (1, 7, 16, 32)), (4096, (1, 7, 16, 32))):
            for k in ks:
                assert any(ln.startswith("_dpc_scores_kernel[") and f" {arch} " in ln and f"N={N} " in ln
                           and f" k={k} " in ln for ln in lines), (arch, N, k)
    assert ", 0 failed or spilled" in r.stdout


def test_aot_fails_on_a_broken_kernel_config():
    # a non-power-of-2 block cannot compile: the tool must report it and exit non-zero
    code = textwrap.dedent("""
        import sys
        import vista_kernels.aot as aot
        orig = aot._specs
        def broken(dtype):
            specs = [s for s in orig(dtype) if s.fn.__name__ == "_scout_score_reduce_kernel"]
            specs[0].constexprs = dict(specs[0].constexprs, BLOCK_P=100)
            return specs
        aot._specs = broken
        sys.exit(aot.main(["--arch", "80"]))
    """)
    r = _run([], code)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL" in r.stdout and "1 failed or spilled" in r.stdout


def test_resource_usage_parser():
    code = textwrap.dedent("""
        import vista_kernels.aot as aot, triton
        from triton.backends.compiler import GPUTarget
        s = [s for s in aot._specs(aot.DTYPES["bf16"]) if s.fn.__name__ == "_frame_cosine_kernel"][0]
        k = triton.compile(s.source(), target=GPUTarget("cuda", 80, 32), options={"num_warps": s.num_warps})
        u = aot.resource_usage(k.asm["cubin"])
        assert u["REG"] > 0 and u["STACK"] == 0, u
        print("ok", u)
    """)
    r = _run([], code)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_fused_dpc_kernel_reads_rho_coherently_after_its_barrier():
    # The fused DPC kernel writes rho to global memory, synchronises the CTA (bar.sync), then reads
    # every row's rho back. That is only correct if those reads are coherent loads: a non-coherent
    # (ld.global.nc, read-only cache) load could return stale values on a GPU.
    code = textwrap.dedent(
        """
        import re, torch, triton
        from triton.backends.compiler import GPUTarget
        from vista_kernels import aot
        n = 0
        for s in aot._specs(torch.bfloat16):
            if s.fn.__name__ != "_dpc_scores_kernel" or aot.mode_label(s) != "fused":
                continue
            for arch in (80, 90):
                k = triton.compile(s.source(), target=GPUTarget("cuda", arch, 32), options={"num_warps": s.num_warps})
                ptx = k.asm["ptx"]
                assert "bar.sync" in ptx, "no CTA barrier in the fused kernel"
                assert not re.search(r"ld\\.global\\.nc", ptx), "non-coherent global load in the fused kernel"
                n += 1
        assert n >= 2, n
        print("checked", n)
        """
    )
    r = _run([], code=code)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checked" in r.stdout
