"""The codec layer's error, importable without the codecs."""

from __future__ import annotations

from dicomtwist.errors import DicomError


class CodecError(DicomError):
    """A conversion is impossible: no codec, corrupt or truncated stream, or
    pixel data that does not match its attributes.  The message is one line,
    fit for the log and for a failed sub-operation."""
