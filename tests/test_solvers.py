"""ODE solvers against known solutions (t = 0 source text latent, t = 1 target image latent)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.solvers import SOLVERS, integrate, nfe


def decay(x, t):
    return -x


def growth(x, t):  # dx/dt = t x  ->  x(t) = x0 exp(t^2 / 2)
    return t.reshape(-1, *([1] * (x.dim() - 1))) * x


X0 = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)


def _err(fn, exact, method, steps):
    return (integrate(fn, X0, steps, method) - exact).abs().max().item()


@pytest.mark.parametrize(
    "fn,exact",
    [(decay, X0 * math.exp(-1.0)), (growth, X0 * math.exp(0.5))],
    ids=["decay", "growth"],
)
def test_convergence_orders(fn, exact):
    e_euler = [_err(fn, exact, "euler", n) for n in (20, 40, 80)]
    e_heun = [_err(fn, exact, "heun", n) for n in (20, 40, 80)]
    for a, b in pairwise(e_euler):
        assert 1.8 < a / b < 2.2
    for a, b in pairwise(e_heun):
        assert 3.6 < a / b < 4.4
    assert e_heun[-1] < 1e-4 < e_euler[-1]
    assert e_euler[-1] < 5e-2


def test_euler_single_step_value():
    out = integrate(decay, X0, 1, "euler")
    torch.testing.assert_close(out, torch.zeros_like(X0))  # x + 1 * (-x)
    out = integrate(decay, X0, 1, "heun")
    torch.testing.assert_close(out, 0.5 * X0)  # x + (-x + 0) / 2


def test_heun_exact_for_linear_in_time_field():
    # dx/dt = a + b t  ->  x(1) = x0 + a + b / 2; trapezoid is exact for linear integrands.
    a = torch.tensor([0.3, -1.0], dtype=torch.float64)
    b = torch.tensor([2.0, 0.5], dtype=torch.float64)
    x0 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def v(x, t):
        return a + b * t[:, None]

    for steps in (1, 3):
        torch.testing.assert_close(integrate(v, x0, steps, "heun"), x0 + a + b / 2)
    # Euler is not exact for it (left Riemann sum): error b / (2 n)
    torch.testing.assert_close(integrate(v, x0, 4, "euler"), x0 + a + b / 2 - b / 8)


def test_constant_field_exact_for_both():
    c = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    for method in SOLVERS:
        torch.testing.assert_close(integrate(lambda x, t: c.expand_as(x), x0, 9, method), x0 + c)


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_nfe_matches_counting_velocity(method, steps):
    calls = []

    def counting(x, t):
        calls.append((t.clone(), x.shape))
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        return -x

    integrate(counting, torch.ones(2, 3), steps, method)
    assert len(calls) == nfe(method, steps)
    times = [float(t[0]) for t, _ in calls]
    assert times[0] == 0.0
    assert all(0.0 <= s <= 1.0 for s in times)
    if method == "heun":
        assert times[-1] == 1.0


def test_batched_equals_per_sample():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.5
    x0 = torch.randn(5, 4, generator=g, dtype=torch.float64)

    def v(x, t):
        return torch.tanh(x @ w) * (1 + t[:, None])

    for method in SOLVERS:
        batched = integrate(v, x0, 6, method)
        single = torch.cat([integrate(v, x0[i : i + 1], 6, method) for i in range(5)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-14)


def test_backward_integration_inverts():
    x1 = integrate(growth, X0, 200, "heun")
    back = integrate(growth, x1, 200, "heun", t0=1.0, t1=0.0)
    torch.testing.assert_close(back, X0, rtol=1e-5, atol=1e-5)


def test_callback_sees_every_step():
    seen = []
    out = integrate(decay, X0, 4, "euler", callback=lambda i, t, x: seen.append((i, t, x.clone())))
    assert [i for i, _, _ in seen] == [1, 2, 3, 4]
    assert [t for _, t, _ in seen] == [0.25, 0.5, 0.75, 1.0]
    assert torch.equal(seen[-1][2], out)


def test_bad_arguments():
    for method, steps in [("rk4", 10), ("euler", 0), ("heun", -1), ("euler", 2.5), ("euler", True)]:
        with pytest.raises(CrossflowError):
            integrate(decay, X0, steps, method)  # type: ignore[arg-type]
        with pytest.raises(CrossflowError):
            nfe(method, steps)  # type: ignore[arg-type]
    with pytest.raises(CrossflowError):
        integrate(decay, X0, 4, "euler", t1=float("nan"))
    assert nfe("euler", 50) == 50 and nfe("heun", 25) == 50
