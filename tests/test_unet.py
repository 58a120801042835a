"""The convolutional velocity network (arch "unet"): invariants and recipe errors (its known-solution
fit is in test_networks.py, shared with the DiT)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.model import FlowTransformer, build_flow_model
from crossflow_core.recipe import ModelConfig, RecipeError, load_recipe
from crossflow_core.unet import FlowUNet

UNET = ModelConfig(arch="unet", unet_channels=(8, 16), unet_attention=(False, True), unet_head_dim=8)
UNET_ARGS = dict(channels=(8, 16), attention=(False, True), head_dim=8)


def test_the_recipe_arch_picks_the_network():
    unet = build_flow_model(UNET, (3, 16, 16))
    assert isinstance(unet, FlowUNet)
    assert unet.init_args == dict(
        latent_shape=[3, 16, 16],
        channels=[8, 16],
        layers=1,
        attention=[False, True],
        head_dim=8,
        cond_channels=0,
        global_read=False,
        time_modulation="add",
        layout_read=0,
    )
    assert isinstance(build_flow_model(ModelConfig(width=32, depth=1, heads=2), (3, 16, 16)), FlowTransformer)
    assert load_recipe("shapes").model.arch == "unet"
    assert load_recipe("t2i_256").model.arch == "dit"


@pytest.mark.parametrize("latent", [(3, 16, 16), (4, 8, 12)])
def test_unet_batched_equals_single_and_sees_time_and_indicator(latent):
    torch.manual_seed(0)
    model = FlowUNet(latent, **UNET_ARGS).eval()
    x, t, ind = torch.randn(3, *latent), torch.rand(3), torch.tensor([1, 0, 1])
    out = model(x, t, ind)
    assert out.shape == x.shape
    single = torch.cat([model(x[i : i + 1], t[i : i + 1], ind[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-4)
    ones, zeros = torch.ones(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    assert not torch.allclose(model(x, t, ones), model(x, t, zeros))
    assert not torch.allclose(model(x, t, ind), model(x, 1 - t, ind))
    # a scalar time is broadcast over the batch
    torch.testing.assert_close(model(x, torch.tensor(0.3), ind), model(x, torch.full((3,), 0.3), ind))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.unet_attention=[true]"], "needs one true/false per level"),
        (["model.unet_channels=[]", "model.unet_attention=[]"], "model.unet_channels"),
        (["model.unet_channels=[8, 0]"], "model.unet_channels"),
        (["model.unet_layers=0"], "model.unet_layers"),
        (["model.arch=convnet"], "model.arch"),
        (["model.unet_head_dim=48"], "model.unet_head_dim=48 does not divide the 128 channels"),
        (["model.unet_layout_read=-1"], "model.unet_layout_read"),
    ],
)
def test_bad_unet_recipes_fail_at_load(overrides, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[")):
        load_recipe("shapes", overrides)


def test_unet_refuses_latents_its_levels_cannot_halve():
    with pytest.raises(CrossflowError, match="not divisible by 2"):
        FlowUNet((3, 15, 16), **UNET_ARGS)
    model = FlowUNet(
        (3, 14, 16), **UNET_ARGS
    )  # every level of a 2-level U-Net halves once: even sizes are fine
    # convolutional: it runs on other even sizes too, and refuses odd ones in one line
    ind = torch.ones(1, dtype=torch.long)
    assert model(torch.randn(1, 3, 8, 10), torch.rand(1), ind).shape == (1, 3, 8, 10)
    with pytest.raises(CrossflowError, match="a 7x10 latent cannot pass 2x downsampling"):
        model(torch.randn(1, 3, 7, 10), torch.rand(1), ind)


def _with_read_of(plain: FlowUNet) -> FlowUNet:
    """A global-read U-Net carrying `plain`'s weights (its indicator embedding moved over)."""
    read = FlowUNet(plain.latent_shape, **UNET_ARGS, global_read=True).eval()
    weights = {k: v for k, v in plain.state_dict().items() if not k.startswith("unet.class_embedding")}
    missing, unexpected = read.load_state_dict(weights, strict=False)
    assert not unexpected and sorted(missing) == [
        "global_read.bias",
        "global_read.weight",
        "indicator_embedding.weight",
    ]
    read.indicator_embedding.weight.data.copy_(plain.unet.class_embedding.weight.data)
    return read


def test_global_read_starts_as_the_plain_unet_then_reads_all_of_x():
    """model.unet_global_read: zero-initialised, the network is exactly the plain U-Net (the
    indicator enters the same way); once trained, the output depends on x through the read."""
    torch.manual_seed(0)
    latent = (3, 16, 16)
    plain = FlowUNet(latent, **UNET_ARGS).eval()
    for p in plain.parameters():  # break diffusers' zero-initialised output conv
        p.data.add_(0.05 * torch.randn_like(p))
    read = _with_read_of(plain)
    x, t, ind = torch.randn(3, *latent), torch.rand(3), torch.tensor([1, 0, 1])
    torch.testing.assert_close(read(x, t, ind), plain(x, t, ind))
    torch.nn.init.normal_(read.global_read.weight, std=0.05)
    out = read(x, t, ind)
    assert not torch.allclose(out, plain(x, t, ind), atol=1e-4)
    # the read is per sample: batched equals single
    single = torch.cat([read(x[i : i + 1], t[i : i + 1], ind[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-4)
    # the added term is exactly W @ flatten(x) + b in the time embedding: zeroing x's read
    # contribution by a matching bias gives the plain network back
    with torch.no_grad():
        read.global_read.bias.copy_(-(read.global_read.weight @ x[0].flatten()))
    torch.testing.assert_close(
        read(x[:1], t[:1], ind[:1]), plain(x[:1], t[:1], ind[:1]), atol=1e-5, rtol=1e-4
    )
    assert not torch.allclose(read(x[1:2], t[1:2], ind[1:2]), plain(x[1:2], t[1:2], ind[1:2]), atol=1e-4)


def test_global_read_fixes_the_latent_size():
    model = FlowUNet((3, 16, 16), **UNET_ARGS, global_read=True)
    assert model.accepts(16, 16) is None
    assert "global read" in model.accepts(8, 8)
    ind = torch.ones(1, dtype=torch.long)
    with pytest.raises(CrossflowError, match="takes 16x16 latents only"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1), ind)
    assert build_flow_model(dataclasses.replace(UNET, unet_global_read=True), (3, 16, 16)).init_args[
        "global_read"
    ]


def test_layout_read_starts_as_without_it_then_draws_a_map_from_all_of_x():
    """model.unet_layout_read = K: zero-initialised, the network equals the one without it (its K
    extra input channels are zero); its gradient is not zero, so it learns; once trained, a change in
    one corner of x moves the opposite corner's output much more than without it (the plain U-Net
    reaches there only through its low-resolution attention)."""
    torch.manual_seed(0)
    latent = (3, 16, 16)
    plain = FlowUNet(latent, **UNET_ARGS).eval()
    for p in plain.parameters():  # break diffusers' zero-initialised output conv
        p.data.add_(0.05 * torch.randn_like(p))
    read = FlowUNet(latent, **UNET_ARGS, layout_read=4).eval()
    weights = plain.state_dict()
    conv_in = "unet.conv_in.weight"
    extra = torch.randn(8, 4, 3, 3)  # the layout's input channels: any weights
    weights[conv_in] = torch.cat([weights[conv_in], extra], dim=1)
    missing, unexpected = read.load_state_dict(weights, strict=False)
    assert not unexpected and sorted(missing) == ["layout_read.bias", "layout_read.weight"]
    assert read.layout_shape == (4, 8, 8)  # the lowest level's resolution of a 2-level U-Net
    x, t, ind = torch.randn(3, *latent), torch.rand(3), torch.tensor([1, 0, 1])
    torch.testing.assert_close(read(x, t, ind), plain(x, t, ind))
    read(x, t, ind).square().sum().backward()
    assert read.layout_read.weight.grad.abs().sum() > 0
    torch.nn.init.normal_(read.layout_read.weight, std=0.05)
    out = read(x, t, ind)
    single = torch.cat([read(x[i : i + 1], t[i : i + 1], ind[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-4)
    # a change confined to the bottom-right corner moves the top-left output pixel only through
    # the read (plain: within the convolutions' and the attention's reach; read: also directly)
    moved = x.clone()
    moved[:, :, -2:, -2:] += 3.0
    plain_shift = (plain(moved, t, ind) - plain(x, t, ind))[:, :, 0, 0].abs().max()
    read_shift = (read(moved, t, ind) - read(x, t, ind))[:, :, 0, 0].abs().max()
    assert read_shift > 2 * plain_shift
    assert read.accepts(8, 8) == "its layout read (model.unet_layout_read) takes 16x16 latents only"
    with pytest.raises(CrossflowError, match="takes 16x16 latents only"):
        read(torch.randn(1, 3, 8, 8), torch.rand(1), ind[:1])
