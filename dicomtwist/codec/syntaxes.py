"""Transfer syntaxes, what we can convert between them, and in which order.

Pure and cheap: nothing here reads a file or imports a codec.  Which
compressed syntaxes can be decoded or encoded is decided once, at import,
from the installed distributions (:mod:`dicomtwist.codec.installed`, the
rules of pydicom's pixel back ends), so a daemon negotiates conversions
without loading them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dicomtwist.codec import installed

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: The uncompressed little-endian syntaxes every peer accepts, best first.
UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)

#: Syntaxes whose pixel data is native (PS3.5 8.1.1); conversion between
#: them re-encodes the data set and copies (or byte-swaps) the pixel bytes.
NATIVE = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)

#: Encapsulated syntaxes (PS3.5 8.2, A.4) this module knows about.
COMPRESSED = (
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K,
    RLE_LOSSLESS,
)

#: Every syntax we can read pixels from: the native ones, and each
#: compressed one for which an installed pydicom plugin decodes frames.
DECODABLE = NATIVE | frozenset(uid for uid in COMPRESSED if installed.can_decode(uid))

#: Lossless compressed syntaxes we can write, best first (compression ratio
#: and speed: JPEG-LS, then JPEG 2000, then JPEG Lossless SV1, then RLE).
LOSSLESS_TARGETS = tuple(
    uid
    for uid in (JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS, JPEG_LOSSLESS_SV1, RLE_LOSSLESS)
    if installed.can_encode(uid)
)

#: Lossy compressed syntaxes we can write, only ever with ``allow_lossy``.
LOSSY_TARGETS = tuple(
    uid
    for uid in (JPEG_LS_NEAR_LOSSLESS, JPEG_2000, JPEG_BASELINE)
    if installed.can_encode(uid)
)

#: Lossy Image Compression Method (0028,2114) per syntax (PS3.3 C.7.6.1.1.5.1).
LOSSY_METHODS = {
    JPEG_BASELINE: "ISO_10918_1",
    JPEG_EXTENDED: "ISO_10918_1",
    JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1",
    JPEG_2000: "ISO_15444_1",
    HTJ2K: "ISO_15444_15",
}

#: Syntaxes whose stream is lossy whatever its parameters (PS3.5 8.2.1):
#: data decoded from them is marked Lossy Image Compression "01".
ALWAYS_LOSSY = frozenset({JPEG_BASELINE, JPEG_EXTENDED})

#: Lossy JPEG syntaxes whose decoders convert YCbCr to RGB, as DCMTK's
#: dcmdjpeg does by default (PS3.5 8.2.1).
_JPEG_COLOUR_CONVERTED = frozenset({JPEG_BASELINE, JPEG_EXTENDED})

#: JPEG 2000 decoders undo the multi-component transform (PS3.5 8.2.4).
_J2K_FAMILY = frozenset(
    {JPEG_2000_LOSSLESS, JPEG_2000, HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K}
)


@dataclass(frozen=True)
class EncodingLimits:
    """What one encoder accepts (PS3.5 Tables 8.2.1-1 to 8.2.4-1, narrowed to
    what the plugin in use writes).

    :param photometric: Photometric Interpretation values of the decoded data.
    :param bits_allocated: Bits Allocated values.
    """

    photometric: frozenset[str]
    bits_allocated: frozenset[int]


_MONO = frozenset({"MONOCHROME1", "MONOCHROME2"})

#: Per target syntax, the pixel data it can be encoded from.
LIMITS = {
    RLE_LOSSLESS: EncodingLimits(
        _MONO | {"PALETTE COLOR", "RGB", "YBR_FULL"}, frozenset({8, 16})
    ),
    JPEG_LS_LOSSLESS: EncodingLimits(
        _MONO | {"PALETTE COLOR", "RGB", "YBR_FULL"}, frozenset({8, 16})
    ),
    JPEG_LS_NEAR_LOSSLESS: EncodingLimits(_MONO | {"RGB", "YBR_FULL"}, frozenset({8, 16})),
    JPEG_2000_LOSSLESS: EncodingLimits(
        _MONO | {"PALETTE COLOR", "RGB", "YBR_FULL"}, frozenset({8, 16})
    ),
    JPEG_2000: EncodingLimits(_MONO | {"RGB", "YBR_FULL"}, frozenset({8, 16})),
    JPEG_LOSSLESS_SV1: EncodingLimits(
        _MONO | {"PALETTE COLOR", "RGB"}, frozenset({8, 16})
    ),
    JPEG_BASELINE: EncodingLimits(_MONO | {"RGB"}, frozenset({8})),
}

ORDER_KEYS = ("stored", "lossless", "uncompressed", "lossy")


def decoded_photometric(source: str, photometric: str) -> str:
    """The Photometric Interpretation of pixels decoded from `source`.

    Lossy JPEG colour comes back RGB (the decoder converts YCbCr), JPEG 2000
    YBR_ICT/YBR_RCT comes back RGB (the decoder undoes the transform); every
    other value is unchanged (PS3.5 8.2.1, 8.2.4).

    :param source: the stored transfer syntax UID.
    :param photometric: the stored Photometric Interpretation.
    """
    if source in _JPEG_COLOUR_CONVERTED and photometric in ("YBR_FULL_422", "YBR_FULL"):
        return "RGB"
    if source in _J2K_FAMILY and photometric in ("YBR_ICT", "YBR_RCT"):
        return "RGB"
    return photometric


def converts_colour(source: str) -> bool:
    """Whether decoding `source` is asked to convert YCbCr colour to RGB."""
    return source in _JPEG_COLOUR_CONVERTED


def can_convert(
    source: str,
    target: str,
    *,
    allow_lossy: bool = False,
    photometric: str | None = None,
    bits_allocated: int | None = None,
) -> bool:
    """Whether an instance stored in `source` can be written in `target`.

    Identity is always possible; native syntaxes convert into each other;
    anything decodable converts to a native syntax; anything decodable
    converts to a compressed syntax we encode, lossy ones only with
    `allow_lossy`.  When given, `photometric` (as stored) and
    `bits_allocated` are checked against the target encoder's limits.

    :param source: the stored transfer syntax UID.
    :param target: the wanted transfer syntax UID.
    :param allow_lossy: whether a lossy target may be written.
    :param photometric: the stored Photometric Interpretation, if known.
    :param bits_allocated: the stored Bits Allocated, if known.
    :returns: ``True`` if :func:`dicomtwist.codec.transcode` can do it.
    """
    if source == target:
        return True
    if source not in DECODABLE:
        return False
    if target in NATIVE:
        # 1-bit data is only ever copied between native syntaxes.
        return source in NATIVE or bits_allocated != 1
    if target in LOSSY_TARGETS:
        if not allow_lossy:
            return False
    elif target not in LOSSLESS_TARGETS:
        return False
    if source in NATIVE and photometric == "YBR_FULL_422":
        # Sub-sampled native colour would need re-sampling first.
        return False
    limits = LIMITS[target]
    if bits_allocated is not None and bits_allocated not in limits.bits_allocated:
        return False
    if photometric is not None:
        if decoded_photometric(source, photometric) not in limits.photometric:
            return False
    return True


def preference(
    source: str,
    offered: Iterable[str],
    *,
    allow_lossy: bool = False,
    order: Iterable[str] = ("stored", "lossless", "uncompressed"),
    photometric: str | None = None,
    bits_allocated: int | None = None,
) -> list[str]:
    """The syntaxes of `offered` to propose or choose for `source`, best first.

    Groups, in `order`: ``"stored"`` (the source syntax itself),
    ``"lossless"`` (:data:`LOSSLESS_TARGETS`, best first), ``"uncompressed"``
    (:data:`UNCOMPRESSED`, then Deflated, then Explicit VR Big Endian), and
    ``"lossy"`` (:data:`LOSSY_TARGETS`; only with `allow_lossy`, and last
    unless `order` names it).  Each syntax appears once, and only if
    :func:`can_convert` says so.

    :param source: the stored transfer syntax UID.
    :param offered: the syntaxes the peer accepts (or we may propose).
    :param allow_lossy: whether lossy targets may be chosen.
    :param order: the groups in order of preference.
    :param photometric: passed on to :func:`can_convert`.
    :param bits_allocated: passed on to :func:`can_convert`.
    :raises ValueError: if `order` names an unknown group.
    """
    order = tuple(order)
    unknown = [key for key in order if key not in ORDER_KEYS]
    if unknown:
        raise ValueError(f"unknown preference group(s) {unknown!r}, want {ORDER_KEYS!r}")
    if allow_lossy and "lossy" not in order:
        order += ("lossy",)
    available = set(offered)
    groups = {
        "stored": (source,),
        "lossless": LOSSLESS_TARGETS,
        "uncompressed": UNCOMPRESSED
        + (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN),
        "lossy": LOSSY_TARGETS if allow_lossy else (),
    }
    chosen: list[str] = []
    for key in order:
        for uid in groups[key]:
            if uid in available and uid not in chosen and can_convert(
                source,
                uid,
                allow_lossy=allow_lossy,
                photometric=photometric,
                bits_allocated=bits_allocated,
            ):
                chosen.append(uid)
    return chosen
