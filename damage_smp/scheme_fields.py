"""Type checks of a label-scheme JSON's fields: each wrong field refused naming where, the field and its value."""

from __future__ import annotations

import json

_VALUES = "a list of integers 0-65535"
_MISSING = object()  # a key absent from the file, unlike one set to null


def _wrong(where: str, field: str, value, expected: str) -> ValueError:
    shown = "missing" if value is _MISSING else _as_json(value)
    return ValueError(f"{where}: {field} is {shown} but must be {expected}")


def _as_json(value) -> str:
    """The value as the file spells it (null, "abc", 0.7), shortened: a message is one line."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_unknown_keys(d: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}")


def _text(where: str, field: str, value, optional: bool = False) -> str | None:
    if optional and value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _wrong(where, field, value, "a class name or null" if optional else "a non-empty text")
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true would pass as 1


def _mask_values(where: str, field: str, value) -> tuple[int, ...]:
    """A list of mask values, or one value alone (the short form of a single-value class)."""
    expected = _VALUES if field.endswith("values") else "an integer 0-65535"  # "value", "ignore_value"
    values = [value] if _is_int(value) else value
    if not isinstance(values, list | tuple):
        raise _wrong(where, field, value, expected)
    bad = [v for v in values if not (_is_int(v) and 0 <= v <= 65535)]
    if bad:
        raise ValueError(f"{where}: {field} is {_as_json(value)} but must be {expected} ({_as_json(bad[0])} is not)")
    return tuple(values)
