"""Image captioning as a CrossFlow task: the text autoencoder target (round trip, decoding), the
trainable-target phase schedule, resume across the target -> joint boundary, export -> load ->
caption, `crossflow caption`, `crossflow eval caption`, the scene truth and the bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crossflow_cli.app import app
from crossflow_core.codecs import build_codecs
from crossflow_core.codecs.text_ae import TextAETarget
from crossflow_core.data.shapes import Scene, ShapeObject, ShapesWorld
from crossflow_core.errors import CrossflowError
from crossflow_core.eval.caption_scene import parse_caption, scene_truth
from crossflow_core.image_files import save_png
from crossflow_core.pipeline import CrossFlowPipeline
from crossflow_core.recipe import RecipeError, load_recipe
from crossflow_core.sample import sample_latents, seeded_noise
from crossflow_core.train.checkpoint import Checkpointer
from crossflow_core.train.loop import train
from crossflow_core.train.schedule import phase_at
from crossflow_core.train.system import CrossFlowSystem

CAP_TINY = [
    "data.num_samples=96",
    "data.image_size=16",
    "data.shard_size=50",
    "target.max_length=12",
    "target.width=32",
    "target.depth=1",
    "target.decoder_depth=1",
    "target.heads=2",
    "target.ffn=64",
    "target.latent_channels=4",
    "target.latent_size=2",
    "ve.width=8",
    "ve.depth=1",
    "model.width=32",
    "model.depth=2",
    "model.heads=2",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.checkpoint_every=2",
    "train.sample_every=0",
    "train.log_every=1",
    "train.target_steps=3",
    "train.steps=6",
    "sample.steps=3",
]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread here: on a shared CPU two spin-waiting threads make these small ops crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recipe(*extra: str):
    return load_recipe("caption_shapes", [*CAP_TINY, *extra])


@pytest.fixture(scope="module")
def cap_data(tmp_path_factory) -> Path:
    from crossflow_core.data.prepare import prepare_dataset

    r = recipe()
    out = tmp_path_factory.mktemp("cap") / "data"
    manifest = prepare_dataset(r.data, r.source, r.target, out)
    assert {"tokens.npy", "mask.npy", "ids.npy"} <= set(manifest.fields)
    return out


@pytest.fixture(scope="module")
def cap_run(cap_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cap") / "run"
    train(recipe(), cap_data, out)
    return out


def checkpoint(run_dir: Path):
    return Checkpointer.load(Checkpointer(run_dir, 1, 1).latest())


def part(groups, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in groups["model"].items() if k.startswith(prefix)}


def test_decode_of_known_ids_is_the_tokenizers_text():
    codec = TextAETarget(recipe().target)
    captions = ["A red circle.", "a blue square to the left of a green triangle", "three triangles"]
    ids = codec.token_ids(captions)
    assert ids.dtype == np.int32 and ids.shape == (3, 12)
    tok = codec.tokenizer
    want = [tok.decode(tok(c)["input_ids"], skip_special_tokens=True) for c in captions]
    assert codec.ids_to_text(ids) == want == ["a red circle.", captions[1], captions[2]]
    garbage = ids.copy()
    sep = int(np.flatnonzero(ids[2] == tok.sep_token_id)[0])
    garbage[2, sep + 1 :] = tok.convert_tokens_to_ids("circle")  # after [SEP]: ignored
    assert codec.ids_to_text(garbage)[2] == "three triangles"
    garbage[2, sep] = tok.convert_tokens_to_ids("square")  # no [SEP]: everything is text
    assert codec.ids_to_text(garbage)[2].startswith("three triangles square circle")


@pytest.mark.parametrize("vocab,steps", [("data", 200), ("full", 40)])
def test_autoencoder_round_trip_learns_a_caption_set(cap_data, vocab, steps):
    """decode(encode(caption)) starts at zero exact matches and rises to a small set's all."""
    from crossflow_core.data.arrays import load_training_arrays

    torch.manual_seed(0)
    codec = TextAETarget(recipe(f"target.vocab={vocab}").target)
    arrays = load_training_arrays(cap_data, ("txt", "ids.npy"))
    captions = list(dict.fromkeys(arrays["txt"]))[:16]
    net = codec.trainable(arrays)
    used = set(arrays["ids.npy"].unique().tolist()) | codec.special_ids()  # [PAD] [UNK] [CLS] [SEP] + words
    want = set(range(len(codec.tokenizer))) if vocab == "full" else used
    assert set(net.output_ids.tolist()) == want and (vocab == "full" or len(used) < 40)
    batch = codec.encode_captions(captions, CPU)

    def exact() -> float:
        got = codec.decode(codec.encode_latents(captions))
        return float(np.mean([a == b for a, b in zip(got, codec.reachable(captions))]))

    assert exact() == 0.0
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    first = net.loss(batch).loss.item()
    for _ in range(steps):
        out = net.loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    if vocab == "full":  # 30522 logits per position: a short run only (the same code path otherwise)
        assert out.loss.item() < first / 4
        return
    assert out.accuracy > 0.95
    assert exact() >= 0.9


def test_trainable_target_phase_schedule(cap_data, tmp_path):
    r = recipe()
    assert [phase_at(r, s) for s in range(6)] == ["target"] * 3 + ["joint"] * 3
    r2 = recipe("train.stage=two_stage", "train.ve_steps=2")
    assert [phase_at(r2, s) for s in range(7)] == ["target"] * 3 + ["ve"] * 2 + ["joint"] * 2
    train(recipe("train.steps=0"), cap_data, tmp_path / "s0")
    train(recipe("train.steps=3"), cap_data, tmp_path / "s3")
    train(recipe(), cap_data, tmp_path / "s6")
    g0, g3, g6 = (checkpoint(tmp_path / d)[0] for d in ("s0", "s3", "s6"))
    for prefix in ("ve.", "flow.", "objective."):  # the target phase trains only the codec
        assert all(torch.equal(v, part(g0, prefix)[k]) for k, v in part(g3, prefix).items()), prefix
    assert any(not torch.equal(v, part(g0, "target.")[k]) for k, v in part(g3, "target.").items())
    # afterwards the codec is frozen, the image VE and the flow train
    assert all(torch.equal(v, part(g3, "target.")[k]) for k, v in part(g6, "target.").items())
    assert any(not torch.equal(v, part(g3, "flow.")[k]) for k, v in part(g6, "flow.").items())
    rows = (tmp_path / "s6" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[-2:] == ["target", "target_acc"]
    first, last = (dict(zip(header, row.split(","))) for row in (rows[1], rows[-1]))
    target_rows = [dict(zip(header, row.split(","))) for row in rows[1:4]]
    assert [r["phase"] for r in target_rows] == ["target"] * 3 and 0 <= float(first["target_acc"]) <= 1
    assert (
        float(first["target"]) > 2 > 0 < float(target_rows[-1]["target"]) < float(first["target"])
    )  # ~ln(28)
    assert last["phase"] == "joint" and last["target"] == "" and float(last["fm"]) > 0


def test_resume_across_the_target_joint_boundary_equals_uninterrupted(cap_data, tmp_path):
    train(recipe(), cap_data, tmp_path / "whole")
    train(recipe("train.steps=2"), cap_data, tmp_path / "parts")
    assert train(recipe(), cap_data, tmp_path / "parts").resumed_from == 2
    (a, sa), (b, sb) = checkpoint(tmp_path / "whole"), checkpoint(tmp_path / "parts")
    assert sa["step"] == sb["step"] == 6
    for group in ("model", "ema", "optimizer"):
        assert a[group].keys() == b[group].keys()
        assert all(torch.equal(a[group][k], b[group][k]) for k in a[group]), group


def in_memory_captions(run_dir: Path, data: Path, images: list[np.ndarray]) -> tuple[torch.Tensor, list[str]]:
    """Captions straight from the final checkpoint: EMA image VE + flow, the live text autoencoder."""
    from crossflow_core.data.arrays import load_training_arrays

    r = recipe()
    source, target = build_codecs(r.source, r.target, image_size=r.data.image_size)
    net = target.trainable(load_training_arrays(data, ("txt",)))
    system = CrossFlowSystem.from_recipe(r, source.spec(), target.latent_shape(16), net)
    groups, _ = checkpoint(run_dir)
    system.load_state_dict(groups["model"])
    params = dict(system.named_parameters())
    with torch.no_grad():
        for name, value in groups["ema"].items():
            if not name.startswith("target."):
                params[name].copy_(value)
    system.eval()
    with torch.inference_mode():
        src = source.encode(images, CPU)
        z0 = system.ve(src, noise=seeded_noise(system.ve.noise_shape(src), list(range(len(images))))).z0
        z1 = sample_latents(system.flow, z0, r.sample, None)
    return z1, target.decode(z1)


def test_export_load_caption_equals_in_memory(cap_run, cap_data, tmp_path):
    index = json.loads((cap_run / "model" / "model_index.json").read_text())
    assert index["components"] == ["ve", "flow", "target"] and index["version"] == 3
    assert (
        json.loads((cap_run / "model" / "target" / "config.json").read_text())["class"] == "TextAutoencoder"
    )
    world = ShapesWorld(16, seed=0)
    images = [world.sample(i, "test").image for i in range(4)]
    z1, want = in_memory_captions(cap_run, cap_data, images)
    pipe = CrossFlowPipeline.load(cap_run, device="cpu")
    enc = pipe.encode(images, list(range(4)))
    assert torch.equal(sample_latents(pipe.flow, enc.z0, pipe.defaults, enc.cond), z1)
    got = pipe.translate(images, pipe.defaults)
    assert isinstance(got, list) and got == want and all(isinstance(c, str) for c in got)
    for i, image in enumerate(images):
        save_png(image, tmp_path / "in" / f"{i}.png")
    res = invoke(
        "caption", "--model", str(cap_run), str(tmp_path / "in"), "--json", "--out", str(tmp_path / "c.jsonl")
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [x["caption"] for x in lines] == want and [x["seed"] for x in lines] == [0, 1, 2, 3]
    assert (tmp_path / "c.jsonl").read_text() == res.stdout


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_caption_command_prints_name_tab_caption(cap_run, tmp_path):
    world = ShapesWorld(32, seed=1)  # 32 px: resized to the model's 16 px as prepare does
    for i in range(3):
        save_png(world.sample(i).image, tmp_path / f"img{i}.png")
    res = invoke("caption", "--model", str(cap_run), str(tmp_path / "img1.png"), str(tmp_path / "img0.png"))
    assert res.exit_code == 0, res.output
    names = [line.split("\t")[0] for line in res.stdout.splitlines()]
    assert names == ["img1.png", "img0.png"] and all(
        len(line.split("\t")) == 2 for line in res.stdout.splitlines()
    )


def test_eval_caption_on_the_shapes_world(cap_run, tmp_path):
    res = invoke(
        "eval",
        "caption",
        "--model",
        str(cap_run),
        "--data",
        "shapes",
        "--split",
        "train",
        "--count",
        "12",
        "--json",
        "--captions",
        str(tmp_path / "pred.jsonl"),
    )
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)["results"]
    values = {(r["settings"]["method"], r["metric"]): r["value"] for r in results}
    assert {m for m, _ in values} == {"crossflow", "most_frequent", "nearest_neighbour"}
    for m in ("crossflow", "most_frequent", "nearest_neighbour"):
        assert {"bleu4", "rouge_l", "cider", "scene_all_correct", "scene_colours"} <= {
            k for mm, k in values if mm == m
        }
        assert values[(m, "spice")] is None
    # the train split's images are training images: their nearest neighbour is themselves
    assert values[("nearest_neighbour", "scene_all_correct")] == 1.0
    assert values[("nearest_neighbour", "bleu4")] > 0.99 and values[("nearest_neighbour", "cider")] > 1
    assert values[("most_frequent", "scene_all_correct")] < 0.5
    assert len((tmp_path / "pred.jsonl").read_text().splitlines()) == 12
    table = invoke(
        "eval", "caption", "--model", str(cap_run), "--data", "shapes", "--count", "6", "--no-baselines"
    )
    assert table.exit_code == 0 and "bleu4" in table.stdout and "nearest" not in table.stdout


def scene(*objects: tuple[str, str, float, float]) -> Scene:
    return Scene(tuple(ShapeObject(shape, colour, cx, cy, 6.0) for shape, colour, cx, cy in objects))


def test_scene_truth_of_hand_written_captions():
    one = scene(("circle", "red", 10, 10))
    assert scene_truth("a red circle", one, "a red circle").all_correct
    assert scene_truth("A red circle.", one, "a red circle").all_correct
    wrong_colour = scene_truth("a blue circle", one, "a red circle")
    assert (
        not wrong_colour.colours
        and wrong_colour.shapes
        and wrong_colour.count
        and not wrong_colour.all_correct
    )
    assert not scene_truth("a circle", one, "a red circle").colours  # the colour the world names is due
    two = scene_truth("two circles", one, "a red circle")
    assert not two.count and not two.shapes and not two.all_correct
    pair = scene(("circle", "red", 6, 16), ("square", "blue", 26, 15))
    ref = "a red circle to the left of a blue square"
    assert scene_truth(ref, pair, ref).all_correct
    assert scene_truth("a blue square to the right of a red circle", pair, ref).all_correct
    flipped = scene_truth("a red circle to the right of a blue square", pair, ref)
    assert not flipped.relation and flipped.colours and flipped.shapes
    assert not scene_truth("a red circle and a blue square", pair, ref).relation  # the relation is due
    assert scene_truth("a circle and a square", pair, "a circle and a square").all_correct
    assert not scene_truth("a square and a triangle", pair, "a circle and a square").shapes
    nonsense = scene_truth("a dog on a sofa", pair, ref)
    assert not nonsense.parsed and not nonsense.all_correct
    assert parse_caption("three triangle") is None and parse_caption("circles") is None


def test_recipes_load_and_refuse_bad_target_settings():
    coco = load_recipe("caption_coco")
    assert coco.source.space == "vae" and coco.target.kind == "text_ae" and coco.train.target_steps > 0
    with pytest.raises(RecipeError, match="set train.target_steps >= 1"):
        recipe("train.target_steps=0")
    with pytest.raises(RecipeError, match="target.kind=pixels has none"):
        load_recipe("shapes", ["train.target_steps=5"])
    with pytest.raises(RecipeError, match="target.width=30 must be divisible by target.heads=4"):
        recipe("target.width=30", "target.heads=4")


def test_bad_inputs_are_refused_in_one_line(cap_run, tiny_overrides, tiny_data, tmp_path):
    t2i = tmp_path / "t2i"
    train(load_recipe("shapes", [*tiny_overrides, "train.steps=1"]), tiny_data, t2i)
    save_png(np.zeros((16, 16, 3), np.uint8), tmp_path / "ok" / "a.png")

    def refused(args: list[str], match: str) -> None:
        res = invoke(*args)
        assert res.exit_code != 0, res.output
        assert match in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr

    refused(["caption", "--model", str(t2i), str(tmp_path / "ok")], "not a captioning model")
    refused(["eval", "caption", "--model", str(t2i), "--data", "shapes"], "not a captioning model")
    (tmp_path / "ok" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "captions.txt"
    refused(
        ["caption", "--model", str(cap_run), str(tmp_path / "ok"), "--out", str(out)], "cannot read image"
    )
    assert not out.exists()
    (tmp_path / "ok" / "broken.png").unlink()
    refused(
        ["eval", "caption", "--model", str(cap_run), "--data", str(tmp_path / "ok")], "has no caption file"
    )
    refused(["caption", "--model", str(cap_run), str(tmp_path / "missing.png")], "does not exist")
    with pytest.raises(CrossflowError, match="not a captioning model"):
        from crossflow_core.caption import caption_files

        caption_files(CrossFlowPipeline.load(t2i, device="cpu"), [tmp_path / "ok"], recipe().sample)


def test_captioning_from_vae_latents_precomputes_both_sides(tmp_path):
    """The paper-scale layout (caption_coco) at toy size: a tiny AutoencoderKL as the image space;
    prepare stores the image latents and the caption tokens/ids, training reads only those."""
    from diffusers import AutoencoderKL

    from crossflow_core.data.prepare import prepare_dataset

    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(tmp_path / "vae")
    r = recipe("source.space=vae", f"source.vae={tmp_path / 'vae'}", "train.steps=4", "train.target_steps=2")
    manifest = prepare_dataset(r.data, r.source, r.target, tmp_path / "data")
    assert {"source.npy", "tokens.npy", "mask.npy", "ids.npy"} <= set(manifest.fields)
    source, target = build_codecs(r.source, r.target, image_size=16)
    assert source.train_fields(manifest.fields) + target.train_fields(manifest.fields) == (
        "source.npy",
        "tokens.npy",
        "mask.npy",
        "ids.npy",
    )
    train(r, tmp_path / "data", tmp_path / "run")
    pipe = CrossFlowPipeline.load(tmp_path / "run", device="cpu")
    assert pipe.ve.init_args["in_channels"] == 4 and pipe.ve.init_args["in_size"] == 8
    captions = pipe.translate([ShapesWorld(16, seed=0).sample(0).image], pipe.defaults)
    assert len(captions) == 1 and isinstance(captions[0], str)
