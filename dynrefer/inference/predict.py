"""Batch prediction over a JSONL dataset with Lightning's ``Trainer.predict`` (SPEC §5).

* :class:`RecordDataset` — the images of a JSONL file that still have regions to describe
  (decoded in DataLoader workers);
* :class:`PredictModule` — a ``LightningModule`` whose ``predict_step`` hands a batch of images
  with all their regions to the engine (:class:`~dynrefer.inference.predictor.Predictor`);
* :class:`JsonlPredictionWriter` — a ``BasePredictionWriter`` that appends every finished
  region, per process, to ``OUT.parts/rank{r}.jsonl`` (flushed and fsync'ed after each batch),
  then, when every process is done, assembles ``OUT`` (records and regions in input order)
  with an atomic rename and removes the parts.

A rerun reads the parts (a line cut short by an interruption is ignored) and an existing
``OUT``, and skips the regions already there: an interrupted run resumes, and ``OUT`` is
never a partial file. Several processes (``--devices N``: DDP) split the images; the merge
keeps one prediction per region.

A region is known by its image, the record's place among the records of that image (an image may be
listed by several records: each is described as given, into its own output record) and its id (unique
within a record). Every input is checked before the model loads; one run at a time writes an ``OUT``
(``OUT.lock``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import Dataset

from ..errors import InputError
from ..images import load_image
from ..model.io import model_identity
from ..proposals.fill import fill_regions
from ..records import check_output_path, read_jsonl, write_jsonl
from ..regions import parse_regions
from .predict_inputs import (
    _region_id,
    check_record_size,
    check_records,
    die_with_parent,
    extra_settings,
    occurrences,
    output_lock,
    preflight,
    region_input,
    same_region,
)
from .run_settings import check_run_settings, finished_settings_path, keep_finished_settings, parts_dir


def _positions(records: list[dict]) -> dict[tuple, tuple[int, int]]:
    """``{(image, occurrence, region id): (record index, region index)}``: where a region of an earlier run's
    output is now (``occurrence``: see :func:`occurrences`)."""
    occ = occurrences(records)
    return {(rec.get("image"), occ[i], _region_id(rec, j)): (i, j)
            for i, rec in enumerate(records) for j in range(len(rec.get("regions", [])))}


def read_parts(out: Path, records: list[dict]) -> dict[tuple[int, int], dict]:
    """Finished regions ``{(record index, region index): part entry}`` from an earlier run's parts, placed by
    their image and region id in ``records`` (an input edited since the interruption gets its new regions
    predicted, and the old ones where they are now; never another image's)."""
    where = _positions(records)
    done: dict[tuple[int, int], dict] = {}
    folder = parts_dir(out)
    for part in sorted(folder.glob("rank*.jsonl")) if folder.is_dir() else []:
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of an interrupted write
            if not (isinstance(item, dict) and {"prediction", "image", "id"} <= set(item)):
                continue
            key = where.get((item["image"], item.get("occurrence", 0), item["id"]))
            if key is not None and item.get("input") == region_input(records[key[0]], key[1]):  # same region given
                done[key] = item
    return done


def read_finished(out: Path, records: list[dict]) -> dict[tuple[int, int], dict]:
    """Regions already in ``out`` (a finished earlier run), matched to the input by (image, occurrence, id) and
    kept only while the input region is the same (:func:`same_region`): an edited input, or other proposals,
    are predicted again."""
    if not out.is_file():
        return {}
    where = _positions(records)
    done = {}
    written = read_jsonl(out)
    for rec, occ in zip(written, occurrences(written)):
        for reg in rec.get("regions", []):
            key = where.get((rec.get("image"), occ, reg.get("id")))
            if key is not None and same_region(region_input(records[key[0]], key[1]), reg, rec):
                done[key] = reg
    return done



class RecordDataset(Dataset):
    """Images of ``records`` with the regions not in ``done``; an item is one image. With ``views``
    (:meth:`Engine.view_settings <dynrefer.inference.engine.Engine.view_settings>`) an item also has its regions
    parsed and its views planned and rendered (:func:`~dynrefer.inference.predictor.prepare_image`): in
    DataLoader workers that work overlaps the model's on the previous batch. A bad region then gives
    an item with the ``error`` message, raised by :meth:`PredictModule.predict_step`."""

    def __init__(self, records: list[dict], root: Path, done=frozenset(), views: dict | None = None):
        self.records, self.root, self.views = records, Path(root), views
        self.items = []
        for i, rec in enumerate(records):
            if rec.get("image") is None:
                raise InputError(f"record {i} has no image path")
            todo = [j for j in range(len(rec.get("regions", []))) if (i, j) not in done]
            if todo:
                self.items.append((i, todo))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        i, todo = self.items[k]
        rec = self.records[i]
        regions = [region_input(rec, j) | {"id": _region_id(rec, j)} for j in todo]
        item = {"record": i, "regions_index": todo, "label": rec["image"]}
        # a bad image or region gives an item with the message, raised by predict_step in the main
        # process: one clear line naming the record, no worker traceback
        try:
            if self.views is None:
                image = load_image(self.root / rec["image"])
                size = (int(image.shape[2]), int(image.shape[1]))
                check_record_size(rec, size)
                parse_regions(regions, size)  # checked here to name the record; the engine parses them again
                return item | {"image": image, "regions": regions}
            from .predictor import prepare_image

            prepared = prepare_image(self.root / rec["image"], regions, self.views, label=rec["image"])
            check_record_size(rec, prepared.size)
            return item | {"prepared": prepared}
        except InputError as err:
            return item | {"error": f"record {i + 1} ({rec['image']}): {err}"}


def collate_images(items: list[dict]) -> list[dict]:
    return items


class PredictModule(L.LightningModule):
    """``predict_step``: all regions of a batch of images through the engine in one pass.

    Args:
        model: a model folder or ``"builtin"``; ``tasks``, ``all_scores``, ``classes``,
            ``attributes``, ``tag_threshold``: as :meth:`~dynrefer.inference.predictor.Predictor.describe_many`.
    """

    def __init__(self, model="builtin", *, tasks=("caption", "tags", "attributes", "category"), all_scores=False,
                 classes=None, attributes=None, tag_threshold=None, encoder_batch_size=None, dtype=None,
                 classes_from=None, min_similarity=None):
        super().__init__()
        from .predictor import Predictor

        self.predictor = Predictor(model, encoder_batch_size=encoder_batch_size, dtype=dtype)
        self.model = self.predictor.model
        self.options = dict(tasks=tasks, all_scores=all_scores, classes=classes, attributes=attributes,
                            tag_threshold=tag_threshold)
        self.few_shot = None
        if classes_from is not None:  # few-shot classes: the examples embedded once
            from ..search.build import few_shot_classifier

            self.few_shot = few_shot_classifier(self.predictor, classes_from, min_similarity=min_similarity)

    def view_settings(self) -> dict | None:
        """Settings for :class:`RecordDataset` to plan and render views ahead of the model, or None when
        the model's view policy is ``random`` (its draws belong to the main process)."""
        settings = self.predictor.engine.view_settings()
        return None if settings["policy"] == "random" else settings

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        errors = [b["error"] for b in batch if "error" in b]
        if errors:
            raise InputError(errors[0])
        tokens = self.few_shot is not None
        if all("prepared" in b for b in batch):
            records = self.predictor.describe_prepared([b["prepared"] for b in batch], **self.options,
                                                       return_tokens=tokens)
        else:
            records = self.predictor.describe_many([b["image"] for b in batch], [b["regions"] for b in batch],
                                                   image_labels=[b["label"] for b in batch], **self.options,
                                                   return_tokens=tokens)
        if tokens:
            from ..search.build import apply_few_shot

            records = apply_few_shot(self.few_shot, self.model, *records)
        out = []
        for item, record in zip(batch, records):
            size = [record["width"], record["height"]]
            for j, region in zip(item["regions_index"], record["regions"]):
                out.append({"record": item["record"], "region": j, "image": item["label"], "id": region["id"],
                            "size": size, "prediction": region})
        return out


class JsonlPredictionWriter(BasePredictionWriter):
    """Appends each batch's regions to this process's part file; assembles ``out`` at the end."""

    def __init__(self, out, records: list[dict], finished: dict | None = None, verified: bool = True):
        super().__init__(write_interval="batch")
        self.out, self.records, self.finished = Path(out), records, dict(finished or {})
        self.verified = verified
        self.occurrence = occurrences(records)
        self.written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        folder = parts_dir(self.out)
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f"rank{trainer.global_rank}.jsonl"
        cut = False
        if part.is_file() and part.stat().st_size:
            with open(part, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                cut = fh.read(1) != b"\n"  # an earlier run stopped mid-line: start a fresh line
        entries = [p | {"occurrence": self.occurrence[p["record"]], "input": region_input(self.records[p["record"]],
                                                                                           p["region"])}
                   for p in prediction]
        with open(part, "a", encoding="utf-8") as fh:
            fh.write("\n" if cut else "")
            fh.write("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in entries))
            fh.flush()
            os.fsync(fh.fileno())
        self.written += len(prediction)

    def on_predict_end(self, trainer, pl_module):
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            assemble(self.out, self.records, self.finished, verified=self.verified)
        trainer.strategy.barrier()


def assemble(out: Path, records: list[dict], finished: dict | None = None, verified: bool = True) -> int:
    """Write ``out`` from the parts and ``finished`` (input order); returns the region count.
    The parts are removed once ``out`` is complete, and the run's settings kept beside it when ``verified``
    (:mod:`~dynrefer.inference.run_settings`)."""
    done = dict(finished or {})
    parts = read_parts(out, records)
    done.update({key: item["prediction"] for key, item in parts.items()})
    sizes = {i: item["size"] for (i, _), item in parts.items() if item.get("size")}
    if out.is_file():  # sizes an earlier, finished run wrote (a rerun with nothing left has no parts)
        earlier = read_jsonl(out)
        placed = {(r.get("image"), occ): r for r, occ in zip(earlier, occurrences(earlier))}
        for i, (rec, occ) in enumerate(zip(records, occurrences(records))):
            old = placed.get((rec.get("image"), occ))
            if i not in sizes and old is not None and old.get("width") is not None and old.get("height") is not None:
                sizes[i] = (old["width"], old["height"])
    result = []
    for i, rec in enumerate(records):
        regions = [done[(i, j)] for j in range(len(rec.get("regions", []))) if (i, j) in done]
        if len(regions) != len(rec.get("regions", [])):
            raise RuntimeError(f"record {i} ({rec.get('image')}): {len(regions)} of {len(rec['regions'])} regions "
                               "predicted; rerun to finish")
        width, height = rec.get("width"), rec.get("height")
        if (width is None or height is None) and i in sizes:  # the image's own size (SPEC §5 records carry it)
            width, height = sizes[i]
        result.append({"image": rec.get("image"), "width": width, "height": height,
                       "regions": regions} | ({"split": rec["split"]} if "split" in rec else {}))
    finished_settings_path(out).unlink(missing_ok=True)  # cut off before the move: out stays without settings
    write_jsonl(out, result)
    keep_finished_settings(out, verified)
    folder = parts_dir(out)
    for part in list(folder.glob("rank*.jsonl")) if folder.is_dir() else []:
        part.unlink(missing_ok=True)
    if folder.is_dir():
        folder.rmdir()
    return sum(len(r["regions"]) for r in result)


def check_finished_fields(finished: dict, out: Path, tasks, all_scores: bool) -> None:
    """A rerun keeps the regions already in ``out``; they must hold what this run asks for (else ``out`` was
    written with other tasks and would be returned stale)."""
    need = set(tasks) | ({"categories"} if all_scores and "category" in tasks else set())  # a task's field: its name
    for prediction in finished.values():
        missing = sorted(need - set(prediction))
        if missing:
            raise InputError(f"'{out}' exists and was written with other settings (its regions have no "
                             f"{', '.join(missing)}); a rerun only completes an interrupted run: remove it or choose "
                             "another --out")


def run_predict(model, data, out, *, image_root=None, tasks=("caption", "tags", "attributes", "category"),
                all_scores=False, classes=None, attributes=None, tag_threshold=None, devices=1, accelerator="cpu",
                batch_size=4, num_workers=2, encoder_batch_size=None, dtype=None, progress=True,
                prepare_in_workers=True, allow_empty=False, proposals=None, max_regions=100, nms_iou=0.5,
                classes_from=None, min_similarity=None) -> dict:
    """Describe every region of ``data`` (JSONL) into ``out`` (JSONL); resumable. Returns a summary.
    With ``num_workers`` > 0 the workers decode the images and, with ``prepare_in_workers`` (and a view
    policy other than ``random``), also parse the regions and plan and render their views. Every input is
    checked before the model loads; a dataset with no region at all is an error unless ``allow_empty``
    (records without regions are fine where others have some). With ``proposals`` (a
    :func:`~dynrefer.proposals.proposal_source` spec: ``default`` or ``file:PATH``), records without regions get
    the source's proposals (at most ``max_regions`` after NMS at ``nms_iou``; :mod:`dynrefer.proposals.fill`),
    each region's ``score`` then its objectness (kept as ``objectness`` too). ``classes_from``: few-shot classes
    (a JSONL of labelled example regions, :mod:`dynrefer.search`) give each region's ``category``."""
    data, out = Path(data), Path(out)
    if out.resolve() == data.resolve():
        raise InputError(f"--out '{out}' would overwrite the input file")
    check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # (the lock file goes beside it)
    records = read_jsonl(data)
    root = Path(image_root) if image_root else data.parent
    check_records(records, data)
    extra = extra_settings(proposals, max_regions, nms_iou, classes_from, min_similarity)  # before any work
    with output_lock(out):
        filled = 0
        if proposals is not None:
            gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
            first = os.environ.get("LOCAL_RANK", "0") == "0"  # the cache is written by one process, read by all
            filled = fill_regions(records, root, proposals, max_regions=max_regions, nms_iou=nms_iou, progress=progress,
                                  device=torch.device("cuda") if gpu else None,
                                  cache=out.with_name(out.name + ".proposals.jsonl"), write_cache=first)
        total = sum(len(r.get("regions", [])) for r in records)
        if total == 0 and not allow_empty:
            raise InputError(f"'{data}' has no region to describe ({len(records)} record(s), 0 regions); "
                             + ("the proposals found none; " if proposals is not None else "")
                             + "--allow-empty accepts it (an empty output)")
        summary = _run_locked(model, data, out, records, root, total, tasks=tasks, all_scores=all_scores,
                              classes=classes, attributes=attributes, tag_threshold=tag_threshold, devices=devices,
                              accelerator=accelerator, batch_size=batch_size, num_workers=num_workers,
                              encoder_batch_size=encoder_batch_size, dtype=dtype, progress=progress,
                              prepare_in_workers=prepare_in_workers, extra_settings=extra,
                              few_shot=None if classes_from is None else (classes_from, extra["classes_from"][-1]))
        if proposals is not None:
            summary["records_with_proposals"] = filled
        return summary


def _run_locked(model, data, out, records, root, total, *, tasks, all_scores, classes, attributes, tag_threshold,
                devices, accelerator, batch_size, num_workers, encoder_batch_size, dtype, progress,
                prepare_in_workers, extra_settings=None, few_shot=None) -> dict:
    finished = read_finished(out, records)
    check_finished_fields(finished, out, tasks, all_scores)
    settings = dict(model=model_identity(model), tasks=sorted(tasks), all_scores=bool(all_scores), classes=classes,
                    attributes=attributes, tag_threshold=tag_threshold, dtype=dtype, **(extra_settings or {}))
    verified = check_run_settings(out, settings, finished=bool(finished))
    done = set(finished) | set(read_parts(out, records))
    preflight(records, root, done)
    dataset = RecordDataset(records, root, done)
    summary = {"out": str(out), "images": len(records), "regions": total, "skipped": len(done)}
    if len(dataset) == 0:
        summary["predicted"] = 0
        if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
            assemble(out, records, finished, verified=verified)  # once: a launcher may run this in every process
        return summary
    module = PredictModule(model, tasks=tasks, all_scores=all_scores, classes=classes, attributes=attributes,
                           tag_threshold=tag_threshold, encoder_batch_size=encoder_batch_size, dtype=dtype,
                           classes_from=few_shot[0] if few_shot else None,
                           min_similarity=few_shot[1] if few_shot else None)
    if prepare_in_workers and num_workers > 0:
        dataset.views = module.view_settings()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate_images, persistent_workers=False,
                                         worker_init_fn=die_with_parent if num_workers > 0 else None)
    writer = JsonlPredictionWriter(out, records, finished, verified)
    devices = min(int(devices), len(dataset))  # no more processes than images (Lightning's sampler needs one each)
    strategy = "auto" if devices == 1 else ("ddp_spawn" if accelerator == "cpu" else "ddp")
    from ..train.signals import StopOnSignal

    callbacks = [writer, StopOnSignal()]  # after the writer: a signal stops once the batch is written
    if progress:
        from ..train.progress import RegionsProgressBar

        callbacks.append(RegionsProgressBar())
    trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, logger=False,
                        enable_progress_bar=progress, enable_model_summary=False, callbacks=callbacks,
                        inference_mode=True)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    summary["predicted"] = total - len(done)
    return summary
