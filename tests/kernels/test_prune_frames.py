"""Whole-video pruning: backend="triton" gives the same kept tokens as backend="torch"."""
from __future__ import annotations

import pytest
import torch

import vista
import vista_kernels as vk
from vista_kernels.ops import dpc_scores as ds
from vista_kernels.utils import kernel_interpreted

_INTERP = kernel_interpreted(ds._dpc_scores_kernel)
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not _INTERP, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(_INTERP, reason="interpreter mode")]),
]
TOKEN_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_scout", [False, True])
def test_prune_video_triton_equals_torch(device, dtype, with_scout):
    g = torch.Generator().manual_seed(17)
    T, N, D = 5, 49, 32
    base = torch.randn(3, 1, D, generator=g)  # three scenes -> segments
    x = (base[[0, 0, 1, 1, 2]] + 0.6 * torch.randn(T, N, D, generator=g)).to(dtype).to(device)
    q = torch.randn(D, generator=g).to(dtype).to(device)
    s = torch.rand(T, N, generator=g).to(device) if with_scout else None
    res = {}
    for backend in ("triton", "torch"):
        cfg = vista.VistaConfig(retention=0.15, backend=backend)
        res[backend] = vista.prune_video(x, q, scout_scores=s, config=cfg)
    a, b = res["triton"], res["torch"]
    assert torch.equal(a.budgets, b.budgets) and torch.equal(a.segment_id, b.segment_id)
    assert torch.equal(a.frame_index, b.frame_index)
    assert torch.equal(a.token_index, b.token_index)
    assert torch.equal(a.keep, b.keep) and torch.equal(a.assign, b.assign)
    tol = TOKEN_TOL[dtype]
    torch.testing.assert_close(a.tokens.float(), b.tokens.float(), rtol=tol, atol=tol)
    assert a.tokens.dtype == dtype and a.tokens.shape[0] == vista.retained_count(T, N, 0.15)


@pytest.mark.gpu
def test_triton_ops_run_on_the_tensors_device_not_the_current_one():
    # Triton launches on the *current* CUDA device; the dispatcher and prune_video make x's device
    # current first. Needs two GPUs: data on cuda:1 while cuda:0 is current.
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    import vista

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 17, 32, generator=g)
    q = torch.randn(32, generator=g)
    ref = vista.prune_video(x, q, config=vista.VistaConfig(retention=0.3, backend="torch"))
    torch.cuda.set_device(0)
    out = vista.prune_video(x.to("cuda:1"), q.to("cuda:1"), config=vista.VistaConfig(retention=0.3, backend="triton"))
    assert out.tokens.device == torch.device("cuda:1")
    assert torch.equal(out.keep.cpu(), ref.keep)
    torch.testing.assert_close(out.tokens.cpu(), ref.tokens, rtol=1e-5, atol=1e-5)
    rho = vk.knn_density(x.to("cuda:1"), backend="triton")
    torch.testing.assert_close(rho.cpu(), vk.knn_density(x, backend="torch"), rtol=1e-5, atol=1e-6)
