"""``make bench-labels``: few labels, many scans — what do the unlabelled scans buy, at one training budget?

    .venv/bin/python -m benchmarks.labels [--quick] [--seeds 0,1,2] [--epochs 8] [--samples 96]

Protocol (the low-label study of docs/label-efficiency.md): a synthetic sample (``synth --n 240``, ~70/15/15
train/val/test); 10 % of the training images keep their masks (the same images for every seed), the other 90 %
are unlabelled scans. Five arms, each fine-tuned with the same budget (epochs x crops per epoch, same crop and
batch size, the same crop stream per seed) on the labelled images, Unet on tu-efficientnet_lite0:

- scratch: random init (the baseline of every Δ);
- imagenet: the bundled lite0 ImageNet weights;
- pretrain (scratch init) and pretrain (imagenet init): ``damage-smp pretrain`` (Models Genesis restoration) on
  every training image without its mask, then ``train --init-from``; one pre-train run per init, shared by
  the seeds (its cost is reported apart);
- imagenet + self-training: the imagenet run of the same seed is the teacher, ``pseudo-label`` labels the
  unlabelled scans, a new imagenet run trains on labelled + pseudo-labelled crops (``--pseudo``); its
  teacher's training is the cost it adds.

Every run is evaluated on the test split; ``damage_smp.compare`` gives mean ± std over seeds, Δ against
scratch and the paired bootstrap CI. Steps already done are skipped, so a killed benchmark continues. Writes
benchmarks/labels_results.json after every step and docs/label-efficiency.md between its markers after every
seed (so a benchmark stopped early documents the seeds it finished, and says so).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "benchmarks" / "scratch" / "labels"
RESULTS = ROOT / "benchmarks" / "labels_results.json"
DOC = ROOT / "docs" / "label-efficiency.md"
BEGIN, END = "<!-- bench-labels:begin -->", "<!-- bench-labels:end -->"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAMAGE_SMP_CACHE", str(SCRATCH / "cache"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from damage_smp.compare import compare  # noqa: E402
from damage_smp.config import TrainConfig  # noqa: E402
from damage_smp.evaluate import evaluate  # noqa: E402
from damage_smp.pretrain import PretrainConfig, pretrain  # noqa: E402
from damage_smp.pseudo import pseudo_label  # noqa: E402
from damage_smp.runs import read_state  # noqa: E402
from damage_smp.synth import synth  # noqa: E402
from damage_smp.system import machine  # noqa: E402
from damage_smp.train import train  # noqa: E402

ARMS = ("scratch", "imagenet", "pretrain-scratch", "pretrain-imagenet", "imagenet-selftrain")
LITE0 = "tu-efficientnet_lite0"


@dataclass(frozen=True)
class Protocol:
    n: int = 240
    size: str = "256x192"
    labelled: float = 0.10  # share of the training images that keep their masks
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 10
    samples: int = 128  # crops per epoch: the budget is epochs x samples crops, for every arm
    crop: int = 128
    batch: int = 8
    val_every: int = 2
    pretrain_epochs: int = 10
    pretrain_samples: int = 128
    threshold: float = 0.9
    pseudo_weight: float = 1.0
    threads: int = 2  # torch threads; 1 on a machine busy with other work (2 threads then spin against the load)
    reduced: str = ""  # why this is less than the full protocol (printed in the doc)


QUICK = Protocol(n=40, size="128x96", seeds=(0, 1), epochs=1, samples=16, crop=64, batch=8, val_every=1,
                 pretrain_epochs=1, pretrain_samples=16,
                 reduced="--quick: a smoke test, not a measurement")  # fmt: skip


# ============================================================================================ data
def make_data(p: Protocol) -> dict[str, Path]:
    """The sample, the low-label manifest (10 % of train + val + test), and CSVs of the images without masks."""
    folder = SCRATCH / f"data-{p.n}-{p.size}"
    if not (folder / "manifest.csv").is_file():
        w, h = (int(v) for v in p.size.split("x"))
        synth(folder, n=p.n, size=(w, h), seed=0, overwrite=True)
    df = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    train = df[df["split"] == "train"]
    labelled = train.sample(n=max(2, round(p.labelled * len(train))), random_state=0).index
    low = df[(df["split"] != "train") | df.index.isin(labelled)]
    files = {"manifest": folder / f"low{round(100 * p.labelled)}.csv", "unlabelled": folder / "unlabelled.csv",
             "train_images": folder / "train-images.csv"}  # fmt: skip
    low.to_csv(files["manifest"], index=False)
    train[~train.index.isin(labelled)][["image"]].to_csv(files["unlabelled"], index=False)
    train[["image"]].to_csv(files["train_images"], index=False)
    counts = {"train": len(train), "labelled": len(labelled), "unlabelled": len(train) - len(labelled),
              "val": int((df["split"] == "val").sum()), "test": int((df["split"] == "test").sum())}  # fmt: skip
    return files | {"counts": counts}


# ============================================================================================ steps
class Bench:
    def __init__(self, p: Protocol, out: Path, console: Console):
        self.p, self.out, self.console = p, out, console
        self.steps: list[dict] = []  # {step, seconds, command}
        self.started = time.perf_counter()

    def step(self, name: str, command: str, fn) -> None:
        t0 = time.perf_counter()
        self.console.rule(f"[bold]{name}")
        fn()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        self.steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 1), "command": command,
                           "load": round(load, 1)})  # fmt: skip

    def train_cfg(self, files, name: str, seed: int, **extra) -> TrainConfig:
        p = self.p
        return TrainConfig(manifest=str(files["manifest"]), encoder=LITE0, epochs=p.epochs, samples_per_epoch=p.samples,
                           crop_size=p.crop, batch_size=p.batch, tile=256, val_every=p.val_every, seed=seed,
                           num_workers=0, samples=0, device="cpu", out_dir=str(self.out / "runs"), name=name,
                           **extra)  # fmt: skip

    def run_train(self, cfg: TrainConfig) -> None:
        run = Path(cfg.out_dir) / cfg.name
        state = read_state(run) if run.is_dir() else None
        if not (state and state.get("status") == "finished" and (run / "metrics.json").is_file()):
            train(replace(cfg, overwrite=True), console=self.console)
            evaluate(run, split="test", device="cpu", console=self.console)

    def pretrain_run(self, files, init: str) -> Path:
        p = self.p
        out = self.out / "pretrain" / f"pt-{init}"
        state = read_state(out) if out.is_dir() else None
        if not (state and state.get("status") == "finished"):
            cfg = PretrainConfig(inputs=(str(files["train_images"]),), out=str(out), encoder=LITE0, init=init,
                                 epochs=p.pretrain_epochs, samples_per_epoch=p.pretrain_samples, crop_size=p.crop,
                                 batch_size=p.batch, seed=0, num_workers=0, device="cpu", overwrite=True)  # fmt: skip
            pretrain(cfg, console=self.console)
        return out


def cli(args: list[str]) -> str:
    return "damage-smp " + " ".join(shlex.quote(str(a)) for a in args)


def train_command(cfg: TrainConfig) -> str:
    flags = ["train", "--manifest", cfg.manifest, "--encoder", cfg.encoder, "--encoder-weights", cfg.encoder_weights,
             "--epochs", cfg.epochs, "--samples-per-epoch", cfg.samples_per_epoch, "--crop-size", cfg.crop_size,
             "--batch-size", cfg.batch_size, "--tile", cfg.tile, "--val-every", cfg.val_every, "--seed", cfg.seed,
             "--num-workers", 0, "--out-dir", cfg.out_dir, "--name", cfg.name]  # fmt: skip
    if cfg.init_from:
        flags += ["--init-from", cfg.init_from]
    if cfg.pseudo:
        flags += ["--pseudo", cfg.pseudo, "--pseudo-weight", cfg.pseudo_weight]
    return cli(flags) + f" && damage-smp evaluate {shlex.quote(str(Path(cfg.out_dir) / cfg.name))} --split test"


def run_seed(b: Bench, files, seed: int, pre: dict[str, Path]) -> None:
    p = b.p
    arms = {
        "scratch": b.train_cfg(files, f"scratch-s{seed}", seed, encoder_weights="none"),
        "imagenet": b.train_cfg(files, f"imagenet-s{seed}", seed),
        "pretrain-scratch": b.train_cfg(
            files, f"pretrain-scratch-s{seed}", seed, encoder_weights="none", init_from=str(pre["none"])
        ),  # fmt: skip
        "pretrain-imagenet": b.train_cfg(files, f"pretrain-imagenet-s{seed}", seed, init_from=str(pre["imagenet"])),
    }
    for arm, cfg in arms.items():
        b.step(f"{arm} seed {seed}", train_command(cfg), lambda cfg=cfg: b.run_train(cfg))
    teacher, pseudo = Path(arms["imagenet"].out_dir) / arms["imagenet"].name, b.out / "pseudo" / f"s{seed}"
    command = cli(["pseudo-label", teacher, files["unlabelled"], "--out", pseudo, "--threshold", p.threshold,
                   "--device", "cpu"])  # fmt: skip
    args = dict(threshold=p.threshold, device="cpu", console=b.console)
    b.step(
        f"pseudo-label seed {seed}", command, lambda: pseudo_label(teacher, [str(files["unlabelled"])], pseudo, **args)
    )
    student = b.train_cfg(files, f"imagenet-selftrain-s{seed}", seed, pseudo=str(pseudo), pseudo_weight=p.pseudo_weight)
    b.step(f"imagenet-selftrain seed {seed}", train_command(student), lambda: b.run_train(student))


# ============================================================================================ results
def summarise(b: Bench, files, seeds_done: list[int]) -> dict:
    """compare over the finished runs -> one row per arm (mean ± std over seeds, Δ and CI against scratch)."""
    names = [f"{arm}-s{s}" for arm in ARMS for s in seeds_done]
    result = compare([b.out / "runs" / n for n in names], out=b.out / "compare", plots=False, overwrite=True)
    runs = result.runs.set_index("name")
    groups = {frozenset(str(g["members"]).split(";")): g for g in result.groups.to_dict("records")}
    arms = []
    for arm in ARMS:
        members = [f"{arm}-s{s}" for s in seeds_done]
        row = groups.get(frozenset(members)) or runs.loc[members[0]].to_dict()
        values = [float(runs.loc[m, "metric"]) for m in members]
        deltas = runs.loc[members, "delta"].astype(float)  # each seed's run − the scratch seeds' mean
        arms.append({
            "arm": arm, "init": runs.loc[members[0], "init"],
            "self_training": re.sub(r"-s\d+ ", "-s<seed> ", str(runs.loc[members[0], "self_training"])),
            "n": len(members), "damage_miou": values, "mean": float(pd.Series(values).mean()),
            "std": float(pd.Series(values).std()) if len(values) > 1 else None,
            "delta": None if arm == "scratch" else float(row["delta"]),
            "delta_std": None if arm == "scratch" or len(values) < 2 else float(deltas.std()),
            "ci": None if arm == "scratch" else [float(row["ci_low"]), float(row["ci_high"])],
            "train_s": float(runs.loc[members, "train_time_s"].astype(float).mean()),
            "miou": float(runs.loc[members, "miou"].astype(float).mean()),
            "damage_f1": float(runs.loc[members, "damage_f1"].astype(float).mean()),
        })  # fmt: skip
    return {"arms": arms, "notes": result.notes}


def pseudo_stats(b: Bench, seeds_done: list[int]) -> list[dict]:
    out = []
    for s in seeds_done:
        info = json.loads((b.out / "pseudo" / f"s{s}" / "pseudo.json").read_text())
        out.append({"seed": s, "images": info.get("images"), "confident": info.get("confident")})
    return out


def fmt(x, spec=".3f") -> str:
    return "—" if x is None or x != x else format(x, spec)


def table(summary: dict) -> str:
    lines = ["| arm | init | self-training | seeds | test damage mIoU (mean ± std) | Δ vs scratch (± std) | "
             "95% CI of Δ (paired bootstrap) | test mIoU | damage-vs-clean F1 | train s / run |",
             "|" + "---|" * 10]  # fmt: skip
    for a in summary["arms"]:
        pm = fmt(a["mean"]) + (f" ± {fmt(a['std'])}" if a["std"] is not None else "")
        delta = "baseline" if a["delta"] is None else fmt(a["delta"], "+.3f") + (
            f" ± {fmt(a['delta_std'])}" if a["delta_std"] is not None else "")  # fmt: skip
        ci = "—" if a["ci"] is None else f"[{fmt(a['ci'][0], '+.3f')}, {fmt(a['ci'][1], '+.3f')}]"
        lines.append(f"| {a['arm']} | {a['init']} | {a['self_training'] or '—'} | {a['n']} | {pm} | {delta} | {ci} | "
                     f"{fmt(a['miou'])} | {fmt(a.get('damage_f1'))} | {a['train_s']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def write_doc(b: Bench, data: dict, results: dict) -> None:
    p, s = b.p, results["summary"]
    pre = {st["step"]: st["seconds"] for st in b.steps}
    block = [
        BEGIN,
        f"Measured {results['date']} on {results['machine']}, git {results['git']}; wall time "
        f"**{results['wall_s'] / 60:.1f} min** for {len(results['seeds_done'])} of {len(p.seeds)} seeds"
        + (f" — **reduced protocol: {p.reduced}**" if p.reduced else "")
        + "."
        + (f" {results['rerun_note']}" if results.get("rerun_note") else ""),
        "",
        f"Data: `synth --n {p.n} --size {p.size}`: {data['train']} train images, of which {data['labelled']} "
        f"labelled ({100 * p.labelled:.0f} %) and {data['unlabelled']} unlabelled; {data['val']} val, {data['test']} "
        f"test. Budget per arm: {p.epochs} epochs x {p.samples} crops of {p.crop} px, batch {p.batch} (Unet, "
        f"{LITE0}); pre-training {p.pretrain_epochs} epochs x {p.pretrain_samples} crops on all {data['train']} "
        f"training images (no masks); pseudo-labels at threshold {p.threshold}, weight {p.pseudo_weight}.",
        "",
        table(s),
        "",
        "Pseudo-labels (imagenet teacher of the same seed, unlabelled scans): "
        + "; ".join(
            f"seed {x['seed']}: {x['images']} images, {100 * x['confident']:.1f} % of pixels confident"
            for x in results["pseudo"]
        )
        + ".",  # fmt: skip
        "",
        "Extra cost outside the equal fine-tuning budget: pre-training "
        + ", ".join(
            f"{k.split(' ')[0].replace('pretrain-', 'init ')} {v:.0f} s"
            for k, v in pre.items()
            if k.startswith("pretrain-") and "seed" not in k
        )  # fmt: skip
        + "; self-training needs its teacher (the imagenet run) and pseudo-labelling ("
        + ", ".join(f"{v:.0f} s" for k, v in pre.items() if k.startswith("pseudo-label"))
        + ").",
        "",
        load_line(results),
        "",
        "<details><summary>Every step, its command and its wall time</summary>",
        "",
        "```bash",
        *[f"{st['command'].replace(str(ROOT) + '/', '')}    # {st['step']}: {st['seconds']:.0f} s" for st in b.steps],
        "```",
        "</details>",
        END,
    ]
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else f"# Label efficiency\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + "\n".join(block) + rest.split(END, 1)[1], encoding="utf-8")


def load_line(results: dict) -> str:
    """The machine's 1-minute load average over the run (other work on the same cores slows every arm alike)."""
    loads = [st["load"] for st in results["steps"] if "load" in st] or results.get("load_samples", [])
    if not loads:
        return "Load average during the run: not recorded."
    return (
        f"Load average (1 min) during the run: {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores "
        f"({len(loads)} samples): the machine was {'shared' if max(loads) > 2.5 else 'quiet'}."
    )


def git_commit() -> str:
    import subprocess

    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "?"


# ============================================================================================ main
def parse(argv=None) -> Protocol:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke test of the protocol (minutes, not a measurement)")
    ap.add_argument("--seeds", help="comma list, e.g. 0,1,2")
    for name in ("epochs", "samples", "pretrain-epochs", "pretrain-samples", "n", "threads", "val-every"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--reduced", default="", help="why the protocol is smaller than the default (goes in the doc)")
    ap.add_argument("--doc-only", action="store_true", help="rewrite the doc from benchmarks/labels_results.json")
    args = ap.parse_args(argv)
    p = QUICK if args.quick else Protocol()
    if args.doc_only:
        return None
    changes = {k.replace("-", "_"): v for k, v in vars(args).items()
               if k not in ("quick", "seeds", "reduced", "doc_only") and v is not None}  # fmt: skip
    if args.seeds:
        changes["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.reduced:
        changes["reduced"] = args.reduced
    return replace(p, **changes)


def protocol_dir(p: Protocol) -> Path:
    """Where a protocol's steps live: finished steps are reused only by a run of the same protocol."""
    budget = {k: v for k, v in asdict(p).items() if k not in ("seeds", "threads", "reduced")}
    return SCRATCH / f"protocol-{hashlib.sha1(json.dumps(budget, sort_keys=True).encode()).hexdigest()[:8]}"


def rewrite_doc() -> None:
    """The doc's measured block again, from the results a finished benchmark wrote (no step is rerun)."""
    r = json.loads(RESULTS.read_text(encoding="utf-8"))
    p = Protocol(**{**r["protocol"], "seeds": tuple(r["protocol"]["seeds"])})
    b = Bench(p, protocol_dir(p), Console())
    b.steps = r["steps"]
    r["summary"] = summarise(b, None, r["seeds_done"])  # recomputed by compare from the runs on disk
    write_doc(b, r["data"], r)


def main(argv=None) -> None:
    p = parse(argv)
    if p is None:
        return rewrite_doc()
    torch.set_num_threads(p.threads)
    console = Console()
    out = protocol_dir(p)
    b = Bench(p, out, console)
    files = make_data(p)
    pre = {}
    for init in ("none", "imagenet"):
        command = cli(["pretrain", files["train_images"], "--out", out / "pretrain" / f"pt-{init}", "--encoder",
                       LITE0, "--init", init, "--epochs", p.pretrain_epochs, "--samples-per-epoch",
                       p.pretrain_samples, "--crop-size", p.crop, "--batch-size", p.batch,
                       "--num-workers", 0])  # fmt: skip
        b.step(f"pretrain-{init}", command, lambda init=init: pre.update({init: b.pretrain_run(files, init)}))
    done: list[int] = []
    for seed in p.seeds:
        run_seed(b, files, seed, pre)
        done.append(seed)
        results = {"protocol": asdict(p), "data": files["counts"], "seeds_done": done,
                   "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_text(),
                   "git": git_commit(), "wall_s": time.perf_counter() - b.started, "steps": b.steps,
                   "summary": summarise(b, files, done), "pseudo": pseudo_stats(b, done)}  # fmt: skip
        quick = p.reduced.startswith("--quick")  # a smoke test never replaces the measured results
        (out / "results.json" if quick else RESULTS).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        if not quick:
            write_doc(b, files["counts"], results)
        console.print(table(results["summary"]))
    console.print(f"wall time {(time.perf_counter() - b.started) / 60:.1f} min")


def machine_text() -> str:
    m = machine(torch.device("cpu"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{m.get('cpu', '?')}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load {load:.1f}"


if __name__ == "__main__":
    main()
