"""Manifests: reading, every audit problem, building from folders, and grouped / leave-one-group-out splits."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.images import write_image
from damage_smp.labels import load_scheme
from damage_smp.manifest import (
    assign_splits,
    audit_manifest,
    build_manifest,
    group_columns,
    load_manifest,
    split_manifest,
    split_rows,
)

ARTEFACT = load_scheme("artefact")
runner = CliRunner()


def _lines(csv):
    return csv.read_text().splitlines()


def _write_lines(csv, lines):
    csv.write_text("\n".join(lines) + "\n")


# ============================================================================================ reading
def test_load_manifest_resolves_paths_and_group_columns(tiny_manifest):
    df = load_manifest(tiny_manifest)
    assert len(df) == 12
    assert group_columns(df) == ["material"]
    assert df.attrs["manifest"] == str(tiny_manifest)
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in (*df["image_path"], *df["mask_path"]))
    assert df["image_path"][0] == str((tiny_manifest.parent / "images" / "img00.png").resolve())
    train = split_rows(df, "train")
    assert list(train.index) == list(range(8)) and set(train["split"]) == {"train"}
    assert train.attrs["group_columns"] == ["material"]


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "empty file"),
        ("image,mask,split\n", "no rows"),
        ("image,split\na.png,train\n", "missing column(s) mask"),
        ("image,mask,split\na.png,b.png,training\n", "unknown split name(s) ['training']"),
        ("image,mask,split\na.png,,train\n", "empty mask cell"),
    ],
)
def test_load_manifest_rejects_bad_files_with_their_name(tmp_path, content, expected):
    csv = tmp_path / "m.csv"
    csv.write_text(content)
    with pytest.raises(ValueError) as e:
        load_manifest(csv)
    assert expected in str(e.value) and str(csv) in str(e.value)


def test_missing_manifest_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest build"):
        load_manifest(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="make sample"):
        load_manifest(tmp_path / "data_manifest.csv")


def test_split_rows_errors_name_split_and_manifest(tiny_manifest):
    df = load_manifest(tiny_manifest)
    with pytest.raises(ValueError, match=r"'test' split has no rows") as e:
        split_rows(df[df["split"] != "test"], "test")
    assert str(tiny_manifest) in str(e.value)
    (tiny_manifest.parent / "images" / "img09.png").unlink()  # a val image
    with pytest.raises(FileNotFoundError, match="img09.png"):
        split_rows(df, "val")
    assert len(split_rows(df, "train")) == 8  # other splits are unaffected


# ============================================================================================ audit
def test_audit_clean_manifest_counts_class_pixels(tmp_path):
    """Masks with known areas: the table's shares and the pixel counts are exact."""
    root = tmp_path / "d"
    lines = ["image,mask,split"]
    for i, split in enumerate(["train", "train", "val", "test"]):
        index = np.zeros((32, 64), np.uint8)
        index[:, :16] = 3  # Dust: a quarter
        index[:8, 16:32] = 16 if split == "train" else 0  # Background: 128 px in train images
        write_image(root / f"i{i}.png", np.full((32, 64, 3), 100, np.uint8))
        write_image(root / f"m{i}.png", ARTEFACT.colorize(index))
        lines.append(f"i{i}.png,m{i}.png,{split}")
    _write_lines(root / "m.csv", lines)
    report = audit_manifest(root / "m.csv", ARTEFACT)
    assert report.errors == [] and report.ok
    assert report.images == {"train": 2, "val": 1, "test": 1}
    assert report.class_pixels["train"][3] == 2 * 512 and report.class_pixels["train"][16] == 2 * 128
    assert report.class_pixels["train"].sum() == 2 * 32 * 64
    table = report.table
    assert table.at["images", "train"] == 2
    assert table.at["Dust", "val"] == pytest.approx(25.0)
    assert table.at["Background", "train"] == pytest.approx(6.25)
    assert table.at["Clean", "test"] == pytest.approx(75.0)
    assert list(table.index) == ["images", *ARTEFACT.names]
    absent = [w for w in report.warnings if "no pixels in train" in w]
    assert len(absent) == 1 and "Hair" in absent[0] and "Dust" not in absent[0] and "Background" not in absent[0]


def _audit_errors(csv, scheme=ARTEFACT):
    report = audit_manifest(csv, scheme)
    return report, "\n".join(report.errors)


def test_audit_missing_zero_byte_text_and_truncated_files(tiny_manifest):
    root = tiny_manifest.parent
    (root / "images" / "img00.png").unlink()
    (root / "masks" / "img01.png").write_bytes(b"")
    (root / "images" / "img02.png").write_text("this is not an image")
    data = (root / "images" / "img03.png").read_bytes()
    (root / "images" / "img03.png").write_bytes(data[: len(data) // 2])
    report, errors = _audit_errors(tiny_manifest)
    assert not report.ok
    assert f"{root / 'images' / 'img00.png'}: file not found" in errors
    assert f"{root / 'masks' / 'img01.png'}: file is empty (0 bytes)" in errors
    assert f"{root / 'images' / 'img02.png'}: not a readable image" in errors
    (truncated,) = [e for e in report.errors if e.startswith(f"{root / 'images' / 'img03.png'}: ")]
    assert "truncated" in truncated
    assert report.images["train"] == 4  # rows with a broken file are not counted


def test_audit_size_mismatch(tiny_manifest):
    mask = tiny_manifest.parent / "masks" / "img04.png"
    write_image(mask, np.zeros((60, 64, 3), np.uint8))
    _, errors = _audit_errors(tiny_manifest)
    assert "img04.png is 64x64 but its mask" in errors and "64x60" in errors


def test_audit_unknown_colour_and_value(tiny_manifest):
    root = tiny_manifest.parent
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[:5, :7] = (0x12, 0x34, 0x56)
    write_image(root / "masks" / "img05.png", colour)
    index = np.zeros((64, 64), np.uint8)
    index[10:13, :10] = 200
    write_image(root / "masks" / "img06.png", index)  # a single-channel index mask
    report, errors = _audit_errors(tiny_manifest)
    assert "mask value/colour #123456 is not in label scheme 'artefact': 35 px in 1 mask(s), first masks/img05.png" in (
        errors
    )
    assert "mask value/colour 200 is not in label scheme 'artefact': 30 px in 1 mask(s), first masks/img06.png" in (
        errors
    )


def test_audit_duplicates_unknown_and_empty_splits(tiny_manifest):
    lines = _lines(tiny_manifest)
    lines[1] = lines[1].replace(",train,", ",training,")
    lines = [ln.replace(",val,", ",test,") for ln in lines]  # val becomes empty
    lines.append(lines[3].replace(",train,", ",test,"))  # the same image in train and test
    _write_lines(tiny_manifest, lines)
    report, errors = _audit_errors(tiny_manifest)
    assert "unknown split name 'training' on 1 row(s) (first on line 2)" in errors
    assert "the 'val' split has no rows" in errors
    assert "images/img02.png: listed 2 times (lines 4, 14) in splits test and train" in errors


def test_audit_empty_test_split_is_a_warning(tiny_manifest):
    _write_lines(tiny_manifest, [ln.replace(",test,", ",val,") for ln in _lines(tiny_manifest)])
    report = audit_manifest(tiny_manifest, ARTEFACT)
    assert report.ok
    assert any("'test' split has no rows" in w for w in report.warnings)


def test_cli_check_exit_codes(tiny_manifest):
    result = runner.invoke(app, ["manifest", "check", str(tiny_manifest)])
    assert result.exit_code == 0, result.output
    assert "Dust" in result.output and "images" in result.output and "no errors" in result.output
    assert "warning:" in result.output  # classes absent from train
    (tiny_manifest.parent / "masks" / "img07.png").write_text("not a png")
    result = runner.invoke(app, ["manifest", "check", str(tiny_manifest)])
    assert result.exit_code == 1
    assert "Dust" in result.output  # the summary is still printed
    assert "img07.png: not a readable image" in result.output and "1 error(s)" in result.output
    result = runner.invoke(app, ["manifest", "check", str(tiny_manifest.parent / "missing.csv")])
    assert result.exit_code == 1 and "manifest not found" in result.output and "Traceback" not in result.output


# ============================================================================================ building
def _folders(tmp_path, names, mask_name=lambda n: f"{n}_mask.png", size=(16, 16)):
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "imgs", tmp_path / "msks"
    for n in names:
        write_image(images / f"{n}.jpg", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        write_image(masks / mask_name(n), ARTEFACT.colorize(np.zeros(size, np.uint8)))
    return images, masks


def test_build_pairs_by_stem_and_reports_unpaired(tmp_path):
    images, masks = _folders(tmp_path, [f"scan{i:02d}" for i in range(10)])
    write_image(images / "lonely.png", np.zeros((8, 8, 3), np.uint8))
    write_image(masks / "orphan_label.png", np.zeros((8, 8, 3), np.uint8))
    write_image(masks / "scan03-gt.png", np.zeros((8, 8, 3), np.uint8))  # a second mask for scan03
    out = tmp_path / "out" / "manifest.csv"
    df = build_manifest(images, masks, out, ARTEFACT, val=0.2, test=0.2, seed=1)
    assert len(df) == 9  # scan03 is ambiguous and skipped
    warnings = "\n".join(df.attrs["warnings"])
    assert "1 image(s) without a mask skipped: lonely.png" in warnings
    assert "1 mask(s) without an image skipped: orphan_label.png" in warnings
    assert "share the stem 'scan03'" in warnings
    written = pd.read_csv(out)
    assert list(written.columns) == ["image", "mask", "split"]
    assert written["image"][0] == "../imgs/scan00.jpg" and written["mask"][0] == "../msks/scan00_mask.png"
    loaded = load_manifest(out)
    assert all(os.path.isfile(p) for p in loaded["mask_path"])
    assert sorted(loaded["split"].value_counts().to_dict().items()) == [("test", 2), ("train", 5), ("val", 2)]


def test_build_refuses_to_overwrite_and_needs_pairs(tmp_path):
    images, masks = _folders(tmp_path, ["a", "b", "c"])
    out = tmp_path / "m.csv"
    out.write_text("mine\n")
    args = ["manifest", "build", "--images", str(images), "--masks", str(masks), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    assert out.read_text() == "mine\n"
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "3 pairs" in result.output and len(load_manifest(out)) == 3
    write_image(tmp_path / "other" / "zzz.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"no image in .* has a mask .* \(e.g. image a.jpg, mask zzz.png\)"):
        build_manifest(images, tmp_path / "other", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_build_pairs_masks_in_the_same_folder(tmp_path):
    images, _ = _folders(tmp_path, ["a", "b", "c"])
    for n in "abc":
        write_image(images / f"{n}_label.png", np.zeros((16, 16), np.uint8))
    df = build_manifest(images, images, tmp_path / "m.csv", val=0, test=0)
    assert [os.path.basename(p) for p in df["mask_path"]] == ["a_label.png", "b_label.png", "c_label.png"]
    assert set(df["split"]) == {"train"} and df.attrs["warnings"] == []


def test_build_grouped_by_subfolder_and_leave_out(tmp_path):
    names = [f"{box}/page{i}" for box in ("boxA", "boxB", "boxC", "boxD", "boxE") for i in range(4)]
    images, masks = _folders(tmp_path, names, mask_name=lambda n: f"{n}.png")
    df = build_manifest(images, masks, tmp_path / "g.csv", group_by=r"^([^/]+)/", val=0.2, test=0.2)
    assert group_columns(df) == ["group"] and set(df["group"]) == {"boxA", "boxB", "boxC", "boxD", "boxE"}
    assert df.groupby("group")["split"].nunique().max() == 1
    assert set(df["split"]) == {"train", "val", "test"}
    df = build_manifest(images, masks, tmp_path / "l.csv", group_by=r"^([^/]+)/", leave_out="boxC")
    assert set(df[df["split"] == "test"]["group"]) == {"boxC"}
    assert df.groupby("group")["split"].nunique().max() == 1
    with pytest.raises(ValueError, match="does not match 20 image path"):
        build_manifest(images, masks, tmp_path / "x.csv", group_by=r"^nothing")
    with pytest.raises(ValueError, match="no such value"):
        build_manifest(images, masks, tmp_path / "y.csv", group_by=r"^([^/]+)/", leave_out="boxZ")


def test_build_spot_checks_masks_against_the_scheme(tmp_path):
    images, masks = _folders(tmp_path, ["a", "b"])
    df = build_manifest(images, masks, tmp_path / "m.csv", load_scheme("binary"))
    assert df.attrs["warnings"] == []
    write_image(masks / "a_mask.png", np.full((16, 16), 7, np.uint8))
    df = build_manifest(images, masks, tmp_path / "n.csv", load_scheme("binary"))
    assert any("a_mask.png" in w and "--labels" in w for w in df.attrs["warnings"])


# ============================================================================================ splitting
@pytest.mark.parametrize("seed", range(6))
def test_grouped_split_never_puts_a_group_in_two_splits(seed):
    rng = np.random.default_rng(100 + seed)
    groups = np.repeat([f"g{k}" for k in range(12)], rng.integers(1, 30, 12))
    splits, warnings = assign_splits(len(groups), groups, 0.15, 0.15, seed)
    frame = pd.DataFrame({"group": groups, "split": splits})
    assert frame.groupby("group")["split"].nunique().max() == 1
    assert set(splits) == {"train", "val", "test"} and warnings == []
    assert (splits == "train").mean() > 0.4  # fractions are honoured roughly, by image count
    again, _ = assign_splits(len(groups), groups, 0.15, 0.15, seed)
    assert (again == splits).all()  # deterministic for a seed


def test_random_split_counts_and_seeds():
    a, _ = assign_splits(100, None, 0.15, 0.15, 0)
    b, _ = assign_splits(100, None, 0.15, 0.15, 1)
    assert (a == "val").sum() == 15 and (a == "test").sum() == 15 and (a != b).any()
    tiny, _ = assign_splits(3, None, 0.1, 0.1, 0)
    assert sorted(tiny) == ["test", "train", "val"]  # small sets still get one of each
    with pytest.raises(ValueError, match="--val 0.6 --test 0.5"):
        assign_splits(10, None, 0.6, 0.5, 0)


def _material_manifest(tmp_path, tiny_manifest):
    """The tiny manifest with 4 materials and 2 contents."""
    lines = _lines(tiny_manifest)
    lines[0] += ",content"
    materials = ["paper", "film", "glass", "canvas"]
    lines[1:] = [
        ln.rsplit(",", 1)[0] + f",{materials[i % 4]},{'Photographic depiction' if i < 6 else 'Line art'}"
        for i, ln in enumerate(lines[1:])
    ]
    _write_lines(tiny_manifest, lines)
    return tiny_manifest


def test_split_manifest_grouped_and_leave_one_out(tmp_path, tiny_manifest):
    csv = _material_manifest(tmp_path, tiny_manifest)
    (grouped,) = split_manifest(csv, tmp_path / "out" / "grouped.csv", by="material", val=0.25, test=0.25)
    assert grouped.groupby("material")["split"].nunique().max() == 1
    assert list(grouped["image_path"]) == list(load_manifest(csv)["image_path"])  # paths rewritten, same files
    assert pd.read_csv(tmp_path / "out" / "grouped.csv")["image"][0] == "../tiny/images/img00.png"
    (held,) = split_manifest(csv, tmp_path / "held.csv", leave_out="content=photographic depiction")
    assert set(held[held["split"] == "test"]["content"]) == {"Photographic depiction"}
    assert "Photographic depiction" not in set(held[held["split"] != "test"]["content"])
    assert any("only one other group" in w for w in held.attrs["warnings"])  # 'Line art' alone: val at random
    (by_value,) = split_manifest(csv, tmp_path / "glass.csv", by="material", leave_out="glass")
    assert set(by_value[by_value["split"] == "test"]["material"]) == {"glass"}
    assert by_value.groupby("material")["split"].nunique().max() == 1
    with pytest.raises(FileExistsError, match="--overwrite"):
        split_manifest(csv, tmp_path / "held.csv", leave_out="content=Line art")
    with pytest.raises(ValueError, match="no such value in column 'material'"):
        split_manifest(csv, tmp_path / "x.csv", leave_out="material=wood")
    with pytest.raises(ValueError, match="--by 'nope'"):
        split_manifest(csv, tmp_path / "x.csv", by="nope")


def test_leave_one_group_out_folds_never_share_a_group(tmp_path, tiny_manifest):
    csv = _material_manifest(tmp_path, tiny_manifest)
    result = runner.invoke(
        app, ["manifest", "split", str(csv), "--out", str(tmp_path / "folds"), "--folds", "--by", "material"]
    )
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (tmp_path / "folds").iterdir())
    assert files == ["fold-canvas.csv", "fold-film.csv", "fold-glass.csv", "fold-paper.csv"]
    held_out = []
    for name in files:
        fold = load_manifest(tmp_path / "folds" / name)
        test_groups = set(fold[fold["split"] == "test"]["material"])
        assert test_groups == {name[5:-4]}
        assert not test_groups & set(fold[fold["split"] != "test"]["material"])
        assert fold.groupby("material")["split"].nunique().max() == 1  # val groups are whole too
        assert set(fold["split"]) == {"train", "val", "test"}
        held_out += test_groups
    assert sorted(held_out) == ["canvas", "film", "glass", "paper"]
    result = runner.invoke(
        app, ["manifest", "split", str(csv), "--out", str(tmp_path / "folds"), "--folds", "--by", "material"]
    )
    assert result.exit_code == 1 and "already exists" in result.output
