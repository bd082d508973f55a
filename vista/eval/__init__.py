"""Evaluation harness: multiple-choice long-video benchmarks from local files, retention sweeps.

    from vista.eval import load_benchmark, run_sweep, write_outputs
    bench = load_benchmark("videomme", "/data/Video-MME", limit=100)
    result = run_sweep([bench], [1.0, 0.25], make_answer_fn, "out/cache.jsonl")
    write_outputs(result.summary(), "out")

``make_answer_fn(retention)`` returns ``answer_fn(video_path, prompt) -> (text, stats)``;
:func:`pipeline_answer_factory` builds one from a model directory with the Vista pipeline.
"""
from .prompt import ANSWER_INSTRUCTION, build_prompt, extract_letter
from .readers import BENCHMARKS, Benchmark, Sample, load_benchmark
from .runner import (
    CacheLockedError,
    ResultCache,
    SweepResult,
    approx_prefill_flops,
    pipeline_answer_factory,
    render_markdown,
    run_sweep,
    summarize,
    write_outputs,
)

__all__ = [
    "ANSWER_INSTRUCTION",
    "BENCHMARKS",
    "Benchmark",
    "CacheLockedError",
    "ResultCache",
    "Sample",
    "SweepResult",
    "approx_prefill_flops",
    "build_prompt",
    "extract_letter",
    "load_benchmark",
    "pipeline_answer_factory",
    "render_markdown",
    "run_sweep",
    "summarize",
    "write_outputs",
]
