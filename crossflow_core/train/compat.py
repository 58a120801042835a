"""Checks that a run directory, a recipe and a prepared dataset belong together."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import Recipe, RecipeError, from_dict
from crossflow_core.train.checkpoint import Checkpointer

# Keys that may change between invocations of the same run (continuing it, logging more often).
RESUMABLE_KEYS = {
    "name",
    "train.steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.sample_every",
    "train.log_every",
}
RUN_RECIPE = "recipe.json"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_run_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Refuse to continue a run with a different recipe; record the recipe of a new run.

    A run without a complete checkpoint has trained nothing yet, so any recipe may (re)start it.
    """
    path = run_dir / RUN_RECIPE
    new = _flatten(recipe.to_dict())
    if path.is_file() and Checkpointer(run_dir, 0, 1).latest() is not None:
        saved = json.loads(path.read_text())
        try:  # fill keys added since the run started with their defaults
            saved = from_dict(saved).to_dict()
        except RecipeError:
            pass
        old = _flatten(saved)
        for key in sorted(set(old) | set(new)):
            if key in RESUMABLE_KEYS or key.startswith(("sample.", "data.")):
                continue
            if old.get(key) != new.get(key):
                raise CrossflowError(
                    f"{run_dir} was trained with {key}={old.get(key)!r}, not {new.get(key)!r}: "
                    f"use a new --out, or --set {key}={old.get(key)!r} to continue it"
                )
    elif not path.is_file() and run_dir.exists() and any(p.name != "checkpoints" for p in run_dir.iterdir()):
        raise CrossflowError(f"{run_dir} exists and is not a crossflow run: choose a new --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RUN_RECIPE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(recipe.to_dict(), indent=2))
    os.replace(tmp, path)


def check_data_matches(manifest: Any, recipe: Recipe, data_dir: Path) -> None:
    """Precomputed text embeddings must come from the recipe's text encoder."""
    used = getattr(manifest, "text_encoder", None) or {}
    if not used or not manifest.has_text_tokens:
        return
    want = recipe.text_encoder
    for key, value in (("name", want.name), ("max_length", want.max_length)):
        if key in used and used[key] != value:
            raise CrossflowError(
                f"{data_dir} holds text embeddings from text_encoder.{key}={used[key]!r} but the recipe "
                f"says {value!r}: --set text_encoder.{key}={used[key]!r}, or prepare the data again"
            )
