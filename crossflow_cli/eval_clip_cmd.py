"""`crossflow eval clip`: CLIP score of a model's images for prompts, or of saved images."""

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
    user_errors,
)
from crossflow_cli.eval_common import emit, flag_errors, stage_progress
from crossflow_core.errors import CrossflowError
from crossflow_core.eval.clip_score import ClipModelMissing
from crossflow_core.eval.tasks import PromptFileNeeded, PromptFileUnused

PromptsOption = Annotated[Path | None, typer.Option(help="Prompts: text (one per line) or a GenEval .jsonl.")]
ImagesOption = Annotated[
    Path | None,
    typer.Option(
        help="Score these images instead of generating: a GenEval layout (prompts from its "
        "metadata), or a folder whose i-th image in natural name order pairs with prompt i."
    ),
]
ClipOption = Annotated[
    str, typer.Option(help="CLIP model: hub id (downloaded to the HF cache) or a local folder.")
]

WORDING = {
    PromptFileNeeded: "--prompts FILE is needed: one prompt per line, or a GenEval .jsonl",
    PromptFileUnused: "{exc}; drop --prompts",
    ClipModelMissing: "{exc}; choose it with --clip",
}


@user_errors
def clip_command(
    model: OptionalModelOption = None,
    prompts: PromptsOption = None,
    images: ImagesOption = None,
    clip: ClipOption = "openai/clip-vit-base-patch32",
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    temperature: TemperatureOption = None,
    solver: SolverOption = None,
    seed: PromptSeedOption = 0,
    batch_size: ImageBatchOption = 64,
    device: DeviceOption = None,
    save_images: SaveImagesOption = None,
    out: ResultsOutOption = None,
    json_out: JsonOption = False,
) -> None:
    """CLIP score of images and their prompts: raw mean cosine and torchmetrics' 100x score."""
    from crossflow_core.eval.generate import SamplingOptions
    from crossflow_core.eval.tasks import ClipRequest, evaluate_clip

    if (model is None) == (images is None):
        raise CrossflowError("pass either --model RUN (generate) or --images DIR (score saved images)")
    sampling = SamplingOptions(steps, cfg_scale, solver, seed, batch_size, device, temperature)
    request = ClipRequest(clip, prompts, images, model, sampling, save_images)
    with stage_progress(json_out) as progress, flag_errors(WORDING):
        results = evaluate_clip(request, progress)
    emit(results, json_out, out, f"CLIP score ({clip})")
