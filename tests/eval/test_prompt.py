"""Prompt building and option-letter extraction (vista.eval.prompt)."""
import pytest

from vista.eval.prompt import (
    ANSWER_INSTRUCTION,
    build_prompt,
    extract_letter,
    prompt_style_for,
    strip_option_label,
)

OPTS = ["a red car", "a blue bicycle", "a dog", "a man"]


def test_llava_prompt_lists_options_and_instruction():
    p = build_prompt("What passes by?", OPTS, "llava")
    assert p == (
        "What passes by?\nA. a red car\nB. a blue bicycle\nC. a dog\nD. a man\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert p.endswith(ANSWER_INSTRUCTION)


def test_qwen_prompt_has_question_and_options_blocks():
    p = build_prompt("  What passes by? ", OPTS[:2], "qwen")
    lines = p.splitlines()
    assert lines[1] == "Question: What passes by?"
    assert lines[2] == "Options:"
    assert lines[3:5] == ["A. a red car", "B. a blue bicycle"]
    assert lines[-1] == ANSWER_INSTRUCTION


def test_prompt_style_from_model_type():
    assert prompt_style_for("qwen2_5_vl") == "qwen"
    assert prompt_style_for("llava_onevision") == "llava"
    assert prompt_style_for(None) == "llava"


@pytest.mark.parametrize(
    "question, options, style, match",
    [
        ("", OPTS, "llava", "question"),
        ("Q?", ["only one"], "llava", "options"),
        ("Q?", ["x", ""], "llava", "option B"),
        ("Q?", "AB", "llava", "options must be a list"),
        ("Q?", OPTS, "gpt", "style"),
    ],
)
def test_prompt_bad_input_names_the_argument(question, options, style, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_prompt(question, options, style)


def test_strip_option_label_only_strips_the_expected_letter():
    assert strip_option_label("A. Apple pie", 0) == "Apple pie"
    assert strip_option_label("(B) two cats", 1) == "two cats"
    assert strip_option_label("C) left", 2) == "left"
    # the wrong letter for the position, or a word starting with a letter: unchanged
    assert strip_option_label("B. Apple", 0) == "B. Apple"
    assert strip_option_label("A cat sleeps", 0) == "A cat sleeps"


MESSY = [
    ("B", "B"),
    ("(c)", "C"),
    ("C.", "C"),
    ("  \n (B)  \n", "B"),
    ("'D'", "D"),
    ("b", "B"),
    ("**A**", "A"),
    ("<answer>D</answer>", "D"),
    ("The answer is D.", "D"),
    ("Answer: (b)", "B"),
    ("answer: c", "C"),
    ("Answer - B", "B"),
    ("The best answer is C", "C"),
    ("The correct answer to the question is A.", "A"),
    ("I think the correct option is D because the dog barks.", "D"),
    ("Option C", "C"),
    ("Best option: (A) a red car", "A"),
    ("Sure! The answer is: **B. a blue bicycle**", "B"),
    ("B. a blue bicycle", "B"),
    ("D) a man", "D"),
    ("C: a dog", "C"),
    ("[B]", "B"),
    ("It is clearly (C).", "C"),
    ("A", "A"),
    ("A. a red car", "A"),
    # the article "A" must not be read as option A
    ("A man is riding a blue bicycle, so the answer is B.", "B"),
    ("A person walks in. Then C.", "C"),
    ("The answer is a man", "D"),
    # reasoning traces are ignored
    ("<think>maybe A or B</think>\nC", "C"),
    # the reply quotes an option's text
    ("a dog", "C"),
    ("The video shows a blue bicycle.", "B"),
    # nothing usable / out of range
    ("", None),
    ("I don't know", None),
    ("E", None),
    ("The answer is E", None),
    ("a red", None),
]


@pytest.mark.parametrize("text, expected", MESSY)
def test_extract_letter_messy(text, expected):
    assert extract_letter(text, OPTS) == expected


def test_extract_letter_with_option_count_and_five_options():
    assert extract_letter("E. the last one", 5) == "E"
    assert extract_letter("E. the last one", 4) is None
    assert extract_letter(None, 4) is None


def test_extract_letter_longer_option_text_wins():
    opts = ["red", "red car", "blue", "green"]
    assert extract_letter("the red car", opts) == "B"


def test_extract_letter_bad_input():
    with pytest.raises(TypeError, match="text"):
        extract_letter(3, OPTS)
    with pytest.raises(ValueError, match="options"):
        extract_letter("A", 0)


# A capital "A" followed by a lowercase word names option A unless it is a sentence-initial article.
LETTER_A = [
    ("The answer is A because the car is red.", "A"),
    ("A is the correct answer.", "A"),
    ("Option A is correct", "A"),
    ("The correct option is A since it shows a car", "A"),
    ("A since the car is red", "A"),
    ("A, because the car is red", "A"),
    ("The answer is B because of a dog in frame", "B"),
    ("I choose A", "A"),
    ("My answer: A", "A"),
    ("Answer: A. a red car", "A"),
    # still the article
    ("A man is driving. The answer is B", "B"),
    ("A person is driving.", None),
    ("The answer is a man", "D"),
]


@pytest.mark.parametrize("text, expected", LETTER_A)
def test_extract_letter_capital_a_before_a_word(text, expected):
    assert extract_letter(text, OPTS) == expected


# A directly negated letter is skipped; the affirmed one wins; a tie between letters gives None.
NEGATED = [
    ("The answer is not A, it is C", "C"),
    ("The answer isn't A, it's C", "C"),
    ("It is not A but C", "C"),
    ("Never A. C.", "C"),
    ("Not (A). (C)", "C"),
    ("The answer is C, not A", "C"),
    ("I choose B, not A", "B"),
    ("Option A is wrong; B is right", "B"),
    ("A is wrong, C is correct", "C"),
    ("Not A", None),
    ("Either A or B", None),
    ("B and C", None),
]


@pytest.mark.parametrize("text, expected", NEGATED)
def test_extract_letter_negated_and_ambiguous(text, expected):
    assert extract_letter(text, OPTS) == expected
