"""The README.md model card of an smp export: what the model was trained on, its scores, labels, use and limits.

Everything comes from the run directory (config.json, env.json, metrics.json and the training manifest), so the
card says only what the run recorded; what it did not record is stated as missing, never guessed.
"""

from __future__ import annotations

from pathlib import Path

from . import __version__
from .console import fmt
from .models import ModelBundle
from .runs import RunPaths, describe_init, read_json_lenient

SUMMARY_KEYS = ("damage_miou", "miou", "damage_iou", "damage_f1", "pixel_accuracy")


def model_card(bundle: ModelBundle, run_dir: Path, parity: dict) -> str:
    paths = RunPaths(run_dir)
    name = run_dir.resolve().name
    sections = [
        f"# damage-smp model: {name}\n",
        f"{bundle.cfg.arch} on {bundle.cfg.encoder}, {bundle.scheme.num_classes} classes "
        f"(label scheme `{bundle.scheme.name}`), exported by damage-smp {__version__} from run `{name}` "
        f"(checkpoint {bundle.checkpoint_path.name}, epoch {bundle.epoch}).\n",
        _usage(),
        _training_data(bundle, paths),
        _scores(paths),
        _labels(bundle),
        _intended_use(bundle),
        _parity(parity),
    ]
    return "\n".join(sections)


def _usage() -> str:
    return (
        "## How to load\n\n"
        "```python\nimport json, segmentation_models_pytorch as smp, torch\n"
        "net = smp.from_pretrained(FOLDER).eval()  # no network needed: encoder_weights is null\n"
        'side = json.load(open(f"{FOLDER}/damage_smp.json"))\n'
        'mean = torch.tensor(side["normalisation"]["mean"]).view(1, 3, 1, 1)  # 0-255 scale\n'
        'std = torch.tensor(side["normalisation"]["std"]).view(1, 3, 1, 1)\n'
        "logits = net((rgb_0_255 - mean) / std)  # (N, 3, H, W) float, H and W multiples of 32\n```\n\n"
        "Classes are `logits.argmax(1)`, indices into the label scheme below. Large images: tile them (damage-smp "
        "predict blends overlapping tiles with Gaussian weights).\n"
    )


def _training_data(bundle: ModelBundle, paths: RunPaths) -> str:
    cfg = bundle.cfg
    env, _ = read_json_lenient(paths.env) if paths.env.is_file() else (None, None)
    manifest = (env or {}).get("manifest") or cfg.manifest
    lines = [
        "## Training data\n",
        f"- manifest: `{manifest}` (sha256 {(env or {}).get('manifest_sha256', 'not recorded')})",
    ]
    lines.append(f"- split sizes (images): {_split_sizes(Path(manifest))}")
    lines.append(
        f"- training: {cfg.epochs} epochs of {cfg.samples_per_epoch} random {cfg.crop_size}px crops, "
        f"train fraction {cfg.train_fraction:g}, weights at start: {describe_init(cfg, bundle.info)}, seed {cfg.seed}"
    )
    return "\n".join(lines) + "\n"


def _split_sizes(manifest: Path) -> str:
    from .manifest.read import read_manifest

    try:
        counts = read_manifest(manifest)["split"].value_counts()
    except (OSError, ValueError, KeyError) as e:
        return f"unknown (the manifest could not be read: {str(e).splitlines()[0][:120]})"
    return ", ".join(f"{s} {int(counts.get(s, 0))}" for s in ("train", "val", "test"))


def _scores(paths: RunPaths) -> str:
    metrics, problem = read_json_lenient(paths.metrics) if paths.metrics.is_file() else (None, None)
    if not metrics:
        why = f" ({problem})" if problem else ""
        return f"## Scores\n\nNot evaluated{why}: run `damage-smp evaluate RUN_DIR` before exporting to include them.\n"
    parts = ["## Scores\n"]
    for split_key, result in metrics.items():
        if not isinstance(result, dict) or "summary" not in result:
            continue
        summary = result["summary"]
        head = ", ".join(f"{k} {fmt(summary.get(k))}" for k in SUMMARY_KEYS)
        parts.append(f"### {split_key} ({result.get('n_images', '?')} images, tile {result.get('tile', '?')})\n")
        parts.append(head + "\n")
        parts.append("| class | IoU | Dice | precision | recall | support px |\n|---|---|---|---|---|---|")
        for c in result.get("per_class", []):
            parts.append(
                f"| {c['name']} | {fmt(c.get('iou'))} | {fmt(c.get('dice'))} | {fmt(c.get('precision'))} "
                f"| {fmt(c.get('recall'))} | {c.get('support', '')} |"
            )
        parts.append("")
    return "\n".join(parts)


def _labels(bundle: ModelBundle) -> str:
    rows = ["## Label scheme\n", "| index | class | colour | damage | mask values |", "|---|---|---|---|---|"]
    for i, c in enumerate(bundle.scheme.classes):
        colour = "#{:02x}{:02x}{:02x}".format(*c.color)
        rows.append(f"| {i} | {c.name} | `{colour}` | {'yes' if c.damage else 'no'} | {list(c.values)} |")
    return "\n".join(rows) + "\n"


def _intended_use(bundle: ModelBundle) -> str:
    return (
        "## Intended use and known limits\n\n"
        "Intended: mapping visible damage (the classes above) in scans of analogue media — photographs, film, "
        "paper, parchment, paintings — to support condition surveys and conservation planning, with a person "
        "checking the result.\n\n"
        "Known limits: it has seen only the material in its training manifest; other media, scanners, lighting "
        "or resolutions can lower its scores well below those above. Classes with little or no support in the "
        "test split are not validated. It does not judge significance or cause of damage, and must not be the "
        f"sole basis for treatment decisions. Inputs must be RGB with sides that are multiples of 32 (tile or pad); "
        f"the run validated with {bundle.cfg.tile}px tiles.\n"
    )


def _parity(parity: dict) -> str:
    sizes = "; ".join(
        f"{r['size'][0]}x{r['size'][1]}: max |Δp| {r['max_abs_diff_prob']:.1e}, argmax identical "
        f"{r['argmax_identical']:.4%}"
        for r in parity["sizes"]
    )
    return f"## Export check\n\nThis folder vs the run's PyTorch model on {len(parity['images'])} image(s): {sizes}.\n"
