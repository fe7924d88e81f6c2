"""Queries over a :class:`~dynrefer.search.store.RegionIndex`: by text (the model's calibrated probabilities, hits
above a threshold only), by example region (cosine similarity of region embeddings), and few-shot categories
(prototypes of labelled example regions)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .store import RegionIndex

CATEGORY_WEIGHT = 0.9
#: Few-shot classes: the least cosine similarity to the nearest class prototype for a region to get a class ("none
#: of these" below it). Chosen on generated scenes of seed 17 (eval/scenes_search.py, classes for 8 of 12
#: categories, K = 5): open-set accuracy 0.567 at 0.7 against 0.553 at 0.5 (0.612 against 0.570 on seed 13); the
#: regions of the known classes left without one: 5 % against 2.5 % (docs/search.md).
MIN_SIMILARITY = 0.7


def check_floor(min_similarity) -> None:
    """A few-shot floor (``--min-similarity``) is a cosine similarity: None (the default) or in [-1, 1]."""
    if min_similarity is not None and not -1.0 <= float(min_similarity) <= 1.0:
        raise InputError(f"--min-similarity is a cosine similarity in [-1, 1], got {min_similarity}")


def _check_k(k) -> None:
    """How many hits a query returns: a whole number, at least 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a whole number of at least 1, got {k!r}")


def embedding_dim(model) -> int:
    """The length of :func:`region_vectors`' rows for ``model``."""
    return len(model.categories) + _head(model).region_proj.out_features


def region_vectors(model, tokens: torch.Tensor) -> np.ndarray:
    """(N, dim) float32 L2-normalised region embeddings from their (N, Q, D) tokens, both parts read through the
    contrastive head: the softmax over the model's own classes ("the {class}" prompts, as ``describe`` scores
    categories), weighted 0.9, and the mean of the tokens projected into the head's space, weighted 0.1.

    Measured on 1,028 objects of 200 generated scenes (seed 17; docs/search.md): the share of an example's 10
    nearest regions that show its category was 0.38 with the projected tokens alone, 0.59 with the class
    softmax alone and with this mix (its second part orders regions of one class by their other features)."""
    from ..model.vocab import category_prompts

    head = _head(model)
    weight = head.region_proj.weight
    with torch.inference_mode():
        tokens = tokens.to(device=weight.device, dtype=weight.dtype)
        projected = F.normalize(head.region_proj(tokens).float().mean(1), dim=-1)
        parts = [(1.0 - CATEGORY_WEIGHT) * projected]
        if len(model.categories):
            logits = model.score_texts(tokens, category_prompts(list(model.categories))).float()
            parts.insert(0, CATEGORY_WEIGHT * F.normalize(torch.softmax(logits, dim=1), dim=-1))
        return F.normalize(torch.cat(parts, 1), dim=-1).cpu().numpy()


def _head(model):
    if model.contrastive_head is None:
        raise InputError("this model has no contrastive head: it cannot embed regions for search")
    return model.contrastive_head


def text_probabilities(model, tokens: np.ndarray, texts: list[str], chunk: int = 2048) -> np.ndarray:
    """(N, V) probability that each text is true of each region: the sigmoid of the contrastive head's SigLIP
    logit (scale and bias applied, whatever ``contrastive.scores`` says: the raw score of "official" models is not
    a probability), in chunks of ``chunk`` regions."""
    _head(model)
    device = model.tag_embeddings.device
    out = np.zeros((len(tokens), len(texts)), np.float32)
    with torch.inference_mode():
        for start in range(0, len(tokens), chunk):
            part = torch.from_numpy(np.asarray(tokens[start:start + chunk], dtype=np.float32)).to(device)
            out[start:start + len(part)] = torch.sigmoid(model.score_texts(part, list(texts)).float()).cpu().numpy()
    return out


STOPWORDS = frozenset("a an the of on in at to by with and or is are this that its it".split())


def _words(text: str) -> list[str]:
    """Lower-case words: runs of letters and digits (the one tokeniser for queries and the model's names)."""
    return "".join(c if c.isalnum() else " " for c in str(text).lower()).split()


def query_prompt(text: str) -> str:
    """The text the head scores for a query: ``"the {query}"`` (the prompt ``describe`` scores classes with),
    unless the query starts with an article already."""
    text = " ".join(text.split())
    return text if text.lower().split()[0] in ("the", "a", "an") else f"the {text}"


def _phrases(model) -> dict[tuple[str, ...], str]:
    """The model's names by their word tuples: tags, classes and attributes (the part after ``type:``), each
    mapped to its own spelling (the text the model learnt)."""
    names = [*model.tag_names, *model.categories,
             *((a if isinstance(a, str) else a["name"]).split(":")[-1] for a in model.attributes)]
    return {tuple(_words(n)): n for n in reversed(names) if _words(n)}


def _singulars(word: str) -> list[str]:
    """Singular forms to try for a plural ``word``, the plain "-s" first: "circles" -> "circle", "manes" ->
    "mane" (not "man"); "-es" after s, x, z, ch or sh: "crosses" -> "cross", "boxes" -> "box"; "-ies" -> "-y":
    "berries" -> "berry"."""
    forms = []
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        forms.append(word[:-1])
    if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")) and len(word) > 4:
        forms.append(word[:-2])
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")
    return forms


def _parse(model, text: str) -> tuple[list[str], list[str], str]:
    """``(parts, unknown, phrase)``: :func:`query_parts`' two lists, and the query rewritten in the model's
    spelling (its names for the matched words, stop words and unknown words kept, lower case, no punctuation)."""
    phrases = _phrases(model)
    longest = max((len(p) for p in phrases), default=1)
    words, parts, unknown, spelled, i = _words(text), [], [], [], 0
    while i < len(words):
        for size in range(min(longest, len(words) - i), 0, -1):
            key = tuple(words[i:i + size])
            name = phrases.get(key)
            for singular in ([] if name is not None else _singulars(key[-1])):
                name = phrases.get(key[:-1] + (singular,))
                if name is not None:
                    break
            if name is not None:
                parts.append(name)
                spelled.append(name)
                i += size
                break
        else:
            if words[i] not in STOPWORDS:
                unknown.append(words[i])
                parts.append(words[i])
            spelled.append(words[i])
            i += 1
    return parts, unknown, " ".join(spelled)


def query_parts(model, text: str) -> tuple[list[str], list[str]]:
    """``(parts, unknown)``: the model's names a query is made of, in the model's spelling, longest first from left
    to right ("traffic light" stays one part when the model has it; a plural "circles" or "crosses" is the name
    "circle" or "cross"; case and punctuation do not matter), and the words that are neither a name nor a stop
    word."""
    return _parse(model, text)[:2]


def unknown_words(model, text: str) -> list[str]:
    """The words of ``text`` that the model never learnt (not in its tags, classes and attribute names, nor a stop
    word): their embedding is a guess, and a probability computed from it means nothing."""
    return query_parts(model, text)[1]


def query_scores(model, tokens: np.ndarray, texts: list[str]) -> np.ndarray:
    """(N, len(texts)) the probability that each text is true of each region, read conjunctively: the least of
    the probabilities of the whole text and of each of its parts (:func:`query_parts`), each as
    :func:`query_prompt` ("the red circle", "the red", "the circle"), the whole text in the model's spelling
    ("Red circles!" is "the red circle"). A region is a "striped red circle" only if
    it is striped, red and a circle: on generated scenes (seed 17) the whole phrase alone found hits for 77 % of
    absent pattern-colour-shape combinations at threshold 0.7, the least of its parts for 13 % (docs/search.md)."""
    groups, prompts = [], []
    for text in texts:
        parts, unknown, phrase = _parse(model, text)
        if unknown or not phrase:  # (allowed) words the model does not know: the text as written
            phrase = " ".join(text.split())
        prompts_of = [query_prompt(phrase)] + ([query_prompt(p) for p in parts] if len(parts) > 1 else [])
        groups.append(range(len(prompts), len(prompts) + len(prompts_of)))
        prompts += prompts_of
    probs = text_probabilities(model, tokens, prompts)
    return np.stack([probs[:, list(g)].min(1) for g in groups], 1) if texts else probs


def search_text(index: RegionIndex, model, text: str, *, negatives=(), k: int = 20, threshold: float = 0.7,
                allow_unknown: bool = False) -> dict:
    """Regions of which ``text`` is true: its :func:`query_scores` probability at least ``threshold`` and above
    every ``negatives`` text's, best first, at most ``k``: ``{"hits": [...]}``, no hit for an absent target. A
    query with words the model does not know (:func:`unknown_words`) has no hit unless ``allow_unknown``; the
    answer names them (``"unknown_words"``)."""
    if not isinstance(text, str) or not _words(text):
        raise InputError(f"the text query {text!r} has no word")
    negatives = [negatives] if isinstance(negatives, str) else list(negatives)  # one text, not its letters
    for negative in negatives:
        if not isinstance(negative, str) or not _words(negative):
            raise InputError(f"the negative text {negative!r} has no word")
        if not query_parts(model, negative)[0]:
            raise InputError(f"the negative text {negative!r} has only stop words")
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must lie in [0, 1], got {threshold}")
    _check_k(k)
    if not query_parts(model, text)[0]:
        raise InputError(f"the text query {text!r} has only stop words")
    unknown = list(dict.fromkeys(w for t in [text, *negatives] for w in unknown_words(model, t)))
    if unknown and not allow_unknown:
        return {"hits": [], "unknown_words": unknown}
    probs = query_scores(model, index.tokens(), [text, *negatives])
    score = probs[:, 0]
    keep = score >= threshold
    if negatives:
        keep &= score > probs[:, 1:].max(1)
    ids = np.flatnonzero(keep)
    ids = ids[np.argsort(-score[ids], kind="stable")][:k]
    answer = {"hits": [row | {"score": float(score[row["id"]])} for row in index.rows(ids)]}
    return answer | ({"unknown_words": unknown} if unknown else {})


def search_vector(index: RegionIndex, vector: np.ndarray, *, k: int = 20, min_similarity: float = -1.0,
                  exclude: int | None = None) -> list:
    """Regions nearest ``vector`` (cosine similarity, best first, at most ``k``, at least ``min_similarity``);
    ``exclude``: a region id left out (the example itself)."""
    _check_k(k)
    vector = np.asarray(vector, np.float32)
    if vector.size != index.dim or vector.ndim > 2 or not np.isfinite(vector).all():
        raise InputError(f"the query vector must hold {index.dim} finite numbers (this index's embeddings), got "
                         f"shape {vector.shape}")
    if index.count == 0:
        return []
    want = min(index.count, int(k) + (exclude is not None))
    vectors, params = index.vectors(), None
    if hasattr(vectors, "hnsw"):  # HNSW returns at most efSearch neighbours: this search's own breadth
        import faiss

        params = faiss.SearchParametersHNSW(efSearch=max(vectors.hnsw.efSearch, want))
    found_scores, found_ids = vectors.search(vector.reshape(1, -1), want, params=params)
    pairs = [(int(i), float(s)) for i, s in zip(found_ids[0], found_scores[0])
             if i >= 0 and i != exclude and s >= min_similarity][:k]
    rows = index.rows([i for i, _ in pairs])
    return [row | {"score": s} for row, (_, s) in zip(rows, pairs)]


def stored_vector(index: RegionIndex, region_id: int) -> np.ndarray:
    """The embedding of a region already in the index."""
    if isinstance(region_id, bool) or not isinstance(region_id, (int, np.integer)):
        raise InputError(f"a region id is a whole number, got {region_id!r}")
    if not 0 <= region_id < index.count:
        held = f"it holds 0..{index.count - 1}" if index.count else "it is empty"
        raise InputError(f"region {region_id} is not in the index ({held})")
    return np.array(index.embeddings()[int(region_id)])


class FewShotClassifier:
    """Categories defined by labelled example regions: each class's prototype is the normalised mean of its
    examples' embeddings; a region gets the class of the most similar prototype, or none ("none of these") when
    that similarity is below ``min_similarity`` (None: :data:`MIN_SIMILARITY`)."""

    def __init__(self, vectors: np.ndarray, labels: list[str], *, min_similarity: float | None = None):
        if len(vectors) != len(labels) or not len(labels):
            raise InputError("few-shot classes need at least one labelled example region")
        self.names = sorted(set(labels))
        vectors = np.asarray(vectors, np.float32)
        protos = np.stack([vectors[[i for i, n in enumerate(labels) if n == name]].mean(0) for name in self.names])
        self.prototypes = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
        self.min_similarity = MIN_SIMILARITY if min_similarity is None else float(min_similarity)

    def similarities(self, vectors: np.ndarray) -> np.ndarray:
        """(N, C) cosine similarity of each region to each class prototype."""
        return np.asarray(vectors, np.float32) @ self.prototypes.T

    def classify(self, vectors: np.ndarray) -> list:
        """Per region ``[name, similarity]`` of the best class, or None below ``min_similarity``."""
        sims = self.similarities(vectors)
        best = sims.argmax(1)
        return [[self.names[b], float(row[b])] if row[b] >= self.min_similarity else None
                for row, b in zip(sims, best)]
