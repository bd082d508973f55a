"""The one-shot GPU suite (bench/gpu_suite.sh) cannot rot: its dry run (the same steps on tiny shapes
on CPU) must pass and report every step; the suite's own bookkeeping (failed steps recorded, the
time budget, bad arguments) and the pytest-benchmark cases are checked too."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join("bench", "gpu_suite.sh")
STEPS = ["env", "gpu_tests", "dups", "large", "ksweep", "memcheck", "racecheck", "bench", "e2e"]
FILES = {"summary.json", "suite.log", "tests.xml", "checks.json", "sanitizer.log", "bench.json", "e2e.json"}


def _env(**extra):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the suite sets what it needs
    env.pop("SUITE_BUDGET_S", None)
    env.update({"PYTHON": sys.executable, "PYTHONPATH": ROOT, **extra})
    return env


def _suite(out, *args, timeout=600, **env):
    return subprocess.run(["bash", SUITE, "--out", str(out), *args], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _summary(out):
    with open(os.path.join(out, "summary.json")) as fh:
        return json.load(fh)


@pytest.mark.slow
def test_dry_run_passes_and_reports_every_step(tmp_path):
    out = tmp_path / "gpu"
    p = _suite(out, "--dry-run")
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    s = _summary(out)
    assert s["ok"] is True and s["dry_run"] is True
    status = {st["step"]: st["status"] for st in s["steps"]}
    assert set(STEPS) <= set(status), status
    for name in ("env", "gpu_tests", "dups", "large", "ksweep", "sanitize_cases", "bench", "e2e"):
        assert status[name] == "ok", (name, s)
    assert status["memcheck"] == status["racecheck"] == "skipped"
    assert all(st["seconds"] >= 0 for st in s["steps"])
    # what comes back from the GPU machine: few plain files, no folders
    names = set(os.listdir(out))
    assert names <= FILES and len(names) <= 8, names
    assert all(os.path.isfile(out / n) for n in names)
    checks = json.loads((out / "checks.json").read_text())
    for step in ("dups", "large", "ksweep"):
        assert checks[step]["ok"] and checks[step]["checks"], step
    assert "torch" in checks["env"]
    bench = json.loads((out / "bench.json").read_text())
    ops = {(r["op"], r["impl"]) for r in bench["rows"] if r.get("us")}
    for op in ("knn_density", "dpc_select", "anchor_aggregate", "prune_video"):
        assert {(op, "reference"), (op, "per-frame")} <= ops, op
    e2e = json.loads((out / "e2e.json").read_text())
    assert [r["retention"] for r in e2e["rows"]] == [1.0, 0.25, 0.15, 0.10]
    assert all(r["ttft_ms"] > 0 and r["prefill_ms"] > 0 for r in e2e["rows"])
    assert e2e["rows"][0]["video_tokens"] > e2e["rows"][1]["video_tokens"] > e2e["rows"][3]["video_tokens"]
    assert "<testsuite" in (out / "tests.xml").read_text()


def test_failing_steps_are_recorded_and_the_suite_goes_on(tmp_path):
    # `false` as the interpreter: every Python step fails at once, the summary still lists them all
    p = _suite(tmp_path, "--dry-run", PYTHON="false")
    assert p.returncode == 1, p.stdout + p.stderr
    s = _summary(tmp_path)
    status = {st["step"]: st["status"] for st in s["steps"]}
    assert s["ok"] is False and set(STEPS) <= set(status)
    assert all(status[n] == "failed" for n in ("env", "gpu_tests", "dups", "bench", "e2e")), status
    assert "FAILED" in p.stdout


def test_spent_budget_skips_steps(tmp_path):
    p = _suite(tmp_path, "--dry-run", PYTHON="false", SUITE_BUDGET_S="0")
    assert p.returncode == 0, p.stdout + p.stderr
    s = _summary(tmp_path)
    assert {st["step"] for st in s["steps"]} >= set(STEPS)
    assert all(st["status"] == "skipped" for st in s["steps"]), s


@pytest.mark.parametrize("args", [["--bogus"], ["--out"]])
def test_bad_arguments_exit_2(args):
    p = subprocess.run(["bash", SUITE, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith("gpu_suite.sh: error:") and len(p.stderr.strip().splitlines()) == 1


def test_bench_cases_run_under_pytest_benchmark(tmp_path):
    # every microbenchmark case once (--benchmark-disable), tiny shape; Triton cases skip without CUDA
    env = _env(VISTA_BENCH_SHAPE="2,17,16")
    p = subprocess.run([sys.executable, "-m", "pytest", "bench/", "-q", "--benchmark-disable", "-p", "no:cacheprovider",
                        "-k", "prune_video or knn_density or scout_score_reduce"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert " passed" in p.stdout and "failed" not in p.stdout


def test_no_tf32_switch(monkeypatch):
    import torch

    from tests import conftest

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        monkeypatch.setenv("VISTA_NO_TF32", "0")
        conftest.apply_tf32_switch()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        monkeypatch.setenv("VISTA_NO_TF32", "1")
        conftest.apply_tf32_switch()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_deadline_plugin_skips_late_tests(tmp_path):
    (tmp_path / "test_probe.py").write_text("def test_a():\n    pass\n")
    env = _env(VISTA_SUITE_DEADLINE="1", PYTHONPATH=os.path.join(ROOT, "bench"))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "gpu_suite_plugin",
                        "-c", os.devnull, str(tmp_path / "test_probe.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 skipped" in p.stdout and "suite time box" in p.stdout


def _gpu_checks():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import gpu_checks
    finally:
        sys.path.pop(0)
    return gpu_checks


def test_check_helpers_fail_on_real_differences_and_excuse_near_ties():
    import torch

    gc = _gpu_checks()
    gamma = torch.tensor([[5.0, 4.0, 3.0, 3.0000001, 1.0]])
    ref = torch.tensor([[True, True, False, True, False]])  # top 3 by the reference
    k = torch.tensor([3])
    assert gc._select_diff(ref.clone(), ref, gamma, k) == (0, 0)
    near = torch.tensor([[True, True, True, False, False]])  # 2 <-> 3: gammas equal within 1e-4
    assert gc._select_diff(near, ref, gamma, k) == (0, 2)
    wrong = torch.tensor([[False, True, True, True, True]])  # 0 and 4: far from the boundary
    bad, _ = gc._select_diff(wrong, ref, gamma, k)
    assert bad == 2
    x = torch.tensor([[[0.0], [1.0], [3.0], [2.0]]])
    d2 = gc._sqdist(x)
    a_ref = torch.tensor([[0, 0, 3, 3]])
    assert gc._assign_diff(torch.tensor([[0, 0, 2, 3]]), a_ref, d2) == (1, 0)  # token 2 to itself? not kept: wrong
    x_tie = torch.tensor([[[0.0], [1.0], [2.0]]])  # token 1 is exactly between 0 and 2
    assert gc._assign_diff(torch.tensor([[0, 2, 2]]), torch.tensor([[0, 0, 2]]), gc._sqdist(x_tie)) == (0, 1)
    ok, _, _ = gc._close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 * (1 + 1e-3)]))
    assert not ok
    ok, _, _ = gc._close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 * (1 + 1e-6)]))
    assert ok


def test_failed_check_fails_the_step(tmp_path):
    gc = _gpu_checks()
    rep = gc.Report("probe")
    rep.add("good", True)
    rep.guard("raises", lambda: 1 / 0)
    args = type("A", (), {"json": str(tmp_path / "c.json"), "dry_run": True})()
    assert gc._finish(args, rep) == 1
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["probe"]["ok"] is False and data["probe"]["failed"] == ["raises"]
    empty = gc.Report("none")
    assert gc._finish(args, empty) == 1  # a step that checked nothing has not passed


def test_step_output_is_capped_in_the_log(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text("#!/bin/sh\nhead -c 4200000 /dev/zero | tr '\\0' 'x'\necho LAST-LINE\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    _suite(out, "--dry-run", PYTHON=str(fake))
    log = (out / "suite.log").read_bytes()
    assert b"bytes cut" in log and b"LAST-LINE" in log
    assert len(log) < 4 * 3.2 * 2**20  # four Python steps in the dry run, each cut to ~3 MiB
