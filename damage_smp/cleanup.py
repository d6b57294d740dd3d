"""--min-area: remove connected components of damage smaller than a size, exactly, in strips of rows.

A 100 MP class map labelled at once would need a 400 MB int32 label image (and more for the statistics); here
the map is labelled ``STRIP_ROWS`` rows at a time with ``cv2.connectedComponentsWithStats`` (8-connected).
Pass 1 numbers every strip's components globally, records their areas and which components touch across each
strip boundary (a pixel in a strip's last row touches the three pixels below it); a small union-find joins
them into the components of the whole map and sums their areas. Pass 2 labels each strip again (the same
labels: the strip is unchanged until then) and sets the pixels of the components below the size to the fill
class. The result equals labelling the whole map at once; memory is a few strips' worth.

Removed damage becomes the scheme's clean class (or its first class that is not damage): the prediction says
"no damage here", not which other damage it might be.
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from .labels import LabelScheme

STRIP_ROWS = 1024


def parse_min_area(text: str | int | dict | None, scheme: LabelScheme) -> dict[int, int]:
    """--min-area PX (every damage class) or JSON {"class name": px} -> {class index: px}; {} for none."""
    if text is None or text == "":
        return {}
    spec = _spec(text)
    damage = scheme.damage_indices
    if not isinstance(spec, dict):
        spec = {scheme.names[i]: spec for i in damage}
    out = {}
    for name, px in spec.items():
        if name not in scheme.names or scheme.names.index(name) not in damage:
            valid = ", ".join(scheme.names[i] for i in damage)
            raise ValueError(f"--min-area: {name!r} is not a damage class of scheme {scheme.name!r} ({valid})")
        if not isinstance(px, int) or isinstance(px, bool) or px < 0:
            raise ValueError(f"--min-area: {name!r}: {px!r} must be a pixel count >= 0")
        out[scheme.names.index(name)] = px
    return {c: px for c, px in out.items() if px > 1}  # a component has >= 1 pixel: 0 and 1 remove nothing


def _spec(text: str | int | dict):
    """An int, a dict, or the text parsed as JSON into one of them."""
    spec = text
    if isinstance(text, str):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError:
            spec = None
    if isinstance(spec, bool) or not isinstance(spec, int | dict):
        raise ValueError(f"--min-area {text!r}: give a pixel count (50) or JSON such as '{{\"Cracks\": 50}}'")
    return spec


def fill_class(scheme: LabelScheme) -> int:
    """What removed damage becomes: the clean class, else the first class that is not damage."""
    if scheme.clean_index is not None:
        return scheme.clean_index
    others = [i for i in range(scheme.num_classes) if i not in scheme.damage_indices]
    if not others:
        raise ValueError(f"--min-area: scheme {scheme.name!r} has no class that is not damage to put instead")
    return others[0]


def remove_small(index: np.ndarray, min_area: dict[int, int], fill: int, strip: int = STRIP_ROWS) -> int:
    """Set the pixels of components smaller than ``min_area[class]`` to ``fill``, in place -> pixels removed."""
    removed = 0
    for cls, size in min_area.items():
        small = _small_components(index, cls, size, strip)
        if small is None:
            continue
        for y0, ids, _ in _strip_labels(index, cls, strip):
            hit = small[ids]  # (s, W) bool; id -1 (not this class) reads the last entry, False
            removed += int(np.count_nonzero(hit))
            index[y0 : y0 + ids.shape[0]][hit] = fill
    return removed


def _strip_labels(index: np.ndarray, cls: int, strip: int):
    """Yield (y0, (s, W) int64 global component ids (-1 where not ``cls``), components in the strip)."""
    offset = 0
    for y0 in range(0, index.shape[0], strip):
        mask = (index[y0 : y0 + strip] == cls).view(np.uint8)
        n, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
        ids = labels.astype(np.int64)
        ids += offset - 1  # component k >= 1 of this strip -> global id offset + k - 1
        ids[labels == 0] = -1
        offset += n - 1
        yield y0, ids, n - 1


def _small_components(index: np.ndarray, cls: int, size: int, strip: int) -> np.ndarray | None:
    """(n_components + 1,) bool: is global component k of the whole map smaller than ``size`` (last: False)."""
    areas, edges, prev, offset = [], [], None, 0
    for _, ids, n in _strip_labels(index, cls, strip):
        areas.append(np.bincount(ids[ids >= 0] - offset, minlength=n))
        if prev is not None:
            edges.append(_touching(prev, ids[0]))
        prev, offset = ids[-1], offset + n
    if offset == 0:
        return None
    area = np.concatenate(areas)
    root = _union(offset, np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64))
    total = np.bincount(root, weights=area, minlength=offset)
    return np.append(total[root] < size, False)


def _touching(above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """(2, k) pairs of component ids that touch across a strip boundary (8-connected)."""
    pairs = []
    w = above.size
    for d in (-1, 0, 1):  # below[x] touches above[x + d]
        a = above[max(0, d) : w + min(0, d)]
        b = below[max(0, -d) : w - max(0, d)]
        both = (a >= 0) & (b >= 0)
        pairs.append(np.stack([a[both], b[both]]))
    return np.unique(np.concatenate(pairs, axis=1), axis=1)


def _union(n: int, edges: np.ndarray) -> np.ndarray:
    """(n,) the smallest id of each node's group after joining every edge (union-find, vectorised)."""
    root = np.arange(n)
    a, b = edges
    while True:
        ra, rb = root[a], root[b]
        if np.array_equal(ra, rb):
            return root
        low = np.minimum(ra, rb)
        np.minimum.at(root, ra, low)  # hook the larger root under the smaller
        np.minimum.at(root, rb, low)
        while not np.array_equal(root, root[root]):  # compress every path to its root
            root = root[root]
