"""``vista ask VIDEO "QUESTION" --model PATH``: answer one question about a video with a pruned model.

Also home of what ``chat`` and ``demo`` print the same way: the answer / JSON record
(:func:`_print_result`) and the ``--save-map`` path check.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from .app import EXIT_OK, UsageError, _note, _quiet_transformers, _show_progress, add_common_options

MODEL_HELP = "saved LLaVA-OneVision / LLaVA-Video / Qwen2.5-VL model + processor directory"


def add_ask_parser(sub) -> None:
    a = sub.add_parser("ask", help="answer a question about a video with a pruned model",
                       description="Answer a question about a video; Vista prunes the visual tokens.")
    add_video_model_options(a, question=True)
    a.add_argument("--scout", metavar="PATH", help="saved BLIP-2 ITM scout directory (default: none, every kept token is a DPC-KNN anchor)")
    a.add_argument("--save-map", metavar="PNG", help="write the token map picture here (default: no map)")
    add_clip_options(a, "use only the video from this time on (seconds; video files only; default: the start)",
                     "use only the video up to this time (seconds; video files only; default: the end)")
    add_cache_dir_option(a, "reuse / keep the video's decoded frames and features here, across runs (default: none)")
    add_device_options(a)
    add_common_options(a, 64)
    a.set_defaults(func=cmd_ask)


def add_video_model_options(sp, *, question: bool) -> None:
    """``VIDEO`` [``QUESTION``] ``--model PATH`` (ask and chat)."""
    sp.add_argument("video", help="video file, image file or folder of images")
    if question:
        sp.add_argument("question", help="the question, in quotes")
    sp.add_argument("--model", required=True, metavar="PATH", help=MODEL_HELP)


def add_clip_options(sp, start_help: str, end_help: str) -> None:
    """``--start SEC`` / ``--end SEC``: the part of the video used (ask and chat word the help apart)."""
    sp.add_argument("--start", type=float, default=None, metavar="SEC", help=start_help)
    sp.add_argument("--end", type=float, default=None, metavar="SEC", help=end_help)


def add_cache_dir_option(sp, help_text: str) -> None:
    """``--cache-dir DIR``: decoded frames and features kept on disk across runs."""
    sp.add_argument("--cache-dir", metavar="DIR", default=None, help=help_text)


def add_device_options(sp) -> None:
    """``--device`` and ``--dtype`` (ask and chat)."""
    sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    sp.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                    help="model dtype (default: the loader's)")


def check_model_dirs(args) -> None:
    """``--model`` (and ``--scout`` when given) must be existing folders; UsageError otherwise."""
    if not os.path.isdir(args.model):
        raise UsageError(f"--model {args.model}: no such directory (expected a saved model + processor)")
    if args.scout is not None and not os.path.isdir(args.scout):
        raise UsageError(f"--scout {args.scout}: no such directory (expected a saved BLIP-2 ITM scout)")


def _print_result(args, res, map_info) -> None:
    if args.json:
        rec = res.to_dict()
        rec["map"] = None if map_info is None else {"path": map_info.path, "width": map_info.width,
                                                    "height": map_info.height}
        rec["model"] = getattr(args, "model", None)
        rec["scout"] = getattr(args, "scout", None)
        print(json.dumps(rec, indent=None, sort_keys=False))
        return
    print(res.answer if res.answer else "(empty answer)")
    print(f"[vista] {res.summary()}")
    if map_info is not None:
        print(f"[vista] token map: {map_info.path} ({map_info.width}x{map_info.height})")


def cmd_ask(args) -> int:
    from ..video import load_video

    check_model_dirs(args)
    _check_map_path(args.save_map)
    progress = _show_progress(args)
    video = None  # with --cache-dir, ask decodes (or finds the frames) through the cache
    if args.cache_dir is None:
        video = load_video(args.video, args.frames, progress=progress, start=args.start, end=args.end)

    _quiet_transformers()
    from ..config import VistaConfig
    from ..pipeline import VistaPipeline

    config = VistaConfig(retention=args.retention, backend=args.backend)
    # one question: no memory cache; --cache-dir shares frames and features with later runs
    pipe = VistaPipeline(args.model, scout_path=args.scout, config=config, device=args.device,
                         dtype=args.dtype, num_frames=args.frames, progress=progress, cache_bytes=0,
                         cache_dir=args.cache_dir)
    clip = None if video is not None or (args.start is None and args.end is None) else (args.start, args.end)
    res = pipe.ask(video if video is not None else args.video, args.question, max_new_tokens=args.max_new_tokens,
                   clip=clip)
    map_info = res.save_map(args.save_map) if args.save_map else None
    for n in res.notes:  # after success, so that a failure is reported on one line
        _note(args, n)
    _print_result(args, res, map_info)
    return EXIT_OK


def _check_map_path(path: Optional[str]) -> None:
    if path is None:
        return
    if not path.lower().endswith(".png"):
        raise UsageError(f"--save-map {path}: the token map is a PNG; give a path ending in .png")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UsageError(f"--save-map {path}: {parent} is not a directory")
    if os.path.isdir(path):
        raise UsageError(f"--save-map {path}: is a directory")
