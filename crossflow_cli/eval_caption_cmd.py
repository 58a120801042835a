"""`crossflow eval caption --model RUN --data FOLDER|shapes`: COCO caption metrics (BLEU-1..4,
METEOR, ROUGE-L, CIDEr; SPICE unavailable offline) of a captioning model and of two baselines
(the most frequent training caption; the nearest training image's caption in 16x16 pixels); on
the shapes world also the scene truth of every caption (its colours, shapes, count and relation
against the rendered scene)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from crossflow_cli.common import (
    CfgOption,
    DeviceOption,
    ImageBatchOption,
    JsonOption,
    ResultsOutOption,
    SeedOption,
    StepsOption,
    console,
    user_errors,
)
from crossflow_cli.eval_common import stage_progress

EXAMPLES = [
    "crossflow eval caption --model runs/caption_shapes --data shapes",
    "crossflow eval caption --model runs/caption_coco --data coco/val2014 "
    "--references coco/karpathy_test.json",
]


@user_errors
def eval_caption_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="Captioning run (RUN or RUN/model).")],
    data: Annotated[
        str, typer.Option("--data", help="'shapes' (the shapes world) or a folder of images with captions.")
    ],
    references: Annotated[
        Path | None,
        typer.Option(help="Reference captions (.txt sidecars, captions.jsonl, COCO JSON); default: --data."),
    ] = None,
    split: Annotated[str, typer.Option(help="shapes: 'test' (held-out) or 'train'.")] = "test",
    count: Annotated[int, typer.Option(help="shapes: images to caption.")] = 500,
    train_data: Annotated[
        Path | None, typer.Option("--train-data", help="Prepared training dataset (for the baselines).")
    ] = None,
    baselines: Annotated[
        bool | None, typer.Option("--baselines/--no-baselines", help="Default: when training captions exist.")
    ] = None,
    captions_out: Annotated[
        Path | None, typer.Option("--captions", help="Also write the model's captions (JSON lines) here.")
    ] = None,
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    seed: SeedOption = 0,
    batch_size: ImageBatchOption = 64,
    device: DeviceOption = None,
    out: ResultsOutOption = None,
    json_out: JsonOption = False,
) -> None:
    """Caption the images, score them (and the baselines) against their references."""
    from crossflow_core.errors import CrossflowError
    from crossflow_core.eval.caption_eval import CaptionEvalRequest, run_caption_eval, write_predictions
    from crossflow_core.eval.report import results_to_json, write_results

    if split not in ("test", "train"):
        raise CrossflowError(f"--split must be test or train, got {split!r}")
    sample = {"steps": steps, "cfg_scale": cfg_scale, "seed": seed, "batch_size": batch_size}
    request = CaptionEvalRequest(model, data, references, split, count, train_data, baselines, device, sample)
    with stage_progress(json_out) as progress:
        report = run_caption_eval(request, progress)
    if captions_out is not None:
        write_predictions(report, captions_out)
    if out is not None:
        write_results(report.results, out)
    if json_out:
        typer.echo(results_to_json(report.results))
        return
    print_table(report.results, data, out)


def print_table(results, data: str, out: Path | None) -> None:
    """One row per metric, one column per method (x100 for the caption metrics, as papers print)."""
    methods = list(dict.fromkeys(r.settings["method"] for r in results))
    values = {(r.settings["method"], r.metric): r.value for r in results}
    table = Table(title=f"captioning: {data} ({results[0].n} images)", title_justify="left")
    table.add_column("metric")
    for m in methods:
        table.add_column(m, justify="right")
    for metric in dict.fromkeys(r.metric for r in results):
        scale = 100.0 if not metric.startswith("scene_") else 1.0
        row = [values.get((m, metric)) for m in methods]
        table.add_row(metric, *("n/a" if v is None else f"{v * scale:.2f}" for v in row))
    console.print(table)
    first = results[0].settings
    notes = [f"tokenizer {first.get('tokenizer')}", "BLEU/METEOR/ROUGE-L/CIDEr x100; scene_* fractions"]
    for r in results:
        if r.settings.get("method") == methods[0] and "unavailable" in r.settings:
            notes.append(f"{r.metric} unavailable: {r.settings['unavailable']}")
    if out is not None:
        notes.append(f"results written to {out}")
    console.print("; ".join(notes), highlight=False)
