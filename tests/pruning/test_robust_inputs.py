"""Issue #14 items 4-6: mixed dtypes in a batch, exact duplicates on every backend, magnitudes whose
squares overflow float32."""
from __future__ import annotations

import pytest
import torch

import vista
import vista_kernels as vk
from vista_kernels.ops import dpc_scores as ds
from vista_kernels.utils import kernel_interpreted

from tests.kernels import oracle

_INTERP = kernel_interpreted(ds._dpc_scores_kernel)
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not _INTERP and not torch.cuda.is_available(), reason="triton needs CUDA or TRITON_INTERPRET=1"))]


def _dev(backend):
    return "cuda" if backend == "triton" and not _INTERP else "cpu"


# ------------------------------------------------------------------------------ 4. mixed dtypes
@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtype_batch_equals_one_by_one(backend):
    g = torch.Generator().manual_seed(4)
    dev = _dev(backend)
    x32 = torch.randn(4, 30, 16, generator=g)
    xa, xb, xc = x32.bfloat16(), torch.randn(3, 21, 16, generator=g).half(), x32[:2].clone()
    qs = [torch.randn(16, generator=g).to(t.dtype) for t in (xa, xb, xc)]
    xs = [t.to(dev) for t in (xa, xb, xc)]
    qs = [q.to(dev) for q in qs]
    cfg = vista.VistaConfig(retention=0.2, backend=backend)
    batch = vista.prune_videos(xs, qs, None, cfg)
    for x, q, got in zip(xs, qs, batch):
        alone = vista.prune_video(x, q, None, cfg)
        assert got.tokens.dtype == x.dtype
        assert torch.equal(got.keep, alone.keep) and torch.equal(got.assign, alone.assign)
        assert torch.equal(got.tokens, alone.tokens)
        assert torch.equal(got.frame_index, alone.frame_index) and torch.equal(got.token_index, alone.token_index)


# ------------------------------------------------------------------------------ 5. duplicates
def _with_duplicates(D, contiguous, seed):
    g = torch.Generator().manual_seed(seed)
    N = 20
    base = torch.randn(2, D, N, generator=g) * 0.5
    x = base.transpose(1, 2)  # (2, N, D), not contiguous
    if contiguous:
        x = x.contiguous()
    for f in range(2):  # row 3 copied to 9 and 14 (frame 1: row 0 to 19)
        src, dsts = (3, (9, 14)) if f == 0 else (0, (19,))
        for d in dsts:
            x[f, d] = x[f, src]
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D", [16, 1024, 3584])
@pytest.mark.parametrize("contiguous", [True, False])
def test_exact_duplicates_are_ties_on_every_backend(backend, D, contiguous):
    x = _with_duplicates(D, contiguous, seed=D + contiguous)
    xo = x.to(_dev(backend))
    rho = vk.knn_density(xo, 7, backend=backend).cpu()
    # identical tokens have bit-identical densities; the later copies' nearest denser token is the
    # first copy at distance exactly 0
    assert rho[0, 3] == rho[0, 9] == rho[0, 14] and rho[1, 0] == rho[1, 19]
    delta = vk.dpc_delta(xo, rho.to(xo.device), backend=backend).cpu()
    assert delta[0, 9] == 0 and delta[0, 14] == 0 and delta[1, 19] == 0 and delta[0, 3] > 0
    # kept sets and assignments equal the fp64 oracle (which applies the same rule)
    k_keep = torch.tensor([6, 5])
    g_oracle = oracle.oracle_dpc_gamma(x, None, 7)
    keep = vk.dpc_select(xo, k_keep.to(xo.device), k=7, backend=backend).cpu()
    assert torch.equal(keep, oracle.oracle_topk(g_oracle, k_keep))
    # the copies of a kept token are absorbed by the lowest-index copy
    keep2 = torch.zeros(2, 20, dtype=torch.bool)
    keep2[0, [3, 9, 14, 5]] = True
    keep2[1, [0, 19, 7]] = True
    _, assign = vk.anchor_aggregate(xo, keep2.to(xo.device), backend=backend)
    assert torch.equal(assign.cpu(), oracle.oracle_anchor_assign(x, keep2))


def test_duplicates_agree_across_backends_and_layouts():
    if not _INTERP and not torch.cuda.is_available():
        pytest.skip("needs triton")
    x = _with_duplicates(1024, False, seed=3)
    outs = []
    for backend in ("torch", "triton"):
        for xx in (x, x.contiguous()):
            outs.append(vk.dpc_select(xx.to(_dev(backend)), torch.tensor([6, 5]).to(_dev(backend)), backend=backend).cpu())
    assert all(torch.equal(o, outs[0]) for o in outs)


# ------------------------------------------------------------------------------ 6. magnitudes
@pytest.mark.parametrize("op", ["frame_cosine", "knn_density", "dpc_select", "anchor_aggregate"])
def test_magnitudes_that_overflow_float32_are_rejected(op):
    x = torch.randn(2, 5, 8) * 1e20
    with pytest.raises(ValueError, match=r"x has values up to .* \|x\| <= "):
        if op == "dpc_select":
            vk.dpc_select(x, 2, backend="torch")
        elif op == "anchor_aggregate":
            vk.anchor_aggregate(x, torch.ones(2, 5, dtype=torch.bool), backend="torch")
        else:
            getattr(vk, op)(x, backend="torch")


@pytest.mark.parametrize("scale", [1e20, 1e38])
def test_prune_video_rejects_overflowing_magnitudes_naming_x(scale):
    x = (torch.rand(3, 6, 8) * 2 - 1) * scale  # finite, but squares overflow float32
    with pytest.raises(ValueError, match=r"^x has values up to"):
        vista.prune_video(x, torch.randn(8), config=vista.VistaConfig(retention=0.5, backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_largest_accepted_magnitude_gives_finite_results(backend):
    D = 8
    lim = vk.token_limit(D)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 6, D, generator=g) * 2 - 1) * lim * 0.999
    x[:, 0, 0] = lim * 0.999
    x = x.to(_dev(backend))
    assert bool(torch.isfinite(vk.frame_cosine(x, backend=backend)).all())
    rho = vk.knn_density(x, backend=backend)
    assert bool(torch.isfinite(vk.dpc_delta(x, rho, backend=backend)).all())
    out = vista.prune_video(x, x[0, 0] / lim, config=vista.VistaConfig(retention=0.5, backend=backend))
    assert bool(torch.isfinite(out.tokens).all()) and out.num_tokens == vista.retained_count(3, 6, 0.5)
