"""Perceptual hashes of view crops (SPEC §1.2).

Two flavours, each for one crop and batched over many crops of one image:

``official`` (the flavour DynRefer's view selection uses; bit-exact):
    1. grayscale of the whole image, once: ``(9798 R + 19235 G + 3735 B + 16384) >> 15``
       on uint8 (OpenCV's RGB→GRAY), as float32;
    2. crop with the integer view box;
    3. resize to 224×224, bilinear with half-pixel centres and no antialiasing
       (OpenCV ``INTER_LINEAR`` on float32);
    4. orthonormal 2-D DCT-II of the 224×224 array;
    5. top-left 8×8 block (DC included), bit = value > mean of the 64 values;
    6. 16 hex digits, first bit most significant.
    The single-crop path uses ``cv2.resize`` and ``scipy.fft.dctn`` literally. The batched
    path computes only the 8×8 DCT block: on CPU as ``A_h · crop · A_wᵀ`` with the resize folded
    into the DCT rows (``A_n = D₈ · R_n``, 8 × n), elsewhere as two matrix products after a
    tensor resize; any hash with a coefficient within ``margin`` of its mean (where float
    rounding of the two paths could disagree) is recomputed from the single path's own resize
    (its 8×8 block as a float64 product, and SciPy's DCT where even that is within
    ``REFERENCE_DCT_GUARD`` of the mean), so the two paths return identical bits.

``imagehash`` (``str(imagehash.phash(crop))``): Pillow ``L`` conversion, 32×32 Lanczos,
    unnormalised DCT-II on both axes (``scipy.fftpack.dct``), top-left 8×8, bit = value >
    median. The single path calls :mod:`imagehash`; the batched path resamples with
    Pillow's exact kernel (:mod:`dynrefer.resample`) and computes the DCT block by matrix
    products.

Known weakness of the official flavour: the DC term dominates the mean, so low-texture
crops hash to ``8000000000000000`` and every distance between them is 0.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .errors import InputError
from .linear_resize import linear_coefficients, linear_resize_crops
from .resample import _check_crops, resample_crops

HASH_SIZE = 8
OFFICIAL_RESIZE = 224
IMAGEHASH_RESIZE = 32
FLAVOURS = ("official", "imagehash")
# Coefficients closer than this to the threshold are recomputed by the exact path
# (the batched resize differs from OpenCV's vectorised one by ~1e-5 relative).
DEFAULT_MARGIN = 0.5
IMAGEHASH_MARGIN = 1e-6


def rgb_to_gray_official(image) -> np.ndarray:
    """OpenCV's RGB→GRAY on uint8, ``(9798 R + 19235 G + 3735 B + 16384) >> 15``, as float32 (H, W).

    ``image``: (3, H, W) uint8 tensor or (H, W, 3) uint8 array. A tensor's three planes go through the
    integer formula (:func:`gray_formula`; no channel-last copy: ~2x faster than the copy plus ``cv2.cvtColor``);
    an array through ``cv2.cvtColor`` (the same integer formula, vectorised; ``tests/test_phash.py`` checks both).
    """
    import cv2

    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise InputError(f"expected a (3, H, W) uint8 image tensor, got {image.dtype} "
                             f"of shape {tuple(image.shape)}")
        return gray_formula(image)
    arr = np.asarray(image)
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY).astype(np.float32)


def gray_formula(image) -> np.ndarray:
    """The same grayscale written out in integer numpy on the three planes of a (3, H, W) tensor or an
    (H, W, 3) array (no channel-last copy)."""
    planes = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.moveaxis(np.asarray(image), -1, 0)
    r, g, b = planes.astype(np.int32)
    return ((9798 * r + 19235 * g + 3735 * b + 16384) >> 15).astype(np.float32)


def rgb_to_gray_pillow(image: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert("L")`` on a (3, H, W) uint8 tensor → (1, H, W) uint8 (same device)."""
    rgb = image.to(torch.int64)
    gray = (rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16
    return gray.to(torch.uint8)[None]


def bits_to_hex(bits) -> str:
    """Booleans (row-major, first = most significant) → hex digits (16 for 64 bits)."""
    flat = np.asarray(bits, dtype=bool).reshape(-1)
    pad = (-flat.size) % 8
    packed = np.packbits(np.concatenate([np.zeros(pad, dtype=bool), flat])) if pad else np.packbits(flat)
    text = packed.tobytes().hex()
    return text[len(text) - (flat.size + 3) // 4 :]


def hex_to_bits(text: str) -> np.ndarray:
    """Inverse of :func:`bits_to_hex` for 64-bit hashes."""
    value = int(text, 16)
    return np.array([(value >> (63 - i)) & 1 for i in range(64)], dtype=bool)


def hamming(a, b) -> int:
    """Number of differing bits between two hashes (hex strings or bit arrays)."""
    a = hex_to_bits(a) if isinstance(a, str) else np.asarray(a, dtype=bool)
    b = hex_to_bits(b) if isinstance(b, str) else np.asarray(b, dtype=bool)
    return int(np.count_nonzero(a.reshape(-1) != b.reshape(-1)))


# ----------------------------------------------------------------------------- official


def phash_official_single(gray_crop: np.ndarray) -> np.ndarray:
    """Official pHash bits (64,) of one float32 grayscale crop, with OpenCV and SciPy."""
    return _official_bits_scipy(_official_resized(gray_crop))


def _official_resized(gray_crop: np.ndarray) -> np.ndarray:
    """Steps 2–3 of the official hash for one crop: ``cv2.resize`` to 224² (float32)."""
    import cv2

    crop = np.ascontiguousarray(gray_crop, dtype=np.float32)
    if crop.ndim != 2 or crop.size == 0:
        raise ValueError(f"expected a non-empty 2-D grayscale crop, got shape {crop.shape}")
    return cv2.resize(crop, (OFFICIAL_RESIZE, OFFICIAL_RESIZE), interpolation=cv2.INTER_LINEAR)


def _official_bits_scipy(resized: np.ndarray) -> np.ndarray:
    """Steps 4–5 of the official hash, literally: SciPy's 2-D DCT of the resized crop, its 8×8 block."""
    from scipy.fft import dctn

    low = dctn(resized, norm="ortho")[:HASH_SIZE, :HASH_SIZE]
    return (low > low.mean()).reshape(-1)


def dct_matrix(n: int, k: int, norm: str | None) -> np.ndarray:
    """First ``k`` rows of the DCT-II matrix of size ``n`` in float64.

    ``norm="ortho"``: orthonormal (scipy ``norm="ortho"``); ``None``: unnormalised
    ``2 Σ x_j cos(π i (2j + 1) / 2n)`` (``scipy.fftpack.dct`` default).
    """
    i = np.arange(k, dtype=np.float64)[:, None]
    j = np.arange(n, dtype=np.float64)[None, :]
    m = 2.0 * np.cos(np.pi * i * (2 * j + 1) / (2 * n))
    if norm == "ortho":
        m = m * np.sqrt(1.0 / (2 * n))
        m[0] *= np.sqrt(0.5)
    return m


def _low_block(resized: torch.Tensor, n: int, norm: str | None, fast: bool = True) -> torch.Tensor:
    """Top-left 8×8 block of the 2-D DCT of each (n, n) array: ``D x Dᵀ`` as two GEMMs.

    The large first product runs in float32 (memory-bound; its rounding, ~1e-2 on
    coefficients of magnitude up to 6e4, stays far inside the exactness margin), the small
    second one in float64; ``fast=False`` runs both in float64. Returns (N, 8, 8) float64.
    """
    d = torch.from_numpy(dct_matrix(n, HASH_SIZE, norm)).to(resized.device)
    num = resized.shape[0]
    work = torch.float32 if fast else torch.float64
    x = resized.to(work).reshape(num * n, n)
    cols = (x @ d.T.to(work)).to(torch.float64).reshape(num, n, HASH_SIZE)  # x Dᵀ
    rows = cols.transpose(1, 2).reshape(num * HASH_SIZE, n) @ d.T  # (x Dᵀ)ᵀ Dᵀ = (D x Dᵀ)ᵀ
    return rows.reshape(num, HASH_SIZE, HASH_SIZE).transpose(1, 2)


@functools.lru_cache(maxsize=4096)
def resize_dct_rows(in_size: int, out_size: int = OFFICIAL_RESIZE) -> np.ndarray:
    """(8, in_size) float64: the first 8 orthonormal DCT-II rows of size ``out_size`` times the
    (out_size, in_size) matrix of the bilinear resize (:func:`~dynrefer.linear_resize.linear_coefficients`).

    The resize is linear and separable, so the 8×8 DCT block of a crop resized to ``S×S`` is
    ``A_h · crop · A_wᵀ`` with ``A_n = D₈ · R_n``: no ``S×S`` intermediate. (Cached per size;
    the returned array is read-only.)
    """
    i0, i1, w0, w1 = linear_coefficients(in_size, out_size)
    dct = dct_matrix(out_size, HASH_SIZE, "ortho")
    # column j of A gathers D's columns o whose taps land on j: A[:, j] = Σ_o D[:, o] R[o, j]
    out = np.stack([np.bincount(i0, weights=row * w0.astype(np.float64), minlength=in_size)
                    + np.bincount(i1, weights=row * w1.astype(np.float64), minlength=in_size) for row in dct])
    out.setflags(write=False)
    return out


#: at most this many elements in one chunk's (chunk, 8, H + W) matrices
_PADDED_CHUNK_ELEMS = 8_000_000
#: images up to this many pixels hash with the factorised products on CPU, larger ones with OpenCV resizes (the
#: products cost 8·H·W multiply-adds per crop, a bilinear 224² resize a fixed ~4·224² reads; measured crossover
#: between 1 and 12 MP: 600×400 9–14 ms vs 34–50, 1024×768 20 vs 36, 4000×3000 200 vs 52 for 176 crops)
FACTORISED_MAX_PIXELS = 2_000_000


def _official_blocks_factorised(gray: torch.Tensor, crops: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) float64 DCT blocks of the crops resized to 224², as ``A_h · crop · A_wᵀ``
    (:func:`resize_dct_rows`) for many crops at once: every ``A_h`` in the rows ``y1:y2`` of an
    otherwise zero (8, H) matrix and every ``A_w`` in the columns ``x1:x2`` of an (8, W) one, so
    that ``(n·8, H) @ (H, W)`` (float32) and a batched ``(n, 8, W) @ (n, W, 8)`` (float64) give the
    blocks of n crops (the zeros add exact zeros; chunks of crops bound the memory). Torch matrix
    products: numpy's BLAS threads would compete with torch's for the cores."""
    height, width = gray.shape
    out = torch.empty((len(crops), HASH_SIZE, HASH_SIZE), dtype=torch.float64, device=gray.device)
    chunk = max(1, _PADDED_CHUNK_ELEMS // (HASH_SIZE * (height + width)))
    for start in range(0, len(crops), chunk):
        part = crops[start : start + chunk]
        left = np.zeros((len(part), HASH_SIZE, height), dtype=np.float32)
        right = np.zeros((len(part), HASH_SIZE, width), dtype=np.float64)
        for k, (x1, y1, x2, y2) in enumerate(part.tolist()):  # numpy slice writes: no BLAS call here
            left[k, :, y1:y2] = resize_dct_rows(y2 - y1)
            right[k, :, x1:x2] = resize_dct_rows(x2 - x1)
        lt, rt = torch.from_numpy(left).to(gray.device), torch.from_numpy(right).to(gray.device)
        rows = (lt.reshape(-1, height) @ gray).reshape(len(part), HASH_SIZE, width)  # A_h · gray, every column
        out[start : start + len(part)] = rows.to(torch.float64) @ rt.transpose(1, 2)
    return out


def auto_engine(gray: torch.Tensor) -> str:
    """The ``engine="auto"`` choice of :func:`phash_official_batched` for a grayscale image: off the CPU
    ``"torch"``; on CPU ``"factorised"`` up to :data:`FACTORISED_MAX_PIXELS` pixels, else ``"opencv"``."""
    if gray.device.type != "cpu":
        return "torch"
    return "factorised" if gray.shape[0] * gray.shape[1] <= FACTORISED_MAX_PIXELS else "opencv"


def phash_official_batched(
    gray: np.ndarray | torch.Tensor, crops, *, margin: float = DEFAULT_MARGIN, engine: str = "auto"
) -> np.ndarray:
    """Official pHash bits (N, 64) of many integer crops of one grayscale image.

    ``engine``: ``"factorised"`` (each crop's 8×8 DCT block of its 224² resize as
    ``A_h · crop · A_wᵀ``, :func:`resize_dct_rows`, in torch matrix products), or a resize engine
    of :func:`dynrefer.linear_resize.linear_resize_crops` (``"opencv"``, ``"torch"``): all crops resized
    to 224² in one call, then their blocks as one batched matrix product; ``"auto"``:
    :func:`auto_engine` (factorised on CPU for images up to 2 MP).

    Args:
        gray: float32 (H, W) grayscale from :func:`rgb_to_gray_official` (array or tensor;
            a tensor's device is used for the batched work).
        crops: (N, 4) integer boxes ``x1, y1, x2, y2``.
        margin: hashes with a coefficient within ``margin`` of their threshold are
            recomputed with :func:`phash_official_single` (exactness guard).
    """
    crops = np.asarray(crops, dtype=np.int64).reshape(-1, 4)
    gray_t = gray if isinstance(gray, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(gray, np.float32))
    if gray_t.device.type == "mps":  # the hash needs float64 products, which MPS does not have: on the CPU
        gray_t = gray_t.cpu()
    if len(crops) == 0:
        return np.zeros((0, HASH_SIZE * HASH_SIZE), dtype=bool)
    if engine == "auto":
        engine = auto_engine(gray_t)
    if engine == "factorised":
        _check_crops(crops, int(gray_t.shape[1]), int(gray_t.shape[0]))
        flat = _official_blocks_factorised(gray_t.to(torch.float32), crops).reshape(len(crops), -1)
    else:
        resized = linear_resize_crops(gray_t, crops, OFFICIAL_RESIZE, engine)
        flat = _low_block(resized, OFFICIAL_RESIZE, "ortho").reshape(len(crops), -1)
    mean = flat.mean(dim=1, keepdim=True)
    bits = (flat > mean).cpu().numpy()
    close = ((flat - mean).abs() < margin).any(dim=1).cpu().numpy()
    if close.any():
        gray_np = gray_t.detach().cpu().numpy()
        for i in np.nonzero(close)[0]:
            x1, y1, x2, y2 = crops[i]
            bits[i] = _official_single_guarded(gray_np[y1:y2, x1:x2])
    return bits


#: :func:`_official_single_guarded` runs SciPy's DCT only when a coefficient is this close to the mean: the
#: reference's float32 DCT differs from the exact block of the same OpenCV resize by a few float32 ulps of the
#: largest coefficient (~4e-3 measured, coefficients up to ~6e4; ``tests/test_phash.py`` asserts a twentieth of
#: this guard over hundreds of crops).
REFERENCE_DCT_GUARD = 0.25


def _official_single_guarded(gray_crop: np.ndarray) -> np.ndarray:
    """:func:`phash_official_single`'s bits at a fraction of its cost: the same resize, then only the 8×8
    block as ``D₈ · resized · D₈ᵀ`` in float64 (:func:`_low_block`) instead of SciPy's whole 224² DCT; a block
    with a coefficient within :data:`REFERENCE_DCT_GUARD` of its mean (where the reference's float32 rounding
    could decide the bit) goes through SciPy's DCT of that same resize."""
    resized = _official_resized(gray_crop)
    low = _low_block(torch.from_numpy(resized)[None], OFFICIAL_RESIZE, "ortho", fast=False)[0].numpy()
    mean = low.mean()
    if np.abs(low - mean).min() <= REFERENCE_DCT_GUARD:
        return _official_bits_scipy(resized)
    return (low > mean).reshape(-1)


# ---------------------------------------------------------------------------- imagehash


def phash_imagehash_single(pil_crop) -> np.ndarray:
    """``imagehash.phash`` bits (64,) of one PIL crop."""
    import imagehash

    return np.asarray(imagehash.phash(pil_crop).hash, dtype=bool).reshape(-1)


def phash_imagehash_batched(
    image: torch.Tensor, crops, *, engine: str = "auto", margin: float = IMAGEHASH_MARGIN
) -> np.ndarray:
    """``imagehash.phash``-flavour bits (N, 64) of many integer crops of one RGB image.

    ``image``: (3, H, W) uint8 tensor. Exact with ``engine="pillow"`` (the CPU default);
    the torch resampling engine differs from Pillow >= 11 on some crop shapes (Pillow
    chooses the order of its two passes), which changes a few bits (see docs/views.md).
    Hashes with a coefficient within ``margin`` of the median (ties) are recomputed with
    :mod:`imagehash` itself.
    """
    crops = np.asarray(crops, dtype=np.int64).reshape(-1, 4)
    if len(crops) == 0:
        return np.zeros((0, HASH_SIZE * HASH_SIZE), dtype=bool)
    gray = rgb_to_gray_pillow(image)
    small = resample_crops(gray, crops, IMAGEHASH_RESIZE, "lanczos", engine)[:, 0]  # (N, 32, 32)
    flat = _low_block(small, IMAGEHASH_RESIZE, None, fast=False).reshape(len(crops), -1)
    # torch.median returns the lower middle value; numpy's is the mean of the two middles.
    ordered = flat.sort(dim=1).values
    med = (ordered[:, 31:32] + ordered[:, 32:33]) / 2
    bits = (flat > med).cpu().numpy()
    close = ((flat - med).abs() < margin).any(dim=1).cpu().numpy()
    if close.any():
        from .images import tensor_to_pil

        pil = tensor_to_pil(image)
        for i in np.nonzero(close)[0]:
            bits[i] = phash_imagehash_single(pil.crop(tuple(int(v) for v in crops[i])))
    return bits


def phash_bits(image: torch.Tensor, crops, flavour: str = "official", *, gray=None) -> np.ndarray:
    """pHash bits (N, 64) of each integer crop of a (3, H, W) uint8 image, batched."""
    if flavour == "official":
        if gray is None:
            gray = rgb_to_gray_official(image)
        return phash_official_batched(gray, crops)
    if flavour == "imagehash":
        return phash_imagehash_batched(image, crops)
    raise ValueError(f"unknown pHash flavour {flavour!r}; expected one of {FLAVOURS}")


def phash_views(image: torch.Tensor, crops, flavour: str = "official", *, gray=None) -> list[str]:
    """Hex pHash of each integer crop of a (3, H, W) uint8 image, batched."""
    return [bits_to_hex(b) for b in phash_bits(image, crops, flavour, gray=gray)]
