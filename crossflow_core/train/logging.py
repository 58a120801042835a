"""What a run leaves to look at: log.csv, loss.png, TensorBoard events, sample grids."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from crossflow_core.atomic import atomic_file, write_text
from crossflow_core.codecs import SourceBatch, TargetCodec
from crossflow_core.image_files import save_grid
from crossflow_core.recipe import SampleConfig
from crossflow_core.sample import sample_latents, seeded_noise

COLUMNS = ["step", "phase", "total", "fm", "enc", "kl", "ve_mu_std", "ve_sigma", "lr", "grad_norm"]


class RunLogger:
    """Appends rows to RUN/log.csv (dropping rows past `resume_step` first), draws RUN/loss.png."""

    def __init__(
        self, run_dir: Path, enabled: bool = True, resume_step: int = 0, extra_columns: tuple[str, ...] = ()
    ) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.columns = COLUMNS + list(extra_columns)  # e.g. a trainable target's loss and accuracy
        self.csv_path = self.run_dir / "log.csv"
        self._tb: Any = None
        if not enabled:
            return
        rows = self._read() if self.csv_path.is_file() else []
        kept = [r for r in rows if int(r["step"]) <= resume_step]
        with atomic_file(self.csv_path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is an optional extra
            self._tb = None

    def _read(self) -> list[dict[str, str]]:
        with self.csv_path.open(newline="") as f:
            return list(csv.DictReader(f))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for key in ("total", "fm", "enc", "kl", "ve_mu_std", "ve_sigma", "lr", "grad_norm",
                        *self.columns[len(COLUMNS):]):
                if key in row:
                    self._tb.add_scalar(f"train/{key}", row[key], row["step"])

    def plot(self) -> Path | None:
        """Draw the loss terms of log.csv into RUN/loss.png."""
        if not self.enabled or not self.csv_path.is_file():
            return None
        rows = self._read()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [int(r["step"]) for r in rows]
        for key in ("total", "fm", "enc", "kl"):
            values = [float(r[key]) for r in rows]
            if any(v != 0.0 for v in values):
                ax.plot(steps, values, label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.run_dir / "loss.png"
        with atomic_file(out) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return out

    @torch.inference_mode()
    def sample_grid(self, step: int, system: Any, source: SourceBatch, target: TargetCodec,
                    settings: SampleConfig) -> Path:
        """Sample the fixed grid sources with seeds 0.. and the EMA weights into
        RUN/samples/step_<step>.png, as `crossflow sample` would (z0 = mu + temperature sigma eps)."""
        device = next(system.parameters()).device
        source = source.to(device)
        shape = system.ve.noise_shape(source)
        noise = None
        if shape is not None:
            noise = (float(settings.temperature) * seeded_noise(shape, list(range(len(source))))).to(device)
        enc = system.ve(source, noise=noise)
        images = target.decode(sample_latents(system.flow, enc.z0, settings, enc.cond))
        if not isinstance(images, torch.Tensor):  # e.g. captions: one line per grid source
            path = self.run_dir / "samples" / f"step_{step:08d}.txt"
            write_text(path, "".join(f"{i}\t{text}\n" for i, text in enumerate(images)))
            self.plot()
            return path
        path = self.run_dir / "samples" / f"step_{step:08d}.png"
        save_grid(images.float().cpu(), path, nrow=min(8, len(source)))
        self.plot()
        return path

    def close(self) -> None:
        self.plot()
        if self._tb is not None:
            self._tb.close()
