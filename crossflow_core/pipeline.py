"""One pipeline for every task: source codec -> VE -> flow (ODE, t = 0 -> 1) -> target codec.

It never branches on the task: the source codec turns raw inputs (captions, low-res images ...)
into a `SourceBatch`, the VE gives z0 (and, for the noise + concatenation baseline, `cond`),
the solver integrates the guided velocity, the target codec decodes (images in [0, 1] as a
tensor; captions as a list of strings, decoded by the exported target network the codec is given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from crossflow_core.codecs import SourceCodec, TargetCodec, build_codecs
from crossflow_core.errors import CrossflowError
from crossflow_core.export import ModelIndex, load_exported, resolve_model_dir
from crossflow_core.recipe import TRAINABLE_TARGETS, SampleConfig
from crossflow_core.sample import sample_latents, seeded_noise
from crossflow_core.solvers import nfe
from crossflow_core.ve import VEOutput

__all__ = ["CrossFlowPipeline", "resolve_model_dir"]


class CrossFlowPipeline:
    """A loaded model on one device. `config` is its `ModelIndex` (recipe, shapes, codecs)."""

    def __init__(
        self,
        config: ModelIndex,
        source: SourceCodec,
        ve: torch.nn.Module,
        flow: torch.nn.Module,
        target: TargetCodec,
        device: torch.device,
    ) -> None:
        self.config, self.source, self.target = config, source, target
        self.ve, self.flow, self.device = ve.eval(), flow.eval(), device
        self.image_size = config.image_size

    @classmethod
    def load(cls, model_dir: str | Path, device: str | None = None) -> CrossFlowPipeline:
        """Load RUN or RUN/model; the codecs come from its index (the LM / VAE named there)."""
        exported = load_exported(model_dir)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        recipe, spec = exported.index.recipe, exported.index.source.get("spec", {})
        source, target = build_codecs(
            recipe.source,
            recipe.target,
            device=dev,
            token_dim=spec.get("token_dim"),
            image_size=exported.index.image_size,
        )
        if exported.target is not None:
            target.use_trainable(exported.target.to(dev))
        elif recipe.target.kind in TRAINABLE_TARGETS:
            raise CrossflowError(
                f"the exported {recipe.task} model has no target network (no target/ folder): re-export it"
            )
        return cls(exported.index, source, exported.ve.to(dev), exported.flow.to(dev), target, dev)

    def require_source(self, kind: str, what: str) -> None:
        """Refuse (one line) a model whose source is not `kind`, e.g. text prompts to an SR model."""
        have = self.config.source.get("kind")
        if have != kind:
            raise CrossflowError(
                f"this is a {self.config.recipe.task} model (source {have}); {what} needs a model whose "
                f"source is {kind}: pass a run trained with such a recipe"
            )

    @property
    def defaults(self) -> SampleConfig:
        """The model recipe's sampling settings."""
        return self.config.recipe.sample

    def nfe(self, settings: SampleConfig) -> int:
        """Velocity evaluations per output; CFG (scale != 1) doubles each."""
        return (1 if settings.cfg_scale == 1.0 else 2) * nfe(settings.solver, settings.steps)

    @torch.inference_mode()
    def encode(
        self, inputs: Sequence[Any], seeds: list[int] | None = None, temperature: float = 1.0
    ) -> VEOutput:
        """VE output for raw inputs: z0 = mu + temperature * sigma * eps_seed (z0 = mu when `seeds`
        is None)."""
        source = self.source.encode(list(inputs), self.device)
        shape = self.ve.noise_shape(source)
        if shape is None:
            return self.ve(source)
        if seeds is None:
            noise = torch.zeros(len(inputs), *shape, device=self.device)
        else:
            noise = (float(temperature) * seeded_noise(shape, seeds)).to(self.device)
        return self.ve(source, noise=noise)

    @torch.inference_mode()
    def decode(self, latents: Tensor) -> Any:
        """Target latents [B, C, H, W] -> outputs (images: float [B, 3, H, W] in [0, 1]; captions:
        list[str])."""
        return self.target.decode(latents)

    @torch.inference_mode()
    def generate_from_z0(self, z0: Tensor, settings: SampleConfig, cond: Tensor | None = None) -> Any:
        """Outputs from source latents z0 [B, C, H, W], `settings.batch_size` at a time."""
        settings.check()
        out = []
        for start in range(0, z0.shape[0], settings.batch_size):
            chunk = z0[start : start + settings.batch_size].to(self.device)
            c = None if cond is None else cond[start : start + settings.batch_size].to(self.device)
            out.append(self.decode(sample_latents(self.flow, chunk, settings, c)))
        return self._join(out)

    def _join(self, parts: list[Any]) -> Any:
        """Decoded chunks -> one output: tensors concatenated, lists (captions) chained."""
        if not parts:
            if self.config.recipe.target.kind in TRAINABLE_TARGETS:  # decoded by its network: a list
                return []
            return torch.empty(0, 3, self.image_size, self.image_size)
        if isinstance(parts[0], Tensor):
            return torch.cat(parts)
        return [item for part in parts for item in part]

    @torch.inference_mode()
    def translate(
        self,
        inputs: Sequence[Any],
        settings: SampleConfig,
        progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Outputs for raw inputs (all of one size); input i uses seed settings.seed + i. Images:
        a tensor [N, 3, H, W]; captions: a list of N strings."""
        settings.check()
        out = []
        for start in range(0, len(inputs), settings.batch_size):
            chunk = list(inputs[start : start + settings.batch_size])
            seeds = [settings.seed + start + i for i in range(len(chunk))]
            enc = self.encode(chunk, seeds, settings.temperature)
            out.append(self.decode(sample_latents(self.flow, enc.z0, settings, enc.cond)))
            if progress is not None:
                progress(start + len(chunk), len(inputs))
        return self._join(out)

    def generate(
        self, prompts: list[str], settings: SampleConfig, progress: Callable[[int, int], None] | None = None
    ) -> Tensor:
        """Text -> images [N, 3, H, W] in [0, 1] (the evaluation API); prompt i uses seed
        settings.seed + i."""
        return self.translate(prompts, settings, progress)


def load_pipeline(model: str | Path, device: str | None = None) -> CrossFlowPipeline:
    """The exported model of a run (RUN or RUN/model), ready to sample."""
    return CrossFlowPipeline.load(model, device=device)
