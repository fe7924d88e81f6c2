"""The batched multi-region inference engine (one pass per batch of images).

For a batch of images and all their regions:

1. views are chosen per image with the model's policy (greedy pHash by default: each image's
   candidate crops hashed in one call) — the geometry only, nothing is rendered yet;
2. identical integer crops of one image (the ``t = 1`` whole-image view shared by every
   region, clipped boxes that coincide) are kept once (``np.unique``) and rendered in one call
   per image; the views of every image are stacked into one pixel tensor and
   ``view_index`` maps each region's ``n`` views onto its rows;
3. the encoder runs over the unique views in chunks of ``encoder_batch_size`` (memory bound; by
   default 256 views on an accelerator and, on CPU, as many as keep one chunk's activations within
   ``CPU_ENCODER_BUDGET`` elements — small chunks stay in cache: a ViT-B/16 at 224 px runs ~20 %
   faster in chunks of 8 views than of 48 on a 2-core CPU),
   then RoI-align / alignment / fusion / Q-Former and the heads see every region of the batch
   at once; vocabulary text embeddings are cached by the model; captions are generated for
   all regions together (beam search batched across regions);
4. everything under ``torch.inference_mode``, optionally under autocast (``dtype``:
   ``"bfloat16"`` / ``"float16"`` where the device supports it).

The result for a region does not depend on which other regions share its batch (tests
compare it with one region at a time).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..view_selection import check_hash_flavour, check_model_views, select_views
from ..views import render_crops
from .records import region_records

TASKS = ("caption", "tags", "attributes", "category")
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
#: Tokens × width of one encoder chunk on CPU when ``encoder_batch_size`` is not given.
CPU_ENCODER_BUDGET = 1_250_000
DEFAULT_ENCODER_BATCH = 256


def auto_encoder_batch_size(model, device) -> int:
    """Views per encoder call when none is given: 256 off the CPU; on CPU, as many views as keep
    ``tokens × width`` within :data:`CPU_ENCODER_BUDGET` (8 for a ViT-B/16 at 224 px, 150 for the
    built-in model's 64-px views), at least 1 and at most 256."""
    if torch.device(device).type != "cpu":
        return DEFAULT_ENCODER_BATCH
    tokens = (model.config.views.size // model.encoder.patch_size) ** 2 + 1
    return max(1, min(DEFAULT_ENCODER_BATCH, CPU_ENCODER_BUDGET // (tokens * model.encoder.width)))


@dataclass
class ViewPlan:
    """Views of a batch: ``crops`` (U, 4) unique crops with ``owner`` (U,) their image index,
    ``view_index`` (R·n,) rows of ``crops`` per region view, ``boxes_in_view`` (R·n, 4),
    ``views`` the per-region :class:`~dynrefer.views.RegionViews` (geometry only)."""

    crops: np.ndarray
    owner: np.ndarray
    view_index: np.ndarray
    boxes_in_view: np.ndarray
    views: list = field(default_factory=list)
    regions_per_image: list = field(default_factory=list)

    @property
    def total_crops(self) -> int:
        return int(self.view_index.shape[0])

    @property
    def unique_crops(self) -> int:
        return int(self.crops.shape[0])


def check_tasks(tasks) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
        raise InputError(f"tasks must be names (a list or a comma-separated string), got {tasks!r}")
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise InputError(f"unknown task(s) {bad or '(none)'}; expected some of {', '.join(TASKS)}")
    return tasks


def check_vocabulary(value, name: str) -> list | None:
    """A vocabulary option: None, a list, or one comma-separated string ("cup,table"). Classes are
    strings; attributes strings or OVAD-style dicts with a ``name``."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    items = list(value)
    bad = [v for v in items
           if not (isinstance(v, str) or (name == "attributes" and isinstance(v, dict) and "name" in v))]
    if bad:
        raise InputError(f"{name} must be strings (a list, or one comma-separated string), got {bad[0]!r}")
    return items


def check_threshold(tag_threshold) -> None:
    """``tag_threshold`` must be None or a number in [0, 1] (a tag probability)."""
    if tag_threshold is None:
        return
    ok = isinstance(tag_threshold, (int, float, np.integer, np.floating)) and not isinstance(tag_threshold, bool)
    if not ok or not 0.0 <= float(tag_threshold) <= 1.0:  # NaN fails the comparison too
        raise InputError(f"tag_threshold must be a number in [0, 1] (a tag probability), got {tag_threshold!r}")


def plan_views(images, boxes, *, num_views, size, policy="greedy", ts=None, hash_flavour="official",
               generator=None, base_t=0.0, truncate_boxes=False) -> ViewPlan:
    """Choose the views of every region of every image and deduplicate their crops per image.

    Args:
        images: list of (3, H, W) uint8 tensors.
        boxes: per image, a list of region boxes (xyxy floats).
        truncate_boxes: the RoI boxes as the official processor passes them (integers; ``roi.truncate_boxes``).
    """
    crops, owner, index, biv, all_views, counts = [], [], [], [], [], []
    offset = 0
    for i, (image, image_boxes) in enumerate(zip(images, boxes)):
        counts.append(len(image_boxes))
        if not image_boxes:
            continue
        views = select_views(image, list(image_boxes), num_views=num_views, policy=policy, ts=ts, size=size,
                             hash_flavour=hash_flavour, render=False, generator=generator, base_t=base_t,
                             describe_candidates=False)
        stacked = np.concatenate([v.geometry.crops for v in views])
        unique, inverse = np.unique(stacked, axis=0, return_inverse=True)
        crops.append(unique)
        owner.append(np.full(len(unique), i, dtype=np.int64))
        index.append(inverse.reshape(-1) + offset)
        biv.append(np.concatenate([v.geometry.roi_boxes(truncate_boxes) for v in views]))
        all_views.extend(views)
        offset += len(unique)
    if not crops:
        empty = np.zeros((0, 4), dtype=np.int64)
        return ViewPlan(empty, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), [], counts)
    return ViewPlan(np.concatenate(crops), np.concatenate(owner), np.concatenate(index),
                    np.concatenate(biv).astype(np.float32), all_views, counts)


def render_plan(images, plan: ViewPlan, size: int, device, *, normalized: bool = True) -> torch.Tensor:
    """(U, 3, S, S) pixels of the plan's unique crops, image by image: CLIP-normalised float32, or
    uint8 with ``normalized=False``."""
    parts = [render_crops(images[i].to(device), plan.crops[plan.owner == i], size, normalized=normalized)
             for i in np.unique(plan.owner)]
    if parts:
        return torch.cat(parts)
    return torch.zeros((0, 3, size, size), device=device, dtype=torch.float32 if normalized else torch.uint8)


def prepare_views(image: torch.Tensor, boxes, settings: dict) -> tuple[ViewPlan, torch.Tensor]:
    """The views of one image's regions, planned and rendered ahead of the model: ``(plan, pixels)``
    with ``pixels`` the (U, 3, S, S) uint8 unique crops on the CPU. ``settings``:
    :meth:`Engine.view_settings` (plain values, so that a DataLoader worker can do this while the
    model runs on the previous batch). :meth:`Engine.run` takes the result (merged over images by
    :func:`merge_prepared`) as ``prepared``; the outputs are those of planning in ``run``."""
    plan = plan_views([image], [list(boxes)], **settings)
    return plan, render_plan([image.cpu()], plan, settings["size"], "cpu", normalized=False)


def merge_prepared(items) -> tuple[ViewPlan, torch.Tensor]:
    """One ``(plan, pixels)`` for several images prepared one by one (:func:`prepare_views`):
    image ``i`` of the result is ``items[i]``."""
    if not items:
        raise InputError("merge_prepared needs at least one prepared image")
    plans, pixels = [p for p, _ in items], [px for _, px in items]
    offsets = np.cumsum([0] + [p.unique_crops for p in plans])
    plan = ViewPlan(
        np.concatenate([p.crops for p in plans]).reshape(-1, 4),
        np.concatenate([np.full(p.unique_crops, i, dtype=np.int64) for i, p in enumerate(plans)]),
        np.concatenate([p.view_index + offsets[i] for i, p in enumerate(plans)]).astype(np.int64),
        np.concatenate([p.boxes_in_view.reshape(-1, 4) for p in plans]).astype(np.float32),
        [v for p in plans for v in p.views],
        [c for p in plans for c in p.regions_per_image],
    )
    return plan, torch.cat(pixels)


def resolve_autocast(dtype: str | None, device, *, bf16_supported=None) -> str | None:
    """The autocast precision that ``dtype`` means on ``device``: ``"auto"`` is ``"bfloat16"`` on a CUDA device
    with bfloat16 tensor cores (tensor-core speed, float32's range; the precision contract keeps boxes, RoI sampling,
    losses and probabilities in float32: docs/precision.md) and ``None`` (the model's own precision, exact and
    the same on every device) elsewhere; any other value is returned as it is.
    ``bf16_supported``: whether that device has them (asked
    only for a CUDA device when not given: compute capability 8 or more; older cards only emulate bfloat16)."""
    if dtype != "auto":
        return dtype
    if torch.device(device).type != "cuda":
        return None
    if bf16_supported is None:  # bfloat16 tensor cores (Ampere, compute capability 8, and newer); not emulated
        bf16_supported = torch.cuda.get_device_capability(torch.device(device))[0] >= 8
    return "bfloat16" if bf16_supported else None


class Engine:
    """Runs a ``DynRefer`` over batches of images with many regions each.

    Args:
        model: a ``DynRefer`` (put it on its device first).
        encoder_batch_size: views per encoder call (bounds peak memory); ``None``:
            :func:`auto_encoder_batch_size` for the model's device.
        dtype: ``None`` (the model's precision), ``"bfloat16"`` or ``"float16"`` autocast, or ``"auto"``
            (:func:`resolve_autocast`: bfloat16 on a CUDA device that has it, the model's precision elsewhere).
    """

    def __init__(self, model, *, encoder_batch_size: int | None = None, dtype: str | None = None):
        if encoder_batch_size is not None and int(encoder_batch_size) < 1:
            raise InputError(f"encoder_batch_size must be at least 1, got {encoder_batch_size!r}")
        if dtype is not None and dtype != "auto" and dtype not in AUTOCAST_DTYPES:
            raise InputError(f"unknown autocast dtype {dtype!r}; expected auto or one of {', '.join(AUTOCAST_DTYPES)}")
        self.model = model.eval()
        self._encoder_batch_size = None if encoder_batch_size is None else int(encoder_batch_size)
        self.dtype = dtype

    @property
    def encoder_batch_size(self) -> int:
        """Views per encoder call: the one given, or :func:`auto_encoder_batch_size` on the model's device."""
        if self._encoder_batch_size is not None:
            return self._encoder_batch_size
        return auto_encoder_batch_size(self.model, self.device)

    @property
    def device(self) -> torch.device:
        return self.model.tag_embeddings.device

    @property
    def autocast_dtype(self) -> str | None:
        """The autocast precision in effect on the model's device (``dtype`` with ``"auto"`` resolved)."""
        return resolve_autocast(self.dtype, self.device)

    def _autocast(self):
        dtype = self.autocast_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[dtype])

    def plan(self, images, boxes, *, policy=None, ts=None, hash_flavour=None, generator=None) -> ViewPlan:
        """:func:`plan_views` with the model's view settings (``policy`` / ``ts`` / ``hash_flavour``
        override them; ``policy="fixed"`` without ``ts`` takes the config's ``fixed_ts``)."""
        return plan_views(images, boxes, **self.view_settings(policy=policy, ts=ts, hash_flavour=hash_flavour),
                          generator=generator)

    def view_settings(self, *, policy=None, ts=None, hash_flavour=None) -> dict:
        """The keyword arguments of :func:`plan_views` (but ``generator``) for the model's view settings
        with the given overrides: plain values, for :func:`prepare_views` in another process."""
        cfg = self.model.config.views
        policy = policy or cfg.policy
        where = "ts"
        if policy == "fixed" and ts is None:
            ts, where = cfg.fixed_ts, "views.fixed_ts"
        if hash_flavour is not None:
            check_hash_flavour(hash_flavour)
        check_model_views(policy, cfg.num_views, ts, where=where)
        return dict(num_views=cfg.num_views, size=cfg.size, policy=policy, ts=None if ts is None else list(ts),
                    hash_flavour=hash_flavour or cfg.hash_flavour, base_t=cfg.base_t,
                    truncate_boxes=self.model.config.roi.truncate_boxes)

    def batch(self, images, plan: ViewPlan, pixels: torch.Tensor | None = None) -> dict:
        """The model's input for ``plan``: rendered unique views as uint8 (the model normalises them an encoder
        chunk at a time: a quarter of the device memory of float32 views; ``pixels`` when given: uint8 or
        normalised, on the model's device), ``view_index`` and ``boxes_in_view``."""
        if pixels is None:
            pixels = render_plan(images, plan, self.model.config.views.size, self.device, normalized=False)
        weight = self.model.tag_embeddings  # a model cast as a whole (model.to(torch.bfloat16)) gets its dtype's pixels
        if pixels.is_floating_point() and pixels.dtype != weight.dtype and self.autocast_dtype is None:
            pixels = pixels.to(weight.dtype)  # (the RoI step runs in float32 whatever the dtype: model/roi.py)
        return {
            "pixels": pixels,
            "view_index": torch.as_tensor(plan.view_index, device=self.device),
            "boxes_in_view": torch.as_tensor(plan.boxes_in_view, dtype=torch.float32, device=self.device),
        }

    def run(self, images, regions, **options) -> tuple[list[list[dict]], ViewPlan]:
        """Model outputs for ``regions`` (per image, parsed :class:`~dynrefer.regions.Region`
        lists) of ``images`` ((3, H, W) uint8 tensors): per image, one dict per region (see
        ``DynRefer.predict``), and the view plan. Options: those of :meth:`run_with_tokens`."""
        per_image, plan, _ = self.run_with_tokens(images, regions, **options)
        return per_image, plan

    def run_with_tokens(self, images, regions, *, tasks=TASKS, policy=None, ts=None, hash_flavour=None,
                        classes=None, attributes=None, tag_threshold=None, all_tags=False, generator=None,
                        prepared=None) -> tuple[list[list[dict]], ViewPlan, torch.Tensor | None]:
        """:meth:`run`, and the regions' Q-Former tokens (R, Q, D) in input order (None without regions).
        ``prepared``: the views planned and rendered beforehand (:func:`merge_prepared` of
        :func:`prepare_views`; ``images`` and the view options are then not used)."""
        tasks = check_tasks(tasks)
        check_threshold(tag_threshold)
        classes = check_vocabulary(classes, "classes")
        attributes = check_vocabulary(attributes, "attributes")
        for name, vocab, task in (("classes", classes, "category"), ("attributes", attributes, "attributes")):
            if task in tasks and vocab is not None and not vocab:
                raise InputError(f"{name} is empty: name at least one, or leave it out for the model's own vocabulary")
        if prepared is None:
            plan = self.plan(images, [[r.box for r in regs] for regs in regions], policy=policy, ts=ts,
                             hash_flavour=hash_flavour, generator=generator)
        else:
            plan = prepared[0]
            if [len(regs) for regs in regions] != list(plan.regions_per_image):
                raise InputError(f"the prepared views are for {list(plan.regions_per_image)} regions per image, "
                                 f"got {[len(regs) for regs in regions]}")
        if plan.total_crops == 0:
            return [[] for _ in plan.regions_per_image], plan, None
        classes = classes if classes is not None else list(self.model.categories)  # lists since the check above
        attributes = attributes if attributes is not None else list(self.model.attributes)
        with torch.inference_mode(), self._autocast():
            if prepared is None:
                batch = self.batch(images, plan)
            else:
                batch = self.batch(None, plan, pixels=prepared[1].to(self.device))
            outputs = self.model.predict(batch, tasks, attributes=attributes or None, categories=classes or None,
                                         tag_threshold=tag_threshold, encoder_batch_size=self.encoder_batch_size)
        tokens = outputs.region
        outputs = region_records(outputs, all_tags=all_tags)
        per_image, start = [], 0
        for count in plan.regions_per_image:
            per_image.append(outputs[start:start + count])
            start += count
        return per_image, plan, tokens
