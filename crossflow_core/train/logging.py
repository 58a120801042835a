"""What a run leaves to look at: log.csv, loss.png, TensorBoard events, sample grids."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from crossflow_core.encoders.latents import LatentSpace
from crossflow_core.encoders.text import TextEncoder
from crossflow_core.recipe import Recipe
from crossflow_core.sample import SampleSettings, sample_latents, seeded_noise

COLUMNS = ["step", "phase", "total", "fm", "enc", "kl", "lr", "grad_norm"]


class RunLogger:
    """Appends rows to RUN/log.csv (dropping rows past `resume_step` first), draws RUN/loss.png."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int = 0) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.csv_path = self.run_dir / "log.csv"
        self._tb: Any = None
        self._text_encoder: TextEncoder | None = None
        self._prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if not enabled:
            return
        rows = self._read() if self.csv_path.is_file() else []
        kept = [r for r in rows if int(r["step"]) <= resume_step]
        tmp = self.csv_path.with_name(f".log.csv.tmp-{os.getpid()}")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.csv_path)
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
            csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for key in ("total", "fm", "enc", "kl", "lr", "grad_norm"):
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
        tmp = out.with_name(f".loss.tmp-{os.getpid()}.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, out)
        return out

    def _embed(self, recipe: Recipe, prompts: list[str], device: torch.device):
        key = "\n".join(prompts)
        if key not in self._prompt_cache:
            if self._text_encoder is None:
                self._text_encoder = TextEncoder.from_config(recipe.text_encoder, device=device)
            emb = self._text_encoder.encode(prompts)
            self._prompt_cache[key] = (emb.tokens.to(device), emb.mask.to(device))
        return self._prompt_cache[key]

    @torch.inference_mode()
    def sample_grid(
        self, step: int, system: Any, latent_space: LatentSpace, recipe: Recipe, prompts: list[str]
    ):
        """Sample `prompts` with fixed seeds and the EMA weights into RUN/samples/step_<step>.png."""
        device = next(system.parameters()).device
        tokens, mask = self._embed(recipe, prompts, device)
        noise = seeded_noise(system.shapes.latent_shape, list(range(len(prompts)))).to(device)
        z0 = system.ve(tokens, mask, noise=noise).z0
        settings = SampleSettings(
            steps=recipe.sample.steps, solver=recipe.sample.solver, cfg_scale=recipe.sample.cfg_scale
        )
        images = ((latent_space.decode(sample_latents(system.flow, z0, settings)) + 1) / 2).clamp(0, 1)
        out_dir = self.run_dir / "samples"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"step_{step:08d}.png"
        tmp = out_dir / f".tmp-{os.getpid()}.png"
        save_image(images.float().cpu(), tmp, nrow=min(8, len(prompts)), padding=1)
        os.replace(tmp, path)
        (out_dir / "prompts.txt").write_text("\n".join(prompts) + "\n")
        self.plot()
        return path

    def close(self) -> None:
        self.plot()
        if self._tb is not None:
            self._tb.close()
