"""Recipes: strict loading, overrides, errors naming key and value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from crossflow_core.recipe import Recipe, RecipeError, available_recipes, from_dict, load_recipe


def test_builtin_recipes_load():
    names = available_recipes()
    assert "shapes" in names
    for name in names:
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe)
        assert recipe.name == name


def test_roundtrip_to_dict_from_dict():
    recipe = load_recipe("shapes")
    assert from_dict(recipe.to_dict()) == recipe


def test_overrides_are_typed():
    recipe = load_recipe(
        "shapes", ["train.steps=3", "train.lr=1e-4", "train.betas=[0.9, 0.95]", "train.grad_clip=null"]
    )
    assert recipe.train.steps == 3
    assert recipe.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string
    assert recipe.train.betas == (0.9, 0.95)
    assert recipe.train.grad_clip is None
    assert recipe.replace(["train.steps=7"]).train.steps == 7


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.stepz=3", "unknown key 'train.stepz'"),
        ("trian.steps=3", "unknown key 'trian'"),
        ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
        ("train.steps=2.5", "train.steps: expected an integer, got 2.5"),
        ("train.stage=jiont", "train.stage: invalid choice 'jiont'"),
        ("target.kind=vea", "target.kind: invalid choice 'vea'"),
        ("source.kind=nope", "source.kind: invalid choice 'nope'; expected one of: text, upsampled"),
        ("train.betas=[0.9]", "train.betas: expected a list of 2 values"),
        ("data.precompute_source=maybe", "data.precompute_source: expected true or false"),
        ("source.max_length=0", "source.max_length=0 must be > 0"),
        # pre-seam override names on a recipe that has the new sections are refused, not ignored
        ("text_encoder.max_length=12", "text_encoder is the pre-seam name of source"),
        ("latents.kind=vae", "latents is the pre-seam name of target"),
        ("data.precompute_text=false", "data.precompute_text is the pre-seam name of data.precompute_source"),
        ("train.steps", "must look like section.key=value"),
        ("train.steps.x=1", "train.steps is not a section"),
        ("train.steps=-1", "train.steps=-1 must be >= 0"),
        ("train.batch_size=0", "train.batch_size=0 must be > 0"),
        ("flow.cfg_indicator=1.5", "flow.cfg_indicator=1.5 must be in [0, 1]"),
        ("train.ema_decay=1", "train.ema_decay=1.0 must be in [0, 1)"),
        ("data.image_size=8", "data.image_size=8 must be >= 16"),
    ],
)
def test_bad_overrides_name_key_and_value(override, expected):
    with pytest.raises(RecipeError) as info:
        load_recipe("shapes", [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_recipe_lists_choices():
    with pytest.raises(RecipeError, match="unknown recipe 'nope'.*shapes"):
        load_recipe("nope")


def test_bad_files(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(listy)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    ok = tmp_path / "mine.yaml"
    ok.write_text("train:\n  steps: 5\n")
    recipe = load_recipe(ok)
    assert recipe.name == "mine" and recipe.train.steps == 5


def _pre_seam(recipe: Recipe) -> dict:
    """The dict a pre-seam crossflow wrote for `recipe` (text_encoder / latents, old data keys)."""
    d = recipe.to_dict()
    source, target = d.pop("source"), d.pop("target")
    d.pop("task")
    d["ve"].pop("kind")
    d["text_encoder"] = {
        "name": source["encoder"],
        "max_length": source["max_length"],
        "embedding_scale": source["embedding_scale"],
    }
    d["latents"] = {
        "kind": target["kind"],
        "vae": target.get("vae"),
        "scale_factor": target.get("scale_factor"),
        "shift_factor": target.get("shift_factor"),
    }
    d["data"]["precompute_text"] = d["data"].pop("precompute_source")
    d["data"]["precompute_latents"] = d["data"].pop("precompute_target")
    return d


def test_pre_seam_layout_loads_as_the_same_recipe():
    recipe = load_recipe("shapes", ["source.max_length=12", "data.precompute_source=false"])
    old = _pre_seam(recipe)
    assert "source" not in old and "text_encoder" in old
    assert from_dict(old) == recipe
    vae = recipe.replace(["target.kind=vae", "target.vae=some/vae", "target.scale_factor=0.5"])
    assert from_dict(_pre_seam(vae)) == vae
    assert vae.target.vae == "some/vae" and vae.target.scale_factor == 0.5


def test_pre_seam_yaml_file_loads(tmp_path: Path):
    old = tmp_path / "old.yaml"
    old.write_text(
        "task: t2i\n"
        "data:\n  precompute_text: false\n  precompute_latents: true\n"
        "text_encoder:\n  name: minilm\n  max_length: 12\n  embedding_scale: 10.0\n"
        "latents:\n  kind: pixels\n"
    )
    recipe = load_recipe(old)
    assert recipe.source.kind == "text" and recipe.source.encoder == "minilm"
    assert recipe.source.max_length == 12 and recipe.source.embedding_scale == 10.0
    assert recipe.target.kind == "pixels" and recipe.ve.kind == "text"
    assert recipe.data.precompute_source is False and recipe.data.precompute_target is True
    new = tmp_path / "new.yaml"
    new.write_text(
        "data:\n  precompute_source: false\n  precompute_target: true\n"
        "source:\n  kind: text\n  encoder: minilm\n  max_length: 12\n  embedding_scale: 10.0\n"
        "target:\n  kind: pixels\n"
    )
    assert load_recipe(new) == dataclasses.replace(recipe, name="new")


def test_task_preset_fills_kinds(tmp_path: Path):
    sr = tmp_path / "sr.yaml"
    sr.write_text("task: sr\nsource:\n  factor: 4\n")
    recipe = load_recipe(sr)
    assert (recipe.source.kind, recipe.target.kind, recipe.ve.kind) == ("upsampled", "pixels", "identity")
    assert recipe.source.factor == 4
    t2i = load_recipe("shapes")
    assert (t2i.source.kind, t2i.target.kind, t2i.ve.kind) == ("text", "pixels", "text")
    with pytest.raises(RecipeError, match="task: invalid choice 'tts'"):
        load_recipe("shapes", ["task=tts"])


def test_mixed_precision_no_is_the_string_no(tmp_path: Path):
    # YAML 1.1 reads an unquoted `no` as False; the loader maps it back to the choice "no".
    recipe = load_recipe("shapes", ["train.mixed_precision=no"])
    assert recipe.train.mixed_precision == "no"
    assert load_recipe("shapes", ["train.mixed_precision='no'"]).train.mixed_precision == "no"
    path = tmp_path / "fp32.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_recipe(path).train.mixed_precision == "no"
    # other booleans are still refused, naming key and value
    with pytest.raises(RecipeError) as info:
        load_recipe("shapes", ["train.mixed_precision=yes"])
    assert "train.mixed_precision: invalid choice True" in str(info.value)
    assert "\n" not in str(info.value)


def test_source_kind_must_be_known(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    path.write_text("source:\n  kind: nope\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "source.kind: invalid choice 'nope'; expected one of: text, upsampled" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("recipe", "override", "expected"),
    [
        ("sr_shapes", "ve.kind=text", "ve.kind=text needs source.kind=text, not 'upsampled'"),
        ("shapes", "ve.kind=identity", "ve.kind=identity needs an image source, not source.kind='text'"),
        ("shapes", "ve.kind=noise_concat", "ve.kind=noise_concat needs an image source"),
        ("sr_shapes", "train.stage=two_stage", "train.stage=two_stage pretrains a VE"),
        ("sr_shapes", "source.factor=3", "data.image_size=32 is not divisible by source.factor=3"),
        ("sr_shapes", "source.factor=1", "source.factor=1 must be >= 2"),
    ],
)
def test_source_ve_and_target_must_fit(recipe, override, expected):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
