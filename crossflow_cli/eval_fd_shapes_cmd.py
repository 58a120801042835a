"""`crossflow eval fd-shapes`: Fréchet distance in a small shapes-trained CNN's features (not FID)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossflow_cli.common import (
    CfgOption,
    DeviceOption,
    ImageBatchOption,
    JsonOption,
    OptionalModelOption,
    PromptSeedOption,
    ResultsOutOption,
    SaveImagesOption,
    SolverOption,
    StepsOption,
    TemperatureOption,
    WorldSeedOption,
    user_errors,
)
from crossflow_cli.eval_common import emit, stage_progress
from crossflow_core.errors import CrossflowError

SourceA = Annotated[
    str | None,
    typer.Argument(help="Evaluated images: a folder, a GenEval layout, or shapes:train / shapes:test."),
]
SourceB = Annotated[str | None, typer.Argument(help="Reference images (default with --model: shapes:test).")]
CountOption = Annotated[int, typer.Option("--n", help="Images for shapes:SPLIT sides and for --model.")]
SizeOption = Annotated[int, typer.Option(help="Render size of shapes:SPLIT sides (no --model).")]
WeightsOption = Annotated[Path | None, typer.Option(help="Feature network file (default: shipped).")]


@user_errors
def fd_shapes_command(
    a: SourceA = None,
    b: SourceB = None,
    model: OptionalModelOption = None,
    n: CountOption = 2000,
    image_size: SizeOption = 32,
    weights: WeightsOption = None,
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    temperature: TemperatureOption = None,
    solver: SolverOption = None,
    seed: PromptSeedOption = 0,
    batch_size: ImageBatchOption = 64,
    device: DeviceOption = None,
    world_seed: WorldSeedOption = None,
    save_images: SaveImagesOption = None,
    out: ResultsOutOption = None,
    json_out: JsonOption = False,
) -> None:
    """FD-shapes: Fréchet distance in a small shapes-trained CNN's features (not FID)."""
    from crossflow_core.eval.generate import SamplingOptions
    from crossflow_core.eval.tasks import FdShapesRequest, evaluate_fd_shapes

    if model is not None and a is not None and b is not None:
        raise CrossflowError("with --model, pass at most one image source (the reference B)")
    if model is None and (a is None or b is None):
        raise CrossflowError("pass two image sources A B (folders or shapes:train / shapes:test), or --model")
    sampling = SamplingOptions(steps, cfg_scale, solver, seed, batch_size, device, temperature)
    request = FdShapesRequest(a, b, model, n, image_size, weights, sampling, world_seed, save_images)
    with stage_progress(json_out) as progress:
        results = evaluate_fd_shapes(request, progress)
    emit(results, json_out, out, "FD-shapes (shapes-trained CNN features; not FID)")
