"""Every bad input gets one clear line and exit code 1, never a traceback, and never a changed user file.

Each failing case asserts: exit code 1; exactly one ``error:`` line that names the file or flag and says what
to do (key words); no traceback; and that every file in the watched input folders has the same sha256 and
mtime afterwards (nothing added, nothing removed). Inputs that look odd but are fine (RGBA, 16-bit, gray,
EXIF-rotated, spaces and non-ASCII in paths, images smaller than the crop, a large scan under a raised
--max-pixels) must work end to end. One tiny trained run per session is shared by evaluate/predict/compare.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import make_pair
from PIL import Image
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.config import TrainConfig
from damage_smp.images import write_image
from damage_smp.labels import load_scheme
from damage_smp.train import train

SCHEME = load_scheme("artefact")
SPLITS = ("train", "train", "val", "test")  # the clean sample: img00..img03
TINY = ["--encoder", "resnet18", "--encoder-weights", "none", "--epochs", "1", "--samples-per-epoch", "4",
        "--batch-size", "4", "--crop-size", "64", "--tile", "64", "--num-workers", "0", "--device", "cpu"]  # fmt: skip
PREDICT_FAST = ["--tile", "64", "--overlap", "0.25", "--device", "cpu", "--workers", "1"]
RNG_BYTES = np.random.default_rng(0).bytes(10_000)  # a "checkpoint" of noise
BIG_FILE = 16 << 20  # checkpoints: hash their ends plus size and mtime, not 170 MB per snapshot


# ============================================================================================ helpers
def snapshot(*folders: Path) -> dict[str, tuple]:
    """Every file under the folders -> (sha256, mtime_ns); a changed, added or removed file changes it."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (_digest(p, st.st_size), st.st_size, st.st_mtime_ns)
    return out


def _digest(path: Path, size: int) -> str:
    with open(path, "rb") as f:
        if size <= BIG_FILE:
            return hashlib.sha256(f.read()).hexdigest()
        head = f.read(1 << 20)
        f.seek(size - (1 << 20))
        return hashlib.sha256(head + f.read()).hexdigest()


def cli(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def fails(args: list, *words: str, watch: tuple[Path, ...] = ()) -> str:
    """Run the CLI expecting a user error; returns the one error line.

    Asserts exit 1, no traceback (in-process: the only exception is the clean SystemExit), one ``error:`` line
    holding every word (case-insensitive), and no file changed in the watched folders.
    """
    before = snapshot(*watch)
    result = cli(*args)
    out = result.output
    assert result.exit_code == 1, out
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}\n{out}"
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected one error line:\n{out}"
    for word in words:
        assert word.lower() in errors[0].lower(), f"{word!r} missing from: {errors[0]}"
    assert snapshot(*watch) == before, "a user file was changed"
    return errors[0]


def works(args: list) -> str:
    result = cli(*args)
    assert result.exit_code == 0, f"{result.exception!r}\n{result.output}"
    assert "error:" not in result.output and "Traceback" not in result.output, result.output
    return result.output


def write_pair(root: Path, stem: str, size=(64, 64), seed: int = 0, image_suffix=".png") -> tuple[Path, Path]:
    image, index = make_pair(np.random.default_rng(seed), size=size)
    write_image(root / "images" / f"{stem}{image_suffix}", image)
    write_image(root / "masks" / f"{stem}.png", SCHEME.colorize(index))
    return root / "images" / f"{stem}{image_suffix}", root / "masks" / f"{stem}.png"


def write_manifest(root: Path, rows: list[tuple[str, str, str]], name: str = "manifest.csv") -> Path:
    lines = ["image,mask,split"] + [",".join(r) for r in rows]
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / name


def clean_rows() -> list[tuple[str, str, str]]:
    return [(f"images/img{i:02d}.png", f"masks/img{i:02d}.png", s) for i, s in enumerate(SPLITS)]


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A valid 1-bit grayscale PNG of side x side pixels (900 MP at 30000) that is ~100 kB on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_bomb_bytes(side))
    return path


@functools.cache
def _bomb_bytes(side: int) -> bytes:
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed zero bits
    comp, block = zlib.compressobj(1), row * 1000
    idat = b"".join(comp.compress(block) for _ in range(side // 1000)) + comp.compress(row * (side % 1000))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat + comp.flush()) + chunk(b"IEND", b"")


def truncated_jpeg(path: Path, seed: int = 0) -> Path:
    image, _ = make_pair(np.random.default_rng(seed))
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    return path


def dup_colour_scheme(path: Path) -> Path:
    classes = [
        {"name": "clean", "color": "#000000", "values": [0]},
        {"name": "hair", "color": "#FF0000", "values": [1]},
        {"name": "dust", "color": "#ff0000", "values": [2]},  # the same colour as hair
    ]
    path.write_text(json.dumps({"name": "mine", "classes": classes, "clean": "clean"}), encoding="utf-8")
    return path


# ============================================================================================ fixtures
@pytest.fixture(scope="session")
def clean(tmp_path_factory) -> Path:
    """img00..img03 (train, train, val, test): 64x64 images with artefact colour masks, and manifest.csv."""
    root = tmp_path_factory.mktemp("clean")
    for i in range(len(SPLITS)):
        write_pair(root, f"img{i:02d}", seed=i)
    write_manifest(root, clean_rows())
    return root


@pytest.fixture
def data(clean, tmp_path) -> Path:
    """A private copy of the clean sample, for a test to damage."""
    return Path(shutil.copytree(clean, tmp_path / "data"))


@pytest.fixture(scope="session")
def run(clean, tmp_path_factory) -> Path:
    """One tiny trained run shared by evaluate/predict/compare cases (resnet18, no weights, 1 epoch of 4 crops)."""
    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(
        manifest=str(clean / "manifest.csv"), encoder="resnet18", encoder_weights="none", epochs=1,
        samples_per_epoch=4, batch_size=4, crop_size=64, tile=64, num_workers=0, samples=0, device="cpu",
        out_dir=str(out), name="run",
    )  # fmt: skip
    return train(cfg)


@pytest.fixture
def broken_run(run, tmp_path) -> Path:
    """A run directory with the shared run's config.json but no checkpoints (tests add what they need)."""
    root = tmp_path / "broken"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.json", root / "config.json")
    return root


@pytest.fixture
def scans(tmp_path) -> Path:
    """Two good 64x64 scans for predict."""
    root = tmp_path / "scans"
    for i in range(2):
        image, _ = make_pair(np.random.default_rng(10 + i))
        write_image(root / f"scan{i}.png", image)
    return root


# ============================================================================================ manifest check
def _missing_image(d):
    (d / "images/img00.png").unlink()
    return ["img00.png", "not found", "check the path"]


def _missing_mask(d):
    (d / "masks/img01.png").unlink()
    return ["masks", "img01.png", "not found"]


def _zero_byte_image(d):
    (d / "images/img00.png").write_bytes(b"")
    return ["img00.png", "0 bytes", "re-export"]


def _zero_byte_mask(d):
    (d / "masks/img02.png").write_bytes(b"")
    return ["img02.png", "0 bytes", "re-export"]


def _text_named_png(d):
    (d / "images/img00.png").write_text("not an image, just text\n")
    return ["img00.png", "not a readable image", "re-export"]


def _truncated_png(d):
    p = d / "images/img01.png"
    p.write_bytes(p.read_bytes()[:300])
    return ["img01.png", "truncated", "re-export"]


def _truncated_jpeg(d):
    truncated_jpeg(d / "images/img00.jpg")
    write_manifest(d, [("images/img00.jpg", "masks/img00.png", "train"), *clean_rows()[1:]])
    return ["img00.jpg", "truncated", "re-export"]


def _size_mismatch(d):
    _, index = make_pair(np.random.default_rng(0), size=(48, 64))
    write_image(d / "masks/img00.png", SCHEME.colorize(index))
    return ["img00.png", "64x64", "64x48", "must match"]


def _unknown_mask_colour(d):
    mask = cv2.cvtColor(cv2.imread(str(d / "masks/img01.png")), cv2.COLOR_BGR2RGB)
    mask[:5, :5] = (1, 2, 3)
    write_image(d / "masks/img01.png", mask)
    return ["#010203", "img01.png", "--labels"]


def _mask_value_outside_scheme(d):
    _, index = make_pair(np.random.default_rng(0))
    values = SCHEME.to_values(index)  # an index mask: artefact's values are 0..15 and 255
    values[:4, :4] = 42
    write_image(d / "masks/img00.png", values)
    return ["42", "img00.png", "--labels"]


def _empty_manifest(d):
    (d / "manifest.csv").write_bytes(b"")
    return ["manifest.csv", "empty", "image,mask,split"]


def _header_only_manifest(d):
    write_manifest(d, [])
    return ["manifest.csv", "no rows", "one row per image"]


def _missing_column(d):
    (d / "manifest.csv").write_text("image,mask\nimages/img00.png,masks/img00.png\n")
    return ["manifest.csv", "split", "header image,mask,split"]


def _unknown_split_name(d):
    rows = clean_rows()
    rows[1] = (rows[1][0], rows[1][1], "trian")
    write_manifest(d, rows)
    return ["'trian'", "line 3", "train, val, test"]


def _duplicate_rows(d):
    write_manifest(d, [*clean_rows(), clean_rows()[0]])
    return ["img00.png", "2 times", "one row per image"]


def _decompression_bomb(d):
    bomb_png(d / "images/img00.png")
    return ["img00.png", "30000x30000", "--max-pixels"]


def _not_a_csv(d):
    (d / "manifest.csv").write_bytes(b"\xff\xfe\x00\x00binary\x00junk\xff")
    return ["manifest.csv", "fix the file"]


MANIFEST_CASES = [
    _missing_image, _missing_mask, _zero_byte_image, _zero_byte_mask, _text_named_png, _truncated_png,
    _truncated_jpeg, _size_mismatch, _unknown_mask_colour, _mask_value_outside_scheme, _empty_manifest,
    _header_only_manifest, _missing_column, _unknown_split_name, _duplicate_rows, _decompression_bomb, _not_a_csv,
]  # fmt: skip


@pytest.mark.parametrize("damage", MANIFEST_CASES, ids=lambda f: f.__name__.strip("_"))
def test_manifest_check_names_the_bad_file_and_the_fix(data, damage):
    words = damage(data)
    fails(["manifest", "check", data / "manifest.csv"], *words, watch=(data,))


def test_manifest_check_of_a_missing_csv(tmp_path):
    fails(["manifest", "check", tmp_path / "nope.csv"], "nope.csv", "not found", "manifest build")


def test_manifest_check_of_a_folder(data):
    fails(["manifest", "check", data], str(data), "is a folder", "CSV file inside it", watch=(data,))


@pytest.mark.parametrize(
    "labels, words",
    [
        ("artifact", ["--labels", "'artifact'", "not a built-in scheme", "artefact"]),
        ("missing.json", ["--labels", "missing.json", "file not found"]),
        ("dup", ["dup.json", "#FF0000", "own colour"]),
        ("badjson", ["bad.json", "not valid JSON", "fix the file"]),
    ],
)
def test_manifest_check_with_a_bad_label_scheme(data, labels, words):
    if labels == "dup":
        labels = dup_colour_scheme(data / "dup.json")
    elif labels == "badjson":
        (data / "bad.json").write_text('{"classes": [')
        labels = data / "bad.json"
    fails(["manifest", "check", data / "manifest.csv", "--labels", labels], *words, watch=(data,))


def test_manifest_build_from_a_missing_folder_and_over_an_existing_csv(data):
    fails(
        ["manifest", "build", "--images", data / "nope", "--masks", data / "masks", "--out", data / "new.csv"],
        "--images", "nope", "folder not found", "check the path", watch=(data,),
    )  # fmt: skip
    fails(
        ["manifest", "build", "--images", data / "images", "--masks", data / "masks", "--out", data / "manifest.csv"],
        "manifest.csv", "already exists", "--overwrite", watch=(data,),
    )  # fmt: skip


# ============================================================================================ train
def _train(data: Path, tmp_path: Path, *extra) -> list:
    return ["train", "--manifest", data / "manifest.csv", "--out-dir", tmp_path / "exp", *TINY, *extra]


def test_train_refuses_a_config_file_with_an_unknown_key(data, tmp_path):
    config = data / "settings.json"
    config.write_text(json.dumps({"epochs": 1, "lerning_rate": 0.1}))
    fails(_train(data, tmp_path, "--config", config), "settings.json", "lerning_rate", "valid keys", watch=(data,))
    assert not (tmp_path / "exp").exists()


def test_train_refuses_a_missing_config_file(data, tmp_path):
    fails(_train(data, tmp_path, "--config", data / "nope.toml"), "--config", "nope.toml", "not found", watch=(data,))


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs"])
def test_train_refuses_a_run_name_that_leaves_the_out_dir(data, tmp_path, name):
    fails(_train(data, tmp_path, "--name", name), "--name", "no slashes", watch=(data,))
    assert not (tmp_path / "escape").exists() and not (tmp_path / "exp").exists()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--arch", "unetx"], ["--arch", "'unetx'", "choose one of", "unet"]),
        (["--encoder", "resnet9000"], ["--encoder", "resnet9000", "unknown encoder"]),
        (["--crop-size", "100"], ["--crop-size", "multiple of 32"]),
        (["--labels", "artifact"], ["--labels", "not a built-in scheme"]),
        (["--device", "gpu"], ["--device", "cuda"]),
        (["--epochs", "0"], ["--epochs", "at least 1"]),
        (["--overlap", "1"], ["--overlap", "[0, 1)"]),
    ],
    ids=["arch", "encoder", "crop", "labels", "device", "epochs", "overlap"],
)
def test_train_refuses_unknown_settings(data, tmp_path, flags, words):
    fails(_train(data, tmp_path, *flags), *words, watch=(data,))


def test_train_refuses_an_unparsable_config_file(data, tmp_path):
    (data / "settings.json").write_text("epochs = 3\n")  # TOML in a .json file
    fails(_train(data, tmp_path, "--config", data / "settings.json"), "--config", "settings.json", "cannot parse",
          "fix the file", watch=(data,))  # fmt: skip


def test_resume_refuses_settings_that_would_change_the_run(run):
    fails(["train", "--resume", run, "--epochs", "2", "--lr", "0.1"], "--resume", "drop --lr", watch=(run,))


def test_train_with_a_duplicate_colour_label_scheme(data, tmp_path):
    scheme = dup_colour_scheme(data / "dup.json")
    fails(_train(data, tmp_path, "--labels", scheme), "dup.json", "#FF0000", "own colour", watch=(data,))


def test_train_refuses_a_missing_manifest(tmp_path):
    fails(["train", "--manifest", tmp_path / "gone.csv", *TINY], "gone.csv", "not found", "manifest build")


def test_train_needs_a_val_split(data, tmp_path):
    write_manifest(data, [(i, m, "train") for i, m, _ in clean_rows()])
    fails(_train(data, tmp_path), "manifest.csv", "'val' split has no rows", "manifest split", watch=(data,))


def test_train_refuses_an_unknown_split_name(data, tmp_path):
    _unknown_split_name(data)
    fails(_train(data, tmp_path), "manifest.csv", "'trian'", "train, val, test", watch=(data,))


def _one_train_image(d: Path) -> None:
    """Train on img00 only, so every crop of the epoch reads it."""
    rows = clean_rows()
    write_manifest(d, [rows[0], rows[2]])


@pytest.mark.parametrize(
    "damage", [_zero_byte_image, _text_named_png, _truncated_jpeg, _size_mismatch, _mask_value_outside_scheme,
               _decompression_bomb], ids=lambda f: f.__name__.strip("_"),
)  # fmt: skip
def test_train_names_a_bad_training_file(data, tmp_path, damage):
    words = damage(data)
    if damage is not _truncated_jpeg:
        _one_train_image(data)
    else:
        rows = clean_rows()
        write_manifest(data, [("images/img00.jpg", "masks/img00.png", "train"), rows[2]])
    fails(_train(data, tmp_path), *words, watch=(data,))


def test_resume_of_a_run_without_last_checkpoint(broken_run, tmp_path):
    fails(["train", "--resume", broken_run, "--epochs", "2"], "--resume", "last.pt", watch=(broken_run,))


def test_resume_of_a_missing_folder(tmp_path):
    fails(["train", "--resume", tmp_path / "nothing", "--epochs", "2"], "nothing", "not found")


# ============================================================================================ evaluate
def test_evaluate_a_run_with_a_missing_checkpoint(broken_run):
    fails(["evaluate", broken_run, "--device", "cpu"], "best.pt", "not found", "train", watch=(broken_run,))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_evaluate_a_run_with_a_corrupt_checkpoint(run, broken_run, kind):
    best = broken_run / "checkpoints/best.pt"
    best.write_bytes(
        {"garbage": RNG_BYTES, "truncated": (run / "checkpoints/best.pt").read_bytes()[: 1 << 20], "empty": b""}[kind]
    )
    fails(["evaluate", broken_run, "--device", "cpu"], "best.pt", "corrupt", "retrain", watch=(broken_run,))


def test_evaluate_a_folder_that_is_not_a_run(data):
    fails(["evaluate", data, "--device", "cpu"], str(data), "not a run directory", "train", watch=(data,))


def test_evaluate_a_missing_run(tmp_path):
    fails(["evaluate", tmp_path / "gone", "--device", "cpu"], "gone", "not found")


def test_evaluate_a_run_with_a_damaged_config(broken_run):
    (broken_run / "config.json").write_text('{"config_version": 1, "train": {')
    fails(["evaluate", broken_run, "--device", "cpu"], "config.json", "not valid JSON", watch=(broken_run,))


def test_evaluate_an_unknown_split(run):
    fails(["evaluate", run, "--split", "testing", "--device", "cpu"], "--split", "'testing'", "test", watch=(run,))


def test_evaluate_an_unknown_checkpoint_lists_the_available_ones(run):
    fails(["evaluate", run, "--checkpoint", "epoch_999", "--device", "cpu"], "epoch_999.pt", "not found",
          "--checkpoint last", "available: best, last", watch=(run,))  # fmt: skip


def test_evaluate_on_a_missing_manifest(run, tmp_path):
    fails(["evaluate", run, "--manifest", tmp_path / "moved.csv", "--device", "cpu"], "--manifest", "moved.csv",
          "not found", watch=(run,))  # fmt: skip


def test_evaluate_on_a_manifest_with_an_unknown_mask_colour(run, data):
    _unknown_mask_colour(data)
    rows = clean_rows()
    write_manifest(data, [rows[1][:2] + ("test",)], name="other.csv")
    fails(["evaluate", run, "--manifest", data / "other.csv", "--device", "cpu"], "img01.png", "#010203",
          "--labels", watch=(data, run))  # fmt: skip


# ============================================================================================ predict
def test_predict_with_a_missing_checkpoint(broken_run, scans, tmp_path):
    fails(["predict", broken_run, scans, "--out", tmp_path / "out", *PREDICT_FAST], "best.pt", "not found",
          watch=(broken_run, scans))  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["garbage", "pickled-object"])
def test_predict_with_a_corrupt_checkpoint(broken_run, scans, tmp_path, kind):
    best = broken_run / "checkpoints/best.pt"
    if kind == "garbage":
        best.write_bytes(RNG_BYTES)
    else:  # a pickle that would run code under weights_only=False
        torch.save({"model": {}, "payload": Path("/etc/passwd")}, best)
    fails(["predict", broken_run, scans, "--out", tmp_path / "out", *PREDICT_FAST], "best.pt",
          "not a readable checkpoint", "retrain", watch=(broken_run, scans))  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_predict_a_missing_input(run, scans, tmp_path):
    fails(["predict", run, scans / "nope.png", "--out", tmp_path / "out", *PREDICT_FAST], "nope.png",
          "no such file", "check the path", watch=(scans, run))  # fmt: skip


def test_predict_refuses_bad_options(run, scans, tmp_path):
    fails(["predict", run, scans, "--out", tmp_path / "out", *PREDICT_FAST, "--tile", "50"], "--tile", "32",
          watch=(scans, run))  # fmt: skip
    fails(["predict", run, scans, "--out", tmp_path / "out", *PREDICT_FAST, "--save", "colour,png"], "--save",
          "'png'", watch=(scans, run))  # fmt: skip


def test_predict_an_unknown_checkpoint(run, scans, tmp_path):
    fails(["predict", run, scans, "--out", tmp_path / "out", *PREDICT_FAST, "--checkpoint", "epoch_999"],
          "epoch_999.pt", "not found", "--checkpoint last", watch=(scans, run))  # fmt: skip


def test_predict_into_a_file_instead_of_a_folder(run, scans, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"a user's file")
    fails(["predict", run, scans, "--out", out, *PREDICT_FAST], "--out", "out.png", "folder",
          watch=(scans, run, tmp_path))  # fmt: skip
    assert out.read_bytes() == b"a user's file"


def test_predict_with_no_inputs():
    fails(["predict"], "RUN_DIR", "INPUTS", "--out")


@pytest.mark.parametrize("bad", ["text.png", "empty.png", "cut.jpg", "bomb.png"])
def test_predict_writes_the_good_images_and_names_the_bad_one(run, scans, tmp_path, bad):
    if bad == "text.png":
        (scans / bad).write_text("hello")
    elif bad == "empty.png":
        (scans / bad).write_bytes(b"")
    elif bad == "cut.jpg":
        truncated_jpeg(scans / bad)
    else:
        bomb_png(scans / bad)
    before = snapshot(scans, run)
    out = tmp_path / "out"
    result = cli("predict", run, scans, "--out", out, *PREDICT_FAST)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    named = [line for line in result.output.splitlines() if bad in line and "━" not in line]  # not the bar
    assert len(named) == 1, result.output
    fix = {"text.png": "re-export", "empty.png": "0 bytes", "cut.jpg": "truncated", "bomb.png": "--max-pixels"}[bad]
    assert fix in named[0], named[0]
    for i in range(2):  # the good ones are all written
        assert (out / f"scan{i}_mask.png").is_file() and (out / f"scan{i}_index.png").is_file()
    assert not list(out.glob(f"{Path(bad).stem}_*"))
    assert "failures.csv" in result.output and bad in (out / "failures.csv").read_text()
    assert snapshot(scans, run) == before


def test_predict_names_a_failed_file_once_per_line(run, scans, tmp_path):
    """The failure list says 'PATH: what is wrong; the fix', not 'PATH: PATH: what is wrong; the fix'."""
    (scans / "bad.png").write_text("hello")
    result = cli("predict", run, scans, "--out", tmp_path / "out", *PREDICT_FAST)
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if "bad.png" in line and "━" not in line]
    assert line.count(str(scans / "bad.png")) == 1, line


# ============================================================================================ compare
def test_compare_a_folder_without_runs(data):
    fails(["compare", data], str(data), "no run", watch=(data,))


def test_compare_a_missing_folder(tmp_path):
    fails(["compare", tmp_path / "gone"], "gone", "no such folder")


@pytest.mark.parametrize(
    "flags, words",
    [(["--metric", "bogus"], ["--metric", "'bogus'", "choose one of", "damage_miou"]),
     (["--baseline", "nosuchrun"], ["--baseline", "'nosuchrun'", "no such run", "auto"])],
    ids=["metric", "baseline"],
)  # fmt: skip
def test_compare_refuses_unknown_options(run, tmp_path, flags, words):
    fails(["compare", run.parent, "--out", tmp_path / "cmp", *flags], *words, watch=(run.parent,))


def test_compare_lists_a_broken_run_and_does_not_fail(run, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(run, exp / "good", ignore=shutil.ignore_patterns("*.pt"))
    (exp / "bad").mkdir()
    (exp / "bad/config.json").write_text("{ not json")
    before = snapshot(exp / "good", exp / "bad")
    result = cli("compare", exp, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "bad" in result.output and "broken" in result.output, result.output
    assert snapshot(exp / "good", exp / "bad") == before


# ============================================================================================ must work
ODD_SIZES = {"rgba": (40, 48), "16bit": (48, 40), "gray": (33, 50), "exif": (40, 56)}  # (H, W) as viewed


def _odd_formats(root: Path) -> list[tuple[str, str, str]]:
    """RGBA, 16-bit, grayscale and EXIF-rotated images, all smaller than a 64 px crop or tile, each with a mask
    as a viewer shows the image."""
    rng = np.random.default_rng(5)
    rows = []
    for k, (kind, size) in enumerate(ODD_SIZES.items()):
        image, index = make_pair(rng, size=size)
        name = f"images/{kind}.{'jpg' if kind == 'exif' else 'png'}"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if kind == "rgba":
            cv2.imwrite(str(path), np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)]))
        elif kind == "16bit":
            cv2.imwrite(str(path), bgr.astype(np.uint16) * 257)
        elif kind == "gray":
            cv2.imwrite(str(path), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        else:  # stored turned 90° counter-clockwise (56x40 -> 40 wide, 56 high); orientation 6 turns it back
            exif = Image.Exif()
            exif[0x0112] = 6
            Image.fromarray(np.ascontiguousarray(np.rot90(image, k=1))).save(path, quality=95, exif=exif)
        write_image(root / f"masks/{kind}.png", SCHEME.colorize(index))
        rows.append((name, f"masks/{kind}.png", "val" if k == 3 else "train"))
    return rows


def test_rgba_16bit_gray_exif_and_smaller_than_the_crop_images_work_end_to_end(tmp_path):
    """manifest check, a 1-epoch train (64 px crops and validation tiles, padded) and predict all work."""
    data = tmp_path / "odd"
    write_manifest(data, _odd_formats(data))
    before = snapshot(data)
    out = works(["manifest", "check", data / "manifest.csv"])
    assert "no errors" in out
    works(_train(data, tmp_path, "--name", "odd"))
    pred = tmp_path / "pred"
    works(["predict", tmp_path / "exp/odd", data / "images", "--out", pred, *PREDICT_FAST])
    for kind, size in ODD_SIZES.items():
        index = cv2.imread(str(pred / f"{kind}_index.png"), cv2.IMREAD_UNCHANGED)
        assert index.shape == size, kind  # EXIF applied: the upright size
    assert snapshot(data) == before


def test_paths_with_spaces_and_non_ascii_work_end_to_end(tmp_path):
    data = tmp_path / "my scans" / "Bücher ñ 写真"
    rows = []
    for i, split in enumerate(["train", "train", "val"]):
        image, index = make_pair(np.random.default_rng(i))
        write_image(data / "Bilder Ü" / f"Seite {i} é.png", image)
        write_image(data / "Masken" / f"Seite {i} é.png", SCHEME.colorize(index))
        rows.append((f"Bilder Ü/Seite {i} é.png", f"Masken/Seite {i} é.png", split))
    write_manifest(data, rows)
    before = snapshot(data)
    assert "no errors" in works(["manifest", "check", data / "manifest.csv"])
    out_dir = tmp_path / "runs ä"
    works(["train", "--manifest", data / "manifest.csv", "--out-dir", out_dir, "--name", "lauf-1", *TINY])
    pred = tmp_path / "Vorhersage ü"
    works(["predict", out_dir / "lauf-1", data / "Bilder Ü", "--out", pred, *PREDICT_FAST])
    assert (pred / "Seite 0 é_mask.png").is_file() and (pred / "Seite 2 é_overlay.jpg").is_file()
    assert snapshot(data) == before


def test_predict_refuses_a_scan_above_max_pixels_and_accepts_it_when_raised(run, tmp_path):
    scans = tmp_path / "big"
    image, _ = make_pair(np.random.default_rng(0), size=(300, 400))  # 0.12 MP: a "huge scan" at these limits
    write_image(scans / "big.png", image)
    result = cli("predict", run, scans, "--out", tmp_path / "refused", *PREDICT_FAST, "--max-pixels", "100000")
    assert result.exit_code == 1 and "--max-pixels" in result.output, result.output
    assert not (tmp_path / "refused/big_index.png").exists()
    out = tmp_path / "out"
    works(["predict", run, scans, "--out", out, *PREDICT_FAST, "--max-pixels", "200000"])
    assert cv2.imread(str(out / "big_index.png"), cv2.IMREAD_UNCHANGED).shape == (300, 400)


def test_a_decompression_bomb_is_accepted_by_manifest_check_only_with_a_raised_limit(data):
    bomb_png(data / "images/img00.png", side=2000)  # 4 MP: over a 3 MP limit, under 5 MP
    write_image(data / "masks/img00.png", np.zeros((2000, 2000, 3), np.uint8))
    before = snapshot(data)
    refused = cli("manifest", "check", data / "manifest.csv", "--max-pixels", "3000000")
    errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert refused.exit_code == 1 and len(errors) == 2, refused.output  # the image and its mask
    assert all("img00.png" in e and "4 MP" in e and "--max-pixels" in e for e in errors), errors
    assert snapshot(data) == before
    assert "no errors" in works(["manifest", "check", data / "manifest.csv", "--max-pixels", "5000000"])


# ============================================================================================ a real process
def test_a_real_process_prints_one_line_on_stderr_and_exits_1(data, tmp_path):
    """`python -m damage_smp train` in its own process, a loader worker process reading a bad file: stderr is the
    one error line (no worker traceback, no library warnings), and the data is untouched."""
    _zero_byte_image(data)
    _one_train_image(data)
    before = snapshot(data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("DAMAGE_SMP_DEBUG", None)
    args = [str(a) for a in _train(data, tmp_path)]
    args[args.index("--num-workers") + 1] = "1"
    proc = subprocess.run([sys.executable, "-m", "damage_smp", *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "img00.png" in lines[0] and "0 bytes" in lines[0] and "re-export" in lines[0]
    assert snapshot(data) == before
