"""The VE and the flow networks: shapes that matter, invariants, and the wrong-sign check."""

from __future__ import annotations

import pytest
import torch

from crossflow_core.codecs import SourceBatch
from crossflow_core.model import FlowTransformer, build_flow_model
from crossflow_core.recipe import ModelConfig, VEConfig
from crossflow_core.ve import TextVariationalEncoder
from crossflow_core.ve_kinds import build_ve

VE_ARGS = dict(width=32, depth=1, heads=2, ffn=64, dropout=0.0, reduce_layers=1, reduction="encoder")
MODEL_ARGS = dict(width=32, depth=2, heads=2, patch_size=4)


def _ve(latent_shape, token_dim=24, num_tokens=6) -> TextVariationalEncoder:
    return TextVariationalEncoder(token_dim, num_tokens, latent_shape, **VE_ARGS)


def _dit(latent_shape, **kw) -> FlowTransformer:
    return FlowTransformer(latent_shape, **{**MODEL_ARGS, **kw})


def test_ve_output_has_the_latent_shape_and_reparameterises():
    torch.manual_seed(0)
    for latent in [(3, 32, 32), (4, 8, 8), (1, 16, 8)]:
        ve = _ve(latent).eval()
        src = SourceBatch(torch.randn(5, 6, 24), torch.ones(5, 6, dtype=torch.bool))
        noise = torch.randn(5, *latent)
        out = ve(src, noise=noise)
        assert out.z0.shape == out.mu.shape == out.logvar.shape == (5, *latent)
        assert out.cond is None  # CrossFlow: the velocity network gets no conditioning input
        assert ve.noise_shape(src) == latent
        torch.testing.assert_close(out.z0, out.mu + torch.exp(0.5 * out.logvar) * noise)
        assert torch.equal(ve(src, noise=torch.zeros_like(noise)).z0, out.mu)
        # no mask means every token is real
        torch.testing.assert_close(ve(SourceBatch(src.x), noise=noise).z0, out.z0)
        # noise drawn from a generator: seeded, so reproducible, and different from the mean
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a, b = ve(src, generator=g1).z0, ve(src, generator=g2).z0
        assert torch.equal(a, b) and not torch.allclose(a, out.mu)


def test_ve_ignores_padding_content():
    torch.manual_seed(0)
    ve = _ve((3, 8, 8)).eval()
    tokens = torch.randn(2, 6, 24)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    other = tokens.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 24) * 100
    zero = torch.zeros(2, 3, 8, 8)
    torch.testing.assert_close(
        ve(SourceBatch(tokens, mask), noise=zero).mu, ve(SourceBatch(other, mask), noise=zero).mu
    )


def test_ve_batched_equals_single():
    torch.manual_seed(0)
    ve = _ve((3, 8, 8)).eval()
    tokens, mask = torch.randn(4, 6, 24), torch.rand(4, 6) > 0.3
    mask[:, 0] = True
    zero = torch.zeros(4, 3, 8, 8)
    batched = ve(SourceBatch(tokens, mask), noise=zero).mu
    single = torch.cat(
        [ve(SourceBatch(tokens[i : i + 1], mask[i : i + 1]), noise=zero[:1]).mu for i in range(4)]
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_flow_starts_at_zero_and_batched_equals_single():
    torch.manual_seed(0)
    model = _dit((3, 16, 16)).eval()
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
        (
            ModelConfig(
                arch="unet",
                unet_channels=(8, 16),
                unet_attention=(False, True),
                unet_head_dim=8,
                unet_global_read=True,
            ),
            3e-3,
            150,
        ),
    ],
    ids=["dit", "unet", "unet_global_read"],
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
        plain = build_flow_model(ModelConfig(width=32, depth=depth, heads=2), (3, 16, 16))
        extra = build_flow_model(
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


def test_recipe_sections_map_to_the_network_arguments():
    ve_cfg = VEConfig(**VE_ARGS)
    ve = build_ve(ve_cfg, {"num_tokens": 6, "token_dim": 24}, (3, 8, 8))
    assert isinstance(ve, TextVariationalEncoder)
    assert ve.init_args == dict(token_dim=24, num_tokens=6, latent_shape=[3, 8, 8], **VE_ARGS)
    ref = _ve((3, 8, 8))
    assert {k: v.shape for k, v in ve.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    flow = build_flow_model(
        ModelConfig(size="tiny", heads=2, width=32, patch_size=4, long_skips=True), (3, 16, 16)
    )
    assert isinstance(flow, FlowTransformer)
    assert flow.init_args == dict(
        latent_shape=[3, 16, 16],
        width=32,
        depth=6,
        heads=2,
        patch_size=4,
        mlp_ratio=4.0,
        long_skips=True,
        final_conv=False,
        cond_channels=0,
    )


def test_ve_shape_errors():
    from crossflow_core.errors import CrossflowError

    with pytest.raises(CrossflowError, match="width 30 must be divisible by its 4 heads"):
        TextVariationalEncoder(24, 6, (3, 8, 8), width=30, heads=4)
    with pytest.raises(CrossflowError, match="halve the VE width 8 below 1"):
        TextVariationalEncoder(24, 6, (3, 8, 8), width=8, heads=2, reduce_layers=4)
    with pytest.raises(ValueError, match="expected 6 tokens per caption, got 5"):
        _ve((3, 8, 8))(SourceBatch(torch.randn(1, 5, 24)))


@pytest.mark.parametrize("arch", ["dit", "unet"])
def test_cond_channels_are_concatenated_input(arch):
    """The noise + concatenation baseline: `cond` [B, K, H, W] is extra input the output depends on."""
    torch.manual_seed(0)
    cfg = (
        ModelConfig(width=32, depth=1, heads=2, patch_size=4)
        if arch == "dit"
        else ModelConfig(arch="unet", unet_channels=(8, 16), unet_attention=(False, True), unet_head_dim=8)
    )
    model = build_flow_model(cfg, (3, 16, 16), cond_channels=3).eval()
    assert model.init_args["cond_channels"] == 3
    for p in model.parameters():  # break the zero init
        p.data.add_(0.05 * torch.randn_like(p))
    x, t, ind = torch.randn(2, 3, 16, 16), torch.rand(2), torch.ones(2, dtype=torch.long)
    cond = torch.randn(2, 3, 16, 16)
    out = model(x, t, ind, cond)
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, t, ind, torch.zeros_like(cond)))
    single = torch.cat([model(x[i : i + 1], t[i : i + 1], ind[i : i + 1], cond[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-4)
    plain = build_flow_model(cfg, (3, 16, 16))  # no cond channels: cond is ignored
    assert plain.init_args["cond_channels"] == 0
    torch.testing.assert_close(plain(x, t, ind), plain(x, t, ind, cond))
