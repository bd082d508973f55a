"""``vista eval``: retention sweeps over local copies of Video-MME, MLVU, LongVideoBench, MVBench.

Wire-up (in vista/cli/__init__.py)::

    from vista.cli.eval import add_eval_parser
    add_eval_parser(sub)          # sets func=cmd_eval on the "eval" sub-command
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from ..eval.readers import _ALIASES, BENCHMARKS
from .app import UsageError

DEFAULT_RETENTIONS = (1.0, 0.25, 0.15, 0.10)


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="accuracy / FLOPs / latency sweep over retention ratios on local benchmark files",
        description=(
            "Evaluate a Video-LLM with Vista pruning on multiple-choice video benchmarks read from local "
            "files, one pass per retention ratio. Every answered question is cached in a JSONL file, so an "
            "interrupted run resumes where it stopped. Writes results.json and results.md to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # every option's help shows its default
    )
    p.add_argument("--model", required=True, default=argparse.SUPPRESS, help="model directory (transformers format)")
    p.add_argument("--bench", nargs="+", required=True, default=argparse.SUPPRESS, metavar="NAME",
                   help=f"benchmark(s): {', '.join(BENCHMARKS)}")
    p.add_argument("--data", nargs="+", required=True, default=argparse.SUPPRESS, metavar="DIR",
                   help="benchmark folder(s), one per --bench, in the published layout "
                        "(for jsonl: the .jsonl file or its folder)")
    p.add_argument("--annotation", nargs="+", default=None, metavar="FILE",
                   help="annotation file(s), one per --bench, overriding the default file in --data (None: the default)")
    p.add_argument("--video-dir", nargs="+", default=None, metavar="DIR",
                   help="video folder(s), one per --bench, overriding the default folder in --data (None: the default)")
    p.add_argument("--retention", nargs="+", type=float, default=list(DEFAULT_RETENTIONS), metavar="R",
                   help="retention ratios in (0, 1]; include 1.0 for relative accuracy")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N questions of each benchmark (None: all)")
    p.add_argument("--scout", default=None, metavar="PATH", help="semantic scout (BLIP-2 ITM) directory (None: anchors only)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="model dtype (None: the loader's)")
    p.add_argument("--num-frames", type=int, default=64, help="frames sampled per video (64: the paper's)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy decoding length")
    p.add_argument("--prompt-style", default="auto", choices=["auto", "llava", "qwen"],
                   help="prompt template; auto picks from the model's config")
    p.add_argument("--out", default="eval_results", metavar="DIR", help="output folder")
    p.add_argument("--cache", default=None, metavar="FILE",
                   help="per-question results cache (None: OUT/cache.jsonl)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first question whose model call fails")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
    return p


def _per_bench(values, n: int, flag: str):
    if values is None:
        return [None] * n
    if len(values) != n:
        raise UsageError(f"{flag} takes one value per --bench ({n}), got {len(values)}")
    return list(values)


def _detect_style(model_path: str) -> str:
    from ..eval.prompt import prompt_style_for

    cfg = Path(model_path) / "config.json"
    if cfg.is_file():
        import json

        try:
            return prompt_style_for(json.loads(cfg.read_text(encoding="utf-8")).get("model_type"))
        except (ValueError, AttributeError):
            pass
    return prompt_style_for(str(model_path))


def cmd_eval(args, answer_factory=None) -> int:
    """Run the sweep described by ``args``; ``answer_factory`` replaces the real model (tests)."""
    from ..eval.runner import ResultCache, pipeline_answer_factory, render_markdown, run_sweep, write_outputs

    anns, vdirs, retentions = _check_eval_args(args, answer_factory is not None)
    benches = _load_benches(args, anns, vdirs)

    style = args.prompt_style if args.prompt_style != "auto" else _detect_style(args.model)
    if answer_factory is None:
        answer_factory = pipeline_answer_factory(args.model, scout_path=args.scout, device=args.device,
                                                 dtype=args.dtype, max_new_tokens=args.max_new_tokens,
                                                 num_frames=args.num_frames)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache.jsonl"
    meta = {"model": str(Path(args.model).resolve()) if Path(args.model).exists() else str(args.model),
            "scout": str(Path(args.scout).resolve()) if args.scout else None,
            "max_new_tokens": args.max_new_tokens, "num_frames": args.num_frames, "device": args.device,
            "dtype": args.dtype}

    try:  # the cache is opened (and locked) before the model is loaded
        opened = ResultCache(cache, dict(meta, prompt_style=style))
    except ValueError as e:  # another run holds the lock, or a cache from another run / not a cache
        raise UsageError(str(e)) from None
    with opened:
        for problem in opened.problems:  # skipped lines: said on stderr, whatever the warning filters
            print(f"vista eval: note: cache: {problem}", file=sys.stderr)
        result = run_sweep(benches, retentions, answer_factory, opened, prompt_style=style, meta=meta,
                           progress=not args.no_progress, fail_fast=args.fail_fast)
    summary = result.summary()
    jp, mp = write_outputs(summary, out)
    print(render_markdown(summary))
    print(f"wrote {jp} and {mp} ({result.computed} answered now, cache {cache})", file=sys.stderr)
    return 0


def _check_eval_args(args, fake_model: bool):
    """Usage checks of ``vista eval``'s options (UsageError naming the option); returns the
    per-benchmark annotation files, video folders (None: the default) and the checked retentions."""
    from ..eval.runner import check_retentions

    n = len(args.bench)
    for name in args.bench:
        if str(name).lower() not in BENCHMARKS and str(name).lower() not in _ALIASES:
            close = difflib.get_close_matches(str(name).lower(), [*BENCHMARKS, *_ALIASES], n=1)
            raise UsageError(f"--bench {name}: unknown benchmark"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; choose from {', '.join(BENCHMARKS)}")
    if len(args.data) != n:
        raise UsageError(f"--data takes one folder per --bench ({n}), got {len(args.data)}")
    dups = sorted({b for b in args.bench if args.bench.count(b) > 1})
    if dups:
        raise UsageError(f"--bench {' '.join(dups)} given more than once; results are "
                         f"cached by benchmark/question, so two {dups[0]!r} runs would overwrite each other. "
                         f"Run them separately, each with its own --out/--cache")
    anns = _per_bench(args.annotation, n, "--annotation")
    vdirs = _per_bench(args.video_dir, n, "--video-dir")
    try:
        retentions = check_retentions(args.retention)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.num_frames < 1:
        raise UsageError(f"--num-frames must be >= 1, got {args.num_frames}")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not fake_model and not Path(args.model).exists():
        raise UsageError(f"--model {args.model} does not exist")
    if args.scout is not None and not Path(args.scout).exists():
        raise UsageError(f"--scout {args.scout} does not exist")
    return anns, vdirs, retentions


def _load_benches(args, anns, vdirs) -> list:
    """Read every ``--bench`` (one line each on stderr: questions, skipped ones); UsageError when a
    benchmark cannot be read or no question has its video."""
    from ..eval.readers import load_benchmark

    benches = []
    for name, data, ann, vdir in zip(args.bench, args.data, anns, vdirs):
        try:
            b = load_benchmark(name, data, annotation=ann, video_dir=vdir, limit=args.limit)
        except (OSError, ValueError) as e:
            raise UsageError(f"{name}: {e}") from None
        print(f"{b.title}: {len(b.samples)} questions"
              + (f", {len(b.missing)} skipped (video not found)" if b.missing else "")
              + (f", {len(b.invalid)} invalid annotations skipped" if b.invalid else ""), file=sys.stderr)
        benches.append(b)
    if not any(b.samples for b in benches):
        raise UsageError("no question has its video; check --data / --video-dir")
    return benches
