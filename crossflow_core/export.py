"""The exported model: one folder per component plus one index file, what inference loads.

    RUN/model/
      model_index.json        format, version, task, recipe, step, sample size, latent shape,
                              the source and target codecs (kind, shape facts, identity)
      ve/config.json          {"class": ..., "args": {...}}: the network's constructor arguments
      ve/model.safetensors    its (EMA) weights (absent for a parameter-free encoder)
      flow/config.json, flow/model.safetensors
      target/config.json, target/model.safetensors
                              only for a trainable target codec (captioning: the text
                              autoencoder, whose decoder turns the flow's latents into captions)

In the spirit of diffusers' `model_index.json`: each component is rebuilt from its own config,
without the recipe; the index lists the components it has. Models exported before the task seam
(`config.json` + `model.safetensors` with `ve.*` / `flow.*` weights, format version 1) still
load. An export with a `target` component is format version 3 (older crossflow versions refuse
it rather than load a model they cannot decode); the others stay version 2. Written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from crossflow_core.atomic import atomic_dir
from crossflow_core.errors import CrossflowError
from crossflow_core.model import FlowTransformer, build_flow_model
from crossflow_core.recipe import Recipe, RecipeError, from_dict
from crossflow_core.text_autoencoder import TextAutoencoder
from crossflow_core.unet import FlowUNet
from crossflow_core.ve_kinds import ENCODERS, build_ve

FORMAT = "crossflow-model"
VERSION = 3  # the newest format this version reads (and writes for a model with a target network)
FIXED_VERSION = 2  # what a model without a target network is written as
INDEX = "model_index.json"
COMPONENTS = ("ve", "flow")  # always present
OPTIONAL_COMPONENTS = ("target",)
NETWORKS: dict[str, type[nn.Module]] = {
    **ENCODERS,
    "FlowTransformer": FlowTransformer,
    "FlowUNet": FlowUNet,
    "TextAutoencoder": TextAutoencoder,
}


@dataclass(frozen=True)
class ModelIndex:
    """What `model_index.json` says: enough to rebuild the codecs and check their inputs.

    source: {"kind", "spec" (shape facts the VE was built for), "identity"}; target: {"kind", "identity"}.
    components: the component folders ("ve", "flow", and "target" for a trainable target codec).
    """

    recipe: Recipe
    step: int
    image_size: int  # side of the training samples
    latent_shape: tuple[int, int, int]
    source: dict[str, Any]
    target: dict[str, Any]
    components: tuple[str, ...] = COMPONENTS

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION if "target" in self.components else FIXED_VERSION,
            "task": self.recipe.task,
            "recipe": self.recipe.to_dict(),
            "step": self.step,
            "image_size": self.image_size,
            "latent_shape": list(self.latent_shape),
            "source": self.source,
            "target": self.target,
            "components": list(self.components),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> ModelIndex:
        return ModelIndex(
            recipe=from_dict(data["recipe"]),
            step=int(data.get("step", 0)),
            image_size=int(data["image_size"]),
            latent_shape=tuple(data["latent_shape"]),
            source=dict(data["source"]),
            target=dict(data["target"]),
            components=_components(data.get("components", COMPONENTS)),
        )


def _components(names: Any) -> tuple[str, ...]:
    known = COMPONENTS + OPTIONAL_COMPONENTS
    if not isinstance(names, list | tuple) or any(n not in known for n in names):
        raise ValueError(f"components {names!r} must be a list of {', '.join(known)}")
    return tuple(dict.fromkeys([*COMPONENTS, *names]))


@dataclass(frozen=True)
class ExportedModel:
    index: ModelIndex
    ve: nn.Module
    flow: nn.Module
    target: nn.Module | None = None  # a trainable target codec's network (captioning)


def resolve_model_dir(path: str | Path) -> Path:
    """Accept RUN or RUN/model; the directory must hold an exported model."""
    path = Path(path)
    for candidate in (path / "model", path):
        if (
            (candidate / INDEX).is_file()
            or (candidate / "config.json").is_file()
            and (candidate / "model.safetensors").is_file()
        ):
            return candidate
    if not path.exists():
        raise CrossflowError(f"model {str(path)!r} does not exist: pass a training run directory")
    raise CrossflowError(
        f"{str(path)!r} holds no exported model ({INDEX}): train it to the end with `crossflow train` "
        "(it exports RUN/model) or pass RUN/model"
    )


def component_config(module: nn.Module) -> dict[str, Any]:
    return {"class": type(module).__name__, "args": dict(module.init_args)}


def build_component(config: dict[str, Any], where: Path) -> nn.Module:
    cls = NETWORKS.get(str(config.get("class")))
    if cls is None:
        raise CrossflowError(
            f"{where} names an unknown network {config.get('class')!r}: "
            "export it with this version of crossflow"
        )
    args = dict(config.get("args", {}))
    for key in ("latent_shape", "channels", "attention"):
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    return cls(**args)


def save_exported(model_dir: Path, index: ModelIndex, components: dict[str, nn.Module]) -> Path:
    """Write the index and one folder per component into `model_dir`, replacing it atomically."""
    with atomic_dir(model_dir) as tmp:
        for name, module in components.items():
            (tmp / name).mkdir()
            (tmp / name / "config.json").write_text(json.dumps(component_config(module), indent=2))
            weights = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            if weights:
                save_file(weights, tmp / name / "model.safetensors")
        (tmp / INDEX).write_text(json.dumps(index.to_json(), indent=2))
    return Path(model_dir)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CrossflowError(f"{path} is unreadable or not JSON ({exc}): re-export the model") from None
    if not isinstance(data, dict):
        raise CrossflowError(f"{path} is not a JSON object: re-export the model")
    return data


def _load_weights(module: nn.Module, weights: dict, where: Path) -> nn.Module:
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CrossflowError(f"weights in {where} do not match its config.json: {first}") from None
    return module


def load_exported(path: str | Path) -> ExportedModel:
    """The index and the networks (weights loaded, on the CPU) of an exported model."""
    model_dir = resolve_model_dir(path)
    if not (model_dir / INDEX).is_file():
        return _load_version1(model_dir)
    data = _read_json(model_dir / INDEX)
    if data.get("format") != FORMAT:
        raise CrossflowError(f"{model_dir / INDEX} is not a crossflow model index")
    if int(data.get("version", 0)) > VERSION:
        raise CrossflowError(
            f"{model_dir} was exported by a newer crossflow (version {data.get('version')}): "
            "upgrade crossflow"
        )
    try:
        index = ModelIndex.from_json(data)
    except (KeyError, TypeError, ValueError, RecipeError) as exc:
        raise CrossflowError(f"{model_dir / INDEX} is incomplete or invalid ({exc}): re-export it") from None
    modules = {}
    for name in index.components:
        folder = model_dir / name
        if not (folder / "config.json").is_file():
            raise CrossflowError(f"{folder} is missing (no config.json): re-export the model")
        module = build_component(_read_json(folder / "config.json"), folder / "config.json")
        weights_file = folder / "model.safetensors"
        expected = module.state_dict()
        if expected and not weights_file.is_file():
            raise CrossflowError(f"{weights_file} is missing: re-export the model")
        modules[name] = _load_weights(module, load_file(weights_file) if expected else {}, weights_file)
    target = modules.get("target")
    return ExportedModel(
        index, modules["ve"].eval(), modules["flow"].eval(), None if target is None else target.eval()
    )


def _load_version1(model_dir: Path) -> ExportedModel:
    """A model exported before the task seam: text -> image, one config.json + one weights file."""
    data = _read_json(model_dir / "config.json")
    if data.get("format") != FORMAT:
        raise CrossflowError(f"{model_dir / 'config.json'} is not a crossflow model config")
    try:
        recipe = from_dict(data["recipe"])
        shapes = data["shapes"]
        latent_shape = tuple(int(v) for v in shapes["latent_shape"])
        spec = {"num_tokens": int(shapes["num_tokens"]), "token_dim": int(shapes["token_dim"])}
        index = ModelIndex(
            recipe=recipe,
            step=int(data.get("step", 0)),
            image_size=int(data["image_size"]),
            latent_shape=latent_shape,  # type: ignore[arg-type]
            source={"kind": "text", "spec": spec, "identity": dict(data.get("text_encoder", {}))},
            target={"kind": recipe.target.kind, "identity": dict(data.get("latent_space", {}))},
        )
    except (KeyError, TypeError, ValueError, RecipeError) as exc:
        raise CrossflowError(
            f"{model_dir / 'config.json'} is incomplete or invalid ({exc}): re-export it"
        ) from None
    weights = load_file(model_dir / "model.safetensors")
    parts = {p: {k[len(p) + 1 :]: v for k, v in weights.items() if k.startswith(p + ".")} for p in COMPONENTS}
    ve = _load_weights(build_ve(recipe.ve, spec, latent_shape), parts["ve"], model_dir)  # type: ignore[arg-type]
    flow = _load_weights(build_flow_model(recipe.model, latent_shape), parts["flow"], model_dir)  # type: ignore[arg-type]
    return ExportedModel(index, ve.eval(), flow.eval())
