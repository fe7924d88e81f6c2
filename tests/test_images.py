"""Tests for dynrefer.images: file decoding, mode conversion, arrays, tensors and errors."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynrefer.errors import ImageLoadError, InputError
from dynrefer.images import image_size, load_image, tensor_to_pil


def composite(value: int, alpha: int) -> int:
    """Reference alpha-on-white compositing, in floating point."""
    return round(value * alpha / 255 + 255 * (1 - alpha / 255))


def rgb_at(tensor: torch.Tensor, y: int, x: int) -> list[int]:
    return tensor[:, y, x].tolist()


def file_mode_info(path: Path) -> tuple[str, dict]:
    """Mode and info of an image file as PIL opens it (file closed afterwards)."""
    with Image.open(path) as img:
        return img.mode, dict(img.info)


def check_basic(tensor: torch.Tensor, height: int, width: int) -> None:
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == (3, height, width)
    assert tensor.is_contiguous()


# --------------------------------------------------------------------------- PIL modes from files


def test_rgb_png_exact(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(data).save(tmp_path / "rgb.png")
    out = load_image(tmp_path / "rgb.png")
    check_basic(out, 4, 5)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), data)
    assert torch.equal(load_image(str(tmp_path / "rgb.png")), out)


def test_grey_l_png(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    check_basic(out, 1, 3)
    assert out[:, 0, :].tolist() == [[0, 77, 255]] * 3


def test_la_png_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("LA", (4, 1))
    img.putdata([(100, 0), (100, 128), (100, 255), (7, 1)])
    img.save(tmp_path / "la.png")
    assert file_mode_info(tmp_path / "la.png")[0] == "LA"
    out = load_image(tmp_path / "la.png")
    check_basic(out, 1, 4)
    expected = [255, composite(100, 128), 100, composite(7, 1)]
    assert expected == [255, 177, 100, 254]
    assert out[0, 0, :].tolist() == expected
    assert out[1, 0, :].tolist() == expected


def test_rgba_png_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (3, 1))
    img.putdata([(200, 100, 0, 64), (10, 20, 30, 255), (10, 20, 30, 0)])
    img.save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    check_basic(out, 1, 3)
    assert rgb_at(out, 0, 0) == [241, 216, 191]
    assert rgb_at(out, 0, 0) == [composite(200, 64), composite(100, 64), composite(0, 64)]
    assert rgb_at(out, 0, 1) == [10, 20, 30]
    assert rgb_at(out, 0, 2) == [255, 255, 255]


def test_alpha_composite_matches_float_formula_everywhere() -> None:
    values = np.arange(256, dtype=np.int64)
    rgb, alpha = np.meshgrid(values, values, indexing="ij")
    rgba = np.stack([rgb, rgb, rgb, alpha], axis=-1).astype(np.uint8)  # (256, 256, 4)
    expected = np.floor(rgb * alpha / 255 + 255 * (1 - alpha / 255) + 0.5).astype(np.int64)
    sources = [rgba, torch.from_numpy(rgba).permute(2, 0, 1), Image.fromarray(rgba, mode="RGBA")]
    for source in sources:
        out = load_image(source)
        assert np.array_equal(out[0].numpy().astype(np.int64), expected)
        assert torch.equal(out[0], out[2])


def _palette_image() -> Image.Image:
    img = Image.new("P", (3, 1))
    img.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    img.putdata([0, 1, 2])
    return img


def test_palette_png_without_transparency(tmp_path: Path) -> None:
    _palette_image().save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    check_basic(out, 1, 3)
    assert [rgb_at(out, 0, x) for x in range(3)] == [[10, 20, 30], [40, 50, 60], [70, 80, 90]]


def test_palette_png_with_transparency_is_white(tmp_path: Path) -> None:
    img = _palette_image()
    img.info["transparency"] = 1
    img.save(tmp_path / "pt.png")
    assert "transparency" in file_mode_info(tmp_path / "pt.png")[1]
    out = load_image(tmp_path / "pt.png")
    assert [rgb_at(out, 0, x) for x in range(3)] == [[10, 20, 30], [255, 255, 255], [70, 80, 90]]


def test_pa_image_composited() -> None:
    img = Image.new("PA", (2, 1))
    img.putpalette([200, 100, 0] + [0] * 765)
    img.putdata([(0, 64), (0, 255)])
    out = load_image(img)
    assert rgb_at(out, 0, 0) == [241, 216, 191]
    assert rgb_at(out, 0, 1) == [200, 100, 0]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert file_mode_info(tmp_path / "cmyk.jpg")[0] == "CMYK"
    out = load_image(tmp_path / "cmyk.jpg")
    check_basic(out, 16, 16)
    red = np.array(rgb_at(out, 8, 8))
    assert np.abs(red - np.array([255, 0, 0])).max() <= 4


def test_bilevel_png(tmp_path: Path) -> None:
    img = Image.new("1", (3, 1))
    img.putdata([0, 1, 0])
    img.save(tmp_path / "one.png")
    out = load_image(tmp_path / "one.png")
    assert out[:, 0, :].tolist() == [[0, 255, 0]] * 3


SIXTEEN_IN = [0, 128, 129, 257, 385, 386, 32896, 65535]
SIXTEEN_OUT = [0, 0, 1, 1, 1, 2, 128, 255]


def test_sixteen_bit_png_scaled(tmp_path: Path) -> None:
    Image.fromarray(np.array([SIXTEEN_IN], dtype=np.uint16)).save(tmp_path / "i16.png")
    assert file_mode_info(tmp_path / "i16.png")[0].startswith("I")
    out = load_image(tmp_path / "i16.png")
    check_basic(out, 1, len(SIXTEEN_IN))
    assert out[2, 0, :].tolist() == SIXTEEN_OUT
    assert SIXTEEN_OUT == [min(255, round(v / 257)) for v in SIXTEEN_IN]


def test_sixteen_bit_big_endian_and_int32_modes() -> None:
    big = Image.frombytes("I;16B", (3, 1), np.array([257, 386, 65535], dtype=">u2").tobytes())
    assert load_image(big)[0, 0].tolist() == [1, 2, 255]
    wide = Image.fromarray(np.array([[-500, 385, 70000, 65535]], dtype=np.int32))
    assert wide.mode == "I"
    assert load_image(wide)[1, 0].tolist() == [0, 1, 255, 255]


def test_float_mode_unit_range_and_clipping() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 0.2, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert load_image(unit)[0, 0].tolist() == [0, 128, 51, 255]
    wide = Image.fromarray(np.array([[-3.0, 17.4, 300.0, 0.5]], dtype=np.float32))
    assert load_image(wide)[0, 0].tolist() == [0, 17, 255, 0]


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"), [(6, [255, 0, 0], [0, 0, 255]), (8, [0, 0, 255], [255, 0, 0])]
)
def test_exif_orientation_applied(tmp_path: Path, orientation: int, top: list[int], bottom: list[int]) -> None:
    data = np.zeros((16, 32, 3), dtype=np.uint8)
    data[:, :16] = (255, 0, 0)  # left half red
    data[:, 16:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(data).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    check_basic(out, 32, 16)
    assert np.abs(np.array(rgb_at(out, 3, 8)) - top).max() <= 8
    assert np.abs(np.array(rgb_at(out, 28, 8)) - bottom).max() <= 8


def test_exif_orientation_applied_to_pil_input(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (32, 16), (0, 200, 0)).save(tmp_path / "rot.jpg", exif=exif)
    with Image.open(tmp_path / "rot.jpg") as img:
        out = load_image(img)
    check_basic(out, 32, 16)


# --------------------------------------------------------------------------- bad files


def _error_for(path: Path) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error_for(tmp_path / "missing.jpg")


def test_directory(tmp_path: Path) -> None:
    assert "directory" in _error_for(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"")
    message = _error_for(tmp_path / "x.jpg")
    assert message == f"cannot read image '{tmp_path / 'x.jpg'}': file is empty"


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello, I am not an image\n")
    assert "not a recognised image" in _error_for(tmp_path / "notes.png")


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"full.{suffix}")
    data = (tmp_path / f"full.{suffix}").read_bytes()
    (tmp_path / f"cut.{suffix}").write_bytes(data[: len(data) // 2])
    message = _error_for(tmp_path / f"cut.{suffix}")
    assert "truncated" in message.lower() or "corrupt" in message.lower()


def _png_header(width: int, height: int) -> bytes:
    """A PNG with only IHDR + IEND claiming the given size (no pixel data)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_file_with_real_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(20000, 20000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        message = _error_for(path)
    assert "400000000 pixels" in message
    assert str(2 * Image.MAX_IMAGE_PIXELS) in message


def test_decompression_bomb_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "warn.png")  # 1200 px: warning range
    Image.new("RGB", (50, 50), (1, 2, 3)).save(tmp_path / "big.png")  # 2500 px: error range
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_image(tmp_path / "warn.png")
        assert rgb_at(out, 29, 39) == [1, 2, 3]
        message = _error_for(tmp_path / "big.png")
        assert "2500 pixels" in message and "2000 pixels" in message
        for source, label in [
            (np.zeros((50, 50), np.uint8), "<array>"),
            (torch.zeros(3, 50, 50, dtype=torch.uint8), "<tensor>"),
            (Image.new("L", (50, 50)), "<PIL image>"),
        ]:
            with pytest.raises(ImageLoadError, match="2500 pixels.*2000 pixels") as info:
                load_image(source)
            assert label in str(info.value)
        assert load_image(np.zeros((30, 40), np.uint8)).shape == (3, 30, 40)
    assert Image.MAX_IMAGE_PIXELS == 1000  # untouched by load_image


def test_pil_warns_in_warning_range_without_load_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "warn.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(tmp_path / "warn.png").close()


# --------------------------------------------------------------------------- numpy arrays


def test_array_shapes_uint8() -> None:
    grey = np.array([[0, 9], [100, 255]], dtype=np.uint8)
    for array in (grey, grey[..., None]):
        out = load_image(array)
        check_basic(out, 2, 2)
        assert all(out[c].tolist() == grey.tolist() for c in range(3))
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(load_image(rgb).permute(1, 2, 0).numpy(), rgb)
    rgba = np.array([[[200, 100, 0, 64], [1, 2, 3, 255]]], dtype=np.uint8)
    out = load_image(rgba)
    assert rgb_at(out, 0, 0) == [241, 216, 191] and rgb_at(out, 0, 1) == [1, 2, 3]


def test_array_dtypes() -> None:
    sixteen = np.array([SIXTEEN_IN], dtype=np.uint16)
    assert load_image(sixteen)[0, 0].tolist() == SIXTEEN_OUT
    assert load_image(sixteen.astype(">u2"))[0, 0].tolist() == SIXTEEN_OUT
    assert load_image(np.array([[True, False]]))[1, 0].tolist() == [255, 0]
    floats = [0.0, 0.2, 0.5, 1.0]
    for dtype in (np.float16, np.float32, np.float64):
        assert load_image(np.array([floats], dtype=dtype))[0, 0].tolist() == [0, 51, 128, 255]
    rgb_float = np.full((1, 1, 3), 1.0, dtype=np.float32)
    rgb_float[0, 0, 2] = 0.0
    assert rgb_at(load_image(rgb_float), 0, 0) == [255, 255, 0]


def test_array_output_is_a_copy() -> None:
    array = np.zeros((2, 2, 3), dtype=np.uint8)
    out = load_image(array)
    out[0, 0, 0] = 99
    assert array[0, 0, 0] == 0
    array[1, 1, 1] = 7
    assert out[1, 1, 1] == 0


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.zeros((2, 3, 2), np.uint8), "shape (2, 3, 2)"),
        (np.zeros((5,), np.uint8), "shape (5,)"),
        (np.zeros((1, 2, 2, 3), np.uint8), "shape (1, 2, 2, 3)"),
        (np.zeros((2, 2), np.int32), "dtype int32"),
        (np.zeros((2, 2), np.complex64), "dtype complex64"),
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.zeros((5, 0, 3), np.uint8), "empty"),
        (np.array([[-0.5, 2.0]]), "[0, 1], observed min -0.5, max 2"),
        (np.array([[np.nan, 0.25]]), "NaN or infinite"),
        (np.array([[np.inf, 0.25]], np.float32), "NaN or infinite"),
    ],
)
def test_bad_arrays(array: np.ndarray, needle: str) -> None:
    with pytest.raises(InputError) as info:
        load_image(array, name="frame_7")
    assert needle in str(info.value)
    assert "frame_7" in str(info.value)


def test_default_names_in_messages() -> None:
    with pytest.raises(InputError, match="<array>"):
        load_image(np.zeros((2, 2), np.int64))
    with pytest.raises(InputError, match="<tensor>"):
        load_image(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(InputError, match="unsupported source type int"):
        load_image(5)
    with pytest.raises(InputError, match="unsupported source type bytes"):
        load_image(b"\x89PNG")


# --------------------------------------------------------------------------- torch tensors


def test_tensor_shapes_and_dtypes() -> None:
    chw = torch.arange(3 * 2 * 2, dtype=torch.uint8).reshape(3, 2, 2)
    out = load_image(chw)
    check_basic(out, 2, 2)
    assert torch.equal(out, chw) and out.data_ptr() != chw.data_ptr()
    grey = torch.tensor([[0, 50], [200, 255]], dtype=torch.uint8)
    assert torch.equal(load_image(grey), grey.expand(3, 2, 2))
    assert torch.equal(load_image(grey[None]), grey.expand(3, 2, 2))
    rgba = torch.tensor([200, 100, 0, 64], dtype=torch.uint8).reshape(4, 1, 1)
    assert rgb_at(load_image(rgba), 0, 0) == [241, 216, 191]
    sixteen = torch.tensor([SIXTEEN_IN], dtype=torch.int32).to(torch.uint16)
    assert load_image(sixteen)[0, 0].tolist() == SIXTEEN_OUT
    assert load_image(torch.tensor([[True, False]]))[2, 0].tolist() == [255, 0]
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        values = torch.tensor([[0.0, 0.5, 1.0]], dtype=dtype)
        assert load_image(values)[0, 0].tolist() == [0, 128, 255]
    floats = torch.tensor([[0.0, 0.2, 1.0]], requires_grad=True)
    assert load_image(floats)[0, 0].tolist() == [0, 51, 255]


def test_tensor_non_contiguous_and_device() -> None:
    base = torch.arange(3 * 4 * 5, dtype=torch.uint8).reshape(3, 4, 5)
    view = base.transpose(1, 2)  # (3, 5, 4), non-contiguous
    out = load_image(view)
    assert out.is_contiguous() and out.shape == (3, 5, 4)
    assert torch.equal(out, view)
    assert out.device == view.device


@pytest.mark.parametrize(
    ("tensor", "needle"),
    [
        (torch.zeros(2, 4, 4, dtype=torch.uint8), "shape (2, 4, 4)"),
        (torch.zeros(5, 5, 3, dtype=torch.uint8), "shape (5, 5, 3)"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "shape (1, 3, 4, 4)"),
        (torch.zeros(4, dtype=torch.uint8), "shape (4,)"),
        (torch.zeros(3, 4, 4, dtype=torch.int64), "dtype torch.int64"),
        (torch.zeros(3, 0, 4, dtype=torch.uint8), "empty"),
        (torch.tensor([[1.5, 0.0]]), "observed min 0, max 1.5"),
        (torch.tensor([[float("nan"), 0.0]]), "NaN or infinite"),
    ],
)
def test_bad_tensors(tensor: torch.Tensor, needle: str) -> None:
    with pytest.raises(InputError) as info:
        load_image(tensor, name="cam0")
    assert needle in str(info.value) and "cam0" in str(info.value)


def test_image_size() -> None:
    assert image_size(torch.zeros(3, 7, 11, dtype=torch.uint8)) == (11, 7)
    assert image_size(torch.zeros(7, 11)) == (11, 7)
    with pytest.raises(InputError):
        image_size(torch.zeros(5))


def test_tensor_to_pil_matches_channel_last_copy() -> None:
    gen = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=gen)
    pil = tensor_to_pil(rgb)
    assert pil.mode == "RGB" and pil.size == (53, 37)
    reference = np.ascontiguousarray(rgb.permute(1, 2, 0).numpy())  # the slow, obvious conversion
    np.testing.assert_array_equal(np.asarray(pil), reference)
    np.testing.assert_array_equal(np.asarray(tensor_to_pil(rgb[:, 5:20, 7:40])), reference[5:20, 7:40])
    gray = tensor_to_pil(rgb[:1])
    assert gray.mode == "L"
    np.testing.assert_array_equal(np.asarray(gray), rgb[0].numpy())
    with pytest.raises(InputError, match="uint8 image tensor, got float32 of shape \\(3, 4, 4\\)"):
        tensor_to_pil(torch.zeros(3, 4, 4))
    with pytest.raises(InputError, match="shape \\(4, 4\\)"):
        tensor_to_pil(torch.zeros(4, 4, dtype=torch.uint8))
