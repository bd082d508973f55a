"""Inputs and comparisons shared by the per-op reference tests (``test_<op>.py``): the two
implementations under test, the fixed-seed cases checked against the fp64 oracle, and the
builders of the malformed-call tables.

Fixed-seed cases are built tie-free (random normal tokens, small D) and compared with exact kept
indices and exact assignments; the test data's tie-freeness is asserted as a precondition so a seed
that happens to produce a near-tie is reported as such and not as an op failure. fp16/bf16 inputs
are compared with the oracle run on the rounded values.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import vista_kernels as vk
import vista_kernels.reference as R
from tests.kernels.oracle import oracle_dpc_delta, oracle_knn_density, oracle_pairwise_dist, oracle_topk

FP32_TOL = dict(rtol=1e-5, atol=1e-5)
# Fixed-seed data must separate every decision by more than this (fp32 errors here are ~1.5e-7).
TIE_GAP = 1e-5
RHO_GAP = 1e-6


def kernel_devices(interpreted: bool) -> list:
    """The devices a kernel test runs on: CPU tensors when the kernel runs in Triton's interpreter,
    CUDA (``gpu``-marked) otherwise."""
    return [
        pytest.param("cpu", marks=pytest.mark.skipif(not interpreted, reason="CPU tensors need TRITON_INTERPRET=1")),
        pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(interpreted, reason="interpreter mode")]),
    ]


def impl_of(which: str, op: str):
    if which == "reference":
        return getattr(R, f"{op}_torch")
    return functools.partial(getattr(vk, op), backend="torch")


IMPLS = pytest.mark.parametrize("which", ["reference", "public"])


# ------------------------------------------------------------------------------------------ data

# (F, N, D, valid pattern, k). Pattern "all" -> valid=None; "mixed" -> frame f gets, by f % 4:
# all valid, a random ~60% subset, exactly one valid token, no valid token.
CASES = [
    (3, 1, 4, "all", 7),
    (2, 1, 4, "mixed", 7),
    (3, 2, 4, "all", 7),
    (2, 8, 8, "all", 3),
    (4, 8, 4, "mixed", 50),  # k far larger than the candidates
    (4, 17, 16, "mixed", 7),
    (2, 17, 5, "all", 16),  # k = N - 1
    (2, 196, 16, "mixed", 7),
]
CASE_IDS = [f"F{c[0]}-N{c[1]}-D{c[2]}-{c[3]}-k{c[4]}" for c in CASES]
CASES_P = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)


def make_x(F, N, D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(F, N, D, generator=g).to(dtype)


def make_valid(F, N, pattern, seed=0):
    if pattern == "all":
        return None
    g = torch.Generator().manual_seed(2000 + seed)
    v = torch.zeros(F, N, dtype=torch.bool)
    for f in range(F):
        kind = f % 4
        if kind == 0:
            v[f] = True
        elif kind == 1:
            v[f] = torch.rand(N, generator=g) < 0.6
        elif kind == 2:
            v[f, int(torch.randint(N, (1,), generator=g))] = True
    return v


def full_valid(valid, x):
    return torch.ones(x.shape[:2], dtype=torch.bool) if valid is None else valid


@functools.lru_cache(maxsize=None)
def case_data(case, dtype=torch.float32):
    F, N, D, pattern, k = case
    return make_x(F, N, D, dtype=dtype), make_valid(F, N, pattern)


@functools.lru_cache(maxsize=None)
def case_oracle(case, dtype=torch.float32):
    """Oracle rho, gamma and distances of a case (cached: the N = 196 oracle takes ~1 s)."""
    x, valid = case_data(case, dtype)
    k = case[4]
    rho = oracle_knn_density(x, k, valid)
    gamma = rho * oracle_dpc_delta(x, rho, valid)
    return rho, gamma, oracle_pairwise_dist(x)


def make_keep(valid, x, seed=0):
    """Random keep mask: about a third of each frame's valid tokens, at least one where any is valid."""
    v = full_valid(valid, x)
    g = torch.Generator().manual_seed(3000 + seed)
    score = torch.rand(v.shape, generator=g)
    cnt = torch.clamp(v.sum(1) // 3, min=1) * v.any(1)
    return oracle_topk(score, cnt, v)


# ----------------------------------------------------------------- inputs of the kernel tests


def make_tokens(F, N, D, dtype, device, seed=0, valid_p=0.75):
    """(x (F, N, D) dtype, valid (F, N)) on ``device``; the last frame has no candidate (F = 2) or
    a single one (F > 2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(F, N, D, generator=g).to(dtype)
    valid = torch.rand(F, N, generator=g) < valid_p
    if F > 1:
        valid[-1] = False  # a frame without candidates
        valid[-1, 0] = F > 2  # ... or with a single one
    return x.to(device), valid.to(device)


# --------------------------------------------------------------------------- guards, comparisons


def topk_boundary_gap(score, k_keep, valid):
    """Smallest gap, over frames, between the k-th and (k+1)-th largest eligible score (inf if none)."""
    F = score.shape[0]
    ks = torch.as_tensor(k_keep).reshape(-1).expand(F).tolist() if not isinstance(k_keep, int) else [k_keep] * F
    gap = math.inf
    for f in range(F):
        vals = sorted(score[f][valid[f]].tolist(), reverse=True)
        k = int(ks[f])
        if 0 < k < len(vals):
            gap = min(gap, vals[k - 1] - vals[k])
    return gap


def assert_gap(score, k_keep, valid, rel=1e-4):
    """Precondition of the exact-index tests: no near-tie at any frame's top-k boundary."""
    for f in range(score.shape[0]):
        s = score[f][valid[f]].double().sort(descending=True).values
        k = int(k_keep[f])
        if 0 < k < s.numel():
            assert (s[k - 1] - s[k]) > rel * s[k - 1].abs(), f"seed gives a near-tie in frame {f}; pick another"


def assert_close(actual, expected, rtol, atol, msg=""):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=msg or None)


def assert_near(a, b, tol=1e-6):
    """``a`` equals ``b`` (a tensor or nested list) within ``tol``: for the exact-tie cases."""
    torch.testing.assert_close(a.double(), torch.as_tensor(b).double(), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------- malformed calls
# Each ``test_<op>.py`` holds a table of (id, call, exception type, regex the message must match:
# the argument's name) rows built from these; the calls fail before any math runs.

F, N, D = 2, 5, 4
T = dict(backend="torch")
BOOL = dict(dtype=torch.bool)


def X(**kw):
    return torch.randn(F, N, D, generator=torch.Generator().manual_seed(0), **kw)


def VALID():
    v = torch.ones(F, N, dtype=torch.bool)
    v[1, 3:] = False  # frame 1 has 3 valid tokens
    return v


def with_value(value, at=(1, 2, 3)):
    x = X()
    x[at] = value
    return x


def keep_subset():
    k = torch.zeros(F, N, dtype=torch.bool)
    k[:, 0] = True
    return k


def malformed_calls(rows):
    """``pytest.mark.parametrize`` of ``(call, exc, pattern)`` over a bad-call table (ids distinct)."""
    assert len({r[0] for r in rows}) == len(rows), "bad-call ids must be distinct"
    return pytest.mark.parametrize("call,exc,pattern", [r[1:] for r in rows], ids=[r[0] for r in rows])
