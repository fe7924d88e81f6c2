"""OVAD open-vocabulary attribute detection, box-oracle setting (SPEC §6): attribute mAP.

Protocol:

* the attribute vocabulary is OVAD's ``attributes`` list (each ``{"name", "type", "parent_type",
  "is_has_att", "freq_set"}``, ``freq_set`` in head / medium / tail), read from the OVAD annotation
  JSON (its ``attributes`` key) or a file holding that list alone;
* regions are matched by ``(image, id)`` (the ground-truth boxes are given to the model: box oracle);
  a ground-truth region lists its positive attribute names in ``attributes`` and its negative ones in
  ``negative_attributes``; any other attribute is unannotated for it and ignored;
* a predicted region's ``attributes`` is ``[[name, score], ...]`` over every queried attribute; names are
  matched verbatim (``color:blue/navy``), and an annotated attribute missing from a prediction is an error;
* per attribute, AP over the instances annotated positive or negative for it, with scikit-learn's
  ``average_precision_score`` definition (``Σ_n (R_n − R_{n−1}) P_n`` over the distinct score
  thresholds in decreasing order, tied scores form one threshold); computed only when the attribute
  has at least one positive (otherwise NaN, reported as null);
* ``map`` = NaN-ignoring mean over all attributes, ``map_head`` / ``map_medium`` / ``map_tail`` over the
  attributes of each ``freq_set``; in percent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import RecordEvaluator, check_number, percent

__all__ = ["OVADEvaluator", "evaluate_ovad", "load_ovad_attributes", "binary_average_precision"]

FREQ_SETS = ("head", "medium", "tail")


def load_ovad_attributes(source) -> list[dict]:
    """The attribute list from a path (OVAD annotation JSON or the list alone), a dict or a list."""
    name = "attribute metadata"
    if isinstance(source, (str, Path)):
        name = f"'{source}'"
        try:
            with open(source, encoding="utf-8") as fh:
                source = json.load(fh)
        except OSError as exc:
            raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{name}: not a JSON file ({exc})") from None
    if isinstance(source, dict):
        if "attributes" not in source:
            raise InputError(f"{name}: expected the OVAD annotation JSON (with an 'attributes' key) or its "
                             "'attributes' list")
        source = source["attributes"]
    if not isinstance(source, list) or not source:
        raise InputError(f"{name}: the OVAD 'attributes' list must be a non-empty list")
    seen = set()
    for i, att in enumerate(source):
        if not isinstance(att, dict) or not isinstance(att.get("name"), str):
            raise InputError(f"{name}: attribute #{i} must be an object with a 'name'")
        if att.get("freq_set") not in FREQ_SETS:
            raise InputError(f"{name}: attribute {att['name']!r} has freq_set {att.get('freq_set')!r}, "
                             f"expected one of {', '.join(FREQ_SETS)}")
        if att["name"] in seen:
            raise InputError(f"{name}: attribute {att['name']!r} is listed twice")
        seen.add(att["name"])
    return source


def binary_average_precision(labels, scores) -> float:
    """scikit-learn's ``average_precision_score`` for binary labels; NaN without positives."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last index of each score value
    tps = np.cumsum(labels)[last].astype(np.float64)
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _names(region: dict, field: str, what: str) -> list:
    names = region.get(field) or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{what}: '{field}' must be a list of attribute names")
    return names


def _scores(region: dict, what: str) -> dict:
    raw = region["attributes"]
    items = raw.items() if isinstance(raw, dict) else raw
    out = {}
    try:
        for name, score in items:
            if not isinstance(name, str):
                raise TypeError
            if name in out:
                raise InputError(f"{what}: attribute {name!r} is listed twice in 'attributes'")
            out[name] = check_number(score, f"{what}: score of attribute {name!r}")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{what}: 'attributes' must be [[name, score], ...]") from None
    return out


class OVADEvaluator(RecordEvaluator):
    """OVAD box-oracle attribute mAP (protocol in the module docstring).

    Args:
        attributes: the OVAD attribute list (or a path / the annotation JSON, see
            :func:`load_ovad_attributes`). Without it the mean runs over the attributes annotated in
            the ground truth and the head / medium / tail means are null.
    """

    task = "ovad"

    def __init__(self, *, attributes=None, **kwargs):
        self.attributes = None if attributes is None else load_ovad_attributes(attributes)
        super().__init__(**kwargs)

    def evaluate(self) -> dict:
        matches, missing = self._match(("attributes",), ())
        known = None if self.attributes is None else {a["name"] for a in self.attributes}
        labels: dict[str, list] = {}  # attribute -> [(label, score)]
        for m in matches:
            pos = _names(m.gt_region, "attributes", m.gt_where)
            neg = _names(m.gt_region, "negative_attributes", m.gt_where)
            both = set(pos) & set(neg)
            if both:
                raise InputError(f"{m.gt_where}: attribute {sorted(both)[0]!r} is both positive and negative")
            scores = _scores(m.pred_region, m.where)
            for label, names in ((1, pos), (0, neg)):
                for name in names:
                    if known is not None and name not in known:
                        raise InputError(f"{m.gt_where}: attribute {name!r} is not in the OVAD attribute list "
                                         "(names are matched verbatim, e.g. 'color:blue/navy')")
                    if name not in scores:
                        raise InputError(f"{m.where}: no score for attribute {name!r} (annotated in the ground "
                                         "truth; 'attributes' must list every queried attribute, names verbatim)")
                    labels.setdefault(name, []).append((label, scores[name]))
        names = [a["name"] for a in self.attributes] if self.attributes is not None else sorted(labels)
        ap = {}
        for name in names:
            pairs = labels.get(name, [])
            ap[name] = binary_average_precision([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else float("nan")
        report = {"map": _nanmean(ap.values())}
        notes = []
        for group in FREQ_SETS:
            if self.attributes is None:
                report[f"map_{group}"] = None
            else:
                report[f"map_{group}"] = _nanmean(ap[a["name"]] for a in self.attributes if a["freq_set"] == group)
        if self.attributes is None:
            notes.append("no attribute metadata (--ovad-attributes): map over the annotated attributes, "
                         "no head / medium / tail breakdown")
        report["ap"] = {name: percent(v) for name, v in ap.items()}
        report.update(num_regions=len(matches), num_images=len({m.image for m in matches}),
                      num_attributes=int(sum(not np.isnan(v) for v in ap.values())), **missing)
        if notes:
            report["notes"] = "; ".join(notes)
        return report


def _nanmean(values) -> float | None:
    values = [v for v in values if not np.isnan(v)]
    return percent(sum(values) / len(values)) if values else None


def evaluate_ovad(predictions, ground_truth, *, attributes=None, strict: bool = False,
                  split: str | None = None) -> dict:
    """Function form of :class:`OVADEvaluator` on lists of JSONL records."""
    evaluator = OVADEvaluator(attributes=attributes, strict=strict, split=split)
    evaluator.process(predictions, ground_truth)
    return evaluator.evaluate()
