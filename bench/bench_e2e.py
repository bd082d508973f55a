"""End-to-end benchmark: stock LLaVA-OneVision vs Vista at retention 0.25 / 0.15 / 0.10.

A random-config LlavaOnevisionForConditionalGeneration with a realistic LLM for the machine
(default: Qwen2 text model, hidden 512, 4 layers, 8 heads, MLP 1408) gets a 64-frame video as
precomputed visual features (64 x 196 tokens + the model's newline, fed through
``mm_encoder_outputs`` so the vision tower stays out of the timing). The features have a scene
structure (4 scenes + noise) so budgets and segments behave like on a real video. Everything after
the projector is measured as a user sees it through ``model.generate``: Vista's pruning runs inside
the patched forward and is part of every pruned TTFT.

Peak memory is measured per variant in a fresh subprocess (peak RSS is per process). Reported:

* ``ttft_s``: prefill time = ``generate(max_new_tokens=1)``, the minimum over ``--repeats`` rounds
  (3 samples a round for pruned variants); variants are measured round-robin in one process so that
  load on a shared machine hits them alike;
* ``gen32_s``: ``generate(max_new_tokens=32, min_new_tokens=32)``;
* ``peak_mem_mb``: CUDA ``max_memory_allocated`` / CPU peak RSS of the process;
* ``prefill_flops_ratio``: analytic (``vista.flops``), whole prompt;
* ``prune_s``: Vista's pruning time inside the prefill (``last_prune_info``), already in ttft_s;
* ``scout_s``: the semantic scout on the 64 frames, timed separately (tiny random BLIP-2 scout at
  224 px when ``vista.scout`` is available; the real ViT-g costs more). On CUDA the scout overlaps the
  vision tower, which this benchmark leaves out.

Usage: ``python bench/bench_e2e.py [--frames 64] [--hidden 512] [--layers 4] [--repeats 2]``.
Writes ``bench/results/e2e_<device>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RETENTIONS = (1.0, 0.25, 0.15, 0.10)


def _features(T, N, D, seed=0, scenes=4):
    import torch

    g = torch.Generator().manual_seed(seed)
    base = torch.randn(scenes, N, D, generator=g)
    cut = [min(scenes - 1, t * scenes // T) for t in range(T)]
    x = torch.stack([base[c] + 0.35 * torch.randn(N, D, generator=g) for c in cut])
    return x * 0.05


def _peak_mem_mb(device):
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:  # VmHWM: peak RSS of this process image (ru_maxrss survives exec from a big parent)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


class _FirstToken:
    """A generate() streamer that notes when the first new token arrives (its 2nd ``put``)."""

    def __init__(self, t0):
        self.t0, self.calls, self.ttft = t0, 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.ttft is None:
            self.ttft = time.perf_counter() - self.t0

    def end(self):
        pass


class Runner:
    """One random-config model; inputs for every retention; timed generate() calls."""

    def __init__(self, args):
        import torch

        from vista.tiny_models import build_tiny_llava_onevision

        torch.set_grad_enabled(False)
        self.args = args
        self.device = args.device
        self.dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        model, proc = build_tiny_llava_onevision(
            seed=0,
            text_overrides=dict(
                hidden_size=args.hidden,
                intermediate_size=args.mlp,
                num_hidden_layers=args.layers,
                num_attention_heads=args.heads,
                num_key_value_heads=args.heads,
            ),
        )
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.proc = proc
        self.N, self.D = 196, args.hidden
        self.newline = model.model.image_newline.detach().to(self.dtype).view(1, 1, self.D)

    def make(self, frames, r):
        """(input_ids, pooled video features (1, frames*196 + 1, D), placeholder count)."""
        import torch

        import vista

        N, D = self.N, self.D
        n_vid = frames * N + 1 if r >= 1.0 else vista.retained_count(frames, N, r) + 1
        q = "what is the man holding in his left hand ?"
        text = f"<|im_start|>user {self.proc.video_token * n_vid}\n{q}<|im_end|>\n<|im_start|>assistant\n"
        ids = self.proc.tokenizer(text, return_tensors="pt")["input_ids"].to(self.device)
        feats = _features(frames, N, D).to(device=self.device, dtype=self.dtype)
        return ids, torch.cat([feats.reshape(1, frames * N, D), self.newline], 1), n_vid

    def set_retention(self, r):
        import vista
        from vista.models import apply_vista

        apply_vista(self.model, vista.VistaConfig(retention=r), processor=self.proc)

    def sync(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def gen(self, n, ids, pooled):
        """Seconds for generate(max_new_tokens=n) (a fresh encoder output each call: the patched
        forward marks the ones it pruned) and the output ids."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        self.sync()
        t = time.perf_counter()
        first = _FirstToken(t)
        out = self.model.generate(
            input_ids=ids, mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=pooled)},
            max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=self.proc.tokenizer.pad_token_id,
            streamer=first,
        )
        self.sync()
        self.last_ttft = first.ttft
        return time.perf_counter() - t, out

    def prune_s(self):
        from vista.models import last_prune_info

        info = last_prune_info(self.model)
        return info[0]["timings"]["prune_s"] if info else 0.0


def run_timing(args, retentions) -> list:
    """All retentions in one process, measurements interleaved round-robin (load on a shared
    machine then hits every variant alike); min over repeats."""
    from vista.flops import LLMShape, prefill_flops_ratio

    run = Runner(args)
    T = args.frames
    data = {}
    for r in retentions:
        run.set_retention(r)
        run.gen(2, *run.make(2, r)[:2])  # warm-up (kernels, allocator, the pruning path)
        data[r] = run.make(T, r)
    ttft = {r: [] for r in retentions}
    prune = {r: [] for r in retentions}
    for _ in range(args.repeats):
        for r in retentions:
            run.set_retention(r)
            ids, pooled, _ = data[r]
            # pruned variants are cheap: 3 samples a round against 1 of the unpruned one
            for _ in range(1 if r >= 1.0 else 3):
                ttft[r].append(run.gen(1, ids, pooled)[0])
                prune[r].append(run.prune_s())
    gen32 = {}
    for r in retentions:
        run.set_retention(r)
        ids, pooled, _ = data[r]
        dt, out = run.gen(32, ids, pooled)
        assert out.shape[1] == ids.shape[1] + 32
        gen32[r] = dt
        ttft[r].append(run.last_ttft)  # the prefill inside generate(32) is one more TTFT sample
    shape = LLMShape.from_config(run.model.config)
    rows = []
    for r in retentions:
        ids, _, n_vid = data[r]
        full_len = ids.shape[1] - n_vid + T * run.N + 1
        rows.append({
            "retention": r,
            "prompt_tokens": int(ids.shape[1]),
            "video_tokens": int(n_vid),
            "ttft_s": min(ttft[r]),
            "ttft_all_s": ttft[r],
            "gen32_s": gen32[r],
            "prefill_flops_ratio": prefill_flops_ratio(int(ids.shape[1]), full_len, shape),
            "prune_s": min(prune[r]),
        })
    return rows


def run_memory(args) -> float:
    """Peak memory (MB) of one generate(32) at ``args.retention`` in a fresh process."""
    import torch

    run = Runner(args)
    run.set_retention(args.retention)
    run.gen(2, *run.make(2, args.retention)[:2])
    ids, pooled, _ = run.make(args.frames, args.retention)
    if run.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run.gen(32, ids, pooled)
    return _peak_mem_mb(run.device)


def time_scout(frames, device):
    try:
        import torch

        from vista.scout import build_tiny_scout
    except Exception as e:  # pragma: no cover - scout package missing
        return None, f"unavailable ({type(e).__name__})"
    scout = build_tiny_scout()
    if device != "cpu":
        scout.to(device)
    x = torch.rand(frames, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    scout.scores(x[:2], "warm up")
    t = time.perf_counter()
    scout.scores(x, "what is the man holding in his left hand ?")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, "tiny random BLIP-2 ITM scout (224 px), 64 frames"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--mlp", type=int, default=1408)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--retentions", default=",".join(str(r) for r in RETENTIONS))
    p.add_argument("--out", default=None)
    p.add_argument("--variant", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--retention", type=float, default=1.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.variant:
        print("RESULT " + json.dumps({"peak_mem_mb": run_memory(args)}))
        return 0

    t_all = time.perf_counter()
    retentions = [float(v) for v in args.retentions.split(",")]
    if retentions[0] != 1.0:
        retentions = [1.0] + retentions
    rows = run_timing(args, retentions)
    print("timing done: " + ", ".join(f"{r['retention']}: {r['ttft_s']:.2f}s" for r in rows), file=sys.stderr, flush=True)
    for row in rows:
        cmd = [sys.executable, os.path.abspath(__file__), "--variant", "--retention", str(row["retention"])]
        for k in ("frames", "hidden", "mlp", "layers", "heads", "device"):
            cmd += [f"--{k}", str(getattr(args, k))]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            sys.stderr.write(out.stdout + out.stderr)
            raise SystemExit(f"memory run at retention={row['retention']} failed")
        row.update(json.loads(line[0][7:]))
    scout_s, scout_note = time_scout(args.frames, args.device)
    base = rows[0]
    for row in rows:
        row["prefill_speedup"] = base["ttft_s"] / row["ttft_s"]
        row["gen32_speedup"] = base["gen32_s"] / row["gen32_s"]
    import torch

    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or platform.machine())
    result = {
        "device": args.device,
        "device_name": dev_name,
        "threads": torch.get_num_threads(),
        "llm": {"hidden": args.hidden, "mlp": args.mlp, "layers": args.layers, "heads": args.heads},
        "frames": args.frames,
        "tokens_per_frame": 196,
        "scout_s": scout_s,
        "scout_note": scout_note,
        "rows": rows,
        "bench_wall_s": time.perf_counter() - t_all,
        "torch": torch.__version__,
    }
    tag = "cuda" if args.device.startswith("cuda") else "cpu"
    path = args.out or os.path.join(HERE, "results", f"e2e_{tag}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(markdown(result))
    print(f"\nwritten {path}")
    return 0


def markdown(result) -> str:
    L = result["llm"]
    lines = [
        f"End-to-end on {result['device']} ({result['device_name']}, {result['threads']} threads): random LLaVA-OneVision "
        f"LLM (hidden {L['hidden']}, {L['layers']} layers, MLP {L['mlp']}), {result['frames']} frames x 196 tokens.",
        "",
        "| retention | prompt tokens | prefill FLOPs | TTFT (s) | prefill speed-up | generate 32 (s) | peak mem (MB) | pruning (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['retention']:.2f} | {r['prompt_tokens']} | {100 * r['prefill_flops_ratio']:.1f}% | {r['ttft_s']:.2f} | "
            f"{r['prefill_speedup']:.2f}x | {r['gen32_s']:.2f} | {r['peak_mem_mb']:.0f} | {r['prune_s']:.3f} |"
        )
    if result.get("scout_s") is not None:
        lines.append("")
        lines.append(f"Scout: {result['scout_s']:.2f} s ({result['scout_note']}); TTFT includes pruning, not the scout.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
