"""The GPU path contract (DESIGN.md): after the entry checks, ``prune_video`` makes no host
synchronisation, launches at most 6 Triton kernels, compiles with ``torch.compile(fullgraph=True)``
and (on CUDA) replays from a CUDA graph with identical results."""
from __future__ import annotations

import pytest
import torch

import vista
import vista_kernels as vk
from vista_kernels.testing import count_host_syncs, count_triton_launches



def _video(T=8, N=196, D=64, dtype=torch.bfloat16, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, D, generator=g).to(dtype)
    q = torch.randn(D, generator=g).to(dtype)
    s = torch.rand(T, N, generator=g)
    return x.to(device), q.to(device), s.to(device)


# ------------------------------------------------------------------------- the counters themselves
def test_sync_counter_sees_every_kind_of_sync():
    t = torch.arange(6.0)
    m = t > 2
    cases = [lambda: t.sum().item(), lambda: bool(m.any()), lambda: int(t[0]), lambda: float(t.max()),
             lambda: t[m], lambda: torch.nonzero(m), lambda: m.nonzero(), lambda: t.tolist(),
             lambda: torch.bincount(t.long()), lambda: torch.unique(t), lambda: t.cpu(), lambda: t.to("cpu"),
             lambda: torch.equal(t, t), lambda: t.masked_select(m), lambda: torch.where(m),
             lambda: t.repeat_interleave(t.long())]
    for i, fn in enumerate(cases):
        with count_host_syncs() as c:
            fn()
        assert c.count >= 1, f"case {i} not counted"
    with count_host_syncs() as c:  # static-shape ops: none
        u = torch.where(m, t, 0.0).cumsum(0)
        torch.sort(u, stable=True)
        t.index_add_(0, torch.tensor([0, 1]), torch.ones(2))
        t.repeat_interleave(2)
    assert c.count == 0, c.calls


def test_launch_counter_counts_interpreted_launches():
    x, _, _ = _video(T=2, N=17, D=16, dtype=torch.float32)
    with count_triton_launches() as n:
        vk.frame_cosine(x, backend="triton")
    assert n.count == 2 and n.kernels  # geometry (means only) + cosine


# --------------------------------------------------------------------------------- prune_video
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("with_scout", [True, False])
def test_prune_video_makes_no_host_sync(backend, with_scout):
    x, q, s = _video(T=4, N=40, D=32)
    cfg = vista.VistaConfig(retention=0.15, backend=backend)
    vista.prune_video(x, q, s if with_scout else None, cfg)  # warm-up (imports, kernel caches)
    with count_host_syncs() as syncs, count_triton_launches() as launches:
        out = vista.prune_video(x, q, s if with_scout else None, cfg, check_finite=False)
    assert syncs.count == 0, syncs.calls
    if backend == "triton":
        assert 1 <= launches.count <= 6, launches.kernels
    else:
        assert launches.count == 0
    assert out.tokens.shape == (vista.retained_count(4, 40, 0.15), 32)
    # the entry value scan costs exactly one sync for the whole batch
    with count_host_syncs() as syncs:
        vista.prune_video(x, q, s if with_scout else None, cfg)
    assert syncs.count == 1, syncs.calls


def test_ragged_batch_makes_no_host_sync():
    xa, qa, sa = _video(T=5, N=196, D=32, seed=1)
    xb, qb, _ = _video(T=3, N=50, D=32, seed=2)
    cfg = vista.VistaConfig(retention=0.2, backend="torch")
    with count_host_syncs() as syncs:
        vista.prune_videos([xa, xb], [qa, qb], [sa, None], cfg, check_finite=False)
    assert syncs.count == 0, syncs.calls


def test_triton_and_torch_paths_agree_after_the_rewrite():
    x, q, s = _video(T=3, N=70, D=24, dtype=torch.float32, seed=5)
    cfg = vista.VistaConfig(retention=0.15)
    a = vista.prune_video(x, q, s, cfg.replace(backend="torch"))
    b = vista.prune_video(x, q, s, cfg.replace(backend="triton"))
    for name in ("keep", "foveal", "assign", "frame_index", "token_index", "budgets", "segment_id"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.tokens, b.tokens, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- torch.compile
def test_prune_video_compiles_fullgraph_on_the_torch_path():
    x, q, s = _video(T=4, N=17, D=16, dtype=torch.float32, seed=3)
    cfg = vista.VistaConfig(retention=0.25, backend="torch")

    def f(x, q, s):
        out = vista.prune_video(x, q, s, cfg, check_finite=False)
        return out.tokens, out.frame_index, out.token_index, out.budgets, out.keep

    eager = f(x, q, s)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(x, q, s)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def test_ops_are_registered_with_torch_library():
    for name in ("frame_stats", "prune_frames"):
        assert hasattr(torch.ops.vista_kernels, name)


# ------------------------------------------------------------------------------- CUDA graphs
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_prune_video_replays_from_a_cuda_graph(backend):
    x, q, s = _video(T=16, N=196, D=128, device="cuda", seed=7)
    cfg = vista.VistaConfig(retention=0.15, backend=backend)
    ref = vista.prune_video(x, q, s, cfg)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            vista.prune_video(x, q, s, cfg, check_finite=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = vista.prune_video(x, q, s, cfg, check_finite=False)
    graph.replay()
    torch.cuda.synchronize()
    for name in ("keep", "assign", "frame_index", "token_index", "budgets"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    assert torch.equal(out.tokens, ref.tokens)
    x2, q2, s2 = _video(T=16, N=196, D=128, device="cuda", seed=8)  # new inputs, same graph
    x.copy_(x2), q.copy_(q2), s.copy_(s2)
    graph.replay()
    ref2 = vista.prune_video(x2, q2, s2, cfg)
    torch.cuda.synchronize()
    assert torch.equal(out.keep, ref2.keep) and torch.equal(out.tokens, ref2.tokens)
