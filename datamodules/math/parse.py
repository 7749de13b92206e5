"""A small, bounded parser of normalised answers (tokens -> tuples), and the node types of the canonical form that
datamodules/math/canon.py builds from them (exact rationals; sorted sums, products and sets). Pure Python, bounded
input: safe to run in the training process."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any


class Unparsable(Exception):
    pass


MAX_BITS = 4096  # exact rationals larger than this are left unevaluated


def bounded(x: Fraction) -> Fraction:
    if x.numerator.bit_length() > MAX_BITS or x.denominator.bit_length() > MAX_BITS:
        raise Unparsable("number too large")
    return x


@dataclass(frozen=True)
class Atom:  # an atom: symbol, constant, or an already-canonical opaque piece
    name: str


@dataclass(frozen=True)
class Sum:  # sum: const + sum(terms)
    const: Fraction
    terms: tuple


@dataclass(frozen=True)
class Product:  # product: coef * prod(factors)
    coef: Fraction
    factors: tuple


@dataclass(frozen=True)
class Power:  # power
    base: Any
    exp: Any


@dataclass(frozen=True)
class Func:  # function application
    name: str
    args: tuple


@dataclass(frozen=True)
class Seq:  # tuple / interval / set / matrix row
    open: str
    items: tuple
    close: str


@dataclass(frozen=True)
class Relation:  # relation
    op: str
    lhs: Any
    rhs: Any


@dataclass(frozen=True)
class Percent:
    value: Any


@dataclass(frozen=True)
class PlusMinus:  # +- x
    value: Any


_CMD_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "arcsin", "arccos", "arctan", "sinh",
              "cosh", "tanh", "det", "gcd", "lcm", "max", "min", "deg", "arg", "lg"}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
          "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi",
          "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega", "ell"}
_CMD_OPS = {"cdot": "*", "times": "*", "ast": "*", "div": "/", "pm": "pm", "mp": "pm", "le": "<=", "leq": "<=",
            "leqslant": "<=", "ge": ">=", "geq": ">=", "geqslant": ">=", "lt": "<", "gt": ">", "ne": "!=",
            "neq": "!=", "cup": "cup", "cap": "cap", "in": "in", "to": "to", "rightarrow": "to", "%": "%",
            "{": "set{", "}": "set}", "|": "|", "vert": "|", "mid": "|", "lfloor": "lfloor", "rfloor": "rfloor",
            "lceil": "lceil", "rceil": "rceil", "langle": "(", "rangle": ")", "approx": "approx", "sim": "sim",
            "equiv": "equiv", "colon": ":", "setminus": "setminus"}
_WORD_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "arcsin", "arccos", "arctan",
               "sinh", "cosh", "tanh", "abs"}

_TOKEN_RE = re.compile(r"""
    (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3}(?![A-Za-z\d]))?)
  | (?P<cmd>\\(?:[A-Za-z]+|[{}%|\\]))
  | (?P<op><=|>=|!=|\*\*|[-+*/^!=<>,()\[\]{}|_'&:;])
  | (?P<word>[A-Za-z]+)
  | (?P<ws>\s+)
  | (?P<other>.)
""", re.VERBOSE)


def tokenize(s: str) -> list[tuple[str, str]]:
    toks = []
    for m in _TOKEN_RE.finditer(s):
        kind = m.lastgroup
        val = m.group(0)
        if kind == "ws":
            continue
        if kind == "other":
            raise Unparsable(f"character {val!r}")
        if kind == "cmd":
            name = val[1:]
            if name == "\\":
                toks.append(("op", ";"))  # matrix row separator
            elif name in ("begin", "end"):
                toks.append(("cmd", name))
            elif name in _CMD_OPS:
                toks.append(("op", _CMD_OPS[name]))
            elif name in ("pi",):
                toks.append(("sym", "pi"))
            elif name in ("infty", "infin"):
                toks.append(("sym", "oo"))
            elif name in ("emptyset", "varnothing"):
                toks.append(("sym", "emptyset"))
            elif name in ("frac", "sqrt", "binom"):
                toks.append(("cmd", name))
            elif name in _CMD_FUNCS:
                toks.append(("func", name))
            elif name in _GREEK:
                toks.append(("sym", name))
            else:
                raise Unparsable(f"command \\{name}")
        elif kind == "word":
            low = val.lower()
            if low in ("pi",):
                toks.append(("sym", "pi"))
            elif low in ("oo", "inf", "infty", "infinity"):
                toks.append(("sym", "oo"))
            elif low in _WORD_FUNCS:
                toks.append(("func" if low != "sqrt" else "cmd", low))
            else:
                toks.extend(("sym", ch) for ch in val)
        else:
            toks.append((kind, val))
    return toks


class Parser:
    """Recursive descent over the token list; builds canonical forms directly (see _canon_* helpers)."""

    def __init__(self, toks: list[tuple[str, str]]):
        self.toks = toks
        self.i = 0
        self.depth = 0

    def peek(self, k: int = 0) -> tuple[str, str] | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        t = self.peek()
        if t is None:
            raise Unparsable("unexpected end")
        self.i += 1
        return t

    def expect(self, val: str) -> None:
        t = self.take()
        if t[1] != val:
            raise Unparsable(f"expected {val!r}, got {t[1]!r}")

    def at(self, *vals: str) -> bool:
        t = self.peek()
        return t is not None and t[0] == "op" and t[1] in vals

    def enter(self) -> None:
        self.depth += 1
        if self.depth > 60:
            raise Unparsable("nested too deeply")

    # top level: comma list of items (each may be a relation or union)
    def parse_top(self) -> list:
        items = [self.parse_item()]
        while self.at(",", ";"):
            self.take()
            if self.peek() is None:
                break
            items.append(self.parse_item())
        if self.peek() is not None:
            raise Unparsable(f"trailing {self.peek()[1]!r}")
        return items

    def parse_item(self):
        left = self.parse_union()
        while self.at("=", "<", ">", "<=", ">=", "!=", "in", "to", "approx", "equiv", ":"):
            op = self.take()[1]
            right = self.parse_union()
            left = ("rel", op, left, right)
        return left

    def parse_union(self):
        left = self.parse_sum()
        if self.at("cup", "cap", "setminus"):
            parts, op = [left], self.peek()[1]
            while self.at(op):
                self.take()
                parts.append(self.parse_sum())
            return ("setop", op, parts)
        return left

    def parse_sum(self):
        terms = [self.parse_unary()]
        while self.at("+", "-", "pm"):
            op = self.take()[1]
            t = self.parse_unary()
            terms.append(("neg", t) if op == "-" else ("pm", t) if op == "pm" else t)
        return ("add", terms) if len(terms) > 1 else terms[0]

    def parse_unary(self):
        if self.at("-"):
            self.take()
            return ("neg", self.parse_unary())
        if self.at("+"):
            self.take()
            return self.parse_unary()
        if self.at("pm"):
            self.take()
            return ("pm", self.parse_unary())
        return self.parse_term()

    def _starts_factor(self) -> bool:
        t = self.peek()
        if t is None:
            return False
        kind, val = t
        if kind in ("num", "sym", "func", "cmd"):
            return kind != "cmd" or val in ("frac", "sqrt", "binom")
        return kind == "op" and val in ("(", "{", "lfloor", "lceil")

    def parse_term(self):
        factors = [self.parse_power()]
        while True:
            if self.at("*", "/"):
                op = self.take()[1]
                f = self.parse_power()
                factors.append(("inv", f) if op == "/" else f)
            elif self._starts_factor():
                if self.peek()[0] == "num" and factors[-1][0] in ("num", "pct"):
                    raise Unparsable("two numbers side by side")
                factors.append(self.parse_power())
            else:
                break
        return ("mul", factors) if len(factors) > 1 else factors[0]

    def parse_power(self):
        base = self.parse_postfix()
        if self.at("^", "**"):
            self.take()
            exp = self.parse_power_exponent()
            return ("pow", base, exp)
        return base

    def parse_power_exponent(self):
        if self.at("-"):
            self.take()
            return ("neg", self.parse_power_exponent())
        if self.at("{"):
            self.take()
            self.enter()
            e = self.parse_sum()
            self.expect("}")
            self.depth -= 1
            return e
        t = self.peek()
        if t and t[0] == "num":  # x^23 in LaTeX is x^2 3, but users mean x^23 outside LaTeX; keep the number
            self.take()
            return ("num", t[1])
        return self.parse_postfix()

    def parse_postfix(self):
        x = self.parse_primary()
        while True:
            if self.at("!"):
                self.take()
                x = ("fact", x)
            elif self.at("%"):
                self.take()
                x = ("pct", x)
            elif self.at("_"):
                self.take()
                t = self.peek()
                if self.at("{"):
                    self.take()
                    sub = []
                    while not self.at("}"):
                        sub.append(self.take()[1])
                    self.take()
                    x = ("sub", x, "".join(sub))
                elif t is not None and t[0] in ("num", "sym"):
                    self.take()
                    x = ("sub", x, t[1])
                else:
                    raise Unparsable("bad subscript")
            elif self.at("'"):
                self.take()
                x = ("prime", x)
            else:
                return x

    def parse_group(self, close: str):
        self.enter()
        items = [self.parse_item()]
        while self.at(","):
            self.take()
            items.append(self.parse_item())
        self.expect(close)
        self.depth -= 1
        return items

    def parse_primary(self):
        t = self.take()
        kind, val = t
        if kind == "num":
            nxt = self.peek()
            # mixed number: 3\frac{1}{2}
            if nxt == ("cmd", "frac") and "." not in val:
                save = self.i
                self.take()
                a, b = self.parse_brace_arg(), self.parse_brace_arg()
                if a[0] == "num" and b[0] == "num" and "." not in a[1] + b[1]:
                    return ("mixed", val, a[1], b[1])
                self.i = save
            return ("num", val)
        if kind == "sym":
            return ("sym", val)
        if kind == "func":
            if self.at("^"):  # sin^2 x
                self.take()
                e = self.parse_power_exponent()
                arg = self.parse_power()
                return ("pow", ("func", val, [arg]), e)
            if self.at("("):
                self.take()
                args = self.parse_group(")")
                return ("func", val, args)
            return ("func", val, [self.parse_power()])
        if kind == "cmd":
            if val == "frac":
                return ("mul", [self.parse_brace_arg(), ("inv", self.parse_brace_arg())])
            if val == "binom":
                return ("func", "binom", [self.parse_brace_arg(), self.parse_brace_arg()])
            if val == "sqrt":
                index = None
                if self.at("["):
                    self.take()
                    self.enter()
                    index = self.parse_sum()
                    self.expect("]")
                    self.depth -= 1
                if self.at("("):  # plain-text sqrt(2)
                    self.take()
                    arg = self.parse_group(")")
                    if len(arg) != 1:
                        raise Unparsable("sqrt of a tuple")
                    arg = arg[0]
                else:
                    arg = self.parse_brace_arg()
                return ("sqrt", arg, index)
            if val == "begin":
                return self.parse_matrix()
            raise Unparsable(f"\\{val}")
        if kind == "op":
            if val == "(":
                items = self.parse_group_any(("(",))
                return items
            if val == "[":
                return self.parse_group_any(("[",))
            if val == "{":  # TeX grouping braces
                self.enter()
                e = self.parse_item()
                self.expect("}")
                self.depth -= 1
                return e
            if val == "set{":
                items = [] if self.at("set}") else self.parse_group("set}")
                if not items:
                    self.take()
                return ("set", items)
            if val == "|":
                self.enter()
                e = self.parse_sum()
                self.expect("|")
                self.depth -= 1
                return ("func", "abs", [e])
            if val in ("lfloor", "lceil"):
                self.enter()
                e = self.parse_sum()
                self.expect("rfloor" if val == "lfloor" else "rceil")
                self.depth -= 1
                return ("func", "floor" if val == "lfloor" else "ceiling", [e])
        raise Unparsable(f"unexpected {val!r}")

    def parse_group_any(self, opener: tuple[str, ...]):
        """After ( or [: a parenthesised expression, a tuple, or an interval closed by ) or ]."""
        self.enter()
        items = [self.parse_item()]
        while self.at(","):
            self.take()
            items.append(self.parse_item())
        t = self.take()
        if t[1] not in (")", "]"):
            raise Unparsable("unclosed bracket")
        self.depth -= 1
        if len(items) == 1 and opener[0] == "(" and t[1] == ")":
            return ("paren", items[0])
        return ("seq", opener[0], items, t[1])

    def parse_brace_arg(self):
        if self.at("{"):
            self.take()
            self.enter()
            e = self.parse_item()
            self.expect("}")
            self.depth -= 1
            return e
        t = self.take()
        if t[0] == "num":
            return ("num", t[1])
        if t[0] == "sym":
            return ("sym", t[1])
        raise Unparsable("bad macro argument")

    def parse_matrix(self):
        self.expect("{")
        env = []
        while not self.at("}"):
            env.append(self.take()[1])
        self.take()
        env_name = "".join(env)
        if env_name not in ("pmatrix", "bmatrix", "matrix", "array", "vmatrix", "smallmatrix"):
            raise Unparsable(f"environment {env_name}")
        if env_name == "array" and self.at("{"):
            self.take()
            while not self.at("}"):
                self.take()
            self.take()
        rows, row = [], []
        self.enter()
        while True:
            if self.peek() == ("cmd", "end"):
                self.take()
                self.expect("{")
                while not self.at("}"):
                    self.take()
                self.take()
                break
            row.append(self.parse_sum())
            if self.at("&"):
                self.take()
            elif self.at(";"):
                self.take()
                rows.append(row)
                row = []
            elif self.peek() != ("cmd", "end"):
                raise Unparsable("bad matrix")
        if row:
            rows.append(row)
        self.depth -= 1
        return ("matrix", rows)
