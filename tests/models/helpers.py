"""Shared helpers (not fixtures) for tests/models/ and tests/scout/test_threads.py: prompts, greedy runs,
captures of what the LLM receives, and a stub scout. The tiny saved models themselves come from the
``tiny_model_dir`` / ``load_tiny`` fixtures of tests/conftest.py."""
from __future__ import annotations

import contextlib

import torch

from vista.models import last_prune_info
from vista.models import common as vm_common

QUESTION = "what is the man doing ?"
OTHER_QUESTION = "which color is the car on the left"


def spy_prune_questions(monkeypatch) -> list:
    """Record the question embeddings every vm_common.prune_videos call receives (list filled in place)."""
    seen_q = []
    real = vm_common.prune_videos
    monkeypatch.setattr(vm_common, "prune_videos", lambda xs, qs, s, c, **kw: seen_q.extend(qs) or real(xs, qs, s, c, **kw))
    return seen_q


def question_embedding(model, processor, question=QUESTION):
    """q from the question's own tokens (mean input embedding), independently of the package's span logic."""
    ids = processor.tokenizer.encode(question, add_special_tokens=False)
    return model.get_input_embeddings()(torch.tensor(ids)).float().mean(0)


def prompt(processor, question=QUESTION):
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


def inputs(processor, videos, questions, **kw):
    texts = [prompt(processor, q) for q in questions]
    return processor(text=texts, videos=list(videos), return_tensors="pt", padding=True, **kw)


def image_video_prompt(processor, question=QUESTION):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


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


def assert_greedy_deterministic(model, batch):
    """Two greedy runs agree bit for bit and add 5 tokens each; returns the first (sequences, logits)."""
    s1, l1 = greedy(model, batch)
    s2, l2 = greedy(model, batch)
    assert s1.shape[1] == batch["input_ids"].shape[1] + 5
    assert torch.equal(s1, s2) and torch.equal(l1, l2)
    return s1, l1


def assert_batch_equals_each_alone(model, make_inputs, vids, qs, both, sb, lb, info_b):
    """Each sample of a batched greedy run (sequences sb, logits lb, prune info info_b) equals the
    same video + question run alone."""
    L = both["input_ids"].shape[1]
    for i in range(len(vids)):
        one = make_inputs([vids[i]], [qs[i]])
        s1, l1 = greedy(model, one)
        assert torch.equal(sb[i, L:], s1[0, one["input_ids"].shape[1]:])
        torch.testing.assert_close(lb[i], l1[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(info_b[i]["pruned"].keep, last_prune_info(model)[0]["pruned"].keep)


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
