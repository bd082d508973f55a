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
``ask.py``, ``chat.py``, ``demo.py``, ``eval.py``, ``train_scout.py``; ``app.py`` holds :func:`main`, the
lazy dispatch (:func:`build_parser`), the parser class with its one-line errors and typo suggestions,
and the option types and helpers the sub-commands share. ``python -m vista.cli`` runs :func:`main`.
"""
from .app import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, UsageError, add_common_options, build_parser, main

__all__ = ["main", "build_parser", "UsageError", "add_common_options", "EXIT_OK", "EXIT_INTERNAL", "EXIT_USAGE"]

# Names that lived in the single-file ``vista/cli.py`` before the package split; resolved lazily so
# ``import vista.cli`` stays light.
_MOVED = {"cmd_ask": "ask", "cmd_chat": "chat", "CHAT_HELP": "chat",
          "cmd_demo": "demo", "DEMO_QUESTION": "demo", "DEMO_MODEL_DIRS": "demo"}


def __getattr__(name):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MOVED))
