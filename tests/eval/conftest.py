"""Fixtures for tests/eval: small benchmark folders in the published annotation layouts, written by the tests.

Videos are empty placeholder files unless a test needs real frames (the readers only check that
a video exists); ``missing`` names videos to leave out so missing-video handling can be checked.
"""
import json
from pathlib import Path

import pytest


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _write_videomme(root: Path, fmt: str = "parquet", missing=()) -> Path:
    """Video-MME: videomme/test-00000-of-00001.parquet + data/<videoID>.mp4."""
    rows = []
    spec = [("001", "short", "Knowledge", "Counting Problem", "B"),
            ("001", "short", "Knowledge", "OCR Problems", "A"),
            ("301", "medium", "Sports Competition", "Action Recognition", "D"),
            ("601", "long", "Film & Television", "Temporal Reasoning", "C")]
    for i, (vid, dur, domain, task, ans) in enumerate(spec):
        video_id = f"vid{vid}"
        rows.append({
            "video_id": vid, "duration": dur, "domain": domain, "sub_category": "Other",
            "url": f"https://www.youtube.com/watch?v={video_id}", "videoID": video_id,
            "question_id": f"{vid}-{i + 1}", "task_type": task,
            "question": f"Question {i} about video {vid}?",
            "options": [f"A. first {i}", f"B. second {i}", f"C. third {i}", f"D. fourth {i}"],
            "answer": ans,
        })
    for vid in sorted({r["videoID"] for r in rows}):
        if vid not in missing:
            _touch(root / "data" / f"{vid}.mp4")
    (root / "videomme").mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    else:
        (root / "videomme.json").write_text(json.dumps(rows))
    return root


def _write_mlvu(root: Path, missing=()) -> Path:
    """MLVU dev: json/<k>_<task>.json + video/<k>_<task>/<video>."""
    tasks = {
        "1_plotQA": [{"video": "movie101_66.mp4", "duration": 246.0, "question": "What color is the car?",
                      "candidates": ["Red", "Blue", "Green", "Black"], "answer": "Blue",
                      "question_type": "plotQA"}],
        "4_count": [{"video": "count1.mp4", "duration": 500.5, "question": "How many jumps?",
                     "candidates": ["1", "2", "3", "4"], "answer": "3", "question_type": "count"},
                    {"video": "count2.mp4", "duration": 520.0, "question": "How many cups?",
                     "candidates": ["5", "6", "7", "8"], "answer": "5", "question_type": "count"}],
        # a generation task has no candidates: not a multiple-choice question
        "9_summary": [{"video": "sum1.mp4", "duration": 900.0, "question": "Summarize the video.",
                       "answer": "A long story.", "question_type": "summary"}],
    }
    for stem, recs in tasks.items():
        (root / "json").mkdir(parents=True, exist_ok=True)
        (root / "json" / f"{stem}.json").write_text(json.dumps(recs))
        for r in recs:
            if r["video"] not in missing:
                _touch(root / "video" / stem / r["video"])
    return root


def _write_longvideobench(root: Path, missing=()) -> Path:
    """LongVideoBench: lvb_val.json + videos/<video_path>."""
    recs = []
    for i, (group, cat, correct, n_opt) in enumerate([(15, "S2E", 0, 4), (600, "TOS", 4, 5), (3600, "E2O", 2, 5)]):
        vid = f"lvbvid{i}"
        recs.append({
            "video_id": vid, "question": f"In the video, what happens {i}?",
            "question_wo_referring_query": "What happens?",
            "candidates": [f"choice {k} of {i}" for k in range(n_opt)], "correct_choice": correct,
            "position": [10, 20], "topic_category": "NP-News-Programs", "question_category": cat,
            "level": "L2-Relation", "id": f"{vid}_0", "video_path": f"{vid}.mp4",
            "subtitle_path": f"{vid}_en.json", "duration_group": group,
            "starting_timestamp_for_subtitles": 0, "duration": float(group) * 0.8, "view_count": 12,
        })
        if recs[-1]["video_path"] not in missing:
            _touch(root / "videos" / recs[-1]["video_path"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "lvb_val.json").write_text(json.dumps(recs))
    return root


def _write_mvbench(root: Path, missing=()) -> Path:
    """MVBench: json/<task>.json + video/<official folder>/<video> (episodic reasoning: frame folder)."""
    (root / "json").mkdir(parents=True, exist_ok=True)
    act = [{"video": "ZS9XR.mp4", "question": "What happened after the person took the food?",
            "candidates": ["Ate the medicine.", "Tidied up the blanket.", "Put down the cup/glass/bottle.",
                           "Took the box."], "answer": "Ate the medicine.", "start": 11.1, "end": 19.6}]
    count = [{"video": "video_10010.mp4", "question": "How many metal objects are entering the scene?",
              "candidates": ["0", "1", "2"], "answer": "2"}]
    epi = [{"video": "castle_s07e04_seg02_clip_14", "question": "What did Castle do?",
            "candidates": ["Left.", "Sat down.", "Laughed.", "Ran.", "Slept."], "answer": "Laughed.",
            "start": 1.0, "end": 9.0}]
    (root / "json" / "action_sequence.json").write_text(json.dumps(act))
    (root / "json" / "moving_count.json").write_text(json.dumps(count))
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps(epi))
    if "ZS9XR.mp4" not in missing:
        _touch(root / "video" / "star" / "Charades_v1_480" / "ZS9XR.mp4")
    if "video_10010.mp4" not in missing:
        _touch(root / "video" / "clevrer" / "video_validation" / "video_10010.mp4")
    if "castle_s07e04_seg02_clip_14" not in missing:
        _touch(root / "video" / "tvqa" / "frames_fps3_hq" / "castle_s07e04_seg02_clip_14" / "00001.jpg")
    return root


def _write_jsonl(root: Path, n: int = 6, videos=None, missing=(), name: str = "set.jsonl") -> Path:
    """Generic JSONL: {id, video, question, options, answer, category, duration} per line."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        video = videos[i] if videos else f"videos/v{i}.mp4"
        if videos is None and video not in missing:
            _touch(root / video)
        lines.append(json.dumps({
            "id": f"q{i}", "video": video, "question": f"Which shape is shown in clip {i}?",
            "options": ["circle", "square", "triangle", "star"], "answer": "ABCD"[i % 4],
            "category": "shape" if i % 2 == 0 else "color", "duration": "short" if i < n // 2 else "long",
        }))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


# Each fixture hands the test its writer: ``write_jsonl(root, n=6, ...)`` etc.
@pytest.fixture
def write_videomme():
    return _write_videomme


@pytest.fixture
def write_mlvu():
    return _write_mlvu


@pytest.fixture
def write_longvideobench():
    return _write_longvideobench


@pytest.fixture
def write_mvbench():
    return _write_mvbench


@pytest.fixture
def write_jsonl():
    return _write_jsonl
