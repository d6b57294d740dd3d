"""``manifest build --from-folders ROOT``: a data set that comes already split into folders.

The layouts recognised, tried in this order (names in any case; a split folder may be called train or
training, val, valid or validation, test or testing):

1. ``ROOT/{train,val,test}/{images,masks}``: a folder per split, each with an image and a mask folder;
2. ``ROOT/{images,masks}/{train,val,test}``: an image and a mask folder, each with a folder per split
   (ADE20K's ``images/training`` + ``annotations/training``);
3. sibling folders per split, named split + tag or tag + split: ``train_img`` + ``train_lab`` (DeepCrack),
   ``train`` + ``trainannot`` (CamVid), ``train`` + ``train_labels`` (Massachusetts roads), ``train`` +
   ``train_masks`` (Carvana), ``images_train`` + ``masks_train``;
4. ``ROOT/{train,val,test}/`` holding images and their masks together (``p001.jpg`` + ``p001_mask.png``).

An image folder is called ``images``, ``image``, ``imgs``, ``img``, ``rgb`` or ``input(s)``; a mask folder
``masks``, ``mask``, ``labels``, ``label``, ``lab``, ``annotations``, ``annotation``, ``annot``, ``gt``,
``groundtruth``, ``segmentation(s)``, ``seg`` or ``target(s)``. Inside a split, images pair with masks as in
``manifest build --images --masks``. With ``--val F`` and no val folder, a seeded share F of train becomes val.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..images import DEFAULT_MAX_PIXELS
from ..labels import LabelScheme
from .build import MASK_SUFFIX, groups_from_regex, pair_files, pairs_frame, spot_check_masks
from .read import SPLITS, refuse_overwrite, write_manifest
from .split import assign_splits

IMAGE_TAGS = ("images", "image", "imgs", "img", "rgb", "inputs", "input")
MASK_TAGS = (
    "masks", "mask", "labels", "label", "labs", "lab", "annotations", "annotation", "annots", "annot",
    "groundtruth", "ground_truth", "gt", "segmentations", "segmentation", "seg", "targets", "target",
)  # fmt: skip
SPLIT_NAMES = {"training": "train", "train": "train", "validation": "val", "valid": "val", "val": "val",
               "testing": "test", "test": "test"}  # fmt: skip
_SPLIT = "|".join(SPLIT_NAMES)  # longest first, so 'training' is not train + 'ing'
_TAG = "|".join(sorted(IMAGE_TAGS + MASK_TAGS, key=len, reverse=True))
_SPLIT_TAG = re.compile(rf"(?P<split>{_SPLIT})(?:[ _\-.]?(?P<tag>{_TAG}))?", re.IGNORECASE)
_TAG_SPLIT = re.compile(rf"(?P<tag>{_TAG})[ _\-.]?(?P<split>{_SPLIT})", re.IGNORECASE)
LAYOUTS = (  # (name, as the error lists it)
    ("ROOT/{train,val,test}/{images,masks}",) * 2,
    ("ROOT/{images,masks}/{train,val,test}",) * 2,
    ("sibling folders", "sibling folders such as train_img + train_lab, train + trainannot, train + train_masks"),
    ("images and masks together", "ROOT/{train,val,test}/ with images and *_mask files together"),
)

Found = list[tuple[str, Path, Path]]  # (split, image folder, mask folder), in SPLITS order


def _folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_of(name: str) -> str | None:
    """'Training' -> 'train'; a name that is no bare split name -> None."""
    return SPLIT_NAMES.get(name.lower())


def _named(folder: Path, tags: tuple[str, ...]) -> Path | None:
    """The subfolder of ``folder`` called one of ``tags`` (the first tag that exists wins)."""
    by_name = {p.name.lower(): p for p in _folders(folder)}
    return next((by_name[t] for t in tags if t in by_name), None)


def _split_first(root: Path) -> Found:
    found = []
    for d in _folders(root):
        split = _split_of(d.name)
        images, masks = (_named(d, IMAGE_TAGS), _named(d, MASK_TAGS)) if split else (None, None)
        if images and masks:
            found.append((split, images, masks))
    return found


def _role_first(root: Path) -> Found:
    images, masks = _named(root, IMAGE_TAGS), _named(root, MASK_TAGS)
    if images is None or masks is None:
        return []
    image_splits = {_split_of(d.name): d for d in _folders(images) if _split_of(d.name)}
    mask_splits = {_split_of(d.name): d for d in _folders(masks) if _split_of(d.name)}
    return [(s, image_splits[s], mask_splits[s]) for s in image_splits if s in mask_splits]


def _siblings(root: Path) -> Found:
    roles: dict[tuple[str, str], list[tuple[int, Path]]] = {}
    for d in _folders(root):
        m = _SPLIT_TAG.fullmatch(d.name) or _TAG_SPLIT.fullmatch(d.name)
        if m is None:
            continue
        tag = (m.group("tag") or "").lower()
        role = "image" if tag in ("", *IMAGE_TAGS) else "mask"
        roles.setdefault((SPLIT_NAMES[m.group("split").lower()], role), []).append((tag == "", d))
    found = []
    for split in SPLITS:
        if (split, "image") in roles and (split, "mask") in roles:  # a tagged image folder before a bare one
            found.append((split, min(roles[split, "image"])[1], min(roles[split, "mask"])[1]))
    return found


def _together(root: Path) -> Found:
    found = []
    for d in _folders(root):
        split = _split_of(d.name)
        if split and any(MASK_SUFFIX.search(p.stem) for p in d.rglob("*") if p.is_file()):
            found.append((split, d, d))
    return found


def find_layout(root: Path) -> tuple[str, Found]:
    """(layout, [(split, image folder, mask folder)]) of the first layout that fits ROOT; ValueError if none."""
    for (layout, _), finder in zip(LAYOUTS, (_split_first, _role_first, _siblings, _together), strict=True):
        found = finder(root)
        if found:
            return layout, sorted(found, key=lambda f: SPLITS.index(f[0]))
    seen = ", ".join(p.name for p in _folders(root)[:8]) or "no subfolders"
    raise ValueError(
        f"--from-folders {root}: no known layout (found {seen}); tried {'; '.join(long for _, long in LAYOUTS)}. "
        "Rename the folders to one of these, or use --images DIR --masks DIR [--split NAME] per split"
    )


def check_sources(
    images: Path | None, masks: Path | None, root: Path | None, split: str | None, test, leave_out
) -> None:
    """--images + --masks, or --from-folders alone: say which flags clash."""
    if root is None:
        if images is None or masks is None:
            missing = "--masks DIR" if images is not None else "--images DIR" if masks is not None else "both"
            raise ValueError(
                f"give --images DIR and --masks DIR (missing: {missing}), or --from-folders ROOT for a tree "
                "already split into train/val/test folders"
            )
        return
    clash = [f for f, v in (("--images", images), ("--masks", masks), ("--split", split), ("--test", test),
                            ("--leave-out", leave_out)) if v is not None]  # fmt: skip
    if clash:
        raise ValueError(
            f"--from-folders finds the images, masks and splits itself; drop {' and '.join(clash)} "
            "(only --val F, to carve val out of train, --group-by and --seed go with it)"
        )


def build_from_folders(
    root: str | Path,
    out_csv: str | Path,
    scheme: LabelScheme | None = None,
    val: float | None = None,
    seed: int = 0,
    group_by: str | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> pd.DataFrame:
    """Pair each split's folders of a pre-split tree, optionally carve val out of train, write the CSV.

    Returns the written manifest (attrs: warnings, layout).
    """
    root, out_csv = Path(root), Path(out_csv)
    if not root.is_dir():
        raise FileNotFoundError(f"--from-folders {root}: folder not found; check the path")
    refuse_overwrite([out_csv], overwrite)
    layout, found = find_layout(root)
    _check_val(val, found, root)
    frames, warnings = [], []
    for split, images, masks in found:
        try:
            pairs, warns = pair_files(images, masks)
        except ValueError as e:
            raise ValueError(f"--from-folders {root}, split {split!r}: {e}") from None
        warnings += [f"{split}: {w}" for w in warns]
        keys = [key for key, _, _ in pairs]
        groups = groups_from_regex(group_by, keys, "each split's image folder") if group_by is not None else None
        splits = np.full(len(pairs), split, dtype=object)
        if split == "train" and val:
            splits, warns = assign_splits(len(pairs), groups, val, 0.0, seed)
            warnings += warns
        frames.append(pairs_frame(pairs, splits, groups))
    df = pd.concat(frames, ignore_index=True)
    df.attrs["group_columns"] = frames[0].attrs["group_columns"]
    warnings += _tree_warnings(df)
    if scheme is not None:
        warnings += spot_check_masks(df["mask_path"].tolist()[:3], scheme, max_pixels)
    written = write_manifest(df, out_csv, warnings)
    used = ", ".join(f"{s}: {_shown(i, root)} + {_shown(m, root)}" for s, i, m in found)
    written.attrs["layout"] = f"{layout} ({used})"
    return written


def _shown(folder: Path, root: Path) -> str:
    return folder.relative_to(root).as_posix() + "/"


def _check_val(val: float | None, found: Found, root: Path) -> None:
    if val is None:
        return
    folders = {split: images for split, images, _ in found}
    if "val" in folders:
        raise ValueError(
            f"--val {val:g}: {root} already has a val split ({folders['val']}); drop --val "
            "(it carves val out of train only where there is no val folder)"
        )
    if "train" not in folders:
        raise ValueError(f"--val {val:g}: {root} has no train split to carve val out of; drop --val")
    if not 0 < val < 1:
        raise ValueError(f"--val {val:g}: the share of train to carve out as val must be in (0, 1), e.g. 0.15")


def _tree_warnings(df: pd.DataFrame) -> list[str]:
    warnings = []
    present = set(df["split"])
    if "val" not in present:
        warnings.append("no val split: training needs one; pass --val 0.15 to carve it out of train")
    for split in ("train", "test"):
        if split not in present:
            warnings.append(f"no {split} split in the folders")
    if "group" in df.columns:
        spans = df.groupby("group")["split"].nunique()
        shared = sorted(spans.index[spans > 1])
        if shared:
            more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
            warnings.append(
                f"group(s) {', '.join(shared[:3])}{more} appear in more than one split folder (as the data set "
                "was split); `damage-smp manifest split --by group` re-splits them whole"
            )
    return warnings
