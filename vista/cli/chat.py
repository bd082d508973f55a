"""``vista chat VIDEO --model PATH``: many questions about one video, decoded and encoded once.

Questions come from the terminal (with a ``vista>`` prompt) or from stdin, one a line; ``/map FILE``,
``/retention R``, ``/help`` and ``/quit`` are commands.
"""
from __future__ import annotations

import argparse
import sys

from .app import EXIT_OK, UsageError, _note, _one_line, _quiet_transformers, _retention, _show_progress, add_common_options
from .ask import (
    _check_map_path,
    _print_result,
    add_cache_dir_option,
    add_clip_options,
    add_device_options,
    add_video_model_options,
    check_model_dirs,
)

CHAT_HELP = ("type a question (one a line); /map FILE.png saves the last answer's token map, "
             "/retention R changes retention, /quit (or end of input) ends")


def add_chat_parser(sub) -> None:
    c = sub.add_parser("chat", help="ask many questions about one video (decoded and encoded once)",
                       description="Load the model once, decode and encode the video once, then answer "
                                   "questions read from the terminal (or stdin, one a line). " + CHAT_HELP + ".")
    add_video_model_options(c, question=False)
    c.add_argument("--scout", metavar="PATH", help="saved BLIP-2 ITM scout directory (optional)")
    add_clip_options(c, "use only the video from this time on", "use only the video up to this time")
    c.add_argument("--history", action="store_true",
                   help="put earlier questions and answers into the prompt (as text; default: each question alone)")
    add_cache_dir_option(c, "also keep the video's features on disk here, for later sessions")
    add_device_options(c)
    add_common_options(c, 64)
    c.set_defaults(func=cmd_chat)
def _chat_lines(interactive: bool):
    """Questions and commands: from the terminal (with a prompt) or from stdin, one a line."""
    if interactive:
        while True:
            try:
                yield input("vista> ")
            except EOFError:
                sys.stdout.write("\n")
                return
    else:
        for line in sys.stdin:
            yield line


def _chat_command(args, pipe, line: str, last) -> None:
    """Run one /command of ``vista chat``; raises UsageError on bad input."""
    cmd, _, rest = line.partition(" ")
    rest = rest.strip()
    if cmd == "/map":
        if not rest:
            raise UsageError("/map needs a file name, e.g. /map map.png")
        if last is None:
            raise UsageError("/map: no answer yet; ask a question first")
        _check_map_path(rest)
        m = last.save_map(rest)
        print(f"[vista] token map: {m.path} ({m.width}x{m.height})", flush=True)
    elif cmd == "/retention":
        try:
            r = _retention(rest)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"/retention {e}") from None
        pipe.set_config(pipe.config.replace(retention=r))
        print(f"[vista] retention {r:g}", flush=True)
    elif cmd == "/help":
        print(f"[vista] {CHAT_HELP}", flush=True)
    else:
        raise UsageError(f"unknown command {cmd!r}; {CHAT_HELP}")


def cmd_chat(args) -> int:
    check_model_dirs(args)
    progress = _show_progress(args)
    _quiet_transformers()
    from ..config import VistaConfig
    from ..pipeline import VistaPipeline
    from ..video import check_time_range

    clip = check_time_range(args.start, args.end)
    config = VistaConfig(retention=args.retention, backend=args.backend)
    pipe = VistaPipeline(args.model, scout_path=args.scout, config=config, device=args.device, dtype=args.dtype,
                         num_frames=args.frames, progress=progress, cache_dir=args.cache_dir)
    video = pipe.open_video(args.video, clip=clip)  # decode once, up front: a bad video fails here
    for n in video.notes:
        _note(args, n)
    interactive = sys.stdin.isatty()
    if interactive and not args.quiet:
        print(f"vista chat: {video.summary()}; {CHAT_HELP}", flush=True)
    history: list = []
    last = None
    for raw in _chat_lines(interactive):
        line = raw.strip()
        if not line:
            continue
        if line in ("/quit", "/exit", "/q"):
            break
        if line.startswith("/"):
            try:
                _chat_command(args, pipe, line, last)
            except (UsageError, ValueError, OSError) as e:  # the session goes on
                sys.stderr.write(f"vista chat: error: {_one_line(e)}\n")
                sys.stderr.flush()
            continue
        res = pipe.ask(args.video, line, max_new_tokens=args.max_new_tokens, clip=clip,
                       history=history if args.history else None)
        last = res
        if args.history:
            history.append((line, res.answer))
        _print_result(args, res, None)
        sys.stdout.flush()
    return EXIT_OK
