"""What the streamed sources (COCO, WebDataset) share: ordered image decoding in worker
processes, and skip bookkeeping that a resumed `prepare` can restore.

`DecodePool(workers, size)` turns image payloads (a file path or the file's bytes) into uint8
[size, size, 3] arrays with `load_rgb` (EXIF orientation, resize of the shorter side, centre crop),
in ``workers`` processes (``spawn``: safe beside torch's threads) or in this process when
``workers`` is 1. Results come back in input order, so the output never depends on ``workers``.
A payload that fails to decode gives the error's text instead of an array; a worker process that
dies is a `CrossflowError` (never a silent respawn).

`SkipLog` counts skipped items by reason and keeps a few examples; its `state()` is JSON and
`SkipLog.from_state` restores it (the source's cursor carries it).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from crossflow_core.data.sources import load_rgb
from crossflow_core.errors import CrossflowError

T = TypeVar("T")
Payload = str | bytes | None  # an image file path, the bytes of an image file, or nothing to decode
Decoded = np.ndarray | str | None  # uint8 [S, S, 3], or why decoding failed, or None for no payload
MAX_EXAMPLES = 5


def decode_image(task: tuple[Payload, int]) -> Decoded:
    """(path or bytes, size) -> uint8 [size, size, 3]; the error's text when unreadable."""
    payload, size = task
    if payload is None:
        return None
    try:
        source = Path(payload) if isinstance(payload, str) else io.BytesIO(payload)
        return np.asarray(load_rgb(source, size), dtype=np.uint8)  # type: ignore[arg-type]
    except Exception as exc:  # untrusted files fail in many ways; never crash mid-shard
        return f"{type(exc).__name__}: {exc}"


def _decode_many(tasks: list[tuple[Payload, int]]) -> list[Decoded]:
    return [decode_image(task) for task in tasks]


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: leave when the parent is gone (a killed prepare leaves no orphans)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


class DecodePool:
    """Decode payloads in order with ``workers`` processes; use as a context manager."""

    def __init__(self, workers: int, size: int) -> None:
        if workers < 1:
            raise CrossflowError(f"data.workers must be >= 1, got {workers}")
        self.workers, self.size = workers, size
        self.chunk = max(32, 16 * workers)  # items per batch; two batches in flight
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> DecodePool:
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, context, _exit_with_parent, (os.getpid(),))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def decode(self, items: Iterable[tuple[T, Payload]]) -> Iterator[tuple[T, Decoded]]:
        """(item, payload) pairs -> (item, decoded), in the order given; reads ahead 2 batches."""
        if self._pool is None:
            for item, payload in items:
                yield item, decode_image((payload, self.size))
            return
        pool, source = self._pool, iter(items)
        pending: deque[tuple[list[T], list[Future]]] = deque()

        def submit() -> None:
            batch = list(islice(source, self.chunk))
            tasks = [(payload, self.size) for _, payload in batch]
            step = -(-len(tasks) // self.workers)  # one part per worker
            if batch:
                parts = [pool.submit(_decode_many, tasks[i:i + step]) for i in range(0, len(tasks), step)]
                pending.append(([item for item, _ in batch], parts))

        submit()
        submit()
        while pending:
            batch_items, parts = pending.popleft()
            try:
                decoded = [d for part in parts for d in part.result()]
            except BrokenProcessPool:
                raise CrossflowError(
                    "an image decoding process died (out of memory, or started from a script without "
                    "`if __name__ == '__main__':`): use fewer data.workers, or 1"
                ) from None
            submit()
            yield from zip(batch_items, decoded, strict=True)


class SkipLog:
    """Skipped items: counts per reason plus up to `MAX_EXAMPLES` examples each."""

    def __init__(self, counts: dict[str, int] | None = None, examples: dict[str, list[str]] | None = None):
        self.counts: Counter[str] = Counter(counts or {})
        self.examples: dict[str, list[str]] = {k: list(v) for k, v in (examples or {}).items()}

    def add(self, reason: str, what: str, n: int = 1) -> None:
        self.counts[reason] += n
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(what)

    def state(self) -> dict[str, Any]:
        return {"skipped": dict(sorted(self.counts.items())),
                "examples": {k: list(v) for k, v in sorted(self.examples.items())}}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> SkipLog:
        state = state or {}
        return cls(state.get("skipped"), state.get("examples"))

    def merged(self, other: SkipLog) -> SkipLog:
        """Both logs' counts added; examples concatenated (still at most `MAX_EXAMPLES` each)."""
        out = SkipLog(self.counts + other.counts)
        for reason in sorted(set(self.examples) | set(other.examples)):
            both = self.examples.get(reason, []) + other.examples.get(reason, [])
            out.examples[reason] = both[:MAX_EXAMPLES]
        return out
