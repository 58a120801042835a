"""`crossflow upscale`: low-res images -> upscaled by a super-resolution model's factor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossflow_cli.common import (
    BatchOption,
    DeviceOption,
    ModelOption,
    SeedOption,
    StepsOption,
    console,
    user_errors,
)
from crossflow_cli.generate_cmd import _settings, load_model


@user_errors
def upscale_command(
    inputs: Annotated[list[Path], typer.Argument(help="Low-res images, or folders of them.")],
    model: ModelOption = Path("run"),
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: STEM.png per input + upscale.json.")
    ] = Path("upscaled"),
    steps: StepsOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
) -> None:
    """Upscale images by the model's factor (any size the network allows), batched and seeded."""
    from crossflow_core.upscale import upscale_files

    pipe = load_model(model, device, kind="upsampled")
    settings = _settings(pipe, steps=steps, seed=seed, batch_size=batch_size)
    with console.status("upscaling"):
        written = upscale_files(pipe, list(inputs), out, settings)
    console.print(f"wrote {len(written)} upscaled images to {out}")
