"""The `onnx` section of `make bench`: predict with --backend onnxruntime against the torch backend (CPU).

The same run, images, tiles and settings as the `predict` section (the sample's held-out images, one large scan),
the two backends alternating repeat by repeat so that a change of load hits both alike; then the 100 MP scan once
more with ONNX Runtime in a fresh process, for its peak RSS beside the torch figure of the `100mp` section.
The first ONNX Runtime call exports the run once into the cache ($TMPDIR/damage-smp-onnx); a warm-up call
before the clock starts keeps that out of the timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("torch", "onnxruntime")


def time_backends(run: Path, paths: list[Path], out: Path, s, overlap: float, repeats: int) -> dict:
    """Alternating repeats of predict on each backend -> walls per backend and the onnxruntime/torch ratio."""
    from benchmarks.run import quiet, ratios, say, summary
    from damage_smp.predict import predict

    walls: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for backend in BACKENDS:  # warm-up: the ONNX export is cached, the first decode is paid
        predict(run, [str(p) for p in paths[:1]], out / f"warm-{backend}", tile=s.tile, overlap=overlap,
                device=s.device, backend=backend, overwrite=True, console=quiet())  # fmt: skip
    for _ in range(repeats):
        for backend in BACKENDS:
            start = time.perf_counter()
            result = predict(run, [str(p) for p in paths], out / backend, tile=s.tile, overlap=overlap,
                             device=s.device, backend=backend, overwrite=True, console=quiet())  # fmt: skip
            walls[backend].append(time.perf_counter() - start)
            if result.failures:
                raise RuntimeError(f"predict --backend {backend} failed: {result.failures}")
    res = {b: summary(w) for b, w in walls.items()}
    res["ratio"] = ratios(res["onnxruntime"], res["torch"])
    res.update(images=len(paths), tile=s.tile, overlap=overlap)
    say(f"onnx: {len(paths)} image(s): {walls} -> onnxruntime/torch {res['ratio']}")
    return res


def peak_rss_100mp(s, scratch: Path) -> dict:
    """predict_100mp.py with --backend onnxruntime (fresh process): peak RSS, wall and CPU seconds."""
    out = scratch / "predict_100mp_onnx.json"
    script = Path(__file__).with_name("predict_100mp.py")
    cmd = [sys.executable, str(script), str(out), "--size", str(s.size_100mp), "--overlap", str(s.overlap_100mp),
           "--tile", "512", "--device", "cpu", "--backend", "onnxruntime",
           "--work", str(scratch / "predict_100mp")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"failed": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(out.read_text())


def bench_onnx(s, scratch: Path, run: Path, tests: list[Path], scan: Path) -> dict:
    if s.device != "cpu":
        return {"skipped": "ONNX Runtime runs on the CPU here; the section is measured on CPU machines"}
    out = scratch / "predict-onnx"
    return {
        "sample": time_backends(run, tests, out / "sample", s, s.overlap, s.repeats),
        "large": time_backends(run, [scan], out / "large", s, s.large_overlap, max(2, s.repeats // 2)),
        "100mp": peak_rss_100mp(s, scratch),
    }


def onnx_targets(r: dict, target_row) -> list[dict]:
    """Rows for the targets table: the wall ratio on each input (no target: measured), and the 100 MP peak RSS."""
    part, rows = r.get("onnx") or {}, []
    for name in ("sample", "large"):
        p = part.get(name)
        if p and "ratio" in p:
            detail = f"{p['images']} image(s), tile {p['tile']}, overlap {p['overlap']:g}; torch best " \
                     f"{p['torch']['min_s']:.1f} s, onnxruntime best {p['onnxruntime']['min_s']:.1f} s"  # fmt: skip
            rows.append(target_row(f"onnx_{name}", f"predict onnxruntime ÷ torch wall, {name}", p["ratio"]["min"],
                                   p["ratio"]["median"], "measured (< 1: faster)", None, detail))  # fmt: skip
    big = part.get("100mp") or {}
    if "peak_rss_mb" in big:
        torch_rss = (r.get("100mp") or {}).get("peak_rss_mb")
        than = f"; torch {torch_rss:.0f} MB" if torch_rss else ""
        rows.append(target_row("onnx_100mp_rss", "peak RSS predicting 100 MP with onnxruntime, MB", big["peak_rss_mb"],
                               None, "< 3072", big["peak_rss_mb"] < 3072, f"{big['wall_s']:.0f} s{than}"))  # fmt: skip
    return rows
