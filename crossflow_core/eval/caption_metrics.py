"""COCO caption evaluation: BLEU-1..4, METEOR, ROUGE-L, CIDEr (SPICE reported unavailable).

The scores come from `pycocoevalcap` (the Python 3 port of the official COCO caption evaluation
code), called exactly as its `COCOEvalCap.evaluate` calls them; nothing here re-implements a
metric. What is ours: checking the input, tokenising without writing into site-packages, and
saying plainly which metrics could not be computed and why (`CaptionScores.unavailable`).

Tokenisation. COCO lower-cases and tokenises every caption (candidates and references) with the
Stanford PTBTokenizer (`stanford-corenlp-3.4.1.jar`, shipped in the pycocoevalcap wheel) and
drops the tokens in `pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS`. We run the same jar with
the same flags (`-preserveLines -lowerCase`, plus `-encoding utf-8`), reading captions on stdin
instead of from a temp file in the package folder, and apply the same filter. A quirk we keep on
purpose: the filter lists `-LRB-`, `-RRB-`, ... in upper case while `-lowerCase` emits `-lrb-`,
so bracket tokens survive in the official evaluation, and here.

Without Java (`tokenizer="auto"` and no working `java`) the captions go through
`simple_tokenize`, an approximation of the same pipeline (lower case, PTB-style clitics
`n't 's 're 've 'll 'd 'm`, brackets as `-lrb-` etc., initials such as `u.s.` kept, the other
punctuation stripped from token edges); `CaptionScores.tokenizer` says which one ran. On
ordinary captions both give the same tokens (299 of 300 random punctuated test captions; PTB's
context-dependent handling of a final "x." differs; on that sample BLEU and ROUGE-L came out
equal and CIDEr 0.393 vs 0.395), but the fallback's scores are not the official ones.

Metrics and their conventions (all as pycocoevalcap computes them, values as fractions; papers
print them x100, e.g. the CrossFlow paper's CIDEr 116.2 is 1.162 here):

- BLEU-n: corpus level (clipped n-gram counts and lengths summed over all images, then the
  geometric mean and brevity penalty), effective reference length "closest" per image.
  pycocoevalcap adds tiny constants (1e-15 to matches, 1e-9 to counts), so a BLEU-4 with no
  matching 4-gram is ~1e-5..1e-4, not 0, and a perfect candidate gives 1 - O(1e-9).
- METEOR 1.5 (`meteor-1.5.jar`, `-l en -norm`), needs a Java runtime; without one it is None
  with the reason in `unavailable`, never a made-up number.
- ROUGE-L: per image F-measure from LCS with beta = 1.2, using max precision and max recall
  over the references taken separately (pycocoevalcap's rule); mean over images.
- CIDEr (pycocoevalcap's `Cider`, i.e. CIDEr-D: clipping and a Gaussian length penalty,
  sigma = 6, x10): IDF comes from the references of the images being scored, so one image alone
  scores 0 and a subset scores differently from the full split.
- SPICE: pycocoevalcap's SPICE downloads Stanford CoreNLP models at run time; it is never run.

Inputs are keyed by any hashable id (image stems from `read_references`): every predicted id
needs references; references of ids that were not predicted are ignored (`n_images` counts the
scored ones), so a reference file for a whole split can score a subset.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from crossflow_core.data.sources import clean_caption
from crossflow_core.errors import CrossflowError, MissingResourceError

log = logging.getLogger(__name__)

METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")
"""What `score_captions(metrics=...)` accepts; "bleu" stands for bleu1..bleu4."""
TOKENIZERS = ("auto", "ptb", "simple")
JAVA_MISSING = "needs a Java runtime: apt-get install default-jre-headless"
SPICE_OFFLINE = "SPICE downloads Stanford CoreNLP models at run time; unavailable offline"
NOT_REQUESTED = "not requested"
PTB_JAR = "stanford-corenlp-3.4.1.jar"
JAVA_TIMEOUT_S = 60.0  # for `java -version`
PTB_TIMEOUT_S = 3600.0  # tokenising; COCO val (30k captions) takes seconds

Tokenizer = Literal["auto", "ptb", "simple"]


@dataclass(frozen=True)
class CaptionScores:
    """COCO caption metrics over `n_images` images; a metric that could not be computed is None
    and `unavailable[name]` holds the one-line reason. `tokenizer` is "ptb" (Stanford
    PTBTokenizer, as COCO) or "simple" (`simple_tokenize`, when Java is absent)."""

    bleu1: float | None
    bleu2: float | None
    bleu3: float | None
    bleu4: float | None
    meteor: float | None
    rouge_l: float | None
    cider: float | None
    spice: float | None
    n_images: int
    tokenizer: str
    unavailable: dict[str, str] = field(default_factory=dict)

    def as_dict(self, percent: bool = False) -> dict[str, float]:
        """The computed metrics by name (unavailable ones left out); x100 with `percent`."""
        factor = 100.0 if percent else 1.0
        return {
            f.name: getattr(self, f.name) * factor
            for f in fields(self)
            if f.name in SCORE_FIELDS and getattr(self, f.name) is not None
        }


SCORE_FIELDS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice")


# ----------------------------------------------------------------------------- Java


def java_problem() -> str | None:
    """None when a Java runtime works (`java` on PATH and `java -version` exits 0), else the reason."""
    java = shutil.which("java")
    if java is None:
        return JAVA_MISSING
    try:
        subprocess.run([java, "-version"], capture_output=True, timeout=JAVA_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = " ".join(str(exc).split())[:200]
        return f"{JAVA_MISSING} (`java -version` failed: {detail})"
    return None


def _pycocoevalcap_dir() -> Path:
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb
    except ImportError:
        raise MissingResourceError(
            "caption metrics need pycocoevalcap: pip install pycocoevalcap (or the extra crossflow[caption])"
        ) from None
    return Path(ptb.__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- tokenisers


_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_BRACKET_RE = re.compile(r"[()\[\]{}]")
_NT_RE = re.compile(r"(?<=\w)n't\b")
_CLITIC_RE = re.compile(r"(?<=\w)'(s|re|ve|ll|d|m)\b")
_EDGE = ".,!?;:\"'`"
_CLITICS = frozenset({"n't", "'s", "'re", "'ve", "'ll", "'d", "'m"})
_INITIALS_RE = re.compile(r"(?:[a-z]\.)*[a-z]")  # "u.s." and "a." keep their period, as in PTB
_ONLY_PUNCT_RE = re.compile(r"[-.,!?;:\"'`]+")


def _simple_token(chunk: str) -> str:
    core = chunk.rstrip(_EDGE)
    if core in _CLITICS:
        return core
    trailing = chunk[len(core) :]
    core = core.lstrip(_EDGE)
    if trailing.startswith(".") and _INITIALS_RE.fullmatch(core):
        return core + "."
    return "" if _ONLY_PUNCT_RE.fullmatch(core) else core


def simple_tokenize(caption: str) -> str:
    """Lower-case, PTB-like tokens joined by spaces, COCO's punctuation removed (no Java needed).

    "A man's dog (black) isn't running." -> "a man 's dog -lrb- black -rrb- is n't running"
    """
    text = _BRACKET_RE.sub(lambda m: _BRACKETS[m.group(0)], clean_caption(caption).lower())
    text = _CLITIC_RE.sub(r" '\1", _NT_RE.sub(" n't", text))
    return " ".join(t for t in map(_simple_token, text.split()) if t)


def ptb_tokenize(captions: list[str], check_java: bool = True) -> list[str]:
    """COCO's tokenisation: Stanford PTBTokenizer (lower case) + pycocoevalcap's punctuation filter.

    One Java process for all captions. Needs Java; raises MissingResourceError when the tokenizer
    cannot run (`check_java=False` skips the `java -version` probe when the caller has done it).
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    cleaned = [clean_caption(c) for c in captions]
    todo = [i for i, c in enumerate(cleaned) if c]  # an empty line would be lost by the tokenizer
    out = [""] * len(cleaned)
    if not todo:
        return out
    problem = java_problem() if check_java else None
    if problem is not None:
        raise MissingResourceError(f"the PTB tokenizer {problem}")
    jar = _pycocoevalcap_dir() / "tokenizer" / PTB_JAR
    cmd = [
        "java",
        "-cp",
        str(jar),
        "edu.stanford.nlp.process.PTBTokenizer",
        "-preserveLines",
        "-lowerCase",
        "-encoding",
        "utf-8",
    ]
    text = "\n".join(cleaned[i] for i in todo) + "\n"
    try:
        done = subprocess.run(
            cmd, input=text.encode("utf-8"), capture_output=True, timeout=PTB_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        detail = " ".join((stderr.decode("utf-8", "replace") or str(exc)).split())[-300:]
        raise MissingResourceError(f"the PTB tokenizer ({jar.name}) failed: {detail}") from None
    lines = done.stdout.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(todo):
        raise MissingResourceError(f"the PTB tokenizer returned {len(lines)} lines for {len(todo)} captions")
    punctuation = set(PUNCTUATIONS)
    for i, line in zip(todo, lines, strict=True):
        out[i] = " ".join(w for w in line.rstrip().split(" ") if w and w not in punctuation)
    return out


# ----------------------------------------------------------------------------- scoring


def _check_inputs(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Iterable[str]]
) -> tuple[list[Hashable], list[list[str]]]:
    if not predictions:
        raise CrossflowError("no predicted captions to score: the predictions are empty")
    ids = list(predictions)
    refs: list[list[str]] = []
    for key in ids:
        caption = predictions[key]
        if not isinstance(caption, str):
            raise CrossflowError(
                f"predicted caption of image {key!r} is a {type(caption).__name__}, expected a string"
            )
        if key not in references:
            raise CrossflowError(f"image {key!r} has a predicted caption but no reference captions")
        given = references[key]
        given = [given] if isinstance(given, str) else list(given)
        cleaned = [clean_caption(r) for r in given if isinstance(r, str)]
        if len(cleaned) != len(given):
            raise CrossflowError(f"reference captions of image {key!r} must be strings")
        cleaned = [r for r in cleaned if r]
        if not cleaned:
            raise CrossflowError(f"image {key!r} has an empty reference list")
        refs.append(cleaned)
    return ids, refs


def score_captions(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Iterable[str]],
    *,
    metrics: Collection[str] | None = None,
    tokenizer: Tokenizer = "auto",
) -> CaptionScores:
    """Score one predicted caption per image against that image's reference captions.

    predictions: id -> caption; references: id -> list of captions (may hold more ids).
    metrics: a subset of METRICS (default: all); the others are None, "not requested".
    tokenizer: "auto" (PTB when Java works, else "simple"), "ptb" (error without Java) or "simple".
    """
    wanted = set(METRICS if metrics is None else metrics)
    unknown = sorted(wanted - set(METRICS))
    if unknown:
        raise CrossflowError(f"unknown caption metric {unknown[0]!r}: choose from {', '.join(METRICS)}")
    if tokenizer not in TOKENIZERS:
        raise CrossflowError(f"unknown tokenizer {tokenizer!r}: choose from {', '.join(TOKENIZERS)}")
    ids, refs = _check_inputs(predictions, references)
    _pycocoevalcap_dir()  # a clear error when the package is missing

    java = java_problem() if tokenizer != "simple" or "meteor" in wanted else None
    used = "ptb" if tokenizer == "ptb" or (tokenizer == "auto" and java is None) else "simple"
    flat = [predictions[k] for k in ids] + [r for rs in refs for r in rs]
    if used == "ptb":
        if java is not None:
            raise MissingResourceError(f"the PTB tokenizer {java}")
        tokens = ptb_tokenize(flat, check_java=False)
    else:
        tokens = [simple_tokenize(c) for c in flat]
    # pycocoevalcap's layout: {index: [caption, ...]}, tokenised, one candidate per image.
    res = {i: [tokens[i]] for i in range(len(ids))}
    gts: dict[int, list[str]] = {}
    at = len(ids)
    for i, rs in enumerate(refs):
        gts[i] = tokens[at : at + len(rs)]
        at += len(rs)

    values: dict[str, float | None] = dict.fromkeys(SCORE_FIELDS)
    unavailable: dict[str, str] = {}
    if "bleu" in wanted:
        from pycocoevalcap.bleu.bleu import Bleu

        bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n, value in enumerate(bleus, start=1):
            values[f"bleu{n}"] = float(value)
    if "meteor" in wanted:
        if java is not None:
            unavailable["meteor"] = java
        else:
            values["meteor"], reason = _meteor(gts, res)
            if reason is not None:
                unavailable["meteor"] = reason
    if "rouge_l" in wanted:
        from pycocoevalcap.rouge.rouge import Rouge

        values["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in wanted:
        from pycocoevalcap.cider.cider import Cider

        values["cider"] = float(Cider().compute_score(gts, res)[0])
    unavailable["spice"] = SPICE_OFFLINE if "spice" in wanted else NOT_REQUESTED
    for name in SCORE_FIELDS:
        if values[name] is None and name not in unavailable:
            unavailable[name] = NOT_REQUESTED
    return CaptionScores(**values, n_images=len(ids), tokenizer=used, unavailable=unavailable)


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float | None, str | None]:
    """pycocoevalcap's METEOR 1.5 (a Java subprocess); (score, None), or (None, reason) if it fails."""
    from pycocoevalcap.meteor.meteor import Meteor

    class ClosableMeteor(Meteor):
        """Meteor with an explicit close(). The parent's __del__ re-acquires a lock that
        compute_score leaves held when the jar dies mid-way, and would block forever."""

        def close(self) -> str:
            """End the Java process; returns the tail of its stderr."""
            process = self.meteor_p
            try:
                process.stdin.close()
            except OSError:  # the jar already died: unflushed input has nowhere to go
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return (process.stderr.read() or b"").decode("utf-8", "replace")

        def __del__(self) -> None:  # closed explicitly below
            pass

    scorer = None
    try:
        scorer = ClosableMeteor()
        score = float(scorer.compute_score(gts, res)[0])
        if not math.isfinite(score):
            raise ValueError(f"METEOR returned {score}")
        return score, None
    except (OSError, ValueError) as exc:  # the jar died (e.g. out of memory: it asks for -Xmx2G)
        if scorer is not None:
            scorer.meteor_p.kill()
            stderr, scorer = scorer.close(), None
        else:
            stderr = ""
        detail = " ".join((stderr or str(exc)).split())[-200:]
        log.warning("METEOR failed: %s", detail)
        return None, f"METEOR (meteor-1.5.jar) failed: {detail}"
    finally:
        if scorer is not None:  # end the Java process now, not whenever the object is collected
            scorer.close()


# ----------------------------------------------------------------------------- references


from crossflow_core.eval.caption_references import read_references  # noqa: E402,F401 - re-exported
