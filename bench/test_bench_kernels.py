"""The kernel microbenchmarks under pytest-benchmark (same cases as ``bench/bench_kernels.py``, from
``bench/kernel_cases.py``):

    pytest bench/ --benchmark-only                          # time every case
    pytest bench/ --benchmark-only -k "prune_video"         # one op
    VISTA_BENCH_SHAPE=16,196,1152 pytest bench/ --benchmark-only
    pytest bench/ --benchmark-disable                       # run each case once (smoke)

On a GPU: 64 x 196 x {1152, 3584} bf16, the Triton op vs the batched reference vs a per-frame loop,
plus the CUDA-graph replay of ``prune_video(backend="triton")``. Without CUDA: 8 x 196 x 256, the
reference cases only (Triton's CPU interpreter is a debugging tool; its timings mean nothing).
Each case's ``extra_info`` holds the byte model: bytes of the floor traffic, floor microseconds
(with a known peak HBM bandwidth) and, after timing, GB/s and the share of the floor.
"""
from __future__ import annotations

import pytest
import torch

import kernel_cases as kc

DEVICE = "cuda" if (torch.cuda.is_available() and not kc.interpreter_active()) else "cpu"
SHAPE = kc.default_shape(DEVICE)
ROUNDS = 20 if DEVICE == "cuda" else 3
PEAK = kc.peak_gbps(kc.device_name(DEVICE)) if DEVICE == "cuda" else None
_INPUTS = {}


def inputs(D: int) -> kc.Inputs:
    if D not in _INPUTS:
        _INPUTS.clear()  # one shape resident at a time
        _INPUTS[D] = kc.make_inputs(SHAPE["frames"], SHAPE["tokens"], D, DEVICE, torch.bfloat16)
    return _INPUTS[D]


def _synced(fn):
    if DEVICE != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


def _group(benchmark, op, D):
    benchmark.group = f"{op} {SHAPE['frames']}x{SHAPE['tokens']}x{D}"


def _fill_info(benchmark, op, inp, D, impl, mode):
    benchmark.extra_info.update({"op": op, "impl": impl, "mode": mode, "D": D, "device": kc.device_name(DEVICE),
                                 "torch_threads": torch.get_num_threads() if DEVICE == "cpu" else None})
    stats = getattr(benchmark, "stats", None)
    median_s = getattr(getattr(stats, "stats", None), "median", None) if stats else None
    if median_s:
        benchmark.extra_info.update(kc.row_metrics(op, inp, median_s * 1e6, PEAK))


@pytest.mark.parametrize("D", SHAPE["dims"])
@pytest.mark.parametrize("impl", kc.IMPLS)
@pytest.mark.parametrize("op", kc.OPS)
def test_kernel(benchmark, op, impl, D):
    if impl == "triton" and not kc.can_time_kernels(DEVICE):
        pytest.skip("Triton timings need a CUDA device (interpreter timings are meaningless)")
    inp = inputs(D)
    fn = _synced(kc.make_callable(op, impl, inp))
    _group(benchmark, op, D)
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _fill_info(benchmark, op, inp, D, impl, "eager")


@pytest.mark.gpu
@pytest.mark.parametrize("D", SHAPE["dims"])
def test_prune_video_graph_replay(benchmark, D):
    if not kc.can_time_kernels(DEVICE):
        pytest.skip("CUDA graphs need a CUDA device")
    inp = inputs(D)
    eager = kc.make_callable("prune_video", "triton", inp)
    try:
        replay, out, graph = kc.graph_replay(eager)
    except Exception as e:  # noqa: BLE001 - reported as a skip with the reason: capture is a goal, not a given
        pytest.skip(f"prune_video could not be captured in a CUDA graph: {type(e).__name__}: {e}"[:300])
    replay()
    torch.cuda.synchronize()
    assert kc.outputs_equal(out, eager()), "graph replay differs from the eager prune"
    _group(benchmark, "prune_video", D)
    benchmark.pedantic(_synced(replay), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _fill_info(benchmark, "prune_video", inp, D, "triton", "graph")
    del graph
