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
from typing import List, Optional, Sequence, Tuple

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


# Words that, right after a sentence-initial capital "A", show that "A" names the option
# ("A is correct", "A since ...", "A because ...") rather than being the article ("A man ...").
_LETTER_FOLLOWERS = frozenset(
    "is was seems seem appears appear looks look would should could must might may will "
    "since because as and or but so then fits fit matches match best describes describe "
    "correctly answers answer".split()
)
# A letter that is directly negated: "not A", "isn't (A)", "never option A", "A is wrong".
_NEG_BEFORE_RE = re.compile(
    r"(?:\bnot|n't|n’t|\bnever|\bno)\s*(?:(?:the\s+)?(?:option|choice|letter)\s*)?[\(\[\{\"']?\s*$",
    re.IGNORECASE,
)
_NEG_AFTER_RE = re.compile(
    r"^\s*[\)\]\}\"']?\s*(?:is|was|seems|appears|looks|would\s+be)?\s*"
    r"(?:wrong|incorrect|false|not\b|isn't|isn’t|can't|cannot|doesn't|does\s+not)",
    re.IGNORECASE,
)
# A letter that is explicitly affirmed: "it is C", "I choose B", "go with D", "C is correct".
_AFF_BEFORE_RE = re.compile(
    r"(?:\b(?:is|it's|it’s|choose|chose|pick|picked|select|selected|go\s+with|going\s+with|be)"
    r"|:)\s*(?:(?:option|choice|letter)\s*)?[\(\[\{\"']?\s*$",
    re.IGNORECASE,
)
_AFF_AFTER_RE = re.compile(
    r"^\s*[\)\]\}\"']?\s*(?:is|seems|appears)?\s*(?:the\s+)?(?:correct|right|best|true)\b",
    re.IGNORECASE,
)
_SENTENCE_START_RE = re.compile(r"(?:^|[\.!?:;\n])[\s\"'\(\[\{]*$")


def _is_article(text: str, pos: int) -> bool:
    """The letter at ``pos`` is the English article 'a'/'A' ('A man ...') or the pronoun 'I'.

    A lowercase 'a' before a lowercase word is always the article.  A capital 'A' before a
    lowercase word is the article only at the start of a sentence and when the next word does not
    show it names the option: "A man walks" (article) vs "A is correct", "A since ..." (option A);
    in the middle of a sentence ("The answer is A because ...", "Option A is ...") it is the letter.
    """
    ch = text[pos]
    rest = text[pos + 1:]
    if ch == "a" and re.match(r" [a-z]", rest):
        return True
    if ch == "A":
        m = re.match(r" ([a-z]+)", rest)
        if m and m.group(1) not in _LETTER_FOLLOWERS and _SENTENCE_START_RE.search(text[:pos]):
            return True
    if ch == "I" and re.match(r" (?:am|think|believe|would|will|can|cannot|can't|guess|see|'m)\b", rest):
        return True
    return False


def _negated(text: str, pos: int) -> bool:
    """The letter at ``pos`` is directly negated: "not A", "isn't A", "never A", "A is wrong"."""
    return bool(_NEG_BEFORE_RE.search(text[:pos]) or _NEG_AFTER_RE.match(text[pos + 1:]))


def _affirmed(text: str, pos: int) -> bool:
    return bool(_AFF_BEFORE_RE.search(text[:pos]) or _AFF_AFTER_RE.match(text[pos + 1:]))


def _pick(cands) -> Optional[str]:
    """One letter from ``[(letter, affirmed), ...]``: the only one named, else the only affirmed
    one; None when several different letters remain equally plausible."""
    letters = {c for c, _ in cands}
    if len(letters) == 1:
        return letters.pop()
    affirmed = {c for c, a in cands if a}
    if len(affirmed) == 1:
        return affirmed.pop()
    return None


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def extract_letter(text: str, options: Sequence[str] | int) -> Optional[str]:
    """The option letter a free-form model reply designates, or None if it names none.

    ``options`` is the list of option texts (used to match replies that quote an option's text
    instead of its letter) or just the number of options.  Only letters of existing options are
    returned.  Rules, first hit wins: a reply that is a bare letter; an explicit "answer/option is X";
    a leading label ("B.", "(C)", "D) ..."); a bracketed letter; a lone capital letter that is not
    the article "A" / pronoun "I"; finally the one option whose text the reply contains.  Directly
    negated letters ("not A", "isn't A", "A is wrong") are skipped; when several different lone
    letters remain, the affirmed one ("it is C") is returned, or None if none stands out ("A or B").
    """
    n, texts = _option_count(options)
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    s = _MARKUP_RE.sub(" ", _THINK_RE.sub(" ", text)).strip()
    if not s:
        return None
    # 1. the whole reply is one letter, possibly wrapped: "B", "(b)", "C.", "'D'"
    bare = s.strip(" \t\n\"'.,:;!()[]{}")
    if len(bare) == 1 and bare.isalpha():
        return _valid(bare, n)
    # 2.-4. an explicit keyword, a leading label, a bracketed letter: the first valid one
    for rule in (_keyword_letter, _leading_letter, _bracketed_letter):
        v = rule(s, n)
        if v:
            return v
    # 5. lone capital letters; 6. the text of exactly one option
    cands = _standalone_candidates(s, n)
    if cands:
        return _pick(cands)
    return _quoted_option(s, texts) if texts else None


def _option_count(options: Sequence[str] | int) -> Tuple[int, List[str]]:
    """(number of options, option texts) from ``extract_letter``'s ``options`` (texts empty for a count)."""
    if isinstance(options, int):
        if options < 1 or options > len(LETTERS):
            raise ValueError(f"options must be 1..{len(LETTERS)} when given as a count, got {options}")
        return options, []
    return len(options), list(options)


def _keyword_letter(s: str, n: int) -> Optional[str]:
    """Rule 2, an explicit keyword: "The answer is C", "Answer: (b)", "best option: D", "option B".

    Only a lowercase "a" before a word is the article here ("the answer is a man in red");
    "The answer is A because ..." / "Option A is correct" name option A.  A negated letter
    ("option A is wrong") is skipped.
    """
    for rx in (_KEYWORD_RE, _OPTION_WORD_RE):
        for m in rx.finditer(s):
            pos = m.start(1)
            if (s[pos] != "A" and _is_article(s, pos)) or _negated(s, pos):
                continue
            v = _valid(m.group(1), n)
            if v:
                return v
    return None


def _leading_letter(s: str, n: int) -> Optional[str]:
    """Rule 3, a leading label after dropping "The answer is"-like prefixes: "B. a dog", "(C) ...", "D) ..."."""
    head = _PREFIXES_RE.sub("", s, count=1)
    m = _LEADING_RE.match(head)
    if m and not _is_article(head, m.start(1)) and not _negated(head, m.start(1)):
        letter = m.group(1)
        if letter.isupper() or re.match(r"^[\s\"'\[\{\(]*[a-z]\s*[\)\]\}\.:]", head):
            return _valid(letter, n)
    return None


def _bracketed_letter(s: str, n: int) -> Optional[str]:
    """Rule 4, a bracketed capital letter anywhere: "... so (C)." (not a negated one: "not (A)")."""
    for m in _BRACKETED_RE.finditer(s):
        if _negated(s, m.start(1)):
            continue
        v = _valid(m.group(1), n)
        if v:
            return v
    return None


def _standalone_candidates(s: str, n: int) -> List[Tuple[str, bool]]:
    """Rule 5, lone capital letters that are valid options, as ``[(letter, affirmed), ...]``.

    The article "A" / pronoun "I" and negated letters ("The answer is not A, it is C") are skipped;
    :func:`_pick` then chooses among several different letters the one affirmed ("it is C",
    "C is correct"), or none when none stands out ("A or B").
    """
    cands = []
    for m in _STANDALONE_RE.finditer(s):
        pos = m.start(1)
        if _is_article(s, pos) or _negated(s, pos):
            continue
        v = _valid(m.group(1), n)
        if v:
            cands.append((v, _affirmed(s, pos)))
    return cands


def _quoted_option(s: str, texts: Sequence[str]) -> Optional[str]:
    """Rule 6, the reply quotes exactly one option's text (the whole reply, else a word-bounded part)."""
    body = _norm(s)
    hits = [i for i, t in enumerate(texts) if _norm(t) and _norm(t) == body]
    if not hits:
        hits = [i for i, t in enumerate(texts) if _norm(t) and re.search(rf"\b{re.escape(_norm(t))}\b", body)]
        # drop options that are contained in a longer matching option ("red" vs "red car")
        hits = [i for i in hits if not any(j != i and _norm(texts[i]) in _norm(texts[j]) for j in hits)]
    if len(hits) == 1:
        return LETTERS[hits[0]]
    return None
