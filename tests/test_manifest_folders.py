"""Pre-split data: build --split, build --from-folders (each layout), --val carving, and manifest merge."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.images import write_image
from damage_smp.labels import load_scheme
from damage_smp.manifest import build_from_folders, build_manifest, load_manifest, merge_manifests

ARTEFACT = load_scheme("artefact")
runner = CliRunner()


def _pair(image, mask, seed: int = 0) -> None:
    """A 16x16 image and its colour mask (Clean with a Dust square)."""
    rng = np.random.default_rng(seed)
    index = np.zeros((16, 16), np.uint8)
    index[4:9, 4:9] = 3
    for path, array in ((image, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)), (mask, ARTEFACT.colorize(index))):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, array)


def _tree(root, image_dir: str, mask_dir: str, stems=("a", "b", "c"), mask_suffix: str = "") -> None:
    """Pairs ``image_dir/STEM.jpg`` + ``mask_dir/STEM{mask_suffix}.png`` below root (the dirs may use {split})."""
    for split, n in (("train", len(stems)), ("test", 2)):
        for k, stem in enumerate(stems[:n]):
            name = f"{split}-{stem}"
            images, masks = root / image_dir.format(split=split), root / mask_dir.format(split=split)
            _pair(images / f"{name}.png", masks / f"{name}{mask_suffix}.png", seed=k)


def _built(root, tmp_path, **kw) -> pd.DataFrame:
    out = tmp_path / "out" / "data.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df = build_from_folders(root, out, ARTEFACT, **kw)
    again = load_manifest(out)
    assert all(os.path.isfile(p) for p in (*again["image_path"], *again["mask_path"]))
    assert not any(os.path.isabs(p) for p in again["image"])  # relative to the CSV's folder
    return df


# ============================================================================================ --from-folders
@pytest.mark.parametrize(
    "image_dir, mask_dir, suffix, layout",
    [
        ("{split}/images", "{split}/masks", "", "ROOT/{train,val,test}/{images,masks}"),
        ("{split}/Images", "{split}/Labels", "", "ROOT/{train,val,test}/{images,masks}"),
        ("images/{split}", "masks/{split}", "_mask", "ROOT/{images,masks}/{train,val,test}"),
        ("images/{split}", "annotations/{split}", "", "ROOT/{images,masks}/{train,val,test}"),
        ("{split}_img", "{split}_lab", "", "sibling"),
        ("{split}", "{split}annot", "", "sibling"),
        ("{split}", "{split}_labels", "", "sibling"),
        ("images_{split}", "masks_{split}", "", "sibling"),
        ("{split}", "{split}", "_mask", "images and masks together"),
    ],
)
def test_from_folders_recognises_each_layout(tmp_path, image_dir, mask_dir, suffix, layout):
    root = tmp_path / "data"
    _tree(root, image_dir, mask_dir, mask_suffix=suffix)
    if "Images" in image_dir:  # any case, and the long split names
        (root / "train").rename(root / "Training")
        (root / "test").rename(root / "Testing")
    df = _built(root, tmp_path)
    assert layout in df.attrs["layout"]
    assert sorted(df["split"].value_counts().items()) == [("test", 2), ("train", 3)]
    for image, mask, split in zip(df["image"], df["mask"], df["split"], strict=True):
        assert f"{split}-" in os.path.basename(image) and os.path.basename(image)[:-4] in mask
    assert any("no val split" in w and "--val 0.15" in w for w in df.attrs["warnings"])


def test_from_folders_carves_val_out_of_train_by_group(tmp_path):
    root = tmp_path / "data"
    _tree(root, "{split}/images", "{split}/masks", stems=[f"g{g}_{k}" for g in range(4) for k in range(3)])
    df = _built(root, tmp_path, val=0.25, seed=1, group_by=r"-(g\d)_")
    assert df["split"].value_counts().to_dict() == {"train": 9, "val": 3, "test": 2}
    train_groups = set(df.loc[df["split"] == "train", "group"])
    assert set(df.loc[df["split"] == "val", "group"]).isdisjoint(train_groups)  # groups stay whole
    assert (df.loc[df["split"] == "test", "image"].str.contains("test-")).all()  # test stays the test folder
    again = _built(root, tmp_path / "again", val=0.25, seed=1, group_by=r"-(g\d)_")
    assert again["split"].tolist() == df["split"].tolist()  # seeded


def test_from_folders_bad_trees_are_one_line_exit_1(tmp_path):
    root = tmp_path / "data"
    (root / "photos").mkdir(parents=True)
    out = str(tmp_path / "m.csv")
    result = runner.invoke(app, ["manifest", "build", "--from-folders", str(root), "--out", out])
    assert result.exit_code == 1, result.output
    assert "no known layout" in result.output and "ROOT/{images,masks}/{train,val,test}" in result.output
    assert "train_img + train_lab" in result.output and "Traceback" not in result.output
    _tree(root, "{split}/images", "{split}/masks")
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir(parents=True)
    _pair(root / "val" / "images" / "v.png", root / "val" / "masks" / "v.png")
    for args, expected in (
        (["--val", "0.2"], "already has a val split"),
        (["--test", "0.2"], "drop --test"),
        (["--images", str(root)], "drop --images"),
        (["--split", "train"], "drop --split"),
    ):
        result = runner.invoke(app, ["manifest", "build", "--from-folders", str(root), "--out", out, *args])
        assert result.exit_code == 1 and expected in result.output, result.output


# ============================================================================================ --split
def test_build_split_puts_every_pair_in_it_and_refuses_conflicts(tmp_path):
    _tree(tmp_path, "imgs", "masks")
    out = tmp_path / "test.csv"
    df = build_manifest(tmp_path / "imgs", tmp_path / "masks", out, ARTEFACT, split="test")
    assert len(df) == 5 and set(df["split"]) == {"test"}
    base = ["manifest", "build", "--images", str(tmp_path / "imgs"), "--masks", str(tmp_path / "masks")]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "x.csv"), "--split", "testing"])
    assert result.exit_code == 1 and "--split 'testing': unknown split; choose one of train, val, test" in result.output
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "x.csv"), "--split", "train", "--val", "0.1"])
    assert result.exit_code == 1 and "drop --val (or drop --split)" in result.output, result.output
    assert not (tmp_path / "x.csv").exists()


# ============================================================================================ merge
def test_merge_rebases_paths_and_refuses_duplicates_and_other_columns(tmp_path):
    _tree(tmp_path / "set1", "images", "masks", stems=("a", "b"))
    _tree(tmp_path / "deep" / "set2", "images", "masks", stems=("c", "d"))
    a = build_manifest(tmp_path / "set1/images", tmp_path / "set1/masks", tmp_path / "set1/m.csv", split="train")
    b_csv = tmp_path / "deep/set2/m.csv"
    b = build_manifest(tmp_path / "deep/set2/images", tmp_path / "deep/set2/masks", b_csv, split="test")
    out = tmp_path / "merged" / "all.csv"
    out.parent.mkdir()
    result = runner.invoke(app, ["manifest", "merge", str(tmp_path / "set1/m.csv"), str(b_csv), "--out", str(out)])
    assert result.exit_code == 0, result.output
    merged = load_manifest(out)
    assert merged["image_path"].tolist() == [*a["image_path"], *b["image_path"]]  # same files, new folder
    assert merged["image"][0].startswith("../set1/") and merged["image"].iloc[-1].startswith("../deep/set2/")
    assert merged["split"].tolist() == ["train"] * len(a) + ["test"] * len(b)
    result = runner.invoke(app, ["manifest", "merge", str(tmp_path / "set1/m.csv"), str(b_csv), "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.output  # never replaced without it

    twice = tmp_path / "deep" / "again.csv"  # set1's first image again, from another folder
    twice.write_text(f"image,mask,split\n../set1/{a['image'][0]},../set1/{a['mask'][0]},test\n")
    with pytest.raises(ValueError, match=r"is listed in .*m\.csv line 2 and in .*again\.csv line 2"):
        merge_manifests([tmp_path / "set1/m.csv", b_csv, twice], tmp_path / "dup.csv")

    other = tmp_path / "other.csv"
    pd.read_csv(b_csv).assign(material="paper").to_csv(other, index=False)
    result = runner.invoke(
        app, ["manifest", "merge", str(tmp_path / "set1/m.csv"), str(other), "--out", str(tmp_path / "x.csv")]
    )
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and "image,mask,split but" in line and "image,mask,split,material" in line
    assert "m.csv" in line and "other.csv" in line and not (tmp_path / "dup.csv").exists()
