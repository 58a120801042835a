"""Text -> images with a trained CrossFlow model: batched, seeded, CFG through the indicator.

Prompt i is drawn with its own generator seeded `settings.seed + i` (z0 = mu + sigma * eps,
as the official inference does), so a batch gives the same images as one prompt at a time.
The ODE runs from t = 0 (text latent z0) to t = 1 (image latent), then the latent space decodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from crossflow_core.encoders.latents import LatentSpace, build_latent_space
from crossflow_core.encoders.text import TextEncoder
from crossflow_core.errors import CrossflowError
from crossflow_core.export import ExportedConfig, load_exported, resolve_model_dir
from crossflow_core.guidance import cfg_velocity
from crossflow_core.model import build_flow_model
from crossflow_core.solvers import SOLVERS, integrate, nfe
from crossflow_core.ve import TextVariationalEncoder, VEOutput

__all__ = ["SampleSettings", "CrossFlowPipeline", "resolve_model_dir", "sample_latents"]


@dataclass(frozen=True)
class SampleSettings:
    steps: int = 50
    solver: str = "euler"
    cfg_scale: float = 7.0
    seed: int = 0
    batch_size: int = 64

    def check(self) -> None:
        if self.solver not in SOLVERS:
            raise CrossflowError(f"unknown solver {self.solver!r}; choose one of: {', '.join(SOLVERS)}")
        if self.steps < 1:
            raise CrossflowError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise CrossflowError(f"--batch-size must be at least 1, got {self.batch_size}")


def seeded_noise(shape: tuple[int, ...], seeds: list[int]) -> Tensor:
    """eps [len(seeds), *shape] on the CPU, row i from a generator seeded seeds[i]."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(rows) if rows else torch.empty(0, *shape)


@torch.inference_mode()
def sample_latents(flow: nn.Module, z0: Tensor, settings: SampleSettings) -> Tensor:
    """Integrate the guided velocity from z0 [B, C, H, W] (t = 0) to image latents (t = 1)."""
    velocity = cfg_velocity(flow, settings.cfg_scale)
    return integrate(velocity, z0, settings.steps, settings.solver)


class CrossFlowPipeline:
    """A loaded model: text encoder, VE, flow network and latent space on one device."""

    def __init__(
        self,
        config: ExportedConfig,
        ve: TextVariationalEncoder,
        flow: nn.Module,
        text_encoder: TextEncoder,
        latent_space: LatentSpace,
        device: torch.device,
    ) -> None:
        self.config, self.ve, self.flow = config, ve.eval(), flow.eval()
        self.text_encoder, self.latent_space, self.device = text_encoder, latent_space, device
        self.image_size = config.image_size

    @classmethod
    def load(cls, model_dir: str | Path, device: str | None = None) -> CrossFlowPipeline:
        """Load RUN or RUN/model; the text encoder and latent space come from its recipe."""
        config, weights = load_exported(model_dir)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        recipe, shapes = config.recipe, config.shapes
        ve = TextVariationalEncoder(recipe.ve, shapes.token_dim, shapes.num_tokens, shapes.latent_shape)
        flow = build_flow_model(recipe.model, shapes.latent_shape)
        for prefix, module in (("ve.", ve), ("flow.", flow)):
            part = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(part, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise CrossflowError(
                    f"weights in {model_dir} do not match its config.json: {first}"
                ) from None
        text_encoder = TextEncoder.from_config(recipe.text_encoder, device=dev)
        if text_encoder.dim != shapes.token_dim:
            raise CrossflowError(
                f"text encoder {recipe.text_encoder.name!r} gives {text_encoder.dim}-d tokens but the model "
                f"was trained on {shapes.token_dim}-d ones: use the text encoder it was trained with"
            )
        latent_space = build_latent_space(recipe.latents, device=dev)
        return cls(config, ve.to(dev), flow.to(dev), text_encoder, latent_space, dev)

    def nfe(self, settings: SampleSettings) -> int:
        """Velocity evaluations per image; CFG (scale != 1) doubles each."""
        per = 1 if settings.cfg_scale == 1.0 else 2
        return per * nfe(settings.solver, settings.steps)

    @torch.inference_mode()
    def encode(self, prompts: list[str], seeds: list[int] | None = None) -> VEOutput:
        """VE output for prompts: mu, logvar and z0 (z0 = mu when `seeds` is None)."""
        emb = self.text_encoder.encode(list(prompts))
        tokens, mask = emb.tokens.to(self.device), emb.mask.to(self.device)
        shape = self.config.shapes.latent_shape
        if seeds is None:
            noise = torch.zeros(len(prompts), *shape, device=self.device)
        else:
            noise = seeded_noise(shape, seeds).to(self.device)
        return self.ve(tokens, mask, noise=noise)

    @torch.inference_mode()
    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, C, H, W] -> images [B, 3, H, W] in [0, 1]."""
        return ((self.latent_space.decode(latents).float() + 1) / 2).clamp(0, 1).cpu()

    @torch.inference_mode()
    def generate_from_z0(self, z0: Tensor, settings: SampleSettings) -> Tensor:
        """Images [B, 3, H, W] in [0, 1] from source latents z0 [B, C, H, W]."""
        settings.check()
        out = []
        for start in range(0, z0.shape[0], settings.batch_size):
            chunk = z0[start : start + settings.batch_size].to(self.device)
            out.append(self.decode(sample_latents(self.flow, chunk, settings)))
        return torch.cat(out) if out else torch.empty(0, 3, self.image_size, self.image_size)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        settings: SampleSettings,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Images [N, 3, H, W] in [0, 1]; prompt i uses seed settings.seed + i."""
        settings.check()
        out = []
        for start in range(0, len(prompts), settings.batch_size):
            chunk = list(prompts[start : start + settings.batch_size])
            seeds = [settings.seed + start + i for i in range(len(chunk))]
            z0 = self.encode(chunk, seeds).z0
            out.append(self.decode(sample_latents(self.flow, z0, settings)))
            if progress is not None:
                progress(start + len(chunk), len(prompts))
        return torch.cat(out) if out else torch.empty(0, 3, self.image_size, self.image_size)
