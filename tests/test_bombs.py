"""Decompression bombs are refused from the header alone: in well under a second and a few MB, in every format.

Each bomb is a small file whose header claims a huge image (the PNGs are complete, valid gigapixel images). The
check runs in a fresh subprocess per case so that its time and peak RSS growth (VmHWM after the check minus VmRSS
before it, the peak reset in between) belong to the check alone.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import damage_smp
from damage_smp.images import check_pixels, image_size, read_image

ORIENTATION = 0x0112
MAX_SECONDS, MAX_RSS_MB = 1.0, 200

MEASURE = r"""
import json, re, sys, time
from damage_smp.images import check_pixels

def kb(field):
    return int(re.search(field + r":\s+(\d+)", open("/proc/self/status").read())[1])

check_pixels(sys.argv[2])  # a tiny image of the same format first: loading the format's code is not the bomb's cost
# reset the peak (VmHWM) to the resident size, then measure the check's growth from there; ru_maxrss cannot be
# reset and also holds the peak of the forked parent's image before exec
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = kb("VmRSS")
start = time.perf_counter()
try:
    check_pixels(sys.argv[1])
    message = "accepted"
except Exception as e:
    message = f"{type(e).__name__}: {e}"
seconds = time.perf_counter() - start
peak = kb("VmHWM")
print(json.dumps({"seconds": seconds, "rss_mb": (peak - before) / 1024, "peak_mb": peak / 1024, "message": message}))
"""


# ============================================================================================ crafting
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _zeros_zlib(row: bytes, rows: int) -> bytes:
    """A zlib stream of ``rows`` copies of ``row``, made from one compressed block of 1000 rows repeated.

    A full flush resets the compressor, so every block compresses to the same bytes: a gigapixel stream costs
    one block's compression and a checksum pass instead of seconds of deflate.
    """
    block_rows = min(rows, 1000)
    block = row * block_rows
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = raw.compress(block) + raw.flush(zlib.Z_FULL_FLUSH)
    tail = row * (rows % block_rows)
    end = raw.compress(tail) + raw.flush()
    adler = 1
    for _ in range(rows // block_rows):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(tail, adler)
    return b"\x78\xda" + segment * (rows // block_rows) + end + struct.pack(">I", adler)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes().removeprefix(b"Exif\x00\x00")  # a PNG eXIf chunk holds the bare TIFF structure


def png_bomb(width: int, height: int, exif: bytes | None = None, exif_after_idat: bool = False) -> bytes:
    """A valid 1-bit black PNG: 60000x60000 (3.6 GP) is about 0.5 MB on disk."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    idat = _chunk(b"IDAT", _zeros_zlib(b"\x00" + bytes((width + 7) // 8), height))
    ex = _chunk(b"eXIf", exif) if exif else b""
    body = idat + ex if exif_after_idat else ex + idat
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + _chunk(b"IEND", b"")


def png_bomb_bad_text_crc(width: int, height: int) -> bytes:
    """A PNG bomb that PIL refuses to open (a text chunk's checksum is wrong) but libpng decodes."""
    data = png_bomb(width, height)
    text = bytearray(_chunk(b"tEXt", b"Comment\x00hello"))
    text[-1] ^= 0xFF
    at = data.index(b"IDAT") - 4
    return data[:at] + bytes(text) + data[at:]


def jpeg_bomb(width: int, height: int, orientation: int = 1) -> bytes:
    """A 16x16 JPEG whose frame header (SOF0) is patched to claim width x height."""
    out, im = io.BytesIO(), Image.new("RGB", (16, 16))
    exif = im.getexif()
    exif[ORIENTATION] = orientation
    im.save(out, "JPEG", exif=exif)
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_bomb(width: int, height: int) -> bytes:
    """A 16x16 TIFF whose ImageWidth and ImageLength tags are patched."""
    out = io.BytesIO()
    Image.new("L", (16, 16)).save(out, "TIFF")
    data = bytearray(out.getvalue())
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            struct.pack_into("<H" if kind == 3 else "<I", data, entry + 8, width if tag == 256 else height)
    return bytes(data)


def webp_bomb(width: int, height: int, orientation: int = 1) -> bytes:
    """A 16x16 lossless WebP with EXIF: its VP8X canvas and VP8L bitstream header patched (WebP stops at 16383)."""
    out, im = io.BytesIO(), Image.new("RGB", (16, 16))
    exif = im.getexif()
    exif[ORIENTATION] = orientation
    im.save(out, "WEBP", exif=exif, lossless=True)
    data, pos = bytearray(out.getvalue()), 12
    while pos < len(data):
        kind, size = bytes(data[pos : pos + 4]), struct.unpack_from("<I", data, pos + 4)[0]
        if kind == b"VP8X":
            data[pos + 12 : pos + 18] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        elif kind == b"VP8L":  # after the 0x2f signature: 14 bits width-1, 14 bits height-1
            bits = int.from_bytes(data[pos + 9 : pos + 13], "little") & ~((1 << 28) - 1)
            data[pos + 9 : pos + 13] = (bits | (width - 1) | ((height - 1) << 14)).to_bytes(4, "little")
        pos += 8 + size + (size & 1)
    return bytes(data)


BOMBS = {
    "png_20000": ("bomb.png", lambda: png_bomb(20000, 20000), "20000x20000"),
    "png_60000": ("bomb.png", lambda: png_bomb(60000, 60000), "60000x60000"),
    "png_exif_before_idat": ("bomb.png", lambda: png_bomb(60000, 30000, _exif(6)), "30000x60000"),
    "png_exif_after_idat": ("bomb.png", lambda: png_bomb(60000, 30000, _exif(6), True), "30000x60000"),
    "png_pil_cannot_open": ("bomb.png", lambda: png_bomb_bad_text_crc(30000, 30000), "30000x30000"),
    "jpeg": ("bomb.jpg", lambda: jpeg_bomb(60000, 30000, orientation=6), "30000x60000"),
    "tiff": ("bomb.tif", lambda: tiff_bomb(60000, 60000), "60000x60000"),
    "webp": ("bomb.webp", lambda: webp_bomb(16383, 13000, orientation=6), "13000x16383"),
}


# ============================================================================================ tests
def measure(path: Path) -> dict:
    """check_pixels(path) in a fresh interpreter, after one check of a 16x16 image in the same format."""
    tiny = path.with_name(f"tiny{path.suffix}")
    Image.new("RGB", (16, 16)).save(tiny)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(damage_smp.__file__).parents[1]), *sys.path]))
    args = [sys.executable, "-c", MEASURE, str(path), str(tiny)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures resident memory through /proc")
@pytest.mark.parametrize("case", list(BOMBS))
def test_bomb_is_refused_from_the_header(tmp_path, case):
    name, make, size = BOMBS[case]
    path = tmp_path / name
    path.write_bytes(make())
    assert path.stat().st_size < 2 << 20
    result = measure(path)
    message = result["message"]
    assert message.startswith("ImageReadError: "), message
    for words in (name, size, "above the 200 MP limit", "decompression bombs", "--max-pixels"):
        assert words in message, message
    ms, grown, peak = result["seconds"] * 1000, result["rss_mb"], result["peak_mb"]
    print(f"{case}: {ms:.1f} ms, peak RSS +{grown:.1f} MB (of {peak:.0f} MB)")  # the figures, with -s
    assert result["seconds"] < MAX_SECONDS, result
    assert result["rss_mb"] < MAX_RSS_MB, result


def test_the_crafted_png_is_a_real_image(tmp_path):
    """The bombs' PNG stream decodes: at a small size the same construction gives an all-black image."""
    path = tmp_path / "small.png"
    path.write_bytes(png_bomb(3001, 2500))
    image = read_image(path)
    assert image.shape == (2500, 3001, 3) and not image.any()


@pytest.mark.parametrize("after_idat", [False, True], ids=["exif_before_idat", "exif_after_idat"])
def test_png_exif_rotation_is_read_without_decoding(tmp_path, after_idat):
    """image_size swaps width and height exactly where read_image's pixels come out rotated."""
    path = tmp_path / "r.png"
    path.write_bytes(png_bomb(300, 200, _exif(6), after_idat))
    assert image_size(path) == (200, 300)
    assert read_image(path).shape == (300, 200, 3)


def test_a_huge_scan_under_a_raised_limit_is_sized_from_the_header(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(png_bomb(60000, 60000))
    assert check_pixels(path, max_pixels=4_000_000_000) == (60000, 60000)
    assert np.prod(image_size(path)) == 3_600_000_000
