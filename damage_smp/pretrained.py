"""Starting a training run from a ``damage-smp pretrain`` run: ``train --init-from DIR`` (encoder and decoder) or
``--encoder-weights DIR/encoder.pt`` (the encoder alone).

A pre-train run is for one arch and encoder; another one is refused with both names. Its model.pt holds the
whole DamageModel of the restoration task (3 output channels): everything but ``segmentation_head`` is loaded
strictly, the head of the new run stays newly initialised. What was loaded (the run, its own init, the file's
sha256) goes into config.json's "model" entry and env.json, which ``runs.describe_init`` reads.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from .checkpoints import CheckpointError, load_checkpoint
from .config import TrainConfig
from .runs import PRETRAIN_MARKER, read_json, read_pretrain, sha256_file

HEAD = "segmentation_head."  # smp's name for the last layer of every architecture


def check_match(pre: dict, arch: str, encoder: str, flag: str) -> None:
    """ValueError naming both when the pre-train run is for another arch or encoder."""
    if pre.get("arch") != arch.lower() or pre.get("encoder") != encoder:
        raise ValueError(
            f"{flag}: the pre-train run {pre['run']} is --arch {pre.get('arch')} --encoder {pre.get('encoder')}, "
            f"but this run is --arch {arch.lower()} --encoder {encoder}; use the same --arch and --encoder, or "
            "pre-train for this one"
        )


def resolve_init(cfg: TrainConfig) -> TrainConfig:
    """A new run with --init-from: checked against the pre-train run; encoder_weights becomes the pre-train's own
    init (imagenet or none), so config.json says what the weights started from before pre-training."""
    if cfg.init_from is None:
        return cfg
    pre = read_pretrain(cfg.init_from)
    check_match(pre, cfg.arch, cfg.encoder, f"--init-from {cfg.init_from}")
    init = pre.get("init", "none")
    if cfg.encoder_weights == "none" and init != "none":
        raise ValueError(
            f"--encoder-weights none --init-from {cfg.init_from}: that pre-train run started from --init {init}; "
            "drop --encoder-weights (the pre-train run's init is recorded), or pre-train with --init none"
        )
    return replace(cfg, init_from=pre["run"], encoder_weights=init)


def load_pretrained_net(net: nn.Module, folder: str | Path, arch: str, encoder: str) -> tuple[tuple, dict]:
    """DIR/model.pt into the smp ``net`` (all but its segmentation head, strictly) -> ((mean, std) 0–1, info)."""
    pre = read_pretrain(folder)
    check_match(pre, arch, encoder, f"--init-from {folder}")
    path = Path(pre["run"]) / "model.pt"
    state = load_checkpoint(path)["model"]
    weights = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.") and HEAD not in k}
    target = {k: v for k, v in net.state_dict().items() if not k.startswith(HEAD)}
    bad = sorted(set(target) ^ set(weights))
    bad += [k for k in weights if k in target and weights[k].shape != target[k].shape]
    if bad:
        raise CheckpointError(
            f"{path}: does not fit --arch {arch} --encoder {encoder} ({len(bad)} tensors differ, e.g. {bad[0]}); "
            "the pre-train run was edited or made by another damage-smp version: pre-train again"
        )
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith(HEAD) for k in missing), (missing, unexpected)
    mean = tuple(float(m) / 255 for m in state["mean"].flatten())
    std = tuple(float(s) / 255 for s in state["std"].flatten())
    sha = sha256_file(path)
    info = {"weights_source": f"pretrain:{pre['run']}", "weights_sha256": sha, "weights_file": str(path),
            "pretrain": {"run": pre["run"], "init": pre.get("init"), "part": "all", "sha256": sha,
                         "epochs": pre.get("epochs")}}  # fmt: skip
    return (mean, std), info


def encoder_file_info(path: Path, encoder: str) -> dict:
    """--encoder-weights DIR/encoder.pt of a pre-train run: refused for another encoder (both named); the run
    recorded as {"pretrain": {...}}. {} for any other file."""
    marker = path.parent / PRETRAIN_MARKER
    if path.name != "encoder.pt" or not marker.is_file():
        return {}
    pre = {**read_json(marker), "run": str(path.parent.resolve())}
    if pre.get("encoder") != encoder:
        raise ValueError(
            f"--encoder-weights {path}: the pre-train run {pre['run']} is --encoder {pre.get('encoder')}, but this "
            f"run is --encoder {encoder}; use --encoder {pre.get('encoder')}, or pre-train for {encoder}"
        )
    return {"pretrain": {"run": pre["run"], "init": pre.get("init"), "part": "encoder", "sha256": sha256_file(path),
                         "epochs": pre.get("epochs")}}  # fmt: skip
