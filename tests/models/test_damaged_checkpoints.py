"""Damaged model / scout directories: a ValueError naming the file and the damage from the library,
exit 2 with one ``vista ask: error:`` line naming the file from the command line (never an
``internal error`` from transformers or safetensors)."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

from vista.checkpoint import CheckpointFileError, check_checkpoint_files, read_json_object
from vista.cli import main


def _truncate(path, frac=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * frac)])


def _write(text):
    def damage(path):
        with open(path, "wb") as f:
            f.write(text if isinstance(text, bytes) else text.encode())

    return damage


# (file, how it is damaged, what the message must say)
DAMAGES = [
    ("model.safetensors", _truncate, "truncated"),
    ("model.safetensors", lambda p: _truncate(p, 0.99), "truncated"),
    ("model.safetensors", _write(b""), "truncated or not a safetensors file"),
    ("model.safetensors", _write(struct.pack("<Q", 10) + b"not json!!"), "header is not JSON"),
    ("config.json", _write("null"), "holds null"),
    ("config.json", _write('{"model_type": '), "malformed JSON"),
    ("config.json", _write("[1, 2]"), "holds a JSON list"),
    ("config.json", _write(b"{\xff}"), "not UTF-8"),
    ("config.json", _write(""), "is empty"),
    ("processor_config.json|preprocessor_config.json", _write("null"), "holds null"),
    ("tokenizer_config.json", _write("{"), "malformed JSON"),
]


def _damaged_copy(src, tmp_path, name, damage):
    d = tmp_path / "damaged"
    shutil.copytree(src, d)
    found = [d / n for n in name.split("|") if (d / n).exists()]  # "a|b": the first one present
    assert found, f"{name} not in {sorted(os.listdir(src))}"
    target = found[0]
    damage(str(target))
    return d, str(target)


@pytest.mark.parametrize("name, damage, what", DAMAGES, ids=[f"{n}-{w}-{i}" for i, (n, _, w) in enumerate(DAMAGES)])
def test_model_dir_damage_is_a_value_error_naming_the_file(llava, tmp_path, name, damage, what):
    from vista.models import load_pretrained

    d, target = _damaged_copy(llava, tmp_path, name, damage)
    with pytest.raises(ValueError) as e:
        load_pretrained(str(d))
    assert str(e.value).startswith(f"{target}: ") and what in str(e.value), str(e.value)


@pytest.mark.parametrize("name, damage, what", [d for d in DAMAGES if d[0] != "tokenizer_config.json"],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_scout_dir_damage_is_a_value_error_naming_the_file(scout, tmp_path, name, damage, what):
    from vista.scout import SemanticScout

    d, target = _damaged_copy(scout, tmp_path, name, damage)
    with pytest.raises(ValueError) as e:
        SemanticScout.from_pretrained(str(d), device="cpu")
    assert f"{target}: " in str(e.value) and what in str(e.value), str(e.value)


def test_index_naming_a_missing_shard(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointFileError, match="names the shard model-00001-of-00002.safetensors, which is missing"):
        check_checkpoint_files(d)
    (d / "model.safetensors.index.json").write_text("null")
    with pytest.raises(CheckpointFileError, match="model.safetensors.index.json: holds null"):
        check_checkpoint_files(d)


def test_intact_files_pass(llava, scout):
    assert check_checkpoint_files(llava)["model_type"] == "llava_onevision"
    assert check_checkpoint_files(scout)["model_type"] == "blip-2"
    assert read_json_object(os.path.join(llava, "config.json"))["model_type"] == "llava_onevision"


# ------------------------------------------------------------------ command line


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    p = tmp_path / "frame.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(p)
    return str(p)


@pytest.mark.parametrize("which", ["model", "scout"])
@pytest.mark.parametrize("name, damage, what", [DAMAGES[0], DAMAGES[4], DAMAGES[5]], ids=["truncated", "null", "malformed"])
def test_cli_damaged_dir_exits_2_naming_the_file(llava, scout, image, tmp_path, capsys, which, name, damage, what):
    d, target = _damaged_copy(llava if which == "model" else scout, tmp_path, name, damage)
    model, sc = (str(d), scout) if which == "model" else (llava, str(d))
    rc = main(["ask", image, "what is it?", "--model", model, "--scout", sc, "--frames", "2",
               "--max-new-tokens", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("vista ask: error: "), err
    assert target in err[0] and what in err[0], err[0]
