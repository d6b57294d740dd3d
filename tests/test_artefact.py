"""ARTeFACT import: small parquet shards with the dataset's schema, built here, imported for real."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from damage_smp.artefact import import_artefact, safe_name
from damage_smp.cli import app
from damage_smp.images import read_image, read_mask
from damage_smp.labels import load_scheme

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [("id", pa.string()), ("image", IMAGE), ("annotation", IMAGE), ("annotation_rgb", IMAGE)]
    + [(c, pa.string()) for c in ("material", "content", "type", "damage_description")]
    + [(c, pa.string()) for c in ("llava_description", "verified_description")]
)
BIG = (2000, 3000)  # (H, W): the large scan, downscaled by --max-side 600
SPECS = [  # id, material, content, type, (H, W), image format
    ("cljmrkz5n341f07clcujw105j", "Parchment", "Artistic depiction", "Manuscript miniature", (48, 64), "png"),
    ("cljmrkz5n341j07cl3vqi38b4", "Film emulsion", "Photographic depiction", "Photo", (64, 48), "jpg"),
    ("scan/with space", "Paper", "Line art", "Drawing", (40, 40), "png"),
    ("scan_with_space", "Glass", "Photographic depiction", "Photo", (40, 40), "png"),
    ("big-scan", "Canvas", "Artistic depiction", "Painting", BIG, "png"),
    ("cljmrkz5n341n07clf1u410ed", "Paper", "Geometric patterns", "Print", (32, 56), "png"),
]
IDS = [s[0] for s in SPECS]


def encode(arr: np.ndarray, fmt: str = "png") -> bytes:
    """RGB (H, W, 3) or (H, W) uint8 -> encoded bytes, as the HF Image feature stores them."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=95)
    return buf.getvalue()


def make_annotation(h: int, w: int, k: int) -> np.ndarray:
    """(H, W) uint8: Clean 0, a 255 Background border, and bands of damage classes 1-15."""
    ann = np.zeros((h, w), np.uint8)
    ann[:, : w // 8] = 255  # Background strip on the left
    for j, value in enumerate(range(1 + k, 16, 3)):  # several damage classes per scan, different per scan
        y0 = (j * h) // 6
        ann[y0 : y0 + max(2, h // 10), w // 4 : (3 * w) // 4] = value
    return ann


def make_row(spec, k: int) -> dict:
    rid, material, content, kind, (h, w), fmt = spec
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)), np.full_like(xx, 40 * k)], -1)
    image = image.astype(np.uint8)  # smooth gradients: the 6 MP PNG stays small and fast to encode
    ann = make_annotation(h, w, k % 3)
    if rid == "big-scan":
        ann[h // 2 : h // 2 + 400, w // 2 : w // 2 + 600] = 5  # a Hair block that survives downscaling
    scheme = load_scheme("artefact")
    return {
        "id": rid,
        "image": {"bytes": encode(image, fmt), "path": f"{rid}.{fmt}"},
        "annotation": {"bytes": encode(ann), "path": f"{rid}_ann.png"},
        "annotation_rgb": {"bytes": encode(scheme.colorize(scheme.decode(ann))), "path": None},
        "material": material,
        "content": content,
        "type": kind,
        "damage_description": "The scan has damage.",
        "llava_description": "A picture.",
        "verified_description": "A picture.",
    }


def write_shard(path, rows: list[dict], row_group_size: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def shards(module_dir):
    """6 ARTeFACT-shaped rows in 2 files (4 rows in 2 row groups + 2 rows, in a sub-folder)."""
    root = module_dir("hub")
    rows = [make_row(spec, k) for k, spec in enumerate(SPECS)]
    write_shard(root / "data" / "train-00000-of-00002.parquet", rows[:4])
    write_shard(root / "data" / "more" / "train-00001-of-00002.parquet", rows[4:])
    return root, {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def imported(shards, module_dir):
    root, rows = shards
    out = module_dir("artefact")
    manifest = import_artefact([root], out, max_side=600)
    return out, manifest, rows


def read_rows(manifest) -> list[dict]:
    """Manifest rows plus each scan's parquet id: the file stem, or import.json's record of a renamed id."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    renamed = json.loads((Path(manifest).parent / "import.json").read_text())["renamed"]
    ids = {stem: rid for rid, stem in renamed.items()}
    return [dict(r, id=ids.get(Path(r["mask"]).stem, Path(r["mask"]).stem)) for r in rows]


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_manifest_lists_every_scan_with_group_columns(imported):
    out, manifest, rows = imported
    table = read_rows(manifest)
    header = open(manifest).readline().strip()
    assert header == "image,mask,split,material,content,type"  # no per-scan id column: it is not a group
    assert sorted(r["id"] for r in table) == sorted(IDS)
    for r in table:
        src = rows[r["id"]]
        assert (r["material"], r["content"], r["type"]) == (src["material"], src["content"], src["type"])
        assert (out / r["image"]).is_file() and (out / r["mask"]).is_file()
    assert sorted(r["split"] for r in table) == ["test", "train", "train", "train", "train", "val"]
    assert {r["material"] for r in table} >= {"Parchment", "Film emulsion", "Paper", "Canvas"}


def test_ids_become_safe_unique_file_names(imported):
    _, manifest, _ = imported
    table = {r["id"]: r for r in read_rows(manifest)}
    a, b = table["scan/with space"]["mask"], table["scan_with_space"]["mask"]
    assert a != b and "/" not in a.removeprefix("masks/") and " " not in a
    assert table[IDS[0]]["mask"] == f"masks/{IDS[0]}.png"  # ARTeFACT's own ids are kept as they are
    assert safe_name("../a b/c") == "a_b_c"


# ARTeFACT's meaning of annotation values, written out independently of labels.py
EXPECTED = {
    0: ("Clean", (0x00, 0x00, 0x00)),
    1: ("Material loss", (0x1C, 0xE6, 0xFF)),
    5: ("Hair", (0x00, 0x6F, 0xA6)),
    8: ("Writing", (0x7A, 0x49, 0x00)),
    13: ("Puncture", (0x99, 0x7D, 0x87)),
    15: ("Lightleak", (0xF6, 0xFF, 0x1B)),
    255: ("Background", (0x5A, 0x00, 0x07)),
}


def test_masks_keep_artefact_values_and_decode_to_the_right_classes(imported):
    out, manifest, rows = imported
    scheme = load_scheme("artefact")
    seen = set()
    for r in read_rows(manifest):
        if r["id"] == "big-scan":
            continue
        mask = read_mask(out / r["mask"])
        source = decoded(rows[r["id"]]["annotation"]["bytes"])
        assert mask.dtype == np.uint8 and mask.ndim == 2
        np.testing.assert_array_equal(mask, source)  # exact values, same grid
        values = set(np.unique(mask).tolist())
        assert {0, 255} < values and len(values - {0, 255}) >= 3  # several damage classes
        index = scheme.decode(mask)
        colours = scheme.colorize(index)
        for value, (name, colour) in EXPECTED.items():
            if value in values:
                seen.add(value)
                assert {scheme.names[i] for i in np.unique(index[mask == value])} == {name}
                assert (colours[mask == value] == colour).all()
    assert seen == set(EXPECTED)  # the fixture exercises every listed value


def test_large_scan_is_downscaled_with_nearest_neighbour_masks(imported):
    out, manifest, rows = imported
    r = next(r for r in read_rows(manifest) if r["id"] == "big-scan")
    image, mask = read_image(out / r["image"]), read_mask(out / r["mask"])
    assert image.shape == (400, 600, 3) and mask.shape == (400, 600)
    source = decoded(rows["big-scan"]["annotation"]["bytes"])
    assert set(np.unique(mask).tolist()) <= set(np.unique(source).tolist())  # no invented values
    assert mask[0, 0] == 255 and mask[250, 350] == 5  # the Hair block, scaled by 1/5
    small_ones = [r for r in read_rows(manifest) if r["id"] != "big-scan"]
    for s in small_ones:  # unchanged scans are copied byte for byte, in their own format
        assert (out / s["image"]).read_bytes() == rows[s["id"]]["image"]["bytes"]
    jpg = next(s for s in small_ones if s["id"] == IDS[1])
    assert jpg["image"].endswith(".jpg")


def test_manifest_loads_with_the_manifest_module(imported):
    manifest_mod = pytest.importorskip("damage_smp.manifest")
    _, manifest, _ = imported
    df = manifest_mod.load_manifest(manifest)
    assert len(df) == 6 and {"material", "content", "type"} <= set(df.columns)
    assert all(Path(p).is_file() for p in df["mask_path"]) and all(Path(p).is_file() for p in df["image_path"])
    result = CliRunner().invoke(app, ["manifest", "check", str(manifest)])  # the audit finds nothing to fix
    assert result.exit_code == 0, result.output


def test_rerun_skips_finished_rows_and_redoes_missing_ones(shards, tmp_path):
    root, _ = shards
    files = sorted(root.rglob("*.parquet"))
    out = tmp_path / "out"
    manifest = import_artefact(files, out, max_side=600)
    first = manifest.read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    missing = out / read_rows(manifest)[2]["mask"]
    missing.unlink()
    assert import_artefact([root], out, max_side=600) == manifest
    assert missing.is_file() and manifest.read_bytes() == first
    changed = [p for p, t in stamps.items() if p != missing and p.stat().st_mtime_ns != t]
    assert changed == []
    with pytest.raises(ValueError, match="--max-side 600"):  # a different size would mix two imports
        import_artefact([root], out, max_side=300)
    manifest.write_text(manifest.read_text().replace(",val,", ",train,"))  # the user edits the manifest
    with pytest.raises(ValueError, match="changed since the import"):
        import_artefact([root], out, max_side=600)
    assert import_artefact([root], out, max_side=300, overwrite=True) == manifest
    assert read_mask(out / read_rows(manifest)[0]["mask"]).shape[0] <= 300


def test_bad_rows_are_reported_and_the_rest_imported(shards, tmp_path):
    _, rows = shards
    good = rows[IDS[0]]
    corrupt = dict(good, id="corrupt", image={"bytes": b"\x89PNG\r\n\x1a\nnot really", "path": None})
    odd = dict(good, id="odd-values")
    ann = decoded(good["annotation"]["bytes"]).copy()
    ann[:4, :4] = 20
    odd["annotation"] = {"bytes": encode(ann), "path": None}
    size = dict(good, id="wrong-size", annotation={"bytes": encode(np.zeros((10, 10), np.uint8)), "path": None})
    write_shard(tmp_path / "in" / "x.parquet", [good, corrupt, odd, size])
    result = CliRunner().invoke(app, ["import-artefact", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "2 of 4 scans failed to import (corrupt, wrong-size" in result.output
    assert "image is 64x48 but its annotation is 10x10" in result.output
    assert "Traceback" not in result.output
    table = read_rows(tmp_path / "out" / "manifest.csv")
    assert sorted(r["id"] for r in table) == sorted([good["id"], "odd-values"])
    state = json.loads((tmp_path / "out" / "import.json").read_text())
    assert "[20]" in state["warnings"]["odd-values"] and set(state["failures"]) == {"corrupt", "wrong-size"}
    again = CliRunner().invoke(app, ["import-artefact", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert again.exit_code == 1 and "2 new" not in again.output and "2 already there" in again.output
    state = json.loads((tmp_path / "out" / "import.json").read_text())  # the skipped row keeps its warning
    assert "[20]" in state["warnings"]["odd-values"] and set(state["failures"]) == {"corrupt", "wrong-size"}


def test_pixel_limit_names_the_id_and_the_flag(shards, tmp_path):
    root, _ = shards
    with pytest.raises(ValueError, match=r"big-scan.*--max-pixels"):
        import_artefact([root / "data" / "more"], tmp_path / "out", max_pixels=1_000_000)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "notes.parquet").write_text("hello"), "not a readable parquet file"),
        (
            lambda d: pq.write_table(pa.table({"id": ["a"], "picture": [b"x"]}), d / "other.parquet"),
            "missing column(s) image, annotation",
        ),
        (lambda d: None, "no .parquet files in this folder"),
    ],
)
def test_bad_inputs_exit_1_with_one_line(tmp_path, setup, message):
    src = tmp_path / "src"
    src.mkdir()
    setup(src)
    result = CliRunner().invoke(app, ["import-artefact", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_refuses_a_foreign_non_empty_folder(shards, tmp_path):
    root, _ = shards
    (tmp_path / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["import-artefact", str(root), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (tmp_path / "mine.txt").read_text() == "keep me" and not (tmp_path / "images").exists()


@pytest.mark.parametrize("annotated_on", ["stored grid", "displayed grid"])
def test_exif_rotated_jpeg_is_written_on_the_mask_grid(tmp_path, annotated_on):
    """A JPEG with an EXIF 'rotate' tag is written without it, on whichever grid its annotation matches."""
    h, w = 32, 48
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = (200, 30, 30)  # red left half as stored
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate it 90 degrees clockwise: the red half ends up on top
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    shape = (h, w) if annotated_on == "stored grid" else (w, h)
    row = make_row(SPECS[0], 0)
    row["image"] = {"bytes": buf.getvalue(), "path": None}
    row["annotation"] = {"bytes": encode(make_annotation(*shape, 0)), "path": None}
    write_shard(tmp_path / "in.parquet", [row])
    manifest = import_artefact([tmp_path / "in.parquet"], tmp_path / "out")
    r = read_rows(manifest)[0]
    image = read_image(tmp_path / "out" / r["image"])  # read_image applies EXIF: none may be left
    assert image.shape[:2] == read_mask(tmp_path / "out" / r["mask"]).shape == shape
    red = image[..., 0] > 150
    if annotated_on == "stored grid":
        assert red[:, : w // 2 - 2].all() and not red[:, w // 2 + 2 :].any()
    else:
        assert red[: w // 2 - 2].all() and not red[w // 2 + 2 :].any()
