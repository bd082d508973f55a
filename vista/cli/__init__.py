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

One module per sub-command, its parser (``add_<command>_parser``) beside its command (``cmd_<command>``):
``ask.py``, ``chat.py``, ``demo.py``, ``eval.py``, ``train_scout.py``. This file keeps :func:`main`, the
lazy dispatch (:func:`build_parser`), the parser class with its one-line errors and typo suggestions,
and the option types and helpers the sub-commands share. ``python -m vista.cli`` runs :func:`main`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from typing import List, Optional

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


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
    from .. import __version__
    from .ask import add_ask_parser
    from .chat import add_chat_parser
    from .demo import add_demo_parser

    wanted = None if full else _command_in(argv)

    p = _Parser(prog="vista", description="Query-guided visual token pruning for video LLMs (Vista-LLM).")
    p.add_argument("--version", action="version", version=f"vista-llm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{ask,chat,demo,eval,train-scout}")
    add_ask_parser(sub)
    add_chat_parser(sub)
    add_demo_parser(sub)
    if full or wanted == "eval":
        from .eval import add_eval_parser

        add_eval_parser(sub)
    else:
        sub.add_parser("eval", help="accuracy / FLOPs / latency sweep over retention ratios on local benchmark files")
    if full or wanted == "train-scout":
        from .train_scout import add_train_scout_parser

        add_train_scout_parser(sub)
    else:
        sub.add_parser("train-scout", help="fine-tune the BLIP-2 semantic scout on Visual Genome region "
                                           "descriptions (paper App. A)")
    return p


def add_common_options(sp, frames_default: int) -> None:
    """The options every model-running sub-command shares (ask, chat, demo): retention, frames,
    answer length, output form and kernel backend."""
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


def _user_errors():
    """Exception types that mean bad input (exit 2, one line)."""
    from ..video import VideoError

    errs = [UsageError, VideoError, FileNotFoundError, NotADirectoryError, PermissionError]
    try:
        from ..pipeline import PipelineError

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


# ------------------------------------------------------------------------------ names of the old module

# vista/cli.py defined the commands itself; their names still resolve here, on first use (the
# sub-command modules stay unimported until then, so ``import vista.cli`` stays light).
_MOVED = {"cmd_ask": "ask", "cmd_chat": "chat", "CHAT_HELP": "chat",
          "cmd_demo": "demo", "DEMO_QUESTION": "demo", "DEMO_MODEL_DIRS": "demo"}


def __getattr__(name):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MOVED))
