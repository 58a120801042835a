"""Which weights a frozen encoder name resolves to, told without loading them.

`prepare` records this revision of the text encoder and the VAE in the manifest; training
compares it with what the recipe's names resolve to now and refuses shards made by other weights
(a re-downloaded hub model, a fine-tuned copy in the same folder). The revision is the hub
commit of a cached snapshot (`hub:<sha>`), else a fingerprint of the folder (`sha256:<hex>`):
config.json, and each weight file's name, size, first and last MiB (a fine-tune of the same
architecture has the same size but different bytes).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_PROBE = 1 << 20


def _hub_snapshot(name: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not a repo id, not cached, or no huggingface_hub: no revision
        return None


def weights_revision(name_or_path: str | None) -> str | None:
    """`hub:<commit>` or `sha256:<16 hex>` for a local folder or cached hub id; None if unknown."""
    if not name_or_path:
        return None
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        path = _hub_snapshot(name_or_path) or path
        if not path.is_dir():
            return None
    if "snapshots" in path.parts[:-1]:
        return "hub:" + path.parts[path.parts.index("snapshots") + 1]
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = str(file.relative_to(path))
        if file.name == "config.json":
            digest.update(rel.encode() + b"\0" + file.read_bytes())
        elif file.suffix in WEIGHT_SUFFIXES:
            size = file.stat().st_size
            with open(file, "rb") as f:
                head = f.read(_PROBE)
                f.seek(max(0, size - _PROBE), os.SEEK_SET)
                tail = f.read(_PROBE)
            digest.update(f"{rel}\0{size}\0".encode() + head + tail)
    return "sha256:" + digest.hexdigest()[:16]
