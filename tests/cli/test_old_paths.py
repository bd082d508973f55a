"""Names and entry points of the CLI before it became a package (vista/cli.py, vista/eval/cli.py) still
work: ``from vista.cli import cmd_ask`` and friends, ``from vista.eval.cli import add_eval_parser``,
``python -m vista.eval.cli ARGS`` (= ``vista eval ARGS``), and none of them makes ``import vista.cli``
heavy."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# name in vista.cli -> the module of vista/cli/ that defines it now
OLD_CLI_NAMES = {
    "cmd_ask": "ask", "cmd_chat": "chat", "CHAT_HELP": "chat",
    "cmd_demo": "demo", "DEMO_QUESTION": "demo", "DEMO_MODEL_DIRS": "demo",
}


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, module", sorted(OLD_CLI_NAMES.items()))
def test_names_of_the_old_cli_module_are_still_importable_from_vista_cli(name, module):
    import importlib

    import vista.cli

    assert getattr(vista.cli, name) is getattr(importlib.import_module(f"vista.cli.{module}"), name)
    assert name in dir(vista.cli)


def test_vista_cli_has_no_other_attribute():
    import vista.cli

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vista.cli.nope  # noqa: B018


def test_old_names_do_not_make_import_vista_cli_heavy():
    code = ("import sys, vista.cli\n"
            "names = sorted(n for n in dir(vista.cli) if n.startswith(('cmd_', 'DEMO_', 'CHAT_')))\n"
            "print(names, sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))\n")
    res = _run("-c", code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{sorted(OLD_CLI_NAMES)} []"


def test_vista_eval_cli_module_is_the_eval_command():
    from vista.cli import eval as E
    from vista.eval import cli as old

    for name in ("add_eval_parser", "cmd_eval", "DEFAULT_RETENTIONS"):
        assert getattr(old, name) is getattr(E, name)
    assert callable(old.main)


@pytest.mark.parametrize("argv", [["--help"], [], ["--bench", "nope"]], ids=["help", "nothing", "bad-bench"])
def test_python_m_vista_eval_cli_is_vista_eval(argv):
    old = _run("-m", "vista.eval.cli", *argv)
    new = _run("-m", "vista.cli", "eval", *argv)
    assert (old.returncode, old.stdout, old.stderr) == (new.returncode, new.stdout, new.stderr)
    assert old.returncode == (0 if argv == ["--help"] else 2)


class _Saves:
    """Stands in for a model / processor / scout: ``save_pretrained(d)`` writes one file."""

    def __init__(self, name):
        self.name = name

    def save_pretrained(self, d):
        Path(d, self.name).write_text("x")


def test_demo_save_models_folders_keep_the_mode_they_had(tmp_path):
    """``vista demo --save-models``: each folder is written in a private temporary folder and renamed
    into place, so it is owner-only (0700) whatever the umask, as before the CLI was split; a second
    save replaces the folder and leaves no temporary folder behind."""
    from vista.cli.demo import DEMO_MODEL_DIRS, _save_demo_models

    for _ in range(2):
        lines = _save_demo_models(str(tmp_path), _Saves("model"), _Saves("processor"), _Saves("scout"))
        assert lines[-1].startswith("use them offline")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DEMO_MODEL_DIRS.values())
        for d in DEMO_MODEL_DIRS.values():
            assert (tmp_path / d).stat().st_mode & 0o777 == 0o700, d
    assert sorted(p.name for p in (tmp_path / DEMO_MODEL_DIRS["model"]).iterdir()) == ["model", "processor"]
