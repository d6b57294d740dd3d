"""Label schemes: class names, display colours and the mask values that mean each class.

A mask on disk is either an RGB colour PNG (each class has one exact colour) or a single-channel index PNG
(each class has one or more values, e.g. ARTeFACT's Background is 255). Inside the package every mask is a
class-index map: ``uint8`` (H, W) with values ``0..C-1`` and ``IGNORE_INDEX`` (255) for pixels that count in
neither the loss nor the metrics (padding, an ignored value). All conversions go through lookup tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .colours import MAX_TOLERANCE, SnapStats, UnknownMaskValues, exact_colours, snap_colours
from .colours import hex_colour as _hex
from .colours import pack as _pack
from .scheme_fields import _MISSING, _is_int, _mask_values, _no_unknown_keys, _text, _wrong

IGNORE_INDEX = 255  # class-index value for "no label"; a scheme therefore has at most 255 classes


@dataclass(frozen=True)
class ClassDef:
    """One class: its name, its colour in colour masks, the index-mask values that mean it, its display colour."""

    name: str
    color: tuple[int, int, int]
    values: tuple[int, ...]
    damage: bool = True  # counted in the damage-only mIoU and in damage-vs-clean
    aliases: tuple[tuple[int, int, int], ...] = ()  # further colours read as this class in colour masks
    display: tuple[int, int, int] | None = None  # shown in overlays, legends and reports (None: ``color``)

    @property
    def shown(self) -> tuple[int, int, int]:
        return self.display if self.display is not None else self.color


@dataclass(frozen=True)
class LabelScheme:
    """An ordered list of classes plus the mask values to ignore.

    ``clean`` and ``background`` name the classes that are not damage: damage-vs-clean metrics merge every
    damage class, compare it with ``clean`` and leave ``background`` out; areas are reported as a share of the
    object (every pixel but background).
    """

    name: str
    classes: tuple[ClassDef, ...]
    ignore_values: tuple[int, ...] = ()
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    clean: str | None = None
    background: str | None = None
    colour_tolerance: int = 0  # colour masks: snap colours within this of one class's colour (colours.py)
    _lut: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:  # noqa: C901 - a flat list of independent checks, one per rule
        if not self.classes:
            raise ValueError(f"label scheme {self.name!r} has no classes")
        if len(self.classes) >= IGNORE_INDEX:
            raise ValueError(f"label scheme {self.name!r} has {len(self.classes)} classes; at most 254 fit")
        names = [c.name for c in self.classes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"label scheme {self.name!r}: duplicate class names {dupes}; make names unique")
        colors = [k for c in self.classes for k in (c.color, *c.aliases)] + list(self.ignore_colors)
        dupes = sorted({_hex(c) for c in colors if colors.count(c) > 1})
        if dupes:
            raise ValueError(
                f"label scheme {self.name!r}: colour(s) {', '.join(dupes)} used by more than one class; "
                "give every class its own colour"
            )
        values = [v for c in self.classes for v in c.values] + list(self.ignore_values)
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(
                f"label scheme {self.name!r}: mask value(s) {dupes} mean more than one class; "
                "give every value one meaning"
            )
        for v in values:
            if not 0 <= v <= 65535:
                raise ValueError(f"label scheme {self.name!r}: mask value {v} outside 0..65535")
        for c in self.classes:
            if not c.values:
                raise ValueError(f"label scheme {self.name!r}: class {c.name!r} has no mask values")
            if len(c.color) != 3 or not all(0 <= x <= 255 for x in c.color):
                raise ValueError(f"label scheme {self.name!r}: class {c.name!r} colour {c.color} is not RGB")
        if not (isinstance(self.colour_tolerance, int) and 0 <= self.colour_tolerance <= MAX_TOLERANCE):
            raise ValueError(f"--colour-tolerance: must be 0 to {MAX_TOLERANCE}, got {self.colour_tolerance!r}")
        for special in (self.clean, self.background):
            if special is not None and special not in names:
                raise ValueError(f"label scheme {self.name!r}: {special!r} is not one of its classes {names}")

    # ----------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def colors(self) -> np.ndarray:
        """(C, 3) uint8 mask colours (what a colour mask file holds)."""
        return np.array([c.color for c in self.classes], dtype=np.uint8)

    @property
    def display_colors(self) -> np.ndarray:
        """(C, 3) uint8 colours for people: overlays, legends, reports (a class's ``display``, else its colour)."""
        return np.array([c.shown for c in self.classes], dtype=np.uint8)

    @property
    def damage_indices(self) -> list[int]:
        return [i for i, c in enumerate(self.classes) if c.damage]

    @property
    def damage_table(self) -> np.ndarray:
        """(256,) bool lookup: ``damage_table[index_map]`` marks the damage pixels of a uint8 class-index map."""
        table = np.zeros(256, bool)
        table[self.damage_indices] = True
        return table

    @property
    def clean_index(self) -> int | None:
        return self.names.index(self.clean) if self.clean is not None else None

    @property
    def background_index(self) -> int | None:
        return self.names.index(self.background) if self.background is not None else None

    # ----------------------------------------------------------------- lookup tables
    def _value_lut(self) -> np.ndarray:
        """65536-entry table: mask value -> class index, IGNORE_INDEX for ignored, 254+1 sentinel for unknown."""
        if "value" not in self._lut:
            lut = np.full(65536, _UNKNOWN, dtype=np.int16)
            for i, c in enumerate(self.classes):
                lut[list(c.values)] = i
            if self.ignore_values:
                lut[list(self.ignore_values)] = IGNORE_INDEX
            self._lut["value"] = lut
        return self._lut["value"]

    def palette(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted packed colours (R<<16|G<<8|B) of every class colour, alias and ignored colour, and their meanings."""
        if "color" not in self._lut:
            keys, idx = [], []
            for i, c in enumerate(self.classes):
                for color in (c.color, *c.aliases):
                    keys.append(_pack(color))
                    idx.append(i)
            keys += [_pack(c) for c in self.ignore_colors]
            idx += [IGNORE_INDEX] * len(self.ignore_colors)
            order = np.argsort(keys)
            self._lut["color"] = (np.asarray(keys, np.int64)[order], np.asarray(idx, np.int16)[order])
        return self._lut["color"]

    # ----------------------------------------------------------------- conversions
    def index_from_values(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) integer mask values -> (H, W) uint8 class indices. Raises UnknownMaskValues."""
        if mask.dtype not in (np.uint8, np.uint16):
            if mask.min(initial=0) < 0 or mask.max(initial=0) > 65535:
                raise UnknownMaskValues(np.unique(mask[(mask < 0) | (mask > 65535)]).tolist(), mask)
            mask = mask.astype(np.uint16)
        out = self._value_lut()[mask]
        bad = out == _UNKNOWN
        if bad.any():
            raise UnknownMaskValues(np.unique(mask[bad]).tolist(), bad)
        return out.astype(np.uint8)

    def index_from_colors(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB colours -> (H, W) uint8 class indices. Raises UnknownMaskValues."""
        return self._from_colors(rgb)[0]

    def _from_colors(self, rgb: np.ndarray) -> tuple[np.ndarray, SnapStats | None]:
        keys, idx = self.palette()
        if self.colour_tolerance:
            return snap_colours(rgb, keys, idx, self.colour_tolerance)
        return exact_colours(rgb, keys, idx), None

    def decode(self, mask: np.ndarray) -> np.ndarray:
        """A mask as read from disk (2-D values or (H, W, 3) RGB) -> (H, W) uint8 class indices.

        A 3-channel mask whose three channels are equal everywhere and whose values all belong to the scheme
        is an index mask saved as RGB (common with some annotation tools); otherwise it is read by colour,
        snapping colours within ``colour_tolerance`` of one class's colour (see ``colours``).
        """
        return self.decode_counted(mask)[0]

    def decode_counted(self, mask: np.ndarray) -> tuple[np.ndarray, SnapStats | None]:
        """``decode``, plus what snapping did (None when the mask was read exactly, without a tolerance)."""
        if mask.ndim == 2:
            return self.index_from_values(mask), None
        if mask.ndim == 3 and mask.shape[2] >= 3:
            rgb = mask[..., :3]
            if rgb.dtype != np.uint8:
                raise ValueError("colour masks must be 8-bit RGB")
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                try:
                    return self.index_from_values(rgb[..., 0]), None
                except UnknownMaskValues:
                    pass
            return self._from_colors(rgb)
        raise ValueError(f"a mask must be (H, W) or (H, W, 3), got shape {mask.shape}")

    def with_colour_tolerance(self, tolerance: int | None) -> LabelScheme:
        """The same scheme snapping colours within ``tolerance`` (None: keep the scheme's own)."""
        if tolerance is None or tolerance == self.colour_tolerance:
            return self
        return replace(self, colour_tolerance=tolerance, _lut={})

    def colorize(self, index: np.ndarray, ignore_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        """(H, W) class indices -> (H, W, 3) uint8 RGB mask colours (a colour mask file; see display_colors)."""
        table = np.zeros((256, 3), np.uint8)
        table[: self.num_classes] = self.colors
        table[IGNORE_INDEX] = ignore_color
        return table[index]

    def to_values(self, index: np.ndarray) -> np.ndarray:
        """(H, W) class indices -> (H, W) mask values (each class's first value); uint8 if they fit."""
        top = max(v for c in self.classes for v in c.values)
        dtype = np.uint8 if top <= 255 else np.uint16
        table = np.zeros(256, dtype)
        table[: self.num_classes] = [c.values[0] for c in self.classes]
        if self.ignore_values:
            table[IGNORE_INDEX] = self.ignore_values[0]
        return table[index]

    # ----------------------------------------------------------------- variants and I/O
    def ignoring(self, class_name: str) -> LabelScheme:
        """The same scheme with one class turned into 'ignore' (e.g. ARTeFACT's Background)."""
        if class_name not in self.names:
            raise ValueError(f"{class_name!r} is not a class of {self.name!r}: {self.names}")
        gone = self.classes[self.names.index(class_name)]
        return replace(
            self,
            name=f"{self.name}-ignore-{class_name.lower().replace(' ', '_')}",
            classes=tuple(c for c in self.classes if c.name != class_name),
            ignore_values=self.ignore_values + gone.values,
            ignore_colors=self.ignore_colors + (gone.color,),
            clean=None if self.clean == class_name else self.clean,
            background=None if self.background == class_name else self.background,
            _lut={},
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "classes": [
                {"name": c.name, "color": _hex(c.color), "values": list(c.values), "damage": c.damage}
                | ({"aliases": [_hex(a) for a in c.aliases]} if c.aliases else {})
                | ({"display": _hex(c.display)} if c.display is not None else {})
                for c in self.classes
            ],
            "ignore_values": list(self.ignore_values),
            "ignore_colors": [_hex(c) for c in self.ignore_colors],
            "clean": self.clean,
            "background": self.background,
        } | ({"colour_tolerance": self.colour_tolerance} if self.colour_tolerance else {})

    @classmethod
    def from_dict(cls, d: dict, source: str = "label scheme") -> LabelScheme:
        """The scheme that to_dict wrote; every field is type-checked, a wrong one refused naming source and value."""
        _no_unknown_keys(d, _SCHEME_KEYS, source)
        if not isinstance(d.get("classes"), list):
            raise _wrong(source, "classes", d.get("classes", _MISSING), 'a list of classes {"name", "color", "values"}')
        classes = [_class_from_dict(c, i, source) for i, c in enumerate(d["classes"])]
        clean, background = (_text(source, key, d.get(key), optional=True) for key in ("clean", "background"))
        classes = [replace(c, damage=False) if c.name in (clean, background) else c for c in classes]
        ignore = d.get("ignore_values", [] if d.get("ignore_value") is None else d["ignore_value"])  # null: none
        ignore = _mask_values(source, "ignore_values" if "ignore_values" in d else "ignore_value", ignore)
        return cls(
            name=_text(source, "name", d.get("name", source)),
            classes=tuple(classes),
            ignore_values=ignore,
            ignore_colors=_colors(source, "ignore_colors", d.get("ignore_colors", [])),
            clean=clean,
            background=background,
            colour_tolerance=_tolerance(source, d.get("colour_tolerance", 0)),
        )


_SCHEME_KEYS = (
    "name", "classes", "ignore_values", "ignore_colors", "ignore_value", "clean", "background", "colour_tolerance"
)  # fmt: skip
_CLASS_KEYS = ("name", "color", "values", "value", "damage", "aliases", "display")
_COLOR = "a colour '#RRGGBB' or [r, g, b] (0-255 each)"


def _class_from_dict(c, i: int, source: str) -> ClassDef:
    """Class #i of a JSON scheme; a missing or mistyped field is refused naming the class and the field."""
    if not isinstance(c, dict):
        raise _wrong(source, f"class #{i}", c, 'an object {"name", "color", "values"}')
    name = _text(f"{source}: class #{i}", "name", c.get("name", _MISSING))
    where = f"{source}: class {json.dumps(name, ensure_ascii=False)}"
    _no_unknown_keys(c, _CLASS_KEYS, where)
    key = "value" if "value" in c and "values" not in c else "values"
    damage = c.get("damage", True)
    if not isinstance(damage, bool):
        raise _wrong(where, "damage", damage, "true or false")
    color, values = _color(where, "color", c.get("color", _MISSING)), _mask_values(where, key, c.get(key, i))
    display = _color(where, "display", c["display"]) if c.get("display") is not None else None
    return ClassDef(name, color, values, damage, _colors(where, "aliases", c.get("aliases", [])), display)


def _tolerance(where: str, value) -> int:
    if not (_is_int(value) and 0 <= value <= MAX_TOLERANCE):
        raise _wrong(where, "colour_tolerance", value, f"an integer 0-{MAX_TOLERANCE}")
    return value


def _color(where: str, field: str, value) -> tuple[int, int, int]:
    try:
        return parse_color(value)
    except ValueError:
        raise _wrong(where, field, value, _COLOR) from None


def _colors(where: str, field: str, value) -> tuple[tuple[int, int, int], ...]:
    if not isinstance(value, list | tuple):
        raise _wrong(where, field, value, "a list of colours ('#RRGGBB' or [r, g, b])")
    return tuple(_color(where, f"{field}[{k}]", v) for k, v in enumerate(value))


_UNKNOWN = 256


def parse_color(value, source: str = "label scheme") -> tuple[int, int, int]:
    """'#1CE6FF', '1CE6FF' or [28, 230, 255] -> (28, 230, 255)."""
    if isinstance(value, str):
        s = value.strip().lstrip("#")
        if len(s) == 6:
            try:
                return int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16)
            except ValueError:
                pass
    elif isinstance(value, list | tuple) and len(value) == 3 and all(_is_int(x) for x in value):
        if all(0 <= x <= 255 for x in value):
            return int(value[0]), int(value[1]), int(value[2])
    raise ValueError(f"{source}: colour {value!r} is not '#RRGGBB' or [r, g, b]")


# --------------------------------------------------------------------------------------------- built-ins
ARTEFACT_CLASSES = [
    ("Clean", "#000000"),
    ("Material loss", "#1CE6FF"),
    ("Peel", "#FF34FF"),
    ("Dust", "#FF4A46"),
    ("Scratch", "#008941"),
    ("Hair", "#006FA6"),
    ("Dirt", "#A30059"),
    ("Fold", "#FFA500"),
    ("Writing", "#7A4900"),
    ("Cracks", "#0000A6"),
    ("Staining", "#63FFAC"),
    ("Stamp", "#004D43"),
    ("Sticker", "#8FB0FF"),
    ("Puncture", "#997D87"),
    ("Burn marks", "#809693"),
    ("Lightleak", "#F6FF1B"),
]
BACKGROUND_COLOR = "#5A0007"


def _artefact() -> LabelScheme:
    classes = [ClassDef(n, parse_color(c), (i,), damage=i != 0) for i, (n, c) in enumerate(ARTEFACT_CLASSES)]
    classes.append(ClassDef("Background", parse_color(BACKGROUND_COLOR), (255,), damage=False))
    return LabelScheme("artefact", tuple(classes), clean="Clean", background="Background")


def _artefact_binary() -> LabelScheme:
    damage_colors = tuple(parse_color(c) for _, c in ARTEFACT_CLASSES[1:])
    classes = (
        ClassDef("Clean", (0, 0, 0), (0,), damage=False),
        # every ARTeFACT damage value and colour reads as the one Damage class
        ClassDef("Damage", (255, 0, 0), tuple(range(1, 16)), damage=True, aliases=damage_colors),
        ClassDef("Background", parse_color(BACKGROUND_COLOR), (255,), damage=False),
    )
    return LabelScheme("artefact-binary", classes, clean="Clean", background="Background")


def _binary() -> LabelScheme:
    background = ClassDef("Background", (0, 0, 0), (0,), damage=False)
    # white in the mask file (255), but shown in magenta: white on a light scan is invisible
    damage = ClassDef("Damage", (255, 255, 255), (255, 1), damage=True, display=(255, 0, 255))
    return LabelScheme("binary", (background, damage), clean="Background")


BUILTIN_SCHEMES = {"artefact": _artefact, "artefact-binary": _artefact_binary, "binary": _binary}


def load_scheme(name_or_path: str | Path) -> LabelScheme:
    """A built-in scheme by name, or a JSON file with the same fields as ``LabelScheme.to_dict``."""
    key = str(name_or_path)
    if key in BUILTIN_SCHEMES:
        return BUILTIN_SCHEMES[key]()
    path = Path(key)
    if path.suffix.lower() != ".json" and not path.exists():
        raise ValueError(f"--labels {key!r}: not a built-in scheme ({', '.join(BUILTIN_SCHEMES)}) nor a JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"--labels {key}: file not found; give a built-in name or an existing JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix the file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object with a 'classes' list")
    data.setdefault("name", path.stem)
    try:
        return LabelScheme.from_dict(data, source=str(path))
    except ValueError as e:  # a check inside LabelScheme names the scheme, not the file to fix
        if str(path) in str(e):
            raise
        raise ValueError(f"--labels {path}: {e}") from None


def resolve_scheme(
    name_or_path: str | Path, ignore_background: bool = False, colour_tolerance: int | None = None
) -> LabelScheme:
    """load_scheme, optionally with the Background class turned into 'ignore' and another colour tolerance."""
    scheme = load_scheme(name_or_path).with_colour_tolerance(colour_tolerance)
    if ignore_background:
        if scheme.background is None:
            raise ValueError(f"--ignore-background: scheme {scheme.name!r} has no background class")
        scheme = scheme.ignoring(scheme.background)
    return scheme
