"""``manifest build``: pair images with their masks by relative stem, group them, split them, write the CSV."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from ..labels import LabelScheme
from .audit import SHOWN, count_classes
from .read import SPLITS, refuse_overwrite, write_manifest
from .split import assign_splits, check_fractions, leave_out_splits, match_value

MASK_SUFFIX = re.compile(r"[_\-. ]?(masks?|labels?|gt|annotations?|annot|seg|segmentation)$", re.IGNORECASE)


def build_manifest(
    images_dir: str | Path,
    masks_dir: str | Path,
    out_csv: str | Path,
    scheme: LabelScheme | None = None,
    val: float | None = None,
    test: float | None = None,
    seed: int = 0,
    group_by: str | None = None,
    leave_out: str | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    split: str | None = None,
) -> pd.DataFrame:
    """Pair images with masks by relative stem, split them, write the CSV. Returns it (attrs: warnings).

    Mask stems may carry a suffix (``_mask``, ``_label``, ``-gt`` ...). ``group_by`` is a regex searched in
    each image's path relative to ``images_dir`` without its extension (``^([^/]+)/`` = first subfolder,
    ``(.+)_\\d+$`` = stem before a trailing number); its first group (or the whole match) names the image's
    group, written as a ``group`` column, and no group spans two splits. ``leave_out`` puts one group in test.
    ``split`` puts every pair in that split instead (then ``val``/``test`` must not be given; they default to
    0.15 each). With ``scheme``, the first masks are decoded as a quick check (``manifest check`` audits all of them).
    """
    images_dir, masks_dir, out_csv = Path(images_dir), Path(masks_dir), Path(out_csv)
    check_one_split(split, val, test, leave_out)
    for flag, folder in (("--images", images_dir), ("--masks", masks_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder}: folder not found; check the path")
    refuse_overwrite([out_csv], overwrite)
    val, test = 0.15 if val is None else val, 0.15 if test is None else test
    check_fractions(val, test)
    pairs, warnings = pair_files(images_dir, masks_dir)
    groups = None
    if group_by is not None:
        groups = groups_from_regex(group_by, [key for key, _, _ in pairs])
    elif leave_out is not None:
        raise ValueError("--leave-out needs --group-by REGEX, which says what the groups are")
    if split is not None:
        splits, warns = np.full(len(pairs), split, dtype=object), []
    elif leave_out is not None:
        value = leave_out.split("=", 1)[1] if leave_out.startswith("group=") else leave_out
        value = match_value(pd.Series(groups), value.strip(), "group")
        splits, warns = leave_out_splits(groups, value, val, seed, "group")
    else:
        splits, warns = assign_splits(len(pairs), groups, val, test, seed)
    warnings += warns
    if scheme is not None:
        warnings += spot_check_masks([m for _, _, m in pairs[:3]], scheme, max_pixels)
    return write_manifest(pairs_frame(pairs, splits, groups), out_csv, warnings)


def check_one_split(split: str | None, val: float | None, test: float | None, leave_out: str | None) -> None:
    """--split NAME puts every pair in one split: a known name, and no other way of splitting beside it."""
    if split is None:
        return
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: unknown split; choose one of {', '.join(SPLITS)}")
    others = [
        flag for flag, value in (("--val", val), ("--test", test), ("--leave-out", leave_out)) if value is not None
    ]
    if others:
        raise ValueError(
            f"--split {split} puts every pair in the {split!r} split, but {' and '.join(others)} also split them; "
            f"drop {' and '.join(others)} (or drop --split)"
        )


def pairs_frame(pairs: list[tuple[str, Path, Path]], splits, groups: np.ndarray | None) -> pd.DataFrame:
    """The manifest rows (absolute paths) of (key, image, mask) pairs, their splits and groups."""
    df = pd.DataFrame(
        {
            "image_path": [os.path.abspath(i) for _, i, _ in pairs],
            "mask_path": [os.path.abspath(m) for _, _, m in pairs],
            "split": list(splits),
        }
    )
    if groups is not None:
        df["group"] = groups
    df.attrs["group_columns"] = ["group"] if groups is not None else []
    return df


def pair_files(images_dir: Path, masks_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(relative stem, image, mask) pairs sorted by stem, plus warnings about unpaired or ambiguous files."""
    images_dir, masks_dir = images_dir.resolve(), masks_dir.resolve()
    image_files, mask_files = _own_files(images_dir, masks_dir)
    images = _by_key(image_files, images_dir, strip_suffix=False)
    masks = _by_key(mask_files, masks_dir, strip_suffix=True)
    warnings = [
        f"{len(v)} files share the stem {k!r} ({', '.join(p.name for p in v)}); skipped, keep one"
        for d in (images, masks)
        for k, v in d.items()
        if len(v) > 1
    ]
    pairs, paired, used = _match(images, masks, images_dir)
    lone = {
        "image(s) without a mask": (
            [v[0] for k, v in sorted(images.items()) if len(v) == 1 and k not in paired],
            images_dir,
        ),
        "mask(s) without an image": (
            [v[0] for k, v in sorted(masks.items()) if len(v) == 1 and k not in used],
            masks_dir,
        ),
    }
    for what, (files, root) in lone.items():
        if files:
            shown = ", ".join(p.relative_to(root).as_posix() for p in files[:SHOWN])
            warnings.append(f"{len(files)} {what} skipped: {shown}{' ...' if len(files) > SHOWN else ''}")
    if not pairs:
        raise ValueError(
            f"no image in {images_dir} has a mask in {masks_dir} with the same name (e.g. image "
            f"{image_files[0].relative_to(images_dir).as_posix()}, "
            f"mask {mask_files[0].relative_to(masks_dir).as_posix()}); "
            "name masks after their images, optionally with a suffix such as _mask or _label"
        )
    return pairs, warnings


def _own_files(images_dir: Path, masks_dir: Path) -> tuple[list[Path], list[Path]]:
    """The image and mask files of two (resolved) folders; one folder nested in the other, or the same one."""
    image_files, mask_files = _list(images_dir), _list(masks_dir)
    if images_dir != masks_dir:  # one folder nested in the other: each keeps only its own files
        if masks_dir.is_relative_to(images_dir):
            image_files = [p for p in image_files if not p.is_relative_to(masks_dir)]
        if images_dir.is_relative_to(masks_dir):
            mask_files = [p for p in mask_files if not p.is_relative_to(images_dir)]
    else:  # one folder: a.png + a_mask.png
        mask_files = [p for p in mask_files if MASK_SUFFIX.search(p.stem)]
        image_files = [p for p in image_files if not MASK_SUFFIX.search(p.stem)]
    if not image_files:
        raise ValueError(f"--images {images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    if not mask_files:
        raise ValueError(f"--masks {masks_dir}: no mask files ({', '.join(IMAGE_SUFFIXES)}) found")
    return image_files, mask_files


def _match(
    images: dict[str, list[Path]], masks: dict[str, list[Path]], images_dir: Path
) -> tuple[list[tuple[str, Path, Path]], set[str], set[str]]:
    """-> (pairs, image keys that have a mask, mask keys used); a key with several files pairs with nothing."""
    # a mask folder may be flat while images sit in subfolders: fall back to the bare stem when unique
    mask_by_name = defaultdict(list)
    for k in masks:
        mask_by_name[k.rsplit("/", 1)[-1]].append(k)
    pairs, used, paired = [], set(), set()
    for key, found in sorted(images.items()):
        name = key.rsplit("/", 1)[-1]
        mkey = key if key in masks else (mask_by_name[name][0] if len(mask_by_name.get(name, [])) == 1 else None)
        if mkey is not None:
            paired.add(key)  # ambiguous ones are reported as such, not as unpaired
        if mkey is None or mkey in used or len(found) > 1 or len(masks[mkey]) > 1:
            continue
        used.add(mkey)
        pairs.append((found[0].relative_to(images_dir).with_suffix("").as_posix(), found[0], masks[mkey][0]))
    return pairs, paired, used


def _list(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _by_key(files: list[Path], root: Path, strip_suffix: bool) -> dict[str, list[Path]]:
    """Relative path without extension, lower case (mask suffixes removed) -> files."""
    out = defaultdict(list)
    for p in files:
        rel = p.relative_to(root).with_suffix("")
        stem = MASK_SUFFIX.sub("", rel.name) if strip_suffix else rel.name
        out[rel.with_name(stem or rel.name).as_posix().lower()].append(p)
    return out


def groups_from_regex(pattern: str, rels: list[str], relative_to: str = "--images") -> np.ndarray:
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"--group-by {pattern!r}: not a valid regular expression ({e})") from None
    groups, unmatched = [], []
    for rel in rels:
        m = regex.search(rel)
        if m is None:
            unmatched.append(rel)
            continue
        groups.append(next((g for g in m.groups() if g is not None), m.group(0)))
    if unmatched:
        raise ValueError(
            f"--group-by {pattern!r}: does not match {len(unmatched)} image path(s), e.g. {unmatched[0]!r}; "
            f"it is searched in each path relative to {relative_to}, without extension"
        )
    return np.asarray(groups, dtype=str)


def spot_check_masks(masks: list[Path], scheme: LabelScheme, max_pixels: int) -> list[str]:
    for mask in masks:
        try:
            count_classes(mask, scheme, max_pixels)
        except ValueError as e:
            return [str(e)]
    return []
