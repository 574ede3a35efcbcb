"""Content negotiation for DICOMweb: Accept header, media types, syntaxes.

PS3.18 8.7 ("Acceptable Media Types") lets a user agent list what it wants
in the ``Accept`` header field or the ``accept`` query parameter (PS3.18
8.3.3.1), both in RFC 9110 12.5.1 syntax.  DICOM media types may carry a
``transfer-syntax`` parameter (PS3.18 8.7.3.5.2), and multipart ones a
``type`` parameter naming the media type of the parts (PS3.18 8.7.3.5.1)::

    multipart/related; type="application/dicom"; transfer-syntax=*

This module is pure:

- :func:`parse_accept` reads the header (or the query parameter) into
  :class:`MediaRange` values, most preferred first;
- :func:`choose` picks the best of some offered single media types, for
  QIDO-RS and metadata (``application/dicom+json`` or ``application/json``);
- :func:`choose_multipart` picks the part media type and Transfer Syntax of
  a WADO-RS retrieve, from what is stored and what can be converted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from dicomtwist.web.dicomweb.multipart import parse_content_type

__all__ = [
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "MEDIA_TYPE_SYNTAXES",
    "MediaRange",
    "choose",
    "choose_multipart",
    "default_syntax",
    "parse_accept",
]

#: Explicit VR Little Endian: the default Transfer Syntax of
#: ``application/dicom`` (PS3.18 Table 8.7.3-2) and of uncompressed bulk
#: data, ``application/octet-stream`` (PS3.18 Table 8.7.3-4).
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

#: The Transfer Syntaxes that each compressed bulk data media type may
#: carry, the default first (PS3.18 Table 8.7.3-5, compressed pixel data of
#: Single Frame, Multi-frame and Video resources).  Keys are lower-cased
#: (PS3.18 spells ``video/H265``).  The RESTful default of ``image/jpeg`` is
#: JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), not JPEG Baseline.
MEDIA_TYPE_SYNTAXES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    ),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),  # RLE Lossless
    "image/jls": (
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    ),
    "image/jp2": (
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
    ),
    "image/jpx": (
        "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 (Lossless Only)
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2
    ),
    "image/jphc": (
        "1.2.840.10008.1.2.4.201",  # HTJ2K (Lossless Only)
        "1.2.840.10008.1.2.4.202",  # HTJ2K with RPCL Options (Lossless Only)
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    ),
    "image/jxl": (
        "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
        "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression
        "1.2.840.10008.1.2.4.112",  # JPEG XL
    ),
    "video/mpeg": (
        "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
        "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    ),
    "video/mp4": (
        "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile 4.1
        "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible
        "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 2D video
        "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 3D video
        "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo
    ),
    "video/h265": (
        "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile
        "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile
    ),
}

_TRANSFER_SYNTAX = "transfer-syntax"
_ANY_SYNTAX = "*"
# RFC 9110 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ),
# read leniently as to the number of digits and a missing leading zero.
_QVALUE_RE = re.compile(r"0(?:\.\d*)?|1(?:\.0*)?|\.\d+")
# One element of a comma-separated list; commas inside quoted strings do not
# split (an unterminated quote runs to the end and fails to parse later).
_ELEMENT_RE = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|[^,"])+', re.DOTALL)


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header (RFC 9110 12.5.1).

    :ivar type: the top-level type, lower-cased, or ``"*"``.
    :ivar subtype: the subtype, lower-cased, or ``"*"``.
    :ivar params: the media type parameters other than the weight, as
        ``(lower-cased name, value)`` pairs in header order.
    :ivar q: the weight, from 0 to 1.
    """

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...] = ()
    q: float = 1.0

    @property
    def essence(self) -> str:
        """``type/subtype``, without parameters."""
        return f"{self.type}/{self.subtype}"

    @property
    def specificity(self) -> tuple[int, int, int]:
        """How narrow the range is, for RFC 9110 12.5.1's rule that the
        most specific matching range decides: concrete type, concrete
        subtype, then the number of parameters."""
        return (self.type != "*", self.subtype != "*", len(self.params))

    def param(self, name: str) -> str | None:
        """The value of a parameter.

        :param name: the parameter name, in any case.
        :returns: its value, or ``None`` if the range does not have it.
        """
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None

    def matches(self, media_type: str) -> bool:
        """Whether this range's type and subtype cover a media type.

        Parameters are not compared.

        :param media_type: a concrete ``type/subtype``, in any case.
        :returns: ``True`` for ``*/*``, for ``type/*`` with the same type,
            and for the same essence.
        """
        main, _, sub = media_type.lower().partition("/")
        if self.type == "*":
            return True
        if self.type != main:
            return False
        return self.subtype in ("*", sub)


def _parse_range(element: str) -> MediaRange | None:
    """Parse one Accept element.

    :param element: e.g. ``multipart/related; type="application/dicom";
        q=0.9``.
    :returns: the range, or ``None`` if the element is malformed: bad
        syntax, a bad weight, or a wildcard type with a concrete subtype.
    """
    element = element.strip()
    if element == "*" or element.startswith("*;"):
        # A bare "*" (sent by old Java clients) can only mean "*/*".
        element = "*/*" + element[1:]
    try:
        media_type, params = parse_content_type(element)
    except ValueError:
        return None
    main, _, sub = media_type.partition("/")
    if main == "*" and sub != "*":
        return None
    q = 1.0
    weight = params.pop("q", None)
    if weight is not None:
        if _QVALUE_RE.fullmatch(weight) is None:
            return None
        q = float(weight)
    return MediaRange(main, sub, tuple(params.items()), q)


def parse_accept(value: str | None) -> list[MediaRange]:
    """Parse an Accept header field, or the ``accept`` query parameter.

    PS3.18 8.3.3.1 gives the query parameter the same syntax as the header
    field (a comma-separated list of media ranges); pass its (URL-decoded)
    value, or the values of repeated parameters joined by commas.

    Malformed elements are skipped.  If nothing usable is left (no header,
    an empty one, or only garbage) the result is ``[*/*]``: RFC 9110 12.5.1
    lets a server disregard an Accept it cannot use.

    Ranges with ``q=0`` are kept, at the end: they say what is *not*
    acceptable, and :func:`choose` and :func:`choose_multipart` honour them
    as exclusions (``*/*, application/json;q=0``).  Other callers should
    skip them.

    :param value: the header field value, or ``None`` if absent.
    :returns: the ranges by weight, highest first, then most specific first;
        equal ones keep header order.
    """
    ranges = []
    for element in _ELEMENT_RE.findall(value or ""):
        parsed = _parse_range(element)
        if parsed is not None:
            ranges.append(parsed)
    if not ranges:
        return [MediaRange("*", "*")]
    ranges.sort(key=lambda r: (-r.q, tuple(-s for s in r.specificity)))
    return ranges


def _offer_type_param(offer: str) -> tuple[str, str | None]:
    """Split an offered media type into its essence and ``type`` parameter.

    :param offer: e.g. ``multipart/related; type="application/dicom+xml"``.
    :returns: ``("multipart/related", "application/dicom+xml")``; the
        parameter is ``None`` if absent, and lower-cased.
    :raises ValueError: if the offer is not a media type.
    """
    media_type, params = parse_content_type(offer)
    part_type = params.get("type")
    return media_type, None if part_type is None else part_type.lower()


def _quality(accept: Sequence[MediaRange], offer: str) -> float:
    """The weight the user agent gives an offered media type.

    RFC 9110 12.5.1: the most specific range that matches decides.  Only
    the ``type`` parameter (the part type of a multipart offer) is compared;
    other parameters such as ``charset`` do not stop a range matching.

    :param accept: the parsed Accept ranges.
    :param offer: the offered media type.
    :returns: the weight, 0 if no range matches.
    """
    essence, part_type = _offer_type_param(offer)
    best: tuple[tuple[int, int, int], float] | None = None
    for media_range in accept:
        if not media_range.matches(essence):
            continue
        wanted = media_range.param("type")
        if wanted is not None and (
            part_type is None or not _range_of(wanted).matches(part_type)
        ):
            continue
        if best is None or media_range.specificity > best[0]:
            best = (media_range.specificity, media_range.q)
    return 0.0 if best is None else best[1]


def choose(accept: Sequence[MediaRange], offers: Sequence[str]) -> str | None:
    """Pick the offered media type the user agent likes best.

    :param accept: the result of :func:`parse_accept`.
    :param offers: the media types the server can produce, its own
        preference first (e.g. ``["application/dicom+json",
        "application/json"]``); they may carry a ``type`` parameter.
    :returns: the offer with the highest weight, the earlier offer on a tie,
        or ``None`` if none is acceptable: the caller answers 406 (PS3.18
        8.7.8.1).
    """
    best: str | None = None
    best_q = 0.0
    for offer in offers:
        q = _quality(accept, offer)
        if q > best_q:
            best, best_q = offer, q
    return best


def _range_of(media_type: str) -> MediaRange:
    """Read the value of a ``type`` parameter as a media range.

    :param media_type: e.g. ``application/dicom`` or ``image/*``.
    :returns: the range; a value that is no media type becomes one that
        matches nothing.
    """
    main, _, sub = media_type.strip().lower().partition("/")
    if not main or not sub:
        return MediaRange("\x00", "\x00")
    return MediaRange(main, sub)


def _part_types(media_range: MediaRange, part_types: Sequence[str]) -> Iterator[str]:
    """The part media types a range asks for, in the server's order.

    - ``*/*`` and ``multipart/*``, and ``multipart/related`` without the
      ``type`` parameter that PS3.18 8.7.3.5.1 requires: any part type;
    - ``multipart/related; type=X``: the part types that ``X`` (possibly
      ``image/*``) matches;
    - a single part range such as ``application/dicom``: the part types it
      matches; PS3.18 lets a bare ``application/dicom`` ask for instances.

    :param media_range: one range of the Accept header.
    :param part_types: the part media types the server can send.
    :returns: the matching part types.
    """
    if media_range.type == "multipart":
        if media_range.subtype not in ("related", "*"):
            return
        wanted = media_range.param("type")
        if wanted is None:
            yield from part_types
            return
        inner = _range_of(wanted)
        yield from (p for p in part_types if inner.matches(p))
        return
    yield from (p for p in part_types if media_range.matches(p))


def default_syntax(part_type: str) -> str:
    """The Transfer Syntax a part type gets when none is asked for.

    :param part_type: a part media type.
    :returns: the RESTful default of PS3.18 Table 8.7.3-5 for a compressed
        media type, else Explicit VR Little Endian (PS3.18 Tables 8.7.3-2
        and 8.7.3-4: ``application/dicom``, ``application/octet-stream``).
    """
    syntaxes = MEDIA_TYPE_SYNTAXES.get(part_type.lower())
    return syntaxes[0] if syntaxes else EXPLICIT_VR_LITTLE_ENDIAN


def _carries(part_type: str, syntax: str) -> bool:
    """Whether a part media type can carry data in a Transfer Syntax.

    :param part_type: a part media type.
    :param syntax: a Transfer Syntax UID.
    :returns: for the compressed media types of :data:`MEDIA_TYPE_SYNTAXES`
        whether the syntax is one of theirs; ``True`` for any other type
        (``application/dicom`` holds any syntax, and ``application/octet-
        stream`` is how frames go "as stored" to clients such as OHIF).
    """
    syntaxes = MEDIA_TYPE_SYNTAXES.get(part_type.lower())
    return syntaxes is None or syntax in syntaxes


class _Refusal(Enum):
    """The answer of :func:`_resolve` when a range refuses a part type."""

    REFUSED = "refused"


_REFUSED = _Refusal.REFUSED


def _resolve(
    media_range: MediaRange,
    part_type: str,
    stored_syntax: str | None,
    convertible: Callable[[str, str], bool],
) -> str | None | Literal[_Refusal.REFUSED]:
    """The Transfer Syntax a range accepts for one part type.

    :param media_range: one range of the Accept header.
    :param part_type: a part type the range asks for.
    :param stored_syntax: the syntax the data are stored in, or ``None``
        when there is nothing to negotiate.
    :param convertible: ``convertible(stored, wanted)`` says whether the
        server can convert the data.
    :returns: the syntax to send, ``None`` when ``stored_syntax`` is
        ``None``, or ``_REFUSED``.
    """
    wanted = media_range.param(_TRANSFER_SYNTAX)
    if stored_syntax is None:
        return None
    if wanted is not None:
        wanted = wanted.strip()
    if wanted == _ANY_SYNTAX:
        # PS3.18 8.7.3.5.2: "*" means the syntax the origin server has.
        if _carries(part_type, stored_syntax):
            return stored_syntax
        wanted = None
    if wanted is None:
        syntaxes = MEDIA_TYPE_SYNTAXES.get(part_type.lower())
        if syntaxes is not None and stored_syntax in syntaxes:
            # Already in a syntax of this compressed media type: sending it
            # as it is beats transcoding (and lossy data cannot be made
            # lossless anyway, PS3.18 8.7.3.3).
            return stored_syntax
        default = default_syntax(part_type)
        if stored_syntax == default or convertible(stored_syntax, default):
            return default
        return _REFUSED
    if not _carries(part_type, wanted):
        return _REFUSED
    if wanted == stored_syntax or convertible(stored_syntax, wanted):
        return wanted
    return _REFUSED


def _excluded(
    accept: Sequence[MediaRange],
    chosen_by: MediaRange,
    part_type: str,
    syntax: str | None,
) -> bool:
    """Whether a ``q=0`` range at least as specific forbids a choice.

    :param accept: all ranges.
    :param chosen_by: the positive range that accepted the choice.
    :param part_type: the chosen part type.
    :param syntax: the chosen Transfer Syntax.
    :returns: ``True`` if the user agent ruled the choice out (RFC 9110
        12.4.2: weight 0 means "not acceptable").
    """
    for media_range in accept:
        if media_range.q > 0 or media_range.specificity < chosen_by.specificity:
            continue
        if part_type not in _part_types(media_range, (part_type,)):
            continue
        wanted = media_range.param(_TRANSFER_SYNTAX)
        if wanted is None or wanted.strip() in (_ANY_SYNTAX, syntax):
            return True
    return False


def choose_multipart(
    accept: Sequence[MediaRange],
    part_types: Sequence[str],
    stored_syntax: str | None,
    convertible: Callable[[str, str], bool],
) -> tuple[str, str | None] | None:
    """Pick the part media type and Transfer Syntax of a WADO-RS response.

    Ranges are tried in the order of :func:`parse_accept` (weight, then
    specificity); the first acceptable one wins.  For each part type a
    range asks for (see PS3.18 8.7.3.5.1), its ``transfer-syntax``
    parameter (PS3.18 8.7.3.5.2) decides:

    - ``*``: the stored syntax, if the part type can carry it; otherwise as
      if the parameter were absent;
    - absent (and for ``*/*``, ``multipart/*``): the stored syntax if it is
      one of the part type's own compressed syntaxes (so
      ``type="image/jpeg"`` takes JPEG Baseline as stored); else the part
      type's default (:func:`default_syntax`: Explicit VR Little Endian for
      ``application/dicom`` and ``application/octet-stream``), if the data
      are stored in it or can be converted to it;
    - a UID: that syntax, if the part type can carry it and the data are
      stored in it or can be converted to it.

    :param accept: the result of :func:`parse_accept`.
    :param part_types: the part media types the resource can be sent as,
        the server's preference first (e.g. ``["application/dicom"]``, or
        ``["application/octet-stream", "image/jpeg"]`` for frames).
    :param stored_syntax: the Transfer Syntax UID of the stored data, or
        ``None`` if there is none to negotiate (every matching range is
        then acceptable, and the syntax returned is ``None``).
    :param convertible: ``convertible(stored, wanted)`` tells whether the
        server can transcode from one syntax to the other.
    :returns: ``(part media type, Transfer Syntax UID or None)``, or
        ``None`` if nothing is acceptable: the caller answers 406.
    """
    for media_range in accept:
        if media_range.q <= 0:
            continue
        for part_type in _part_types(media_range, part_types):
            syntax = _resolve(media_range, part_type, stored_syntax, convertible)
            if syntax is _REFUSED:
                continue
            if _excluded(accept, media_range, part_type, syntax):
                continue
            return part_type, syntax
    return None
