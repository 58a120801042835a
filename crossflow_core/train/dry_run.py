"""A training dry run: parameters, FLOPs per step and memory per GPU, with nothing loaded.

`dry_run(recipe, num_processes)` builds the recipe's `CrossFlowSystem` (VE + flow network + the
VE's L_enc head) with its parameters on the meta device and runs one training step on it
(`system(batch, phase)` forward + backward) at the per-GPU batch `train.batch_size /
num_processes`. No data, no weights, no frozen LM and no VAE are loaded: the source's shape
facts (the LM's token width) and the target's latent shape (the VAE's channels and downsampling)
come from the LM's / VAE's `config.json` when it is a local folder or in the local Hugging Face
cache, else from small tables of known encoders, else from explicit `assume` values.

What is measured and what is estimated:
- parameters: exact (the meta build has the real module tree);
- FLOPs: exact for what `torch.utils.flop_counter.FlopCounterMode` counts, 2 per multiply-add
  of matmuls, convolutions and attention (forward + the backward's matmuls; a layer whose input
  needs no gradient computes only its weight gradient); elementwise ops, norms, softmax,
  attention recomputation in fused kernels and the optimizer/EMA updates are not counted;
- memory: an estimate. Weights, gradients, AdamW's two moments and the EMA copy are fp32 and
  exact in size. Activations are the unique storages autograd saves for backward in one forward,
  run on fake CUDA tensors (meta-backed) under the recipe's real CUDA autocast rules, with
  attention as the fused kernel (which keeps q, k, v, out and the log-sum-exp, not the N x N
  matrix); they include autocast's half-precision weight copies. Not counted: the CUDA context,
  allocator caching and fragmentation, backward temporaries, kernel workspaces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossflow_core.codecs.base import SourceBatch
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import Recipe
from crossflow_core.train.shape_facts import (  # noqa: F401 - re-exported
    _HALF,
    ASSUMABLE,
    BYTES_FP32,
    KNOWN_TOKEN_DIMS,
    KNOWN_VAES,
    SD_STYLE_VAE,
    ShapeFacts,
    UnknownShapeError,
    _local_config,
    parse_assumptions,
    shape_facts,
    token_dim_of,
    vae_geometry,
)
from crossflow_core.train.system import Batch, CrossFlowSystem, Phase


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU. weights/grads/optimizer/ema/ddp_buckets: fp32 sizes (exact);
    activations: saved-for-backward tensors of one forward (an estimate, see the module doc)."""

    weights: int
    grads: int
    optimizer: int
    ema: int
    ddp_buckets: int
    activations: int
    activation_dtype: str

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.ema + self.ddp_buckets + self.activations


@dataclass(frozen=True)
class DryRunReport:
    """One training step of a recipe, per GPU. FLOPs count 2 per multiply-add (see the module doc)."""

    recipe: str
    phase: str
    num_processes: int
    batch_per_gpu: int
    spec: dict[str, int]
    latent_shape: tuple[int, int, int]
    params: dict[str, int]  # per component: ve, flow, objective
    params_total: int
    trainable_params: int
    flops_per_step: int  # forward + backward, one GPU
    flops_forward: int  # forward only, one GPU
    flops_forward_per_sample: float  # flops_forward / batch_per_gpu
    flops_forward_by_component: dict[str, int]  # ve, flow, objective; "other" = the rest (losses)
    memory: MemoryEstimate
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["latent_shape"] = list(self.latent_shape)
        out["notes"] = list(self.notes)
        out["memory"]["total"] = self.memory.total
        return out


COMPONENTS = ("ve", "flow", "objective")


def _count(module: nn.Module | None, trainable: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def build_meta_system(recipe: Recipe, facts: ShapeFacts) -> CrossFlowSystem:
    """The recipe's system with every parameter and buffer on the meta device (nothing allocated).

    Parameters go to meta as they are registered (accelerate's `init_empty_weights`), so
    initialisation costs nothing; host-side shape arithmetic in constructors stays on the CPU."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        system = CrossFlowSystem.from_recipe(recipe, facts.spec, facts.latent_shape)
    return system.to("meta")


def example_batch(recipe: Recipe, facts: ShapeFacts, batch: int, device: str | torch.device) -> Batch:
    """A `Batch` of the shapes and dtypes the loader gives (values are irrelevant on meta)."""
    target = torch.zeros(batch, *facts.latent_shape, device=device)
    if recipe.source.kind == "text":
        spec = facts.spec
        tokens = torch.zeros(batch, spec["num_tokens"], spec["token_dim"], device=device)
        source = SourceBatch(tokens, torch.ones(batch, spec["num_tokens"], dtype=torch.bool, device=device))
    elif recipe.source.kind == "image":
        spec = facts.spec
        source = SourceBatch(torch.zeros(batch, spec["channels"], spec["size"], spec["size"], device=device))
    else:
        source = SourceBatch(torch.zeros(batch, *facts.latent_shape, device=device))
    return Batch(source=source, target=target)


def count_step_flops(system: CrossFlowSystem, batch: Batch, phase: Phase) -> tuple[int, int, dict[str, int]]:
    """(forward FLOPs, forward + backward FLOPs, forward FLOPs per component) of one
    `system(batch, phase)` step, counted by `FlopCounterMode` (works on meta tensors).

    Components split the forward only: the counter's module tracker finds a module's backward
    through the tensors it returns, and the VE and L_enc head exchange dataclasses, so their
    backward FLOPs would land on the wrong module (the total is exact either way)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = system(batch, phase)
        forward, counts = counter.get_total_flops(), counter.get_flop_counts()
        out.total.backward()
    system.zero_grad(set_to_none=True)
    root = type(system).__name__
    per = {name: sum(counts.get(f"{root}.{name}", {}).values()) for name in COMPONENTS}
    per["other"] = forward - sum(per.values())
    return forward, counter.get_total_flops(), per


def _fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    **_: Any,
) -> Tensor:
    """SDPA as a CUDA GPU runs it in half precision: the fused (memory-efficient) kernel, which
    saves q, k, v, out and the log-sum-exp (a fake-CUDA run would otherwise take the math path)."""
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(~attn_mask, float("-inf"))
        bias = attn_mask.to(q.dtype).expand(*q.shape[:-1], k.shape[-2])
    out = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, dropout_p, is_causal, scale=scale
    )
    return out[0]


def _fake_cuda_mode() -> Any:
    """A FakeTensorMode in which ops on real host tensors run for real (e.g. the CPU draws of
    `null_pairs`), so data-dependent host code works while every device tensor is fake."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
    from torch.utils._pytree import tree_leaves

    class HostRealFakeMode(FakeTensorMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            kwargs = kwargs or {}
            device = kwargs.get("device")
            on_host = device is None or torch.device(device).type == "cpu"
            if on_host and not any(isinstance(a, FakeTensor) for a in tree_leaves((args, kwargs))):
                with unset_fake_temporarily():
                    return func(*args, **kwargs)
            return super().__torch_dispatch__(func, types, args, kwargs)

    return HostRealFakeMode(allow_non_fake_inputs=True)


@contextlib.contextmanager
def _cuda_autocast(dtype: torch.dtype | None) -> Iterator[None]:
    """CUDA autocast switched on directly (`torch.autocast` refuses it where no GPU is present);
    with fake CUDA tensors the real autocast rules (casts, weight cache) apply."""
    if dtype is None:
        yield
        return
    was_enabled, was_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", was_enabled)
        torch.set_autocast_dtype("cuda", was_dtype)


def saved_activation_bytes(
    system: CrossFlowSystem, recipe: Recipe, facts: ShapeFacts, batch: int, phase: Phase
) -> tuple[int, str]:
    """Bytes of the unique storages autograd saves in one forward (parameters excluded), on fake
    CUDA tensors under the recipe's CUDA autocast; and the dtype assumed, in words. `system` (on
    meta) is re-made in place with fake CUDA tensors."""
    half = _HALF.get(recipe.train.mixed_precision)
    mode = _fake_cuda_mode()
    seen: set[int] = set()
    kept: list[Any] = []  # saved storages stay referenced, so no storage address is reused
    total = 0
    with mode:
        fake = system.to_empty(device="cuda")
        params = {p.untyped_storage()._cdata for p in fake.parameters()}
        example = example_batch(recipe, facts, batch, "cuda")

        def pack(t: Tensor) -> Tensor:
            nonlocal total
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in seen and key not in params:
                seen.add(key)
                kept.append(storage)
                total += storage.nbytes()
            return t

        with mock.patch.object(F, "scaled_dot_product_attention", _fused_attention), _cuda_autocast(half):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = fake(example, phase)
        del out
    words = (
        f"{recipe.train.mixed_precision} CUDA autocast (torch's rules: matmuls, convs and attention "
        f"in {recipe.train.mixed_precision}; norms, softmax, losses and the residual stream in fp32)"
        if half
        else "fp32 (mixed_precision: no)"
    )
    return total, words


def dry_run(recipe: Recipe, num_processes: int = 1, assume: Mapping[str, int] | None = None) -> DryRunReport:
    """Parameters, FLOPs and memory of one training step of `recipe` per GPU, for `num_processes`
    GPUs sharing `train.batch_size`; `assume` supplies shape facts (ASSUMABLE) that are not on disk."""
    if num_processes < 1:
        raise CrossflowError(f"the number of processes must be at least 1, got {num_processes}")
    tc = recipe.train
    if tc.batch_size % num_processes:
        raise CrossflowError(
            f"train.batch_size={tc.batch_size} must be divisible by the {num_processes} processes: "
            f"set train.batch_size={max(num_processes, tc.batch_size // num_processes * num_processes)}"
        )
    per_gpu = tc.batch_size // num_processes
    phase: Phase = "ve" if tc.stage == "ve" else "joint"
    facts = shape_facts(recipe, assume)
    system = build_meta_system(recipe, facts)
    params = {name: _count(getattr(system, name)) for name in COMPONENTS}
    total_params, trainable = _count(system), _count(system, trainable=True)
    forward, step, per_component = count_step_flops(
        system, example_batch(recipe, facts, per_gpu, "meta"), phase
    )
    activations, dtype_words = saved_activation_bytes(system, recipe, facts, per_gpu, phase)
    memory = MemoryEstimate(
        weights=BYTES_FP32 * total_params,
        grads=BYTES_FP32 * trainable,
        optimizer=2 * BYTES_FP32 * trainable,  # AdamW exp_avg + exp_avg_sq, fp32
        ema=BYTES_FP32 * total_params,  # diffusers EMAModel's shadow copy on the device
        ddp_buckets=BYTES_FP32 * trainable if num_processes > 1 else 0,  # DDP's gradient buckets
        activations=activations,
        activation_dtype=dtype_words,
    )
    notes = [
        *facts.notes,
        f"step = {phase} phase, forward + backward at {per_gpu} samples per GPU "
        f"(train.batch_size {tc.batch_size} / {num_processes})",
        "FLOPs (exact): FlopCounterMode on meta tensors, 2 per multiply-add of matmuls, convs and "
        "attention; elementwise ops, norms and the optimizer/EMA updates are not counted",
        "memory: weights, gradients, AdamW moments, EMA (and DDP buckets) are fp32, exact in size",
        f"activations (estimate): tensors saved for backward by one forward on fake CUDA tensors, "
        f"{dtype_words}, attention as the fused kernel, autocast's weight copies included; the CUDA "
        "context, allocator fragmentation and backward temporaries are not counted",
    ]
    if not (recipe.data.precompute_source and recipe.data.precompute_target) and recipe.target.kind == "vae":
        notes.append(
            "the recipe does not precompute every feature: the frozen LM/VAE then also sit on "
            "the GPU in training, not counted here"
        )
    return DryRunReport(
        recipe=recipe.name,
        phase=phase,
        num_processes=num_processes,
        batch_per_gpu=per_gpu,
        spec=dict(facts.spec),
        latent_shape=tuple(facts.latent_shape),
        params=params,
        params_total=total_params,
        trainable_params=trainable,
        flops_per_step=int(step),
        flops_forward=int(forward),
        flops_forward_per_sample=forward / per_gpu,
        flops_forward_by_component=per_component,
        memory=memory,
        notes=tuple(notes),
    )
