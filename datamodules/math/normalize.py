"""Normalisation of an extracted answer: LaTeX clean-up that is still LaTeX (also what math-verify is given).
Part of datamodules/math/answers.py (the public API)."""

from __future__ import annotations

import re
from functools import lru_cache

from datamodules.math.extract import BOXED_RE, balanced_group

_MAX_ANSWER_CHARS = 2000  # longer "answers" are compared as strings only (and never by the parser)

_UNICODE = {"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00f7": "\\div ", "\u03c0": "\\pi ",
            "\u221e": "\\infty ", "\u221a": "\\sqrt", "\u00b0": "^\\circ", "\u2264": "\\le ", "\u2265": "\\ge ",
            "\u2260": "\\ne ", "\u00b1": "\\pm ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ", "\u2009": " ",
            "\u00a0": " ", "\u202f": " "}
TEXT_CMDS = r"text|textbf|textit|textrm|textsf|texttt|textnormal|mathrm|mathbf|mathit|mathsf|mbox|emph|hbox"
_UNWRAP_TEXT_RE = re.compile(r"\\(?:" + TEXT_CMDS + r")\s*\{([^{}]*)\}")
_TRAILING_TEXT_RE = re.compile(r"^(?P<num>.*?\S)\s*\\(?:" + TEXT_CMDS + r")\s*\{(?P<unit>[^{}]*)\}"
                               r"\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*\.?$")
_UNITS = set("""
cm m km mm in inch inches ft foot feet yd yard yards mile miles mi meter meters metre metres centimeter centimeters
centimetre centimetres kilometer kilometers millimeter millimeters kg g gm gram grams kilogram kilograms lb lbs pound
pounds ounce ounces oz ton tons sec second seconds s min mins minute minutes hr hrs hour hours h day days week weeks
month months year years dollar dollars cent cents degree degrees deg unit units square sq cubic liter liters litre
litres ml l gallon gallons quart quarts pint pints cup cups mph kph percent point points page pages mile/hour
""".split())  # noqa: SIM905 - a word list reads best as words
MATH_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "pi", "oo", "inf", "infty",
               "infinity", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "max", "min", "gcd", "lcm", "mod",
               "det", "floor", "ceil", "abs", "and", "or"}


def strip_wrappers(s: str) -> str:
    """Remove math delimiters and whole-answer \\boxed{} wrappers."""
    for _ in range(8):
        t = s.strip()
        if t.startswith("$$") and t.endswith("$$") and len(t) >= 4:
            t = t[2:-2]
        elif t.startswith("$") and t.endswith("$") and len(t) >= 2:
            t = t[1:-1]
        elif (t.startswith("\\(") and t.endswith("\\)")) or (t.startswith("\\[") and t.endswith("\\]")):
            t = t[2:-2]
        else:
            m = BOXED_RE.match(t)
            if m and t[m.end():m.end() + 1] == "{" and balanced_group(t, m.end()) == len(t):
                t = t[m.end() + 1:-1]
        if t == s:
            break
        s = t
    return s.strip()


def _read_arg(s: str, i: int) -> tuple[str, int] | None:
    """One macro argument at s[i:]: a balanced {group} (contents returned) or a single token."""
    n = len(s)
    while i < n and s[i] == " ":
        i += 1
    if i >= n:
        return None
    if s[i] == "{":
        j = balanced_group(s, i)
        return (s[i + 1:j - 1], j) if j else None
    if s[i] == "\\":
        m = re.match(r"\\[A-Za-z]+|\\.", s[i:])
        return (m.group(0), i + m.end()) if m else None
    if s[i] in "}^_&":
        return None
    return s[i], i + 1


def _brace_macro_args(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`, `\\sqrt[3]8` -> `\\sqrt[3]{8}` (one pass, linear)."""
    out: list[str] = []
    i, n = 0, len(s)
    pat = re.compile(r"\\(frac|binom|sqrt)(?![A-Za-z])")
    while i < n:
        m = pat.search(s, i)
        if not m:
            out.append(s[i:])
            break
        out.append(s[i:m.start()])
        name, j = m.group(1), m.end()
        nargs = 1 if name == "sqrt" else 2
        head = "\\" + name
        if name == "sqrt":
            k = j
            while k < n and s[k] == " ":
                k += 1
            if k < n and s[k] == "[":
                close = s.find("]", k)
                if close > 0:
                    head += s[k:close + 1]
                    j = close + 1
        args = []
        for _ in range(nargs):
            a = _read_arg(s, j)
            if a is None:
                break
            args.append(_brace_macro_args(a[0]) if len(a[0]) > 1 else a[0])
            j = a[1]
        if len(args) < nargs:  # malformed: leave as is
            out.append(s[m.start():m.end()])
            i = m.end()
            continue
        out.append(head + "".join("{" + a + "}" for a in args))
        i = j
    return "".join(out)


@lru_cache(maxsize=65536)
def normalize_answer(answer: str) -> str:
    """A cleaned-up LaTeX form of an extracted answer (what math-verify and `answer_key` start from).

    Drops math delimiters, a whole-answer `\\boxed{}`, `\\left`/`\\right`, spacing commands (`\\,` `\\!` `\\;`
    `~`), thousands separators (`1,000`, `1{,}000`, `1,\\!000`, `1\\,000`), `\\$` and `$`, degrees (`^\\circ`),
    trailing units (`5\\text{ cm}`, `12 dollars`, `18 \\text{ inches}^2`) and `\\text{}` wrappers; writes
    `\\dfrac`/`\\tfrac`/`\\cfrac` as `\\frac`, brace-less macro arguments with braces (`\\frac12`), "and"/"or"
    between answers as commas, and percent as `\\%`. Case is kept.
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer should be str, got {type(answer).__name__}")
    s = answer[:_MAX_ANSWER_CHARS]
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = s.replace("\n", " ").replace("\r", " ").replace("\t", " ")
    s = strip_wrappers(s)
    s = re.sub(r"\\(?:displaystyle|textstyle|scriptstyle)(?![A-Za-z])", "", s)
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![A-Za-z])\s*\.?", "", s)
    # thousands separators written with LaTeX spacing or {,}
    s = re.sub(r"(?<=\d)\{,\}(?=\d{3})", ",", s)
    s = re.sub(r"(?<=\d),\s*\\[!,;: ]\s*(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"(?<=\d)\\[,!;: ](?=\d{3}(?!\d))", "", s)
    s = s.replace("\\\\", "\x01")  # protect \\ (matrix rows) from the spacing rules
    s = re.sub(r"\\(?:[,!;:> ]|quad|qquad)|~", " ", s)
    s = s.replace("\x01", " \\\\ ")
    s = re.sub(r"\\hspace\*?\s*\{[^{}]*\}", " ", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    # degrees
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree(?![A-Za-z])", "", s)
    # money
    s = s.replace("\\$", "").replace("$", "")
    # "and" / "or" between answers
    s = re.sub(r"\s*\\(?:" + TEXT_CMDS + r")\s*\{\s*(?:and|or)\s*\}\s*", ", ", s)
    s = re.sub(r",?\s+(?:and|or)\s+", ", ", s)
    s = re.sub(r"(?:,\s*){2,}", ", ", s).strip().lstrip(",").strip()
    # percent
    s = re.sub(r"\\(?:" + TEXT_CMDS + r")\s*\{\s*(?:percent|\\?%)\s*\}", r"\\%", s)
    s = re.sub(r"\s*\bpercent\b", r"\\%", s)
    s = re.sub(r"(?<!\\)%", r"\\%", s)
    # trailing units in \text{...} after something mathematical
    m = _TRAILING_TEXT_RE.match(s)
    if m and re.search(r"\d|\\pi|\\sqrt|\\frac", m.group("num")) and "\\text" not in m.group("num"):
        s = m.group("num")
    # remaining \text{...}
    for _ in range(4):
        t = _UNWRAP_TEXT_RE.sub(r"\1", s)
        if t == s:
            break
        s = t
    s = re.sub(r"\\operatorname\s*\{([A-Za-z]+)\}", r"\\\1", s)
    s = re.sub(r"\s+", " ", s).strip()
    # plain trailing unit words: "12 dollars", "5 cm^2", "3 apples"
    m = re.match(r"^(?P<num>[-+]?[\d.,/]*\d(?:\s*\\%)?)\s+"
                 r"(?P<words>[A-Za-z][A-Za-z .'/-]*?)(?:\s*\^\s*\{?[23]\}?)?\.?$", s)
    if m:
        words = m.group("words").lower().replace(".", " ").split()
        if words and all(w in _UNITS or (len(w) >= 3 and w not in MATH_WORDS) for w in words):
            s = m.group("num")
    # whole-answer thousands separators: 1,000 / -12,345.5 / 1 000 000
    core = re.fullmatch(r"([-+]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+)(\.\d+)?((?:\s*\\%)?)", s)
    if core:
        s = core.group(1) + core.group(2).replace(",", "").replace(" ", "") + (core.group(3) or "") + core.group(4)
    s = _brace_macro_args(s)
    s = s.strip().rstrip(".").strip()
    if s.endswith(",") or s.endswith(";"):
        s = s[:-1].strip()
    return s


__all__ = ["MATH_WORDS", "TEXT_CMDS", "normalize_answer", "strip_wrappers"]
