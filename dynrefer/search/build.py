"""Building and extending a region index (``dynrefer index``), and embedding example regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .query import check_floor, embedding_dim, region_vectors
from .store import RegionIndex


def collect(images=(), regions_file=None, image_root=None, proposals=None) -> list[tuple]:
    """What to index: ``(label, path, regions or None, record)`` per image, from image files (regions from
    proposals; ``record`` None) or from a JSONL of SPEC §5 records (paths relative to the file, or to
    ``image_root``), each record checked in form (:func:`check_images` reads the images)."""
    from ..inference.predict_inputs import check_records
    from ..records import read_jsonl

    if isinstance(images, (str, Path)):  # one image, not the letters of its path
        images = [images]
    if regions_file is None:
        if not images:
            raise InputError("nothing to index: give image files or --regions FILE.jsonl")
        return [(str(p), Path(p), None, None) for p in images]
    if images:
        raise InputError("give images or --regions FILE.jsonl, not both")
    regions_file = Path(regions_file)
    root = Path(image_root) if image_root else regions_file.parent
    records = [r | {"regions": r.get("regions") or []} if isinstance(r, dict) and r.get("regions") is None else r
               for r in read_jsonl(regions_file)]  # "regions": null is none, as a missing list
    check_records(records, regions_file)
    items = []
    for n, record in enumerate(records, 1):
        regions = record["regions"] or None
        if regions is None and proposals is None:
            raise InputError(f"'{regions_file}' record {n} ({record['image']}) lists no region (give "
                             "--proposals to find them)")
        items.append((record["image"], root / record["image"], regions, record | {"_n": n, "_file": regions_file}))
    return items


def check_images(items) -> None:
    """Each image of ``items`` (:func:`collect`) present and readable, and each given region valid in it; an error
    names the file, the record and the image."""
    from ..images import image_file_size
    from ..inference.predict_inputs import check_record_input

    for _, path, regions, record in items:
        if record is None or not regions:
            image_file_size(path)  # its error names the file
            continue
        try:
            check_record_input(record, path)
        except InputError as err:
            raise InputError(f"'{record['_file']}' record {record['_n']} ({record['image']}): {err}") from None


def build_index(out, *, images=(), regions_file=None, image_root=None, model="builtin", proposals=None,
                max_regions: int = 100, nms_iou: float = 0.5, kind: str | None = None, batch_size: int = 4,
                progress: bool | None = None, predictor=None) -> dict:
    """Index the regions of ``images`` (regions from ``proposals``, default ``"default"``) or of ``regions_file``
    records into the folder ``out`` (created, or appended to: the records already there are skipped; the model
    must be the one it was built with; ``kind``, ``"flat"`` or ``"hnsw"``: a new index's vector index, flat when
    None; an existing one keeps its own). A record is known by its image file (resolved) and its place among the
    records of that file, so an interrupted run, rerun, resumes. Returns a summary. ``predictor``: a loaded
    :class:`~dynrefer.inference.predictor.Predictor` (then ``model`` only names it)."""
    import faiss  # noqa: F401 - the search extra: missing, the run stops here, before any work
    from tqdm import tqdm

    from ..images import image_file_size
    from ..inference.predictor import Predictor
    from ..model.io import model_identity
    from ..proposals import proposal_source
    from ..proposals.fill import check_limits
    from .store import model_fingerprint

    items = collect(images, regions_file, image_root, proposals)
    if any(regions is None for _, _, regions, _ in items):
        proposals = proposals or "default"
    source = proposal_source(proposals) if proposals else None  # a bad spec fails here, before any work
    check_limits(max_regions, nms_iou)
    seen: dict[str, int] = {}
    keyed = []
    for label, path, regions, record in items:
        resolved = str(Path(path).resolve())
        keyed.append((f"{resolved}#{seen.get(resolved, 0)}", label, path, regions, record))
        seen[resolved] = seen.get(resolved, 0) + 1
    predictor = predictor or Predictor(model)
    out = Path(out)
    if (out / "meta.json").exists():
        index = RegionIndex(out, write=True)
        try:
            index.check_model(predictor.model)
            if kind is not None and kind != index.meta.get("kind", "flat"):
                raise InputError(f"the index '{out}' is {index.meta.get('kind', 'flat')}: it keeps its kind "
                                 f"(asked for {kind}; build a new index for another)")
            todo = [item for item in keyed if not index.is_done(item[0])]
            check_images([item[1:] for item in todo])  # what is still to index (done images may be gone)
        except InputError:
            index.close()
            raise
    else:
        if predictor.model.contrastive_head is None:
            raise InputError("this model has no contrastive head: it cannot embed regions for search")
        todo = keyed
        check_images([item[1:] for item in todo])  # before the folder is made
        qcfg = predictor.model.config.qformer
        index = RegionIndex.create(out, model=model_identity(model), fingerprint=model_fingerprint(predictor.model),
                                   tokens_shape=(qcfg.num_query_tokens, qcfg.hidden_size),
                                   dim=embedding_dim(predictor.model), kind=kind or "flat")
    try:
        added = 0
        bar = tqdm(total=len(todo), desc="index", unit="img", disable=None if progress is None else not progress)
        for start in range(0, len(todo), max(1, batch_size)):
            batch = todo[start:start + batch_size]
            specs = []
            for _, _, path, regions, _ in batch:
                if regions is None:
                    found = source(path).select(max_regions, nms_iou, image_file_size(path))
                    regions = [{"box": r["box"]} for r in found.regions()]
                specs.append(regions)
            keep = [i for i, s in enumerate(specs) if s]
            rows, tokens, vectors = [], np.zeros((0, *index.shape), np.float32), np.zeros((0, index.dim), np.float32)
            if keep:
                records, raw = predictor.describe_many([batch[i][2] for i in keep], [specs[i] for i in keep],
                                                       tasks=("caption", "tags"), return_tokens=True,
                                                       image_labels=[batch[i][1] for i in keep])
                for i, rec in zip(keep, records):
                    rows += [{"image": batch[i][1], "path": str(Path(batch[i][2]).resolve()), "box": r["box"],
                              "caption": r.get("caption"), "tags": [t[0] for t in r.get("tags", [])]}
                             for r in rec["regions"]]
                tokens, vectors = raw.float().cpu().numpy(), region_vectors(predictor.model, raw)
            index.append(rows, tokens, vectors, done=[item[0] for item in batch])  # records without regions too
            added += len(rows)
            bar.update(len(batch))
        bar.close()
        return {"index": str(out), "records_added": len(todo), "records_skipped": len(items) - len(todo),
                "regions_added": added, "regions": index.count}
    finally:
        index.close()


def embed_regions(predictor, image, boxes) -> np.ndarray:
    """(N, dim) embeddings of ``boxes`` of one image (e.g. an example for ``search --example``)."""
    _, tokens = predictor.describe_many([image], [list(boxes)], tasks=("tags",), return_tokens=True)
    if tokens is None:
        raise InputError("no example region given")
    return region_vectors(predictor.model, tokens)


def embed_examples(predictor, records, root, source: str = "<examples>") -> tuple[np.ndarray, list[str]]:
    """Embeddings and labels of labelled example regions (``--classes-from``: SPEC §5 records whose regions carry
    ``category``), paths relative to ``root``; ``source`` names them in errors (their file's path)."""
    from ..inference.predict_inputs import check_records, preflight

    check_records(records, source)
    for n, record in enumerate(records, 1):
        for j, region in enumerate(record.get("regions") or []):
            if not isinstance(region.get("category"), str) or not region["category"]:
                raise InputError(f"'{source}' record {n} ({record['image']}) region {j}: needs a 'category' (the "
                                 "class it shows)")
    try:  # every image and region before the first is embedded
        preflight(records, Path(root))
    except InputError as err:
        raise InputError(f"'{source}' {err}") from None
    vectors, labels = [], []
    for record in records:
        regions = record.get("regions") or []
        if regions:
            vectors.append(embed_regions(predictor, Path(root) / record["image"], regions))
            labels += [r["category"] for r in regions]
    if not labels:
        raise InputError("the examples hold no labelled region")
    return np.concatenate(vectors), labels



def few_shot_classifier(predictor, examples, *, min_similarity: float | None = None):
    """The :class:`~dynrefer.search.query.FewShotClassifier` of ``examples`` (a JSONL of SPEC §5 records whose
    regions carry ``category``; image paths relative to it)."""
    from ..records import read_jsonl
    from .query import FewShotClassifier

    check_floor(min_similarity)
    examples = Path(examples)
    if not examples.is_file():
        raise InputError(f"cannot read --classes-from '{examples}': no such file")
    vectors, labels = embed_examples(predictor, read_jsonl(examples), examples.parent, str(examples))
    return FewShotClassifier(vectors, labels, min_similarity=min_similarity)


def apply_few_shot(classifier, model, records: list[dict], tokens) -> list[dict]:
    """Set each region's ``category`` of ``describe`` records (their regions' ``tokens`` (R, Q, D), in order) to its
    few-shot class, ``[name, similarity]`` or None below the classifier's floor; ``categories`` lists every
    class's similarity."""
    regions = [r for rec in records for r in rec["regions"]]
    if not regions:
        return records
    embedded = region_vectors(model, tokens)
    for region, category, sims in zip(regions, classifier.classify(embedded), classifier.similarities(embedded)):
        region["category"] = category
        region["categories"] = sorted(([n, float(s)] for n, s in zip(classifier.names, sims)),
                                      key=lambda x: (-x[1], x[0]))
    return records


def few_shot_categories(predictor, record: dict, tokens, examples, *, min_similarity: float | None = None) -> dict:
    """:func:`apply_few_shot` of the classes of ``examples`` (:func:`few_shot_classifier`) to one record."""
    classifier = few_shot_classifier(predictor, examples, min_similarity=min_similarity)
    return apply_few_shot(classifier, predictor.model, [record], tokens)[0]
