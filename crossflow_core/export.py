"""The exported model: RUN/model/{config.json, model.safetensors}, what sampling loads.

`config.json` holds the recipe, the data shapes the networks were built for, and the
identities of the text encoder and latent space; `model.safetensors` holds the (EMA)
weights of the VE (`ve.*`) and the flow network (`flow.*`, DiT or U-Net). Written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import Recipe, RecipeError, from_dict
from crossflow_core.train.system import SystemShapes

FORMAT = "crossflow-model"
VERSION = 1


@dataclass(frozen=True)
class ExportedConfig:
    recipe: Recipe
    shapes: SystemShapes
    image_size: int
    text_encoder: dict[str, Any]
    latent_space: dict[str, Any]
    step: int

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "recipe": self.recipe.to_dict(),
            "shapes": {
                "latent_shape": list(self.shapes.latent_shape),
                "num_tokens": self.shapes.num_tokens,
                "token_dim": self.shapes.token_dim,
            },
            "image_size": self.image_size,
            "text_encoder": self.text_encoder,
            "latent_space": self.latent_space,
            "step": self.step,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> ExportedConfig:
        s = data["shapes"]
        return ExportedConfig(
            recipe=from_dict(data["recipe"]),
            shapes=SystemShapes(tuple(s["latent_shape"]), int(s["num_tokens"]), int(s["token_dim"])),
            image_size=int(data["image_size"]),
            text_encoder=dict(data.get("text_encoder", {})),
            latent_space=dict(data.get("latent_space", {})),
            step=int(data.get("step", 0)),
        )


def resolve_model_dir(path: str | Path) -> Path:
    """Accept RUN or RUN/model; the directory must hold an exported model."""
    path = Path(path)
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    if not path.exists():
        raise CrossflowError(
            f"model {str(path)!r} does not exist: pass a training run directory (--model RUN)"
        )
    raise CrossflowError(
        f"{str(path)!r} holds no exported model (config.json + model.safetensors): "
        "train it to the end with `crossflow train` (it exports RUN/model) or pass RUN/model"
    )


def save_exported(model_dir: Path, config: ExportedConfig, weights: dict[str, Tensor]) -> Path:
    """Write config.json + model.safetensors into `model_dir`, replacing it atomically."""
    model_dir = Path(model_dir)
    tmp = model_dir.with_name(f".{model_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(config.to_json(), indent=2))
    old = model_dir.with_name(f".{model_dir.name}.old-{os.getpid()}")
    if model_dir.exists():
        os.rename(model_dir, old)
    os.rename(tmp, model_dir)
    shutil.rmtree(old, ignore_errors=True)
    return model_dir


def load_exported(path: str | Path) -> tuple[ExportedConfig, dict[str, Tensor]]:
    """(config, weights) of an exported model (RUN or RUN/model)."""
    model_dir = resolve_model_dir(path)
    try:
        data = json.loads((model_dir / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CrossflowError(
            f"{model_dir / 'config.json'} is not valid JSON ({exc.msg}): re-export the model"
        ) from None
    if data.get("format") != FORMAT:
        raise CrossflowError(f"{model_dir / 'config.json'} is not a crossflow model config")
    try:
        config = ExportedConfig.from_json(data)
    except (KeyError, TypeError, ValueError, RecipeError) as exc:
        raise CrossflowError(
            f"{model_dir / 'config.json'} is incomplete or invalid ({exc}): re-export it"
        ) from None
    return config, load_file(model_dir / "model.safetensors")
