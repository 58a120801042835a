"""Target codec "text_ae" (captioning, paper §5.3): captions <-> text latents of a trained autoencoder.

A caption is tokenised by the frozen LM's tokenizer to exactly `max_length` ids ([CLS] ... [SEP]
and padding, truncated beyond) and embedded by the frozen LM (`TextSource`, the same code and
cache as the T2I text source); `prepare` stores `tokens.npy` float16 [L, D], `mask.npy` bool [L]
and `ids.npy` int32 [L]. Unlike the image targets this codec has a network of its own
(`TextAutoencoder`, crossflow_core/text_autoencoder.py): training pretrains it in the "target"
phase, then freezes it; the latent the flow learns is its encoder's mu [C, h, w].

Decoding: the decoder's argmax id at every position, cut at the first end or padding token
([SEP] / EOS / PAD), then `tokenizer.decode(skip_special_tokens=True)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from crossflow_core.codecs.base import RawSample, SourceBatch, TargetCodec
from crossflow_core.codecs.text import TextSource
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import TextAETargetConfig, TextSourceConfig

if TYPE_CHECKING:  # imported where used: the network module imports the codecs package
    from crossflow_core.text_autoencoder import TextAutoencoder

FIELDS = ("tokens.npy", "mask.npy", "ids.npy")


@dataclass(frozen=True)
class TextTarget:
    """What the text autoencoder reads for B captions: the LM's tokens [B, L, D] + mask [B, L]
    (`text`) and the tokenizer's ids [B, L] long (padded to L, the cross-entropy targets)."""

    text: SourceBatch
    ids: Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])


IDENTITY_KEYS = {"name": "encoder", "max_length": "max_length", "embedding_scale": "embedding_scale"}


class TextAETarget(TargetCodec):
    """Captions -> `TextTarget` (what the autoencoder reads); text latents [B, C, h, w] -> captions."""

    kind = "text_ae"
    needs_captions = True

    def __init__(self, cfg: TextAETargetConfig, device: torch.device | str = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        lm = TextSourceConfig(
            encoder=cfg.encoder, max_length=cfg.max_length, embedding_scale=cfg.embedding_scale
        )
        self.text = TextSource(lm, device=device)  # the LM itself loads only when embeddings are needed
        self._tokenizer: Any = None
        self._network: TextAutoencoder | None = None
        self._checked = False
        self._seen: set[int] = set()  # token ids of the captions `precompute` has seen

    # ----------------------------------------------------------------- tokenizer and ids

    @property
    def tokenizer(self) -> Any:
        """The LM's tokenizer (without loading the LM's weights)."""
        if self._tokenizer is None:
            if self.text._encoder is not None:
                self._tokenizer = self.text._encoder.tokenizer
            else:
                from transformers import AutoTokenizer

                from crossflow_core.encoders.text import load_pretrained, resolve_name

                name = resolve_name(self.cfg.encoder)
                self._tokenizer = load_pretrained(
                    AutoTokenizer.from_pretrained, name, "text encoder tokenizer"
                )
        return self._tokenizer

    def token_ids(self, captions: list[str]) -> np.ndarray:
        """Token ids int32 [B, L] exactly as the LM embeds them (padded and truncated to L)."""
        enc = self.tokenizer(
            [str(c) for c in captions], padding="max_length", truncation=True, max_length=self.cfg.max_length
        )
        return np.asarray(enc["input_ids"], dtype=np.int32)

    def ids_to_text(self, ids: Tensor | np.ndarray) -> list[str]:
        """Token ids [B, L] -> captions: cut at the first end/padding token, special tokens dropped."""
        tok = self.tokenizer
        stops = {t for t in (tok.sep_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None}
        starts = {t for t in (tok.cls_token_id, tok.bos_token_id) if t is not None} - stops
        out = []
        for row in np.asarray(ids).tolist():
            begin = 1 if row and row[0] in starts else 0
            end = next((i for i in range(begin, len(row)) if row[i] in stops), len(row))
            out.append(
                tok.decode(
                    row[begin:end], skip_special_tokens=True, clean_up_tokenization_spaces=True
                ).strip()
            )
        return out

    def reachable(self, captions: list[str]) -> list[str]:
        """What the tokenizer keeps of each caption (lower case, truncated to L): the best decode."""
        return self.ids_to_text(self.token_ids(captions))

    # ----------------------------------------------------------------- the data side

    def train_fields(self, stored: tuple[str, ...]) -> tuple[str, ...]:
        return FIELDS if all(f in stored for f in FIELDS) else ("txt",)

    def precomputed_fields(self) -> tuple[str, ...]:
        return FIELDS

    def precompute(self, samples: list[RawSample]) -> dict[str, np.ndarray]:
        captions = [s.caption for s in samples]
        rows = self.text.lookup(captions)
        ids = self.token_ids(captions)
        self._seen.update(np.unique(ids).tolist())  # recorded in the manifest (`identity`)
        return {
            "tokens.npy": np.stack([r[0] for r in rows]),
            "mask.npy": np.stack([r[1] for r in rows]),
            "ids.npy": ids,
        }

    def caption_tokens(self, captions: list[str]) -> list[int] | None:
        return self.text.caption_tokens(captions)

    def _check_stored(self, fields: Any) -> None:
        """Shards must hold tokens of this codec's LM and length (checked once)."""
        if self._checked:
            return
        manifest = getattr(fields, "manifest", None)
        stored = ((getattr(manifest, "extra", None) or {}).get("target") or {}) if manifest else {}
        for key, name in IDENTITY_KEYS.items():
            if key in stored and stored[key] != getattr(self.cfg, name):
                raise CrossflowError(
                    f"the dataset's caption tokens were made with target.{name}={stored[key]!r}, the "
                    f"recipe says {getattr(self.cfg, name)!r}: set target.{name}={stored[key]!r} or "
                    "prepare the data again"
                )
        self._checked = True

    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> TextTarget:
        if "ids.npy" in fields:
            self._check_stored(fields)
            text = SourceBatch(
                fields["tokens.npy"][idx].to(device, torch.float32), fields["mask.npy"][idx].to(device)
            )
            return TextTarget(text, fields["ids.npy"][idx].to(device, torch.long))
        return self.encode_captions([fields["txt"][i] for i in idx.tolist()], device)

    def encode_captions(self, captions: list[str], device: torch.device | str | None = None) -> TextTarget:
        """Captions -> `TextTarget` (runs the LM)."""
        device = torch.device(device) if device is not None else self.device
        text = self.text.encode(list(captions), device)  # inference tensors: cloned, so training may use them
        text = SourceBatch(text.x.clone(), None if text.mask is None else text.mask.clone())
        return TextTarget(text, torch.from_numpy(self.token_ids(captions)).to(device, torch.long))

    # ----------------------------------------------------------------- the network

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        """(C, h, w) of the text latent; independent of the image size."""
        return (self.cfg.latent_channels, self.cfg.latent_size, self.cfg.latent_size)

    def trainable(self, data: Any = None) -> nn.Module:
        """The autoencoder (built, randomly initialised, on the first call; with `target.vocab: data`
        its logits cover the token ids `data`'s manifest records)."""
        if self._network is None:
            from crossflow_core.text_autoencoder import TextAutoencoder

            cfg = self.cfg
            output = self.output_ids(data) if cfg.vocab == "data" else None
            self._network = TextAutoencoder(
                token_dim=self.text.token_dim if self.text._encoder is not None else self._hidden_size(),
                num_tokens=cfg.max_length,
                vocab_size=len(self.tokenizer),
                latent_shape=self.latent_shape(0),
                width=cfg.width,
                depth=cfg.depth,
                decoder_depth=cfg.decoder_depth,
                heads=cfg.heads,
                ffn=cfg.ffn,
                dropout=cfg.dropout,
                reduce_layers=cfg.reduce_layers,
                kl_weight=cfg.kl_weight,
                output_size=None if output is None else len(output),
                unk_id=self._unk_id(),
            )
            if output is not None:
                self._network.set_output_ids(output)
            self._network.to(self.device)
        return self._network

    def _unk_id(self) -> int:
        tok = self.tokenizer
        return int(next(t for t in (tok.unk_token_id, tok.pad_token_id, 0) if t is not None))

    def special_ids(self) -> set[int]:
        """The tokenizer's start, end, padding and unknown ids (always decodable)."""
        tok = self.tokenizer
        ids = (tok.cls_token_id, tok.bos_token_id, tok.sep_token_id, tok.eos_token_id, tok.pad_token_id)
        return {int(t) for t in ids if t is not None} | {self._unk_id()}

    def output_ids(self, data: Any) -> list[int]:
        """`target.vocab: data`: the ids of the prepared training captions (+ the special ids)."""
        manifest = getattr(data, "manifest", None)
        stored = ((getattr(manifest, "extra", None) or {}).get("target") or {}) if manifest else {}
        if not stored.get("vocab_ids"):
            raise CrossflowError(
                "target.vocab=data decodes to the token ids of the prepared captions, but this dataset "
                "records none: prepare it again with this recipe, or set target.vocab=full"
            )
        return sorted(set(int(i) for i in stored["vocab_ids"]) | self.special_ids())

    def _hidden_size(self) -> int:
        """The LM's embedding width from its config (no weights loaded)."""
        from transformers import AutoConfig

        from crossflow_core.encoders.text import load_pretrained, resolve_name

        config = load_pretrained(AutoConfig.from_pretrained, resolve_name(self.cfg.encoder), "text encoder")
        return int(getattr(config, "hidden_size", None) or config.d_model)

    def use_trainable(self, network: nn.Module) -> None:
        from crossflow_core.text_autoencoder import TextAutoencoder

        if not isinstance(network, TextAutoencoder):
            raise CrossflowError(f"a text_ae target needs a TextAutoencoder, got {type(network).__name__}")
        if network.vocab_size != len(self.tokenizer) or network.num_tokens != self.cfg.max_length:
            raise CrossflowError(
                f"the exported text autoencoder ({network.vocab_size} ids x {network.num_tokens} positions) "
                f"does not fit the tokenizer of {self.cfg.encoder!r} ({len(self.tokenizer)} x "
                f"{self.cfg.max_length}): re-export the model"
            )
        self._network = network.to(self.device)

    @torch.no_grad()
    def encode_latents(self, captions: list[str]) -> Tensor:
        """Captions -> their text latents mu [B, C, h, w] (the autoencoder in eval mode)."""
        net = self.trainable()
        was = net.training
        net.eval()
        try:
            return net.latents(self.encode_captions(captions, next(net.parameters()).device))
        finally:
            net.train(was)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> list[str]:
        """Text latents [B, C, h, w] -> captions (argmax per position, cut at the end token)."""
        net = self.trainable()
        was = net.training
        net.eval()
        try:
            ids = net.decode_ids(latents.to(next(net.parameters()).device, torch.float32))
        finally:
            net.train(was)
        return self.ids_to_text(ids.cpu())

    def identity(self) -> dict[str, Any]:
        """The LM that made the tokens (the keys of the text source's identity) and the codec kind;
        after `precompute`, also `vocab_ids`: the token ids the captions use (for `target.vocab: data`)."""
        out: dict[str, Any] = {"kind": self.kind}
        out.update({key: getattr(self.cfg, name) for key, name in IDENTITY_KEYS.items()})
        if self._seen:
            out["vocab_ids"] = sorted(self._seen)
        return out
