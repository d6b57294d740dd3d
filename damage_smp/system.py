"""The machine a run runs on: which device and precision, versions, CPU/GPU, peak memory, utilisation, energy."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from .runs import sha256_file

CPU_WATTS_PER_CORE = 10.0  # stated assumption for the CPU energy estimate (a busy server core, roughly)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    names = ["damage-smp", "torch", "torchvision", "segmentation-models-pytorch", "timm", "albumentations",
             "opencv-python-headless", "numpy", "pandas"]  # fmt: skip
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the damage-smp source tree, when it is a git checkout."""
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def machine(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                       "cuda": torch.version.cuda}  # fmt: skip
    return info


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA (since the last reset), else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class EnergyMeter:
    """GPU utilisation and energy over an interval: NVML readings on CUDA, else a labelled CPU estimate.

    On CUDA, ``sample()`` is called every few steps to read power and utilisation; energy is mean power x time.
    On CPU, energy = process CPU seconds x CPU_WATTS_PER_CORE — an estimate, and labelled so.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()
        self.cpu0 = _cpu_seconds()
        self.power: list[float] = []
        self.util: list[float] = []

    def sample(self) -> None:
        if self.device.type != "cuda":
            return
        try:
            self.power.append(torch.cuda.power_draw(self.device) / 1000.0)  # mW -> W
            self.util.append(float(torch.cuda.utilization(self.device)))
        except Exception:  # NVML missing: no readings, the row says so
            pass

    def result(self) -> dict:
        seconds = time.perf_counter() - self.start
        if self.power:
            return {"energy_wh": sum(self.power) / len(self.power) * seconds / 3600, "energy_source": "gpu-nvml",
                    "gpu_util": sum(self.util) / max(1, len(self.util))}  # fmt: skip
        cpu_s = _cpu_seconds() - self.cpu0
        return {"energy_wh": cpu_s * CPU_WATTS_PER_CORE / 3600,
                "energy_source": f"estimate: cpu-seconds x {CPU_WATTS_PER_CORE:g} W", "gpu_util": None}  # fmt: skip


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (loader workers count once they exit)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' -> cuda if available, else cpu; a requested device that is not there -> ValueError with the fix."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: CUDA is not available here (no GPU visible, or torch "
                f"{torch.__version__} built without CUDA); use --device cpu or --device auto"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0..); pick one of those"
            )
        return device
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N") from None


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast on CUDA; off on CPU (bf16 autocast there is ~20x slower than fp32)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def environment(manifest: Path, device: torch.device, info: dict, world: int) -> dict:
    """env.json of a run: when, versions, commit, machine, world size, the manifest's and weights' sha256."""
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
        "pretrain": info.get("pretrain"),  # the pre-train run (--init-from, DIR/encoder.pt), its init and sha256
    }
