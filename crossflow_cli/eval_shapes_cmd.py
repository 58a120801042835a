"""`crossflow eval shapes`: GenEval-style accuracy on the shapes world's held-out test prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossflow_cli.common import (
    CfgOption,
    DeviceOption,
    ImageBatchOption,
    JsonOption,
    NSamplesOption,
    OptionalModelOption,
    PromptSeedOption,
    ResultsOutOption,
    SolverOption,
    StepsOption,
    TemperatureOption,
    WorldSeedOption,
    user_errors,
)
from crossflow_cli.eval_common import emit, stage_progress
from crossflow_core.errors import CrossflowError

ImagesOption = Annotated[
    Path | None, typer.Option(help="Score a GenEval-layout folder of shapes prompts instead.")
]
PerCategoryOption = Annotated[int, typer.Option("--per-category", help="Test prompts per category.")]
LayoutSaveOption = Annotated[
    Path | None, typer.Option("--save-images", help="Save the images in GenEval's layout here.")
]


@user_errors
def shapes_command(
    model: OptionalModelOption = None,
    images: ImagesOption = None,
    per_category: PerCategoryOption = 16,
    n_samples: NSamplesOption = 1,
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    temperature: TemperatureOption = None,
    solver: SolverOption = None,
    seed: PromptSeedOption = 0,
    batch_size: ImageBatchOption = 64,
    device: DeviceOption = None,
    world_seed: WorldSeedOption = None,
    save_images: LayoutSaveOption = None,
    out: ResultsOutOption = None,
    json_out: JsonOption = False,
) -> None:
    """GenEval-style accuracy on the shapes world's held-out test prompts (no downloads)."""
    from crossflow_core.eval.generate import SamplingOptions
    from crossflow_core.eval.tasks import ShapesRequest, evaluate_shapes

    if (model is None) == (images is None):
        raise CrossflowError("pass either --model RUN (generate) or --images DIR (a GenEval layout)")
    sampling = SamplingOptions(steps, cfg_scale, solver, seed, batch_size, device, temperature)
    request = ShapesRequest(model, images, per_category, n_samples, sampling, world_seed, save_images)
    with stage_progress(json_out) as progress:
        results = evaluate_shapes(request, progress)
    emit(results, json_out, out, "shapes (held-out test prompts)")
