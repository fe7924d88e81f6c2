"""Region datasets, collate and the ``LightningDataModule`` (SPEC §1.5, §5).

One training sample is one region (as in the reference recipe): its image is loaded, its
views are chosen (training: ``random`` policy — the ``n − 1`` extra views drawn without
replacement from t = 0.1 … 1.0; evaluation: ``greedy``) and rendered, one of its captions is
drawn, and a control string is formed from a random subset of its tags (empty half of the
time). With ``short_text_prob`` > 0 the contrastive head is paired, that often, with a
short description built from the region's annotations instead of its caption (see
:func:`short_description`; every region of the batch the description is true of counts as its
positive, :func:`contrastive_positives`), so that category and attribute prompts ("the star", "the red
object") have seen their like in training. The collate function stacks regions into a model batch (``pixels``,
``boxes_in_view``, ``captions``, ``controls``, ``tags``, ``keys``).
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from ..images import load_image
from ..model.heads.language import control_string
from ..records import read_jsonl
from ..regions import parse_region
from ..view_selection import select_views
from ..views import render_crops


def attribute_synonyms(attribute) -> list[str]:
    """The value words of an attribute name: ``"color:red/crimson"`` → ``["red", "crimson"]``,
    ``"striped"`` → ``["striped"]`` (empty parts dropped)."""
    return [v for v in str(attribute).split(":", 1)[-1].split("/") if v]


def without_attributes(spec: dict, prefixes: tuple[str, ...]) -> dict:
    """``spec`` with its ``attributes`` whose name starts with one of ``prefixes`` left out (``spec``
    itself when ``prefixes`` is empty)."""
    if not prefixes:
        return spec
    return {**spec, "attributes": [a for a in spec.get("attributes") or [] if not str(a).startswith(prefixes)]}


def short_description_facts(spec: dict, rng: random.Random, noun: str = "object"):
    """:func:`short_description` and what it claims: ``(text, head, words)`` with ``head`` the
    category named (None for ``noun``) and ``words`` the attribute values named; None when the
    region has neither a category nor attributes."""
    category = spec.get("category")
    values = [rng.choice(words) for words in map(attribute_synonyms, spec.get("attributes") or []) if words]
    if not category and not values:
        return None
    words = rng.sample(values, rng.randint(0 if category else 1, len(values))) if values else []
    head = str(category) if category and (not words or rng.random() < 0.75) else None
    return " ".join(["the", *words, head or noun]), head, tuple(words)


def short_description(spec: dict, rng: random.Random, noun: str = "object") -> str | None:
    """``"the {attr values} {category|noun}"`` from a region's ``category`` and a random subset
    (in random order) of its positive ``attributes`` (``"color:red"`` → ``"red"``, synonyms
    ``a/b`` → one of them); None when the region has neither."""
    facts = short_description_facts(spec, rng, noun)
    return None if facts is None else facts[0]


def region_facts(spec: dict) -> tuple:
    """``(category, attribute values)`` of a region, every synonym of ``a/b`` values included."""
    values = {v for a in spec.get("attributes") or [] for v in attribute_synonyms(a)}
    return spec.get("category"), frozenset(values)


def describes(facts, region) -> bool:
    """Whether a short description's ``(head, words)`` is true of a region's :func:`region_facts`."""
    head, words = facts
    category, values = region
    return (head is None or head == category) and set(words) <= values


class RegionDataset(Dataset):
    """Regions of a JSONL file (SPEC §5) with at least one caption.

    Args:
        path: the JSONL file; image paths are relative to it unless ``image_root`` is given.
        split: keep only records with this ``split`` (None: all).
        num_views, size: views per region and their side.
        policy: view policy (``random`` for training, ``greedy`` for evaluation).
        control_dropout: probability of an empty control string (training).
        train: draw captions / control subsets at random (else: first caption, all tags).
        base_t, ts: view 0's ``t`` and, for ``policy="fixed"``, the extra views' ``t`` (ablations).
        short_text_prob: training only: probability of pairing the contrastive head with
            :func:`short_description` instead of the caption.
        short_text_skip: attribute prefixes never named in a short text (e.g. ``["position:"]``).
        truncate_boxes: RoI boxes as the official processor passes them (integers; ``roi.truncate_boxes``).
    """

    def __init__(self, path, *, split=None, image_root=None, num_views=3, size=224, policy="random",
                 control_dropout=0.5, train=True, max_regions=None, short_text_prob=0.0, base_t=0.0, ts=None,
                 short_text_skip=(), truncate_boxes=False):
        self.path = Path(path)
        self.root = Path(image_root) if image_root else self.path.parent
        self.records = [r for r in read_jsonl(self.path) if split is None or r.get("split") == split]
        self.items = [(i, j) for i, rec in enumerate(self.records) for j, reg in enumerate(rec.get("regions", []))
                      if reg.get("captions")]
        if max_regions is not None:
            self.items = self.items[:max_regions]
        if not self.items:
            raise InputError(f"'{self.path}' has no captioned regions" + (f" in split {split!r}" if split else ""))
        self.num_views, self.size, self.policy = num_views, size, policy
        self.base_t, self.ts, self.truncate_boxes = float(base_t), ts, bool(truncate_boxes)
        self.control_dropout, self.train = control_dropout, train
        if not 0.0 <= float(short_text_prob) <= 1.0:
            raise InputError(f"short_text_prob must be in [0, 1], got {short_text_prob!r}")
        self.short_text_prob = float(short_text_prob)
        if isinstance(short_text_skip, str):
            raise InputError("short_text_skip must be a list of attribute prefixes, "
                             f"got the string {short_text_skip!r}")
        self.short_text_skip = tuple(str(p) for p in short_text_skip or ())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        rec_idx, reg_idx = self.items[index]
        record = self.records[rec_idx]
        spec = record["regions"][reg_idx]
        image = load_image(self.root / record["image"])
        region = parse_region(spec, (int(image.shape[2]), int(image.shape[1])), index=reg_idx)
        generator = torch.Generator().manual_seed(random.getrandbits(62)) if self.train else None
        views = select_views(image, [region.box], num_views=self.num_views, policy=self.policy, size=self.size,
                             generator=generator, base_t=self.base_t, ts=self.ts, render=False)[0]
        captions = spec["captions"]
        tags = [str(t) for t in spec.get("tags", [])]
        if self.train:
            caption = random.choice(captions)
            if tags and random.random() >= self.control_dropout:
                control = random.sample(tags, random.randint(1, len(tags)))
            else:
                control = []
        else:
            caption, control = captions[0], []
        text, facts = caption, None
        if self.train and self.short_text_prob > 0 and random.random() < self.short_text_prob:
            short = short_description_facts(without_attributes(spec, self.short_text_skip),
                                            random.Random(random.getrandbits(62)))
            if short is not None:
                text, facts = short[0], short[1:]
        return {
            # uint8 (a quarter of float32 through the worker queue and to the device); the model normalises
            "pixels": render_crops(image, views.geometry.crops, self.size, normalized=False),
            "boxes_in_view": torch.as_tensor(views.geometry.roi_boxes(self.truncate_boxes), dtype=torch.float32),
            "caption": caption,
            "contrastive_text": text,
            "text_facts": facts,
            "region_facts": region_facts(spec),
            "control": control_string(control),
            "tags": tags,
            "key": (record.get("image"), spec.get("id", reg_idx)),
            "references": list(captions),
        }


def contrastive_positives(samples: list[dict]) -> torch.Tensor:
    """(R, R) bool: region ``i`` and contrastive text ``j`` match — ``i == j``, or text ``j`` is a
    short description true of region ``i`` (so "the red object" of one region is not a negative
    for every other red region of the batch)."""
    r = len(samples)
    out = torch.eye(r, dtype=torch.bool)
    for j, s in enumerate(samples):
        facts = s.get("text_facts")
        if facts is None:
            continue
        for i, other in enumerate(samples):
            if i != j and other.get("region_facts") is not None and describes(facts, other["region_facts"]):
                out[i, j] = True
    return out


def collate_regions(samples: list[dict]) -> dict:
    """Stack region samples into a model batch."""
    return {
        "contrastive_positives": contrastive_positives(samples),
        "pixels": torch.cat([s["pixels"] for s in samples]),
        "boxes_in_view": torch.cat([s["boxes_in_view"] for s in samples]),
        "captions": [s["caption"] for s in samples],
        "contrastive_texts": [s.get("contrastive_text", s["caption"]) for s in samples],
        "controls": [s["control"] for s in samples],
        "tags": [s["tags"] for s in samples],
        "keys": [s["key"] for s in samples],
        "references": [s["references"] for s in samples],
    }


def view_settings(views) -> dict:
    """:class:`RegionDataModule` keyword arguments that follow a model's ``ViewsConfig``: ``num_views``,
    ``size``, ``base_t``, the training views (``train_policy``; ``fixed_ts`` when it is ``fixed``) and the
    validation views (the inference ``policy``; ``fixed_ts`` when it is ``fixed``)."""
    return dict(num_views=views.num_views, size=views.size, base_t=views.base_t, train_policy=views.train_policy,
                train_ts=list(views.fixed_ts or []) if views.train_policy == "fixed" else None,
                val_policy=views.policy, val_ts=list(views.fixed_ts or []) if views.policy == "fixed" else None)


class RegionDataModule(L.LightningDataModule):
    """JSONL region data for ``fit`` / ``validate``.

    Args:
        train_file / val_file: JSONL files (SPEC §5); ``train_split`` / ``val_split`` select
            records by their ``split`` (one file may hold every split).
        batch_size: regions per batch (per process); training drops the last partial batch.
        base_t: view 0's ``t`` (0: the region; 1.0 for a whole-image-only ablation);
            ``val_policy`` / ``val_ts``: the validation views (default greedy); ``train_policy`` /
            ``train_ts``: the training views (default random, the method's stochastic views).
        short_text_prob, short_text_skip: see :class:`RegionDataset`.
        truncate_boxes: RoI boxes as the official processor passes them; None (default): as the model's
            ``roi.truncate_boxes`` says (set by the training module's ``setup``; true for the official model).
    """

    def __init__(self, train_file: str | None = None, val_file: str | None = None, *, train_split: str | None = "train",
                 val_split: str | None = "val", image_root: str | None = None, num_views: int = 3, size: int = 224,
                 batch_size: int = 64, num_workers: int = 2, control_dropout: float = 0.5,
                 max_train_regions: int | None = None, max_val_regions: int | None = None,
                 short_text_prob: float = 0.0, base_t: float = 0.0, val_policy: str = "greedy",
                 val_ts: list[float] | None = None, train_policy: str = "random", train_ts: list[float] | None = None,
                 short_text_skip: list[str] | None = None, truncate_boxes: bool | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        common = dict(image_root=h.image_root, num_views=h.num_views, size=h.size, base_t=h.base_t,
                      truncate_boxes=bool(h.truncate_boxes))
        if h.train_file and stage in (None, "fit") and self.train_set is None:
            self.train_set = RegionDataset(h.train_file, split=h.train_split, policy=h.train_policy, ts=h.train_ts,
                                           control_dropout=h.control_dropout, train=True,
                                           max_regions=h.max_train_regions, short_text_prob=h.short_text_prob,
                                           short_text_skip=h.short_text_skip, **common)
        if h.val_file and self.val_set is None:
            self.val_set = RegionDataset(h.val_file, split=h.val_split, policy=h.val_policy, ts=h.val_ts, train=False,
                                         max_regions=h.max_val_regions, **common)
        if stage in (None, "fit") and self.train_set is not None and len(self.train_set) < h.batch_size:
            raise InputError(f"the training data has {len(self.train_set)} region(s) (split {h.train_split!r} of "
                             f"'{h.train_file}'), fewer than --data.batch_size {h.batch_size}: training drops the "
                             "last partial batch, so there would be nothing to train on")
        if stage == "validate" and not h.val_file:
            raise InputError("validate needs validation data: give --data.val_file")

    def follow_model_boxes(self, truncate: bool) -> None:
        """``truncate_boxes=None``: take the model's ``roi.truncate_boxes`` (datasets made already included)."""
        if self.hparams.truncate_boxes is None:
            for dataset in (self.train_set, self.val_set):
                if dataset is not None:
                    dataset.truncate_boxes = bool(truncate)

    def _loader(self, dataset, train: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(dataset, batch_size=h.batch_size, shuffle=train, drop_last=train,
                          num_workers=h.num_workers, collate_fn=collate_regions, pin_memory=torch.cuda.is_available(),
                          persistent_workers=h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise InputError("no training data: set data.train_file")
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False) if self.val_set is not None else []
