"""Float comparison in units in the last place (ulp), for results of *different* implementations.

Two implementations (the PyTorch reference and the Triton kernel, or one op under different SIMD
back-ends) may round a ``sqrt`` or an ``exp`` differently by one ulp: torch's CPU ``sqrt`` on some
SIMD paths is not correctly rounded. Exact equality is a contract only for discrete results
(kept sets, assignments, budgets) and for results one implementation computes twice; float values
across implementations are compared with :func:`assert_ulp_close`, which still demands exact zeros
(a duplicate token is *exactly* 0 away) and identical inf/NaN positions.
"""
import torch


def ulp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` floats at magnitude ``|t|`` (float64; the subnormal spacing near 0)."""
    fi = torch.finfo(dtype)
    m = t.double().abs().clamp_min(fi.tiny)
    return fi.eps * torch.exp2(torch.floor(torch.log2(m)))


def assert_ulp_close(actual: torch.Tensor, expected: torch.Tensor, ulps: int = 1, msg: str = "") -> None:
    """``actual`` within ``ulps`` ulp of ``expected`` elementwise (in their dtype); zeros, infs and
    NaNs must match exactly."""
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{msg} dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    assert torch.equal(a == 0, e == 0), f"{msg} zeros differ: {a[(a == 0) != (e == 0)]} vs {e[(a == 0) != (e == 0)]}"
    assert torch.equal(torch.isnan(a), torch.isnan(e)) and torch.equal(torch.isinf(a), torch.isinf(e)), msg
    fin = torch.isfinite(a) & torch.isfinite(e)
    assert torch.equal(a[~fin & ~torch.isnan(a)], e[~fin & ~torch.isnan(e)]), f"{msg} infinities differ"
    a64, e64 = a[fin].double(), e[fin].double()
    step = ulp(torch.maximum(a64.abs(), e64.abs()), a.dtype)
    bad = (a64 - e64).abs() > ulps * step
    assert not bool(bad.any()), (f"{msg} {int(bad.sum())} value(s) differ by more than {ulps} ulp: "
                                 f"{a64[bad][:4].tolist()} vs {e64[bad][:4].tolist()}")
