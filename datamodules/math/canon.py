"""Canonical forms of parsed answers, the answer analysis (`analyse_answer`: kind, exact value, key) and the voting
key (`answer_key`: equal keys are equivalent answers). Pure Python, bounded time, never sympy. Part of
datamodules/math/answers.py (the public API)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from datamodules.math.normalize import MATH_WORDS, TEXT_CMDS, normalize_answer, strip_wrappers
from datamodules.math.parse import (
    MAX_BITS,
    Atom,
    Func,
    Parser,
    Percent,
    PlusMinus,
    Power,
    Product,
    Relation,
    Seq,
    Sum,
    Unparsable,
    bounded,
    tokenize,
)


def _num(text: str) -> Fraction:
    if len(text) > 400:
        raise Unparsable("number too long")
    return Fraction(text)


def _key(c) -> str:
    if isinstance(c, Fraction):
        return str(c.numerator) if c.denominator == 1 else f"{c.numerator}/{c.denominator}"
    if isinstance(c, Atom):
        return c.name
    if isinstance(c, Sum):
        parts = [_key(t) for t in c.terms]
        if c.const:
            parts.append(_key(c.const))
        s = "+".join(parts)
        return s.replace("+-", "-")
    if isinstance(c, Product):
        fs = "*".join(_wrap(f, 2) for f in c.factors)
        if c.coef == 1:
            return fs
        if c.coef == -1:
            return "-" + fs
        return f"{_key(c.coef)}*{fs}"
    if isinstance(c, Power):
        return f"{_wrap(c.base, 3)}^{_wrap(c.exp, 3)}"
    if isinstance(c, Func):
        return f"{c.name}({','.join(_key(a) for a in c.args)})"
    if isinstance(c, Seq):
        return c.open + ",".join(_key(a) for a in c.items) + c.close
    if isinstance(c, Relation):
        return f"{_key(c.lhs)}{c.op}{_key(c.rhs)}"
    if isinstance(c, Percent):
        return _key(c.value) + "%"
    if isinstance(c, PlusMinus):
        return "+-" + _wrap(c.value, 2)
    raise TypeError(type(c))


def _prec(c) -> int:
    if isinstance(c, Fraction):
        return 4 if c.denominator == 1 and c >= 0 else 1
    if isinstance(c, Sum):
        return 1
    if isinstance(c, Product):
        return 2 if c.coef in (1,) else 1
    if isinstance(c, Power):
        return 3
    if isinstance(c, (Relation, PlusMinus, Percent)):
        return 0
    return 4


def _wrap(c, prec: int) -> str:
    s = _key(c)
    return f"({s})" if _prec(c) < prec else s


def _sort(items: Iterable) -> tuple:
    return tuple(sorted(items, key=_key))


def _add(parts: list):
    const = Fraction(0)
    terms: list = []
    for c in parts:
        if isinstance(c, Fraction):
            const = bounded(const + c)
        elif isinstance(c, Sum):
            const = bounded(const + c.const)
            terms.extend(c.terms)
        elif isinstance(c, (Seq, Relation, Percent)):
            raise Unparsable("arithmetic on a tuple/relation")
        else:
            terms.append(c)
    # combine like terms: coefficient * same monomial
    combined: dict[str, list] = {}
    for t in terms:
        coef, mono = (t.coef, Product(Fraction(1), t.factors)) if isinstance(t, Product) else (Fraction(1), t)
        if isinstance(mono, Product) and len(mono.factors) == 1:
            mono = mono.factors[0]
        k = _key(mono)
        if k in combined:
            combined[k][0] += coef
        else:
            combined[k] = [coef, mono]
    terms = [_mul([coef, mono]) for coef, mono in combined.values() if coef != 0]
    terms = [t for t in terms if not (isinstance(t, Fraction) and t == 0)]
    if not terms:
        return const
    if const == 0 and len(terms) == 1:
        return terms[0]
    return Sum(const, _sort(terms))


def _mul(parts: list):
    coef = Fraction(1)
    factors: list = []
    for c in parts:
        if isinstance(c, Fraction):
            coef = bounded(coef * c)
        elif isinstance(c, Product):
            coef = bounded(coef * c.coef)
            factors.extend(c.factors)
        elif isinstance(c, (Seq, Relation, Percent, PlusMinus)):
            raise Unparsable("arithmetic on a tuple/relation")
        else:
            factors.append(c)
    if coef == 0:
        return Fraction(0)
    # merge equal bases: x*x -> x^2 (numeric exponents only)
    powers: list[list] = []  # [base key, base, exponent]; numeric exponents of equal bases are added
    for f in factors:
        base, exp = (f.base, f.exp) if isinstance(f, Power) else (f, Fraction(1))
        k = _key(base)
        for entry in powers:
            if entry[0] == k and isinstance(exp, Fraction) and isinstance(entry[2], Fraction):
                entry[2] += exp
                break
        else:
            powers.append([k, base, exp])
    factors = []
    for _, base, exp in powers:
        p = _pow(base, exp)
        if isinstance(p, Fraction):
            coef = bounded(coef * p)
        elif isinstance(p, Product):
            coef = bounded(coef * p.coef)
            factors.extend(p.factors)
        else:
            factors.append(p)
    if not factors:
        return coef
    if coef == 1 and len(factors) == 1:
        return factors[0]
    return Product(coef, _sort(factors))


def _sqrt_rational(x: Fraction):
    """sqrt of a non-negative rational as coef * sqrt(squarefree int) (partial factoring, bounded)."""
    if x < 0:  # sqrt(-4) = 2i
        return _mul([Atom("i"), _sqrt_rational(-x)])
    n = x.numerator * x.denominator
    q = x.denominator
    if n.bit_length() > 80:
        return Power(x, Fraction(1, 2))
    r = math.isqrt(n)
    if r * r == n:
        return Fraction(r, q)
    k = 1
    i = 2
    while i * i <= n and i < 3000:
        while n % (i * i) == 0:
            n //= i * i
            k *= i
        i += 1
    if n == 1:
        return Fraction(k, q)
    return _mul([Fraction(k, q), Func("sqrt", (Fraction(n),))])


def _pow(base, exp):
    if isinstance(exp, Fraction) and exp == 1:
        return base
    if isinstance(exp, Fraction) and exp == 0:
        return Fraction(1)
    if isinstance(base, Fraction) and isinstance(exp, Fraction):
        if exp.denominator == 1:
            e = exp.numerator
            if base == 0 and e < 0:
                raise Unparsable("division by zero")
            bits = max(abs(base.numerator).bit_length(), base.denominator.bit_length())
            if bits * abs(e) <= MAX_BITS:
                return base ** e
        elif exp.denominator == 2 and base >= 0 and abs(exp.numerator) <= 64:
            root = _sqrt_rational(base)
            return _pow(root, Fraction(exp.numerator)) if exp.numerator != 1 else root
    if isinstance(base, Func) and base.name == "sqrt" and isinstance(exp, Fraction) and exp.denominator == 1:
        inner = base.args[0]
        if isinstance(inner, Fraction) and exp.numerator % 2 == 0:
            return _pow(inner, Fraction(exp.numerator // 2))
    if (isinstance(base, Power) and isinstance(exp, Fraction) and isinstance(base.exp, Fraction)
            and exp.denominator == 1):
        return _pow(base.base, base.exp * exp)
    return Power(base, exp)


def _canon(node):
    kind = node[0]
    if kind == "num":
        return _num(node[1])
    if kind == "mixed":
        whole, a, b = (_num(x) for x in node[1:])
        if b == 0:
            raise Unparsable("division by zero")
        return whole + a / b
    if kind == "sym":
        return Atom(node[1])
    if kind == "neg":
        return _mul([Fraction(-1), _canon(node[1])])
    if kind == "add":
        if any(t[0] == "pm" for t in node[1]):
            raise Unparsable("+- inside a sum")
        return _add([_canon(t) for t in node[1]])
    if kind == "mul":
        return _mul([_canon(f) for f in node[1]])
    if kind == "inv":
        d = _canon(node[1])
        if isinstance(d, Fraction):
            if d == 0:
                raise Unparsable("division by zero")
            return 1 / d
        return _pow(d, Fraction(-1))
    if kind == "pow":
        return _pow(_canon(node[1]), _canon(node[2]))
    if kind == "paren":
        return _canon(node[1])
    if kind == "sqrt":
        arg = _canon(node[1])
        if node[2] is None:
            if isinstance(arg, Fraction):
                return _sqrt_rational(arg)
            return Func("sqrt", (arg,))
        idx = _canon(node[2])
        if isinstance(idx, Fraction) and idx.denominator == 1 and idx.numerator == 2:
            return _canon(("sqrt", node[1], None))
        if isinstance(arg, Fraction) and isinstance(idx, Fraction) and idx.denominator == 1 and 2 <= idx <= 64:
            n = int(idx)
            for part in (arg.numerator, arg.denominator):
                if abs(part).bit_length() > 256:
                    return Func("root", (arg, idx))
            sign = -1 if arg < 0 and n % 2 == 1 else 1
            if arg < 0 and n % 2 == 0:
                return Func("root", (arg, idx))
            num_r = round(abs(arg.numerator) ** (1.0 / n))
            den_r = round(arg.denominator ** (1.0 / n))
            for a in (num_r - 1, num_r, num_r + 1):
                for b in (den_r - 1, den_r, den_r + 1):
                    if a >= 0 and b > 0 and a ** n == abs(arg.numerator) and b ** n == arg.denominator:
                        return Fraction(sign * a, b)
        return Func("root", (arg, idx))
    if kind == "fact":
        x = _canon(node[1])
        if isinstance(x, Fraction) and x.denominator == 1 and 0 <= x <= 300:
            return Fraction(math.factorial(int(x)))
        return Func("factorial", (x,))
    if kind == "pct":
        return Percent(_canon(node[1]))
    if kind == "pm":
        return PlusMinus(_canon(node[1]))
    if kind == "func":
        name = node[1]
        args = tuple(_canon(a) for a in node[2])
        if name == "abs" and len(args) == 1 and isinstance(args[0], Fraction):
            return abs(args[0])
        if name == "binom" and all(isinstance(a, Fraction) and a.denominator == 1 and 0 <= a <= 2000 for a in args):
            return Fraction(math.comb(int(args[0]), int(args[1])))
        if name in ("floor", "ceiling") and isinstance(args[0], Fraction):
            return Fraction(math.floor(args[0]) if name == "floor" else math.ceil(args[0]))
        return Func(name, args)
    if kind == "sub":
        return Atom(_key(_canon(node[1])) + "_" + node[2])
    if kind == "prime":
        return Atom(_key(_canon(node[1])) + "'")
    if kind == "set":
        uniq = {_key(c): c for c in (_canon(i) for i in node[1])}
        return Seq("{", _sort(uniq.values()), "}") if uniq else Atom("emptyset")
    if kind == "seq":
        _, o, items, c = node
        return Seq(o, tuple(_canon(i) for i in items), c)
    if kind == "setop":
        _, op, parts = node
        cs = [_canon(p) for p in parts]
        if op == "setminus":
            return Func(op, tuple(cs))
        flat = []
        for c in cs:
            flat.extend(c.args if isinstance(c, Func) and c.name == op else [c])
        return Func(op, _sort(flat))
    if kind == "rel":
        _, op, lhs, rhs = node
        left, right = _canon(lhs), _canon(rhs)
        if op in (">", ">="):
            op, left, right = op.replace(">", "<"), right, left
        return Relation(op, left, right)
    if kind == "matrix":
        return Func("matrix", tuple(Seq("[", tuple(_canon(x) for x in row), "]") for row in node[1]))
    raise Unparsable(kind)


def _is_numeric(c) -> bool:
    """Made only of rationals and +-infinity (numbers, tuples, intervals, sets, matrices of numbers)."""
    if isinstance(c, Fraction):
        return True
    if isinstance(c, Atom):
        return c.name in ("oo", "emptyset")
    if isinstance(c, Product):
        return c.factors == (Atom("oo"),)
    if isinstance(c, Seq):
        return all(_is_numeric(i) for i in c.items)
    if isinstance(c, Func):
        return c.name in ("matrix", "cup", "cap") and all(_is_numeric(a) for a in c.args)
    return False


@dataclass(frozen=True)
class Analysis:
    """What `analyse_answer` learns about one answer.

    norm: the normalised LaTeX (`normalize_answer`); key: the voting key (`answer_key`);
    kind: "empty" | "text" (words, multiple-choice letters) | "number" (one exact rational) | "base" (`664_7`) |
        "numeric" (tuples/sets/intervals/matrices of rationals and infinities) | "expr" (anything symbolic) |
        "raw" (not understood by the parser: key is the normalised string without spaces);
    value: the rational for kind "number"; percent: the answer carried a % sign (value is the number shown);
    decimal: the answer is a decimal literal (e.g. 1.732), i.e. possibly an approximation.
    """

    norm: str
    key: str
    kind: str
    value: Fraction | None = None
    percent: bool = False
    decimal: bool = False


def _text_key(s: str) -> str | None:
    """The key of a text answer (words, multiple-choice letters), or None if `s` does not look like text."""
    t = s.strip().rstrip(".").strip()
    m = re.fullmatch(r"\(\s*([A-Za-z])\s*\)", t)
    if m:  # (C)
        return m.group(1).lower()
    parts = [x.strip() for x in t.split(",")]
    if len(parts) > 1 and all(re.fullmatch(r"\(?[A-Z]\)?", x) for x in parts):  # A, C, F
        return ",".join(sorted(x.strip("()").lower() for x in parts))
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 .,'?:\-]*", t):
        words = re.findall(r"[A-Za-z]+", t)
        if any(len(w) >= 3 and w.lower() not in MATH_WORDS for w in words) or \
                re.search(r"\b[ap]\.?\s?m\b", t.lower()):
            return " ".join(t.lower().split())
    return None


@lru_cache(maxsize=65536)
def analyse_answer(answer: str) -> Analysis:
    """Normalise and (if possible) parse one extracted answer. Pure Python, bounded time; never calls sympy."""
    raw = answer
    norm = normalize_answer(answer)
    if not norm:
        return Analysis(norm, "", "empty")
    was_text = bool(re.fullmatch(r"\s*\\(?:" + TEXT_CMDS + r")\s*\{[^{}]*\}\s*\.?\s*", strip_wrappers(raw)))
    tk = _text_key(norm)
    if tk is None and was_text and re.fullmatch(r"[A-Za-z][A-Za-z .,'?:\-]*", norm):
        tk = " ".join(norm.lower().split())  # \text{no}: a word, not the product n*o
    if tk is not None:
        return Analysis(norm, tk, "text")
    single = re.fullmatch(r"[A-Za-z]", norm)
    if single:  # a multiple-choice letter (upper case or written as text) or a variable / constant
        return Analysis(norm, norm.lower(), "text" if (was_text or norm.isupper()) else "expr")
    base = re.fullmatch(r"([0-9A-Za-z]+)_\{?\s*(\d{1,2})\s*\}?", norm)
    if base and 2 <= int(base.group(2)) <= 36:  # 664_7: digits in a base
        digits = base.group(1).upper().lstrip("0") or "0"
        return Analysis(norm, f"{digits}_{int(base.group(2))}", "base")
    if len(norm) > 300:
        return Analysis(norm, re.sub(r"\s+", "", norm), "raw")
    try:
        items = Parser(tokenize(norm)).parse_top()
        # "+-x" and "a +- b" as two answers
        expanded = []
        for it in items:
            if it[0] == "pm":
                expanded += [it[1], ("neg", it[1])]
            elif it[0] == "add" and sum(t[0] == "pm" for t in it[1]) == 1:
                plus = [t[1] if t[0] == "pm" else t for t in it[1]]
                minus = [("neg", t[1]) if t[0] == "pm" else t for t in it[1]]
                expanded += [("add", plus), ("add", minus)]
            else:
                expanded.append(it)
        canon = []
        for it in expanded:
            c = _canon(it)
            # "x = 2", "f(x) = ...", "y = 2x + 3": the right-hand side is the answer
            if isinstance(c, Relation) and c.op in ("=", "in") and isinstance(c.lhs, Atom):
                c = c.rhs
            canon.append(c)
    except (Unparsable, ZeroDivisionError, ValueError, OverflowError, RecursionError, IndexError, TypeError):
        return Analysis(norm, re.sub(r"\s+", "", norm), "raw")
    percent = False
    if len(canon) == 1 and isinstance(canon[0], Percent):
        canon = [canon[0].value]
        percent = True
    if len(canon) == 1:
        c = canon[0]
        key = _key(c)
    else:
        uniq = {_key(c): c for c in canon}
        canon = list(uniq.values())
        c = canon[0] if len(canon) == 1 else Seq("{", _sort(canon), "}")
        key = _key(c)
    decimal = bool(re.fullmatch(r"[-+]?\d*\.\d+(?:\s*\\%)?", norm))
    if isinstance(c, Fraction):
        return Analysis(norm, key, "number", c, percent, decimal)
    if _is_numeric(c):
        return Analysis(norm, key, "numeric", None, percent)
    return Analysis(norm, key, "expr", None, percent)


def answer_key(answer: str) -> str:
    """The canonical voting key of an extracted answer: equivalent answers give equal keys.

    Exact rationals print as `p` or `p/q` (`0.5`, `\\frac12`, `1/2` -> `1/2`; `1,000` -> `1000`); sums and
    products are flattened and sorted; square roots simplified (`\\sqrt{18}` -> `3*sqrt(2)`); bare lists and
    sets are sorted sets (`2, 1` -> `{1,2}`), tuples and intervals keep order and brackets; `x = 2` -> `2`;
    percent, units, `\\$`, degrees dropped (`50\\%` -> `50`); text answers are lower-cased words (`\\text{(C)}`
    -> `c`). Answers the parser does not understand fall back to the normalised string without spaces.
    Keys are for voting: different keys need not mean different answers (`\\frac{1}{\\sqrt2}` vs
    `\\frac{\\sqrt2}{2}`); `is_equivalent` settles those.
    """
    return analyse_answer(answer).key


__all__ = ["Analysis", "analyse_answer", "answer_key"]
