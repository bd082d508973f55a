"""Malformed calls to the public ops fail with a ValueError/TypeError that names the argument
(DESIGN.md, "Public API"), before any math runs."""
from __future__ import annotations

import pytest
import torch

import vista_kernels as vk

F, N, D = 2, 5, 4


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


T = dict(backend="torch")
BOOL = dict(dtype=torch.bool)

# (id, call, exception type, regex the message must match: the argument's name)
CASES = [
    # ---- x (tokens)
    ("cos-x-rank2", lambda: vk.frame_cosine(torch.randn(N, D), **T), ValueError, r"^x must have shape \(F, N, D\)"),
    ("cos-x-rank4", lambda: vk.frame_cosine(torch.randn(1, F, N, D), **T), ValueError, r"^x must have shape"),
    ("cos-x-int", lambda: vk.frame_cosine(torch.ones(F, N, D, dtype=torch.int32), **T), TypeError, r"^x must be float32"),
    ("cos-x-float64", lambda: vk.frame_cosine(X(dtype=torch.float64), **T), TypeError, r"^x must be float32"),
    ("cos-x-list", lambda: vk.frame_cosine([[[1.0]]], **T), TypeError, r"^x must be a torch\.Tensor"),
    ("knn-x-nan", lambda: vk.knn_density(with_value(float("nan")), **T), ValueError, r"^x contains NaN"),
    ("knn-x-inf", lambda: vk.knn_density(with_value(float("-inf")), **T), ValueError, r"^x contains NaN or inf"),
    ("knn-x-no-tokens", lambda: vk.knn_density(torch.zeros(F, 0, D), **T), ValueError, r"^x must have N >= 1"),
    ("knn-x-no-dims", lambda: vk.knn_density(torch.zeros(F, N, 0), **T), ValueError, r"^x must have N >= 1 tokens and D >= 1"),
    ("anchor-x-nan", lambda: vk.anchor_aggregate(with_value(float("nan")), keep_subset(), **T), ValueError, r"^x contains NaN"),
    ("select-x-bf16-inf", lambda: vk.dpc_select(with_value(float("inf")).bfloat16(), 1, **T), ValueError, r"^x contains"),
    # ---- k
    ("knn-k-0", lambda: vk.knn_density(X(), k=0, **T), ValueError, r"^k must be >= 1"),
    ("knn-k-negative", lambda: vk.knn_density(X(), k=-3, **T), ValueError, r"^k must be >= 1"),
    ("knn-k-float", lambda: vk.knn_density(X(), k=1.5, **T), TypeError, r"^k must be an int"),
    ("knn-k-bool", lambda: vk.knn_density(X(), k=True, **T), TypeError, r"^k must be an int"),
    ("gamma-k-0", lambda: vk.dpc_gamma(X(), k=0, **T), ValueError, r"^k must be >= 1"),
    ("select-k-0", lambda: vk.dpc_select(X(), 1, k=0, **T), ValueError, r"^k must be >= 1"),
    ("select-k-str", lambda: vk.dpc_select(X(), 1, k="7", **T), TypeError, r"^k must be an int"),
    # ---- valid
    ("knn-valid-shape", lambda: vk.knn_density(X(), valid=torch.ones(F, N + 1, **BOOL), **T), ValueError, r"^valid must have shape \(F, N\)"),
    ("knn-valid-rank3", lambda: vk.knn_density(X(), valid=torch.ones(F, N, 1, **BOOL), **T), ValueError, r"^valid must have shape"),
    ("knn-valid-float", lambda: vk.knn_density(X(), valid=torch.ones(F, N), **T), TypeError, r"^valid must have dtype torch\.bool"),
    ("cos-valid-uint8", lambda: vk.frame_cosine(X(), valid=torch.ones(F, N, dtype=torch.uint8), **T), TypeError, r"^valid must have dtype"),
    ("delta-valid-list", lambda: vk.dpc_delta(X(), torch.ones(F, N), valid=[[True] * N] * F, **T), TypeError, r"^valid must be a torch\.Tensor"),
    ("knn-valid-device", lambda: vk.knn_density(X(), valid=torch.ones(F, N, device="meta", **BOOL), **T), ValueError, r"^valid is on meta but x is on cpu"),
    # ---- rho
    ("delta-rho-shape", lambda: vk.dpc_delta(X(), torch.ones(F, N - 1), **T), ValueError, r"^rho must have shape \(F, N\)"),
    ("delta-rho-rank3", lambda: vk.dpc_delta(X(), torch.ones(F, N, 1), **T), ValueError, r"^rho must have shape"),
    ("delta-rho-int", lambda: vk.dpc_delta(X(), torch.ones(F, N, dtype=torch.int64), **T), TypeError, r"^rho must be a floating tensor"),
    ("delta-rho-nan", lambda: vk.dpc_delta(X(), torch.full((F, N), float("nan")), **T), ValueError, r"^rho contains NaN"),
    ("delta-rho-none", lambda: vk.dpc_delta(X(), None, **T), TypeError, r"^rho must be a torch\.Tensor"),
    ("delta-rho-device", lambda: vk.dpc_delta(X(), torch.ones(F, N, device="meta"), **T), ValueError, r"^rho is on meta"),
    # ---- k_keep
    ("select-kkeep-too-large-int", lambda: vk.dpc_select(X(), N + 1, **T), ValueError, r"^k_keep\[0\] = 6 is larger than the 5 valid"),
    ("select-kkeep-larger-than-valid", lambda: vk.dpc_select(X(), 4, valid=VALID(), **T), ValueError, r"^k_keep\[1\] = 4 is larger than the 3 valid"),
    ("select-kkeep-tensor-too-large", lambda: vk.dpc_select(X(), torch.tensor([5, 4]), valid=VALID(), **T), ValueError, r"^k_keep\[1\]"),
    ("select-kkeep-negative", lambda: vk.dpc_select(X(), -1, **T), ValueError, r"^k_keep must be >= 0"),
    ("select-kkeep-negative-tensor", lambda: vk.dpc_select(X(), torch.tensor([1, -2]), **T), ValueError, r"^k_keep must be >= 0"),
    ("select-kkeep-shape", lambda: vk.dpc_select(X(), torch.tensor([1, 1, 1]), **T), ValueError, r"^k_keep must have shape \(F,\)"),
    ("select-kkeep-rank2", lambda: vk.dpc_select(X(), torch.ones(F, 1, dtype=torch.int64), **T), ValueError, r"^k_keep must have shape"),
    ("select-kkeep-float-tensor", lambda: vk.dpc_select(X(), torch.tensor([1.0, 2.0]), **T), TypeError, r"^k_keep must be an integer tensor"),
    ("select-kkeep-float", lambda: vk.dpc_select(X(), 1.5, **T), TypeError, r"^k_keep must be an int"),
    ("select-kkeep-bool", lambda: vk.dpc_select(X(), True, **T), TypeError, r"^k_keep must be an int"),
    ("select-kkeep-bool-tensor", lambda: vk.dpc_select(X(), torch.tensor([True, False]), **T), TypeError, r"^k_keep must be an integer tensor"),
    ("select-kkeep-list", lambda: vk.dpc_select(X(), [1, 1], **T), TypeError, r"^k_keep must be an int or an integer tensor"),
    ("select-kkeep-device", lambda: vk.dpc_select(X(), torch.ones(F, dtype=torch.int64, device="meta"), **T), ValueError, r"^k_keep is on meta"),
    # ---- alpha
    ("anchor-alpha-negative", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha=-0.1, **T), ValueError, r"^alpha must be in \[0, 1\]"),
    ("anchor-alpha-above-1", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha=1.5, **T), ValueError, r"^alpha must be in \[0, 1\]"),
    ("anchor-alpha-nan", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha=float("nan"), **T), ValueError, r"^alpha must be in"),
    ("anchor-alpha-str", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha="0.5", **T), TypeError, r"^alpha must be a float"),
    ("anchor-alpha-tensor", lambda: vk.anchor_aggregate(X(), keep_subset(), alpha=torch.tensor(0.5), **T), TypeError, r"^alpha must be a float"),
    # ---- keep
    ("anchor-keep-not-subset", lambda: vk.anchor_aggregate(X(), torch.ones(F, N, **BOOL), valid=VALID(), **T), ValueError, r"^keep marks tokens that are not valid"),
    ("anchor-keep-empty-frame", lambda: vk.anchor_aggregate(X(), torch.tensor([[True] + [False] * (N - 1), [False] * N]), **T), ValueError, r"^keep has no kept token in frame 1"),
    ("anchor-keep-empty-valid-frame", lambda: vk.anchor_aggregate(X(), torch.tensor([[True] + [False] * (N - 1), [False] * N]), valid=VALID(), **T), ValueError, r"^keep has no kept token in frame 1"),
    ("anchor-keep-int", lambda: vk.anchor_aggregate(X(), keep_subset().long(), **T), TypeError, r"^keep must have dtype torch\.bool"),
    ("anchor-keep-shape", lambda: vk.anchor_aggregate(X(), torch.ones(F + 1, N, **BOOL), **T), ValueError, r"^keep must have shape \(F, N\)"),
    ("anchor-keep-none", lambda: vk.anchor_aggregate(X(), None, **T), TypeError, r"^keep must be a torch\.Tensor"),
    ("anchor-keep-device", lambda: vk.anchor_aggregate(X(), torch.ones(F, N, device="meta", **BOOL), **T), ValueError, r"^keep is on meta"),
    ("anchor-valid-shape", lambda: vk.anchor_aggregate(X(), keep_subset(), valid=torch.ones(N, **BOOL), **T), ValueError, r"^valid must have shape"),
    # ---- scout_score_reduce
    ("scout-attn-rank3", lambda: vk.scout_score_reduce(torch.rand(2, 3, 4), **T), ValueError, r"^attn must have shape \(B, heads, queries, patches\)"),
    ("scout-attn-int", lambda: vk.scout_score_reduce(torch.ones(1, 2, 3, 4, dtype=torch.int64), **T), TypeError, r"^attn must be a floating tensor"),
    ("scout-attn-list", lambda: vk.scout_score_reduce([[[[0.5]]]], **T), TypeError, r"^attn must be a torch\.Tensor"),
    ("scout-attn-no-heads", lambda: vk.scout_score_reduce(torch.rand(1, 0, 3, 4), **T), ValueError, r"^attn needs at least one head"),
    # ---- backend
    ("backend-unknown", lambda: vk.knn_density(X(), backend="cuda"), ValueError, r"^backend must be one of"),
    ("backend-none", lambda: vk.frame_cosine(X(), backend=None), ValueError, r"^backend must be one of"),
    ("backend-case", lambda: vk.dpc_select(X(), 1, backend="Torch"), ValueError, r"^backend must be one of"),
    ("backend-unknown-scout", lambda: vk.scout_score_reduce(torch.rand(1, 1, 1, 2), backend="numpy"), ValueError, r"^backend must be one of"),
]


@pytest.mark.parametrize("call,exc,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_call_names_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_at_least_20_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 20


def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    # resolve_backend reads TRITON_INTERPRET at call time, so clearing it here exercises the CPU
    # path whatever the session's environment (conftest sets it when there is no CUDA device).
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("VISTA_BACKEND", raising=False)
    with pytest.raises(ValueError, match=r"^backend='triton'"):
        vk.knn_density(X(), backend="triton")
    with pytest.raises(ValueError, match=r"^backend='triton'"):
        vk.anchor_aggregate(X(), keep_subset(), backend="triton")


def test_bad_vista_backend_env(monkeypatch):
    monkeypatch.setenv("VISTA_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"^VISTA_BACKEND must be 'triton' or 'torch'"):
        vk.frame_cosine(X(), backend="auto")
    # an explicit backend does not consult the variable
    assert vk.frame_cosine(X(), backend="torch").shape == (F - 1,)


def test_valid_calls_of_the_same_shapes_succeed():
    """Guards the table above: each argument is only wrong in the way its case says."""
    x, v = X(), VALID()
    assert vk.frame_cosine(x, valid=v, **T).shape == (F - 1,)
    rho = vk.knn_density(x, k=7, valid=v, **T)
    assert rho.shape == (F, N)
    assert vk.dpc_delta(x, rho, valid=v, **T).shape == (F, N)
    assert vk.dpc_gamma(x, valid=v, k=1, **T).shape == (F, N)
    assert vk.dpc_select(x, torch.tensor([5, 3]), valid=v, **T).sum(1).tolist() == [5, 3]
    assert int(vk.dpc_select(x, 0, **T).sum()) == 0
    for out, assign in (vk.anchor_aggregate(x, keep_subset(), alpha=0.0, valid=v, **T),
                        vk.anchor_aggregate(x, keep_subset(), alpha=1, **T)):
        assert out.shape == x.shape and assign.shape == (F, N)
    one = torch.tensor([[True], [False]]).expand(F, N).contiguous()
    _, assign = vk.anchor_aggregate(x, keep_subset() & one, valid=one, **T)
    assert bool((assign[1] == -1).all())  # the frame without valid tokens has no anchors
    assert vk.scout_score_reduce(torch.rand(1, 2, 3, 4), **T).shape == (1, 4)
