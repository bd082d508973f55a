"""vista.pipeline: VistaPipeline.ask end to end on tiny saved random models (CPU, no download)."""
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("av")

import vista  # noqa: E402
from vista.pipeline import AskResult, PipelineError, VistaPipeline  # noqa: E402
from vista.video import VideoError, synthetic_video, write_video  # noqa: E402


QUESTION = "what color is the ball on the left ?"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    v = synthetic_video(8, height=64, width=64, seed=1)
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", v.frames)


@pytest.fixture(scope="module")
def pipe(llava, scout):
    return VistaPipeline(llava, scout_path=scout, config=vista.VistaConfig(retention=0.15), num_frames=8)


@pytest.fixture(scope="module")
def result(pipe, clip):
    return pipe.ask(clip, QUESTION, max_new_tokens=4)


def test_ask_result(result):
    assert isinstance(result, AskResult)
    assert isinstance(result.answer, str) and result.answer == result.answer.strip()
    assert result.frames == 8 and result.frames_requested == 8 and result.notes == []
    # LLaVA-OneVision: T*196 tokens + one newline token a video ("one" layout keeps it)
    assert result.tokens_before == 8 * 196 + 1
    assert result.tokens_after == vista.retained_count(8, 196, 0.15) + 1
    assert 1 <= result.new_tokens <= 4
    info = result.prune[0]
    assert tuple(info["grid"]) == (8, 14, 14)
    p = result.pruned
    assert p.num_tokens == result.tokens_after - 1 and int(p.budgets.sum()) == p.num_tokens
    assert p.foveal.any()  # the scout chose tokens
    for k in ("decode", "preprocess", "scout", "prune", "prefill", "generate", "total", "load"):
        assert result.timings[k] >= 0.0, k
    t = result.timings
    assert t["total"] >= t["decode"] + t["preprocess"] + t["generate"]
    assert result.ttft_s == pytest.approx(t["total"] - t["generate"])


def test_summary_and_json_agree(result):
    s = result.summary()
    assert "8 frames" in s and f"visual tokens 1569 -> {result.tokens_after}" in s
    rec = json.loads(json.dumps(result.to_dict()))
    assert rec["answer"] == result.answer and rec["summary"] == s
    assert rec["tokens_before"] == 1569 and rec["tokens_after"] == result.tokens_after
    assert sum(rec["budgets"]) == rec["tokens_after"] - 1 and len(rec["budgets"]) == 8
    assert sum(seg["tokens"] for seg in rec["segments"]) == sum(rec["budgets"])
    assert rec["grid"] == [8, 14, 14] and rec["config"]["retention"] == 0.15


def test_save_map(result, tmp_path):
    from PIL import Image

    from vista.viz import token_map_size

    m = result.save_map(tmp_path / "map.png")
    img = Image.open(m.path)
    assert img.size == (m.width, m.height) == token_map_size(8, (64, 64))
    assert np.asarray(img.convert("L")).std() > 20


def test_answer_matches_stock_model_at_full_retention(llava, clip):
    """retention 1.0: the pipeline's prompt + greedy decoding give the unpatched model's answer."""
    from vista.models import load_pretrained
    from vista.video import load_video

    pipe = VistaPipeline(llava, config=vista.VistaConfig(retention=1.0), num_frames=8)
    res = pipe.ask(clip, QUESTION, max_new_tokens=4)
    assert res.tokens_before == res.tokens_after == 8 * 196 + 1  # stock path: the placeholders

    model, proc = load_pretrained(llava, attn_implementation="sdpa")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[prompt], videos=[load_video(clip, 8).frames], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expect = proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    assert res.answer == expect

    # nothing was pruned, but the result still describes the video: an all-kept record
    p = res.pruned
    assert p is not None and res.prune[0]["all_kept"] and tuple(res.prune[0]["grid"]) == (8, 14, 14)
    assert p.budgets.tolist() == [196] * 8 and p.keep.all() and not p.foveal.any()
    assert p.num_tokens == 8 * 196 and p.relevance.tolist() == [1.0] and p.segment_id.tolist() == [0] * 8
    assert res.segments() == [{"segment": 0, "first_frame": 0, "last_frame": 7, "relevance": 1.0, "tokens": 8 * 196}]
    rec = res.to_dict()
    assert rec["budgets"] == [196] * 8 and rec["grid"] == [8, 14, 14] and rec["retention"] == 1.0
    assert any("nothing pruned" in n for n in res.notes)
    for k in ("decode", "preprocess", "prefill", "generate", "total"):
        assert res.timings[k] >= 0.0, k


def test_save_map_at_full_retention(llava, tmp_path):
    """retention 1.0 (regression: "no pruning record to draw"): an all-kept map is drawn."""
    from PIL import Image

    from vista.viz import ANCHOR_RGB, token_map_size

    pipe = VistaPipeline(llava, retention=1.0, num_frames=4)
    res = pipe.ask(synthetic_video(4, height=48, width=64, seed=5), QUESTION, max_new_tokens=1)
    m = res.save_map(tmp_path / "all.png")
    img = np.asarray(Image.open(m.path).convert("RGB"))
    assert (m.width, m.height) == token_map_size(4, (48, 64))
    cyan = (np.abs(img.astype(int) - np.array(ANCHOR_RGB)).sum(-1) < 40).sum()
    assert cyan > 4 * 196 * 4  # every token outlined


def test_beam_search_and_sampled_sequences(llava):
    """Regression: ask always passed a streamer, which generate() refuses with beam search."""
    from transformers import StoppingCriteria

    pipe = VistaPipeline(llava, retention=0.25, num_frames=4, progress=True)
    frames = synthetic_video(4, height=48, width=48, seed=3).frames
    greedy = pipe.ask(frames, QUESTION, max_new_tokens=2)

    class Count(StoppingCriteria):
        calls = 0

        def __call__(self, input_ids, scores, **kwargs):
            Count.calls += 1
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    from transformers import StoppingCriteriaList

    res = pipe.ask(frames, QUESTION, max_new_tokens=2, num_beams=2, stopping_criteria=StoppingCriteriaList([Count()]))
    assert isinstance(res.answer, str) and 1 <= res.new_tokens <= 2 and Count.calls >= 1  # user criteria kept
    assert res.tokens_after == greedy.tokens_after == vista.retained_count(4, 196, 0.25) + 1
    t = res.timings
    assert t["prefill"] >= 0.0 and t["generate"] >= 0.0 and res.ttft_s == pytest.approx(t["total"] - t["generate"])
    assert t["total"] >= t["generate"] and res.ttft_s > t["preprocess"]

    sampled = pipe.ask(frames, QUESTION, max_new_tokens=2, do_sample=True, num_return_sequences=2)
    assert isinstance(sampled.answer, str) and sampled.new_tokens >= 1

    gc = pipe.model.generation_config  # a checkpoint whose generation_config asks for beams
    saved = gc.num_beams
    gc.num_beams = 2
    try:
        res2 = pipe.ask(frames, QUESTION, max_new_tokens=2)
    finally:
        gc.num_beams = saved
    assert res2.answer == res.answer and set(res2.timings) == set(greedy.timings)


def test_short_video_and_no_scout(llava, tmp_path):
    p = write_video(tmp_path / "short.mp4", synthetic_video(5, height=32, width=32).frames)
    pipe = VistaPipeline(llava, config=vista.VistaConfig(retention=0.2), num_frames=8)
    res = pipe.ask(p, QUESTION, max_new_tokens=2)
    assert res.frames == 5 and res.frames_requested == 8
    assert res.tokens_before == 5 * 196 + 1 and res.tokens_after == vista.retained_count(5, 196, 0.2) + 1
    assert "(of 8 asked)" in res.summary() and "only 5 frames" in res.notes[0]
    assert not res.pruned.foveal.any()  # no scout: anchors only
    pipe.set_config(vista.VistaConfig(retention=0.5))
    res2 = pipe.ask(p, QUESTION, max_new_tokens=1)
    assert res2.tokens_after == vista.retained_count(5, 196, 0.5) + 1 and pipe.config.retention == 0.5
    pipe.set_config(vista.VistaConfig(retention=0.5, newline="none"))
    res3 = pipe.ask(p, QUESTION, max_new_tokens=1)
    assert (res3.tokens_before, res3.tokens_after) == (5 * 196 + 1, vista.retained_count(5, 196, 0.5))


def test_qwen2_5_vl(qwen, scout, tmp_path):
    pipe = VistaPipeline(qwen, scout_path=scout, config=vista.VistaConfig(retention=0.25), num_frames=6)
    frames = synthetic_video(6, height=56, width=84).frames  # an array is a video too
    res = pipe.ask(frames, QUESTION, max_new_tokens=2)
    T, h, w = res.prune[0]["grid"]
    assert T == 3 and res.tokens_before == T * h * w  # two frames a token frame
    assert res.tokens_after == vista.retained_count(T, h * w, 0.25)
    m = res.save_map(tmp_path / "q.png")
    assert os.path.getsize(m.path) > 0
    pipe.set_config(vista.VistaConfig(retention=1.0))  # stock path: the all-kept record's grid
    full = pipe.ask(frames, QUESTION, max_new_tokens=1)
    assert full.prune[0]["all_kept"] and tuple(full.prune[0]["grid"]) == (T, h, w)
    assert full.tokens_before == full.tokens_after == T * h * w == full.pruned.num_tokens


def test_errors(llava, pipe, clip, tmp_path):
    with pytest.raises(PipelineError, match="no such directory"):
        VistaPipeline(tmp_path / "nope")
    (tmp_path / "config.json").write_text(open(os.path.join(llava, "config.json")).read())
    with pytest.raises(ValueError, match="weights"):
        VistaPipeline(tmp_path)
    with pytest.raises(PipelineError, match="scout path"):
        VistaPipeline(llava, scout_path=tmp_path / "noscout")
    with pytest.raises(PipelineError, match="device"):
        VistaPipeline(llava, device="gpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="CUDA is not available"):
            VistaPipeline(llava, device="cuda")
    with pytest.raises(PipelineError, match="dtype"):
        VistaPipeline(llava, dtype="float8")
    with pytest.raises(PipelineError, match="question"):
        pipe.ask(clip, "   ")
    with pytest.raises(PipelineError, match="max_new_tokens"):
        pipe.ask(clip, QUESTION, max_new_tokens=0)
    with pytest.raises(VideoError, match="no such file"):
        pipe.ask(tmp_path / "missing.mp4", QUESTION)
    with pytest.raises(ValueError, match="retention"):
        VistaPipeline(llava, retention=0.0)


def test_progress_scout_gives_the_same_scores():
    from vista.pipeline import _ProgressScout

    class Fake:
        grid_hw = (2, 2)

        def scores(self, frames, question):
            return frames.float().mean(dim=(1, 2, 3))[:, None] * torch.arange(1.0, 5.0)

    frames = torch.rand(37, 3, 8, 8)
    wrapped = _ProgressScout(Fake(), chunk=16)
    assert wrapped.grid_hw == (2, 2)
    torch.testing.assert_close(wrapped.scores(frames, "q"), Fake().scores(frames, "q"), rtol=0, atol=0)
    assert wrapped.scores(frames[:3], "q").shape == (3, 4)


def test_progress_scout_wraps_the_cached_path_too():
    """Regression: with the feature cache the model calls vision_embeddings, which bypassed the bar."""
    from vista.pipeline import _ProgressScout

    class Fake:
        grid_hw = (2, 2)
        calls = []

        def vision_embeddings(self, frames):
            Fake.calls.append(len(frames))
            return frames.float().mean(dim=(2, 3))[:, None, :].expand(-1, 5, -1)

    frames = torch.rand(37, 3, 8, 8)
    out = _ProgressScout(Fake(), chunk=16).vision_embeddings(frames)
    torch.testing.assert_close(out, Fake().vision_embeddings(frames), rtol=0, atol=0)
    assert Fake.calls[:3] == [16, 16, 5]
