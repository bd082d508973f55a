"""The ulp comparison used for float results of different implementations can fail."""
import pytest
import torch

from tests.kernels.ulp import assert_ulp_close


def test_one_ulp_passes_two_fail_zeros_exact():
    x = torch.tensor([2.1794495582580566, 1.0, 0.0, 1e-3, -7.5])
    inf = torch.full_like(x, float("inf"))
    one = torch.where(x == 0, x, torch.nextafter(x, inf))
    two = torch.where(x == 0, x, torch.nextafter(one, inf))
    assert_ulp_close(one, x)
    with pytest.raises(AssertionError, match="more than 1 ulp"):
        assert_ulp_close(two, x)
    assert_ulp_close(two, x, ulps=2)
    tiny = x.clone()
    tiny[2] = torch.finfo(torch.float32).tiny
    with pytest.raises(AssertionError, match="zeros differ"):
        assert_ulp_close(tiny, x)


def test_half_precision_ulps():
    one = torch.tensor([1.0]).bfloat16()
    assert_ulp_close(torch.tensor([1.0078125]).bfloat16(), one)  # bf16 spacing at 1 is 2^-7
    with pytest.raises(AssertionError):
        assert_ulp_close(torch.tensor([1.015625]).bfloat16(), one)
    assert_ulp_close(torch.tensor([1.0 + 2 ** -10]).half(), torch.tensor([1.0]).half())
    with pytest.raises(AssertionError):
        assert_ulp_close(torch.tensor([1.0 + 2 ** -9]).half(), torch.tensor([1.0]).half())


def test_the_quoted_avx2_sqrt_difference_is_one_ulp():
    # issue 13: torch's CPU sqrt on an AVX2 host vs the correctly rounded value
    a, b = torch.tensor([2.1794493198394775]), torch.tensor([2.1794495582580566])
    assert not torch.equal(a, b)
    assert_ulp_close(a, b)
    with pytest.raises(AssertionError):
        assert_ulp_close(a, torch.tensor([2.1794497966766357]) + 1e-6)
