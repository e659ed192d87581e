"""Bad and odd images: each is handled correctly or refused with a clear message."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from biasscope.errors import ImageError, ImageTooLargeError
from biasscope.images import MSG_EMPTY, MSG_NOT_IMAGE, load_image, sniff_image_type


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_png_roundtrip_exact():
    arr = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    out = load_image(_png(Image.fromarray(arr)))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), arr)


def test_zero_bytes(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match=re.escape(MSG_EMPTY)):
        load_image(p)


def test_not_an_image_even_with_image_name(tmp_path):
    p = tmp_path / "evil.png"
    p.write_text("<html><script>alert(1)</script></html>")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(p)
    with pytest.raises(ImageError) as err:
        load_image(b"%PDF-1.4 ...")
    assert MSG_NOT_IMAGE in str(err.value)


def test_truncated_jpeg():
    data = _png(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_pixel_limit_refused_from_header():
    data = _png(Image.new("L", (4000, 3000), 0))  # compresses to a few KB
    with pytest.raises(ImageTooLargeError, match=r"12,000,000 pixels; the limit is 10,000,000"):
        load_image(data, max_pixels=10_000_000)


def test_decompression_bomb_refused():
    # 144 Mpx of zeros compress to ~140 KB: Pillow's bomb guard or ours must refuse it undecoded
    data = _png(Image.new("1", (12000, 12000), 0))
    assert len(data) < 1_000_000
    with pytest.raises(ImageTooLargeError, match=r"decompression bomb|pixels; the limit"):
        load_image(data)


def test_file_size_limit(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(_png(Image.new("RGB", (300, 300))))
    with pytest.raises(ImageTooLargeError, match="bytes; the limit"):
        load_image(p, max_bytes=100)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode):
    base = Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 4, 3), dtype=np.uint8))
    img = base.convert(mode) if mode not in ("I;16",) else Image.fromarray(
        np.arange(24, dtype=np.uint16).reshape(6, 4) * 2000)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    if mode == "LA" or mode == "RGBA":
        fmt = "PNG"
    out = load_image(_png(img, fmt))
    assert out.mode == "RGB" and out.size == (4, 6)


def test_16bit_is_rescaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    assert Image.fromarray(arr).mode == "I;16"
    out = np.asarray(load_image(_png(Image.fromarray(arr))))
    assert out[0, :, 0].tolist() == [0, 128, 255]  # v / 257, rounded: 32768 / 257 = 127.5019


def test_alpha_composited_on_white():
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))  # fully transparent red
    out = np.asarray(load_image(_png(rgba)))
    assert (out == 255).all()


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = _png(img, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data)
    assert out.size == (20, 40)  # portrait after rotation
    top = np.asarray(out)[:8].reshape(-1, 3).mean(0)
    assert top[0] > 150 and top[2] < 100  # the red stripe is now on top


def test_sniff_ignores_names():
    assert sniff_image_type(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert sniff_image_type(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_image_type(b"GIF89a") == "GIF"
    assert sniff_image_type(b"<svg") is None


def test_array_and_pil_sources():
    arr = np.zeros((3, 4, 3), dtype=np.uint8)
    assert load_image(arr).size == (4, 3)
    assert load_image(np.zeros((3, 4), dtype=np.float32)).mode == "RGB"
    with pytest.raises(ImageError, match="array image must be"):
        load_image(np.zeros((3, 4, 5), dtype=np.uint8))


# ------------------------------------------------------------------ float and 16-bit images by their range
def _tiff(arr: np.ndarray) -> bytes:
    return _png(Image.fromarray(arr), "TIFF")


def test_float_tiff_in_0_1_is_scaled_by_255():
    """A float32 TIFF with values in 0..1 was an all-black image; it is v * 255 (rounded)."""
    arr = np.array([[0.0, 0.2, 0.5, 1.0]], dtype=np.float32)
    img = Image.open(io.BytesIO(_tiff(arr)))
    assert img.mode == "F"
    out = np.asarray(load_image(_tiff(arr)))
    assert out[0, :, 0].tolist() == [0, 51, 128, 255] and (out[..., 0] == out[..., 2]).all()


def test_float_tiff_in_0_255_is_taken_as_8_bit_values():
    arr = np.array([[0.0, 100.4, 254.6, 255.0]], dtype=np.float32)
    assert np.asarray(load_image(_tiff(arr)))[0, :, 1].tolist() == [0, 100, 255, 255]


def test_16bit_tiff_is_scaled_by_1_over_257():
    arr = np.array([[0, 257 * 100, 257 * 200 + 128, 65535]], dtype=np.uint16)
    assert Image.open(io.BytesIO(_tiff(arr))).mode == "I;16"
    assert np.asarray(load_image(_tiff(arr)))[0, :, 0].tolist() == [0, 100, 200, 255]


@pytest.mark.parametrize(("values", "needle"), [
    ([-0.5, 0.5], "values from -0.5 to 0.5"),
    ([0.0, 4000.0], "values from 0 to 4000"),
    ([0.0, float("nan")], "NaN or infinite"),
    ([0.0, float("inf")], "NaN or infinite"),
])
def test_float_tiff_out_of_range_is_refused(values, needle):
    with pytest.raises(ImageError, match=re.escape(needle)):
        load_image(_tiff(np.array([values], dtype=np.float32)))


def test_arrays_are_converted_by_their_range():
    assert np.asarray(load_image(np.array([[0, 257 * 50, 65535]], dtype=np.uint16)))[0, :, 0].tolist() == [0, 50, 255]
    assert np.asarray(load_image(np.array([[0.0, 0.2, 1.0]], dtype=np.float64)))[0, :, 0].tolist() == [0, 51, 255]
    assert np.asarray(load_image(np.array([[0, 7, 255]], dtype=np.int64)))[0, :, 0].tolist() == [0, 7, 255]
    with pytest.raises(ImageError, match="values from -1 to 3"):
        load_image(np.array([[-1, 3]], dtype=np.int32))


def test_bomb_message_quotes_the_configured_limit():
    data = _png(Image.new("1", (12000, 12000), 0))  # 144 Mpx: above Pillow's own warning threshold
    with pytest.raises(ImageTooLargeError) as info:
        load_image(data, max_pixels=50_000_000)
    msg = str(info.value)
    assert "144,000,000 pixels; the limit is 50,000,000" in msg
    assert f"{Image.MAX_IMAGE_PIXELS:,}" not in msg and str(Image.MAX_IMAGE_PIXELS) not in msg


def test_unusable_paths_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match="cannot be read: File name too long"):
        load_image(tmp_path / ("a" * 256 + ".png"))
    with pytest.raises(ImageError, match="no such file"):
        load_image(str(tmp_path / "x\x00y.png"))
