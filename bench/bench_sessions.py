"""Many questions about one video: first question versus follow-ups, per phase (the feature cache).

One video, five different questions through one ``VistaPipeline`` (with a scout). The first question
decodes the video, runs the backbone's vision tower and the scout's ViT, and caches their outputs;
each follow-up reuses them and runs only the scout's Q-Former, the pruning and the LLM. Reported per
question: decode, preprocess, vision (tower + projector + pooling), scout ViT, scout Q-Former,
prune, prefill (the LLM's, with the vision/scout/prune times taken out), generate and total.

The model is a random-config LLaVA-OneVision whose vision tower is not negligible next to its LLM,
as on the real 7B models (default: SigLIP-like tower hidden 384, 6 layers, 6 heads, MLP 1536 at
384 px / patch 14 = 729 patches a frame; Qwen2 LLM hidden 512, 4 layers; BLIP-2 scout with a ViT of
hidden 384, 6 layers at 224 px = 256 patches, and a 2-layer Q-Former of hidden 32 over 8 queries).
The answers are noise (random weights); the work done is real.

Also written: analytic FLOPs per question for the real 7B shapes (``vista.flops``; FLOPs = 2 x
multiply-adds, attention's n^2 term included): SigLIP-so400m as LLaVA-OneVision-7B uses it (26
layers, hidden 1152, MLP 4304, 729 patches a frame) + its 2-layer projector, BLIP-2 ViT-g (39
layers, hidden 1408, MLP 6144, 257 tokens a frame), BLIP-2's Q-Former up to the last scored
cross-attention layer, and Qwen2-7B's prefill at retention 0.15 (64 frames x 196 tokens).

Usage: ``python bench/bench_sessions.py [--frames 16] [--questions 5] [--threads 2]``.
Writes ``bench/results/sessions_<device>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

QUESTIONS = [
    "what color is the ball on the left ?",
    "where is the blue square at the end ?",
    "how many scenes does the video have ?",
    "is the red disc moving to the right ?",
    "what is in the background of the last scene ?",
]
PHASES = ("decode", "preprocess", "vision", "scout_vit", "scout_qformer", "prune", "prefill", "generate", "total")


def build_models(args):
    """(model, processor, scout) with the shapes in the module docstring."""
    import torch
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor, BlipImageProcessor
    from transformers import LlavaOnevisionForConditionalGeneration

    from vista.scout import SemanticScout
    from vista.scout.tiny import tiny_scout_config, tiny_scout_tokenizer
    from vista.tiny_models import build_tiny_llava_onevision

    base, processor = build_tiny_llava_onevision(
        seed=0, text_overrides=dict(hidden_size=args.llm_hidden, intermediate_size=args.llm_hidden * 11 // 4,
                                    num_hidden_layers=args.llm_layers, num_attention_heads=8, num_key_value_heads=8))
    cfg = base.config
    vc = cfg.vision_config
    vc.hidden_size, vc.intermediate_size = args.vision_hidden, args.vision_hidden * 4
    vc.num_hidden_layers, vc.num_attention_heads = args.vision_layers, args.vision_hidden // 64
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.model.image_newline.normal_(0.0, 0.02)
    model.generation_config = base.generation_config

    tok = tiny_scout_tokenizer()
    sproc = Blip2Processor(image_processor=BlipImageProcessor(size=224), tokenizer=tok)
    scfg = tiny_scout_config(vocab_size=len(sproc.tokenizer))
    sv = scfg.vision_config
    sv.hidden_size, sv.intermediate_size = args.vision_hidden, args.vision_hidden * 4
    sv.num_hidden_layers, sv.num_attention_heads = args.vision_layers, args.vision_hidden // 64
    scfg.qformer_config.encoder_hidden_size = args.vision_hidden
    torch.manual_seed(1)
    smodel = Blip2ForImageTextRetrieval(scfg).eval()
    with torch.no_grad():
        smodel.query_tokens.normal_(0.0, 1.0)
    return model, processor, SemanticScout(smodel, sproc)


def shapes(model, scout) -> dict:
    vc, tc, sv, qc = (model.config.vision_config, model.config.text_config, scout.model.config.vision_config,
                      scout.model.config.qformer_config)
    return {
        "vision_tower": {"hidden": vc.hidden_size, "layers": vc.num_hidden_layers, "heads": vc.num_attention_heads,
                         "mlp": vc.intermediate_size, "image": vc.image_size, "patch": vc.patch_size,
                         "patches_per_frame": (vc.image_size // vc.patch_size) ** 2, "tokens_per_frame_after_pooling": 196},
        "llm": {"hidden": tc.hidden_size, "layers": tc.num_hidden_layers, "heads": tc.num_attention_heads,
                "mlp": tc.intermediate_size},
        "scout_vit": {"hidden": sv.hidden_size, "layers": sv.num_hidden_layers, "mlp": sv.intermediate_size,
                      "image": sv.image_size, "patch": sv.patch_size},
        "scout_qformer": {"hidden": qc.hidden_size, "layers": qc.num_hidden_layers,
                          "queries": scout.model.config.num_query_tokens},
        "params_vision_tower_M": round(sum(p.numel() for p in model.model.vision_tower.parameters()) / 1e6, 2),
        "params_llm_M": round(sum(p.numel() for p in model.model.language_model.parameters()) / 1e6, 2),
        "params_scout_vit_M": round(sum(p.numel() for p in scout.model.vision_model.parameters()) / 1e6, 2),
    }


def toy_flops(model, scout, frames: int, retention: float, prompt_tokens: int) -> dict:
    """Analytic GFLOPs of the benchmark's own model (same counting as :func:`real_7b_flops`)."""
    from vista.flops import LLMShape, prefill_flops

    vc, sv = model.config.vision_config, scout.model.config.vision_config
    n_tower = (vc.image_size // vc.patch_size) ** 2
    tower = LLMShape(hidden_size=vc.hidden_size, intermediate_size=vc.intermediate_size,
                     num_layers=vc.num_hidden_layers, num_heads=vc.num_attention_heads, gated_mlp=False)
    svit = LLMShape(hidden_size=sv.hidden_size, intermediate_size=sv.intermediate_size,
                    num_layers=sv.num_hidden_layers, num_heads=sv.num_attention_heads, gated_mlp=False)
    n_scout = (sv.image_size // sv.patch_size) ** 2 + 1
    return {"vision_tower": frames * prefill_flops(n_tower, tower) / 1e9,
            "scout_vit": frames * prefill_flops(n_scout, svit) / 1e9,
            "llm_prefill": prefill_flops(prompt_tokens, LLMShape.from_config(model.config)) / 1e9}


def real_7b_flops(frames: int = 64, retention: float = 0.15, text_tokens: int = 40) -> dict:
    """Analytic FLOPs of each part of one question on the real 7B shapes (see the docstring)."""
    import vista
    from vista.flops import LLMShape, prefill_flops

    siglip = LLMShape(hidden_size=1152, intermediate_size=4304, num_layers=26, num_heads=16, gated_mlp=False)
    vit_g = LLMShape(hidden_size=1408, intermediate_size=6144, num_layers=39, num_heads=16, gated_mlp=False)
    qwen2_7b = LLMShape(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                        vocab_size=152064)
    tower = frames * prefill_flops(729, siglip)
    projector = frames * 2 * 729 * (1152 * 3584 + 3584 * 3584)
    scout_vit = frames * prefill_flops(257, vit_g)
    # Q-Former (BERT-base: 768 wide, MLP 3072) up to layer 10 (the last cross-attention layer,
    # where scoring stops): 11 self-attention layers over 32 queries + the question's tokens,
    # 6 cross-attention layers of the 32 queries over 257 image tokens (K/V from 1408 wide).
    nq, L, d, m = 32, 16, 768, 3072
    self_part = 11 * (2 * (nq + L) * d * 4 * d + 4 * (nq + L) ** 2 * d + 2 * (nq + L) * d * m * 2)
    cross_part = 6 * (2 * nq * d * d * 2 + 2 * 257 * 1408 * d * 2 + 4 * nq * 257 * d)
    qformer = frames * (self_part + cross_part)
    kept = vista.retained_count(frames, 196, retention) + 1
    prefill = prefill_flops(kept + text_tokens, qwen2_7b)
    first = tower + projector + scout_vit + qformer + prefill
    follow = qformer + prefill
    return {
        "frames": frames, "retention": retention, "prompt_tokens": kept + text_tokens,
        "tflops": {"vision_tower_siglip_so400m": tower / 1e12, "projector": projector / 1e12,
                   "scout_vit_blip2_vit_g": scout_vit / 1e12, "scout_qformer": qformer / 1e12,
                   "llm_prefill_qwen2_7b": prefill / 1e12},
        "first_question_tflops": first / 1e12,
        "follow_up_tflops": follow / 1e12,
        "saved_per_follow_up_tflops": (first - follow) / 1e12,
        "follow_up_fraction_of_first": follow / first,
    }


def _text_tokens(pipe, question: str) -> int:
    """Prompt tokens besides the video placeholders (chat markers, the question)."""
    tok = pipe.processor.tokenizer
    return len(tok(pipe.build_prompt(question))["input_ids"]) - 1  # the one <video> marker


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--questions", type=int, default=5, choices=range(2, 6))
    ap.add_argument("--retention", type=float, default=0.15)
    ap.add_argument("--vision-hidden", type=int, default=384)
    ap.add_argument("--vision-layers", type=int, default=6)
    ap.add_argument("--llm-hidden", type=int, default=512)
    ap.add_argument("--llm-layers", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import vista
    from vista.pipeline import VistaPipeline
    from vista.video import synthetic_video, write_video

    model, processor, scout = build_models(args)
    model.to(args.device)
    scout.to(args.device)
    pipe = VistaPipeline.from_components(model, processor, scout, vista.VistaConfig(retention=args.retention),
                                         num_frames=args.frames)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vista-bench-") as tmp:
        clip = write_video(os.path.join(tmp, "clip.mp4"),
                           synthetic_video(args.frames * 4, height=240, width=320, seed=0, scenes=3).frames, fps=8.0)
        for i, q in enumerate(QUESTIONS[: args.questions]):
            t0 = time.perf_counter()
            res = pipe.ask(clip, q, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
            wall = time.perf_counter() - t0
            row = {"question": i + 1, "text": q, "cache": res.summary().rsplit("| ", 1)[-1],
                   "tokens": [res.tokens_before, res.tokens_after], "wall_s": wall,
                   "prompt_tokens": int(res.tokens_after + _text_tokens(pipe, q))}
            row.update({p: float(res.timings.get(p, 0.0)) for p in PHASES})
            rows.append(row)
            print(f"question {i + 1}: {row['cache']}, total {row['total']:.2f}s", file=sys.stderr)
    follow = rows[1:]
    mean = {p: sum(r[p] for r in follow) / len(follow) for p in PHASES}
    flops = real_7b_flops(retention=args.retention)
    rec = {
        "benchmark": "bench_sessions",
        "device": args.device,
        "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
        "threads": args.threads, "frames": args.frames, "retention": args.retention,
        "max_new_tokens": args.max_new_tokens,
        "shapes": shapes(model, scout),
        "questions": rows,
        "first": {p: rows[0][p] for p in PHASES},
        "follow_up_mean": mean,
        "speedup_total": rows[0]["total"] / mean["total"] if mean["total"] > 0 else None,
        "cache_info": {k: v for k, v in pipe.cache_info().items() if k != "by_kind"},
        "toy_gflops": toy_flops(model, scout, args.frames, args.retention, int(rows[0]["prompt_tokens"])),
        "real_7b_flops": flops,
    }
    out = args.out or os.path.join(HERE, "results", f"sessions_{args.device.split(':')[0]}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(rec, f, indent=1)

    print("| question | " + " | ".join(PHASES) + " | cache |")
    print("|---|" + "---|" * (len(PHASES) + 1))
    for r in rows:
        print(f"| {r['question']} | " + " | ".join(f"{r[p]:.3f}" for p in PHASES) + f" | {r['cache']} |")
    print(f"| follow-up mean | " + " | ".join(f"{mean[p]:.3f}" for p in PHASES) + " | |")
    print(f"\nspeed-up of a follow-up (total): {rec['speedup_total']:.2f}x")
    g = rec["toy_gflops"]
    print(f"this model, {args.frames} frames: vision tower {g['vision_tower']:.0f} GFLOP, scout ViT "
          f"{g['scout_vit']:.0f} GFLOP, LLM prefill {g['llm_prefill']:.1f} GFLOP")
    t = flops["tflops"]
    print(f"real 7B shapes, 64 frames, retention {args.retention}: first question "
          f"{flops['first_question_tflops']:.1f} TFLOP (tower {t['vision_tower_siglip_so400m']:.1f}, projector "
          f"{t['projector']:.1f}, scout ViT {t['scout_vit_blip2_vit_g']:.1f}, Q-Former {t['scout_qformer']:.2f}, "
          f"LLM prefill {t['llm_prefill_qwen2_7b']:.1f}); follow-up {flops['follow_up_tflops']:.1f} TFLOP "
          f"({100 * flops['follow_up_fraction_of_first']:.1f}%), saved {flops['saved_per_follow_up_tflops']:.1f} TFLOP")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
