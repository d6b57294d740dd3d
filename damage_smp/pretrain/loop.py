"""pretrain(cfg) -> DIR: the whole U-Net (encoder and decoder) learns to restore corrupted crops of unlabelled scans.

The loop is train.py's, with its pieces: ``train.train_step`` (one batch), ``schedule`` (warmup + poly),
``train.restore`` (the one place resume state comes back), ``runstate.run_state`` (state.json on every way out),
``checkpoints`` (atomic), ``plots.save_curves``, ``system.environment``. The model is ``models.build_model`` with
3 outputs and no activation: it predicts the crop in the normalised space the model reads (DamageModel normalises
inside), so targets are unbounded and a sigmoid would not fit them. The loss is the mean squared error over real
pixels (Models Genesis' choice; padding of images smaller than the crop counts nothing).

DIR: config.json ("pretrain" settings, no "train"), pretrain.json (the marker ``rundir.kind_of`` and ``train
--init-from`` read), inputs.csv (the images, read again on --resume), env.json, history.csv, curves.png,
state.json, checkpoints/{last,best}.pt, and at the end encoder.pt (encoder state dict + mean/std) and model.pt.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.optim.swa_utils import update_bn

from ..checkpoints import load_checkpoint, model_state, save_checkpoint
from ..console import escape, fmt, progress_bar
from ..data import make_loader
from ..decode_cache import default_decode_cache
from ..memory import check_step_fits
from ..models import build_model, count_params, param_groups
from ..plots import save_curves
from ..rng import get_rng_state
from ..rundir import RunDirClaim, claim_new_dir, kind_of, remove_stale_temps
from ..runs import RunPaths, read_json, sha256_file, write_csv, write_json, write_state
from ..runstate import TrainingStopped, run_state
from ..schedule import lr_factor, set_lr
from ..system import EnergyMeter, environment, peak_memory_mb, resolve_amp, resolve_device
from ..train import claim_cleanup, restore, train_step
from .config import PretrainConfig, config_record
from .data import RestorationDataset, collect_images, probe_batch

OUTPUTS = 3  # restored RGB
HISTORY = ["epoch", "train_loss", "val_loss", "lr", "seconds", "img_per_s", "data_seconds", "peak_mem_mb",
           "energy_wh", "energy_source"]  # fmt: skip
BN_BATCHES = 8  # batches of training crops that BatchNorm statistics are recomputed on after each epoch
METHOD = "models-genesis restoration (local shuffle, Bezier intensity, in/out-painting), MSE on normalised RGB"


class RestorationLoss(nn.Module):
    """Mean squared error between the output and the normalised original, over real (non-padding) pixels."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())  # (1, 3, 1, 1), 0–255 scale, the model's own
        self.register_buffer("std", std.detach().clone())

    def forward(self, output: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        target, mask = targets  # (N, 3, H, W) uint8, (N, H, W) 0 = real pixel
        wanted = (target.float() - self.mean) / self.std
        valid = (mask == 0).unsqueeze(1).float()
        return ((output.float() - wanted) ** 2 * valid).sum() / (valid.sum() * OUTPUTS).clamp_min(1)


@dataclass
class PretrainRun:
    """What the loop reads and changes (the attributes ``train.restore`` and ``run_state`` use included)."""

    cfg: PretrainConfig
    paths: RunPaths
    device: torch.device
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    loss_fn: nn.Module
    dataset: RestorationDataset
    loader: torch.utils.data.DataLoader
    probe: dict
    start_epoch: int = 1
    step: int = 0
    total_steps: int = 1
    best_score: float = -math.inf  # minus the lowest probe loss
    history: list[dict] = field(default_factory=list)
    last_train_loss: float = math.nan
    console: Console | None = None
    main: bool = True

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    @property
    def last_epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else self.start_epoch - 1

    def resume_command(self) -> str:
        return f"damage-smp pretrain --out {self.paths.root} --resume --epochs {self.cfg.epochs}"


# ============================================================================================ entry point
def pretrain(cfg: PretrainConfig, resume: bool = False, console: Console | None = None) -> Path:
    """Pre-train as cfg says and return DIR; with ``resume``, continue the run in cfg.out up to cfg.epochs."""
    run = setup(cfg, resume, console or Console())
    with run_state(run):
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            seconds, seen, data_s, meter = train_epoch(run, epoch)
            timing = {"seconds": seconds, "img_per_s": seen / seconds, "data_seconds": data_s}
            refresh_batchnorm(run)
            record_epoch(run, epoch, probe_loss(run), timing, meter)
        finish(run)
    return run.paths.root


def setup(cfg: PretrainConfig, resume: bool, console: Console) -> PretrainRun:
    """The images, DIR (staged when new), the model, optimizer and loader; resume state restored once."""
    out = Path(cfg.out)
    if resume:
        check_resumable(out)
        remove_stale_temps(out)
        images = [row["image"] for row in _read_rows(out / "inputs.csv")]
        claim = RunDirClaim(out, out, "pretrain")
    else:
        images = collect_images(cfg.inputs, exclude=out)
        claim = claim_new_dir(out, cfg.overwrite, "pretrain")
    with claim_cleanup(claim):
        run = build_run(cfg, resume, claim.path, images, console)
        run.paths = RunPaths(claim.commit())
    run.say(
        f"[bold]{escape(str(run.paths.root))}[/]  pre-training {cfg.arch}/{cfg.encoder} init={cfg.init} on "
        f"{len(images)} images, {cfg.samples_per_epoch} crops of {cfg.crop_size} px per epoch  device={run.device}"
    )
    return run


def build_run(cfg: PretrainConfig, resume: bool, where: Path, images: list[str], console: Console) -> PretrainRun:
    """Model and everything around it in ``where``; a new run gets its files and a first checkpoint."""
    paths = RunPaths(where)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model, info = build_model(cfg, OUTPUTS, load_weights=not resume)
    trainable, total = count_params(model)
    info = {**info, "params_total": total, "params_trainable_at_start": trainable, "outputs": OUTPUTS}
    if not resume:
        write_files(paths, cfg, images, info, device)
    for msg in info.get("messages", []):
        console.print(f"[yellow]{escape(msg)}[/]")
    ckpt = load_checkpoint(paths.checkpoint("last")) if resume else None
    start_epoch = ckpt["epoch"] + 1 if ckpt is not None else 1
    if start_epoch > cfg.epochs:
        raise ValueError(f"--resume {paths.root}: already trained {ckpt['epoch']} epochs; give --epochs > that")
    check_step_fits(model, cfg, OUTPUTS, device)
    run = assemble(cfg, paths, device, model, images, console)
    run.start_epoch = start_epoch
    if ckpt is not None:
        restore(run, ckpt)
    else:
        save_checkpoint(paths.checkpoint("last"), checkpoint_state(run, 0))
    return run


def assemble(cfg: PretrainConfig, paths: RunPaths, device, model, images: list[str], console) -> PretrainRun:
    """Loss, optimizer, scaler, dataset, loader and the fixed probe batch around a built model."""
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, 1.0, cfg.weight_decay, frozen=False))
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    amp_dtype = resolve_amp(cfg.amp, device)
    cache = default_decode_cache()
    dataset = RestorationDataset(images, crop_size=cfg.crop_size, samples_per_epoch=cfg.samples_per_epoch,
                                 seed=cfg.seed, max_pixels=cfg.max_pixels, cache_mb=cfg.cache_mb,
                                 decode_cache=cache)  # fmt: skip
    loader = make_loader(dataset, cfg.batch_size, num_workers=cfg.num_workers, device_type=device.type,
                         drop_last=len(dataset) >= cfg.batch_size)  # fmt: skip
    return PretrainRun(cfg=cfg, paths=paths, device=device, model=model, net=model, optimizer=optimizer,
                       scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                       amp_dtype=amp_dtype, loss_fn=RestorationLoss(model.mean, model.std).to(device),
                       dataset=dataset, loader=loader, probe=probe_batch(images, cfg, cache),
                       total_steps=max(1, len(loader)) * cfg.epochs, console=console)  # fmt: skip


def write_files(paths: RunPaths, cfg: PretrainConfig, images: list[str], info: dict, device) -> None:
    """A new run's inputs.csv, config.json, env.json and pretrain.json (the marker)."""
    inputs = paths.root / "inputs.csv"
    write_csv(inputs, [{"image": p} for p in images], ["image"])
    write_json(paths.config, config_record(cfg, info))
    write_json(paths.env, environment(inputs, device, info, 1))
    write_json(paths.root / "pretrain.json", {
        "kind": "pretrain", "method": METHOD, "arch": info["arch"], "encoder": cfg.encoder, "init": cfg.init,
        "images": len(images), "crop_size": cfg.crop_size, "created": dt.datetime.now().isoformat(timespec="seconds"),
        "epochs": 0,
    })  # fmt: skip


def check_resumable(out: Path) -> None:
    if kind_of(out) != "pretrain":
        raise ValueError(f"--out {out} --resume: not a pre-train run (no pretrain.json); give the --out of a pretrain")
    if not (out / "checkpoints" / "last.pt").is_file():
        raise FileNotFoundError(
            f"--out {out} --resume: no checkpoints/last.pt, nothing to resume; start it again without --resume"
        )


def _read_rows(path: Path) -> list[dict]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# ============================================================================================ the loop
def train_epoch(run: PretrainRun, epoch: int) -> tuple[float, int, float, EnergyMeter]:
    """One pass over the epoch's corrupted crops: (seconds, crops seen, data seconds, energy meter)."""
    cfg = run.cfg
    run.dataset.set_epoch(epoch)
    meter = EnergyMeter(run.device)
    run.net.train()
    t0, data_s, seen, loss_sum, n = time.perf_counter(), 0.0, 0, 0.0, 0
    with progress_bar(run.console, fields="loss {task.fields[loss]:.4f}", elapsed=False) as bar:
        task = bar.add_task(f"pretrain epoch {epoch}/{cfg.epochs}", total=len(run.loader), loss=float("nan"))
        t_data = time.perf_counter()
        for i, batch in enumerate(run.loader):
            images, targets = to_device(batch, run.device, cfg.channels_last)
            data_s += time.perf_counter() - t_data
            set_lr(run.optimizer, lr_factor(run.step, run.total_steps, cfg.warmup_iters, "poly"))
            loss = train_step(run.model, run.net, run.optimizer, run.scaler, run.loss_fn, images, targets,
                              amp_dtype=run.amp_dtype, grad_clip=cfg.grad_clip)  # fmt: skip
            if not math.isfinite(loss):
                raise TrainingStopped(
                    f"loss became {loss} at epoch {epoch}, batch {i + 1}; pre-training stopped and "
                    f"{run.paths.checkpoint('last')} (epoch {epoch - 1}) was kept. Try a lower --lr or --amp off"
                )
            run.step += 1
            loss_sum, n, seen = loss_sum + loss, n + 1, seen + images.shape[0]
            if i % 10 == 0:
                meter.sample()
            bar.update(task, advance=1, loss=loss_sum / n)
            t_data = time.perf_counter()
    run.last_train_loss = loss_sum / n if n else math.nan
    return time.perf_counter() - t0, seen, data_s, meter


def to_device(batch: dict, device, channels_last: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    images = batch["image"].to(device, non_blocking=True)  # (N, 3, H, W) uint8, corrupted
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, (batch["target"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True))


def refresh_batchnorm(run: PretrainRun, batches: int = BN_BATCHES) -> None:
    """BatchNorm running statistics recomputed on this epoch's first crops (torch's ``update_bn``, "precise BN").

    The network changes so fast here that the momentum averages lag far behind: in eval mode the lite0 U-Net's
    probe loss was 12.2 after 4 epochs, 0.32 with recomputed statistics (0.66 for copying the corrupted input).
    Eval-mode outputs, a frozen encoder in ``train --freeze-encoder`` and encoder.pt/model.pt all use them.
    """
    crops = (to_device(b, run.device, run.cfg.channels_last)[0] for b in itertools.islice(run.loader, batches))
    update_bn(crops, run.model)


@torch.no_grad()
def probe_loss(run: PretrainRun) -> float:
    """The restoration loss on the fixed probe crops (eval mode), batch by batch."""
    run.model.eval()
    total, count = 0.0, 0
    probe, step = run.probe, run.cfg.batch_size
    for start in range(0, len(probe["image"]), step):
        part = {k: v[start : start + step] for k, v in probe.items()}
        images, targets = to_device(part, run.device, run.cfg.channels_last)
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            output = run.model(images)
        total += run.loss_fn(output.float(), targets).item() * len(images)
        count += len(images)
    return total / count


def record_epoch(run: PretrainRun, epoch: int, val_loss: float, timing: dict, meter: EnergyMeter) -> None:
    """History row; last.pt (best.pt at the lowest probe loss), history.csv and curves."""
    run.history.append({"epoch": epoch, "train_loss": run.last_train_loss, "val_loss": val_loss,
                        "lr": run.optimizer.param_groups[0]["lr"], **timing, "peak_mem_mb": peak_memory_mb(run.device),
                        **meter.result()})  # fmt: skip
    paths = run.paths
    improved = -val_loss > run.best_score
    if improved:
        run.best_score = -val_loss
    state = checkpoint_state(run, epoch)
    save_checkpoint(paths.checkpoint("last"), state)
    if improved:
        save_checkpoint(paths.checkpoint("best"), model_state(state))
    write_csv(paths.history, run.history, HISTORY)
    save_curves(run.history, paths.curves, title=paths.root.name, loss_label="restoration MSE (normalised)",
                val_label="probe crops", scores=False)  # fmt: skip
    row = run.history[-1]
    run.say(f"epoch {epoch}/{run.cfg.epochs}  loss {fmt(row['train_loss'], '.4f')}  probe loss "
            f"{fmt(val_loss, '.4f')}  {row['img_per_s']:.1f} img/s  {row['seconds']:.0f}s")  # fmt: skip


def checkpoint_state(run: PretrainRun, epoch: int) -> dict:
    return {"history": run.history, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": {"step": run.step}, "scaler": run.scaler.state_dict(), "epoch": epoch,
            "best_score": run.best_score, "config": run.cfg.to_dict(), "rng": get_rng_state()}  # fmt: skip


def finish(run: PretrainRun) -> None:
    """encoder.pt and model.pt (the last epoch's weights), pretrain.json updated, state.json finished."""
    root, model = run.paths.root, run.model
    encoder = {k: v.detach().cpu() for k, v in model.net.encoder.state_dict().items()}
    save_checkpoint(root / "encoder.pt", {**encoder, "mean": model.mean.cpu(), "std": model.std.cpu()})
    save_checkpoint(root / "model.pt", {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                        "epoch": run.last_epoch, "outputs": OUTPUTS,
                                        "config": run.cfg.to_dict()})  # fmt: skip
    marker = read_json(root / "pretrain.json")
    write_json(root / "pretrain.json", {**marker, "epochs": run.last_epoch,
                                        "encoder_sha256": sha256_file(root / "encoder.pt"),
                                        "model_sha256": sha256_file(root / "model.pt")})  # fmt: skip
    write_state(run.paths.state, "finished", run.last_epoch)
    run.say(f"encoder: {escape(str(root / 'encoder.pt'))}  model: {escape(str(root / 'model.pt'))}")
