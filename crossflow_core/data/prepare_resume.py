"""Resumable `prepare`: a killed run's complete shards are kept, only the rest is redone.

`prepare` writes into the hidden folder ``.OUT.partial-PID``. After each finished shard it
rewrites ``.progress.json`` there (atomically): the run's fingerprint, and per shard its name,
sample count, bytes, sha256, the source's cursor after its last sample and the caption statistics
so far. The next run (`claim_partial`) takes over the folder of a dead run whose fingerprint
matches its own (same recipe data/source/target sections but ``data.workers``, same codecs,
device and input files), keeps the shards whose bytes still match their record, in order up to
the first that does not, deletes everything else, and continues after the last kept shard: a
resumable source (``iter_from(cursor)``: COCO, WebDataset) starts there, any other is read from
the start and its first samples dropped unencoded. Any other leftover folder of a dead run is
deleted, as is everything when nothing matches: the run starts fresh.

The result is byte-identical to an uninterrupted run because `prepare`'s encoding windows never
cross a shard boundary and the text codecs' caption caches are refilled from the kept shards
(`restore`), so the remaining shards see exactly the same encoder batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import crossflow_core
from crossflow_core.atomic import file_sha256, write_text
from crossflow_core.data.manifest import ShardInfo
from crossflow_core.data.shards import SHARD_PATTERN, iter_shard_files, load_npy

PROGRESS_NAME = ".progress.json"
PROGRESS_VERSION = 1
STATS_FIELDS = ("count", "words", "max_words", "max_tokens", "truncated")


def fingerprint(data: Any, source_cfg: Any, target_cfg: Any, source: Any, codecs: dict[str, Any],
                device: str) -> str:
    """sha256 of everything that decides a prepare's bytes (not ``data.workers``: it does not)."""
    payload = {
        "version": PROGRESS_VERSION,
        "crossflow": crossflow_core.__version__,
        "data": {k: v for k, v in dataclasses.asdict(data).items() if k != "workers"},
        "source_cfg": dataclasses.asdict(source_cfg),
        "target_cfg": dataclasses.asdict(target_cfg),
        "codecs": codecs,
        "device": str(device),
        "input": source.describe(),
        "files": _input_signature(source),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _input_signature(source: Any) -> str:
    signature = getattr(source, "input_signature", None)
    if callable(signature):
        return signature()
    pairs = getattr(source, "pairs", None)  # a FolderSource: its images, captions and depth sidecars
    if pairs is None:
        return ""  # a generated source (shapes): describe() says it all
    digest = hashlib.sha256()
    for pair in pairs:
        for path in (pair.image, getattr(pair, "depth", None)):
            if path is not None:
                st = os.stat(path)
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        digest.update(pair.caption.encode("utf-8") + b"\n")
    return digest.hexdigest()


@dataclass
class Resume:
    """This run's partial folder and the verified shards it already holds (none for a fresh run)."""

    folder: Path
    fingerprint: str
    records: list[dict[str, Any]] = field(default_factory=list)
    shapes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def infos(self) -> list[ShardInfo]:
        return [ShardInfo(r["name"], r["count"], r["bytes"], r["sha256"]) for r in self.records]

    @property
    def done(self) -> int:
        """Samples in the kept shards."""
        return sum(int(r["count"]) for r in self.records)

    def stream(self, source: Any) -> Iterator[Any]:
        """The source's records after the kept shards."""
        if not self.records:
            yield from source
        elif hasattr(source, "iter_from"):
            yield from source.iter_from(self.records[-1]["cursor"])
        else:
            yield from islice(iter(source), self.done, None)

    def restore(self, stats: Any, codecs: list[Any]) -> None:
        """Caption statistics and text-codec caption caches as they were after the kept shards."""
        if not self.records:
            return
        for name in STATS_FIELDS:
            setattr(stats, name, self.records[-1]["stats"][name])
        caches = _text_caches(codecs)
        fresh: dict[str, tuple[Any, Any]] = {}
        for record in self.records:
            for _, files in iter_shard_files(self.folder / record["name"]):
                caption = files["txt"].decode("utf-8")
                stats.unique.add(caption)
                if caches and "tokens.npy" in files and caption not in fresh:
                    fresh[caption] = (load_npy(files["tokens.npy"]), load_npy(files["mask.npy"]))
        for text in caches:
            text.remember(fresh)

    def shard_done(self, shards: tuple[ShardInfo, ...] | list[ShardInfo], source: Any, stats: Any,
                   shapes: dict[str, tuple[int, ...]]) -> None:
        """Record the shards finished since the last call (at most one per encoding window)."""
        cursor = source.cursor() if hasattr(source, "cursor") else None
        for info in list(shards)[len(self.records):]:
            self.records.append({"name": info.name, "count": info.count, "bytes": info.bytes,
                                 "sha256": info.sha256, "cursor": cursor,
                                 "stats": {k: getattr(stats, k) for k in STATS_FIELDS}})
            self.shapes = {k: list(v) for k, v in shapes.items()}
            self._save()

    def finish(self) -> None:
        """Remove the progress file: the folder is about to become the dataset."""
        (self.folder / PROGRESS_NAME).unlink(missing_ok=True)

    def _save(self) -> None:
        progress = {"version": PROGRESS_VERSION, "fingerprint": self.fingerprint,
                    "shapes": self.shapes, "shards": self.records}
        write_text(self.folder / PROGRESS_NAME, json.dumps(progress, sort_keys=True) + "\n", fsync=True)


def _text_caches(codecs: list[Any]) -> list[Any]:
    """The TextSource behind each codec that encodes captions through its cache."""
    from crossflow_core.codecs.text import TextSource

    out: list[Any] = []
    for codec in codecs:
        text = codec if isinstance(codec, TextSource) else getattr(codec, "text", None)
        if isinstance(text, TextSource) and all(text is not t for t in out):
            out.append(text)
    return out


def _dead_partials(out_dir: Path) -> list[Path]:
    """Delete the ``.OUT.old-PID`` folders of dead runs; return the dead runs' partial folders
    (this process's own name included: a PID reused after a crash)."""
    prefix = f".{out_dir.name}."
    partials = []
    for path in sorted(out_dir.parent.iterdir()):
        if not path.name.startswith(prefix):
            continue
        kind, _, pid = path.name[len(prefix):].rpartition("-")
        if kind not in {"partial", "old"} or not pid.isdigit() or not path.is_dir():
            continue
        if int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # a live run's folder is left alone
            except ProcessLookupError:
                pass
            except (PermissionError, OverflowError):
                continue
        if kind == "old":
            shutil.rmtree(path, ignore_errors=True)
        else:
            partials.append(path)
    return partials


def claim_partial(out_dir: Path, fp: str) -> Resume:
    """This run's partial folder: a dead run's with the same fingerprint (its verified shards
    kept), else a fresh one. Other dead runs' folders are deleted."""
    folder = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    found = [(path, _read(path, fp)) for path in _dead_partials(out_dir)]
    usable = [(path, p) for path, p in found if p is not None]
    best = max(usable, key=lambda item: len(item[1]["shards"]), default=None)
    for path, _ in found:
        if best is None or path != best[0]:
            shutil.rmtree(path, ignore_errors=True)
    if best is None:
        return Resume(folder, fp)
    if best[0] != folder:
        try:
            os.rename(best[0], folder)
        except OSError:  # another run took it first
            shutil.rmtree(folder, ignore_errors=True)
            return Resume(folder, fp)
    resume = Resume(folder, fp, _verified(folder, best[1]["shards"]), dict(best[1]["shapes"]))
    keep = {r["name"] for r in resume.records} | {PROGRESS_NAME}
    for path in folder.iterdir():
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    resume._save()
    return resume


def _read(folder: Path, fp: str) -> dict[str, Any] | None:
    """The progress of a partial folder when it was made with fingerprint `fp`, else None."""
    try:
        progress = json.loads((folder / PROGRESS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(progress, dict) and progress.get("version") == PROGRESS_VERSION \
        and progress.get("fingerprint") == fp and isinstance(progress.get("shards"), list) \
        and isinstance(progress.get("shapes"), dict)
    return progress if ok else None


def _verified(folder: Path, records: list[Any]) -> list[dict[str, Any]]:
    """The records, in order, up to the first whose shard is missing or has other bytes."""
    kept = []
    for i, record in enumerate(records):
        try:
            path = folder / SHARD_PATTERN.format(i)
            ok = record["name"] == path.name and path.is_file() and path.stat().st_size == record["bytes"] \
                and file_sha256(path) == record["sha256"] and int(record["count"]) >= 1
        except (KeyError, TypeError, ValueError, OSError):
            ok = False
        if not ok:
            break
        kept.append(record)
    return kept
