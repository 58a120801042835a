"""Batches streamed from the shards by DataLoader workers, in exactly the sampler's order.

The loop keeps drawing indices from its `EpochSampler` (the state a checkpoint saves); the
DataLoader reads ahead with a *copy* of that sampler taken when the first batch is asked for (so
after a resume it starts where the checkpoint stopped), and each loaded batch is checked against
the indices the loop asked for: a resumed or multi-process run sees the very batches an
uninterrupted one would, whatever the number of workers or prefetching.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from crossflow_core.codecs import SourceCodec, TargetCodec
from crossflow_core.data.stream import LoadedFields, StreamedArrays
from crossflow_core.train.batches import EpochSampler
from crossflow_core.train.system import Batch


class _Batches(Dataset):
    """Map-style dataset whose items are whole micro-batches: indices [B] -> (indices, fields)."""

    def __init__(self, arrays: StreamedArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, indices: Tensor) -> tuple[Tensor, LoadedFields]:
        return indices, self.arrays.read(indices)


class _FollowSampler:
    """Yields the micro-batches [B] of `sampler`, forever, from the global batch it last drew
    (the loop draws a step's micro-batches before it asks for the first one's data)."""

    def __init__(self, sampler: EpochSampler) -> None:
        s = sampler
        self.args = (s.num_samples, s.batch_size, s.seed, s.rank, s.world, s.accum)
        self.state = {**s.state_dict(), "position": s.position - s.batch_size}

    def __iter__(self) -> Iterator[list[Tensor]]:
        copy = EpochSampler(*self.args)
        copy._trace = None  # the loop's own sampler traces what is trained on
        copy.load_state_dict(self.state)
        while True:
            for idx in copy.next_micro_batches():
                yield [idx]  # a "batch" of one item: the micro-batch's index tensor


def _first(items: list[tuple[Tensor, LoadedFields]]) -> tuple[Tensor, LoadedFields]:
    return items[0]


class StreamBatchMaker:
    """`make_batch(idx)` for `train.loader: stream`: the next prefetched batch, checked to be `idx`."""

    def __init__(
        self,
        arrays: StreamedArrays,
        sampler: EpochSampler,
        source: SourceCodec,
        target: TargetCodec,
        device: torch.device,
        workers: int = 0,
        prefetch: int = 2,
    ) -> None:
        self.arrays, self.sampler, self.source, self.target = arrays, sampler, source, target
        self.device, self.workers, self.prefetch = device, workers, prefetch
        self._batches: Iterator[Any] | None = None

    def _loader(self) -> Iterator[Any]:
        """Called at the first batch, after any resume: the sampler's state is the run's."""
        kwargs: dict[str, Any] = {}
        if self.workers > 0:
            kwargs = {"prefetch_factor": self.prefetch, "persistent_workers": True}
        loader = DataLoader(
            _Batches(self.arrays),
            batch_sampler=_FollowSampler(self.sampler),
            num_workers=self.workers,
            collate_fn=_first,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0),  # its seed draw must not touch the training RNG
            **kwargs,
        )
        return iter(loader)

    def __call__(self, idx: Tensor) -> Batch:
        if self._batches is None:
            self._batches = self._loader()
        got, fields = next(self._batches)
        if not torch.equal(got, idx):
            raise RuntimeError("the streamed batches left the sampler's order")  # a bug, never data
        local = torch.arange(len(idx))
        return Batch(
            source=self.source.from_fields(fields, local, self.device),
            target=self.target.from_fields(fields, local, self.device),
        )
