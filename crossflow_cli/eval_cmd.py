"""`crossflow eval ...`: the evaluation sub-app (clip, geneval, shapes, fd-shapes, fid, weights).

Every metric command prints a table (or, with `--json`, only the results JSON on stdout) and
writes the JSON to `--out FILE` when given; `geneval --out DIR` is the image folder instead (its
scores, when `--score` runs the official scorer, go to DIR/scores.json). Generated images are
seeded so that sample k of prompt i uses seed `--seed + i * n + k` (n images per prompt).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from crossflow_cli.common import console, err_console, user_errors
from crossflow_cli.eval_fid_cmd import register as register_fid
from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.eval import generate as gen

eval_app = typer.Typer(
    help="Evaluate models and images: clip, geneval, shapes, fd-shapes, fid.", no_args_is_help=True
)

# Options shared by the commands below, defined once.
ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="Training run (RUN or RUN/model) to generate from.")
]
StepsOption = Annotated[int | None, typer.Option(help="ODE steps (default: the recipe's sample.steps).")]
CfgOption = Annotated[
    float | None, typer.Option("--cfg-scale", help="Guidance scale (default: the recipe's); 1 = none.")
]
SolverOption = Annotated[str | None, typer.Option(help="euler | heun (default: the recipe's).")]
SeedOption = Annotated[int, typer.Option(help="Seed; sample k of prompt i uses seed + i * n + k.")]
BatchOption = Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print only the results JSON.")]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Also write the results JSON here.")]
SaveImagesOption = Annotated[
    Path | None, typer.Option("--save-images", help="Also save the generated images in this folder.")
]
WorldSeedOption = Annotated[
    int | None,
    typer.Option("--world-seed", help="Shapes world seed (default: the recipe's data.seed, or 0)."),
]


@contextmanager
def _progress(what: str, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields progress(done, total)."""
    bar = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=quiet,
    )
    with bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _emit(results: list, json_out: bool, out: Path | None, title: str = "") -> None:
    """Write results to `out` (if given) and print them: JSON only, or a table."""
    from crossflow_core.eval.report import results_to_json, write_results

    if out is not None:
        write_results(results, out)
    if json_out:
        typer.echo(results_to_json(results))
        return
    if title:
        console.print(f"[bold]{title}[/]", highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    for r in results:
        table.add_row(r.metric, "n/a" if r.value is None else f"{r.value:.4f}", str(r.n))
    console.print(table)
    shown = ("steps", "solver", "cfg_scale", "nfe", "n_samples", "clip", "weights_sha256")
    settings = results[0].settings if results else {}
    details = [
        f"{k} {str(settings[k])[: 16 if k.endswith('sha256') else None]}" for k in shown if k in settings
    ]
    if details:
        console.print("; ".join(details), highlight=False)
    if out is not None:
        console.print(f"results written to {out}", highlight=False)


def _stamp(results: list, model: str | None, extra: dict[str, Any]) -> list:
    """Results with the model, the git commit and `extra` settings added."""
    from crossflow_core.eval.report import git_commit

    commit = git_commit()
    return [
        dataclasses.replace(r, model=model or r.model, git_commit=commit, settings={**r.settings, **extra})
        for r in results
    ]


def _load(model: str, device: str | None) -> tuple[Any, str]:
    with err_console.status("loading model"):
        return gen.load_pipeline(model, device), gen.model_name(model)


def _run_info(model: str, settings: Any, n_samples: int) -> dict[str, Any]:
    """What determines a resumable image folder's content (the batch size does not)."""
    info = {k: v for k, v in dataclasses.asdict(settings).items() if k != "batch_size"}
    return {"model": model, **info, "n_samples": n_samples}


def _world_seed(pipe: Any, given: int | None) -> int:
    if given is not None:
        return given
    data = getattr(getattr(getattr(pipe, "config", None), "recipe", None), "data", None)
    return int(getattr(data, "seed", 0) or 0)


# ----------------------------------------------------------------------------- clip


@user_errors
def clip_command(
    model: ModelOption = None,
    prompts: Annotated[
        Path | None, typer.Option(help="Prompts: text (one per line) or a GenEval .jsonl.")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="Score these images instead of generating: a GenEval layout (prompts from its "
            "metadata), or a folder whose i-th image in natural name order pairs with prompt i."
        ),
    ] = None,
    clip: Annotated[
        str, typer.Option(help="CLIP model: hub id (downloaded to the HF cache) or a local folder.")
    ] = "openai/clip-vit-base-patch32",
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    solver: SolverOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
    save_images: SaveImagesOption = None,
    out: OutOption = None,
    json_out: JsonOption = False,
) -> None:
    """CLIP score of images and their prompts: raw mean cosine and torchmetrics' 100x score."""
    from crossflow_core.eval import geneval
    from crossflow_core.eval.clip_score import clip_cosines, load_clip

    if (model is None) == (images is None):
        raise CrossflowError("pass either --model RUN (generate) or --images DIR (score saved images)")
    layout = images is not None and geneval.is_layout(images)
    if layout and prompts is not None:
        raise CrossflowError(f"{images} is a GenEval layout with its own prompts; drop --prompts")
    if not layout and prompts is None:
        raise CrossflowError("--prompts FILE is needed: one prompt per line, or a GenEval .jsonl")
    texts = [] if layout else gen.read_prompt_file(prompts)
    scorer = load_clip(clip, device)  # before generating: fail fast when the CLIP model is missing
    name, extra = None, {"clip": clip}
    if images is not None:
        extra["images"] = str(images)
        if layout:
            pixels, records = geneval.layout_images(geneval.read_layout(images))
            texts, extra["pairing"] = [r["prompt"] for r in records], "GenEval layout metadata"
        else:
            files = gen.list_images(images)
            if len(files) != len(texts):
                raise CrossflowError(
                    f"{len(files)} images in {images} but {len(texts)} prompts; image i pairs with prompt i"
                )
            pixels = [gen.read_image(f) for f in files]
            extra["pairing"] = "image i (natural name order) <-> prompt i"
    else:
        pipe, name = _load(model, device)
        settings = gen.sample_settings(pipe, steps, cfg_scale, seed, batch_size, solver)
        with _progress("generating", json_out) as progress:
            pixels = gen.to_uint8(gen.generate_images(pipe, texts, settings, 1, progress))
        extra.update(gen.settings_record(settings, pipe))
        if save_images is not None:
            gen.save_images(pixels, save_images)
            (save_images / "prompts.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    with err_console.status("CLIP features"):
        scores = clip_cosines(scorer, pixels, texts, batch_size=batch_size)
    from crossflow_core.eval.report import MetricResult

    results = [
        MetricResult("clip_cosine", scores.clip_cosine, scores.n),
        MetricResult("clip_score_x100", scores.clip_score_x100, scores.n, {"convention": "torchmetrics"}),
    ]
    _emit(_stamp(results, name, extra), json_out, out, f"CLIP score ({clip})")


# ----------------------------------------------------------------------------- geneval


@user_errors
def geneval_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Training run (RUN or RUN/model).")],
    metadata: Annotated[Path, typer.Option(help="GenEval evaluation_metadata.jsonl (one JSON per line).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Image folder in GenEval's layout (resumable).")],
    n_samples: Annotated[int, typer.Option("--n-samples", help="Images per prompt.")] = 4,
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    solver: SolverOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
    grid: Annotated[bool, typer.Option("--grid/--no-grid", help="Also write grid.png per prompt.")] = True,
    score: Annotated[
        bool,
        typer.Option(
            "--score",
            help="Then run the official scorer (needs mmdet 2.x, its repo and weights, a CUDA GPU).",
        ),
    ] = False,
    geneval_repo: Annotated[
        Path | None, typer.Option(help="With --score: a clone of github.com/djghosh13/geneval.")
    ] = None,
    detector: Annotated[
        Path | None, typer.Option(help="With --score: the folder of its Mask2Former weights.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Generate GenEval images (OUT/<i:05d>/samples/<k:04d>.png + metadata.jsonl); score optionally.

    Without --score the command stops after generation (exit 0) and says how to score.
    """
    from crossflow_core.eval import geneval

    records = geneval.read_metadata(metadata)
    if score:
        missing = geneval.scorer_missing()
        if missing is not None:
            raise MissingResourceError(missing)
        if geneval_repo is None or detector is None:
            raise CrossflowError("--score needs --geneval-repo DIR (the official clone) and --detector DIR")
    pipe, name = _load(model, device)
    settings = gen.sample_settings(pipe, steps, cfg_scale, seed, batch_size, solver)
    with _progress("generating", json_out) as progress:
        run = _run_info(name, settings, n_samples)
        summary = geneval.generate_geneval(pipe, records, out, settings, n_samples, grid, progress, run)
    err_console.print(
        f"{summary.written} prompt folders written, {summary.skipped} already complete, in {out}",
        highlight=False,
    )
    if not score:
        missing = geneval.scorer_missing()
        why = "the scorer is not installed: " + geneval.SCORER_HINT if missing else "the scorer is installed"
        err_console.print(
            f"note: images only; {why}; score with --score --geneval-repo DIR --detector DIR, or "
            f"python evaluation/evaluate_images.py {out} --outfile {out}/results.jsonl --model-path DIR",
            highlight=False,
            soft_wrap=True,
        )
        if json_out:
            typer.echo(json.dumps({"results": []}))
        return
    with err_console.status("GenEval scorer (official)"):
        result_file = geneval.run_official_scorer(out, geneval_repo, detector, out / "results.jsonl")
    extra = {**gen.settings_record(settings, pipe), "n_samples": n_samples, "metadata": str(metadata)}
    results = geneval.summarize_results(result_file, extra, name)
    _emit(_stamp(results, name, {}), json_out, out / "scores.json", "GenEval (official scorer)")


@user_errors
def shapes_metadata_command(
    path: Annotated[Path, typer.Argument(help="Where to write the GenEval-format jsonl.")],
    per_category: Annotated[int, typer.Option("--per-category", help="Prompts per category.")] = 16,
    world_seed: Annotated[int, typer.Option("--world-seed", help="Shapes world seed.")] = 0,
) -> None:
    """Write the shapes world's held-out test prompts as a GenEval evaluation_metadata.jsonl."""
    from crossflow_core.data.shapes import ShapesWorld
    from crossflow_core.eval.geneval import write_metadata

    if per_category < 1:
        raise CrossflowError(f"--per-category must be >= 1, got {per_category}")
    specs = ShapesWorld(seed=world_seed).test_prompts(per_category)
    write_metadata([s.to_geneval() for s in specs], path)
    console.print(f"wrote {len(specs)} prompts to {path}", highlight=False)


# ----------------------------------------------------------------------------- shapes


@user_errors
def shapes_command(
    model: ModelOption = None,
    images: Annotated[
        Path | None, typer.Option(help="Score a GenEval-layout folder of shapes prompts instead.")
    ] = None,
    per_category: Annotated[int, typer.Option("--per-category", help="Test prompts per category.")] = 16,
    n_samples: Annotated[int, typer.Option("--n-samples", help="Images per prompt.")] = 1,
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    solver: SolverOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
    world_seed: WorldSeedOption = None,
    save_images: Annotated[
        Path | None, typer.Option("--save-images", help="Save the images in GenEval's layout here.")
    ] = None,
    out: OutOption = None,
    json_out: JsonOption = False,
) -> None:
    """GenEval-style accuracy on the shapes world's held-out test prompts (no downloads)."""
    from crossflow_core.data.shapes import PromptSpec, ShapesWorld
    from crossflow_core.eval import geneval
    from crossflow_core.eval.shapes_checker import evaluate

    if (model is None) == (images is None):
        raise CrossflowError("pass either --model RUN (generate) or --images DIR (a GenEval layout)")
    name, extra = None, {}
    if images is not None:
        pixels, records = geneval.layout_images(geneval.read_layout(images))
        specs = [PromptSpec.from_geneval(r) for r in records]
        extra["images"] = str(images)
    else:
        if per_category < 1 or n_samples < 1:
            raise CrossflowError("--per-category and --n-samples must be >= 1")
        pipe, name = _load(model, device)
        settings = gen.sample_settings(pipe, steps, cfg_scale, seed, batch_size, solver)
        wseed = _world_seed(pipe, world_seed)
        prompt_specs = ShapesWorld(image_size=pipe.image_size, seed=wseed).test_prompts(per_category)
        prompts = [s.prompt for s in prompt_specs]
        with _progress("generating", json_out) as progress:
            if save_images is not None:
                lines = [json.dumps(s.to_geneval()) for s in prompt_specs]
                run = _run_info(name, settings, n_samples)
                geneval.generate_layout(
                    pipe, lines, save_images, settings, n_samples, True, progress, run=run
                )
                pixels = geneval.layout_images(geneval.read_layout(save_images))[0]
                if len(pixels) != len(prompts) * n_samples:
                    raise CrossflowError(
                        f"{save_images} holds other images; pass an empty --save-images folder"
                    )
            else:
                pixels = list(gen.to_uint8(gen.generate_images(pipe, prompts, settings, n_samples, progress)))
        specs = [s for s in prompt_specs for _ in range(n_samples)]
        extra.update(gen.settings_record(settings, pipe))
        extra.update({"n_samples": n_samples, "per_category": per_category, "world_seed": wseed})
    with err_console.status("scoring"):
        report = evaluate(pixels, specs)
    _emit(
        _stamp(report.to_metric_results(name), name, extra), json_out, out, "shapes (held-out test prompts)"
    )


# ----------------------------------------------------------------------------- fd-shapes


@user_errors
def fd_shapes_command(
    a: Annotated[
        str | None,
        typer.Argument(help="Evaluated images: a folder, a GenEval layout, or shapes:train / shapes:test."),
    ] = None,
    b: Annotated[
        str | None, typer.Argument(help="Reference images (default with --model: shapes:test).")
    ] = None,
    model: ModelOption = None,
    n: Annotated[int, typer.Option("--n", help="Images for shapes:SPLIT sides and for --model.")] = 2000,
    image_size: Annotated[int, typer.Option(help="Render size of shapes:SPLIT sides (no --model).")] = 32,
    weights: Annotated[Path | None, typer.Option(help="Feature network file (default: shipped).")] = None,
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    solver: SolverOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
    world_seed: WorldSeedOption = None,
    save_images: SaveImagesOption = None,
    out: OutOption = None,
    json_out: JsonOption = False,
) -> None:
    """FD-shapes: Fréchet distance in a small shapes-trained CNN's features (not FID)."""
    from crossflow_core.data.shapes import ShapesWorld
    from crossflow_core.eval import fd_shapes

    if n < 2:
        raise CrossflowError(f"--n must be >= 2, got {n}")
    fnet = fd_shapes.load_feature_net(weights)
    name, extra = None, {}
    if model is not None:
        if a is not None and b is not None:
            raise CrossflowError("with --model, pass at most one image source (the reference B)")
        ref = a or b or "shapes:test"
        pipe, name = _load(model, device)
        settings = gen.sample_settings(pipe, steps, cfg_scale, seed, batch_size, solver)
        wseed = _world_seed(pipe, world_seed)
        world = ShapesWorld(image_size=pipe.image_size, seed=wseed)
        captions = [world.sample(i, "test").caption for i in range(n)]
        with _progress("generating", json_out) as progress:
            images_a = gen.to_uint8(gen.generate_images(pipe, captions, settings, 1, progress))
        if save_images is not None:
            gen.save_images(images_a, save_images)
        images_b = fd_shapes.load_source(ref, n, pipe.image_size, wseed)
        extra.update(gen.settings_record(settings, pipe))
        extra.update(
            {"source_a": f"{name} on shapes:test captions", "source_b": str(ref), "world_seed": wseed}
        )
    else:
        if a is None or b is None:
            raise CrossflowError(
                "pass two image sources A B (folders or shapes:train / shapes:test), or --model"
            )
        wseed = world_seed or 0
        images_a = fd_shapes.load_source(a, n, image_size, wseed)
        images_b = fd_shapes.load_source(b, n, image_size, wseed)
        extra.update({"source_a": a, "source_b": b, "world_seed": wseed})
    with err_console.status("FD-shapes features"):
        result = fd_shapes.fd_shapes_result(images_a, images_b, fnet, extra, name)
    _emit([result], json_out, out, "FD-shapes (shapes-trained CNN features; not FID)")


eval_app.command("clip", help="CLIP score (raw cosine and torchmetrics' 100x) of images and prompts.")(
    clip_command
)
eval_app.command(
    "geneval",
    help="Generate GenEval images in the official layout, resumably. Without --score it stops after "
    "generating (exit 0) and prints how to run the official scorer.",
)(geneval_command)
eval_app.command("shapes-metadata", help="Write the shapes test prompts as GenEval metadata jsonl.")(
    shapes_metadata_command
)
eval_app.command("shapes", help="GenEval-style accuracy on the shapes world's test prompts.")(shapes_command)
eval_app.command("fd-shapes", help="Fréchet distance in shapes-CNN features (FD-shapes, not FID).")(
    fd_shapes_command
)
register_fid(eval_app)
