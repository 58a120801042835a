"""Everything a resumed run needs, gathered behind one `state_dict` / `load_state_dict`.

A checkpoint is (tensor groups, JSON state): weights, EMA shadow weights, optimizer tensors and
every rank's RNG state go to safetensors groups; step, optimizer hyper-parameters, LR schedule,
EMA counters and the data position go to JSON. Nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from crossflow_core.train.batches import EpochSampler
from crossflow_core.train.checkpoint import (
    flatten_optimizer_state,
    restore_rng,
    rng_tensors,
    unflatten_optimizer_state,
)


def gather_rng(num_processes: int) -> list[dict[str, Tensor]]:
    """Every rank's RNG states (rank order); a collective call when there are several ranks."""
    mine = rng_tensors()
    if num_processes == 1:
        return [mine]
    from accelerate.utils import gather_object

    return list(gather_object([mine]))


@dataclass
class TrainState:
    """model (unwrapped), optimizer, LR scheduler, EMA and sampler of one run, plus its recipe."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any  # diffusers EMAModel over model.parameters()
    sampler: EpochSampler
    recipe: dict[str, Any]

    def names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]

    def state_dict(
        self, step: int, rngs: list[dict[str, Tensor]]
    ) -> tuple[dict[str, dict[str, Tensor]], dict]:
        """(tensor groups, JSON state) of the run at `step`; `rngs` from `gather_rng`."""
        opt_tensors, opt_rest = flatten_optimizer_state(self.optimizer.state_dict())
        groups = {
            "model": self.model.state_dict(),
            "ema": dict(zip(self.names(), self.ema.shadow_params)),
            "optimizer": opt_tensors,
            **{f"rng_rank{rank}": rng for rank, rng in enumerate(rngs)},
        }
        state = {
            "step": step,
            "optimizer": opt_rest,
            "scheduler": self.scheduler.state_dict(),
            "ema": {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"},
            "sampler": self.sampler.state_dict(),
            "recipe": self.recipe,
        }
        return groups, json.loads(json.dumps(state, default=float))

    def load_state_dict(self, groups: dict[str, dict[str, Tensor]], state: dict[str, Any], rank: int) -> int:
        """Restore everything (this rank's RNG included); returns the checkpoint's step."""
        self.model.load_state_dict(groups["model"])
        self.optimizer.load_state_dict(unflatten_optimizer_state(groups["optimizer"], state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict({**state["ema"], "shadow_params": [groups["ema"][n] for n in self.names()]})
        self.sampler.load_state_dict(state["sampler"])
        rng = groups.get(f"rng_rank{rank}")
        if rng is not None:
            restore_rng(rng)
        return int(state["step"])
