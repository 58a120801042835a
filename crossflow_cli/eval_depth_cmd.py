"""`crossflow eval depth`: AbsRel / delta1 / RMSE of a depth model (or the mean-depth baseline), raw and
after least-squares scale-and-shift alignment (Marigold's protocol).

EXAMPLES
  crossflow eval depth --model runs/depth --shapes 256
  crossflow eval depth --model runs/depth --data nyu/test --max-depth 10 --json --out nyu.json
  crossflow eval depth --mean-of data/depth_shapes --shapes 256
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossflow_cli.common import (
    DeviceOption,
    JsonOption,
    ResultsOutOption,
    SeedOption,
    StepsOption,
    WorldSeedOption,
    err_console,
    user_errors,
)
from crossflow_cli.eval_common import emit

DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data", help="References: a folder of images + NAME.depth.png/.npy, or a prepared dataset."
    ),
]
ShapesOption = Annotated[
    int | None, typer.Option("--shapes", help="References: this many shapes world test (held-out) images.")
]
MeanOfOption = Annotated[
    Path | None,
    typer.Option(
        "--mean-of", help="Baseline instead of --model: the per-pixel mean depth of this prepared set."
    ),
]
MinDepthOption = Annotated[
    float | None, typer.Option(help="Valid gt > this (m); default the model's min_depth.")
]
MaxDepthOption = Annotated[
    float | None, typer.Option(help="Valid gt < this (m); default the model's max_depth.")
]
DepthScaleOption = Annotated[
    float | None, typer.Option("--depth-scale", help="Units per metre of NAME.depth.png (default 1000 = mm).")
]
ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="Depth run (RUN or RUN/model).")]


@user_errors
def eval_depth_command(
    model: ModelOpt = None,
    data: DataOption = None,
    shapes: ShapesOption = None,
    mean_of: MeanOfOption = None,
    min_depth: MinDepthOption = None,
    max_depth: MaxDepthOption = None,
    depth_scale: DepthScaleOption = None,
    world_seed: WorldSeedOption = None,
    steps: StepsOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = None,
    json_out: JsonOption = False,
    out: ResultsOutOption = None,
) -> None:
    """Depth metrics, raw (metric) and scale-and-shift aligned, of a model or the mean-depth baseline."""
    from crossflow_core.errors import CrossflowError
    from crossflow_core.eval.depth_eval import evaluate_depth

    if (model is None) == (mean_of is None):
        raise CrossflowError("pass --model RUN (a depth model) or --mean-of DATA (the mean-depth baseline)")
    if (data is None) == (shapes is None):
        raise CrossflowError(
            "pass --data FOLDER (images + depth sidecars, or a prepared dataset) or --shapes N"
        )
    with err_console.status("predicting and scoring depth"):
        result = evaluate_depth(
            model,
            mean_of,
            data,
            shapes,
            depth_range=(min_depth, max_depth),
            depth_scale=depth_scale,
            world_seed=world_seed,
            settings={"steps": steps, "seed": seed},
            device=device,
        )
    what = str(model) if model is not None else f"mean depth of {mean_of}"
    emit(result.results, json_out, out, title=f"depth: {what} on {len(result.refs)} images (raw | _aligned)")
