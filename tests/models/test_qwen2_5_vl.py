"""apply_vista on a tiny random Qwen2.5-VL (saved + loaded by path; no downloads)."""
from __future__ import annotations

import warnings

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
from vista.models.qwen2_5_vl import unpatchify_video
from vista.tiny_models import random_video

FRAMES = 8  # -> t = 4 temporal tokens
GRID = (4, 4, 4)  # (t, h, w) for 112x112 frames
N = 16


@pytest.fixture
def mp(load_tiny):
    return load_tiny("qwen")


@pytest.fixture(scope="module")
def video():
    return random_video(FRAMES, 112, 112, seed=5)


def _vin(proc, videos, questions):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return inputs(proc, videos, questions)


def _stock_positions(model, batch):
    pos, delta = model.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch.get("second_per_grid_ts"), attention_mask=batch["attention_mask"],
    )
    return pos, delta


def test_retention_one_is_bit_identical(mp, video):
    model, proc = mp
    ref_batch = _vin(proc, [video], [QUESTION])
    ref = logits(model, ref_batch)
    apply_vista(model, VistaConfig(retention=1.0), processor=proc)
    batch = _vin(proc, [video], [QUESTION])
    assert torch.equal(batch["input_ids"], ref_batch["input_ids"])
    assert torch.equal(logits(model, batch), ref)
    s1, l1 = greedy(model, batch, n=3)
    remove_vista(model)
    s0, l0 = greedy(model, batch, n=3)
    assert torch.equal(s0, s1) and torch.equal(l0, l1)


@pytest.mark.parametrize("retention", [0.25, 0.15])
def test_pruned_length_kept_rows_and_positions(mp, video, retention, monkeypatch):
    model, proc = mp
    full = _vin(proc, [video], [QUESTION])
    assert full["video_grid_thw"].tolist() == [[4, 8, 8]]
    x = torch.cat(model.get_video_features(full["pixel_values_videos"], full["video_grid_thw"]).pooler_output)
    with capture_llm(model) as calls:
        logits(model, full)
    pos_full = calls[0]["position_ids"][-3:, 0]  # (3, L_full)
    apply_vista(model, VistaConfig(retention=retention), processor=proc)
    batch = _vin(proc, [video], [QUESTION])
    M = retained_count(4, N, retention)
    full_tokens = 4 * N
    text_len = full["input_ids"].shape[1] - full_tokens
    assert batch["input_ids"].shape[1] == text_len + M
    seen_q = spy_prune_questions(monkeypatch)
    with capture_llm(model) as calls:
        logits(model, batch)
    emb = calls[0]["inputs_embeds"][0]
    pos = calls[0]["position_ids"][-3:, 0]
    assert emb.shape[0] == text_len + M
    q = question_embedding(model, proc)
    assert len(seen_q) == 1
    torch.testing.assert_close(seen_q[0], q)  # q = mean input embedding of the question tokens
    ref = vista.prune_video(x.reshape(4, N, -1), q, None, VistaConfig(retention=retention))
    rows = (batch["input_ids"][0] == model.config.video_token_id).nonzero().flatten()
    torch.testing.assert_close(emb[rows], ref.tokens, rtol=0, atol=0)
    # M-RoPE: kept tokens keep their original (t, h, w) ids; text around the video is unchanged
    s = int(rows[0])
    kept = ref.frame_index * N + ref.token_index
    assert torch.equal(pos[:, rows], pos_full[:, s + kept])
    assert torch.equal(pos[:, :s], pos_full[:, :s])
    assert torch.equal(pos[:, s + M :], pos_full[:, s + full_tokens :])
    info = last_prune_info(model)[0]
    assert info["grid"] == GRID and info["question"] == QUESTION
    assert torch.equal(info["pruned"].keep, ref.keep)
    # rope_deltas continue decoding from the unpruned maximum
    _, delta_full = _stock_positions(model, full)
    assert int(model.model.rope_deltas[0]) == int(delta_full[0]) + (full_tokens - M)


def test_decoding_matches_hand_built_reference(mp, video):
    model, proc = mp
    full = _vin(proc, [video], [QUESTION])
    pos_full, _ = _stock_positions(model, full)
    cfg = VistaConfig(retention=0.25)
    apply_vista(model, cfg, processor=proc)
    batch = _vin(proc, [video], [QUESTION])
    seqs, glog = greedy(model, batch, n=2)
    pv = last_prune_info(model)[0]["pruned"]
    # hand-built: pruned embeddings at the unpruned model's positions, then one decode step
    ids = batch["input_ids"]
    rows = (ids[0] == model.config.video_token_id).nonzero().flatten()
    s, M = int(rows[0]), rows.numel()
    kept = pv.frame_index * N + pv.token_index
    pos = torch.cat([pos_full[:, :, :s], pos_full[:, :, s + kept], pos_full[:, :, s + 4 * N :]], -1)
    emb = model.get_input_embeddings()(ids).clone()
    emb[0, rows] = pv.tokens
    lm = model.model.language_model
    with torch.no_grad():
        out = lm(inputs_embeds=emb, position_ids=pos, use_cache=True)
        l0 = model.lm_head(out.last_hidden_state[:, -1])
        nxt = seqs[:, ids.shape[1]]
        assert int(nxt) == int(l0.argmax(-1))
        p1 = (pos_full.max() + 1).view(1, 1, 1).expand(3, 1, 1)
        out1 = lm(inputs_embeds=model.get_input_embeddings()(nxt[:, None]), position_ids=p1, cache=out.cache, use_cache=True)
        l1 = model.lm_head(out1.last_hidden_state[:, -1])
    torch.testing.assert_close(glog[:, 0], l0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(glog[:, 1], l1, rtol=1e-5, atol=1e-5)
    # a hand-rolled decode loop (no position_ids: the model derives them from rope_deltas)
    with torch.no_grad():
        pre = model(**batch, use_cache=True)
        step = model(input_ids=nxt[:, None], cache=pre.cache, use_cache=True,
                     mm_token_type_ids=torch.zeros(1, 1, dtype=torch.long))
    torch.testing.assert_close(pre.logits[:, -1], l0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.logits[:, -1], l1, rtol=1e-5, atol=1e-5)


def test_generate_deterministic(mp, video):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.15), processor=proc)
    batch = _vin(proc, [video], [QUESTION])
    assert_greedy_deterministic(model, batch)


@pytest.mark.slow
def test_ragged_batch_equals_each_alone(mp):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    vids = [random_video(8, 112, 112, seed=21), random_video(6, 84, 112, seed=22, scenes=3)]
    qs = [QUESTION, OTHER_QUESTION]
    both = _vin(proc, vids, qs)
    grids = both["video_grid_thw"].tolist()
    assert grids[0] != grids[1]  # different frame counts and token grids
    sb, lb = greedy(model, both)
    info_b = last_prune_info(model)
    assert [d["question"] for d in info_b] == qs
    assert_batch_equals_each_alone(model, lambda v, q: _vin(proc, v, q), vids, qs, both, sb, lb, info_b)


def test_remove_vista_restores(mp, video):
    model, proc = mp
    ref_batch = _vin(proc, [video], [QUESTION])
    ref = logits(model, ref_batch)
    apply_vista(model, VistaConfig(retention=0.15), processor=proc)
    greedy(model, _vin(proc, [video], [QUESTION]), n=2)
    remove_vista(model)
    batch = _vin(proc, [video], [QUESTION])
    assert torch.equal(batch["input_ids"], ref_batch["input_ids"])
    assert torch.equal(logits(model, batch), ref)
    assert "get_rope_index" not in model.model.__dict__


def test_scout_changes_kept_tokens_with_temporal_pairs(mp, video):
    model, proc = mp
    cfg = VistaConfig(retention=0.25)
    apply_vista(model, cfg, processor=proc)
    batch = _vin(proc, [video], [QUESTION])
    logits(model, batch)
    plain = last_prune_info(model)[0]["pruned"]
    scout = StubScout(grid_hw=(8, 8), corner="top_left")
    apply_vista(model, cfg, scout=scout, processor=proc)
    greedy(model, batch, n=2)
    info = last_prune_info(model)[0]
    assert scout.calls[0][0][0] == FRAMES  # one row per frame; mapped onto t = FRAMES / 2 pairs
    assert scout.calls[0][1] == QUESTION
    assert not torch.equal(info["pruned"].keep, plain.keep)
    fov = info["pruned"].foveal
    assert int(fov.sum()) > 0
    idx = torch.arange(N).view(1, N).expand(4, N)
    assert float(idx[fov].float().mean()) < N / 2  # top-left tokens favoured


def test_unpatchify_inverts_the_processor(mp, video):
    _, proc = mp
    batch = _vin(proc, [video], [QUESTION])
    vp = proc.video_processor
    frames = unpatchify_video(batch["pixel_values_videos"], batch["video_grid_thw"][0].tolist(), vp.patch_size,
                              vp.merge_size, vp.temporal_patch_size)
    assert frames.shape == (FRAMES, 3, 112, 112)
    again, *_ = vp.patchify(frames[None], vp.patch_size, vp.merge_size, vp.temporal_patch_size)
    assert torch.equal(again[0], batch["pixel_values_videos"])
    # and the recovered frames look like the input video (up to resize + normalisation)
    mean = torch.tensor(vp.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(vp.image_std).view(1, 3, 1, 1)
    rgb = (frames * std + mean).permute(0, 2, 3, 1) * 255
    assert float((rgb - torch.from_numpy(video).float()).abs().mean()) < 3.0


@pytest.mark.slow
def test_real_tiny_scout_end_to_end(mp, video):
    scout_mod = pytest.importorskip("vista.scout")
    model, proc = mp
    scout = scout_mod.build_tiny_scout(seed=0)
    seen = []
    orig = scout.scores

    def spy(frames, question):
        seen.append((tuple(frames.shape), float(frames.min()), float(frames.max()), question))
        return orig(frames, question)

    scout.scores = spy
    apply_vista(model, VistaConfig(retention=0.25), scout=scout, processor=proc)
    batch = _vin(proc, [video], [QUESTION])
    s1, _ = greedy(model, batch, n=2)
    info = last_prune_info(model)[0]
    # frames rebuilt from the backbone's patches, de-normalised to [0, 1], at the scout's size
    assert seen and seen[0][0] == (FRAMES, 3, 224, 224) and 0.0 <= seen[0][1] and seen[0][2] <= 1.0
    assert seen[0][3] == QUESTION
    K = info["pruned"].budgets
    assert int(info["pruned"].foveal.sum()) == int(torch.floor(K.double() * 0.85 + 1e-9).sum())
    assert info["timings"]["scout_s"] > 0
    s2, _ = greedy(model, batch, n=2)
    assert torch.equal(s1, s2)


def test_image_and_video_in_one_prompt(mp, video):
    import numpy as np

    model, proc = mp
    img = np.random.default_rng(0).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    text = image_video_prompt(proc)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b = proc(text=[text], images=[img], videos=[video], return_tensors="pt")
        with capture_llm(model) as calls:
            logits(model, b)
        return b, calls[0]

    full, c_full = run()
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    batch, c = run()
    M = retained_count(4, N, 0.25)
    assert batch["input_ids"].shape[1] == full["input_ids"].shape[1] - 4 * N + M
    img_rows = (batch["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    img_rows_full = (full["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    assert img_rows.numel() == img_rows_full.numel() > 0
    # images pass through unchanged, with their own positions
    torch.testing.assert_close(c["inputs_embeds"][0, img_rows], c_full["inputs_embeds"][0, img_rows_full], rtol=0, atol=0)
    assert torch.equal(c["position_ids"][-3:, 0, img_rows], c_full["position_ids"][-3:, 0, img_rows_full])
    s1, _ = greedy(model, batch, n=3)
    assert s1.shape[1] == batch["input_ids"].shape[1] + 3


def test_beam_search_and_multiple_sequences(mp):
    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    vids = [random_video(8, 112, 112, seed=21), random_video(6, 84, 112, seed=22)]
    both = _vin(proc, vids, [QUESTION, OTHER_QUESTION])
    with torch.no_grad():
        beams = model.generate(**both, max_new_tokens=3, num_beams=2, do_sample=False)
        torch.manual_seed(0)
        many = model.generate(**both, max_new_tokens=3, num_return_sequences=2, do_sample=True)
    L = both["input_ids"].shape[1]
    assert beams.shape == (2, L + 3) and many.shape == (4, L + 3)
    info = last_prune_info(model)
    g = [(t, h // 2, w // 2) for t, h, w in both["video_grid_thw"].tolist()]
    assert [d["grid"] for d in info] == [g[0], g[0], g[1], g[1]]
    assert [d["question"] for d in info] == [QUESTION, QUESTION, OTHER_QUESTION, OTHER_QUESTION]
    assert torch.equal(info[0]["pruned"].keep, info[1]["pruned"].keep)


def _gen(model, batch, **kw):
    with torch.no_grad():
        torch.manual_seed(0)
        out = model.generate(**batch, max_new_tokens=2, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize("kw", [{"num_beams": 2, "do_sample": False},
                                {"num_return_sequences": 2, "do_sample": True}], ids=["beams", "sequences"])
def test_retention_one_is_bit_identical_with_beams(mp, video, kw):
    # the stock beam expansion turns Qwen's tuple pooler_output into a list: that is no ragged batch
    model, proc = mp
    batch = _vin(proc, [video], [QUESTION])
    s0, l0 = _gen(model, batch, **kw)
    apply_vista(model, VistaConfig(retention=1.0), processor=proc)
    s1, l1 = _gen(model, batch, **kw)
    assert torch.equal(s0, s1) and torch.equal(l0, l1)
    assert last_prune_info(model) == []


def test_image_and_video_with_beams_keeps_image_positions(mp, video):
    import numpy as np

    model, proc = mp
    img = np.random.default_rng(0).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = proc(text=[image_video_prompt(proc)], images=[img], videos=[video], return_tensors="pt")
    with capture_llm(model) as one, torch.no_grad():
        model(**batch)
    info1 = last_prune_info(model)
    for kw in ({"num_beams": 2, "do_sample": False}, {"num_return_sequences": 2, "do_sample": True}):
        with capture_llm(model) as calls:
            s, _ = _gen(model, batch, **kw)
        assert s.shape[1] == batch["input_ids"].shape[1] + 2
        pos = calls[0]["position_ids"]  # prefill of both copies: the positions of the sample alone
        assert pos.shape[1] == 2
        for b in range(2):
            assert torch.equal(pos[-3:, b], one[0]["position_ids"][-3:, 0])
        info = last_prune_info(model)
        assert len(info) == 2 and all(torch.equal(d["pruned"].keep, info1[0]["pruned"].keep) for d in info)


def test_deepcopy_runs_the_copy_s_own_weights(mp, video):
    import copy

    model, proc = mp
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    batch = _vin(proc, [video], [QUESTION])
    ref = logits(model, batch)
    twin = copy.deepcopy(model)
    assert vista.models.is_patched(twin)
    assert twin.model.get_rope_index.__wrapped__.__self__ is twin.model
    assert twin.model.forward.__wrapped__.__self__ is twin.model
    assert torch.equal(logits(twin, batch), ref)
    with torch.no_grad():
        for p in twin.model.language_model.parameters():
            p.mul_(0.5)
    assert not torch.equal(logits(twin, batch), ref)
    assert torch.equal(logits(model, batch), ref)  # the original is untouched
    # the copy shares the processor link; once the original lets go of it, the copy takes it over
    remove_vista(model)
    assert vista.models.is_patched(twin) and "replace_video_token" not in vars(proc)
    apply_vista(twin, VistaConfig(retention=0.25), processor=proc)
    again = _vin(proc, [video], [QUESTION])
    assert torch.equal(again["input_ids"], batch["input_ids"])
    remove_vista(twin)
    assert "replace_video_token" not in vars(proc)
