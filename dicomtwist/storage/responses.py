"""C-FIND response identifiers encoded straight from index rows.

Building a pydicom ``Dataset`` per match and writing it with pydicom costs
far more than the query: a response to a study query is a few short
strings.  :class:`ResponseEncoder` writes the bytes of a response directly
in Implicit or Explicit VR Little Endian, the same bytes pydicom writes
for the ``Dataset`` the index builds (``Index._response``):

- per plan, every element that never varies (empty keys, sequences,
  Query/Retrieve Level, Specific Character Set) is encoded once by pydicom
  from that very ``Dataset``, and each column's tag, VR and length layout
  is packed once;
- per row, only the values are encoded, following pydicom's rules for
  their VR: PN loses trailing ``=`` (empty component groups), UI values
  are stripped and padded with NUL, other strings are padded with a space,
  IS and US come from integers, multiple values stay joined with ``\\``;
  a row with a non-ASCII value is UTF-8 with Specific Character Set
  ``ISO_IR 192`` (PS3.5 6.1).

Anything else (another transfer syntax, a request character set whose
ASCII is not plain ASCII, a value that is not what the column normally
holds: an over-long or non-numeric string, a number out of range, and
every row of a plan returning the items of a kept sequence) goes through
the ``Dataset`` and pydicom as before, so the bytes never differ.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

from dicomtwist.dimse.codec import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    element_prefix,
    encode_dataset,
)

__all__ = ["UTF8", "ResponseEncoder"]

UTF8 = "ISO_IR 192"
"""The Specific Character Set of a response holding a non-ASCII value."""

_SPECIFIC_CHARACTER_SET = 0x00080005

#: Request character sets that encode ASCII text as ASCII, with no escape
#: sequences (PS3.3 C.12.1.1.2): a row of ASCII values is then the same
#: bytes whatever the set.  Others (ISO 2022 code extensions, JIS X 0201)
#: take the pydicom path.
_ASCII_CHARACTER_SETS = frozenset({
    "", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126",
    "ISO_IR 127", "ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 203",
    UTF8, "GB18030", "GBK",
})

#: Text VRs pydicom writes in the data set's character set.
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
#: String VRs pydicom writes as they are, in the default repertoire.
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR"})
_DATE_TIME_VRS = frozenset({"DA", "DT", "TM"})
#: A DS value pydicom writes back exactly as given (its ``original_string``).
_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
_DS_MAX = 16
_IS_MIN, _IS_MAX = -(2 ** 31), 2 ** 31 - 1
_US = struct.Struct("<H")
_MAX_SHORT = 0xFFFF

# Value encoders: (value, utf8) -> the padded value bytes, or None when the
# value must take the pydicom path.  ``utf8`` is true when the row holds a
# non-ASCII value; otherwise every str of the row is ASCII.


def _text(value: Any, utf8: bool) -> bytes | None:
    if value.__class__ is not str:
        return None
    try:
        raw = value.encode("utf-8" if utf8 else "ascii")
    except UnicodeEncodeError:  # a lone surrogate: pydicom's replacement rules
        return None
    return raw + b" " if len(raw) % 2 else raw


def _person_name(value: Any, utf8: bool) -> bytes | None:
    if value.__class__ is not str:
        return None
    # pydicom drops empty trailing component groups of each value.
    if "\\" in value:
        value = "\\".join(v.rstrip("=") for v in value.split("\\"))
    else:
        value = value.rstrip("=")
    try:
        raw = value.encode("utf-8" if utf8 else "ascii")
    except UnicodeEncodeError:
        return None
    return raw + b" " if len(raw) % 2 else raw


def _plain(value: Any, utf8: bool) -> bytes | None:
    if value.__class__ is not str or (utf8 and not value.isascii()):
        return None
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def _uid(value: Any, utf8: bool) -> bytes | None:
    if value.__class__ is not str or (utf8 and not value.isascii()):
        return None
    # pydicom's UID strips each value.
    if "\\" in value:
        value = "\\".join(v.strip() for v in value.split("\\"))
    else:
        value = value.strip()
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _integer_string(value: Any, utf8: bool) -> bytes | None:
    if value.__class__ is not int or not _IS_MIN <= value <= _IS_MAX:
        return None
    raw = str(value).encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def _decimal_string(value: Any, utf8: bool) -> bytes | None:
    if value.__class__ is not str:
        return None
    for v in value.split("\\"):
        if len(v) > _DS_MAX or not _DECIMAL.fullmatch(v):
            return None
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def _unsigned_short(value: Any, utf8: bool) -> bytes | None:
    if value.__class__ is not int or not 0 <= value <= _MAX_SHORT:
        return None
    return _US.pack(value)


def _value_encoder(vr: str) -> Callable[[Any, bool], bytes | None] | None:
    """The value encoder of a VR, or None if values of it take the pydicom path."""
    if vr in _TEXT_VRS:
        return _text
    if vr == "PN":
        return _person_name
    if vr in _PLAIN_VRS:
        # With datetime conversion on, pydicom rewrites DA/DT/TM values.
        return None if vr in _DATE_TIME_VRS and pydicom_config.datetime_conversion else _plain
    if vr == "UI":
        return _uid
    if vr == "IS":
        return _integer_string
    if vr == "DS":
        return None if pydicom_config.use_DS_decimal else _decimal_string
    if vr == "US":
        return _unsigned_short
    return None


def _split(encoded: bytes, transfer_syntax: str) -> dict[int, bytes]:
    """The elements of a flat data set pydicom encoded, by tag.

    :raises ValueError: an element with an undefined length.
    """
    implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    elements = {}
    offset = 0
    while offset < len(encoded):
        group, element = struct.unpack_from("<HH", encoded, offset)
        if implicit:
            (length,) = struct.unpack_from("<L", encoded, offset + 4)
            end = offset + 8 + length
        else:
            vr = encoded[offset + 4:offset + 6].decode("ascii")
            prefix, length_struct = element_prefix(0, vr, transfer_syntax)
            start = offset + len(prefix)
            (length,) = length_struct.unpack_from(encoded, start)
            end = start + length_struct.size + length
        if length == 0xFFFFFFFF:
            raise ValueError("undefined length")
        elements[(group << 16) | element] = encoded[offset:end]
        offset = end
    return elements


class ResponseEncoder:
    """Encodes the C-FIND responses of one query plan, from its rows.

    :param keys: the plan's return keys, in request order: each has ``tag``,
        ``vr`` and ``expression`` (a column of the row, or None for a key
        that is always empty or constant).
    :param build: the pydicom path: a row -> its response ``Dataset``.
    :param character_set: the request's Specific Character Set, or None.
    :param transfer_syntax: the presentation context's transfer syntax.
    """

    def __init__(self, keys: Sequence[Any], build: Callable[[tuple], Dataset],
                 character_set: object, transfer_syntax: str) -> None:
        self._build = build
        self._transfer_syntax = transfer_syntax
        #: Rows that took the pydicom path.
        self.fallbacks = 0
        self._slots: list[tuple] | None = None
        try:
            self._slots = self._compile(keys, character_set)
        except Exception:
            # Whatever pydicom makes of this plan, it makes of every row.
            self._slots = None

    def _compile(self, keys: Sequence[Any], character_set: object) -> list[tuple] | None:
        """The elements, by tag, as ``(position, element, prefix, pack,
        encoder, limit)``: ``position`` is the value's index in the row (the
        row's first column is the primary key), 0 for constant elements
        (``element`` holds their bytes; adjacent ones are joined), -1 for
        Specific Character Set (``element``: its bytes for an ASCII row and
        for a UTF-8 one).  For a value, ``element`` is the empty element
        (for a null), and the value is written as ``prefix``,
        ``pack(length)`` and ``encoder(value, utf8)``, at most ``limit``
        bytes long."""
        transfer_syntax = self._transfer_syntax
        if transfer_syntax not in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN):
            return None
        if character_set is not None and (not isinstance(character_set, str)
                                          or character_set not in _ASCII_CHARACTER_SETS):
            return None
        columns: dict[int, tuple[int, str]] = {}
        position = 1
        for key in keys:
            if key.vr == "SQ":
                if key.expression:
                    return None  # items vary by row: the pydicom path
                continue
            if key.expression:
                columns[int(key.tag)] = (position, key.vr)
                position += 1
            elif isinstance(key.constant, str) and not key.constant.isascii():
                return None
        # pydicom encodes the response of a row of nulls: every element as
        # it is when empty, and the constant ones.
        empty = _split(encode_dataset(self._build((0,) + (None,) * len(columns)),
                                      transfer_syntax), transfer_syntax)
        utf8 = _split(encode_dataset(_character_set_dataset(UTF8), transfer_syntax),
                      transfer_syntax)
        charset = (empty.pop(_SPECIFIC_CHARACTER_SET, b""), utf8[_SPECIFIC_CHARACTER_SET])
        elements = [(_SPECIFIC_CHARACTER_SET, (-1, charset, b"", None, None, 0))]
        for tag, element in empty.items():
            if tag not in columns:
                elements.append((tag, (0, element, b"", None, None, 0)))
                continue
            position, vr = columns.pop(tag)
            encoder = _value_encoder(vr)
            if encoder is None:
                return None
            prefix, length = element_prefix(tag, vr, transfer_syntax)
            limit = _MAX_SHORT if length.size == 2 else 0xFFFFFFFE
            elements.append((tag, (position, element, prefix, length.pack, encoder, limit)))
        if columns:
            return None  # a value pydicom did not write
        elements.sort(key=lambda item: item[0])
        slots: list[tuple] = []
        for _, slot in elements:
            if slot[0] == 0 and slots and slots[-1][0] == 0:
                slots[-1] = (0, slots[-1][1] + slot[1], b"", None, None, 0)
            else:
                slots.append(slot)
        return slots

    @property
    def direct(self) -> bool:
        """Whether rows are encoded without pydicom (when their values allow)."""
        return self._slots is not None

    def encode(self, row: tuple) -> bytes:
        """The encoded response identifier of one row."""
        slots = self._slots
        if slots is not None:
            utf8 = False
            for value in row:
                if value.__class__ is str and not value.isascii():
                    utf8 = True
                    break
            parts = []
            append = parts.append
            for position, element, prefix, pack, encoder, limit in slots:
                if position <= 0:
                    append(element[utf8] if position else element)
                    continue
                value = row[position]
                if value is None:
                    append(element)
                    continue
                raw = encoder(value, utf8)
                if raw is None or len(raw) > limit:
                    break
                append(prefix)
                append(pack(len(raw)))
                append(raw)
            else:
                return b"".join(parts)
        self.fallbacks += 1
        return encode_dataset(self._build(row), self._transfer_syntax)


def _character_set_dataset(character_set: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = character_set
    return ds
