"""--class-weights none vs auto at equal short budgets: which default holds? (docs/transfer-learning.md)

Trains Unet + tu-efficientnet_lite0 (ImageNet, fine-tuned) with each class-weight setting on
  - the bundled sample (data_manifest.csv, `make sample`), seeds 0 and 1, and
  - a differently generated sample (`damage-smp synth --seed 7 --n 40 --size 448x320`), seed 0,
each with the 16-class artefact scheme and with artefact-binary (damage vs clean), evaluates on the test split and
prints one table of test damage mIoU / mIoU per setting, plus the mean over all cells. Every run is the CLI
command it prints (same crops for none and auto: the crops depend only on the seed).

Run: ``.venv/bin/python -m benchmarks.class_weights --out /tmp/cw`` (``--jobs N`` runs N trainings at a time,
each on one thread; ``--budget "--epochs 3 --samples-per-epoch 256"`` changes the budget). Runs already evaluated
in ``--out`` are reused, so an interrupted call continues; ``--collect`` only tabulates what is there. "train s" is
the train loop's seconds (history.csv), without set-up and evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

BUDGET = "--epochs 2 --samples-per-epoch 160 --crop-size 128 --batch-size 8 --lr 2e-3 --warmup-iters 5 --val-every 2"
SECOND_SAMPLE = ["--seed", "7", "--n", "40", "--size", "448x320"]
CELLS = [("bundled", 0), ("second", 0), ("bundled", 1)]  # (data set, training seed)
LABELS = ("artefact", "artefact-binary")
WEIGHTS = ("none", "auto")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "damage_smp", *args]


def run(cmd: list[str], log: Path, threads: int) -> float:
    """Run one CLI command (appending to log); its wall seconds. Raises naming the log on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + shlex.join(cmd[2:]) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(cmd[2:])} failed; see {log}")
    return time.perf_counter() - t0


def one(out: Path, manifest: Path, data: str, seed: int, labels: str, weights: str, args) -> dict | None:
    name = f"{data}-{labels}-{weights}-s{seed}"
    log = out / "logs" / f"{name}.log"
    train = cli("train", "--manifest", str(manifest), "--labels", labels, "--class-weights", weights,
                "--seed", str(seed), *shlex.split(args.budget), "--out-dir", str(out / "runs"), "--name", name,
                "--overwrite", "--samples", "0")  # fmt: skip
    metrics = out / "runs" / name / "metrics.json"
    if not metrics.is_file():  # else done by an earlier call of this script: reused (delete the run to redo it)
        if args.collect:
            return None
        run(train, log, args.threads)
        run(cli("evaluate", str(out / "runs" / name), "--split", "test"), log, args.threads)
    wall = float(pd.read_csv(out / "runs" / name / "history.csv")["seconds"].sum())
    summary = json.loads(metrics.read_text())["test"]["summary"]
    print(f"{name}: damage mIoU {summary['damage_miou']:.3f}  mIoU {summary['miou']:.3f}  train {wall:.0f} s")
    return {"data": data, "seed": seed, "labels": labels, "class_weights": weights, "train_s": round(wall, 1),
            "damage_miou": summary["damage_miou"], "miou": summary["miou"],
            "command": shlex.join(train[2:])}  # fmt: skip


def table(rows: list[dict]) -> str:
    """Markdown: one line per (data, seed, labels), none vs auto side by side, then the means."""
    lines = ["| data | seed | labels | damage mIoU none | damage mIoU auto | mIoU none | mIoU auto |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    by = {(r["data"], r["seed"], r["labels"], r["class_weights"]): r for r in rows}
    means: dict[str, list[float]] = {f"{k} {w}": [] for k in ("damage_miou", "miou") for w in WEIGHTS}
    for data, seed in CELLS:
        for labels in LABELS:
            pair = [by.get((data, seed, labels, w)) for w in WEIGHTS]
            if None in pair:
                continue
            for k in ("damage_miou", "miou"):
                for w, r in zip(WEIGHTS, pair, strict=True):
                    means[f"{k} {w}"].append(r[k])
            d = [f"{r['damage_miou']:.3f}" for r in pair] + [f"{r['miou']:.3f}" for r in pair]
            lines.append(f"| {data} | {seed} | {labels} | " + " | ".join(d) + " |")
    mean = [sum(v) / len(v) if v else float("nan") for v in means.values()]
    lines.append("| **mean** | | | " + " | ".join(f"**{m:.3f}**" for m in mean) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the second sample, runs, logs and results")
    p.add_argument("--manifest", type=Path, default=Path("data_manifest.csv"), help="the bundled sample's manifest")
    p.add_argument("--budget", default=BUDGET, help="train flags shared by every run")
    p.add_argument("--jobs", type=int, default=1, help="trainings at a time")
    p.add_argument("--threads", type=int, default=2, help="torch threads per training (OMP_NUM_THREADS)")
    p.add_argument("--collect", action="store_true", help="train nothing: tabulate the runs already in --out")
    args = p.parse_args()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    second = args.out / "second-sample"
    if not (second / "manifest.csv").is_file():
        run(cli("synth", str(second), *SECOND_SAMPLE), args.out / "logs" / "synth.log", args.threads)
    manifests = {"bundled": args.manifest.resolve(), "second": second / "manifest.csv"}
    jobs = [(d, s, lab, w) for d, s in CELLS for lab in LABELS for w in WEIGHTS]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one, args.out, manifests[d], d, s, lab, w, args) for d, s, lab, w in jobs]
        rows = [r for r in (f.result() for f in futures) if r is not None]
    (args.out / "class_weights.json").write_text(json.dumps({"budget": args.budget, "runs": rows}, indent=1))
    text = table(rows)
    (args.out / "class_weights.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
