"""SemanticScout on a tiny random-config BLIP-2 ITM model saved to a tmp dir and loaded by path."""
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

import vista_kernels as vk
from vista.scout import ScoutCheckpointError, SemanticScout, build_tiny_scout

Q1 = "what is the man holding?"
Q2 = "where is the red car parked"


def _video(T, H=40, W=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, H, W, 3, generator=g) * 255).round().to(torch.uint8)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_scout")
    build_tiny_scout(path, seed=0)
    return path


@pytest.fixture(scope="module")
def scout(ckpt):
    return SemanticScout.from_pretrained(ckpt)


def test_scores_shape_dtype_device(scout):
    assert scout.grid_hw == (16, 16)
    s = scout.scores(_video(3), Q1)
    assert s.shape == (3, 256) and s.dtype == torch.float32 and s.device == scout.device
    assert torch.isfinite(s).all() and (s >= 0).all()
    nq = scout.model.config.num_query_tokens
    heads = scout.model.config.qformer_config.num_attention_heads
    assert (s.sum(1) <= nq * heads + 1e-4).all() and (s.sum(1) > 0).all()
    # a normal tensor, usable in place outside inference mode
    assert not s.is_inference()
    s.mul_(2)


def test_question_changes_scores(scout):
    v = _video(2)
    a, b = scout.scores(v, Q1), scout.scores(v, Q2)
    assert (a - b).abs().max() > 1e-2
    torch.testing.assert_close(scout.scores(v, Q1), a, rtol=0, atol=0)  # deterministic


def test_image_changes_scores(scout):
    a, b = scout.scores(_video(1, seed=1), Q1), scout.scores(_video(1, seed=2), Q1)
    assert (a - b).abs().max() > 1e-2


def test_identical_frames_identical_scores(scout):
    f = _video(1)[0]
    s = scout.scores(torch.stack([f, f, f]), Q1)
    torch.testing.assert_close(s[1], s[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(s[2], s[0], rtol=0, atol=1e-6)


def test_matches_transformers_eager_cross_attentions(ckpt, scout):
    """Scores equal eq. 6 on the cross_attentions transformers returns with eager attention."""
    from transformers import Blip2ForImageTextRetrieval

    ref_model = Blip2ForImageTextRetrieval.from_pretrained(ckpt, attn_implementation="eager").eval()
    v = _video(2)
    pv = scout.preprocess(v)
    ids, am = scout.tokenize([Q1])
    ids, am = ids.expand(2, -1), am.expand(2, -1)
    nq = ref_model.config.num_query_tokens
    with torch.no_grad():
        img = ref_model.vision_model(pixel_values=pv).last_hidden_state
        emb = ref_model.embeddings(input_ids=ids, query_embeds=ref_model.query_tokens.expand(2, -1, -1))
        out = ref_model.qformer(
            query_embeds=emb, query_length=nq, attention_mask=torch.cat([torch.ones(2, nq, dtype=am.dtype), am], 1),
            encoder_hidden_states=img, encoder_attention_mask=torch.ones(img.shape[:2], dtype=torch.long),
            output_attentions=True,
        )
    xattn = out.cross_attentions
    assert len(xattn) == 2 and xattn[-1].shape == (2, 4, nq, 257)  # query rows only, CLS + 256 patches
    ref = xattn[-1][..., 1:].amax(1).sum(1)
    torch.testing.assert_close(scout.scores(v, Q1), ref, rtol=1e-5, atol=1e-6)
    # layer=0 scores the first cross-attention layer instead
    s0 = SemanticScout(scout.model, scout.processor, layer=0).scores(v, Q1)
    torch.testing.assert_close(s0, xattn[0][..., 1:].amax(1).sum(1), rtol=1e-5, atol=1e-6)
    assert (s0 - ref).abs().max() > 1e-3
    # the differentiable path returns the same map and the full Q-Former output
    attn, hidden = scout.cross_attention(pv, ids, am, full_forward=True)
    torch.testing.assert_close(attn, xattn[-1][..., 1:].float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden, out.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vk.scout_score_reduce(attn), ref, rtol=1e-5, atol=1e-6)


def test_cross_attention_has_gradients(scout):
    pv = scout.preprocess(_video(1))
    ids, am = scout.tokenize([Q1])
    attn = scout.cross_attention(pv, ids, am)
    attn.sum().backward()
    grads = [p.grad for p in scout.model.qformer.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    scout.model.zero_grad(set_to_none=True)


def test_batched_equals_one_at_a_time(scout):
    videos = [_video(3, 40, 56, seed=1), _video(2, 30, 30, seed=2), _video(4, 64, 48, seed=3)]
    questions = [Q1, "car?", Q2 + " near the tall green building on the left side"]  # different lengths: padding
    batched = scout.scores_batch(videos, questions, chunk_size=4)
    assert [b.shape for b in batched] == [(3, 256), (2, 256), (4, 256)]
    for v, q, b in zip(videos, questions, batched):
        torch.testing.assert_close(b, scout.scores(v, q), rtol=1e-5, atol=1e-5)
    assert scout.scores_batch([], []) == []


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunking_does_not_change_scores(scout, chunk):
    v = _video(3)
    torch.testing.assert_close(scout.scores(v, Q1, chunk_size=chunk), scout.scores(v, Q1, chunk_size=16),
                               rtol=1e-5, atol=1e-6)


def test_frame_containers_agree(scout):
    from PIL import Image

    v = _video(2)
    ref = scout.scores(v, Q1)
    arr = v.numpy()
    for frames in (arr, list(arr), [Image.fromarray(a) for a in arr], v.permute(0, 3, 1, 2), list(v)):
        torch.testing.assert_close(scout.scores(frames, Q1), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scout.scores(arr[0], Q1), ref[:1], rtol=1e-5, atol=1e-6)
    # float frames in [0, 1] at the scout resolution skip the rescale and the (identity) resize
    x = torch.rand(2, 3, 224, 224)
    pv = scout.preprocess(x)
    ip = scout.processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    torch.testing.assert_close(pv, (x - mean) / std, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tmp_path, scout):
    out = tmp_path / "copy"
    scout.save_pretrained(out)
    again = SemanticScout.from_pretrained(out)
    v = _video(2)
    assert torch.equal(again.scores(v, Q1), scout.scores(v, Q1))
    assert again.grid_hw == scout.grid_hw and again.qformer_layer == scout.qformer_layer
    assert again.model.config.qformer_config.use_qformer_text_input


def test_tiny_seed_reproducible():
    a, b, c = build_tiny_scout(seed=3), build_tiny_scout(seed=3), build_tiny_scout(seed=4)
    v = _video(1)
    assert torch.equal(a.scores(v, Q1), b.scores(v, Q1))
    assert not torch.equal(a.scores(v, Q1), c.scores(v, Q1))


def test_bf16_vision_tower(ckpt, scout):
    s16 = SemanticScout.from_pretrained(ckpt, dtype=torch.bfloat16, device="cpu")
    assert s16.dtype == torch.bfloat16
    assert s16.model.qformer.layernorm.weight.dtype == torch.float32  # Q-Former kept in fp32
    v = _video(2)
    a, b = s16.scores(v, Q1), scout.scores(v, Q1)
    assert a.dtype == torch.float32
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.95


def test_flash_attention_falls_back_to_sdpa(ckpt):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = SemanticScout.from_pretrained(ckpt, attn_implementation="flash_attention_2")
    assert any("sdpa" in str(x.message) for x in w)
    assert s.model.vision_model.config._attn_implementation == "sdpa"


# ---- errors ---------------------------------------------------------------------------------


def test_bad_path_errors(tmp_path, ckpt):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="does not exist") as e:
        SemanticScout.from_pretrained(missing)
    assert str(missing) in str(e.value) and "blip2-itm-vit-g" in str(e.value)
    assert isinstance(e.value, (ScoutCheckpointError, FileNotFoundError))
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a directory"):
        SemanticScout.from_pretrained(f)
    with pytest.raises(TypeError, match="path"):
        SemanticScout.from_pretrained(123)
    for victim, needle in [("model.safetensors", "model weights"), ("config.json", "config.json"),
                           ("tokenizer.json", "tokenizer"), ("processor_config.json", "preprocessor_config.json")]:
        d = tmp_path / f"partial_{victim}"
        shutil.copytree(ckpt, d)
        os.remove(d / victim)
        with pytest.raises(ValueError, match="incomplete") as e:
            SemanticScout.from_pretrained(d)
        assert needle in str(e.value) and str(d) in str(e.value)
    d = tmp_path / "not_blip2"
    shutil.copytree(ckpt, d)
    (d / "config.json").write_text('{"model_type": "llava_onevision"}')
    with pytest.raises(ValueError, match="not a BLIP-2"):
        SemanticScout.from_pretrained(d)


def test_input_errors(scout):
    v = _video(2)
    with pytest.raises(ValueError, match="question"):
        scout.scores(v, "")
    with pytest.raises(ValueError, match="question"):
        scout.scores(v, "   \n")
    with pytest.raises(TypeError, match="question"):
        scout.scores(v, None)
    with pytest.raises(ValueError, match="mixed sizes"):
        scout.scores([v[0].numpy(), np.zeros((30, 56, 3), np.uint8)], Q1)
    with pytest.raises(TypeError, match="dtype"):
        scout.scores(v.long(), Q1)
    with pytest.raises(TypeError, match="dtype"):
        scout.scores(v.bool(), Q1)
    with pytest.raises(TypeError, match="mixed dtypes"):
        scout.scores([v[0], v[1].float() / 255], Q1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scout.scores(v.float(), Q1)  # 0..255 floats
    with pytest.raises(ValueError, match="NaN"):
        scout.scores(torch.full((1, 3, 8, 8), float("nan")), Q1)
    with pytest.raises(ValueError, match="empty"):
        scout.scores([], Q1)
    with pytest.raises(ValueError, match="channels"):
        scout.scores(torch.zeros(2, 8, 8, 4, dtype=torch.uint8), Q1)
    with pytest.raises(TypeError, match="frames"):
        scout.scores("video.mp4", Q1)
    with pytest.raises(ValueError, match="chunk_size"):
        scout.scores(v, Q1, chunk_size=0)
    with pytest.raises(ValueError, match="questions"):
        scout.scores_batch([v, v], [Q1])
    with pytest.raises(ValueError, match=r"questions\[1\]"):
        scout.scores_batch([v, v], [Q1, ""])
    with pytest.raises(ValueError, match=r"videos\[1\]"):
        scout.scores_batch([v, []], [Q1, Q2])
    with pytest.raises(ValueError, match="layer"):
        SemanticScout(scout.model, scout.processor, layer=2)
    with pytest.raises(TypeError, match="model"):
        SemanticScout(torch.nn.Linear(2, 2), scout.processor)
    with pytest.raises(TypeError, match="dtype"):
        SemanticScout.from_pretrained("unused", dtype=3)


def test_checkpoint_without_text_input_is_rejected(scout):
    from transformers import Blip2ForImageTextRetrieval

    from vista.scout.tiny import tiny_scout_config

    cfg = tiny_scout_config(vocab_size=len(scout.processor.tokenizer))
    cfg.qformer_config.use_qformer_text_input = False
    with pytest.raises(ValueError, match="use_qformer_text_input"):
        SemanticScout(Blip2ForImageTextRetrieval(cfg), scout.processor)


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu(ckpt, scout):
    gpu = SemanticScout.from_pretrained(ckpt, device="cuda")  # default dtype on CUDA: bf16 vision tower
    assert gpu.dtype in (torch.bfloat16, torch.float16) and gpu.device.type == "cuda"
    v = _video(3)
    a = gpu.scores(v, Q1)
    assert a.device.type == "cuda" and a.dtype == torch.float32
    b = scout.scores(v, Q1)
    assert torch.corrcoef(torch.stack([a.cpu().flatten(), b.flatten()]))[0, 1] > 0.95
    batched = gpu.scores_batch([v, v.cuda()], [Q1, Q2])
    torch.testing.assert_close(batched[0], a, rtol=1e-3, atol=1e-3)


class _Payload:
    """Unpickling this runs os.mkdir(path)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_planted_pickle_weights_are_refused_and_never_run(ckpt, tmp_path):
    bad = tmp_path / "bad_scout"
    shutil.copytree(ckpt, bad)
    os.remove(bad / "model.safetensors")
    marker = str(tmp_path / "payload-ran")
    torch.save({"query_tokens": _Payload(marker)}, bad / "pytorch_model.bin")
    with pytest.raises(ScoutCheckpointError, match="refused without running anything"):
        SemanticScout.from_pretrained(bad)
    assert not os.path.exists(marker)
