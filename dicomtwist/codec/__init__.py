"""Transfer-syntax conversion over pydicom's pixel back ends.

Pure, blocking functions; the network layers run :func:`transcode` in a
thread pool of their own.  :func:`can_convert` and :func:`preference` are
cheap and read nothing, for presentation-context negotiation.

Decoders: pydicom 3 with pylibjpeg-libjpeg (JPEG Baseline, Extended,
Lossless, SV1; JPEG-LS), pylibjpeg-openjpeg (JPEG 2000, HTJ2K),
pylibjpeg-rle (RLE).  Encoders: pyjpegls (JPEG-LS lossless and
near-lossless), pylibjpeg-openjpeg (JPEG 2000 lossless and lossy),
pylibjpeg-rle (RLE Lossless), python-gdcm (JPEG Lossless SV1), Pillow (JPEG
Baseline).  A syntax whose plugin is not installed is simply absent from
:data:`DECODABLE`, :data:`LOSSLESS_TARGETS` or :data:`LOSSY_TARGETS`.

Importing this package loads no codec library (nor numpy): the daemon
negotiates with these tables and runs conversions in worker processes
(:mod:`dicomtwist.codec.processes`).
"""

from dicomtwist.codec.errors import CodecError
from dicomtwist.codec.syntaxes import (
    DECODABLE,
    LOSSLESS_TARGETS,
    LOSSY_TARGETS,
    NATIVE,
    UNCOMPRESSED,
    can_convert,
    preference,
)
from dicomtwist.codec.transcode import transcode, transcode_bytes

__all__ = [
    "CodecError",
    "DECODABLE",
    "LOSSLESS_TARGETS",
    "LOSSY_TARGETS",
    "NATIVE",
    "UNCOMPRESSED",
    "can_convert",
    "preference",
    "transcode",
    "transcode_bytes",
]

