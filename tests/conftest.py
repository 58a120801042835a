"""Shared fixtures: a tiny recipe and a tiny prepared shapes dataset (made once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

# A recipe small enough that a few training steps take well under a second on a CPU.
TINY = [
    "data.num_samples=64",
    "data.shard_size=40",
    "source.max_length=12",
    "ve.width=32",
    "ve.depth=1",
    "ve.heads=2",
    "ve.ffn=64",
    "ve.image_encoder_width=8",
    "model.width=32",
    "model.depth=2",
    "model.heads=2",
    "model.unet_channels=[8, 16]",
    "model.unet_attention=[false, true]",
    "model.unet_head_dim=8",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.checkpoint_every=2",
    "train.sample_every=0",
    "train.log_every=1",
    "sample.steps=3",
    "sample.prompts=[]",
]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared 64-sample shapes dataset with MiniLM token embeddings."""
    from crossflow_core.data.prepare import prepare_dataset
    from crossflow_core.recipe import load_recipe

    recipe = load_recipe("shapes", TINY)
    out = tmp_path_factory.mktemp("data") / "shapes"
    prepare_dataset(recipe.data, recipe.source, recipe.target, out)
    return out
