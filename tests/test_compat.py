"""Runs and models written before the task seam (text_encoder/latents recipe sections, a single
config.json + model.safetensors export) still load and continue."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from crossflow_core.pipeline import CrossFlowPipeline
from crossflow_core.recipe import from_dict, load_recipe
from crossflow_core.train.loop import train


def pre_seam_recipe(recipe: dict) -> dict:
    """The layout recipes had before the task seam, from a current recipe dict."""
    old = {k: v for k, v in recipe.items() if k not in ("source", "target")}
    src = recipe["source"]
    old["text_encoder"] = {
        "name": src["encoder"],
        "max_length": src["max_length"],
        "embedding_scale": src["embedding_scale"],
    }
    old["latents"] = {"kind": recipe["target"]["kind"]}
    data = dict(recipe["data"])
    data["precompute_text"] = data.pop("precompute_source")
    data["precompute_latents"] = data.pop("precompute_target")
    old["data"] = data
    old["ve"] = {k: v for k, v in recipe["ve"].items() if k != "kind"}
    old["sample"] = {k: v for k, v in recipe["sample"].items() if k != "seed"}
    return old


def test_pre_seam_recipe_reads_as_the_same_recipe():
    new = load_recipe("shapes")
    assert from_dict(pre_seam_recipe(new.to_dict())) == new


def write_version1(model_dir: Path, out: Path) -> None:
    """Rewrite a current export as the pre-seam format (version 1)."""
    index = json.loads((model_dir / "model_index.json").read_text())
    weights = {f"ve.{k}": v for k, v in load_file(model_dir / "ve" / "model.safetensors").items()}
    weights.update({f"flow.{k}": v for k, v in load_file(model_dir / "flow" / "model.safetensors").items()})
    out.mkdir(parents=True)
    save_file(weights, out / "model.safetensors")
    spec = index["source"]["spec"]
    config = {
        "format": "crossflow-model",
        "version": 1,
        "recipe": pre_seam_recipe(index["recipe"]),
        "shapes": {
            "latent_shape": index["latent_shape"],
            "num_tokens": spec["num_tokens"],
            "token_dim": spec["token_dim"],
        },
        "image_size": index["image_size"],
        "text_encoder": index["source"]["identity"],
        "latent_space": index["target"]["identity"],
        "step": index["step"],
    }
    (out / "config.json").write_text(json.dumps(config))


def test_pre_seam_model_and_run_still_work(tiny_overrides, tiny_data, tmp_path):
    run = tmp_path / "run"
    recipe = load_recipe("shapes", [*tiny_overrides, "train.steps=2"])
    train(recipe, tiny_data, run)
    write_version1(run / "model", tmp_path / "old_model")
    new, old = (CrossFlowPipeline.load(p, device="cpu") for p in (run / "model", tmp_path / "old_model"))
    settings = new.defaults.with_overrides(steps=2)
    prompts = ["a red circle", "two blue squares"]
    assert torch.equal(new.generate(prompts, settings), old.generate(prompts, settings))
    # a run directory whose recipe.json predates the seam continues with today's recipe
    (run / "recipe.json").write_text(json.dumps(pre_seam_recipe(recipe.to_dict())))
    result = train(load_recipe("shapes", [*tiny_overrides, "train.steps=3"]), tiny_data, run)
    assert result.resumed_from == 2 and result.step == 3


def test_shards_made_by_other_encoder_weights_are_refused(tiny_overrides, tiny_data, tmp_path):
    """The manifest records the text encoder's revision; training refuses shards whose embeddings
    came from other weights than the recipe's encoder resolves to now (one line)."""
    import shutil

    import pytest

    from crossflow_core.errors import CrossflowError

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["text_encoder"]["revision"].startswith("sha256:")
    manifest["text_encoder"]["revision"] = "sha256:0123456789abcdef"
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CrossflowError) as info:
        train(load_recipe("shapes", [*tiny_overrides, "train.steps=1"]), data, tmp_path / "run")
    msg = str(info.value)
    assert "\n" not in msg and "revision sha256:0123456789abcdef" in msg and "prepare the data again" in msg
