"""Evaluation results as typed records, written as JSON.

Every metric command returns a list of `MetricResult`. The CLI prints them as a rich table
(or only the JSON with `--json`); `write_results` stores them next to the evaluated data.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crossflow_core.atomic import write_text


@dataclass(frozen=True)
class MetricResult:
    """One metric value with everything needed to compare it with another run.

    `value` is None when the metric is unavailable (then `settings["unavailable"]` says why).
    """

    metric: str
    value: float | None
    n: int
    settings: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    git_commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def git_commit() -> str | None:
    """The crossflow checkout's HEAD commit, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def stamp(
    results: Sequence[MetricResult], model: str | None, extra: Mapping[str, Any] | None = None
) -> list[MetricResult]:
    """Results with the model (when given), the git commit and `extra` settings added."""
    commit = git_commit()
    return [
        dataclasses.replace(
            r, model=model or r.model, git_commit=commit, settings={**r.settings, **(extra or {})}
        )
        for r in results
    ]


def results_to_json(results: list[MetricResult]) -> str:
    """Results as a JSON document: {"results": [...]}."""
    return json.dumps({"results": [r.to_dict() for r in results]}, indent=2, sort_keys=False)


def write_results(results: list[MetricResult], path: str | Path) -> Path:
    """Write results atomically (temp file, then rename) and return the path."""
    return write_text(path, results_to_json(results) + "\n")
