"""COCO caption metrics on hand-worked examples, METEOR/SPICE availability, reference readers.

The hand-worked tests use the "simple" tokenizer (no Java process, and on these lower-case,
unpunctuated captions it gives exactly COCO's PTB tokens); `test_ptb_tokenizer_*` checks the
PTB path itself. pycocoevalcap's BLEU adds tiny = 1e-15 to every match count and small = 1e-9
to every n-gram count, (m + tiny) / (c + small); the expected values below apply the same
constants, which matters only where a count is 0 (BLEU-4 without a matching 4-gram is ~8e-5,
not 0) or for "exactly 1" (1 - ~1e-10).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.eval import caption_metrics as cm
from crossflow_core.eval.caption_metrics import (
    JAVA_MISSING,
    SPICE_OFFLINE,
    CaptionScores,
    ptb_tokenize,
    read_references,
    score_captions,
    simple_tokenize,
)

HAS_JAVA = cm.java_problem() is None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="needs a Java runtime")
TINY, SMALL = 1e-15, 1e-9
BETA2 = 1.2**2


def p(matches: int, count: int) -> float:
    """pycocoevalcap's smoothed n-gram precision."""
    return (matches + TINY) / (count + SMALL)


def score(preds: dict, refs: dict, metrics=("bleu", "rouge_l", "cider")) -> CaptionScores:
    return score_captions(preds, refs, metrics=metrics, tokenizer="simple")


# ----------------------------------------------------------------------------- BLEU


def test_bleu_identical_candidate_is_one() -> None:
    s = score({"a": "the cat is on the mat"}, {"a": ["the cat is on the mat", "a dog"]})
    for n, value in enumerate([s.bleu1, s.bleu2, s.bleu3, s.bleu4], start=1):
        assert value == pytest.approx(1.0, abs=1e-9), n  # 1 - O(1e-10): the `small` constant
        assert value < 1.0


def test_bleu_hand_worked_precisions() -> None:
    # candidate "the cat sat on the mat" (6 words), reference "the cat is on the mat" (6 words)
    # unigrams: the x2 (ref has 2), cat, on, mat match; sat does not          -> 5/6
    # bigrams:  the cat, cat sat, sat on, on the, the mat: 3 in the reference -> 3/5
    # trigrams: the cat sat, cat sat on, sat on the, on the mat: 1            -> 1/4
    # 4-grams:  the cat sat on, cat sat on the, sat on the mat: 0             -> 0/3
    # equal lengths: brevity penalty 1. BLEU-n = (p1 ... pn)^(1/n)
    s = score({"a": "the cat sat on the mat"}, {"a": ["the cat is on the mat"]})
    assert s.bleu1 == pytest.approx(5 / 6, rel=1e-8)
    assert s.bleu2 == pytest.approx(math.sqrt(5 / 6 * 3 / 5), rel=1e-8)  # sqrt(1/2) = 0.7071
    assert s.bleu3 == pytest.approx(0.5, rel=1e-8)  # (5/6 * 3/5 * 1/4)^(1/3) = (1/8)^(1/3)
    # No matching 4-gram: the tiny constant gives (1/8 * 1e-15/3)^(1/4) = 8.03e-5, not 0.
    expected4 = (p(5, 6) * p(3, 5) * p(1, 4) * p(0, 3)) ** 0.25
    assert s.bleu4 == pytest.approx(expected4, rel=1e-6)
    assert s.bleu4 == pytest.approx(8.034e-5, rel=1e-3)


def test_bleu_brevity_penalty() -> None:
    # candidate "the cat on the mat" (c = 5) vs reference "the cat is on the mat" (r = 6)
    # p1 = 5/5; bigrams the cat, cat on, on the, the mat: 3 of 4 match -> p2 = 3/4
    # BP = exp(1 - r/c) = exp(-0.2) = 0.8187
    s = score({"a": "the cat on the mat"}, {"a": ["the cat is on the mat"]})
    assert s.bleu1 == pytest.approx(math.exp(-0.2), rel=1e-8)  # 0.81873
    assert s.bleu2 == pytest.approx(math.exp(-0.2) * math.sqrt(3 / 4), rel=1e-8)  # 0.70904


def test_bleu_uses_the_closest_reference_length() -> None:
    # c = 5; references of length 4 and 8: the closest is 4 < 5, so no brevity penalty
    # (the average length, 6, would give exp(1 - 6/5)). Every candidate unigram is clipped by
    # the max count over the references: a, dog, runs (ref 1), on, grass (ref 2) -> p1 = 1.
    s = score({"a": "a dog runs on grass"}, {"a": ["a dog runs fast", "a brown dog is running on the grass"]})
    assert s.bleu1 == pytest.approx(1.0, abs=1e-9)


def test_bleu_is_corpus_level() -> None:
    # image x: identical 6-word candidate; image y: the 5-word candidate above (6-word ref).
    # Summed counts: unigram matches 6 + 5 = 11 of 11; lengths c = 11, r = 12.
    # Corpus BLEU-1 = exp(1 - 12/11) = 0.91310; the mean of per-image scores would be
    # (1 + exp(-0.2)) / 2 = 0.90937.
    s = score({"x": "the cat is on the mat", "y": "the cat on the mat"},
              {"x": ["the cat is on the mat"], "y": ["the cat is on the mat"]})
    assert s.bleu1 == pytest.approx(math.exp(1 - 12 / 11), rel=1e-8)
    assert s.bleu1 != pytest.approx((1 + math.exp(-0.2)) / 2, rel=1e-4)


# ----------------------------------------------------------------------------- ROUGE-L, CIDEr


def rouge_f(prec: float, rec: float) -> float:
    return (1 + BETA2) * prec * rec / (rec + BETA2 * prec)


def test_rouge_l_known_lcs() -> None:
    # candidate "a cat on the mat" (5), reference "the cat is sitting on the mat" (7):
    # LCS = "cat on the mat" = 4 -> P = 4/5, R = 4/7, F = (1 + 1.44) P R / (R + 1.44 P) = 0.64721
    s = score({"a": "a cat on the mat"}, {"a": ["the cat is sitting on the mat"]})
    assert s.rouge_l == pytest.approx(rouge_f(4 / 5, 4 / 7), rel=1e-12)
    assert s.rouge_l == pytest.approx(0.647215, rel=1e-5)


def test_rouge_l_takes_max_precision_and_max_recall_separately() -> None:
    # add the reference "a cat": LCS 2 -> P = 2/5, R = 2/2. pycocoevalcap takes max P (4/5, from
    # the long reference) and max R (1, from the short one): F = 2.44 * 0.8 / (1 + 1.152) = 0.90706
    s = score({"a": "a cat on the mat"}, {"a": ["a cat", "the cat is sitting on the mat"]})
    assert s.rouge_l == pytest.approx(rouge_f(4 / 5, 1.0), rel=1e-12)
    assert s.rouge_l == pytest.approx(0.907063, rel=1e-5)


CAPTIONS = {"i1": "a black cat sleeps on the sofa", "i2": "two dogs run along the beach",
            "i3": "a red bus parked near a tall building"}


def test_cider_identical_sets_score_ten() -> None:
    # Each caption has n-grams of every order that no other image's references share, so every
    # tf-idf cosine is 1, the Gaussian length penalty is exp(0) = 1, and CIDEr = 10 * mean = 10.
    s = score(CAPTIONS, {k: [v] for k, v in CAPTIONS.items()})
    assert s.cider == pytest.approx(10.0, rel=1e-12)


def test_cider_disjoint_sets_score_zero() -> None:
    other = {"i1": "green apples in wooden crates", "i2": "an airplane lands at night",
             "i3": "children play football outside"}
    s = score(other, {k: [v] for k, v in CAPTIONS.items()})
    assert s.cider == 0.0
    assert s.bleu1 < 1e-8


def test_cider_hand_worked() -> None:
    # Two images, one reference each, no n-gram shared between them: N = 2, every n-gram of a
    # reference has document frequency 1, idf = log(2) - log(1) = log 2; candidate n-grams absent
    # from all references get df = max(1, 0) = 1, the same idf. So each vector is log 2 * counts.
    # Image 1: "black cat sits here" vs "black cat sleeps here":
    #   unigrams: 3 shared of 4 each: cos = 3 / (2 * 2) = 3/4; bigrams: "black cat" shared of 3
    #   each: 1/3; trigrams, 4-grams: 0. Equal lengths: penalty 1. 10 * (3/4 + 1/3 + 0 + 0) / 4
    #   = 10 * 13/48 = 2.7083. Image 2: identical -> 10. CIDEr = mean = 6.3542.
    s = score({"x": "black cat sits here", "y": "two dogs run fast"},
              {"x": ["black cat sleeps here"], "y": ["two dogs run fast"]})
    assert s.cider == pytest.approx((10 * 13 / 48 + 10) / 2, rel=1e-12)


def test_cider_of_one_image_is_zero() -> None:
    # idf = log(N) - log(df) = log 1 - log 1 = 0 for a single image: CIDEr needs a corpus.
    s = score({"x": "two dogs run fast"}, {"x": ["two dogs run fast"]})
    assert s.cider == 0.0


# ----------------------------------------------------------------------------- Java metrics


def test_spice_is_always_unavailable() -> None:
    s = score_captions({"a": "a cat"}, {"a": ["a cat"]}, metrics=["bleu", "spice"], tokenizer="simple")
    assert s.spice is None
    assert s.unavailable["spice"] == SPICE_OFFLINE
    assert s.meteor is None and s.unavailable["meteor"] == "not requested"
    assert "spice" not in s.as_dict() and s.as_dict()["bleu1"] == s.bleu1


def test_meteor_unavailable_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cm.shutil, "which", lambda name: None)
    assert cm.java_problem() == JAVA_MISSING
    s = score_captions(CAPTIONS, {k: [v] for k, v in CAPTIONS.items()})  # all metrics, "auto"
    assert s.meteor is None
    assert s.unavailable["meteor"] == "needs a Java runtime: apt-get install default-jre-headless"
    assert s.tokenizer == "simple"  # PTB needs Java too: the documented fallback ran
    assert s.bleu4 == pytest.approx(1.0, abs=1e-9) and s.cider == pytest.approx(10.0)
    with pytest.raises(MissingResourceError, match="needs a Java runtime"):
        score_captions(CAPTIONS, {k: [v] for k, v in CAPTIONS.items()}, tokenizer="ptb")


def test_broken_java_counts_as_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cm.shutil, "which", lambda name: str(tmp_path / "no-such-java"))
    problem = cm.java_problem()
    assert problem is not None and problem.startswith(JAVA_MISSING) and "\n" not in problem


@needs_java
def test_meteor_failure_is_reported_not_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    import pycocoevalcap.meteor.meteor as meteor_module

    monkeypatch.setattr(meteor_module, "METEOR_JAR", "no-such-meteor.jar")  # java starts, then exits 1
    s = score_captions({"a": "a cat"}, {"a": ["a cat"]}, metrics=["meteor"])
    assert s.meteor is None
    assert s.unavailable["meteor"].startswith("METEOR (meteor-1.5.jar) failed: ")
    assert "no-such-meteor.jar" in s.unavailable["meteor"]


@needs_java
@pytest.mark.slow  # METEOR's jar loads its paraphrase table: ~5-7 s on a shared 2-core machine
def test_meteor_runs_with_java() -> None:
    preds = {"a": "a black cat is sitting on a mat", "b": "two dogs run fast", "c": "a red bus"}
    refs = {"a": ["a black cat is sitting on a mat"], "b": ["two dogs are running quickly"],
            "c": ["a red bus parked near a building", "a bus on a street"]}
    s = score_captions(preds, refs)
    assert s.tokenizer == "ptb"
    assert s.meteor is not None and 0.0 < s.meteor <= 1.0
    assert set(s.unavailable) == {"spice"}
    for name in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"):
        assert getattr(s, name) is not None


@needs_java
def test_ptb_tokenizer_matches_coco() -> None:
    captions = ["A man's dog (black) isn't running.", "Two \"black-and-white\" cats, on a mat!",
                "They're near the U.S. flag -- yes", "", "..."]
    # The official pipeline's output: PTB tokens, lower case, PUNCTUATIONS dropped; brackets stay
    # as -lrb-/-rrb- because that list names them in upper case.
    expected = ["a man 's dog -lrb- black -rrb- is n't running", "two black-and-white cats on a mat",
                "they 're near the u.s. flag yes", "", ""]
    assert ptb_tokenize(captions) == expected
    assert [simple_tokenize(c) for c in captions] == expected


# ----------------------------------------------------------------------------- errors


def test_input_errors_name_the_id() -> None:
    with pytest.raises(CrossflowError, match="no predicted captions"):
        score_captions({}, {"a": ["x"]}, tokenizer="simple")
    with pytest.raises(CrossflowError, match="'img7' has a predicted caption but no reference") as e:
        score_captions({"img7": "a cat"}, {"a": ["x"]}, tokenizer="simple")
    assert "\n" not in str(e.value) and "--" not in str(e.value)
    with pytest.raises(CrossflowError, match="'a' has an empty reference list"):
        score_captions({"a": "a cat"}, {"a": []}, tokenizer="simple")
    with pytest.raises(CrossflowError, match="'a' has an empty reference list"):
        score_captions({"a": "a cat"}, {"a": ["  "]}, tokenizer="simple")
    with pytest.raises(CrossflowError, match="unknown caption metric 'blue'"):
        score_captions({"a": "a cat"}, {"a": ["a cat"]}, metrics=["blue"])


def test_extra_references_are_ignored() -> None:
    s = score({"i1": CAPTIONS["i1"], "i2": CAPTIONS["i2"]}, {k: [v] for k, v in CAPTIONS.items()})
    assert s.n_images == 2 and s.bleu4 == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------------- readers


def test_read_references_sidecars(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("cat.png", "sub/dog.jpg"):
        (tmp_path / name).write_bytes(b"")  # the reader never opens images
    (tmp_path / "cat.txt").write_text("A cat on a mat.\n\n  a  black cat \n")
    (tmp_path / "sub" / "dog.txt").write_text("a dog\n")
    assert read_references(tmp_path) == {"cat": ["A cat on a mat.", "a black cat"], "dog": ["a dog"]}
    (tmp_path / "bird.webp").write_bytes(b"")
    with pytest.raises(CrossflowError, match="bird.webp has no caption file bird.txt"):
        read_references(tmp_path)


def test_read_references_jsonl(tmp_path: Path) -> None:
    lines = [{"file_name": "images/cat.png", "caption": "a cat"},
             {"image": "images/cat.png", "text": ["a small cat", "a kitten"]},
             {"file_name": "dog.jpg", "text": "a dog"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    expected = {"cat": ["a cat", "a small cat", "a kitten"], "dog": ["a dog"]}
    assert read_references(tmp_path / "captions.jsonl") == expected
    assert read_references(tmp_path) == expected  # a folder holding captions.jsonl
    (tmp_path / "bad.jsonl").write_text('{"file_name": "x.png"}\n')
    with pytest.raises(CrossflowError, match=r"bad.jsonl:1: no caption string"):
        read_references(tmp_path / "bad.jsonl")


def test_read_references_coco_json(tmp_path: Path) -> None:
    coco = {"images": [{"id": 1, "file_name": "COCO_val2014_000000000042.jpg"},
                       {"id": 7, "file_name": "b.png"}],
            "annotations": [{"image_id": 1, "id": 10, "caption": "A man riding a horse."},
                            {"image_id": 7, "id": 11, "caption": "a bird"},
                            {"image_id": 1, "id": 12, "caption": "a horse and its rider\n"}]}
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(coco))
    assert read_references(path) == {
        "COCO_val2014_000000000042": ["A man riding a horse.", "a horse and its rider"], "b": ["a bird"]}
    coco["annotations"].append({"image_id": 99, "caption": "orphan"})
    path.write_text(json.dumps(coco))
    with pytest.raises(CrossflowError, match="image_id 99"):
        read_references(path)
    coco["annotations"].pop()
    coco["images"].append({"id": 8, "file_name": "lonely.png"})
    path.write_text(json.dumps(coco))
    with pytest.raises(CrossflowError, match="'lonely' has no reference caption"):
        read_references(path)


def test_references_feed_the_scorer(tmp_path: Path) -> None:
    (tmp_path / "captions.jsonl").write_text(
        "\n".join(json.dumps({"file_name": f"{k}.png", "caption": v}) for k, v in CAPTIONS.items()))
    s = score(dict(CAPTIONS), read_references(tmp_path))
    assert s.cider == pytest.approx(10.0) and s.n_images == 3
