"""Decoding ARTeFACT's image and annotation bytes: kind, size, EXIF orientation, exact mask values."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


def image_kind(data: bytes) -> str | None:
    """'.png' or '.jpg' from the magic bytes of formats copied as they are; None for others."""
    if data.startswith(_PNG):
        return ".png"
    if data.startswith(_JPEG):
        return ".jpg"
    return None


# ------------------------------------------------------------------------------------------- decoding
def encoded_size(data: bytes, where: str) -> tuple[int, int]:
    """(width, height) from the header only, so that a huge scan is refused before it is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        raise ValueError(f"{where}: not a readable image (corrupt or truncated bytes); re-download the shard") from None


def decode_mask_bytes(data: bytes, where: str = "annotation") -> np.ndarray:
    """Encoded index mask -> (H, W) uint8 (uint16 if values exceed 255), values exactly as stored.

    PIL rather than OpenCV: OpenCV expands palette PNGs to colours, losing the indices. A 3-channel file with
    equal channels is an index mask saved as RGB; one with different channels is refused.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.asarray(im)
    except Exception:
        raise ValueError(f"{where}: not a readable image (corrupt or truncated bytes); re-download the shard") from None
    if arr.ndim == 3:
        arr = arr[..., :1] if arr.shape[2] <= 2 else arr[..., :3]  # drop alpha
        if arr.shape[2] == 3 and not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()):
            raise ValueError(f"{where}: a colour image, not a single-channel index mask; use the 'annotation' column")
        arr = arr[..., 0]
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype != np.uint8:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise ValueError(f"{where}: mask values outside 0..65535; this is not an index mask")
        arr = arr.astype(np.uint8 if arr.max(initial=0) <= 255 else np.uint16)
    return np.ascontiguousarray(arr)


def mask_values(mask: np.ndarray) -> list[int]:
    """The distinct values of a (H, W) mask; a histogram for uint8 (np.bincount would copy it as int64)."""
    if mask.dtype == np.uint8:
        hist = cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel()  # (256,) float32 counts
        return np.flatnonzero(hist).tolist()
    return np.unique(mask).tolist()


def decode_image_bytes(data: bytes, where: str, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """Encoded image -> ((H, W, 3) uint8 BGR, whether EXIF rotation was applied).

    The stored pixel grid is used unless only the EXIF-rotated image matches ``shape`` (the mask's), because
    annotations are drawn on pixel arrays; a mismatch either way is an error naming both sizes.
    """
    buf = np.frombuffer(data, np.uint8)
    raw = _decode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, data, rotate=False)
    if raw is None:
        raise ValueError(f"{where}: not a readable image (corrupt or truncated bytes); re-download the shard")
    if shape is None or raw.shape[:2] == tuple(shape):
        return raw, False
    if exif_orientation(data) != 1:
        turned = _decode(buf, cv2.IMREAD_COLOR, data, rotate=True)
        if turned is not None and turned.shape[:2] == tuple(shape):
            return turned, True
    raise ValueError(
        f"{where}: image is {raw.shape[1]}x{raw.shape[0]} but its annotation is {shape[1]}x{shape[0]}; "
        "the row is inconsistent, re-download the shard"
    )


def _decode(buf: np.ndarray, flags: int, data: bytes, rotate: bool) -> np.ndarray | None:
    arr = cv2.imdecode(buf, flags)
    if arr is not None and arr.size:
        return arr
    try:  # formats OpenCV cannot decode (some TIFF/WebP variants)
        from PIL import ImageOps

        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im) if rotate else im
            return np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
    except Exception:
        return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1 = as stored) of encoded image bytes."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1


# ------------------------------------------------------------------------------------------- manifest
