"""damage-smp report: pages rendered in a real headless Chromium (Debian chromium + chromium-driver).

The inputs are real files: a predict batch written by predict's own writers (write_outputs, area_row) from
hand-made class maps, and run directories with config.json, history.csv, metrics.json and per_image.csv built
from real confusion matrices, compared by compare.compare. No browser is downloaded: if Chromium is missing the
tests fail and say `make browser`.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.config import TrainConfig
from damage_smp.evaluate import per_image_counts
from damage_smp.images import write_image
from damage_smp.labels import load_scheme
from damage_smp.metrics import ConfusionMatrix
from damage_smp.plots import legend_image, save_confusion_matrix, save_curves, save_sample
from damage_smp.predict import Job, area_fields, area_row, write_outputs
from damage_smp.report import report
from damage_smp.report.gallery import shrink_index
from damage_smp.runs import HISTORY_FIELDS, write_csv, write_json, write_run_config

SCHEME = load_scheme("artefact")
HAIR, DUST, SCRATCH, STAINING, BACKGROUND = 5, 3, 4, 10, 16
# classes drawn into scan i (i = 0..6): Hair in 0, 2, 3, 5; scan 4 has no damage at all
SCAN_CLASSES = {0: [HAIR], 1: [DUST], 2: [HAIR, DUST], 3: [HAIR, SCRATCH, STAINING], 4: [], 5: [HAIR, DUST], 6: [DUST]}


# ============================================================================================ inputs on disk
def make_batch(root: Path) -> Path:
    """A predict --out folder in two subfolders, written by predict's own writers from known class maps."""
    rng = np.random.default_rng(0)
    out, rows = root / "pred", []
    for i, classes in SCAN_CLASSES.items():
        h, w = (480, 640) if i == 6 else (96, 128)  # one scan large enough for a separate card thumbnail
        image = rng.integers(90, 200, (h, w, 3), dtype=np.uint8)
        index = np.zeros((h, w), np.uint8)
        index[:, :6] = BACKGROUND
        for k, c in enumerate(classes):
            y, x = 8 + 20 * k, 12 + 14 * i
            index[y : y + 5 + 3 * i, x : x + 8 + k] = c
        src = root / "scans" / ("box A" if i % 2 else "box-B") / f"scan_{i:02d}.jpg"
        write_image(src, image)
        job = Job(src.resolve(), out / src.parent.name / src.stem)
        write_outputs(job, image.copy(), index, SCHEME, ("colour", "index", "overlay"), False)
        rows.append(area_row(job, SCHEME, out))
    write_json(out / "predict.json", {"run_dir": str(root / "experiments" / "lite0"), "label_scheme": SCHEME.to_dict()})
    write_csv(out / "areas.csv", rows, area_fields(SCHEME))
    write_csv(out / "failures.csv", [], ["path", "error"])
    write_image(out / "legend.png", legend_image(SCHEME))
    return out


def make_runs(root: Path) -> Path:
    """Four evaluated runs on the same two test images: imagenet frozen, fine-tuned (two seeds), scratch."""
    rng = np.random.default_rng(1)
    exp = root / "experiments"
    target = rng.choice([0, 3, 5, 16], size=(2, 32, 32), p=[0.7, 0.1, 0.1, 0.1]).astype(np.uint8)
    runs = [("frozen", "imagenet", True, 0), ("finetune", "imagenet", False, 0), ("scratch", "none", False, 0),
            ("finetune-seed1", "imagenet", False, 1)]  # fmt: skip
    for k, (name, weights, frozen, seed) in enumerate(runs):
        run = exp / name
        cfg = TrainConfig(
            encoder="resnet18",
            encoder_weights=weights,
            freeze_encoder=frozen,
            epochs=3,
            seed=seed,
            name=name,
            manifest=str(root / "data_manifest.csv"),
        )
        write_run_config(run, cfg, SCHEME, {"params_total": 1_000_000, "params_trainable_at_start": 500_000})
        write_json(run / "state.json", {"status": "finished", "epoch": 3, "reason": ""})
        history = [
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "val_loss": 1.2 / e,
                "val_miou": 0.2 + 0.1 * e + 0.05 * k,
                "val_damage_miou": 0.1 + 0.1 * e + 0.03 * k,
                "lr": 1e-3,
                "seconds": 10.0 + k,
                "img_per_s": 50.0,
                "frozen": str(frozen),
            }
            for e in (1, 2, 3)
        ]
        write_csv(run / "history.csv", history, HISTORY_FIELDS)
        save_curves(history, run / "curves.png", title=name)
        total, per_image = ConfusionMatrix(SCHEME.num_classes), []
        for j, t in enumerate(target):
            pred = np.where(rng.random(t.shape) < 0.55 + 0.15 * k, t, 0).astype(np.uint8)
            cm = ConfusionMatrix(SCHEME.num_classes)
            cm.update(pred, t)
            total.merge(cm)
            per_image.append(
                {"image": f"img{j}.png", "image_path": f"/data/img{j}.png", **per_image_counts(cm.to_numpy(), SCHEME)}
            )
        c = SCHEME.num_classes
        fields = [
            "image",
            "image_path",
            "n_pixels",
            "damage_iou",
            "damage_tp",
            "damage_fp",
            "damage_fn",
            *[f"{x}_{i}" for x in ("tp", "fp", "fn") for i in range(c)],
        ]
        write_csv(run / "per_image.csv", per_image, fields)
        entry = {
            "summary": total.summary(SCHEME),
            "per_class": total.per_class(SCHEME),
            "n_images": 2,
            "checkpoint": "best",
            "groups": {},
        }
        write_json(run / "metrics.json", {"test": entry})
        save_confusion_matrix(total.to_numpy(), SCHEME.names, run / "confusion_matrix.png")
        image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        save_sample(run / "samples" / "img0.jpg", image, target[0], target[0], SCHEME)
    return exp


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="damage-smp-report-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def batch(workdir) -> Path:
    return make_batch(workdir / "batch")


@pytest.fixture(scope="module")
def areas(batch) -> pd.DataFrame:
    df = pd.read_csv(batch / "areas.csv")
    df["name"] = df["index"].str.replace("_index.png", "", regex=False)
    return df


@pytest.fixture(scope="module")
def gallery(batch, workdir) -> Path:
    return report(batch, workdir / "out" / "gallery.html").path


@pytest.fixture(scope="module")
def study(workdir) -> Path:
    return report(make_runs(workdir / "study"), workdir / "out" / "study.html").path


# ============================================================================================ the browser
# the `browser` fixture (headless Chromium) is in conftest.py, shared with test_report_confidence.py
def wait(driver, condition, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    errors = driver.get_log("browser")
    raise AssertionError(f"timed out waiting for {what}; browser log: {errors}")


def open_page(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    wait(driver, lambda: driver.execute_script("return document.readyState") == "complete", what="page load")


def card_of(driver, name: str):
    for card in driver.find_elements("css selector", ".card"):
        if card.find_element("css selector", "h3").text.endswith(name):
            return card
    raise AssertionError(f"no card for {name}")


def drawn(driver, card) -> None:
    """Wait until the card's canvas shows the gallery's current drawing state."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
    script = (
        "const c = arguments[0].querySelector('canvas');"
        "return c.getAttribute('data-v') === document.getElementById('grid').getAttribute('data-version')"
    )
    wait(driver, lambda: driver.execute_script(script, card), what="the canvas to be painted")


def count_colour(driver, canvas, class_index: int) -> int:
    """Opaque canvas pixels of a class's colour, read back with getImageData (the canvas must be untainted)."""
    r, g, b = (int(v) for v in SCHEME.colors[class_index])
    return driver.execute_script(
        "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) if (d[i] === arguments[1] && d[i + 1] === arguments[2] &&"
        " d[i + 2] === arguments[3] && d[i + 3] === 255) n++; return n;",
        canvas,
        r,
        g,
        b,
    )


def shown_names(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#grid .card')].filter(c => !c.hidden)"
        ".map(c => c.querySelector('h3').textContent.replace(/^#\\d+\\s*/, ''))"
    )


def screenshot(element) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(element.screenshot_as_png, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)


# ============================================================================================ gallery
def test_gallery_lists_every_scan_worst_first(browser, gallery, areas):
    open_page(browser, gallery)
    names = shown_names(browser)
    assert sorted(names) == sorted(areas["name"])
    expected = areas.sort_values(["damage_pct", "name"], ascending=[False, True], kind="stable")["name"].tolist()
    assert names == expected
    # every card has its thumbnail and, once scrolled into view, an overlay painted from its mask
    for name in names:
        card = card_of(browser, name)
        drawn(browser, card)
        assert card.find_element("css selector", "img").get_attribute("naturalWidth") != "0"
        assert card.get_attribute("data-error") is None
    thumbs = [i.get_attribute("src") for i in browser.find_elements("css selector", ".card img")]
    assert sum("/thumbs/" in t for t in thumbs) == 1 and sum("/previews/" in t for t in thumbs) == len(names) - 1


def test_canvas_shows_exactly_the_predicted_pixels(browser, gallery, areas):
    open_page(browser, gallery)
    for name in areas["name"]:
        row = areas.set_index("name").loc[name]
        card = card_of(browser, name)
        drawn(browser, card)
        canvas = card.find_element("css selector", "canvas")
        for c in (HAIR, DUST, SCRATCH):
            assert count_colour(browser, canvas, c) == row[f"{SCHEME.names[c]}_px"], (name, SCHEME.names[c])
        assert count_colour(browser, canvas, BACKGROUND) == 0  # background is not drawn at first


def test_toggling_a_class_and_the_slider_change_what_is_drawn(browser, gallery, areas):
    open_page(browser, gallery)
    name = areas[(areas["Hair_px"] > 0) & (areas["Dust_px"] > 0)]["name"].iloc[0]
    row = areas.set_index("name").loc[name]
    card = card_of(browser, name)
    drawn(browser, card)
    canvas = card.find_element("css selector", "canvas")
    assert count_colour(browser, canvas, HAIR) == row["Hair_px"] > 0

    browser.find_element("css selector", f'#classes input[data-class="{HAIR}"]').click()  # Hair off
    drawn(browser, card)
    assert count_colour(browser, canvas, HAIR) == 0
    assert count_colour(browser, canvas, DUST) == row["Dust_px"] > 0  # the other classes stay
    browser.find_element("css selector", f'#classes input[data-class="{BACKGROUND}"]').click()  # Background on
    drawn(browser, card)
    assert count_colour(browser, canvas, BACKGROUND) == row["Background_px"] > 0

    from selenium.webdriver.common.keys import Keys

    frame = card.find_element("css selector", ".frame")
    before = screenshot(frame)
    slider = browser.find_element("id", "opacity")
    slider.send_keys(Keys.HOME)  # opacity 0: the scan alone
    time.sleep(0.2)
    clear = screenshot(frame)
    slider.send_keys(Keys.END)  # opacity 100: the classes opaque
    time.sleep(0.2)
    opaque = screenshot(frame)
    assert browser.execute_script("return getComputedStyle(arguments[0]).opacity", canvas) == "1"
    assert np.abs(before - clear).mean() > 0.5
    assert np.abs(opaque - clear).mean() > np.abs(before - clear).mean()  # more opacity, more change


def test_class_filter_hides_scans_without_the_class(browser, gallery, areas):
    open_page(browser, gallery)
    from selenium.webdriver.support.select import Select

    Select(browser.find_element("id", "fclass")).select_by_visible_text("Hair")
    with_hair = areas[areas["Hair_px"] > 0]["name"]
    assert sorted(shown_names(browser)) == sorted(with_hair)
    assert browser.find_element("id", "count").text == f"{len(with_hair)} of {len(areas)} scans shown"
    hidden = [c for c in browser.find_elements("css selector", ".card") if not c.is_displayed()]
    assert len(hidden) == len(areas) - len(with_hair)

    threshold = float(areas[areas["Hair_px"] > 0]["Hair_pct"].median())
    box = browser.find_element("id", "fmin")
    box.clear()
    box.send_keys(f"{threshold}")
    assert sorted(shown_names(browser)) == sorted(areas[areas["Hair_pct"] > threshold]["name"])

    box.clear()
    box.send_keys("0")
    Select(browser.find_element("id", "fclass")).select_by_value("any")
    assert sorted(shown_names(browser)) == sorted(areas[areas["damage_px"] > 0]["name"])
    assert len(shown_names(browser)) == len(areas) - 1  # the scan without damage


def test_sort_by_name_and_by_a_class(browser, gallery, areas):
    open_page(browser, gallery)
    from selenium.webdriver.support.select import Select

    Select(browser.find_element("id", "sort")).select_by_value("name")
    assert shown_names(browser) == sorted(areas["name"])
    Select(browser.find_element("id", "sort")).select_by_value(f"class:{DUST}")
    top = areas.sort_values("Dust_pct", ascending=False, kind="stable")["name"].iloc[0]
    assert shown_names(browser)[0] == top


def test_viewer_shows_one_scan_large_with_its_own_toggles(browser, gallery, areas):
    open_page(browser, gallery)
    first = browser.find_elements("css selector", ".card")[0]
    name = first.find_element("css selector", "h3").text.split(" ", 1)[1]
    first.find_element("css selector", "button.open").click()
    dialog = browser.find_element("id", "viewer")
    wait(browser, lambda: dialog.get_attribute("open") is not None, what="the viewer")
    assert browser.find_element("id", "viewer-title").text == name
    canvas = browser.find_element("id", "viewer-canvas")
    row = areas.set_index("name").loc[name]
    wait(browser, lambda: count_colour(browser, canvas, HAIR) == row["Hair_px"], what="the viewer's overlay")
    chip = browser.find_element("css selector", f'#viewer-classes input[data-class="{HAIR}"]')
    chip.click()
    wait(browser, lambda: count_colour(browser, canvas, HAIR) == 0, what="Hair hidden in the viewer")
    browser.find_element("id", "viewer-next").click()
    second = browser.find_elements("css selector", ".card")[1].find_element("css selector", "h3").text
    assert browser.find_element("id", "viewer-title").text == second.split(" ", 1)[1]
    browser.find_element("id", "viewer-close").click()
    assert dialog.get_attribute("open") is None


def test_gallery_page_makes_no_network_request(browser, gallery):
    browser.get_log("performance")  # drop what earlier tests logged
    open_page(browser, gallery)
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    browser.find_elements("css selector", "button.open")[-1].click()
    time.sleep(0.5)
    urls = requested_urls(browser)
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".jpg") for u in urls), urls
    assert all(u.startswith(("file:", "data:")) for u in urls), [u for u in urls if not u.startswith("file:")]


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls, "no requests logged: the performance log is not working"
    return urls


def test_max_images_keeps_the_worst_and_says_so(batch, areas, tmp_path):
    result = report(batch, tmp_path / "top3.html", max_images=3, thumb_size=64)
    page = result.path.read_text()
    assert result.n_shown == 3 and result.n_total == len(areas)
    worst = areas.sort_values("damage_pct", ascending=False)["name"].head(3).tolist()
    shown = re.findall(r'<span class="rank">#\d+</span> ([^<]+)</h3>', page)
    assert shown == worst
    assert f"Showing the 3 most damaged of {len(areas)} scans (--max-images 3)" in page
    preview = cv2.imread(str(result.files_dir / "previews" / "0000.jpg"))
    assert max(preview.shape[:2]) == 64  # --thumb-size


def test_report_from_sidecars_when_areas_csv_is_missing(batch, areas, tmp_path):
    copy = tmp_path / "pred"
    shutil.copytree(batch, copy)
    (copy / "areas.csv").unlink()
    page = report(copy, tmp_path / "r.html").path.read_text()
    assert sorted(re.findall(r'<span class="rank">#\d+</span> ([^<]+)</h3>', page)) == sorted(areas["name"])
    assert "areas come from the *_areas.json files" in page


def test_shrink_index_keeps_thin_damage_visible():
    index = np.zeros((400, 400), np.uint8)
    index[:, 201] = HAIR  # one pixel wide
    damage = np.zeros(256, bool)
    damage[SCHEME.damage_indices] = True
    small = shrink_index(index, (100, 100), damage)
    assert small.shape == (100, 100)
    assert (small == HAIR).sum() == 100  # one column of the preview
    assert (cv2.resize(index, (100, 100), interpolation=cv2.INTER_NEAREST) == HAIR).sum() == 0  # nearest loses it


# ============================================================================================ study
def test_study_table_numbers_equal_compare_csv(browser, study):
    open_page(browser, study)
    csv = pd.read_csv(study.parent / "study_files" / "compare" / "compare.csv", dtype=str, keep_default_na=False)
    runs = csv[csv["row_type"] == "run"].set_index("name")
    rows = browser.find_elements("css selector", "#compare-runs tbody tr")
    assert sorted(r.get_attribute("data-name") for r in rows) == sorted(runs.index)
    # settings equal in every run are shown once above the table, with the value of each run's CSV row
    common = browser.find_elements("css selector", "#common span[data-col]")
    for span in common:
        assert all(span.get_attribute("data-value") == v for v in runs[span.get_attribute("data-col")])
    wanted = {"best_val", "miou", "damage_miou", "damage_iou", "damage_f1", "pixel_accuracy", "train_time_s", "delta"}
    wanted |= {c for c in runs.columns if c.startswith("iou_") and (runs[c] != "").any()}
    checked = 0
    for name, expected in runs.iterrows():
        cells = browser.find_elements("css selector", f'tr[data-name="{name}"] td[data-col]')
        assert wanted <= {td.get_attribute("data-col") for td in cells} | {s.get_attribute("data-col") for s in common}
        for td in cells:
            col, text = td.get_attribute("data-col"), td.text
            assert td.get_attribute("data-value") == expected[col], (name, col)
            if re.fullmatch(r"[+-]?\d+(\.\d+)?", text):
                decimals = len(text.split(".")[1]) if "." in text else 0
                assert abs(float(text) - float(expected[col])) <= 0.5 * 10**-decimals + 1e-12, (col, text)
                checked += 1
            elif text == "baseline":
                assert expected["baseline"] == name
            elif text == "—":
                assert expected[col] == ""
            else:
                assert text == expected[col], (col, text)
    assert checked >= len(runs) * (len(wanted) - 1)  # every number of every run (a baseline has no Δ)
    # the seed group (finetune, finetune-seed1): mean ± std (n) cells carry compare.csv's group row
    groups = csv[csv["row_type"] == "seeds"].set_index("name")
    rows = browser.find_elements("css selector", "#compare-groups tbody tr")
    assert [r.get_attribute("data-name") for r in rows] == list(groups.index) and len(rows) == 1
    for td in rows[0].find_elements("css selector", "td[data-col]"):
        col, text = td.get_attribute("data-col"), td.text
        assert td.get_attribute("data-value") == groups.iloc[0][col], col
        mean = text.split(" ± ")[0]
        decimals = len(mean.split(".")[1]) if "." in mean else 0
        assert abs(float(mean) - float(groups.iloc[0][col])) <= 0.5 * 10**-decimals + 1e-12, (col, text)
        assert col == "delta" or text.endswith("(2)")  # n = 2 seeds; the Δ of a group is one number
    best = browser.find_element("css selector", "#compare-runs tr.best").get_attribute("data-name")
    assert best == runs["metric"].astype(float).idxmax()


def test_study_page_shows_the_figures_and_makes_no_network_request(browser, study):
    browser.get_log("performance")
    open_page(browser, study)
    for details in browser.find_elements("css selector", "details.run"):
        if details.get_attribute("open") is None:
            details.find_element("css selector", "summary").click()
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    time.sleep(0.3)
    images = browser.find_elements("css selector", "img")
    loaded = [browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in images]
    assert len(images) >= 4 * 3 + 3 and all(loaded), "every figure and sample loads"  # per run + compare plots
    assert all(i.get_attribute("alt") for i in images)
    alts = " ".join(i.get_attribute("alt") for i in images)
    assert "Confusion matrix" in alts and "Validation sample" in alts and "Per-class test IoU" in alts
    assert all(u.startswith(("file:", "data:")) for u in requested_urls(browser))


# ============================================================================================ output and CLI
def test_refuses_to_overwrite_without_the_flag(batch, tmp_path):
    out = tmp_path / "r.html"
    report(batch, out, thumb_size=64)
    marker = out.with_name("r_files") / "previews" / "0000.jpg"
    assert marker.is_file()
    with pytest.raises(FileExistsError, match="--overwrite"):
        report(batch, out)
    result = CliRunner().invoke(app, ["report", str(batch), "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["report", str(batch), "--out", str(out), "--overwrite", "--max-images", "2"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output.replace("\n", "")
    assert len(list((tmp_path / "r_files" / "previews").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r_files"]  # no temp folders left behind


def test_never_replaces_a_folder_it_did_not_write(batch, tmp_path):
    (tmp_path / "r_files").mkdir()
    (tmp_path / "r_files" / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not made by damage-smp report"):
        report(batch, tmp_path / "r.html", overwrite=True)
    assert (tmp_path / "r_files" / "mine.txt").read_text() == "precious"


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 1
    assert "neither a predict output" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.txt")])
    assert result.exit_code == 1 and ".html" in result.output
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*"))
