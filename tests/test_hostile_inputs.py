"""Hostile inputs to the GPU-path API (issue 12 / issue 14 items 4-6): every case here broke or
gave a silent wrong answer before its fix."""
from __future__ import annotations

import pytest
import torch

from vista.budget import allocate_budgets, allocate_budgets_device


def _seg(sizes):
    return torch.cat([torch.full((s,), m, dtype=torch.int64) for m, s in enumerate(sizes)])


def _both(sizes, alpha, N, total, ratio):
    seg = _seg(sizes)
    T = seg.shape[0]
    a = torch.tensor(alpha, dtype=torch.float64)
    pad = torch.zeros(T, dtype=torch.float64)
    pad[: a.shape[0]] = a
    return allocate_budgets(seg, a, T, N, total, ratio), allocate_budgets_device(seg, pad, T, N, total, ratio)


def _contract(b, total, N):
    assert int(b.sum()) == total and int(b.min()) >= 1 and int(b.max()) <= N, b.tolist()


# ------------------------------------------------------------------------------------ budgets
@pytest.mark.parametrize("sizes, alpha, N, total, ratio", [
    ([3, 3, 2], [1.0, 1.4765554976506916e-31, 1.1125369292536007e-308], 58, 463, 0.0),
    ([6, 6, 8], [1.0, 9.432897520277625e-31, 1.1125369292536007e-308], 34, 605, 1 / 34),
])
def test_subnormal_weights_keep_the_budget_contract(sizes, alpha, N, total, ratio):
    # before: remaining / sum(w) overflowed to inf -> the device gave sum != total or int64 min
    host, dev = _both(sizes, alpha, N, total, ratio)
    _contract(host, total, N)
    assert dev.tolist() == host.tolist()


@pytest.mark.parametrize("alpha", [[1.0, 1.0, 1.0], [0.5, 0.2, 0.1], [0.0, 0.0, 0.0], [3e300, 3e300, 1e300]])
@pytest.mark.parametrize("total", [20, 40])
def test_weights_that_do_not_sum_to_one_are_normalised(alpha, total):
    # before: sums of 46 / 54 / 12 / 37 for a total of 20 or 40, and host != device
    host, dev = _both([2, 1, 3], alpha, 10, total, 0.1)
    _contract(host, total, 10)
    assert dev.tolist() == host.tolist()


@pytest.mark.parametrize("alpha", [[2.0, -1.0, 0.0], [float("nan"), 0.5, 0.5], [float("inf"), 0.5, 0.5]])
def test_invalid_weights_host_raises_device_keeps_contract(alpha):
    # before: budgets of 0 and -10 (negative weight), "cannot convert float NaN to integer" (NaN)
    seg = _seg([2, 1, 3])
    with pytest.raises(ValueError, match="alpha"):
        allocate_budgets(seg, torch.tensor(alpha), 6, 10, 40, 0.1)
    pad = torch.zeros(6, dtype=torch.float64)
    pad[:3] = torch.tensor(alpha)
    _contract(allocate_budgets_device(seg, pad, 6, 10, 40, 0.1), 40, 10)
