"""Shared helpers for tests/test_models_*.py: tiny backbones saved + loaded by path, prompts,
captures of what the LLM receives, and a stub scout."""
from __future__ import annotations

import contextlib

import torch

QUESTION = "what is the man doing ?"
OTHER_QUESTION = "which color is the car on the left"


def prompt(processor, question=QUESTION):
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


def inputs(processor, videos, questions, **kw):
    texts = [prompt(processor, q) for q in questions]
    return processor(text=texts, videos=list(videos), return_tensors="pt", padding=True, **kw)


@contextlib.contextmanager
def capture_llm(model):
    """Record (inputs_embeds, position_ids, attention_mask) of every language-model call."""
    calls = []
    lm = model.model.language_model

    def hook(mod, args, kwargs):
        calls.append(
            {
                "inputs_embeds": kwargs.get("inputs_embeds"),
                "position_ids": kwargs.get("position_ids"),
                "attention_mask": kwargs.get("attention_mask"),
            }
        )

    h = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        h.remove()


def logits(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).logits


def greedy(model, batch, n=5, **kw):
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True, **kw
        )
    return out.sequences, torch.stack(out.logits, 1)


class StubScout:
    """Scores that favour one corner of every frame (a fixed, question-independent pattern)."""

    def __init__(self, grid_hw=(4, 4), corner="bottom_right"):
        self.grid_hw = grid_hw
        self.corner = corner
        self.calls = []

    def scores(self, frames, question):
        self.calls.append((tuple(frames.shape), question))
        h, w = self.grid_hw
        ii = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
        jj = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
        base = ii + jj if self.corner == "bottom_right" else (h - 1 - ii) + (w - 1 - jj)
        base = base + 0.01 * jj  # no ties
        return base.reshape(1, h * w).expand(frames.shape[0], -1).clone().to(frames.device)
