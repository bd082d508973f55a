"""Benchmark readers (vista.eval.readers) on small fixtures in the published layouts."""
import json

import pytest

from vista.eval.readers import load_benchmark, read_records


@pytest.mark.parametrize("fmt", ["parquet", "json"])
def test_videomme(write_videomme, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    root = write_videomme(tmp_path / "Video-MME", fmt=fmt)
    b = load_benchmark("videomme", root)
    assert b.title == "Video-MME"
    assert [s.qid for s in b.samples] == ["001-1", "001-2", "301-3", "601-4"]
    s = b.samples[2]
    assert s.options == ["first 2", "second 2", "third 2", "fourth 2"]  # "A. " labels stripped
    assert s.answer == "D"
    assert s.duration == "medium"
    assert s.category == "Action Recognition"
    assert s.video == str(root / "data" / "vid301.mp4")
    assert s.extra["domain"] == "Sports Competition"
    assert not b.missing and not b.invalid


def test_videomme_missing_video_is_reported_not_scored(write_videomme, tmp_path):
    pytest.importorskip("pyarrow")
    root = write_videomme(tmp_path / "vm", missing={"vid001"})
    b = load_benchmark("videomme", root)
    assert [s.qid for s in b.samples] == ["301-3", "601-4"]
    assert [s.qid for s in b.missing] == ["001-1", "001-2"]
    assert b.missing[0].extra["video_ref"] == "vid001.mp4"


def test_videomme_finds_other_extensions(write_videomme, tmp_path):
    pytest.importorskip("pyarrow")
    root = write_videomme(tmp_path / "vm", missing={"vid601"})
    (root / "data" / "vid601.mkv").write_bytes(b"")
    b = load_benchmark("videomme", root)
    assert b.samples[-1].video.endswith("vid601.mkv")
    assert not b.missing


def test_mlvu(write_mlvu, tmp_path):
    root = write_mlvu(tmp_path / "MLVU")
    b = load_benchmark("mlvu", root)
    assert len(b.samples) == 3
    plot = b.samples[0]
    assert plot.category == "Plot QA"
    assert plot.answer == "B"  # answer text "Blue" -> its letter
    assert plot.video == str(root / "video" / "1_plotQA" / "movie101_66.mp4")
    assert plot.extra["duration_s"] == 246.0
    assert {s.category for s in b.samples[1:]} == {"Action Count"}
    assert [s.answer for s in b.samples[1:]] == ["C", "A"]
    # the generation task (no candidates) is listed as invalid, not scored
    assert len(b.invalid) == 1 and "multiple-choice" in b.invalid[0]["reason"]


def test_mlvu_nested_root_and_missing(write_mlvu, tmp_path):
    write_mlvu(tmp_path / "hf" / "MLVU", missing={"count2.mp4"})
    b = load_benchmark("mlvu", tmp_path / "hf")
    assert len(b.samples) == 2
    assert [s.extra["video_ref"] for s in b.missing] == ["count2.mp4"]


def test_longvideobench(write_longvideobench, tmp_path):
    root = write_longvideobench(tmp_path / "LongVideoBench")
    b = load_benchmark("longvideobench", root)
    assert [s.qid for s in b.samples] == ["lvbvid0_0", "lvbvid1_0", "lvbvid2_0"]
    assert [s.answer for s in b.samples] == ["A", "E", "C"]  # correct_choice is a 0-based index
    assert [s.duration for s in b.samples] == ["8-15s", "180-600s", "900-3600s"]
    assert [s.category for s in b.samples] == ["S2E", "TOS", "E2O"]
    assert len(b.samples[1].options) == 5
    assert b.samples[0].video == str(root / "videos" / "lvbvid0.mp4")


def test_longvideobench_hf_parquet_layout(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = tmp_path / "lvb"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "x.mp4").write_bytes(b"")
    rows = [{"id": "x_0", "video_id": "x", "video_path": "x.mp4", "question": "Q?", "option0": "p",
             "option1": "q", "option2": "r", "option3": "N/A", "option4": "N/A", "correct_choice": 2,
             "duration_group": 60, "question_category": "T3O"}]
    pq.write_table(pa.Table.from_pylist(rows), root / "validation-00000-of-00001.parquet")
    b = load_benchmark("lvb", root)
    assert b.samples[0].options == ["p", "q", "r"]
    assert b.samples[0].answer == "C"
    assert b.samples[0].duration == "15-60s"


def test_mvbench(write_mvbench, tmp_path):
    root = write_mvbench(tmp_path / "MVBench", missing={"video_10010.mp4"})
    b = load_benchmark("mvbench", root)
    by_cat = {s.category: s for s in b.samples}
    assert set(by_cat) == {"Action Sequence", "Episodic Reasoning"}
    act = by_cat["Action Sequence"]
    assert act.answer == "A"
    assert act.extra["start"] == 11.1 and act.extra["end"] == 19.6
    assert act.video == str(root / "video" / "star" / "Charades_v1_480" / "ZS9XR.mp4")
    epi = by_cat["Episodic Reasoning"]
    assert epi.answer == "C" and len(epi.options) == 5
    assert epi.video.endswith("castle_s07e04_seg02_clip_14")  # a folder of frames
    assert [s.category for s in b.missing] == ["Moving Count"]


def test_jsonl_and_limit(write_jsonl, tmp_path):
    path = write_jsonl(tmp_path / "set", n=6, missing={"videos/v1.mp4"})
    b = load_benchmark("jsonl", path)
    assert len(b.samples) == 5 and [s.qid for s in b.missing] == ["q1"]
    assert b.samples[0].answer == "A" and b.samples[0].category == "shape"
    lim = load_benchmark("jsonl", path.parent, limit=3)  # the folder works too
    assert [s.qid for s in lim.samples] == ["q0", "q2"] and [s.qid for s in lim.missing] == ["q1"]


def test_jsonl_answer_forms(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"")
    rows = [
        {"video": "v.mp4", "question": "Q1?", "options": ["x", "y"], "answer": 1},
        {"video": "v.mp4", "question": "Q2?", "options": ["x", "y"], "answer": "y"},
        {"video": "v.mp4", "question": "Q3?", "options": ["A. x", "B. y"], "answer": "(B)"},
        {"video": "v.mp4", "question": "Q4?", "options": ["x", "y"], "answer": "z"},
        {"video": "v.mp4", "question": "Q5?", "options": ["x", "y"], "answer": 7},
    ]
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    b = load_benchmark("jsonl", p)
    assert [s.answer for s in b.samples] == ["B", "B", "B"]
    assert [i["qid"] for i in b.invalid] == ["3", "4"]
    assert all("not one of the options" in i["reason"] for i in b.invalid)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda d: load_benchmark("nope", d), ValueError, "bench must be one of"),
        (lambda d: load_benchmark("videomme", d / "absent"), FileNotFoundError, "data_dir"),
        (lambda d: load_benchmark("videomme", d), FileNotFoundError, "no annotation file"),
        (lambda d: load_benchmark("mlvu", d), FileNotFoundError, "json/"),
        (lambda d: load_benchmark("mvbench", d), FileNotFoundError, "json/"),
        (lambda d: load_benchmark("jsonl", d), FileNotFoundError, "exactly one .jsonl"),
        (lambda d: load_benchmark("jsonl", d, video_dir=d / "nope"), FileNotFoundError, "video_dir"),
        (lambda d: load_benchmark("jsonl", d, limit=0), ValueError, "limit"),
    ],
)
def test_bad_arguments_name_the_argument(write_jsonl, tmp_path, call, exc, match):
    if "limit" in match:
        write_jsonl(tmp_path, n=2)
    with pytest.raises(exc, match=match):
        call(tmp_path)


def test_bad_annotation_names_the_file_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"video": "v.mp4", "question": "Q?"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 1: missing field\(s\) options, answer"):
        load_benchmark("jsonl", p)
    p.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: invalid JSON"):
        read_records(p)
    q = tmp_path / "lvb_val.json"
    q.write_text('{"x": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_benchmark("longvideobench", tmp_path)
