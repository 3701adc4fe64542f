"""Reading the judge's answer (``tasks.diffusion.judge``): the seven scores out of one reply, or a ``ValueError`` that
says what is wrong with it (asked again by the judge)."""

from __future__ import annotations

import json
import re
from typing import Any

CRITERIA = ("quality", "detail", "theme", "creativity", "style", "emotion", "tech")
NO_OBJECT = "no JSON object in the answer"
# characters of an answer at most, its <think> blocks taken out: a judge that rambles past this has not answered (cut
# short, an earlier draft would be taken for the last object)
MAX_ANSWER = 20_000


def parse(answer: Any) -> dict[str, int]:
    """The seven scores of one answer; ``ValueError`` says what is wrong with it. The answer may wrap the
    object in prose or a code fence, or follow a ``<think>`` block (a block never closed, a reply cut off inside it,
    is taken out to the end: its drafts are no answer), or hold it inside another object; of several
    objects the last one is the answer: one that corrects an earlier one is taken even when wrong (an invalid or
    cut-off last object is an error, asked again, not the earlier one's scores; so is one whose keys are single-quoted
    or bare, as ``{'quality': 3, ...}``); one longer than ``MAX_ANSWER`` is an error (cut short, an earlier draft
    would be its last object). ``answer`` may be a list of content parts, as some servers send it."""
    text = re.sub(r"<think>.*?(?:</think>|\Z)", "", answer_text(answer), flags=re.DOTALL)
    if len(text) > MAX_ANSWER:
        raise ValueError(f"the answer is longer than {MAX_ANSWER} characters: give the JSON object alone")
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)
    last, end, problem, broken, broken_end = None, -1, NO_OBJECT, None, -1
    for start in (m.start() for m in re.finditer(r"\{", text)):
        if start < end:  # inside the object decoded last
            continue
        try:
            last, end = decoder.raw_decode(text, start)
            if start >= broken_end:  # after the broken object, not nested in it (a cut-off one never ends)
                broken = None
        except RecursionError as exc:  # nested too deep: no verdict (its inner objects are not one either)
            raise ValueError(f"not a JSON object: {exc}") from None
        except ValueError as exc:  # not JSON from here, or a key given twice
            if problem == NO_OBJECT:
                problem = f"not a JSON object: {exc}"
            if start >= broken_end and _begun(text, start):  # an object begun, not a brace in prose
                broken, broken_end = f"its last object is not valid JSON: {exc}", _object_end(text, start)
    if broken is not None:
        raise ValueError(broken)
    if last is None:
        raise ValueError(problem)
    try:
        return _scores(last)
    except ValueError:
        inner = _holding_scores(last)
        if inner is None:
            raise
        return _scores(inner)


# what begins an object where no JSON decodes: a quoted key; or, in Python's or JavaScript's notation (``{'quality':
# 3, ...}``, ``{quality: 3, ...}``, a correction, no prose), two criteria given integer-like values, or braces that
# close around nothing but such pairs (``{'quality': 3}``, a correction of one criterion)
_QUOTED_KEY = re.compile(r'\s*"')
_PAIR = r"""["']?(""" + "|".join(CRITERIA) + r""")["']?\s*:\s*["']?[-+]?\d+(?:\.\d+)?["']?\s*"""
_CRITERION_VALUE = re.compile(r"[{,\s]" + _PAIR + "(?=[,}]|$)")  # a number alone: ``{quality: 1-10}`` is prose
_ONLY_PAIRS = re.compile(r"\{\s*" + _PAIR + r"(?:,\s*" + _PAIR + r")*,?\s*")  # up to the closing brace
_BRACE = re.compile(r"[{}]")


def _begun(text: str, start: int) -> bool:
    """Whether the brace at ``start`` (where no JSON decodes) begins an object rather than sits in prose: a quoted
    key follows it, or two criteria with integer-like values do before its close, or before the end of the answer
    where no brace follows (a cut-off correction), or its close follows criteria with such values and nothing else
    (``{'quality': 3}``: one criterion corrected, as the same in JSON is an invalid last object). A brace in prose
    that opens before the answer and never closes, or names criteria without scores (``{criterion: value}``,
    ``{tech: integer}``), is no object; a brace nested in it is asked itself."""
    if _QUOTED_KEY.match(text, start + 1):
        return True
    brace = _BRACE.search(text, start + 1)
    if brace is not None and brace.group() == "{":  # not closed before another opens: not an object of scores
        return False
    span = text[start : brace.start() if brace else len(text)]
    if brace is not None and _ONLY_PAIRS.fullmatch(span):  # closed around pairs alone: not prose, even one pair
        return True
    return len(set(_CRITERION_VALUE.findall(span))) >= 2


def _object_end(text: str, start: int) -> int:
    """Where the braces opened at ``start`` close (outside JSON strings), past the end where they never do."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            in_string, escaped = (c != '"' or escaped), (c == "\\" and not escaped)
        elif c == '"':
            in_string = True
        elif c in "{}":
            depth += 1 if c == "{" else -1
            if depth == 0:
                return i + 1
    return len(text) + 1


def _holding_scores(obj: Any, depth: int = 0) -> dict[str, Any] | None:
    """The last object nested in ``obj`` whose keys are the seven criteria (``{"scores": {...}, "reason": ...}``)."""
    if not isinstance(obj, dict) or depth > 8:
        return None
    found = None
    for value in obj.values():
        if isinstance(value, dict) and set(value) == set(CRITERIA):
            found = value
        elif (deeper := _holding_scores(value, depth + 1)) is not None:
            found = deeper
    return found


def _scores(obj: Any) -> dict[str, int]:
    if not isinstance(obj, dict) or set(obj) != set(CRITERIA):
        raise ValueError(
            f"keys must be exactly {', '.join(CRITERIA)}; got {sorted(obj) if isinstance(obj, dict) else obj!r}"
        )
    out = {}
    for key in CRITERIA:
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
            raise ValueError(f"{key} must be an integer 1-10, got {value!r}")
        out[key] = value
    return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key given twice in {keys}")
    return dict(pairs)


def answer_text(content: Any) -> str:
    """A reply's content as text: a string as it is, the text parts of a list of parts joined, else ''."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") if isinstance(p, dict) else getattr(p, "text", p) for p in content]
        return "".join(p for p in parts if isinstance(p, str))
    return ""
