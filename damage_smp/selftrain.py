"""The training side of self-training: a ``--pseudo`` folder's rows, checked, ready to join the training images.

``damage-smp pseudo-label`` writes the folder (see pseudo.py); ``train --pseudo DIR`` reads it here. Its rows join
the training set only, decoded with ``index_scheme`` (pixel value = class index, 255 = not confident) and
weighted ``--pseudo-weight`` in the loss. An image that is also a labelled image of the manifest is dropped: a
val/test image would leak the evaluation into training, and a labelled train image has a better mask already.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import TrainConfig
from .images import image_size
from .labels import IGNORE_INDEX, LabelScheme
from .manifest import load_manifest
from .rundir import MARKERS
from .runs import read_json_lenient

WRITTEN_BY = "damage-smp pseudo-label"


def index_scheme(scheme: LabelScheme) -> LabelScheme:
    """The scheme that reads pseudo masks: class i is pixel value i, 255 is ignore (names, colours kept)."""
    if scheme.num_classes >= IGNORE_INDEX:
        raise ValueError(
            f"label scheme {scheme.name!r} has {scheme.num_classes} classes; pseudo masks hold at most 254"
        )
    classes = tuple(dataclasses.replace(c, values=(i,), aliases=()) for i, c in enumerate(scheme.classes))
    return LabelScheme(f"{scheme.name}-index", classes, ignore_values=(IGNORE_INDEX,), clean=scheme.clean,
                       background=scheme.background)  # fmt: skip


@dataclass
class PseudoSet:
    """The pseudo-labelled rows a run trains on, the scheme their masks are read with, and what config.json keeps."""

    rows: pd.DataFrame
    scheme: LabelScheme
    weight: float
    record: dict  # config.json "self_training"

    def training_inputs(self, labelled: pd.DataFrame, scheme: LabelScheme) -> tuple[pd.DataFrame, list, list]:
        """(all training rows, each row's mask scheme, each row's loss weight): labelled rows first."""
        rows = pd.concat([labelled[["image_path", "mask_path"]], self.rows[["image_path", "mask_path"]]],
                         ignore_index=True)  # fmt: skip
        rows.attrs = dict(labelled.attrs)
        n, k = len(labelled), len(self.rows)
        return rows, [scheme] * n + [self.scheme] * k, [1.0] * n + [self.weight] * k


def load_pseudo(cfg: TrainConfig, scheme: LabelScheme, manifest: pd.DataFrame, say=None) -> PseudoSet | None:
    """``cfg.pseudo``'s rows, checked (made by pseudo-label, finished, same label scheme, masks as big as their
    images), without the manifest's labelled images; None without --pseudo. ``say`` prints what was dropped."""
    if cfg.pseudo is None:
        return None
    folder = Path(cfg.pseudo)
    info = read_info(folder)
    check_scheme(folder, info, scheme, cfg)
    rows = load_manifest(folder / "manifest.csv")
    rows = rows[rows["split"] == "train"].reset_index(drop=True)
    missing = [p for p in (*rows["image_path"], *rows["mask_path"]) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"--pseudo {folder}: {missing[0]} is missing ({len(missing)} file(s)); run the "
                                "pseudo-label command again, or remove the row from its manifest.csv")  # fmt: skip
    rows, dropped = drop_labelled(rows, manifest)
    if rows.empty:
        raise ValueError(f"--pseudo {folder}: every image there is a labelled image of {cfg.manifest}; "
                         "pseudo-label unlabelled scans")  # fmt: skip
    check_sizes(folder, rows)
    if say is not None and sum(dropped.values()):
        say(f"[yellow]--pseudo:[/] dropped {dropped['eval']} image(s) that are labelled val/test images and "
            f"{dropped['train']} that are labelled train images of the manifest; {len(rows)} pseudo-labelled image(s) "
            "join the training set")  # fmt: skip
    record = {
        "pseudo_dir": str(folder.resolve()), **{k: info.get(k) for k in ("teacher", "teacher_name", "checkpoint",
        "checkpoint_sha256", "threshold", "tta", "teacher_round", "round", "teacher_config")},
        "weight": cfg.pseudo_weight, "images": len(rows), "dropped_eval": dropped["eval"],
        "dropped_train": dropped["train"], "confident": info.get("confident"),
    }  # fmt: skip
    return PseudoSet(rows, index_scheme(scheme), cfg.pseudo_weight, record)


def read_info(folder: Path) -> dict:
    """pseudo.json of a finished pseudo-label folder, or one line saying what the folder is not."""
    make = f"make one with `damage-smp pseudo-label TEACHER_RUN INPUTS... --out {folder}`"
    if not folder.is_dir():
        raise FileNotFoundError(f"--pseudo {folder}: no such folder; {make}")
    info, why = read_json_lenient(folder / MARKERS["pseudo"])
    if not info or info.get("written_by") != WRITTEN_BY:
        why = why or "no pseudo.json"
        raise ValueError(f"--pseudo {folder}: not a folder made by damage-smp pseudo-label ({why}); {make}")
    if info.get("status") != "finished" or not (folder / "manifest.csv").is_file():
        raise ValueError(f"--pseudo {folder}: pseudo-label has not finished there; run the same pseudo-label "
                         "command again (finished images are skipped)")  # fmt: skip
    return info


def check_scheme(folder: Path, info: dict, scheme: LabelScheme, cfg: TrainConfig) -> None:
    """The teacher's label scheme (the masks' classes) must be the one this run trains."""
    theirs = info.get("label_scheme") or {}
    if theirs != scheme.to_dict():
        flags = f"--labels {cfg.labels}" + (" --ignore-background" if cfg.ignore_background else "")
        raise ValueError(
            f"--pseudo {folder}: its masks are in label scheme {theirs.get('name')!r} (teacher "
            f"{info.get('teacher_name')}) but this run trains {scheme.name!r} ({flags}); pseudo-label with a teacher "
            f"trained on {scheme.name!r}, or train with the teacher's --labels"
        )


def _key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def drop_labelled(rows: pd.DataFrame, manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Rows whose image is not an image of the manifest (by real path), and how many were dropped from where."""
    labelled = {_key(p): split for p, split in zip(manifest["image_path"], manifest["split"], strict=True)}
    where = [labelled.get(_key(p)) for p in rows["image_path"]]
    dropped = {"eval": sum(w in ("val", "test") for w in where), "train": sum(w == "train" for w in where)}
    keep = [w is None for w in where]
    return rows[keep].reset_index(drop=True), dropped


def check_sizes(folder: Path, rows: pd.DataFrame) -> None:
    """Every pseudo mask is as big as its image (headers only), else one line naming the mask."""
    for image, mask in zip(rows["image_path"], rows["mask_path"], strict=True):
        a, b = image_size(image), image_size(mask)
        if a != b:
            raise ValueError(
                f"--pseudo {folder}: {mask} is {b[0]}x{b[1]} but its image {image} is {a[0]}x{a[1]}; a pseudo mask "
                "must match its image pixel for pixel: redo it with pseudo-label --overwrite, or fix the file"
            )
