"""Target codec "depth" (monocular depth, paper §5.3 Table 5): depth maps in metres <-> latents.

The paper trains CrossFlow for depth "in pixel space"; its depth normalisation is not given. Ours
is a fixed affine map of depth (or, with `target.log`, of log depth) from [min_depth, max_depth]
metres onto [-1, 1], one channel at the image's resolution: latent [1, H, W]. Depths outside the
range are clipped; decoding clamps the latent to [-1, 1] and maps back, so every output lies in
the range. A fixed range (not per-image normalisation) keeps the output metric: the model predicts
metres, which `crossflow eval depth` scores raw and after scale-and-shift alignment.

`prepare` stores each sample's depth in metres as `depth.npy` (float16 [H, W]; the range is
applied at train time, so it may change without preparing again). Pixels without depth (0, e.g.
KITTI's sparse LiDAR or NYUv2's holes) take the depth of the nearest pixel with depth before they
are stored: the flow-matching loss has no mask, so training needs a dense target (dense or
densified ground truth trains best; evaluation reads the raw sidecars and masks those pixels).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossflow_core.codecs.base import RawSample, TargetCodec
from crossflow_core.depth_files import fill_invalid
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import DepthTargetConfig

FIELD = "depth.npy"


class DepthTarget(TargetCodec):
    """Depth metres [B, H, W] (or [B, 1, H, W]) <-> latents [B, 1, H, W] in [-1, 1]."""

    kind = "depth"
    needs_depth = True

    def __init__(self, cfg: DepthTargetConfig) -> None:
        self.cfg = cfg
        self.lo, self.hi, self.log = float(cfg.min_depth), float(cfg.max_depth), bool(cfg.log)
        if not self.hi > self.lo or (self.log and self.lo <= 0):
            raise CrossflowError(
                f"depth range [{self.lo}, {self.hi}] m is invalid: max_depth must exceed min_depth "
                "(and min_depth be > 0 with log)"
            )

    def _warp(self, d: Tensor | float) -> Tensor | float:
        if not self.log:
            return d
        return torch.log(d) if isinstance(d, Tensor) else math.log(d)

    def train_fields(self, stored: tuple[str, ...]) -> tuple[str, ...]:
        if FIELD not in stored:
            raise CrossflowError(
                f"the dataset holds no depth maps ({FIELD}), but the recipe's target is depth: prepare it "
                "with a depth recipe (the shapes world, or images with NAME.depth.png / .npy sidecars)"
            )
        return (FIELD,)

    def precomputed_fields(self) -> tuple[str, ...]:
        return (FIELD,)

    def precompute(self, samples: list[RawSample]) -> dict[str, np.ndarray]:
        """The depth maps in metres, float16 [N, H, W], pixels without depth filled (module docstring)."""
        if any(s.depth is None for s in samples):
            raise CrossflowError("a sample has no depth map, but the depth target needs one per image")
        depth = np.stack([fill_invalid(s.depth) for s in samples])  # type: ignore[arg-type]
        if not np.isfinite(depth.astype(np.float16)).all():
            raise CrossflowError(
                "a depth map exceeds float16 (65504 m): check the depth units (data.depth_scale)"
            )
        return {FIELD: depth.astype(np.float16)}

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        return (1, int(size), int(size))

    def encode(self, depth: Tensor) -> Tensor:
        """Depth metres [B, H, W] or [B, 1, H, W] -> latents [B, 1, H, W] float32 in [-1, 1]."""
        d = depth.float()
        d = d.unsqueeze(1) if d.dim() == 3 else d
        lo, hi = self._warp(self.lo), self._warp(self.hi)
        x = self._warp(d.clamp(self.lo, self.hi))
        return (2 * (x - lo) / (hi - lo) - 1).clamp(-1, 1)

    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> Tensor:
        return self.encode(torch.as_tensor(fields[FIELD][idx]).to(device))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, 1, H, W] -> depth metres [B, 1, H, W] float32 (CPU), within [min_depth, max_depth]."""
        lo, hi = self._warp(self.lo), self._warp(self.hi)
        x = (latents.float().clamp(-1, 1) + 1) / 2 * (hi - lo) + lo
        d = torch.exp(x) if self.log else x
        return d.clamp(self.lo, self.hi).cpu()

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "min_depth": self.lo, "max_depth": self.hi, "log": self.log}
