"""Writing a command's outputs: one PNG per output, a grid, and a JSON record beside them.

The one sequence every generating command ends with (sample, arith, interp, upscale, demo):
files are written atomically, the JSON record last, so a folder with its record is complete.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from crossflow_core.atomic import write_text
from crossflow_core.image_files import save_grid, save_png


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe, lower-case fragment of `text`."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def save_outputs(
    images: Tensor,
    out_dir: Path,
    names: list[str],
    record: dict[str, Any],
    record_name: str,
    grid: str | None = "grid.png",
    nrow: int = 8,
) -> list[Path]:
    """Write images [N, 3, H, W] in [0, 1] as `out_dir/names[i]`, a grid, then `record_name` (JSON)."""
    out_dir = Path(out_dir)
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    paths = [save_png(image, out_dir / name) for name, image in zip(names, images)]
    if grid is not None and len(images) and len({tuple(im.shape) for im in images}) == 1:
        save_grid(images, out_dir / grid, nrow=nrow)
    write_text(out_dir / record_name, json.dumps(record, indent=2, default=str))
    return paths
