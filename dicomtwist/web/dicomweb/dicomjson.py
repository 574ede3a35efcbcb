"""The DICOM JSON Model (PS3.18 F.2) of a data set, straight from its bytes.

:func:`encode_metadata` walks one encoded data set (as stored: no preamble,
no File Meta Information) and writes its DICOM JSON object without building
a pydicom ``Dataset``: it is what the archive keeps, at ingest, for WADO-RS
``/metadata`` (PS3.18 10.4.1.1.2), so it is on the hot path.  The rules:

- PS3.18 F.2.1: one object per data set, keyed by the tag as eight upper-case
  hex digits, each member an object with ``"vr"`` and one of ``"Value"`` (an
  array), ``"InlineBinary"`` (base64) or ``"BulkDataURI"``.
- PS3.18 F.2.2, F.2.3: numbers (IS DS SL SS SV UL US UV FL FD) as JSON
  numbers, AT as eight hex digits, PN as objects with the non-empty groups
  among "Alphabetic", "Ideographic", "Phonetic", SQ as an array of objects.
- PS3.18 F.2.5: an empty attribute has no "Value"; an empty value among
  several is ``null``.
- PS3.18 F.2.7: a binary value (OB OD OF OL OV OW UN) longer than the bulk
  threshold, and encapsulated pixel data always, becomes a BulkDataURI,
  ``bulkdata/<path>``, which the caller rewrites into an absolute URL.

How a value is read from its bytes (padding, splitting, ambiguous VRs, VRs
of private elements) follows pydicom 3, the reference our tests compare
against; where pydicom departs from PS3.18 we follow the standard (the
differences are listed in ``tests/test_dicomjson.py``).  Anything unusual
(a character set other than the default, ISO_IR 100 or ISO_IR 192, a value
of the wrong length, an ambiguous VR that needs elements not seen yet) makes
the whole data set go through pydicom and :func:`dataset_json` instead.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from collections.abc import Callable
from functools import lru_cache
from io import BytesIO
from struct import Struct, error as StructError, unpack_from
from typing import Any

from pydicom import config
from pydicom.datadict import DicomDictionary, dictionary_VR, private_dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from dicomtwist.storage.header import (  # the scanner's encoding vocabulary
    _ITEM,
    _ITEM_DELIMITATION,
    _LUT_DATA,
    _LUT_DESCRIPTOR,
    _PIXEL_REPRESENTATION,
    _SEQUENCE_DELIMITATION,
    _SPECIFIC_CHARACTER_SET,
    _UNDEFINED,
    MAX_DEPTH,
    HeaderError,
    _sequence_end,
    _undefined_end,
)

__all__ = [
    "BULK_THRESHOLD",
    "dataset_json",
    "decode_bulk_path",
    "encode_metadata",
    "find_bulk_value",
]

#: Binary values longer than this many bytes become BulkDataURIs.
BULK_THRESHOLD = 1024

#: The prefix of every BulkDataURI we write, relative to the instance's URL.
BULK_PREFIX = "bulkdata/"

_PIXEL_DATA = 0x7FE00010

_DEFLATED = "1.2.840.10008.1.2.1.99"

#: Explicit VR -> (VR, size of the element header) (PS3.5 7.1.2).
_HEADER_SIZE: dict[bytes, tuple[str, int]] = {
    **{vr.encode(): (vr, 12) for vr in "OB OD OF OL OV OW SQ SV UC UN UR UT UV".split()},
    **{vr.encode(): (vr, 8) for vr in
       "AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split()},
}
_ELEMENT = {
    (True, True): Struct("<HHL"),
    (True, False): Struct(">HHL"),
    (False, True): Struct("<HH2sH"),
    (False, False): Struct(">HH2sH"),
}
_ITEM_HEADER = {True: Struct("<HHL"), False: Struct(">HHL")}
_LENGTH = {True: Struct("<L"), False: Struct(">L")}

#: Binary VRs (PS3.18 F.2.7: InlineBinary or BulkDataURI).
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Numeric binary VRs -> (struct code, size of one value).
_NUMBERS = {"US": ("H", 2), "SS": ("h", 2), "UL": ("L", 4), "SL": ("l", 4),
            "UV": ("Q", 8), "SV": ("q", 8), "FL": ("f", 4), "FD": ("d", 8)}
#: Text VRs decoded with the Specific Character Set (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset({"LO", "SH", "UC", "LT", "ST", "UT", "PN"})
#: VRs pydicom reads as one value, backslashes included (PS3.5 6.2).
_SINGLE = frozenset({"LT", "ST", "UT", "UR"})
#: VRs an explicit UN may be read as without a fallback (pydicom replaces an
#: explicit UN by the dictionary's VR: ``config.replace_un_with_known_vr``).
_SIMPLE = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT",
                     "PN", "SH", "SL", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UR", "US",
                     "UT", "UV", "OB", "OD", "OF", "OL", "OV", "OW"})
#: pydicom's tags whose first LUT Descriptor value is read as unsigned
#: (``pydicom.hooks.raw_element_value``; PS3.3 C.11.1.1.1).
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
#: 'OB or OW' elements: OW in Implicit VR (PS3.5 A.1), OB when encapsulated.
_OB_OR_OW = "OB or OW"

#: Public tags -> VR, for Implicit VR (PS3.5 7.1.3, PS3.6).
_PUBLIC_VR: dict[int, str] = {tag: entry[0] for tag, entry in DicomDictionary.items()}

#: The character sets read without pydicom: (0008,0005) value -> codec.
_FAST_CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1",
                  "ISO_IR 192": "utf_8"}

#: JSON's number grammar (RFC 8259 6): such DS text is written as it is.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")

_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]


class _Fallback(Exception):
    """The fast encoder cannot encode this data set exactly: use pydicom."""


class _Context:
    """What decoding a data set's elements depends on (one per data set)."""

    __slots__ = ("codec", "creators", "pixel_rep", "inherited", "lut_first", "prefix",
                 "depth", "assumed")

    def __init__(self, codec: str, inherited: object, prefix: str, depth: int) -> None:
        #: Python codec of the text VRs (PS3.5 6.1.2.3), the parent's until
        #: this data set's own (0008,0005).
        self.codec = codec
        #: Private creator element (gggg,00xx) as group << 8 | xx -> value.
        self.creators: dict[int, str] | None = None
        #: This data set's Pixel Representation, None until seen.
        self.pixel_rep: int | None = None
        #: The Pixel Representation pydicom passes down from the parent
        #: (``Dataset._pixel_rep``): int, None (none), or ``_UNKNOWN``.
        self.inherited = inherited
        #: First LUT Descriptor value, for LUT Data's 'US or OW'.
        self.lut_first: int | None = None
        #: Bulk data path of this data set: "" or "<seqtag>/<index>/".
        self.prefix = prefix
        self.depth = depth
        #: A 'US or SS' was read as US on the assumption that this data set
        #: has no Pixel Data (pydicom's rule when no Pixel Representation).
        self.assumed = False


_UNKNOWN = object()


@lru_cache(maxsize=4096)
def _repeater_vr(tag: int) -> str | None:
    """The VR of a public tag not in the plain dictionary (repeating
    groups such as 60xx), or None if unknown."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def _private_vr(tag: int, creator: str) -> str:
    """The VR of a private element from pydicom's private dictionary, or UN
    (PS3.5 6.2.2: an unknown private element in Implicit VR is UN)."""
    try:
        return private_dictionary_VR(tag, creator)
    except KeyError:
        return "UN"


@lru_cache(maxsize=256)
def _codec(value: str) -> str:
    """The codec for a (0008,0005) value we decode ourselves.

    :raises _Fallback: any other character set (ISO 2022 code extensions,
        GB18030...): pydicom decodes it.
    """
    parts = value.rstrip(" \0").split("\\")
    if len(parts) != 1 or parts[0] not in _FAST_CHARSETS:
        raise _Fallback(f"character set {value!r}")
    return _FAST_CHARSETS[parts[0]]


@lru_cache(maxsize=8192)
def _key(tag: int, vr: str) -> str:
    """The start of a member: ``"GGGGEEEE":{"vr":"VR"`` (PS3.18 F.2.1)."""
    return f'"{tag:08X}":{{"vr":"{vr}"'


def _transfer_syntax(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of a transfer syntax's data set.

    :raises ValueError: not a transfer syntax pydicom knows.
    """
    uid = UID(transfer_syntax.rstrip("\0 "))
    deflated = uid == _DEFLATED or uid.is_deflated
    try:
        return uid.is_implicit_VR, uid.is_little_endian, deflated
    except ValueError:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}") from None


def _inflate(buffer: bytes | memoryview) -> bytes:
    """The data set of a Deflated transfer syntax (PS3.5 A.5: raw deflate)."""
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(buffer)


def _float_text(value: float) -> str:
    """A float as JSON: repr, or for the non-finite values JSON cannot
    spell (RFC 8259 6), a string."""
    if math.isfinite(value):
        return repr(value)
    return '"NaN"' if value != value else ('"Infinity"' if value > 0 else '"-Infinity"')


def _ds_text(value: str) -> str:
    """One DS value (PS3.5 6.2) as JSON text: a number (PS3.18 F.2.3.1), the
    text itself if it is already a JSON number; null if empty; a string if
    it is not a number."""
    value = value.strip(" ")
    if not value:
        return "null"
    if _JSON_NUMBER.fullmatch(value):
        return value
    try:
        number = float(value)
    except ValueError:
        return _quote(value)
    return repr(number) if math.isfinite(number) else _quote(value)


def _is_text(value: str) -> str:
    """One IS value (PS3.5 6.2) as JSON text: an integer (PS3.18 F.2.3.1);
    null if empty; a decimal is truncated as pydicom does; a string if it is
    not a number."""
    value = value.strip(" ")
    if not value:
        return "null"
    if _INTEGER.fullmatch(value):
        return str(int(value))
    try:
        number = float(value)
    except ValueError:
        return _quote(value)
    return str(int(number)) if math.isfinite(number) else _quote(value)


def _pn_text(value: str) -> str:
    """One PN value as JSON (PS3.18 F.2.2): its non-empty component groups;
    null if all are empty."""
    groups = value.split("=")
    parts = []
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups):
        if group:
            parts.append(f'"{name}":{_quote(group)}')
    return "{" + ",".join(parts) + "}" if parts else "null"


def _strings(vr: str, raw: memoryview, codec: str) -> list[str] | str | None:
    """The values of a text element, as pydicom splits and trims them.

    :returns: the list of values (empty strings among several), one string,
        or None if empty.
    :raises _Fallback: the text does not decode with the codec.
    """
    if vr in _CHARSET_VRS:
        try:
            text = str(raw, codec)
        except UnicodeDecodeError:
            raise _Fallback("undecodable text") from None
    else:
        text = str(raw, "latin_1")
    if vr in _SINGLE:
        text = text.rstrip() if vr == "UR" else text.rstrip("\0 ")
        return text or None
    if vr == "AE":
        values = [v.strip() for v in text.split("\\")]
    elif vr in ("LO", "SH", "UC"):
        values = [v.rstrip("\0 ") for v in text.split("\\")]
    elif vr == "PN":
        values = text.rstrip("\0 ").split("\\")
    else:
        # AS CS DA DT TM UI DS IS: padding trimmed from the end only.
        values = text.rstrip(" \0").split("\\")
    if len(values) == 1:
        return values[0] or None
    return values


class _Encoder:
    """One walk over one data set's bytes, writing its DICOM JSON text."""

    def __init__(self, view: memoryview, bulk_threshold: int) -> None:
        self.view = view
        self.threshold = bulk_threshold
        self.out: list[str] = []

    def dataset(self, pos: int, end: int, implicit: bool, little: bool,
                ctx: _Context) -> int:
        """Write one data set's object (PS3.18 F.2.1).

        :param pos: offset of its first element.
        :param end: offset just after it, or -1: it ends with an Item
            Delimitation Item (PS3.5 7.5.2).
        :returns: the offset just after it (and its delimiter).
        """
        view = self.view
        out = self.out
        size_of = len(view)
        element = _ELEMENT[implicit, little].unpack_from
        length32 = _LENGTH[little].unpack_from
        out.append("{")
        first = len(out)
        while True:
            if pos >= end >= 0:
                break
            if implicit:
                group, number, length = element(view, pos)
                size = 8
                vr = ""
            else:
                group, number, vr_bytes, length = element(view, pos)
            tag = group << 16 | number
            if group == 0xFFFE:
                if tag == _ITEM_DELIMITATION and end < 0:
                    pos += 8
                    break
                raise HeaderError(f"unexpected ({group:04X},{number:04X}) at offset {pos:#x}")
            if not implicit:
                try:
                    vr, size = _HEADER_SIZE[vr_bytes]
                except KeyError:
                    raise _Fallback(f"unknown VR {bytes(vr_bytes)!r}") from None
                if size == 12:
                    length = length32(view, pos + 8)[0]
            start = pos + size
            if length == _UNDEFINED:
                pos = self.undefined(tag, vr, start, implicit, little, ctx, len(out) > first)
                continue
            pos = start + length
            if pos > size_of:
                raise HeaderError(f"value of ({group:04X},{number:04X}) runs past the end")
            if number == 0:
                # Group Length (PS3.5 7.2): how it was encoded, not data.
                continue
            if implicit:
                vr = self.implicit_vr(tag, group, number, ctx)
            elif vr == "UN":
                vr = self.explicit_un(tag, group, number, length, ctx)
            if len(out) > first:
                out.append(",")
            self.element(tag, vr, start, length, implicit, little, ctx)
        out.append("}")
        return pos

    def implicit_vr(self, tag: int, group: int, number: int, ctx: _Context) -> str:
        """The VR of an Implicit VR element, as pydicom finds it (PS3.5
        6.2.2: the dictionary's; a private creator is LO; an unknown private
        element is UN)."""
        vr = _PUBLIC_VR.get(tag)
        if vr is None:
            if group & 1:
                if 0x10 <= number <= 0xFF:
                    return "LO"
                creator = (ctx.creators or {}).get(group << 8 | number >> 8)
                return _private_vr(tag, creator) if creator and number >> 8 else "UN"
            vr = _repeater_vr(tag) or "UN"
        return vr

    def explicit_un(self, tag: int, group: int, number: int, length: int,
                    ctx: _Context) -> str:
        """The VR pydicom reads an explicit UN element as
        (``config.replace_un_with_known_vr``): the dictionary's, if known."""
        if not config.replace_un_with_known_vr:
            return "UN"
        if group & 1:
            vr = self.implicit_vr(tag, group, number, ctx)
        elif length < 0xFFFF:
            vr = _PUBLIC_VR.get(tag) or _repeater_vr(tag) or "UN"
        else:
            return "UN"
        if vr != "UN" and vr not in _SIMPLE:
            raise _Fallback("explicit UN of an SQ or ambiguous VR")
        return vr

    def undefined(self, tag: int, vr: str, start: int, implicit: bool, little: bool,
                  ctx: _Context, comma: bool) -> int:
        """Write an element of undefined length: a sequence (PS3.5 7.5) or
        encapsulated data (PS3.5 A.4), which is always bulk data.

        :returns: the offset after its Sequence Delimitation Item.
        """
        view = self.view
        out = self.out
        if tag == _PIXEL_DATA and ctx.assumed:
            raise _Fallback("'US or SS' read before Pixel Data")
        known = vr
        if implicit:
            known = _PUBLIC_VR.get(tag) or _repeater_vr(tag) or ""
            if not known:
                item = _ITEM_HEADER[little].unpack_from(view, start)
                known = "SQ" if (item[0] << 16 | item[1]) == _ITEM else ""
        elif vr == "UN":
            # PS3.5 6.2.2: a UN value of undefined length is a sequence in
            # Implicit VR Little Endian.
            known = "SQ"
        if comma:
            out.append(",")
        if known == "SQ":
            seq_implicit, seq_little = (True, True) if vr == "UN" else (implicit, little)
            out.append(_key(tag, "SQ"))
            return self.sequence(tag, start, -1, seq_implicit, seq_little, ctx)
        if not known:
            raise _Fallback("undefined length element of unknown VR")
        # Encapsulated (PS3.5 A.4), or an OB/OW of undefined length.
        if implicit:
            end = _sequence_end(view, start, True, little, ctx.depth + 1, tag)
        else:
            end = _undefined_end(view, start, vr, little, ctx.depth + 1, tag)
        out.append(_key(tag, "OB" if known in (_OB_OR_OW, "OB") else
                        ("OW" if known in ("OW", "US or OW", "US or SS or OW") else known)))
        out.append(f',"BulkDataURI":"{BULK_PREFIX}{ctx.prefix}{tag:08X}"}}')
        return end + 8

    def sequence(self, tag: int, pos: int, length: int, implicit: bool, little: bool,
                 ctx: _Context) -> int:
        """Write the rest of an SQ member: ``,"Value":[items]}`` (PS3.18
        F.2.1), nothing if it has no items.

        :param length: the value's length, -1 if undefined (PS3.5 7.5.2).
        :returns: the offset just after the value (and its delimiter).
        """
        if ctx.depth >= MAX_DEPTH:
            raise HeaderError(f"sequences nested deeper than {MAX_DEPTH}")
        view = self.view
        out = self.out
        item = _ITEM_HEADER[little].unpack_from
        end = pos + length if length >= 0 else -1
        index = 0
        prefix = f"{ctx.prefix}{tag:08X}/"
        inherited = ctx.inherited if ctx.pixel_rep is None else ctx.pixel_rep
        if length < 0:
            # pydicom passes the Pixel Representation down only into the
            # items of defined-length sequences (read as raw elements).
            inherited = None
        elif ctx.pixel_rep is None and tag < _PIXEL_REPRESENTATION:
            # pydicom passes down the Pixel Representation of the whole
            # parent data set, which may come later.
            inherited = _UNKNOWN
        mark = len(out)
        out.append(',"Value":[')
        while not pos >= end >= 0:
            group, number, item_length = item(view, pos)
            marker = group << 16 | number
            if marker == _SEQUENCE_DELIMITATION and end < 0:
                pos += 8
                break
            if marker != _ITEM:
                raise HeaderError(f"({group:04X},{number:04X}) at offset {pos:#x}: "
                                  "not an item")
            if index:
                out.append(",")
            child = _Context(ctx.codec, inherited, f"{prefix}{index}/", ctx.depth + 1)
            if item_length == _UNDEFINED:
                pos = self.dataset(pos + 8, -1, implicit, little, child)
            else:
                self.dataset(pos + 8, pos + 8 + item_length, implicit, little, child)
                pos += 8 + item_length
            index += 1
        if index:
            out.append("]}")
        else:
            # PS3.18 F.2.5: an empty sequence has no "Value".
            out[mark] = "}"
        return pos

    def element(self, tag: int, vr: str, start: int, length: int, implicit: bool,
                little: bool, ctx: _Context) -> None:
        """Write one member of defined length (PS3.18 F.2)."""
        out = self.out
        view = self.view
        if tag == _PIXEL_DATA and ctx.assumed:
            raise _Fallback("'US or SS' read before Pixel Data")
        if vr == "SQ":
            out.append(_key(tag, "SQ"))
            self.sequence(tag, start, length, implicit, little, ctx)
            return
        if " or " in vr:
            vr = self.ambiguous(tag, vr, start, length, implicit, little, ctx)
        if vr in _BINARY:
            out.append(_key(tag, vr))
            if not length:
                out.append("}")
            elif length > self.threshold:
                out.append(f',"BulkDataURI":"{BULK_PREFIX}{ctx.prefix}{tag:08X}"}}')
            else:
                encoded = base64.b64encode(view[start:start + length]).decode("ascii")
                out.append(f',"InlineBinary":"{encoded}"}}')
            return
        out.append(_key(tag, vr))
        if not length:
            if tag == _PIXEL_REPRESENTATION:
                raise _Fallback("empty Pixel Representation")
            out.append("}")
            return
        numbers = _NUMBERS.get(vr)
        if numbers is not None:
            code, size = numbers
            count, odd = divmod(length, size)
            if odd:
                raise _Fallback("numeric value of the wrong length")
            values = unpack_from(f"{'<' if little else '>'}{count}{code}", view, start)
            if tag == _PIXEL_REPRESENTATION:
                ctx.pixel_rep = values[0]
                if code != "H":
                    raise _Fallback("Pixel Representation not US")
            elif tag in _LUT_DESCRIPTORS:
                if tag == _LUT_DESCRIPTOR:
                    ctx.lut_first = values[0] & 0xFFFF
                if count > 1 and values[0] < 0:
                    values = (values[0] + 65536, *values[1:])
            if code in "fd":
                text = ",".join(map(_float_text, values))
            else:
                text = ",".join(map(str, values))
            out.append(f',"Value":[{text}]}}')
            return
        if vr == "AT":
            count, odd = divmod(length, 4)
            if odd:
                raise _Fallback("AT value of the wrong length")
            words = unpack_from(f"{'<' if little else '>'}{2 * count}H", view, start)
            text = ",".join(f'"{words[i]:04X}{words[i + 1]:04X}"'
                            for i in range(0, 2 * count, 2))
            out.append(f',"Value":[{text}]}}')
            return
        raw = view[start:start + length]
        if tag == _SPECIFIC_CHARACTER_SET:
            ctx.codec = _codec(str(raw, "latin_1"))
        values = _strings(vr, raw, ctx.codec)
        if values is None:
            out.append("}")
            return
        if vr == "DS":
            convert: Callable[[str], str] = _ds_text
        elif vr == "IS":
            convert = _is_text
        elif vr == "PN":
            convert = _pn_text
        else:
            if isinstance(values, str):
                out.append(f',"Value":[{_quote(values)}]}}')
            else:
                text = ",".join(_quote(v) if v else "null" for v in values)
                out.append(f',"Value":[{text}]}}')
            if group_is_creator(tag):
                self.creator(tag, values, ctx)
            return
        if isinstance(values, str):
            text = convert(values)
            out.append("}" if text == "null" else f',"Value":[{text}]}}')
        else:
            out.append(f',"Value":[{",".join(map(convert, values))}]}}')

    def creator(self, tag: int, value: list[str] | str, ctx: _Context) -> None:
        """Remember a private creator (PS3.5 7.8.1) for its block's VRs."""
        if ctx.creators is None:
            ctx.creators = {}
        if isinstance(value, str):
            ctx.creators[(tag >> 16) << 8 | (tag & 0xFF)] = value

    def ambiguous(self, tag: int, vr: str, start: int, length: int, implicit: bool,
                  little: bool, ctx: _Context) -> str:
        """Resolve an ambiguous dictionary VR as pydicom does
        (``pydicom.filewriter.correct_ambiguous_vr_element``).

        'US or SS' follows the Pixel Representation of the nearest data set
        that has one (PS3.3 C.7.6.3.1); LUT Data is US for a one-entry LUT
        (PS3.3 C.11.1.1.1), else OW; other binary ones are OW in Implicit VR
        (PS3.5 A.1).

        :raises _Fallback: what decides is not known yet.
        """
        if vr == "US or SS":
            if ctx.pixel_rep is not None:
                pixel_rep = ctx.pixel_rep
            elif tag < _PIXEL_REPRESENTATION or ctx.inherited is _UNKNOWN:
                raise _Fallback("Pixel Representation not known yet")
            elif ctx.inherited is not None:
                pixel_rep = ctx.inherited  # type: ignore[assignment]
            else:
                # pydicom: US if the data set has no Pixel Data either.
                pixel_rep = 0
                ctx.assumed = True
            return "US" if pixel_rep == 0 else "SS"
        if tag == _LUT_DATA:
            if ctx.lut_first is None:
                raise _Fallback("LUT Data without LUT Descriptor")
            return "US" if ctx.lut_first == 1 else "OW"
        if vr == _OB_OR_OW and not implicit:
            raise _Fallback("'OB or OW' in explicit VR")  # cannot happen
        return "OW"


def group_is_creator(tag: int) -> bool:
    """True for a private creator element (gggg,0010-00FF), odd gggg
    (PS3.5 7.8.1)."""
    return bool(tag & 0x10000) and 0x10 <= (tag & 0xFFFF) <= 0xFF


def encode_metadata(buffer: bytes | memoryview, transfer_syntax: str, *,
                    bulk_threshold: int = BULK_THRESHOLD) -> bytes:
    """The DICOM JSON object (PS3.18 F.2) of one encoded data set.

    :param buffer: the data set as stored, without preamble or File Meta
        Information.
    :param transfer_syntax: the UID of its transfer syntax: Implicit VR LE,
        Explicit VR LE or BE, Deflated Explicit VR LE, or any encapsulated
        one.
    :param bulk_threshold: binary values longer than this (in bytes) become
        ``"BulkDataURI":"bulkdata/<path>"``; encapsulated Pixel Data always
        does.
    :returns: UTF-8 JSON, compact separators.
    :raises ValueError: the transfer syntax is unknown or the data set is
        not well formed (:class:`~dicomtwist.storage.header.HeaderError`).
    """
    implicit, little, deflated = _transfer_syntax(transfer_syntax)
    if deflated:
        buffer = _inflate(buffer)
    with memoryview(buffer) as view:
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        encoder = _Encoder(view, bulk_threshold)
        try:
            encoder.dataset(0, len(view), implicit, little,
                            _Context("latin_1", None, "", 0))
            return "".join(encoder.out).encode("utf-8")
        except _Fallback:
            pass
        except StructError:
            raise HeaderError("truncated data set") from None
        try:
            ds = read_dataset(BytesIO(view), implicit, little)
        except Exception as e:
            raise HeaderError(f"pydicom cannot read the data set: {e}") from None
    model = dataset_json(ds, bulk_threshold=bulk_threshold)
    return json.dumps(model, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def decode_bulk_path(path: str) -> tuple[int, ...] | None:
    """Parse a bulk data path: ``00540016/0/00281201`` -> (tag, index, tag).

    :returns: tags at even positions, item indexes (0-based) at odd ones;
        None if malformed.
    """
    parts = path.split("/")
    if len(parts) % 2 == 0:
        return None
    result = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if len(part) != 8 or not all(c in "0123456789ABCDEFabcdef" for c in part):
                return None
            result.append(int(part, 16))
        else:
            if not part.isdigit() or not part.isascii() or len(part) > 9:
                return None
            result.append(int(part))
    return tuple(result)


def _elements(view: memoryview, pos: int, end: int, implicit: bool, little: bool):
    """Yield (tag, vr, value start, value stop, next offset, value implicit,
    value little) for each element of a data set (PS3.5 7.1); ``end`` -1:
    up to an Item Delimitation Item.  A value of undefined length stops
    before its Sequence Delimitation Item."""
    element = _ELEMENT[implicit, little].unpack_from
    length32 = _LENGTH[little].unpack_from
    while not pos >= end >= 0:
        if implicit:
            group, number, length = element(view, pos)
            vr, size = "", 8
        else:
            group, number, vr_bytes, length = element(view, pos)
        tag = group << 16 | number
        if group == 0xFFFE:
            if tag == _ITEM_DELIMITATION and end < 0:
                return
            raise HeaderError(f"unexpected ({group:04X},{number:04X}) at offset {pos:#x}")
        if not implicit:
            try:
                vr, size = _HEADER_SIZE[vr_bytes]
            except KeyError:
                raise HeaderError(f"unknown VR at offset {pos:#x}") from None
            if size == 12:
                length = length32(view, pos + 8)[0]
        start = pos + size
        inner = (implicit, little)
        if length == _UNDEFINED:
            if implicit:
                stop = _sequence_end(view, start, True, little, 1, tag)
            else:
                stop = _undefined_end(view, start, vr, little, 1, tag)
                if vr == "UN":
                    inner = (True, True)
            pos = stop + 8
        else:
            stop = pos = start + length
            if pos > len(view):
                raise HeaderError(f"value at offset {start:#x} runs past the end")
        yield tag, vr, start, stop, pos, inner


def find_bulk_value(buffer: bytes | memoryview, transfer_syntax: str,
                    path: str) -> bytes | memoryview | None:
    """The value bytes of the element a bulk data path names.

    :param path: as in our BulkDataURIs, after ``bulkdata/``.
    :returns: the value as stored (encapsulated Pixel Data: its items, up to
        the Sequence Delimitation Item); None if there is no such element.
    :raises ValueError: unknown transfer syntax, or malformed data set.
    """
    steps = decode_bulk_path(path)
    if steps is None:
        return None
    implicit, little, deflated = _transfer_syntax(transfer_syntax)
    if deflated:
        buffer = _inflate(buffer)
    view = memoryview(buffer)
    if view.itemsize != 1 or view.ndim != 1:
        view = view.cast("B")
    pos, end = 0, len(view)
    try:
        for depth in range(0, len(steps), 2):
            wanted = steps[depth]
            for tag, _vr, start, stop, _next, inner in _elements(view, pos, end, implicit,
                                                                little):
                if tag == wanted:
                    break
                if tag > wanted:
                    return None
            else:
                return None
            if depth + 1 == len(steps):
                return view[start:stop]
            implicit, little = inner
            item = _ITEM_HEADER[little].unpack_from
            index, pos = steps[depth + 1], start
            while True:
                if pos >= stop:
                    return None
                group, number, length = item(view, pos)
                if group << 16 | number != _ITEM:
                    return None
                item_end = (_item_stop(view, pos + 8, implicit, little)
                            if length == _UNDEFINED else pos + 8 + length)
                if not index:
                    pos, end = pos + 8, (-1 if length == _UNDEFINED else item_end)
                    break
                index -= 1
                pos = item_end
    except StructError:
        raise HeaderError("truncated data set") from None
    return None


def _item_stop(view: memoryview, pos: int, implicit: bool, little: bool) -> int:
    """The offset after an undefined-length item's Item Delimitation Item."""
    last = pos
    for *_, nxt, _inner in _elements(view, pos, -1, implicit, little):
        last = nxt
    return last + 8


def _default_bulk_uri(path: str) -> str:
    """Our relative BulkDataURI for a bulk data path."""
    return BULK_PREFIX + path


def dataset_json(ds: Dataset, *, bulk_threshold: int = BULK_THRESHOLD,
                 bulk_uri: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The DICOM JSON Model (PS3.18 F.2) of an in-memory pydicom data set,
    by the same rules as :func:`encode_metadata`.

    :param bulk_threshold: binary values longer than this become bulk data.
    :param bulk_uri: makes the BulkDataURI of a bulk data path
        (``00540016/0/00281201``); by default ``bulkdata/<path>``.
    :raises ValueError: pydicom cannot read an element's value.
    """
    return _dataset_json(ds, "", bulk_threshold, bulk_uri or _default_bulk_uri)


def _dataset_json(ds: Dataset, prefix: str, threshold: int,
                  bulk_uri: Callable[[str], str]) -> dict[str, Any]:
    """:func:`dataset_json` of a data set at bulk data path ``prefix``."""
    result: dict[str, Any] = {}
    for elem in ds:
        tag = int(elem.tag)
        if not tag & 0xFFFF:
            continue  # Group Length (PS3.5 7.2)
        key = f"{tag:08X}"
        vr = str(elem.VR)
        value = elem.value
        member: dict[str, Any]
        if vr == "SQ":
            items = [_dataset_json(item, f"{prefix}{key}/{i}/", threshold, bulk_uri)
                     for i, item in enumerate(value or ())]
            member = {"vr": vr, "Value": items} if items else {"vr": vr}
        elif vr in _BINARY or " or " in vr and isinstance(value, bytes):
            if " or " in vr:
                vr = "OB" if elem.is_undefined_length else "OW"
            member = {"vr": vr}
            if elem.is_undefined_length or value and len(value) > threshold:
                member["BulkDataURI"] = bulk_uri(prefix + key)
            elif value:
                member["InlineBinary"] = base64.b64encode(value).decode("ascii")
        else:
            member = {"vr": vr}
            values = _json_values(vr, elem)
            if values:
                member["Value"] = values
        result[key] = member
    return result


def _json_values(vr: str, elem: Any) -> list[Any]:
    """The "Value" array of a non-binary, non-SQ element (PS3.18 F.2)."""
    if elem.VM == 0:
        return []
    raw = elem.value if elem.VM > 1 else [elem.value]
    single = len(raw) == 1
    values: list[Any] = []
    for v in raw:
        if v is None or v == "":
            values.append(None)
        elif vr == "PN":
            groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"),
                              str(v).split("=")))
            pn = {k: g for k, g in groups.items() if g}
            values.append(pn or None)
        elif vr == "AT":
            values.append(f"{int(v):08X}")
        elif vr in ("IS", "US", "SS", "UL", "SL", "UV", "SV"):
            try:
                values.append(int(v))
            except (TypeError, ValueError):
                values.append(str(v).strip())
        elif vr in ("DS", "FL", "FD"):
            try:
                number = float(v)
            except (TypeError, ValueError):
                number = math.nan
            if math.isfinite(number):
                values.append(number)
            elif vr == "DS":
                values.append(str(v).strip())
            else:
                values.append(json.loads(_float_text(number)))
        else:
            values.append(str(v))
    if single and values == [None]:
        return []
    return values
