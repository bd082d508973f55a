"""A newcomer's first minutes: a light ``import vista`` / ``vista --version``, typos named by the
sub-command with the close match, help with defaults on every option, train-scout failing at once
on a hub id that is not cached, and the demo's tiny models saved for offline use."""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vista.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_import_vista_version_and_help_import_neither_torch_nor_transformers():
    code = ("import sys, contextlib, io, vista\n"
            "from vista.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    codes = [main(['--version']), main(['--help'])]\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'triton', 'numpy') if m in sys.modules)\n"
            "print(codes, heavy, 'vista-llm ' + vista.__version__ in out.getvalue(), 'train-scout' in out.getvalue())\n")
    res = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[0, 0] [] True True", res.stdout


def test_lazy_names_resolve_and_are_listed():
    import vista

    for name in vista.__all__:
        assert getattr(vista, name) is not None and name in dir(vista)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vista.nope  # noqa: B018


@pytest.mark.parametrize("argv, prefix, typo, match", [
    (["ask", "v.mp4", "q", "--modle", "m"], "vista ask", "--modle", "--model"),  # typo of a required option
    (["ask", "v.mp4", "q", "--model", "m", "--retnetion", "0.2"], "vista ask", "--retnetion", "--retention"),
    (["demo", "--frmaes", "4"], "vista demo", "--frmaes", "--frames"),
    (["eval", "--model", "m", "--bench", "jsonl", "--data", "d", "--limt", "3"], "vista eval", "--limt", "--limit"),
    (["train-scout", "--regions", "r", "--images", "i", "--outptu", "o"], "vista train-scout", "--outptu", "--output"),
    (["--versoin"], "vista", "--versoin", "--version"),
])
def test_mistyped_option_is_named_by_its_subcommand_with_the_close_match(capsys, argv, prefix, typo, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{prefix}: error: unrecognized option '{typo}' (did you mean '{match}'?) "
                   f"(see '{prefix} --help')"], err


def test_unknown_option_without_a_close_match(capsys):
    assert main(["ask", "v.mp4", "q", "--model", "m", "--zzzzzz"]) == 2
    assert capsys.readouterr().err.strip() == "vista ask: error: unrecognized option '--zzzzzz' (see 'vista ask --help')"


def _subparsers():
    p = build_parser()
    (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("command", ["ask", "demo", "eval", "train-scout"])
def test_every_option_has_help_and_valued_options_show_their_default(command):
    sp = _subparsers()[command]
    text = sp.format_help()
    missing_help, missing_default = [], []
    for a in sp._actions:
        if not a.option_strings or isinstance(a, argparse._HelpAction):
            continue
        if not a.help or a.help == argparse.SUPPRESS:
            missing_help.append(a.option_strings[0])
            continue
        if a.required or a.nargs == 0:
            continue  # required options and on/off flags have no default to show
        if "default" not in sp._get_formatter()._get_help_string(a):  # the formatter may add "(default: ...)"
            missing_default.append(a.option_strings[0])
    assert not missing_help, f"vista {command}: options without help: {missing_help}"
    assert not missing_default, f"vista {command}: options whose help shows no default: {missing_default}"
    assert "usage:" in text


def _fake_cache(root: Path, repo: str) -> Path:
    """The Hugging Face cache layout huggingface_hub reads: models--org--name/{refs/main,snapshots/REV/}."""
    d = root / ("models--" + repo.replace("/", "--"))
    rev = "0" * 40
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(rev)
    snap = d / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    return root


@pytest.mark.parametrize("resume", [[], ["--resume", "auto"]], ids=["fresh", "resume-auto-nothing-saved"])
def test_train_scout_fails_at_once_on_a_hub_id_that_is_not_cached(tmp_path, monkeypatch, capsys, resume):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    rc = main(["train-scout", "--regions", str(tmp_path / "r.json"), "--images", str(tmp_path),
               "--output", str(tmp_path / "out"), *resume])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("vista train-scout: error: --model Salesforce/blip2-itm-vit-g: ") and \
        "not in the local Hugging Face cache" in err[0], err
    assert took < 10, took


def test_train_scout_model_check_accepts_cached_ids_and_names_damaged_folders(tmp_path, monkeypatch, scout):
    import shutil

    import huggingface_hub.constants as hc

    from vista.cli.train_scout import check_model_source

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(_fake_cache(tmp_path / "cache", "Org/scout")))
    assert check_model_source("Org/scout") == "Org/scout"
    with pytest.raises(ValueError, match="--model Org/other: .*not in the local Hugging Face cache"):
        check_model_source("Org/other")
    assert check_model_source(scout) == scout
    bad = tmp_path / "bad"
    shutil.copytree(scout, bad)
    (bad / "config.json").write_text("null")
    with pytest.raises(ValueError, match=f"--model {bad}: .*{bad / 'config.json'}: holds null"):
        check_model_source(str(bad))
    with pytest.raises(ValueError, match="--model .*does not exist"):
        check_model_source(str(tmp_path / "missing"))


@pytest.mark.slow
def test_demo_save_models_gives_models_the_commands_read(tmp_path, capsys):
    from vista.cli.demo import DEMO_MODEL_DIRS

    out = tmp_path / "tiny"
    assert main(["demo", "--frames", "4", "--max-new-tokens", "2", "--quiet", "--save-models", str(out),
                 "--save-map", str(tmp_path / "m.png")]) == 0
    stdout = capsys.readouterr().out
    m, s = out / DEMO_MODEL_DIRS["model"], out / DEMO_MODEL_DIRS["scout"]
    assert f"saved the tiny LLaVA-OneVision model + processor to {m}" in stdout
    assert f"--model {m} --scout {s}" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_MODEL_DIRS.values())  # no temp folders left
    from PIL import Image
    import numpy as np

    img = tmp_path / "f.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(img)
    assert main(["ask", str(img), "what?", "--model", str(m), "--scout", str(s), "--frames", "1",
                 "--max-new-tokens", "1", "--quiet"]) == 0
    # saving again replaces the folders
    assert main(["demo", "--frames", "2", "--max-new-tokens", "1", "--quiet", "--no-scout", "--save-models",
                 str(out), "--save-map", str(tmp_path / "m.png")]) == 0
    assert (m / "config.json").exists()
