"""Super-resolution: the canonical degradation, the bicubic baseline, and PSNR / SSIM / FID.

Degradation (the paper's): low-res = anti-aliased bicubic downsampling of the high-res image by an
integer `factor`; the model's source and the bicubic baseline are its plain bicubic upsampling
back to the high-res size. Both are `torch.nn.functional.interpolate(mode="bicubic",
align_corners=False)` (antialias True down, False up), clamped to the images' value range.

Metrics: PSNR and SSIM per image with torchmetrics' functional implementations, on **RGB** in
[0, 1] (data_range 1; not on the Y channel of YCbCr that some SR papers use, so the numbers are
not comparable with Y-channel tables), reported as mean and std over images; FID / KID of the
outputs against the references through `crossflow_core.eval.fid.compute_metrics` (torch-fidelity's
standard Inception, offline weights).

Folders pair by file stem: `0007.png` (output) with `0007.jpg` (reference). Every reference that
an output names must exist and have the output's size; extra references are ignored (and counted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from crossflow_core import image_files
from crossflow_core.codecs.upsampled import downsample
from crossflow_core.codecs.upsampled import upsample as codec_upsample
from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.eval.report import MetricResult, git_commit

ValueRange = tuple[float, float]
MODEL_RANGE: ValueRange = (-1.0, 1.0)
"""The model's image range (pixels latents); folders are read in UNIT_RANGE."""
UNIT_RANGE: ValueRange = (0.0, 1.0)

SSIM_KERNEL = 11
SSIM_SIGMA = 1.5
METRIC_SETTINGS = {
    "colour_space": "RGB (not Y)",
    "data_range": 1.0,
    "psnr": "torchmetrics peak_signal_noise_ratio, per image; inf when an output equals its reference",
    "ssim": f"Wang et al., gaussian {SSIM_KERNEL}x{SSIM_KERNEL} sigma {SSIM_SIGMA}, valid region "
    "(torchmetrics SSIM map, border cropped)",
    "std": "population std over images (correction 0)",
}

Progress = Callable[[str, int, int], None]
"""progress(label, done, total), counted in images."""


# ----------------------------------------------------------------------------- degradation


def _check_factor(shape: Sequence[int], factor: int, *, divides: bool) -> None:
    h, w = int(shape[-2]), int(shape[-1])
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise CrossflowError(
            f"cannot resize {h}x{w} images by a factor of {factor!r}: it must be an integer >= 1"
        )
    if divides and (h % factor or w % factor):
        raise CrossflowError(
            f"cannot downsample {h}x{w} images by a factor of {factor}: it must divide both height and width"
        )


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise CrossflowError(f"images must be a batch [B, C, H, W], got shape {tuple(images.shape)}")


def degrade(images: torch.Tensor, factor: int, value_range: ValueRange = MODEL_RANGE) -> torch.Tensor:
    """The SR codec's degradation (`crossflow_core.codecs.upsampled.downsample`) in any range.

    High-res float [B, C, H, W] -> low-res [B, C, H/factor, W/factor]: anti-aliased bicubic
    downsampling, clamped to `value_range` ((-1, 1) for model images, (0, 1) for unit images).

    The factor must be an integer >= 1 dividing H and W (else CrossflowError).
    """
    _check_batch(images)
    _check_factor(images.shape, factor, divides=True)
    return _from_model_range(downsample(_to_model_range(images, value_range), factor), value_range)


def upsample(lowres: torch.Tensor, factor: int, value_range: ValueRange = MODEL_RANGE) -> torch.Tensor:
    """Low-res float [B, C, h, w] -> [B, C, h*factor, w*factor]: plain bicubic (antialias off),
    clamped to `value_range`. The SR source and the bicubic baseline."""
    _check_batch(lowres)
    _check_factor(lowres.shape, factor, divides=False)
    return _from_model_range(codec_upsample(_to_model_range(lowres, value_range), factor), value_range)


def _to_model_range(x: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    lo, hi = value_range
    return x.float() if value_range == MODEL_RANGE else (x.float() - lo) * (2.0 / (hi - lo)) - 1.0


def _from_model_range(x: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    lo, hi = value_range
    return x if value_range == MODEL_RANGE else ((x + 1.0) * ((hi - lo) / 2.0) + lo).clamp(lo, hi)


# ----------------------------------------------------------------------------- PSNR / SSIM


@dataclass(frozen=True)
class SRScores:
    """Per-image scores: psnr (dB) and ssim, float64 [N] each."""

    psnr: torch.Tensor
    ssim: torch.Tensor


@dataclass(frozen=True)
class MeanStd:
    """Mean and population std (correction 0) of a metric over `n` images. With an infinite value
    (a PSNR of an exact output) the mean is inf and the std is None."""

    mean: float
    std: float | None
    n: int


def psnr_ssim(outputs: torch.Tensor, references: torch.Tensor) -> SRScores:
    """PSNR (dB) and SSIM of each output against its reference, float [N, 3, H, W] in [0, 1].

    Computed in RGB (all three channels, data_range 1.0), not on the Y channel.

    PSNR: torchmetrics' `peak_signal_noise_ratio` per image = 10 log10(1 / MSE), inf (not capped)
    for identical images; torchmetrics' 10 / ln 10 is a float32 constant, so it is exact to ~1e-7
    relative.

    SSIM: Wang et al.'s definition as in their `ssim_index.m` (and skimage's
    `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`,
    BasicSR's `calculate_ssim`): Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, the SSIM map
    averaged over the *valid* region (windows wholly inside the image, a 5-pixel border dropped)
    and over the channels. The map is torchmetrics' `structural_similarity_index_measure`
    (`return_full_image=True`) with its default window; its own mean differs in one way:
    it also averages the border, whose windows see reflected padding (0.62 instead of 0.66 on a
    noisy 48x40 image), so that mean is not used.

    Both from float64 inputs. Images need H, W >= 11 (the SSIM window).
    """
    try:
        from torchmetrics.functional.image import (
            peak_signal_noise_ratio,
            structural_similarity_index_measure,
        )
    except ImportError:
        raise MissingResourceError("PSNR / SSIM need torchmetrics: pip install torchmetrics") from None

    if outputs.shape != references.shape or outputs.dim() != 4 or outputs.shape[1] != 3:
        shapes = f"outputs {tuple(outputs.shape)} and references {tuple(references.shape)}"
        raise CrossflowError(f"{shapes} must both be [N, 3, H, W]")
    if min(outputs.shape[-2:]) < SSIM_KERNEL:
        h, w = outputs.shape[-2:]
        raise CrossflowError(f"SSIM needs images of at least {SSIM_KERNEL}x{SSIM_KERNEL} pixels, got {h}x{w}")
    a, b = outputs.detach().double().cpu(), references.detach().double().cpu()
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    window = dict(gaussian_kernel=True, kernel_size=SSIM_KERNEL, sigma=SSIM_SIGMA)
    _, ssim_map = structural_similarity_index_measure(
        a, b, data_range=1.0, reduction="none", return_full_image=True, **window
    )
    r = SSIM_KERNEL // 2
    ssim = ssim_map[..., r:-r, r:-r].mean(dim=(1, 2, 3))
    return SRScores(psnr=psnr.reshape(-1), ssim=ssim)


def mean_std(values: torch.Tensor) -> MeanStd:
    """Mean and population std over images of per-image values [N] (N >= 1)."""
    v = values.detach().double().reshape(-1)
    if v.numel() == 0:
        raise CrossflowError("no values to average")
    if not torch.isfinite(v).all():
        return MeanStd(float(v.mean()), None, v.numel())
    return MeanStd(float(v.mean()), float(v.std(correction=0)), v.numel())


# ----------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class ImagePair:
    """An output and its reference, matched by file stem; `size` is (height, width)."""

    name: str
    output: Path
    reference: Path
    size: tuple[int, int]


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        raise CrossflowError(f"cannot read image {path}: {exc}; replace or remove the file") from None
    return h, w


def _by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in image_files.list_images(folder):
        if p.stem in files:
            raise CrossflowError(f"{folder} has two images named {p.stem!r} ({files[p.stem].name}, {p.name})")
        files[p.stem] = p
    return files


def pair_folders(outputs_dir: str | Path, references_dir: str | Path) -> list[ImagePair]:
    """Every image of `outputs_dir` with the image of `references_dir` of the same stem, in the
    outputs' natural order. CrossflowError when an output has no reference, when a pair differs in
    size, or when there is no output. Extra references are allowed."""
    outputs_dir, references_dir = Path(outputs_dir), Path(references_dir)
    outputs, references = _by_stem(outputs_dir), _by_stem(references_dir)
    if not outputs:
        raise CrossflowError(f"no images in {outputs_dir}: nothing to evaluate")
    pairs = []
    for stem, out in outputs.items():
        ref = references.get(stem)
        if ref is None:
            raise CrossflowError(f"output {out.name} has no reference named {stem}.* in {references_dir}")
        size_out, size_ref = _image_size(out), _image_size(ref)
        if size_out != size_ref:
            (ho, wo), (hr, wr) = size_out, size_ref
            raise CrossflowError(
                f"output {out.name} is {ho}x{wo} but its reference {ref.name} is {hr}x{wr} (height x width)"
            )
        pairs.append(ImagePair(stem, out, ref, size_out))
    return pairs


def _read_unit(path: Path) -> torch.Tensor:
    """An image file as float64 [3, H, W] in [0, 1] (k / 255 exactly as a double)."""
    return torch.from_numpy(image_files.read_image(path)).permute(2, 0, 1).double() / 255.0


def score_pairs(
    pairs: Sequence[ImagePair], batch_size: int = 16, progress: Progress | None = None
) -> SRScores:
    """PSNR and SSIM of every pair (read as 8-bit RGB / 255), in order; same-size runs batched."""
    if batch_size < 1:
        raise CrossflowError(f"batch size must be >= 1, got {batch_size}")
    psnr: list[torch.Tensor] = []
    ssim: list[torch.Tensor] = []
    start = 0
    while start < len(pairs):
        end = start + 1
        while end < len(pairs) and end - start < batch_size and pairs[end].size == pairs[start].size:
            end += 1
        chunk = pairs[start:end]
        scores = psnr_ssim(
            torch.stack([_read_unit(p.output) for p in chunk]),
            torch.stack([_read_unit(p.reference) for p in chunk]),
        )
        psnr.append(scores.psnr)
        ssim.append(scores.ssim)
        start = end
        if progress is not None:
            progress("psnr/ssim", start, len(pairs))
    return SRScores(torch.cat(psnr), torch.cat(ssim))


def evaluate_sr_folders(
    outputs_dir: str | Path,
    references_dir: str | Path,
    fid: bool = True,
    *,
    weights: str | Path | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    kid_subset_size: int = 1000,
    feature_layer: str = "2048",
    model: str | None = None,
    extra_settings: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> list[MetricResult]:
    """SR outputs against their high-res references (folders paired by stem, `pair_folders`).

    Results, in order: "psnr_mean", "psnr_std" (dB), "ssim_mean", "ssim_std" (RGB, see
    `psnr_ssim`), then with `fid` "fid", "kid_mean", "kid_std" of the paired outputs against the
    paired references (`compute_metrics`; needs >= 2 pairs; `weights` None: the converted file
    in the cache, else MissingResourceError before anything is computed). `n` is the pair count.
    """
    from crossflow_core.eval import inception

    pairs = pair_folders(outputs_dir, references_dir)
    if fid:
        inception.resolve_weights(weights)  # a missing file fails before the PSNR/SSIM pass
    scores = score_pairs(pairs, batch_size=batch_size, progress=progress)
    n = len(pairs)
    settings: dict[str, Any] = {
        "outputs": str(Path(outputs_dir).resolve()),
        "references": str(Path(references_dir).resolve()),
        "n_pairs": n,
        "n_references_unpaired": len(_by_stem(Path(references_dir))) - n,
        "sizes": sorted({f"{h}x{w}" for h, w in (p.size for p in pairs)}),
        **METRIC_SETTINGS,
        **(extra_settings or {}),
    }
    commit = git_commit()

    def stats(metric: str, values: torch.Tensor) -> list[MetricResult]:
        s = mean_std(values)
        std_settings = dict(settings)
        if s.std is None:
            k = int((~torch.isfinite(values)).sum())
            std_settings["unavailable"] = f"{k} of {n} outputs equal their reference (PSNR inf)"
        return [
            MetricResult(f"{metric}_mean", s.mean, n, settings, model=model, git_commit=commit),
            MetricResult(f"{metric}_std", s.std, n, std_settings, model=model, git_commit=commit),
        ]

    results = stats("psnr", scores.psnr) + stats("ssim", scores.ssim)
    if fid:
        from crossflow_core.eval.fid import FolderImages, compute_metrics

        def folder(paths: list[Path], root: str | Path) -> FolderImages:
            return FolderImages(Path(root).resolve(), tuple(p.resolve() for p in paths))

        results += compute_metrics(
            folder([p.output for p in pairs], outputs_dir),
            folder([p.reference for p in pairs], references_dir),
            weights=weights,
            metrics=("fid", "kid"),
            batch_size=batch_size,
            use_cache=use_cache,
            kid_subset_size=kid_subset_size,
            feature_layer=feature_layer,
            model=model,
            extra_settings={"n_pairs": n, **(extra_settings or {})},
            progress=progress,
        )
    return results


# ----------------------------------------------------------------------------- folder transforms


def _map_folder(
    src_dir: str | Path, out_dir: str | Path, fn: Callable[[torch.Tensor], torch.Tensor]
) -> list[Path]:
    """Apply `fn` (float [1, 3, H, W] in [0, 1] -> same layout) to every image of `src_dir`; write
    `out_dir/STEM.png` atomically, in natural order."""
    files = list(_by_stem(Path(src_dir)).values())
    if not files:
        raise CrossflowError(f"no images in {src_dir}")
    out_dir = Path(out_dir)
    return [image_files.save_png(fn(_read_unit(p)[None])[0], out_dir / f"{p.stem}.png") for p in files]


def bicubic_baseline_folder(lowres_dir: str | Path, factor: int, out_dir: str | Path) -> list[Path]:
    """The bicubic baseline: every low-res image of `lowres_dir` upsampled by `factor` (`upsample`,
    in [0, 1]) and written as `out_dir/STEM.png` (same name; a .jpg input becomes .png). Returns
    the written paths."""
    return _map_folder(lowres_dir, out_dir, lambda x: upsample(x, factor, UNIT_RANGE))


def degrade_folder(highres_dir: str | Path, factor: int, out_dir: str | Path) -> list[Path]:
    """Low-res inputs: every high-res image of `highres_dir` degraded by `factor` (`degrade`, in
    [0, 1]) and written as `out_dir/STEM.png`, 8-bit like any stored low-res image."""
    return _map_folder(highres_dir, out_dir, lambda x: degrade(x, factor, UNIT_RANGE))
