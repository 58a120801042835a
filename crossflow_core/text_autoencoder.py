"""The text autoencoder of the captioning task (`target.kind: text_ae`): LM tokens <-> a text latent.

The paper trains "a new Text Variational Encoder on the captioning dataset to extract text latents
from text tokens, and a separate text decoder with a reconstruction loss to convert text latents
back into tokens". Ours:

- encoder: `TextVariationalEncoder` (crossflow_core/ve.py, the T2I text VE) over the frozen LM's
  token embeddings [B, L, D] + mask -> mu, log sigma^2 of the text latent [B, C, h, w], a small
  latent *image* so the flow's DiT / U-Net run on it unchanged;
- decoder: the latent flattened, a linear layer to L tokens of `width`, learned positions,
  `decoder_depth` pre-LN transformer layers (bidirectional: all positions at once, not
  autoregressive), a LayerNorm and a linear layer to logits over the LM tokenizer's vocabulary,
  one per token position [B, L, V] -- or, with `output_size`, over the V' ids of the buffer
  `output_ids` (the ids the training captions use, `target.vocab: data`: the same argmax for
  any caption of the data at a fraction of the cost; ids outside it count as `unk_id`);
- loss (the target phase): cross-entropy of the logits against the token ids at every one of the
  L positions (real tokens, [SEP] and the padding: the decoder must say where the caption ends),
  decoded from z = mu + sigma * eps, plus `kl_weight` * KL(N(mu, sigma^2) || N(0, I)) (summed
  over the latent, mean over the batch), so the latent stays near unit scale and the decoder
  tolerates the flow's small errors;
- the latent the flow learns (z1) is the encoder's mu (deterministic, `latents`);
- decoding (`decode_ids`): argmax per position.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossflow_core.codecs.base import SourceBatch, TargetLoss
from crossflow_core.losses import kl_loss
from crossflow_core.ve import TextVariationalEncoder

if TYPE_CHECKING:
    from crossflow_core.codecs.text_ae import TextTarget  # what `latents` and `loss` read


class TextLatentDecoder(nn.Module):
    """text latent z [B, C, h, w] -> token logits [B, L, V] (all L positions in parallel)."""

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        num_tokens: int,
        vocab_size: int,
        width: int,
        depth: int,
        heads: int,
        ffn: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.num_tokens, self.width = num_tokens, width
        self.expand = nn.Linear(math.prod(latent_shape), num_tokens * width)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, ffn, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab_size)

    def forward(self, z: Tensor) -> Tensor:
        h = self.expand(z.flatten(1).to(self.expand.weight.dtype)).view(-1, self.num_tokens, self.width)
        return self.out(self.norm(self.blocks(h + self.pos_embed)))


class TextAutoencoder(nn.Module):
    """LM tokens -> text latent (mu) -> token logits; `loss` trains it, `latents` gives the flow's z1."""

    def __init__(
        self,
        token_dim: int,
        num_tokens: int,
        vocab_size: int,
        latent_shape: tuple[int, int, int],
        width: int = 128,
        depth: int = 2,
        decoder_depth: int = 2,
        heads: int = 4,
        ffn: int = 256,
        dropout: float = 0.0,
        reduce_layers: int = 2,
        kl_weight: float = 1e-3,
        output_size: int | None = None,
        unk_id: int = 0,
    ) -> None:
        super().__init__()
        self.init_args = dict(
            token_dim=token_dim,
            num_tokens=num_tokens,
            vocab_size=vocab_size,
            latent_shape=list(latent_shape),
            width=width,
            depth=depth,
            decoder_depth=decoder_depth,
            heads=heads,
            ffn=ffn,
            dropout=dropout,
            reduce_layers=reduce_layers,
            kl_weight=kl_weight,
            output_size=output_size,
            unk_id=unk_id,
        )
        self.latent_shape = tuple(latent_shape)
        self.num_tokens, self.vocab_size, self.kl_weight = num_tokens, vocab_size, kl_weight
        self.unk_id = unk_id
        # the token id of each output logit (all ids, or those `set_output_ids` names); saved with the weights
        self.register_buffer("output_ids", torch.arange(output_size or vocab_size))
        self.encoder = TextVariationalEncoder(
            token_dim, num_tokens, self.latent_shape, width, depth, heads, ffn, dropout, reduce_layers
        )
        self.decoder = TextLatentDecoder(
            self.latent_shape,
            num_tokens,
            output_size or vocab_size,
            width,
            decoder_depth,
            heads,
            ffn,
            dropout,
        )

    def set_output_ids(self, ids: list[int]) -> TextAutoencoder:
        """Name the token id of each of the `output_size` logits (sorted, distinct, `unk_id` among them)."""
        ids = sorted(set(int(i) for i in ids))
        if (
            len(ids) != self.output_ids.numel()
            or self.unk_id not in ids
            or not 0 <= ids[0] <= ids[-1] < self.vocab_size
        ):
            raise ValueError(
                f"{len(ids)} output ids for {self.output_ids.numel()} logits (unk {self.unk_id})"
            )
        self.output_ids.copy_(torch.tensor(ids))
        return self

    def to_output_index(self, ids: Tensor) -> Tensor:
        """Token ids [...] -> the index of their logit (ids without one -> `unk_id`'s)."""
        if self.output_ids.numel() == self.vocab_size:
            return ids
        table = torch.full((self.vocab_size,), -1, dtype=torch.long, device=ids.device)
        table[self.output_ids] = torch.arange(self.output_ids.numel(), device=ids.device)
        index = table[ids]
        return torch.where(index < 0, table[self.unk_id], index)

    def _zeros(self, text: SourceBatch) -> Tensor:
        return torch.zeros(len(text), *self.latent_shape, device=text.x.device)

    def latents(self, target: TextTarget) -> Tensor:
        """z1 = mu [B, C, h, w] float32 (deterministic; draws no random numbers)."""
        return self.encoder(target.text, noise=self._zeros(target.text)).mu.float()

    def logits(self, z: Tensor) -> Tensor:
        """Text latents [B, C, h, w] -> logits [B, L, V'] over the ids `output_ids` names."""
        return self.decoder(z)

    def decode_ids(self, z: Tensor) -> Tensor:
        """Text latents [B, C, h, w] -> the argmax token id at every position [B, L] long."""
        return self.output_ids[self.logits(z).argmax(-1)]

    def loss(self, target: TextTarget) -> TargetLoss:
        """Cross-entropy over all L positions (decoded from z = mu + sigma * eps) + kl_weight * KL;
        `accuracy`: the fraction of real tokens ([CLS] ... [SEP], mask True) predicted exactly."""
        out = self.encoder(target.text)  # z0 = mu + sigma * eps (torch's global RNG)
        logits = self.logits(out.z0).float()
        ids = self.to_output_index(target.ids.long())
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
        kl = kl_loss(out.mu.float(), out.logvar.float(), "standard")
        with torch.no_grad():
            mask = target.text.mask
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            hits = (logits.argmax(-1) == ids) & mask
            accuracy = hits.sum().float() / mask.sum().clamp(min=1).float()
        return TargetLoss(loss=ce + self.kl_weight * kl, accuracy=accuracy)
