"""The training loop: accelerate, AdamW + the LR schedule (train/schedule.py), EMA, checkpoints, export.

It calls one step (`system(batch, phase)`) and knows no flow maths and no task: the recipe's
codecs read their fields of the prepared shards and build the batches. Everything needed to
resume is one `TrainState`; running the same command again continues from the latest
checkpoint, and on CPU a resumed run reaches bit-identical weights to an uninterrupted one.

With several processes (torchrun / accelerate launch) `train.batch_size` is the global batch of
one optimizer step: each process takes an equal slice, split into `train.grad_accum`
micro-batches; the LR, EMA and step counter move once per optimizer step. Every process calls
every collective (gradient all-reduce, loss mean, RNG gather); only the main process writes
checkpoints, logs, sample grids and the export, and only it calls the callbacks.
"""

from __future__ import annotations

import dataclasses
import math
import time
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin, set_seed
from diffusers.training_utils import EMAModel

from crossflow_core.codecs import SourceCodec, TargetCodec, build_codecs
from crossflow_core.data.arrays import TrainingArrays, load_training_arrays
from crossflow_core.data.manifest import Manifest
from crossflow_core.data.stream import StreamedArrays, open_streamed
from crossflow_core.errors import CrossflowError
from crossflow_core.export import ModelIndex, save_exported
from crossflow_core.recipe import Recipe
from crossflow_core.recipe_sections import TrainConfig
from crossflow_core.train.batches import BatchMaker, EpochSampler
from crossflow_core.train.callbacks import TrainCallbacks
from crossflow_core.train.checkpoint import Checkpointer
from crossflow_core.train.compat import check_data_matches, check_run_recipe
from crossflow_core.train.logging import RunLogger
from crossflow_core.train.schedule import FLOW_PHASES, make_scheduler, phase_at
from crossflow_core.train.state import TrainState, gather_rng
from crossflow_core.train.stream_batches import StreamBatchMaker
from crossflow_core.train.system import CrossFlowSystem


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_dir: Path
    step: int
    resumed_from: int | None
    losses: dict[str, float]  # the last step's loss terms, means over micro-batches and processes
    wall_time_s: float
    main_process: bool = True  # False on the other processes of a multi-process run (they print nothing)


@dataclass(frozen=True)
class TaskData:
    """A prepared dataset read for a recipe: its codecs, the fields they need, the shapes."""

    source: SourceCodec
    target: TargetCodec
    arrays: TrainingArrays | StreamedArrays
    spec: dict
    latent_shape: tuple[int, int, int]


def load_task_data(recipe: Recipe, data_dir: Path, device: torch.device) -> TaskData:
    """The recipe's codecs and the shard fields they read (only those) of `data_dir`."""
    manifest = Manifest.load(data_dir)
    check_data_matches(manifest, recipe, data_dir)
    stored = tuple(manifest.fields)
    token_dim = manifest.text_embedding_shape[1] if manifest.text_embedding_shape else None
    source, target = build_codecs(
        recipe.source, recipe.target, device=device, token_dim=token_dim, image_size=int(manifest.image_size)
    )
    fields = tuple(dict.fromkeys(source.train_fields(stored) + target.train_fields(stored)))
    if recipe.train.loader == "stream":
        arrays: TrainingArrays | StreamedArrays = open_streamed(data_dir, fields)
    else:
        arrays = load_training_arrays(data_dir, fields)
    latent_shape = target.latent_shape(int(manifest.image_size))
    return TaskData(source, target, arrays, source.spec(), latent_shape)


def make_ema(parameters, tc: TrainConfig) -> EMAModel:
    """The EMA of `parameters`: decay `train.ema_decay` at every update after the first (which
    copies the weights), or with `train.ema_warmup` diffusers' ramp (1 + s) / (10 + s) capped at it."""
    floor = 0.0 if tc.ema_warmup else tc.ema_decay
    return EMAModel(parameters, decay=tc.ema_decay, min_decay=floor)


def ema_start_share(tc: TrainConfig) -> float:
    """The share of the EMA weights that still comes from the first step's weights after
    `train.steps` updates: decay^(steps - 1) at a constant decay (the first update copies),
    0 with the warm-up ramp (it forgets the start within tens of steps)."""
    if tc.ema_warmup or tc.steps <= 1:
        return 0.0
    return tc.ema_decay ** (tc.steps - 1)


def _optimizer(system: torch.nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    tc = recipe.train
    fused = device.type in ("cpu", "cuda")  # one kernel for all parameters (CPU: 6 ms vs 22 ms per update)
    return torch.optim.AdamW(
        system.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, fused=fused
    )


def _accelerator(tc: TrainConfig) -> Accelerator:
    """An `Accelerator`; accelerate keeps one process-wide state, so a second run in the same
    process with another `train.mixed_precision` resets that state instead of failing."""
    # phases that leave parts untrained (VE/flow pretraining, a frozen target network) need this
    ddp = DistributedDataParallelKwargs(find_unused_parameters=tc.stage != "joint" or tc.target_steps > 0)
    # train.grad_accum, explicitly: accelerate's config/env must not change the micro-batch count
    accum = GradientAccumulationPlugin(num_steps=tc.grad_accum, sync_with_dataloader=False)
    kwargs = dict(
        mixed_precision=tc.mixed_precision, gradient_accumulation_plugin=accum, kwargs_handlers=[ddp]
    )
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()  # the distributed setup (PartialState) is kept
        return Accelerator(**kwargs)


TERMS = ("total", "fm", "enc", "kl", "ve_mu_std", "ve_sigma")  # the last two: the VE's signal
TARGET_TERMS = ("target", "target_acc")  # logged in the "target" phase of a trainable target codec


@dataclass
class _Run:
    """The pieces of one run on this process. `model` is the plain system (what checkpoints,
    EMA and export read); `wrapped` is what accelerate prepared (DDP with several processes)."""

    recipe: Recipe
    accelerator: Accelerator
    data: TaskData
    model: CrossFlowSystem
    wrapped: torch.nn.Module
    optimizer: Any  # accelerate's wrapper: steps only when the gradients are synced
    scheduler: torch.optim.lr_scheduler.LambdaLR  # not prepared: accelerate would step it once per process
    ema: EMAModel
    sampler: EpochSampler
    state: TrainState
    checkpointer: Checkpointer
    make_batch: BatchMaker | StreamBatchMaker


def _build(recipe: Recipe, data_dir: Path, run_dir: Path) -> _Run:
    tc = recipe.train
    accelerator = _accelerator(tc)
    with accelerator.main_process_first():  # the main process records the recipe before the others read it
        check_run_recipe(run_dir, recipe)
    device = accelerator.device
    set_seed(tc.seed, device_specific=True)
    data = load_task_data(recipe, data_dir, device)
    target_net = data.target.trainable(data.arrays)  # None for a fixed target codec
    model = CrossFlowSystem.from_recipe(recipe, data.spec, data.latent_shape, target_net)
    if not any(p.requires_grad for p in model.parameters()):
        raise CrossflowError("the recipe's networks have no parameters to train")
    optimizer = _optimizer(model, recipe, device)
    scheduler = make_scheduler(optimizer, recipe)
    sampler = EpochSampler(
        len(data.arrays), tc.batch_size, tc.seed, accelerator.process_index, accelerator.num_processes,
        tc.grad_accum,
    )
    wrapped, prepared = accelerator.prepare(model, optimizer)  # DDP broadcasts the main process's weights
    ema = make_ema(model.parameters(), tc)  # after the broadcast: one start on every rank
    state = TrainState(model, optimizer, scheduler, ema, sampler, recipe.to_dict())
    checkpointer = Checkpointer(run_dir, tc.checkpoint_every, tc.keep_checkpoints)
    if isinstance(data.arrays, StreamedArrays):
        make_batch: BatchMaker | StreamBatchMaker = StreamBatchMaker(
            data.arrays, sampler, data.source, data.target, device, workers=tc.num_workers
        )
    else:
        make_batch = BatchMaker(data.arrays, data.source, data.target, device)
    return _Run(recipe, accelerator, data, model, wrapped, prepared, scheduler, ema, sampler, state,
                checkpointer, make_batch)


def _resume(run: _Run, run_dir: Path) -> int | None:
    """Load the latest checkpoint (every process, each its own RNG); its step, or None."""
    latest = run.checkpointer.latest()
    if latest is None:
        return None
    step = run.state.load_state_dict(*Checkpointer.load(latest), run.accelerator.process_index)
    steps = run.recipe.train.steps
    if step > steps:
        raise CrossflowError(
            f"{run_dir} is already at step {step}, beyond train.steps={steps}: "
            "raise train.steps to continue, or start a new run directory"
        )
    return step


def _save(run: _Run, step: int) -> None:
    """A checkpoint of `step`: a collective call (every process sends its RNG), the main one writes."""
    rngs = gather_rng(run.accelerator.num_processes)
    if run.accelerator.is_main_process:
        run.checkpointer.save(step, *run.state.state_dict(step, rngs))
    run.accelerator.wait_for_everyone()


def _ema_system(run: _Run) -> CrossFlowSystem:
    """A copy of the system holding the EMA weights (no collective: the main process alone may call it).
    A trainable target network keeps its live weights: the flow was trained on its latents."""
    target = run.model.target
    copy = CrossFlowSystem.from_recipe(
        run.recipe, run.data.spec, run.data.latent_shape, None if target is None else deepcopy(target)
    )
    copy = copy.to(run.accelerator.device)
    copy.load_state_dict(run.model.state_dict())
    run.ema.copy_to(copy.parameters())
    if target is not None:
        copy.target.load_state_dict(target.state_dict())
    return copy.eval()


def _term(out: Any, name: str) -> torch.Tensor:
    """A loss term of `out`, zero where the phase has none (e.g. the VE's signal while a target
    codec pretrains)."""
    value = getattr(out, name)
    return out.total.new_zeros(()) if value is None else value.to(out.total.dtype)


def _train_step(run: _Run, step: int) -> dict[str, Any]:
    """Optimizer step `step` (0-based) over `train.grad_accum` micro-batches of this process's part of
    the global batch; returns its log row (loss terms averaged over micro-batches and processes)."""
    acc, tc = run.accelerator, run.recipe.train
    phase = phase_at(run.recipe, step)
    names = TERMS + TARGET_TERMS if phase == "target" else TERMS
    terms, grad_norm = [], None
    for idx in run.sampler.next_micro_batches():
        with acc.accumulate(run.wrapped):  # no gradient all-reduce until the last micro-batch
            with acc.autocast():
                out = run.wrapped(run.make_batch(idx), phase)
            acc.backward(out.total)  # divided by train.grad_accum
            terms.append(torch.stack([_term(out, k) for k in names]).detach().float())
            if tc.grad_clip is not None and acc.sync_gradients:
                grad_norm = acc.clip_grad_norm_(run.wrapped.parameters(), tc.grad_clip)
            run.optimizer.step()  # skipped by accelerate before the last micro-batch
            run.optimizer.zero_grad(set_to_none=True)
    assert acc.sync_gradients, "micro-batches and accelerate's accumulation count disagree"
    run.scheduler.step()
    run.ema.step(run.model.parameters())
    values = acc.reduce(torch.stack(terms).mean(0), "mean").cpu().tolist()  # collective: all ranks agree
    losses = dict(zip(names, values))
    if not all(map(math.isfinite, values)):
        raise CrossflowError(
            f"loss became {losses['total']} at step {step + 1}: lower train.lr or set train.grad_clip"
        )
    row = {"step": step + 1, "phase": phase, **losses, "lr": run.scheduler.get_last_lr()[0]}
    if grad_norm is not None:
        row["grad_norm"] = float(grad_norm)
    return row


def _export(run: _Run, model_dir: Path) -> None:
    data = run.data
    index = ModelIndex(
        recipe=run.recipe,
        step=run.recipe.train.steps,
        image_size=int(data.arrays.manifest.image_size),
        latent_shape=data.latent_shape,
        source={"kind": data.source.kind, "spec": data.spec, "identity": data.source.identity()},
        target={"kind": data.target.kind, "identity": data.target.identity()},
    )
    final = _ema_system(run)
    components = {"ve": final.ve, "flow": final.flow}
    if final.target is not None:  # the trained target network (decodes the flow's latents)
        components["target"] = final.target
    save_exported(model_dir, dataclasses.replace(index, components=tuple(components)), components)


def train(
    recipe: Recipe, data_dir: Path, run_dir: Path, callbacks: TrainCallbacks | None = None
) -> TrainResult:
    """Train (or resume) `recipe` on the prepared dataset `data_dir`, exporting RUN/model.

    Under a multi-process launch every process calls this; `callbacks` fire on the main one only.
    """
    tc = recipe.train
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    run = _build(recipe, data_dir, run_dir)
    acc, main = run.accelerator, run.accelerator.is_main_process
    cb = (callbacks or TrainCallbacks()) if main else TrainCallbacks()
    resumed_from = _resume(run, run_dir)
    start_step = resumed_from or 0
    run.ema.to(acc.device)
    extra = TARGET_TERMS if run.model.target is not None else ()
    logger = RunLogger(run_dir, enabled=main, resume_step=start_step, extra_columns=extra)
    data = run.data
    sampling = tc.sample_every > 0 and main  # the other processes load no sampling inputs (e.g. an LM)
    grid = data.source.grid(recipe.sample.prompts, data.arrays, acc.device) if sampling else None

    t_start = time.time()
    stale = ema_start_share(tc)
    if stale > 0.05:
        cb.on_message(
            f"warning: with train.ema_decay={tc.ema_decay} over {tc.steps} steps the exported EMA weights "
            f"are still {stale:.0%} those of step 1: lower train.ema_decay or set train.ema_warmup=true"
        )
    cb.on_start(start_step, tc.steps)
    losses: dict[str, float] = {}
    run.wrapped.train()
    for step in range(start_step, tc.steps):
        row = _train_step(run, step)
        done, losses = step + 1, {k: row[k] for k in TERMS + TARGET_TERMS if k in row}
        if done % tc.log_every == 0 or done == tc.steps:
            logger.log(row)
        cb.on_step(done, tc.steps, row)
        # a preview shows the flow: none while it is not trained yet (VE or target pretraining)
        if grid is not None and done % tc.sample_every == 0 and row["phase"] in FLOW_PHASES:
            logger.sample_grid(done, _ema_system(run), grid, data.target, recipe.sample)
        if run.checkpointer.due(done, final=done == tc.steps):
            _save(run, done)
    if start_step == tc.steps and run.checkpointer.latest() is None:
        _save(run, tc.steps)

    model_dir = run_dir / "model"
    if main:
        _export(run, model_dir)
        logger.close()
    acc.wait_for_everyone()
    acc.end_training()
    return TrainResult(run_dir, model_dir, tc.steps, resumed_from, losses, time.time() - t_start, main)
