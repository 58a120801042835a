"""Checks that a run directory, a recipe and a prepared dataset belong together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossflow_core.atomic import write_text
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
    "train.loader",  # how batches are read, not which: a run may switch between memory and stream
    "train.num_workers",
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
                    f"start a new run directory, or set {key}={old.get(key)!r} to continue it"
                )
    elif not path.is_file() and run_dir.exists() and any(p.name != "checkpoints" for p in run_dir.iterdir()):
        raise CrossflowError(f"{run_dir} exists and is not a crossflow run: choose a new run directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(recipe.to_dict(), indent=2))


def check_data_matches(manifest: Any, recipe: Recipe, data_dir: Path) -> None:
    """A prepared dataset must hold what the recipe's codecs read, made by the same encoders."""
    fields = tuple(getattr(manifest, "fields", ()))
    source = recipe.source
    if source.kind == "text":
        if "tokens.npy" not in fields and "txt" not in fields:
            raise CrossflowError(
                f"{data_dir} holds no captions (no txt field), but the recipe's source is "
                "text: "
                "prepare it with a text-to-image recipe from images with captions"
            )
        captions = getattr(manifest, "captions", None)
        if "tokens.npy" not in fields and captions is not None and captions.max_words == 0:
            raise CrossflowError(
                f"{data_dir} has no captions (it was prepared for a task that reads no text), "
                "but the recipe's source is text: prepare images with captions"
            )
        used = getattr(manifest, "text_encoder", None) or {}
        if "tokens.npy" in fields:
            for key, value in (("name", source.encoder), ("max_length", source.max_length)):
                if key in used and used[key] != value:
                    name = "encoder" if key == "name" else key
                    raise CrossflowError(
                        f"{data_dir} holds text embeddings from source.{name}={used[key]!r} but the recipe "
                        f"says {value!r}: set source.{name}={used[key]!r}, or prepare the data again"
                    )
    elif "txt" in fields and not ("png" in fields or "latent.npy" in fields):
        raise CrossflowError(f"{data_dir} holds no images, but source.kind={source.kind} needs them")
    stored = (manifest.extra or {}).get("source") if hasattr(manifest, "extra") else None
    if "source.npy" in fields and isinstance(stored, dict):
        if stored.get("kind") != source.kind or stored.get("factor") != getattr(source, "factor", None):
            raise CrossflowError(
                f"{data_dir} holds sources made as {stored.get('kind')} x{stored.get('factor')}, but "
                f"the recipe says {source.kind} x{getattr(source, 'factor', None)}: "
                "prepare the data again for this recipe"
            )
    _check_revisions(manifest, recipe, data_dir, fields)
    posterior = getattr(recipe.target, "posterior", None)
    if posterior == "sample" and "latent.npy" in fields and "moments.npy" not in fields:
        raise CrossflowError(
            f"{data_dir} stores VAE latents (the posterior's mode), not its moments, but "
            "target.posterior=sample draws from the posterior: set target.posterior=mode, or prepare "
            "the data again (it now stores moments.npy)"
        )
    latent = getattr(manifest, "latent", None) or {}
    if getattr(manifest, "has_latents", False) and latent.get("kind") != recipe.target.kind:
        raise CrossflowError(
            f"{data_dir} stores {latent.get('kind')} latents but the recipe's "
            "target.kind is "
            f"{recipe.target.kind}: prepare the data again for this recipe"
        )


def _check_revisions(manifest: Any, recipe: Recipe, data_dir: Path, fields: tuple[str, ...]) -> None:
    """Stored features must come from the weights the recipe's encoder names resolve to now."""
    from crossflow_core.encoders.revision import weights_revision
    from crossflow_core.encoders.text import resolve_name

    checks = []
    if "tokens.npy" in fields and recipe.source.kind == "text":
        used = getattr(manifest, "text_encoder", None) or {}
        encoder = recipe.source.encoder
        checks.append(("text embeddings", "source.encoder", used, lambda: resolve_name(encoder)))
    if {"moments.npy", "latent.npy", "source.npy"} & set(fields) and recipe.target.kind == "vae":
        used = getattr(manifest, "latent", None) or {}
        checks.append(("VAE latents", "target.vae", used, lambda: recipe.target.vae))
    for what, key, used, resolve in checks:
        stored = used.get("revision")
        if not stored:
            continue  # prepared before revisions were recorded
        now = weights_revision(resolve())
        if now is not None and now != stored:
            raise CrossflowError(
                f"{data_dir} holds {what} made by {used.get('name')} at revision {stored}, but "
                f"{key} now resolves to revision {now}: prepare the data again, or point {key} at "
                "the weights it was made with"
            )
