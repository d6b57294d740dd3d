"""Physical units: the resolution a scan's file gives (or --dpi), mm² in areas.csv and the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from damage_smp.cli import app
from damage_smp.images import dpi_text, image_dpi, mm2_per_pixel, parse_dpi_text
from damage_smp.labels import load_scheme
from damage_smp.predict import predict
from damage_smp.report.batch import Scan
from damage_smp.report.gallery_html import area_table

SCHEME = load_scheme("artefact")


def test_resolution_from_png_jpeg_and_tiff_headers_and_unknown_stays_unknown(tmp_path):
    pixels = np.full((8, 12, 3), 128, np.uint8)
    for ext, dpi in (("png", (600, 600)), ("jpg", (300, 300)), ("tif", (1200, 600))):
        Image.fromarray(pixels).save(tmp_path / f"a.{ext}", dpi=dpi)
        assert image_dpi(tmp_path / f"a.{ext}") == dpi, ext
    Image.fromarray(pixels).save(tmp_path / "none.png")
    assert image_dpi(tmp_path / "none.png") is None and mm2_per_pixel(None) is None
    assert dpi_text((600.0, 600.0)) == "600" and dpi_text((1200.0, 600.0)) == "1200x600" and dpi_text(None) == ""
    assert parse_dpi_text("1200x600") == (1200, 600) and parse_dpi_text("") is None


def test_mm2_is_pixels_times_the_square_of_25_4_over_dpi():
    assert 1234 * mm2_per_pixel((600, 600)) == pytest.approx(1234 * (25.4 / 600) ** 2, rel=1e-12)
    assert mm2_per_pixel((1200, 600)) == pytest.approx((25.4 / 1200) * (25.4 / 600), rel=1e-12)


def test_areas_csv_gains_dpi_and_mm2_from_the_file_or_dpi(shared_run, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    source = Image.open(shared_run.parent / "images" / "img00.png").convert("RGB")
    source.save(scans / "with.png", dpi=(300, 300))
    source.save(scans / "without.png")
    out = tmp_path / "p"
    fast = dict(save="index", tile=64, overlap=0.25, batch_size=8, device="cpu", workers=1)
    predict(shared_run, [scans], out, **fast)
    areas = pd.read_csv(out / "areas.csv", keep_default_na=False).set_index("image")
    has, lacks = areas.loc[str(scans / "with.png")], areas.loc[str(scans / "without.png")]
    assert str(has["dpi"]) == "300" and lacks["dpi"] == "" and lacks["damage_mm2"] == ""
    for name in ("damage", *SCHEME.names):
        assert float(has[f"{name}_mm2"]) == pytest.approx(int(has[f"{name}_px"]) * (25.4 / 300) ** 2, rel=1e-5)
    predict(shared_run, [scans], out, dpi=600, **fast)  # finished images are skipped; the table is rebuilt at 600
    areas = pd.read_csv(out / "areas.csv", keep_default_na=False)
    assert (areas["dpi"].astype(str) == "600").all()
    assert np.allclose(areas["damage_mm2"].astype(float), areas["damage_px"] * (25.4 / 600) ** 2)


def test_report_shows_mm2_and_cm2_when_the_resolution_is_known():
    scan = Scan("s", None, None, None, None, 100, 100, 10_000, 1.0, {"Cracks": 30, "Dust": 90_000})
    assert "mm²" not in area_table(scan, SCHEME) and "30 px" in area_table(scan, SCHEME)
    scan.mm2_per_px = mm2_per_pixel((300, 300))
    html = area_table(scan, SCHEME)
    assert "0.215 mm² (30 px)" in html and "6.45 cm² (90,000 px)" in html


@pytest.mark.parametrize("value", ["0", "-300"])
def test_dpi_zero_or_negative_is_one_line(tmp_path, value):
    res = CliRunner().invoke(app, ["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o"),
                                   "--dpi", value])  # fmt: skip
    assert res.exit_code == 1 and res.output.count("\n") == 1 and f"--dpi {value}: must be" in res.output
