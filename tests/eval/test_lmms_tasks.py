"""vista.integrations.lmms_tasks: the lmms-eval task functions share vista eval's prompt and scoring
(no lmms-eval needed)."""
import os

import pytest

from vista.eval.prompt import build_prompt, extract_letter
from vista.integrations import lmms_tasks as T

DOC = {"video": "/data/v0.mp4", "question": "what color is the ball ?",
       "options": ["A. red", "B. green", "C. blue"], "answer": "B"}


def test_doc_to_text_is_vista_eval_prompt():
    assert T.doc_to_text(DOC) == build_prompt(DOC["question"], ["red", "green", "blue"], "llava")
    assert T.doc_to_text(DOC, {"prompt_style": "qwen"}) == build_prompt(DOC["question"], ["red", "green", "blue"], "qwen")
    assert T.doc_to_text(DOC, {"pre_prompt": "P:", "post_prompt": " go"}).startswith("P:what color")
    assert T.doc_to_text(DOC, {"pre_prompt": "P:", "post_prompt": " go"}).endswith(" go")


@pytest.mark.parametrize("answer", ["B", "(b)", 1, "green", "B. green"])
def test_doc_to_target_accepts_letters_indices_and_text(answer):
    assert T.doc_to_target(dict(DOC, answer=answer)) == "B"


@pytest.mark.parametrize("answer", ["E", 7, None, "purple"])
def test_doc_to_target_rejects_answers_naming_no_option(answer):
    with pytest.raises(ValueError, match="answer"):
        T.doc_to_target(dict(DOC, answer=answer))


@pytest.mark.parametrize("reply,score", [("B", 1.0), ("The answer is (B).", 1.0), ("green", 1.0),
                                         ("A", 0.0), ("not B, it is C", 0.0), ("", 0.0), ("A or B", 0.0)])
def test_process_results_uses_extract_letter(reply, score):
    assert T.process_results(DOC, [reply]) == {"accuracy": score}
    assert score == float(extract_letter(reply, ["red", "green", "blue"]) == "B")


def test_doc_to_visual_paths(monkeypatch, tmp_path):
    assert T.doc_to_visual(DOC) == ["/data/v0.mp4"]
    monkeypatch.setenv(T.VIDEO_DIR_ENV, str(tmp_path))
    assert T.doc_to_visual(dict(DOC, video="clips/a.mp4")) == [os.path.join(str(tmp_path), "clips/a.mp4")]
    monkeypatch.delenv(T.VIDEO_DIR_ENV)
    assert T.doc_to_visual(dict(DOC, video="a.mp4")) == [os.path.join(os.getcwd(), "a.mp4")]


@pytest.mark.parametrize("bad,match", [({"video": ""}, "video"), ({"video": 3}, "video"),
                                       ({"options": "red, green"}, "options")])
def test_bad_docs_name_the_field(bad, match):
    doc = dict(DOC, **bad)
    with pytest.raises(ValueError, match=match):
        T.doc_to_visual(doc) if "video" in bad else T.doc_to_text(doc)


def test_manifest_names_the_model_class():
    pytest.importorskip("lmms_eval")
    from vista.integrations import lmms_eval_manifests

    (m,) = lmms_eval_manifests()
    assert m.model_id == "vista" and m.simple_class_path == "vista.integrations.lmms_eval.VistaLMMS"
    assert "vista_llm" in m.aliases
