"""Retention sweep, cache/resume and tables (vista.eval.runner / cli) with a fake model call."""
import argparse
import json
import warnings

import pytest

from vista.cli import UsageError
from vista.cli.eval import add_eval_parser, cmd_eval
from vista.eval.readers import load_benchmark
from vista.eval.runner import (
    ResultCache,
    approx_prefill_flops,
    check_retentions,
    flops_ratio_from_tokens,
    normalize_stats,
    render_markdown,
    run_sweep,
    write_outputs,
)


class FakeModel:
    """answer_fn factory: right on every question at retention 1.0, right on ``right_at_low`` of the
    videos below it; replies are wrapped in messy text; records every call."""

    def __init__(self, bench, right_at_low=(), fail_on=(), interrupt_after=None):
        self.truth = {(s.video, s.question): s.answer for s in bench.samples}
        self.right_at_low = set(right_at_low)
        self.fail_on = set(fail_on)
        self.interrupt_after = interrupt_after
        self.calls = []
        self.factory_calls = []

    def __call__(self, retention):
        self.factory_calls.append(retention)

        def answer_fn(video, prompt):
            if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
                raise KeyboardInterrupt
            self.calls.append((video, retention))
            assert "Answer with the option's letter from the given choices directly." in prompt
            if video in self.fail_on:
                raise RuntimeError("cannot decode")
            (right,) = [a for (v, q), a in self.truth.items() if v == video and q in prompt]
            ok = retention == 1.0 or any(video.endswith(v) for v in self.right_at_low)
            letter = right if ok else "ABCD"[("ABCD".index(right) + 1) % 4]
            stats = {"tokens_before": 100, "tokens_after": round(100 * retention), "text_tokens": 0,
                     "flops_ratio": retention * 0.9, "timings": {"ttft": 0.5 * retention},
                     "peak_mem_bytes": 2e9 * retention, "latency_s": 2.0 * retention}
            return f"The answer is ({letter}).", stats

        return answer_fn


@pytest.fixture
def bench6(write_jsonl, tmp_path):
    return load_benchmark("jsonl", write_jsonl(tmp_path / "set", n=6))


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """Default output folders (eval_results/) land in a temporary directory, never the repo."""
    monkeypatch.chdir(tmp_path)



def test_sweep_accuracy_relative_flops_ttft_mem(tmp_path, bench6):
    model = FakeModel(bench6, right_at_low={"v0.mp4", "v1.mp4", "v4.mp4"})
    res = run_sweep([bench6], [1.0, 0.5], model, tmp_path / "c.jsonl", progress=False)
    assert res.computed == 12 and model.factory_calls == [1.0, 0.5]
    s = res.summary()
    full, half = s["results"]["1"], s["results"]["0.5"]
    assert full["benchmarks"]["jsonl"]["accuracy"] == 100.0
    assert half["benchmarks"]["jsonl"]["accuracy"] == 50.0
    assert half["relative"]["jsonl"] == pytest.approx(50.0)
    assert half["relative"]["average"] == pytest.approx(50.0)
    assert full["relative"]["average"] == pytest.approx(100.0)
    assert half["flops_ratio"] == pytest.approx(0.45)
    assert half["ttft_s"] == pytest.approx(0.25)
    assert half["peak_mem_bytes"] == pytest.approx(1e9)
    assert half["latency_s"] == pytest.approx(1.0)
    # categories: shape = q0,q2,q4 (right at 0.5: q0,q4); color = q1,q3,q5 (right: q1)
    cats = half["benchmarks"]["jsonl"]["by_category"]
    assert cats["shape"]["correct"] == 2 and cats["color"]["correct"] == 1
    durs = half["benchmarks"]["jsonl"]["by_duration"]
    assert list(durs) == ["short", "long"]
    assert durs["short"]["correct"] == 2 and durs["long"]["correct"] == 1


def test_markdown_and_json_outputs(tmp_path, bench6):
    model = FakeModel(bench6, right_at_low={"v0.mp4", "v1.mp4", "v4.mp4"})
    res = run_sweep([bench6], [1.0, 0.5], model, tmp_path / "c.jsonl", progress=False)
    jp, mp = write_outputs(res.summary(), tmp_path / "out")
    data = json.loads(jp.read_text())
    assert data["results"]["0.5"]["benchmarks"]["jsonl"]["accuracy"] == 50.0
    md = mp.read_text()
    assert ("| Retention | Prefill FLOPs ratio | JSONL | Average | Rel. % | TTFT (s) | Latency (s) | Peak mem (GB) |"
            in md)
    assert "| 100% | 90.0% | 100.00 | 100.00 | 100.0 | 0.500 | 2.000 | 2.00 |" in md
    assert "| 50% | 45.0% | 50.00 | 50.00 | 50.0 | 0.250 | 1.000 | 1.00 |" in md
    assert "| category: shape | 100.00 (3/3) | 66.67 (2/3) |" in md


def test_videomme_table_has_duration_columns(write_videomme, tmp_path):
    pytest.importorskip("pyarrow")
    b = load_benchmark("videomme", write_videomme(tmp_path / "vm"))
    model = FakeModel(b, right_at_low={"vid001.mp4"})
    md = render_markdown(run_sweep([b], [1.0, 0.25], model, tmp_path / "c.jsonl", progress=False).summary())
    assert "| Video-MME short | Video-MME medium | Video-MME long | Video-MME |" in md
    assert "| 100% | 90.0% | 100.00 | 100.00 | 100.00 | 100.00 |" in md
    assert "| 25% | 22.5% | 100.00 | 0.00 | 0.00 | 50.00 |" in md


def test_resume_after_interruption_does_not_recompute(tmp_path, bench6):
    cache = tmp_path / "c.jsonl"
    first = FakeModel(bench6, interrupt_after=8)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([bench6], [1.0, 0.5], first, cache, progress=False)
    assert len(first.calls) == 8  # 6 at 1.0 and 2 at 0.5 were finished and cached
    second = FakeModel(bench6)
    res = run_sweep([bench6], [1.0, 0.5], second, cache, progress=False)
    assert res.computed == 4
    assert second.factory_calls == [0.5]  # nothing pending at 1.0: the model is not even built
    assert sorted(second.calls) == sorted(set(second.calls))
    assert {c[1] for c in second.calls} == {0.5}
    assert not {c for c in second.calls} & {c for c in first.calls}
    clean = run_sweep([bench6], [1.0, 0.5], FakeModel(bench6), tmp_path / "clean.jsonl", progress=False)
    strip = lambda s: {k: v["benchmarks"] for k, v in s["results"].items()}  # noqa: E731
    assert strip(res.summary()) == strip(clean.summary())
    # a third run answers everything from the cache
    third = FakeModel(bench6)
    assert run_sweep([bench6], [1.0, 0.5], third, cache, progress=False).computed == 0
    assert third.factory_calls == [] and third.calls == []


def test_truncated_cache_line_is_recomputed(tmp_path, bench6):
    cache = tmp_path / "c.jsonl"
    run_sweep([bench6], [1.0], FakeModel(bench6), cache, progress=False)
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # cut mid-write
    again = FakeModel(bench6)
    with pytest.warns(UserWarning, match="incomplete last line"):
        res = run_sweep([bench6], [1.0], again, cache, progress=False)
    assert len(again.calls) == 1 and res.summary()["results"]["1"]["benchmarks"]["jsonl"]["n"] == 6


def test_cache_from_another_run_is_refused(tmp_path, bench6):
    cache = tmp_path / "c.jsonl"
    run_sweep([bench6], [1.0], FakeModel(bench6), cache, meta={"model": "a"}, progress=False)
    with pytest.raises(ValueError, match=r"cache: .*model: cached 'a' vs now 'b'"):
        run_sweep([bench6], [1.0], FakeModel(bench6), cache, meta={"model": "b"}, progress=False)
    with pytest.raises(ValueError, match="prompt_style"):
        run_sweep([bench6], [1.0], FakeModel(bench6), cache, meta={"model": "a"}, prompt_style="qwen",
                  progress=False)
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="not a vista eval cache"):
        ResultCache(junk)


def test_missing_videos_reported_never_counted(write_jsonl, tmp_path):
    b = load_benchmark("jsonl", write_jsonl(tmp_path / "set", n=6, missing={"videos/v2.mp4"}))
    model = FakeModel(b)
    with pytest.warns(UserWarning, match="1 question.* video not found"):
        res = run_sweep([b], [1.0], model, tmp_path / "c.jsonl", progress=False)
    assert all(not v.endswith("v2.mp4") for v, _ in model.calls)
    s = res.summary()
    assert s["results"]["1"]["benchmarks"]["jsonl"]["n"] == 5
    assert s["results"]["1"]["benchmarks"]["jsonl"]["accuracy"] == 100.0
    assert s["benchmarks"]["jsonl"]["missing_videos"] == [{"qid": "q2", "video": "videos/v2.mp4"}]
    md = render_markdown(s)
    assert "5 of 6 questions scored; 1 skipped (video not found)" in md and "`videos/v2.mp4`" in md


def test_failed_calls_are_reported_and_retried(tmp_path, bench6):
    bad = bench6.samples[3].video
    cache = tmp_path / "c.jsonl"
    with pytest.warns(UserWarning, match="cannot decode"):
        res = run_sweep([bench6], [1.0], FakeModel(bench6, fail_on={bad}), cache, progress=False)
    s = res.summary()
    assert len(s["errors"]) == 1 and s["errors"][0]["qid"] == "q3"
    assert s["results"]["1"]["benchmarks"]["jsonl"]["n"] == 5
    assert s["results"]["1"]["benchmarks"]["jsonl"]["pending"] == 1
    assert "Errors" in render_markdown(s)
    retry = FakeModel(bench6)
    run_sweep([bench6], [1.0], retry, cache, progress=False)
    assert [v for v, _ in retry.calls] == [bad]
    with pytest.raises(RuntimeError, match="cannot decode"):
        run_sweep([bench6], [1.0], FakeModel(bench6, fail_on={bad}), tmp_path / "d.jsonl", progress=False,
                  fail_fast=True)


def test_unparsed_reply_counts_wrong_and_is_reported(tmp_path, bench6):
    def factory(r):
        return lambda video, prompt: ("I cannot tell from the video.", {})

    s = run_sweep([bench6], [1.0], factory, tmp_path / "c.jsonl", progress=False).summary()
    e = s["results"]["1"]["benchmarks"]["jsonl"]
    assert e["accuracy"] == 0.0 and e["unparsed"] == 6
    assert "no recognisable option letter" in render_markdown(s)


def test_relative_needs_full_retention(tmp_path, bench6):
    s = run_sweep([bench6], [0.25], FakeModel(bench6), tmp_path / "c.jsonl", progress=False).summary()
    assert s["results"]["0.25"]["relative"] is None
    assert "| 25% | 22.5% |" in render_markdown(s)


def test_progress_bar_shows_running_accuracy(tmp_path, bench6, capsys):
    run_sweep([bench6], [1.0], FakeModel(bench6), tmp_path / "c.jsonl", progress=True)
    err = capsys.readouterr().err
    assert "retention 1" in err and "acc 100.0%" in err


def test_bad_answer_fn_return_is_reported(tmp_path, bench6):
    with pytest.warns(UserWarning, match="answer_fn must return"):
        res = run_sweep([bench6], [1.0], lambda r: (lambda v, p: (None, {})), tmp_path / "c.jsonl",
                        progress=False)
    assert len(res.errors) == 6


@pytest.mark.parametrize("bad", [[], [0.0], [1.5], [float("nan")], [0.5, 0.5], ["x"]])
def test_retention_validation(bad):
    with pytest.raises(ValueError, match="retention"):
        check_retentions(bad)


def test_flops_fallback_from_token_counts():
    assert flops_ratio_from_tokens(1000, 1000, 50) == pytest.approx(1.0)
    r25 = flops_ratio_from_tokens(12544, 3136, 60)
    r10 = flops_ratio_from_tokens(12544, 1254, 60)
    assert 0 < r10 < r25 < 0.25 + 0.01  # the quadratic attention term makes it slightly below linear
    assert approx_prefill_flops(2, 8, 1, 16) == pytest.approx(2 * 2 * (2 * 64 + 2 * 64 + 3 * 128) + 4 * 4 * 8)
    st = normalize_stats({"tokens_before": 100, "tokens_after": 10, "timings": {"prefill": 0.2}})
    assert st["flops_ratio_source"] == "analytic" and 0 < st["flops_ratio"] < 0.2 and st["ttft_s"] == 0.2
    assert normalize_stats({"prefill_flops": 1.0, "prefill_flops_full": 4.0})["flops_ratio"] == 0.25
    with pytest.raises(TypeError, match="stats"):
        normalize_stats([1])


def _parse(argv):
    p = argparse.ArgumentParser(prog="vista")
    add_eval_parser(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def test_cli_end_to_end_with_fake_model(write_jsonl, tmp_path, capsys):
    data = write_jsonl(tmp_path / "set", n=6)
    b = load_benchmark("jsonl", data)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    args = _parse(["eval", "--model", str(model_dir), "--bench", "jsonl", "--data", str(data),
                   "--retention", "1.0", "0.25", "--limit", "4", "--out", str(tmp_path / "out"), "--no-progress"])
    assert args.func is cmd_eval
    prompts = []

    def factory(r):
        inner = FakeModel(b, right_at_low={"v0.mp4"})(r)

        def fn(video, prompt):
            prompts.append(prompt)
            return inner(video, prompt)

        return fn

    assert cmd_eval(args, answer_factory=factory) == 0
    out = capsys.readouterr().out
    assert "| 25% | 22.5% | 25.00 | 25.00 | 25.0 |" in out
    assert prompts[0].startswith("Select the best answer")  # qwen style picked from config.json
    assert (tmp_path / "out" / "results.json").exists() and (tmp_path / "out" / "cache.jsonl").exists()
    meta = json.loads((tmp_path / "out" / "cache.jsonl").read_text().splitlines()[0])["_meta"]
    assert meta["prompt_style"] == "qwen" and meta["max_new_tokens"] == 16


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--data", "a", "b"], "--data takes one folder per --bench"),
        (["--retention", "0"], "retention must be in"),
        (["--limit", "0"], "--limit"),
        (["--annotation", "x", "y"], "--annotation takes one value per --bench"),
    ],
)
def test_cli_bad_arguments(write_jsonl, tmp_path, extra, match):
    data = write_jsonl(tmp_path / "set", n=2)
    argv = ["eval", "--model", str(tmp_path), "--bench", "jsonl", "--data", str(data),
            "--out", str(tmp_path / "o"), "--no-progress"]
    args = _parse(argv + extra)
    with pytest.raises(UsageError, match=match):
        cmd_eval(args, answer_factory=lambda r: None)


def test_cli_missing_model_and_data(write_jsonl, tmp_path):
    data = write_jsonl(tmp_path / "set", n=2)
    args = _parse(["eval", "--model", str(tmp_path / "nomodel"), "--bench", "jsonl", "--data", str(data)])
    with pytest.raises(UsageError, match="--model .* does not exist"):
        cmd_eval(args)
    args = _parse(["eval", "--model", str(tmp_path), "--bench", "videomme", "--data", str(tmp_path / "none")])
    with pytest.raises(UsageError, match="videomme: data_dir"):
        cmd_eval(args, answer_factory=lambda r: None)


def test_cli_no_video_found(write_jsonl, tmp_path):
    data = write_jsonl(tmp_path / "set", n=2, missing={"videos/v0.mp4", "videos/v1.mp4"})
    args = _parse(["eval", "--model", str(tmp_path), "--bench", "jsonl", "--data", str(data), "--no-progress",
                   "--out", str(tmp_path / "out")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UsageError, match="no question has its video"):
            cmd_eval(args, answer_factory=lambda r: None)


def test_same_benchmark_twice_in_one_sweep_is_refused(write_jsonl, tmp_path):
    b1 = load_benchmark("jsonl", write_jsonl(tmp_path / "one", n=2))
    b2 = load_benchmark("jsonl", write_jsonl(tmp_path / "two", n=2))
    cache = tmp_path / "c.jsonl"
    with pytest.raises(ValueError, match="benchmarks: 'jsonl' given more than once"):
        run_sweep([b1, b2], [1.0], FakeModel(b1), cache, progress=False)
    assert not cache.exists()  # refused before anything is written
    args = _parse(["eval", "--model", str(tmp_path), "--bench", "jsonl", "jsonl", "--data",
                   str(tmp_path / "one" / "set.jsonl"), str(tmp_path / "two" / "set.jsonl"),
                   "--out", str(tmp_path / "o"), "--no-progress"])
    with pytest.raises(UsageError, match="--bench jsonl given more than once"):
        cmd_eval(args, answer_factory=lambda r: None)


def test_cached_record_for_another_annotation_is_recomputed(tmp_path, bench6):
    cache = tmp_path / "c.jsonl"
    run_sweep([bench6], [1.0], FakeModel(bench6), cache, progress=False)
    # same benchmark name and qids, edited annotation: other questions and answers
    src = tmp_path / "set" / "set.jsonl"
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    for i, row in enumerate(rows):
        if i < 4:
            row["question"] = f"Which colour is shown in clip {i}?"
            row["answer"] = "ABCD"[(i + 1) % 4]
    edited = tmp_path / "set" / "edited.jsonl"
    edited.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    b2 = load_benchmark("jsonl", edited)
    assert [s.qid for s in b2.samples] == [s.qid for s in bench6.samples]
    model = FakeModel(b2)
    with pytest.warns(UserWarning, match="cache: 4 cached record.* different question"):
        res = run_sweep([b2], [1.0], model, cache, progress=False)
    assert res.computed == 4 and sorted(v for v, _ in model.calls) == sorted(s.video for s in b2.samples[:4])
    assert res.summary()["results"]["1"]["benchmarks"]["jsonl"]["accuracy"] == 100.0
    # the recomputed records replace the old ones: a further run reuses everything, silently
    again = FakeModel(b2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_sweep([b2], [1.0], again, cache, progress=False).computed == 0
    assert again.calls == []
    # a changed video path also invalidates the record
    moved = load_benchmark("jsonl", edited)
    moved.samples[5].video = moved.samples[5].video.replace("v5.mp4", "v0.mp4")
    with pytest.warns(UserWarning, match="cache: 1 cached record"):
        assert run_sweep([moved], [1.0], lambda r: (lambda v, p: ("A", {})), cache, progress=False).computed == 1


def test_cache_without_fingerprints_is_stale_and_said_once(tmp_path, bench6):
    cache = tmp_path / "c.jsonl"
    run_sweep([bench6], [1.0, 0.5], FakeModel(bench6), cache, progress=False)
    lines = cache.read_text().splitlines()
    recs = [json.loads(line) for line in lines[1:]]
    assert all(len(r["fingerprint"]) == 16 for r in recs)
    for r in recs:
        del r["fingerprint"]  # a cache written before fingerprints existed
    cache.write_text("\n".join([lines[0]] + [json.dumps(r) for r in recs]) + "\n")
    model = FakeModel(bench6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_sweep([bench6], [1.0, 0.5], model, cache, progress=False)
    stale = [w for w in caught if "no question fingerprint" in str(w.message)]
    assert len(stale) == 1 and "12 cached record(s)" in str(stale[0].message)
    assert res.computed == 12 and len(model.calls) == 12
    assert run_sweep([bench6], [1.0, 0.5], FakeModel(bench6), cache, progress=False).computed == 0


def test_relative_accuracy_uses_questions_answered_at_both(tmp_path, bench6):
    bad = bench6.samples[1].video  # v1 fails at retention 1.0 only
    model = FakeModel(bench6, right_at_low={"v0.mp4", "v1.mp4", "v4.mp4"})

    def factory(r):
        fn = model(r)

        def answer_fn(video, prompt):
            if r == 1.0 and video == bad:
                raise RuntimeError("out of memory")
            return fn(video, prompt)

        return answer_fn

    with pytest.warns(UserWarning, match="out of memory"):
        s = run_sweep([bench6], [1.0, 0.5], factory, tmp_path / "c.jsonl", progress=False).summary()
    full, half = s["results"]["1"], s["results"]["0.5"]
    assert full["benchmarks"]["jsonl"]["n"] == 5 and full["errors"] == 1
    assert half["benchmarks"]["jsonl"]["n"] == 6 and half["benchmarks"]["jsonl"]["accuracy"] == 50.0
    # on the 5 questions answered at both: 5/5 at 1.0, 2/5 (v0, v4) at 0.5 -> 40%, not 50/100
    assert half["relative"]["jsonl"] == pytest.approx(40.0)
    assert half["relative"]["average"] == pytest.approx(40.0)
    assert half["relative_n"] == {"jsonl": 5, "average": 5}
    assert full["relative"]["jsonl"] == pytest.approx(100.0) and full["relative_n"]["jsonl"] == 5
    assert "on the questions answered at both retentions" in render_markdown(s)


def test_relative_accuracy_never_exceeds_pairing(write_jsonl, tmp_path):
    # the reviewer's case: the only question the full run misses is one the pruned run gets right
    b = load_benchmark("jsonl", write_jsonl(tmp_path / "set", n=4))

    def factory(r):
        def answer_fn(video, prompt):
            if r == 1.0 and video.endswith("v1.mp4"):
                raise RuntimeError("CUDA OOM")
            return {"v0.mp4": "A", "v1.mp4": "B"}.get(video.rsplit("/", 1)[-1], "D"), {}

        return answer_fn

    with pytest.warns(UserWarning, match="CUDA OOM"):
        s = run_sweep([b], [1.0, 0.5], factory, tmp_path / "c.jsonl", progress=False).summary()
    # answers A B C D: v0 right at both, v1 right at 0.5 only (errored at 1.0), v2 wrong, v3 right
    assert s["results"]["1"]["benchmarks"]["jsonl"]["accuracy"] == pytest.approx(200 / 3)
    assert s["results"]["0.5"]["benchmarks"]["jsonl"]["accuracy"] == 75.0
    # before: 75 / 66.7 = 112.5% "relative accuracy" from comparing different question sets
    assert s["results"]["0.5"]["relative"]["jsonl"] == pytest.approx(100.0)
    assert s["results"]["0.5"]["relative_n"]["jsonl"] == 3
