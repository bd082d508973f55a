"""The old home of ``vista eval``'s parser and command, which now live in :mod:`vista.cli.eval`.

Kept so that ``from vista.eval.cli import add_eval_parser, cmd_eval`` and
``python -m vista.eval.cli ARGS`` (the same as ``vista eval ARGS``) keep working.
"""
from __future__ import annotations

import sys

from ..cli import UsageError
from ..cli.eval import DEFAULT_RETENTIONS, add_eval_parser, cmd_eval
from .readers import BENCHMARKS

__all__ = ["BENCHMARKS", "DEFAULT_RETENTIONS", "UsageError", "add_eval_parser", "cmd_eval", "main"]


def main(argv=None) -> int:
    """``python -m vista.eval.cli ARGS`` is ``vista eval ARGS``."""
    from ..cli import main as vista_main

    return vista_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
