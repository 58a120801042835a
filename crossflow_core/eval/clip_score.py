"""CLIP score: how well images match their prompts under a CLIP model.

For image i and prompt i, cos_i = <E_I(i), E_T(i)> / (|E_I(i)| |E_T(i)|) with the projected
embeddings of a transformers `CLIPModel` (`get_image_features`, `get_text_features`). Two
summaries are reported, named so that they cannot be confused:

- `clip_cosine`      = mean_i cos_i: the raw cosine the CrossFlow paper reports (e.g. 0.29).
- `clip_score_x100`  = max(100 * mean_i cos_i, 0): torchmetrics' `CLIPScore` (e.g. 29.0).
  torchmetrics clamps the mean, not each cosine; for real CLIP models every cos_i > 0 and
  both readings coincide.

Images enter as uint8 [N, H, W, 3] (what is saved to disk), so scoring generated tensors and
scoring their saved PNGs give the same number. The processor resizes and normalises them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossflow_core.errors import CrossflowError, MissingResourceError


class ClipModelMissing(MissingResourceError):
    """The CLIP model is neither a loadable folder nor a hub id in the cache (or reachable)."""


@dataclass(frozen=True)
class ClipScores:
    """Per-pair cosines [N] between image and prompt embeddings, with their summaries."""

    cosines: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.cosines.numel())

    @property
    def clip_cosine(self) -> float:
        """Mean raw cosine (the paper's CLIP score)."""
        return float(self.cosines.double().mean())

    @property
    def clip_score_x100(self) -> float:
        """torchmetrics' `CLIPScore`: max(100 * mean cosine, 0)."""
        return max(100.0 * self.clip_cosine, 0.0)


@dataclass(frozen=True)
class ClipModel:
    """A loaded CLIP model and its processor; `source` is the hub id or folder it came from."""

    model: Any
    processor: Any
    source: str
    device: str


def load_clip(name_or_dir: str | Path, device: str | None = None) -> ClipModel:
    """Load `CLIPModel` + `CLIPProcessor` from a local folder or a hub id (cache first, then hub).

    Raises ClipModelMissing (one line) when neither works, e.g. offline with an empty cache.
    """
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    source = str(name_or_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    local = Path(source).expanduser()
    attempts: list[dict[str, Any]] = [{}] if local.is_dir() else [{"local_files_only": True}, {}]
    last: Exception | None = None
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars in the command's output
    try:
        for kwargs in attempts:
            try:
                path = str(local) if local.is_dir() else source
                model = CLIPModel.from_pretrained(path, **kwargs)
                processor = CLIPProcessor.from_pretrained(path, **kwargs)
                break
            except Exception as exc:  # noqa: BLE001 - transformers raises many types for "not found"
                last = exc
        else:
            reason = str(last).strip().splitlines()[0][:160] if last else "unknown error"
            raise ClipModelMissing(
                f"cannot load CLIP model {source!r} ({type(last).__name__}: {reason}); use a local "
                "folder saved with save_pretrained, or a hub id such as openai/clip-vit-base-patch32 "
                "once it is downloaded to the Hugging Face cache"
            )
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return ClipModel(model=model.eval().to(device), processor=processor, source=source, device=device)


def _features(output: Any) -> torch.Tensor:
    """Projected embeddings [B, D]: transformers < 5 returns a tensor, 5 a ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise RuntimeError(f"unexpected CLIP feature output {type(output).__name__}")
    return pooled


@torch.inference_mode()
def clip_cosines(
    clip: ClipModel, images: np.ndarray | Sequence[np.ndarray], prompts: Sequence[str], batch_size: int = 64
) -> ClipScores:
    """Cosine of image i and prompt i for uint8 images [N, H, W, 3] (or a list of [H, W, 3])."""
    if len(images) != len(prompts):
        raise CrossflowError(f"{len(images)} images for {len(prompts)} prompts; they must pair one to one")
    if len(prompts) == 0:
        raise CrossflowError("no images to score")
    model, processor = clip.model, clip.processor
    max_len = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", 77)
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        imgs = [
            torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)
            for im in images[start : start + batch_size]
        ]
        texts = list(prompts[start : start + batch_size])
        pixel = processor(images=imgs, return_tensors="pt")["pixel_values"].to(clip.device)
        tok = processor(text=texts, return_tensors="pt", padding=True, truncation=True, max_length=max_len)
        img_f = _features(model.get_image_features(pixel_values=pixel)).float()
        txt_f = _features(
            model.get_text_features(
                input_ids=tok["input_ids"].to(clip.device),
                attention_mask=tok["attention_mask"].to(clip.device),
            )
        ).float()
        img_f = img_f / img_f.norm(dim=-1, keepdim=True)
        txt_f = txt_f / txt_f.norm(dim=-1, keepdim=True)
        out.append((img_f * txt_f).sum(-1).cpu())
    return ClipScores(cosines=torch.cat(out))
