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


# ------------------------------------------------------------------ vista_kernels.prune_frames
import vista_kernels as vk  # noqa: E402

BACKENDS = ["torch", "triton"]


def _frames(F=3, N=10, D=8, seed=0):
    return torch.randn(F, N, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("budgets, k_foveal, num_kept, valid_from, match", [
    ([3, 2, 4], None, 5, None, "sum to num_kept"),  # before: IndexError (torch), heap corruption (triton)
    ([3, 2, 4], None, 20, None, "sum to num_kept"),  # before: 11 garbage rows
    ([11, 2, 4], None, 17, None, "budgets must satisfy"),  # > N: before silently accepted
    ([-1, 2, 4], None, 5, None, "budgets must satisfy"),
    ([0, 2, 4], None, 6, None, "budgets must satisfy"),  # a frame with valid tokens but no anchor
    ([3, 2, 4], None, 9, 8, "budgets must satisfy"),  # more than the frame's 2 valid tokens
    ([3, 2, 4], [5, 0, 0], 9, None, "k_foveal must satisfy"),  # before: IndexError inside the op
    ([3, 2, 4], [-1, 0, 0], 9, None, "k_foveal must satisfy"),
])
def test_count_values_are_checked_with_the_finite_scan(backend, budgets, k_foveal, num_kept, valid_from, match):
    x = _frames()
    valid = None
    if valid_from is not None:
        valid = torch.ones(3, 10, dtype=torch.bool)
        valid[:, :valid_from] = False
    kf = None if k_foveal is None else torch.tensor(k_foveal)
    s = None if k_foveal is None else torch.rand(3, 10)
    with pytest.raises(ValueError, match=match):
        vk.prune_frames(x, torch.tensor(budgets), kf, s, valid, num_kept=num_kept, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_counts_without_the_scan_never_write_out_of_bounds(backend):
    # check_finite=False trusts the counts (documented precondition); a violation may give undefined
    # rows but must not write past the (num_kept, D) output (triton) or raise IndexError (torch)
    x = _frames()
    for budgets, kf, M in (([3, 2, 4], None, 5), ([10, 10, 10], None, 4), ([3, 2, 4], [8, 0, 0], 9)):
        k_f = None if kf is None else torch.tensor(kf)
        s = None if kf is None else torch.rand(3, 10)
        out = vk.prune_frames(x, torch.tensor(budgets), k_f, s, num_kept=M, backend=backend, check_finite=False)
        assert out.tokens.shape == (M, 8)
        good = vk.prune_frames(x, torch.tensor([3, 2, 4]), num_kept=9, backend=backend, check_finite=False)
        ref = vk.prune_frames(x, torch.tensor([3, 2, 4]), num_kept=9, backend="torch")
        assert torch.equal(good.keep, ref.keep)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gram_argument_is_checked(backend):
    x = _frames()
    b = torch.tensor([3, 2, 4])
    with pytest.raises(TypeError, match="gram"):
        vk.prune_frames(x, b, num_kept=9, gram=[1.0], backend=backend)
    if backend == "triton":
        with pytest.raises(ValueError, match="gram"):
            vk.prune_frames(x, b, num_kept=9, gram=torch.zeros(3, 10, 10, dtype=torch.float16), backend=backend)
        # an expanded (zero-stride) Gram tensor: the kernels index it as contiguous (F, N, N)
        g = vk.frame_stats(x[:1].expand(3, 10, 8), backend="triton", keep_gram=True)[2][:1].expand(3, 10, 10)
        out = vk.prune_frames(x[:1].expand(3, 10, 8), b, num_kept=9, gram=g, backend=backend)
        ref = vk.prune_frames(x[:1].expand(3, 10, 8), b, num_kept=9, backend="torch")
        assert torch.equal(out.keep, ref.keep) and torch.equal(out.assign, ref.assign)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_stats_of_no_frames_and_bad_keep_gram(backend):
    means, cos, gram = vk.frame_stats(torch.zeros(0, 5, 4), backend=backend)  # before: torch.cat error (torch)
    assert means.shape == (0, 4) and cos.shape == (0,)
    with pytest.raises(TypeError, match="keep_gram"):
        vk.frame_stats(_frames(), backend=backend, keep_gram="no")


# ------------------------------------------------------------------------- the sync counter
def test_sync_counter_sees_the_less_obvious_syncs():
    import numpy as np

    from vista_kernels.testing import count_host_syncs

    t = torch.arange(6.0)
    m = t > 2
    cases = {"in": lambda: 3.0 in t, "numpy.asarray": lambda: np.asarray(t), "complex": lambda: complex(t[0]),
             "tensor of tensors": lambda: torch.tensor([t[0], t[1]]),
             "repeat_interleave(repeats)": lambda: torch.repeat_interleave(m.long()),
             "index_put_ bool": lambda: t.clone().index_put_((m,), torch.tensor(0.0))}
    for name, fn in cases.items():
        with count_host_syncs() as c:
            fn()
        assert c.count >= 1, name
    for wait in ("synchronize",):  # explicit waits are no torch functions: wrapped while counting
        with count_host_syncs() as c:
            try:
                getattr(torch.cuda, wait)()
            except (RuntimeError, AssertionError):  # no CUDA here: the call is still recorded
                pass
        assert c.count == 1, c.calls
    with count_host_syncs() as c:  # still static: no false positives
        torch.tensor([1.0, 2.0])
        torch.repeat_interleave(t, 2)
        t.clone().index_put_((torch.tensor([0, 1]),), torch.tensor(0.0))
    assert c.count == 0, c.calls
    assert torch.cuda.synchronize.__name__ == "synchronize"  # unwrapped again


# ---------------------------------------------------------------------------------- threads
@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_prune_video_equals_single_threaded(backend):
    # before (triton under the interpreter): InterpreterError('x >= grid_dim[0]') - the interpreter's
    # grid lives in module globals and two threads interleaved their programs
    from concurrent.futures import ThreadPoolExecutor

    import vista

    g = torch.Generator().manual_seed(1)
    vids = []
    for i in range(4):
        dt = torch.bfloat16 if i % 2 else torch.float32
        x = torch.randn(2, 9 + 4 * i, 8, generator=g).to(dt)
        vids.append((x, torch.randn(8, generator=g).to(dt), torch.rand(2, 9 + 4 * i, generator=g) if i % 3 else None))
    cfg = vista.VistaConfig(retention=0.3, backend=backend)
    ref = [vista.prune_video(x, q, s, cfg) for x, q, s in vids]
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda i: vista.prune_video(*vids[i % 4], cfg, check_finite=bool(i % 2)), range(12)))
    for i, o in enumerate(outs):
        r = ref[i % 4]
        assert torch.equal(o.keep, r.keep) and torch.equal(o.assign, r.assign) and torch.equal(o.tokens, r.tokens)


# ---------------------------------------------------------------------------- torch.compile
@pytest.mark.slow
def test_prune_video_compiles_with_dynamic_shapes():
    # before: dynamic=True made config floats symbolic and retained_count's math.isfinite check
    # broke the graph ("torch.* op returned non-Tensor")
    import vista

    cfg = vista.VistaConfig(retention=0.25, backend="torch")

    def f(x, q, s):
        o = vista.prune_video(x, q, s, cfg, check_finite=False)
        return o.tokens, o.frame_index, o.budgets, o.keep, o.assign

    cf = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=True)
    g = torch.Generator().manual_seed(3)
    for T, N, dt in ((4, 17, torch.float32), (3, 9, torch.float32), (2, 6, torch.bfloat16)):
        x, q, s = torch.randn(T, N, 8, generator=g).to(dt), torch.randn(8, generator=g).to(dt), torch.rand(T, N, generator=g)
        for a, b in zip(f(x, q, s), cf(x, q, s)):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------- duplicates
@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_are_ordered_by_index_even_when_their_rho_differs_by_an_ulp(backend):
    # Bit-identical tokens in different row tiles can get rho an ulp apart (their Gram rows come
    # from different tl.dot tiles / BLAS blocks); seen: bf16 N=70 with row 2 copied to row 64 and 5
    # padding tokens -> triton kept 64, torch kept 2. Duplicates must be ordered by index alone.
    from tests.kernels.oracle import oracle_dpc_delta

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 70, 16, generator=g)
    x[:, 64] = x[:, 2]
    valid = torch.ones(1, 70, dtype=torch.bool)
    valid[:, 65:] = False
    rho = vk.knn_density(x, valid=valid, backend="torch")
    rho[0, 64] = torch.nextafter(rho[0, 2], torch.tensor(2.0))  # the later copy looks an ulp denser
    delta = vk.dpc_delta(x, rho, valid, backend=backend)
    assert float(delta[0, 64]) == 0.0 and float(delta[0, 2]) > 0.0
    torch.testing.assert_close(delta.double(), oracle_dpc_delta(x, rho, valid), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- overflow
@pytest.mark.parametrize("scale", [1e38, 1e-40])
def test_question_magnitude_does_not_change_the_plan(scale):
    # before: |q| = 1e38 -> q.norm() = inf -> relevance uniform (or NaN with mixed signs);
    # subnormal q -> norms clamped -> relevance uniform. The relevance is a cosine: scale-free.
    import vista

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 16, generator=g)
    x[1] += 2.0
    q = torch.randn(16, generator=g)
    cfg = vista.VistaConfig(retention=0.3, backend="torch")
    ref = vista.plan_budgets(x, q, config=cfg)
    qs = q.double() * scale
    qs[::2] = -qs[::2]
    qr = q.clone()
    qr[::2] = -qr[::2]
    ref = vista.plan_budgets(x, qr, config=cfg)
    out = vista.plan_budgets(x, qs.float(), config=cfg)
    torch.testing.assert_close(out.relevance, ref.relevance, rtol=1e-5, atol=1e-6)
    assert out.budgets.tolist() == ref.budgets.tolist()


def test_check_finite_must_be_a_bool():
    # before: check_finite="no" was truthy and silently scanned
    import vista

    x, q = _frames(), torch.randn(8)
    with pytest.raises(TypeError, match="check_finite"):
        vista.prune_video(x, q, None, vista.VistaConfig(backend="torch"), check_finite="no")
    with pytest.raises(TypeError, match="check_finite"):
        vk.prune_frames(x, torch.tensor([3, 2, 4]), num_kept=9, backend="torch", check_finite=0)
    with pytest.raises(TypeError, match="check_finite"):
        vk.frame_stats(x, backend="torch", check_finite=None)


def test_check_finite_rejects_what_it_cannot_scan():
    # before: a list or float NaN passed silently, complex raised NotImplementedError, a finite
    # fp64 beyond float32 range raised KeyError('x'), limits=5 raised "int is not iterable"
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        vk.check_finite(x=[float("nan")])
    with pytest.raises(TypeError, match="x must be a real tensor"):
        vk.check_finite(x=torch.tensor([complex("nan")]))
    with pytest.raises(TypeError, match="limits"):
        vk.check_finite(limits=5, x=torch.ones(2))
    with pytest.raises(ValueError, match="limits"):
        vk.check_finite(limits={"x": float("nan")}, x=torch.ones(2))
    vk.check_finite(x=torch.tensor([1e300], dtype=torch.float64), m=torch.ones(2, dtype=torch.bool), s=None)
    with pytest.raises(ValueError, match="q contains NaN"):
        vk.check_finite(x=torch.ones(2), q=torch.tensor([float("nan")], dtype=torch.float64))


@pytest.mark.parametrize("alloc", [allocate_budgets, allocate_budgets_device])
def test_allocators_reject_zero_frames(alloc):
    # before: ZeroDivisionError from total // T
    with pytest.raises(ValueError, match="T must be"):
        alloc(torch.zeros(0, dtype=torch.int64), torch.zeros(0), 0, 5, 0, 0.1)
