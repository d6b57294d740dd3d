"""The machine a run ran on: versions, CPU/GPU, peak memory, utilisation and a rough energy figure."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

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
