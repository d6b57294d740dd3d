"""synth: deterministic files, exact artefact masks aligned with the drawn damage, splits, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from damage_smp import synth as S
from damage_smp.cli import app
from damage_smp.images import read_image, read_mask
from damage_smp.labels import load_scheme

SIZE = (128, 96)  # (width, height)
REPO = Path(__file__).resolve().parents[1]


def hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """12 small images, seed 0."""
    out = tmp_path_factory.mktemp("synth") / "sample"
    S.synth(out, n=12, size=SIZE, seed=0, progress=False)
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (tmp_path / k for k in "abc")
    S.synth(a, n=6, size=SIZE, seed=0, progress=False)
    S.synth(b, n=6, size=SIZE, seed=0, progress=False)
    S.synth(c, n=6, size=SIZE, seed=1, progress=False)
    ha, hb, hc = hashes(a), hashes(b), hashes(c)
    assert len(ha) == 6 + 6 + 1
    assert ha == hb
    images = [k for k in ha if k.startswith("images/")]
    assert all(ha[k] != hc[k] for k in images)


def test_image_i_does_not_depend_on_n(tmp_path, sample):
    S.synth(tmp_path / "small", n=4, size=SIZE, seed=0, progress=False)
    small, big = hashes(tmp_path / "small"), hashes(sample)
    files = [k for k in small if k != "manifest.csv"]
    assert len(files) == 8
    assert all(small[k] == big[k] for k in files)


def test_masks_use_exact_artefact_colours_and_match_their_images(sample):
    scheme = load_scheme("artefact")
    lines = (sample / "manifest.csv").read_text().splitlines()
    assert lines[0] == "image,mask,split,material,content"
    seen, shares, with_background = set(), [], 0
    for line in lines[1:]:
        image_rel, mask_rel, split, material, content = line.split(",")
        assert split in ("train", "val", "test") and material in S.MATERIALS and content in S.CONTENTS
        image, mask = read_image(sample / image_rel), read_mask(sample / mask_rel)
        assert image.shape == (SIZE[1], SIZE[0], 3)
        assert mask.shape == (SIZE[1], SIZE[0], 3) and mask.dtype == np.uint8
        index = scheme.decode(mask)  # raises on any colour outside the scheme (e.g. JPEG-like blending)
        classes = set(np.unique(index).tolist())
        seen |= classes
        with_background += scheme.background_index in classes
        damage = (index != 0) & (index != scheme.background_index)
        shares.append(damage.sum() / max(1, (index != scheme.background_index).sum()))
    damage_seen = seen - {0, scheme.background_index}
    assert len(damage_seen) >= 8, [scheme.names[c] for c in damage_seen]
    assert 1 <= with_background < len(lines) - 1  # some images lie on a scanner bed, most fill the frame
    assert 0.01 < float(np.mean(shares)) < 0.25 and max(shares) < 0.5


@pytest.mark.parametrize("name", list(S.DAMAGE))
def test_mask_marks_exactly_the_visible_damage(name):
    """Each damage on a flat grey sheet: labelled pixels changed; strongly changed pixels are labelled."""
    h, w = 96, 128
    labelled_total = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        grey = np.full((h, w, 3), 0.5, np.float32)
        substrate = np.broadcast_to(np.float32([0.9, 0.2, 0.1]), (h, w, 3))  # what holes show, unlike the sheet
        cv = S._Canvas(rng, grey.copy(), np.ones((h, w), np.float32), substrate, "photo")
        index = np.zeros((h, w), np.uint8)
        for layer, alpha in S.DAMAGE[name](cv):
            S._blend(cv, index, layer, alpha, S.CLASS[name])
        labelled = index == S.CLASS[name]
        change = np.abs(cv.img - grey).max(-1)
        labelled_total += labelled.sum()
        if not labelled.any():
            continue
        assert (change[labelled] > 0.01).mean() > 0.97, "a labelled pixel shows no damage"
        if name not in ("Lightleak", "Sticker"):  # a glow and a sticker's shadow fade out on purpose
            near = cv2.dilate(labelled.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
            strong = change > 0.6 * np.percentile(change[labelled], 90)
            assert not (strong & ~near).any(), "strongly changed pixels far from the mask"
    assert labelled_total > 0


def test_blend_later_layers_overwrite_and_bed_stays_background():
    h, w = 40, 50
    obj = np.zeros((h, w), np.float32)
    obj[:, :25] = 1  # the right half is scanner bed
    cv = S._Canvas(np.random.default_rng(0), np.zeros((h, w, 3), np.float32), obj, obj, "paper")
    index = np.where(obj >= 0.5, 0, S.BACKGROUND).astype(np.uint8)
    everywhere = np.ones((h, w), np.float32)
    S._blend(cv, index, np.full((h, w, 3), 0.2, np.float32), everywhere, S.CLASS["Dust"])
    S._blend(cv, index, np.full((h, w, 3), 0.8, np.float32), everywhere * 0.6, S.CLASS["Hair"])
    assert (index[:, :25] == S.CLASS["Hair"]).all() and (index[:, 25:] == S.BACKGROUND).all()
    assert np.allclose(cv.img[:, :25], 0.2 + 0.6 * (0.8 - 0.2)) and np.allclose(cv.img[:, 25:], 0)


def test_plan_is_stratified_and_independent_of_n():
    rows = S.sample_plan(48, 0)
    splits = [r["split"] for r in rows]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (34, 7, 7)
    for split in ("val", "test"):
        assert len({r["material"] for r in rows if r["split"] == split}) >= 4
    assert {r["material"] for r in rows} == set(S.MATERIALS) and {r["content"] for r in rows} == set(S.CONTENTS)
    small = S.sample_plan(6, 0)
    assert [(r["image"], r["material"], r["content"]) for r in small] == [
        (r["image"], r["material"], r["content"]) for r in rows[:6]
    ]
    assert {r["split"] for r in small} == {"train", "val", "test"}
    assert S.sample_plan(48, 1) != rows


def test_committed_data_manifest_is_the_default_sample():
    """data_manifest.csv at the repo root is `damage-smp synth sample`'s manifest with paths under sample/."""
    committed = (REPO / "data_manifest.csv").read_text(encoding="utf-8")
    assert committed == S.manifest_text(S.sample_plan(48, 0), "sample")
    assert committed.splitlines()[1].startswith("sample/images/synth_000.jpg,sample/masks/synth_000.png,")


def test_root_manifest_written_and_protected(tmp_path):
    root = tmp_path / "data_manifest.csv"
    S.synth(tmp_path / "sample", n=3, size=SIZE, root_manifest=root, progress=False)
    inner = (tmp_path / "sample" / "manifest.csv").read_text()
    assert root.read_text() == inner.replace("images/", "sample/images/").replace("masks/", "sample/masks/")
    root.write_text("image,mask,split\nmine.png,mine_mask.png,train\n")
    with pytest.raises(ValueError, match="--overwrite"):
        S.synth(tmp_path / "other", n=3, size=SIZE, root_manifest=root, progress=False)
    assert root.read_text().startswith("image,mask,split\nmine.png")


def test_refuses_non_empty_folder_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        S.synth(out, n=2, size=SIZE, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    S.synth(out, n=4, size=SIZE, overwrite=True, progress=False)
    S.synth(out, n=2, size=SIZE, overwrite=True, progress=False)  # fewer: the old extra files go
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synth_000.jpg", "synth_001.jpg"]
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="is a file"):
        S.synth(out / "notes.txt", n=1, size=SIZE, progress=False)


@pytest.mark.parametrize(("text", "expected"), [("512x384", (512, 384)), ("64X48", (64, 48)), ("100×200", (100, 200))])
def test_parse_size(text, expected):
    assert S.parse_size(text) == expected


@pytest.mark.parametrize("text", ["512", "512x", "axb", "512x384x3", "16x16", "-64x48"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="--size"):
        S.parse_size(text)


def test_cli_synth(tmp_path):
    runner = CliRunner()
    out = tmp_path / "s"
    result = runner.invoke(app, ["synth", str(out), "--n", "2", "--size", "64x48", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "manifest.csv" in result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "images/synth_000.jpg", "images/synth_001.jpg", "manifest.csv", "masks/synth_000.png", "masks/synth_001.png",
    ]  # fmt: skip
    assert read_image(out / "images" / "synth_000.jpg").shape == (48, 64, 3)
    again = runner.invoke(app, ["synth", str(out), "--n", "2"])
    assert again.exit_code == 1 and "--overwrite" in again.output and "Traceback" not in again.output
    bad = runner.invoke(app, ["synth", str(tmp_path / "t"), "--size", "big"])
    assert bad.exit_code == 1 and "--size" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "t").exists()
