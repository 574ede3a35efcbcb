"""Optional libraries kept out of a daemon whose configuration does not use them.

Two of our dependencies import optional libraries as soon as they are
imported, used or not:

- Twisted imports pyOpenSSL (with cryptography and service_identity, about
  13 MiB resident) when ``twisted.internet.tcp``, ``posixbase`` or
  ``endpoints`` is first imported, to offer TLS on every TCP transport;
- pydicom imports numpy, Pillow, python-gdcm, the pylibjpeg plugins,
  pyjpegls and requests (about 40 MiB) at ``import pydicom``, to register
  its pixel data back ends.

Both treat a library that fails to import as not installed.  :func:`load`
imports them once, before anything else does, with the libraries the
configuration does not need hidden: a ``None`` in :data:`sys.modules` makes
``import name`` raise :class:`ImportError` (the import system's documented
way to block a module).  The names are restored afterwards, so a later
import of numpy or OpenSSL works; only the Twisted transports and
pydicom's pixel back-end registry of this process were built without them.

Nothing in the archive process needs pydicom's pixel back ends: pixel
conversions run in worker processes (:mod:`dicomtwist.codec.processes`),
which import pydicom afresh, and the negotiation tables come from the
installed distributions (:mod:`dicomtwist.codec.installed`).  Only the HTTP
layer renders images in this process, so a daemon serving DICOMweb loads
them.  TLS is loaded when a listener or move destination uses it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

#: What Twisted imports for TLS.
TLS_LIBRARIES = ("OpenSSL",)
#: What pydicom imports for its pixel back ends (and data downloads).
PIXEL_LIBRARIES = ("numpy", "PIL", "gdcm", "_gdcm", "pylibjpeg", "libjpeg", "openjpeg",
                   "rle", "jpeg_ls", "requests")
#: Endpoint types that need no TLS.
PLAIN_ENDPOINTS = frozenset({"tcp", "tcp6", "unix"})


@contextmanager
def hidden(names: Iterable[str]) -> Iterator[None]:
    """Make ``import name`` fail for each of ``names`` not yet imported,
    for the duration of the block."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def needs_tls(settings: Any) -> bool:
    """Whether a listener, the HTTP port, a move destination or the audit
    trail (``tls:HOST:PORT``) uses TLS."""
    descriptions = [*settings.listen, *([settings.http] if settings.http else [])]
    if any(d.split(":", 1)[0].strip().lower() not in PLAIN_ENDPOINTS for d in descriptions):
        return True
    audit = getattr(settings, "audit", None)
    if audit and not audit.lower().startswith(("udp:", "file:")):
        return True
    return any(getattr(d, "tls", False) for d in settings.destinations.values())


def needs_pixels(settings: Any) -> bool:
    """Whether this process decodes pixel data itself (DICOMweb rendering)."""
    return settings.http is not None


def load(tls: bool, pixels: bool) -> None:
    """Import Twisted's TCP transports and pydicom, without TLS unless
    ``tls`` and without pydicom's pixel back ends unless ``pixels``.

    Call it before anything imports ``twisted.internet.tcp`` or pydicom;
    afterwards it changes nothing.
    """
    with hidden(() if tls else TLS_LIBRARIES):
        import twisted.internet.endpoints  # noqa: F401
        import twisted.internet.posixbase  # noqa: F401
        import twisted.internet.tcp  # noqa: F401
    with hidden(() if pixels else PIXEL_LIBRARIES):
        import pydicom  # noqa: F401
