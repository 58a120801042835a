"""`crossflow recipes`: list the built-in recipes."""

from __future__ import annotations

from crossflow_cli.common import console
from crossflow_core.recipe import available_recipes, recipes_dir


def recipes_command() -> None:
    names = available_recipes()
    console.print(f"recipes in {recipes_dir()}:")
    for name in names:
        console.print(f"  {name}")
