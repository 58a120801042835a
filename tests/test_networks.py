"""The VE and the flow networks: shapes that matter, invariants, and the wrong-sign check."""

from __future__ import annotations

import pytest
import torch

from crossflow_core.model import FlowTransformer, build_flow_model
from crossflow_core.recipe import ModelConfig, VEConfig
from crossflow_core.ve import TextVariationalEncoder

VE = VEConfig(width=32, depth=1, heads=2, ffn=64, dropout=0.0, reduce_layers=1)
MODEL = ModelConfig(width=32, depth=2, heads=2, patch_size=4)


def test_ve_output_has_the_latent_shape_and_reparameterises():
    torch.manual_seed(0)
    for latent in [(3, 32, 32), (4, 8, 8), (1, 16, 8)]:
        ve = TextVariationalEncoder(VE, token_dim=24, num_tokens=6, latent_shape=latent).eval()
        tokens, mask = torch.randn(5, 6, 24), torch.ones(5, 6, dtype=torch.bool)
        noise = torch.randn(5, *latent)
        out = ve(tokens, mask, noise=noise)
        assert out.z0.shape == out.mu.shape == out.logvar.shape == (5, *latent)
        torch.testing.assert_close(out.z0, out.mu + torch.exp(0.5 * out.logvar) * noise)
        assert torch.equal(ve(tokens, mask, noise=torch.zeros_like(noise)).z0, out.mu)


def test_ve_ignores_padding_content():
    torch.manual_seed(0)
    ve = TextVariationalEncoder(VE, token_dim=24, num_tokens=6, latent_shape=(3, 8, 8)).eval()
    tokens = torch.randn(2, 6, 24)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    other = tokens.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 24) * 100
    zero = torch.zeros(2, 3, 8, 8)
    torch.testing.assert_close(ve(tokens, mask, noise=zero).mu, ve(other, mask, noise=zero).mu)


def test_ve_batched_equals_single():
    torch.manual_seed(0)
    ve = TextVariationalEncoder(VE, token_dim=24, num_tokens=6, latent_shape=(3, 8, 8)).eval()
    tokens, mask = torch.randn(4, 6, 24), torch.rand(4, 6) > 0.3
    mask[:, 0] = True
    zero = torch.zeros(4, 3, 8, 8)
    batched = ve(tokens, mask, noise=zero).mu
    single = torch.cat([ve(tokens[i : i + 1], mask[i : i + 1], noise=zero[:1]).mu for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_flow_starts_at_zero_and_batched_equals_single():
    torch.manual_seed(0)
    model = FlowTransformer(MODEL, (3, 16, 16)).eval()
    x, t = torch.randn(3, 3, 16, 16), torch.rand(3)
    ind = torch.tensor([1, 0, 1])
    assert torch.count_nonzero(model(x, t, ind)) == 0  # adaLN-Zero: the output layer starts at zero
    for p in model.parameters():  # break the zero init
        p.data.add_(0.05 * torch.randn_like(p))
    batched = model(x, t, ind)
    single = torch.cat([model(x[i : i + 1], t[i : i + 1], ind[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    # the indicator and the time change the output: the model can tell them apart
    assert not torch.allclose(
        model(x, t, torch.ones(3, dtype=torch.long)), model(x, t, torch.zeros(3, dtype=torch.long))
    )
    assert not torch.allclose(model(x, t, ind), model(x, 1 - t, ind))


@pytest.mark.parametrize(
    ("cfg", "lr", "steps"),
    [
        (ModelConfig(width=32, depth=1, heads=2, patch_size=4), 1e-2, 120),
        (
            ModelConfig(arch="unet", unet_channels=(8, 16), unet_attention=(False, True), unet_head_dim=8),
            3e-3,
            150,
        ),
    ],
    ids=["dit", "unet"],
)
def test_flow_learns_a_constant_velocity_field(cfg, lr, steps):
    """A short fit of v(x, t) = x1 - x0 for a fixed pair; the learnt ODE lands near x1."""
    torch.manual_seed(0)
    from crossflow_core.path import CrossFlowPath
    from crossflow_core.solvers import integrate

    model = build_flow_model(cfg, (1, 8, 8))
    x0, x1 = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    path = CrossFlowPath(1e-5)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ones = torch.ones(8, dtype=torch.long)
    for _ in range(steps):
        t = torch.rand(8)
        s = path.sample(x0.expand(8, -1, -1, -1), x1.expand(8, -1, -1, -1), t)
        loss = (model(s.xt, s.t, ones) - s.target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = integrate(lambda x, t: model(x, t, ones[:1]), x0, 10, "euler")
        start_err = (x0 - x1).pow(2).mean()
    assert (end - x1).pow(2).mean() < 0.05 * start_err


def test_long_skips_and_final_conv_start_as_the_plain_dit():
    """Both options are initialised as identities, so a fresh model equals the plain DiT."""
    torch.manual_seed(0)
    for depth in (4, 5):
        plain = FlowTransformer(ModelConfig(width=32, depth=depth, heads=2), (3, 16, 16))
        extra = FlowTransformer(
            ModelConfig(width=32, depth=depth, heads=2, long_skips=True, final_conv=True), (3, 16, 16)
        )
        assert len(extra.skips) == depth // 2
        for p in plain.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
        extra.load_state_dict({**extra.state_dict(), **plain.state_dict()})
        x, t, ind = torch.randn(2, 3, 16, 16), torch.rand(2), torch.ones(2, dtype=torch.long)
        torch.testing.assert_close(extra(x, t, ind), plain(x, t, ind), atol=1e-6, rtol=1e-5)
        with torch.no_grad():  # and the skip path is live: changing it changes the output
            extra.skips[0].weight.add_(0.1)
        assert not torch.allclose(extra(x, t, ind), plain(x, t, ind))
