"""Device-resident budget planning equals the host water-filling oracle exactly.

``allocate_budgets_device`` (sorts and cumulative sums, static shapes, no host round trip) must
give the same integers as ``allocate_budgets`` (the readable Python loop kept as the oracle) on
every drawn case, heavy overflow included, and ``plan_budgets`` must be free of host syncs.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vista import VistaConfig, allocate_budgets, plan_budgets, retained_count
from vista.budget import allocate_budgets_device

from vista_kernels.testing import count_host_syncs

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def seg_ids(sizes):
    return torch.cat([torch.full((s,), m, dtype=torch.int64) for m, s in enumerate(sizes)])


@st.composite
def overflow_case(draw):
    """Segments with skewed integer or float weights, small N and totals up to T*N (overflow)."""
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=10))
    T = sum(sizes)
    N = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["int", "float", "skewed"]))
    M = len(sizes)
    if kind == "int":
        w = draw(st.lists(st.integers(0, 40), min_size=M, max_size=M))
        if sum(w) == 0:
            w[0] = 1
        alpha = torch.tensor(w, dtype=torch.float64)
        alpha = alpha / alpha.sum()
    elif kind == "float":
        r = draw(st.lists(st.floats(-1.0, 1.0), min_size=M, max_size=M))
        alpha = torch.softmax(torch.tensor(r, dtype=torch.float32), 0).double()
    else:  # one dominant segment: heavy overflow cascades
        r = draw(st.lists(st.floats(0.0, 1.0), min_size=M, max_size=M))
        alpha = torch.softmax(torch.tensor(r, dtype=torch.float64) * 30.0, 0)
    lo = draw(st.sampled_from([T, max(T, (T * N) // 2), max(T, T * N - T)]))
    total = draw(st.integers(lo, T * N))
    ratio = draw(st.sampled_from([0.10, 0.0, 0.05, 0.25, 0.5, 1.0]))
    return sizes, N, alpha, total, ratio


@settings(max_examples=600, **SETTINGS)
@given(overflow_case())
def test_device_allocation_equals_host_oracle(case):
    sizes, N, alpha, total, ratio = case
    T = sum(sizes)
    seg = seg_ids(sizes)
    host = allocate_budgets(seg, alpha, T, N, total, ratio)
    padded = torch.zeros(T, dtype=torch.float64)
    padded[: alpha.shape[0]] = alpha
    dev = allocate_budgets_device(seg, padded, T, N, total, ratio)
    assert dev.tolist() == host.tolist()
    assert int(dev.sum()) == total and int(dev.min()) >= 1 and int(dev.max()) <= N


def test_heavy_overflow_examples():
    # one segment takes almost everything: it is capped at N and the rest water-fills
    seg = seg_ids([1, 2, 3, 4])
    alpha = torch.tensor([0.97, 0.01, 0.01, 0.01], dtype=torch.float64)
    for total in (10, 40, 70, 99, 100):
        host = allocate_budgets(seg, alpha, 10, 10, total, 0.10)
        dev = allocate_budgets_device(seg, alpha, 10, 10, total, 0.10)
        assert dev.tolist() == host.tolist()


@pytest.mark.parametrize("T, N, r", [(1, 196, 0.15), (16, 196, 0.15), (9, 17, 0.5), (5, 3, 0.9), (64, 196, 0.10)])
def test_plan_budgets_matches_host_and_syncs_nothing(T, N, r):
    g = torch.Generator().manual_seed(T * 1000 + N)
    base = torch.randn(4, 24, generator=g)
    x = base[torch.arange(T) * 4 // T][:, None, :] + 0.3 * torch.randn(T, N, 24, generator=g)
    q = torch.randn(24, generator=g)
    cfg = VistaConfig(retention=r, backend="torch")
    with count_host_syncs() as syncs:
        plan = plan_budgets(x, q, config=cfg, check_finite=False)
    assert syncs.count == 0, syncs.calls
    M = plan.num_segments
    host = allocate_budgets(plan.segment_id, plan.relevance, T, N, retained_count(T, N, r), 0.10)
    assert plan.budgets.tolist() == host.tolist()
    assert tuple(plan.relevance_all.shape) == (T,) and float(plan.relevance_all[M:].abs().sum()) == 0.0
