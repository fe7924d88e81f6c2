"""``predict --proposals``: the records of a dataset that list no region get their regions from a proposal
source, before anything else runs (so the run's resume logic, keyed by record and region, sees ordinary
regions)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


def fill_regions(records: list[dict], root, spec: str, *, max_regions: int = 100, nms_iou: float = 0.5,
                 progress: bool | None = None, device=None) -> int:
    """Give every record of ``records`` without regions (none listed, or ``[]``) the proposals of ``spec``
    (:func:`~dynrefer.proposals.proposal_source`) for its image: ``{"id", "box", "objectness"}`` (objectness where
    the source has it), at most ``max_regions`` after class-agnostic NMS at ``nms_iou``. Records that list
    regions are left as they are. Changes ``records`` in place; returns how many records were filled.

    The proposals are a function of the image and these settings (the default proposer is deterministic), so an
    interrupted run, rerun, finds the same regions and resumes."""
    from tqdm import tqdm

    from ..images import image_file_size
    from . import proposal_source

    if not 0.0 < nms_iou <= 1.0:
        raise InputError(f"--nms-iou must lie in (0, 1], got {nms_iou}")
    if max_regions < 1:
        raise InputError(f"--max-regions must be at least 1, got {max_regions}")
    source = proposal_source(spec, device=device)  # (where a model source such as SAM runs)
    todo = [i for i, rec in enumerate(records) if not rec.get("regions")]
    for i in tqdm(todo, desc="proposals", unit="img", disable=None if progress is None else not progress):
        rec = records[i]
        path = Path(root) / rec["image"]
        try:
            size = image_file_size(path)
            found = source(path).select(max_regions, nms_iou, size)
        except InputError as err:
            raise InputError(f"record {i + 1} ({rec['image']}): {err}") from None
        regions = found.regions()
        for region in regions:
            region.pop("box_format", None)  # xyxy, the records' own format
        rec["regions"] = regions
    return len(todo)
