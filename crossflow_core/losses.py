"""Loss functions of CrossFlow, pure and mean-reduced to scalars.

Time convention (for the flow loss): t in [0, 1]; t = 0 is the SOURCE (text latent z0 from
the variational encoder) and t = 1 is the TARGET (image latent z1). No Gaussian noise source.

KL reduction (one rule for both variants): the per-element terms are SUMMED over all non-batch
dimensions and then AVERAGED over the batch. This is what the official CrossFlow code does
(`torch.sum(..., dim=1)` per sample, then the batch mean), so its KL weight 1e-2 carries over
unchanged. Note the weight's effect then grows with the latent size (4x32x32 = 4096 elements
at 256 px); a recipe for a different latent size may want to rescale it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from crossflow_core.errors import CrossflowError

KLKind = Literal["standard", "official"]
KL_KINDS: tuple[str, ...] = ("standard", "official")


def flow_matching_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between predicted and target velocities, both [B, ...] -> scalar."""
    if pred.shape != target.shape:
        raise CrossflowError(
            f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}"
        )
    return F.mse_loss(pred, target)


def _per_sample_sum_then_mean(terms: Tensor) -> Tensor:
    """[B, ...] -> scalar: sum over non-batch dimensions, mean over the batch."""
    return terms.reshape(terms.shape[0], -1).sum(dim=1).mean()


def _check_mu_logvar(mu: Tensor, logvar: Tensor) -> None:
    if mu.shape != logvar.shape or mu.dim() < 1:
        raise CrossflowError(
            f"mu and logvar must share a [B, ...] shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )


def kl_standard(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) for mu, logvar [B, ...] -> scalar.

    Per element -0.5 * (1 + logvar - mu^2 - exp(logvar)), summed over non-batch dims, averaged
    over the batch (see the module docstring).
    """
    _check_mu_logvar(mu, logvar)
    return _per_sample_sum_then_mean(-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()))


def kl_official_variant(mu: Tensor, logvar: Tensor) -> Tensor:
    """The official code's KL variant for mu, logvar [B, ...] -> scalar.

    Per element -0.5 * (1 + logvar - (0.3 mu)^6 - exp(logvar)): the mean penalty is nearly flat
    for |mu| < ~3 (it reaches 1/2 at |mu| = 1/0.3) and exceeds the standard mu^2 / 2 beyond
    |mu| ~ 6.1. Same reduction as `kl_standard`. Zero at mu = 0, logvar = 0.
    """
    _check_mu_logvar(mu, logvar)
    return _per_sample_sum_then_mean(-0.5 * (1.0 + logvar - (0.3 * mu).pow(6) - logvar.exp()))


def kl_loss(mu: Tensor, logvar: Tensor, kind: KLKind) -> Tensor:
    """Dispatch to `kl_standard` ("standard") or `kl_official_variant` ("official")."""
    if kind == "standard":
        return kl_standard(mu, logvar)
    if kind == "official":
        return kl_official_variant(mu, logvar)
    raise CrossflowError(f"unknown KL kind {kind!r}; choose one of {', '.join(KL_KINDS)}")


def info_nce(a: Tensor, b: Tensor, logit_scale: Tensor | float) -> Tensor:
    """CLIP-style symmetric InfoNCE between rows of a [B, D] and b [B, D] -> scalar.

    Rows are L2-normalised; logits = logit_scale * a_n @ b_n^T, where logit_scale is the
    multiplier itself (an inverse temperature, e.g. `log_scale.exp()`), not its log. Pair i of a
    and row i of b are the positives; the loss is the mean of the a->b and b->a cross-entropies.
    Negatives come from the local batch only.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise CrossflowError(
            f"info_nce needs two [B, D] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a_n = F.normalize(a, dim=-1)
    b_n = F.normalize(b, dim=-1)
    logits = logit_scale * (a_n @ b_n.t())
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def text_reconstruction_loss(pred_tokens: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """Masked MSE between pred_tokens and tokens [B, L, D]; mask [B, L] bool, True = real token.

    The mean runs over the D features of the real tokens only; padded positions never
    contribute, whatever they hold. With no real token at all the loss is 0 (still in the graph).
    """
    if pred_tokens.shape != tokens.shape or pred_tokens.dim() != 3:
        raise CrossflowError(
            f"token tensors must share a [B, L, D] shape, got {tuple(pred_tokens.shape)} "
            f"and {tuple(tokens.shape)}"
        )
    if mask.shape != tokens.shape[:2]:
        raise CrossflowError(
            f"mask must have shape [B, L] = {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}"
        )
    keep = mask.to(torch.bool)
    diff = torch.where(keep.unsqueeze(-1), pred_tokens - tokens, torch.zeros_like(tokens))
    count = keep.sum() * tokens.shape[-1]
    return diff.pow(2).sum() / count.clamp(min=1).to(diff.dtype)
