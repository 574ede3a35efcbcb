"""Optional libraries kept out of a daemon whose configuration does not use them.

Two of our dependencies import optional libraries as soon as they are
imported, used or not:

- Twisted imports pyOpenSSL (with cryptography and service_identity, about
  13 MiB resident) when ``twisted.internet.tcp``, ``posixbase`` or
  ``endpoints`` is first imported, to offer TLS on every TCP transport;
- pydicom imports numpy, Pillow, python-gdcm, the pylibjpeg plugins,
  pyjpegls and requests (about 40 MiB) at ``import pydicom``, to register
  its pixel data back ends.

Both treat a library that fails to import as not installed.  So does
the standard library with its own bindings to the system's OpenSSL
(:data:`STANDARD_OPENSSL`): ``asyncio`` and ``http.client``, which
Twisted imports in any case, import ``ssl``, and ``hashlib`` imports
``_hashlib``; loading either maps libcrypto and runs OpenSSL's start-up
(about 4.5 MiB resident), and a daemon that serves neither TLS nor HTTP
uses neither (pyOpenSSL, Twisted's TLS, has its own).  :func:`load`
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

The standard library's OpenSSL must be hidden before Twisted is first
imported: :mod:`dicomtwist.tap` imports Twisted inside
:func:`standard_openssl_hidden`, which hides it only in a process that has
not loaded it yet (the ``dicomqr`` script, and ``twistd``, which imports
the plugin before anything loads it; never a test runner's process).  Until :func:`load`, which knows the configuration, ``hashlib``
then computes its digests with the interpreter's built-in code (the same
results; slower only on long inputs, and the archive hashes only UIDs);
with TLS or HTTP, :func:`load` reloads the modules that looked for it
(:data:`LOOKING_FOR_OPENSSL`: ``http.client`` and ``urllib.request``,
whose HTTPS classes prometheus-client imports, ``hashlib`` and ``hmac``,
for the HTTP users' PBKDF2).  What stays without it is asyncio's own TLS,
which nothing here uses (Twisted's TLS is pyOpenSSL, also under the
asyncio reactor).  In a lean process, code that needs ``http.client``'s
or ``urllib``'s HTTPS classes (prometheus-client imports them) must call
:func:`standard_openssl_back` before importing it: the ``--workers``
supervisor therefore names prometheus-client's variable itself
(``workers.METRICS_ENVIRONMENT``) instead of importing
:mod:`dicomtwist.metrics`.

pydicom's dictionary of private tags (:data:`PRIVATE_DICTIONARY`, about
1.5 MiB resident) is read the first time something asks for it (naming or
typing a private element), not at ``import pydicom``: see
:class:`PrivateDictionaries`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

#: What Twisted imports for TLS.
TLS_LIBRARIES = ("OpenSSL",)
#: What pydicom imports for its pixel back ends (and data downloads).
PIXEL_LIBRARIES = ("numpy", "PIL", "gdcm", "_gdcm", "pylibjpeg", "libjpeg", "openjpeg",
                   "rle", "jpeg_ls", "requests")
#: The standard library's bindings to the system's OpenSSL.
STANDARD_OPENSSL = ("ssl", "_ssl", "_hashlib")
#: pydicom's module holding its dictionary of private tags.
PRIVATE_DICTIONARY = "pydicom._private_dict"
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


def lean() -> bool:
    """Whether this process has loaded none of :data:`STANDARD_OPENSSL`."""
    return not any(name in sys.modules for name in STANDARD_OPENSSL)


#: Modules were imported while the standard library's OpenSSL was hidden,
#: and :func:`standard_openssl_back` has not reloaded them since.
_imported_without = False


def standard_openssl_hidden() -> AbstractContextManager[None]:
    """:func:`hidden` of :data:`STANDARD_OPENSSL` in a :func:`lean`
    process; otherwise (OpenSSL mapped already) a block that hides
    nothing."""
    global _imported_without
    if not lean():
        return hidden(())
    _imported_without = True
    return hidden(STANDARD_OPENSSL)


#: Modules that look for the standard library's OpenSSL when imported, in
#: the order :func:`standard_openssl_back` reloads them (``urllib.request``
#: after ``http.client``, whose HTTPS classes it takes).
LOOKING_FOR_OPENSSL = ("http.client", "urllib.request", "hashlib", "hmac")


def standard_openssl_back() -> None:
    """Reload the :data:`LOOKING_FOR_OPENSSL` modules imported while it was
    hidden (:func:`standard_openssl_hidden`), so that they find it: HTTPS
    classes, hashlib's OpenSSL digests and PBKDF2; also after something
    has loaded OpenSSL since (psycopg does).  Nothing to do in a process
    that had it when Twisted was imported (tests)."""
    global _imported_without
    if not _imported_without:
        return
    for name in LOOKING_FOR_OPENSSL:
        module = sys.modules.get(name)
        if module is not None:
            importlib.reload(module)
    _imported_without = False


def load(tls: bool, pixels: bool) -> None:
    """Import Twisted's TCP transports and pydicom, without TLS unless
    ``tls`` and without pydicom's pixel back ends unless ``pixels``;
    pydicom's private dictionary is read on first use.  With either, the
    standard library's OpenSSL comes back (:func:`standard_openssl_back`).

    Call it before anything imports ``twisted.internet.tcp`` or pydicom;
    afterwards it changes nothing.
    """
    if tls or pixels:
        standard_openssl_back()
    with hidden(()) if tls or pixels else standard_openssl_hidden():
        with hidden(() if tls else TLS_LIBRARIES):
            import twisted.internet.endpoints  # noqa: F401
            import twisted.internet.posixbase  # noqa: F401
            import twisted.internet.tcp  # noqa: F401
        if "pydicom" not in sys.modules:
            defer_private_dictionary()
        with hidden(() if pixels else PIXEL_LIBRARIES):
            import pydicom  # noqa: F401


class PrivateDictionaries(dict):  # type: ignore[type-arg]
    """pydicom's ``private_dictionaries``, read from :data:`PRIVATE_DICTIONARY`
    on first use.

    ``pydicom.datadict`` binds the name at import and reads it with
    ``[]`` and ``setdefault`` (``add_private_dict_entries``); every method
    of a dictionary here reads the real one in first, then becomes a plain
    dictionary's (the class changes to :class:`_Read`), so what pydicom
    sees is the same as before, entries added by a program included.
    """

    _lock = threading.Lock()

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__()
        #: Where the real dictionary is.
        self.spec: importlib.machinery.ModuleSpec | None = spec

    def read(self) -> None:
        """Read the real dictionary in (once; thread-safe)."""
        with self._lock:
            if self.spec is None:
                return
            module = importlib.util.module_from_spec(self.spec)
            assert self.spec.loader is not None
            self.spec.loader.exec_module(module)
            dict.update(self, module.private_dictionaries)
            self.spec = None
            self.__class__ = _Read


class _Read(dict):  # type: ignore[type-arg]
    """A :class:`PrivateDictionaries` once read: a plain dictionary."""


def _reading_first(name: str) -> Any:
    method = getattr(dict, name)

    def first_read(self: PrivateDictionaries, *args: Any, **kwargs: Any) -> Any:
        self.read()
        return method(self, *args, **kwargs)

    first_read.__name__ = name
    return first_read


for _name in ("__getitem__", "__setitem__", "__delitem__", "__contains__", "__iter__",
              "__len__", "__reversed__", "__repr__", "__eq__", "__ne__", "__or__", "__ror__",
              "__ior__", "get", "keys", "values", "items", "setdefault", "update", "pop",
              "popitem", "copy", "clear"):
    setattr(PrivateDictionaries, _name, _reading_first(_name))
del _name


def defer_private_dictionary() -> PrivateDictionaries | None:
    """Before ``import pydicom``: stand a module in for
    :data:`PRIVATE_DICTIONARY` whose ``private_dictionaries`` is a
    :class:`PrivateDictionaries` over the real one.  None (nothing done)
    when pydicom is imported already or has no such module."""
    if "pydicom" in sys.modules or PRIVATE_DICTIONARY in sys.modules:
        return None
    package = importlib.util.find_spec("pydicom")
    if package is None or package.submodule_search_locations is None:
        return None
    spec = importlib.machinery.PathFinder.find_spec(PRIVATE_DICTIONARY,
                                                    list(package.submodule_search_locations))
    if spec is None:
        return None
    stand_in = types.ModuleType(PRIVATE_DICTIONARY, "pydicom's private dictionary, read on first use")
    stand_in.private_dictionaries = dictionaries = PrivateDictionaries(spec)  # type: ignore[attr-defined]
    sys.modules[PRIVATE_DICTIONARY] = stand_in
    return dictionaries
