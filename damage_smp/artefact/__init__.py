"""Import ARTeFACT (Ivanova et al., WACV 2025) from its Hugging Face parquet shards: images, index masks, manifest.

The dataset (``danielaivanova/damaged-media``) stores each scan as one parquet row: ``id``, ``image`` and
``annotation`` (HF ``Image`` features, i.e. structs ``{bytes, path}``), ``annotation_rgb``, the group columns
``material``, ``content``, ``type`` and free-text descriptions. ``annotation`` is a single-channel PNG: 0 Clean,
1–15 the damage classes in the ``artefact`` scheme's order, 255 Background.

What the import writes under ``OUT``::

  images/<id>.png|.jpg   the scan; copied byte for byte unless it is downscaled or EXIF-rotated (ids that are
                         not safe file names are sanitised: letters, digits, '.', '_', '-')
  masks/<id>.png         8-bit index mask, values exactly as in the annotation (0–15, 255)
  manifest.csv           image,mask,split,material,content,type (paths relative to OUT)
  import.json            the import's settings, warnings, failures and renamed ids; lets a re-run continue it

The shards are streamed one row at a time (never the whole dataset in memory). A re-run skips rows whose files
exist, so an interrupted import continues where it stopped. ARTeFACT has no official split: the manifest gets a
seeded random 70/15/15 split, to be replaced by a grouped one with ``damage-smp manifest split``.
"""

from .importer import ArtefactImportError, import_artefact
from .parquet import safe_name

__all__ = ["ArtefactImportError", "import_artefact", "safe_name"]
