"""Command-line entry point: ``vista demo`` (and more subcommands as they land)."""
from __future__ import annotations

import argparse
import sys


def _synthetic_tokens(T: int, N: int, D: int, seed: int = 0):
    """A synthetic 'video' of T frames with three scenes, so segmentation has cuts to find."""
    import torch

    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(3, N, D, generator=g)
    cut = [0] * (T // 3) + [1] * (T // 3) + [2] * (T - 2 * (T // 3))
    x = torch.stack([scenes[c] + 0.3 * torch.randn(N, D, generator=g) for c in cut])
    q = scenes[1].mean(0) + 0.1 * torch.randn(D, generator=g)
    return x, q


def cmd_demo(args) -> int:
    import torch

    import vista

    x, q = _synthetic_tokens(args.frames, 196, 64)
    scores = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(1))
    cfg = vista.VistaConfig(retention=args.retention)
    out = vista.prune_video(x, q, scores, cfg)
    T, N, _ = x.shape
    print(f"synthetic video: {T} frames x {N} tokens, retention {args.retention} -> "
          f"{out.num_tokens} of {T * N} tokens kept ({len(out.relevance)} segments)")
    for t in range(T):
        s = int(out.segment_id[t])
        print(f"frame {t:3d}  segment {s}  relevance {float(out.relevance[s]):.3f}  "
              f"budget {int(out.budgets[t]):4d}  kept {int(out.keep[t].sum()):4d}  "
              f"foveal {int(out.foveal[t].sum()):4d}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vista", description="Query-guided visual token pruning for video LLMs.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="prune a built-in synthetic video (no download)")
    d.add_argument("--frames", type=int, default=16)
    d.add_argument("--retention", type=float, default=0.15)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
