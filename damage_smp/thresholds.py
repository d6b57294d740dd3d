"""Damage-vs-clean thresholds tuned on validation: the decision rule, its histogram, thresholds.json.

The rule (one for every scheme): a pixel is damage when its *damage probability* — the sum of the softmax
probabilities of the scheme's damage classes — reaches the threshold; it then takes the most likely damage
class, otherwise the most likely of the other classes. For a scheme with one damage class (``binary``) that is
a threshold on that class's probability; at 0.5 it is the argmax (up to ties).

Tuning is exact and memory-bounded: the damage probability is quantised to ``BINS`` steps
(``level = floor(p * BINS)``, 0..BINS), and one histogram of levels is kept per true label (damage, clean;
background and ignored pixels count in neither, as in ``ConfusionMatrix.damage_vs_clean``). The rule itself
compares levels (``level >= k``), so the counts of the histogram at threshold ``k / BINS`` are exactly the
pixels the rule moves: tp(k) = damage pixels at levels >= k, fp(k) = clean ones, fn(k) = damage ones below.
The threshold is the k with the highest F1 of the split's summed counts (the lowest such k on a tie).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import scores
from .labels import IGNORE_INDEX, LabelScheme
from .runs import read_json, sha256_file, write_json

BINS = 1000  # thresholds k / 1000; the histogram has BINS + 1 levels (p == 1 is level 1000)
FILE = "thresholds.json"
HOW_TO_TUNE = "damage-smp evaluate {run} --split val --tune"
DECISIONS = ("argmax", "tuned")


def quantise(p: torch.Tensor) -> torch.Tensor:
    """Damage probabilities -> int64 levels 0..BINS (floor(p * BINS)); the rule and the histogram share it."""
    return torch.floor(p.float() * BINS).clamp_(0, BINS).long()


def damage_probability(probs: torch.Tensor, damage: list[int]) -> torch.Tensor:
    """(C, h, w) probabilities -> (h, w) float32 summed probability of the damage classes.

    With fewer other classes than damage ones (ARTeFACT: 15 damage, Clean and Background) it is 1 minus the
    others, which sums less; the rule and the histogram both call this, so they always agree.
    """
    other = [i for i in range(probs.shape[0]) if i not in damage]
    if len(damage) == 1:
        return probs[damage[0]]
    if len(other) == 2:  # = 1 - sum of the two, bit for bit, without a gathered copy of both bands
        return 1 - (probs[other[0]] + probs[other[1]])
    if len(other) < len(damage):
        return 1 - _classes(probs, other).sum(0) if len(other) > 1 else 1 - probs[other[0]]
    return _classes(probs, damage).sum(0)


def _classes(probs: torch.Tensor, idx) -> torch.Tensor:
    """probs[idx]: a view when the indices are a contiguous run (no copy of the band), else a gather."""
    idx = list(idx)
    if idx == list(range(idx[0], idx[-1] + 1)):
        return probs[idx[0] : idx[-1] + 1]
    return probs[torch.tensor(idx, device=probs.device)]


def _best(probs: torch.Tensor, idx: tuple[int, ...]) -> torch.Tensor:
    """(h, w) uint8 class index of the most likely class among ``idx`` (the first on a tie).

    Two classes (ARTeFACT's Clean and Background) are one comparison, never a gathered copy of both bands.
    """
    if len(idx) == 1:
        return torch.full(probs.shape[1:], idx[0], dtype=torch.uint8, device=probs.device)
    if len(idx) == 2:
        a, b = idx
        return torch.where(probs[b] > probs[a], b, a).to(torch.uint8)
    pos = _classes(probs, idx).max(0).indices
    if list(idx) == list(range(idx[0], idx[-1] + 1)):
        return pos.to(torch.uint8).add_(idx[0])
    return torch.tensor(idx, dtype=torch.uint8, device=probs.device)[pos]


@dataclass(frozen=True)
class Decision:
    """Probabilities -> class indices: ``argmax``, or ``tuned`` (damage iff level >= ``level``)."""

    kind: str = "argmax"
    level: int = BINS // 2
    damage: tuple[int, ...] = ()
    other: tuple[int, ...] = ()

    @classmethod
    def tuned(cls, scheme: LabelScheme, level: int) -> Decision:
        damage = tuple(scheme.damage_indices)
        other = tuple(i for i in range(scheme.num_classes) if i not in damage)
        check_tunable(scheme)
        return cls("tuned", int(level), damage, other)

    @property
    def threshold(self) -> float | None:
        return self.level / BINS if self.kind == "tuned" else None

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        """(C, h, w) float probabilities -> (h, w) uint8 class indices (on the probabilities' device)."""
        if self.kind == "argmax":
            return probs.max(0).indices.to(torch.uint8)  # = argmax(0), faster (tiling.class_argmax)
        return torch.where(self.is_damage(probs), _best(probs, self.damage), _best(probs, self.other))

    def is_damage(self, probs: torch.Tensor) -> torch.Tensor:
        """(C, h, w) -> (h, w) bool: ``quantise(damage probability) >= level``, computed without the levels.

        For an integer level k in 1..BINS, floor(clamp(p * BINS, 0, BINS)) >= k exactly when p * BINS >= k (the
        same float product), so the pixels are those the histogram counts at k; every pixel reaches level 0.
        """
        p = damage_probability(probs, list(self.damage))
        if self.level <= 0:
            return torch.ones(p.shape, dtype=torch.bool, device=p.device)
        return p.float() * BINS >= self.level


def check_tunable(scheme: LabelScheme) -> None:
    """A threshold needs damage and clean classes to tell apart."""
    clean = [i for i in range(scheme.num_classes) if i not in scheme.damage_indices and i != scheme.background_index]
    if not scheme.damage_indices or not clean:
        raise ValueError(
            f"label scheme {scheme.name!r} has no damage or no clean class: there is no damage-vs-clean "
            "threshold to tune; use --decision argmax"
        )


# ============================================================================================ tuning
class DamageHistogram:
    """Per true label (damage, clean) the pixel count at each damage-probability level 0..BINS."""

    def __init__(self, scheme: LabelScheme):
        check_tunable(scheme)
        self.scheme = scheme
        lut = np.full(256, 2, np.int64)  # 0 damage, 1 clean, 2 not counted (background, ignore)
        lut[: scheme.num_classes] = 1
        lut[scheme.damage_indices] = 0
        if scheme.background_index is not None:
            lut[scheme.background_index] = 2
        lut[IGNORE_INDEX] = 2
        self.lut = torch.from_numpy(lut)
        self.counts = np.zeros((2, BINS + 1), np.int64)

    def update(self, probs: torch.Tensor, target: np.ndarray) -> None:
        """One block: (C, h, w) probabilities and the (h, w) uint8 target indices of the same pixels."""
        level = quantise(damage_probability(probs, self.scheme.damage_indices)).reshape(-1).cpu()
        label = self.lut[torch.from_numpy(np.ascontiguousarray(target)).reshape(-1).long()]
        both = torch.bincount(label * (BINS + 1) + level, minlength=3 * (BINS + 1))
        self.counts += both[: 2 * (BINS + 1)].reshape(2, BINS + 1).numpy()

    def curve(self) -> dict:
        """tp, fp, fn, precision, recall, f1 at every threshold k / BINS (arrays of BINS + 1)."""
        pos, neg = self.counts
        tp = pos[::-1].cumsum()[::-1]  # damage pixels at level >= k
        fp = neg[::-1].cumsum()[::-1]
        fn = pos.sum() - tp
        return {"tp": tp, "fp": fp, "fn": fn, "precision": scores.precision(tp, fp),
                "recall": scores.recall(tp, fn), "f1": scores.dice_score(tp, fp, fn)}  # fmt: skip

    def best(self) -> dict:
        """The F1-optimal threshold of the summed counts (lowest on a tie) and its scores, and those at 0.5."""
        c = self.curve()
        f1 = np.nan_to_num(c["f1"], nan=-1.0)
        k = int(np.argmax(f1))
        half = BINS // 2
        if c["tp"][0] == 0:
            raise ValueError("the split has no damage pixels: no threshold can be tuned on it")
        return {"threshold": k / BINS, "level": k, "bins": BINS,
                **{m: float(c[m][k]) for m in ("f1", "precision", "recall")},
                **{m: int(c[m][k]) for m in ("tp", "fp", "fn")},
                "f1_at_0.5": float(c["f1"][half]), "damage_px": int(self.counts[0].sum()),
                "clean_px": int(self.counts[1].sum())}  # fmt: skip


# ============================================================================================ the file
def write_thresholds(run_dir: Path, best: dict, *, checkpoint: str, checkpoint_path: Path, epoch, split: str,
                     n_images: int, scheme: LabelScheme) -> Path:  # fmt: skip
    """RUN/thresholds.json (atomic): the tuned threshold, its val scores and what it was tuned with."""
    path = Path(run_dir) / FILE
    write_json(path, {
        "rule": "damage iff floor(sum of damage-class probabilities * bins) >= level; then the most likely "
                "damage class, else the most likely other class",
        **best, "split": split, "n_images": n_images, "checkpoint": checkpoint, "epoch": epoch,
        "checkpoint_sha256": sha256_file(checkpoint_path), "label_scheme": scheme.name,
        "note": "F1 on the split it was tuned on (optimistic); score another split for a fair number",
    })  # fmt: skip
    return path


def read_thresholds(run_dir: Path) -> dict | None:
    """thresholds.json of a run, or None when it has none."""
    path = Path(run_dir) / FILE
    return read_json(path) if path.is_file() else None


def resolve_decision(
    run_dir: Path,
    decision: str,
    scheme: LabelScheme,
    checkpoint_path: Path,
    exported: dict | None = None,
    digest: str | None = None,
) -> Decision:
    """--decision argmax|tuned|auto -> the rule; auto is tuned when the run has thresholds.json for this
    checkpoint, else argmax. tuned without a usable thresholds.json: one line saying how to make it.
    An exported MODEL.onnx has no run dir: ``exported`` is its sidecar, which carries the thresholds its run
    had for the exported checkpoint (or none). ``digest``: the checkpoint's sha256 where the caller has it
    already (predict hashes it while the model loads); else it is computed here."""
    if decision not in (*DECISIONS, "auto"):
        raise ValueError(f"--decision {decision!r}: unknown; use argmax or tuned")
    if decision == "argmax":
        return Decision()
    if exported is not None:
        return _exported_decision(run_dir, decision, scheme, exported.get("thresholds"))
    data = read_thresholds(run_dir)
    how = HOW_TO_TUNE.format(run=run_dir)
    if data is None:
        if decision == "auto":
            return Decision()
        raise ValueError(f"--decision tuned: {Path(run_dir) / FILE} not found; make it with `{how}`")
    if data.get("checkpoint_sha256") != (digest or sha256_file(checkpoint_path)):
        if decision == "auto":
            return Decision()
        raise ValueError(
            f"--decision tuned: {Path(run_dir) / FILE} was tuned for another checkpoint than {checkpoint_path.name}; "
            f"tune it again with `{how} --checkpoint {checkpoint_path.stem}`"
        )
    return Decision.tuned(scheme, int(data["level"]))


def _exported_decision(model: Path, decision: str, scheme: LabelScheme, data: dict | None) -> Decision:
    if data is None:
        if decision == "auto":
            return Decision()
        raise ValueError(
            f"--decision tuned: {model} was exported without a tuned threshold; run `{HOW_TO_TUNE.format(run='RUN')}`"
            " and export again, or use --decision argmax"
        )
    return Decision.tuned(scheme, int(data["level"]))
