"""The scout is thread-safe (issue 14.3): no per-call hooks or state on the shared Q-Former.

* the scored cross-attention equals the former hook-based capture (re-implemented here as the
  reference, single-threaded);
* 4 threads x 3 calls on one scout, and on a patched LLaVA-OneVision / Qwen2.5-VL with that scout,
  each thread with its own question (two videos of different sizes among them), give exactly the
  single-threaded results.
"""
import threading
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.models.helpers import greedy, inputs  # noqa: E402

from vista import VistaConfig  # noqa: E402
from vista.models import apply_vista, last_prune_info  # noqa: E402
from vista.scout import SemanticScout, build_tiny_scout  # noqa: E402
from vista.scout.scout import _attention_probs  # noqa: E402
from vista.tiny_models import random_video  # noqa: E402

QUESTIONS = [
    "what is the man holding?",
    "where is the red car parked",
    "which color is the dog on the left",
    "who is playing in this video scene",
]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def scout():
    return build_tiny_scout(seed=0)


def _video(T, H=40, W=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, H, W, 3, generator=g) * 255).round().to(torch.uint8)


class _Stop(Exception):
    pass


def _hook_reference(scout, pixel_values, input_ids, attention_mask, full_forward=False):
    """The pre-fix SemanticScout.cross_attention: forward hooks on the scored layer capture its
    input and stop the Q-Former there (correct single-threaded; the reference for the new path)."""
    m = scout.model
    image_embeds = m.vision_model(pixel_values=pixel_values).last_hidden_state
    B = image_embeds.shape[0]
    query_tokens = m.query_tokens.expand(B, -1, -1)
    nq = query_tokens.shape[1]
    embeds = m.embeddings(input_ids=input_ids, query_embeds=query_tokens)
    mask = torch.cat([torch.ones(B, nq, dtype=attention_mask.dtype), attention_mask], dim=1)
    captured = {}
    target = m.qformer.encoder.layer[scout.qformer_layer].crossattention.attention

    def pre_hook(module, args, kwargs):
        captured["attn"] = _attention_probs(module, kwargs["hidden_states"], kwargs["encoder_hidden_states"])

    def post_hook(module, args, kwargs, output):
        if not full_forward:
            raise _Stop

    h1 = target.register_forward_pre_hook(pre_hook, with_kwargs=True)
    h2 = target.register_forward_hook(post_hook, with_kwargs=True)
    hidden = None
    try:
        hidden = m.qformer(query_embeds=embeds, query_length=nq, attention_mask=mask,
                           encoder_hidden_states=image_embeds).last_hidden_state
    except _Stop:
        pass
    finally:
        h1.remove()
        h2.remove()
    attn = captured["attn"][..., 1:]
    return (attn, hidden) if full_forward else attn


@pytest.mark.parametrize("layer", [-1, 0])
def test_scored_attention_equals_the_hook_based_capture(scout, layer):
    sc = SemanticScout(scout.model, scout.processor, layer=layer)
    pv = sc.preprocess(_video(3))
    ids, am = sc.tokenize([QUESTIONS[0], QUESTIONS[1], "car?"])  # different lengths: padding
    with torch.no_grad():
        ref_attn, ref_hidden = _hook_reference(sc, pv, ids, am, full_forward=True)
        attn, hidden = sc.cross_attention(pv, ids, am, full_forward=True)
        attn_only = sc.cross_attention(pv, ids, am)
    assert attn.shape == (3, 4, 8, 256)
    torch.testing.assert_close(attn, ref_attn, rtol=0, atol=1e-7)
    torch.testing.assert_close(attn_only, ref_attn, rtol=0, atol=1e-7)
    torch.testing.assert_close(hidden, ref_hidden, rtol=1e-6, atol=1e-6)
    # no hook was left behind, and none is added while scoring
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in sc.model.modules())


def _run_threads(fn, n_threads=4, calls=3):
    """fn(thread index, call index) in n_threads threads started together; returns results, errors."""
    barrier = threading.Barrier(n_threads)
    results, errors = {}, []

    def work(i):
        try:
            barrier.wait(30)
            for c in range(calls):
                results[(i, c)] = fn(i, c)
        except Exception as e:  # pragma: no cover - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results, errors


def test_concurrent_scores_on_one_scout_equal_single_threaded(scout):
    video = _video(2)
    alone = [scout.scores(video, q) for q in QUESTIONS]
    assert (alone[0] - alone[1]).abs().max() > 1e-3  # the questions do matter

    def fn(i, c):
        hooks_seen = [bool(mod._forward_hooks or mod._forward_pre_hooks) for mod in scout.model.modules()]
        return scout.scores(video, QUESTIONS[i]), any(hooks_seen)

    results, errors = _run_threads(fn)
    assert not errors, errors
    assert len(results) == 12
    for (i, c), (s, hooked) in results.items():
        assert not hooked
        assert torch.equal(s, alone[i]), (i, c)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_concurrent_generate_with_a_scout_equals_single_threaded(load_tiny, scout, family):
    model, proc = load_tiny({"llava_onevision": "llava", "qwen2_5_vl": "qwen"}[family])
    if family == "llava_onevision":
        videos = [random_video(4, 48, 48, seed=3), random_video(4, 48, 48, seed=4, scenes=3)]
    else:  # two grids: the two videos give different token counts and rope deltas
        videos = [random_video(8, 112, 112, seed=5), random_video(8, 84, 140, seed=6, scenes=3)]
    apply_vista(model, VistaConfig(retention=0.25), scout=scout, processor=proc)
    batches = []
    for i, q in enumerate(QUESTIONS):  # threads 0, 2 on one video, 1, 3 on the other
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batches.append(inputs(proc, [videos[i % 2]], [q]))

    if family == "qwen2_5_vl":  # the two videos differ in token count (and in rope deltas)
        assert batches[0]["input_ids"].shape != batches[1]["input_ids"].shape

    def one(i):
        seq, lg = greedy(model, batches[i], n=2)
        info = last_prune_info(model)[0]
        return seq, lg, info["pruned"].keep.clone(), info["question"]

    alone = [one(i) for i in range(len(QUESTIONS))]
    assert len({a[3] for a in alone}) == len(QUESTIONS)  # each run read its own prompt's question
    assert not torch.equal(alone[0][2], alone[2][2])  # same video, other question: the scout made it matter

    results, errors = _run_threads(lambda i, c: one(i))
    assert not errors, errors
    assert len(results) == 12
    for (i, c), (seq, lg, keep, q) in results.items():
        assert q == alone[i][3]
        assert torch.equal(keep, alone[i][2]), (family, i, c)
        assert torch.equal(seq, alone[i][0]), (family, i, c)
        torch.testing.assert_close(lg, alone[i][1], rtol=1e-5, atol=1e-5)
