"""The ``vista`` command.

    vista ask VIDEO "QUESTION" --model PATH [--scout PATH] [--retention 0.15] [--frames 64]
              [--max-new-tokens 128] [--save-map map.png] [--json] [--quiet] [--cache-dir DIR]
    vista chat VIDEO --model PATH [--scout PATH] [--history] [--cache-dir DIR] [...]
              (questions from the terminal or stdin, one a line; /map FILE, /retention R, /quit)
    vista demo [--frames 16] [--retention 0.15] [--save-map vista_demo_map.png] [--json] [--save-models DIR]
    vista eval ... / vista train-scout ...

Exit codes: 0 success; 2 bad input (missing/corrupt video, bad or mistyped option, incomplete or
damaged model directory), reported as one ``vista <command>: error: ...`` line on stderr with no
traceback; 1 an unexpected internal error (set VISTA_DEBUG=1 for the traceback); 130 interrupted.
``vista --version`` / ``--help`` import neither torch nor transformers (see :func:`build_parser`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from typing import List, Optional

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
DEMO_QUESTION = "what color is the ball on the left ?"


class UsageError(ValueError):
    """Bad input from the user: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error report (``vista ask: error: ...``) and exit code 2.

    A mistyped option is reported first, by the sub-command it was given to, with the closest
    option name (``vista ask: error: unrecognized option '--retnetion' (did you mean
    '--retention'?)``), instead of argparse's "the following arguments are required" (which hides
    the typo when the typo was a required option) or the top-level ``vista: error:``.
    """

    _seen_args: Optional[List[str]] = None

    def parse_known_args(self, args=None, namespace=None):
        self._seen_args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            target = self._subparser_for(ns) or self
            target.error(target._unknown_message(extras) or f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def _subparser_for(self, ns) -> Optional["_Parser"]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(ns, action.dest, None) or "")
                return sub if isinstance(sub, _Parser) else None
        return None

    def _unknown_message(self, tokens) -> Optional[str]:
        """``unrecognized option '--x' (did you mean '--y'?)`` for the first unknown option in ``tokens``."""
        import difflib

        known = [o for o in self._option_string_actions if o.startswith("--")]
        for tok in tokens:
            if not tok.startswith("-") or tok == "-" or tok == "--" or self._negative_number_matcher.match(tok):
                continue
            name = tok.split("=", 1)[0]
            if name in self._option_string_actions:
                continue
            if self.allow_abbrev and name.startswith("--") and any(o.startswith(name) for o in known):
                continue  # an abbreviation argparse resolves (or reports as ambiguous) itself
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            return f"unrecognized option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        return None

    def error(self, message):  # noqa: D401 - argparse API
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in self._actions)
        seen = list(self._seen_args or [])
        if not leaf:  # the top level owns only the options before the sub-command
            seen = seen[: next((i for i, t in enumerate(seen) if not t.startswith("-")), len(seen))]
        unknown = self._unknown_message(seen)
        if unknown is not None and not message.startswith("unrecognized option"):
            message = unknown  # the typo first: it is usually why a required option looks missing
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USAGE)


# ------------------------------------------------------------------------------ option types


def _retention(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {s!r}") from None
    if not (0.0 < v <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def _positive_int(flag: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
        return v

    parse.__name__ = flag
    return parse


def _show_progress(args) -> bool:
    return not args.quiet and not getattr(args, "json", False) and sys.stdout.isatty()


def _note(args, msg: str) -> None:
    if not args.quiet:
        sys.stderr.write(f"vista: note: {msg}\n")


@contextlib.contextmanager
def _quiet_warnings():
    """Keep library warnings (transformers' advisories, deprecations) out of the command's output.

    Restores the warning filters and environment afterwards, so ``main()`` called in-process
    (tests, notebooks) leaves no trace.
    """
    saved_env = {k: os.environ.get(k) for k in _ENV_QUIET}
    for k, v in _ENV_QUIET.items():
        os.environ.setdefault(k, v)
    with warnings.catch_warnings():
        for cat in (UserWarning, FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=cat)
        with contextlib.ExitStack() as stack:
            _HF_STACK.append(stack)
            try:
                yield
            finally:
                _HF_STACK.pop()
                for k, v in saved_env.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


_ENV_QUIET = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
_HF_STACK: list = []


def _quiet_transformers() -> None:
    """transformers logs at error level and without its own progress bars until the command ends."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def restore():
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()

    if _HF_STACK:
        _HF_STACK[-1].callback(restore)


# ------------------------------------------------------------------------------ vista ask


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
    from .video import load_video

    if not os.path.isdir(args.model):
        raise UsageError(f"--model {args.model}: no such directory (expected a saved model + processor)")
    if args.scout is not None and not os.path.isdir(args.scout):
        raise UsageError(f"--scout {args.scout}: no such directory (expected a saved BLIP-2 ITM scout)")
    _check_map_path(args.save_map)
    progress = _show_progress(args)
    video = None  # with --cache-dir, ask decodes (or finds the frames) through the cache
    if args.cache_dir is None:
        video = load_video(args.video, args.frames, progress=progress, start=args.start, end=args.end)

    _quiet_transformers()
    from .config import VistaConfig
    from .pipeline import VistaPipeline

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


# ------------------------------------------------------------------------------ vista chat

CHAT_HELP = ("type a question (one a line); /map FILE.png saves the last answer's token map, "
             "/retention R changes retention, /quit (or end of input) ends")


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
    if not os.path.isdir(args.model):
        raise UsageError(f"--model {args.model}: no such directory (expected a saved model + processor)")
    if args.scout is not None and not os.path.isdir(args.scout):
        raise UsageError(f"--scout {args.scout}: no such directory (expected a saved BLIP-2 ITM scout)")
    progress = _show_progress(args)
    _quiet_transformers()
    from .config import VistaConfig
    from .pipeline import VistaPipeline
    from .video import check_time_range

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


# ------------------------------------------------------------------------------ vista demo


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


DEMO_MODEL_DIRS = {"model": "llava-onevision-tiny", "scout": "scout-tiny"}


def _save_dir_atomically(final: str, save) -> None:
    """``save(tmp)`` into a fresh folder next to ``final``, fsync its files, then rename it into place
    (an existing ``final`` is replaced only once the new copy is complete)."""
    import shutil
    import tempfile

    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", dir=parent)
    try:
        save(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        old = None
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old.", dir=parent)
            os.replace(final, os.path.join(old, "x"))
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_demo_models(folder: str, model, processor, scout) -> List[str]:
    """Write the demo's tiny models (``save_pretrained`` layout) under ``folder``; say how to use them."""
    m = os.path.join(folder, DEMO_MODEL_DIRS["model"])

    def save_model(tmp):
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    _save_dir_atomically(m, save_model)
    lines = [f"saved the tiny LLaVA-OneVision model + processor to {m}"]
    use = f'vista ask VIDEO "QUESTION" --model {m}'
    if scout is not None:
        sc = os.path.join(folder, DEMO_MODEL_DIRS["scout"])
        _save_dir_atomically(sc, scout.save_pretrained)
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
    from .config import VistaConfig
    from .pipeline import VistaPipeline
    from .scout import build_tiny_scout
    from .tiny_models import build_tiny_llava_onevision
    from .video import load_video, synthetic_video, write_video

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
        out(f"models: tiny random LLaVA-OneVision (Qwen2 64-d x 2 layers, SigLIP 32-d, 196 tokens a frame)"
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


# ------------------------------------------------------------------------------ parser / main


_COMMANDS = ("ask", "chat", "demo", "eval", "train-scout")


def _command_in(argv: Optional[List[str]]) -> Optional[str]:
    """The sub-command named in ``argv`` (its first non-option word), or None."""
    for tok in argv or []:
        if not tok.startswith("-"):
            return tok if tok in _COMMANDS else None
    return None


def build_parser(argv: Optional[List[str]] = None, *, full: bool = True) -> argparse.ArgumentParser:
    """The ``vista`` parser. With ``full=False`` only the sub-command named in ``argv`` gets its
    options; the others are registered by name and help line only, so ``vista --version`` /
    ``vista --help`` import neither torch nor transformers (train-scout's options need torch)."""
    from . import __version__

    wanted = None if full else _command_in(argv)

    p = _Parser(prog="vista", description="Query-guided visual token pruning for video LLMs (Vista-LLM).")
    p.add_argument("--version", action="version", version=f"vista-llm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{ask,chat,demo,eval,train-scout}")

    def common(sp, frames_default):
        sp.add_argument("--retention", type=_retention, default=0.15, metavar="R",
                        help="fraction of visual tokens kept, in (0, 1] (default 0.15)")
        sp.add_argument("--frames", type=_positive_int("--frames"), default=frames_default, metavar="N",
                        help=f"frames sampled uniformly from the video (default {frames_default})")
        max_new = 128 if sp.prog.endswith(("ask", "chat")) else 8
        sp.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens"), metavar="N",
                        default=max_new, help=f"answer length limit in tokens (default {max_new})")
        sp.add_argument("--json", action="store_true", help="print one JSON record instead of text")
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes")
        sp.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto",
                        help="kernel backend of the pruning ops (default auto)")

    a = sub.add_parser("ask", help="answer a question about a video with a pruned model",
                       description="Answer a question about a video; Vista prunes the visual tokens.")
    a.add_argument("video", help="video file, image file or folder of images")
    a.add_argument("question", help="the question, in quotes")
    a.add_argument("--model", required=True, metavar="PATH",
                   help="saved LLaVA-OneVision / LLaVA-Video / Qwen2.5-VL model + processor directory")
    a.add_argument("--scout", metavar="PATH", help="saved BLIP-2 ITM scout directory (default: none, every kept token is a DPC-KNN anchor)")
    a.add_argument("--save-map", metavar="PNG", help="write the token map picture here (default: no map)")
    a.add_argument("--start", type=float, default=None, metavar="SEC",
                   help="use only the video from this time on (seconds; video files only; default: the start)")
    a.add_argument("--end", type=float, default=None, metavar="SEC",
                   help="use only the video up to this time (seconds; video files only; default: the end)")
    a.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="reuse / keep the video's decoded frames and features here, across runs (default: none)")
    a.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    a.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="model dtype (default: the loader's)")
    common(a, 64)
    a.set_defaults(func=cmd_ask)

    c = sub.add_parser("chat", help="ask many questions about one video (decoded and encoded once)",
                       description="Load the model once, decode and encode the video once, then answer "
                                   "questions read from the terminal (or stdin, one a line). " + CHAT_HELP + ".")
    c.add_argument("video", help="video file, image file or folder of images")
    c.add_argument("--model", required=True, metavar="PATH",
                   help="saved LLaVA-OneVision / LLaVA-Video / Qwen2.5-VL model + processor directory")
    c.add_argument("--scout", metavar="PATH", help="saved BLIP-2 ITM scout directory (optional)")
    c.add_argument("--start", type=float, default=None, metavar="SEC", help="use only the video from this time on")
    c.add_argument("--end", type=float, default=None, metavar="SEC", help="use only the video up to this time")
    c.add_argument("--history", action="store_true",
                   help="put earlier questions and answers into the prompt (as text; default: each question alone)")
    c.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="also keep the video's features on disk here, for later sessions")
    c.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    c.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="model dtype (default: the loader's)")
    common(c, 64)
    c.set_defaults(func=cmd_chat)

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
    common(d, 16)
    d.set_defaults(func=cmd_demo)

    if full or wanted == "eval":
        from .eval.cli import add_eval_parser

        add_eval_parser(sub)
    else:
        sub.add_parser("eval", help="accuracy / FLOPs / latency sweep over retention ratios on local benchmark files")
    if full or wanted == "train-scout":
        from .scout.train import add_train_scout_parser

        add_train_scout_parser(sub)
    else:
        sub.add_parser("train-scout", help="fine-tune the BLIP-2 semantic scout on Visual Genome region "
                                           "descriptions (paper App. A)")
    return p


def _user_errors():
    """Exception types that mean bad input (exit 2, one line)."""
    from .video import VideoError

    errs = [UsageError, VideoError, FileNotFoundError, NotADirectoryError, PermissionError]
    try:
        from .pipeline import PipelineError

        errs.append(PipelineError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return msg or type(exc).__name__


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv, full=False)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already reported
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    debug = bool(os.environ.get("VISTA_DEBUG"))
    prog = f"vista {args.command}"
    try:
        with _quiet_warnings():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except _user_errors() as e:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {_one_line(e)}\n")
        return EXIT_USAGE
    except (ValueError, OSError) as e:  # e.g. load_pretrained on an incomplete model directory
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {_one_line(e)}\n")
        return EXIT_USAGE
    except ImportError as e:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: missing dependency ({_one_line(e)}); "
                         "install with: pip install 'vista-llm[video]'\n")
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the command must not dump a traceback on users
        if debug:
            raise
        sys.stderr.write(f"{prog}: internal error: {type(e).__name__}: {_one_line(e)} "
                         "(set VISTA_DEBUG=1 for the traceback)\n")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
