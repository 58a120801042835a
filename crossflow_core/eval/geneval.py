"""GenEval: prompt metadata in, images out in the layout the official scorer reads.

Official repo: github.com/djghosh13/geneval. Its `evaluation/evaluate_images.py IMAGEDIR` visits
every sub-folder of IMAGEDIR whose name is all digits, reads `metadata.jsonl` there with
`json.load` (one JSON object: the prompt's line of `evaluation_metadata.jsonl`) and scores every
`samples/<digits>.png`. We write, per prompt at 0-based position i of the metadata file:

    <out>/<i:05d>/metadata.jsonl      the input line, byte for byte (plus a newline)
    <out>/<i:05d>/samples/<k:04d>.png sample k = 0 .. n-1 (README naming; any digits are read)
    <out>/<i:05d>/grid.png            optional: the n samples in one row

Each folder is built under the hidden `<out>/.<i:05d>.tmp-<pid>` (`atomic.atomic_dir`; not all
digits, so the scorer ignores it) and renamed into place when complete: a folder named by digits
is always complete, and a rerun skips complete folders (and removes stale temporaries).

The scorer needs mmdet 2.x + a CUDA GPU; `run_official_scorer` calls it when installed and
`summarize_results` reduces its `results.jsonl` the way the official `summary_scores.py` does
(per-tag accuracy; overall = mean over tags). Metadata files are read in `eval.prompts`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crossflow_core.atomic import atomic_dir, write_text
from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.eval.generate import Progress, generate_images
from crossflow_core.eval.prompts import (  # noqa: F401 - re-exported: GenEval metadata lives there
    GenevalRecord,
    parse_record,
    read_metadata,
    write_metadata,
)
from crossflow_core.eval.report import MetricResult
from crossflow_core.image_files import read_image, save_grid, save_png, to_uint8

if TYPE_CHECKING:
    from crossflow_core.eval.generate import ImagePipeline
    from crossflow_core.sample import SampleSettings

RUN_FILE = "crossflow_generation.json"  # not an all-digit folder: the official scorer ignores it
SCORER_HINT = (
    "install the official GenEval scorer (git clone github.com/djghosh13/geneval; mmcv-full + "
    "`mim install mmdet==2.27.0`; open_clip_torch; clip_benchmark; its Mask2Former weights via "
    "evaluation/download_models.sh; a CUDA GPU)"
)


class ScorerPathsMissing(CrossflowError):
    """Scoring was asked for without the official repository clone or its detector weights."""


@dataclass(frozen=True)
class LayoutEntry:
    """A complete prompt folder of a GenEval layout: index, parsed metadata, sample paths in order."""

    index: int
    record: dict[str, Any]
    samples: tuple[Path, ...]


@dataclass(frozen=True)
class GenerationSummary:
    """What `generate_layout` did: folders written now and complete folders skipped."""

    out: Path
    written: int
    skipped: int


def folder(out: Path, index: int) -> Path:
    return out / f"{index:05d}"


def sample_name(k: int) -> str:
    return f"{k:04d}.png"


def is_complete(out: Path, index: int, n_samples: int, record: GenevalRecord | None = None) -> bool:
    """True when the prompt folder has metadata and samples 0..n-1. A folder holding another
    prompt than `record` is an error (the output folder belongs to a different metadata file)."""
    d = folder(out, index)
    meta = d / "metadata.jsonl"
    if not meta.is_file():
        return False
    if record is not None:
        try:
            same = json.loads(meta.read_text(encoding="utf-8")) == record.data
        except json.JSONDecodeError:
            same = False
        if not same:
            raise CrossflowError(
                f"{d} holds a different prompt than line {index + 1} of the metadata; use a new output folder"
            )
    return all((d / "samples" / sample_name(k)).is_file() for k in range(n_samples))


def write_folder(out: Path, index: int, line: str, images: np.ndarray, grid: bool = True) -> Path:
    """Write one prompt folder atomically: uint8 images [n, H, W, 3] and the metadata line."""
    with atomic_dir(folder(out, index)) as tmp:
        (tmp / "samples").mkdir()
        for k, image in enumerate(images):
            save_png(image, tmp / "samples" / sample_name(k))
        if grid:
            tiles = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
            save_grid(tiles, tmp / "grid.png", nrow=len(images))
        (tmp / "metadata.jsonl").write_text(line + "\n", encoding="utf-8")
    return folder(out, index)


def check_run(out: Path, run: dict[str, Any]) -> None:
    """Record what generates `out` (JSON-able `run`), or refuse when `out` came from another run."""
    path = out / RUN_FILE
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != json.loads(json.dumps(run)):
            diff = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in run.items() if before.get(k) != v)
            raise CrossflowError(f"{out} was generated with other settings ({diff}); use a new output folder")
        return
    write_text(path, json.dumps(run, indent=2) + "\n")


_STALE = re.compile(r"\.\d{5,}\.(tmp|old)-\d+|\.tmp-\d{5,}-\d+")  # atomic_dir's; older releases'


def _clean_stale(out: Path) -> None:
    """Remove prompt-folder temporaries left by an interrupted run (never a digit-named folder)."""
    for p in out.glob(".*"):
        if p.is_dir() and _STALE.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True)


def _runs(indices: list[int]) -> list[list[int]]:
    """Split sorted indices into runs of consecutive integers."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def generate_layout(
    pipeline: ImagePipeline,
    lines: Sequence[str],
    out: str | Path,
    settings: SampleSettings,
    n_samples: int = 4,
    grid: bool = True,
    progress: Progress | None = None,
    run: dict[str, Any] | None = None,
) -> GenerationSummary:
    """Generate `n_samples` images per prompt into a GenEval layout under `out`, resumably.

    `lines[i]` (one JSON object) is folder i's metadata; an existing folder i with other metadata
    is an error. Seeds follow `generate.generate_images` over
    the full list, so a resumed run writes the same images as an uninterrupted one. `run`
    (model, sampling settings) is kept in `out/RUN_FILE`; resuming with another `run` is an error.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if run is not None:
        check_run(out, run)
    _clean_stale(out)
    records = [parse_record(line, f"metadata of prompt {i}") for i, line in enumerate(lines)]
    prompts = [r.prompt for r in records]
    todo = [i for i in range(len(prompts)) if not is_complete(out, i, n_samples, records[i])]
    per_call = max(1, settings.batch_size // n_samples)
    total, finished = len(todo) * n_samples, 0
    for run in _runs(todo):
        for c in range(0, len(run), per_call):
            chunk = run[c : c + per_call]
            base = finished

            def step(d: int, _t: int, base: int = base) -> None:
                if progress is not None:
                    progress(base + d, total)

            images = generate_images(
                pipeline,
                [prompts[i] for i in chunk],
                settings,
                n_samples,
                progress=step,
                start_index=chunk[0],
            )
            arr = to_uint8(images)
            for j, i in enumerate(chunk):
                write_folder(out, i, lines[i], arr[j * n_samples : (j + 1) * n_samples], grid=grid)
            finished += len(chunk) * n_samples
            if progress is not None:
                progress(finished, total)
    return GenerationSummary(out=out, written=len(todo), skipped=len(prompts) - len(todo))


def generate_geneval(
    pipeline: ImagePipeline,
    records: Sequence[GenevalRecord],
    out: str | Path,
    settings: SampleSettings,
    n_samples: int = 4,
    grid: bool = True,
    progress: Progress | None = None,
    run: dict[str, Any] | None = None,
) -> GenerationSummary:
    """`generate_layout` for GenEval records: folder i holds line i of the metadata file."""
    return generate_layout(pipeline, [r.line for r in records], out, settings, n_samples, grid, progress, run)


def read_layout(directory: str | Path) -> list[LayoutEntry]:
    """The complete prompt folders of a GenEval layout, by index, samples in numeric order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CrossflowError(f"image folder {directory} does not exist; give a GenEval-layout folder")
    entries = []
    subdirs = sorted(
        (p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    for d in subdirs:
        meta = d / "metadata.jsonl"
        if not meta.is_file():
            raise CrossflowError(f"{d} has no metadata.jsonl; it is not a GenEval prompt folder")
        record = parse_record(meta.read_text(encoding="utf-8").strip(), str(meta)).data
        samples_dir = d / "samples"
        names = (
            [p for p in samples_dir.glob("*.png") if re.fullmatch(r"\d+\.png", p.name)]
            if samples_dir.is_dir()
            else []
        )
        entries.append(LayoutEntry(int(d.name), record, tuple(sorted(names, key=lambda p: int(p.stem)))))
    if not entries:
        raise CrossflowError(
            f"{directory} has no GenEval prompt folders (00000/metadata.jsonl, samples/0000.png)"
        )
    return entries


def is_layout(directory: str | Path) -> bool:
    """True if `directory` has at least one all-digit sub-folder with a metadata.jsonl."""
    directory = Path(directory)
    return directory.is_dir() and any(
        p.is_dir() and p.name.isdigit() and (p / "metadata.jsonl").is_file() for p in directory.iterdir()
    )


def layout_images(entries: Sequence[LayoutEntry]) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Every sample of the layout as uint8 [H, W, 3], with its prompt record (one per image)."""
    images, records = [], []
    for entry in entries:
        for path in entry.samples:
            images.append(read_image(path))
            records.append(entry.record)
    return images, records


def scorer_missing() -> str | None:
    """None when the scorer's Python packages import here; else the one-line install hint."""
    needed = ("mmdet", "mmcv", "open_clip", "clip_benchmark", "pandas")
    absent = [m for m in needed if importlib.util.find_spec(m) is None]
    return None if not absent else f"GenEval scorer packages missing ({', '.join(absent)}): {SCORER_HINT}"


def run_official_scorer(images: Path, repo: Path, detector: Path, outfile: Path) -> Path:
    """Run the official `evaluation/evaluate_images.py` on a layout; returns its results.jsonl."""
    script = repo / "evaluation" / "evaluate_images.py"
    if not script.is_file():
        raise MissingResourceError(
            f"{script} not found; give a clone of github.com/djghosh13/geneval as the GenEval repository"
        )
    if not detector.is_dir():
        raise MissingResourceError(
            f"detector folder {detector} not found; run evaluation/download_models.sh DIR"
        )
    cmd = [sys.executable, str(script), str(images), "--outfile", str(outfile), "--model-path", str(detector)]
    proc = subprocess.run(cmd, cwd=repo / "evaluation", capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise MissingResourceError(f"GenEval scorer failed (exit {proc.returncode}): {tail[0][:200]}")
    return outfile


def summarize_results(
    path: str | Path, settings: dict[str, Any] | None = None, model: str | None = None
) -> list[MetricResult]:
    """GenEval scores from the scorer's results.jsonl: `geneval_<tag>` per tag (fraction of
    correct images, tags in order of first appearance) and `geneval_overall` = mean over tags."""
    path = Path(path)
    if not path.is_file():
        raise CrossflowError(f"GenEval results {path} not found")
    per_tag: dict[str, list[int]] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            tag, correct = str(row["tag"]), bool(row["correct"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CrossflowError(
                f'{path}:{lineno}: expected a JSON object with "tag" and "correct"'
            ) from None
        per_tag.setdefault(tag, []).append(int(correct))
    if not per_tag:
        raise CrossflowError(f"GenEval results {path} is empty")
    settings = dict(settings or {})
    results = [
        MetricResult(f"geneval_{tag}", sum(v) / len(v), len(v), settings, model) for tag, v in per_tag.items()
    ]
    overall = float(np.mean([r.value for r in results]))
    n = sum(r.n for r in results)
    return [*results, MetricResult("geneval_overall", overall, n, settings, model)]
