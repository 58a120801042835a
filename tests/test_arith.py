"""Prompt-expression parsing and latent arithmetic."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from crossflow_core.arith import (
    START_MODES,
    Expression,
    ExpressionError,
    Term,
    combine,
    expression_rows,
    interpolation_rows,
    parse_expression,
    rescale,
    standardize,
    start_latents,
    z0_statistics,
)
from crossflow_core.errors import CrossflowError
from crossflow_core.sample import seeded_noise


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


SHAPE = (4, 16, 16)


def moments(k: int, mean: float = 0.3, scale: float = 1.0, seed: int = 0):
    """mu, logvar [k, 4, 16, 16] of a VE whose z0 = mu + sigma * eps are NOT unit-std."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(k, *SHAPE, generator=g) * scale + mean
    logvar = torch.randn(k, *SHAPE, generator=g) * 0.2 + math.log(0.25 * scale**2)
    return mu, logvar


def stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean, population std over the elements, float64 [B]."""
    flat = z.flatten(1).double()
    return flat.mean(1), flat.std(1, correction=0)


def real_z0_stats(mu, logvar, n: int = 400):
    """Monte-Carlo per-sample mean / std of z0 = mu + sigma * eps, averaged over n draws: [K]."""
    g = torch.Generator().manual_seed(123)
    eps = torch.randn(n, *mu.shape, generator=g)
    z0 = mu + torch.exp(0.5 * logvar) * eps  # [n, K, ...]
    m, sd = stats(z0.flatten(0, 1))
    return m.view(n, -1).mean(0), sd.view(n, -1).pow(2).mean(0).sqrt()


def test_expression_and_interpolation_rows():
    texts, rows = expression_rows(parse_expression("dog + hat - dog + 0.5*cat"))
    assert texts == ["dog", "hat", "cat"]
    expected = [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0.5]]  # terms, then the total
    assert rows.tolist() == expected and rows.dtype == torch.float64
    assert interpolation_rows(3).tolist() == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    with pytest.raises(CrossflowError):
        interpolation_rows(1)


def test_z0_statistics_are_those_of_real_samples():
    mu, logvar = moments(3, mean=0.5, scale=3.0)
    mean, var = z0_statistics(mu, logvar)
    real_mean, real_std = real_z0_stats(mu, logvar)
    torch.testing.assert_close(mean, real_mean, rtol=0, atol=5e-3)
    torch.testing.assert_close(var.sqrt(), real_std, rtol=2e-3, atol=0)
    # no logvar: z0 = mu
    mean, var = z0_statistics(mu, None)
    torch.testing.assert_close(var.sqrt(), stats(mu)[1])


def test_mu_start_is_the_raw_combination():
    mu, logvar = moments(3)
    texts, rows = expression_rows(parse_expression("a + b - c"))
    z = start_latents(rows, mu, logvar, "mu")
    assert z.shape == (4, *SHAPE) and z.dtype == mu.dtype
    torch.testing.assert_close(z[:3], mu)
    torch.testing.assert_close(z[3], combine(parse_expression("a + b - c"), lambda t: mu))


def test_standardized_arithmetic_has_the_training_statistics():
    """a + b - c of independent means is ~sqrt(3) too long as raw mu; standardized is rescaled to
    the mean / std real z0 have for the prompts (not to 0 / 1: this VE's z0 have std ~3.4)."""
    mu, logvar = moments(3, mean=0.5, scale=3.0)
    _, rows = expression_rows(parse_expression("a + b - c"))
    raw = start_latents(rows, mu, logvar, "mu")[3]
    z = start_latents(rows, mu, logvar)  # the default: "standardized"
    real_mean, real_std = real_z0_stats(mu, logvar)
    assert stats(raw[None])[1] > 1.5 * real_std.max()  # the problem: far off the training norm
    mean, std = stats(z)
    torch.testing.assert_close(mean[3], real_mean.mean(), rtol=0, atol=1e-2)
    torch.testing.assert_close(std[3], real_std.pow(2).mean().sqrt(), rtol=3e-3, atol=0)
    torch.testing.assert_close(std[:3], real_std, rtol=3e-3, atol=0)  # one term: its own z0's
    assert std[3] > 3.0  # not the official demo's unit std, which this VE never produces
    # same direction as the raw combination: only the per-sample mean and scale change
    centred = raw.flatten() - raw.mean()
    cos = torch.nn.functional.cosine_similarity(centred, z[3].flatten() - z[3].mean(), dim=0)
    assert cos > 1 - 1e-5


def test_standardized_interpolation_does_not_shrink():
    mu, logvar = moments(2, scale=2.0, seed=1)
    rows = interpolation_rows(5)
    raw_std = stats(start_latents(rows, mu, logvar, "mu"))[1]
    _, var = z0_statistics(mu, logvar)
    assert raw_std[2] < 0.8 * raw_std[[0, 4]].min()  # the midpoint of independent means shrinks
    std = stats(start_latents(rows, mu, logvar, "standardized"))[1]
    alpha = rows[:, 1]
    torch.testing.assert_close(std, ((1 - alpha) * var[0] + alpha * var[1]).sqrt(), rtol=1e-5, atol=0)


def test_sample_start_is_a_seeded_ve_draw():
    mu, logvar = moments(2, mean=0.5, scale=3.0)
    eye = torch.eye(2, dtype=torch.float64)
    z = start_latents(eye, mu, logvar, "sample", seed=7)
    vez0 = mu + torch.exp(0.5 * logvar) * seeded_noise(SHAPE, [7])  # the pipeline's z0, seed 7
    torch.testing.assert_close(z, vez0, rtol=0, atol=1e-5)
    assert torch.equal(start_latents(eye, mu, logvar, "sample", seed=7), z)
    assert not torch.allclose(start_latents(eye, mu, logvar, "sample", seed=8), z)
    # a combination: statistics of the standardized start up to the draw's fluctuation
    _, rows = expression_rows(parse_expression("a - 0.5*b"))
    target = stats(start_latents(rows, mu, logvar, "standardized"))[1]
    drawn = torch.stack([stats(start_latents(rows, mu, logvar, "sample", seed=s))[1] for s in range(200)])
    torch.testing.assert_close(drawn.pow(2).mean(0).sqrt(), target, rtol=1e-2, atol=0)
    # a deterministic VE (no logvar): sample = standardized = the means' statistics
    one = start_latents(eye, mu, None, "sample", seed=7)
    torch.testing.assert_close(one, mu, rtol=0, atol=1e-5)
    torch.testing.assert_close(start_latents(eye, mu, None, "standardized"), one)


def test_start_errors_and_degenerate_inputs():
    mu, logvar = moments(2)
    rows = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    with pytest.raises(CrossflowError, match="unknown start mode 'noise'"):
        start_latents(rows, mu, logvar, "noise")
    with pytest.raises(CrossflowError):
        start_latents(torch.ones(1, 3, dtype=torch.float64), mu, logvar)
    with pytest.raises(CrossflowError):
        start_latents(rows, mu, logvar[:1])
    _, cancel = expression_rows(parse_expression("a - a"))
    for mode in ("standardized", "sample"):
        with pytest.raises(CrossflowError, match="start from mu"):
            start_latents(cancel[-1:], mu[:1], logvar[:1], mode)
    assert not start_latents(cancel[-1:], mu[:1], logvar[:1], "mu").any()
    assert set(START_MODES) == {"standardized", "sample", "mu"}
    # a constant sample rescales to the constant target mean (no division by zero)
    out = rescale(torch.full((2, 5), 3.0), torch.tensor([1.0, -2.0]), torch.tensor([2.0, 2.0]))
    assert out.tolist() == [[1.0] * 5, [-2.0] * 5]


def test_sample_start_scales_its_noise_by_the_temperature():
    """--start sample with sample.temperature T: the rescaled mix plus T * sigma * eps (linear in T;
    T = 0 leaves the rescaled mix of means)."""
    torch.manual_seed(0)
    mu, logvar = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4) * 0.3
    rows = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    at = {t: start_latents(rows, mu, logvar, "sample", seed=3, temperature=t) for t in (0.0, 0.3, 1.0)}
    torch.testing.assert_close(at[0.3] - at[0.0], 0.3 * (at[1.0] - at[0.0]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(at[1.0], at[0.0])
    # one prompt alone at T: its z0 = mu + T * sigma * eps_seed (the rescale is the identity)
    eps = seeded_noise((3, 4, 4), [3])[0]
    torch.testing.assert_close(at[0.3][0], mu[0] + 0.3 * (0.5 * logvar[0]).exp() * eps, atol=1e-5, rtol=1e-5)
