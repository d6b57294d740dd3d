"""What predict writes: per image the colour mask, index mask, overlay and areas file; per batch the tables.

The per-image writers run in the pipeline's writer threads; ``merge_areas`` joins the tables of shards.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from rich.console import Console

from ..console import escape
from ..images import atomic_write_bytes, dpi_text, encode_image, image_dpi, mm2_per_pixel
from ..labels import LabelScheme
from ..plots import legend_image, lookup_colours, tint_in_place
from ..runs import write_csv, write_json
from .confidence import CONFIDENCE_KINDS, mean_level, write_confidence
from .inputs import ALL_KINDS, SAVE_KINDS, Job
from .layers import write_layers
from .owned import (
    WRITTEN_BY,
    foreign_batch_files,
    is_final,
    marked,
    output_entry,
    owned_file,
    read_record,
    recorded,
    recorded_file,
    refuse_foreign,
)

OVERLAY_QUALITY = 90
# from this size a scan's masks are encoded in a second thread while its overlay is drawn: a single big scan
# has no next image for the writer to overlap with (4000 x 3000: 0.65 -> 0.4 s after its last tile)
SIDE_PIXELS = 4_000_000
SHARD_TABLE = re.compile(r"^areas\.shard-(\d+)-of-(\d+)\.csv$")


@dataclass
class PredictResult:
    """What a predict call did. ``failures``: (input path, error message) pairs."""

    n_done: int
    n_skipped: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    out: Path | None = None
    areas: Path | None = None  # areas.csv, or this shard's table
    merged: bool = False  # a shard that found every shard's table and wrote areas.csv
    seconds: float = 0.0


def write_outputs(
    job: Job, image: np.ndarray, index: np.ndarray, scheme: LabelScheme, kinds: Sequence[str], overwrite: bool,
    maps: dict[str, np.ndarray] | None = None,
) -> None:  # fmt: skip
    """Write the requested outputs that are not finished (all with ``overwrite``), then the record.

    Every image written carries predict's mark, so a kill before the record leaves files known as ours.
    ``image`` is consumed: the overlay is blended into it in place, so a 100 MP scan needs no second copy.
    ``maps``: the (H, W) uint8 or uint16 confidence maps (``confidence``) for ``prob`` and ``uncertainty``.
    """
    maps = maps or {}
    old = read_record(job)
    want = [k for k in kinds if overwrite or not recorded(job, old, k)]
    # outputs of ours that stay (other --save kinds of an earlier batch too) are listed again, at their size now
    kept = {k: p for k in ALL_KINDS if k not in want and (p := owned_file(job, old, k))}
    written: dict[str, Path] = {}  # the confidence maps' files: PNG or TIFF by the scan's size
    with ThreadPoolExecutor(1, "damage-smp-encode") as side:  # a big scan's masks encode beside its overlay
        masks = side.submit(write_masks, job, index, scheme, want) if index.size >= SIDE_PIXELS else None
        if masks is None:
            write_masks(job, index, scheme, want)
        for kind in (k for k in CONFIDENCE_KINDS if k in want):
            written[kind] = write_confidence(job, kind, maps[kind], old)  # 8-bit PNG, or 16-bit TIFF when large
        counts = count_classes(index, scheme.num_classes)
        damage = [int(c) for c in np.flatnonzero(counts) if c in scheme.damage_indices]  # damage classes present
        if "layers" in want:  # before the overlay, which tints the scan in place
            write_layers(job.output("layers"), image, index, scheme, damage)
        if "overlay" in want:
            bgr = tint_in_place(image, index, scheme)  # the scan's own buffer, now BGR
            draw_legend(bgr, scheme, damage)
            _write_bgr(job.output("overlay"), bgr)
        if masks is not None:
            masks.result()  # its error, if any, is this image's
    write_json(
        job.output("areas"),
        {
            "written_by": WRITTEN_BY,
            "image": str(job.source),
            "width": int(index.shape[1]),
            "height": int(index.shape[0]),
            "pixels": {name: int(c) for name, c in zip(scheme.names, counts, strict=True)},
            "dpi": image_dpi(job.source),  # [x, y] from the file's header, or null
            **({"uncertainty_mean": mean_level(maps["uncertainty"])} if "uncertainty" in maps else {}),
            "outputs": {k: output_entry(job, k, kept.get(k) or written.get(k)) for k in (*kept, *want)},
        },
    )


def write_masks(job: Job, index: np.ndarray, scheme: LabelScheme, want: Sequence[str]) -> None:
    """The index mask (the scheme's values, uint8 or uint16) and the colour mask, if wanted.

    The colour mask is a palette PNG when the values fit in 8 bits: its pixels are the index mask's values and
    its palette gives each value its class colour, so viewers and ``cv2.imread`` show the colours, and PIL's
    mode-P array is the index mask. One channel encodes 2-6x faster than RGB and is 3-12x smaller (docs/prediction.md).
    """
    values = scheme.to_values(index) if "index" in want or "colour" in want else None
    if "index" in want:
        _write_marked(job.output("index"), encode_image(values, ".png"))
    if "colour" in want:
        if values.dtype == np.uint8:
            _write_marked(job.output("colour"), palette_png(values, value_palette(scheme)))
        else:  # 16-bit values have no palette: an RGB PNG (by lookup table on the class indices)
            _write_bgr(job.output("colour"), lookup_colours(index, colour_table_bgr(scheme)))  # (H, W, 3) BGR


def value_palette(scheme: LabelScheme) -> bytes:
    """768 bytes: the RGB colour of each 8-bit mask value (its class's colour; black for values of no class)."""
    palette = np.zeros((256, 3), np.uint8)
    for c, colour in zip(scheme.classes, scheme.colors, strict=True):
        palette[c.values[0]] = colour
    return palette.tobytes()


def palette_png(values: np.ndarray, palette: bytes) -> bytes:
    """(H, W) uint8 -> an 8-bit palette PNG (zlib level 1, as fast as OpenCV's grey PNG)."""
    image = Image.fromarray(values)  # mode L, no copy; the palette makes it P
    image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def colour_table_bgr(scheme: LabelScheme) -> np.ndarray:
    """(256, 3) uint8 class index -> BGR mask colour (OpenCV's order, so no full-size RGB->BGR copy)."""
    table = np.zeros((256, 3), np.uint8)
    table[: scheme.num_classes] = scheme.colors[:, ::-1]
    return table


def draw_legend(bgr: np.ndarray, scheme: LabelScheme, classes: list[int]) -> None:
    """Paste a legend of ``classes`` into the top-left corner, scaled with the image (~1/6 of its short
    side); skipped when it would cover more than half the image (legend.png has every class anyway)."""
    if not classes:
        return
    legend = np.ascontiguousarray(legend_image(scheme, classes)[..., ::-1])  # RGB -> BGR
    h, w = bgr.shape[:2]
    lh, lw = legend.shape[:2]
    scale = min(max(1.0, min(h, w) / 1500), 0.5 * w / lw, 0.5 * h / lh)
    if scale < 0.75:  # text below ~8 px high is unreadable
        return
    size = (max(1, round(lw * scale)), max(1, round(lh * scale)))
    legend = cv2.resize(legend, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    m = max(2, round(8 * scale))
    m = min(m, h - size[1], w - size[0])
    bgr[m : m + size[1], m : m + size[0]] = legend


def count_classes(index: np.ndarray, num_classes: int, chunk: int = 1 << 22) -> np.ndarray:
    """(C,) int64 pixel counts per class, in chunks (a whole 100 MP map would be copied to int64)."""
    flat = index.reshape(-1)
    counts = np.zeros(num_classes, np.int64)
    for s in range(0, flat.size, chunk):
        counts += np.bincount(flat[s : s + chunk], minlength=num_classes)[:num_classes]
    return counts


def _write_bgr(path: Path, bgr: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, OVERLAY_QUALITY] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, bgr, params)
    if not ok:
        raise OSError(f"{path}: could not encode the image ({bgr.shape[1]}x{bgr.shape[0]})")
    _write_marked(path, buf.tobytes())


def _write_marked(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, marked(data, path.suffix))


# ============================================================================================ areas
def area_fields(scheme: LabelScheme) -> list[str]:
    fields = ["image", "mask", "index", "overlay", "prob", "uncertainty", "width", "height", "dpi", "object_px",
              "damage_px", "damage_pct", "damage_mm2", "uncertainty_mean"]  # fmt: skip
    for i, name in enumerate(scheme.names):
        fields.append(f"{name}_px")
        if i != scheme.background_index:
            fields.append(f"{name}_pct")
        fields.append(f"{name}_mm2")
    return fields


def area_row(job: Job, scheme: LabelScheme, out: Path, dpi: float | None = None) -> dict:
    """One areas.csv row from an image's areas file: pixels per class and % of the object (every pixel but
    Background); ``damage_pct`` is the share of all damage classes together. Output paths are relative to out.
    ``_mm2`` columns: at ``dpi`` (--dpi) or the resolution the scan's file gives; empty when neither is known.
    """
    record = read_record(job)
    if not is_final(record):
        raise ValueError(f"{job.output('areas')}: not a finished record of damage-smp predict")
    pixels = record["pixels"]
    total = int(record["width"]) * int(record["height"])
    bg = scheme.background_index
    obj = total - (int(pixels.get(scheme.names[bg], 0)) if bg is not None else 0)
    damage = sum(int(pixels.get(scheme.names[i], 0)) for i in scheme.damage_indices)

    def pct(n: int) -> float:
        return 100.0 * n / obj if obj > 0 else float("nan")

    row = {"image": record["image"], "width": record["width"], "height": record["height"]}
    for kind in (*SAVE_KINDS, *CONFIDENCE_KINDS):
        listed = recorded_file(job, record, kind)  # a file of that name predict did not write is not the prediction
        row["mask" if kind == "colour" else kind] = listed.relative_to(out).as_posix() if listed else ""
    resolution = (dpi, dpi) if dpi else record.get("dpi")
    unit = mm2_per_pixel(resolution)

    def mm2(n: int) -> float | str:
        return n * unit if unit is not None else ""

    row.update(dpi=dpi_text(resolution), object_px=obj, damage_px=damage, damage_pct=pct(damage),
               damage_mm2=mm2(damage), uncertainty_mean=record.get("uncertainty_mean", ""))  # fmt: skip
    for i, name in enumerate(scheme.names):
        row[f"{name}_px"] = int(pixels.get(name, 0))
        if i != bg:
            row[f"{name}_pct"] = pct(int(pixels.get(name, 0)))
        row[f"{name}_mm2"] = mm2(int(pixels.get(name, 0)))
    return row


def batch_tables(out: Path, k: int, n: int) -> tuple[Path, Path]:
    """(areas table, failures table) of shard k of n; areas.csv and failures.csv when unsharded."""
    if n == 1:
        return out / "areas.csv", out / "failures.csv"
    return out / f"areas.shard-{k}-of-{n}.csv", out / f"failures.shard-{k}-of-{n}.csv"


def write_tables(
    out: Path, jobs: list[Job], failures: list[tuple[str, str]], scheme: LabelScheme, k: int, n: int,
    dpi: float | None = None,
) -> Path:  # fmt: skip
    """This shard's failures table and areas table (a row per finished job that did not fail now) -> areas path.

    The areas rows come from the per-image areas files, so a resumed batch still lists the images it skipped.
    """
    areas_path, failures_path = batch_tables(out, k, n)
    failed = {path for path, _ in failures}
    write_csv(failures_path, [{"path": p, "error": e} for p, e in failures], ["path", "error"])
    rows = [area_row(j, scheme, out, dpi) for j in jobs if str(j.source) not in failed and is_final(read_record(j))]
    write_csv(areas_path, rows, area_fields(scheme))
    return areas_path


def merge_areas(out_dir: str | Path) -> tuple[Path, int]:
    """Join every shard's areas.shard-K-of-N.csv (and failures tables) into areas.csv (and failures.csv).

    Returns (areas.csv path, number of images). Refuses when a shard's table is missing or when tables of
    different N are mixed, naming the files and what to do.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"--merge-areas {out}: folder not found; give a predict --out folder")
    tables = {}
    for path in out.iterdir():
        m = SHARD_TABLE.match(path.name)
        if m:
            tables[int(m.group(1)), int(m.group(2))] = path
    if not tables:
        raise FileNotFoundError(
            f"--merge-areas {out}: no areas.shard-K-of-N.csv there; "
            "run predict with --shard K/N (or under torchrun) first"
        )
    splits = sorted({n for _, n in tables})
    if len(splits) > 1:
        raise ValueError(
            f"--merge-areas {out}: shard tables of {' and '.join(map(str, splits))} shards are mixed; "
            "delete the stale areas.shard-*-of-N.csv files and merge again"
        )
    n = splits[0]
    missing = [f"{k}/{n}" for k in range(1, n + 1) if (k, n) not in tables]
    if missing:
        raise ValueError(
            f"--merge-areas {out}: shard(s) {', '.join(missing)} have not finished (no areas table); "
            "run them with --shard, then merge again"
        )
    refuse_foreign(foreign_batch_files(out, [out / "areas.csv", out / "failures.csv"]), "move it away, then merge")
    areas = _concat([tables[k, n] for k in range(1, n + 1)]).sort_values("image", kind="stable")
    failures = _concat([batch_tables(out, k, n)[1] for k in range(1, n + 1)], ["path", "error"])
    atomic_write_bytes(out / "areas.csv", areas.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    atomic_write_bytes(out / "failures.csv", failures.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    return out / "areas.csv", len(areas)


def _concat(paths: list[Path], columns: list[str] | None = None) -> pd.DataFrame:
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths if p.is_file()]
    frames = [f for f in frames if len(f.columns)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])


def print_result(result: PredictResult, console: Console) -> None:
    """The end-of-batch summary: counts, where things are, and every failure on its own line."""
    console.print(
        f"predicted {result.n_done}, skipped {result.n_skipped} finished, failed {len(result.failures)} "
        f"in {result.seconds:.0f}s -> {escape(result.out)}"
    )
    if result.areas is not None:
        merged = "  (every shard is done: merged into areas.csv)" if result.merged else ""
        console.print(f"areas: {escape(result.areas)}{merged}")
    if result.failures:
        console.print(f"[bold red]{len(result.failures)} image(s) failed[/] (also in failures.csv):")
        for path, error in result.failures:
            line = error if error.startswith(path) else f"{path}: {error}"  # most errors name their file already
            console.print(f"  {escape(line)}", soft_wrap=True)
