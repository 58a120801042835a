"""Prompt-expression parsing and latent arithmetic."""

from __future__ import annotations

import hashlib

import pytest
import torch

from crossflow_core.arith import (
    Expression,
    ExpressionError,
    Term,
    combine,
    parse_expression,
    standardize,
)
from crossflow_core.errors import CrossflowError


def terms(s: str) -> list[tuple[str, float]]:
    return [(t.text, t.weight) for t in parse_expression(s).terms]


class FakeEncoder:
    """Deterministic mu per text (seeded by a hash of the text); records calls."""

    def __init__(self, shape=(4, 2, 2)) -> None:
        self.shape = shape
        self.calls: list[list[str]] = []

    def mu(self, text: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(seed))

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.stack([self.mu(t) for t in texts])


def test_bare_terms():
    assert terms("dog + hat - cat") == [("dog", 1.0), ("hat", 1.0), ("cat", -1.0)]
    assert terms("red circle + blue") == [("red circle", 1.0), ("blue", 1.0)]
    assert terms("  a   dog  with\ta hat - hat ") == [("a dog with a hat", 1.0), ("hat", -1.0)]
    assert terms("dog") == [("dog", 1.0)]
    assert terms("dog - dog") == [("dog", 1.0), ("dog", -1.0)]  # nothing merged


def test_hyphens_and_apostrophes_inside_words():
    assert terms("a close-up photo - photo") == [("a close-up photo", 1.0), ("photo", -1.0)]
    assert terms("dog -cat") == [("dog", 1.0), ("cat", -1.0)]
    assert terms("dog- cat") == [("dog", 1.0), ("cat", -1.0)]
    assert terms("hat-cat") == [("hat-cat", 1.0)]  # joined by a hyphen: one term
    assert terms("the dog's hat + sun") == [("the dog's hat", 1.0), ("sun", 1.0)]


def test_quoted_terms():
    assert terms('"a red circle" - "red" + "blue"') == [
        ("a red circle", 1.0),
        ("red", -1.0),
        ("blue", 1.0),
    ]
    assert terms("'a - b' + 'c+d'") == [("a - b", 1.0), ("c+d", 1.0)]
    assert terms('"it\'s" + x') == [("it's", 1.0), ("x", 1.0)]
    assert terms('dog + "a  hat "') == [("dog", 1.0), ("a  hat ", 1.0)]  # quoted is verbatim


def test_weights_and_leading_sign():
    assert terms('0.5*"a dog" + "a hat"') == [("a dog", 0.5), ("a hat", 1.0)]
    assert terms("2 * hat") == [("hat", 2.0)]
    assert terms('-0.5*"x"') == [("x", -0.5)]
    assert terms("-dog + cat") == [("dog", -1.0), ("cat", 1.0)]
    assert terms("+dog") == [("dog", 1.0)]
    assert terms("dog - 0.25 * big cat + .5*x + 1e-1*y + 3.*z") == [
        ("dog", 1.0),
        ("big cat", -0.25),
        ("x", 0.5),
        ("y", 0.1),
        ("z", 3.0),
    ]
    assert terms("3 dogs + cat") == [("3 dogs", 1.0), ("cat", 1.0)]  # no '*': a prompt
    expr = parse_expression("a + 2*b")
    assert expr == Expression((Term("a", 1.0), Term("b", 2.0)))


@pytest.mark.parametrize(
    "expr,column",
    [
        ("", 1),
        ("   ", 1),
        ("dog + - cat", 7),
        ("dog +", 6),
        ("dog + ", 7),
        ("- ", 3),
        ("--dog", 2),
        ("* dog", 1),
        ("2 * * hat", 5),
        ("2 *", 4),
        ('"a dog', 1),
        ("dog + 'hat", 7),
        ('""', 1),
        ("dog + '  '", 7),
        ("1.2.3 * dog", 1),
        ("dog * 2", 1),
        ("abc*dog", 1),
        ("1e999*dog", 1),
        ("2*dog*3", 6),
        ('"a" b', 5),
        ('"a" * 2', 5),
        ('dog "hat"', 5),
    ],
)
def test_malformed_expressions_raise_with_column(expr, column):
    with pytest.raises(ExpressionError) as info:
        parse_expression(expr)
    err = info.value
    assert isinstance(err, CrossflowError)
    assert err.column == column
    msg = str(err)
    assert "\n" not in msg and f"at column {column}" in msg and expr.strip() in msg


def test_error_message_format():
    with pytest.raises(ExpressionError) as info:
        parse_expression("dog + - cat")
    assert str(info.value) == '"dog + - cat": expected a term at column 7'


def test_combine_cancels_exactly_and_encodes_once():
    enc = FakeEncoder()
    out = combine(parse_expression("A + B - B"), enc)
    assert torch.equal(out, enc.mu("A"))
    assert enc.calls == [["A", "B"]]
    out = combine(parse_expression("dog with hat - hat + sunglasses - dog with hat + dog"), enc)
    torch.testing.assert_close(out, enc.mu("dog") - enc.mu("hat") + enc.mu("sunglasses"))
    assert enc.calls[-1] == ["dog with hat", "hat", "sunglasses", "dog"]


def test_combine_weights():
    enc = FakeEncoder(shape=(3,))
    out = combine(parse_expression('0.5*"a dog" + 2*cat - 0.25*"a dog"'), enc)
    torch.testing.assert_close(out, 0.25 * enc.mu("a dog") + 2 * enc.mu("cat"))
    assert out.shape == (3,)


def test_combine_rejects_bad_encoder_output():
    with pytest.raises(CrossflowError):
        combine(parse_expression("a + b"), lambda texts: torch.zeros(1, 3))
    with pytest.raises(CrossflowError):
        combine(Expression(()), FakeEncoder())


def test_standardize():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64) * 5 + 2
    s = standardize(z)
    flat = s.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(flat.std(1), torch.ones(3, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    # per sample: standardising one sample alone gives the same result
    torch.testing.assert_close(standardize(z[1:2]), s[1:2])
    assert torch.isfinite(standardize(torch.ones(2, 5))).all()
    with pytest.raises(CrossflowError):
        standardize(torch.ones(5))
