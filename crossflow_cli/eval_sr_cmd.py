"""`crossflow eval sr OUTPUTS REFERENCES`: PSNR / SSIM (RGB) and FID / KID of super-resolved images.

OUTPUTS and REFERENCES are folders paired by file stem (`0007.png` with `0007.jpg`). With
`--model RUN` (or `--bicubic FACTOR`), OUTPUTS is instead a new folder that receives
OUTPUTS/lowres (the references degraded as in training) and the model's (or bicubic) outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from crossflow_cli.common import DeviceOption, SeedOption, StepsOption, console, err_console, user_errors
from crossflow_core.errors import CrossflowError


def ensure_new_folder(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CrossflowError(
            f"{path} exists and is not empty: with --model or --bicubic, OUTPUTS is the "
            "folder the upscaled images are written to; choose a new one"
        )


@user_errors
def eval_sr_command(
    outputs: Annotated[Path, typer.Argument(help="Folder of super-resolved images.")],
    references: Annotated[Path, typer.Argument(help="Folder of high-res references (same file stems).")],
    fid: Annotated[bool, typer.Option("--fid/--no-fid", help="Also FID / KID (standard Inception).")] = True,
    weights: Annotated[
        Path | None, typer.Option(help="torch-fidelity Inception weights file (default: the cached one).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch.")] = 16,
    json_out: Annotated[bool, typer.Option("--json", help="Print only the results JSON.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the results JSON.")] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", help="Upscale the degraded references with this SR run first (into OUTPUTS)."
        ),
    ] = None,
    bicubic: Annotated[
        int | None, typer.Option(help="Score the bicubic baseline of this factor instead.")
    ] = None,
    steps: StepsOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = None,
) -> None:
    """PSNR / SSIM (RGB, per image: mean and std) and FID / KID of SR outputs against references."""
    from crossflow_core.eval.report import results_to_json, write_results
    from crossflow_core.eval.sr_metrics import evaluate_sr_folders
    from crossflow_core.eval.sr_model import bicubic_outputs, model_outputs

    extra = None
    with err_console.status("upscaling and scoring"):
        if model is not None or bicubic is not None:
            ensure_new_folder(outputs)
            outputs, extra = (
                model_outputs(model, references, outputs, device, {"steps": steps, "seed": seed})
                if model is not None
                else bicubic_outputs(references, bicubic, outputs)
            )
        results = evaluate_sr_folders(
            outputs, references, fid, weights=weights, batch_size=batch_size, extra_settings=extra
        )
    if out is not None:
        write_results(results, out)
    if json_out:
        typer.echo(results_to_json(results))
        return
    print_table(results, outputs, references, fid, out)


def print_table(results, outputs: Path, references: Path, fid: bool, out: Path | None) -> None:
    """PSNR / SSIM (mean ± std), FID / KID, and how they were computed."""
    values = {r.metric: r.value for r in results}

    def pm(metric: str, digits: int) -> str:
        mean, std = values[f"{metric}_mean"], values[f"{metric}_std"]
        return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")

    table = Table(title=f"{outputs}  vs  {references}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("PSNR (dB, RGB)", pm("psnr", 2))
    table.add_row("SSIM (RGB)", pm("ssim", 4))
    if fid:
        table.add_row("FID", f"{values['fid']:.4f}")
        table.add_row("KID", f"{values['kid_mean']:.5f} ± {values['kid_std']:.5f}")
    console.print(table)
    s = results[0].settings
    note = f"n = {s['n_pairs']} pairs ({', '.join(s['sizes'])}); mean ± std over images; {s['ssim']}"
    if fid:
        note += f"; Inception weights sha256 {results[-1].settings['weights_sha256'][:16]}"
    console.print(note + (f"; written to {out}" if out is not None else ""), highlight=False)
