"""Shared fixtures: tiny real files on disk (64x64 images, colour masks, a manifest), a tiny run, a browser."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a weights download in tests
# `make test` runs the tests in parallel (pytest-xdist, one worker per core): each worker then computes with its
# share of the cores, so that workers do not fight over the same threads. Only a worker knows the count: set in
# the controlling process, the variable would be that process's (all the cores) and every worker would inherit it.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from damage_smp.images import write_image
from damage_smp.labels import load_scheme


def make_pair(rng: np.random.Generator, size=(64, 64), classes=(0, 3, 4, 16)):
    """A textured RGB image and an artefact colour mask with a few rectangles of the given classes."""
    h, w = size
    image = rng.integers(60, 200, size=(h, w, 3), dtype=np.uint8)
    index = np.zeros((h, w), np.uint8)
    for k, c in enumerate(classes[1:]):
        y, x = rng.integers(0, max(1, h - 16)), rng.integers(0, max(1, w - 16))
        index[y : y + 12 + k, x : x + 10 + k] = c
        image[index == c] = (np.array(load_scheme("artefact").colors[c], np.int32) // 2 + 60).astype(np.uint8)
    return image, index


@pytest.fixture
def tiny_manifest(tmp_path):
    """8 train / 2 val / 2 test 64x64 images with artefact colour masks and a 'material' group column."""
    scheme = load_scheme("artefact")
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    lines = ["image,mask,split,material"]
    splits = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    for i, split in enumerate(splits):
        image, index = make_pair(rng)
        write_image(root / "images" / f"img{i:02d}.png", image)
        write_image(root / "masks" / f"img{i:02d}.png", scheme.colorize(index))
        lines.append(f"images/img{i:02d}.png,masks/img{i:02d}.png,{split},{'paper' if i % 2 else 'film'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def train_tiny_run(root, n_train: int = 8, samples_per_epoch: int = 8):
    """A tiny trained run in ``root/run`` (resnet18, no pretrained weights, 1 epoch) for predict-side tests."""
    from damage_smp.config import TrainConfig
    from damage_smp.train import train

    scheme = load_scheme("artefact")
    rng = np.random.default_rng(0)
    lines = ["image,mask,split"]
    for i, split in enumerate(["train"] * n_train + ["val"] * 2):
        image, index = make_pair(rng)
        write_image(root / "images" / f"img{i:02d}.png", image)
        write_image(root / "masks" / f"img{i:02d}.png", scheme.colorize(index))
        lines.append(f"images/img{i:02d}.png,masks/img{i:02d}.png,{split}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(
        manifest=str(root / "manifest.csv"), encoder="resnet18", encoder_weights="none", epochs=1,
        samples_per_epoch=samples_per_epoch, batch_size=4, crop_size=64, tile=64, num_workers=0, samples=0,
        device="cpu", out_dir=str(root), name="run", seed=0,
    )  # fmt: skip
    return train(cfg)


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    """``module_dir("name")``: a new folder for a module-scoped fixture, removed when the module's tests end.

    A trained tiny run is ~230 MB of checkpoints; the suite would otherwise keep ~2 GB of them to its end.
    """
    made = []

    def make(name: str):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """One tiny trained run (artefact scheme, 1 epoch of 8 crops, thresholds.json from its 2 val images)."""
    return train_tiny_run(tmp_path_factory.mktemp("shared-run"), n_train=8, samples_per_epoch=8)


# ============================================================================================ the browser
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Debian chromium + chromium-driver, `make browser`) with the network log on; never skips."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: run `make browser` (Debian chromium + chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="damage-smp-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
