"""CFG with the indicator, and the official null-pair construction."""

from __future__ import annotations

import pytest
import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.guidance import cfg_velocity, null_pairs
from crossflow_core.solvers import integrate, nfe


class ToyModel:
    """v(x, t, ind): a different affine field per indicator value; records every call."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
        self.b = torch.randn(2, 3, generator=g, dtype=torch.float64)
        self.calls: list[tuple[int, torch.Tensor]] = []

    def __call__(self, x, t, ind):
        assert ind.dtype == torch.long and ind.shape == t.shape == (x.shape[0],)
        self.calls.append((x.shape[0], ind.clone()))
        a, b = self.a[ind], self.b[ind]
        return torch.einsum("bij,bj->bi", a, x) + b * t[:, None]


def _x():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, generator=g, dtype=torch.float64), torch.rand(4, dtype=torch.float64)


def _direct(model, x, t, value):
    return model(x, t, torch.full((x.shape[0],), value, dtype=torch.long))


def test_scale_one_is_conditional_exactly_one_pass():
    m = ToyModel()
    x, t = _x()
    out = cfg_velocity(m, 1.0)(x, t)
    assert len(m.calls) == 1 and m.calls[0][0] == 4 and (m.calls[0][1] == 1).all()
    assert torch.equal(out, _direct(m, x, t, 1))


def test_scale_zero_is_unconditional():
    m = ToyModel()
    x, t = _x()
    torch.testing.assert_close(cfg_velocity(m, 0.0)(x, t), _direct(m, x, t, 0))


@pytest.mark.parametrize("scale", [-1.0, 0.5, 3.0, 7.0])
def test_general_scale_matches_two_separate_calls(scale):
    m = ToyModel()
    x, t = _x()
    out = cfg_velocity(m, scale)(x, t)
    assert len(m.calls) == 1
    size, ind = m.calls[0]
    assert size == 8 and ind.tolist() == [1] * 4 + [0] * 4
    v_c, v_u = _direct(m, x, t, 1), _direct(m, x, t, 0)
    torch.testing.assert_close(out, v_u + scale * (v_c - v_u))
    torch.testing.assert_close(out, scale * v_c + (1 - scale) * v_u)
    assert not torch.allclose(v_c, v_u)


@pytest.mark.parametrize("scale,method", [(7.0, "euler"), (7.0, "heun"), (1.0, "heun")])
def test_one_model_call_per_evaluation(scale, method):
    m = ToyModel()
    x, _ = _x()
    integrate(cfg_velocity(m, scale), x, 5, method)
    assert len(m.calls) == nfe(method, 5)
    assert all(size == (4 if scale == 1.0 else 8) for size, _ in m.calls)


def test_bad_scale_and_bad_model_output():
    with pytest.raises(CrossflowError):
        cfg_velocity(ToyModel(), float("inf"))
    x, t = _x()
    with pytest.raises(CrossflowError):
        cfg_velocity(lambda x, t, i: x[: x.shape[0] // 2], 2.0)(x, t)


def _check_null_structure(ind, perm):
    b = ind.shape[0]
    assert ind.dtype == torch.long and perm.dtype == torch.long
    assert sorted(perm.tolist()) == list(range(b))  # a permutation
    null = (ind == 0).nonzero().flatten().tolist()
    for i in range(b):
        if ind[i] == 1:
            assert perm[i] == i
    if null:
        assert len(null) >= 2
        # perm restricted to the null subset stays in it, has no fixed point, and is one cycle
        assert set(perm[null].tolist()) == set(null)
        start, seen, j = null[0], set(), null[0]
        while True:
            assert j not in seen
            seen.add(j)
            j = int(perm[j])
            assert j != int(perm[j]) or len(null) == 1
            if j == start:
                break
        assert seen == set(null)
        # the k-th null sample takes the (k+1)-th target (official torch.cat((x[1:], x[:1])))
        assert perm[null].tolist() == null[1:] + null[:1]
    return null


def test_null_pairs_structure_many_seeds():
    sizes = []
    for seed in range(200):
        ind, perm = null_pairs(16, 0.3, torch.Generator().manual_seed(seed))
        sizes.append(len(_check_null_structure(ind, perm)))
    assert 1 not in sizes
    assert abs(sum(sizes) / (200 * 16) - 0.3) < 0.03


def test_null_pairs_edge_cases():
    ind, perm = null_pairs(8, 0.0, torch.Generator().manual_seed(0))
    assert (ind == 1).all() and torch.equal(perm, torch.arange(8))
    ind, perm = null_pairs(8, 1.0, torch.Generator().manual_seed(0))
    assert (ind == 0).all() and perm.tolist() == [1, 2, 3, 4, 5, 6, 7, 0]
    ind, perm = null_pairs(1, 1.0, None)  # a single selected sample is not made null
    assert ind.tolist() == [1] and perm.tolist() == [0]
    ind, perm = null_pairs(0, 0.5, None)
    assert ind.numel() == 0 and perm.numel() == 0
    # exactly one selected among many -> none null: find such a seed
    found = False
    for seed in range(500):
        g = torch.Generator().manual_seed(seed)
        chosen = torch.rand(6, generator=g) < 0.2
        if int(chosen.sum()) == 1:
            ind, perm = null_pairs(6, 0.2, torch.Generator().manual_seed(seed))
            assert (ind == 1).all() and torch.equal(perm, torch.arange(6))
            found = True
            break
    assert found
    for bad in (-0.1, 1.5):
        with pytest.raises(CrossflowError):
            null_pairs(4, bad, None)


def test_null_pairs_deterministic_and_applied():
    a = null_pairs(32, 0.5, torch.Generator().manual_seed(7))
    b = null_pairs(32, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ind, perm = a
    x1 = torch.arange(32.0)[:, None]
    swapped = x1[perm]
    null = ind == 0
    assert torch.equal(swapped[~null], x1[~null])
    assert (swapped[null] != x1[null]).all()
