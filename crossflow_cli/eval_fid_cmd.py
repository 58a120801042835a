"""`crossflow eval fid A B` (and `register`, which adds it and `eval weights` to a sub-app).

`eval_cmd.py` creates the `eval` sub-app and calls `register(eval_app)`. Generated images reach
`fid` as a folder (written by `crossflow sample` or the eval generation helpers); pass the
sampler's NFE with `--nfe` so it is recorded with the result. With `--model` and `--prompts` the
evaluated images are generated in memory instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from crossflow_cli.common import (
    CfgOption,
    JsonOption,
    OptionalModelOption,
    ResultsOutOption,
    SaveImagesOption,
    SolverOption,
    StepsOption,
    TemperatureOption,
    console,
    user_errors,
)
from crossflow_cli.eval_common import flag_errors, stage_progress
from crossflow_cli.eval_weights_cmd import weights_app, weights_inception_command  # noqa: F401 - re-export
from crossflow_core.errors import CrossflowError
from crossflow_core.eval.inception import MissingWeightsError
from crossflow_core.eval.report import MetricResult, results_to_json, write_results

SourcesArgument = Annotated[
    list[Path],
    typer.Argument(
        help="A B: evaluated and reference images (folders or shard directories); "
        "with --model and --prompts, only the reference B."
    ),
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(help="torch-fidelity Inception weights file (default: the converted one in the cache)."),
]
MetricsOption = Annotated[str, typer.Option(help="Comma-separated: fid, kid, isc.")]
InceptionBatchOption = Annotated[int, typer.Option("--batch-size", help="Images per Inception forward pass.")]
KidSubsetOption = Annotated[int, typer.Option(help="KID subset size (capped at the counts).")]
LayerOption = Annotated[
    str, typer.Option(help="Inception layer for FID/KID: 2048 (standard), 768, 192, 64 (not comparable).")
]
NfeOption = Annotated[int | None, typer.Option(help="Sampler NFE of the evaluated images, recorded.")]
PromptsOption = Annotated[
    Path | None, typer.Option(help="With --model: prompts to generate (one per line, or GenEval .jsonl).")
]
FidSeedOption = Annotated[int, typer.Option(help="With --model: prompt i uses seed + i.")]
CacheOption = Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached features.")]
WORDING = {MissingWeightsError: "{exc} (--weights PATH)"}


@user_errors
def fid_command(
    sources: SourcesArgument,
    weights: WeightsOption = None,
    metrics: MetricsOption = "fid,kid,isc",
    batch_size: InceptionBatchOption = 16,
    kid_subset_size: KidSubsetOption = 1000,
    feature_layer: LayerOption = "2048",
    nfe: NfeOption = None,
    model: OptionalModelOption = None,
    prompts: PromptsOption = None,
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    temperature: TemperatureOption = None,
    solver: SolverOption = None,
    seed: FidSeedOption = 0,
    save_images: SaveImagesOption = None,
    cache: CacheOption = True,
    out: ResultsOutOption = None,
    json_out: JsonOption = False,
) -> None:
    """FID / KID / Inception score of A against B with torch-fidelity's standard Inception."""
    from crossflow_core.eval.generate import SamplingOptions
    from crossflow_core.eval.tasks import FidRequest, evaluate_fid

    wanted = tuple(m.strip() for m in metrics.split(",") if m.strip())
    if not wanted:
        raise CrossflowError("--metrics is empty; pass e.g. --metrics fid,kid")
    generating = model is not None and prompts is not None
    if model is not None and prompts is None and len(sources) == 1:
        raise CrossflowError("--model needs --prompts FILE to generate the evaluated images")
    if len(sources) != (1 if generating else 2):
        want = "only the reference B (the evaluated images are generated)" if generating else "A and B"
        raise CrossflowError(f"got {len(sources)} image sources; pass {want}")
    request = FidRequest(
        b=sources[-1], a=None if generating else sources[0], weights=weights, metrics=wanted,
        batch_size=batch_size, kid_subset_size=kid_subset_size, feature_layer=feature_layer, nfe=nfe,
        cache=cache, model=model, prompts=prompts, save_images=save_images,
        sampling=SamplingOptions(steps, cfg_scale, solver, seed, batch_size=64, temperature=temperature),
    )  # fmt: skip
    with stage_progress(json_out) as progress, flag_errors(WORDING):
        results = evaluate_fid(request, progress)
    if out is not None:
        write_results(results, out)
    if json_out:
        typer.echo(results_to_json(results))
        return
    print_fid_table(results, out)


def print_fid_table(results: list[MetricResult], out: Path | None) -> None:
    """The results as a table titled by the two sources, then one line of settings."""
    s = results[0].settings
    table = Table(title=f"{s['source_a']}  vs  {s['source_b']}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note")
    for r in results:
        value = f"{r.value:.6g}" if r.value is not None else "n/a"
        table.add_row(r.metric, value, str(r.settings.get("unavailable", "")))
    console.print(table)
    console.print(
        f"n = {s['n_a']} vs {s['n_b']}; {s['feature_network']}, layer {s['feature_layer']}; "
        f"resize {s['resize']}; weights sha256 {s['weights_sha256'][:16]}; "
        f"cache {s['cache_a']}/{s['cache_b']}" + (f"; written to {out}" if out is not None else ""),
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add `fid` and `weights` (inception, fd-shapes) to the `eval` sub-app."""
    app.command("fid", help="FID / KID / IS of folder A against folder B (standard Inception, offline).")(
        fid_command
    )
    app.add_typer(weights_app, name="weights")
