"""Evaluators for every reported table (SPEC §6): captioning, dense captioning, OVAD, recognition.

Each evaluator has ``reset() / process(predictions, ground_truth) / evaluate() -> dict`` (records of the
project JSONL, SPEC §5; ``process`` may be called with any number of batches) and a function form.
Reports are JSON-ready dicts with every metric in percent. ``dynrefer evaluate`` is the CLI.
"""

from .captioning import CaptioningEvaluator, evaluate_captioning, ptb_tokenize
from .common import JavaToolError, MeteorError, MissingJavaError, align_images
from .densecap import DenseCaptioningEvaluator, evaluate_densecap
from .meteor import MeteorScorer, shared_meteor
from .ovad import OVADEvaluator, evaluate_ovad, load_ovad_attributes
from .recognition import RecognitionEvaluator, evaluate_recognition

EVALUATORS = {
    "caption": CaptioningEvaluator,
    "densecap": DenseCaptioningEvaluator,
    "ovad": OVADEvaluator,
    "recognition": RecognitionEvaluator,
}

__all__ = [
    "EVALUATORS",
    "CaptioningEvaluator",
    "DenseCaptioningEvaluator",
    "OVADEvaluator",
    "RecognitionEvaluator",
    "evaluate_captioning",
    "evaluate_densecap",
    "evaluate_ovad",
    "evaluate_recognition",
    "load_ovad_attributes",
    "ptb_tokenize",
    "MeteorScorer",
    "shared_meteor",
    "align_images",
    "MissingJavaError",
    "MeteorError",
    "JavaToolError",
]
