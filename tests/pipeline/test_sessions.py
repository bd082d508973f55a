"""Many questions about one video: the pipeline's feature cache skips decoding and both vision towers,
and every follow-up answer equals a fresh pipeline's (kept tokens, logits, answer)."""
import threading

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("av")

import vista  # noqa: E402
from vista.pipeline import PipelineError, VistaPipeline  # noqa: E402
from vista.video import synthetic_video, write_video  # noqa: E402


Q1 = "what color is the ball on the left ?"
Q2 = "where is the blue square ?"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    v = synthetic_video(16, height=64, width=64, seed=2, scenes=2)
    return write_video(tmp_path_factory.mktemp("sessions") / "clip.mp4", v.frames, fps=8.0)


class Spy:
    """Counts calls of the backbone's vision tower, the scout's ViT and the video decoder, and
    keeps the prefill logits of each generate() (forward hooks; nothing patched in the package)."""

    def __init__(self, pipe, monkeypatch):
        self.calls = {"vision": 0, "scout_vit": 0, "decode": 0}
        self.logits = []
        inner = pipe.model.model
        tower = getattr(inner, "vision_tower", None) or getattr(inner, "visual")
        self.handles = [tower.register_forward_hook(lambda *a: self._count("vision"))]
        if pipe.scout is not None:
            self.handles.append(pipe.scout.model.vision_model.register_forward_hook(lambda *a: self._count("scout_vit")))
        self.handles.append(pipe.model.lm_head.register_forward_hook(self._logits))
        import vista.pipeline as vp

        real = vp.as_video

        def counting(*a, **k):
            self._count("decode")
            return real(*a, **k)

        monkeypatch.setattr(vp, "as_video", counting)

    def _count(self, k):
        self.calls[k] += 1

    def _logits(self, mod, args, out):
        self.logits.append(out[0, -1].detach().clone())  # the first call of an ask is its prefill

    def reset(self):
        self.calls = dict.fromkeys(self.calls, 0)
        self.logits = []

    def close(self):
        for h in self.handles:
            h.remove()


def _assert_same(a, b, la, lb):
    assert a.answer == b.answer
    assert (a.tokens_before, a.tokens_after) == (b.tokens_before, b.tokens_after)
    pa, pb = a.pruned, b.pruned
    assert torch.equal(pa.keep, pb.keep) and torch.equal(pa.foveal, pb.foveal)
    assert torch.equal(pa.budgets, pb.budgets) and torch.equal(pa.segment_id, pb.segment_id)
    torch.testing.assert_close(pa.tokens, pb.tokens, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)


CASES = [  # family, with scout, time range
    ("llava", True, (0.5, 1.6)),
    ("llava", False, None),
    ("qwen", True, None),
    ("qwen", False, (0.25, 1.9)),
]


@pytest.mark.parametrize("family,with_scout,time_range", CASES)
def test_follow_up_skips_decode_and_towers_and_equals_fresh(family, with_scout, time_range, llava, qwen, scout, clip,
                                                            monkeypatch):
    path = llava if family == "llava" else qwen
    s = scout if with_scout else None
    r = 0.25 if family == "llava" else 0.5  # Qwen's tiny grid is 2x2: room for foveal tokens
    pipe = VistaPipeline(path, scout_path=s, retention=r, num_frames=6)
    spy = Spy(pipe, monkeypatch)
    first = pipe.ask(clip, Q1, max_new_tokens=3, clip=time_range)
    assert first.cache == ({"frames": "miss", "features": "miss", "scout": "miss"} if with_scout
                           else {"frames": "miss", "features": "miss"})
    assert spy.calls["vision"] >= 1 and spy.calls["decode"] == 1 and (spy.calls["scout_vit"] >= 1) == with_scout
    assert "cache miss" in first.summary()
    spy.reset()
    follow = pipe.ask(clip, Q2, max_new_tokens=3, clip=time_range)
    assert spy.calls == {"vision": 0, "scout_vit": 0, "decode": 0}  # nothing but Q-Former, prune, LLM
    assert follow.cache_hit and follow.summary().endswith("cache hit")
    # the skipped work is proven by the call counts above; wall-clock comparisons flake on a loaded box
    assert "vision" in follow.timings and follow.timings["vision"] >= 0.0
    if with_scout:
        assert follow.pruned.foveal.any() and "scout_qformer" in follow.timings and "scout_vit" not in follow.timings
    if time_range is not None:
        assert follow.video.clip is not None and follow.video.clip[0] == time_range[0]
    follow_logits = spy.logits[0]
    spy.close()

    fresh = VistaPipeline(path, scout_path=s, retention=r, num_frames=6, cache_bytes=0)
    spy2 = Spy(fresh, monkeypatch)
    ref = fresh.ask(clip, Q2, max_new_tokens=3, clip=time_range)
    assert ref.cache == {} and "cache" not in ref.summary() and spy2.calls["vision"] >= 1
    _assert_same(follow, ref, follow_logits, spy2.logits[0])
    spy2.close()
    # another clip of the same file, or other frame counts, is another video
    spy3 = Spy(pipe, monkeypatch)
    other = pipe.ask(clip, Q2, max_new_tokens=1, num_frames=4, clip=time_range)
    assert other.cache["frames"] == "miss" and spy3.calls["vision"] >= 1
    spy3.close()


def test_retention_change_and_full_retention_reuse_the_cache(llava, clip, monkeypatch):
    pipe = VistaPipeline(llava, retention=0.25, num_frames=4)
    pipe.ask(clip, Q1, max_new_tokens=1)
    spy = Spy(pipe, monkeypatch)
    pipe.set_config(vista.VistaConfig(retention=1.0))  # the stock path: still no tower on a hit
    full = pipe.ask(clip, Q2, max_new_tokens=2)
    assert full.cache_hit and spy.calls["vision"] == 0 and full.tokens_after == 4 * 196 + 1
    spy.close()
    fresh = VistaPipeline(llava, retention=1.0, num_frames=4, cache_bytes=0)
    spy2 = Spy(fresh, monkeypatch)
    ref = fresh.ask(clip, Q2, max_new_tokens=2)
    assert ref.answer == full.answer
    assert torch.equal(spy.logits[0], spy2.logits[0])  # retention 1.0 stays bit-exact with cached features
    spy2.close()
    # one time range written two ways is one clip
    assert pipe.ask(clip, Q1, max_new_tokens=1, clip=(None, 1.5)).cache["frames"] == "miss"
    assert pipe.ask(clip, Q2, max_new_tokens=1, clip=(0, 1.5)).cache_hit


def test_disk_layer_shared_between_pipelines(llava, scout, clip, tmp_path, monkeypatch):
    a = VistaPipeline(llava, scout_path=scout, retention=0.25, num_frames=4, cache_dir=tmp_path / "cache")
    a.ask(clip, Q1, max_new_tokens=1)
    assert a.cache_info()["disk_writes"] == 3
    b = VistaPipeline(llava, scout_path=scout, retention=0.25, num_frames=4, cache_dir=tmp_path / "cache")
    spy = Spy(b, monkeypatch)
    res = b.ask(clip, Q2, max_new_tokens=2)
    assert res.cache == {"frames": "disk", "features": "disk", "scout": "disk"} and "cache hit (disk)" in res.summary()
    assert spy.calls == {"vision": 0, "scout_vit": 0, "decode": 0}
    spy.close()
    ref = VistaPipeline(llava, scout_path=scout, retention=0.25, num_frames=4, cache_bytes=0)
    spy2 = Spy(ref, monkeypatch)
    r = ref.ask(clip, Q2, max_new_tokens=2)
    _assert_same(res, r, spy.logits[0], spy2.logits[0])
    spy2.close()
    # other weights (another scout) -> other keys: the disk entries of the first scout are not used
    from vista.scout import build_tiny_scout

    other_scout = tmp_path / "scout2"
    build_tiny_scout(str(other_scout), seed=1)
    c = VistaPipeline(llava, scout_path=other_scout, retention=0.25, num_frames=4, cache_dir=tmp_path / "cache")
    assert c.ask(clip, Q2, max_new_tokens=1).cache == {"frames": "disk", "features": "disk", "scout": "miss"}


def test_cache_api_and_arrays(llava, monkeypatch):
    pipe = VistaPipeline(llava, retention=0.25, num_frames=4, cache_bytes=50_000_000)
    frames = synthetic_video(4, height=48, width=48, seed=7).frames
    r1 = pipe.ask(frames, Q1, max_new_tokens=1)
    assert r1.cache == {"features": "miss"}  # an array: no decoding to skip; features keyed by content
    spy = Spy(pipe, monkeypatch)
    r2 = pipe.ask(frames.copy(), Q2, max_new_tokens=1)
    assert r2.cache == {"features": "hit"} and spy.calls["vision"] == 0
    changed = frames.copy()
    changed[0, 0, 0, 0] ^= 1
    assert pipe.ask(changed, Q2, max_new_tokens=1).cache == {"features": "miss"} and spy.calls["vision"] == 1
    spy.close()
    info = pipe.cache_info()
    assert info["max_bytes"] == 50_000_000 and info["by_kind"]["features"]["entries"] == 2
    assert info["hits"] == 1 and info["misses"] == 2
    pipe.clear_cache()
    assert pipe.cache_info()["entries"] == 0
    assert pipe.ask(frames, Q1, max_new_tokens=1).cache == {"features": "miss"}
    with pytest.raises(PipelineError, match="cache_bytes"):
        VistaPipeline(llava, cache_bytes=-5)
    with pytest.raises(PipelineError, match="history"):
        pipe.ask(frames, Q1, history=["just a string"])


def test_history_goes_into_the_prompt_text_once(llava):
    pipe = VistaPipeline(llava, retention=0.25, num_frames=4)
    p = pipe.build_prompt(Q2, history=[(Q1, "red")])
    assert p.index(Q1) < p.index("red") < p.index(Q2)
    assert p.count("<video>") == 1
    frames = synthetic_video(4, height=48, width=48, seed=7).frames
    res = pipe.ask(frames, Q2, max_new_tokens=1, history=[(Q1, "red")])
    assert res.prune[0]["question"] == Q2  # the scout and q see the current question only


def test_concurrent_questions_on_one_cached_pipeline(llava, clip):
    """The cache and the patched model serve several threads: each answer equals the sequential one."""
    pipe = VistaPipeline(llava, retention=0.25, num_frames=4)
    qs = [Q1, Q2, "is there a red disc ?", "how many shapes ?"]
    seq = {q: pipe.ask(clip, q, max_new_tokens=2) for q in qs}
    pipe.clear_cache()
    out, errors = {}, []

    def run(q):
        try:
            out[q] = pipe.ask(clip, q, max_new_tokens=2)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(q,)) for q in qs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for q in qs:
        assert out[q].answer == seq[q].answer and torch.equal(out[q].pruned.keep, seq[q].pruned.keep)


def test_scout_splits_into_vit_embeddings_and_qformer():
    """scores_from_embeddings(vision_embeddings(f), q) == scores(f, q): the cached path's scout half."""
    from vista.scout import build_tiny_scout

    sc = build_tiny_scout(seed=0)
    frames = torch.rand(20, 3, 64, 64)  # 20 frames: two chunks of 16 and 4
    emb = sc.vision_embeddings(frames)
    assert emb.shape == (20, sc.num_patches + 1, 32) and emb.dtype == sc.dtype and not emb.is_inference()
    for q in (Q1, Q2):
        torch.testing.assert_close(sc.scores_from_embeddings(emb, q), sc.scores(frames, q), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="image_embeds"):
        sc.scores_from_embeddings(emb[:, 1:], Q1)
    with pytest.raises(ValueError, match="image_embeds"):
        sc.scores_from_embeddings(emb[0], Q1)
    with pytest.raises(ValueError, match="question"):
        sc.scores_from_embeddings(emb, "  ")


def test_patched_model_uses_a_cache_handle_directly(llava):
    """generate(..., vista_cache=VideoCacheHandle(...)) on a model patched with apply_vista."""
    from vista.cache import FeatureCache, VideoCacheHandle
    from vista.models import apply_vista, last_prune_info, load_pretrained

    model, proc = load_pretrained(llava, attn_implementation="sdpa")
    apply_vista(model, vista.VistaConfig(retention=0.25), processor=proc)
    calls = []
    h = model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": Q1}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[prompt], videos=[synthetic_video(3, height=48, width=48, seed=4).frames], return_tensors="pt")
    cache = FeatureCache(10_000_000)
    outs, keeps = [], []
    for _ in range(2):
        handle = VideoCacheHandle(cache, ["my-video"], "my-model")
        with torch.inference_mode():
            outs.append(model.generate(**inputs, max_new_tokens=2, do_sample=False, vista_cache=handle))
        keeps.append(last_prune_info(model)[0]["pruned"].keep)
    h.remove()
    assert len(calls) == 1 and handle.status == {"features": "hit"} and cache.info()["by_kind"]["features"]["hits"] == 1
    assert torch.equal(outs[0], outs[1]) and torch.equal(keeps[0], keeps[1])
    assert set(handle.resolved_timings()) == {"vision_s"}
