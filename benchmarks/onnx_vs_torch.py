"""predict with the torch backend vs --backend onnxruntime on the same scans (CPU): wall-time ratio.

Unet + tu-efficientnet_lite0 (random init: speed does not depend on the weights), 4 scans of 2048x1536, tile 512,
overlap 0.5, batch 4, index masks only; 3 alternating repeats, best and median. A quick figure, not yet a section of
`make bench`. Run: ``.venv/bin/python -m benchmarks.onnx_vs_torch``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from damage_smp.config import TrainConfig  # noqa: E402
from damage_smp.images import write_image  # noqa: E402
from damage_smp.labels import load_scheme  # noqa: E402
from damage_smp.predict import predict  # noqa: E402
from damage_smp.train import train  # noqa: E402


def tiny_run(root: Path) -> Path:
    scheme, rng = load_scheme("artefact"), np.random.default_rng(0)
    lines = ["image,mask,split"]
    for i, split in enumerate(["train"] * 4 + ["val"]):
        index = (rng.random((128, 128)) < 0.1).astype(np.uint8) * 3  # some Dust on Clean
        write_image(root / f"i{i}.png", rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
        write_image(root / f"m{i}.png", scheme.colorize(index))
        lines.append(f"i{i}.png,m{i}.png,{split}")
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(
        manifest=str(root / "m.csv"),
        encoder_weights="none",
        epochs=1,
        samples_per_epoch=4,
        batch_size=4,
        crop_size=64,
        tile=128,
        num_workers=0,
        samples=0,
        out_dir=str(root),
        name="r",
    )
    return train(cfg)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    root = Path(tempfile.mkdtemp())
    run = tiny_run(root)
    rng = np.random.default_rng(1)
    for k in range(4):
        write_image(root / "scans" / f"s{k}.png", rng.integers(0, 255, (1536, 2048, 3), dtype=np.uint8))
    seconds: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(3):
        for backend in seconds:
            t = time.perf_counter()
            predict(run, [str(root / "scans")], root / f"out-{backend}", tile=512, overlap=0.5, batch_size=4,
                    device="cpu", overwrite=True, backend=backend, save="index")  # fmt: skip
            seconds[backend].append(time.perf_counter() - t)
    for backend, s in seconds.items():
        print(
            f"{backend}: best {min(s):.1f} s, median {statistics.median(s):.1f} s ({', '.join(f'{x:.1f}' for x in s)})"
        )
    best = min(seconds["onnxruntime"]) / min(seconds["torch"])
    med = statistics.median(seconds["onnxruntime"]) / statistics.median(seconds["torch"])
    print(f"onnxruntime / torch: best {best:.2f}, median {med:.2f}")


if __name__ == "__main__":
    main()
