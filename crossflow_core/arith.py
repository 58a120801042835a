"""Prompt expressions for latent arithmetic: "dog + hat - cat", weights, quoted terms.

Time convention: the latents combined here live at t = 0, the SOURCE of the flow (the text
latent z0 = mu + sigma * eps from the variational encoder); t = 1 is the TARGET (image latent).
No Gaussian noise source ever. The arithmetic itself combines the means mu (PAPER.md); the
flow, though, was trained only on z0 = mu + sigma * eps, so `start_latents` maps a combination
back to z0's per-sample statistics before the ODE starts (see START_MODES).

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


START_MODES: tuple[str, ...] = ("standardized", "sample", "mu")
"""Where arithmetic / interpolation starts the ODE, for a combination m = sum_k w_k mu_k:
- "standardized" (the commands' default, as the flow only ever saw z0): m rescaled per sample
  to the mean and std that the model's own z0 = mu_k + sigma_k * eps have (in expectation over
  eps) for the prompts, averaged with weights |w_k|. Deterministic. The official demo
  standardises to zero mean and unit std instead: the same for a VE whose z0 are unit-std,
  but only this stays in distribution for a VE whose z0 are not.
- "sample": m rescaled to the prompts' mu statistics, plus sigma * eps with eps seeded and
  sigma^2 = sum_k |w_k| sigma_k^2 / sum_k |w_k| (elementwise): a draw shaped like the VE's z0;
  one prompt of weight 1 gives its z0 for that seed (as `crossflow sample`, the official inference).
- "mu": m as it is (no rescaling; e.g. "a + b - c" is too long, an interpolation midpoint too short).
"""


def check_start(start: str) -> str:
    """`start` if it is one of START_MODES, else a one-line CrossflowError."""
    if start not in START_MODES:
        raise CrossflowError(f"unknown start mode {start!r}; expected one of: {', '.join(START_MODES)}")
    return start


def expression_rows(expr: Expression) -> tuple[list[str], Tensor]:
    """(texts: the K distinct texts, weights [T + 1, K] float64): one one-hot row per term in
    the order written (its text alone), then the expression's total weights."""
    if not expr.terms:
        raise CrossflowError("the expression has no terms; give at least one prompt")
    total = expr.weights_by_text()
    texts = list(total)
    rows = torch.zeros(len(expr.terms) + 1, len(texts), dtype=torch.float64)
    for i, term in enumerate(expr.terms):
        rows[i, texts.index(term.text)] = 1.0
    rows[-1] = torch.tensor(list(total.values()), dtype=torch.float64)
    return texts, rows


def interpolation_rows(frames: int) -> Tensor:
    """weights [frames, 2] float64: row i is (1 - a_i, a_i), a_i = i / (frames - 1) (ends included)."""
    if frames < 2:
        raise CrossflowError(f"an interpolation needs at least 2 frames, got {frames}")
    alpha = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)
    return torch.stack([1.0 - alpha, alpha], dim=1)


def z0_statistics(mu: Tensor, logvar: Tensor | None) -> tuple[Tensor, Tensor]:
    """(mean [K], var [K]) float64: the expected per-sample mean and (population) variance over
    the elements of z0 = mu + sigma * eps, eps ~ N(0, I), for mu, logvar [K, ...]; logvar None:
    z0 = mu. E var = var(mu) + mean(sigma^2) * (1 - 1/D), D elements per sample."""
    flat = mu.reshape(mu.shape[0], -1).double()
    mean, var = flat.mean(dim=1), flat.var(dim=1, correction=0)
    if logvar is not None:
        var = var + logvar.reshape(mu.shape[0], -1).double().exp().mean(dim=1) * (1 - 1 / flat.shape[1])
    return mean, var


def rescale(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """z [B, ...] with each sample's mean / population std over its elements set to mean [B] /
    std [B] (float64 maths, z's dtype out); a constant sample becomes the constant mean."""
    flat = z.reshape(z.shape[0], -1).double()
    centred = flat - flat.mean(dim=1, keepdim=True)
    have = centred.pow(2).mean(dim=1, keepdim=True).sqrt()
    constant = have <= 1e-12 * flat.abs().amax(dim=1, keepdim=True)
    scale = torch.where(constant, 0.0, std.double().reshape(-1, 1) / have.clamp_min(1e-300))
    out = centred * scale + mean.double().reshape(-1, 1).to(flat.device)
    return out.to(z.dtype).reshape(z.shape)


def start_latents(
    weights: Tensor,
    mu: Tensor,
    logvar: Tensor | None,
    start: str = "standardized",
    seed: int = 0,
    temperature: float = 1.0,
) -> Tensor:
    """ODE start latents [M, ...] for combinations weights [M, K] of prompts with VE moments
    mu, logvar [K, ...] (logvar None: a deterministic VE, sigma = 0); `start` one of START_MODES,
    `seed` seeds eps for "sample" (one eps shared by all M rows, as `seeded_noise`), scaled by
    `temperature` as `crossflow sample` scales it (sample.temperature)."""
    check_start(start)
    if weights.dim() != 2 or mu.dim() < 2 or weights.shape[1] != mu.shape[0]:
        raise CrossflowError(
            f"weights [M, K] must match mu [K, ...]: got {tuple(weights.shape)} and {tuple(mu.shape)}"
        )
    if logvar is not None and logvar.shape != mu.shape:
        raise CrossflowError(f"logvar {tuple(logvar.shape)} must have mu's shape {tuple(mu.shape)}")
    w = weights.to(device=mu.device, dtype=torch.float64)
    combined = w @ mu.reshape(mu.shape[0], -1).double()  # [M, D]
    if start != "mu":
        share = w.abs()
        if (share.sum(dim=1) == 0).any():
            raise CrossflowError(
                "the weights cancel (every prompt's total weight is 0): nothing to rescale; start from mu"
            )
        share = share / share.sum(dim=1, keepdim=True)
        mean, var = z0_statistics(mu, logvar if start == "standardized" else None)
        combined = rescale(combined, share @ mean, (share @ var).sqrt())
        if start == "sample" and logvar is not None:
            from crossflow_core.sample import seeded_noise

            sigma = (share @ logvar.reshape(mu.shape[0], -1).double().exp()).sqrt()  # [M, D]
            eps = seeded_noise(tuple(mu.shape[1:]), [seed]).to(mu.device).double().reshape(1, -1)
            combined = combined + float(temperature) * sigma * eps
    return combined.to(mu.dtype).reshape(w.shape[0], *mu.shape[1:])
