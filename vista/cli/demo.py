"""``vista demo``: tiny random-weight models on a synthetic video, offline (no download).

Builds a tiny LLaVA-OneVision and a tiny BLIP-2 scout, writes a synthetic clip to mp4 and decodes it
back, answers a question with Vista pruning, prints the per-frame budgets and writes the token map;
``--save-models DIR`` keeps the tiny models for offline ``vista ask/eval/train-scout``.
"""
from __future__ import annotations

import os
import time
from typing import List

from .app import EXIT_OK, UsageError, _quiet_transformers, _show_progress, add_common_options
from .ask import _check_map_path, _print_result

DEMO_QUESTION = "what color is the ball on the left ?"
DEMO_MODEL_DIRS = {"model": "llava-onevision-tiny", "scout": "scout-tiny"}


def add_demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="offline demo: tiny random models on a synthetic video (no download)",
                       description="Build tiny random-weight models and a synthetic video, answer a question "
                                   "with Vista pruning, print the budgets and write the token map.")
    d.add_argument("--question", default=DEMO_QUESTION, help=f"question (default {DEMO_QUESTION!r})")
    d.add_argument("--save-map", metavar="PNG", default="vista_demo_map.png",
                   help="token map picture (default vista_demo_map.png)")
    d.add_argument("--no-scout", action="store_true", help="run without the semantic scout (anchors only)")
    d.add_argument("--seed", type=int, default=0, help="seed of the random weights and the video (default 0)")
    d.add_argument("--save-models", metavar="DIR", default=None,
                   help=f"also save the tiny models to DIR/{DEMO_MODEL_DIRS['model']} and "
                        f"DIR/{DEMO_MODEL_DIRS['scout']}, for offline `vista ask/eval/train-scout` (default: not saved)")
    add_common_options(d, 16)
    d.set_defaults(func=cmd_demo)


def _demo_table(res) -> List[str]:
    p = res.pruned
    if p is None:  # pragma: no cover - ask records an all-kept video at retention 1.0
        return ["(no pruning record: the model did not run Vista on the video)"]
    lines = ["frame  segment  relevance  budget  foveal  anchors"]
    rel = p.relevance.tolist()
    for t in range(int(p.budgets.shape[0])):
        s = int(p.segment_id[t])
        fov = int((p.foveal[t] & p.keep[t]).sum())
        kept = int(p.keep[t].sum())
        lines.append(f"{t:5d}  {s:7d}  {rel[s]:9.3f}  {int(p.budgets[t]):6d}  {fov:6d}  {kept - fov:7d}")
    for seg in res.segments():
        lines.append(f"segment {seg['segment']}: frames {seg['first_frame']}-{seg['last_frame']}, "
                     f"relevance {seg['relevance']:.3f}, {seg['tokens']} tokens")
    return lines


def _save_demo_models(folder: str, model, processor, scout) -> List[str]:
    """Write the demo's tiny models (``save_pretrained`` layout) under ``folder``; say how to use them.

    Each model goes to a temporary sibling folder first, flushed to disk, then renamed into place
    (an existing copy is replaced only once the new one is complete), owner-only."""
    from ..atomic import write_dir_atomically
    m = os.path.join(folder, DEMO_MODEL_DIRS["model"])

    def save_model(tmp):
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    write_dir_atomically(m, save_model, mode=0o700)
    lines = [f"saved the tiny LLaVA-OneVision model + processor to {m}"]
    use = f'vista ask VIDEO "QUESTION" --model {m}'
    if scout is not None:
        sc = os.path.join(folder, DEMO_MODEL_DIRS["scout"])
        write_dir_atomically(sc, scout.save_pretrained, mode=0o700)
        lines.append(f"saved the tiny BLIP-2 scout to {sc}")
        use += f" --scout {sc}"
    lines.append(f"use them offline, e.g.: {use}")
    return lines


def cmd_demo(args) -> int:
    import tempfile

    _check_map_path(args.save_map)
    if args.save_models and os.path.exists(args.save_models) and not os.path.isdir(args.save_models):
        raise UsageError(f"--save-models {args.save_models}: exists and is not a directory")
    progress = _show_progress(args)
    out = (lambda *a: None) if args.json else print
    _quiet_transformers()
    t0 = time.perf_counter()
    from ..config import VistaConfig
    from ..pipeline import VistaPipeline
    from ..scout import build_tiny_scout
    from ..tiny_models import build_tiny_llava_onevision
    from ..video import load_video, synthetic_video, write_video

    config = VistaConfig(retention=args.retention, backend=args.backend)
    with tempfile.TemporaryDirectory(prefix="vista-demo-") as tmp:
        clip = synthetic_video(args.frames, height=96, width=128, seed=args.seed, scenes=3)
        mp4 = write_video(os.path.join(tmp, "demo.mp4"), clip.frames, fps=8.0)
        out(f"vista demo: synthetic {args.frames}-frame clip (moving shapes, 3 scenes) written to mp4 and decoded back")
        video = load_video(mp4, args.frames, progress=progress)
        model, processor = build_tiny_llava_onevision(seed=args.seed)
        scout = None if args.no_scout else build_tiny_scout(seed=args.seed)
        build_s = time.perf_counter() - t0
        if args.save_models:
            for line in _save_demo_models(args.save_models, model, processor, scout):
                out(line)
        out("models: tiny random LLaVA-OneVision (Qwen2 64-d x 2 layers, SigLIP 32-d, 196 tokens a frame)"
            + ("" if scout is None else " + tiny random BLIP-2 scout")
            + f", built in {build_s:.1f}s -- random weights: the answer is noise, the pruning is real")
        pipe = VistaPipeline.from_components(model, processor, scout, config, num_frames=args.frames,
                                             progress=progress)
        pipe.timings["load"] = build_s
        res = pipe.ask(video, args.question, max_new_tokens=args.max_new_tokens)
        out(f"question: {args.question}")
        for line in _demo_table(res):
            out(line)
        map_info = res.save_map(args.save_map) if args.save_map else None
        if args.json:
            _print_result(args, res, map_info)
        else:
            out(f"answer: {res.answer if res.answer else '(empty)'}")
            out(f"[vista] {res.summary()}")
            if map_info is not None:
                out(f"[vista] token map: {map_info.path} ({map_info.width}x{map_info.height})")
    return EXIT_OK
