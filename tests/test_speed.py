"""The U-Net's attention layout for speed (`SpatialAttention`, crossflow_core/unet.py) changes no
maths: outputs and gradients agree with diffusers' own processor, and training takes the same
path. benchmarks/step_speed.md measures the speed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossflow_core.unet import FlowUNet, SpatialAttention, matmul_attention, use_matmul_attention

LATENT = (3, 16, 16)
ARGS = dict(channels=(8, 16), attention=(False, True), head_dim=8)


def _pair() -> tuple[FlowUNet, FlowUNet]:
    """The same weights twice: the default (`SpatialAttention`) and diffusers' `AttnProcessor2_0`.
    The zero-initialised output conv is perturbed so that every weight gets a gradient."""
    torch.manual_seed(0)
    fast = FlowUNet(LATENT, **ARGS)
    with torch.no_grad():
        w = fast.unet.conv_out.weight
        w.copy_(torch.linspace(-0.1, 0.1, w.numel()).view_as(w))
    plain = copy.deepcopy(fast)
    plain.set_attention("diffusers")
    return fast, plain


def _inputs(b: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, *LATENT, generator=g), torch.rand(b, generator=g), torch.tensor([1, 0] * (b // 2))


def _attention_block(channels: int = 16, head_dim: int = 8) -> nn.Module:
    """One diffusers attention block as the U-Net's AttnDownBlock2D builds it."""
    from diffusers.models.attention_processor import Attention

    return Attention(
        channels, heads=channels // head_dim, dim_head=head_dim, rescale_output_factor=1.0, eps=1e-5,
        norm_num_groups=8, residual_connection=True, bias=True, upcast_softmax=True,
        _from_deprecated_attn_block=True,
    )


def test_the_unet_uses_spatial_attention_by_default():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    fast, plain = _pair()
    blocks = [m for m in fast.modules() if isinstance(m, Attention)]
    assert blocks and all(isinstance(m.processor, SpatialAttention) for m in blocks)
    assert all(isinstance(m.processor, AttnProcessor2_0) for m in plain.modules() if isinstance(m, Attention))
    # a speed choice only: the weights (checkpoints, exports) are the same
    assert list(fast.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("kernel", ["sdpa", "matmul", "auto"])
def test_spatial_attention_equals_diffusers_processor_with_gradients(kernel):
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.manual_seed(0)
    attn = _attention_block()
    x = torch.randn(3, 16, 4, 6)
    outs, grads = [], []
    for processor in (SpatialAttention(kernel), AttnProcessor2_0()):
        attn.set_processor(processor)
        xi = x.clone().requires_grad_(True)
        out = attn(xi)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in attn.parameters()])
        attn.zero_grad(set_to_none=True)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    assert len(grads[0]) == len(grads[1]) > 5
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert outs[0].is_contiguous()  # NCHW out: no channels-last strides leak into the next blocks


def test_spatial_attention_output_keeps_the_network_in_nchw():
    """diffusers' processor hands the next blocks a transposed (channels-last strided) map."""
    fast, plain = _pair()
    layouts = {}
    for name, model in (("fast", fast), ("plain", plain)):
        seen = []
        hooks = [
            m.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[0].is_contiguous()))
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.GroupNorm))
        ]
        model(*_inputs())
        for h in hooks:
            h.remove()
        layouts[name] = seen
    assert all(layouts["fast"])
    assert not all(layouts["plain"])


def test_unet_outputs_and_gradients_match_diffusers_attention_fp32():
    fast, plain = _pair()
    x, t, ind = _inputs()
    target = torch.randn_like(x)
    outs, grads = [], []
    for model in (fast, plain):
        out = model.train()(x, t, ind)
        F.mse_loss(out, target).backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-3, msg=name)
    qkv = [n for n in grads[0] if ".to_q." in n or ".to_k." in n or ".to_v." in n]
    assert qkv and all(grads[0][n].abs().sum() > 0 for n in qkv)  # the fused projection trains all three


def test_training_steps_reach_the_same_weights():
    # SGD, not Adam: Adam scales the rounding noise of gradients that are exactly zero in theory
    # (conv biases ahead of one-channel GroupNorm groups) up to full-size steps
    fast, plain = _pair()
    x, t, ind = _inputs()
    target = torch.randn_like(x)
    for model in (fast, plain):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            F.mse_loss(model(x, t, ind), target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_autocast_matmul_attention_agrees_with_the_fused_kernel():
    fast, plain = _pair()
    x, t, ind = _inputs(8)
    target = torch.randn_like(x)
    outs, grads = [], []
    for model in (fast, plain):  # CPU bf16: matmul attention vs diffusers' SDPA
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, ind)
        F.mse_loss(out.float(), target).backward()
        outs.append(out.detach().float())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    with torch.no_grad():
        ref = plain(x, t, ind)
    scale = ref.abs().max()
    assert (outs[0] - outs[1]).abs().max() < 0.02 * scale
    assert (outs[0] - ref).abs().max() < 0.05 * scale
    cos = F.cosine_similarity(grads[0], grads[1], dim=0)
    assert cos > 0.99, cos


def test_matmul_attention_is_softmax_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(matmul_attention(q, k, v), ref, atol=1e-5, rtol=1e-4)
    out = matmul_attention(*(y.bfloat16() for y in (q, k, v)))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    assert use_matmul_attention(q.bfloat16()) and not use_matmul_attention(q)


def test_unusual_calls_fall_back_to_diffusers_and_bad_kernels_are_refused():
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.manual_seed(0)
    attn = _attention_block()
    tokens = torch.randn(2, 5, 16)  # 3-D input: not a feature map
    attn.set_processor(SpatialAttention())
    out = attn(tokens)
    attn.set_processor(AttnProcessor2_0())
    torch.testing.assert_close(out, attn(tokens))
    with pytest.raises(ValueError, match="unknown attention kernel"):
        SpatialAttention("flash")
