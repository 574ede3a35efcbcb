"""Which pixel codecs are installed, read from the installed distributions'
metadata: nothing is imported.

The archive negotiates with these answers (:mod:`dicomtwist.codec.syntaxes`)
while its pixel conversions run in worker processes; importing pydicom's
back ends to ask them (:mod:`dicomtwist.codec.backends`) would load numpy
and every codec library into the daemon (about 40 MiB).  The rules are
pydicom 3's plugin requirements (``pydicom.pixels.decoders``/``encoders``,
``is_available``) and ours for the encoders pydicom lacks;
``tests/test_codec`` checks that both give the same answers.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import metadata

_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
_JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
_JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
_JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
_JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
_JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
_JPEG_2000 = "1.2.840.10008.1.2.4.91"
_HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_RLE_LOSSLESS = "1.2.840.10008.1.2.5"


@cache
def version(distribution: str) -> tuple[int, ...]:
    """The installed version of a distribution (its leading numbers), or
    ``()`` when it is not installed."""
    try:
        text = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def _at_least(distribution: str, *minimum: int) -> bool:
    found = version(distribution)
    return bool(found) and found >= minimum


def _pylibjpeg(plugin: str, *minimum: int) -> bool:
    return _at_least("pylibjpeg", 2, 0) and _at_least(plugin, *minimum)


def _decoders() -> dict[str, bool]:
    gdcm = _at_least("python-gdcm", 3, 0)
    libjpeg = _pylibjpeg("pylibjpeg-libjpeg", 2, 0, 2)
    openjpeg = _pylibjpeg("pylibjpeg-openjpeg", 2, 0)
    # Pillow's wheels carry libjpeg and OpenJPEG; its JPEG 2000 decoder
    # needs numpy.
    pillow = _at_least("pillow", 10, 0)
    pillow_j2k = pillow and bool(version("numpy"))
    jpegls = _at_least("pyjpegls", 1, 2)
    return {
        _JPEG_BASELINE: gdcm or libjpeg or pillow,
        _JPEG_EXTENDED: gdcm or libjpeg or pillow,
        _JPEG_LOSSLESS: gdcm or libjpeg,
        _JPEG_LOSSLESS_SV1: gdcm or libjpeg,
        _JPEG_LS_LOSSLESS: gdcm or libjpeg or jpegls,
        _JPEG_LS_NEAR_LOSSLESS: gdcm or libjpeg or jpegls,
        _JPEG_2000_LOSSLESS: gdcm or openjpeg or pillow_j2k,
        _JPEG_2000: gdcm or openjpeg or pillow_j2k,
        **{uid: openjpeg for uid in _HTJ2K},
        # pydicom's own RLE decoder needs nothing more.
        _RLE_LOSSLESS: True,
    }


def _encoders() -> dict[str, bool]:
    jpegls = _at_least("pyjpegls", 1, 3)
    openjpeg = _pylibjpeg("pylibjpeg-openjpeg", 2, 2)
    return {
        # pydicom's own RLE encoder needs nothing more.
        _RLE_LOSSLESS: True,
        _JPEG_LS_LOSSLESS: jpegls,
        _JPEG_LS_NEAR_LOSSLESS: jpegls,
        _JPEG_2000_LOSSLESS: openjpeg,
        _JPEG_2000: openjpeg,
        # Ours (backends.py): any python-gdcm; Pillow's libjpeg.
        _JPEG_LOSSLESS_SV1: bool(version("python-gdcm")),
        _JPEG_BASELINE: _at_least("pillow", 10, 0),
    }


def can_decode(uid: str) -> bool:
    """Whether an installed pydicom plugin decodes ``uid`` (compressed syntaxes)."""
    return _decoders().get(uid, False)


def can_encode(uid: str) -> bool:
    """Whether we have an installed encoder for ``uid`` (compressed syntaxes)."""
    return _encoders().get(uid, False)
