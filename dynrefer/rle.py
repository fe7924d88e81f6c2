"""COCO RLE helpers shared by region parsing and the dataset converters."""

from __future__ import annotations


def decode_counts_string(data: bytes | str) -> list[int]:
    """Run lengths of a COCO compressed RLE counts string (pycocotools' ``rleFrString`` in Python).

    pycocotools itself does not validate these strings (a corrupt one makes it read past its
    buffer), so callers check them here first. Raises ValueError if the string is malformed.
    """
    if isinstance(data, str):
        data = data.encode("ascii", errors="replace")
    counts: list[int] = []
    pos = 0
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(data):
                raise ValueError("counts string ends in the middle of a number")
            code = data[pos] - 48
            if not 0 <= code <= 63:
                raise ValueError(f"invalid character {chr(data[pos])!r} in counts string")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            pos += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            raise ValueError("negative run length in counts string")
        counts.append(value)
    return counts
