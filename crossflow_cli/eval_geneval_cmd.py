"""`crossflow eval geneval` (images in the official layout, scored on request) and
`crossflow eval shapes-metadata` (the shapes world's test prompts as GenEval metadata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crossflow_cli.common import (
    CfgOption,
    DeviceOption,
    ImageBatchOption,
    JsonOption,
    ModelOption,
    NSamplesOption,
    PromptSeedOption,
    SolverOption,
    StepsOption,
    TemperatureOption,
    console,
    err_console,
    user_errors,
)
from crossflow_cli.eval_common import emit, flag_errors, stage_progress
from crossflow_core.eval.geneval import SCORER_HINT, ScorerPathsMissing

MetadataOption = Annotated[Path, typer.Option(help="GenEval evaluation_metadata.jsonl (one JSON per line).")]
LayoutOutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Image folder in GenEval's layout (resumable).")
]
GridOption = Annotated[bool, typer.Option("--grid/--no-grid", help="Also write grid.png per prompt.")]
ScoreOption = Annotated[
    bool,
    typer.Option(
        "--score", help="Then run the official scorer (needs mmdet 2.x, its repo and weights, a CUDA GPU)."
    ),
]
RepoOption = Annotated[
    Path | None, typer.Option(help="With --score: a clone of github.com/djghosh13/geneval.")
]
DetectorOption = Annotated[
    Path | None, typer.Option(help="With --score: the folder of its Mask2Former weights.")
]
WORDING = {ScorerPathsMissing: "--score needs --geneval-repo DIR (the official clone) and --detector DIR"}


@user_errors
def geneval_command(
    model: ModelOption,
    metadata: MetadataOption,
    out: LayoutOutOption,
    n_samples: NSamplesOption = 4,
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    temperature: TemperatureOption = None,
    solver: SolverOption = None,
    seed: PromptSeedOption = 0,
    batch_size: ImageBatchOption = 64,
    device: DeviceOption = None,
    grid: GridOption = True,
    score: ScoreOption = False,
    geneval_repo: RepoOption = None,
    detector: DetectorOption = None,
    json_out: JsonOption = False,
) -> None:
    """Generate GenEval images (OUT/<i:05d>/samples/<k:04d>.png + metadata.jsonl); score optionally.

    Without --score the command stops after generation (exit 0) and says how to score.
    """
    from crossflow_core.eval.generate import SamplingOptions
    from crossflow_core.eval.tasks import GenevalRequest, run_geneval

    sampling = SamplingOptions(steps, cfg_scale, solver, seed, batch_size, device, temperature)
    request = GenevalRequest(
        str(model), metadata, out, n_samples, sampling, grid, score, geneval_repo, detector
    )
    with stage_progress(json_out) as progress, flag_errors(WORDING):
        outcome = run_geneval(request, progress)
    g = outcome.generation
    err_console.print(
        f"{g.written} prompt folders written, {g.skipped} already complete, in {out}", highlight=False
    )
    if outcome.scores_file is not None:
        emit(outcome.results, json_out, outcome.scores_file, "GenEval (official scorer)")
        return
    why = (
        "the scorer is not installed: " + SCORER_HINT if outcome.scorer_missing else "the scorer is installed"
    )
    err_console.print(
        f"note: images only; {why}; score with --score --geneval-repo DIR --detector DIR, or "
        f"python evaluation/evaluate_images.py {out} --outfile {out}/results.jsonl --model-path DIR",
        highlight=False,
        soft_wrap=True,
    )
    if json_out:
        typer.echo(json.dumps({"results": []}))


@user_errors
def shapes_metadata_command(
    path: Annotated[Path, typer.Argument(help="Where to write the GenEval-format jsonl.")],
    per_category: Annotated[int, typer.Option("--per-category", help="Prompts per category.")] = 16,
    world_seed: Annotated[int, typer.Option("--world-seed", help="Shapes world seed.")] = 0,
) -> None:
    """Write the shapes world's held-out test prompts as a GenEval evaluation_metadata.jsonl."""
    from crossflow_core.eval.tasks import write_shapes_metadata

    count = write_shapes_metadata(path, per_category, world_seed)
    console.print(f"wrote {count} prompts to {path}", highlight=False)
