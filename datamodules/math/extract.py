"""Final-answer extraction from a completion: the last `\\boxed{}` / `\\fbox{}` (balanced braces), the last
`#### N`, the last "the answer is X", or the last number. Part of datamodules/math/answers.py (the public API)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

#: The extraction strategies `extract_answer` knows, in the default order.
STRATEGIES = ("boxed", "hash", "answer_is", "last_number")

BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b\s*")
_MAX_BOXED = 64  # only the last this many \boxed occurrences are examined (keeps extraction linear)


def balanced_group(text: str, i: int) -> int | None:
    """Index just past the `}` closing the `{` at text[i], or None if unbalanced. Escaped braces don't count."""
    depth = 0
    j, n = i, len(text)
    while j < n:
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return None


def find_boxed(text: str) -> list[str]:
    """Contents of the top-level `\\boxed{...}` / `\\fbox{...}` groups in `text`, in order (balanced braces).

    `\\boxed 5` (no braces, one token) is accepted too. A box nested in another box is part of the outer one.
    """
    out: list[str] = []
    matches = list(BOXED_RE.finditer(text))[-_MAX_BOXED:]
    end_of_last = -1
    for m in matches:
        if m.start() < end_of_last:
            continue  # nested inside the previous box
        i = m.end()
        if i < len(text) and text[i] == "{":
            j = balanced_group(text, i)
            if j is None:
                continue
            out.append(text[i + 1:j - 1])
            end_of_last = j
        else:
            tok = re.match(r"[^\s$]+", text[i:i + 200])
            if tok and m.group(0).endswith((" ", "\t")):
                out.append(tok.group(0).rstrip(".,;"))
                end_of_last = i + tok.end()
    return out


_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:|=)\s*:?[ \t]*([^\n]*)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")


def _cut_sentence(s: str) -> str:
    """The answer at the start of a sentence fragment: `$...$` if it starts with math, else up to a full stop."""
    s = s.strip()
    if s.startswith("$$"):
        j = s.find("$$", 2)
        return s[2:j] if j > 0 else s[2:]
    if s.startswith("$"):
        j = s.find("$", 1)
        if j > 0:
            return s[1:j]
        # no closing `$`: a currency sign ("#### $1,000."), not math mode; keep it and cut at the full stop
    if s.startswith("\\("):
        j = s.find("\\)", 2)
        return s[2:j] if j > 0 else s[2:]
    if s.startswith("\\["):
        j = s.find("\\]", 2)
        return s[2:j] if j > 0 else s[2:]
    m = re.search(r"\.(?!\d)|;|\s(?:because|since|which|as)\s", s)
    return (s[:m.start()] if m else s).strip()


def _extract_one(text: str, strategy: str) -> str | None:
    if strategy == "boxed":
        boxes = [b for b in find_boxed(text) if b.strip()]
        return boxes[-1].strip() if boxes else None
    if strategy == "hash":
        hits = [h for h in _HASH_RE.findall(text) if h.strip()]
        return _cut_sentence(hits[-1]) or None if hits else None
    if strategy == "answer_is":
        hits = [h for h in _ANSWER_IS_RE.findall(text) if h.strip()]
        if not hits:
            return None
        last = hits[-1]
        boxes = find_boxed(last)
        return (boxes[-1].strip() if boxes else _cut_sentence(last)) or None
    if strategy == "last_number":
        nums = _NUMBER_RE.findall(text.replace("\u2212", "-"))
        return nums[-1] if nums else None
    raise ValueError(f"unknown answer extraction strategy {strategy!r}; choose from {list(STRATEGIES)}")


def check_strategies(strategies: Iterable[str]) -> tuple[str, ...]:
    """Validate a sequence of strategy names (a clear error naming the valid ones)."""
    if isinstance(strategies, str):
        strategies = (strategies,)
    out = tuple(strategies)
    bad = [s for s in out if s not in STRATEGIES]
    if bad or not out:
        raise ValueError(f"answer extraction strategies {list(out)}: unknown {bad}; choose one or more of "
                         f"{list(STRATEGIES)}")
    return out


def extract_answer(text: str, strategies: Sequence[str] = STRATEGIES) -> str | None:
    """The final answer in `text` (raw, not normalised), or None if no allowed strategy finds one.

    strategies: tried in order; the first that finds something wins.
        "boxed": the last top-level `\\boxed{...}` or `\\fbox{...}` (balanced braces; empty boxes ignored);
        "hash": the rest of the line after the last `####` (GSM8K style);
        "answer_is": what follows the last "answer is" / "answer:" (math in `$...$` or up to the full stop);
        "last_number": the last number in the text (`1,000`, `-2.5`, `3/4`).
    """
    if not isinstance(text, str):
        raise TypeError(f"completion should be str, got {type(text).__name__}")
    for strategy in check_strategies(strategies):
        ans = _extract_one(text, strategy)
        if ans is not None and ans.strip():
            return ans.strip()
    return None


__all__ = ["BOXED_RE", "STRATEGIES", "balanced_group", "check_strategies", "extract_answer", "find_boxed"]
