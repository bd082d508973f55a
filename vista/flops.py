"""Analytic prefill FLOPs of a decoder-only LLM (the number behind "prefill FLOPs ratio").

Per layer, for a prompt of ``n`` tokens (FLOPs = 2 x multiply-adds):

* attention projections: ``2 n d (d_q + 2 d_kv) + 2 n d_q d``   (Q, K, V and output)
* attention core: ``4 n^2 d_q``   (Q K^T and A V; halved with ``causal=True``)
* MLP: ``2 n d m x (3 if gated else 2)``   (SwiGLU: gate, up, down)

with ``d`` the hidden size, ``d_q = heads x head_dim``, ``d_kv = kv_heads x head_dim`` and ``m`` the
MLP width; the LM head is counted once (the prefill only needs the last position's logits). This is
the usual FastV-style count (4nd^2 + 2n^2d + 2ndm per layer with MHA and a 2-matrix MLP) extended to
GQA and gated MLPs. Norms, RoPE and softmax are ignored (O(n d)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class LLMShape:
    """Shape of a decoder LLM for FLOP counting."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: Optional[int] = None
    head_dim: Optional[int] = None
    vocab_size: int = 0
    gated_mlp: bool = True

    def __post_init__(self):
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.num_kv_heads is not None and (not isinstance(self.num_kv_heads, int) or self.num_kv_heads < 1):
            raise ValueError(f"num_kv_heads must be a positive int or None, got {self.num_kv_heads!r}")

    @property
    def dq(self) -> int:
        hd = self.head_dim or self.hidden_size // self.num_heads
        return self.num_heads * hd

    @property
    def dkv(self) -> int:
        hd = self.head_dim or self.hidden_size // self.num_heads
        return (self.num_kv_heads or self.num_heads) * hd

    @classmethod
    def from_config(cls, config) -> "LLMShape":
        """From a transformers config (a VLM config's ``text_config`` is used when present)."""
        c = getattr(config, "text_config", None) or config
        try:
            return cls(
                hidden_size=int(c.hidden_size),
                intermediate_size=int(c.intermediate_size),
                num_layers=int(c.num_hidden_layers),
                num_heads=int(c.num_attention_heads),
                num_kv_heads=int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads),
                head_dim=getattr(c, "head_dim", None),
                vocab_size=int(getattr(c, "vocab_size", 0) or 0),
                gated_mlp=True,
            )
        except AttributeError as e:
            raise ValueError(f"config lacks a decoder LLM field: {e}") from None


def prefill_flops(num_tokens: int, shape: LLMShape, causal: bool = False) -> float:
    """FLOPs of one prefill of ``num_tokens`` tokens through ``shape`` (see the module docstring)."""
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
        raise ValueError(f"num_tokens must be an int >= 0, got {num_tokens!r}")
    if not isinstance(shape, LLMShape):
        raise TypeError(f"shape must be an LLMShape, got {type(shape).__name__}")
    n, d, m = float(num_tokens), float(shape.hidden_size), float(shape.intermediate_size)
    dq, dkv = float(shape.dq), float(shape.dkv)
    proj = 2 * n * d * (dq + 2 * dkv) + 2 * n * dq * d
    core = 4 * n * n * dq * (0.5 if causal else 1.0)
    mlp = 2 * n * d * m * (3 if shape.gated_mlp else 2)
    head = 2 * d * shape.vocab_size if num_tokens else 0.0
    return shape.num_layers * (proj + core + mlp) + head


def prefill_flops_ratio(pruned_tokens: int, full_tokens: int, shape: LLMShape, causal: bool = False) -> float:
    """prefill_flops(pruned) / prefill_flops(full); token counts are whole prompts (text + video)."""
    full = prefill_flops(full_tokens, shape, causal)
    if full <= 0:
        raise ValueError("full_tokens must be >= 1")
    return prefill_flops(pruned_tokens, shape, causal) / full


__all__ = ["LLMShape", "prefill_flops", "prefill_flops_ratio"]
