"""Time to first token of a 7B-shaped LLM on video features, with Vista's pruning and the scout in
the measured path (the GPU suite's end-to-end step; random weights, nothing downloaded).

    python bench/bench_ttft.py [--device cuda] [--frames 64] [--repeats 3] [--json FILE]
    python bench/bench_ttft.py --dry-run        # tiny LLM and scout on CPU, reference backend

Model: a random-weight Qwen2 causal LM with Qwen2-7B's shapes (hidden 3584, 28 layers, MLP 18944,
28 query / 4 key-value heads, vocabulary 152064), bf16, ``attn_implementation="sdpa"``, built from
its config directly on the GPU. Scout: a random-weight BLIP-2 ITM model with ViT-g/14 shapes (224 px,
patch 14, hidden 1408, 39 layers) and its Q-Former (``bench_scout.build_full_size_scout``).

Prompt: ``inputs_embeds`` = 14 text tokens, the video's 64 x 196 visual tokens (features with a
scene structure), 40 question tokens and 6 more text tokens (60 text tokens). Per retention in
1.0 / 0.25 / 0.15 / 0.10 and repetition:

* ``scout_ms``: ``SemanticScout.scores`` on the 64 frames (224 px, preprocessing included) and the
  map onto the 14 x 14 token grid (not run at retention 1.0: nothing is pruned);
* ``prune_ms``: ``vista.prune_video`` (budgets, selection, aggregation, assembly);
* ``prefill_ms``: the LLM forward over the prompt (KV cache on, logits of the last position only)
  and the argmax of the first token;
* ``ttft_ms`` = scout + prune + prefill, with a device synchronisation between the parts;
* ``peak_mem_mib``: ``torch.cuda.max_memory_allocated`` over the repetitions (weights included).

Medians over ``--repeats`` after one warm-up per retention.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

RETENTIONS = (1.0, 0.25, 0.15, 0.10)
FULL_LLM = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768)
TINY_LLM = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
PROMPT = (14, 40, 6)  # text tokens before the video, question tokens, text tokens after
QUESTION = "what is the man holding in his left hand ?"


def _write_json(path, obj):
    from kernel_cases import write_json

    write_json(path, obj)


def build_llm(shape: dict, device, dtype):
    """Random-weight Qwen2ForCausalLM built from its config on ``device`` (no download)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(tie_word_embeddings=False, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def build_scout(full: bool, device, dtype):
    import torch

    if full:
        from bench_scout import build_full_size_scout

        return build_full_size_scout(torch.device(device), dtype)
    from vista.scout import build_tiny_scout

    return build_tiny_scout(seed=0).to(device=device)


def video_features(T, N, D, device, dtype, seed=0, scenes=4):
    """(T, N, D) tokens: ``scenes`` scene prototypes plus per-frame noise, LLM-embedding scale."""
    import torch

    g = torch.Generator().manual_seed(seed)
    base = torch.randn(scenes, N, D, generator=g)
    cut = [min(scenes - 1, t * scenes // T) for t in range(T)]
    x = torch.stack([base[c] + 0.35 * torch.randn(N, D, generator=g) for c in cut]) * 0.05
    return x.to(device=device, dtype=dtype)


def run(args) -> dict:
    import torch

    import vista
    from vista.scout import map_scores_to_grid

    dry = args.dry_run
    device = "cpu" if dry else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_ttft: error: --device cuda but CUDA is not available (use --dry-run on CPU)")
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    backend = args.backend or ("triton" if cuda else "torch")
    torch.set_grad_enabled(False)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    shape = TINY_LLM if dry else FULL_LLM
    t = time.perf_counter()
    llm = build_llm(shape, device, dtype)
    sync()
    build_llm_s = time.perf_counter() - t
    weights_mib = torch.cuda.memory_allocated() / 2**20 if cuda else None
    t = time.perf_counter()
    scout, scout_error = None, None
    try:
        scout = build_scout(not dry, device, dtype)
    except Exception as e:  # noqa: BLE001 - TTFT without the scout is still worth having
        scout_error = f"{type(e).__name__}: {e}"[:400]
        print(f"scout unavailable: {scout_error}", flush=True)
    sync()
    build_scout_s = time.perf_counter() - t

    T, N, D = args.frames, 196, shape["hidden_size"]
    x = video_features(T, N, D, device, dtype)
    frames = torch.rand(T, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(0, shape["vocab_size"], (n,), generator=g).to(device) for n in PROMPT]
    emb = llm.get_input_embeddings()
    pre, qe, post = (emb(i) for i in ids)
    q = qe.float().mean(0).to(dtype)

    state = {"scout": scout, "error": scout_error}

    def scout_scores():
        sc = state["scout"]
        s = sc.scores(frames, QUESTION)
        return map_scores_to_grid(s, sc.grid_hw, (14, 14)).float()

    def once(r):
        """One TTFT: (scout_ms, prune_ms, prefill_ms, video tokens, first token)."""
        sync()
        t0 = time.perf_counter()
        s = None
        if r < 1.0 and state["scout"] is not None:
            try:
                s = scout_scores()
            except Exception as e:  # noqa: BLE001 - go on without the scout, say why
                state["scout"], state["error"] = None, f"scores: {type(e).__name__}: {e}"[:400]
                print(f"scout failed, continuing without it: {state['error']}", flush=True)
            sync()
        t1 = time.perf_counter()
        if r < 1.0:
            video = vista.prune_video(x, q, scout_scores=s, config=vista.VistaConfig(retention=r, backend=backend)).tokens
        else:
            video = x.reshape(T * N, D)
        sync()
        t2 = time.perf_counter()
        inputs = torch.cat([pre, video.to(dtype), qe, post])[None]
        out = llm(inputs_embeds=inputs, use_cache=True, logits_to_keep=1)
        first = out.logits[:, -1].argmax(-1)
        sync()
        t3 = time.perf_counter()
        del out
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, int(video.shape[0]), int(first[0])

    rows = []
    for r in args.retentions:
        if not dry or args.warmup:
            once(r)  # warm-up: kernels, allocator, autotuning
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        samples = [once(r) for _ in range(args.repeats)]
        med = [statistics.median(v) for v in zip(*samples)][:3]
        row = {
            "retention": r,
            "video_tokens": samples[0][3],
            "prompt_tokens": samples[0][3] + sum(PROMPT),
            "scout_ms": round(med[0], 2) if (r < 1.0 and state["scout"] is not None) else None,
            "prune_ms": round(med[1], 3) if r < 1.0 else 0.0,
            "prefill_ms": round(med[2], 2),
            "ttft_ms": round(statistics.median(sum(s[:3]) for s in samples), 2),
            "ttft_no_scout_ms": round(statistics.median(s[1] + s[2] for s in samples), 2),
            "ttft_all_ms": [round(sum(s[:3]), 2) for s in samples],
            "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
            "first_token": samples[0][4],
        }
        rows.append(row)
        print(f"retention {r:4.2f}: {row['prompt_tokens']:6d} prompt tokens  scout {row['scout_ms']} ms  "
              f"prune {row['prune_ms']} ms  prefill {row['prefill_ms']} ms  TTFT {row['ttft_ms']} ms  "
              f"peak {row['peak_mem_mib']} MiB", flush=True)
    base = next((r for r in rows if r["retention"] >= 1.0), None)
    for row in rows:
        row["ttft_speedup"] = round(base["ttft_ms"] / row["ttft_ms"], 2) if base and row["ttft_ms"] else None
    import transformers

    return {
        "bench": "ttft", "dry_run": dry, "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu"),
        "backend": backend, "dtype": str(dtype), "llm": {**shape, "attn_implementation": "sdpa", "random_weights": True},
        "scout": None if scout is None else ("BLIP-2 ITM ViT-g shapes, random" if not dry else "tiny random"),
        "scout_error": state["error"], "frames": T, "tokens_per_frame": N, "text_tokens": sum(PROMPT),
        "repeats": args.repeats, "build_llm_s": round(build_llm_s, 2), "build_scout_s": round(build_scout_s, 2),
        "weights_mib": None if weights_mib is None else round(weights_mib, 1),
        "torch": torch.__version__, "transformers": transformers.__version__, "rows": rows,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny LLM + tiny scout on CPU, reference backend")
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", choices=["triton", "torch", "auto"], default=None,
                   help="pruning backend (default triton on CUDA, torch on CPU)")
    p.add_argument("--frames", type=int, default=None, help="frames (default 64; 4 with --dry-run)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 3; 1 with --dry-run)")
    p.add_argument("--warmup", action="store_true", help="warm up also with --dry-run")
    p.add_argument("--retentions", type=float, nargs="+", default=list(RETENTIONS))
    p.add_argument("--json", default=None, help="output JSON (default bench/results/ttft_<device>.json)")
    args = p.parse_args(argv)
    args.frames = args.frames or (4 if args.dry_run else 64)
    args.repeats = args.repeats or (1 if args.dry_run else 3)
    if args.frames < 1 or args.repeats < 1:
        p.error("--frames and --repeats must be >= 1")
    if any(not (0.0 < r <= 1.0) for r in args.retentions):
        p.error(f"--retentions must lie in (0, 1], got {args.retentions}")
    if args.dry_run:
        import torch

        torch.set_num_threads(1)
    result = run(args)
    path = args.json or os.path.join(HERE, "results", f"ttft_{'cpu' if args.dry_run else args.device}.json")
    _write_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
