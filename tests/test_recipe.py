"""Recipes: strict loading, overrides, errors naming key and value."""

from __future__ import annotations

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
        ("latents.kind=vea", "latents.kind: invalid choice 'vea'"),
        ("train.betas=[0.9]", "train.betas: expected a list of 2 values"),
        ("data.precompute_text=maybe", "data.precompute_text: expected true or false"),
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
