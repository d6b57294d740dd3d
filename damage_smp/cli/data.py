"""Data commands: synth, manifest build/check/split, import-artefact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import escape
from .app import (
    ARTEFACT_INPUTS_HELP,
    ColourToleranceOpt,
    LabelsOpt,
    MaxPixelsOpt,
    app,
    console,
    manifest_app,
    user_errors,
)


# ============================================================================================ synth
@app.command()
@user_errors
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write images/, masks/ and manifest.csv into.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 48,
    size: Annotated[str, typer.Option("--size", help="WIDTHxHEIGHT of every image.")] = "512x384",
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty folder.")] = False,
    root_manifest: Annotated[
        Path | None,
        typer.Option(
            "--root-manifest", help="Also write this manifest, paths relative to its folder (e.g. data_manifest.csv)."
        ),
    ] = None,
) -> None:
    """Write a synthetic damaged-media sample (photo, film, paper, parchment, canvas) with exact artefact masks."""
    from ..synth import parse_size
    from ..synth import synth as make_sample

    manifest = make_sample(
        out_dir, n=n, size=parse_size(size), seed=seed, overwrite=overwrite, root_manifest=root_manifest
    )
    extra = f" and {escape(str(root_manifest))}" if root_manifest else ""
    console.print(f"wrote {n} images and masks; manifest: {escape(str(manifest))}{extra}", soft_wrap=True)
    console.print(f"next: damage-smp manifest check {escape(str(manifest))}", soft_wrap=True)


# ============================================================================================ manifest
GroupLeaveOutOpt = Annotated[
    str | None,
    typer.Option("--leave-out", help="Hold this group out entirely as test: VALUE or COLUMN=VALUE."),
]


SplitOpt = Annotated[
    str | None,
    typer.Option("--split", help="Put every pair in this split (train, val or test) instead of splitting them."),
]
ImagesOpt = Annotated[
    Path | None, typer.Option("--images", help="Folder of images (subfolders included).", show_default=False)
]
MasksOpt = Annotated[
    Path | None,
    typer.Option(
        "--masks", help="Folder of masks named after their images (suffixes like _mask are fine).", show_default=False
    ),
]
FromFoldersOpt = Annotated[
    Path | None,
    typer.Option(
        "--from-folders",
        help="A tree already split into folders (train/images + train/masks, images/train + masks/train, "
        "train_img + train_lab, ...): each split's pairs keep that split. Instead of --images/--masks.",
        show_default=False,
    ),
]
ValOpt = Annotated[
    float | None,
    typer.Option(help="Fraction of images for validation [default: 0.15; with --from-folders: of train, none]."),
]
GroupByOpt = Annotated[
    str | None,
    typer.Option(
        "--group-by",
        help="Regex searched in each image's path (relative, no extension); its first group names the image's "
        "group, and no group spans two splits. E.g. '^([^/]+)/' (subfolder) or '(.+)_\\d+$' (stem prefix).",
    ),
]


@manifest_app.command("build")
@user_errors
def manifest_build(
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write; its paths are relative to its folder.")],
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    from_folders: FromFoldersOpt = None,
    split: SplitOpt = None,
    labels: LabelsOpt = "artefact",
    val: ValOpt = None,
    test: Annotated[float | None, typer.Option(help="Fraction of images for test [default: 0.15].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    group_by: GroupByOpt = None,
    leave_out: GroupLeaveOutOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing CSV.")] = False,
    max_pixels: MaxPixelsOpt = 200_000_000,
    colour_tolerance: ColourToleranceOpt = None,
) -> None:
    """Pair images with masks by name, split them (at random, by group, or as their folders say), write a CSV."""
    from ..labels import load_scheme
    from ..manifest import build_from_folders, build_manifest, check_sources, summarize

    check_sources(images, masks, from_folders, split, test, leave_out)
    scheme = load_scheme(labels).with_colour_tolerance(colour_tolerance)
    if from_folders is not None:
        df = build_from_folders(from_folders, out, scheme, val=val, seed=seed, group_by=group_by,
                                overwrite=overwrite, max_pixels=max_pixels)  # fmt: skip
        console.print(f"layout: {escape(df.attrs['layout'])}", soft_wrap=True)
    else:
        df = build_manifest(
            images, masks, out, scheme, val=val, test=test, seed=seed, group_by=group_by, leave_out=leave_out,
            overwrite=overwrite, max_pixels=max_pixels, split=split,
        )  # fmt: skip
    for warning in df.attrs.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    console.print(f"wrote {escape(str(out))}: {len(df)} pairs; {summarize(df)}", soft_wrap=True)
    console.print(f"next: damage-smp manifest check {escape(str(out))} --labels {escape(labels)}", soft_wrap=True)


@manifest_app.command("check")
@user_errors
def manifest_check(
    csv: Annotated[Path, typer.Argument(help="Manifest CSV (image,mask,split[,group columns]).")],
    labels: LabelsOpt = "artefact",
    max_pixels: MaxPixelsOpt = 200_000_000,
    colour_tolerance: ColourToleranceOpt = None,
) -> None:
    """Audit every row: files, sizes, mask values, duplicates, splits and class pixel shares. Exit 1 on errors."""
    from ..labels import load_scheme
    from ..manifest import audit_manifest, print_audit

    report = audit_manifest(csv, load_scheme(labels).with_colour_tolerance(colour_tolerance), max_pixels=max_pixels)
    print_audit(report, console)
    if report.errors:
        raise typer.Exit(1)


@manifest_app.command("merge")
@user_errors
def manifest_merge(
    csvs: Annotated[list[Path], typer.Argument(metavar="CSV...", help="Manifests to merge (two or more).")],
    out: Annotated[Path, typer.Option("--out", help="The merged manifest; paths are rebased to its folder.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing CSV.")] = False,
) -> None:
    """Merge manifests into one (each row keeps its split); refuses different columns and an image listed twice."""
    from ..manifest import merge_manifests, summarize

    df = merge_manifests(csvs, out, overwrite=overwrite)
    console.print(
        f"wrote {escape(str(out))}: {len(df)} pairs from {len(csvs)} manifests; {summarize(df)}", soft_wrap=True
    )


@manifest_app.command("split")
@user_errors
def manifest_split(
    csv: Annotated[Path, typer.Argument(help="Manifest CSV to re-split (it is not modified).")],
    out: Annotated[Path, typer.Option("--out", help="New manifest CSV; with --folds, a folder for fold-*.csv.")],
    by: Annotated[
        str | None, typer.Option("--by", help="Group column: no value of it spans two splits (e.g. material).")
    ] = None,
    val: Annotated[float, typer.Option(help="Fraction of images for val (of the rest with --leave-out).")] = 0.15,
    test: Annotated[float, typer.Option(help="Fraction of images for test (unused with --leave-out/--folds).")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    leave_out: GroupLeaveOutOpt = None,
    folds: Annotated[
        bool, typer.Option("--folds", help="Leave-one-group-out: one manifest per value of --by, held out as test.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
) -> None:
    """Re-split a manifest: random, grouped (--by), one group held out (--leave-out), or all folds (--folds)."""
    from ..manifest import split_manifest, summarize

    written = split_manifest(
        csv, out, by=by, val=val, test=test, seed=seed, leave_out=leave_out, folds=folds, overwrite=overwrite
    )
    for df in written:
        for warning in df.attrs.get("warnings", []):
            console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
        console.print(f"wrote {escape(df.attrs['manifest'])}: {summarize(df)}", soft_wrap=True)


# ============================================================================================ import-artefact
@app.command("import-artefact", rich_help_panel="Data")
@user_errors
def import_artefact(
    inputs: Annotated[list[Path], typer.Argument(metavar="PARQUET_FILES_OR_DIR", help=ARTEFACT_INPUTS_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Folder for images/, masks/ and manifest.csv.")],
    max_side: Annotated[
        int | None, typer.Option("--max-side", help="Downscale so the longer side is at most N pixels.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the provisional random 70/15/15 split.")] = 0,
    max_pixels: Annotated[
        int | None, typer.Option("--max-pixels", help="Refuse scans above this many pixels (default 200 MP).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Re-import every row (and write into a non-empty folder).")
    ] = False,
) -> None:
    """Import ARTeFACT from its Hugging Face parquet shards: images, index masks and a grouped manifest.

    Re-running the same command continues an interrupted import (finished rows are skipped).
    """
    from ..artefact import import_artefact as run_import

    run_import(inputs, out, max_side=max_side, overwrite=overwrite, max_pixels=max_pixels, seed=seed)
