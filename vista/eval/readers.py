"""Readers for the published annotation layouts of the paper's benchmarks, from local files.

Every reader returns a :class:`Benchmark`: the multiple-choice samples whose video exists, and
the samples whose video does not (``missing``), which the runner reports and never scores.
Annotations that are not usable multiple-choice questions (no options, an answer that is not one
of them) are listed in ``invalid`` with the reason.

Layouts (as published; field names checked against the benchmarks' own loaders):

* **Video-MME** (HF ``lmms-lab/Video-MME``): ``videomme/test-00000-of-00001.parquet`` with columns
  ``video_id, duration (short|medium|long), domain, sub_category, url, videoID, question_id,
  task_type, question, options ("A. ..."), answer (letter)``; videos ``data/<videoID>.mp4``.
  A JSON / JSONL dump of the same records is accepted too.
* **MLVU** (dev): ``json/<k>_<task>.json`` (e.g. ``1_plotQA.json``), each a list of
  ``{video, duration, question, candidates, answer (text), question_type}``; videos
  ``video/<k>_<task>/<video>``.  Generation tasks (sub-scene captioning, summary) have no
  candidates and are skipped as invalid.
* **LongVideoBench**: ``lvb_val.json``, a list of ``{id, video_id, video_path, question, candidates,
  correct_choice (0-based index), duration, duration_group (15|60|600|3600), question_category,
  topic_category, level, ...}``; videos ``videos/<video_path>``.  The HF parquet
  (``validation-00000-of-00001.parquet``, options in ``option0..option4`` with "N/A" padding) works too.
* **MVBench**: ``json/<task>.json``, each a list of ``{video, question, candidates, answer (text)}``
  plus ``start``/``end`` (seconds) for the clipped tasks, kept in ``Sample.extra`` and passed to the
  answer function as ``clip=(start, end)`` by the runner; videos under ``video/<source folder>/`` (the
  official per-task folders below; ``video/data0613/<folder>`` is also searched).
* **generic JSONL**: one object per line ``{video, question, options, answer}`` with optional
  ``id, category, duration``; ``answer`` is a letter, a 0-based index or an option's text; relative
  video paths are taken from the JSONL's folder (or ``video_dir``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from .prompt import LETTERS, check_options, strip_option_label

VIDEO_EXTS = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov", ".MOV", ".gif")

BENCHMARKS = ("videomme", "mlvu", "longvideobench", "mvbench", "jsonl")
BENCH_TITLES = {
    "videomme": "Video-MME",
    "mlvu": "MLVU",
    "longvideobench": "LongVideoBench",
    "mvbench": "MVBench",
    "jsonl": "JSONL",
}

# MVBench: task -> (annotation file, video folder under video/, has start/end bounds)
MVBENCH_TASKS: Dict[str, tuple] = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation", False),
    "Action Localization": ("action_localization.json", "sta/sta_video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video", False),
    "Action Count": ("action_count.json", "perception/videos", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation", False),
    "State Change": ("state_change.json", "perception/videos", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd", False),
    "Character Order": ("character_order.json", "perception/videos", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq", True),  # frame folders
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation", False),
}

MLVU_TASK_NAMES = {
    "plotQA": "Plot QA",
    "findNeedle": "Needle QA",
    "needle": "Needle QA",
    "ego": "Ego Reasoning",
    "count": "Action Count",
    "order": "Action Order",
    "anomaly_reco": "Anomaly Recognition",
    "topic_reasoning": "Topic Reasoning",
}

LVB_DURATION_GROUPS = {15: "8-15s", 60: "15-60s", 600: "180-600s", 3600: "900-3600s"}


@dataclass
class Sample:
    """One multiple-choice question about one video."""

    benchmark: str
    qid: str
    video: str
    question: str
    options: List[str]
    answer: str  # letter
    category: Optional[str] = None
    duration: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "benchmark": self.benchmark, "qid": self.qid, "video": self.video, "question": self.question,
            "options": list(self.options), "answer": self.answer, "category": self.category,
            "duration": self.duration, "extra": dict(self.extra),
        }


@dataclass
class Benchmark:
    name: str
    samples: List[Sample]
    missing: List[Sample] = field(default_factory=list)  # video not found: reported, never scored
    invalid: List[dict] = field(default_factory=list)  # {"qid", "reason"}: not a usable MC question
    source: str = ""

    @property
    def title(self) -> str:
        return BENCH_TITLES.get(self.name, self.name)

    def limit(self, n: Optional[int]) -> "Benchmark":
        """The first ``n`` questions in annotation order (missing videos count toward ``n``)."""
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"limit must be a positive int, got {n!r}")
        order = sorted(self.samples + self.missing, key=lambda s: s.extra.get("_order", 0))[:n]
        keep = {id(s) for s in order}
        return Benchmark(self.name, [s for s in self.samples if id(s) in keep],
                         [s for s in self.missing if id(s) in keep], list(self.invalid), self.source)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _existing(path, arg: str) -> Path:
    """``path`` (``~`` expanded), which must exist; ``arg`` names it in the error."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{arg}: {p} does not exist")
    return p


def _need_dir(path, arg: str) -> Path:
    if path is None:
        raise ValueError(f"{arg} is required")
    p = _existing(path, arg)
    if not p.is_dir():
        raise NotADirectoryError(f"{arg}: {p} is not a directory")
    return p


def _need_file(path, arg: str) -> Path:
    p = _existing(path, arg)
    if not p.is_file():
        raise ValueError(f"{arg}: {p} is not a file")
    return p


def read_records(path) -> List[dict]:
    """Records from a .json (list, or {"data": [...]}), .jsonl or .parquet file."""
    p = _need_file(path, "annotation")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading {p} needs pyarrow: pip install 'vista-llm[eval]' (or pyarrow)") from e
        return [dict(r) for r in pq.read_table(p).to_pylist()]
    text = p.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        out = []
        for ln, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{ln}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{p}:{ln}: expected a JSON object, got {type(rec).__name__}")
            out.append(rec)
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):
        for key in ("data", "questions", "annotations"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{p}: expected a JSON list of objects")
    return data


def _require(rec: dict, keys: Iterable[str], where: str) -> None:
    miss = [k for k in keys if k not in rec]
    if miss:
        raise ValueError(f"{where}: missing field(s) {', '.join(miss)} (has: {', '.join(sorted(rec))})")


def _find_video(candidates: Iterable[Path]) -> Optional[Path]:
    """The first existing path; bare names are also tried with the usual video extensions."""
    tried = []
    for c in candidates:
        tried.append(c)
        if c.exists():
            return c
        if not c.suffix:
            for ext in VIDEO_EXTS:
                q = c.with_name(c.name + ext)
                if q.exists():
                    return q
        else:  # some releases store .MP4 / .mkv for an id whose annotation says .mp4
            for ext in VIDEO_EXTS:
                q = c.with_suffix(ext)
                if q.exists():
                    return q
    return None


def _answer_letter(answer, options: Sequence[str]) -> Optional[str]:
    """An annotation answer (letter, 0-based index or option text) as a letter, or None."""
    n = len(options)
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return LETTERS[answer] if 0 <= answer < n else None
    if isinstance(answer, float) and answer.is_integer():
        return _answer_letter(int(answer), options)
    if not isinstance(answer, str):
        return None
    a = answer.strip()
    for i, o in enumerate(options):  # an option's text first: MLVU / MVBench store the answer text
        if o.strip() == a:
            return LETTERS[i]
    bare = a.strip("()").strip().rstrip(".")
    if len(bare) == 1 and bare.upper() in LETTERS[:n]:
        return bare.upper()
    # "(B) text" / "B. text"
    if len(a) > 2 and a[0] == "(" and a[2] == ")" and a[1].upper() in LETTERS[:n]:
        return a[1].upper()
    if len(a) > 2 and a[1] in ".:)" and a[0].upper() in LETTERS[:n] and a[2] == " ":
        return a[0].upper()
    return None


class _Builder:
    """Collects samples for one benchmark; checks each record and finds its video."""

    def __init__(self, name: str, source: str):
        self.bench = Benchmark(name, [], [], [], source)
        self._n = 0
        self._seen = set()

    def add(self, *, qid, video_candidates: Sequence[Path], video_label: str, question, options, answer,
            category=None, duration=None, extra=None, where: str = "") -> None:
        qid = str(qid)
        self._n += 1
        if qid in self._seen:
            raise ValueError(f"{where}: duplicate question id {qid!r} in {self.bench.source}")
        self._seen.add(qid)
        if not isinstance(question, str) or not question.strip():
            self.bench.invalid.append({"qid": qid, "reason": "empty question"})
            return
        if options is None or (hasattr(options, "__len__") and len(options) == 0):
            self.bench.invalid.append({"qid": qid, "reason": "no options (not a multiple-choice question)"})
            return
        try:
            options = [strip_option_label(str(o), i) for i, o in enumerate(options)]
            check_options(options)
        except (TypeError, ValueError, IndexError) as e:
            self.bench.invalid.append({"qid": qid, "reason": f"bad options: {e}"})
            return
        letter = _answer_letter(answer, options)
        if letter is None:
            self.bench.invalid.append({"qid": qid, "reason": f"answer {answer!r} is not one of the options"})
            return
        ex = dict(extra or {})
        ex["_order"] = self._n
        found = _find_video(video_candidates)
        s = Sample(self.bench.name, qid, str(found if found else video_candidates[0]), question.strip(),
                   options, letter, None if category is None else str(category),
                   None if duration is None else str(duration), ex)
        if found is None:
            s.extra["video_ref"] = video_label
            self.bench.missing.append(s)
        else:
            self.bench.samples.append(s)


def _first_existing(root: Path, names: Sequence[str], arg: str, globs: Sequence[str] = ()) -> Path:
    for n in names:
        p = root / n
        if p.is_file():
            return p
    for g in globs:
        hits = sorted(root.glob(g))
        if hits:
            return hits[0]
    raise FileNotFoundError(
        f"{arg}: no annotation file found under {root} (looked for {', '.join(list(names) + list(globs))}); "
        f"pass annotation=... / --annotation FILE"
    )


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------

def read_videomme(data_dir, annotation=None, video_dir=None) -> Benchmark:
    root = _need_dir(data_dir, "data_dir")
    ann = Path(annotation) if annotation else _first_existing(
        root, ["videomme/test-00000-of-00001.parquet", "test-00000-of-00001.parquet", "videomme.json",
               "videomme.jsonl"], "data_dir", ["videomme/*.parquet", "*.parquet", "videomme/*.json"])
    vdirs = [Path(video_dir)] if video_dir else [root / "data", root / "videos", root / "video", root]
    b = _Builder("videomme", str(ann))
    for i, r in enumerate(read_records(ann)):
        where = f"{ann} record {i}"
        _require(r, ["videoID", "question", "options", "answer"], where)
        vid = str(r["videoID"])
        b.add(qid=r.get("question_id", f"{vid}-{i}"), video_candidates=[d / f"{vid}.mp4" for d in vdirs],
              video_label=f"{vid}.mp4", question=r["question"], options=list(r["options"]),
              answer=r["answer"], category=r.get("task_type"), duration=r.get("duration"),
              extra={k: r[k] for k in ("video_id", "domain", "sub_category") if k in r}, where=where)
    return b.bench


def read_mlvu(data_dir, annotation=None, video_dir=None) -> Benchmark:
    root = _need_dir(data_dir, "data_dir")
    if (root / "MLVU" / "json").is_dir() and not (root / "json").is_dir():
        root = root / "MLVU"
    if annotation:
        files = [Path(annotation)]
    else:
        jdir = root / "json"
        if not jdir.is_dir():
            raise FileNotFoundError(f"data_dir: {root} has no json/ folder (MLVU layout: json/<k>_<task>.json)")
        files = sorted(jdir.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"data_dir: no .json annotation files in {jdir}")
    vroot = Path(video_dir) if video_dir else root / "video"
    b = _Builder("mlvu", str(files[0].parent if len(files) > 1 else files[0]))
    for f in files:
        stem = f.stem  # "1_plotQA"
        bare = stem.split("_", 1)[1] if "_" in stem and stem.split("_", 1)[0].isdigit() else stem
        for i, r in enumerate(read_records(f)):
            where = f"{f} record {i}"
            _require(r, ["video", "question"], where)
            qtype = r.get("question_type", bare)
            v = str(r["video"])
            cands = [vroot / stem / v, vroot / bare / v, vroot / v, root / v]
            b.add(qid=r.get("question_id", f"{stem}/{i}"), video_candidates=cands, video_label=v,
                  question=r["question"], options=r.get("candidates"), answer=r.get("answer"),
                  category=MLVU_TASK_NAMES.get(qtype, qtype), duration=None,
                  extra={"duration_s": r.get("duration"), "task_file": f.name}, where=where)
    return b.bench


def read_longvideobench(data_dir, annotation=None, video_dir=None) -> Benchmark:
    root = _need_dir(data_dir, "data_dir")
    ann = Path(annotation) if annotation else _first_existing(
        root, ["lvb_val.json", "validation-00000-of-00001.parquet"], "data_dir", ["*val*.parquet"])
    vroot = Path(video_dir) if video_dir else root / "videos"
    b = _Builder("longvideobench", str(ann))
    for i, r in enumerate(read_records(ann)):
        where = f"{ann} record {i}"
        _require(r, ["question", "video_path"], where)
        if "candidates" in r:
            opts = list(r["candidates"])
        else:  # HF parquet layout: option0..option4, "N/A" padding
            opts = [r[f"option{k}"] for k in range(10) if f"option{k}" in r and r[f"option{k}"] not in (None, "N/A")]
        if "correct_choice" not in r:
            b.bench.invalid.append({"qid": str(r.get("id", i)), "reason": "no correct_choice (test split?)"})
            continue
        vp = str(r["video_path"])
        group = r.get("duration_group")
        dur = LVB_DURATION_GROUPS.get(int(group), f"{group}s") if group is not None else None
        b.add(qid=r.get("id", f"{r.get('video_id', vp)}-{i}"), video_candidates=[vroot / vp, root / vp],
              video_label=vp, question=r["question"], options=opts, answer=int(r["correct_choice"]),
              category=r.get("question_category"), duration=dur,
              extra={k: r[k] for k in ("video_id", "topic_category", "level", "duration") if k in r},
              where=where)
    return b.bench


def read_mvbench(data_dir, annotation=None, video_dir=None) -> Benchmark:
    root = _need_dir(data_dir, "data_dir")
    jdir = root / "json"
    vroot = Path(video_dir) if video_dir else root / "video"
    if annotation:
        ann = Path(annotation)
        task = next((t for t, v in MVBENCH_TASKS.items() if v[0] == ann.name), ann.stem)
        tasks = [(task, ann, MVBENCH_TASKS.get(task, (None, "", False))[1])]
    else:
        if not jdir.is_dir():
            raise FileNotFoundError(f"data_dir: {root} has no json/ folder (MVBench layout: json/<task>.json)")
        tasks = [(t, jdir / f, folder) for t, (f, folder, _) in MVBENCH_TASKS.items() if (jdir / f).is_file()]
        known = {v[0] for v in MVBENCH_TASKS.values()}
        tasks += [(p.stem, p, "") for p in sorted(jdir.glob("*.json")) if p.name not in known]
        if not tasks:
            raise FileNotFoundError(f"data_dir: no MVBench task files in {jdir}")
    b = _Builder("mvbench", str(jdir if not annotation else tasks[0][1]))
    for task, f, folder in tasks:
        for i, r in enumerate(read_records(f)):
            where = f"{f} record {i}"
            _require(r, ["video", "question", "candidates", "answer"], where)
            v = str(r["video"])
            cands = [vroot / folder / v, vroot / "data0613" / folder / v, vroot / v]
            extra = {k: r[k] for k in ("start", "end") if k in r}
            b.add(qid=f"{Path(f).stem}/{i}", video_candidates=cands, video_label=f"{folder}/{v}".lstrip("/"),
                  question=r["question"], options=list(r["candidates"]), answer=r["answer"],
                  category=task, duration=None, extra=extra, where=where)
    return b.bench


def read_jsonl(data_dir, annotation=None, video_dir=None) -> Benchmark:
    """Generic JSONL; ``data_dir`` may be the .jsonl file itself or a folder holding one."""
    p = Path(annotation or data_dir).expanduser()
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if len(files) != 1:
            raise FileNotFoundError(f"data_dir: expected exactly one .jsonl file in {p}, found {len(files)}; "
                                    f"pass the file itself")
        p = files[0]
    _need_file(p, "data_dir")
    vroot = Path(video_dir) if video_dir else p.parent
    b = _Builder("jsonl", str(p))
    for i, r in enumerate(read_records(p)):
        where = f"{p} line {i + 1}"
        _require(r, ["video", "question", "options", "answer"], where)
        v = Path(str(r["video"])).expanduser()
        b.add(qid=r.get("id", i), video_candidates=[v if v.is_absolute() else vroot / v], video_label=str(v),
              question=r["question"], options=list(r["options"]), answer=r["answer"],
              category=r.get("category"), duration=r.get("duration"), where=where)
    return b.bench


READERS: Dict[str, Callable[..., Benchmark]] = {
    "videomme": read_videomme,
    "mlvu": read_mlvu,
    "longvideobench": read_longvideobench,
    "mvbench": read_mvbench,
    "jsonl": read_jsonl,
}
_ALIASES = {"video-mme": "videomme", "video_mme": "videomme", "lvb": "longvideobench",
            "longvideo": "longvideobench", "mv-bench": "mvbench", "generic": "jsonl"}


def load_benchmark(name: str, data_dir, annotation=None, video_dir=None, limit: Optional[int] = None) -> Benchmark:
    """Read benchmark ``name`` (one of BENCHMARKS) from ``data_dir``; ``limit`` keeps the first N."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in READERS:
        raise ValueError(f"bench must be one of {', '.join(BENCHMARKS)}, got {name!r}")
    if video_dir is not None:
        _need_dir(video_dir, "video_dir")
    if annotation is not None:
        _need_file(annotation, "annotation")
    return READERS[key](data_dir, annotation=annotation, video_dir=video_dir).limit(limit)
