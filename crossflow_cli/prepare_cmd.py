"""`crossflow prepare`: a recipe's data source -> WebDataset shards + manifest.json."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crossflow_cli.common import RecipeOption, SetOption, console, err_console, user_errors
from crossflow_core.data.prepare import prepare_dataset
from crossflow_core.errors import CrossflowError, OutputExistsError
from crossflow_core.recipe import load_recipe

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder (shards + manifest.json).")]
FromOption = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--from", help="folder of images (+ captions when the task reads text); sets data.source=folder"
    ),
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing prepared dataset.")]


@user_errors
def prepare_command(
    recipe: RecipeOption = "shapes",
    out: OutOption = ...,  # type: ignore[assignment]  # required
    source: FromOption = None,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Precompute a dataset: images, captions, text embeddings (and latents) into tar shards."""
    r = load_recipe(recipe, list(set_ or []))
    data = r.data
    if source is not None:
        data = dataclasses.replace(data, source="folder", path=str(source))
    elif data.source == "folder" and not data.path:
        raise CrossflowError(f"recipe {r.name} reads a folder of images: pass --from FOLDER")
    device = "cuda" if _cuda_available() else "cpu"
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]prepare[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("prepare", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        try:
            manifest = prepare_dataset(
                data,
                r.source,
                r.target,
                out,
                source_dir=source,
                overwrite=overwrite,
                progress=progress,
                device=device,
            )
        except OutputExistsError as exc:
            raise CrossflowError(f"{exc} (pass --overwrite to replace it)") from None
    elapsed = time.perf_counter() - start
    print_summary(manifest, out, elapsed)


def print_summary(manifest, out: Path, elapsed: float) -> None:
    """What was prepared: counts, speed, skipped files, the features stored."""
    skipped = ", ".join(f"{k}={v}" for k, v in manifest.skipped.items()) or "none"
    text = manifest.text_embedding_shape
    console.print(
        f"prepared {manifest.num_samples} samples in {len(manifest.shards)} shards "
        f"({elapsed:.1f} s, {manifest.num_samples / max(elapsed, 1e-9):.0f} samples/s)"
    )
    console.print(f"  skipped: {skipped}")
    if manifest.extra.get("source", {}).get("kind") != "upsampled":  # a text source
        console.print(
            f"  text embeddings: {list(text) if text else 'not precomputed'}"
            + (f" ({manifest.text_encoder['name']})" if manifest.text_encoder else "")
        )
    else:
        stored = "source.npy stored" if "source.npy" in manifest.fields else "made from the png at train time"
        console.print(f"  sources: upsampled x{manifest.extra['source']['factor']}, {stored}")
    latent = list(manifest.latent_shape)
    console.print(
        f"  latents: {manifest.latent['kind']} {latent}" + (" stored" if manifest.has_latents else "")
    )
    console.print(f"  output: {out}", highlight=False)
    if manifest.captions.truncated:
        err_console.print(
            f"[yellow]warning:[/] {manifest.captions.truncated} captions exceed "
            f"source.max_length={manifest.captions.max_length} tokens and were truncated "
            f"(longest: {manifest.captions.max_tokens})"
        )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
