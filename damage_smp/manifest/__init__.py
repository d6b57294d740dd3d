"""Data manifests: read, audit, build from folders, and split (random / grouped / leave-one-group-out).

A manifest is a CSV with the columns ``image,mask,split`` (split is train, val or test) plus any extra columns
(``material``, ``content``, ...), which are group columns: strings that name where an image comes from, so
that a split can keep every group whole and a study can hold one group out. Paths are relative to the CSV's
folder. ``load_manifest`` adds absolute ``image_path`` and ``mask_path`` columns.

``read`` holds the CSV itself, ``audit`` what ``manifest check`` does, ``build`` what ``manifest build`` does,
``folders`` its ``--from-folders`` (pre-split trees), ``split`` the split assignment and ``manifest split``,
``merge`` what ``manifest merge`` does.
"""

from .audit import (
    AuditReport,
    audit_manifest,
    check_leakage,
    count_classes,
    print_audit,
    run_with_progress,
    table_problems,
)
from .build import build_manifest
from .folders import build_from_folders, check_sources, find_layout
from .merge import merge_manifests
from .read import SPLITS, group_columns, load_manifest, split_rows, summarize
from .split import assign_splits, split_manifest

__all__ = [
    "SPLITS",
    "AuditReport",
    "assign_splits",
    "audit_manifest",
    "check_leakage",
    "build_manifest",
    "build_from_folders",
    "check_sources",
    "find_layout",
    "merge_manifests",
    "count_classes",
    "group_columns",
    "load_manifest",
    "print_audit",
    "run_with_progress",
    "split_manifest",
    "split_rows",
    "summarize",
    "table_problems",
]
