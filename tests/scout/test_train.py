"""Scout fine-tuning recipe (vista.scout.train) on a tiny random BLIP-2 and synthetic VG data."""
import argparse
import dataclasses
import json
import math
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
PIL_Image = pytest.importorskip("PIL.Image")

from vista.scout import train as T  # noqa: E402
from vista.scout.train.objective import _qformer_itm  # noqa: E402

# --------------------------------------------------------------------------------------------------
# synthetic Visual Genome data: coloured rectangles on coloured backgrounds

COLORS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220),
          "yellow": (235, 225, 30), "white": (245, 245, 245), "black": (10, 10, 10)}
SCENES = [  # (image_id, background, rectangle colour, side)
    (11, "white", "red", "left"), (12, "black", "green", "right"), (13, "white", "blue", "top"),
    (14, "black", "yellow", "bottom"), (15, "white", "green", "left"), (16, "black", "red", "right"),
    (17, "white", "yellow", "top"), (18, "black", "blue", "bottom"),
]
EXTRA_WORDS = ["square", "box", "on", "the", "a", "background", "small", "big", "of", "image", "rectangle"]


def _draw(bg, fg, side, w=64, h=48):
    img = PIL_Image.new("RGB", (w, h), COLORS[bg])
    box = {"left": (2, 8, 28, 40), "right": (36, 8, 62, 40), "top": (12, 2, 52, 22), "bottom": (12, 26, 52, 46)}[side]
    img.paste(COLORS[fg], box)
    return img, box


def _regions(image_id, bg, fg, side, box, rid):
    x0, y0, x1, y1 = box
    base = dict(image_id=image_id, x=x0, y=y0, width=x1 - x0, height=y1 - y0)
    return [
        dict(region_id=rid, phrase=f"a {fg} square on the {side}", **base),
        dict(region_id=rid + 1, phrase=f"{fg} box", **base),  # 2 words: dropped
        dict(region_id=rid + 2, phrase=f"the   {bg} background", **dict(base, x=0, y=0, width=64, height=48)),
        dict(region_id=rid + 3, phrase="  ", **base),  # empty: dropped
    ]


def write_vg(root, scenes=SCENES):
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    data = []
    for n, (iid, bg, fg, side) in enumerate(scenes):
        img, box = _draw(bg, fg, side)
        img.save(os.path.join(img_dir, f"{iid}.jpg"), quality=95)
        data.append({"id": iid, "regions": _regions(iid, bg, fg, side, box, 100 * (n + 1))})
    path = os.path.join(root, "region_descriptions.json")
    with open(path, "w") as fh:
        json.dump(data, fh)
    return path, img_dir


def tiny_scout(path):
    """A random tiny Blip2ForImageTextRetrieval + Blip2Processor, saved to ``path``."""
    from transformers import (BertTokenizerFast, Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor,
                              BlipImageProcessor)

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(COLORS) | set(EXTRA_WORDS) |
                                                                    {"left", "right", "top", "bottom"})
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    proc = Blip2Processor(BlipImageProcessor(size={"height": 56, "width": 56}), tok)
    vc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              image_size=56, patch_size=14, initializer_range=0.02)  # default 1e-10 -> an all-zero ViT
    qc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              encoder_hidden_size=32, vocab_size=len(tok), max_position_embeddings=64,
              cross_attention_frequency=1, use_qformer_text_input=True)
    cfg = Blip2Config(vision_config=vc, qformer_config=qc, num_query_tokens=4, image_text_hidden_size=16,
                      use_qformer_text_input=True)
    torch.manual_seed(0)
    model = Blip2ForImageTextRetrieval(cfg)
    with torch.no_grad():  # BLIP-2 initialises the query tokens to zeros: identical queries
        model.query_tokens.normal_(0.0, 0.02)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scout_train"))
    regions, images = write_vg(root)
    model_dir = tiny_scout(os.path.join(root, "base"))
    return {"root": root, "regions": regions, "images": images, "model": model_dir}


def _load(model_dir):
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    return Blip2ForImageTextRetrieval.from_pretrained(model_dir, dtype=torch.float32), AutoProcessor.from_pretrained(model_dir)


def _cfg(**kw):
    base = dict(batch_size=4, grad_accum=1, top_k=4, lr=1e-3, progress=False, val_fraction=0.0,
                eval_every=0, save_every=0, projector_hidden=24)
    base.update(kw)
    return T.ScoutTrainConfig(**base)


def _batch(env, processor, n=4):
    samples = T.load_region_descriptions(env["regions"], env["images"])
    # one phrase per image, first n images: distinct pairs
    seen, picked = set(), []
    for s in samples:
        if s.image_id not in seen and "square" in s.phrase:
            seen.add(s.image_id)
            picked.append(s)
    ds = T.RegionDataset(picked[:n])
    return T.RegionCollator(processor)([ds[i] for i in range(len(ds))])


# --------------------------------------------------------------------------------------------------
# data loading


def test_short_phrases_are_filtered_and_pairs_point_at_images(env):
    samples = T.load_region_descriptions(env["regions"], env["images"])
    assert len(samples) == 2 * len(SCENES)  # per image: the 6-word and the 3-word phrase survive
    assert all(len(s.phrase.split()) >= 3 for s in samples)
    assert not any(s.phrase.endswith(" box") for s in samples)
    assert {s.phrase for s in samples if s.image_id == 11} == {"a red square on the left", "the white background"}
    assert all(os.path.basename(s.image_path) == f"{s.image_id}.jpg" for s in samples)
    s0 = next(s for s in samples if s.region_id == 100)
    assert s0.bbox == (2.0, 8.0, 26.0, 32.0)
    # min_words is honoured (0 keeps the 2-word phrase; the empty one has 0 words and is kept too)
    assert len(T.load_region_descriptions(env["regions"], env["images"], min_words=2)) == 3 * len(SCENES)
    assert len(T.load_region_descriptions(env["regions"], env["images"], min_words=4)) == len(SCENES)
    assert len(T.load_region_descriptions(env["regions"], env["images"], max_images=3)) == 6


def _write(tmp_path, obj, raw=None):
    p = tmp_path / "rd.json"
    p.write_text(raw if raw is not None else json.dumps(obj))
    return str(p)


GOOD_REGION = {"region_id": 1, "image_id": 11, "phrase": "a red square here", "x": 0, "y": 0, "width": 5, "height": 5}


@pytest.mark.parametrize("obj, match", [
    ({"id": 11, "regions": []}, "top level must be a list"),
    ([[1, 2]], r"json_path\[0\]: must be an object"),
    ([{"regions": [GOOD_REGION]}], r'json_path\[0\]: missing "id"'),
    ([{"id": 11}], r'json_path\[0\]: missing "regions"'),
    ([{"id": "11", "regions": []}], r'\["id"\]: must be an int'),
    ([{"id": 11, "regions": {"a": 1}}], r'\["regions"\]: must be a list'),
    ([{"id": 11, "regions": [{k: v for k, v in GOOD_REGION.items() if k != "phrase"}]}],
     r'\["regions"\]\[0\]: missing "phrase"'),
    ([{"id": 11, "regions": [dict(GOOD_REGION, phrase=3)]}], r'\["phrase"\]: must be a string'),
    ([{"id": 11, "regions": [dict(GOOD_REGION, x="0")]}], r'\["x"\]: must be a number'),
    ([{"id": 11, "regions": [GOOD_REGION, dict(GOOD_REGION, image_id=12)]}], r'\["regions"\]\[1\]\["image_id"\]'),
])
def test_malformed_layout_is_a_clear_error(tmp_path, env, obj, match):
    with pytest.raises(ValueError, match=match):
        T.load_region_descriptions(_write(tmp_path, obj), env["images"])


def test_invalid_json_and_missing_files(tmp_path, env):
    with pytest.raises(ValueError, match="not valid JSON"):
        T.load_region_descriptions(_write(tmp_path, None, raw='[{"id": 11, "regions": ['), env["images"])
    with pytest.raises(FileNotFoundError, match="999.jpg"):
        T.load_region_descriptions(_write(tmp_path, [{"id": 999, "regions": [dict(GOOD_REGION, image_id=999)]}]),
                                   env["images"])
    with pytest.raises(FileNotFoundError, match="image_dir"):
        T.load_region_descriptions(env["regions"], str(tmp_path / "nope"))
    with pytest.raises(TypeError, match="image_dir"):
        T.load_region_descriptions(env["regions"], 3)
    with pytest.raises(ValueError, match="min_words"):
        T.load_region_descriptions(env["regions"], env["images"], min_words=-1)


def test_split_by_image_keeps_images_whole(env):
    samples = T.load_region_descriptions(env["regions"], env["images"])
    train, val = T.split_by_image(samples, 0.25, seed=3)
    assert len(train) + len(val) == len(samples)
    assert {s.image_id for s in val} and not ({s.image_id for s in train} & {s.image_id for s in val})
    assert len({s.image_id for s in val}) == 2
    assert T.split_by_image(samples, 0.0)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        T.split_by_image(samples, 1.0)


# --------------------------------------------------------------------------------------------------
# soft top-K mask and key feature


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_soft_topk_mask_hand_computed():
    S = torch.tensor([[0.1, 0.4, 0.3, 0.2]], dtype=torch.float64)
    m = T.soft_topk_mask(S, k=2, temperature=0.1)
    # τ = 2nd largest = 0.3 -> m = σ((S - 0.3) / 0.1) = σ([-2, 1, 0, -1])
    expect = [_sig(-2), _sig(1), 0.5, _sig(-1)]
    assert m.shape == S.shape
    assert torch.allclose(m[0], torch.tensor(expect, dtype=torch.float64), atol=1e-12)
    # v_key: weights m·S normalised; patch embeddings one-hot so v_key *is* the weight vector
    w = [e * s for e, s in zip(expect, [0.1, 0.4, 0.3, 0.2])]
    w = [x / sum(w) for x in w]
    v = T.key_visual_feature(torch.eye(4, dtype=torch.float64)[None], S, k=2, temperature=0.1)
    assert torch.allclose(v[0].double(), torch.tensor(w, dtype=torch.float64), atol=1e-6)
    # lower temperature -> closer to the hard top-2 (0.4 and 0.3 patches only)
    v_sharp = T.key_visual_feature(torch.eye(4)[None], S.float(), k=2, temperature=1e-3)
    assert torch.allclose(v_sharp[0], torch.tensor([0.0, 0.4 / 0.55, 0.15 / 0.55, 0.0]), atol=1e-4)


def test_key_feature_with_max_normalised_scores():
    S = torch.tensor([[0.01, 0.04, 0.03, 0.02]])
    # literal: (S - τ)/T spans only ±0.2 -> mask near 0.5; "max": S/0.04 -> σ([-5, 2.5, 0, -2.5])
    m = [_sig((x - 0.75) / 0.1) for x in (0.25, 1.0, 0.75, 0.5)]
    w = [a * b for a, b in zip(m, (0.01, 0.04, 0.03, 0.02))]
    w = [x / sum(w) for x in w]
    v = T.key_visual_feature(torch.eye(4)[None], S, k=2, temperature=0.1, score_norm="max")
    assert torch.allclose(v[0], torch.tensor(w), atol=1e-6)
    v_lit = T.key_visual_feature(torch.eye(4)[None], S, k=2, temperature=0.1)
    assert not torch.allclose(v_lit, v, atol=1e-3)
    with pytest.raises(ValueError, match="score_norm"):
        T.key_visual_feature(torch.eye(4)[None], S, k=2, score_norm="sum")


def test_soft_topk_mask_k_larger_than_patch_count():
    S = torch.tensor([[0.5, 0.2, 0.3], [0.0, 0.9, 0.1]])
    m = T.soft_topk_mask(S, k=64, temperature=0.1)
    # τ = row minimum -> the minimum gets exactly 0.5, the rest more
    expect = torch.tensor([[_sig(3.0), 0.5, _sig(1.0)], [0.5, _sig(9.0), _sig(1.0)]])
    assert torch.allclose(m, expect, atol=1e-6)
    assert torch.equal(T.soft_topk_mask(S, k=3, temperature=0.1), m)
    # 1-D input works too
    assert torch.allclose(T.soft_topk_mask(S[0], k=64), expect[0], atol=1e-6)


def test_soft_topk_bad_arguments():
    S = torch.rand(2, 5)
    with pytest.raises(ValueError, match="k must"):
        T.soft_topk_mask(S, k=0)
    with pytest.raises(ValueError, match="temperature"):
        T.soft_topk_mask(S, k=2, temperature=0.0)
    with pytest.raises(ValueError, match="scores"):
        T.soft_topk_mask(torch.rand(2, 3, 4), k=2)
    with pytest.raises(ValueError, match="scores must have shape"):
        T.key_visual_feature(torch.rand(2, 5, 3), torch.rand(2, 4), k=2)
    with pytest.raises(ValueError, match="non-negative"):
        T.key_visual_feature(torch.rand(2, 5, 3), -torch.rand(2, 5), k=2)


def test_patch_importance_is_eq6_max_over_heads_sum_over_queries_and_drops_cls():
    a = torch.zeros(1, 2, 3, 5)
    a[0, 0, :, 1] = 1.0  # head 0: every query on patch 0 (key 1)
    a[0, 1, 0, 4] = 1.0  # head 1, query 0: patch 3
    a[0, 1, 1:, 0] = 1.0  # head 1, queries 1,2: CLS
    a[0, 1, 1, 2] = 0.25  # head 1, query 1: a bit on patch 1
    S = T.patch_importance(a)
    # Σ_queries max_heads: patch 0 -> 3 · 1, patch 1 -> 0.25, patch 2 -> 0, patch 3 -> 1 (query 0 only)
    assert torch.allclose(S, torch.tensor([[3.0, 0.25, 0.0, 1.0]]))
    import vista_kernels as vk

    torch.testing.assert_close(S, vk.scout_score_reduce(a[..., 1:].contiguous()), rtol=0, atol=1e-6)  # = inference
    assert torch.allclose(T.patch_importance(a[..., 1:], num_prefix_tokens=0), S)
    with pytest.raises(ValueError, match="cross_attention"):
        T.patch_importance(torch.zeros(2, 3, 4))


def _tiny_scout_inputs(n=4):
    from vista.scout import build_tiny_scout

    sc = build_tiny_scout(seed=0)
    g = torch.Generator().manual_seed(0)
    pv = sc.preprocess(torch.rand(n, 3, 224, 224, generator=g))
    ids, am = sc.tokenize(["what is the man holding", "a red car on the left", "who is there", "the dog"][:n])
    with torch.no_grad():
        img = sc.model.vision_model(pixel_values=pv).last_hidden_state
    return sc, img, ids, am


def test_default_soft_topk_mask_is_a_real_top_k_on_the_tiny_scout():
    """S on eq. 6's scale (Σ queries, max heads): σ((S − τ)/T) spans most of (0, 1) and exactly K
    patches reach 0.5; the old mean over heads and queries (S ≈ 1/P) left the mask ≈ 0.5 everywhere."""
    sc, img, ids, am = _tiny_scout_inputs()
    with torch.no_grad():
        _, cross = _qformer_itm(sc.model, img, ids, am)
    assert cross.shape == (4, 4, 8, 256)
    S = T.patch_importance(cross, num_prefix_tokens=0)
    cfg = T.ScoutTrainConfig()
    for K, low in ((cfg.top_k, 0.35), (16, 0.05)):
        m = T.soft_topk_mask(S, K, cfg.mask_temperature)
        assert ((m >= 0.5).sum(1) == K).all(), (K, (m >= 0.5).sum(1))
        assert (m.amax(1) > 0.95).all() and (m.amin(1) < low).all(), (K, m.amin(1), m.amax(1))
    m_old = T.soft_topk_mask(cross.mean(dim=(1, 2)), cfg.top_k, cfg.mask_temperature)
    assert float(m_old.max() - m_old.min()) < 0.2  # what the mean reduction gave: no top-K at all


def test_mask_scores_are_pre_dropout_probabilities_in_training():
    from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerMultiHeadAttention

    sc, img, ids, am = _tiny_scout_inputs()
    model = sc.model
    for mod in model.qformer.modules():
        if isinstance(mod, Blip2QFormerMultiHeadAttention):
            mod.attention_dropout = 0.0
        elif isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    scored = model.qformer.encoder.layer[-1].crossattention.attention
    scored.attention_dropout = 0.5  # only the scored layer's attention probabilities see dropout
    with torch.no_grad():
        model.eval()
        logits_eval, cross_eval = _qformer_itm(model, img, ids, am)
        model.train()
        torch.manual_seed(0)
        logits_train, cross_train = _qformer_itm(model, img, ids, am)
        model.eval()
    assert (logits_train - logits_eval).abs().max() > 1e-4  # dropout did act on the forward ...
    torch.testing.assert_close(cross_train, cross_eval, rtol=1e-6, atol=1e-7)  # ... but not on S's input
    with torch.no_grad():
        torch.testing.assert_close(cross_eval, sc._scored_attention(img, ids, am), rtol=0, atol=0)  # = inference


# --------------------------------------------------------------------------------------------------
# hard negatives


def test_hard_negatives_are_never_positive():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 3, 3, 4])  # two images carry two phrases each
    texts = ["a red square"] * 1 + ["b"] + ["c", "d", "e", "f", "a  Red square"]  # text 6 == text 0
    pos = T.positive_pair_mask(ids, texts)
    assert pos[0, 1] and pos[1, 0] and pos[0, 6] and pos[6, 0] and not pos[0, 2]
    for _ in range(200):
        sim = torch.randn(7, 7, generator=g) * 5
        sim += 20 * torch.eye(7)  # positives are by far the most similar: must still be excluded
        nt, ni = T.sample_hard_negatives(sim, pos, g)
        assert not pos[torch.arange(7), nt].any()
        assert not pos[ni, torch.arange(7)].any()


def test_hard_negatives_follow_the_similarities():
    g = torch.Generator().manual_seed(1)
    pos = torch.eye(4, dtype=torch.bool)
    sim = torch.zeros(4, 4)
    sim[0, 2] = 8.0  # image 0 is very similar to phrase 2 -> phrase 2 is its hard negative
    sim[3, 1] = 8.0  # phrase 1's hardest image is image 3
    counts_t = torch.zeros(4)
    counts_i = torch.zeros(4)
    for _ in range(300):
        nt, ni = T.sample_hard_negatives(sim, pos, g)
        counts_t[nt[0]] += 1
        counts_i[ni[1]] += 1
    assert counts_t[2] > 250 and counts_t[0] == 0  # exp(8)/(exp(8)+2) ≈ 0.999
    assert counts_i[3] > 250 and counts_i[1] == 0


def test_hard_negative_sampler_errors_without_a_distinct_pair():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="at least two distinct image-text pairs"):
        T.sample_hard_negatives(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), g)
    same = T.positive_pair_mask(torch.tensor([5, 5, 5]))
    with pytest.raises(ValueError, match="at least two distinct image-text pairs"):
        T.sample_hard_negatives(torch.randn(3, 3), same, g)
    with pytest.raises(ValueError, match="sim_i2t"):
        T.sample_hard_negatives(torch.randn(3, 2), torch.eye(3, dtype=torch.bool), g)
    with pytest.raises(ValueError, match="finite"):
        T.sample_hard_negatives(torch.full((2, 2), float("nan")), torch.eye(2, dtype=torch.bool), g)


# --------------------------------------------------------------------------------------------------
# losses, gradients, frozen encoder, overfitting


def _grads(loss, params):
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in gs]


def test_losses_finite_with_the_right_gradient_paths(env):
    model, proc = _load(env["model"])
    T.freeze_vision_encoder(model)
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    proj = T.KeyTokenProjector(32, 16, hidden_dim=24)
    model.train()
    model.vision_model.eval()
    batch = _batch(env, proc)
    losses = T.compute_scout_losses(model, proj, batch, _cfg(), torch.Generator().manual_seed(0))
    for k in ("itm", "itc", "align", "total"):
        assert losses[k].dim() == 0 and torch.isfinite(losses[k]), k
    assert torch.allclose(losses["total"], losses["itm"] + losses["itc"] + 2.0 * losses["align"])
    assert 0.0 <= float(losses["align"].detach()) <= 2.0

    ca = model.qformer.encoder.layer[-1].crossattention.attention
    named = {
        "itm_head": model.itm_head.weight, "vision_projection": model.vision_projection.weight,
        "text_projection": model.text_projection.weight, "query_tokens": model.query_tokens,
        "cross_key": ca.key.weight, "projector_in": proj.net[0].weight, "projector_out": proj.net[4].weight,
        "word_embeddings": model.embeddings.word_embeddings.weight,
    }
    names, params = list(named), list(named.values())
    got = {k: dict(zip(names, _grads(losses[k], params))) for k in ("itm", "itc", "align")}
    # ITM trains the Q-Former and its head, not the contrastive projections or Φ
    assert got["itm"]["itm_head"] and got["itm"]["query_tokens"] and got["itm"]["cross_key"]
    assert got["itm"]["word_embeddings"]
    assert not got["itm"]["vision_projection"] and not got["itm"]["projector_in"]
    # ITC trains both projections and the queries, not the ITM head or Φ
    assert got["itc"]["vision_projection"] and got["itc"]["text_projection"] and got["itc"]["query_tokens"]
    assert not got["itc"]["itm_head"] and not got["itc"]["projector_out"]
    # Align trains Φ, the text side, and (through S) the Q-Former cross-attention
    assert got["align"]["projector_in"] and got["align"]["projector_out"] and got["align"]["text_projection"]
    assert got["align"]["cross_key"] and got["align"]["query_tokens"]
    assert not got["align"]["itm_head"] and not got["align"]["vision_projection"]


def test_overfit_fixed_batch_and_vision_encoder_untouched(env, tmp_path):
    model, proc = _load(env["model"])
    samples = T.load_region_descriptions(env["regions"], env["images"])
    vision_before = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    trainer = T.ScoutTrainer(model, proc, samples, [], _cfg(lr=2e-3), str(tmp_path / "out"))
    assert not model.vision_model.training
    batch = _batch(env, proc)
    totals = []
    for _ in range(30):
        totals.append(trainer.train_step([batch])["total"])
        assert not model.vision_model.training and model.qformer.training
    first, last = sum(totals[:3]) / 3, sum(totals[-3:]) / 3
    assert all(math.isfinite(t) for t in totals)
    assert last < 0.6 * first, (first, last, totals)
    after = model.vision_model.state_dict()
    assert all(torch.equal(vision_before[k], after[k]) for k in vision_before)
    assert all(p.grad is None for p in model.vision_model.parameters())


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        T.ScoutTrainConfig(batch_size=1).validate()
    with pytest.raises(ValueError, match="lr"):
        T.ScoutTrainConfig(lr=0.0).validate()
    with pytest.raises(TypeError, match="top_k"):
        T.ScoutTrainConfig(top_k=2.5).validate()
    with pytest.raises(ValueError, match="mask_temperature"):
        T.ScoutTrainConfig(mask_temperature=-1).validate()
    with pytest.raises(ValueError, match="lr_schedule"):
        T.ScoutTrainConfig(lr_schedule="linear").validate()
    d = T.ScoutTrainConfig()
    assert (d.lr, d.batch_size, d.grad_accum, d.alpha, d.top_k, d.mask_temperature) == (5e-5, 16, 20, 2.0, 64, 0.1)
    with pytest.raises(ValueError, match="in_dim"):
        T.KeyTokenProjector(0, 4)


# --------------------------------------------------------------------------------------------------
# end to end: checkpoints, exact resume, best, loadable result, CLI


def _train_records(history):
    return {r["step"]: r for r in history if r["split"] == "train"}


def test_resume_reproduces_the_next_step_exactly(env, tmp_path):
    cfg = _cfg(grad_accum=2, max_steps=3, save_every=2, eval_every=2, val_fraction=0.25, save_total_limit=0,
               lr_schedule="cosine", warmup_steps=1)
    out_a = str(tmp_path / "a")
    hist_a = T.train_scout(env["model"], env["regions"], env["images"], out_a, cfg, device="cpu")
    rec_a = _train_records(hist_a)
    assert sorted(rec_a) == [1, 2, 3]
    # 12 training pairs, batch 4 -> 3 batches an epoch; steps use 2: resume lands mid-epoch
    assert os.path.isfile(os.path.join(out_a, "checkpoint-2", "trainer_state.pt"))
    assert os.path.isfile(os.path.join(out_a, "checkpoint-3", "trainer_state.pt"))

    out_b = str(tmp_path / "b")
    hist_b = T.train_scout(env["model"], env["regions"], env["images"], out_b, cfg, device="cpu",
                           resume_from=os.path.join(out_a, "checkpoint-2"))
    rec_b = _train_records(hist_b)
    assert sorted(rec_b) == [3]
    for k in ("itm", "itc", "align", "total"):
        assert rec_b[3][k] == rec_a[3][k], k  # bit-exact on CPU
    from safetensors.torch import load_file

    wa = load_file(os.path.join(out_a, "checkpoint-3", T.PROJECTOR_WEIGHTS_NAME))
    wb = load_file(os.path.join(out_b, "checkpoint-3", T.PROJECTOR_WEIGHTS_NAME))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # a different seed gives a different step-3 loss (so the equality above is not vacuous)
    out_c = str(tmp_path / "c")
    cfg_c = _cfg(grad_accum=2, max_steps=3, save_every=0, eval_every=0, val_fraction=0.25, seed=1,
                 lr_schedule="cosine", warmup_steps=1)
    rec_c = _train_records(T.train_scout(env["model"], env["regions"], env["images"], out_c, cfg_c, device="cpu"))
    assert rec_c[3]["total"] != rec_a[3]["total"]

    # validation ran, "best" was kept, and the result loads
    vals = [r for r in hist_a if r["split"] == "val"]
    assert [r["step"] for r in vals] == [2, 3] and all(math.isfinite(r["total"]) for r in vals)
    best = json.load(open(os.path.join(out_a, "best", "best.json")))
    assert best["step"] == min(vals, key=lambda r: r["total"])["step"]
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    for d in (out_a, os.path.join(out_a, "best")):
        m = Blip2ForImageTextRetrieval.from_pretrained(d)
        assert m.config.vision_config.hidden_size == 32
        AutoProcessor.from_pretrained(d)
        proj = T.load_projector(d)
        assert (proj.in_dim, proj.out_dim, proj.hidden_dim) == (32, 16, 24)
    # the exported root is the best model
    from safetensors.torch import load_file as lf

    root_w, best_w = lf(os.path.join(out_a, "model.safetensors")), lf(os.path.join(out_a, "best", "model.safetensors"))
    assert all(torch.equal(root_w[k], best_w[k]) for k in best_w)
    # the vision tower in the output equals the base model's
    base_w = lf(os.path.join(env["model"], "model.safetensors"))
    vis = [k for k in base_w if k.startswith("vision_model.")]
    assert vis and all(torch.equal(base_w[k], root_w[k]) for k in vis)
    scout_mod = pytest.importorskip("vista.scout")
    if hasattr(scout_mod, "SemanticScout"):
        scout_mod.SemanticScout.from_pretrained(out_a)


@pytest.fixture(scope="module")
def run_a(env, tmp_path_factory):
    """3 steps (constant lr, batch 4 of 16 pairs: checkpoint-2 is mid-epoch), a checkpoint each step."""
    out = str(tmp_path_factory.mktemp("resume_a"))
    cfg = _cfg(max_steps=3, save_every=1, save_total_limit=0)
    hist = T.train_scout(env["model"], env["regions"], env["images"], out, cfg, device="cpu")
    return {"out": out, "cfg": cfg, "rec": _train_records(hist), "ckpt": os.path.join(out, "checkpoint-2")}


def _trainer(env, tmp_path, cfg, train=None):
    model, proc = _load(env["model"])
    if train is None:
        samples = T.load_region_descriptions(env["regions"], env["images"], min_words=cfg.min_words)
        train = T.split_by_image(samples, cfg.val_fraction, seed=cfg.seed)[0]
    return T.ScoutTrainer(model, proc, train, [], cfg, str(tmp_path / "b"), device="cpu")


@pytest.mark.parametrize("change, expect", [
    (dict(batch_size=3), "batch_size: 4 -> 3"),  # the data position is counted in old-size batches
    (dict(seed=1), "seed: 0 -> 1"),  # the shuffle order
    (dict(lr=2e-3), "lr: 0.001 -> 0.002"),  # would be silently overwritten by the optimizer state
    (dict(grad_accum=2), "grad_accum: 1 -> 2"),
    (dict(weight_decay=0.1), "weight_decay: 0.05 -> 0.1"),  # also lives in the optimizer state
    (dict(warmup_steps=2), "warmup_steps: 0 -> 2"),
    (dict(lr_schedule="cosine"), "lr_schedule: 'constant' -> 'cosine'"),
    (dict(alpha=1.0), "alpha: 2.0 -> 1.0"),
    (dict(min_words=2), "min_words: 3 -> 2"),
])
def test_resume_refuses_a_changed_setting(env, run_a, tmp_path, change, expect):
    cfg = dataclasses.replace(run_a["cfg"], **change)
    trainer = _trainer(env, tmp_path, cfg)
    before = {k: v.clone() for k, v in trainer.projector.state_dict().items()}
    with pytest.raises(ValueError, match="new --output") as ei:
        trainer.load_checkpoint(run_a["ckpt"])
    assert expect in str(ei.value)
    assert trainer.step == 0  # nothing was restored
    assert all(torch.equal(before[k], v) for k, v in trainer.projector.state_dict().items())


def test_resume_names_every_changed_setting_through_train_scout(env, run_a, tmp_path):
    cfg = dataclasses.replace(run_a["cfg"], batch_size=6, seed=1, lr=5e-4, max_steps=5)
    with pytest.raises(ValueError) as ei:
        T.train_scout(env["model"], env["regions"], env["images"], str(tmp_path / "b"), cfg, device="cpu",
                      resume_from=run_a["ckpt"])
    msg = str(ei.value)
    assert "batch_size: 4 -> 6" in msg and "seed: 0 -> 1" in msg and "lr: 0.001 -> 0.0005" in msg
    assert "max_steps" not in msg  # a longer run is fine with a constant schedule
    assert not os.path.exists(os.path.join(str(tmp_path / "b"), "log.jsonl"))


def test_resume_with_more_steps_and_other_logging_is_exact(env, run_a, tmp_path):
    cfg = dataclasses.replace(run_a["cfg"], max_steps=5, eval_every=1, save_every=2, save_total_limit=1,
                              max_eval_batches=3, num_workers=0, bf16=False)
    out_b = str(tmp_path / "b")
    rec_b = _train_records(T.train_scout(env["model"], env["regions"], env["images"], out_b, cfg, device="cpu",
                                         resume_from=run_a["ckpt"]))
    assert sorted(rec_b) == [3, 4, 5]
    for k in ("itm", "itc", "align", "total", "lr"):
        assert rec_b[3][k] == run_a["rec"][3][k], k  # bit-exact on CPU
    # and the new run's checkpoints resume in turn
    T.train_scout(env["model"], env["regions"], env["images"], out_b, dataclasses.replace(cfg, max_steps=6),
                  device="cpu", resume_from="auto")


def test_cosine_schedule_length_cannot_change_on_resume(env, tmp_path):
    cfg = _cfg(max_steps=2, save_every=1, lr_schedule="cosine")
    out = str(tmp_path / "a")
    T.train_scout(env["model"], env["regions"], env["images"], out, cfg, device="cpu")
    ckpt = os.path.join(out, "checkpoint-1")
    with pytest.raises(ValueError, match=r"max_steps \(length of the cosine lr schedule.*2 -> 5"):
        _trainer(env, tmp_path, dataclasses.replace(cfg, max_steps=5)).load_checkpoint(ckpt)
    # max_steps=None with epochs=1 is 16 // 4 = 4 steps: also a different schedule length
    with pytest.raises(ValueError, match="2 -> 4"):
        _trainer(env, tmp_path, dataclasses.replace(cfg, max_steps=None)).load_checkpoint(ckpt)
    # the same length spelled through epochs is accepted (4 batches an epoch, 2 epochs = 8 steps)
    cfg8 = dataclasses.replace(cfg, max_steps=8, save_every=4)
    out8 = str(tmp_path / "eight")
    T.train_scout(env["model"], env["regions"], env["images"], out8, cfg8, device="cpu")
    t = _trainer(env, tmp_path, dataclasses.replace(cfg8, max_steps=None, epochs=2))
    t.load_checkpoint(os.path.join(out8, "checkpoint-4"))
    assert (t.step, t.max_steps) == (4, 8)


def test_resume_refuses_other_training_pairs_of_the_same_count(env, run_a, tmp_path):
    samples = T.load_region_descriptions(env["regions"], env["images"])
    trainer = _trainer(env, tmp_path, run_a["cfg"], train=samples[::-1])
    with pytest.raises(ValueError, match="different training pairs"):
        trainer.load_checkpoint(run_a["ckpt"])
    # moving the image folder is fine: paths are not part of the fingerprint
    moved = [dataclasses.replace(s, image_path="/elsewhere/" + os.path.basename(s.image_path)) for s in samples]
    trainer = _trainer(env, tmp_path, run_a["cfg"], train=moved)
    trainer.load_checkpoint(run_a["ckpt"])
    assert trainer.step == 2


def test_resume_from_a_checkpoint_without_the_new_keys(env, run_a, tmp_path):
    """Checkpoints written before the fingerprint / effective max_steps existed still resume, and
    their saved config is still checked."""
    import shutil

    old = str(tmp_path / "old-checkpoint-2")
    shutil.copytree(run_a["ckpt"], old)
    path = os.path.join(old, "trainer_state.pt")
    state = torch.load(path, weights_only=True)
    del state["train_fingerprint"], state["max_steps"]
    torch.save(state, path)
    trainer = _trainer(env, tmp_path, dataclasses.replace(run_a["cfg"], max_steps=9))
    trainer.load_checkpoint(old)
    assert (trainer.step, trainer.batch_in_epoch) == (2, 2)
    with pytest.raises(ValueError, match="seed: 0 -> 3"):
        _trainer(env, tmp_path, dataclasses.replace(run_a["cfg"], seed=3)).load_checkpoint(old)


def test_cli_parser_and_command(env, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vista")
    sub = parser.add_subparsers(dest="command", required=True)
    from vista.cli import train_scout as C

    assert T.add_train_scout_parser is C.add_train_scout_parser  # still importable from vista.scout.train
    C.add_train_scout_parser(sub)
    a = parser.parse_args(["train-scout", "--regions", "r.json", "--images", "i1", "--images", "i2", "--output", "o"])
    assert a.images == ["i1", "i2"] and a.func is C.cmd_train_scout is T.cmd_train_scout
    cfg = C._config_from_args(a)
    assert (cfg.lr, cfg.batch_size, cfg.grad_accum, cfg.alpha, cfg.top_k, cfg.mask_temperature) == \
        (5e-5, 16, 20, 2.0, 64, 0.1)
    out = str(tmp_path / "cli")
    args = parser.parse_args([
        "train-scout", "--model", env["model"], "--regions", env["regions"], "--images", env["images"],
        "--output", out, "--batch-size", "4", "--grad-accum", "1", "--max-steps", "2", "--top-k", "4",
        "--val-fraction", "0", "--no-progress", "--device", "cpu", "--projector-hidden", "8",
    ])
    assert args.func(args) == 0
    assert "trained to step 2" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, T.PROJECTOR_WEIGHTS_NAME))
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert os.path.isdir(os.path.join(out, "checkpoint-2"))
    lines = [json.loads(x) for x in open(os.path.join(out, "log.jsonl"))]
    assert [r["step"] for r in lines] == [1, 2]
    # --resume auto picks checkpoint-2 and continues to step 3
    args2 = parser.parse_args([
        "train-scout", "--model", env["model"], "--regions", env["regions"], "--images", env["images"],
        "--output", out, "--batch-size", "4", "--grad-accum", "1", "--max-steps", "3", "--top-k", "4",
        "--val-fraction", "0", "--no-progress", "--device", "cpu", "--projector-hidden", "8", "--resume", "auto",
    ])
    assert args2.func(args2) == 0
    lines = [json.loads(x) for x in open(os.path.join(out, "log.jsonl"))]
    assert [r["step"] for r in lines] == [1, 2, 3]


def test_train_from_build_tiny_scout_and_score_with_the_result(env, tmp_path):
    scout_mod = pytest.importorskip("vista.scout")
    if not hasattr(scout_mod, "build_tiny_scout"):
        pytest.skip("vista.scout.build_tiny_scout not available")
    base = str(tmp_path / "tiny")
    before = scout_mod.build_tiny_scout(base, seed=0)
    out = str(tmp_path / "out")
    cfg = _cfg(max_steps=1, mask_score_norm="max", projector_hidden=None)
    hist = T.train_scout(base, env["regions"], env["images"], out, cfg, device="cpu")
    assert math.isfinite(hist[-1]["total"])
    scout = scout_mod.SemanticScout.from_pretrained(out)
    frames = torch.rand(2, 3, 64, 64)
    s_after = scout.scores(frames, "what is on the left?")
    s_before = before.scores(frames, "what is on the left?")
    assert s_after.shape == s_before.shape and torch.isfinite(s_after).all()
    assert not torch.equal(s_after, s_before)  # the Q-Former did change
    assert T.load_projector(out).in_dim == 32


# --------------------------------------------------------------------------------------------------
# nothing executed from a file (issue 14.1), nothing lost on a kill (issue 14.2)


class _Payload:
    """Unpickling this runs os.mkdir(path): what a planted trainer_state.pt could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _copy_checkpoint(run_a, tmp_path, name="checkpoint-2"):
    import shutil

    dst = str(tmp_path / name)
    shutil.copytree(run_a["ckpt"], dst)
    return dst


def test_genuine_trainer_state_loads_with_weights_only(run_a):
    state = torch.load(os.path.join(run_a["ckpt"], T.TRAINER_STATE_NAME), weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (2, 0, 2)
    assert isinstance(state["torch_rng"], torch.Tensor) and isinstance(state["neg_generator"], torch.Tensor)
    assert state["config"]["seed"] == 0 and state["optimizer"]["state"]
    assert T.read_trainer_state(os.path.join(run_a["ckpt"], T.TRAINER_STATE_NAME))["step"] == 2


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_planted_pickle_is_refused_and_never_runs(env, run_a, tmp_path, how, capsys):
    import pickle

    from vista.cli import main

    ckpt = _copy_checkpoint(run_a, tmp_path)
    marker = str(tmp_path / "payload-ran")
    state_path = os.path.join(ckpt, T.TRAINER_STATE_NAME)
    planted = {"step": 2, "optimizer": _Payload(marker)}
    if how == "torch.save":
        torch.save(planted, state_path)
    else:
        with open(state_path, "wb") as fh:
            pickle.dump(planted, fh)
    with pytest.raises(ValueError, match="refused without running anything") as ei:
        T.read_trainer_state(state_path)
    assert state_path in str(ei.value)
    with pytest.raises(ValueError, match="refused"):
        _trainer(env, tmp_path, run_a["cfg"]).load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="refused"):
        T.train_scout(env["model"], env["regions"], env["images"], str(tmp_path / "b"), run_a["cfg"],
                      device="cpu", resume_from=ckpt)
    capsys.readouterr()
    rc = main(["train-scout", "--model", env["model"], "--regions", env["regions"], "--images", env["images"],
               "--output", str(tmp_path / "c"), "--resume", ckpt, "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "refused without running anything" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(marker)  # the payload never ran


def test_damaged_trainer_states_are_clear_errors(run_a, tmp_path):
    ckpt = _copy_checkpoint(run_a, tmp_path)
    path = os.path.join(ckpt, T.TRAINER_STATE_NAME)
    data = open(path, "rb").read()
    open(path, "wb").close()
    with pytest.raises(ValueError, match=r"empty \(0 bytes\)"):
        T.read_trainer_state(path)
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        T.read_trainer_state(path)
    torch.save({"step": 2}, path)
    with pytest.raises(ValueError, match="missing 'epoch'"):
        T.read_trainer_state(path)
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="not a dict"):
        T.read_trainer_state(path)


def _log_steps(out):
    return [(r["step"], r["split"]) for r in map(json.loads, open(os.path.join(out, "log.jsonl")))]


def test_resume_auto_skips_a_checkpoint_killed_mid_save_and_truncates_the_log(env, run_a, tmp_path, capsys):
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(run_a["out"], out)
    assert _log_steps(out) == [(1, "train"), (2, "train"), (3, "train")]
    # what a kill during the step-3 save leaves: a 0-byte trainer_state.pt in the newest folder (the
    # old in-place writer), a half-written temporary folder (the new writer) and a torn log line
    open(os.path.join(out, "checkpoint-3", T.TRAINER_STATE_NAME), "wb").close()
    os.makedirs(os.path.join(out, ".tmp-checkpoint-4-12345"))
    open(os.path.join(out, ".tmp-checkpoint-4-12345", "model.safetensors"), "wb").close()
    with open(os.path.join(out, "log.jsonl"), "a") as fh:
        fh.write('{"step": 4, "spl')
    os.makedirs(os.path.join(out, ".tmp-notes"))  # not ours: left alone
    capsys.readouterr()
    hist = T.train_scout(env["model"], env["regions"], env["images"], out, run_a["cfg"], device="cpu",
                         resume_from="auto")
    err = capsys.readouterr().err
    assert "skipping" in err and "checkpoint-3" in err and "empty (0 bytes)" in err
    rec = _train_records(hist)
    assert sorted(rec) == [3]  # resumed from checkpoint-2
    for k in ("itm", "itc", "align", "total", "lr"):
        assert rec[3][k] == run_a["rec"][3][k], k  # bit-exact on CPU
    assert _log_steps(out) == [(1, "train"), (2, "train"), (3, "train")]  # no duplicate, no torn line
    assert [n for n in os.listdir(out) if n.startswith(".")] == [".tmp-notes"]  # ours cleaned up
    assert T.read_trainer_state(os.path.join(out, "checkpoint-3", T.TRAINER_STATE_NAME))["step"] == 3
    # every checkpoint damaged: a fresh start (with a note), never an internal error
    for n in ("checkpoint-1", "checkpoint-2"):
        os.remove(os.path.join(out, n, "model.safetensors"))
    with open(os.path.join(out, "checkpoint-3", T.TRAINER_STATE_NAME), "r+b") as fh:
        fh.truncate(100)
    hist = T.train_scout(env["model"], env["regions"], env["images"], out, run_a["cfg"], device="cpu",
                         resume_from="auto")
    err = capsys.readouterr().err
    assert "trainer_state.pt is truncated or corrupt" in err
    assert err.count("skipping") == 3 and "model.safetensors is missing" in err and "starting from" in err
    assert sorted(_train_records(hist)) == [1, 2, 3]
    assert _log_steps(out) == [(1, "train"), (2, "train"), (3, "train")]


def test_a_failed_save_leaves_no_checkpoint_folder(env, run_a, tmp_path, monkeypatch):
    trainer = _trainer(env, tmp_path, run_a["cfg"])
    trainer.load_checkpoint(run_a["ckpt"])
    real = torch.save

    def broken(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    monkeypatch.setattr(torch, "save", real)
    assert not os.path.exists(os.path.join(trainer.output_dir, "checkpoint-2"))
    assert not [n for n in os.listdir(trainer.output_dir) if n.startswith(".tmp-")]
    d = trainer.save_checkpoint()
    assert os.path.basename(d) == "checkpoint-2" and T.read_trainer_state(os.path.join(d, T.TRAINER_STATE_NAME))
    d2 = trainer.save_checkpoint()  # saving the same step again replaces the folder whole
    assert d2 == d and sorted(os.listdir(trainer.output_dir)) == ["checkpoint-2"]


_KILL_SCRIPT = """
import os, signal, sys
import torch
from vista.scout import train as T

real_save = torch.save


def save_then_die(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if isinstance(obj, dict) and obj.get("step") == 3:  # half of the step-3 state is on disk: SIGKILL
        os.truncate(f, os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)


torch.save = save_then_die
torch.set_num_threads(1)
model, regions, images, out = sys.argv[1:5]
cfg = T.ScoutTrainConfig(batch_size=4, grad_accum=1, top_k=4, lr=1e-3, progress=False, val_fraction=0.0,
                         eval_every=0, save_every=1, save_total_limit=0, projector_hidden=24, max_steps=3)
T.train_scout(model, regions, images, out, cfg, device="cpu")
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_then_resume_auto(env, run_a, tmp_path):
    import subprocess
    import sys

    out = str(tmp_path / "killed")
    script = tmp_path / "train_and_die.py"
    script.write_text(_KILL_SCRIPT)
    import vista

    repo = os.path.dirname(os.path.dirname(os.path.abspath(vista.__file__)))
    env_vars = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), env["model"], env["regions"], env["images"], out],
                          env=env_vars, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(os.listdir(out))
    assert "checkpoint-2" in names and "checkpoint-3" not in names  # step 3 never became visible
    assert any(n.startswith(".tmp-checkpoint-3") for n in names)
    assert _log_steps(out) == [(1, "train"), (2, "train"), (3, "train")]
    hist = T.train_scout(env["model"], env["regions"], env["images"], out, run_a["cfg"], device="cpu",
                         resume_from="auto")
    rec = _train_records(hist)
    assert sorted(rec) == [3] and rec[3]["total"] == run_a["rec"][3]["total"]
    assert _log_steps(out) == [(1, "train"), (2, "train"), (3, "train")]
    assert sorted(n for n in os.listdir(out) if n.startswith(("checkpoint-", "."))) == \
        ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
