"""Super-resolution outputs to score: a model's, or the bicubic baseline's, for a folder of
high-res references. The references are degraded exactly as in training (the SR codec's
anti-aliased bicubic downsampling, 8-bit PNGs), then upscaled; `evaluate_sr_folders` scores them.
"""

from __future__ import annotations

from pathlib import Path

from crossflow_core.eval.sr_metrics import bicubic_baseline_folder, degrade_folder
from crossflow_core.pipeline import load_pipeline
from crossflow_core.recipe import SampleConfig
from crossflow_core.upscale import factor_of, upscale_files


def model_outputs(
    model: str | Path,
    references: Path,
    work_dir: Path,
    device: str | None = None,
    settings: dict | None = None,
) -> tuple[Path, dict]:
    """Write WORK/lowres (degraded references) and WORK/upscaled (the model's outputs);
    returns (upscaled folder, the settings used)."""
    pipe = load_pipeline(model, device)
    factor = factor_of(pipe)
    sample: SampleConfig = pipe.defaults.with_overrides(**(settings or {}))
    lowres = work_dir / "lowres"
    degrade_folder(references, factor, lowres)
    upscale_files(pipe, [lowres], work_dir / "upscaled", sample)
    return work_dir / "upscaled", {
        "model": str(model),
        "factor": factor,
        **sample.settings(),
        "nfe": pipe.nfe(sample),
    }


def bicubic_outputs(references: Path, factor: int, work_dir: Path) -> tuple[Path, dict]:
    """WORK/lowres and WORK/bicubic: the bicubic baseline for the same degraded inputs."""
    lowres = work_dir / "lowres"
    degrade_folder(references, factor, lowres)
    bicubic_baseline_folder(lowres, factor, work_dir / "bicubic")
    return work_dir / "bicubic", {"method": "bicubic", "factor": factor}
