"""Maths of the CrossFlow path (t = 0 source text latent, t = 1 target image latent)."""

from __future__ import annotations

import math

import pytest
import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.path import CrossFlowPath, PathSample, sample_time
from crossflow_core.solvers import integrate


def _pair(b: int = 4, shape: tuple[int, ...] = (3, 2, 2), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, *shape, generator=g, dtype=torch.float64)
    x1 = torch.randn(b, *shape, generator=g, dtype=torch.float64)
    return x0, x1


def test_endpoints_exact():
    sigma = 1e-3
    path = CrossFlowPath(sigma)
    x0, x1 = _pair()
    b = x0.shape[0]
    s0 = path.sample(x0, x1, torch.zeros(b, dtype=torch.float64))
    s1 = path.sample(x0, x1, torch.ones(b, dtype=torch.float64))
    assert torch.equal(s0.xt, x0)
    torch.testing.assert_close(s1.xt, x1 + sigma * x0, rtol=0, atol=1e-15)
    assert isinstance(s0, PathSample)
    assert s0.x0 is x0 and s0.x1 is x1


def test_midpoint_and_per_sample_times():
    path = CrossFlowPath(0.0)
    x0, x1 = _pair(b=3)
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    xt = path.sample(x0, x1, t).xt
    for i in range(3):
        expected = (1 - t[i]) * x0[i] + t[i] * x1[i]
        torch.testing.assert_close(xt[i], expected)


def test_target_is_time_derivative_autograd_and_fd():
    path = CrossFlowPath(1e-2)
    x0, x1 = _pair()
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64, requires_grad=True)
    s = path.sample(x0, x1, t)
    # d xt / dt per sample: jacobian of sum over elements w.r.t. t is per-sample because t[i]
    # only affects row i; use a random projection to check the full tensor.
    w = torch.randn_like(s.xt)
    (grad_t,) = torch.autograd.grad((s.xt * w).sum(), t)
    expected = (s.target * w).flatten(1).sum(1)
    torch.testing.assert_close(grad_t, expected)
    h = 1e-6
    with torch.no_grad():
        fd = (path.sample(x0, x1, t + h).xt - path.sample(x0, x1, t - h).xt) / (2 * h)
    torch.testing.assert_close(fd, s.target, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(s.target, x1 - (1 - 1e-2) * x0)


def test_true_velocity_reaches_target_wrong_sign_does_not():
    path = CrossFlowPath(0.0)
    x0, x1 = _pair(b=2)
    v = path.sample(x0, x1, torch.zeros(2, dtype=torch.float64)).target

    def true_v(x, t):
        return v

    def wrong_v(x, t):
        return -v

    reached = integrate(true_v, x0, steps=7)
    torch.testing.assert_close(reached, x1)
    wrong = integrate(wrong_v, x0, steps=7)
    assert (wrong - x1).flatten(1).norm(dim=1).min() > 0.5 * (x0 - x1).flatten(1).norm(dim=1).min()
    torch.testing.assert_close(wrong, 2 * x0 - x1)


def test_path_validation():
    with pytest.raises(CrossflowError):
        CrossFlowPath(-1.0)
    with pytest.raises(CrossflowError):
        CrossFlowPath(1.0)
    path = CrossFlowPath()
    x0, x1 = _pair()
    with pytest.raises(CrossflowError):
        path.sample(x0, x1[:, :2], torch.zeros(4))
    with pytest.raises(CrossflowError):
        path.sample(x0, x1, torch.zeros(3))


def test_sample_time_logit_normal_moments():
    g = torch.Generator().manual_seed(0)
    t = sample_time(200_000, "logit_normal", g, "cpu")
    assert t.shape == (200_000,) and t.dtype == torch.float32
    assert (t > 0).all() and (t < 1).all()
    logit = torch.log(t.double()) - torch.log1p(-t.double())
    assert abs(logit.mean().item()) < 0.01
    assert abs(logit.std().item() - 1.0) < 0.01
    # shifted and scaled
    t2 = sample_time(200_000, "logit_normal", g, "cpu", mean=0.5, std=2.0)
    logit2 = torch.log(t2.double()) - torch.log1p(-t2.double())
    assert abs(logit2.mean().item() - 0.5) < 0.02
    assert abs(logit2.std().item() - 2.0) < 0.02


def test_sample_time_uniform():
    g = torch.Generator().manual_seed(1)
    t = sample_time(100_000, "uniform", g, "cpu")
    assert (t > 0).all() and (t < 1).all()
    assert abs(t.mean().item() - 0.5) < 0.01
    assert abs(t.var().item() - 1 / 12) < 0.005
    hist = torch.histc(t, bins=10, min=0, max=1) / t.numel()
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.01)


def test_sample_time_zero_is_the_regression_baseline():
    """kind "zero": every t is exactly 0, so the target is x1 - x0 at x0 itself (one Euler step)."""
    g = torch.Generator().manual_seed(1)
    t = sample_time(8, "zero", g, "cpu")
    assert t.shape == (8,) and torch.equal(t, torch.zeros(8))
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(1).get_state())  # draws nothing
    x0, x1 = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    s = CrossFlowPath(0.0).sample(x0, x1, t)
    torch.testing.assert_close(s.xt, x0)
    torch.testing.assert_close(s.target, x1 - x0)
    end = integrate(lambda x, tt: s.target, x0, 1, "euler")
    torch.testing.assert_close(end, x1)


def test_sample_time_determinism_and_errors():
    a = sample_time(16, "logit_normal", torch.Generator().manual_seed(5), "cpu")
    b = sample_time(16, "logit_normal", torch.Generator().manual_seed(5), "cpu")
    c = sample_time(16, "logit_normal", torch.Generator().manual_seed(6), "cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sample_time(0, "uniform", None, "cpu").shape == (0,)
    with pytest.raises(CrossflowError):
        sample_time(4, "normal", None, "cpu")  # type: ignore[arg-type]
    with pytest.raises(CrossflowError):
        sample_time(-1, "uniform", None, "cpu")
    with pytest.raises(CrossflowError):
        sample_time(4, "logit_normal", None, "cpu", std=0.0)
    assert math.isclose(float(sample_time(1, "logit_normal", None, "cpu", mean=100.0)), 1 - 2**-23)
