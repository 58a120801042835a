"""CLIP score: equals torchmetrics' CLIPScore and the model's own cosine, on a tiny offline CLIP."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from crossflow_core.errors import MissingResourceError
from crossflow_core.eval.clip_score import ClipScores, clip_cosines, load_clip

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a purple circle", "three squares"] * 2


def build_tiny_clip(directory: Path) -> Path:
    """A randomly initialised CLIP (2-layer towers, 32x32 images) + a byte-level CLIP tokenizer
    with no merges, saved with save_pretrained: loads like a hub checkpoint, fully offline."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) + i for i, c in enumerate(chars)})
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(chars)})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            **tower,
        ),
        vision_config=dict(image_size=32, patch_size=8, **tower),
        projection_dim=16,
    )
    torch.manual_seed(0)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model = CLIPModel(config)
    with torch.no_grad():  # random towers share one bias direction; flip it so cosines are > 0,
        model.text_projection.weight.neg_()  # as they are with a trained CLIP
    model.save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dir):
    return load_clip(tiny_clip_dir, device="cpu")


def _images(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class _Tensors(torch.nn.Module):
    """transformers 5 returns ModelOutputs from get_*_features; torchmetrics 1.9 wants tensors."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        out = self.model.get_image_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = self.model.get_text_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def _torchmetrics(clip, images: np.ndarray, prompts: list[str]) -> float:
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=lambda: (_Tensors(clip.model), clip.processor))
    metric.update([torch.from_numpy(im).permute(2, 0, 1) for im in images], prompts)
    return float(metric.compute())


def test_equals_torchmetrics_clip_score(tiny_clip):
    images = _images(len(PROMPTS))
    scores = clip_cosines(tiny_clip, images, PROMPTS, batch_size=3)
    assert scores.n == len(PROMPTS) and 5.0 < scores.clip_score_x100 < 100.0
    assert scores.clip_score_x100 == pytest.approx(_torchmetrics(tiny_clip, images, PROMPTS), abs=1e-4)
    assert scores.clip_score_x100 == pytest.approx(100 * scores.clip_cosine)


def test_negative_mean_clamps_to_zero_like_torchmetrics(tiny_clip):
    flipped = copy.deepcopy(tiny_clip.model)
    with torch.no_grad():
        flipped.text_projection.weight.neg_()  # every cosine changes sign
    clip = dataclasses.replace(tiny_clip, model=flipped)
    images = _images(len(PROMPTS))
    scores = clip_cosines(clip, images, PROMPTS)
    positive = clip_cosines(tiny_clip, images, PROMPTS)
    torch.testing.assert_close(scores.cosines, -positive.cosines)
    assert scores.clip_cosine < 0 and scores.clip_score_x100 == 0.0 == _torchmetrics(clip, images, PROMPTS)


def test_cosine_equals_the_models_own_logits(tiny_clip):
    images = _images(4, seed=1)
    prompts = PROMPTS[:4]
    inputs = tiny_clip.processor(
        text=prompts,
        images=[torch.from_numpy(im).permute(2, 0, 1) for im in images],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        out = tiny_clip.model(**inputs)
        expected = torch.diagonal(out.logits_per_image) / tiny_clip.model.logit_scale.exp()
    scores = clip_cosines(tiny_clip, images, prompts)
    torch.testing.assert_close(scores.cosines, expected.float(), rtol=1e-4, atol=1e-5)
    assert scores.clip_cosine == pytest.approx(float(expected.mean()), abs=1e-5)


def test_batched_equals_single_and_order_matters(tiny_clip):
    images = _images(len(PROMPTS), seed=2)
    full = clip_cosines(tiny_clip, images, PROMPTS, batch_size=64).cosines
    single = torch.cat(
        [clip_cosines(tiny_clip, images[i : i + 1], PROMPTS[i : i + 1]).cosines for i in range(8)]
    )
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-6)
    shuffled = clip_cosines(tiny_clip, images, PROMPTS[1:] + PROMPTS[:1]).cosines
    assert not torch.allclose(full, shuffled)


def test_summaries():
    s = ClipScores(torch.tensor([0.2, 0.4, -0.3]))
    assert s.clip_cosine == pytest.approx(0.1) and s.clip_score_x100 == pytest.approx(10.0)
    assert ClipScores(torch.tensor([-0.2, 0.1])).clip_score_x100 == 0.0


def test_missing_model_is_one_line(tmp_path):
    with pytest.raises(MissingResourceError, match="nope") as info:
        load_clip(tmp_path / "nope")
    assert "\n" not in str(info.value) and "--" not in str(info.value)  # the CLI names its flag
    with pytest.raises(MissingResourceError, match="no-such-org/no-such-clip"):
        load_clip("no-such-org/no-such-clip")  # offline in tests (HF_HUB_OFFLINE=1)
