"""pytest set-up of the microbenchmarks (``pytest bench/ --benchmark-only``; not part of the test
suite run by a bare ``pytest``, see pytest.ini's testpaths).

Without a CUDA device Triton would only run in its CPU interpreter; the benchmark skips the Triton
cases there (interpreter timings are meaningless) and times the reference backend with one torch
thread (``VISTA_BENCH_THREADS=n`` to change it).
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
    # One intra-op thread unless VISTA_BENCH_THREADS says otherwise: on a small shared CPU machine
    # OpenMP contention makes the reference 10-25x slower and the timings noise.
    torch.set_num_threads(int(os.environ.get("VISTA_BENCH_THREADS", "1")))

HERE = os.path.dirname(os.path.abspath(__file__))
for p in (HERE, os.path.dirname(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
