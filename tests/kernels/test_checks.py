"""Checks common to every op: bad inputs to the Triton host wrappers raise the reference's
ValueError/TypeError naming the argument, CPU tensors without the interpreter get a clear error, and
the public dispatch resolves ``backend=`` / ``$VISTA_BACKEND`` the same way for every op. Each op's
own malformed calls are tabled in its ``test_<op>.py``."""
from __future__ import annotations

import pytest
import torch

import vista_kernels as vk
from tests.kernels.cases import F, N, T, VALID, X, keep_subset, malformed_calls
from vista_kernels import utils
from vista_kernels.ops import TRITON_OPS
from vista_kernels.ops import dpc_scores as ds
from vista_kernels.utils import kernel_interpreted

#: The Triton host-wrapper tests run the kernels on CPU tensors: interpreter only.
TRITON_ON_CPU = pytest.mark.skipif(not kernel_interpreted(ds._dpc_scores_kernel),
                                   reason="CPU tensors need TRITON_INTERPRET=1")


def x3(F=2, N=5, D=8, dtype=torch.float32):
    return torch.randn(F, N, D).to(dtype)


@TRITON_ON_CPU
def test_registry_covers_every_op():
    assert set(TRITON_OPS) == {"frame_cosine", "knn_density", "dpc_delta", "dpc_gamma", "dpc_select",
                               "anchor_aggregate", "scout_score_reduce"}


@TRITON_ON_CPU
@pytest.mark.parametrize("op", ["frame_cosine", "knn_density", "dpc_gamma"])
def test_tokens_checked(op):
    fn = TRITON_OPS[op]
    with pytest.raises(ValueError, match="x must have shape"):
        fn(torch.randn(5, 8))
    with pytest.raises(TypeError, match="x must be float32"):
        fn(torch.ones(2, 5, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fn([[1.0]])
    bad = x3()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):
        fn(bad)
    with pytest.raises(ValueError, match="valid must have shape"):
        fn(x3(), valid=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="valid must have dtype torch.bool"):
        fn(x3(), valid=torch.ones(2, 5))
    with pytest.raises(ValueError, match="valid is on meta"):
        fn(x3(), valid=torch.ones(2, 5, dtype=torch.bool, device="meta"))


@TRITON_ON_CPU
def test_k_rho_k_keep_checked():
    x = x3()
    with pytest.raises(ValueError, match="k must be >= 1"):
        vk.knn_density(x, 0, backend="triton")
    with pytest.raises(TypeError, match="k must be an int"):
        vk.dpc_gamma(x, k=2.5, backend="triton")
    with pytest.raises(ValueError, match="rho contains NaN"):
        vk.dpc_delta(x, torch.full((2, 5), float("nan")), backend="triton")
    with pytest.raises(ValueError, match="rho must have shape"):
        vk.dpc_delta(x, torch.ones(2, 4), backend="triton")
    with pytest.raises(ValueError, match="k_keep"):
        vk.dpc_select(x, 6, backend="triton")  # larger than N
    with pytest.raises(ValueError, match=r"k_keep\[1\]"):
        vk.dpc_select(x, torch.tensor([2, 4]), valid=torch.tensor([[True] * 5, [True] * 3 + [False] * 2]),
                      backend="triton")
    with pytest.raises(ValueError, match="k_keep must be >= 0"):
        vk.dpc_select(x, -1, backend="triton")
    with pytest.raises(TypeError, match="k_keep must be an integer tensor"):
        vk.dpc_select(x, torch.tensor([1.0, 2.0]), backend="triton")


@TRITON_ON_CPU
def test_anchor_checks():
    x = x3()
    keep = torch.zeros(2, 5, dtype=torch.bool)
    keep[:, 0] = True
    with pytest.raises(ValueError, match="keep has no kept token in frame 1"):
        vk.anchor_aggregate(x, torch.tensor([[True] + [False] * 4, [False] * 5]), backend="triton")
    with pytest.raises(ValueError, match="alpha must be in"):
        vk.anchor_aggregate(x, keep, alpha=1.5, backend="triton")
    with pytest.raises(ValueError, match="keep must be a subset of valid"):
        vk.anchor_aggregate(x, keep, valid=~keep, backend="triton")
    with pytest.raises(TypeError, match="keep must have dtype torch.bool"):
        vk.anchor_aggregate(x, keep.float(), backend="triton")


@TRITON_ON_CPU
def test_scout_checks():
    with pytest.raises(ValueError, match="attn must have shape"):
        vk.scout_score_reduce(torch.rand(2, 3, 4), backend="triton")
    with pytest.raises(TypeError, match="attn must be a floating tensor"):
        vk.scout_score_reduce(torch.ones(2, 3, 4, 5, dtype=torch.int32), backend="triton")
    with pytest.raises(ValueError, match="at least one head"):
        vk.scout_score_reduce(torch.rand(2, 0, 4, 5), backend="triton")
    bad = torch.rand(1, 2, 3, 4)
    bad[0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="^attn contains NaN or inf values$"):
        vk.scout_score_reduce(bad, backend="triton")


@TRITON_ON_CPU
def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    # the dispatcher reads the environment...
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        vk.knn_density(x3(), backend="triton")
    assert vk.resolve_backend("auto", x3()) == "torch"
    monkeypatch.undo()
    # ...and the wrappers check how the kernels were built
    monkeypatch.setattr(utils, "kernel_interpreted", lambda kernel: False)
    for op, args in [("knn_density", (x3(),)), ("anchor_aggregate", (x3(), torch.ones(2, 5, dtype=torch.bool))),
                     ("scout_score_reduce", (torch.rand(1, 2, 3, 4),)), ("frame_cosine", (x3(),))]:
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            TRITON_OPS[op](*args)


@TRITON_ON_CPU
def test_backend_env_override(monkeypatch):
    x = x3()
    monkeypatch.setenv("VISTA_BACKEND", "triton")
    assert vk.resolve_backend("auto", x) == "triton"
    torch.testing.assert_close(vk.knn_density(x), vk.knn_density(x, backend="torch"), rtol=1e-5, atol=1e-6)


@TRITON_ON_CPU
def test_empty_video_and_tiny_dims():
    x = torch.randn(0, 5, 8)
    assert vk.frame_cosine(x, backend="triton").shape == (0,)
    assert vk.knn_density(x, backend="triton").shape == (0, 5)
    assert vk.dpc_select(x, 0, backend="triton").shape == (0, 5)
    out, assign = vk.anchor_aggregate(x, torch.zeros(0, 5, dtype=torch.bool), backend="triton")
    assert out.shape == (0, 5, 8) and assign.shape == (0, 5)
    assert vk.scout_score_reduce(torch.rand(0, 2, 3, 4), backend="triton").shape == (0, 4)
    # D = 1 (a single feature; blocks are masked)
    x1 = torch.randn(2, 6, 1)
    torch.testing.assert_close(vk.dpc_gamma(x1, backend="triton"), vk.dpc_gamma(x1, backend="torch"),
                               rtol=1e-5, atol=1e-6)


# ============================================== the public dispatch of every op: backend, bad calls


# (id, call, exception type, regex the message must match: the argument's name)
BAD_CALLS = [
    ("backend-unknown", lambda: vk.knn_density(X(), backend="cuda"), ValueError, r"^backend must be one of"),
    ("backend-none", lambda: vk.frame_cosine(X(), backend=None), ValueError, r"^backend must be one of"),
    ("backend-case", lambda: vk.dpc_select(X(), 1, backend="Torch"), ValueError, r"^backend must be one of"),
    ("backend-unknown-scout", lambda: vk.scout_score_reduce(torch.rand(1, 1, 1, 2), backend="numpy"), ValueError, r"^backend must be one of"),
]


@malformed_calls(BAD_CALLS)
def test_malformed_call_names_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_at_least_20_distinct_cases():
    from tests.kernels import test_anchor_aggregate, test_dpc_scores, test_frame_stats, test_scout_score_reduce

    op_modules = (test_frame_stats, test_dpc_scores, test_anchor_aggregate, test_scout_score_reduce)
    CASES = BAD_CALLS + [row for m in op_modules for row in m.BAD_CALLS]
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
