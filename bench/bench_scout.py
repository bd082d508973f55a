"""Semantic-scout throughput: frames/s of ``SemanticScout.scores`` (preprocessing included).

Default: the tiny random-config scout on CPU (no download), JSON to bench/results/scout_<device>.json.

    python bench/bench_scout.py                                  # tiny scout, CPU
    python bench/bench_scout.py --checkpoint /models/blip2-itm-vit-g --device cuda   # real scout, bf16
    python bench/bench_scout.py --full-size --device cuda        # random weights, BLIP-2 ViT-g size

``--full-size`` builds a random-weight model with Salesforce/blip2-itm-vit-g's shapes (ViT-g/14 at
224 px: 39 layers, hidden 1408; Q-Former: 12 layers, hidden 768, 32 queries), so its cost is the real
scout's cost without downloading it. Timings are medians over ``--repeats`` runs after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_full_size_scout(device, dtype):
    """Random-weight scout with BLIP-2 ITM ViT-g shapes (the tiny processor/tokenizer)."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor, BlipImageProcessor

    from vista.scout import SemanticScout
    from vista.scout.scout import _keep_qformer_fp32
    from vista.scout.tiny import tiny_scout_tokenizer

    tok = tiny_scout_tokenizer()
    processor = Blip2Processor(image_processor=BlipImageProcessor(size=224), tokenizer=tok)
    cfg = Blip2Config(
        vision_config=dict(initializer_range=0.02),  # defaults = ViT-g/14 (39 layers, hidden 1408)
        qformer_config=dict(use_qformer_text_input=True),  # defaults = 12 layers, hidden 768
        num_query_tokens=32,
        use_qformer_text_input=True,
    )
    cfg.vision_config._attn_implementation = "sdpa"
    with torch.device(device):
        model = Blip2ForImageTextRetrieval(cfg)
    model.vision_model.to(dtype)
    _keep_qformer_fp32(model)
    return SemanticScout(model.eval(), processor)


def run(args) -> dict:
    from vista.scout import SemanticScout, build_tiny_scout

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        scout = SemanticScout.from_pretrained(args.checkpoint, dtype=args.dtype, device=device)
        which = f"checkpoint:{args.checkpoint}"
    elif args.full_size:
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
            args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
        ]
        scout = build_full_size_scout(device, dtype)
        which = "full-size random (BLIP-2 ITM ViT-g shapes)"
    else:
        scout = build_tiny_scout(seed=0)
        if args.dtype:
            scout.to(device=device, dtype=args.dtype)
        else:
            scout.to(device=device)
        which = "tiny random (build_tiny_scout)"

    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(args.frames, args.height, args.width, 3, generator=g) * 255).to(torch.uint8)
    question = "what is the man holding in his left hand?"
    results = []
    for chunk in args.chunk_sizes:
        scout.scores(frames[: min(chunk, args.frames)], question, chunk_size=chunk)  # warm-up
        _sync(device)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            scout.scores(frames, question, chunk_size=chunk)
            _sync(device)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        row = {"chunk_size": chunk, "frames": args.frames, "seconds_median": med,
               "seconds_all": times, "frames_per_s": args.frames / med}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            scout.scores(frames, question, chunk_size=chunk)
            row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        results.append(row)
        print(f"chunk {chunk:3d}: {args.frames} frames in {med * 1e3:8.1f} ms -> {row['frames_per_s']:8.1f} frames/s",
              flush=True)

    import transformers

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {
        "bench": "scout_scores",
        "scout": which,
        "device": str(device),
        "device_name": dev_name,
        "vision_dtype": str(scout.dtype),
        "qformer_dtype": str(scout.model.qformer.layernorm.weight.dtype),
        "vision_attn": scout.model.vision_model.config._attn_implementation,
        "grid_hw": list(scout.grid_hw),
        "input_hw": [args.height, args.width],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "results": results,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="scout checkpoint dir (default: tiny random scout)")
    p.add_argument("--full-size", action="store_true", help="random weights with BLIP-2 ViT-g shapes")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--dtype", default=None, help="vision dtype: bfloat16 | float16 | float32 (default: bf16 on CUDA)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/scout_<device>.json)")
    args = p.parse_args(argv)
    report = run(args)
    tag = re.sub(r"[^A-Za-z0-9]+", "_", report["device"] if report["device"] == "cpu" else report["device_name"]).strip("_").lower()
    out = args.out or os.path.join(HERE, "results", f"scout_{tag}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
