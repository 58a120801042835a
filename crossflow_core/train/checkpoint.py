"""Atomic, pickle-free checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint is a directory `RUN/checkpoints/step_00000100/` holding `<group>.safetensors`
files (model, ema, optimizer tensors, RNG states) and `state.json` (step, data position,
optimizer hyper-parameters, EMA counters...). It is written under a temporary name and
renamed when complete, so a crash never leaves a checkpoint that looks whole; `state.json`
is the last file written, and only directories with it count. The last `keep` are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from crossflow_core.atomic import atomic_dir

STATE_FILE = "state.json"


def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors "state.<param>.<key>", JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": rest["param_groups"]}


class Checkpointer:
    """Saves every `every` steps (and on demand), keeps the newest `keep` checkpoints."""

    def __init__(self, run_dir: Path, every: int, keep: int) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.every, self.keep = every, max(1, keep)

    def due(self, step: int, final: bool = False) -> bool:
        return final or (self.every > 0 and step % self.every == 0)

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step_*") if (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, groups: dict[str, dict[str, Tensor]], state: dict[str, Any]) -> Path:
        """Write the tensor groups and the JSON state as `step_<step>` atomically."""
        final = self.root / f"step_{step:08d}"
        with atomic_dir(final) as tmp:
            for name, tensors in groups.items():
                save_file(
                    {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                    tmp / f"{name}.safetensors",
                )
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))  # last: marks the checkpoint whole
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in [
            *self.root.glob(".step_*.tmp-*"),
            *self.root.glob(".step_*.old-*"),
            *self.root.glob(".tmp-step_*"),
        ]:  # atomic_dir's leftovers (and older releases')
            if not str(stale).endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def load(path: Path) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
        """(tensor groups, state) of a checkpoint directory."""
        groups = {p.stem: load_file(p) for p in sorted(Path(path).glob("*.safetensors"))}
        state = json.loads((Path(path) / STATE_FILE).read_text())
        return groups, state


def rng_tensors() -> dict[str, Tensor]:
    """This process's torch RNG states (CPU and every CUDA device)."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def restore_rng(tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
