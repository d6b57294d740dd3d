"""damage-smp predict on real files with a real (tiny, 1-epoch) run: sizes, colours, failures, resume, shards."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_pair
from PIL import Image
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.images import read_image, read_mask, write_image
from damage_smp.labels import ClassDef, LabelScheme, load_scheme
from damage_smp.models import DamageModel, load_bundle
from damage_smp.plots import overlay
from damage_smp.predict import (
    Job,
    collect_inputs,
    effective_shard,
    parse_save,
    parse_shard,
    plan_outputs,
    predict,
    predict_image,
    tint_in_place,
    write_outputs,
)
from damage_smp.thresholds import resolve_decision
from damage_smp.tiling import pad_to, plan_tiles

SCHEME = load_scheme("artefact")
FAST = dict(tile=64, overlap=0.25, batch_size=8, device="cpu", workers=2)


@pytest.fixture(scope="session")
def run_dir(shared_run) -> Path:
    """One tiny trained run (resnet18, no pretrained weights, 1 epoch of 8 crops) shared by every test."""
    return shared_run


def _image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    image, _ = make_pair(np.random.default_rng(seed), size=(h, w))
    write_image(path, image)
    return path


def _size(path: Path) -> tuple[int, int]:
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return arr.shape[0], arr.shape[1]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*_*.*") if p.is_file()}


# ============================================================================================ outputs
@pytest.mark.slow  # ~1 MP through the model on CPU: seconds on an idle machine
def test_cli_writes_masks_of_the_input_size_in_scheme_colours_and_values(run_dir, tmp_path):
    scans = tmp_path / "scans"
    _image(scans / "wide.jpg", 767, 1021, seed=1)
    _image(scans / "film" / "strip.png", 37, 2000, seed=2)
    out = tmp_path / "pred"
    args = ["predict", str(run_dir), str(scans), "--out", str(out), "--tile", "256", "--overlap", "0"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "predicted 2, skipped 0 finished, failed 0" in result.output

    colours = {tuple(int(v) for v in c) for c in SCHEME.colors}
    values = {v for c in SCHEME.classes for v in c.values}
    for rel, size in (("wide", (767, 1021)), ("film/strip", (37, 2000))):
        mask, index, over = (out / f"{rel}{s}" for s in ("_mask.png", "_index.png", "_overlay.jpg"))
        assert _size(mask) == _size(index) == _size(over) == size
        rgb = read_mask(mask)  # (H, W, 3) RGB as stored
        assert rgb.ndim == 3 and {tuple(c) for c in np.unique(rgb.reshape(-1, 3), axis=0)} <= colours
        raw = read_mask(index)  # (H, W) mask values
        assert raw.ndim == 2 and raw.dtype == np.uint8 and set(np.unique(raw).tolist()) <= values
        classes = SCHEME.decode(raw)
        assert np.array_equal(SCHEME.decode(rgb), classes)  # colour and index masks say the same
        with Image.open(mask) as palette:  # a palette PNG whose pixels are the index mask's values
            assert palette.mode == "P" and np.array_equal(np.asarray(palette), raw)
        assert (out / f"{rel}_areas.json").is_file()
    assert (out / "legend.png").is_file() and (out / "predict.json").is_file()
    assert pd.read_csv(out / "failures.csv").empty

    areas = pd.read_csv(out / "areas.csv")
    assert sorted(areas["mask"]) == ["film/strip_mask.png", "wide_mask.png"]
    for _, row in areas.iterrows():
        classes = SCHEME.decode(read_mask(out / row["index"]))
        counts = np.bincount(classes.ravel(), minlength=SCHEME.num_classes)
        assert [row[f"{n}_px"] for n in SCHEME.names] == counts.tolist()  # pixels match the written mask
        assert row["object_px"] == row["width"] * row["height"] - counts[SCHEME.background_index]
        pct = [row[f"{n}_pct"] for i, n in enumerate(SCHEME.names) if i != SCHEME.background_index]
        if row["object_px"] > 0:
            assert sum(pct) == pytest.approx(100.0, abs=1e-3)  # shares of the object: Background excluded
            damage = sum(row[f"{SCHEME.names[i]}_pct"] for i in SCHEME.damage_indices)
            assert row["damage_pct"] == pytest.approx(damage, abs=1e-3)
    assert "Background_pct" not in areas.columns


def test_overlay_tints_only_damage_and_matches_plots_overlay(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    index = rng.integers(0, SCHEME.num_classes, (70, 90)).astype(np.uint8)
    expected = overlay(image, index, SCHEME)  # float reference of the whole image
    bgr = tint_in_place(image.copy(), index, SCHEME)
    assert np.abs(bgr[..., ::-1].astype(int) - expected.astype(int)).max() <= 1
    clean = ~np.isin(index, SCHEME.damage_indices)
    assert np.array_equal(bgr[..., ::-1][clean], image[clean])


def test_index_png_is_16_bit_when_a_scheme_value_is_above_255(tmp_path):
    scheme = LabelScheme(
        "wide-values", (ClassDef("paper", (0, 0, 0), (0,), damage=False), ClassDef("tear", (255, 0, 0), (1000,)))
    )
    index = np.zeros((40, 50), np.uint8)
    index[10:20, 5:30] = 1
    image = np.full((40, 50, 3), 128, np.uint8)
    job = Job(tmp_path / "in.png", tmp_path / "out" / "in")
    write_outputs(job, image, index, scheme, ("colour", "index", "overlay"), overwrite=False)
    raw = read_mask(job.output("index"))
    assert raw.dtype == np.uint16 and set(np.unique(raw).tolist()) == {0, 1000}
    assert np.array_equal(scheme.decode(raw), index)
    assert np.array_equal(scheme.decode(read_mask(job.output("colour"))), index)
    with Image.open(job.output("colour")) as colour:  # 16-bit values fit no palette: an RGB PNG
        assert colour.mode == "RGB"


def test_overlay_legend_lists_the_damage_present_and_is_left_out_of_tiny_scans(tmp_path):
    index = np.zeros((600, 800), np.uint8)
    index[300:400, 300:500] = SCHEME.names.index("Hair")
    index[450:, :] = SCHEME.background_index
    grey = np.full((600, 800, 3), 100, np.uint8)
    job = Job(tmp_path / "in.png", tmp_path / "out" / "big")
    write_outputs(job, grey.copy(), index, SCHEME, ("overlay",), overwrite=False)
    over = read_image(job.output("overlay"))
    assert over[12:34, 100:260].mean() > 240  # the legend's white box, top left: one row, Hair
    assert abs(int(over[42:50, 100:260].mean()) - 100) <= 2  # ...and no more rows: only the classes present
    assert abs(int(over[60:290].mean()) - 100) <= 2  # the rest of the clean scan is untouched
    hair = np.array(SCHEME.colors[SCHEME.names.index("Hair")], float)
    assert np.abs(over[320:380, 320:480].mean((0, 1)) - (0.45 * 100 + 0.55 * hair)).max() < 4

    strip = np.zeros((37, 2000), np.uint8)
    strip[:, :10] = SCHEME.names.index("Hair")
    job = Job(tmp_path / "in.png", tmp_path / "out" / "strip")
    write_outputs(job, np.full((37, 2000, 3), 100, np.uint8), strip, SCHEME, ("overlay",), overwrite=False)
    over = read_image(job.output("overlay"))
    assert over.shape == (37, 2000, 3) and abs(int(over[:, 20:300].mean()) - 100) <= 2  # no legend fits


# ============================================================================================ failures, resume
def test_unreadable_inputs_are_reported_and_the_rest_written(run_dir, tmp_path):
    scans = tmp_path / "scans"
    _image(scans / "good.png", 64, 80)
    _image(scans / "also_good.jpg", 50, 64, seed=1)
    (scans / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    (scans / "empty.png").write_bytes(b"")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    out = tmp_path / "pred"
    args = ["predict", str(run_dir), str(scans), str(notes), "--out", str(out), "--tile", "64", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "3 image(s) failed" in result.output and "empty.png" in result.output
    failures = pd.read_csv(out / "failures.csv")
    assert sorted(Path(p).name for p in failures["path"]) == ["corrupt.jpg", "empty.png", "notes.txt"]
    assert failures.set_index(failures["path"].map(lambda p: Path(p).name))["error"]["empty.png"].count("empty")
    for name in ("good", "also_good"):  # below the common root of scans/ and notes.txt: pred/scans/
        assert all((out / "scans" / f"{name}{s}").is_file() for s in ("_mask.png", "_index.png", "_overlay.jpg"))
    assert sorted(pd.read_csv(out / "areas.csv")["mask"]) == ["scans/also_good_mask.png", "scans/good_mask.png"]


def test_second_run_skips_finished_images_and_overwrite_redoes_them(run_dir, tmp_path):
    scans = tmp_path / "scans"
    for i in range(3):
        _image(scans / f"s{i}.png", 64, 64 + 16 * i, seed=i)
    out = tmp_path / "pred"
    first = predict(run_dir, [scans], out, **FAST)
    assert (first.n_done, first.n_skipped, first.failures) == (3, 0, [])
    before = _mtimes(out)
    assert len(before) == 12  # 3 images x (mask, index, overlay, areas)

    again = predict(run_dir, [scans], out, **FAST)
    assert (again.n_done, again.n_skipped) == (0, 3)
    assert _mtimes(out) == before  # nothing rewritten
    assert len(pd.read_csv(out / "areas.csv")) == 3  # skipped images still have their areas

    (out / "s1_overlay.jpg").unlink()  # e.g. killed before the overlay was written
    resumed = predict(run_dir, [scans], out, **FAST)
    assert (resumed.n_done, resumed.n_skipped) == (1, 2)
    now = _mtimes(out)
    assert now["s1_mask.png"] == before["s1_mask.png"] and "s1_overlay.jpg" in now  # only the missing one

    redone = predict(run_dir, [scans], out, overwrite=True, **FAST)
    assert (redone.n_done, redone.n_skipped) == (3, 0)
    assert all(_mtimes(out)[k] > now[k] for k in now)


def test_other_settings_into_the_same_folder_are_refused(run_dir, tmp_path):
    _image(tmp_path / "a.png", 64, 64)
    out = tmp_path / "pred"
    predict(run_dir, [tmp_path / "a.png"], out, **FAST)
    with pytest.raises(ValueError, match=r"tile 64 -> 128.*--overwrite"):
        predict(run_dir, [tmp_path / "a.png"], out, **{**FAST, "tile": 128})


# ============================================================================================ inputs and names
def test_outputs_mirror_input_folders_and_never_clash(tmp_path):
    for rel in ("a/x.png", "b/x.png", "a/y.jpg", "a/y.png", "a/deep/z.tif"):
        _image(tmp_path / "in" / rel, 8, 8)
    jobs = plan_outputs(collect_inputs([tmp_path / "in" / "a", tmp_path / "in" / "b"]), tmp_path / "out")
    names = sorted(j.output("colour").relative_to(tmp_path / "out").as_posix() for j in jobs)
    assert names == ["a/deep/z_mask.png", "a/x_mask.png", "a/y.jpg_mask.png", "a/y.png_mask.png", "b/x_mask.png"]
    one = plan_outputs(collect_inputs([tmp_path / "in" / "a"]), tmp_path / "out")  # a folder: relative to it
    assert sorted(j.base.name for j in one) == ["x", "y.jpg", "y.png", "z"]


def test_inputs_from_globs_manifests_and_files_without_the_output_folder(run_dir, tmp_path):
    for rel in ("scans/p1.png", "scans/sub/p2.jpg", "scans/readme.md", "other/q.png"):
        path = tmp_path / rel
        _image(path, 8, 8) if path.suffix != ".md" else path.write_text("x")
    _image(tmp_path / "scans" / "pred" / "p1_mask.png", 8, 8)  # outputs of an earlier run inside the input
    (tmp_path / "list.csv").write_text("image\nscans/p1.png\nother/q.png\nmissing.png\n")
    found = collect_inputs(
        [str(tmp_path / "scans" / "**" / "*.png"), tmp_path / "list.csv", tmp_path / "scans"],
        exclude=tmp_path / "scans" / "pred",
    )
    rel = sorted(p.relative_to(tmp_path).as_posix() for p, _ in found)
    assert rel == ["missing.png", "other/q.png", "scans/p1.png", "scans/sub/p2.jpg"]  # missing: reported later
    manifest = collect_inputs([run_dir.parent / "manifest.csv"])  # image,mask,split: its image column
    assert [p.name for p, _ in manifest] == [f"img{i:02d}.png" for i in range(10)]
    with pytest.raises(FileNotFoundError, match="no such file"):
        collect_inputs([tmp_path / "nope"])
    with pytest.raises(ValueError, match="matches no image"):
        collect_inputs([str(tmp_path / "*.tif")])


# ============================================================================================ shards
def test_shards_partition_the_inputs_and_merge_their_areas(run_dir, tmp_path):
    scans = tmp_path / "scans"
    for i in range(5):
        _image(scans / f"s{i}.png", 40, 64, seed=i)
    out = tmp_path / "pred"
    one = predict(run_dir, [scans], out, shard=(1, 2), **FAST)
    assert one.n_done == 3 and not one.merged and not (out / "areas.csv").exists()
    runner = CliRunner()
    early = runner.invoke(app, ["predict", "--merge-areas", str(out)])
    assert early.exit_code == 1 and "shard(s) 2/2 have not finished" in early.output

    two = predict(run_dir, [scans], out, shard=(2, 2), **FAST)
    assert two.n_done == 2 and two.merged  # the last shard to finish joins the tables
    first = pd.read_csv(out / "areas.shard-1-of-2.csv")["image"].map(lambda p: Path(p).name)
    second = pd.read_csv(out / "areas.shard-2-of-2.csv")["image"].map(lambda p: Path(p).name)
    assert set(first) & set(second) == set()
    assert sorted([*first, *second]) == [f"s{i}.png" for i in range(5)]
    assert list(first) == ["s0.png", "s2.png", "s4.png"]  # every 2nd sorted input from the 1st

    (out / "areas.csv").unlink()
    merged = runner.invoke(app, ["predict", "--merge-areas", str(out)])
    assert merged.exit_code == 0, merged.output
    assert "5 image(s)" in merged.output
    areas = pd.read_csv(out / "areas.csv")
    assert list(areas["image"].map(lambda p: Path(p).name)) == [f"s{i}.png" for i in range(5)]
    both = runner.invoke(app, ["predict", str(run_dir), str(scans), "--merge-areas", str(out)])
    assert both.exit_code == 1 and "works alone" in both.output


def test_shard_and_save_specs_and_torchrun_ranks(monkeypatch):
    assert parse_save("color, overlay") == ("colour", "overlay")
    with pytest.raises(ValueError, match="--save 'masks'"):
        parse_save("masks,index")
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "1-2", "x"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert effective_shard(None) == (2, 2)
    assert effective_shard((2, 3)) == (4, 6)  # shard 2/3 of a job array, rank 1 of 2 inside it
    parts = []
    for k in range(1, 4):  # every (shard, rank) pair takes a different residue: a partition
        for rank in range(2):
            monkeypatch.setenv("RANK", str(rank))
            kk, n = effective_shard((k, 3))
            parts.append(list(range(10))[kk - 1 :: n])
    flat = sorted(i for part in parts for i in part)
    assert flat == list(range(10))


# ============================================================================================ tiling
def test_predict_image_of_one_tile_is_the_models_own_argmax(run_dir):
    bundle = load_bundle(run_dir, "best", "cpu")
    image, _ = make_pair(np.random.default_rng(5), size=(96, 128))
    pred = predict_image(bundle, image, tile=128, overlap=0.5)
    assert plan_tiles(96, 128, 128, 0.5).coords == [(0, 0)]
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # (1, 3, 96, 128)
        direct = bundle.model(x)[0].argmax(0).to(torch.uint8).numpy()
    assert pred.shape == (96, 128) and pred.dtype == np.uint8
    assert np.array_equal(pred, direct)


def test_bundle_runs_in_the_memory_format_it_trained_in(run_dir):
    """load_bundle puts a channels_last run's model in channels_last (faster CPU convolutions); the masks are
    those of the same weights in the default format (float rounding aside)."""
    bundle = load_bundle(run_dir, "best", "cpu")
    assert bundle.cfg.channels_last
    conv = next(m for m in bundle.model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    plain = replace(bundle, model=copy.deepcopy(bundle.model).to(memory_format=torch.contiguous_format))
    image, _ = make_pair(np.random.default_rng(8), size=(160, 224))
    fast, ref = predict_image(bundle, image, tile=128, overlap=0.5), predict_image(plain, image, tile=128, overlap=0.5)
    assert (fast == ref).mean() >= 0.999


def test_tiled_prediction_equals_whole_image_prediction_within_blending_tolerance(run_dir):
    """A net whose receptive field (7 px) is far smaller than the tile: each pixel of a tile interior sees
    exactly what it sees in the whole image, so tiles may differ from the whole only near tile edges, where
    the Gaussian window gives them little weight. Tolerance: >= 99.9 % of pixels agree on the class
    (measured: 99.99 %; with overlap 0, where nothing is blended, 96.9 %)."""
    bundle = load_bundle(run_dir, "best", "cpu")
    torch.manual_seed(0)
    c = bundle.scheme.num_classes
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(), torch.nn.Conv2d(16, c, 3, padding=1),
    )  # fmt: skip
    local = replace(bundle, model=DamageModel(net, (128.0,) * 3, (64.0,) * 3).eval())
    image, _ = make_pair(np.random.default_rng(6), size=(192, 256))
    whole = predict_image(local, image, tile=256, overlap=0.5)  # one 192x256 tile: the whole image
    tiled = predict_image(local, image, tile=64, overlap=0.5)  # 35 overlapping 64x64 tiles
    assert len(np.unique(whole)) > 3  # a real, varied prediction, not one class everywhere
    assert (whole == tiled).mean() >= 0.999
    with torch.inference_mode():
        x = pad_to(torch.from_numpy(image).permute(2, 0, 1), 192, 256)[None].float()
        assert np.array_equal(whole, local.model(x)[0].argmax(0).numpy())


def test_library_call_matches_the_cli_outputs(run_dir, tmp_path):
    path = _image(tmp_path / "lib.png", 64, 96, seed=9)
    out = tmp_path / "pred"
    predict(run_dir, [path], out, save="index", **FAST)
    assert not (out / "lib_mask.png").exists() and (out / "lib_index.png").is_file()
    bundle = load_bundle(run_dir)
    rule = resolve_decision(run_dir, "auto", bundle.scheme, bundle.checkpoint_path)  # what predict chose
    pred = predict_image(bundle, read_image(path), tile=64, overlap=0.25, batch_size=8, decision=rule)
    assert np.array_equal(SCHEME.decode(read_mask(out / "lib_index.png")), pred)


def test_a_big_scans_masks_encoded_beside_its_overlay_are_the_same_files(run_dir, tmp_path, monkeypatch):
    """From SIDE_PIXELS on, the index and colour masks are encoded in a second thread while the overlay is
    drawn: the files are byte for byte those of the one-thread path, and that thread's error is the image's."""
    from damage_smp.predict import outputs

    path = _image(tmp_path / "scan.png", 96, 128, seed=4)
    files = {}
    for side in (10**12, 0):  # never, always
        monkeypatch.setattr(outputs, "SIDE_PIXELS", side)
        out = tmp_path / f"side-{side}"
        assert predict(run_dir, [path], out, **FAST).n_done == 1
        files[side] = {p.name: p.read_bytes() for p in out.glob("scan_*") if not p.name.endswith(".json")}
    assert sorted(files[0]) == sorted(files[10**12]) and len(files[0]) == 3 and files[0] == files[10**12]

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "encode_image", full_disk)  # the index mask, in the side thread
    result = predict(run_dir, [path], tmp_path / "full", **FAST)
    assert result.n_done == 0 and "No space left" in result.failures[0][1]


def test_the_first_scan_is_read_once_while_the_model_loads(run_dir, tmp_path, monkeypatch):
    """predict starts decoding the first image before it builds the model, and the pipeline uses that read:
    the model load sees the first read already under way, and every image is decoded exactly once."""
    import threading

    from damage_smp.predict import pipeline, stages

    paths = [_image(tmp_path / f"in{i}.png", 64, 96, seed=i) for i in range(3)]
    reads, first_started, seen_by_load = [], threading.Event(), []

    def reading(path, *args):
        reads.append(Path(path).name)
        first_started.set()
        return read_image(path, *args)

    def loading(*args):
        seen_by_load.append(first_started.wait(10))  # without the early read this waits in vain
        return load_bundle(*args)

    monkeypatch.setattr(pipeline, "read_image", reading)  # the first image's read
    monkeypatch.setattr(stages, "read_image", reading)  # the others
    monkeypatch.setattr(pipeline, "load_bundle", loading)
    assert predict(run_dir, paths, tmp_path / "out", **FAST).n_done == 3
    assert seen_by_load == [True] and reads[0] == "in0.png"
    assert sorted(reads) == ["in0.png", "in1.png", "in2.png"]  # once each
