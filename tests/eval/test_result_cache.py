"""The eval cache survives damage and is never shared: unreadable lines are skipped and named
(file:line), a torn last line is cut off the file on open, and an exclusive lock keeps a second
``vista eval`` off a cache in use (exit 2); bad arguments exit 2 with one ``vista eval: error:`` line."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from vista.cli import main
from vista.eval.readers import load_benchmark
from vista.eval.runner import CacheLockedError, ResultCache, run_sweep

ROOT = Path(__file__).resolve().parents[2]


def _answer_all(retention):
    return lambda video, prompt: ("A", {"tokens_before": 10, "tokens_after": 5})


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, retention):
        def fn(video, prompt):
            self.calls += 1
            return "A", {}

        return fn


@pytest.fixture
def bench(write_jsonl, tmp_path):
    return load_benchmark("jsonl", write_jsonl(tmp_path / "set", n=4))


def _filled(tmp_path, bench):
    cache = tmp_path / "c.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_sweep([bench], [1.0], _answer_all, cache, progress=False)
    return cache


def _open(cache):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ResultCache(cache, {"prompt_style": "llava"})


def test_torn_last_line_is_cut_off_the_file(tmp_path, bench):
    cache = _filled(tmp_path, bench)
    whole = cache.read_bytes()
    lines = whole.split(b"\n")[:-1]  # header + 4 records
    cache.write_bytes(whole + lines[-1][: len(lines[-1]) // 2])  # a kill mid-append: no newline
    with _open(cache) as c:
        assert c.problems == [f"{cache}:6: incomplete last line (a write cut short); removed from the file, "
                              f"that question is recomputed"]
        assert len(c.records) == 4
    assert cache.read_bytes() == whole  # repaired: the half line is gone for good
    with _open(cache) as c:
        assert c.problems == [] and len(c.records) == 4


@pytest.mark.parametrize("damage, what", [
    (lambda line: line[:20] + b"\xff\xfe" + line[20:], "not UTF-8 text (byte 0xff at column 21)"),
    (lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != "correct"}).encode(),
     "record has no 'correct' field"),
    (lambda line: json.dumps(dict(json.loads(line), stats=None)).encode(), "record field 'stats' is a NoneType"),
    (lambda line: b"[1, 2]", "a JSON list, expected a record object"),
    (lambda line: line[:-5], "not JSON"),
])
def test_unreadable_line_is_skipped_naming_file_and_line(tmp_path, bench, damage, what):
    cache = _filled(tmp_path, bench)
    lines = cache.read_bytes().split(b"\n")[:-1]
    lines[2] = damage(lines[2])  # line 3 of the file: the second record
    cache.write_bytes(b"\n".join(lines) + b"\n")
    model = Counting()
    with pytest.warns(UserWarning, match=f"cache: {cache}:3: "):
        res = run_sweep([bench], [1.0], model, cache, progress=False)
    assert res.cache_problems[0].startswith(f"{cache}:3: {what}")
    assert model.calls == 1  # only the damaged record is answered again
    assert res.summary()["results"]["1"]["benchmarks"]["jsonl"]["n"] == 4


def test_cache_lock_is_exclusive_and_released(tmp_path):
    cache = tmp_path / "c.jsonl"
    first = ResultCache(cache)
    with pytest.raises(CacheLockedError, match=f"cache: {cache} is in use by another vista eval"):
        ResultCache(cache)
    first.close()
    with ResultCache(cache):
        pass


def test_cache_lock_is_released_when_the_holder_is_killed(tmp_path):
    cache = tmp_path / "c.jsonl"
    code = textwrap.dedent(f"""
        import sys, time
        from vista.eval.runner import ResultCache
        c = ResultCache({str(cache)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(CacheLockedError):
            ResultCache(cache)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    with ResultCache(cache):  # the kernel dropped the lock with the process
        pass


# ------------------------------------------------------------------ through the command line

@pytest.fixture
def fake_pipeline(monkeypatch):
    """``vista eval`` with the model call replaced (the factory ignores the model directory)."""
    import vista.eval.runner as runner

    calls = []

    def factory(*a, **k):
        def make(retention):
            def fn(video, prompt, clip=None):
                calls.append(video)
                return "A", {}

            return fn

        return make

    monkeypatch.setattr(runner, "pipeline_answer_factory", factory)
    return calls


@pytest.fixture
def eval_argv(write_jsonl):
    """``eval_argv(tmp_path, *extra)``: a ``vista eval`` argv on a 3-question set under tmp_path."""

    def make(tmp_path, *extra):
        data = tmp_path / "set" / "set.jsonl"
        if not data.exists():
            write_jsonl(tmp_path / "set", n=3)
        model = tmp_path / "model"
        model.mkdir(exist_ok=True)
        return ["eval", "--model", str(model), "--bench", "jsonl", "--data", str(data), "--retention", "1.0",
                "--out", str(tmp_path / "out"), "--no-progress", *extra]

    return make


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("vista eval: error: "), err
    for n in needles:
        assert n in err[-1], err[-1]
    return err[-1]


def test_second_eval_on_the_same_out_exits_2(eval_argv, tmp_path, capsys, fake_pipeline, monkeypatch):
    import threading

    import vista.eval.runner as runner

    started, release = threading.Event(), threading.Event()
    factory = runner.pipeline_answer_factory

    def gated(*a, **k):  # the first run stops inside its first answer until the second has tried
        make = factory(*a, **k)

        def make_gated(r):
            fn = make(r)

            def answer(video, prompt, clip=None):
                started.set()
                assert release.wait(30)
                return fn(video, prompt, clip)

            return answer

        return make_gated

    monkeypatch.setattr(runner, "pipeline_answer_factory", gated)
    rc = {}
    first = threading.Thread(target=lambda: rc.setdefault("first", main(eval_argv(tmp_path))))
    first.start()
    try:
        assert started.wait(30)
        monkeypatch.setattr(runner, "pipeline_answer_factory", factory)
        assert main(eval_argv(tmp_path)) == 2  # same --out while the first run is answering
        _one_error_line(capsys, "is in use by another vista eval", str(tmp_path / "out" / "cache.jsonl"))
    finally:
        release.set()
        first.join(30)
    assert rc["first"] == 0 and len(fake_pipeline) == 3  # each question answered once
    lines = (tmp_path / "out" / "cache.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 3
    assert main(eval_argv(tmp_path)) == 0 and len(fake_pipeline) == 3  # the lock was released: resumes


def test_eval_notes_skipped_cache_lines_on_stderr(eval_argv, tmp_path, capsys, fake_pipeline):
    assert main(eval_argv(tmp_path)) == 0
    cache = tmp_path / "out" / "cache.jsonl"
    lines = cache.read_bytes().split(b"\n")[:-1]
    lines[1] = b"\xff" + lines[1]
    cache.write_bytes(b"\n".join(lines) + b"\n")
    capsys.readouterr()
    assert main(eval_argv(tmp_path)) == 0
    assert f"vista eval: note: cache: {cache}:2: not UTF-8 text" in capsys.readouterr().err
    assert len(fake_pipeline) == 4  # 3, then the one unreadable record again


@pytest.mark.parametrize("extra, needles", [
    (["--limit", "0"], ["--limit must be >= 1, got 0"]),
    (["--bench", "videome"], ["--bench videome: unknown benchmark", "did you mean 'videomme'?"]),
    (["--data", "/nonexistent/set.jsonl"], ["jsonl:", "/nonexistent/set.jsonl"]),
    (["--retention", "0"], ["retention must be in"]),
    (["--annotation", "x", "y"], ["--annotation takes one value per --bench"]),
])
def test_bad_eval_input_exits_2_with_one_line(eval_argv, tmp_path, capsys, fake_pipeline, extra, needles):
    argv = eval_argv(tmp_path)
    if extra[0] in ("--bench", "--data"):  # replace the option's value instead of appending it
        i = argv.index(extra[0])
        argv[i + 1] = extra[1]
    else:
        argv += extra
    assert main(argv) == 2
    _one_error_line(capsys, *needles)
    assert fake_pipeline == []
