"""A tiny random-weight BLIP-2 image-text-matching scout, built offline for tests, demos and CI.

It has the real architecture (``Blip2ForImageTextRetrieval`` with a question-reading Q-Former) and
the real input pipeline (``Blip2Processor`` = ``BlipImageProcessor`` at 224 px + a BERT WordPiece
tokenizer), so every code path of :class:`~vista.scout.SemanticScout` runs, but with a few
thousand random parameters. Its scores carry no meaning.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

__all__ = ["build_tiny_scout", "tiny_scout_config", "tiny_scout_tokenizer"]

_WORDS = (
    "what is the a an of in on to and or who where when why how which does do did are was were "
    "this that there it its color colour man woman person people dog cat car red blue green "
    "video frame scene left right top bottom doing holding wearing playing"
).split()


def tiny_scout_tokenizer():
    """A ``BertTokenizerFast`` over a ~170-entry WordPiece vocabulary (no download).

    Single letters and ``##``-continuations of letters and digits are in the vocabulary, so any
    lower-cased ASCII word tokenizes without ``[UNK]`` and different questions give different ids.
    """
    from transformers import BertTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    digits = "0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(letters) + list(digits) + list("?.,!'-:;\"()")
    vocab += ["##" + c for c in letters + digits]
    vocab += [w for w in _WORDS if w not in vocab]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


def tiny_scout_config(vocab_size: int, image_size: int = 224, patch_size: int = 14):
    """``Blip2Config`` of the tiny scout: 1-layer ViT (hidden 32), 2-layer Q-Former (hidden 32,
    4 heads, cross-attention in both layers, text input enabled), 8 query tokens."""
    from transformers import Blip2Config

    return Blip2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            initializer_range=0.2,  # the stock default (1e-10) makes image features constant
        ),
        qformer_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            cross_attention_frequency=1,
            encoder_hidden_size=32,
            use_qformer_text_input=True,
            initializer_range=0.3,  # peaked (not near-uniform) attention, so questions matter
        ),
        num_query_tokens=8,
        image_text_hidden_size=16,
        use_qformer_text_input=True,
    )


def build_tiny_scout(path: Optional[str | os.PathLike] = None, seed: int = 0):
    """Build a random-config tiny BLIP-2 ITM scout (16×16 patch grid at 224 px, patch 14).

    Args:
        path: if given, the checkpoint (model + processor) is written there with
            ``save_pretrained`` and can be reloaded with ``SemanticScout.from_pretrained(path)``.
        seed: seeds the random weights; the same seed gives the same weights.

    Returns:
        A :class:`~vista.scout.SemanticScout` on CPU in float32, in eval mode.
    """
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor, BlipImageProcessor

    from .scout import SemanticScout

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike directory, got {type(path).__name__}")

    tokenizer = tiny_scout_tokenizer()
    processor = Blip2Processor(image_processor=BlipImageProcessor(size=224), tokenizer=tokenizer)
    # Blip2Processor may add an "<image>" token to the tokenizer: size the vocabulary after it.
    config = tiny_scout_config(vocab_size=len(processor.tokenizer))

    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Blip2ForImageTextRetrieval(config)
        with torch.no_grad():
            # Stock init zeroes the query tokens (all queries identical); give them distinct values.
            model.query_tokens.normal_(0.0, 1.0)
    finally:
        torch.random.set_rng_state(rng_state)
    model.eval()

    scout = SemanticScout(model, processor)
    if path is not None:
        scout.save_pretrained(path)
    return scout
