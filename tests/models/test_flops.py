"""vista.flops: analytic prefill FLOPs."""
from __future__ import annotations

import pytest

from vista.flops import LLMShape, prefill_flops, prefill_flops_ratio


def _brute(n, d, m, layers, heads, kv_heads, causal):
    """Count FLOPs by shapes of the matmuls actually done by a Llama/Qwen2 decoder layer."""
    hd = d // heads
    mm = lambda a, b, c: 2 * a * b * c  # (a x b) @ (b x c)
    per = mm(n, d, heads * hd) + 2 * mm(n, d, kv_heads * hd) + mm(n, heads * hd, d)
    pairs = n * (n + 1) / 2 if causal else n * n
    per += heads * 2 * (2 * pairs * hd)  # QK^T and AV per head
    per += 2 * mm(n, d, m) + mm(n, m, d)  # gate, up, down
    return layers * per


@pytest.mark.parametrize("causal", [False, True])
def test_prefill_flops_matches_a_matmul_count(causal):
    s = LLMShape(hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8, num_kv_heads=2)
    for n in (1, 17, 196, 4096):
        got = prefill_flops(n, s, causal=causal)
        want = _brute(n, 512, 1408, 4, 8, 2, causal)
        if causal:  # the module halves n^2 (no diagonal term): differs by O(n d) only
            assert abs(got - want) <= 4 * 4 * n * 512
        else:
            assert got == pytest.approx(want, rel=1e-12)


def test_ratio_and_quadratic_term():
    s = LLMShape(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4)
    full = 64 * 196 + 100
    r = prefill_flops_ratio(int(0.15 * 64 * 196) + 100, full, s)
    assert 0.05 < r < 0.15  # below the token ratio: attention is quadratic
    assert prefill_flops_ratio(full, full, s) == 1.0
    assert prefill_flops(2 * full, s) > 2 * prefill_flops(full, s)


def test_from_config_and_checks():
    from transformers import Qwen2Config

    c = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=100)
    s = LLMShape.from_config(c)
    assert (s.hidden_size, s.num_layers, s.dkv, s.vocab_size) == (64, 2, 32, 100)
    with pytest.raises(ValueError, match="num_tokens"):
        prefill_flops(-1, s)
    with pytest.raises(TypeError, match="shape"):
        prefill_flops(3, "shape")
    with pytest.raises(ValueError, match="hidden_size"):
        LLMShape(hidden_size=0, intermediate_size=1, num_layers=1, num_heads=1)
    with pytest.raises(ValueError, match="config"):
        LLMShape.from_config(object())
