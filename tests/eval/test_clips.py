"""MVBench time ranges (start/end) reach the answer function, the pipeline and the video loader."""

import numpy as np
import pytest

from vista.eval.readers import load_benchmark
from vista.eval.runner import accepts_clip, pipeline_answer_factory, run_sweep, sample_clip

TRUTH = {"What happened": "A", "How many": "C", "What did Castle": "C"}


def _letter(prompt):
    return next(a for q, a in TRUTH.items() if q in prompt)


@pytest.fixture
def mvbench(write_mvbench, tmp_path):
    return load_benchmark("mvbench", write_mvbench(tmp_path / "MVBench"))


def test_sample_clip_and_accepts_clip(mvbench):
    clips = {s.category: sample_clip(s) for s in mvbench.samples}
    assert clips == {"Action Sequence": (11.1, 19.6), "Moving Count": None, "Episodic Reasoning": (1.0, 9.0)}
    assert accepts_clip(lambda v, p, clip=None: 0) and accepts_clip(lambda v, p, **kw: 0)
    assert not accepts_clip(lambda v, p: 0) and not accepts_clip(lambda v, p, *clip: 0)


def test_sweep_passes_the_range_to_the_answer_fn(tmp_path, mvbench):
    calls = []

    def factory(retention):
        def answer_fn(video, prompt, clip=None):
            calls.append((video.replace("\\", "/").split("/video/")[1], clip))
            return f"({_letter(prompt)})", {}
        return answer_fn

    res = run_sweep(mvbench, [1.0], factory, tmp_path / "cache.jsonl", progress=False)
    assert sorted(calls) == [("clevrer/video_validation/video_10010.mp4", None),
                             ("star/Charades_v1_480/ZS9XR.mp4", (11.1, 19.6)),
                             ("tvqa/frames_fps3_hq/castle_s07e04_seg02_clip_14", (1.0, 9.0))]
    recs = {r["category"]: r for r in res.records.values()}
    assert recs["Action Sequence"]["clip"] == [11.1, 19.6] and "clip" not in recs["Moving Count"]
    assert all(r["correct"] for r in recs.values())


def test_answer_fn_without_clip_keyword_still_works(tmp_path, mvbench):
    calls = []

    def factory(retention):
        def answer_fn(video, prompt):
            calls.append(video)
            return f"({_letter(prompt)})", {}
        return answer_fn

    with pytest.warns(UserWarning, match=r"2 question\(s\) give a time range .* whole video"):
        res = run_sweep(mvbench, [1.0], factory, tmp_path / "cache.jsonl", progress=False)
    assert len(calls) == 3 and res.computed == 3
    assert not any("clip" in r for r in res.records.values())


class _FakeAskResult:
    def __init__(self, answer):
        self.answer, self.tokens_before, self.tokens_after, self.frames = answer, 100, 25, 8
        self.timings = {"total": 1.0, "generate": 0.25}


class _FakePipeline:
    """Stands in for VistaPipeline in pipeline_answer_factory: records every ask()."""

    instances = []

    def __init__(self, model_path, scout_path=None, config=None, device="cpu", dtype=None, **kw):
        self.model, self.processor, self.config, self.asks = object(), None, config, []
        self.kw = kw
        _FakePipeline.instances.append(self)

    def set_config(self, cfg):
        self.config = cfg

    def ask(self, video, question, max_new_tokens=128, **kw):
        self.asks.append((video, kw))
        return _FakeAskResult(f"({_letter(question)})")


def test_pipeline_answer_factory_threads_the_range_to_ask(tmp_path, mvbench, monkeypatch):
    pytest.importorskip("torch")
    import vista.pipeline

    monkeypatch.setattr(vista.pipeline, "VistaPipeline", _FakePipeline)
    _FakePipeline.instances = []
    res = run_sweep(mvbench, [1.0, 0.25], pipeline_answer_factory(str(tmp_path)), tmp_path / "c.jsonl",
                    progress=False)
    (pipe,) = _FakePipeline.instances
    assert pipe.kw.get("cache_bytes") == 0  # every question measured from scratch
    got = {(v.replace("\\", "/").split("/video/")[1], tuple(sorted(kw.items()))) for v, kw in pipe.asks}
    assert got == {("star/Charades_v1_480/ZS9XR.mp4", (("clip", (11.1, 19.6)),)),
                   ("clevrer/video_validation/video_10010.mp4", ()),
                   # an image folder has no timestamps: the whole folder, and the stats say so
                   ("tvqa/frames_fps3_hq/castle_s07e04_seg02_clip_14", ())}
    assert len(pipe.asks) == 6 and not res.errors
    recs = [r for r in res.records.values() if r["category"] == "Episodic Reasoning"]
    assert all(r["stats"]["clip_ignored"] is True for r in recs)


def test_ask_decodes_only_the_range(tmp_path, monkeypatch):
    """VistaPipeline.ask(clip=...) hands the range to the video loader (model call stubbed out)."""
    pytest.importorskip("torch")
    pytest.importorskip("av")
    import vista.pipeline as P
    from vista.video import VideoError, write_video

    frames = np.repeat((np.arange(20, dtype=np.uint8) * 12)[:, None, None, None], 16 * 16 * 3, axis=1)
    mp4 = write_video(tmp_path / "count.mp4", frames.reshape(20, 16, 16, 3), fps=10)
    seen = []

    class Stop(Exception):
        pass

    def prepare(self, video, question):
        seen.append(video)
        raise Stop

    monkeypatch.setattr(P.VistaPipeline, "prepare", prepare)
    pipe = P.VistaPipeline.__new__(P.VistaPipeline)
    pipe.num_frames, pipe.progress, pipe.timings = 3, False, {}
    with pytest.raises(Stop):
        pipe.ask(mp4, "What?", clip=(0.5, 1.5))
    (v,) = seen
    assert v.clip == (0.5, 1.5) and v.indices.tolist() == [5, 10, 15]
    assert [int(round(float(f.mean()) / 12)) for f in v.frames] == [5, 10, 15]
    with pytest.raises(Stop):  # no clip: the whole video, as before
        pipe.ask(mp4, "What?")
    assert seen[-1].clip is None and seen[-1].indices.tolist() == [0, 9, 19]
    with pytest.raises(VideoError, match=r"no frames in time range \[5, 6\] s|starts after the end"):
        pipe.ask(mp4, "What?", clip=(5.0, 6.0))
    with pytest.raises(VideoError, match="clip must be a"):
        pipe.ask(mp4, "What?", clip=1.0)
