"""Region search across a collection (``dynrefer index`` / ``dynrefer search``): every region embedded once, then
found by text (the model's calibrated probabilities: only hits above a threshold, so an absent target finds
nothing), by an example region, or classified by few-shot categories. See docs/search.md."""

from .build import (
    apply_few_shot,
    build_index,
    embed_examples,
    embed_regions,
    few_shot_categories,
    few_shot_classifier,
)
from .query import (
    FewShotClassifier,
    embedding_dim,
    query_parts,
    query_prompt,
    query_scores,
    region_vectors,
    search_text,
    search_vector,
    stored_vector,
    text_probabilities,
    unknown_words,
)
from .store import RegionIndex

__all__ = [
    "FewShotClassifier", "RegionIndex", "apply_few_shot", "build_index", "embed_examples", "embed_regions",
    "embedding_dim", "few_shot_categories", "few_shot_classifier", "query_parts", "query_prompt", "query_scores",
    "region_vectors", "search_text", "search_vector", "stored_vector", "text_probabilities", "unknown_words",
]  # fmt: skip
