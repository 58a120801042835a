"""Monocular depth metrics (AbsRel, SqRel, RMSE, RMSE-log, delta1..3) and least-squares alignment.

Definitions, for predicted depth d and ground truth d* over the valid pixels P of one image:

- AbsRel   = mean_P |d - d*| / d*
- SqRel    = mean_P (d - d*)^2 / d*
- RMSE     = sqrt(mean_P (d - d*)^2)
- RMSE-log = sqrt(mean_P (log d - log d*)^2)
- delta_k  = fraction of P with max(d / d*, d* / d) < 1.25^k  (k = 1, 2, 3; strict "<")

Averaging: each metric is computed per image, then averaged over images (every image weighs the
same, whatever its number of valid pixels), as Marigold's evaluation does (batch size 1, one
metric value per image, then the mean) and as the usual KITTI/NYUv2 Eigen-split scripts do.

Valid pixels: d* finite and > eps, inside `depth_range` (lo < d* < hi) when one is given, and
inside the optional `valid` mask. A prediction that is not finite on a valid pixel is an error.

Alignment (`align`): "none" scores d as given (metric depth); "scale_shift" is Marigold's
affine-invariant protocol: per image, the least-squares fit s * d + t ~ d* over the valid pixels
(closed form in float64, `align_scale_shift`); "scale" fits s alone by least squares (t = 0).
After alignment the prediction is clipped to `depth_range` when one is
given (Marigold clips to the dataset's min/max depth) and always to >= eps, so that ratios and
logs stay finite. All arithmetic is float64; inputs may be torch tensors or numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

from crossflow_core.errors import CrossflowError

Align = Literal["none", "scale_shift", "scale"]
ALIGNS: tuple[str, ...] = get_args(Align)
EPS = 1e-6
DELTA_BASE = 1.25


@dataclass(frozen=True)
class DepthScores:
    """Depth metrics averaged per image then over `n_images` images; `n_pixels` valid pixels in all."""

    abs_rel: float
    sq_rel: float
    rmse: float
    rmse_log: float
    delta1: float
    delta2: float
    delta3: float
    n_pixels: int
    n_images: int

    def as_dict(self) -> dict[str, float]:
        return {"abs_rel": self.abs_rel, "sq_rel": self.sq_rel, "rmse": self.rmse,
                "rmse_log": self.rmse_log, "delta1": self.delta1, "delta2": self.delta2,
                "delta3": self.delta3}


def _as_float64(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu")
    else:
        try:
            t = torch.from_numpy(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise CrossflowError(f"{name} must be a tensor or array of numbers: {exc}") from None
    if t.is_complex() or t.dtype == torch.bool:
        raise CrossflowError(f"{name} must hold real depth values, got dtype {t.dtype}")
    return t.to(torch.float64)


def _batched(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.ndim == 2:
        return t.unsqueeze(0)
    if t.ndim != 3:
        raise CrossflowError(f"{name} must be [N, H, W] (or one [H, W] map), got shape {tuple(t.shape)}")
    return t


def valid_mask(gt: Any, valid: Any = None, *, eps: float = EPS,
               depth_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Bool [N, H, W]: gt finite and > eps, within depth_range (exclusive) if given, and `valid`."""
    g = _batched(_as_float64(gt, "gt"), "gt")
    mask = torch.isfinite(g) & (g > eps)
    if depth_range is not None:
        lo, hi = depth_range
        if not lo < hi:
            raise CrossflowError(f"depth_range must be (min, max) with min < max, got {depth_range}")
        mask &= (g > lo) & (g < hi)
    if valid is not None:
        v = valid.detach().to("cpu") if isinstance(valid, torch.Tensor) \
            else torch.from_numpy(np.asarray(valid))
        v = _batched(v, "valid")
        if v.shape != g.shape:
            raise CrossflowError(f"valid mask has shape {tuple(v.shape)} but gt has shape {tuple(g.shape)}")
        mask &= v.to(torch.bool)
    return mask


def _prepare(pred: Any, gt: Any, valid: Any, eps: float, depth_range: tuple[float, float] | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(pred [N,H,W], gt [N,H,W], valid mask [N,H,W], whether one [H,W] map was given), checked."""
    p, g = _as_float64(pred, "pred"), _as_float64(gt, "gt")
    single = p.ndim == 2
    if p.shape != g.shape:
        raise CrossflowError(f"pred has shape {tuple(p.shape)} but gt has shape {tuple(g.shape)}: "
                             "resize the prediction to the ground truth first")
    p, g = _batched(p, "pred"), _batched(g, "gt")
    if p.shape[0] == 0:
        raise CrossflowError("no depth maps to score: the batch is empty")
    mask = valid_mask(g, valid, eps=eps, depth_range=depth_range)
    counts = mask.sum(dim=(1, 2))
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise CrossflowError(f"image {empty[0]} has no valid ground-truth pixel (gt > {eps:g}, finite"
                             f"{', within the depth range' if depth_range else ''}, inside the mask)")
    bad = torch.nonzero((mask & ~torch.isfinite(p)).any(dim=(1, 2))).flatten().tolist()
    if bad:
        raise CrossflowError(f"image {bad[0]}: the prediction is not finite (NaN or inf) on valid pixels")
    return p, g, mask, single


def _fit(p: torch.Tensor, g: torch.Tensor, mask: torch.Tensor,
         with_shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image least squares over masked pixels, float64: (scale [N], shift [N])."""
    p = torch.where(mask, p, 0.0)  # invalid pixels (maybe inf or NaN) drop out of every sum
    g = torch.where(mask, g, 0.0)
    n = mask.sum(dim=(1, 2)).to(torch.float64)
    if not with_shift:  # s = <p, g> / <p, p>
        spp = (p * p).sum(dim=(1, 2))
        spg = (p * g).sum(dim=(1, 2))
        scale = torch.where(spp > 0, spg / torch.where(spp > 0, spp, 1.0), torch.zeros_like(spp))
        return scale, torch.zeros_like(scale)
    # Centred normal equations: s = cov(p, g) / var(p), t = mean(g) - s mean(p).
    p_mean = p.sum(dim=(1, 2)) / n
    g_mean = g.sum(dim=(1, 2)) / n
    pc = torch.where(mask, p - p_mean[:, None, None], 0.0)
    gc = torch.where(mask, g - g_mean[:, None, None], 0.0)
    var = (pc * pc).sum(dim=(1, 2))
    cov = (pc * gc).sum(dim=(1, 2))
    # A constant prediction (var ~ rounding) has no unique fit: take s = 0, t = mean(gt), an LS optimum.
    p_abs = p.abs().amax(dim=(1, 2))
    flat = var <= n * (64 * torch.finfo(torch.float64).eps * p_abs) ** 2
    scale = torch.where(flat, torch.zeros_like(var), cov / torch.where(flat, 1.0, var))
    shift = g_mean - scale * p_mean
    return scale, shift


def _like(t: torch.Tensor, template: Any) -> Any:
    return t if isinstance(template, torch.Tensor) else t.numpy()


def align_scale_shift(pred: Any, gt: Any, valid: Any = None, *, eps: float = EPS,
                      depth_range: tuple[float, float] | None = None) -> tuple[Any, Any, Any]:
    """Marigold's affine-invariant alignment: per image, (s, t) = argmin sum_valid (s d + t - d*)^2.

    pred, gt: [N, H, W] (or [H, W]); valid: optional bool mask of the same shape, combined with
    gt > eps, finite (and `depth_range`). Returns (aligned [N, H, W] = s * pred + t on every pixel,
    scale [N], shift [N]), float64, torch tensors when `pred` is one, else numpy arrays. The
    aligned depth is not clipped here (`depth_metrics` clips it before the ratio metrics). A
    prediction constant over the valid pixels gets s = 0 and t = mean(gt).
    """
    p, g, mask, single = _prepare(pred, gt, valid, eps, depth_range)
    scale, shift = _fit(p, g, mask, with_shift=True)
    aligned = scale[:, None, None] * p + shift[:, None, None]
    if single:
        aligned = aligned[0]
    return _like(aligned, pred), _like(scale, pred), _like(shift, pred)


def depth_metrics(
    pred: Any,
    gt: Any,
    valid: Any = None,
    align: Align = "none",
    *,
    eps: float = EPS,
    depth_range: tuple[float, float] | None = None,
) -> DepthScores:
    """AbsRel, SqRel, RMSE, RMSE-log and delta1..3 of depth maps pred vs gt (module docstring).

    pred, gt: float [N, H, W] (or one [H, W] map), torch or numpy, same shape, depth units of gt;
    valid: optional bool mask, same shape. align: "none", "scale_shift" (Marigold) or "scale".
    Per-image metrics averaged over images.
    """
    if align not in ALIGNS:
        raise CrossflowError(f"unknown depth alignment {align!r}: choose from {', '.join(ALIGNS)}")
    p, g, mask, _ = _prepare(pred, gt, valid, eps, depth_range)
    if align != "none":
        scale, shift = _fit(p, g, mask, with_shift=align == "scale_shift")
        p = scale[:, None, None] * p + shift[:, None, None]
    if depth_range is not None:
        p = p.clamp(depth_range[0], depth_range[1])
    p = p.clamp_min(eps)
    # Invalid pixels get d = d* = 1 so that every term there is 0 (and finite) before masking.
    p = torch.where(mask, p, 1.0)
    g = torch.where(mask, g, 1.0)
    n = mask.sum(dim=(1, 2)).to(torch.float64)

    def per_image(x: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, x, 0.0).sum(dim=(1, 2)) / n

    diff = p - g
    ratio = torch.maximum(p / g, g / p)
    per = {
        "abs_rel": per_image(diff.abs() / g),
        "sq_rel": per_image(diff * diff / g),
        "rmse": per_image(diff * diff).sqrt(),
        "rmse_log": per_image((p.log() - g.log()) ** 2).sqrt(),
        **{f"delta{k}": per_image((ratio < DELTA_BASE**k).to(torch.float64)) for k in (1, 2, 3)},
    }
    return DepthScores(**{k: float(v.mean()) for k, v in per.items()},
                       n_pixels=int(mask.sum()), n_images=int(mask.shape[0]))
