"""What to predict and where: INPUTS expanded to image files, the output plan, shards and option checks."""

from __future__ import annotations

import glob
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from ..manifest import load_manifest
from ..rundir import MARKERS
from ..tiling import plan_tiles

SAVE_KINDS = ("colour", "index", "overlay")  # the default --save
ALL_KINDS = (*SAVE_KINDS, "prob", "uncertainty", "layers")
SAVE_ALIASES = {
    "color": "colour",
    "mask": "colour",
    "colour": "colour",
    "index": "index",
    "overlay": "overlay",
    "prob": "prob",
    "probability": "prob",
    "uncertainty": "uncertainty",
    "layers": "layers",
}
SUFFIXES = {"colour": "_mask.png", "index": "_index.png", "overlay": "_overlay.jpg", "prob": "_prob.png",
            "uncertainty": "_uncertainty.png", "layers": "_layers.tif", "areas": "_areas.json"}  # fmt: skip
# the confidence maps of scans above confidence.TIFF_PIXELS: 16-bit TIFFs instead of the 8-bit PNGs
BIG_SUFFIXES = {"prob": "_prob.tif", "uncertainty": "_uncertainty.tif"}
GLOB_CHARS = re.compile(r"[*?\[]")
INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".gif")  # read_image decodes a GIF's first frame
PREDICT_MARKER = MARKERS["predict"]


@dataclass(frozen=True)
class Job:
    """One input image and where its outputs go: ``base`` + a suffix from ``SUFFIXES``."""

    source: Path
    base: Path

    def output(self, kind: str, big: bool = False) -> Path:
        """Where output ``kind`` goes; ``big``: the 16-bit TIFF of a confidence map (``BIG_SUFFIXES``)."""
        return self.base.with_name(self.base.name + (BIG_SUFFIXES if big else SUFFIXES)[kind])

    def candidates(self, kind: str) -> list[Path]:
        """Every file output ``kind`` may be (a confidence map: its PNG or its TIFF, by the scan's size)."""
        return [self.output(kind), *([self.output(kind, big=True)] if kind in BIG_SUFFIXES else [])]


def collect_inputs(inputs: Sequence[str | Path], exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """INPUTS -> sorted, de-duplicated [(absolute image path, the folder its output path is relative to)].

    Files under ``exclude`` (the output folder) are left out, and so are the folders that hold a predict.json
    (the outputs of any predict) when a folder or pattern is searched, so predicting a folder into a subfolder
    of itself never predicts masks as scans on the next run.
    """
    if not inputs:
        raise ValueError("no INPUTS given; pass image files, folders, glob patterns or a manifest CSV")
    skip = exclude.resolve() if exclude is not None else None
    found: dict[Path, Path] = {}
    for text in inputs:
        for path, base in expand_input(str(text), skip):
            path = Path(os.path.abspath(path))
            if skip is not None and path.resolve().is_relative_to(skip):
                continue
            found.setdefault(path, Path(os.path.abspath(base)))
    if not found:
        raise ValueError(f"no image files in {', '.join(map(str, inputs))} (outside --out); check the paths")
    return sorted(found.items())


def expand_input(text: str, skip: Path | None = None) -> list[tuple[Path, Path]]:
    """One INPUT -> [(image path, base folder)]: a folder, a manifest CSV, a file or a glob pattern.

    Folders (and pattern matches) below ``skip`` or below a predict output folder are not searched.
    """
    path = Path(text)
    if path.is_dir():
        if is_predict_output(path):
            made_by, marker = (
                ("predict", PREDICT_MARKER)
                if (path / PREDICT_MARKER).is_file()
                else ("pseudo-label", MARKERS["pseudo"])
            )
            raise ValueError(
                f"{path}: is the output folder of a damage-smp {made_by} ({marker} is there), not scans; "
                "give the folder of the scans"
            )
        files = list_inputs(path, skip)
        if not files:
            raise ValueError(f"{path}: folder holds no image files ({' '.join(INPUT_SUFFIXES)}); check the path")
        return [(f, path) for f in files]
    if path.is_file() and path.suffix.lower() == ".csv":
        folder = Path(os.path.abspath(path.parent))
        return [(f, folder if Path(f).is_relative_to(folder) else Path(f).parent) for f in manifest_images(path)]
    if path.is_file():
        return [(path, path.parent)]  # any file: one that is not an image is reported as a failure
    if GLOB_CHARS.search(text):
        base = Path(*_until_glob(path.parts))  # the folder before the first wildcard: subfolders are mirrored
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        files = [m for m in matches if m.is_file() and m.suffix.lower() in INPUT_SUFFIXES]
        files = [m for m in files if not _below_predict_output(m, base)]
        if not files:
            raise ValueError(f"{text}: pattern matches no image files; check it (and quote it in the shell)")
        return [(f, base) for f in files]
    raise FileNotFoundError(f"{text}: no such file, folder or glob pattern; check the path")


def is_predict_output(folder: Path) -> bool:
    """A folder of masks damage-smp wrote (predict's, or pseudo-label's): never searched for scans."""
    return (folder / PREDICT_MARKER).is_file() or (folder / MARKERS["pseudo"]).is_file()


def list_inputs(folder: Path, skip: Path | None = None) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files, predict outputs and ``skip`` left out."""
    files = []
    for root, dirs, names in os.walk(folder):  # symlinked folders are not followed (no loops)
        here = Path(root)
        dirs[:] = [d for d in dirs if not _pruned(here / d, skip)]
        files += [here / n for n in names if n.lower().endswith(INPUT_SUFFIXES) and not n.startswith(".")]
    return sorted(f for f in files if f.is_file())


def _pruned(folder: Path, skip: Path | None) -> bool:
    return is_predict_output(folder) or (skip is not None and folder.resolve() == skip)


def _below_predict_output(path: Path, base: Path) -> bool:
    """A pattern match inside a predict output folder below the pattern's fixed part (``base``)."""
    parents = list(path.parents)
    below = parents[: parents.index(base)] if base in parents else parents
    return any(is_predict_output(p) for p in below)


def _until_glob(parts: tuple[str, ...]) -> list[str]:
    out = []
    for p in parts:
        if GLOB_CHARS.search(p):
            break
        out.append(p)
    return out


def manifest_images(csv: Path) -> list[str]:
    """A manifest CSV's images (absolute); a CSV with only an ``image`` column is enough for predicting."""
    try:
        columns = [str(c).strip() for c in pd.read_csv(csv, nrows=0, encoding="utf-8-sig").columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        columns = []
    if {"image", "mask", "split"} <= set(columns):
        return list(load_manifest(csv)["image_path"])
    if "image" not in columns:
        raise ValueError(f"{csv}: a CSV input needs an 'image' column of image paths (relative to the CSV)")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    df.columns = columns
    base = csv.parent
    return [os.path.normpath(os.path.join(os.path.abspath(base), p.strip())) for p in df["image"] if p.strip()]


def plan_outputs(found: list[tuple[Path, Path]], out: Path) -> list[Job]:
    """Output base paths that mirror the input folders below their common root and never collide.

    A stem shared by several inputs of one folder (``x.jpg``, ``x.png``; compared case-insensitively, as some
    file systems do) keeps the file's suffix in the output name: ``x.jpg_mask.png``. The plan depends on the
    whole sorted input list only, so every shard computes the same one.
    """
    root = Path(os.path.commonpath([str(base) for _, base in found]))
    rels = {path: path.relative_to(root) for path, _ in found}
    stems: dict[tuple[Path, str], int] = defaultdict(int)
    for rel in rels.values():
        stems[(rel.parent, rel.stem.lower())] += 1
    used: set[tuple[Path, str]] = set()
    jobs = []
    for path, _ in found:
        rel = rels[path]
        name = rel.stem if stems[(rel.parent, rel.stem.lower())] == 1 else rel.name
        unique, i = name, 2
        while (
            rel.parent,
            unique.lower(),
        ) in used:  # only for contrived names such as x.png.jpg next to x.png
            unique, i = f"{name}~{i}", i + 1
        used.add((rel.parent, unique.lower()))
        jobs.append(Job(path, out / rel.parent / unique))
    return jobs


def parse_save(save: Iterable[str] | str) -> tuple[str, ...]:
    """'colour,index' or ['colour', 'index'] -> ('colour', 'index'); 'color' and 'mask' mean colour."""
    items = save.split(",") if isinstance(save, str) else list(save)
    kinds = []
    for item in (s.strip().lower() for s in items):
        if item not in SAVE_ALIASES:
            raise ValueError(f"--save {item!r}: not an output; choose from {','.join(ALL_KINDS)}")
        if SAVE_ALIASES[item] not in kinds:
            kinds.append(SAVE_ALIASES[item])
    if not kinds:
        raise ValueError(f"--save is empty; choose one or more of {','.join(ALL_KINDS)}")
    return tuple(kinds)


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): this process is shard 2 of 4 (K counts from 1)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--shard {text!r}: write it as K/N with K from 1 to N, e.g. --shard 1/4")
    k, n = int(m.group(1)), int(m.group(2))
    check_shard(k, n)
    return k, n


def check_shard(k: int, n: int) -> None:
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard {k}/{n}: K must be from 1 to N (K counts from 1), e.g. --shard 1/{max(n, 1)}")


def effective_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """(K, N) of this process, 1-based: --shard K/N, split again among torchrun's ranks (WORLD_SIZE, RANK).

    Shard K/N under W ranks is shard (K-1)·W + rank + 1 of N·W: every (K, rank) pair takes a different
    residue class of the sorted inputs, so the parts never overlap and together cover every input.
    """
    k, n = shard or (1, 1)
    check_shard(k, n)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        k, n = (k - 1) * world + rank + 1, n * world
    return k, n


def check_options(tile: int, overlap: float, batch_size: int, workers: int, max_pixels: int, dpi=None) -> None:
    plan_tiles(tile, tile, tile, overlap)  # raises the --tile / --overlap message
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be at least 1, e.g. 4")
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be at least 1, e.g. 2")
    if max_pixels < 1:
        raise ValueError(f"--max-pixels {max_pixels}: must be positive, e.g. {DEFAULT_MAX_PIXELS}")
    if dpi is not None and not dpi > 0:
        raise ValueError(f"--dpi {dpi:g}: must be the scans' resolution in dots per inch, > 0, e.g. 600")
