"""Latent spaces: pixels (exact identity) and a tiny diffusers AutoencoderKL with its scale maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossflow_core.encoders.latents import (
    PixelSpace,
    VAELatentSpace,
    build_latent_space,
    to_model_range,
    to_uint8,
)
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import PixelTargetConfig, VAETargetConfig


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.5,
        shift_factor=0.25,
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def test_uint8_round_trip_and_layouts():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    x = to_model_range(hwc)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_model_range(torch.from_numpy(hwc).permute(0, 3, 1, 2)), x)  # CHW input
    assert torch.equal(to_uint8(x), torch.from_numpy(hwc).permute(0, 3, 1, 2))  # exact inverse
    assert to_model_range(np.array([[[[0, 255, 128]]]], np.uint8)).flatten().tolist() == pytest.approx(
        [-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6
    )
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # clamped
    with pytest.raises(TypeError):
        to_model_range(hwc.astype(np.float32))


def test_pixel_space_is_exact_identity():
    space = build_latent_space(PixelTargetConfig())
    assert isinstance(space, PixelSpace)
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    assert torch.equal(space.encode(x), x) and torch.equal(space.decode(x), x)
    assert space.latent_shape(32) == (3, 32, 32)
    assert space.identity()["kind"] == "pixels" and space.scale == 1.0 and space.shift == 0.0


def test_vae_scale_maths_from_config(vae_dir):
    space = build_latent_space(VAETargetConfig(vae=str(vae_dir)))
    assert isinstance(space, VAELatentSpace)
    assert (space.scale, space.shift) == (0.5, 0.25)
    assert space.latent_shape(16) == (4, 8, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = space.encode(x)
    with torch.no_grad():
        mean = space.vae.encode(x).latent_dist.mean
        ref_decoded = space.vae.decode(z / 0.5 + 0.25).sample.clamp(-1, 1)
    torch.testing.assert_close(z, (mean - 0.25) * 0.5)
    decoded = space.decode(z)
    assert decoded.shape == x.shape and decoded.abs().max() <= 1
    torch.testing.assert_close(decoded, ref_decoded)
    ident = space.identity()
    assert (ident["kind"], ident["scale"], ident["shift"], ident["channels"]) == ("vae", 0.5, 0.25, 4)


def test_vae_scale_override_and_sampling(vae_dir):
    space = build_latent_space(VAETargetConfig(vae=str(vae_dir), scale_factor=2.0, shift_factor=0.0))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        dist = space.vae.encode(x).latent_dist
    torch.testing.assert_close(space.encode(x), dist.mean * 2.0)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1, s2 = space.encode(x, sample=True, generator=g1), space.encode(x, sample=True, generator=g2)
    assert torch.equal(s1, s2) and not torch.equal(s1, space.encode(x))  # a sample, not the mean


def test_vae_errors(vae_dir, tmp_path):
    space = build_latent_space(VAETargetConfig(vae=str(vae_dir)))
    with pytest.raises(CrossflowError, match="divisible"):
        space.latent_shape(15)
    with pytest.raises(CrossflowError, match="target.kind=vae needs target.vae"):
        build_latent_space(VAETargetConfig())
    with pytest.raises(CrossflowError, match="not a directory"):
        build_latent_space(VAETargetConfig(vae=str(tmp_path / "missing")))


def test_vae_subfolder_of_a_pipeline_dir(vae_dir, tmp_path):
    import shutil

    shutil.copytree(vae_dir, tmp_path / "pipe" / "vae")
    space = build_latent_space(VAETargetConfig(vae=str(tmp_path / "pipe")))
    assert space.identity()["path"] == str(tmp_path / "pipe" / "vae")
