"""GenEval: metadata parsing, the official folder layout, atomic resumable writing, scoring summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crossflow_core.data.shapes import PromptSpec, ShapesWorld
from crossflow_core.errors import CrossflowError
from crossflow_core.eval import generate as gen
from crossflow_core.eval import geneval
from crossflow_core.sample import SampleSettings

LINES = [
    '{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}',
    '{"tag": "counting", "include": [{"class": "clock", "count": 2}], '
    '"exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"}',
    '{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], '
    '"prompt": "a photo of a red car"}',
    '{"tag": "position", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, '
    '"position": ["left of", 0]}], "prompt": "a photo of a dog left of a cat"}',
    '{"prompt": "a photo of a kite",   "tag":"single_object", "include": [{"class": "kite", "count": 1}]}',
]


class SeedPipeline:
    """Images that encode (prompt, seed): pixel values from a generator seeded by the seed."""

    image_size = 8

    def __init__(self, fail_after_calls: int | None = None) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts, settings, progress=None):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt
        self.calls.append((list(prompts), settings.seed))
        out = []
        for i, p in enumerate(prompts):
            g = torch.Generator().manual_seed(settings.seed + i + 1000 * len(p))
            out.append(torch.rand(3, self.image_size, self.image_size, generator=g))
        if progress is not None:
            progress(len(prompts), len(prompts))
        return torch.stack(out)

    def nfe(self, settings):
        return settings.steps


@pytest.fixture
def metadata(tmp_path: Path) -> Path:
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_matches_the_official_one(tmp_path, metadata):
    out = tmp_path / "images"
    records = geneval.read_metadata(metadata)
    summary = geneval.generate_geneval(
        SeedPipeline(), records, out, SampleSettings(batch_size=6), n_samples=3
    )
    assert (summary.written, summary.skipped) == (5, 0)
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002", "00003", "00004"]
    for i, line in enumerate(LINES):
        folder = out / f"{i:05d}"
        assert (folder / "metadata.jsonl").read_text() == line + "\n"  # the input line, byte for byte
        assert json.load(open(folder / "metadata.jsonl")) == json.loads(line)  # how the scorer reads it
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png"]
        assert (folder / "grid.png").is_file()
    # what the scorer's loop sees: all-digit folders, each with metadata and \d+.png samples
    entries = geneval.read_layout(out)
    assert [e.index for e in entries] == list(range(5)) and all(len(e.samples) == 3 for e in entries)


def test_images_follow_the_seed_rule(tmp_path, metadata):
    out = tmp_path / "images"
    records = geneval.read_metadata(metadata)
    settings = SampleSettings(seed=7, batch_size=4)  # 2 prompts (x2 samples) per call
    geneval.generate_geneval(SeedPipeline(), records, out, settings, n_samples=2, grid=False)
    direct = gen.to_uint8(SeedPipeline().generate([r.prompt for r in records for _ in range(2)], settings))
    for i in range(len(records)):
        for k in range(2):
            saved = gen.read_image(out / f"{i:05d}" / "samples" / f"{k:04d}.png")
            np.testing.assert_array_equal(saved, direct[2 * i + k])  # seed 7 + i * 2 + k


def test_rerun_skips_complete_folders(tmp_path, metadata):
    out = tmp_path / "images"
    records = geneval.read_metadata(metadata)
    geneval.generate_geneval(SeedPipeline(), records, out, SampleSettings(), n_samples=2)
    before = _tree(out)
    again = SeedPipeline()
    summary = geneval.generate_geneval(again, records, out, SampleSettings(), n_samples=2)
    assert (summary.written, summary.skipped) == (0, 5) and again.calls == []
    assert _tree(out) == before
    # more samples per prompt: every folder is redone
    redo = SeedPipeline()
    summary = geneval.generate_geneval(redo, records, out, SampleSettings(), n_samples=3)
    assert (summary.written, summary.skipped) == (5, 0) and len(redo.calls) == 1
    assert all(len(e.samples) == 3 for e in geneval.read_layout(out))
    # with n = 3 sample k of prompt i uses seed 3 i + k: prompt 0's first two samples are unchanged
    after = _tree(out)
    assert all(after[f"00000/samples/000{k}.png"] == before[f"00000/samples/000{k}.png"] for k in (0, 1))
    assert after["00001/samples/0000.png"] != before["00001/samples/0000.png"]


def test_interruption_leaves_no_complete_looking_folder_and_resume_is_exact(tmp_path, metadata, monkeypatch):
    records = geneval.read_metadata(metadata)
    settings = SampleSettings(batch_size=2)  # one prompt per call with n = 2
    reference = tmp_path / "reference"
    geneval.generate_geneval(SeedPipeline(), records, reference, settings, n_samples=2)

    out = tmp_path / "images"
    with pytest.raises(KeyboardInterrupt):  # interrupted while generating prompt 2
        geneval.generate_geneval(SeedPipeline(fail_after_calls=2), records, out, settings, n_samples=2)
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["00000", "00001"]

    real_save = gen.save_png
    state = {"n": 0}

    def crash_on_second_image(image, path):  # interrupted half-way through writing a folder
        state["n"] += 1
        if state["n"] == 2:
            raise KeyboardInterrupt
        return real_save(image, path)

    monkeypatch.setattr(geneval, "save_png", crash_on_second_image)
    with pytest.raises(KeyboardInterrupt):
        geneval.generate_geneval(SeedPipeline(), records, out, settings, n_samples=2)
    monkeypatch.setattr(geneval, "save_png", real_save)
    digit_folders = sorted(p.name for p in out.iterdir() if p.name.isdigit())
    assert digit_folders == ["00000", "00001"]  # the half-written one never got a digit name
    assert not any(p.name.startswith(".00002") for p in out.iterdir())  # and its temp folder is gone
    for stale in (".00002.tmp-99999", ".tmp-00003-99999", ".00001.old-99999"):  # a killed run's leftovers
        (out / stale / "samples").mkdir(parents=True)
        (out / stale / "samples" / "0000.png").write_bytes(b"half")

    resumed = SeedPipeline()
    summary = geneval.generate_geneval(resumed, records, out, settings, n_samples=2)
    assert (summary.written, summary.skipped) == (3, 2)
    assert [seed for _, seed in resumed.calls] == [4, 6, 8]  # seeds of prompts 2, 3, 4 (n = 2)
    assert _tree(out) == _tree(reference)  # temp folders cleaned, images identical


def test_a_folder_of_another_prompt_is_an_error(tmp_path, metadata):
    out = tmp_path / "images"
    records = geneval.read_metadata(metadata)
    geneval.generate_geneval(SeedPipeline(), records, out, SampleSettings(), n_samples=1)
    shifted = records[1:]
    with pytest.raises(CrossflowError, match="different prompt"):
        geneval.generate_geneval(SeedPipeline(), shifted, out, SampleSettings(), n_samples=1)


def test_malformed_lines_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(LINES[0] + "\n\n" + '{"tag": "x", "prompt": "ok"}\n{"tag": oops}\n')
    with pytest.raises(CrossflowError, match=r"bad\.jsonl:4: not valid JSON"):
        geneval.read_metadata(bad)
    bad.write_text('{"tag": "x", "include": []}\n')
    with pytest.raises(CrossflowError, match=r':1: expected a JSON object with a "prompt"'):
        geneval.read_metadata(bad)
    with pytest.raises(CrossflowError, match="does not exist"):
        geneval.read_metadata(tmp_path / "missing.jsonl")


def test_shapes_prompts_round_trip_through_geneval_metadata(tmp_path):
    specs = ShapesWorld().test_prompts(3)
    path = geneval.write_metadata([s.to_geneval() for s in specs], tmp_path / "shapes.jsonl")
    records = geneval.read_metadata(path)
    assert [PromptSpec.from_geneval(r.data) for r in records] == specs
    assert gen.read_prompt_file(path) == [s.prompt for s in specs]


def test_summary_follows_the_official_summary_scores(tmp_path):
    rows = (
        [("single_object", True)] * 3 + [("single_object", False)] + [("position", True), ("position", False)]
    )
    rows += [("colors", False)] * 2
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps({"tag": t, "correct": c, "prompt": "p"}) + "\n" for t, c in rows))
    results = {r.metric: r for r in geneval.summarize_results(path, {"steps": 5}, "run")}
    assert results["geneval_single_object"].value == 0.75 and results["geneval_single_object"].n == 4
    assert results["geneval_position"].value == 0.5 and results["geneval_colors"].value == 0.0
    assert results["geneval_overall"].value == pytest.approx((0.75 + 0.5 + 0.0) / 3)  # mean over tasks
    assert results["geneval_overall"].n == 8 and results["geneval_overall"].settings["steps"] == 5
    assert list(results)[-1] == "geneval_overall"


def test_scorer_check_names_what_to_install():
    missing = geneval.scorer_missing()
    if missing is None:
        pytest.skip("the GenEval scorer packages are installed here")
    assert "mmdet" in missing and "djghosh13/geneval" in missing
