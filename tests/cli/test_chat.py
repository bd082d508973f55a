"""``vista chat``: one model load and one decode, many questions -- from a pipe, from a terminal (pty),
with /map, /retention, /quit, --history, and the one-line error contract."""
import io
import json
import os
import re
import select
import subprocess
import sys
import time

import pytest

pytest.importorskip("transformers")
pytest.importorskip("av")

from vista import retained_count  # noqa: E402
from vista.cli import main  # noqa: E402
from vista.video import synthetic_video, write_video  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUMMARY = re.compile(r"^\[vista\] \d+ frames.* \| visual tokens (\d+) -> (\d+) .*\| (cache .*)$")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    v = synthetic_video(6, height=64, width=80, seed=2)
    return write_video(tmp_path_factory.mktemp("chat") / "tiny.mp4", v.frames, fps=6)


def _env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.mark.slow
def test_chat_from_a_pipe(llava, scout, clip, tmp_path):
    script = ("what color is the ball ?\n\n/retention 0.5\nwhere is the square ?\n/map answer.png\n"
              "/bogus\n/retention 7\nis it moving ?\n")  # ends with EOF, no /quit
    proc = subprocess.run([sys.executable, "-m", "vista.cli", "chat", str(clip), "--model", llava, "--scout", scout,
                           "--frames", "4", "--max-new-tokens", "2", "--retention", "0.25"],
                          input=script, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    summaries = [m for m in map(SUMMARY.match, out) if m]
    assert len(summaries) == 3  # one per question; blank lines and commands answer nothing
    # decoded once up front, so the first answer already reuses the frames; the rest is all cached
    assert summaries[0].group(3) == "cache partial (frames hit, scout miss, features miss)"
    assert summaries[1].group(3) == summaries[2].group(3) == "cache hit"
    assert int(summaries[0].group(2)) == retained_count(4, 196, 0.25) + 1  # + LLaVA's newline
    assert int(summaries[1].group(2)) == retained_count(4, 196, 0.5) + 1  # after /retention 0.5
    assert "[vista] retention 0.5" in out
    assert any(line.startswith("[vista] token map: answer.png") for line in out)
    assert (tmp_path / "answer.png").stat().st_size > 0
    errors = proc.stderr.strip().splitlines()
    errors = [e for e in errors if e.startswith("vista chat: error:")]
    assert len(errors) == 2 and "unknown command '/bogus'" in errors[0] and "/retention must be in (0, 1]" in errors[1]


def _read_until(fd, pattern, timeout=240.0):
    buf, t0 = b"", time.time()
    while time.time() - t0 < timeout:
        r, _, _ = select.select([fd], [], [], 1.0)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if re.search(pattern, buf.decode(errors="replace")):
                return buf.decode(errors="replace")
    raise AssertionError(f"timed out waiting for {pattern!r}; got {buf.decode(errors='replace')!r}")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_chat_from_a_terminal(llava, clip, tmp_path):
    master, slave = os.openpty()
    p = subprocess.Popen([sys.executable, "-m", "vista.cli", "chat", str(clip), "--model", llava, "--frames", "4",
                          "--max-new-tokens", "2", "--quiet"],
                         stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env=_env(), close_fds=True)
    os.close(slave)
    try:
        _read_until(master, r"vista> ")  # a prompt on the terminal
        os.write(master, b"what color is the ball ?\n")
        first = _read_until(master, r"\| cache [^\n]*\n[\s\S]*vista> ")
        assert "cache partial (frames hit, features miss)" in first
        os.write(master, b"where is the square ?\n")
        second = _read_until(master, r"\| cache [^\n]*\n[\s\S]*vista> ")
        assert re.search(r"\| cache hit\r?\n", second)
        os.write(master, b"/quit\n")
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


def test_chat_history_and_json(monkeypatch, capsys, llava, clip):
    from vista.pipeline import VistaPipeline

    prompts = []
    real = VistaPipeline.build_prompt

    def spy(self, question, history=None):
        prompts.append((question, list(history or [])))
        return real(self, question, history)

    monkeypatch.setattr(VistaPipeline, "build_prompt", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question ?\nsecond question ?\n/quit\nnever asked ?\n"))
    rc = main(["chat", str(clip), "--model", llava, "--frames", "4", "--max-new-tokens", "2", "--history", "--json"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    recs = [json.loads(line) for line in out]
    assert [r["question"] for r in recs] == ["first question ?", "second question ?"]  # /quit ends the session
    assert recs[1]["cache"] == {"frames": "hit", "features": "hit"}
    assert prompts[0] == ("first question ?", [])
    assert prompts[1] == ("second question ?", [("first question ?", recs[0]["answer"])])

    prompts.clear()  # without --history every question stands alone
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question ?\nsecond question ?\n"))
    assert main(["chat", str(clip), "--model", llava, "--frames", "4", "--max-new-tokens", "1", "-q"]) == 0
    assert [h for _, h in prompts] == [[], []]


def test_chat_errors_are_one_line(monkeypatch, capsys, llava, clip, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("q ?\n"))
    for argv, msg in [
        (["chat", str(tmp_path / "missing.mp4"), "--model", llava], "no such file"),
        (["chat", str(clip), "--model", str(tmp_path / "nomodel")], "--model"),
        (["chat", str(clip), "--model", llava, "--start", "5", "--end", "1"], "end must be greater than start"),
        (["chat", str(clip), "--model", llava, "--retention", "0"], "--retention"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vista chat: error:") and msg in err[0], err
    monkeypatch.setattr(sys, "stdin", io.StringIO("/map x.png\n"))
    assert main(["chat", str(clip), "--model", llava, "--frames", "2", "-q"]) == 0
    err = capsys.readouterr().err
    assert "vista chat: error: /map: no answer yet" in err


def test_ask_reuses_features_across_runs_with_cache_dir(capsys, llava, scout, clip, tmp_path):
    base = ["ask", str(clip), "what color is the ball ?", "--model", llava, "--scout", scout, "--frames", "4",
            "--max-new-tokens", "2", "--json", "--start", "0.1", "--end", "0.9"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["cache"] == {}  # one question, no --cache-dir: nothing kept
    recs = []
    for _ in range(2):
        assert main(base + ["--cache-dir", str(tmp_path / "c")]) == 0
        recs.append(json.loads(capsys.readouterr().out))
    assert recs[0]["cache"] == {"frames": "miss", "features": "miss", "scout": "miss"}
    assert recs[1]["cache"] == {"frames": "disk", "features": "disk", "scout": "disk"}  # a later run: no encoding
    assert recs[1]["budgets"] == recs[0]["budgets"] == plain["budgets"] and recs[1]["answer"] == plain["answer"]
    assert recs[1]["clip"] == plain["clip"] == [0.1, 0.9]
