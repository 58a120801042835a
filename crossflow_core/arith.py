"""Prompt expressions for latent arithmetic: "dog + hat - cat", weights, quoted terms.

Time convention: the latents combined here live at t = 0, the SOURCE of the flow (the text
latent z0, here its mean mu from the variational encoder); t = 1 is the TARGET (image latent).
No Gaussian noise source ever. Use mu, not a sample, for arithmetic (PAPER.md).

Grammar (whitespace is free between tokens):
    expression := [sign] term (('+' | '-') term)*
    term       := [number '*'] (quoted | bare)
    quoted     := "..." or '...'            (verbatim; no escapes; must not be blank)
    bare       := a run of words up to the next operator, e.g. `red circle` in `red circle + blue`

In a bare term `+`, `*` and `"` always end the term; `-` ends it too unless it joins two
letters or digits (so `close-up photo` and `t-shirt` stay one term: write `dog - cat`, or
quote). A `'` starts a quoted term only where a term starts; elsewhere it is an apostrophe.
A sign may lead the whole expression (`-0.5*"x" + y`); after an operator a term must follow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from crossflow_core.errors import CrossflowError

EncodeFn = Callable[[list[str]], Tensor]
"""encode(texts) -> mu [N, ...]: the variational encoder's means, one row per text."""

_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_QUOTES = "\"'"


class ExpressionError(CrossflowError):
    """A malformed prompt expression; the message names the expression and the column (1-based)."""

    def __init__(self, expression: str, column: int, reason: str) -> None:
        self.expression = expression
        self.column = column
        self.reason = reason
        shown = expression.replace("\n", " ").replace("\r", " ")
        quoted = f'"{shown}"' if '"' not in shown else f"'{shown}'"
        super().__init__(f"{quoted}: {reason} at column {column}")


@dataclass(frozen=True)
class Term:
    """One weighted prompt: contributes weight * mu(text)."""

    text: str
    weight: float


@dataclass(frozen=True)
class Expression:
    """Terms in the order written; repeated texts are kept as separate terms."""

    terms: tuple[Term, ...]

    def unique_texts(self) -> tuple[str, ...]:
        """The distinct texts, in order of first appearance."""
        return tuple(dict.fromkeys(term.text for term in self.terms))

    def weights_by_text(self) -> dict[str, float]:
        """Total weight per distinct text (insertion order = first appearance)."""
        total: dict[str, float] = {}
        for term in self.terms:
            total[term.text] = total.get(term.text, 0.0) + term.weight
        return total


class _Parser:
    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0

    def fail(self, reason: str, at: int | None = None) -> ExpressionError:
        return ExpressionError(self.s, (self.i if at is None else at) + 1, reason)

    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def peek(self) -> str:
        return self.s[self.i]

    def skip_ws(self) -> None:
        while not self.at_end() and self.peek().isspace():
            self.i += 1

    def parse(self) -> Expression:
        self.skip_ws()
        if self.at_end():
            raise self.fail("empty expression; expected a term", 0)
        sign = 1.0
        if self.peek() in "+-":
            sign = -1.0 if self.peek() == "-" else 1.0
            self.i += 1
        terms = [self.term(sign)]
        while True:
            self.skip_ws()
            if self.at_end():
                return Expression(tuple(terms))
            c = self.peek()
            if c in "+-":
                sign = -1.0 if c == "-" else 1.0
                self.i += 1
                terms.append(self.term(sign))
            elif c == "*":
                raise self.fail("unexpected '*' (one weight per term, written first: 2*dog)")
            else:
                raise self.fail("expected '+' or '-'")

    def term(self, sign: float) -> Term:
        self.skip_ws()
        if self.at_end() or self.peek() in "+-*":
            raise self.fail("expected a term")
        if self.peek() in _QUOTES:
            return Term(self.quoted(), sign)
        start = self.i
        text = self.bare()
        if self.at_end() or self.peek() != "*":
            return Term(text, sign)
        if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
            raise self.fail(f"bad number {text!r} before '*' (weights go first: 2*dog)", start)
        weight = float(text)
        self.i += 1  # the '*'
        self.skip_ws()
        if self.at_end() or self.peek() in "+-*":
            raise self.fail("expected a term after '*'")
        if self.peek() in _QUOTES:
            return Term(self.quoted(), sign * weight)
        return Term(self.bare(), sign * weight)

    def quoted(self) -> str:
        start = self.i
        end = self.s.find(self.s[start], start + 1)
        if end < 0:
            raise self.fail(f"unclosed quote {self.s[start]}", start)
        text = self.s[start + 1 : end]
        if not text.strip():
            raise self.fail("empty quoted term", start)
        self.i = end + 1
        return text

    def _ends_bare(self, j: int) -> bool:
        c = self.s[j]
        if c in '+*"':
            return True
        if c == "-":
            joins = 0 < j < len(self.s) - 1 and self.s[j - 1].isalnum() and self.s[j + 1].isalnum()
            return not joins
        return c == "'" and j > 0 and self.s[j - 1].isspace()

    def bare(self) -> str:
        """Read a bare run starting at a non-space character; whitespace inside is collapsed."""
        start = self.i
        while not self.at_end() and not self._ends_bare(self.i):
            self.i += 1
        text = " ".join(self.s[start : self.i].split())
        if not text:  # cannot happen when called at a term start, kept as a guard
            raise self.fail("expected a term", start)
        return text


def parse_expression(s: str) -> Expression:
    """Parse a prompt expression such as `dog + hat - cat`, `0.5*"a dog" + 'a hat'`, `-2 * x`.

    Raises ExpressionError (a CrossflowError) with the expression and a 1-based column.
    """
    if not isinstance(s, str):
        raise CrossflowError(f"a prompt expression must be a string, got {type(s).__name__}")
    return _Parser(s).parse()


def combine(expr: Expression, encode: EncodeFn) -> Tensor:
    """sum_i w_i * mu(text_i) -> Tensor of one mu's shape [...] (no batch dimension).

    `encode` is called ONCE with the distinct texts (first-appearance order) and must return
    mu [N, ...]. Weights of a repeated text are added first, so "A + B - B" gives mu(A) exactly.
    """
    if not expr.terms:
        raise CrossflowError("the expression has no terms; give at least one prompt")
    weights = expr.weights_by_text()
    texts = list(weights)
    mu = encode(texts)
    if not isinstance(mu, Tensor) or mu.dim() < 1 or mu.shape[0] != len(texts):
        got = tuple(mu.shape) if isinstance(mu, Tensor) else type(mu).__name__
        raise CrossflowError(f"encode must return one mu per text ([{len(texts)}, ...]), got {got}")
    out = torch.zeros_like(mu[0])
    for row, weight in zip(mu, weights.values(), strict=True):
        out = out + weight * row
    return out


def standardize(z: Tensor, eps: float = 1e-6) -> Tensor:
    """Per sample zero mean and unit std for z [B, ...] (as the official arithmetic demo does).

    Uses torch's default (unbiased) std over all non-batch elements; eps guards a constant z.
    """
    if z.dim() < 2:
        raise CrossflowError(f"standardize expects [B, ...] with a batch dimension, got {tuple(z.shape)}")
    flat = z.reshape(z.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True)
    return ((flat - mean) / (std + eps)).reshape(z.shape)
