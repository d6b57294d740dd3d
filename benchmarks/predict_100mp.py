"""Benchmark (not a test): predict one synthetic 100 MP scan and report peak RSS and MP/s.

    .venv/bin/python benchmarks/predict_100mp.py results/predict_100mp.json [--size 10000] [--run RUN_DIR]
        [--tile 512] [--overlap 0.5] [--batch-size 4] [--device cpu] [--backend torch|onnxruntime] [--work DIR]

1. Makes a SIZE x SIZE JPEG from real sample content (scikit-image's CC0 photographs and scans, tiled with
   flips, on aged paper), unless it exists in the work folder.
2. Without ``--run``: trains a tiny untrained-grade run (Unet-resnet18, no pretrained weights, 1 epoch of 8
   64-pixel crops): the weights do not matter for memory or speed, the architecture does.
3. Runs ``damage_smp.predict.predict`` (the same call as ``damage-smp predict``: decode, tiled prediction,
   colour mask, index mask, overlay, areas) in a *fresh* Python process, and reads that process's peak
   resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) plus its wall and CPU time.
4. Writes JSON: peak RSS (MB), MP/s end to end (and per CPU-second, which a busy shared machine does not
   distort), tiles, the accumulator band's size, the machine.

The target: peak RSS under 3 GB for 100 MP (the naive C x H x W float32 probabilities alone would be 6.8 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
from damage_smp import tiling
from damage_smp.predict import predict
args = json.loads(sys.argv[1])
start, cpu0 = time.perf_counter(), time.process_time()
result = predict(args["run"], [args["image"]], args["out"], tile=args["tile"], overlap=args["overlap"],
                 batch_size=args["batch_size"], device=args["device"], overwrite=True, workers=2,
                 backend=args.get("backend"))
wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
    "wall_s": wall, "cpu_s": cpu, "failures": result.failures,
    "n_tiles": tiling.STATS.get("n_tiles"), "accumulator_mb": tiling.STATS.get("accumulator_bytes", 0) / 2**20,
    "accumulator_shape": tiling.STATS.get("accumulator_shape"),
}))
"""


def make_scan(path: Path, size: int, seed: int = 0) -> None:
    """A size x size RGB JPEG of real photographic content on aged paper, written in one go (300 MB array)."""
    import cv2
    from skimage import data

    from damage_smp.images import write_image

    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), np.dstack([data.camera()] * 3),
               np.dstack([data.page()] * 3), np.dstack([data.text()] * 3), np.dstack([data.coins()] * 3)]  # fmt: skip
    tile = 500
    tiles = [cv2.resize(s, (tile, tile), interpolation=cv2.INTER_AREA) for s in sources]
    scan = np.empty((size, size, 3), np.uint8)
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            t = tiles[rng.integers(len(tiles))]
            t = t[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
            h, w = min(tile, size - y), min(tile, size - x)
            scan[y : y + h, x : x + w] = t[:h, :w]
    sepia = np.array([1.0, 0.9, 0.75], np.float32)
    for y in range(0, size, 1000):  # aged-paper tint, strip by strip (no full-size float copy)
        strip = scan[y : y + 1000].astype(np.float32) * sepia + 20
        scan[y : y + 1000] = strip.clip(0, 255).astype(np.uint8)
    write_image(path, scan, quality=90)


def make_run(work: Path) -> Path:
    """A tiny Unet-resnet18 run (1 epoch on 8 synthetic 64x64 crops): real architecture, untrained weights."""
    from damage_smp.config import TrainConfig
    from damage_smp.images import write_image
    from damage_smp.labels import load_scheme
    from damage_smp.train import train

    run = work / "run"
    if (run / "checkpoints" / "best.pt").is_file():
        return run
    scheme = load_scheme("artefact")
    rng = np.random.default_rng(0)
    lines = ["image,mask,split"]
    for i, split in enumerate(["train"] * 8 + ["val"] * 2):
        image = rng.integers(40, 220, (64, 64, 3), dtype=np.uint8)
        index = np.zeros((64, 64), np.uint8)
        index[10:30, 20:40] = 1 + i % 15
        write_image(work / "tiny" / f"i{i}.png", image)
        write_image(work / "tiny" / f"m{i}.png", scheme.colorize(index))
        lines.append(f"i{i}.png,m{i}.png,{split}")
    (work / "tiny" / "manifest.csv").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(
        manifest=str(work / "tiny" / "manifest.csv"), encoder="resnet18", encoder_weights="none", epochs=1,
        samples_per_epoch=8, batch_size=4, crop_size=64, tile=64, num_workers=0, samples=0, device="cpu",
        out_dir=str(work), name="run", overwrite=True,
    )  # fmt: skip
    return train(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json_out", type=Path, help="where to write the results (JSON)")
    p.add_argument("--size", type=int, default=10000, help="side of the square scan in pixels (10000 = 100 MP)")
    p.add_argument("--run", type=Path, default=None, help="a run dir (default: train a tiny Unet-resnet18)")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch", help="torch or onnxruntime (predict --backend)")
    p.add_argument("--work", type=Path, default=Path("/tmp/damage-smp-bench-predict"), help="scratch folder")
    args = p.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    image = args.work / f"scan_{args.size}.jpg"
    if not image.is_file():
        t = time.perf_counter()
        make_scan(image, args.size)
        print(f"made {image} ({image.stat().st_size / 2**20:.0f} MB JPEG) in {time.perf_counter() - t:.0f}s")
    run = args.run or make_run(args.work)
    child_args = dict(run=str(run), image=str(image), out=str(args.work / "out"), tile=args.tile,
                      overlap=args.overlap, batch_size=args.batch_size, device=args.device,
                      backend=args.backend)  # fmt: skip
    print(f"predicting {args.size}x{args.size} in a fresh process (tile {args.tile}, overlap {args.overlap}) ...")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(child_args)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"prediction failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    mp = args.size * args.size / 1e6
    result = {
        "benchmark": "predict_100mp",
        "image_px": [args.size, args.size],
        "megapixels": mp,
        "run": str(run),
        **{k: v for k, v in child_args.items() if k not in ("run", "image", "out")},
        **child,
        "mp_per_s": mp / child["wall_s"],
        "mp_per_cpu_s": mp / child["cpu_s"],  # robust to a shared machine: divide by the cores you have
        "tiles_per_s": (child["n_tiles"] or 0) / child["wall_s"],
        "naive_probabilities_mb": 17 * mp * 1e6 * 4 / 2**20,
        "under_3gb": child["peak_rss_mb"] < 3 * 1024,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch_threads": _torch_threads(),
            "load_avg": os.getloadavg(),
        },  # fmt: skip
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
