"""``movescu``: a Query/Retrieve Move SCU, with an optional inline Storage SCP.

``movescu [options] addr port (-k keyword and/or -f file-in)`` asks the Move
SCP at ``addr:port`` to send the instances matching a query Identifier to a
move destination (PS3.4 C.4.2).  With ``--store`` it also listens for the
C-STORE sub-operations itself and writes each instance to ``-od``.

Everything runs on one reactor: :func:`main` is called by
:func:`twisted.internet.task.react` (see :func:`run`, ``scripts/movescu``
and ``python -m dicomtwist movescu``).  Options, their defaults and the log
lines follow the ``movescu`` spec; the exit status tells what happened
(:data:`EXIT_CODES`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable, Sequence

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from twisted.internet import defer, error as net_error, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from twisted.python.failure import Failure

from dicomtwist import __version__
from dicomtwist import log as stack_log
from dicomtwist.acse import AcceptorPolicy
from dicomtwist.association import AcceptorFactory, Association, ServiceRequest, associate
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.assembly import TempFileSink, memory_sink
from dicomtwist.errors import AssociationAborted, AssociationRejected, DIMSEServiceError, TLSError
from dicomtwist.keywords import KeywordError, build_identifier, read_query_file
from dicomtwist.logs import LineObserver, level_from_options, parse_level, start_logging
from dicomtwist.services.echo import handle_echo
from dicomtwist.sopclasses import (
    MOVE_MODELS,
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    VERIFICATION,
)
from dicomtwist.storage.files import is_valid_uid, part10_header
from dicomtwist.status import Category, Status, category, status_name

__all__ = [
    "EXIT_CODES",
    "MoveSession",
    "Options",
    "StoreHandler",
    "main",
    "make_store_factory",
    "run",
]

# -- exit statuses ------------------------------------------------------------

EXIT_SUCCESS = 0
#: An unexpected error (a bug): Twisted's ``react`` convention.
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_ASSOCIATION = 4
EXIT_FAILURE = 5
EXIT_CANCEL = 6
EXIT_WARNING = 7
EXIT_LOCAL = 8

#: Exit status -> meaning, as listed in ``--help`` and ``docs/movescu.md``.
EXIT_CODES: dict[int, str] = {
    EXIT_SUCCESS: "the move succeeded (final status 0x0000 Success)",
    EXIT_INTERNAL: "unexpected internal error",
    EXIT_USAGE: "bad arguments: an unknown or invalid option, a bad -k, an unreadable -f,"
                " an unusable TLS certificate or key",
    EXIT_CONNECTION: "could not connect to the peer (refused, timed out, unreachable,"
                     " TLS handshake failed)",
    EXIT_ASSOCIATION: "association rejected or aborted, no accepted presentation"
                      " context, or a timeout that aborted it",
    EXIT_FAILURE: "the move's final status is a failure (e.g. 0xA801 Move Destination"
                  " Unknown)",
    EXIT_CANCEL: "the move was cancelled (final status 0xFE00, or interrupted by Ctrl-C)",
    EXIT_WARNING: "the move's final status is a warning (e.g. 0xB000, some"
                  " sub-operations failed)",
    EXIT_LOCAL: "the Storage SCP could not start: port in use, or -od not writable",
}

_EXIT_FOR_CATEGORY = {
    Category.SUCCESS: EXIT_SUCCESS,
    Category.WARNING: EXIT_WARNING,
    Category.CANCEL: EXIT_CANCEL,
    Category.FAILURE: EXIT_FAILURE,
}

# -- options ------------------------------------------------------------------

#: pynetdicom/DCMTK-style single-dash long options -> our long options.
#: (``usage.Options`` takes single-letter short options only.)
SINGLE_DASH_ALIASES: dict[str, str] = {
    "-ll": "--log-level",
    "-aet": "--calling-aet",
    "-aec": "--called-aet",
    "-aem": "--move-aet",
    "-ta": "--acse-timeout",
    "-td": "--dimse-timeout",
    "-tn": "--network-timeout",
    "-pdu": "--max-pdu",
    "-od": "--output-directory",
}

#: Options that take a value (so the token after them is never translated).
_VALUE_OPTIONS = frozenset(SINGLE_DASH_ALIASES.values()) | frozenset({
    "-k", "--keyword", "-f", "--file", "--store-port", "--store-aet",
    "--store-bind-address", "--tls-ca", "--tls-cert", "--tls-key", "--store-tls-cert",
    "--store-tls-key",
})

_EPILOG = "Exit status:\n" + "\n".join(
    f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


def translate_argv(argv: Sequence[str]) -> list[str]:
    """Prepare a pynetdicom-style command line for ``usage.Options``.

    ``-aet X`` style options become ``--calling-aet X``; options are moved
    before the positional arguments (``getopt`` stops at the first
    positional, but ``movescu addr port -k ...`` is the usual order).
    Option values are left alone, and so is everything after ``--``.
    """
    options: list[str] = []
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            positional.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        translated = SINGLE_DASH_ALIASES.get(arg, arg)
        options.append(translated)
        if translated in _VALUE_OPTIONS:
            value = next(args, None)
            if value is not None:
                options.append(value)
    return options + ["--"] + positional if positional else options


def _ae_title(value: str) -> str:
    """Check an AE title (PS3.5 6.2: 1-16 characters, no backslash or controls)."""
    stripped = value.strip()
    if not stripped or len(stripped) > 16 or "\\" in stripped or any(
            ord(c) < 0x20 or ord(c) > 0x7E for c in stripped):
        raise ValueError(f"{value!r} is not an AE title (1 to 16 printable characters,"
                         " no backslash)")
    return stripped


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not between 1 and 65535")
    return port


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"{value} is not a positive number of seconds")
    return seconds


def _max_pdu(value: str) -> int:
    size = int(value)
    if not (size == 0 or 4096 <= size <= 0xFFFFFFFF):
        raise ValueError(f"{size} is not 0 (no limit) or between 4096 and 4294967295")
    return size


_ae_title.coerceDoc = "(at most 16 characters)"  # type: ignore[attr-defined]


class Options(usage.Options):
    """The command line of ``movescu``, with the spec's defaults.

    Single-dash long options (``-aet``, ``-pdu``, ...) are accepted after
    :func:`translate_argv`.
    """

    synopsis = "movescu [options] addr port (-k keyword and/or -f file-in)"
    longdesc = ("Send a C-MOVE request to the Query/Retrieve SCP at addr:port; with"
                " --store, receive the matching instances too.")

    optFlags = [
        ["quiet", "q", "quiet mode, prints no warnings or errors"],
        ["verbose", "v", "verbose mode, prints processing details (the default level)"],
        ["debug", "d", "debug mode, prints debugging information"],
        ["store", None, "start a Storage SCP that can be used as the move destination"],
        ["patient", "P", "use patient root information model (default)"],
        ["study", "S", "use study root information model"],
        ["psonly", "O", "use patient/study only information model"],
        ["relational-retrieval", None, "request the use of relational retrieval"],
        ["enhanced-conversion", None,
         "request the use of enhanced multi-frame image conversion"],
        ["ignore", None, "receive data but don't store it (with --store)"],
        ["tls", None, "associate over TLS (TLS 1.2 or later); implied by --tls-ca,"
                      " --tls-cert"],
    ]

    optParameters = [
        ["log-level", None, None,
         "-ll: one of critical, error, warning (or warn), info, debug"],
        ["calling-aet", None, "MOVESCU", "-aet: set the local AE title", _ae_title],
        ["called-aet", None, "ANY-SCP", "-aec: set the called AE title for the peer AE",
         _ae_title],
        ["move-aet", None, None,
         "-aem: set the move destination AE title (default: STORESCP, or --store-aet"
         " with --store)", _ae_title],
        ["acse-timeout", None, 30.0, "-ta: timeout for ACSE messages (seconds)", _seconds],
        ["dimse-timeout", None, 30.0, "-td: timeout for DIMSE messages (seconds)", _seconds],
        ["network-timeout", None, 30.0, "-tn: timeout for the network (seconds)", _seconds],
        ["max-pdu", None, 16382, "-pdu: set maximum receive PDU bytes (0: no limit)",
         _max_pdu],
        ["store-port", None, 11113, "the listen port number to use for the Storage SCP",
         _port],
        ["store-aet", None, "STORESCP", "the AE title to use for the Storage SCP", _ae_title],
        ["store-bind-address", None, "",
         "listen on this address only (default: all interfaces)"],
        ["file", "f", None, "use a DICOM file as the query dataset"],
        ["output-directory", None, ".",
         "-od: write received objects to this directory (with --store)"],
        ["tls-ca", None, None, "with --tls: CA certificates (PEM file or directory) the"
                               " peer's certificate must chain to (default: the system's)"],
        ["tls-cert", None, None, "with --tls: our certificate (PEM), for peers that ask"
                                 " for one"],
        ["tls-key", None, None, "the private key (PEM) of --tls-cert (default: in the"
                                " --tls-cert file)"],
        ["store-tls-cert", None, None, "the Storage SCP accepts TLS only, with this"
                                       " certificate (PEM)"],
        ["store-tls-key", None, None, "the private key (PEM) of --store-tls-cert"
                                      " (default: in the --store-tls-cert file)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["keywords"] = []

    def opt_keyword(self, value: str) -> None:
        """add or override a query element: (gggg,eeee)=str or keyword=str"""
        self["keywords"].append(value)

    opt_k = opt_keyword

    def getUsage(self, width: int | None = None) -> str:
        """The usage text, with the single-dash forms and exit statuses."""
        aliases = "\n".join(f"  {short:<5} {long}" for short, long in SINGLE_DASH_ALIASES.items())
        return (f"{super().getUsage(width)}\nSingle-dash long options:\n{aliases}\n\n"
                f"{_EPILOG}\n")

    def opt_version(self) -> None:
        """Display the version and exit."""
        print(f"movescu (dicomtwist) {__version__}")
        sys.exit(0)

    def parseArgs(self, addr: str, port: str) -> None:
        """The peer's address and port."""
        self["addr"] = addr
        try:
            self["port"] = _port(port)
        except ValueError as e:
            raise usage.UsageError(f"invalid port {port!r}: {e}") from None

    def postOptions(self) -> None:
        """Check option combinations and resolve derived values."""
        models = [name for name in ("patient", "study", "psonly") if self[name]]
        if len(models) > 1:
            raise usage.UsageError("choose one of -P/--patient, -S/--study, -O/--psonly,"
                                   f" not {' and '.join('--' + n for n in models)}")
        self["model"] = models[0] if models else "patient"
        self["sop-class"] = MOVE_MODELS[self["model"]]
        if self["log-level"] is not None:
            try:
                parse_level(self["log-level"])
            except ValueError as e:
                raise usage.UsageError(f"-ll/--log-level: {e}") from None
        if self["move-aet"] is None:
            self["move-aet"] = self["store-aet"] if self["store"] else "STORESCP"
        if not self["keywords"] and self["file"] is None:
            raise usage.UsageError("give the query: -k keyword=value and/or -f file")
        self._check_tls()

    def _check_tls(self) -> None:
        """Build the TLS contexts now, so a bad file is a usage error."""
        from dicomtwist import tls

        if self["tls-key"] is not None and self["tls-cert"] is None:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["tls-ca"] is not None or self["tls-cert"] is not None:
            self["tls"] = 1
        self["tls-options"] = None
        if self["tls"]:
            try:
                self["tls-options"] = tls.client_options(
                    self["addr"], self["tls-ca"], self["tls-cert"], self["tls-key"])
            except ValueError as e:
                raise usage.UsageError(f"--tls: {e}") from None
        if self["store-tls-key"] is not None and self["store-tls-cert"] is None:
            raise usage.UsageError("--store-tls-key needs --store-tls-cert")
        self["store-tls-options"] = None
        if self["store-tls-cert"] is not None:
            if not self["store"]:
                raise usage.UsageError("--store-tls-cert needs --store")
            try:
                self["store-tls-options"] = tls.server_options(
                    self["store-tls-cert"], self["store-tls-key"] or self["store-tls-cert"])
            except ValueError as e:
                raise usage.UsageError(f"--store-tls-cert: {e}") from None

    def level(self) -> LogLevel:
        """The log level -q/-v/-d/-ll select."""
        return level_from_options(self["quiet"], self["verbose"], self["debug"],
                                  self["log-level"])


# -- the inline Storage SCP ------------------------------------------------------

#: File name prefixes by Storage SOP class, as storescp tools name files.
MODALITY_PREFIXES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "MG",
    "1.2.840.10008.5.1.4.1.1.1.3": "IO",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "IO",
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.2.1": "CTE",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.4.1": "MRE",
    "1.2.840.10008.5.1.4.1.1.6.1": "US",
    "1.2.840.10008.5.1.4.1.1.3.1": "US",
    "1.2.840.10008.5.1.4.1.1.6.2": "USE",
    "1.2.840.10008.5.1.4.1.1.7": "SC",
    "1.2.840.10008.5.1.4.1.1.12.1": "XA",
    "1.2.840.10008.5.1.4.1.1.12.1.1": "XAE",
    "1.2.840.10008.5.1.4.1.1.12.2": "RF",
    "1.2.840.10008.5.1.4.1.1.20": "NM",
    "1.2.840.10008.5.1.4.1.1.128": "PT",
    "1.2.840.10008.5.1.4.1.1.130": "PTE",
    "1.2.840.10008.5.1.4.1.1.481.1": "RI",
    "1.2.840.10008.5.1.4.1.1.481.2": "RD",
    "1.2.840.10008.5.1.4.1.1.481.3": "RS",
    "1.2.840.10008.5.1.4.1.1.481.5": "RP",
    "1.2.840.10008.5.1.4.1.1.11.1": "PR",
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.88.11": "SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",
    "1.2.840.10008.5.1.4.1.1.88.59": "KO",
    "1.2.840.10008.5.1.4.1.1.104.1": "DOC",
}

#: A UID that is safe as part of a file name: digits and dots, at most 64
#: characters (PS3.5 9.1), components non-empty.
_DEFLATED = "1.2.840.10008.1.2.1.99"
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def file_prefix(sop_class_uid: str) -> str:
    """The file name prefix for a SOP class (``CT``, ``MR``, ... or ``UN``)."""
    return MODALITY_PREFIXES.get(sop_class_uid, "UN")


class _NullSink:
    """A sink that keeps nothing (``--ignore``, or an instance refused up front)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: memoryview) -> None:
        """Count and drop the fragment."""
        self.size += len(data)

    def close(self) -> None:
        """Nothing was kept."""
        return None

    def discard(self) -> None:
        """Nothing to release."""


class StoredInstance:
    """What :meth:`StoreHandler.finish` did with one instance.

    :ivar filename: the file's name in the output directory.
    :ivar overwritten: a file of that name existed and was replaced.
    :ivar dataset_uid: the SOP Instance UID inside the data set.
    """

    __slots__ = ("filename", "overwritten", "dataset_uid")

    def __init__(self, filename: str, overwritten: bool, dataset_uid: str) -> None:
        self.filename = filename
        self.overwritten = overwritten
        self.dataset_uid = dataset_uid


def check_stored(path: str, offset: int, transfer_syntax: str) -> Dataset:
    """Check a received Part 10 file decodes to its end and has its UIDs.

    :param offset: where the data set starts (after the File Meta group).
    :returns: the data set, read up to Pixel Data.
    :raises ValueError: it does not.
    """
    size = os.path.getsize(path)
    if size <= offset:
        raise ValueError("empty data set")
    if transfer_syntax != _DEFLATED:
        # pydicom reads a short last value without complaint: check that
        # every top-level element ends inside the file.
        with open(path, "rb") as fp:
            fp.seek(offset)
            for raw in data_element_generator(fp, transfer_syntax == _IMPLICIT,
                                              transfer_syntax != _BIG_ENDIAN,
                                              defer_size=256):
                length = getattr(raw, "length", 0)
                value_tell = getattr(raw, "value_tell", 0)
                if length != 0xFFFFFFFF and value_tell + length > size:
                    raise ValueError(f"data set truncated in element {raw.tag}")
    ds = dcmread(path, stop_before_pixels=True)
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        raise ValueError("no SOP Class UID or SOP Instance UID in the data set")
    return ds


class StoreHandler:
    """C-STORE SCP for the move's sub-operations: write each instance to a file.

    Each data set streams into a temporary file in ``output_directory``
    (behind a Part 10 header built from the C-STORE-RQ's UIDs and the
    context's transfer syntax); once complete it is checked, fsynced and
    renamed to ``<prefix>.<SOP Instance UID>``.  Nothing is ever written
    outside ``output_directory``: the UID is checked before it touches a path.

    :param output_directory: where files go (must exist).
    :param ignore: receive but keep nothing; answer Success.
    :param run_blocking: runs blocking work (decode check, fsync, rename)
        and returns a Deferred; default: call it at once.
    :param on_stored: called after each instance received (progress).
    """

    log = Logger()

    def __init__(self, output_directory: str, ignore: bool = False,
                 run_blocking: Callable[..., Deferred] | None = None,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.output_directory = os.path.abspath(output_directory)
        self.ignore = ignore
        self.run_blocking = run_blocking or defer.maybeDeferred
        self.on_stored = on_stored
        self.received = 0
        self.stored = 0
        self.failed = 0
        #: Temporary file -> length of its Part 10 header.
        self._headers: dict[str, int] = {}
        # mkstemp makes 0600 files; received files get the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        self.file_mode = 0o666 & ~umask

    def sink_for(self, message: m.Message, context: Any) -> Any:
        """Choose where an incoming data set goes (the association's sink factory)."""
        if not isinstance(message, m.CStoreRQ):
            return memory_sink(message, context)
        if self.ignore or not is_valid_uid(message.affected_sop_instance_uid) \
                or not is_valid_uid(message.affected_sop_class_uid):
            return _NullSink()
        header = part10_header(message.affected_sop_class_uid,
                               message.affected_sop_instance_uid, context.transfer_syntax)
        sink = TempFileSink(self.output_directory, header, prefix=".incoming-")
        # The handler needs to know where the data set starts in the file.
        self._headers[sink.path] = len(header)
        return sink

    def __call__(self, request: ServiceRequest) -> Deferred:
        """Handle one C-STORE-RQ; fires with the status to answer."""
        message = request.message
        assert isinstance(message, m.CStoreRQ)
        self.received += 1
        if self.on_stored is not None:
            self.on_stored()
        if self.ignore:
            self.log.info("Received Store Request: {uid} (ignored, --ignore)",
                          uid=message.affected_sop_instance_uid)
            return defer.succeed(Status.SUCCESS)
        if not isinstance(request.data, str):
            self.failed += 1
            self.log.warn("Refusing an instance whose UIDs cannot name a file:"
                          " SOP Instance UID {uid!r}", uid=message.affected_sop_instance_uid)
            return defer.fail(DIMSEServiceError(Status.STORE_CANNOT_UNDERSTAND,
                                                "invalid SOP Class or Instance UID"))
        temp = request.data
        offset = self._headers.pop(temp, 0)
        d = self.run_blocking(self.finish, temp, offset, message, request.context.transfer_syntax)
        d.addCallbacks(self._stored, self._refused, callbackArgs=(message,),
                       errbackArgs=(temp, message))
        return d

    def finish(self, temp: str, offset: int, message: m.CStoreRQ,
               transfer_syntax: str) -> StoredInstance:
        """Check, fsync and rename a received file into place (blocking).

        :raises DIMSEServiceError: 0xC210 when the data set cannot be decoded
            or lacks its UIDs (the temporary file is removed).
        """
        try:
            ds = check_stored(temp, offset, transfer_syntax)
        except Exception as e:
            _unlink(temp)
            raise DIMSEServiceError(Status.STORE_CANNOT_UNDERSTAND,
                                    f"cannot decode the data set: {e}"[:64]) from e
        filename = f"{file_prefix(message.affected_sop_class_uid)}." \
                   f"{message.affected_sop_instance_uid}"
        final = os.path.join(self.output_directory, filename)
        # Belt and braces: the UID check already keeps the name inside.
        if os.path.dirname(os.path.abspath(final)) != self.output_directory:
            _unlink(temp)
            raise DIMSEServiceError(Status.STORE_CANNOT_UNDERSTAND, "unsafe file name")
        overwritten = os.path.exists(final)
        os.chmod(temp, self.file_mode)
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
        return StoredInstance(filename, overwritten, str(ds.SOPInstanceUID))

    def _stored(self, result: StoredInstance, message: m.CStoreRQ) -> int:
        self.stored += 1
        self.log.info("Storing DICOM file: {filename}", filename=result.filename)
        if result.overwritten:
            self.log.warn("DICOM file already exists, overwriting")
        if result.dataset_uid != message.affected_sop_instance_uid:
            self.log.warn("The data set's SOP Instance UID {found} differs from the"
                          " C-STORE request's; the file is named by the request's",
                          found=result.dataset_uid)
        return Status.SUCCESS

    def _refused(self, failure: Any, temp: str, message: m.CStoreRQ) -> Any:
        self.failed += 1
        _unlink(temp)
        if failure.check(DIMSEServiceError):
            self.log.warn("Refusing instance {uid}: {reason}",
                          uid=message.affected_sop_instance_uid,
                          reason=failure.value.comment)
            return failure
        self.log.failure("Storing instance {uid} failed", failure,
                         uid=message.affected_sop_instance_uid)
        raise DIMSEServiceError(Status.OUT_OF_RESOURCES, "could not write the file")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def store_policy(ae_title: str, max_pdu: int) -> AcceptorPolicy:
    """The Storage SCP's policy: every Storage SOP class and transfer syntax."""
    contexts: dict[str, Sequence[str]] = {
        uid: STORAGE_TRANSFER_SYNTAXES for uid in STORAGE_SOP_CLASSES}
    contexts[VERIFICATION] = UNCOMPRESSED_TRANSFER_SYNTAXES
    return AcceptorPolicy(ae_title=ae_title, contexts=contexts, max_pdu=max_pdu)


def make_store_factory(reactor: Any, handler: StoreHandler, ae_title: str = "STORESCP",
                       max_pdu: int = 16382, acse_timeout: float = 30.0,
                       dimse_timeout: float | None = 30.0,
                       network_timeout: float | None = None) -> AcceptorFactory:
    """The inline Storage SCP: an acceptor factory serving C-STORE and C-ECHO."""
    factory = AcceptorFactory(reactor, store_policy(ae_title, max_pdu),
                              {"store": handler, "echo": handle_echo},
                              sink_for=handler.sink_for, acse_timeout=acse_timeout,
                              dimse_timeout=dimse_timeout, network_timeout=network_timeout)
    factory.noisy = False
    return factory


# -- the move -----------------------------------------------------------------

#: A-ASSOCIATE-RJ fields in words (PS3.8 9.3.4, Table 9-21).
_REJECT_RESULTS = {1: "Rejected Permanent", 2: "Rejected Transient"}
_REJECT_SOURCES = {1: "Service User", 2: "Service Provider (ACSE)",
                   3: "Service Provider (Presentation)"}
_REJECT_REASONS = {
    (1, 1): "No reason given",
    (1, 2): "Application context name not supported",
    (1, 3): "Calling AE title not recognised",
    (1, 7): "Called AE title not recognised",
    (2, 1): "No reason given",
    (2, 2): "Protocol version not supported",
    (3, 1): "Temporary congestion",
    (3, 2): "Local limit exceeded",
}

#: Connection errors that mean "could not reach the peer".
_CONNECT_ERRORS = (net_error.ConnectError, net_error.TimeoutError, OSError)


class Progress:
    """Sub-operation counts of the move, for the live status line."""

    def __init__(self, observer: LineObserver | None, store: bool) -> None:
        self.observer = observer
        self.store = store
        self.remaining: int | None = None
        self.completed = 0
        self.failed = 0
        self.warning = 0
        self.received = 0

    def update(self, response: m.CMoveRSP) -> None:
        """Take the counts of a C-MOVE-RSP."""
        if response.number_of_remaining_sub_operations is not None:
            self.remaining = response.number_of_remaining_sub_operations
        for name in ("completed", "failed", "warning"):
            value = getattr(response, f"number_of_{name}_sub_operations")
            if value is not None:
                setattr(self, name, value)
        self.show()

    def instance_received(self) -> None:
        """The Storage SCP received one more instance."""
        self.received += 1
        self.show()

    def text(self) -> str:
        """The status line."""
        remaining = "?" if self.remaining is None else str(self.remaining)
        text = (f"Move: completed {self.completed}, failed {self.failed},"
                f" warning {self.warning}, remaining {remaining}")
        if self.store:
            text += f"; received {self.received}"
        return text

    def show(self) -> None:
        """Redraw the status line (terminals only)."""
        if self.observer is not None:
            self.observer.set_status(self.text())

    def clear(self) -> None:
        """Remove the status line."""
        if self.observer is not None:
            self.observer.set_status(None)


def _sub_operations(response: m.CMoveRSP) -> str | None:
    parts = []
    for label, name in (("Remaining", "remaining"), ("Completed", "completed"),
                        ("Failed", "failed"), ("Warning", "warning")):
        value = getattr(response, f"number_of_{name}_sub_operations")
        if value is not None:
            parts.append(f"{label}: {value}")
    return "Sub-Operations " + ", ".join(parts) if parts else None


class MoveSession:
    """One run of movescu: Storage SCP, association, C-MOVE, release.

    :param reactor: the reactor (TCP, time, optionally threads).
    :param options: parsed :class:`Options`.
    :param identifier: the query Identifier.
    :param observer: the console observer, for the progress line.
    """

    log = Logger()

    def __init__(self, reactor: Any, options: Options, identifier: Dataset,
                 observer: LineObserver | None = None) -> None:
        self.reactor = reactor
        self.options = options
        self.identifier = identifier
        self.progress = Progress(observer, options["store"])
        self.association: Association | None = None
        self.move: Deferred | None = None
        self.interrupted = False
        self.finished = False
        self.store_handler: StoreHandler | None = None
        self.store_factory: AcceptorFactory | None = None
        self.store_port: Any = None
        self._waiting: Deferred | None = None
        self._finish_waiters: list[Deferred] = []
        self.responses = 0

    # -- before associating --------------------------------------------------
    def start_store(self) -> int | None:
        """With --store, create -od and listen; returns an exit status on failure."""
        options = self.options
        if not options["store"]:
            return None
        directory = options["output-directory"]
        if not options["ignore"]:
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as e:
                self.log.error("Cannot create the output directory {directory!r} (-od):"
                               " {error}", directory=directory, error=e.strerror or str(e))
                return EXIT_LOCAL
            if not os.access(directory, os.W_OK | os.X_OK):
                self.log.error("The output directory {directory!r} (-od) is not writable",
                               directory=directory)
                return EXIT_LOCAL
        run_blocking = None
        if IReactorThreads.providedBy(self.reactor):
            pool = self.reactor.getThreadPool()
            run_blocking = lambda f, *a: deferToThreadPool(self.reactor, pool, f, *a)  # noqa: E731
        self.store_handler = StoreHandler(directory, options["ignore"], run_blocking,
                                          self.progress.instance_received)
        self.store_factory = make_store_factory(
            self.reactor, self.store_handler, options["store-aet"], options["max-pdu"],
            options["acse-timeout"], options["dimse-timeout"], options["network-timeout"])
        try:
            if options["store-tls-options"] is not None:
                self.store_port = self.reactor.listenSSL(
                    options["store-port"], self.store_factory, options["store-tls-options"],
                    interface=options["store-bind-address"] or "")
            else:
                self.store_port = self.reactor.listenTCP(
                    options["store-port"], self.store_factory,
                    interface=options["store-bind-address"] or "")
        except net_error.CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            self.log.error("Cannot start the Storage SCP on port {port} (--store-port):"
                           " {reason}", port=options["store-port"], reason=reason)
            return EXIT_LOCAL
        self.log.info("Storage SCP {aet} listening on port {port}{tls}",
                      aet=options["store-aet"], port=options["store-port"],
                      tls=" (TLS)" if options["store-tls-options"] is not None else "")
        return None

    async def stop_store(self) -> None:
        """Stop listening, and let running store associations end (bounded)."""
        if self.store_port is None:
            return
        port, self.store_port = self.store_port, None
        await defer.maybeDeferred(port.stopListening)
        factory = self.store_factory
        assert factory is not None
        waiting = [a.closed for a in list(factory.associations) if not a.closed.called]
        if waiting:
            d = defer.DeferredList([_quiet(w) for w in waiting])
            d.addTimeout(self.options["acse-timeout"], self.reactor)
            try:
                await d
            except defer.TimeoutError:
                for assoc in list(factory.associations):
                    assoc.abort()

    # -- the flow ----------------------------------------------------------------
    async def run(self) -> int:
        """Associate, move, release; returns the exit status."""
        try:
            return await self._run()
        finally:
            self.progress.clear()
            await self.stop_store()
            self.finished = True
            waiters, self._finish_waiters = self._finish_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_finished(self) -> Deferred[None]:
        """A Deferred firing once the session is over (at once if it is)."""
        if self.finished:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._finish_waiters.append(d)
        return d

    async def _run(self) -> int:
        options = self.options
        sop_class = options["sop-class"]
        extended = self.extended_negotiation()
        try:
            assoc = await self._interruptible(associate(
                self.reactor, options["addr"], options["port"],
                contexts=[(sop_class, UNCOMPRESSED_TRANSFER_SYNTAXES)],
                called_ae_title=options["called-aet"], calling_ae_title=options["calling-aet"],
                max_pdu=options["max-pdu"], extended=extended,
                acse_timeout=options["acse-timeout"], dimse_timeout=options["dimse-timeout"],
                network_timeout=options["network-timeout"],
                connect_timeout=options["network-timeout"], tls=options["tls-options"]))
        except _Interrupted:
            self.log.error("Interrupted before the association was established")
            return EXIT_CANCEL
        except AssociationRejected as e:
            self.log.error("Association Rejected")
            self.log.error("Result: {result}, Source: {source}",
                           result=_REJECT_RESULTS.get(e.result, f"{e.result}"),
                           source=_REJECT_SOURCES.get(e.source, f"{e.source}"))
            self.log.error("Reason: {reason}",
                           reason=_REJECT_REASONS.get((e.source, e.reason), f"{e.reason}"))
            return EXIT_ASSOCIATION
        except TLSError as e:
            self.log.error("Association request failed: TLS handshake with {addr}:{port}"
                           " failed ({error})", addr=options["addr"], port=options["port"],
                           error=str(e))
            return EXIT_CONNECTION
        except AssociationAborted as e:
            self.log.error("Association Aborted: {error}", error=str(e))
            return EXIT_ASSOCIATION
        except _CONNECT_ERRORS as e:
            self.log.error("Association request failed: unable to connect to"
                           " {addr}:{port} ({error})", addr=options["addr"],
                           port=options["port"], error=_connect_reason(e))
            return EXIT_CONNECTION
        self.association = assoc
        try:
            assoc.context_for(sop_class)
        except ValueError:
            self.log.error("The peer accepted no presentation context for {model}"
                           " ({uid})", model=_MODEL_NAMES[options["model"]], uid=sop_class)
            await assoc.release()
            return EXIT_ASSOCIATION
        if self.interrupted:
            await assoc.release()
            return EXIT_CANCEL
        self.move = assoc.move(self.identifier, sop_class, options["move-aet"],
                               on_response=self.on_response)
        self.log.info("\n# Request Identifier\n{identifier}\n",
                      identifier=_dataset_text(self.identifier))
        self.progress.show()
        try:
            responses = await self.move
        except AssociationAborted as e:
            self.log.error("Association Aborted during the move: {error}", error=str(e))
            return EXIT_ASSOCIATION
        finally:
            self.progress.clear()
        final, _ = responses[-1]
        await assoc.release()
        if self.interrupted:
            return EXIT_CANCEL
        return _EXIT_FOR_CATEGORY.get(category(final.status), EXIT_FAILURE)

    def extended_negotiation(self) -> dict[str, bytes] | None:
        """SOP Class Extended Negotiation for the MOVE class (PS3.4 C.5.3):
        byte 0 relational-retrieval, byte 1 enhanced multi-frame image
        conversion."""
        relational = self.options["relational-retrieval"]
        enhanced = self.options["enhanced-conversion"]
        if not (relational or enhanced):
            return None
        info = bytes([int(relational)]) + (b"\x01" if enhanced else b"")
        return {self.options["sop-class"]: info}

    def on_response(self, response: m.CMoveRSP, dataset: Dataset | None) -> None:
        """Log each C-MOVE-RSP (pending and final) and update the progress."""
        self.responses += 1
        status = response.status
        if category(status) is Category.PENDING:
            self.log.info("Move SCP Response: {n} - 0x{status:04X} ({name})", n=self.responses,
                          status=status, name=status_name(status))
        else:
            self.log.info("Move SCP Result: 0x{status:04X} ({name})", status=status,
                          name=status_name(status))
        counts = _sub_operations(response)
        if counts is not None:
            self.log.info("{counts}", counts=counts)
        if response.error_comment:
            self.log.info("Error Comment: {comment}", comment=response.error_comment)
        if dataset is not None and len(dataset):
            self.log.info("\n# Response Identifier\n{identifier}\n",
                          identifier=_dataset_text(dataset))
        self.progress.update(response)

    # -- interruption --------------------------------------------------------------
    def interrupt(self) -> Deferred[None] | None:
        """Ctrl-C: cancel the move (C-CANCEL), or stop waiting to associate.

        The flow then goes on: the final response, the release, the exit
        status ``EXIT_CANCEL``.  A second interrupt aborts the association.
        :returns: None once finished, else a Deferred firing when it is.
        """
        if self.finished:
            return None
        if self.interrupted:
            self.log.warn("Interrupted again: aborting the association")
            if self.association is not None:
                self.association.abort()
            return None
        self.interrupted = True
        if self.move is not None and not self.move.called and self.association is not None:
            self.log.warn("Interrupted: sending C-CANCEL and waiting for the final response")
            self.association.cancel(self.move)
        elif self._waiting is not None and not self._waiting.called:
            self._waiting.errback(_Interrupted())
        else:
            self.log.warn("Interrupted: finishing")
        return None

    def _interruptible(self, d: Deferred) -> Deferred:
        """``d``, unless interrupted first; a late association is aborted."""
        wrapper: Deferred = Deferred()
        self._waiting = wrapper

        def settle(result: Any) -> None:
            if not wrapper.called:
                if isinstance(result, Failure):
                    wrapper.errback(result)
                else:
                    wrapper.callback(result)
            elif isinstance(result, Association):
                result.abort()
            elif isinstance(result, Failure):
                pass  # too late to matter: we were interrupted
            return None

        d.addBoth(settle)
        return wrapper


class _Interrupted(Exception):
    """Ctrl-C before the association was established."""


_MODEL_NAMES = {
    "patient": "Patient Root Query/Retrieve Information Model - MOVE",
    "study": "Study Root Query/Retrieve Information Model - MOVE",
    "psonly": "Patient/Study Only Query/Retrieve Information Model - MOVE",
}


def _quiet(d: Deferred) -> Deferred:
    """A Deferred that fires (with None) when ``d`` does, whatever the result."""
    out: Deferred = Deferred()
    d.addBoth(lambda r: (out.callback(None) if not out.called else None, r)[1])
    return out


def _dataset_text(ds: Dataset) -> str:
    """A data set printed element by element (pydicom's format)."""
    try:
        return str(ds)
    except Exception as e:  # a value pydicom cannot show; never fail on it
        return f"(cannot display the data set: {e})"


def _connect_reason(error: BaseException) -> str:
    if isinstance(error, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (net_error.TCPTimedOutError, net_error.TimeoutError)):
        return "connection timed out"
    if isinstance(error, net_error.DNSLookupError):
        return "host name not found"
    text = str(error).strip()
    return text or type(error).__name__


# -- entry points --------------------------------------------------------------

_log = Logger(namespace="dicomtwist.movescu")


def _install_sigint(reactor: Any, session: MoveSession) -> None:
    """Replace the reactor's SIGINT handler: Ctrl-C cancels the move.

    Called once the reactor runs (after it installed its own handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def on_sigint(signum: int, frame: Any) -> None:
        reactor.callFromThread(session.interrupt)

    signal.signal(signal.SIGINT, on_sigint)


async def _main(reactor: Any, argv: Sequence[str]) -> int:
    options = Options()
    try:
        options.parseOptions(translate_argv(argv))
    except usage.UsageError as e:
        start_logging(LogLevel.error)
        _log.error("movescu: {error}", error=str(e))
        _log.error("Try 'movescu --help' for the options.")
        return EXIT_USAGE
    level = options.level()
    # The network stack's loggers pass their own level filter first.
    stack_log.set_level(level)
    observer = start_logging(level)
    base = None
    if options["file"] is not None:
        try:
            base = read_query_file(options["file"])
        except ValueError as e:
            _log.error("{error}", error=str(e))
            return EXIT_USAGE
    try:
        identifier = build_identifier(options["keywords"], base)
    except KeywordError as e:
        _log.error("{error}", error=str(e))
        return EXIT_USAGE
    session = MoveSession(reactor, options, identifier, observer)
    failed = session.start_store()
    if failed is not None:
        return failed
    reactor.callWhenRunning(_install_sigint, reactor, session)
    # SIGTERM and other shutdowns: cancel and finish before the reactor stops.
    trigger = reactor.addSystemEventTrigger("before", "shutdown", _on_shutdown, session)
    try:
        return await session.run()
    finally:
        try:
            reactor.removeSystemEventTrigger(trigger)
        except (ValueError, KeyError, TypeError, NotImplementedError):
            pass


def _on_shutdown(session: MoveSession) -> Deferred | None:
    """Before the reactor stops (SIGTERM, or Twisted's own SIGINT handler):
    cancel, and hold the shutdown until the session is over."""
    if session.finished:
        return None
    session.interrupt()
    return session.when_finished()


def main(reactor: Any, *argv: str) -> Deferred[None]:
    """Run movescu with command-line arguments ``argv`` on ``reactor``.

    :returns: a Deferred that fires with None on success, or fails with
        ``SystemExit(status)`` for any other exit status (see
        :data:`EXIT_CODES`), as :func:`twisted.internet.task.react` expects.
    """
    async def wrapped() -> None:
        try:
            code = await _main(reactor, argv)
        except SystemExit as e:  # --help, --version
            code = e.code if isinstance(e.code, int) else 0
        if code != EXIT_SUCCESS:
            raise SystemExit(code)

    return Deferred.fromCoroutine(wrapped())


def run(argv: Sequence[str] | None = None) -> None:
    """The ``movescu`` console script: ``task.react(main, sys.argv[1:])``."""
    task.react(main, list(sys.argv[1:] if argv is None else argv))
