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
    # the Euler last step (no correction onto t = 1) keeps the global order at 2
    for a, b in pairwise(e_heun):
        assert 3.6 < a / b < 4.4
    assert e_heun[-1] < 1e-3 < e_euler[-1]
    assert e_euler[-1] < 5e-2


@pytest.mark.parametrize(
    "fn,exact",
    [(decay, lambda t: X0 * math.exp(-t)), (growth, lambda t: X0 * math.exp(t * t / 2))],
    ids=["decay", "growth"],
)
def test_heun_intermediate_steps_are_full_heun_and_second_order(fn, exact):
    errors = []
    for n in (80, 160, 320):
        seen: dict[int, torch.Tensor] = {}
        integrate(fn, X0, n, "heun", callback=lambda i, t, x, seen=seen: seen.__setitem__(i, x.clone()))
        mid = seen[n // 2]  # t = 0.5: reached by corrected steps only
        torch.testing.assert_close(mid, integrate(fn, X0, n // 2, "heun", t1=0.5), rtol=0, atol=1e-15)
        errors.append((mid - exact(0.5)).abs().max().item())
        # the last step is Euler from t = 1 - h: x_N = x_{N-1} + h v(x_{N-1}, 1 - h)
        h = 1.0 / n
        prev = seen[n - 1]
        last = prev + h * fn(prev, torch.full((prev.shape[0],), 1.0 - h, dtype=prev.dtype))
        torch.testing.assert_close(seen[n], last, rtol=0, atol=1e-15)
    for a, b in pairwise(errors):
        assert 3.6 < a / b < 4.6  # growth's O(h^3) terms still show at t = 0.5


def test_heun_euler_last_step_error_constant():
    # dx/dt = -x: N - 1 Heun steps give relative error +h^2/6, the Euler step -h^2/2, so the
    # global relative error -> -h^2/3 (twice plain Heun's +h^2/6, sign flipped): still O(h^2).
    for n in (40, 80, 160):
        rel = (integrate(decay, X0, n, "heun") / (X0 * math.exp(-1.0)) - 1) * n * n
        torch.testing.assert_close(rel, torch.full_like(X0, -1 / 3), rtol=0, atol=0.04 * 40 / n)


def test_euler_single_step_value():
    out = integrate(decay, X0, 1, "euler")
    torch.testing.assert_close(out, torch.zeros_like(X0))  # x + 1 * (-x)
    # one Heun step to t = 1 is its Euler last step; to any other end it is the trapezoid
    torch.testing.assert_close(integrate(decay, X0, 1, "heun"), torch.zeros_like(X0))
    torch.testing.assert_close(integrate(decay, X0, 1, "heun", t1=0.5), X0 * (1 - 0.5 + 0.125))


def test_heun_on_linear_in_time_field():
    # dx/dt = a + b t  ->  x(1) = x0 + a + b / 2; trapezoid is exact for linear integrands,
    # the Euler last step onto t = 1 misses the last interval's b h^2 / 2.
    a = torch.tensor([0.3, -1.0], dtype=torch.float64)
    b = torch.tensor([2.0, 0.5], dtype=torch.float64)
    x0 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def v(x, t):
        return a + b * t[:, None]

    for steps in (1, 3):
        h = 1.0 / steps
        torch.testing.assert_close(integrate(v, x0, steps, "heun"), x0 + a + b / 2 - b * h * h / 2)
        # any other end: every step corrected, exact (forwards to 0.5, backwards from 1 to 0)
        torch.testing.assert_close(integrate(v, x0, steps, "heun", t1=0.5), x0 + 0.5 * a + b / 8)
        torch.testing.assert_close(integrate(v, x0, steps, "heun", t0=1.0, t1=0.0), x0 - a - b / 2)
    # Euler is not exact for it (left Riemann sum): error b / (2 n)
    torch.testing.assert_close(integrate(v, x0, 4, "euler"), x0 + a + b / 2 - b / 8)


def test_constant_field_exact_for_both():
    c = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    for method in SOLVERS:
        torch.testing.assert_close(integrate(lambda x, t: c.expand_as(x), x0, 9, method), x0 + c)


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (0.0, 0.5), (1.0, 0.0), (0.25, 0.75)])
def test_nfe_matches_counting_velocity(method, steps, t0, t1):
    calls = []

    def counting(x, t):
        calls.append((t.clone(), x.shape))
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        return -x

    integrate(counting, torch.ones(2, 3, dtype=torch.float64), steps, method, t0=t0, t1=t1)
    assert len(calls) == nfe(method, steps, t1=t1)
    times = [float(t[0]) for t, _ in calls]
    assert times[0] == t0
    assert all(min(t0, t1) <= s <= max(t0, t1) for s in times)
    grid = {t0 + (t1 - t0) * i / steps for i in range(steps + 1)}
    assert set(times) <= grid
    if method == "heun" and t1 != 1.0:
        assert times[-1] == t1  # corrected onto the end (t = 0 backwards)
    elif method == "heun":
        assert t1 not in times and set(times) == grid - {t1}  # the times Euler uses


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 3, 50])
def test_sampling_never_evaluates_at_t1(method, steps):
    def refuses_one(x, t):
        if (t == 1.0).any():
            raise AssertionError("velocity evaluated at t = 1, never seen in training")
        return torch.tanh(x) * (1 - t[:, None])

    x0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        assert torch.isfinite(integrate(refuses_one, x0.to(dtype), steps, method)).all()


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
    exact1 = X0 * math.exp(0.5)
    back = integrate(growth, exact1, 200, "heun", t0=1.0, t1=0.0)  # corrected on every step
    torch.testing.assert_close(back, X0, rtol=1e-5, atol=1e-5)
    # round trip: the forward Euler last step leaves ~ h^2 / 2 * |x''(1)| = 2.5e-5 * |x(1)|
    x1 = integrate(growth, X0, 200, "heun")
    torch.testing.assert_close(x1, exact1, rtol=4e-5, atol=0)
    roundtrip = integrate(growth, x1, 200, "heun", t0=1.0, t1=0.0)
    torch.testing.assert_close(roundtrip, X0, rtol=4e-5, atol=0)


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
    assert nfe("euler", 50) == 50 and nfe("heun", 25) == 49 and nfe("heun", 1) == 1
    assert nfe("heun", 25, t1=0.0) == 50 and nfe("euler", 25, t1=0.0) == 25
