"""train(cfg) -> run directory. One loop, top to bottom: data, model, optimizer, epochs, validation, checkpoints.

Runs on CPU, one GPU, or several under ``torchrun`` (DistributedDataParallel; rank 0 writes every file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import distributed as ddp
from .checkpoints import checkpoint_write_error, copy_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, check_run_name
from .data import SegmentationDataset, class_pixel_counts, make_loader, train_transform
from .decode_cache import default_decode_cache
from .images import WriteError, read_image
from .labels import IGNORE_INDEX, LabelScheme, resolve_scheme
from .losses import DiceCELoss, class_weights_from_counts
from .manifest import load_manifest, split_rows
from .metrics import ConfusionMatrix
from .models import (
    build_model,
    count_params,
    encoder_param_group,
    param_groups,
    set_encoder_frozen,
)
from .plots import save_curves, save_sample
from .runs import (
    HISTORY_FIELDS,
    RunPaths,
    sha256_file,
    write_csv,
    write_json,
    write_run_config,
)
from .system import EnergyMeter, git_commit, machine, package_versions, peak_memory_mb, resolve_amp, resolve_device
from .tiling import predict_probs


class TrainingStopped(ValueError):
    """Training ended early for a reason the user must act on (NaN loss, out of memory)."""


# ============================================================================================ entry point
def train(cfg: TrainConfig, resume: str | Path | None = None, console: Console | None = None) -> Path:
    """Train a model as cfg says and return its run directory. With ``resume``, continue that run."""
    console = console or Console()
    device = resolve_device(cfg.device)
    rank, world, local_rank = ddp.init_from_env(device.type)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    main = rank == 0
    say = console.print if main else (lambda *a, **k: None)

    # ------------------------------------------------------------------ data
    scheme = resolve_scheme(cfg.labels, cfg.ignore_background)
    manifest = load_manifest(cfg.manifest)
    train_rows = subset_rows(split_rows(manifest, "train"), cfg.train_fraction, cfg.seed)
    val_rows = split_rows(manifest, "val")

    # ------------------------------------------------------------------ run directory (config.json first)
    run_dir = ddp.broadcast(prepare_run_dir(cfg, resume) if main else None)
    paths = RunPaths(run_dir)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model, info = build_model(cfg, scheme.num_classes, load_weights=resume is None)
    set_encoder_frozen(model, is_frozen(cfg, 1))  # so the trainable count in config.json is the first epoch's
    trainable, total = count_params(model)
    info = {**info, "params_total": total, "params_trainable_at_start": trainable}
    if main and resume is None:
        write_run_config(run_dir, cfg, scheme, info)
        write_json(paths.env, environment(cfg, device, info, world))
    for msg in info.get("messages", []):
        say(f"[yellow]{msg}[/]")

    # ------------------------------------------------------------------ loss
    class_weights = None
    if cfg.class_weights == "auto":
        counts = class_pixel_counts(train_rows, scheme, max_pixels=cfg.max_pixels)
        class_weights = class_weights_from_counts(counts)
    loss_fn = DiceCELoss(scheme.num_classes, cfg.dice_weight, cfg.ce_weight, class_weights).to(device)

    # ------------------------------------------------------------------ resume state
    start_epoch, best_score, history, ckpt = 1, -math.inf, [], None
    if resume is not None:
        ckpt = load_checkpoint(paths.checkpoint("last"), map_location="cpu")
        model.load_state_dict(ckpt["model"])
        start_epoch, best_score = ckpt["epoch"] + 1, ckpt["best_score"]
        history = list(ckpt["history"])  # from the checkpoint: history.csv may be one epoch behind after a kill
        if start_epoch > cfg.epochs:
            raise ValueError(f"--resume {run_dir}: already trained {ckpt['epoch']} epochs; give --epochs > that")

    # ------------------------------------------------------------------ model, optimizer, schedule
    # the optimizer must have the param groups it had when the checkpoint was saved (encoder group or not)
    frozen = is_frozen(cfg, max(1, start_epoch - 1))
    set_encoder_frozen(model, frozen)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay, frozen))
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    train_model = wrap_model(model, cfg, device, world)

    dataset = SegmentationDataset(train_rows, scheme, crop_size=cfg.crop_size, samples_per_epoch=cfg.samples_per_epoch,
                                  transform=train_transform(cfg.aug_strength), max_pixels=cfg.max_pixels,
                                  cache_mb=cfg.cache_mb, seed=cfg.seed,
                                  decode_cache=default_decode_cache())  # fmt: skip
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=False) if world > 1 else None
    drop_last = len(dataset) >= cfg.batch_size * world
    loader = make_loader(dataset, cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                         device_type=device.type, sampler=sampler, drop_last=drop_last)  # fmt: skip
    steps_per_epoch = max(1, len(loader) // cfg.accum_steps)
    total_steps = steps_per_epoch * cfg.epochs
    step = ckpt["scheduler"]["step"] if ckpt is not None else 0

    if main and resume is None:  # a resumable checkpoint from the start: Ctrl-C in epoch 1 loses nothing
        save_checkpoint(
            paths.checkpoint("last"), checkpoint_state(model, optimizer, scaler, step, 0, best_score, cfg, [])
        )
    say(
        f"[bold]{run_dir}[/]  {cfg.arch}/{cfg.encoder} weights={info['weights_source']} "
        f"{'frozen encoder' if frozen else 'fine-tuning'}  train={len(train_rows)} val={len(val_rows)} images  "
        f"{trainable / 1e6:.2f}M/{total / 1e6:.2f}M trainable params  device={device}"
        + (f" x{world}" if world > 1 else "")
    )

    # ============================================================================ the loop
    bad_epochs = 0
    if main:
        write_state(paths, "running", start_epoch - 1)
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if frozen and not is_frozen(cfg, epoch):  # --unfreeze-at: fine-tune the encoder from here on
                frozen = False
                set_encoder_frozen(model, False)
                group = encoder_param_group(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay)
                optimizer.add_param_group({**group, "base_lr": group["lr"]})
                train_model = wrap_model(model, cfg, device, world)  # DDP must see the new trainable params
                say(f"epoch {epoch}: encoder unfrozen (lr x {cfg.encoder_lr_mult:g})")
            dataset.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            meter = EnergyMeter(device)
            train_model.train()
            t0, data_s, seen, loss_sum, n_batches = time.perf_counter(), 0.0, 0, 0.0, 0
            with progress_bar(main) as bar:
                task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=len(loader), loss=float("nan"))
                t_data = time.perf_counter()
                for i, batch in enumerate(loader):
                    images = batch["image"].to(device, non_blocking=True)  # (N, 3, H, W) uint8
                    masks = batch["mask"].to(device, non_blocking=True)  # (N, H, W) long, 255 = ignore
                    if cfg.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    data_s += time.perf_counter() - t_data
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = train_model(images)  # (N, C, H, W)
                        loss = loss_fn(logits.float(), masks)
                    if not torch.isfinite(loss):
                        raise TrainingStopped(
                            f"loss became {loss.item()} at epoch {epoch}, batch {i + 1}; training stopped and "
                            f"{paths.checkpoint('last')} (epoch {epoch - 1}) was kept. Try a lower --lr, "
                            "--amp off, or check the data with `damage-smp manifest check`"
                        )
                    scaler.scale(loss / cfg.accum_steps).backward()
                    if (i + 1) % cfg.accum_steps == 0 or i + 1 == len(loader):
                        set_lr(optimizer, lr_factor(step, total_steps, cfg.warmup_iters, cfg.schedule))
                        if cfg.grad_clip > 0:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                        step += 1
                    loss_sum += loss.item()
                    n_batches += 1
                    seen += images.shape[0]
                    if i % 10 == 0:
                        meter.sample()
                    bar.update(task, advance=1, loss=loss_sum / n_batches)
                    t_data = time.perf_counter()
            seconds = time.perf_counter() - t0
            train_loss = reduce_mean(loss_sum, n_batches, device)
            seen = int(ddp.all_reduce_sum(torch.tensor([seen], device=device)).item())

            # ---------------------------------------------------------------- validation
            val = {"val_loss": math.nan, "val_miou": math.nan, "val_damage_miou": math.nan}
            if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
                val = validate(model, val_rows, scheme, loss_fn, cfg, device, amp_dtype, shard=(rank, world))
            score = val["val_damage_miou"] if not math.isnan(val["val_damage_miou"]) else val["val_miou"]

            # ---------------------------------------------------------------- bookkeeping (rank 0 writes)
            history.append({
                "epoch": epoch, "train_loss": train_loss, **val, "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds, "img_per_s": seen / seconds, "data_seconds": data_s,
                "peak_mem_mb": peak_memory_mb(device), **meter.result(), "frozen": frozen,
            })  # fmt: skip
            improved = not math.isnan(score) and score > best_score
            if improved:
                best_score, bad_epochs = score, 0
            elif not math.isnan(score):
                bad_epochs += 1
            if main:
                state = checkpoint_state(model, optimizer, scaler, step, epoch, best_score, cfg, history)
                save_checkpoint(paths.checkpoint("last"), state)
                if improved:
                    copy_checkpoint(paths.checkpoint("last"), paths.checkpoint("best"))
                if cfg.save_every and epoch % cfg.save_every == 0:
                    copy_checkpoint(paths.checkpoint("last"), paths.checkpoint(f"epoch_{epoch:03d}"))
                write_csv(paths.history, history, HISTORY_FIELDS)
                save_curves(history, paths.curves, title=run_dir.name)
                say(epoch_summary(history[-1], cfg.epochs, improved))
            if cfg.patience and bad_epochs >= cfg.patience:
                say(f"early stop: no improvement for {cfg.patience} validations")
                break
    except KeyboardInterrupt:
        if main:
            note_state(paths, "interrupted", len(history) and history[-1]["epoch"], "Ctrl-C")
        say(f"[yellow]interrupted; continue with: damage-smp train --resume {run_dir} --epochs {cfg.epochs}[/]")
        raise
    except torch.OutOfMemoryError:
        msg = (
            f"out of memory at batch size {cfg.batch_size}, crop {cfg.crop_size}; use a smaller --batch-size "
            f"or --crop-size (and --accum-steps to keep the effective batch); {paths.checkpoint('last')} is kept"
        )
        if main:
            note_state(paths, "failed", len(history) and history[-1]["epoch"], msg)
        raise TrainingStopped(msg) from None
    except WriteError as e:  # a full disk: say what is kept and how to go on (rerunning would start over)
        if main:
            note_state(paths, "failed", len(history) and history[-1]["epoch"], str(e))
        if "--resume" in str(e):
            raise
        raise checkpoint_write_error(e.target or paths.checkpoint("last"), e, paths.checkpoint("last")) from e
    except Exception as e:
        if main:
            note_state(paths, "failed", len(history) and history[-1]["epoch"], str(e))
        raise
    finally:
        ddp.barrier()

    if main:
        if not paths.checkpoint("best").exists():  # no validation improved (e.g. all NaN): best = last
            copy_checkpoint(paths.checkpoint("last"), paths.checkpoint("best"))
        save_samples(paths, val_rows, scheme, cfg, device)
        write_state(paths, "finished", history[-1]["epoch"] if history else start_epoch - 1)
    ddp.cleanup()
    return run_dir


# ============================================================================================ pieces
def validate(model, rows: pd.DataFrame, scheme: LabelScheme, loss_fn, cfg: TrainConfig, device, amp_dtype,
             shard: tuple[int, int] = (0, 1)) -> dict:  # fmt: skip
    """Whole val images by sliding window: loss on the blended probabilities, confusion-matrix mIoU."""
    model.eval()
    cm = ConfusionMatrix(scheme.num_classes, device="cpu")
    loss_sum, n = torch.zeros(2, dtype=torch.float64), 0
    rank, world = shard
    for row in rows.iloc[rank::world].itertuples():
        image = read_image(row.image_path, cfg.max_pixels)
        target = load_target(row.mask_path, scheme, cfg.max_pixels)
        probs = predict_probs(
            model,
            image,
            scheme.num_classes,
            tile=cfg.tile,
            overlap=cfg.overlap,
            batch_size=cfg.batch_size,
            device=device,
            amp_dtype=amp_dtype,
        )  # (C, H, W)
        target_t = torch.from_numpy(target).long()
        with torch.no_grad():  # log-probabilities as logits: CE and Dice of the blended prediction
            loss = loss_fn(probs.clamp_min(1e-8).log()[None], target_t[None].to(probs.device))
        if torch.isfinite(loss) and (target_t != IGNORE_INDEX).any():
            loss_sum[0] += loss.item()
            n += 1
        cm.update(probs.argmax(0).cpu(), target_t)
    loss_sum[1] = n
    ddp.all_reduce_sum(loss_sum)
    cm.all_reduce()
    summary = cm.summary(scheme)
    val_loss = (loss_sum[0] / loss_sum[1]).item() if loss_sum[1] > 0 else math.nan
    return {"val_loss": val_loss, "val_miou": summary["miou"], "val_damage_miou": summary["damage_miou"]}


def load_target(mask_path: str, scheme: LabelScheme, max_pixels: int) -> np.ndarray:
    from .images import read_mask

    try:
        return scheme.decode(read_mask(mask_path, max_pixels))
    except ValueError as e:
        raise ValueError(f"{mask_path}: {e}; check --labels or run `damage-smp manifest check`") from None


def save_samples(paths: RunPaths, rows: pd.DataFrame, scheme: LabelScheme, cfg: TrainConfig, device) -> None:
    """A few validation images with the best model's prediction and the ground truth, for a quick look."""
    from .models import load_bundle

    bundle = load_bundle(paths.root, "best", device)
    for row in rows.head(cfg.samples).itertuples():
        image = read_image(row.image_path, cfg.max_pixels)
        probs = predict_probs(bundle.model, image, scheme.num_classes, tile=cfg.tile, overlap=cfg.overlap,
                              batch_size=cfg.batch_size, device=device)  # fmt: skip
        target = load_target(row.mask_path, scheme, cfg.max_pixels)
        pred = probs.argmax(0).numpy().astype(np.uint8)
        save_sample(paths.samples / f"{Path(row.image_path).stem}.jpg", image, pred, target, scheme)


def write_state(paths: RunPaths, status: str, epoch: int, reason: str = "") -> None:
    """state.json: running / finished / interrupted / failed, so compare can list runs that did not finish."""
    write_json(paths.state, {"status": status, "epoch": int(epoch), "reason": reason,
                             "updated": dt.datetime.now().isoformat(timespec="seconds")})  # fmt: skip


def note_state(paths: RunPaths, status: str, epoch: int, reason: str = "") -> None:
    """write_state on the way out of a failure: a full disk must not hide the error that stopped the run."""
    with contextlib.suppress(OSError):
        write_state(paths, status, epoch, reason)


def prepare_run_dir(cfg: TrainConfig, resume: str | Path | None) -> Path:
    """The run directory: the one to resume, or a new one that must not exist (unless --overwrite)."""
    if resume is not None:
        run_dir = Path(resume)
        if not RunPaths(run_dir).checkpoint("last").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no checkpoints/last.pt there; nothing to resume")
        return run_dir
    name = cfg.name or cfg.auto_name(dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    check_run_name(name)
    run_dir = Path(cfg.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        if not cfg.overwrite:
            raise FileExistsError(
                f"{run_dir} already exists; choose another --name, continue it with --resume {run_dir}, "
                "or replace it with --overwrite"
            )
        shutil.rmtree(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


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


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup, then poly (power 0.9) or cosine decay to 0 over the remaining steps, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return (1 - progress) ** 0.9


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def checkpoint_state(model, optimizer, scaler, step, epoch: int, best: float, cfg: TrainConfig, history) -> dict:
    return {
        "history": history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": step},
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "best_score": best,
        "config": cfg.to_dict(),
        "rng": get_rng_state(),
    }


def get_rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reduce_mean(total: float, count: int, device) -> float:
    t = ddp.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64, device=device))
    return (t[0] / t[1]).item() if t[1] > 0 else math.nan


def environment(cfg: TrainConfig, device: torch.device, info: dict, world: int) -> dict:
    manifest = Path(cfg.manifest)
    return {
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "machine": machine(device),
        "world_size": world,
        "manifest": str(manifest.resolve()),
        "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
        "weights_source": info.get("weights_source"),
        "weights_sha256": info.get("weights_sha256"),
    }


def epoch_summary(row: dict, epochs: int, improved: bool) -> str:
    def f(v, spec=".4f"):
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    return (
        f"epoch {row['epoch']}/{epochs}  loss {f(row['train_loss'])}  val loss {f(row['val_loss'])}  "
        f"mIoU {f(row['val_miou'])}  damage mIoU {f(row['val_damage_miou'])}{' *' if improved else ''}  "
        f"{row['img_per_s']:.1f} img/s  {row['seconds']:.0f}s  peak {row['peak_mem_mb']:.0f} MB"
    )


def progress_bar(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(), transient=True,
    )  # fmt: skip


class _NoBar:
    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass


def resumed_config(run_dir: str | Path, epochs: int | None, overrides: dict) -> TrainConfig:
    """The saved config of a run, with a new epoch total and run-time-only settings (device, workers)."""
    from .runs import read_run_config

    cfg, _, _ = read_run_config(run_dir)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if epochs is not None:
        changes["epochs"] = epochs
    return replace(cfg, **changes)
