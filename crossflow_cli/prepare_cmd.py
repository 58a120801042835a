"""`crossflow prepare`: a recipe's data source -> WebDataset shards + manifest.json.

`--from` names the input and its kind is detected (`crossflow_core.data.inputs`): a folder of
captioned images, a COCO captions JSON file (with `--images DIR`), or WebDataset / img2dataset tar
shards (a folder of .tar files, one .tar, or a glob / brace pattern).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crossflow_cli.common import RecipeOption, SetOption, console, err_console, user_errors
from crossflow_core.data.inputs import detect_input
from crossflow_core.data.prepare import prepare_dataset
from crossflow_core.errors import CrossflowError, OutputExistsError
from crossflow_core.recipe import DataConfig, Recipe, load_recipe

OutOption = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Output folder (shards + manifest.json). A killed prepare run again with the same "
        "command resumes: the shards it finished are kept, the rest is written.",
    ),
]
FromOption = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--from",
        help="The input, detected by its kind: a folder of images (+ captions: IMAGE.txt, captions.jsonl "
        "or metadata.jsonl; data.source=folder); a COCO captions JSON file, e.g. "
        "annotations/captions_train2017.json, with --images (data.source=coco); or WebDataset tar shards "
        "as img2dataset writes them (KEY.jpg/.png/.webp + KEY.txt or KEY.json 'caption'): a folder of "
        ".tar files, one .tar or a quoted pattern such as 'shards/{00000..00099}.tar' "
        "(data.source=webdataset).",
    ),
]
ImagesOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--images", help="COCO: the folder of the images the annotations name, e.g. coco/train2017."
    ),
]


class CocoCaptions(str, enum.Enum):
    all = "all"
    first = "first"


CocoCaptionsOption = Annotated[
    Optional[CocoCaptions],  # noqa: UP045
    typer.Option(
        "--coco-captions",
        help="COCO: every caption its own sample (all, about 5 per image) or one per image (first); "
        "default data.coco_captions (all).",
    ),
]
WorkersOption = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--workers",
        min=1,
        help="Processes decoding and resizing COCO / WebDataset images (default data.workers, 1); "
        "the output is byte-identical for any number.",
    ),
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing prepared dataset.")]


@user_errors
def prepare_command(
    recipe: RecipeOption = "shapes",
    out: OutOption = ...,  # type: ignore[assignment]  # required
    source: FromOption = None,
    images: ImagesOption = None,
    coco_captions: CocoCaptionsOption = None,
    workers: WorkersOption = None,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Precompute a dataset: images, captions, text embeddings (and latents) into tar shards."""
    r = load_recipe(recipe, list(set_ or []))
    captions = None if coco_captions is None else CocoCaptions(coco_captions).value
    data, source_dir = input_data(r, source, images, captions, workers)
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
                source_dir=source_dir,
                overwrite=overwrite,
                progress=progress,
                device=device,
            )
        except OutputExistsError as exc:
            raise CrossflowError(f"{exc} (pass --overwrite to replace it)") from None
    elapsed = time.perf_counter() - start
    print_summary(manifest, out, elapsed)


def input_data(
    r: Recipe, source: str | None, images: Path | None, coco_captions: str | None, workers: int | None
) -> tuple[DataConfig, Path | None]:
    """The recipe's data section with the command line's input, and the folder of a folder input."""
    options = (("coco_captions", coco_captions), ("workers", workers))
    changes: dict = {k: v for k, v in options if v is not None}
    source_dir = None
    if source is not None:
        spec = detect_input(source)
        changes.update(source=spec.kind, path=spec.path)
        if spec.kind == "coco" and images is None:
            raise CrossflowError(f"{source} is COCO annotations: pass --images DIR, the folder of its images")
        source_dir = Path(spec.path) if spec.kind == "folder" else None
    kind = changes.get("source", r.data.source)
    if images is not None:
        if kind != "coco":
            raise CrossflowError(
                "--images is the image folder of COCO annotations: pass --from captions_*.json too"
            )
        changes["images"] = str(images)
    data = dataclasses.replace(r.data, **changes)
    if data.source != "shapes" and not data.path:
        raise CrossflowError(
            f"recipe {r.name} reads data.source={data.source}: pass --from FOLDER, --from captions_*.json "
            "--images DIR, or --from SHARDS"
        )
    return data, source_dir


def print_summary(manifest, out: Path, elapsed: float) -> None:
    """What was prepared: counts, speed, skipped files, the features stored."""
    skipped = ", ".join(f"{k}={v}" for k, v in manifest.skipped.items()) or "none"
    console.print(
        f"prepared {manifest.num_samples} samples in {len(manifest.shards)} shards "
        f"({elapsed:.1f} s, {manifest.num_samples / max(elapsed, 1e-9):.0f} samples/s)"
    )
    console.print(f"  skipped: {skipped}")
    source = manifest.extra.get("source", {})
    kind = source.get("kind", "text")
    what = {
        "upsampled": f"upsampled x{source.get('factor')}",
        "image": f"image ({source.get('space', 'pixels')})",
    }
    named = f"; text encoder: {manifest.text_encoder['name']}" if manifest.text_encoder else ""
    console.print(f"  source: {what.get(kind, kind)}; target: {manifest.latent['kind']} "
                  f"{list(manifest.latent_shape)}{named}")
    shapes = manifest.extra.get("feature_shapes", {})
    stored = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    console.print(f"  features stored: {stored or 'none (made from the png at train time)'}")
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
