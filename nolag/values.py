"""Presence-data rules, written once for the SDK and the local broker.

The SDK checks data with these rules before it sends anything
(`nolag.protocol.validate_presence_data`, called by `NoLag.set_presence`), and the local
broker checks every received presence frame with the same function
(`nolag.broker.payload`), so a client never sends what its own broker refuses.

Presence data is a map of JSON-like values:

- map keys are ``str``;
- strings (keys and values) are valid UTF-8, which MessagePack requires: no lone
  surrogates such as ``"\\ud800"``;
- scalars are ``str``, ``bool``, ``None``, ``int`` from -2**63 to 2**64 - 1 (what
  MessagePack carries) and finite ``float`` (no NaN or infinity);
- containers are mappings (sent as MessagePack maps) and lists or tuples (sent as
  arrays), nested at most `MAX_DEPTH` levels: the data map itself is level 1;
- no ``bytes``: on the real broker a MessagePack ``bin`` that is not UTF-8 crashes the
  connection of every member who receives it (PROTOCOL.md, "Kraken defects"), so the
  SDK refuses to send one and the local broker refuses it with an error frame; nor
  sets, MessagePack extension types (``ExtType``, ``Timestamp``) or any other object.

Errors name the place with a Python-style path from the data map (``['a']['b'][0]``):

- `PresenceDataTypeError` (a ``TypeError``) for a value or key of the wrong kind;
- `PresenceDataLimitError` (a ``ValueError``) for data nested deeper than `MAX_DEPTH`
  levels or a container that contains itself (a cycle).

Both derive from `InvalidPresenceData`, whose ``hint`` (the message) is what the broker
puts in its ``invalid_presence`` error frame. The walk is recursive but bounded: it
refuses a container before descending past `MAX_DEPTH`, so a 5,000-level or cyclic value
is refused with one of these errors, never with ``RecursionError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, Union

from msgpack import ExtType

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "InvalidPresenceData",
    "PresenceDataLimitError",
    "PresenceDataTypeError",
    "check_presence_data",
    "format_path",
]

MAX_DEPTH: Final = 32
"""Deepest nesting of containers in presence data; the data map itself is level 1.

32 is far above any sensible presence (ids and short status strings) and well under the
MessagePack packer's own recursion limit (511) and Python's default recursion limit."""

INT_MIN: Final = -(2**63)
"""Smallest integer MessagePack carries (int 64)."""

INT_MAX: Final = 2**64 - 1
"""Largest integer MessagePack carries (uint 64)."""

PathItem = Union[str, int]
"""One step of a path: a map key or a list index."""

_KEY_SHOWN = 40
"""Longest key shown whole in a path; longer ones are cut (an error names, not dumps)."""


def format_path(path: tuple[PathItem, ...]) -> str:
    """Python-style subscripts for `path`: ``('a', 0)`` gives ``['a'][0]``, () gives ''."""
    parts = []
    for step in path:
        if isinstance(step, str) and len(step) > _KEY_SHOWN:
            parts.append(f"[{step[:_KEY_SHOWN]!r}...]")
        else:
            parts.append(f"[{step!r}]")
    return "".join(parts)


class InvalidPresenceData(Exception):
    """Presence data refused by the shared rules.

    ``path`` is the place (keys and indices from the data map), ``reason`` says what is
    wrong there, and the message (also ``hint``) reads
    ``presence data ['a'][0]: <reason>``.
    """

    def __init__(self, path: tuple[PathItem, ...], reason: str) -> None:
        """Keep the place and the reason; the message joins them."""
        where = format_path(path)
        super().__init__(f"presence data {where}: {reason}" if where else f"presence data {reason}")
        self.path = path
        self.reason = reason

    @property
    def hint(self) -> str:
        """The human-readable message (the broker's error-frame ``hint``)."""
        return str(self)


class PresenceDataTypeError(InvalidPresenceData, TypeError):
    """A value or key of a kind presence data may not hold (bytes, set, NaN, int key...)."""


class PresenceDataLimitError(InvalidPresenceData, ValueError):
    """Presence data nested deeper than `MAX_DEPTH` levels, or containing itself."""


class _Refused(Exception):
    """Raised inside the walk; the path is filled in as it unwinds (no cost on success)."""

    def __init__(self, limit: bool, reason: str) -> None:
        super().__init__(reason)
        self.limit = limit
        self.reason = reason
        self.path: list[PathItem] = []  # innermost step first


def _scalar_refusal(value: Any) -> _Refused:
    """Why a non-container value is refused."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _Refused(
            False,
            "bytes (a MessagePack binary) are not allowed; send text: a binary value that "
            "is not UTF-8 crashes every receiver on the real broker",
        )
    return _Refused(
        False,
        f"{type(value).__name__} is not JSON-like "
        "(use str, int, float, bool, None, lists and str-keyed mappings)",
    )


def _text_refusal(text: str, what: str) -> _Refused | None:
    """Why a str cannot go out as MessagePack str (UTF-8): a lone surrogate; else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return _Refused(
            False,
            f"{what} is not valid UTF-8 (a lone surrogate at index {exc.start}); "
            "MessagePack strings are UTF-8",
        )
    return None


def _int_refusal(value: int) -> _Refused:
    """Why an integer is refused (its digits are not shown: a huge int has too many)."""
    shown = str(value) if value.bit_length() <= 128 else f"of {value.bit_length()} bits"
    return _Refused(False, f"integer {shown} does not fit in 64 bits (MessagePack's range)")


def _copy(value: Any, level: int, ancestors: set[int], sort_keys: bool) -> Any:
    """A plain copy of one value at nesting `level` (containers), or raise _Refused."""
    if value is None:
        return value
    if isinstance(value, str):
        refusal = None if value.isascii() else _text_refusal(value, "str")
        if refusal is None:
            return value
        raise refusal
    if isinstance(value, int):  # bool included
        if INT_MIN <= value <= INT_MAX:
            return value
        raise _int_refusal(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise _Refused(False, f"{value!r} is not a finite number (no NaN or infinity)")
    is_map = isinstance(value, Mapping)
    if not is_map and (not isinstance(value, (list, tuple)) or isinstance(value, ExtType)):
        raise _scalar_refusal(value)  # ExtType is a tuple, but MessagePack sends an ext
    ident = id(value)
    if ident in ancestors:
        raise _Refused(True, "refers to itself (a container inside itself: a cycle)")
    if level >= MAX_DEPTH:
        raise _Refused(True, f"nested deeper than {MAX_DEPTH} levels")
    ancestors.add(ident)
    if is_map:
        result: Any = _copy_map(value, level + 1, ancestors, sort_keys)
    else:
        result = _copy_list(value, level + 1, ancestors, sort_keys)
    ancestors.discard(ident)
    return result


def _copy_map(
    value: Mapping[Any, Any], level: int, ancestors: set[int], sort_keys: bool
) -> dict[str, Any]:
    """A plain dict copy of a mapping whose items sit at nesting `level`."""
    items = list(value.items())
    for bad, _ in items:
        if not isinstance(bad, str):
            raise _Refused(
                False,
                f"key {bad!r:.60} is not a string ({type(bad).__name__}); keys must be strings",
            )  # raised before the loop below: the path names this map, not an item
        refusal = None if bad.isascii() else _text_refusal(bad, f"key {bad!r:.60}")
        if refusal is not None:
            raise refusal
    if sort_keys:
        items.sort(key=lambda item: item[0])
    out: dict[str, Any] = {}
    key: str = ""
    try:
        for key, item in items:
            out[key] = _copy(item, level, ancestors, sort_keys)
    except _Refused as exc:
        exc.path.append(key)
        raise
    return out


def _copy_list(value: Any, level: int, ancestors: set[int], sort_keys: bool) -> list[Any]:
    """A plain list copy of a list or tuple whose items sit at nesting `level`."""
    out: list[Any] = []
    try:
        for item in value:
            out.append(_copy(item, level, ancestors, sort_keys))
    except _Refused as exc:
        exc.path.append(len(out))  # the index of the item that failed
        raise
    return out


def check_presence_data(data: object, *, sort_keys: bool = False) -> dict[str, Any]:
    """Return a plain copy of presence `data` (dicts and lists), or raise naming the path.

    `data` must be a mapping of JSON-like values (see the module docstring for the rules
    and their sources). The copy keeps the caller's key order, or sorts keys at every
    level when `sort_keys` is true (the broker's canonical form).

    Raises PresenceDataTypeError (a TypeError) for a value or key of the wrong kind,
    PresenceDataLimitError (a ValueError) past `MAX_DEPTH` levels or for a cycle; both
    are InvalidPresenceData and name the path. Never RecursionError.
    """
    if not isinstance(data, Mapping):
        raise PresenceDataTypeError(
            (),
            f"must be a mapping (a MessagePack map) of JSON-like values, not {type(data).__name__}",
        )
    try:
        copied: dict[str, Any] = _copy(data, 0, set(), sort_keys)
    except _Refused as exc:
        path = tuple(reversed(exc.path))
        if exc.limit:
            raise PresenceDataLimitError(path, exc.reason) from None
        raise PresenceDataTypeError(path, exc.reason) from None
    return copied
