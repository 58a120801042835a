"""The image source and the image VE (`ve.kind: image`), the seam of captioning and depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossflow_core.codecs import build_codecs
from crossflow_core.codecs.base import SourceBatch
from crossflow_core.errors import CrossflowError
from crossflow_core.image_ve import ImageReconstruction, ImageVariationalEncoder
from crossflow_core.recipe import RecipeError, load_recipe

IMAGE_PAIR = [
    "data.image_size=16",
    "source={kind: image}",
    "ve={kind: image, width: 8, depth: 1, objective: image_reconstruction}",
]


@pytest.mark.parametrize("latent", [(1, 16, 16), (8, 4, 4), (4, 2, 2), (3, 32, 32), (2, 5, 3)])
def test_image_ve_gives_the_latent_shape_and_mu_at_zero_noise(latent):
    torch.manual_seed(0)
    ve = ImageVariationalEncoder(3, 16, latent, width=8, depth=1)
    x = SourceBatch(torch.randn(2, 3, 16, 16))
    out = ve(x, noise=torch.zeros(2, *latent))
    assert out.z0.shape == (2, *latent) and out.logvar.shape == (2, *latent)
    assert torch.equal(out.z0, out.mu)
    noise = torch.randn(2, *latent)
    shifted = ve(x, noise=noise)
    assert torch.allclose(shifted.z0, out.mu + torch.exp(0.5 * out.logvar) * noise, atol=1e-6)


def test_image_ve_batched_equals_single():
    torch.manual_seed(0)
    ve = ImageVariationalEncoder(3, 16, (1, 16, 16), width=8, depth=1).eval()
    x = torch.randn(3, 3, 16, 16)
    batched = ve(SourceBatch(x), noise=torch.zeros(3, 1, 16, 16)).mu
    single = torch.cat([ve(SourceBatch(x[i : i + 1]), noise=torch.zeros(1, 1, 16, 16)).mu for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_image_reconstruction_learns_to_reconstruct():
    """The objective's gradient reaches the VE: a few steps cut the reconstruction error."""
    torch.manual_seed(0)
    ve = ImageVariationalEncoder(3, 16, (4, 8, 8), width=8, depth=1)
    rec = ImageReconstruction(3, (4, 8, 8), width=8, depth=1)
    opt = torch.optim.Adam([*ve.parameters(), *rec.parameters()], lr=3e-3)
    x = SourceBatch(torch.rand(8, 3, 16, 16) * 2 - 1)
    losses = []
    for _ in range(60):
        out = ve(x, noise=torch.zeros(8, 4, 8, 8))
        loss = rec(out, x, torch.empty(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert ve.features[0].weight.grad is not None


def test_image_source_reads_pixels_in_model_range():
    r = load_recipe("sr_shapes", IMAGE_PAIR)
    source, target = build_codecs(r.source, r.target, image_size=16)
    images = [np.full((16, 16, 3), 255, np.uint8), np.zeros((16, 16, 3), np.uint8)]
    batch = source.encode(images, torch.device("cpu"))
    assert batch.x.shape == (2, 3, 16, 16) and batch.mask is None
    assert torch.all(batch.x[0] == 1.0) and torch.all(batch.x[1] == -1.0)
    assert source.spec() == {"space": "pixels", "channels": 3, "size": 16}
    with pytest.raises(CrossflowError, match="one size"):
        source.encode([images[0], np.zeros((8, 8, 3), np.uint8)], torch.device("cpu"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["source={kind: image}", "ve.kind=identity"], "source.kind=image needs ve.kind=image"),
        (["ve={kind: image}"], "ve.kind=image needs source.kind=image"),
        (
            IMAGE_PAIR[:2] + ["ve={kind: image, objective: text_reconstruction}"],
            "not an objective of the image VE",
        ),
    ],
)
def test_image_pair_checks(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("sr_shapes", overrides)


def test_image_ve_trains_and_exports(tmp_path):
    """image -> pixels through the generic loop and pipeline: train, export, load, translate."""
    from crossflow_core.data.prepare import prepare_dataset
    from crossflow_core.pipeline import CrossFlowPipeline
    from crossflow_core.train.loop import train

    r = load_recipe(
        "sr_shapes",
        IMAGE_PAIR
        + [
            "data.num_samples=16",
            "data.shard_size=10",
            "model.unet_channels=[8, 16]",
            "model.unet_attention=[false, true]",
            "model.unet_head_dim=8",
            "train.steps=3",
            "train.batch_size=8",
            "train.warmup_steps=1",
            "train.sample_every=0",
            "train.checkpoint_every=3",
            "train.mixed_precision=no",
            "sample.steps=2",
        ],
    )
    prepare_dataset(r.data, r.source, r.target, tmp_path / "data")
    result = train(r, tmp_path / "data", tmp_path / "run")
    assert result.losses["enc"] > 0 and result.losses["kl"] > 0
    pipe = CrossFlowPipeline.load(tmp_path / "run")
    images = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(2)]
    out = pipe.translate(images, pipe.defaults)
    assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    again = pipe.translate(images, pipe.defaults)
    assert torch.equal(out, again)
