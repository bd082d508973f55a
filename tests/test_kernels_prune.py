"""Whole-video pruning: backend="triton" gives the same kept tokens as backend="torch"."""
from __future__ import annotations

import pytest
import torch

import vista
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
