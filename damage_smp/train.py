"""train(cfg) -> run directory. Plain functions read top to bottom: set-up, epochs of steps, validation, records.

``train`` calls ``setup`` (data, run directory, model, optimizer, loader; the one place resume state is
restored), then ``train_one_epoch`` (built on ``train_step``, which benchmarks/run.py times too), ``validate`` and
``record_epoch`` per epoch, all inside ``run_state`` (state.json says running / finished / interrupted / failed on
every way out). Runs on CPU, one GPU, or several under ``torchrun`` (DistributedDataParallel; rank 0 writes files).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from . import distributed as ddp
from . import tblog
from .budget import TimeBudget, budget_step, epochs, planned_epochs, record_budget, validates
from .checkpoints import copy_checkpoint, load_checkpoint, model_state, save_checkpoint
from .config import TrainConfig
from .console import escape, fmt, progress_bar
from .data import SegmentationDataset, class_pixel_counts, make_loader, train_transform
from .decode_cache import default_decode_cache
from .labels import LabelScheme, resolve_scheme
from .losses import DiceCELoss, class_weights_from_counts
from .manifest import check_leakage, load_manifest, split_rows
from .memory import check_step_fits
from .models import build_model, count_params, encoder_param_group, param_groups, set_encoder_frozen
from .plots import save_curves
from .pretrained import resolve_init
from .rng import get_rng_state, set_rng_state
from .rundir import RunDirClaim, claim_run_dir
from .runs import HISTORY_FIELDS, RunPaths, write_csv, write_json, write_run_config, write_state
from .runstate import TrainingStopped, run_state
from .schedule import lr_factor, set_lr
from .selftrain import PseudoSet, load_pseudo
from .system import EnergyMeter, environment, peak_memory_mb, resolve_amp, resolve_device
from .validation import save_samples, tune_thresholds, validate


@dataclass
class Run:
    """Everything the loop reads and changes, built once by ``setup``."""

    cfg: TrainConfig
    paths: RunPaths
    scheme: LabelScheme
    device: torch.device
    model: torch.nn.Module  # the DamageModel (its state dict is what checkpoints hold)
    net: torch.nn.Module  # what the loop calls: the model, or its DDP / torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    loss_fn: torch.nn.Module
    dataset: SegmentationDataset
    loader: torch.utils.data.DataLoader
    sampler: torch.utils.data.Sampler | None
    val_rows: pd.DataFrame
    world: int = 1
    rank: int = 0
    start_epoch: int = 1
    step: int = 0
    total_steps: int = 1
    best_score: float = -math.inf
    bad_epochs: int = 0
    frozen: bool = False
    history: list[dict] = field(default_factory=list)
    last_train_loss: float = math.nan
    info: dict = field(default_factory=dict)  # model info: weights source, parameter counts (config.json "model")
    console: Console | None = None
    tb: object | None = None  # the SummaryWriter under --tensorboard (rank 0), see tblog
    budget: TimeBudget | None = None  # --time-budget: the plan that sets total_steps (see budget.py)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, text: str) -> None:
        if self.main and self.console is not None:
            self.console.print(text)

    def resume_command(self) -> str:
        more = f"--time-budget {self.cfg.time_budget}" if self.cfg.time_budget else f"--epochs {self.cfg.epochs}"
        return f"damage-smp train --resume {self.paths.root} {more}"

    @property
    def last_epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else self.start_epoch - 1


# ============================================================================================ entry point
def train(cfg: TrainConfig, resume: str | Path | None = None, console: Console | None = None) -> Path:
    """Train a model as cfg says and return its run directory. With ``resume``, continue that run."""
    run = setup(cfg if resume is not None else resolve_init(cfg), resume, console or Console())
    with run_state(run), tblog.writer_for(run):
        for epoch in epochs(run):
            if run.frozen and not is_frozen(cfg, epoch):  # --unfreeze-at: fine-tune the encoder from here on
                unfreeze(run, epoch)
            seconds, seen, data_s, meter = train_one_epoch(run, epoch)
            val = {"val_loss": math.nan, "val_miou": math.nan, "val_damage_miou": math.nan}
            if validates(run, epoch):
                t0 = time.perf_counter()
                val = validate(run.model, run.val_rows, run.scheme, run.loss_fn, cfg, run.device, run.amp_dtype,
                               shard=(run.rank, run.world), keep=cfg.samples if run.tb is not None else 0)  # fmt: skip
                if run.budget is not None:
                    run.budget.validated(time.perf_counter() - t0)
            timing = {"seconds": seconds, "img_per_s": seen / seconds, "data_seconds": data_s}
            record_epoch(run, epoch, val, timing, meter)
            if cfg.patience and run.bad_epochs >= cfg.patience:
                run.say(f"early stop: no improvement for {cfg.patience} validations")
                break
        if run.main:
            finish(run)
    ddp.cleanup()
    return run.paths.root


# ============================================================================================ set-up
def setup(cfg: TrainConfig, resume: str | Path | None, console: Console) -> Run:
    """Data, run directory (config.json first), model, loss, optimizer and loader; resume state restored once."""
    tblog.require(cfg.tensorboard)  # before the run directory is made
    device = resolve_device(cfg.device)
    rank, world, local_rank = ddp.init_from_env(device.type)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    scheme = resolve_scheme(cfg.labels, cfg.ignore_background, cfg.colour_tolerance)
    manifest = load_manifest(cfg.manifest)
    warning = check_leakage(manifest, cfg.manifest, cfg.allow_leakage)
    if warning and rank == 0:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    train_rows = subset_rows(split_rows(manifest, "train"), cfg.train_fraction, cfg.seed)
    val_rows = split_rows(manifest, "val")
    pseudo = load_pseudo(cfg, scheme, manifest, say=console.print if rank == 0 else None)  # --pseudo: train only

    claim = claim_run_dir(cfg, resume) if rank == 0 else None  # a new run is made in a staging folder
    with claim_cleanup(claim):
        where = Path(ddp.broadcast(str(claim.path) if claim is not None else None))
        run = build_run(cfg, resume, where, scheme, train_rows, val_rows, device, (rank, world), console, pseudo)
        if claim is not None:
            run.paths = RunPaths(claim.commit())  # the staging folder takes the run's name (old run, if any, goes)
    run.paths = RunPaths(Path(ddp.broadcast(str(run.paths.root))))
    extra = f"+{len(pseudo.rows)} pseudo" if pseudo else ""  # --pseudo images join the training set
    run.say(
        f"[bold]{run.paths.root}[/]  {cfg.arch}/{cfg.encoder} weights={run.info['weights_source']} "
        f"{'frozen encoder' if run.frozen else 'fine-tuning'}  train={len(train_rows)}{extra} val={len(val_rows)} "
        "images  "
        f"{run.info['params_trainable_at_start'] / 1e6:.2f}M/{run.info['params_total'] / 1e6:.2f}M trainable params"
        f"  device={device}" + (f" x{world}" if world > 1 else "")
    )
    return run


def build_run(cfg, resume, where: Path, scheme, train_rows, val_rows, device, shard, console, pseudo=None) -> Run:
    """The model and everything around it in ``where``; a new run gets config.json, env.json, a first checkpoint."""
    paths = RunPaths(where)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model, info = build_model(cfg, scheme.num_classes, load_weights=resume is None)
    set_encoder_frozen(model, is_frozen(cfg, 1))  # so the trainable count in config.json is the first epoch's
    trainable, total = count_params(model)
    info = {**info, "params_total": total, "params_trainable_at_start": trainable}
    if shard[0] == 0 and resume is None:
        write_run_config(paths.root, cfg, scheme, info, {"self_training": pseudo.record} if pseudo else None)
        write_json(paths.env, environment(Path(cfg.manifest), device, info, shard[1]))
    for msg in info.get("messages", []) if shard[0] == 0 else []:
        console.print(f"[yellow]{msg}[/]")
    ckpt = load_checkpoint(paths.checkpoint("last"), map_location="cpu") if resume is not None else None
    start_epoch = ckpt["epoch"] + 1 if ckpt is not None else 1
    if start_epoch > cfg.epochs and cfg.time_budget is None:
        raise ValueError(f"--resume {paths.root}: already trained {ckpt['epoch']} epochs; give --epochs > that")
    # the optimizer must have the param groups it had when the checkpoint was saved (encoder group or not)
    frozen = is_frozen(cfg, max(1, start_epoch - 1))
    set_encoder_frozen(model, frozen)
    check_step_fits(model, cfg, scheme.num_classes, device)  # refuse a crop/batch that cannot fit, with numbers
    run = assemble(cfg, paths, scheme, device, model, frozen, train_rows, val_rows, shard, console, pseudo)
    run.info, run.start_epoch = info, start_epoch
    if ckpt is not None:
        restore(run, ckpt)
    if cfg.time_budget is not None:
        run.budget = TimeBudget.from_text(cfg.time_budget, run.step, steps_per_epoch(run), cfg.val_every)
        run.total_steps = run.budget.total()
    if ckpt is None and shard[0] == 0:  # a resumable checkpoint from the start: Ctrl-C in epoch 1 loses nothing
        save_checkpoint(paths.checkpoint("last"), checkpoint_state(run, epoch=0))
    return run


def assemble(cfg, paths, scheme, device, model, frozen, train_rows, val_rows, shard, console,
             pseudo: PseudoSet | None = None) -> Run:  # fmt: skip
    """Loss, optimizer, scaler, dataset and loader around a built model (no state restored yet); --pseudo rows
    join the training dataset only (their masks read by their own scheme, their crops weighted)."""
    rank, world = shard
    class_weights = None
    if cfg.class_weights == "auto":
        class_weights = class_weights_from_counts(class_pixel_counts(train_rows, scheme, max_pixels=cfg.max_pixels))
    loss_fn = DiceCELoss(scheme.num_classes, cfg.dice_weight, cfg.ce_weight, class_weights).to(device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay, frozen))
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    rows, schemes, weights = pseudo.training_inputs(train_rows, scheme) if pseudo else (train_rows, None, None)
    dataset = SegmentationDataset(rows, scheme, crop_size=cfg.crop_size, samples_per_epoch=cfg.samples_per_epoch,
                                  transform=train_transform(cfg.aug_strength), max_pixels=cfg.max_pixels,
                                  cache_mb=cfg.cache_mb, seed=cfg.seed, decode_cache=default_decode_cache(),
                                  mask_schemes=schemes, weights=weights, damage_crops=cfg.damage_crops)  # fmt: skip
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=False) if world > 1 else None
    loader = make_loader(dataset, cfg.batch_size, shuffle=False, num_workers=cfg.num_workers, device_type=device.type,
                         sampler=sampler, drop_last=len(dataset) >= cfg.batch_size * world)  # fmt: skip
    total_steps = max(1, len(loader) // cfg.accum_steps) * cfg.epochs  # --time-budget: set by run.budget instead
    net = wrap_model(model, cfg, device, world)
    return Run(cfg=cfg, paths=paths, scheme=scheme, device=device, model=model, net=net, optimizer=optimizer,
               scaler=scaler, amp_dtype=amp_dtype, loss_fn=loss_fn, dataset=dataset, loader=loader, sampler=sampler,
               val_rows=val_rows, world=world, rank=rank, total_steps=total_steps, frozen=frozen,
               console=console)  # fmt: skip


def restore(run: Run, ckpt: dict) -> None:
    """The one place resume state comes back: weights, optimizer, scaler, schedule step, score, history, RNG."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.step, run.best_score = ckpt["scheduler"]["step"], ckpt["best_score"]
    run.history = list(ckpt["history"])  # from the checkpoint: history.csv may be one epoch behind after a kill
    set_rng_state(ckpt["rng"])


@contextlib.contextmanager
def claim_cleanup(claim: RunDirClaim | None):
    """A new run that fails before its first checkpoint leaves nothing behind (its staging folder goes)."""
    try:
        yield
    except BaseException:
        if claim is not None:
            claim.abandon()
        raise


# ============================================================================================ the loop
def train_one_epoch(run: Run, epoch: int) -> tuple[float, int, float, EnergyMeter]:
    """One pass over the epoch's random crops: (seconds, images seen on all ranks, data seconds, energy meter)."""
    cfg = run.cfg
    run.dataset.set_epoch(epoch)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    meter = EnergyMeter(run.device)
    run.net.train()
    t0, data_s, seen, loss_sum, n = time.perf_counter(), 0.0, 0, 0.0, 0
    with progress_bar(run.console, enabled=run.main, fields="loss {task.fields[loss]:.4f}", elapsed=False) as bar:
        task = bar.add_task(f"epoch {epoch}/{planned_epochs(run)}", total=len(run.loader), loss=float("nan"))
        t_data = time.perf_counter()
        for i, batch in enumerate(run.loader):
            images, masks = to_device(batch, run.device, cfg.channels_last)
            data_s += time.perf_counter() - t_data
            update = (i + 1) % cfg.accum_steps == 0 or i + 1 == len(run.loader)
            if update:
                set_lr(run.optimizer, lr_factor(run.step, run.total_steps, cfg.warmup_iters, cfg.schedule))
            loss = train_step(run.model, run.net, run.optimizer, run.scaler, run.loss_fn, images, masks,
                              amp_dtype=run.amp_dtype, accum_steps=cfg.accum_steps, grad_clip=cfg.grad_clip,
                              update=update, weights=batch.get("weight"))  # fmt: skip
            if not math.isfinite(loss):
                raise TrainingStopped(
                    f"loss became {loss} at epoch {epoch}, batch {i + 1}; training stopped and "
                    f"{run.paths.checkpoint('last')} (epoch {epoch - 1}) was kept. Try a lower --lr, "
                    "--amp off, or check the data with `damage-smp manifest check`"
                )
            run.step += update
            loss_sum, n, seen = loss_sum + loss, n + 1, seen + images.shape[0]
            if i % 10 == 0:
                meter.sample()
            bar.update(task, advance=1, loss=loss_sum / n)
            if update and run.budget is not None and budget_step(run):
                break  # the budget's planned steps are taken: a partial last epoch
            t_data = time.perf_counter()
    run.last_train_loss = reduce_mean(loss_sum, n, run.device)
    seen = int(ddp.all_reduce_sum(torch.tensor([seen], device=run.device)).item())
    return time.perf_counter() - t0, seen, data_s, meter


def steps_per_epoch(run: Run) -> int:
    return max(1, math.ceil(len(run.loader) / run.cfg.accum_steps))


def to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch["image"].to(device, non_blocking=True)  # (N, 3, H, W) uint8
    masks = batch["mask"].to(device, non_blocking=True)  # (N, H, W) long, 255 = ignore
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks


def train_step(model, net, optimizer, scaler, loss_fn, images, masks, *, amp_dtype=None, accum_steps: int = 1,
               grad_clip: float = 0.0, update: bool = True, weights=None) -> float:  # fmt: skip
    """One batch: forward under autocast (CUDA), loss in fp32, scaled backward; with ``update``, clip and step.
    ``weights``: (N,) per-sample loss weights (--pseudo-weight), or None.

    ``model`` is the DamageModel (whose parameters are clipped), ``net`` what is called (it or its wrapper).
    Returns the batch loss as a float (NaN/inf are the caller's to handle; nothing was stepped on them
    only if the caller checks before the next update — GradScaler skips non-finite fp16 steps itself).
    """
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = net(images)  # (N, C, H, W)
        loss = loss_fn(logits.float(), masks) if weights is None else loss_fn(logits.float(), masks, weights)
    value = loss.item()
    if not math.isfinite(value):
        return value
    scaler.scale(loss / accum_steps).backward()
    if update:
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return value


def unfreeze(run: Run, epoch: int) -> None:
    """--unfreeze-at: the encoder joins the optimizer (its own lr) and DDP sees the new trainable params."""
    cfg = run.cfg
    run.frozen = False
    set_encoder_frozen(run.model, False)
    group = encoder_param_group(run.model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay)
    run.optimizer.add_param_group({**group, "base_lr": group["lr"]})
    run.net = wrap_model(run.model, cfg, run.device, run.world)
    run.say(f"epoch {epoch}: encoder unfrozen (lr x {cfg.encoder_lr_mult:g})")


def record_epoch(run: Run, epoch: int, val: dict, timing: dict, meter: EnergyMeter) -> None:
    """History row, best score and patience; rank 0 writes last.pt (best.pt when improved), history.csv, curves."""
    extras = {k: val.pop(k) for k in ("class_iou", "kept") if k in val}  # for TensorBoard, not the history
    score = val["val_damage_miou"] if not math.isnan(val["val_damage_miou"]) else val["val_miou"]
    run.history.append({
        "epoch": epoch, "train_loss": run.last_train_loss, **val, "lr": run.optimizer.param_groups[0]["lr"],
        **timing, "peak_mem_mb": peak_memory_mb(run.device), **meter.result(), "frozen": run.frozen,
        "steps": run.step, "planned_steps": run.total_steps,
    })  # fmt: skip
    improved = not math.isnan(score) and score > run.best_score
    if improved:
        run.best_score, run.bad_epochs = score, 0
    elif not math.isnan(score):
        run.bad_epochs += 1
    if not run.main:
        return
    paths = run.paths
    state = checkpoint_state(run, epoch)
    save_checkpoint(paths.checkpoint("last"), state)
    if improved:
        save_checkpoint(paths.checkpoint("best"), model_state(state))
    if run.cfg.save_every and epoch % run.cfg.save_every == 0:
        copy_checkpoint(paths.checkpoint("last"), paths.checkpoint(f"epoch_{epoch:03d}"))
    write_csv(paths.history, run.history, HISTORY_FIELDS)
    save_curves(run.history, paths.curves, title=paths.root.name)
    tblog.log_epoch(run, **extras)
    run.say(epoch_summary(run.history[-1], planned_epochs(run), improved))


def finish(run: Run) -> None:
    """best.pt exists (= last when no validation improved), sample overlays, state.json says finished."""
    paths = run.paths
    if not paths.checkpoint("best").exists():
        save_checkpoint(paths.checkpoint("best"), model_state(load_checkpoint(paths.checkpoint("last"))))
    if run.budget is not None:
        record_budget(run)
    save_samples(paths, run.val_rows, run.scheme, run.cfg, run.device)
    tune_thresholds(paths, run.val_rows, run.scheme, run.cfg, run.device, run.say)  # thresholds.json
    write_state(paths.state, "finished", run.last_epoch)


# ============================================================================================ small pieces
def subset_rows(rows: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A seeded subset of the training images (--train-fraction); smaller fractions are nested in larger."""
    if fraction >= 1:
        return rows
    order = np.random.default_rng(seed).permutation(len(rows))
    keep = max(1, round(fraction * len(rows)))
    return rows.iloc[np.sort(order[:keep])]


def wrap_model(model, cfg: TrainConfig, device: torch.device, world: int):
    """The module the loop calls: DDP across processes, optionally torch.compile'd."""
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(model) if cfg.compile else model


def is_frozen(cfg: TrainConfig, epoch: int) -> bool:
    return cfg.freeze_encoder and (cfg.unfreeze_at is None or epoch < cfg.unfreeze_at)


def checkpoint_state(run: Run, epoch: int) -> dict:
    return {
        "history": run.history,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {"step": run.step},
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,
        "best_score": run.best_score,
        "config": run.cfg.to_dict(),
        "rng": get_rng_state(),
    }


def reduce_mean(total: float, count: int, device) -> float:
    t = ddp.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64, device=device))
    return (t[0] / t[1]).item() if t[1] > 0 else math.nan


def epoch_summary(row: dict, epochs: int, improved: bool) -> str:
    f = fmt
    return (
        f"epoch {row['epoch']}/{epochs}  loss {f(row['train_loss'], '.4f')}  val loss {f(row['val_loss'], '.4f')}  "
        f"mIoU {f(row['val_miou'], '.4f')}  damage mIoU {f(row['val_damage_miou'], '.4f')}{' *' if improved else ''}"
        f"  {row['img_per_s']:.1f} img/s  {row['seconds']:.0f}s  peak {row['peak_mem_mb']:.0f} MB"
    )
