"""Recipes: one YAML file per task and scale, loaded into frozen, typed dataclasses.

This module is the only YAML reader of the project (`yaml.safe_load`). Every component
receives its own section (`recipe.ve`, `recipe.model`, ...), never the whole recipe.

Loading is strict: an unknown key, a value of the wrong type or an invalid choice raises
`RecipeError` with one line naming the key and the value received. Overrides use dotted
keys, `section.key=value`, with the value parsed as YAML (`train.steps=3`, `train.betas=[0.9,0.99]`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from crossflow_core.recipe_checks import (  # noqa: F401 - RecipeError and the check tables, re-exported
    _RANGES,
    IMAGE_VE_OBJECTIVES,
    TEXT_VE_OBJECTIVES,
    TRAINABLE_TARGETS,
    RecipeError,
    _check_pair,
    _check_ranges,
    _check_trainable_target,
)
from crossflow_core.recipe_sections import (  # noqa: F401 - the schema, re-exported
    TASKS,
    DataConfig,
    DepthTargetConfig,
    FlowConfig,
    ImageSourceConfig,
    ModelConfig,
    PixelTargetConfig,
    Recipe,
    SampleConfig,
    SourceConfig,
    TargetConfig,
    TaskPreset,
    TextAETargetConfig,
    TextSourceConfig,
    TrainConfig,
    UpsampledSourceConfig,
    VAETargetConfig,
    VEConfig,
    _plain,
)


def recipes_dir() -> Path:
    """The folder of built-in recipes: $CROSSFLOW_RECIPES, else the package's own `recipes/`
    (package data; in a checkout, a link to the top-level `recipes/`)."""
    env = os.environ.get("CROSSFLOW_RECIPES")
    if env:
        return Path(env)
    return Path(str(importlib.resources.files("crossflow_core") / "recipes"))


def available_recipes() -> list[str]:
    """Names of the built-in recipes."""
    folder = recipes_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """`shapes` -> recipes/shapes.yaml; an existing path is returned as is."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
        return path
    candidate = recipes_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    names = ", ".join(available_recipes()) or "none found"
    raise RecipeError(f"unknown recipe {str(name_or_path)!r}: use a YAML path or one of: {names}")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe by name or path and apply `section.key=value` overrides."""
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise RecipeError(f"recipe {path} is not valid YAML{where}: fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    for item in overrides or []:
        _apply_override(data, item)
    return from_dict(data)


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override {item!r} must look like section.key=value (e.g. train.steps=100)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise RecipeError(f"override {item!r}: value {raw!r} is not valid YAML") from None
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise RecipeError(f"override {item!r}: {where} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(data: dict[str, Any]) -> Recipe:
    """Build a `Recipe` from a plain mapping, checking every key, type, choice and range.

    Recipes written before the task seam (sections `text_encoder` and `latents`, keys
    `data.precompute_text/latents`) are read as the t2i recipe they describe.
    """
    data = _fill_preset(_migrate_pre_seam(data))
    recipe = _build(Recipe, data, prefix="")
    _check_ranges(recipe)
    _check_pair(recipe)
    return recipe


def _migrate_pre_seam(data: dict[str, Any]) -> dict[str, Any]:
    """Map the pre-seam t2i layout onto `source` / `target` (a copy; the input is not changed)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for old_name, new_name in (("text_encoder", "source"), ("latents", "target")):
        if old_name in data and new_name in data:  # e.g. an old-style override on a new recipe
            old = data[old_name]
            key = next(iter(old), "KEY") if isinstance(old, dict) and old else "KEY"
            key = "encoder" if old_name == "text_encoder" and key == "name" else key
            raise RecipeError(
                f"{old_name} is the pre-seam name of {new_name}, which this recipe has: "
                f"set {new_name}.{key} instead"
            )
    if "text_encoder" in data:
        old = data.pop("text_encoder")
        if isinstance(old, dict):
            old = dict(old)
            if "name" in old:
                old["encoder"] = old.pop("name")
            data["source"] = {"kind": "text", **old}
        else:
            data["source"] = old  # not a mapping: the loader says so
    if "latents" in data:
        old = data.pop("latents")
        if isinstance(old, dict):
            data["target"] = {"kind": "pixels"} if old.get("kind", "pixels") == "pixels" else dict(old)
        else:
            data["target"] = old
    if isinstance(data.get("data"), dict):
        section = dict(data["data"])
        for old_key, new_key in (
            ("precompute_text", "precompute_source"),
            ("precompute_latents", "precompute_target"),
        ):
            if old_key in section and new_key in section:
                raise RecipeError(
                    f"data.{old_key} is the pre-seam name of data.{new_key}, which this "
                    f"recipe has: set data.{new_key} instead"
                )
            if old_key in section:
                section[new_key] = section.pop(old_key)
        data["data"] = section
    return data


def _fill_preset(data: dict[str, Any]) -> dict[str, Any]:
    """Give `source`, `target` and `ve` the task preset's `kind` where the recipe names none."""
    if not isinstance(data, dict):
        return data
    task = data.get("task", "t2i")
    preset = TASKS.get(task) if isinstance(task, str) else None
    if preset is None:
        raise RecipeError(f"task: invalid choice {task!r}; expected one of: {', '.join(TASKS)}")
    data = dict(data)
    for section, kind in (("source", preset.source), ("target", preset.target), ("ve", preset.ve)):
        value = data.get(section)
        if value is None:
            data[section] = {"kind": kind}
        elif isinstance(value, dict) and "kind" not in value:
            data[section] = {"kind": kind, **value}
    return data


def check_section(section: Any, name: str) -> None:
    """Types, choices and ranges of one section changed at run time (e.g. sample overrides)."""
    _convert(type(section), _plain(dataclasses.asdict(section)), name)
    for key, ok, rule in _RANGES:
        where, field_name = key.split(".")
        if where == name and hasattr(section, field_name) and not ok(getattr(section, field_name)):
            raise RecipeError(f"{key}={getattr(section, field_name)!r} {rule}")


_YAML_BOOL_WORDS = {True: {"yes", "y", "on", "true"}, False: {"no", "n", "off", "false"}}


def _build_kind(classes: tuple[type, ...], data: Any, key: str) -> Any:
    """One of several section dataclasses, chosen by the mapping's `kind`."""
    if not isinstance(data, dict):
        raise RecipeError(f"{key} must be a mapping, got {data!r}")
    kinds = {get_args(get_type_hints(c)["kind"])[0]: c for c in classes}
    kind = data.get("kind")
    if kind not in kinds:
        raise RecipeError(f"{key}.kind: invalid choice {kind!r}; expected one of: {', '.join(kinds)}")
    return _build(kinds[kind], data, prefix=f"{key}.")


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"{where} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecipeError(
            f"unknown key {prefix + unknown[0]!r} (value {data[unknown[0]]!r}); "
            f"valid keys in {where}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType) and all(dataclasses.is_dataclass(a) for a in get_args(tp)):
        return _build_kind(get_args(tp), value, key)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and value not in choices:  # YAML 1.1 reads no/off/yes/on as booleans
            spelled = [c for c in choices if isinstance(c, str) and c.lower() in _YAML_BOOL_WORDS[value]]
            if len(spelled) == 1:
                return spelled[0]
        if value not in choices:
            raise RecipeError(
                f"{key}: invalid choice {value!r}; expected one of: {', '.join(map(str, choices))}"
            )
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{key}: expected a string, got {value!r}")
        return value
    raise RecipeError(f"{key}: unsupported type {tp!r}")  # a bug in the dataclasses, not the user
