"""The gallery's confidence layer: predict's damage probability and uncertainty maps drawn over the scans.

The batch is a real `predict --save colour,index,overlay,prob,uncertainty` of the shared tiny run on three
64 x 64 scans (8-bit PNG maps) and one 300 x 200 scan that predict writes as 16-bit tiled TIFFs (its size limit
lowered for the test). The pages are rendered in headless Chromium (the `browser` fixture in conftest.py) and
the canvases read back with getImageData (they are never tainted: the page writes the pixels itself).
"""

from __future__ import annotations

import json
import re
import shutil
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import make_pair
from matplotlib import colormaps
from test_report import card_of, drawn, open_page, requested_urls, wait

from damage_smp.images import read_mask, write_image
from damage_smp.labels import load_scheme
from damage_smp.predict import confidence, predict
from damage_smp.report import report
from damage_smp.report.confidence import COLORMAPS, LABELS, read_level_preview

SCHEME = load_scheme("artefact")
OPTIONS = dict(tile=64, overlap=0.25, batch_size=8, device="cpu", workers=1)
NAMES = ["img00", "img01", "img02", "wide"]


# ============================================================================================ inputs on disk
@pytest.fixture(scope="module")
def scans(shared_run, module_dir) -> Path:
    folder = module_dir("conf-scans")
    for i in range(3):
        shutil.copy(shared_run.parent / "images" / f"img0{i}.png", folder / f"img0{i}.png")
    write_image(folder / "wide.png", make_pair(np.random.default_rng(5), size=(200, 300))[0])
    return folder


@pytest.fixture(scope="module")
def conf_batch(shared_run, scans, module_dir) -> Path:
    out = module_dir("conf-batch") / "pred"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(confidence, "TIFF_PIXELS", 64 * 64)  # the 300 x 200 scan is "large": 16-bit TIFF maps
        predict(shared_run, [scans], out, save="colour,index,overlay,prob,uncertainty", **OPTIONS)
    return out


@pytest.fixture(scope="module")
def conf_gallery(conf_batch, module_dir) -> Path:
    return report(conf_batch, module_dir("conf-report") / "gallery.html").path


def level_map(path: Path) -> np.ndarray:
    """A confidence map file as 8-bit levels (a 16-bit TIFF scaled by 255 / 65535)."""
    if path.suffix == ".tif":
        return np.rint(tifffile.imread(path) * (255 / 65535)).astype(np.uint8)
    return read_mask(path)


def expected_colours(path: Path, kind: str) -> np.ndarray:
    """(H, W, 4) RGBA: the map's levels through matplotlib's colour map for that kind, opaque."""
    rgb = colormaps[COLORMAPS[kind]](level_map(path) / 255.0)[..., :3]
    return np.dstack([np.rint(rgb * 255), np.full(rgb.shape[:2], 255)]).astype(int)


def expected_classes(index_png: Path) -> np.ndarray:
    """(H, W, 4) RGBA as the gallery draws classes at first: damage in its display colour, the rest clear."""
    index = SCHEME.decode(read_mask(index_png))
    colours = np.zeros((256, 4), int)
    for i in SCHEME.damage_indices:
        colours[i] = (*SCHEME.classes[i].shown, 255)
    return colours[index]


def canvas_pixels(driver, canvas) -> np.ndarray:
    w, h, data = driver.execute_script(
        "const c = arguments[0]; if (!c.width) return [0, 0, []];"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]",
        canvas,
    )
    return np.array(data, int).reshape(h, w, 4)


def choose(driver, select_id: str, label: str) -> None:
    from selenium.webdriver.support.select import Select

    Select(driver.find_element("id", select_id)).select_by_visible_text(label)


def visible_bars(driver, scope: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' .cbar')].filter(b => !b.hidden)"
        ".map(b => b.getAttribute('data-layer'))",
        scope,
    )


# ============================================================================================ the menu
def test_the_layer_menu_offers_only_the_maps_the_batch_has(browser, conf_batch, conf_gallery, shared_run, scans,
                                                           tmp_path):  # fmt: skip
    table = pd.read_csv(conf_batch / "areas.csv", keep_default_na=False)
    assert sorted(table["prob"]) == ["img00_prob.png", "img01_prob.png", "img02_prob.png", "wide_prob.tif"]
    open_page(browser, conf_gallery)
    options = [o.text for o in browser.find_elements("css selector", "#layer option")]
    assert options == ["classes", LABELS["prob"], LABELS["uncertainty"]]
    viewer = browser.find_elements("css selector", "#viewer-layer option")  # in the closed dialog
    assert [o.get_attribute("textContent") for o in viewer] == options
    assert visible_bars(browser, "#toolbar") == []  # the colour bars show with their map only

    prob_only = tmp_path / "pred"
    predict(shared_run, [scans], prob_only, save="index,prob", **OPTIONS)
    page = report(prob_only, tmp_path / "p.html").path
    open_page(browser, page)
    assert [o.text for o in browser.find_elements("css selector", "#layer option")] == ["classes", LABELS["prob"]]


def test_a_batch_without_maps_has_no_menu(batch_without_maps, tmp_path):
    result = report(batch_without_maps, tmp_path / "plain.html")
    text = result.path.read_text()
    assert 'id="layer"' not in text and 'id="viewer-layer"' not in text and 'class="cbar"' not in text
    assert '"layers":' not in text and '"conf":' not in text and '"c":' not in text
    assert not (result.files_dir / "conf").exists()


@pytest.fixture(scope="module")
def batch_without_maps(conf_batch, module_dir) -> Path:
    """The same predictions with predict's default outputs only (colour, index, overlay)."""
    out = module_dir("plain") / "pred"
    shutil.copytree(conf_batch, out, ignore=shutil.ignore_patterns("*_prob.*", "*_uncertainty.*"))
    table = pd.read_csv(out / "areas.csv", keep_default_na=False, dtype=str)
    table[["prob", "uncertainty", "uncertainty_mean"]] = ""
    table.to_csv(out / "areas.csv", index=False)
    return out


# ============================================================================================ the cards
def test_switching_the_layer_draws_the_colour_mapped_maps_and_back(browser, conf_batch, conf_gallery):
    browser.get_log("performance")  # drop what earlier tests logged
    open_page(browser, conf_gallery)
    table = pd.read_csv(conf_batch / "areas.csv", keep_default_na=False)
    row = {Path(r["index"]).name.removesuffix("_index.png"): r for _, r in table.iterrows()}
    for name in NAMES:  # at first: the classes, exactly as predicted
        card = card_of(browser, name)
        drawn(browser, card)
        got = canvas_pixels(browser, card.find_element("css selector", "canvas"))
        assert np.array_equal(got, expected_classes(conf_batch / row[name]["index"])), name

    for kind in ("prob", "uncertainty"):
        choose(browser, "layer", LABELS[kind])
        assert visible_bars(browser, "#toolbar") == [kind]
        assert browser.find_element("id", "classes").get_attribute("disabled") is not None  # class chips: n/a
        for name in NAMES:
            card = card_of(browser, name)
            drawn(browser, card)
            got = canvas_pixels(browser, card.find_element("css selector", "canvas"))
            want = expected_colours(conf_batch / row[name][kind], kind)
            assert got.shape == want.shape, (name, kind)
            assert np.abs(got - want).max() <= (0 if name != "wide" else 4), (name, kind)  # TIFF: rounding
            assert np.abs(got - want).mean() < 0.2, (name, kind)

    choose(browser, "layer", "classes")
    assert visible_bars(browser, "#toolbar") == []
    assert browser.find_element("id", "classes").get_attribute("disabled") is None
    for name in NAMES:
        card = card_of(browser, name)
        drawn(browser, card)
        got = canvas_pixels(browser, card.find_element("css selector", "canvas"))
        assert np.array_equal(got, expected_classes(conf_batch / row[name]["index"])), name
    urls = requested_urls(browser)
    assert any(re.search(r"/conf/0000\.js$", u) for u in urls), urls
    assert all(u.startswith(("file:", "data:")) for u in urls), urls


def test_the_viewer_follows_the_layer_and_has_its_own_menu(browser, conf_batch, conf_gallery):
    open_page(browser, conf_gallery)
    choose(browser, "layer", LABELS["uncertainty"])
    first = browser.find_elements("css selector", ".card")[0]
    name = first.find_element("css selector", "h3").text.split(" ", 1)[1]
    first.find_element("css selector", "button.open").click()
    dialog = browser.find_element("id", "viewer")
    wait(browser, lambda: dialog.get_attribute("open") is not None, what="the viewer")
    canvas = browser.find_element("id", "viewer-canvas")
    assert browser.find_element("id", "viewer-layer").get_attribute("value") == "uncertainty"
    wait(browser, lambda: canvas.get_attribute("data-layer") == "uncertainty", what="the viewer's map")
    suffix = ".tif" if name == "wide" else ".png"
    want = expected_colours(conf_batch / f"{name}_uncertainty{suffix}", "uncertainty")
    assert np.abs(canvas_pixels(browser, canvas) - want).max() <= 4
    assert visible_bars(browser, "#viewer") == ["uncertainty"]
    assert browser.find_element("id", "viewer-classes").get_attribute("disabled") is not None

    choose(browser, "viewer-layer", "classes")  # the viewer's own menu: the gallery keeps its layer
    wait(browser, lambda: canvas.get_attribute("data-layer") == "classes", what="the viewer's classes")
    assert np.array_equal(canvas_pixels(browser, canvas), expected_classes(conf_batch / f"{name}_index.png"))
    assert visible_bars(browser, "#viewer") == []
    assert browser.find_element("id", "layer").get_attribute("value") == "uncertainty"
    browser.find_element("id", "viewer-next").click()  # the next scan opens on the gallery's layer again
    wait(browser, lambda: canvas.get_attribute("data-layer") == "uncertainty", what="the next scan's map")
    assert browser.find_element("id", "viewer-layer").get_attribute("value") == "uncertainty"
    browser.find_element("id", "viewer-close").click()


# ============================================================================================ the previews
def test_a_tiled_16_bit_map_is_shrunk_by_block_mean_without_reading_it_whole(tmp_path):
    from damage_smp.predict.confidence import write_tiff16

    rng = np.random.default_rng(0)
    h, w = 3000, 4000  # 12 x 16 tiles of 256, the last row and column cut short
    base = rng.integers(0, 65536, (h // 40, w // 40), dtype=np.uint16)
    level = cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR)
    level[::7, ::5] = rng.integers(0, 65536, level[::7, ::5].shape, dtype=np.uint16)  # detail the mean must see
    path = tmp_path / "big_prob.tif"
    write_tiff16(path, level)

    tracemalloc.start()
    small = read_level_preview(path, (500, 375))  # an eighth of each side
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    want = level.reshape(375, 8, 500, 8).mean(axis=(1, 3)) * (255 / 65535)
    assert small.dtype == np.uint8 and small.shape == (375, 500)
    assert np.abs(small - want).max() <= 0.5 + 1e-6  # the exact block mean, rounded
    assert peak < level.nbytes / 3, f"peak {peak / 1e6:.1f} MB for a {level.nbytes / 1e6:.1f} MB map"


def test_an_8_bit_map_is_shrunk_like_the_scan_preview(tmp_path):
    level = np.random.default_rng(1).integers(0, 256, (300, 400), dtype=np.uint8)
    write_image(tmp_path / "a_prob.png", level)
    assert np.array_equal(read_level_preview(tmp_path / "a_prob.png", (400, 300)), level)
    small = read_level_preview(tmp_path / "a_prob.png", (100, 75))
    assert np.array_equal(small, cv2.resize(level, (100, 75), interpolation=cv2.INTER_AREA))


def test_an_unreadable_map_is_a_note_and_the_classes_still_show(conf_batch, tmp_path):
    copy = tmp_path / "pred"
    shutil.copytree(conf_batch, copy)
    (copy / "img01_prob.png").write_bytes(b"not a png")
    result = report(copy, tmp_path / "r.html")
    text = result.path.read_text()
    assert "1 scan(s) shown without a confidence map that could not be read: img01: img01_prob.png" in text
    assert result.n_shown == len(NAMES) and 'id="layer"' in text
    assert len(list((result.files_dir / "previews").iterdir())) == len(NAMES)


def test_without_areas_csv_the_records_name_the_maps(conf_batch, tmp_path):
    copy = tmp_path / "pred"
    shutil.copytree(conf_batch, copy)
    (copy / "areas.csv").unlink()  # an unfinished or sharded batch: the *_areas.json records list the outputs
    text = report(copy, tmp_path / "r.html").path.read_text()
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text).group(1))
    assert [x["kind"] for x in data["layers"]] == ["prob", "uncertainty"]
    assert all(s["c"] == 0 for s in data["scans"]) and len(data["scans"]) == len(NAMES)
    conf = (tmp_path / "r_files" / "conf" / "0000.js").read_text()
    maps = json.loads(conf[conf.index(",") + 1 : conf.rindex(")")])
    assert sorted(maps) == [str(k) for k in range(len(NAMES))]
    assert all(sorted(m) == ["prob", "uncertainty"] for m in maps.values())
