"""Tiny random-config backbones + offline processors (tests, CLI demo, benchmarks; no downloads).

Both builders return ``(model, processor)`` in eval mode on CPU (float32). With ``path`` they save
model and processor with ``save_pretrained`` so that ``vista.models.load_pretrained(path)`` loads
them back.

* :func:`build_tiny_llava_onevision` -- ``LlavaOnevisionForConditionalGeneration``: Qwen2 text model
  (hidden 64, 2 layers), SigLIP vision tower (hidden 32, 1 layer, image 384, patch 14 -> 27x27
  patches, pooled 2x2 by the model to 14x14 = 196 tokens a frame, plus one newline token a video).
* :func:`build_tiny_qwen2_5_vl` -- ``Qwen2_5_VLForConditionalGeneration``: text hidden 64, 2 layers,
  M-RoPE; vision tower hidden 32, 1 block; video frames resized to at most 112x112 pixels
  -> 8x8 patches -> 4x4 = 16 tokens per temporal pair of frames (more for larger inputs, capped by
  the video processor's ``longest_edge``).

The tokenizer is a ``tokenizers`` WordLevel model over a small English vocabulary plus the chat
markers and placeholder tokens; unknown words map to ``<unk>``. The chat template follows the
families' real ones (``<|im_start|>role\\n ... <|im_end|>``).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

_WORDS = (
    "a an the is are was were be been am do does did what which who whom whose where when why how "
    "this that these those there here it its he she they them his her their we you i me my your our "
    "of in on at to from by with for about into over under after before between during through up "
    "down out off and or but not no yes if then than so very more most less many much some any all "
    "each every few other same new old big small large long short first last next left right top "
    "bottom front back color red green blue yellow black white orange purple brown gray pink "
    "man woman person people boy girl child dog cat bird car bus bike tree house room door window "
    "table chair ball cup book phone screen road street water sky sun light hand head face video "
    "image frame scene clip camera movie picture object animal thing time minute second "
    "happen happens happened doing does holding wearing running walking sitting standing eating "
    "playing talking looking moving open close opens closes shows show see seen describe count "
    "answer question option options letter best choose correct number one two three four five six "
    "seven eight nine ten zero 0 1 2 3 4 5 6 7 8 9 user assistant system helpful "
    "please briefly detail detailed explain why because end begin start finally then also "
    ". , ? ! : ; ' \" ( ) - / user_turn"
).split()

_SPECIALS_COMMON = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CHAT_TEMPLATE_LLAVA = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}<video>\n"
    "{% elif c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CHAT_TEMPLATE_QWEN = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_tokenizer(extra_specials, chat_template, extra_attrs=None):
    """A fast WordLevel tokenizer over ``_WORDS`` with the given special tokens (offline)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(_SPECIALS_COMMON) + list(extra_specials)
    vocab = {}
    for tok in specials + list(dict.fromkeys(_WORDS)):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token=None,
        additional_special_tokens=specials[3:],
        padding_side="left",
        chat_template=chat_template,
        **(extra_attrs or {}),
    )
    return tok


def _tiny_text_config(tok, **extra) -> dict:
    """The tiny LLM both families share: hidden 64, 2 layers, 4 heads (2 KV), untied embeddings;
    vocabulary, pad and eos (``<|im_end|>``) ids from ``tok``."""
    return dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        **extra,
    )


def _finish(model, processor, path, seed):
    model.eval()
    if path is not None:
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return model, processor


def _set_generation_ids(model, tok) -> None:
    """generate() pads with ``<pad>`` and stops at ``<|im_end|>``."""
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")


# ----------------------------------------------------------------------------------------------
# LLaVA-OneVision
# ----------------------------------------------------------------------------------------------
def _tiny_llava_config(tok, text_overrides: Optional[dict]):
    """``LlavaOnevisionConfig``: the shared tiny Qwen2 LLM (plus ``text_overrides``) and a SigLIP
    tower of hidden 32, 1 layer, image 384, patch 14 (27x27 patches)."""
    from transformers import LlavaOnevisionConfig

    text_config = dict(model_type="qwen2", **_tiny_text_config(tok))
    text_config.update(text_overrides or {})
    vision_config = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=384,
        patch_size=14,
    )
    return LlavaOnevisionConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[384, 384], [384, 768], [768, 384]],
    )


def _tiny_llava_processor(tok, config):
    """``LlavaOnevisionProcessor`` with the stock image / video processors (384x384 frames)."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(image_grid_pinpoints=config.image_grid_pinpoints),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=(384 // 14) ** 2,
        vision_feature_select_strategy="full",
        chat_template=_CHAT_TEMPLATE_LLAVA,
    )


def build_tiny_llava_onevision(
    path: Optional[str] = None, seed: int = 0, *, text_overrides: Optional[dict] = None
) -> Tuple[object, object]:
    """A tiny random ``LlavaOnevisionForConditionalGeneration`` and its ``LlavaOnevisionProcessor``.

    Args:
        path: optional directory; model + processor are saved there with ``save_pretrained``.
        seed: torch seed for the random weights (same seed -> same weights).
        text_overrides: optional Qwen2 text-config fields to change (e.g. ``hidden_size=512,
            num_hidden_layers=4`` for benchmarks of a realistic LLM shape).
    Returns:
        (model, processor); the model is float32, on CPU, in eval mode. Videos are (T, H, W, 3)
        uint8 arrays (any size; resized to 384x384); each frame gives 196 tokens + 1 newline a video.
    """
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    tok = _build_tokenizer(["<image>", "<video>"], _CHAT_TEMPLATE_LLAVA)
    config = _tiny_llava_config(tok, text_overrides)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    # The newline embedding is torch.empty() at init: give it defined values.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        model.model.image_newline.copy_(torch.randn(model.model.image_newline.shape, generator=g) * 0.02)
    _set_generation_ids(model, tok)
    return _finish(model, _tiny_llava_processor(tok, config), path, seed)


# ----------------------------------------------------------------------------------------------
# Qwen2.5-VL
# ----------------------------------------------------------------------------------------------
_QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _tiny_qwen_config(tok):
    """``Qwen2_5_VLConfig``: the shared tiny LLM with M-RoPE sections (2, 3, 3) and a vision tower
    of hidden 32, 1 block, patch 14, 2x2 merge, temporal patch 2."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    text_config = _tiny_text_config(
        tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    )
    vision_config = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[0],
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _tiny_qwen_processor(tok):
    """``Qwen2_5_VLProcessor`` whose image / video processors keep frames between 56*56 and
    112*112 pixels."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(pixels)),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(size=dict(pixels), cap_pixels_per_frame=False),
        chat_template=_CHAT_TEMPLATE_QWEN,
    )


def build_tiny_qwen2_5_vl(path: Optional[str] = None, seed: int = 0) -> Tuple[object, object]:
    """A tiny random ``Qwen2_5_VLForConditionalGeneration`` and its ``Qwen2_5_VLProcessor``.

    Args:
        path: optional directory; model + processor are saved there with ``save_pretrained``.
        seed: torch seed for the random weights.
    Returns:
        (model, processor); float32, CPU, eval mode. Videos are (T, H, W, 3) uint8 arrays with an
        even T (one LLM token covers a temporal pair of frames); frames are resized so that they
        hold at most 112*112 pixels (multiples of 28), e.g. 112x112 -> 16 tokens a frame pair.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tok = _build_tokenizer(_QWEN_SPECIALS, _CHAT_TEMPLATE_QWEN)
    config = _tiny_qwen_config(tok)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _set_generation_ids(model, tok)
    return _finish(model, _tiny_qwen_processor(tok), path, seed)


def random_video(T: int, H: int = 64, W: int = 64, seed: int = 0, scenes: int = 2):
    """A synthetic (T, H, W, 3) uint8 numpy video with ``scenes`` distinct scenes (no download)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    bases = rng.integers(0, 256, size=(scenes, H, W, 3)).astype(np.float32)
    out = np.empty((T, H, W, 3), dtype=np.uint8)
    for t in range(T):
        s = min(scenes - 1, t * scenes // max(T, 1))
        noise = rng.normal(0.0, 12.0, size=(H, W, 3))
        out[t] = np.clip(bases[s] + noise, 0, 255).astype(np.uint8)
    return out


__all__ = ["build_tiny_llava_onevision", "build_tiny_qwen2_5_vl", "random_video"]
