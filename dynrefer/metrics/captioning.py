"""Region captioning metrics (SPEC §6): BLEU-1..4, METEOR, ROUGE-L, CIDEr through pycocoevalcap.

Protocol:

* regions are matched by ``(image, id)``; the hypothesis is the predicted region's ``caption``, the
  references the ground-truth region's ``captions`` (at least one);
* references and hypotheses are keyed **by region**, so several regions per image work (the
  official evaluator keys by image: with one region per image both agree);
* every text goes through pycocoevalcap's Stanford PTB tokenizer (lower case, punctuation removed),
  then pycocoevalcap's ``Bleu(4)``, ``Meteor``, ``Rouge`` and ``Cider`` score the tokenized dicts
  (corpus BLEU, the jar's corpus METEOR, mean ROUGE-L, CIDEr-D as in COCO caption);
* the report is in percent: ``bleu_1``..``bleu_4``, ``meteor``, ``rouge_l``, ``cider``.

The tokenizer and METEOR run on Java (``java`` on PATH). The tokenizer is called exactly as
pycocoevalcap calls it, except that its temporary file goes to the system temporary folder instead
of pycocoevalcap's (possibly read-only) package folder.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import tempfile
from pathlib import Path

from ..errors import InputError
from .common import JavaToolError, RecordEvaluator, require_java

__all__ = ["CaptioningEvaluator", "evaluate_captioning", "ptb_tokenize"]

JAVA_CAPTIONING = (
    "the captioning metrics need Java: METEOR runs on it, and so does the PTB tokenizer that BLEU, ROUGE-L "
    "and CIDEr use"
)


def ptb_tokenize(texts: dict) -> dict:
    """``{key: [text, ...]}`` → ``{key: [tokenized text, ...]}`` as ``PTBTokenizer().tokenize`` does.

    Lower-cases, splits with Stanford's PTBTokenizer (``-preserveLines -lowerCase``) and drops the
    punctuation tokens of pycocoevalcap's list. One Java call for all texts.
    """
    java = require_java(JAVA_CAPTIONING)
    module = importlib.import_module("pycocoevalcap.tokenizer.ptbtokenizer")
    folder = Path(module.__file__).resolve().parent
    result: dict = {k: [""] * len(values) for k, values in texts.items()}
    slots, lines = [], []
    for k, values in texts.items():
        for i, v in enumerate(values):
            line = " ".join(str(v).splitlines())
            if line.strip():  # blank texts tokenize to "" (and would shift the jar's output lines)
                slots.append((k, i))
                lines.append(line)
    if not lines:
        return result
    fd, tmp = tempfile.mkstemp(prefix="dynrefer-ptb-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write("\n".join(lines).encode("utf-8"))
        cmd = [java, "-cp", module.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", tmp]
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, check=False)
    finally:
        os.unlink(tmp)
    out = proc.stdout.decode("utf-8", "replace").split("\n")
    if proc.returncode != 0 or len(out) < len(lines):
        err = proc.stderr.decode("utf-8", "replace").strip().replace("\n", " | ")[-1000:]
        raise JavaToolError(f"the PTB tokenizer failed (exit {proc.returncode}, {len(out)} lines for {len(lines)} "
                         f"texts): {err}")
    punctuation = set(module.PUNCTUATIONS)
    for (key, i), line in zip(slots, out):
        result[key][i] = " ".join(w for w in line.rstrip().split(" ") if w not in punctuation)
    return result


def score_captions(references: dict, hypotheses: dict, meteor=None) -> dict:
    """pycocoevalcap scores (fractions, not percent) of tokenized ``{key: [refs]}`` / ``{key: [hyp]}``.

    ``meteor``: a :class:`~dynrefer.metrics.meteor.MeteorScorer` (default: the shared one).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from .meteor import shared_meteor

    if references.keys() != hypotheses.keys():
        raise ValueError("references and hypotheses must have the same keys")
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its statistics
        bleu, _ = Bleu(4).compute_score(references, hypotheses)
    rouge, _ = Rouge().compute_score(references, hypotheses)
    cider, _ = Cider().compute_score(references, hypotheses)
    scorer = meteor if meteor is not None else shared_meteor()
    met, _ = scorer.score_with_aggregate([(hypotheses[k][0], references[k]) for k in references])
    return {"bleu_1": bleu[0], "bleu_2": bleu[1], "bleu_3": bleu[2], "bleu_4": bleu[3], "meteor": met,
            "rouge_l": float(rouge), "cider": float(cider)}


class CaptioningEvaluator(RecordEvaluator):
    """Region captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr (percent), keyed by region.

    Predicted regions need ``caption`` (a string); their ground-truth regions ``captions`` (a list of
    strings; a region whose list is empty has no reference and is left out, counted as
    ``regions_without_references``). Ground-truth images or regions without a prediction are left out
    (counted in the report; an error with ``strict=True``).
    """

    task = "caption"

    def __init__(self, *, meteor=None, **kwargs):
        self.meteor = meteor
        super().__init__(**kwargs)

    def evaluate(self) -> dict:
        matches, missing = self._match(("caption",), ("captions",))
        refs, hyps = {}, {}
        scored = []
        for i, m in enumerate(matches):
            caption = m.pred_region["caption"]
            if not isinstance(caption, str):
                raise InputError(f"{m.where}: 'caption' must be a string, got {caption!r}")
            captions = m.gt_region["captions"]
            if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                raise InputError(f"{m.gt_where}: 'captions' must be a list of strings")
            if not captions:  # no reference left (prepare drops captions that normalise to nothing): not scored
                continue
            refs[i] = list(captions)
            hyps[i] = [caption]
            scored.append(m)
        unscored = len(matches) - len(scored)
        matches = scored
        if not matches and unscored:
            raise InputError(f"{self.predictions_name}: no predicted region has a reference caption")
        if not matches:
            raise InputError(f"{self.predictions_name}: no predicted regions to evaluate")
        require_java(JAVA_CAPTIONING)
        tokens = ptb_tokenize({**{("ref", k): v for k, v in refs.items()}, **{("hyp", k): v for k, v in hyps.items()}})
        references = {k: tokens[("ref", k)] for k in refs}
        hypotheses = {k: tokens[("hyp", k)] for k in hyps}
        scores = score_captions(references, hypotheses, self.meteor)
        report = {key: 100.0 * value for key, value in scores.items()}
        report.update(num_regions=len(matches), num_images=len({m.image for m in matches}), **missing)
        if unscored:
            report["regions_without_references"] = unscored
        return report


def evaluate_captioning(predictions, ground_truth, *, strict: bool = False, split: str | None = None,
                        meteor=None) -> dict:
    """Function form of :class:`CaptioningEvaluator` on lists of JSONL records."""
    evaluator = CaptioningEvaluator(strict=strict, split=split, meteor=meteor)
    evaluator.process(predictions, ground_truth)
    return evaluator.evaluate()
