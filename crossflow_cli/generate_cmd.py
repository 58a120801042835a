"""`crossflow sample`, `crossflow arith`, `crossflow interp`: images from a trained text -> image model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from crossflow_cli.common import (
    BatchOption,
    CfgOption,
    DeviceOption,
    ModelOption,
    OutOption,
    SeedOption,
    SolverOption,
    StepsOption,
    TemperatureOption,
    console,
    user_errors,
)
from crossflow_core.errors import CrossflowError
from crossflow_core.outputs import save_outputs, slug


def load_model(model: Path, device: str | None, kind: str | None = "text"):
    from crossflow_core.pipeline import load_pipeline

    with console.status("loading model"):
        pipe = load_pipeline(model, device)
    if kind is not None:
        pipe.require_source(kind, "this command")
    return pipe


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    items = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise CrossflowError(f"prompts file {str(prompts_file)!r} does not exist")
        items += [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    if not items:
        raise CrossflowError('no prompts: pass them as arguments ("a red circle") or --prompts FILE')
    if any(not p.strip() for p in items):
        raise CrossflowError("a prompt is empty: every prompt needs some text")
    return items


def _settings(pipe, **values):
    from crossflow_core.recipe import RecipeError

    try:
        return pipe.defaults.with_overrides(**values)
    except RecipeError as exc:
        # the option names, not the recipe keys (sample.batch_size -> --batch-size); values untouched
        message = re.sub(r"\bsample\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(exc))
        raise CrossflowError(message) from None


@user_errors
def sample_command(
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts, each quoted.")] = None,
    model: ModelOption = Path("run"),
    out: OutOption = Path("samples"),
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts", help="A file, one prompt per line.")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Images per prompt.")] = 1,
    steps: StepsOption = None,
    solver: SolverOption = None,
    cfg_scale: CfgOption = None,
    temperature: TemperatureOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
) -> None:
    items = read_prompts(prompts or [], prompts_file)
    if n < 1:
        raise CrossflowError(f"--n must be at least 1, got {n}")
    pipe = load_model(model, device)
    settings = _settings(
        pipe,
        steps=steps,
        solver=solver,
        cfg_scale=cfg_scale,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
    )
    expanded = [p for p in items for _ in range(n)]
    with console.status(f"sampling {len(expanded)} images ({pipe.nfe(settings)} NFE each)"):
        images = pipe.generate(expanded, settings)
    names = [f"{i:04d}_{slug(p)}.png" for i, p in enumerate(expanded)]
    record = {
        "model": str(model),
        "settings": settings.settings(),
        "nfe": pipe.nfe(settings),
        "samples": [
            {"file": f, "prompt": p, "seed": seed + i} for i, (f, p) in enumerate(zip(names, expanded))
        ],
    }
    save_outputs(images, out, names, record, "samples.json", nrow=n if n > 1 else min(8, len(expanded)))
    console.print(f"wrote {len(expanded)} images and grid.png to {out}")


_START_HELP = (
    "Where the ODE starts. standardized: the mix of the prompts' VE means mu, rescaled "
    "per sample to the mean and std the model's own z0 = mu + sigma*eps have for these prompts "
    "(the training distribution; for a unit-std VE this is the official demo's standardisation). "
    "sample: the mix rescaled to the prompts' mu statistics plus the VE's sigma*eps drawn with "
    "--seed, times --temperature (one prompt alone: its z0 in `crossflow sample --seed`). "
    "mu: the raw mix of means (off the training distribution)."
)
StartOption = Annotated[str, typer.Option("--start", help=_START_HELP)]


def _check_start_option(start: str) -> None:
    """One line naming --start for an unknown start mode (before any model is loaded)."""
    from crossflow_core.arith import START_MODES

    if start not in START_MODES:
        raise CrossflowError(f"--start: invalid choice {start!r}; expected one of: {', '.join(START_MODES)}")


StartSeedOption = Annotated[int, typer.Option(help="Seed of eps for --start sample (shared by every image).")]


@user_errors
def arith_command(
    expression: Annotated[
        str, typer.Argument(help='e.g. "dog + hat - cat" or \'0.5*"a red circle" + "blue"\'.')
    ],
    model: ModelOption = Path("run"),
    out: OutOption = Path("arith"),
    start: StartOption = "standardized",
    seed: StartSeedOption = 0,
    steps: StepsOption = None,
    solver: SolverOption = None,
    cfg_scale: CfgOption = None,
    temperature: TemperatureOption = None,
    device: DeviceOption = None,
) -> None:
    """Render each term, then the expression, each from the start --start gives."""
    from crossflow_core.arith import expression_rows, parse_expression, start_latents

    expr = parse_expression(expression)  # malformed: one line with a column, exit 2
    _check_start_option(start)
    pipe = load_model(model, device)
    settings = _settings(
        pipe, steps=steps, solver=solver, cfg_scale=cfg_scale, temperature=temperature, seed=seed
    )
    unique, rows = expression_rows(expr)  # one row per term, then the expression
    enc = pipe.encode(unique)
    images = pipe.generate_from_z0(
        start_latents(rows, enc.mu, enc.logvar, start, settings.seed, settings.temperature), settings
    )
    texts = [term.text for term in expr.terms]
    record = {
        "expression": expression,
        "terms": [{"text": t.text, "weight": t.weight} for t in expr.terms],
        "start": start,
        "settings": settings.settings(),
    }
    save_outputs(
        images,
        out,
        [f"term_{i}_{slug(t)}.png" for i, t in enumerate(texts)] + ["result.png"],
        record,
        "arith.json",
        grid="terms_and_result.png",
        nrow=len(images),
    )
    console.print(
        f"wrote result.png and terms_and_result.png (terms: {', '.join(texts)}, then result) to {out}"
    )


@user_errors
def interp_command(
    prompt_a: Annotated[str, typer.Argument(help="Start prompt.")],
    prompt_b: Annotated[str, typer.Argument(help="End prompt.")],
    model: ModelOption = Path("run"),
    out: OutOption = Path("interp"),
    frames: Annotated[int, typer.Option(help="Number of frames, ends included.")] = 8,
    start: StartOption = "standardized",
    seed: StartSeedOption = 0,
    steps: StepsOption = None,
    solver: SolverOption = None,
    cfg_scale: CfgOption = None,
    temperature: TemperatureOption = None,
    device: DeviceOption = None,
) -> None:
    """Frames along the line from prompt A's mu to prompt B's, each from the start --start gives."""
    from crossflow_core.arith import interpolation_rows, start_latents

    if frames < 2:
        raise CrossflowError(f"--frames must be at least 2, got {frames}")
    if not prompt_a.strip() or not prompt_b.strip():
        raise CrossflowError("both prompts need some text")
    _check_start_option(start)
    pipe = load_model(model, device)
    settings = _settings(
        pipe, steps=steps, solver=solver, cfg_scale=cfg_scale, temperature=temperature, seed=seed
    )
    enc = pipe.encode([prompt_a, prompt_b])
    rows = interpolation_rows(frames)
    images = pipe.generate_from_z0(
        start_latents(rows, enc.mu, enc.logvar, start, settings.seed, settings.temperature), settings
    )
    record = {
        "prompts": [prompt_a, prompt_b],
        "frames": frames,
        "start": start,
        "settings": settings.settings(),
    }
    save_outputs(
        images,
        out,
        [f"frame_{i:03d}.png" for i in range(frames)],
        record,
        "interp.json",
        grid="strip.png",
        nrow=frames,
    )
    console.print(f"wrote {frames} frames and strip.png to {out}")
