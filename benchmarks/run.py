"""``make bench``: what the pipeline costs on top of the model, measured side by side, as ratios.

    .venv/bin/python -m benchmarks.run [--repeats 3] [--quick] [--only steps,data,train,predict,100mp]

Every timing is repeated (``--repeats``) and reported as its median and its minimum; the machine's load
average is recorded with each section. Ratios are given from both. On a machine shared with other work, the
minimum (the least-disturbed repeat: other processes only ever add time) is the figure a target is judged
by; the median is there to show how much the load moved things.

Sections:

- steps: the raw model step (forward + loss + backward + clip + AdamW on tensors already in memory) of Unet
  on tu-efficientnet_lite0 and on resnet34, fine-tuned and frozen, channels_last and not. The
  configurations run round-robin, so a change in the machine's load hits all of them alike.
- data: the data path alone (no model): cold decode per image, then loader epochs (one worker) lazily
  decoded (as before the decode-once warm-up), warmed in memory, from the on-disk decode cache (cold and
  warm) and with no cache at all (a data set larger than the memory budget).
- train: the real ``damage_smp.train.train`` on the bundled sample and on large synthetic scans (4000 x 3000
  JPEGs, made once into benchmarks/scratch/). Steady state = the median over epochs 2..N of history.csv's
  img/s, set against the raw step of the same model, crop and batch.
- predict: ``damage_smp.predict.predict`` wall time over a set of images against the raw forward time of the
  same tiles; peak RSS predicting a 100 MP scan (benchmarks/predict_100mp.py, in a fresh process).

Writes benchmarks/results.json after every section (a partial run keeps what it measured) and the tables
between the ``bench:begin`` / ``bench:end`` markers of docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "benchmarks" / "scratch"
RESULTS = ROOT / "benchmarks" / "results.json"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # encoder_weights=none: nothing to download, and nothing may
os.environ["DAMAGE_SMP_CACHE"] = str(SCRATCH / "cache")  # the decode cache of train() lives in scratch too

import cv2  # noqa: E402  (after the environment is set)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from benchmarks.onnx_section import bench_onnx, onnx_targets  # noqa: E402
from damage_smp.config import TrainConfig  # noqa: E402
from damage_smp.data import SegmentationDataset, make_loader, resolve_workers, seed_worker, train_transform  # noqa: E402
from damage_smp.decode_cache import DecodeCache, default_decode_cache  # noqa: E402
from damage_smp.images import read_image, read_mask, write_image  # noqa: E402
from damage_smp.labels import load_scheme  # noqa: E402
from damage_smp.losses import DiceCELoss  # noqa: E402
from damage_smp.manifest import load_manifest, split_rows  # noqa: E402
from damage_smp.models import build_model, load_bundle, param_groups, set_encoder_frozen  # noqa: E402
from damage_smp.system import (  # noqa: E402
    git_commit,
    machine,
    resolve_amp,  # noqa: E402
)
from damage_smp.tiling import iter_tile_batches, plan_tiles  # noqa: E402
from damage_smp.train import train_step  # noqa: E402

LITE0, R34 = "tu-efficientnet_lite0", "resnet34"
SCHEME = load_scheme("artefact")
SECTIONS = ("steps", "data", "train", "predict", "100mp", "onnx")


@dataclass(frozen=True)
class Settings:
    crop: int = 256
    batch: int = 8
    repeats: int = 4
    encoder: str = LITE0  # the train pipeline's model (the default encoder)
    frozen_encoder: str = R34  # the frozen-vs-fine-tune target is stated for Unet-resnet34
    scans: int = 6
    scan_size: tuple[int, int] = (4000, 3000)  # (width, height)
    loader_crops: int = 48  # crops per loader-only epoch
    train_crops: int = 8  # crops per training epoch: one step, so every epoch is one timed repeat
    tile: int = 512
    overlap: float = 0.5  # predict's default
    large_overlap: float = 0.0  # one large scan, 48 tiles: the ratio, not the total, is the point
    size_100mp: int = 10000
    overlap_100mp: float = 0.0  # peak memory does not depend on the overlap (the band is C x tile x W); time does
    device: str = "cpu"


# on a GPU a step takes milliseconds: longer epochs, so that history.csv's GPU utilisation has samples
GPU = Settings(device="cuda", train_crops=512, loader_crops=256, repeats=5, overlap_100mp=0.5, large_overlap=0.5)
QUICK = Settings(crop=64, batch=2, repeats=2, frozen_encoder="resnet18", scans=2, scan_size=(800, 600),
                 loader_crops=8, train_crops=2, tile=128, size_100mp=1500)  # fmt: skip


# ============================================================================================ helpers
def median(values) -> float:
    values = [float(v) for v in values]
    return statistics.median(values) if values else float("nan")


def summary(seconds: list[float]) -> dict:
    """Repeated timings -> {"seconds": all of them, "median_s", "min_s"}."""
    return {"seconds": [float(x) for x in seconds], "median_s": median(seconds), "min_s": float(min(seconds))}


def ratios(a: dict, b: dict) -> dict:
    """a / b of two summaries, from the medians and from the minima."""
    return {"median": a["median_s"] / b["median_s"], "min": a["min_s"] / b["min_s"]}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {load_avg()[0]:.1f}] {text}", flush=True)


def sample_manifest() -> Path:
    path = ROOT / "data_manifest.csv"
    if not path.is_file():
        sys.exit("data_manifest.csv is missing: run `make sample` first (make bench does)")
    return path


# ============================================================================================ large scans
def make_large_scans(s: Settings) -> Path:
    """``s.scans`` train scans of ``s.scan_size`` (sample images enlarged, with film grain so the JPEGs decode
    like scans, colour masks enlarged exactly) and one small val image; made once, reused."""
    w, h = s.scan_size
    folder = SCRATCH / f"large_{s.scans}x{w}x{h}"
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    rows = load_manifest(sample_manifest())
    train, val = split_rows(rows, "train"), split_rows(rows, "val")
    rng = np.random.default_rng(0)
    lines = ["image,mask,split"]
    for k in range(s.scans):
        image = cv2.resize(read_image(train["image_path"][k]), (w, h), interpolation=cv2.INTER_CUBIC)
        grain = rng.integers(-6, 7, image.shape, dtype=np.int16)
        image = np.clip(image.astype(np.int16) + grain, 0, 255).astype(np.uint8)
        mask = cv2.resize(read_mask(train["mask_path"][k]), (w, h), interpolation=cv2.INTER_NEAREST)
        write_image(folder / f"scan{k}.jpg", image, quality=90)
        write_image(folder / f"scan{k}_mask.png", mask)
        lines.append(f"scan{k}.jpg,scan{k}_mask.png,train")
        say(f"made {folder.name}/scan{k}.jpg")
    shutil.copyfile(val["image_path"][0], folder / "val.jpg")
    shutil.copyfile(val["mask_path"][0], folder / "val_mask.png")
    lines.append("val.jpg,val_mask.png,val")
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


# ============================================================================================ model steps
def step_configs(s: Settings) -> dict[str, tuple[str, bool, bool, str]]:
    """name -> (encoder, channels_last, frozen, amp). All fp32 (amp off); on a GPU also the AMP steps."""
    configs = {  # compared pairs run next to each other in every round
        "lite0": (s.encoder, True, False, "off"),
        "lite0 contiguous": (s.encoder, False, False, "off"),
        "resnet34 contiguous": (s.frozen_encoder, False, False, "off"),
        "resnet34": (s.frozen_encoder, True, False, "off"),
        "resnet34 frozen": (s.frozen_encoder, True, True, "off"),
    }
    if s.device.startswith("cuda"):
        configs["lite0 amp"] = (s.encoder, True, False, "auto")
        configs["resnet34 amp"] = (s.frozen_encoder, True, False, "auto")
    return configs


def make_step(encoder: str, channels_last: bool, frozen: bool, s: Settings, amp: str = "off"):
    """A closure running one training step, ``train.train_step`` (what train's loop does minus data, logging and
    bookkeeping): forward under autocast (``amp``: off, auto, bf16, fp16; CUDA only), loss in fp32, backward
    (scaled for fp16), clip, AdamW."""
    device = torch.device(s.device)
    cfg = TrainConfig(encoder=encoder, encoder_weights="none", crop_size=s.crop, batch_size=s.batch,
                      channels_last=channels_last, amp=amp)  # fmt: skip
    torch.manual_seed(0)
    model, _ = build_model(cfg, SCHEME.num_classes)
    set_encoder_frozen(model, frozen)
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay, frozen))
    amp_dtype = resolve_amp(amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_fn = DiceCELoss(SCHEME.num_classes, cfg.dice_weight, cfg.ce_weight, None).to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (s.batch, 3, s.crop, s.crop), dtype=torch.uint8, generator=g)  # (N, 3, H, W)
    masks = torch.randint(0, SCHEME.num_classes, (s.batch, s.crop, s.crop), generator=g)  # (N, H, W)
    images, masks = images.to(device), masks.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def step(batches=None) -> float:
        """One step on the tensors in memory or, given a loader iterator, on its next batch: timed from asking
        for the batch, so the wait for data and the copy to the device count (as in train's loop)."""
        sync(device)
        start = time.perf_counter()
        x, y = images, masks
        if batches is not None:
            batch = next(batches)
            x = batch["image"].to(device, non_blocking=True)  # (N, 3, H, W) uint8
            y = batch["mask"].to(device, non_blocking=True)  # (N, H, W) int64, 255 = ignore
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        train_step(model, model, optimizer, scaler, loss_fn, x, y, amp_dtype=amp_dtype, grad_clip=cfg.grad_clip)
        sync(device)
        return time.perf_counter() - start

    return step


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_steps(s: Settings) -> dict:
    configs = step_configs(s)
    steps = {}
    for name, (encoder, cl, frozen, amp) in configs.items():
        steps[name] = make_step(encoder, cl, frozen, s, amp)
        steps[name]()  # warm-up: allocator, kernels, optimizer state
        say(f"steps: built and warmed {name}")
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(s.repeats):
        for name, step in steps.items():  # round-robin: load changes hit every configuration alike
            times[name].append(step())
        say(f"steps: round {r + 1}/{s.repeats}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    out = {}
    for name, (encoder, cl, frozen, amp) in configs.items():
        t = summary(times[name])
        out[name] = {"encoder": encoder, "channels_last": cl, "frozen": frozen, "amp": amp, **t,
                     "img_per_s": s.batch / t["median_s"], "best_img_per_s": s.batch / t["min_s"]}  # fmt: skip
    return out


# ============================================================================================ data path
def train_dataset(manifest: Path, s: Settings, **kwargs) -> SegmentationDataset:
    rows = split_rows(load_manifest(manifest), "train")
    return SegmentationDataset(rows, SCHEME, crop_size=s.crop, samples_per_epoch=s.loader_crops,
                               transform=train_transform(1.0), **kwargs)  # fmt: skip


def lazy_loader(dataset: SegmentationDataset, s: Settings) -> torch.utils.data.DataLoader:
    """make_loader's settings without its decode-once warm-up: how the loader ran before it."""
    return torch.utils.data.DataLoader(dataset, batch_size=s.batch, num_workers=1, persistent_workers=True,
                                       prefetch_factor=4, worker_init_fn=seed_worker)  # fmt: skip


def time_epochs(loader, dataset: SegmentationDataset, epochs: int) -> list[float]:
    """Seconds per loader epoch (no model): the first includes worker start-up and any decoding."""
    out = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        start = time.perf_counter()
        for _ in loader:
            pass
        out.append(time.perf_counter() - start)
    return out


def loader_variant(name: str, dataset: SegmentationDataset, s: Settings, lazy: bool = False) -> dict:
    start = time.perf_counter()
    loader = (
        lazy_loader(dataset, s) if lazy else make_loader(dataset, s.batch, num_workers=1)
    )  # 1 worker: per-core rate
    prepare = time.perf_counter() - start  # make_loader's warm-up (decode once), else ~0
    epochs = time_epochs(loader, dataset, 1 + s.repeats)
    del loader
    gc.collect()  # persistent workers exit with their loader
    later = median(epochs[1:]) if len(epochs) > 1 else epochs[0]
    result = {"prepare_s": prepare, "epoch_s": epochs, "first_epoch_s": epochs[0], "later_epoch_s": later,
              "crops_per_s": s.loader_crops / later}  # fmt: skip
    say(f"data: {name}: prepare {prepare:.2f}s, epochs " + ", ".join(f"{e:.2f}" for e in epochs))
    return result


def decode_seconds(manifest: Path, s: Settings) -> list[float]:
    """Cold decode (image + mask -> class indices) per training image, no cache."""
    ds = train_dataset(manifest, s)
    out = []
    for row in range(len(ds.images)):
        start = time.perf_counter()
        ds.decode(row)
        out.append(time.perf_counter() - start)
    return out


def bench_data(name: str, manifest: Path, s: Settings, disk: bool) -> dict:
    decode = decode_seconds(manifest, s)
    out = {"images": len(decode), "decode_s_per_image": median(decode), "crops_per_epoch": s.loader_crops}
    say(f"data: {name}: cold decode {median(decode) * 1000:.0f} ms per image (image + mask)")
    out["lazy"] = loader_variant("lazy (before)", train_dataset(manifest, s), s, lazy=True)
    out["warm_memory"] = loader_variant("decode-once warm-up, memory", train_dataset(manifest, s), s)
    if disk:
        cache = DecodeCache(SCRATCH / "cache" / "bench-decoded", 8 << 30, min_pixels=0)
        cache.clear()
        out["disk_cold"] = loader_variant("disk cache, cold", train_dataset(manifest, s, decode_cache=cache), s)
        out["disk_warm"] = loader_variant("disk cache, warm", train_dataset(manifest, s, decode_cache=cache), s)
        out["disk_cache_mb"] = cache.size_bytes() / 2**20
        few = replace(s, loader_crops=s.batch, repeats=0)  # one batch: every crop decodes a whole scan
        uncached = train_dataset(manifest, few, cache_mb=0)
        out["no_cache"] = loader_variant("no cache (over the memory budget)", uncached, few, lazy=True)
    return out


# ============================================================================================ train
def bench_pipeline(manifest: Path, s: Settings, step) -> dict:
    """The train loop's pieces, paired: a step on the next batch of the real loader (workers sized to the
    machine, the decode-once warm-up and disk cache, crops, augmentation) alternates with a step on tensors
    already in memory, on the same model, so each pair sees the same machine load."""
    pairs = 2 * s.repeats
    rows = split_rows(load_manifest(manifest), "train")
    dataset = SegmentationDataset(rows, SCHEME, crop_size=s.crop, samples_per_epoch=s.batch * (pairs + 1),
                                  transform=train_transform(1.0), decode_cache=default_decode_cache())  # fmt: skip
    start = time.perf_counter()
    loader = make_loader(dataset, s.batch, num_workers=-1, device_type=torch.device(s.device).type, drop_last=True)
    prepare = time.perf_counter() - start  # the decode-once warm-up (a cold disk cache is filled here)
    batches = iter(loader)
    first = step(batches)  # warm-up: starts the workers
    step()
    piped, raw = [], []
    for _ in range(pairs):
        piped.append(step(batches))
        raw.append(step())
    del batches, loader
    gc.collect()
    p, q = summary(piped), summary(raw)
    ratio = {"min": q["min_s"] / p["min_s"], "median": q["median_s"] / p["median_s"],
             "paired_median": median(b / a for a, b in zip(piped, raw, strict=True))}  # fmt: skip
    say(f"pipeline: {manifest.parent.name}: pipeline {piped} vs raw {raw} -> {ratio}")
    return {"pipeline_step": p, "raw_step": q, "first_step_s": first, "prepare_s": prepare,
            "workers": resolve_workers(-1), "ratio": ratio}  # fmt: skip


def bench_train(name: str, manifest: Path, s: Settings) -> dict:
    """The real train() on a manifest: history.csv's img/s, data wait, first vs later epochs."""
    from damage_smp.train import train

    epochs = 1 + 2 * s.repeats  # epoch 1 is the warm-up
    cfg = TrainConfig(manifest=str(manifest), encoder=s.encoder, encoder_weights="none", epochs=epochs,
                      batch_size=s.batch, crop_size=s.crop, samples_per_epoch=s.train_crops, val_every=epochs,
                      tile=s.tile, samples=0, out_dir=str(SCRATCH / "runs"), name=f"bench-{name}", overwrite=True,
                      device=s.device, num_workers=-1)  # fmt: skip
    start = time.perf_counter()
    run = train(cfg, console=quiet())
    wall = time.perf_counter() - start
    history = pd.read_csv(run / "history.csv")
    steady = history.iloc[1:]
    per_image = summary(1 / steady["img_per_s"])  # seconds per image, one value per steady epoch
    result = {
        "run": str(run.relative_to(ROOT)),
        "epochs": epochs,
        "steps_per_epoch": s.train_crops // s.batch,
        "img_per_s_per_epoch": history["img_per_s"].tolist(),
        "data_seconds_per_epoch": history["data_seconds"].tolist(),
        "seconds_per_epoch": history["seconds"].tolist(),
        "img_per_s": 1 / per_image["median_s"],
        "best_img_per_s": 1 / per_image["min_s"],
        "data_share": float(steady["data_seconds"].sum() / steady["seconds"].sum()),
        "first_epoch_data_s": float(history["data_seconds"].iloc[0]),
        "later_epoch_data_s": median(steady["data_seconds"]),
        "wall_s": wall,
        "gpu_util": median(steady["gpu_util"].dropna()) if steady["gpu_util"].notna().any() else None,
        "peak_mem_mb": float(history["peak_mem_mb"].max()),
    }
    say(f"train: {name}: " + ", ".join(f"{v:.2f}" for v in result["img_per_s_per_epoch"]) + " img/s per epoch")
    return result


# ============================================================================================ predict
def raw_forward(bundle, images: list[np.ndarray], s: Settings, overlap: float) -> tuple[float, int]:
    """Seconds the model's forward takes on exactly the tiles predict runs (same plan, batches and autocast;
    the tiles are on the device before the clock starts)."""
    device = torch.device(s.device)
    model, amp_dtype = bundle.model, resolve_amp(bundle.cfg.amp, device)
    total, tiles = 0.0, 0
    for image in images:
        plan = plan_tiles(image.shape[0], image.shape[1], s.tile, overlap)
        for batch, coords in iter_tile_batches(image, plan, 4):
            x = batch.to(device).float()  # (N, 3, th, tw) 0..255, as tiling feeds the model
            sync(device)
            start = time.perf_counter()
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                model(x)
            sync(device)
            total += time.perf_counter() - start
            tiles += len(coords)
    return total, tiles


def raw_forward_in_lanes(bundle, images: list[np.ndarray], s: Settings, overlap: float) -> float | None:
    """Seconds the same forwards take scheduled as predict schedules them: one-tile images two at a time, each on
    half the threads (``predict.lanes``); None where predict would not use lanes (a GPU, one thread, big scans)."""
    from damage_smp.predict.lanes import Lanes, fits_a_lane, lane_count

    n = lane_count(torch.device(s.device), "torch")
    if n < 2 or not all(fits_a_lane(*im.shape[:2], s.tile, overlap) for im in images):
        return None

    def forward(image: np.ndarray) -> None:
        batch, _ = next(iter_tile_batches(image, plan_tiles(*image.shape[:2], s.tile, overlap), 1))
        with torch.inference_mode():
            bundle.model(batch.float())

    def all_in_lanes(lanes: Lanes, batch: list[np.ndarray]) -> None:
        for future in [lanes.submit(forward, image) for image in batch]:
            future.result()

    with Lanes(n) as lanes:
        all_in_lanes(lanes, images[:n])  # warm-up: each lane's first forward
        start = time.perf_counter()
        all_in_lanes(lanes, images)
        return time.perf_counter() - start


def bench_predict(name: str, run: Path, paths: list[Path], s: Settings, overlap: float, repeats: int) -> dict:
    from damage_smp.predict import predict

    bundle = load_bundle(run, "best", s.device)
    images = [read_image(p) for p in paths]
    raw_forward(bundle, images[:1], s, overlap)  # warm-up
    walls, forwards, loads, laned, unlaned, tiles = [], [], [], [], [], 0
    out = SCRATCH / "predict" / name
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        start = time.perf_counter()
        load_bundle(run, "best", s.device)  # what predict spends once per call on building and loading the model
        loads.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = predict(run, [str(p) for p in paths], out, tile=s.tile, overlap=overlap, device=s.device,
                         overwrite=True, console=quiet())  # fmt: skip
        walls.append(time.perf_counter() - start)
        if result.failures:
            raise RuntimeError(f"predict failed: {result.failures}")
        seconds, tiles = raw_forward(bundle, images, s, overlap)
        forwards.append(seconds)
        if (seconds := raw_forward_in_lanes(bundle, images, s, overlap)) is not None:
            laned.append(seconds)
            start = time.perf_counter()  # and predict with its lanes off: what they win, in the same repeat
            predict(run, [str(p) for p in paths], out, tile=s.tile, overlap=overlap, device=s.device,
                    overwrite=True, console=quiet(), lanes=1)  # fmt: skip
            unlaned.append(time.perf_counter() - start)
    wall, forward, load = summary(walls), summary(forwards), summary(loads)
    res = {"images": len(paths), "size": [int(images[0].shape[1]), int(images[0].shape[0])], "tiles": tiles,
           "tile": s.tile, "overlap": overlap, "wall": wall, "forward": forward, "model_load": load}  # fmt: skip
    res["ratio"] = ratios(wall, forward)
    res["ratio_without_model_load"] = (wall["min_s"] - load["min_s"]) / forward["min_s"]
    if laned:  # predict's own cost, against the same forwards scheduled in its lanes (what is left to win)
        res["forward_in_lanes"] = summary(laned)
        res["ratio_to_lanes"] = ratios(wall, res["forward_in_lanes"])
        res["wall_lanes_off"] = summary(unlaned)
        res["ratio_lanes_off"] = ratios(res["wall_lanes_off"], forward)
    say(
        f"predict: {name}: wall {walls} vs forward {forwards} -> {res['ratio']}; in lanes {laned}; "
        f"predict with the lanes off {unlaned}"
    )
    return res


def bench_100mp(s: Settings) -> dict:
    script = ROOT / "benchmarks" / "predict_100mp.py"
    if not script.is_file():
        return {"skipped": "benchmarks/predict_100mp.py is missing"}
    out = SCRATCH / "predict_100mp.json"
    cmd = [sys.executable, str(script), str(out), "--size", str(s.size_100mp), "--overlap", str(s.overlap_100mp),
           "--tile", "512", "--device", s.device, "--work", str(SCRATCH / "predict_100mp")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"failed": (proc.stderr or proc.stdout)[-2000:]}
    result = json.loads(out.read_text())
    say(f"100mp: peak RSS {result['peak_rss_mb']:.0f} MB, {result['wall_s']:.0f}s, {result['mp_per_s']:.2f} MP/s")
    return result


# ============================================================================================ targets, doc
def targets(r: dict) -> list[dict]:
    """One row per issue target: the ratio from the best repeats (judged) and from the medians (shown), the
    target, and whether it is met (None where it could not be measured here)."""
    return [*train_targets(r), *step_targets(r), *predict_targets(r), *resource_targets(r),
            *onnx_targets(r, target_row)]  # fmt: skip


def target_row(key, what, best, med, target, ok, detail="") -> dict:
    return {"key": key, "what": what, "value": best, "median_value": med, "target": target, "met": ok,
            "detail": detail}  # fmt: skip


def train_targets(r: dict) -> list[dict]:
    """train()'s pipeline against the raw training step, on the bundled sample and on large scans."""
    rows = []
    batch = r["settings"]["batch"]
    for name, label in (("sample", "bundled sample"), ("large", "large scans")):
        t = r.get("train", {}).get(name)
        if not t or "pipeline" not in t:
            continue
        q, raw_best = t["pipeline"]["ratio"], batch / t["pipeline"]["raw_step"]["min_s"]
        detail = (f"paired median {q['paired_median']:.2f}; train(): best epoch {t['best_img_per_s']:.2f} img/s "
                  f"vs raw {raw_best:.2f}, data wait {100 * t['data_share']:.1f} % of epoch time")  # fmt: skip
        rows.append(target_row(f"train_{name}", f"train pipeline ÷ raw step, {label}", q["min"], q["median"],
                               ">= 0.90", q["min"] >= 0.9, detail))  # fmt: skip
    return rows


def step_targets(r: dict) -> list[dict]:
    """Speed-ups of one training step: frozen encoder, channels_last, AMP (this one on a GPU only)."""
    rows = []
    steps = r.get("steps", {})
    pairs = [("frozen", "frozen encoder step speed-up, Unet-resnet34", "resnet34", "resnet34 frozen", ">= 1.70", 1.7),
             ("channels_last_lite0", "channels_last speed-up, lite0 step", "lite0 contiguous", "lite0", "> 1", 1.0),
             ("channels_last_resnet34", "channels_last speed-up, resnet34 step", "resnet34 contiguous", "resnet34",
              "> 1", 1.0),
             ("gpu_amp", "AMP speed-up over fp32, lite0 step (GPU)", "lite0", "lite0 amp", ">= 2", 2.0)]  # fmt: skip
    for key, what, slow, fast, target, bar in pairs:
        if slow in steps and fast in steps:
            q = ratios(steps[slow], steps[fast])
            ok = q["min"] >= bar if target.startswith(">=") else q["min"] > bar
            rows.append(
                target_row(
                    key,
                    what,
                    q["min"],
                    q["median"],
                    target,
                    ok,
                    f"best {steps[slow]['min_s']:.3f} s vs {steps[fast]['min_s']:.3f} s per step",
                )
            )
        elif key == "gpu_amp":
            rows.append(target_row(key, what, None, None, target, None, "unmeasured: no GPU in this run"))
    return rows


def predict_targets(r: dict) -> list[dict]:
    """predict's wall time against the raw forward passes of its tiles, on the sample and on large scans."""
    rows = []
    for name in ("sample", "large"):
        p = r.get("predict", {}).get(name)
        if p:
            q = p["ratio"]
            rows.append(
                target_row(
                    f"predict_{name}",
                    f"predict wall ÷ raw forward of its tiles, {name}",
                    q["min"],
                    q["median"],
                    "<= 1.15",
                    q["min"] <= 1.15,
                    f"{p['images']} x {p['size'][0]}x{p['size'][1]}, {p['tiles']} tiles of {p['tile']}, "
                    f"overlap {p['overlap']:g}; {p.get('ratio_without_model_load', float('nan')):.2f} without the "
                    f"{p.get('model_load', {}).get('min_s', float('nan')):.2f} s model load"
                    + (
                        f"; {p['ratio_to_lanes']['min']:.2f} against the same forwards two at a time, as predict "
                        "runs one-tile images"
                        + (
                            f"; {p['ratio_lanes_off']['min']:.2f} / {p['ratio_lanes_off']['median']:.2f} with the "
                            "lanes off"
                            if "ratio_lanes_off" in p
                            else ""
                        )
                        if "ratio_to_lanes" in p
                        else ""
                    ),
                )
            )
    return rows


def resource_targets(r: dict) -> list[dict]:
    """Peak memory predicting a 100 MP scan, and how busy the GPU is during training."""
    rows = []
    big = r.get("100mp", {})
    if "peak_rss_mb" in big:
        rows.append(
            target_row(
                "predict_100mp_rss",
                "peak RSS predicting 100 MP, MB",
                big["peak_rss_mb"],
                None,
                "< 3072",
                big["peak_rss_mb"] < 3072,
                f"{big['image_px'][0]}x{big['image_px'][1]}, {big['n_tiles']} tiles, {big['wall_s']:.0f} s",
            )
        )
    busy = [t.get("gpu_util") for t in r.get("train", {}).values() if t.get("gpu_util") is not None]
    what = "GPU busy share of a training epoch, %"
    if busy:
        detail = "history.csv gpu_util (NVML), the lower of the two train runs"
        rows.append(target_row("gpu_busy", what, min(busy), None, "> 90", min(busy) > 90, detail))
    else:
        rows.append(target_row("gpu_busy", what, None, None, "> 90", None, "unmeasured: no GPU in this run"))
    return rows


def fmt(v, spec=".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def render(r: dict) -> str:
    m = r["machine"]
    s = r["settings"]
    lines = [
        f"Measured {r['created']} on **{m['cpu']}** ({m['cpu_count']} CPU threads, torch {m['torch_threads']} "
        f"threads, GPU: {m['gpu'] or 'none'}), git {str(r.get('git_commit'))[:10]}; load average "
        f"{r['load_avg']['start'][0]} at the start, {r['load_avg']['end'][0]} at the end; "
        f"{r['wall_s'] / 60:.1f} min in all. Unet, crop {s['crop']}, batch {s['batch']}; "
        f"{s['repeats']} repeats per timing (best and median).",
        "",
        "| measurement | best repeats | medians | target | met | detail |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in r["targets"]:
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        lines.append(f"| {t['what']} | {fmt(t['value'])} | {fmt(t.get('median_value'))} | {t['target']} | {met} "
                     f"| {t['detail']} |")  # fmt: skip
    steps = r.get("steps")
    if steps:
        lines += ["", "| raw step (fwd + loss + bwd + AdamW) | best s/step | median s/step | best img/s |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        for v in steps.values():
            name = v["encoder"] + (" frozen" if v["frozen"] else "") + ("" if v["channels_last"] else ", contiguous")
            name += ", AMP" if v.get("amp", "off") != "off" else ""
            lines.append(f"| {name} | {v['min_s']:.3f} | {v['median_s']:.3f} | {v['best_img_per_s']:.2f} |")
    data = r.get("data")
    if data:
        names = list(data)
        lines += ["", "| data path, 1 worker, no model | " + " | ".join(names) + " |",
                  "| --- |" + " --- |" * len(names)]  # fmt: skip

        def row(label, get):
            cells = []
            for n in names:
                try:
                    cells.append(get(data[n]))
                except (KeyError, TypeError):
                    cells.append("—")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

        row("images (train split)", lambda d: str(d["images"]))
        row("cold decode per image (image + mask)", lambda d: f"{1000 * d['decode_s_per_image']:.0f} ms")
        row("lazy decode (before): epoch 1 / later, s", lambda d: f"{d['lazy']['first_epoch_s']:.2f} / "
            f"{d['lazy']['later_epoch_s']:.2f}")  # fmt: skip
        row("decode-once warm-up (memory): warm-up + epoch 1 / later, s",
            lambda d: f"{d['warm_memory']['prepare_s']:.2f} + {d['warm_memory']['first_epoch_s']:.2f} / "
            f"{d['warm_memory']['later_epoch_s']:.2f}")  # fmt: skip
        row("disk cache, cold: fill + epoch 1 / later, s", lambda d: f"{d['disk_cold']['prepare_s']:.2f} + "
            f"{d['disk_cold']['first_epoch_s']:.2f} / {d['disk_cold']['later_epoch_s']:.2f}")  # fmt: skip
        row("disk cache, warm (next run): open + epoch 1 / later, s", lambda d: f"{d['disk_warm']['prepare_s']:.2f}"
            f" + {d['disk_warm']['first_epoch_s']:.2f} / {d['disk_warm']['later_epoch_s']:.2f}")  # fmt: skip
        row("crops/s, memory cache", lambda d: f"{d['warm_memory']['crops_per_s']:.0f}")
        row("crops/s, disk cache (memory-mapped)", lambda d: f"{d['disk_warm']['crops_per_s']:.0f}")
        row("crops/s, no cache (data set over the memory budget)", lambda d: f"{d['no_cache']['crops_per_s']:.1f}")
        row("disk cache size, MB", lambda d: f"{d['disk_cache_mb']:.0f}")
    train = r.get("train")
    if train:
        lines += ["", "| train run (history.csv) | img/s per epoch | data wait per epoch, s |", "| --- | --- | --- |"]
        for name, t in train.items():
            lines.append(f"| {name} | " + ", ".join(f"{v:.2f}" for v in t["img_per_s_per_epoch"]) + " | "
                         + ", ".join(f"{v:.2f}" for v in t["data_seconds_per_epoch"]) + " |")  # fmt: skip
    return "\n".join(lines)


def write_doc(r: dict) -> None:
    from damage_smp.runs import write_text

    table = f"{BEGIN}\n<!-- written by `make bench` (benchmarks/run.py); edit the prose outside the markers -->\n"
    table += render(r) + f"\n{END}"
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else "# Performance\n\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + table + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Latest `make bench`\n\n" + table + "\n"
    write_text(DOC, text)


# ============================================================================================ main
def run_section(name: str, s: Settings) -> dict:
    """One section, measured in this process (main() gives each section a fresh one)."""
    sample, large = sample_manifest(), make_large_scans(s)
    if name == "steps":
        return bench_steps(s)
    if name == "data":
        return {
            "sample": bench_data("sample", sample, s, disk=False),
            "large": bench_data("large", large, s, disk=True),
        }
    if name == "train":
        shutil.rmtree(SCRATCH / "cache" / "decoded", ignore_errors=True)  # the decode cache starts cold
        step = make_step(s.encoder, True, False, s, amp="auto")  # train's model, crop, batch, memory format, AMP
        out = {}
        for name, manifest in (("sample", sample), ("large", large)):
            out[name] = {"pipeline": bench_pipeline(manifest, s, step), **bench_train(name, manifest, s)}
        return out
    if name in ("predict", "onnx"):
        run = SCRATCH / "runs" / "bench-sample"
        if not (run / "checkpoints" / "best.pt").is_file():
            bench_train("sample", sample, replace(s, repeats=1))
        rows = load_manifest(sample)  # held-out images: what predict is for
        tests = [Path(p) for split in ("val", "test") for p in split_rows(rows, split)["image_path"]]
        scan = sorted(large.parent.glob("scan*.jpg"))[0]
        if name == "onnx":
            return bench_onnx(s, SCRATCH, run, tests, scan)
        return {"sample": bench_predict("sample", run, tests, s, s.overlap, s.repeats),
                "large": bench_predict("large", run, [scan], s, s.large_overlap, 3)}  # fmt: skip
    if name == "100mp":
        return bench_100mp(s)
    raise ValueError(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 4)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the benchmark runs, measures nothing")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results.json)")
    p.add_argument("--no-doc", action="store_true", help="do not update docs/performance.md")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")
    p.add_argument("--doc-only", action="store_true", help="re-render docs/performance.md from the results JSON")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: measure one section in this process
    p.add_argument("--section-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.doc_only:
        r = json.loads((args.out or RESULTS).read_text())
        r["targets"] = targets(r)
        write_doc(r)
        return r
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    s = QUICK if args.quick else GPU if device.startswith("cuda") else Settings()
    s = replace(s, device=device)
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    if args.section:
        result = run_section(args.section, s)
        args.section_out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        return result
    args.out = args.out or (SCRATCH / "results-quick.json" if args.quick else RESULTS)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        sys.exit(f"--only: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")

    SCRATCH.mkdir(parents=True, exist_ok=True)
    make_large_scans(s)  # once, before any timing
    start = time.perf_counter()
    r: dict = {"created": dt.datetime.now().isoformat(timespec="seconds"), "git_commit": git_commit(),
               "machine": machine(torch.device(s.device)), "settings": asdict(s), "quick": args.quick,
               "load_avg": {"start": load_avg()}, "section_load_avg": {}, "section_s": {}}  # fmt: skip
    forward = ["--device", s.device] + (["--quick"] if args.quick else []) + ["--repeats", str(s.repeats)]
    for name in (x for x in SECTIONS if x in only):
        # a fresh process per section: no memory, threads or garbage of one section slow another one down
        t0, load0 = time.perf_counter(), load_avg()[0]
        say(f"== {name}")
        part = SCRATCH / f"section-{name}.json"
        part.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.run", "--section", name, "--section-out", str(part), *forward]
        proc = subprocess.run(cmd, cwd=ROOT, check=False)
        r[name] = json.loads(part.read_text()) if proc.returncode == 0 else {"failed": f"exit {proc.returncode}"}
        r["section_s"][name] = time.perf_counter() - t0
        r["section_load_avg"][name] = [load0, load_avg()[0]]
        r["load_avg"]["end"] = load_avg()
        r["wall_s"] = time.perf_counter() - start
        r["targets"] = targets(r)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(r, indent=2, default=str) + "\n")  # after every section
    if not args.no_doc and not args.quick:
        write_doc(r)
    say(f"done in {r['wall_s'] / 60:.1f} min: {args.out}" + ("" if args.no_doc or args.quick else f", {DOC}"))
    for t in r["targets"]:
        print(f"  {t['what']}: {fmt(t['value'])} (medians {fmt(t.get('median_value'))}; target {t['target']}, "
              f"met: {t['met']}) {t['detail']}")  # fmt: skip
    return r


if __name__ == "__main__":
    main()
