"""Multiple-choice prompts and robust option-letter extraction.

The prompt follows the evaluation protocol the paper inherits from its backbones (PAPER §4.1): the
question, the options listed one per line with letters, and the instruction
"Answer with the option's letter from the given choices directly." Decoding is greedy; the reply
is mapped back to a letter by :func:`extract_letter`, which copes with the usual ways a model
wraps its answer ("(B)", "Answer: C", "The best answer is D.", "**A. a red car**", ...).
"""
from __future__ import annotations

import re
import string
from typing import Optional, Sequence

LETTERS = string.ascii_uppercase
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."

# One template per backbone family.  "llava": LLaVA-OneVision / LLaVA-Video (lmms-eval's prompt for
# them: question, "A. ..." lines, instruction).  "qwen": Qwen2.5-VL (VLMEvalKit-style: a lead-in
# sentence, "Question:", "Options:" block, same instruction).
PROMPT_STYLES = ("llava", "qwen")
_QWEN_LEAD = "Select the best answer to the following multiple-choice question based on the video."

# A label written in front of an option in the source annotation: "A. foo", "(B) foo", "C) foo", "D: foo".
_LABEL_RE = re.compile(r"^\s*\(?([A-Za-z])\s*[\.\):]\s*")


def strip_option_label(option: str, index: int) -> str:
    """'A. text' -> 'text' when the label is the letter expected at ``index``; otherwise unchanged."""
    if not isinstance(option, str):
        raise TypeError(f"option {index} must be a string, got {type(option).__name__}")
    m = _LABEL_RE.match(option)
    if m and m.group(1).upper() == LETTERS[index] and option[m.end():].strip():
        return option[m.end():].strip()
    return option.strip()


def format_options(options: Sequence[str]) -> str:
    """'A. first\\nB. second\\n...' (labels are added here, never taken from the annotation)."""
    check_options(options)
    return "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options))


def check_options(options) -> None:
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise TypeError(f"options must be a list of strings, got {type(options).__name__}")
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"options must hold 2 to {len(LETTERS)} choices, got {len(options)}")
    for i, o in enumerate(options):
        if not isinstance(o, str) or not o.strip():
            raise ValueError(f"option {LETTERS[i]} must be a non-empty string, got {o!r}")


def build_prompt(question: str, options: Sequence[str], style: str = "llava") -> str:
    """The text the model sees after the video for one multiple-choice question."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"style must be one of {PROMPT_STYLES}, got {style!r}")
    opts = format_options(options)
    q = question.strip()
    if style == "llava":
        return f"{q}\n{opts}\n{ANSWER_INSTRUCTION}"
    return f"{_QWEN_LEAD}\nQuestion: {q}\nOptions:\n{opts}\n{ANSWER_INSTRUCTION}"


def prompt_style_for(model_type: Optional[str]) -> str:
    """Pick the prompt style from a transformers ``model_type`` (or a model path/name)."""
    name = (model_type or "").lower()
    return "qwen" if "qwen" in name else "llava"


# ---------------------------------------------------------------------------------------------
# Letter extraction
# ---------------------------------------------------------------------------------------------

_MARKUP_RE = re.compile(r"[*_`#]+|</?\s*(?:answer|ans|output|final)\s*>", re.IGNORECASE)
_THINK_RE = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
# "answer is B", "Answer: (c)", "best option: D", "correct choice is option A", "answer - B"
_KEYWORD_RE = re.compile(
    r"(?:answer|option|choice)s?(?:\s+to\s+(?:the|this)\s+question)?\s*"
    r"(?:would\s+be|should\s+be|is|:|=|-)\s*(?:option|choice|letter)?\s*[:\-]?\s*"
    r"[\(\[\{\"']?\s*([A-Za-z])\s*[\)\]\}\"']?(?![A-Za-z0-9'])",
    re.IGNORECASE,
)
# "option B", "choice (C)" without a verb
_OPTION_WORD_RE = re.compile(r"\b(?:option|choice)\s*[\(\[]?([A-Z])[\)\]]?(?![A-Za-z0-9'])", re.IGNORECASE)
_LEADING_RE = re.compile(r"^[\s\"'\[\{\(]*([A-Za-z])\s*(?:[\)\]\}\.:,;]|$|\s*-\s|\n)")
_BRACKETED_RE = re.compile(r"[\(\[\{]\s*([A-Z])\s*[\)\]\}]")
_STANDALONE_RE = re.compile(r"(?<![A-Za-z0-9'’\-])([A-Z])(?![A-Za-z0-9'’\-])")
_PREFIXES_RE = re.compile(
    r"^\s*(?:the\s+)?(?:best|correct|right|final)?\s*(?:answer|option|choice)\s*(?:is|:)?\s*", re.IGNORECASE
)


def _valid(letter: str, n_options: int) -> Optional[str]:
    up = letter.upper()
    return up if up in LETTERS[:n_options] else None


def _is_article(text: str, pos: int) -> bool:
    """The letter at ``pos`` is the English article 'a'/'A' ('A man ...') or the pronoun 'I'."""
    ch = text[pos]
    rest = text[pos + 1:]
    if ch in "aA" and re.match(r" [a-z]", rest):
        return True
    if ch == "I" and re.match(r" (?:am|think|believe|would|will|can|cannot|can't|guess|see|'m)\b", rest):
        return True
    return False


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def extract_letter(text: str, options: Sequence[str] | int) -> Optional[str]:
    """The option letter a free-form model reply designates, or None if it names none.

    ``options`` is the list of option texts (used to match replies that quote an option's text
    instead of its letter) or just the number of options.  Only letters of existing options are
    returned.  Rules, first hit wins: a reply that is a bare letter; an explicit "answer/option is X";
    a leading label ("B.", "(C)", "D) ..."); a bracketed letter; a lone capital letter that is not
    the article "A" / pronoun "I"; finally the one option whose text the reply contains.
    """
    if isinstance(options, int):
        if options < 1 or options > len(LETTERS):
            raise ValueError(f"options must be 1..{len(LETTERS)} when given as a count, got {options}")
        n, texts = options, []
    else:
        n, texts = len(options), list(options)
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    s = _THINK_RE.sub(" ", text)
    s = _MARKUP_RE.sub(" ", s).strip()
    if not s:
        return None

    # 1. the whole reply is one letter, possibly wrapped: "B", "(b)", "C.", "'D'"
    bare = s.strip(" \t\n\"'.,:;!()[]{}")
    if len(bare) == 1 and bare.isalpha():
        return _valid(bare, n)

    # 2. explicit keyword: "The answer is C", "Answer: (b)", "best option: D", "option B"
    for rx in (_KEYWORD_RE, _OPTION_WORD_RE):
        for m in rx.finditer(s):
            if _is_article(s, m.start(1)):
                continue  # "the answer is a man in red": the article, not option A
            v = _valid(m.group(1), n)
            if v:
                return v

    # 3. leading label after dropping "The answer is"-like prefixes: "B. a dog", "(C) ...", "D) ..."
    head = _PREFIXES_RE.sub("", s, count=1)
    m = _LEADING_RE.match(head)
    if m and not _is_article(head, m.start(1)):
        letter = m.group(1)
        if letter.isupper() or re.match(r"^[\s\"'\[\{\(]*[a-z]\s*[\)\]\}\.:]", head):
            v = _valid(letter, n)
            if v:
                return v

    # 4. a bracketed capital letter anywhere: "... so (C)."
    for m in _BRACKETED_RE.finditer(s):
        v = _valid(m.group(1), n)
        if v:
            return v

    # 5. a lone capital letter that is a valid option (skipping the article "A" / pronoun "I")
    for m in _STANDALONE_RE.finditer(s):
        if _is_article(s, m.start(1)):
            continue
        v = _valid(m.group(1), n)
        if v:
            return v

    # 6. the reply quotes exactly one option's text
    if texts:
        body = _norm(s)
        hits = [i for i, t in enumerate(texts) if _norm(t) and _norm(t) == body]
        if not hits:
            hits = [i for i, t in enumerate(texts) if _norm(t) and re.search(rf"\b{re.escape(_norm(t))}\b", body)]
            # drop options that are contained in a longer matching option ("red" vs "red car")
            hits = [i for i in hits if not any(j != i and _norm(texts[i]) in _norm(texts[j]) for j in hits)]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    return None
