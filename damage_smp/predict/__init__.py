"""predict(run_dir, inputs, out): colour masks, index masks, overlays and an area table for scans of any size.

One process runs three stages at once, so the model never waits on disk: a reader pool decodes the next
images, the main thread predicts the current one (``tiling.predict_index``: a ring buffer of ``tile`` rows, so
memory grows with tile x width, never with classes x height x width), and a writer pool encodes and writes
the outputs of the previous ones. Each side holds at most ``workers`` images and at most ~50 MP beyond the
first, so a folder of 100 MP scans keeps one image in each stage. On a CPU, images that one tile covers are
predicted two at a time, each forward on half the threads (``lanes``: 0.88-0.93x the time of one after another).

Per image, named after the input (``<name>`` is its stem, or its whole file name when another input in the
same folder has the same stem, e.g. ``x.jpg`` and ``x.png`` give ``x.jpg_mask.png`` and ``x.png_mask.png``):
``<name>_mask.png`` (scheme colours), ``<name>_index.png`` (scheme mask values; uint16 when a value is above
255), ``<name>_overlay.jpg`` (damage tinted over the scan, a legend of the classes present in a corner) and
``<name>_areas.json`` (pixels per class and each output's size; written last, so it marks the image as
finished). Output folders mirror the input folders below their common root, so two inputs never share an
output name. A file at an output path that predict did not write is refused, even with ``--overwrite``.

Once per batch: ``predict.json`` (run, checkpoint, settings, label scheme), ``legend.png``, ``areas.csv``
(rebuilt from the per-image JSON files, so a resumed batch still lists the images it skipped) and
``failures.csv``. Shards (``--shard K/N`` or ``torchrun``) write ``areas.shard-K-of-N.csv`` and
``failures.shard-K-of-N.csv`` instead; the last shard to finish (or ``merge_areas``) joins them.

``inputs`` expands INPUTS and plans the outputs, ``owned`` tells predict's own files from the user's,
``pipeline`` sets a batch up, ``stages`` runs its three stages, ``lanes`` predicts small images two at a time on
a CPU, ``outputs`` writes the files and tables, ``backend`` runs the tiles through PyTorch or ONNX Runtime
(``--backend``).
"""

from .inputs import Job, collect_inputs, effective_shard, parse_save, parse_shard, plan_outputs
from .outputs import PredictResult, area_fields, area_row, merge_areas, print_result, tint_in_place, write_outputs
from .pipeline import predict
from .stages import predict_image

__all__ = [
    "Job",
    "PredictResult",
    "area_fields",
    "area_row",
    "collect_inputs",
    "effective_shard",
    "merge_areas",
    "parse_save",
    "parse_shard",
    "plan_outputs",
    "predict",
    "predict_image",
    "print_result",
    "tint_in_place",
    "write_outputs",
]
