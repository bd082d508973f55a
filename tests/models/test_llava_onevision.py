"""apply_vista on a tiny random LLaVA-OneVision (saved + loaded by path; no downloads)."""
from __future__ import annotations

import pytest
import torch
from tests.models.helpers import (
    OTHER_QUESTION,
    QUESTION,
    StubScout,
    assert_batch_equals_each_alone,
    assert_greedy_deterministic,
    capture_llm,
    greedy,
    image_video_prompt,
    inputs,
    logits,
    question_embedding,
    spy_prune_questions,
)

import vista
from vista import VistaConfig, retained_count
from vista.models import apply_vista, last_prune_info, remove_vista
from vista.tiny_models import random_video

T = 4
N = 196


@pytest.fixture
def mp(load_tiny):
    return load_tiny("llava")


@pytest.fixture(scope="module")
def video():
    return random_video(T, 48, 48, seed=3)


def _video_rows(batch, model):
    return (batch["input_ids"][0] == model.config.video_token_id).nonzero().flatten()


def test_retention_one_is_bit_identical(mp, video):
    model, proc = mp
    ref_batch = inputs(proc, [video], [QUESTION])
    ref = logits(model, ref_batch)
    apply_vista(model, VistaConfig(retention=1.0), processor=proc)
    batch = inputs(proc, [video], [QUESTION])
    assert torch.equal(batch["input_ids"], ref_batch["input_ids"])
    assert torch.equal(logits(model, batch), ref)


@pytest.mark.parametrize("retention", [0.25, 0.15])
def test_pruned_length_and_kept_rows(mp, video, retention, monkeypatch):
    model, proc = mp
    full = inputs(proc, [video], [QUESTION])
    x = model.get_video_features(full["pixel_values_videos"], return_dict=True).pooler_output[0]  # stock path
    apply_vista(model, VistaConfig(retention=retention), processor=proc)
    batch = inputs(proc, [video], [QUESTION])
    M = retained_count(T, N, retention)
    text_len = full["input_ids"].shape[1] - (T * N + 1)
    assert batch["input_ids"].shape[1] == text_len + M + 1  # + the model's own newline ("one")
    seen_q = spy_prune_questions(monkeypatch)
    with capture_llm(model) as calls:
        logits(model, batch)
    emb = calls[0]["inputs_embeds"][0]
    assert emb.shape[0] == text_len + M + 1
    rows = _video_rows(batch, model)
    # q from the question's own tokens, independently of the package's span logic
    q = question_embedding(model, proc)
    assert len(seen_q) == 1
    torch.testing.assert_close(seen_q[0], q)  # q = mean input embedding of the question tokens
    ref = vista.prune_video(x[: T * N].reshape(T, N, -1), q, None, VistaConfig(retention=retention))
    assert ref.num_tokens == M
    torch.testing.assert_close(emb[rows[:M]], ref.tokens, rtol=0, atol=0)
    torch.testing.assert_close(emb[rows[M]], x[T * N], rtol=0, atol=0)  # newline last
    info = last_prune_info(model)
    assert len(info) == 1 and info[0]["grid"] == (T, 14, 14) and info[0]["question"] == QUESTION
    assert torch.equal(info[0]["pruned"].keep, ref.keep)
    assert info[0]["timings"]["prune_s"] > 0


def test_newline_none_drops_the_newline(mp, video):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25, newline="none"), processor=proc)
    batch = inputs(proc, [video], [QUESTION])
    M = retained_count(T, N, 0.25)
    assert int((batch["input_ids"] == model.config.video_token_id).sum()) == M
    with capture_llm(model) as calls:
        logits(model, batch)
    rows = _video_rows(batch, model)
    emb = calls[0]["inputs_embeds"][0]
    torch.testing.assert_close(emb[rows], last_prune_info(model)[0]["pruned"].tokens, rtol=0, atol=0)


def test_generate_runs_and_is_deterministic(mp, video):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.15), processor=proc)
    batch = inputs(proc, [video], [QUESTION])
    _, l1 = assert_greedy_deterministic(model, batch)
    # the prefill step of generate() equals a plain forward of the pruned prompt
    torch.testing.assert_close(l1[:, 0], logits(model, batch)[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("frames", [(T, T), (T, T + 2)], ids=["same_T", "ragged_T"])
def test_batch_of_two_equals_each_alone(mp, frames):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    vids = [random_video(frames[0], 48, 48, seed=11), random_video(frames[1], 40, 56, seed=12, scenes=3)]
    qs = [QUESTION, OTHER_QUESTION]
    both = inputs(proc, vids, qs)
    ragged = frames[0] != frames[1]
    assert isinstance(both["pixel_values_videos"], list) == ragged  # stock processors cannot stack these
    sb, lb = greedy(model, both)
    assert [d["grid"][0] for d in last_prune_info(model)] == list(frames)
    info_b = last_prune_info(model)
    assert [d["question"] for d in info_b] == qs
    assert_batch_equals_each_alone(model, lambda v, q: inputs(proc, v, q), vids, qs, both, sb, lb, info_b)


def test_remove_vista_restores_stock_behaviour(mp, video):
    model, proc = mp
    ref_batch = inputs(proc, [video], [QUESTION])
    ref = logits(model, ref_batch)
    apply_vista(model, VistaConfig(retention=0.15), processor=proc)
    assert inputs(proc, [video], [QUESTION])["input_ids"].shape[1] < ref_batch["input_ids"].shape[1]
    remove_vista(model)
    batch = inputs(proc, [video], [QUESTION])
    assert torch.equal(batch["input_ids"], ref_batch["input_ids"])
    assert torch.equal(logits(model, batch), ref)
    assert last_prune_info(model) == []
    assert "forward" not in model.model.__dict__ and "replace_video_token" not in proc.__dict__


def test_apply_twice_replaces_config(mp, video):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    apply_vista(model, VistaConfig(retention=0.15))
    batch = inputs(proc, [video], [QUESTION])
    assert int((batch["input_ids"] == model.config.video_token_id).sum()) == retained_count(T, N, 0.15) + 1
    logits(model, batch)
    assert last_prune_info(model)[0]["pruned"].num_tokens == retained_count(T, N, 0.15)


def test_scout_changes_kept_tokens(mp, video):
    model, proc = mp
    cfg = VistaConfig(retention=0.25)
    apply_vista(model, cfg, processor=proc)
    batch = inputs(proc, [video], [QUESTION])
    logits(model, batch)
    plain = last_prune_info(model)[0]["pruned"]
    scout = StubScout(grid_hw=(14, 14))
    apply_vista(model, cfg, scout=scout, processor=proc)
    logits(model, batch)
    info = last_prune_info(model)[0]
    assert scout.calls and scout.calls[0][1] == QUESTION and scout.calls[0][0][0] == T
    assert not torch.equal(info["pruned"].keep, plain.keep)
    fov = info["pruned"].foveal
    assert int(fov.sum()) > 0
    # the stub favours the bottom-right corner: foveal tokens sit there
    rows = torch.arange(196).view(14, 14)
    mean_pos = (rows.flatten().float()[None].expand(T, -1))[fov].mean()
    assert mean_pos > 120
    # and generate() runs the scout with the question taken from the prompt
    scout.calls.clear()
    greedy(model, batch, n=2)
    assert scout.calls and scout.calls[0][1] == QUESTION


def test_question_override(mp, video):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    batch = inputs(proc, [video], [QUESTION])
    with torch.no_grad():
        model(**batch, question="which color is the car")
    assert last_prune_info(model)[0]["question"] == "which color is the car"
    greedy(model, batch, n=1, question=OTHER_QUESTION)
    assert last_prune_info(model)[0]["question"] == OTHER_QUESTION
    with pytest.raises(TypeError, match="question"):
        greedy(model, batch, n=1, question=3)
    with pytest.raises(ValueError, match="question"):
        greedy(model, batch, n=1, question=["a", "b"])  # one video, two questions


def test_ragged_batch_at_retention_one_matches_each_alone(mp):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=1.0), processor=proc)
    vids = [random_video(2, 32, 32, seed=1), random_video(3, 32, 32, seed=2)]
    both = inputs(proc, vids, [QUESTION, OTHER_QUESTION])
    lb = logits(model, both)
    remove_vista(model)  # the stock model, one video at a time
    for i, q in enumerate([QUESTION, OTHER_QUESTION]):
        one = inputs(proc, [vids[i]], [q])
        l1 = logits(model, one)
        n = one["input_ids"].shape[1]
        torch.testing.assert_close(lb[i, -n:], l1[0], rtol=1e-4, atol=1e-4)


def test_unpatched_processor_is_a_clear_error(mp, video):
    model, proc = mp
    batch = inputs(proc, [video], [QUESTION])  # stock processor: full count
    apply_vista(model, VistaConfig(retention=0.25))  # processor not passed
    with pytest.raises(ValueError, match="processor"):
        logits(model, batch)


def test_image_and_video_in_one_prompt(mp, video):
    import numpy as np

    model, proc = mp
    img = np.random.default_rng(0).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    text = image_video_prompt(proc)

    def run():
        b = proc(text=[text], images=[img], videos=[video], return_tensors="pt")
        with capture_llm(model) as calls:
            logits(model, b)
        return b, calls[0]["inputs_embeds"][0]

    full, e_full = run()
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    batch, e = run()
    assert batch["input_ids"].shape[1] == full["input_ids"].shape[1] - T * N + retained_count(T, N, 0.25)
    rows = (batch["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    rows_full = (full["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    assert rows.numel() == rows_full.numel() > 0
    torch.testing.assert_close(e[rows], e_full[rows_full], rtol=0, atol=0)  # images untouched
    s1, _ = greedy(model, batch, n=2)
    assert s1.shape[1] == batch["input_ids"].shape[1] + 2


def test_beam_search_expands_the_unpruned_features(mp):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    vids = [random_video(T, 48, 48, seed=11), random_video(T + 2, 40, 56, seed=12)]
    both = inputs(proc, vids, [QUESTION, OTHER_QUESTION])
    with torch.no_grad():
        out = model.generate(**both, max_new_tokens=3, num_beams=2, do_sample=False)
    assert out.shape == (2, both["input_ids"].shape[1] + 3)
    info = last_prune_info(model)  # every beam copy pruned like its sample
    assert [d["question"] for d in info] == [QUESTION, QUESTION, OTHER_QUESTION, OTHER_QUESTION]
    assert torch.equal(info[0]["pruned"].keep, info[1]["pruned"].keep)
    assert [d["grid"][0] for d in info] == [T, T, T + 2, T + 2]


@pytest.mark.gpu
def test_cuda_scout_runs_on_a_side_stream(mp, video):
    model, proc = mp
    scout = StubScout(grid_hw=(14, 14))
    apply_vista(model, VistaConfig(retention=0.25), scout=scout, processor=proc)
    model.to("cuda")
    batch = inputs(proc, [video], [QUESTION]).to("cuda")
    s1, _ = greedy(model, batch, n=2)
    info = last_prune_info(model)[0]
    st = model.__dict__["_vista_state"]
    assert len(st.side_streams) == 1  # the scout ran on vista's side stream
    pv = info["pruned"]
    assert pv.tokens.is_cuda and bool((pv.foveal <= pv.keep).all())
    assert int(pv.foveal.sum()) == int(torch.floor(pv.budgets.double().cpu() * 0.85 + 1e-9).sum())
    assert info["timings"]["scout_s"] > 0 and info["timings"]["prune_s"] > 0
    s2, _ = greedy(model, batch, n=2)
    assert torch.equal(s1, s2)


def test_retention_one_is_bit_identical_with_beams(mp, video):
    model, proc = mp
    batch = inputs(proc, [video], [QUESTION])
    s0, l0 = greedy(model, batch, n=2, num_beams=2)
    apply_vista(model, VistaConfig(retention=1.0), processor=proc)
    s1, l1 = greedy(model, batch, n=2, num_beams=2)
    assert torch.equal(s0, s1) and torch.equal(l0, l1)
    assert last_prune_info(model) == []

def test_question_list_follows_videos_through_beam_expansion(mp):
    # a sample holding two videos expands to [A, B, A, B]: the per-video questions must follow
    model, proc = mp
    v0, v1 = random_video(T, 48, 48, seed=3), random_video(T, 48, 48, seed=4, scenes=3)
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "video"}, {"type": "text", "text": QUESTION}]}]
    b = proc(text=[proc.apply_chat_template(msgs, add_generation_prompt=True)], videos=[v0, v1], return_tensors="pt")
    qa, qb = QUESTION, OTHER_QUESTION
    with torch.no_grad():
        model.generate(**b, max_new_tokens=1, do_sample=False, question=[qa, qb])
    alone = last_prune_info(model)
    assert [d["question"] for d in alone] == [qa, qb]
    with torch.no_grad():
        model.generate(**b, max_new_tokens=1, do_sample=False, num_beams=2, question=[qa, qb])
    info = last_prune_info(model)
    assert [d["question"] for d in info] == [qa, qb, qa, qb]
    for d, a in zip(info, alone + alone):
        assert torch.equal(d["pruned"].keep, a["pruned"].keep)
    with pytest.raises(ValueError, match="question"):
        greedy(model, b, n=1, num_beams=2, question=[qa, qb, qa])


def test_concurrent_generate_calls_keep_their_own_question(mp, video):
    import threading

    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    b = inputs(proc, [video], [QUESTION])
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    seen, errors = {}, []

    def hook(mod, args):  # A waits inside its vision tower until B got there too; B until A finished
        name = threading.current_thread().name
        if name == "A" and not a_in.is_set():
            a_in.set()
            b_in.wait(10)
        elif name == "B" and not b_in.is_set():
            b_in.set()
            a_done.wait(10)

    def run(q):
        try:
            with torch.no_grad():
                model.generate(**b, max_new_tokens=1, do_sample=False, question=q)
            seen[threading.current_thread().name] = last_prune_info(model)[0]["question"]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            if threading.current_thread().name == "A":
                a_done.set()

    h = model.model.vision_tower.register_forward_pre_hook(hook)
    try:
        ta = threading.Thread(target=run, args=("which color is the car",), name="A")
        tb = threading.Thread(target=run, args=("where is the dog",), name="B")
        ta.start()
        assert a_in.wait(10)
        tb.start()
        ta.join(20)
        tb.join(20)
    finally:
        h.remove()
    assert not errors and b_in.is_set()
    assert seen == {"A": "which color is the car", "B": "where is the dog"}
    st = model.__dict__["_vista_state"]
    assert st.pending is None and st.kept is None
    assert last_prune_info(model)[0]["question"] in ("which color is the car", "where is the dog")  # latest of any thread
    logits(model, b)  # a later plain forward: its own prompt's question, nothing stale
    assert last_prune_info(model)[0]["question"] == QUESTION


def test_deepcopy_is_patched_on_its_own_weights(mp, video):
    import copy

    from vista.models import is_patched

    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    b = inputs(proc, [video], [QUESTION])
    ref = logits(model, b)
    twin = copy.deepcopy(model)
    assert is_patched(twin) and twin.model.forward.__wrapped__.__self__ is twin.model
    assert twin.generate.__wrapped__.__self__ is twin
    assert torch.equal(logits(twin, b), ref)
    assert last_prune_info(twin)[0]["question"] == QUESTION
    with torch.no_grad():
        for p in twin.model.language_model.parameters():
            p.mul_(0.0)
    assert not torch.equal(logits(twin, b), ref)
    assert torch.equal(logits(model, b), ref)
    s, _ = greedy(twin, b, n=1)  # generate() of the copy runs the copy
    remove_vista(twin)  # unpatches the copy only
    assert not is_patched(twin) and "forward" not in twin.model.__dict__
    assert is_patched(model) and torch.equal(logits(model, b), ref)
    inner = copy.deepcopy(model.model)  # a part copied on its own: stock methods, bound to the copy
    assert inner.forward.__self__ is inner

