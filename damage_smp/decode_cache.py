"""DecodeCache: decoded images and class-index masks as memory-mapped ``.npy`` files, shared by processes and runs.

Why: decoding a 4000 x 3000 JPEG takes 0.1-0.3 s; copying a 256-pixel crop out of the decoded array takes
~0.1 ms. The dataset's in-memory cache decodes each image once per process, but it is bounded by RAM (each
loader worker holds its own copy) and starts empty in every run; once a data set outgrows it, every crop
decodes a whole scan again and the model waits. Decoded once into this cache, a crop reads only its own rows
from the page cache (or the disk), every worker process maps the same pages, and the next run of a study
starts warm.

An entry is keyed by the source file's absolute path and a kind (``image``, or the label scheme for masks),
and versioned by the file's size and mtime: a changed file misses, is decoded again, and its stale entries
are deleted. The folder stays under a byte budget: the least recently used entries (file mtime, touched
whenever a process opens one) are deleted first. Writes are atomic (temp file + rename), so concurrent
workers may fill the same entry; the last rename wins, with identical bytes. The cache is an optimisation
only: when it cannot be written (full disk, read-only folder) the decoded array is used as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

FORMAT = 1  # bump when what an entry holds changes: every old entry then misses
STALE_TMP_SECONDS = 3600  # temp files older than this were left by a killed process
DEFAULT_BUDGET_GB = 20.0
DEFAULT_MIN_PIXELS = 1_000_000  # below ~1 MP decoding costs a few ms: the in-memory cache is enough


class DecodeCache:
    """A folder of decoded arrays: ``get(path, kind, decode)`` returns a read-only memmap (or ``decode()``'s
    array when the image is below ``min_pixels`` or the entry cannot be written)."""

    def __init__(self, root: str | Path, budget_bytes: int, min_pixels: int = DEFAULT_MIN_PIXELS):
        if budget_bytes < 0:
            raise ValueError(f"decode cache budget must be >= 0 bytes, got {budget_bytes}")
        self.root = Path(root)
        self.budget_bytes = int(budget_bytes)
        self.min_pixels = int(min_pixels)
        self._lock = threading.Lock()  # one eviction at a time per process (threads of a warm-up)
        self._warned = False

    def __repr__(self) -> str:
        return f"DecodeCache({str(self.root)!r}, budget={self.budget_bytes / 2**30:.1f} GiB)"

    # ------------------------------------------------------------------------------------ lookup
    def entry(self, path: str | Path, kind: str) -> Path:
        """The .npy file that holds (or would hold) the decoded ``path`` in its current version."""
        prefix, version = self._key(path, kind)
        return self.root / f"{prefix}-{version}.npy"

    def get(self, path: str | Path, kind: str, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """The decoded array of ``path``: from the cache, else ``decode()`` stored into it (when big enough)."""
        try:
            entry = self.entry(path, kind)
        except OSError:  # missing or unreadable: decode() raises the user-facing message
            return decode()
        cached = self._open(entry)
        if cached is not None:
            return cached
        array = decode()
        if array.shape[0] * array.shape[1] < self.min_pixels or array.nbytes > self.budget_bytes:
            return array
        try:
            self._store(entry, array)
        except OSError as e:
            self._warn(f"decode cache {self.root}: cannot write ({e}); decoding without it")
            return array
        return self._open(entry) if entry.is_file() else array

    # ------------------------------------------------------------------------------------ disk
    def size_bytes(self) -> int:
        """Bytes held by entries now (temp files of writes in progress excluded)."""
        return sum(size for _, size, _ in self._entries())

    def clear(self) -> None:
        """Delete every entry (the folder itself stays)."""
        for _, _, path in self._entries():
            path.unlink(missing_ok=True)

    def _key(self, path: str | Path, kind: str) -> tuple[str, str]:
        path = os.path.abspath(path)
        st = os.stat(path)
        prefix = hashlib.sha1(f"{path}\0{kind}".encode()).hexdigest()[:20]
        version = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}:{FORMAT}".encode()).hexdigest()[:12]
        return prefix, version

    def _open(self, entry: Path) -> np.ndarray | None:
        try:
            array = np.load(entry, mmap_mode="r")  # (H, W[, 3]) uint8, read-only, pages loaded on use
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):  # a damaged entry (e.g. a disk error): decode again
            with contextlib.suppress(OSError):
                entry.unlink(missing_ok=True)
            return None
        try:
            os.utime(entry)  # recency for the budget's least-recently-used eviction
        except OSError:
            pass
        return array

    def _store(self, entry: Path, array: np.ndarray) -> None:
        prefix = entry.name.split("-", 1)[0]
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for stale in self.root.glob(f"{prefix}-*.npy"):  # older versions of this file: never valid again
                if stale != entry:
                    stale.unlink(missing_ok=True)
            self._make_room(array.nbytes + 128)  # + the .npy header
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array))
            os.replace(tmp, entry)
        finally:
            tmp.unlink(missing_ok=True)

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every entry; also deletes temp files a killed process left behind."""
        out = []
        now = time.time()
        try:
            scan = list(os.scandir(self.root))
        except FileNotFoundError:
            return out
        for e in scan:
            try:
                st = e.stat()
            except FileNotFoundError:  # deleted by another process meanwhile
                continue
            if e.name.endswith(".npy"):
                out.append((st.st_mtime, st.st_size, Path(e.path)))
            elif e.name.endswith(".tmp") and now - st.st_mtime > STALE_TMP_SECONDS:
                Path(e.path).unlink(missing_ok=True)
        return out

    def _make_room(self, need: int) -> None:
        """Delete least recently used entries until ``need`` more bytes fit the budget (and the disk)."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        free = shutil.disk_usage(self.root).free
        for _, size, path in entries:
            if total + need <= self.budget_bytes and need < free:
                break
            path.unlink(missing_ok=True)  # a process that mapped it keeps its pages until it closes the map
            total -= size
            free += size

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=3)


def default_decode_cache() -> DecodeCache | None:
    """The cache training uses: ``$DAMAGE_SMP_CACHE/decoded`` (else ``~/.cache/damage-smp/decoded``).

    Budget: ``$DAMAGE_SMP_DECODE_CACHE_GB`` (default 20, never more than a quarter of the disk's free space
    when the cache is created); ``0`` turns the cache off (None).
    """
    text = os.environ.get("DAMAGE_SMP_DECODE_CACHE_GB", str(DEFAULT_BUDGET_GB))
    try:
        gb = float(text)
    except ValueError:
        raise ValueError(
            f"DAMAGE_SMP_DECODE_CACHE_GB={text!r} is not a number; set it to a size in GB, or 0 to turn it off"
        ) from None
    if gb <= 0:
        return None
    root = cache_root() / "decoded"
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
    budget = min(int(gb * 2**30), shutil.disk_usage(probe).free // 4)
    return DecodeCache(root, budget)


def cache_root() -> Path:
    """$DAMAGE_SMP_CACHE, else $XDG_CACHE_HOME/damage-smp (the same root as weights.cache_dir)."""
    if os.environ.get("DAMAGE_SMP_CACHE"):
        return Path(os.environ["DAMAGE_SMP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "damage-smp"
