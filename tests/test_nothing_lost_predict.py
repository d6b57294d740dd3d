"""Nothing lost in predict and manifest: files predict did not write are never replaced or taken for predictions,
predict outputs are never inputs, unfinished outputs are redone, and a manifest is never rewritten by its split.

(issue 17: items 2, 8, 9 and 10 for predict and manifest.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_pair, train_tiny_run
from PIL import Image
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.images import read_mask, write_image
from damage_smp.labels import load_scheme
from damage_smp.manifest import audit, audit_manifest
from damage_smp.predict import collect_inputs, merge_areas, predict
from damage_smp.predict.outputs import tint_in_place

SCHEME = load_scheme("artefact")
FAST = dict(tile=64, overlap=0.25, batch_size=8, device="cpu", workers=2)
FOREIGN = r"was not written by damage-smp predict; .*never replaces it.*: give another --out, or move the file"


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """One tiny trained run (resnet18, no pretrained weights, 1 epoch of 4 crops)."""
    return train_tiny_run(tmp_path_factory.mktemp("nothing-lost-run"), n_train=4, samples_per_epoch=4)


def scans(folder: Path, n: int = 2, suffix: str = ".png") -> Path:
    for i in range(n):
        image, _ = make_pair(np.random.default_rng(i), size=(48, 64))
        write_image(folder / f"s{i}{suffix}", image)
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ============================================================================================ (2) foreign files
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_areas_csv_in_out_is_refused_and_kept(run_dir, tmp_path, overwrite):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "areas.csv").write_text("my own table\n")
    with pytest.raises(FileExistsError, match=rf"areas\.csv: exists and {FOREIGN}"):
        predict(run_dir, [scans(tmp_path / "scans")], out, overwrite=overwrite, **FAST)
    assert contents(out) == {"areas.csv": b"my own table\n"}  # nothing written, nothing replaced


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_mask_png_is_refused_never_listed_as_the_prediction(run_dir, tmp_path, overwrite):
    out = tmp_path / "pred"
    write_image(out / "s0_mask.png", np.zeros((5, 5, 3), np.uint8))  # the user's own file, where ours would go
    before = contents(out)
    with pytest.raises(FileExistsError, match=rf"s0_mask\.png: exists and {FOREIGN}"):
        predict(run_dir, [scans(tmp_path / "scans")], out, overwrite=overwrite, **FAST)
    assert contents(out) == before


def test_a_users_file_in_a_folder_predict_made_is_refused_too(run_dir, tmp_path):
    folder = scans(tmp_path / "scans")
    out = tmp_path / "pred"
    predict(run_dir, [folder / "s0.png"], out, **FAST)  # out is now a predict folder
    (out / "s1_areas.json").write_text('{"mine": true}')  # a JSON of the user's, named like a record
    with pytest.raises(FileExistsError, match=rf"s1_areas\.json: exists and {FOREIGN}"):
        predict(run_dir, [folder], out, overwrite=True, **FAST)
    assert (out / "s1_areas.json").read_text() == '{"mine": true}'


def test_a_batch_killed_mid_image_resumes_its_own_files(run_dir, tmp_path, monkeypatch):
    folder = scans(tmp_path / "scans", n=1)
    out = tmp_path / "pred"

    def killed(*args, **kwargs):  # the writer dies after the index and colour masks, before the overlay
        raise RuntimeError("killed")

    monkeypatch.setattr("damage_smp.predict.outputs.tint_in_place", killed)
    first = predict(run_dir, [folder], out, **FAST)
    assert len(first.failures) == 1 and (out / "s0_mask.png").is_file() and not (out / "s0_overlay.jpg").exists()
    monkeypatch.setattr("damage_smp.predict.outputs.tint_in_place", tint_in_place)
    again = predict(run_dir, [folder], out, **FAST)  # its own half-written image is not "foreign"
    assert (again.n_done, again.n_skipped, again.failures) == (1, 0, [])
    assert pd.read_csv(out / "areas.csv")["overlay"].tolist() == ["s0_overlay.jpg"]


def test_merge_areas_refuses_a_users_areas_csv(tmp_path):
    (tmp_path / "areas.shard-1-of-1.csv").write_text("image\nx.png\n")
    (tmp_path / "areas.csv").write_text("my own table\n")
    with pytest.raises(FileExistsError, match=r"areas\.csv: exists and was not written.*move it away, then merge"):
        merge_areas(tmp_path)
    assert (tmp_path / "areas.csv").read_text() == "my own table\n"


# ============================================================================================ (8) outputs as inputs
def test_outputs_of_another_predict_inside_the_input_folder_are_never_inputs(run_dir, tmp_path):
    folder = scans(tmp_path / "scans")
    first = predict(run_dir, [folder], folder / "pred1", **FAST)
    assert first.n_done == 2
    second = predict(run_dir, [folder], folder / "pred2", **FAST)  # pred1 (3 images per scan) is not walked
    assert (second.n_done, second.n_skipped) == (2, 0)
    assert sorted(p.name for p, _ in collect_inputs([str(folder / "**" / "*.*")])) == ["s0.png", "s1.png"]
    with pytest.raises(ValueError, match=r"pred1: is the output folder of a damage-smp predict"):
        collect_inputs([folder / "pred1"])


# ============================================================================================ (10) minor
def test_a_zero_byte_output_is_not_finished(run_dir, tmp_path):
    folder = scans(tmp_path / "scans")
    out = tmp_path / "pred"
    predict(run_dir, [folder], out, **FAST)
    (out / "s0_mask.png").write_bytes(b"")  # e.g. a copy cut short by a full disk
    (out / "s1_areas.json").write_bytes(b"")
    again = predict(run_dir, [folder], out, **FAST)
    assert (again.n_done, again.n_skipped, again.failures) == (2, 0, [])
    assert read_mask(out / "s0_mask.png").shape == (48, 64, 3)
    assert len(pd.read_csv(out / "areas.csv")) == 2


def test_stale_temp_files_of_a_killed_predict_are_cleaned_on_start(run_dir, tmp_path):
    folder = scans(tmp_path / "scans", n=1)
    out = tmp_path / "pred"
    predict(run_dir, [folder], out, **FAST)
    stale, fresh, other = out / ".s0_mask.png.k2x9_abq.tmp", out / ".s0_index.png.a1b2c3d4.tmp", out / ".x.q1w2e3r4.tmp"
    for path in (stale, fresh, other):
        path.write_bytes(b"half a file")
    hour_ago = time.time() - 3600
    for path in (stale, other):
        os.utime(path, (hour_ago, hour_ago))
    predict(run_dir, [folder], out, **FAST)
    assert not stale.exists()  # left by kill -9: ours, and old
    assert fresh.exists() and other.exists()  # maybe a live write of a concurrent predict; not our name


def test_gif_inputs_are_predicted_from_their_first_frame(run_dir, tmp_path):
    folder = scans(tmp_path / "scans", n=1)
    image, _ = make_pair(np.random.default_rng(5), size=(40, 56))
    frames = [Image.fromarray(image), Image.fromarray(255 - image)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    result = predict(run_dir, [folder], tmp_path / "pred", **FAST)
    assert (result.n_done, result.failures) == (2, [])
    assert read_mask(tmp_path / "pred" / "anim_mask.png").shape == (40, 56, 3)


def test_manifest_split_refuses_to_rewrite_its_input(tiny_manifest):
    before = tiny_manifest.read_bytes()
    spelled = tiny_manifest.parent / "images" / ".." / tiny_manifest.name  # the same file, another spelling
    for out in (tiny_manifest, spelled):
        args = ["manifest", "split", str(tiny_manifest), "--out", str(out), "--overwrite"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "is the input manifest" in result.output and "never modifies its input" in result.output
    assert tiny_manifest.read_bytes() == before


# ============================================================================================ (9) a huge check
@pytest.fixture
def duplicated(tmp_path) -> Path:
    """One image listed 100,000 times, and a second image once."""
    for i in range(2):
        image, index = make_pair(np.random.default_rng(i))
        write_image(tmp_path / f"i{i}.png", image)
        write_image(tmp_path / f"m{i}.png", SCHEME.colorize(index))
    lines = ["image,mask,split", *["i0.png,m0.png,train"] * 100_000, "i1.png,m1.png,val"]
    (tmp_path / "dup.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "dup.csv"


def test_100k_duplicate_rows_give_a_short_error_with_a_count(duplicated):
    result = CliRunner().invoke(app, ["manifest", "check", str(duplicated)])
    assert result.exit_code == 1
    assert "i0.png: listed 100000 times (lines 2, 3, 4, 5, 6 and 99995 more)" in result.output
    assert len(result.output) < 5_000, f"{len(result.output)} characters"


def test_the_check_progress_bar_counts_every_row(duplicated, monkeypatch):
    totals, made = [], audit.progress_bar

    def recording(*args, **kwargs):
        bar = made(*args, **kwargs)
        add_task = bar.add_task
        bar.add_task = lambda what, **kw: totals.append(kw["total"]) or add_task(what, **kw)
        return bar

    monkeypatch.setattr(audit, "progress_bar", recording)
    report = audit_manifest(duplicated, SCHEME)
    assert totals == [100_001] and report.images == {"train": 1, "val": 1, "test": 0}
