"""vista.models: loading, family detection, argument checks, question spans, processor patching."""
from __future__ import annotations

import logging
import os
import shutil
import warnings

import pytest
import torch
from tests.models.helpers import QUESTION, inputs

import vista
from vista import VistaConfig, retained_count
from vista.models import apply_vista, family_of, last_prune_info, load_pretrained, remove_vista
from vista.models import common as vm_common
from vista.models.common import question_token_ids
from vista.tiny_models import build_tiny_llava_onevision, random_video


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llava_common")
    build_tiny_llava_onevision(path, seed=1)
    return path


def _copy_without(src, dst, name):
    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, name))
    return dst


@pytest.mark.parametrize(
    "missing, needle",
    [("config.json", "config.json"), ("model.safetensors", "weights"), ("processor_config.json", "processor_config"),
     ("tokenizer.json", None)],
)
def test_load_pretrained_names_the_missing_file(ckpt, tmp_path, missing, needle):
    d = _copy_without(ckpt, tmp_path / "ck", missing)
    if missing == "tokenizer.json":
        os.remove(os.path.join(d, "tokenizer_config.json"))
        needle = "tokenizer"
    with pytest.raises(ValueError, match=needle) as e:
        load_pretrained(d)
    assert str(d) in str(e.value)


def test_load_pretrained_rejects_bad_arguments(ckpt, tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(TypeError, match="path"):
        load_pretrained(123)
    with pytest.raises(TypeError, match="dtype"):
        load_pretrained(ckpt, dtype="float32")
    with pytest.raises(ValueError, match="device"):
        load_pretrained(ckpt, device="nodevice")


def test_load_pretrained_falls_back_to_sdpa_with_one_notice(ckpt, monkeypatch, caplog):
    monkeypatch.setattr(vm_common.notice_once, "__defaults__", (set(),))  # fresh "seen" set
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="vista.models"):
        warnings.simplefilter("ignore")
        m1, p1 = load_pretrained(ckpt)
        m2, _ = load_pretrained(ckpt, attn_implementation="flash_attention_2")
    assert m1.config._attn_implementation == "sdpa" and m2.config._attn_implementation == "sdpa"
    notes = [r for r in caplog.records if "sdpa" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0].getMessage()
    assert type(m1).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(p1).__name__ == "LlavaOnevisionProcessor"
    assert m1.dtype == torch.float32 and not m1.training


def test_family_of():
    assert family_of("llava_onevision") == "llava_onevision"
    assert family_of("qwen2_5_vl") == "qwen2_5_vl"
    with pytest.raises(ValueError, match="llava_next"):
        family_of("llava_next")
    with pytest.raises(TypeError, match="model"):
        family_of(3.5)


def test_family_of_model_and_dir(ckpt):
    assert family_of(ckpt) == "llava_onevision"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_pretrained(ckpt)
    assert family_of(model) == "llava_onevision" and family_of(model.config) == "llava_onevision"


def test_apply_vista_argument_checks(ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, proc = load_pretrained(ckpt)
    with pytest.raises(TypeError, match="config"):
        apply_vista(model, {"retention": 0.2})
    with pytest.raises(TypeError, match="scout"):
        apply_vista(model, VistaConfig(), scout=object())
    with pytest.raises(ValueError, match="processor"):
        apply_vista(model, VistaConfig(), processor=proc.tokenizer)
    with pytest.raises((TypeError, ValueError), match="model"):
        apply_vista(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model"):
        remove_vista("model")
    assert remove_vista(model) is model  # never patched: unchanged
    assert last_prune_info(model) == []
    assert vista.apply_vista(model, VistaConfig(retention=0.5)) is model  # lazy top-level export
    assert vista.remove_vista(model) is model


def test_patched_processor_saves_and_reloads_stock(ckpt, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, proc = load_pretrained(ckpt)
    apply_vista(model, VistaConfig(retention=0.25), processor=proc)
    v = random_video(2, 32, 32)
    n_pruned = int((inputs(proc, [v], [QUESTION])["input_ids"] == model.config.video_token_id).sum())
    assert n_pruned == retained_count(2, 196, 0.25) + 1
    proc.save_pretrained(tmp_path / "p")  # must not serialise the patch (nor the model)
    from transformers import AutoProcessor

    again = AutoProcessor.from_pretrained(tmp_path / "p")
    assert int((inputs(again, [v], [QUESTION])["input_ids"] == model.config.video_token_id).sum()) == 2 * 196 + 1


def test_question_token_ids_takes_the_turn_of_the_video():
    # ids: 1 = turn start, 2 = turn end, 9 = video, 5 = "user" role, 6 = newline, 7 = special
    info = {"turn_start": 1, "turn_end": {2}, "role": {5}, "blank": {6}, "exclude": {9, 7, 2, 1, 0}}
    row = torch.tensor([0, 0, 1, 30, 31, 2, 6, 1, 5, 6, 40, 9, 9, 9, 41, 7, 42, 2, 6, 1, 50, 6])
    valid = torch.tensor([0, 0] + [1] * 20).bool()
    got = question_token_ids(row, valid, (11, 14), info)
    assert got.tolist() == [40, 41, 42]
    # no turn markers known: the turn starts after the previous end-of-turn token
    info2 = dict(info, turn_start=None)
    assert question_token_ids(row, valid, (11, 14), info2).tolist() == [40, 41, 42]


def test_normalize_override_maps_through_the_expansion_order():
    from vista.models.common import _normalize_override

    assert _normalize_override(["a", "b"], 4, order=[0, 1, 0, 1]) == ["a", "b", "a", "b"]
    assert _normalize_override(["a", "b"], 4, order=[0, 0, 1, 1]) == ["a", "a", "b", "b"]
    assert _normalize_override(["a", "b", "c", "d"], 4, order=[0, 1, 0, 1]) == ["a", "b", "c", "d"]
    assert _normalize_override(["a", "b"], 4) == ["a", "a", "b", "b"]  # no order known: one video a sample
    with pytest.raises(ValueError, match="question"):
        _normalize_override(["a", "b", "c"], 4, order=[0, 1, 0, 1])
