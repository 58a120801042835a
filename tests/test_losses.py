"""Losses against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from crossflow_core.errors import CrossflowError
from crossflow_core.losses import (
    flow_matching_loss,
    info_nce,
    kl_loss,
    kl_official_variant,
    kl_standard,
    text_reconstruction_loss,
)


def test_flow_matching_loss_is_mse():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    assert flow_matching_loss(pred, target).item() == pytest.approx((1 + 16) / 4)
    assert flow_matching_loss(target, target).item() == 0.0
    with pytest.raises(CrossflowError):
        flow_matching_loss(pred, target[:1])


def test_kl_zero_at_standard_normal():
    z = torch.zeros(3, 4, 2, 2)
    assert kl_standard(z, z).item() == 0.0
    assert kl_official_variant(z, z).item() == 0.0
    assert kl_loss(z, z, "standard").item() == 0.0


def test_kl_standard_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    expected = ref.flatten(1).sum(1).mean()  # documented: sum over non-batch dims, batch mean
    torch.testing.assert_close(kl_standard(mu, logvar), expected)
    # scalar Gaussian closed form
    m, lv = 0.7, -0.4
    closed = 0.5 * (math.exp(lv) + m * m - 1 - lv)
    got = kl_standard(torch.tensor([[m]], dtype=torch.float64), torch.tensor([[lv]], dtype=torch.float64))
    assert got.item() == pytest.approx(closed, rel=1e-12)


def test_kl_reduction_is_sum_per_sample_then_batch_mean():
    mu = torch.ones(2, 10)
    lv = torch.zeros(2, 10)
    assert kl_standard(mu, lv).item() == pytest.approx(10 * 0.5)
    # doubling the batch with copies does not change it; doubling the size doubles it
    assert kl_standard(torch.cat([mu, mu]), torch.cat([lv, lv])).item() == pytest.approx(5.0)
    assert kl_standard(torch.ones(2, 20), torch.zeros(2, 20)).item() == pytest.approx(10.0)


def test_kl_official_variant_closed_form_and_shape_of_penalty():
    mu = torch.tensor([[1.0, -2.0, 4.0]], dtype=torch.float64)
    lv = torch.tensor([[0.0, 0.5, -1.0]], dtype=torch.float64)
    per = -0.5 * (1 + lv - (0.3 * mu) ** 6 - lv.exp())
    torch.testing.assert_close(kl_official_variant(mu, lv), per.sum())
    # with logvar = 0 the variance part vanishes: only the mean penalty remains
    one, eight, zero = (torch.full((1, 1), v, dtype=torch.float64) for v in (1.0, 8.0, 0.0))
    small = kl_official_variant(one, zero).item()
    assert small == pytest.approx(0.5 * 0.3**6)
    assert small < kl_standard(one, zero).item()  # flatter than mu^2 / 2 near 0
    assert kl_official_variant(eight, zero).item() > kl_standard(eight, zero).item()  # steeper far
    # variance part equals the standard KL's variance part
    z = torch.zeros(1, 3, dtype=torch.float64)
    torch.testing.assert_close(kl_official_variant(z, lv), kl_standard(z, lv))


def test_kl_loss_dispatch_and_errors():
    g = torch.Generator().manual_seed(1)
    mu, lv = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    assert torch.equal(kl_loss(mu, lv, "standard"), kl_standard(mu, lv))
    assert torch.equal(kl_loss(mu, lv, "official"), kl_official_variant(mu, lv))
    with pytest.raises(CrossflowError):
        kl_loss(mu, lv, "mean")  # type: ignore[arg-type]
    with pytest.raises(CrossflowError):
        kl_standard(mu, lv[:, :2])


def test_info_nce_aligned_orthogonal_is_zero():
    a = torch.eye(6, 16, dtype=torch.float64) * 3.0  # orthogonal rows, any norm
    loss = info_nce(a, a.clone() * 0.2, logit_scale=100.0)
    assert loss.item() < 1e-12
    # a tensor scale works too, and is differentiable
    s = torch.tensor(100.0, requires_grad=True)
    info_nce(a, a, s).backward()
    assert s.grad is not None


def test_info_nce_random_is_log_b_and_symmetric():
    g = torch.Generator().manual_seed(0)
    b, d = 32, 4096
    a = torch.randn(b, d, generator=g, dtype=torch.float64)
    c = torch.randn(b, d, generator=g, dtype=torch.float64)
    loss = info_nce(a, c, 1.0)
    assert loss.item() == pytest.approx(math.log(b), abs=0.02)
    # symmetric in its two arguments
    c2 = torch.randn(b, 8, generator=g, dtype=torch.float64)
    a2 = c2 + 0.5 * torch.randn(b, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(info_nce(a2, c2, 10.0), info_nce(c2, a2, 10.0))


def test_info_nce_closed_form_two_by_two():
    # unit vectors with cos = 0 off-diagonal, scale s: each CE = log(1 + e^{-s})
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    s = 2.0
    assert info_nce(a, a, s).item() == pytest.approx(math.log1p(math.exp(-s)))
    # swapped pairs are penalised: the loss is log(1 + e^{s})
    assert info_nce(a, a.flip(0), s).item() == pytest.approx(math.log1p(math.exp(s)))
    with pytest.raises(CrossflowError):
        info_nce(a, a[:1], s)


def test_text_reconstruction_ignores_padding():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 5, 3, generator=g)
    pred = tokens.clone()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    pred[~mask] = float("nan")  # garbage where padded
    assert text_reconstruction_loss(pred, tokens, mask).item() == 0.0
    pred[0, 1, 2] = tokens[0, 1, 2] + 2.0  # one real element off by 2: 4 / (5 real tokens * 3)
    p = pred.clone().requires_grad_(True)
    loss = text_reconstruction_loss(p, tokens, mask)
    assert loss.item() == pytest.approx(4.0 / 15.0)
    loss.backward()
    assert torch.isfinite(p.grad).all() and (p.grad[~mask] == 0).all()
    empty = torch.zeros(2, 5, dtype=torch.bool)
    assert text_reconstruction_loss(tokens + 1, tokens, empty).item() == 0.0
    with pytest.raises(CrossflowError):
        text_reconstruction_loss(pred, tokens, mask[:, :3])
