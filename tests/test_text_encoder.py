"""The frozen text encoder: tiny offline BERT / CLIP / T5 models, and the embedded MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crossflow_core.encoders.revision import weights_revision
from crossflow_core.encoders.text import TextEmbeddings, TextEncoder
from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.recipe import TextSourceConfig

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a an red blue green circle square triangle and to the left right of above below "
    "photo one two three big small"
).split()
CAPTIONS = ["a red circle", "a blue square to the left of a green triangle", "two circles", "a"]


def _tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny randomly initialised BERT, CLIP-text and T5 models saved with save_pretrained."""
    from transformers import (
        BertConfig,
        BertModel,
        CLIPTextConfig,
        CLIPTextModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("lms")
    n = len(WORDS)
    models = {
        "bert": BertModel(
            BertConfig(
                vocab_size=n,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
            )
        ),
        "clip": CLIPTextModel(
            CLIPTextConfig(
                vocab_size=n,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=16,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
            )
        ),
        "t5": T5ForConditionalGeneration(
            T5Config(
                vocab_size=n, d_model=24, d_ff=48, num_layers=2, num_heads=4, d_kv=6, decoder_start_token_id=0
            )
        ),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = root / name
        model.save_pretrained(paths[name])
        _tokenizer().save_pretrained(paths[name])  # a BERT wordpiece tokenizer beside every model
    return paths


def _encoder(path: Path, **kw) -> TextEncoder:
    return TextEncoder.from_config(TextSourceConfig(encoder=str(path), **kw))


@pytest.mark.parametrize(
    "kind,cls,dim", [("bert", "BertModel", 32), ("clip", "CLIPTextModel", 32), ("t5", "T5EncoderModel", 24)]
)
def test_model_class_and_identity(tiny_models, kind, cls, dim):
    enc = _encoder(tiny_models[kind], max_length=12)
    assert type(enc.model).__name__ == cls
    assert enc.dim == dim
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())
    ident = enc.identity()
    assert ident == {
        "name": str(tiny_models[kind]),
        "path": str(tiny_models[kind]),
        "revision": weights_revision(str(tiny_models[kind])),
        "model_type": ident["model_type"],
        "hidden_size": dim,
        "max_length": 12,
        "embedding_scale": 1.0,
    }
    assert ident["model_type"] in {"bert", "clip_text_model", "t5"}
    assert ident["revision"].startswith("sha256:")


def test_revision_sees_changed_weights_of_the_same_size(tmp_path):
    """The same folder with re-trained weights of the same size is another revision; hub
    snapshots are named by their commit."""
    from crossflow_core.encoders.revision import weights_revision

    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"a" * 3_000_000)
    first = weights_revision(str(folder))
    assert first == weights_revision(str(folder))  # stable
    (folder / "model.safetensors").write_bytes(b"a" * 2_999_999 + b"b")  # last byte only
    assert weights_revision(str(folder)) != first
    snap = tmp_path / "models--org--enc" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    assert weights_revision(str(snap)) == "hub:abc123"
    assert weights_revision(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("kind", ["bert", "clip", "t5"])
def test_equals_full_padded_forward_and_batched_equals_single(tiny_models, kind):
    enc = _encoder(tiny_models[kind], max_length=12)
    out = enc.encode(CAPTIONS)
    assert isinstance(out, TextEmbeddings)
    assert out.tokens.shape == (4, 12, enc.dim) and out.tokens.dtype == torch.float32
    assert out.mask.dtype == torch.bool
    # reference: one forward over the max_length-padded batch, padding zeroed
    batch = enc.tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    with torch.no_grad():
        ref = enc.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ref = ref.last_hidden_state
    ref = ref * batch["attention_mask"].unsqueeze(-1)
    torch.testing.assert_close(out.tokens, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.mask, batch["attention_mask"].bool())
    for i, caption in enumerate(CAPTIONS):
        single = enc.encode([caption])
        torch.testing.assert_close(single.tokens[0], out.tokens[i], atol=1e-5, rtol=1e-5)
        assert torch.equal(single.mask[0], out.mask[i])
    assert (out.tokens[~out.mask] == 0).all()


def test_mask_counts_truncation_and_scale(tiny_models):
    enc = _encoder(tiny_models["bert"], max_length=6)
    out = enc.encode(CAPTIONS)
    counts = enc.count_tokens(CAPTIONS)
    assert counts == [5, 12, 4, 3]  # [CLS] words [SEP]; "circles" is one [UNK]
    assert out.mask.sum(1).tolist() == [min(c, 6) for c in counts]
    assert out.mask[1].all()  # truncated to max_length
    scaled = TextEncoder.from_config(
        TextSourceConfig(encoder=str(tiny_models["bert"]), max_length=6, embedding_scale=10.0)
    ).encode(CAPTIONS)
    torch.testing.assert_close(scaled.tokens, 10.0 * out.tokens)
    assert enc.encode([]).tokens.shape == (0, 6, 32)
    with pytest.raises(TypeError):
        enc.encode("a red circle")


def test_max_length_beyond_positions_is_a_user_error(tiny_models):
    with pytest.raises(CrossflowError, match="source.max_length=32 exceeds"):
        _encoder(tiny_models["clip"], max_length=32)


def test_uncached_hub_id_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingResourceError) as info:
        TextEncoder.from_config(TextSourceConfig(encoder="crossflow-nobody/no-such-model"))
    msg = str(info.value)
    assert "\n" not in msg and "crossflow-nobody/no-such-model" in msg and "HF_HOME" in msg


def test_missing_local_dir_is_a_user_error(tmp_path):
    with pytest.raises(CrossflowError, match="is not a directory"):
        TextEncoder.from_config(TextSourceConfig(encoder=str(tmp_path / "nope")))
    with pytest.raises(CrossflowError, match="cannot be loaded"):
        TextEncoder.from_config(TextSourceConfig(encoder=str(tmp_path)))  # empty folder


def test_text_source_codec_wraps_the_encoder(tiny_models):
    import numpy as np

    from crossflow_core.codecs import RawSample, SourceBatch, TextSource

    cfg = TextSourceConfig(encoder=str(tiny_models["bert"]), max_length=12)
    enc = TextEncoder.from_config(cfg)
    source = TextSource(cfg)
    ref = enc.encode(CAPTIONS)
    batch = source.encode(CAPTIONS, torch.device("cpu"))
    assert isinstance(batch, SourceBatch) and len(batch) == 4
    assert torch.equal(batch.x, ref.tokens) and torch.equal(batch.mask, ref.mask)
    assert source.spec() == {"num_tokens": 12, "token_dim": 32}
    assert source.identity() == enc.identity()
    # precompute: float16 tokens + bool mask per caption, repeated captions encoded once
    blank = np.zeros((4, 4, 3), np.uint8)
    feats = source.precompute([RawSample(blank, c) for c in CAPTIONS + CAPTIONS[:1]])
    assert feats["tokens.npy"].dtype == np.float16 and feats["tokens.npy"].shape == (5, 12, 32)
    assert feats["mask.npy"].dtype == bool and np.array_equal(feats["mask.npy"][:4], ref.mask.numpy())
    np.testing.assert_allclose(
        feats["tokens.npy"][:4].astype(np.float32), ref.tokens.numpy(), atol=2e-3, rtol=1e-2
    )
    assert np.array_equal(feats["tokens.npy"][4], feats["tokens.npy"][0])
    assert source.caption_tokens(CAPTIONS) == enc.count_tokens(CAPTIONS)
    assert source.train_fields(("png", "txt", "tokens.npy", "mask.npy")) == ("tokens.npy", "mask.npy")
    assert source.train_fields(("png", "txt")) == ("txt",)
    # a model trained on other token widths refuses this encoder, in one line
    with pytest.raises(CrossflowError) as info:
        _ = TextSource(cfg, token_dim=384).encoder
    assert "\n" not in str(info.value) and "32-d tokens" in str(info.value) and "384-d" in str(info.value)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder.from_config(TextSourceConfig(encoder="minilm", max_length=16))


def test_minilm_default(minilm):
    ident = minilm.identity()
    assert ident["name"] == "minilm" and ident["model_type"] == "bert" and ident["hidden_size"] == 384
    assert Path(ident["path"]).is_dir()
    a = minilm.encode(CAPTIONS)
    b = minilm.encode(CAPTIONS)
    assert torch.equal(a.tokens, b.tokens)  # deterministic
    assert a.tokens.shape == (4, 16, 384)
    for i, caption in enumerate(CAPTIONS):
        torch.testing.assert_close(minilm.encode([caption]).tokens[0], a.tokens[i], atol=1e-5, rtol=1e-4)
    assert a.mask.sum(1).tolist() == minilm.count_tokens(CAPTIONS)
    assert (a.tokens[~a.mask] == 0).all() and (a.tokens[a.mask].abs().sum(-1) > 0).all()
    # different captions -> different embeddings (well apart, not only by rounding)
    red, blue = minilm.encode(["a red circle", "a blue circle"]).tokens
    assert (red - blue).abs().max() > 0.1
