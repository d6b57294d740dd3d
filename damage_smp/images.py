"""Reading and writing image files: any common format in, correct 8-bit RGB out; atomic writes.

Images: grayscale, RGBA, 16-bit and EXIF-rotated files all become (H, W, 3) uint8 RGB as a viewer shows them.
Masks are read raw (no EXIF, no colour conversion): (H, W) values or (H, W, 3) RGB colours.
A pixel limit guards against decompression bombs; ``--max-pixels`` raises it for genuinely huge scans.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
DEFAULT_MAX_PIXELS = 200_000_000  # 200 MP: above ARTeFACT's largest scans, far below a bomb's billions

Image.MAX_IMAGE_PIXELS = None  # PIL only reads headers here; check_pixels applies our own, configurable limit
cv2.setNumThreads(1)  # decoding runs in loader workers and prefetch threads; one thread each avoids oversubscription


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names the file and the fix."""


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only, after EXIF rotation; raises ImageReadError."""
    return _header_size(Path(path), DEFAULT_MAX_PIXELS)


def image_dpi(path: str | Path) -> tuple[float, float] | None:
    """(x, y) dots per inch from the file's header (PNG pHYs in metres, JPEG JFIF, TIFF resolution tags), as a
    viewer shows the image (swapped by an EXIF 90° rotation); None when the file does not say (never a guess)."""
    try:
        with Image.open(path) as im:  # lazy: the header only
            dpi = im.info.get("dpi")
            orientation = _orientation(im, Path(path))
    except Exception:
        return None
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return None
    if not (x > 0 and y > 0 and np.isfinite(x) and np.isfinite(y)):
        return None
    x, y = (float(round(v)) if abs(v - round(v)) < 0.02 else v for v in (x, y))  # PNG: 600 dpi reads 599.9988
    return (y, x) if orientation in (5, 6, 7, 8) else (x, y)


def mm2_per_pixel(dpi: Sequence[float] | None) -> float | None:
    """The area of one pixel in mm² at (x, y) dots per inch: (25.4 / x) * (25.4 / y); None when unknown."""
    if not dpi:
        return None
    return (25.4 / float(dpi[0])) * (25.4 / float(dpi[1]))


def dpi_text(dpi: Sequence[float] | None) -> str:
    """areas.csv's dpi cell: "600", "600x300" (x by y), or empty when unknown."""
    if not dpi:
        return ""
    return f"{dpi[0]:g}" if dpi[0] == dpi[1] else f"{dpi[0]:g}x{dpi[1]:g}"


def parse_dpi_text(text: str) -> tuple[float, float] | None:
    """dpi_text's cell back: "600" -> (600, 600), "600x300" -> (600, 300), "" (or nonsense) -> None."""
    try:
        parts = [float(v) for v in str(text).lower().split("x")] if str(text).strip() else []
    except ValueError:
        return None
    if len(parts) == 1:
        parts *= 2
    return (parts[0], parts[1]) if len(parts) == 2 and all(v > 0 for v in parts) else None


def _header_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """image_size, where a file PIL cannot parse is decoded by OpenCV only if its header is within max_pixels."""
    _check_file(path)
    try:
        with Image.open(path) as im:  # lazy: reads the header, no pixel data
            w, h = im.size
            orientation = _orientation(im, path)
    except Exception:
        ihdr = _png_ihdr(path)  # PIL refuses some PNGs that libpng reads, e.g. a bad checksum in a text chunk
        if ihdr is not None and ihdr[0] * ihdr[1] > max_pixels:
            return ihdr
        return _cv2_size(path)  # a full decode, which also proves the file readable
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _orientation(im: Image.Image, path: Path) -> int:
    """The EXIF orientation (1: as stored), without decoding: PIL's getexif() on a PNG loads the whole image."""
    try:
        if im.format != "PNG":
            return int(im.getexif().get(0x0112, 1))  # JPEG, TIFF, WebP: EXIF sits in the parsed header
        data = _png_exif(path)
        if data is None:
            return 1
        exif = Image.Exif()
        exif.load(data)
        return int(exif.get(0x0112, 1))
    except Exception:  # a corrupt EXIF block: the size as stored, as OpenCV reads the pixels
        return 1


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_exif(path: Path) -> bytes | None:
    """The eXIf chunk of a PNG, found by seeking past every other chunk's data: nothing is decompressed.

    OpenCV applies an eXIf chunk that follows the image data too, which PIL reaches only by decoding.
    """
    with open(path, "rb") as f:
        f.seek(len(_PNG_SIGNATURE))
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                return f.read(length)
            if kind == b"IEND":
                break
            f.seek(length + 4, os.SEEK_CUR)  # the chunk's data and its CRC
    return None


def _png_ihdr(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk if its checksum holds; None for any other file."""
    with open(path, "rb") as f:
        head = f.read(33)  # signature, IHDR length and type, 13 data bytes, CRC
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
        return None
    w, h = struct.unpack(">II", head[16:24])
    return w, h


def _cv2_size(path: Path) -> tuple[int, int]:
    arr = _imread(path, cv2.IMREAD_UNCHANGED)
    return arr.shape[1], arr.shape[0]


def check_pixels(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Refuse an image above ``max_pixels`` before decoding it; returns (width, height)."""
    w, h = _header_size(Path(path), max_pixels)
    if w * h > max_pixels:
        raise ImageReadError(
            f"{path}: {w}x{h} = {w * h / 1e6:.0f} MP is above the {max_pixels / 1e6:.0f} MP limit "
            "(a guard against decompression bombs); if this is a real scan, raise it with --max-pixels"
        )
    return w, h


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any image file -> (H, W, 3) uint8 RGB, EXIF orientation applied, 16-bit scaled, alpha dropped."""
    path = Path(path)
    check_pixels(path, max_pixels)
    # IMREAD_COLOR applies EXIF orientation and turns gray/RGBA into 3 channels; ANYDEPTH keeps 16 bit
    arr = _imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    arr = to_uint8(arr, path)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask file -> (H, W) integer values or (H, W, 3) uint8 RGB colours, exactly as stored."""
    path = Path(path)
    check_pixels(path, max_pixels)
    arr = _imread(path, cv2.IMREAD_UNCHANGED)
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.shape[2] == 1:
            return arr[..., 0]
        if arr.dtype != np.uint8:
            raise ImageReadError(f"{path}: a 16-bit colour mask; save colour masks as 8-bit RGB PNG")
        return np.ascontiguousarray(arr[..., ::-1])  # BGR -> RGB
    return arr


def to_uint8(arr: np.ndarray, path: Path | str = "image") -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if arr.dtype in (np.float32, np.float64):
        top = 1.0 if float(np.nanmax(arr)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}; convert it to 8- or 16-bit")


def _check_file(path: Path) -> None:
    try:
        info = path.stat()  # one system call for the three checks (a batch makes two per image)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF):  # what Path.exists() calls missing
            raise
        raise ImageReadError(f"{path}: file not found; check the path") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageReadError(f"{path}: is a folder, not an image file")
    if info.st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes); re-export or remove it")


def _imread(path: Path, flags: int) -> np.ndarray:
    _check_file(path)
    # np.fromfile + imdecode handles non-ASCII paths, which cv2.imread does not on every platform
    data = np.fromfile(str(path), dtype=np.uint8)
    if is_truncated_jpeg(data):  # OpenCV would decode a cut-off JPEG without error, grey below the cut
        raise ImageReadError(f"{path}: truncated JPEG (its data ends mid-image); re-export or re-copy the file")
    arr = cv2.imdecode(data, flags)
    if arr is None or arr.size == 0:
        arr = _pil_fallback(path, flags)
    if arr is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt, truncated or not an image); re-export it")
    return arr


def is_truncated_jpeg(data: bytes | np.ndarray) -> bool:
    """True for a JPEG whose image data ends early. Cheap unless the end marker is missing from the tail.

    Files with data after the end marker (e.g. motion photos) lack it in the tail too, so a full decode by
    PIL, which raises on truncation, decides.
    """
    data = data.tobytes() if isinstance(data, np.ndarray) else data
    if data[:2] != b"\xff\xd8" or b"\xff\xd9" in data[-4096:]:
        return False
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:
        return True
    return False


def _pil_fallback(path: Path, flags: int) -> np.ndarray | None:
    """Formats OpenCV cannot decode (some TIFF/WebP variants); also catches truncated files."""
    try:
        with Image.open(path) as im:
            im.load()
            if flags & cv2.IMREAD_COLOR:
                from PIL import ImageOps

                im = ImageOps.exif_transpose(im).convert("RGB")
                return np.asarray(im)[..., ::-1].copy()
            arr = np.asarray(im)
            return arr[..., [2, 1, 0, *range(3, arr.shape[2])]].copy() if arr.ndim == 3 else arr
    except Exception:
        return None


# ------------------------------------------------------------------------------------------- writing
class WriteError(OSError):
    """A file that could not be written (full disk, read-only folder); the message names the file and the fix.

    ``errno`` is the system's error number, ``reason`` its words (e.g. 'No space left on device'), ``target``
    the file that was not written.
    """

    reason: str = ""
    target: Path | None = None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill never leaves half a file.

    On any failure the temp file is removed and an existing ``path`` is untouched; raises WriteError.
    """
    with _atomic_file(Path(path)) as f:
        f.write(data)


def atomic_open(path: str | Path):
    """A context manager: a binary file (temp file in the same folder) that replaces ``path`` when the block
    ends without an error, as atomic_write_bytes does; for writers that stream (tifffile)."""
    return _atomic_file(Path(path))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy src to dst as atomic_write_bytes writes (temp file, fsync, rename), streaming: big files are fine."""
    with open(src, "rb") as source, _atomic_file(Path(dst)) as f:
        shutil.copyfileobj(source, f, 1 << 20)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


# the temp files of _atomic_file: mkstemp(prefix=".NAME.", suffix=".tmp"), 8 random [a-z0-9_] in between
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def _atomic_file(path: Path):
    """A binary file whose bytes replace ``path`` only when the block ends without an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; outputs get the usual umask-based mode
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_error(path: Path, e: OSError) -> WriteError:
    if isinstance(e, WriteError):
        return e
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or write to another disk) and run the command again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "the folder is not writable; fix its permissions or write to another folder"
    else:
        fix = "check the disk and the folder, then run the command again"
    err = WriteError(f"could not write {path} ({reason}); {fix}")
    err.errno, err.reason, err.target = e.errno, reason, path
    return err


def encode_image(arr: np.ndarray, suffix: str, quality: int = 92) -> bytes:
    """(H, W) or (H, W, 3) RGB array -> encoded bytes for suffix ('.png', '.jpg', ...)."""
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        raise OSError(f"could not encode an image as {suffix}")
    return buf.tobytes()


def write_image(path: str | Path, arr: np.ndarray, quality: int = 92) -> None:
    """Atomically write an RGB or single-channel array; the format follows the suffix."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(arr, path.suffix, quality))


def list_images(folder: str | Path) -> list[Path]:
    """Image files under folder, recursively, sorted; hidden files skipped."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
