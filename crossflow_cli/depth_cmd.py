"""`crossflow depth`: images -> metric depth maps with a depth model (16-bit PNG + colour preview).

EXAMPLES
  crossflow depth --model runs/depth IMG.png photos/ --out depth_out
  crossflow depth --model runs/depth photos/ --fit --steps 20 --out depth_out
"""

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

InputsArgument = Annotated[list[Path], typer.Argument(help="Images, or folders of them (sidecars skipped).")]
DepthOutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Folder: STEM.depth.png (16-bit) + STEM.preview.png, depth.json.")
]
FitOption = Annotated[
    bool, typer.Option("--fit", help="Resize + centre-crop other sizes to the model's, as prepare does.")
]
DepthScaleOption = Annotated[
    float | None,
    typer.Option("--depth-scale", help="Depth PNG units per metre (default: data.depth_scale; 1000 = mm)."),
]


@user_errors
def depth_command(
    inputs: InputsArgument,
    model: ModelOption = Path("run"),
    out: DepthOutOption = Path("depth"),
    fit: FitOption = False,
    depth_scale: DepthScaleOption = None,
    steps: StepsOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
) -> None:
    """Predict a depth map (metres) per image: 16-bit PNG (millimetres by default) + colour preview."""
    from crossflow_core.depth_predict import depth_files

    pipe = load_model(model, device, kind=None)
    settings = _settings(pipe, steps=steps, seed=seed, batch_size=batch_size)
    with console.status("predicting depth"):
        written = depth_files(pipe, list(inputs), out, settings, fit=fit, depth_scale=depth_scale)
    console.print(f"wrote {len(written) // 2} depth maps (+ previews) to {out}")
