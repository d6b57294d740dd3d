"""Image reading: every common encoding becomes correct 8-bit RGB; bad files fail with one clear message."""

import numpy as np
import pytest
from PIL import Image

from damage_smp.images import ImageReadError, image_size, read_image, read_mask, write_image


def _gradient(h=20, w=30):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 8, y * 12, (x + y) * 4], -1).astype(np.uint8)


def test_rgb_png_and_jpeg_round_trip(tmp_path):
    rgb = _gradient()
    write_image(tmp_path / "a.png", rgb)
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    write_image(tmp_path / "a.jpg", rgb, quality=100)
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - rgb).max() < 12


def test_grayscale_rgba_and_16bit_become_rgb(tmp_path):
    gray = _gradient()[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and np.array_equal(out[..., 1], gray)

    rgba = np.dstack([_gradient(), np.full((20, 30), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), _gradient())

    g16 = (gray.astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out16 = read_image(tmp_path / "g16.png")
    assert out16.dtype == np.uint8 and np.array_equal(out16[..., 0], gray)


def test_exif_rotation_is_applied(tmp_path):
    rgb = _gradient(20, 30)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (30, 20, 3)
    assert image_size(tmp_path / "r.jpg") == (20, 30)
    assert np.abs(out.astype(int) - np.rot90(rgb, -1)).mean() < 6


def test_masks_are_read_raw(tmp_path):
    values = np.array([[0, 5], [255, 1]], np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png"), values)
    rgb = np.array([[[28, 230, 255], [0, 0, 0]]], np.uint8)
    write_image(tmp_path / "c.png", rgb)
    assert np.array_equal(read_mask(tmp_path / "c.png"), rgb)


@pytest.mark.parametrize(
    "content,match",
    [(b"", "empty"), (b"this is text, not a picture", "not a readable image"), (None, "not found")],
)
def test_bad_files_fail_with_the_file_named(tmp_path, content, match):
    path = tmp_path / "bad file ü.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=match) as e:
        read_image(path)
    assert "bad file ü.png" in str(e.value)


def test_truncated_jpeg_is_refused(tmp_path):
    write_image(tmp_path / "t.jpg", np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")


def test_pixel_limit_refuses_bombs_before_decoding(tmp_path):
    Image.new("L", (4000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="--max-pixels"):
        read_image(tmp_path / "big.png", max_pixels=1_000_000)
    assert read_image(tmp_path / "big.png", max_pixels=20_000_000).shape == (3000, 4000, 3)


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    import os

    write_image(tmp_path / "m.png", _gradient())
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == 0o666 & ~mask
