"""Prompt files for evaluation: plain text (one prompt a line) or GenEval metadata jsonl.

A GenEval `evaluation_metadata.jsonl` holds one JSON object per line with at least a "prompt"
string (and usually "tag", "include", "exclude"). Each line is kept byte for byte in its
`GenevalRecord`, because the GenEval layout copies it into the prompt's folder unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossflow_core.atomic import write_text
from crossflow_core.errors import CrossflowError


@dataclass(frozen=True)
class GenevalRecord:
    """One prompt of a GenEval metadata file: its exact text, parsed object and prompt."""

    line: str
    data: dict[str, Any]

    @property
    def prompt(self) -> str:
        return str(self.data["prompt"])

    @property
    def tag(self) -> str:
        return str(self.data.get("tag", ""))


def parse_record(line: str, where: str) -> GenevalRecord:
    """One metadata line -> record; `where` ("FILE:LINE") prefixes the one-line error."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CrossflowError(f"{where}: not valid JSON ({exc.msg}); fix or remove that line") from None
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        raise CrossflowError(f'{where}: expected a JSON object with a "prompt" string; fix that line')
    return GenevalRecord(line=line, data=data)


def read_metadata(path: str | Path) -> list[GenevalRecord]:
    """All records of a GenEval `evaluation_metadata.jsonl` (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise CrossflowError(f"metadata file {path} does not exist; give GenEval's evaluation_metadata.jsonl")
    records = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line:
            records.append(parse_record(line, f"{path}:{lineno}"))
    if not records:
        raise CrossflowError(f"metadata file {path} has no prompts; expected one JSON object per line")
    return records


def write_metadata(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write records as a GenEval metadata jsonl (one compact JSON object per line), atomically."""
    return write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a text file (one per non-empty line) or a GenEval jsonl (`.jsonl`: its "prompt")."""
    path = Path(path)
    if not path.is_file():
        raise CrossflowError(f"prompt file {path} does not exist; give a text file with one prompt per line")
    if path.suffix.lower() == ".jsonl":
        return [record.prompt for record in read_metadata(path)]
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise CrossflowError(f"prompt file {path} has no prompts; write one prompt per line")
    return prompts
