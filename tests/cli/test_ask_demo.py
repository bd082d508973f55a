"""The ``vista`` command: demo and ask as subprocesses on tiny saved models, bad inputs -> exit 2."""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("av")

from vista.cli import main  # noqa: E402
from vista.video import synthetic_video, write_video  # noqa: E402
from vista.viz import token_map_size  # noqa: E402

QUESTION = "what color is the ball on the left ?"
SUMMARY = re.compile(r"^\[vista\] (\d+) frames.* \| visual tokens (\d+) -> (\d+) \(([\d.]+)%\) \| (.*)$")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    v = synthetic_video(6, height=64, width=80, seed=2)
    return write_video(tmp_path_factory.mktemp("cli") / "tiny.mp4", v.frames, fps=6)


def run_cli(*args, cwd=None, timeout=240):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vista.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
    return proc, time.perf_counter() - t0


def _png_ok(path, size):
    from PIL import Image

    img = Image.open(path)
    assert img.format == "PNG" and img.size == size
    assert np.asarray(img.convert("L")).std() > 20  # not blank


# ------------------------------------------------------------------------------ subprocess runs


def test_demo(tmp_path):
    proc, secs = run_cli("demo", "--frames", 8, "--max-new-tokens", 3, "--save-map", "demo.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    rows = [line for line in out if re.match(r"^\s+\d+\s+\d+\s+[\d.]+\s+\d+\s+\d+\s+\d+$", line)]
    assert len(rows) == 8  # one budget row per frame
    budgets = [int(r.split()[3]) for r in rows]
    summary = [m for m in map(SUMMARY.match, out) if m]
    assert len(summary) == 1
    frames, before, after, _, _ = summary[0].groups()
    assert (int(frames), int(before)) == (8, 8 * 196 + 1)
    assert sum(budgets) == int(after) - 1  # + LLaVA's newline token
    assert any(line.startswith("segment ") and "relevance" in line for line in out)
    assert any(line.startswith("answer: ") for line in out)
    assert "[vista] token map: demo.png (1650x548)" in out
    _png_ok(tmp_path / "demo.png", token_map_size(8, (96, 128)))
    assert "Traceback" not in proc.stderr
    assert secs < 120, f"vista demo took {secs:.0f}s"


def _ask_args(llava, scout, clip):
    return [clip, QUESTION, "--model", llava, "--scout", scout, "--frames", 4, "--max-new-tokens", 3,
            "--retention", 0.25]


@pytest.fixture(scope="module")
def ask_json(llava, scout, clip, tmp_path_factory):
    """One ``vista ask --json --save-map`` subprocess, shared by the tests below."""
    png = tmp_path_factory.mktemp("ask") / "m.png"
    proc, _ = run_cli("ask", *_ask_args(llava, scout, clip), "--json", "--save-map", png)
    return proc, png


def test_ask_json(ask_json):
    proc, png = ask_json
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)  # stdout is exactly one JSON record
    assert rec["frames"] == 4 and rec["tokens_before"] == 4 * 196 + 1
    assert rec["tokens_after"] == sum(rec["budgets"]) + 1 and rec["retention"] == 0.25
    assert set(rec["timings"]) >= {"decode", "preprocess", "scout", "prune", "prefill", "generate", "total"}
    assert rec["map"] == {"path": str(png), "width": 850, "height": 558}
    _png_ok(png, (850, 558))
    assert (850, 558) == token_map_size(4, (64, 80), cols=8)
    m = SUMMARY.match("[vista] " + rec["summary"])
    assert m and tuple(map(int, m.groups()[:3])) == (4, rec["tokens_before"], rec["tokens_after"])
    assert "Traceback" not in proc.stderr


def test_ask_text_matches_json_and_progress_bars(capsys, monkeypatch, llava, scout, clip, ask_json):
    """Text mode prints the answer and one summary line that agree with the --json record;
    progress bars appear when stdout is a terminal, and --quiet silences them."""
    rec = json.loads(ask_json[0].stdout)
    argv = ["ask"] + [str(a) for a in _ask_args(llava, scout, clip)]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "decoding" in err and "scout:" in err and "generating" in err
    lines = out.splitlines()
    assert len(lines) == 2  # the answer, then one summary line
    assert lines[0] == (rec["answer"] or "(empty answer)")  # greedy: the same answer both times
    m = SUMMARY.match(lines[1])
    assert m, lines[1]
    frames, before, after, pct, times = m.groups()
    assert (int(frames), int(before), int(after)) == (rec["frames"], rec["tokens_before"], rec["tokens_after"])
    assert float(pct) == pytest.approx(100 * rec["kept_fraction"], abs=0.05)
    for phase in ("decode", "scout", "prune", "generate", "total"):
        assert re.search(rf"\b{phase} \d+\.\d\ds", times), phase

    assert main(argv + ["--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[0] == lines[0]


def test_bad_video_subprocess_one_line(llava, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("just some text, renamed to .mp4\n")
    p, _ = run_cli("ask", fake, QUESTION, "--model", llava)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert lines[0].startswith("vista ask: error: ") and str(fake) in lines[0] and "not a readable video" in lines[0]


# ------------------------------------------------------------------------------ in process


def _assert_usage_error(capsys, argv, *needles):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and out == ""
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_bad_inputs(capsys, llava, clip, tmp_path):
    _assert_usage_error(capsys, ["ask", tmp_path / "missing.mp4", QUESTION, "--model", llava], "missing.mp4", "no such file")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _assert_usage_error(capsys, ["ask", empty, QUESTION, "--model", llava], "empty.mp4", "empty (0 bytes)")
    folder = tmp_path / "no_images"
    folder.mkdir()
    _assert_usage_error(capsys, ["ask", folder, QUESTION, "--model", llava], "no_images", "no images")
    _assert_usage_error(capsys, ["ask", clip, QUESTION, "--model", llava, "--retention", "0"], "--retention", "(0, 1]")
    _assert_usage_error(capsys, ["ask", clip, QUESTION, "--model", llava, "--retention", "1.5"], "--retention")
    _assert_usage_error(capsys, ["ask", clip, QUESTION, "--model", llava, "--frames", "0"], "--frames", ">= 1")
    _assert_usage_error(capsys, ["ask", clip, QUESTION, "--model", tmp_path / "nomodel"], "--model", "no such directory")
    _assert_usage_error(capsys, ["ask", clip, QUESTION], "--model")  # required
    _assert_usage_error(capsys, ["demo", "--frames", "0"], "--frames")
    _assert_usage_error(capsys, ["ask", clip, QUESTION, "--model", llava, "--save-map", tmp_path / "map.jpg"], ".png")


def test_model_dir_without_weights(capsys, llava, clip, tmp_path):
    d = tmp_path / "noweights"
    d.mkdir()
    for f in os.listdir(llava):
        if not f.endswith((".safetensors", ".bin")):
            (d / f).write_bytes(open(os.path.join(llava, f), "rb").read())
    line = _assert_usage_error(capsys, ["ask", clip, QUESTION, "--model", d], "weights")
    assert "noweights" in line


# ------------------------------------------------------------------------------ retention 1.0


def test_demo_full_retention(capsys, tmp_path):
    """Regression: ``vista demo --retention 1`` crashed (no pruning record -> AttributeError, exit 1)."""
    png = tmp_path / "full.png"
    assert main(["demo", "--retention", "1", "--frames", "4", "--max-new-tokens", "2", "--quiet",
                 "--save-map", str(png)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    rows = [line.split() for line in lines if re.match(r"^\s+\d+\s+\d+\s+[\d.]+\s+\d+\s+\d+\s+\d+$", line)]
    assert [int(r[3]) for r in rows] == [196] * 4  # every frame keeps all its tokens
    assert all(r[4] == "0" and r[5] == "196" for r in rows)  # the scout does not run at 1.0
    assert "segment 0: frames 0-3, relevance 1.000, 784 tokens" in lines
    m = [m for m in map(SUMMARY.match, lines) if m]
    assert len(m) == 1 and m[0].groups()[:3] == ("4", str(4 * 196 + 1), str(4 * 196 + 1))
    assert f"[vista] token map: {png} (850x548)" in lines
    _png_ok(png, token_map_size(4, (96, 128)))


def test_ask_full_retention_save_map(capsys, llava, clip, tmp_path):
    """Regression: ``vista ask --retention 1 --save-map`` exited 2 after generating, no answer."""
    png = tmp_path / "full.png"
    argv = [str(a) for a in (clip, QUESTION, "--model", llava, "--frames", 4, "--max-new-tokens", 2,
                             "--retention", 1, "--save-map", png)]
    assert main(["ask", *argv, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0]  # answer, summary, token map
    m = SUMMARY.match(lines[1])
    assert m and m.groups()[:4] == ("4", str(4 * 196 + 1), str(4 * 196 + 1), "100.0")
    assert lines[2] == f"[vista] token map: {png} (850x558)"
    _png_ok(png, token_map_size(4, (64, 80)))

    assert main(["ask", *argv, "--json"]) == 0
    out, err = capsys.readouterr()
    rec = json.loads(out)
    assert rec["answer"] == (lines[0] if lines[0] != "(empty answer)" else "")
    assert rec["budgets"] == [196] * 4 and rec["segment_id"] == [0] * 4 and rec["retention"] == 1.0
    assert rec["map"] == {"path": str(png), "width": 850, "height": 558}
    assert "nothing pruned" in err and "Traceback" not in err


def test_ask_time_range(capsys, llava, clip):
    # The 6-frame clip at 6 fps lasts 1 s: [0.5, 1.0] s holds frames 3-5, so --frames 6 gets 3.
    argv = ["ask", str(clip), QUESTION, "--model", str(llava), "--frames", "6", "--start", "0.5",
            "--end", "1.0", "--max-new-tokens", "2", "--json", "--quiet"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["frames"] == 3
    _assert_usage_error(capsys, ["ask", clip, QUESTION, "--model", llava, "--start", "0.8", "--end", "0.2"], "end")
