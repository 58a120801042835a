"""Source codec "text": captions -> frozen LM token embeddings [L, D] + padding mask [L].

The LM (`crossflow_core.encoders.text.TextEncoder`) is loaded only when needed: at prepare time
to precompute `tokens.npy` / `mask.npy`, and at train time only if the shards lack them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossflow_core.codecs.base import RawSample, SourceBatch, SourceCodec
from crossflow_core.encoders.text import TextEncoder
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import TextSourceConfig


class TextSource(SourceCodec):
    kind = "text"
    needs_captions = True

    def __init__(
        self,
        cfg: TextSourceConfig,
        device: torch.device | str = "cpu",
        encoder: TextEncoder | None = None,
        token_dim: int | None = None,
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self._encoder = encoder
        self._token_dim = token_dim
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            encoder = TextEncoder.from_config(self.cfg, device=self.device)
            if self._token_dim is not None and encoder.dim != self._token_dim:
                raise CrossflowError(
                    f"text encoder {self.cfg.encoder!r} gives {encoder.dim}-d tokens but the model was "
                    f"trained on {self._token_dim}-d ones: use the text encoder it was trained with"
                )
            self._encoder = encoder
        return self._encoder

    @property
    def token_dim(self) -> int:
        if self._token_dim is None:
            self._token_dim = self.encoder.dim
        return self._token_dim

    def train_fields(self, stored: tuple[str, ...]) -> tuple[str, ...]:
        if "tokens.npy" in stored and "mask.npy" in stored:
            return ("tokens.npy", "mask.npy")
        return ("txt",)

    def precomputed_fields(self) -> tuple[str, ...]:
        return ("tokens.npy", "mask.npy")

    def precompute(self, samples: list[RawSample]) -> dict[str, np.ndarray]:
        rows = self.lookup([s.caption for s in samples])
        return {"tokens.npy": np.stack([r[0] for r in rows]), "mask.npy": np.stack([r[1] for r in rows])}

    MAX_CACHED = 200_000

    def remember(self, features: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Seed the caption cache with stored (tokens, mask) per caption, as `lookup` would have
        filled it (first occurrences in order, up to MAX_CACHED): a resumed `prepare` then makes the
        same encoder batches, so the same bits, as an uninterrupted one."""
        todo = [c for c in features if c not in self._cache][: max(0, self.MAX_CACHED - len(self._cache))]
        counts = self.encoder.count_tokens(todo) if todo else []
        for caption, n in zip(todo, counts, strict=True):
            self._cache[caption] = (*features[caption], n)

    def lookup(
        self, captions: list[str], max_cached: int = MAX_CACHED
    ) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """(tokens float16 [L, D], mask bool [L], untruncated token count) per caption; captions
        that repeat (the shapes world has few distinct ones) are encoded once."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        fresh: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        if missing:
            emb = self.encoder.encode(missing)
            tokens = emb.tokens.cpu().numpy().astype(np.float16)
            if not np.isfinite(tokens).all():
                raise CrossflowError(
                    f"text embeddings overflow float16 (max |x| = {emb.tokens.abs().max().item():.3g}): "
                    "lower source.embedding_scale"
                )
            counts = self.encoder.count_tokens(missing)
            for caption, tok, mask, n in zip(missing, tokens, emb.mask.cpu().numpy(), counts, strict=True):
                fresh[caption] = (tok, mask, n)
                if len(self._cache) < max_cached:
                    self._cache[caption] = fresh[caption]
        return [self._cache.get(c) or fresh[c] for c in captions]

    def caption_tokens(self, captions: list[str]) -> list[int] | None:
        return [row[2] for row in self.lookup(captions)]

    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> SourceBatch:
        if "tokens.npy" in fields:
            return SourceBatch(
                fields["tokens.npy"][idx].to(device, torch.float32), fields["mask.npy"][idx].to(device)
            )
        return self.encode([fields["txt"][i] for i in idx.tolist()], device)

    def encode(self, inputs: list[Any], device: torch.device) -> SourceBatch:
        emb = self.encoder.encode([str(c) for c in inputs])
        return SourceBatch(emb.tokens.to(device), emb.mask.to(device))

    def grid(self, prompts: tuple[str, ...], fields: Any, device: torch.device, n: int = 8) -> SourceBatch:
        """The recipe's grid prompts (`sample.prompts`), else the first training captions' tokens."""
        if prompts:
            return self.encode(list(prompts), device)
        return super().grid(prompts, fields, device, n)

    def spec(self) -> dict[str, Any]:
        return {"num_tokens": self.cfg.max_length, "token_dim": self.token_dim}

    def identity(self) -> dict[str, Any]:
        if self._encoder is not None:
            return self._encoder.identity()
        return {
            "name": self.cfg.encoder,
            "max_length": self.cfg.max_length,
            "embedding_scale": float(self.cfg.embedding_scale),
        }
