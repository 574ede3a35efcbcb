"""``twistd dicomqr``: the Query/Retrieve archive as a twistd plugin.

``Options`` takes every option of qrscp.rst (the single-dash long forms
such as ``-aet`` and ``-ll`` are accepted as the spec writes them);
``makeService`` builds the archive: an index, an instance directory, a
thread pool and a listening :class:`~dicomtwist.association.AcceptorFactory`.
``run`` is the ``dicomqr`` console script: the same service, in the
foreground.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

import dicomtwist
from dicomtwist import config as configuration
from dicomtwist import log as dlog
from dicomtwist import logs, optional
from dicomtwist.access import AccessRules, is_permitted
from dicomtwist.errors import DicomError, DIMSEServiceError
from dicomtwist.status import Status

if TYPE_CHECKING:
    from dicomtwist import tls
    from dicomtwist.association import AcceptorFactory

# This module is imported when twistd lists its plugins, before the
# options are known: Twisted's transports and pydicom are imported by
# optional.load() in postOptions, without the libraries the
# configuration does not use, so nothing above may import them.

#: Single-dash long options of the spec, and what they mean.
SHORT_FORMS = {
    "-aet": "--ae-title",
    "-ba": "--bind-address",
    "-ta": "--acse-timeout",
    "-td": "--dimse-timeout",
    "-tn": "--network-timeout",
    "-pdu": "--max-pdu",
    "-ll": "--log-level",
}


def expand_short_forms(argv: list[str]) -> list[str]:
    """Rewrite ``-aet X`` as ``--ae-title X`` (getopt knows no such options)."""
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name in SHORT_FORMS:
            out.append(SHORT_FORMS[name] + (sep + value if sep else ""))
        else:
            out.append(arg)
    return out


class Options(usage.Options):
    """Options of ``twistd dicomqr`` (and ``dicomqr``), as qrscp.rst lists them."""

    synopsis = "[options]"
    longdesc = ("A DICOM Verification, Storage and Query/Retrieve SCP on an sqlite index. "
                "Command-line values override the configuration file.")

    optFlags = [
        ["quiet", "q", "quiet mode, prints no warnings or errors"],
        ["verbose", "v", "verbose mode, prints processing details"],
        ["debug", "d", "debug mode, prints debugging information"],
        ["clean", None, "remove all entries from the database and delete the"
                        " corresponding stored instances, then exit"],
        ["yes", None, "with --clean: do not ask for confirmation"],
        ["reindex", None, "rebuild the whole index from the stored files, then exit"],
    ]
    optParameters = [
        ["config", "c", None, "use configuration file f"],
        ["log-level", None, None, "one of critical, error, warning, info, debug (-ll)"],
        ["ae-title", None, None, "override the configured local AE title (-aet)"],
        ["port", None, None, "override the configured listen port"],
        ["bind-address", None, None, "override the configured bind address (-ba)"],
        ["acse-timeout", None, None, "override the ACSE timeout in seconds (-ta)"],
        ["dimse-timeout", None, None, "override the DIMSE timeout in seconds (-td)"],
        ["network-timeout", None, None, "override the network timeout in seconds (-tn)"],
        ["max-pdu", None, None, "override the maximum receive PDU bytes (-pdu)"],
        ["database-location", None, None, "override the location of the database"],
        ["instance-location", None, None, "override the instance storage directory"],
        ["max-associations", None, None, "associations served at once (default 64)"],
        ["min-free-space", None, None, "refuse stores below this many MB free (default 0)"],
        ["shutdown-grace", None, None, "seconds running associations get at shutdown"
                                       " (default 10)"],
        ["tls-ca", None, None, "CA certificates (PEM file or directory): ssl: listeners"
                               " require client certificates that chain to them"],
        ["tls-cert", None, None, "our certificate (PEM) for ssl: listeners without"
                                 " certKey=, and for TLS move destinations"],
        ["tls-key", None, None, "the private key (PEM) of --tls-cert"],
        ["store-transfer-syntax", None, None, "store uncompressed instances compressed in"
                                              " this lossless syntax: rle, jpeg-ls,"
                                              " jpeg-lossless, jpeg-2000 or a UID"
                                              " (default: as received)"],
        ["workers", None, None, "run N archive processes behind the same listening"
                                " ports (needs a PostgreSQL index; default 1)"],
        ["http", None, None, "serve DICOMweb on this endpoint, e.g. tcp:8042 or"
                             " tcp:8042:interface=127.0.0.1 or ssl:8443:privateKey=...:"
                             "certKey=... (default: no HTTP port)"],
    ]

    #: Option name -> Config attribute.
    OVERRIDES = {
        "ae-title": "ae_title",
        "port": "port",
        "bind-address": "bind_address",
        "acse-timeout": "acse_timeout",
        "dimse-timeout": "dimse_timeout",
        "network-timeout": "network_timeout",
        "max-pdu": "max_pdu",
        "database-location": "database_location",
        "instance-location": "instance_location",
        "max-associations": "max_associations",
        "min-free-space": "min_free_space",
        "shutdown-grace": "shutdown_grace",
        "tls-ca": "tls_ca",
        "tls-cert": "tls_cert",
        "tls-key": "tls_key",
        "http": "http",
        "store-transfer-syntax": "store_transfer_syntax",
        "workers": "workers",
    }

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """listen on this endpoint description (repeatable), e.g. tcp:11112 or
        ssl:2762:privateKey=key.pem:certKey=cert.pem[:caCerts=ca.pem];
        default tcp:<port> from --port and --bind-address"""
        self["listen"].append(description)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Accept the spec's single-dash long options too."""
        if options is None:
            options = sys.argv[1:]
        #: The archive options as given (``--workers`` passes them on).
        self["argv"] = expand_short_forms(list(options))
        super().parseOptions(self["argv"])

    def opt_version(self) -> None:
        """print version information and exit"""
        print(f"dicomtwist dicomqr {dicomtwist.__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        """Load the config file, apply overrides, check every value.

        :raises usage.UsageError: naming the bad option or config value.
        """
        try:
            cfg = (configuration.load(self["config"]) if self["config"]
                   else configuration.Config())
            for option, key in self.OVERRIDES.items():
                if self[option] is not None:
                    cfg.set(key, self[option], f"--{option}")
            if self["listen"]:
                cfg.listen = tuple(self["listen"])
            level = logs.level_from_options(self["quiet"], self["verbose"], self["debug"],
                                            self["log-level"], default=LogLevel.warn)
        except (DicomError, ValueError) as e:
            raise usage.UsageError(str(e)) from None
        cfg.instance_location = os.path.abspath(cfg.instance_location)
        if not cfg.database_location.startswith(("postgresql://", "postgres://")):
            cfg.database_location = os.path.abspath(cfg.database_location)
        # twistd may chdir when daemonizing: certificate paths are absolute.
        for key in ("tls_ca", "tls_cert", "tls_key", "http_users", "http_tokens"):
            if getattr(cfg, key) is not None:
                setattr(cfg, key, os.path.abspath(getattr(cfg, key)))
        optional.load(tls=optional.needs_tls(cfg), pixels=optional.needs_pixels(cfg))
        if cfg.http is not None:
            _check_http(cfg)
        if cfg.workers > 1:
            _check_workers(cfg)
        if cfg.store_transfer_syntax is not None:
            from dicomtwist import codec

            if cfg.store_transfer_syntax not in codec.LOSSLESS_TARGETS:
                raise usage.UsageError(
                    f"store_transfer_syntax {cfg.store_transfer_syntax}: no encoder installed"
                    " for it (JPEG Lossless SV1 needs the gdcm extra: pip install"
                    " '.[gdcm]')")
        from dicomtwist import tls

        for description in listen_descriptions(cfg):
            try:
                # Builds the TLS contexts too: a missing or bad file is
                # reported now, naming the description.
                tls.listen_endpoint(None, description, listen_defaults(cfg))
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--listen/listen {description!r}: {e}") from None
        self["settings"] = cfg
        self["level"] = level


def _check_workers(cfg: configuration.Config) -> None:
    """``--workers N`` needs a shared index and ``tcp:`` listeners.

    :raises usage.UsageError: naming what stands in the way.
    """
    from dicomtwist import workers

    if not cfg.database_location.startswith(("postgresql://", "postgres://")):
        raise usage.UsageError(
            f"--workers {cfg.workers} needs a PostgreSQL index (--database-location"
            " postgresql://...): with sqlite each process would keep its own"
            " counts and caches of the same file")
    for description in [*listen_descriptions(cfg), *([cfg.http] if cfg.http else [])]:
        try:
            workers.parse_tcp(description)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def _check_http(cfg: configuration.Config) -> None:
    """Check the HTTP settings now, naming the bad one.

    :raises usage.UsageError: a bad endpoint, static mount or users file.
    """
    from twisted.internet.endpoints import serverFromString

    from dicomtwist.web import auth
    from dicomtwist.web.site import static_mounts

    class _NoReactor:
        pass

    try:
        serverFromString(_NoReactor(), cfg.http)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"--http/http {cfg.http!r}: {e}") from None
    try:
        cfg.http_static = tuple(f"{path}={directory}"
                                for path, directory in static_mounts(cfg.http_static))
    except ValueError as e:
        raise usage.UsageError(f"http_static {e}") from None
    try:
        auth.load(cfg.http_users, cfg.http_tokens)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def supported_contexts() -> dict[str, list[str]]:
    """Every abstract syntax we accept and its transfer syntaxes.

    Storage and Verification take all sixteen transfer syntaxes of the
    spec (data sets are stored as received); the query/retrieve, worklist
    and UPS classes take the uncompressed ones.
    """
    from dicomtwist import sopclasses
    from dicomtwist.services import qr

    # Explicit VR Little Endian first: it keeps the VRs of private elements.
    explicit = "1.2.840.10008.1.2.1"
    storage = [explicit, *(ts for ts in sopclasses.STORAGE_TRANSFER_SYNTAXES if ts != explicit)]
    uncompressed = [explicit, *(ts for ts in sopclasses.UNCOMPRESSED_TRANSFER_SYNTAXES
                                if ts != explicit), "1.2.840.10008.1.2.1.99"]
    contexts: dict[str, list[str]] = {}
    for uid in sopclasses.STORAGE_SOP_CLASSES:
        contexts[uid] = storage
    contexts[sopclasses.VERIFICATION] = storage
    for uid in (*qr.FIND_MODELS, *qr.MOVE_MODELS, *qr.GET_MODELS, *qr.EMPTY_FIND):
        contexts[uid] = uncompressed
    return contexts


class ArchiveService(service.Service):
    """Opens the index and the thread pool, recovers after a crash, and
    shuts down gracefully.

    At start, leftover temporary files are removed and the files and the
    index reconciled (:func:`dicomtwist.storage.recovery.recover`).  At stop
    (SIGTERM), once the listener has closed, running associations get
    ``shutdown_grace`` seconds to finish; the rest are aborted, then the
    thread pool finishes the commits it is running, so nothing is left
    half-written.
    """

    log = dlog.logger()

    def __init__(self, settings: configuration.Config, reactor: Any,
                 handle_signals: bool = False, recover: bool = True) -> None:
        self.settings = settings
        self.reactor = reactor
        #: Install :func:`_stop_on_signals` once the reactor runs (the
        #: daemon's entry points; not a service built around a test reactor).
        self.handle_signals = handle_signals
        #: Run start-up recovery (a ``--workers`` supervisor runs it once,
        #: its workers do not).
        self.recover = recover
        self.pool = ThreadPool(minthreads=1, maxthreads=8, name="dicomtwist")
        try:
            os.makedirs(settings.instance_location, exist_ok=True)
        except OSError as e:
            raise SystemExit(f"dicomqr: cannot create the instance directory"
                             f" {settings.instance_location}: {e.strerror}") from None
        from dicomtwist.storage.index import IndexUnavailable, open_index
        try:
            self.index = open_index(settings.database_location)
        except IndexUnavailable as e:
            raise SystemExit(f"dicomqr: {e}") from None
        #: Pixel codecs (transcoding, rendering) hold the CPU: their own
        #: pool, one thread a core, started empty.
        self.pixel_pool = ThreadPool(minthreads=0, maxthreads=max(1, os.cpu_count() or 1),
                                     name="dicomtwist-pixels")
        self.factory = build_factory(settings, reactor, self.pool, self.index, self.pixel_pool)
        #: The HTTP site (DICOMweb), with ``http`` set.
        self.site = None
        if settings.http is not None:
            from dicomtwist.web.site import build_site

            self.site = build_site(settings, reactor, self.pool, self.pixel_pool,
                                   self.index, self.factory.store)

    def startService(self) -> None:
        """Recover, then start the worker threads."""
        from dicomtwist.storage.recovery import recover

        # Temporary files carry this node's name (nodes may share the
        # instance directory): recovery removes only its own.
        set_node(node_name(self.settings))
        if self.recover:
            report = recover(self.settings.instance_location, self.index)
            log_recovery(report)
        super().startService()
        # Everything loaded so far (pydicom's dictionaries, Twisted) lives
        # as long as the process: keep it out of every full collection.
        gc.collect()
        gc.freeze()
        self.pool.start()
        self.pixel_pool.start()
        if self.handle_signals:
            self.reactor.callWhenRunning(_stop_on_signals, self.reactor)
        self.log.info("Archive {aet}: instances in {dir}, index {db}",
                      aet=self.settings.ae_title, dir=self.settings.instance_location,
                      db=self.index.location)

    def stopService(self) -> Any:
        """Let associations finish (bounded), abort the rest, stop the pool."""
        super().stopService()
        from twisted.internet import defer

        associations = list(self.factory.associations)
        if associations:
            self.log.info("Shutting down: waiting up to {grace} s for {count}"
                          " association(s)", grace=self.settings.shutdown_grace,
                          count=len(associations))
        waiting = defer.DeferredList([a.closed for a in associations], consumeErrors=True)

        def abort_rest() -> None:
            for assoc in list(self.factory.associations):
                self.log.warn("Aborting association with {peer} at shutdown",
                              peer=assoc.peer_description)
                assoc.abort_request()
                if assoc.transport is not None:
                    assoc.transport.abortConnection()

        timer = self.reactor.callLater(self.settings.shutdown_grace, abort_rest)

        def done(_: Any) -> None:
            if timer.active():
                timer.cancel()
            self.pixel_pool.stop()
            self.pool.stop()
            set_node("")
            if "dicomtwist.codec.processes" in sys.modules:
                sys.modules["dicomtwist.codec.processes"].shutdown()
            self.index.close()

        waiting.addBoth(done)
        return waiting


def node_name(settings: configuration.Config) -> str:
    """This archive node's name among those sharing an instance directory:
    host, AE title and first listen description (the workers of one
    supervisor share it)."""
    import socket

    return f"{socket.gethostname()}-{settings.ae_title}-{listen_descriptions(settings)[0]}"


def set_node(name: str) -> None:
    """Name this node's temporary files (:func:`dicomtwist.storage.files.set_node`)."""
    from dicomtwist.storage import files

    files.set_node(name)


def log_recovery(report: Any) -> None:
    """One warning when start-up recovery found anything to do."""
    if report.temporary_removed or report.rows_dropped or report.files_indexed:
        _access_log.warn("Recovery: removed {temp} temporary file(s), dropped {rows} row(s)"
                         " without a file, indexed {files} file(s) without a row",
                         temp=report.temporary_removed, rows=report.rows_dropped,
                         files=report.files_indexed)


def build_factory(settings: configuration.Config, reactor: Any, pool: ThreadPool,
                  index: Any, pixel_pool: ThreadPool | None = None) -> AcceptorFactory:
    """The acceptor factory with every service of the archive.

    :param pixel_pool: where transcoding runs (default: ``pool``).
    """
    from dicomtwist import sopclasses
    from dicomtwist.acse import AcceptorPolicy
    from dicomtwist.association import AcceptorFactory
    from dicomtwist.services.echo import handle_echo
    from dicomtwist.services.store import ArchiveStore

    describe = None
    if settings.http is not None:
        # DICOMweb metadata is kept at ingest only when DICOMweb is served
        # (about 0.5 ms an instance); otherwise on its first request.
        from dicomtwist.web.dicomweb.wado import describe

    store = ArchiveStore(reactor, pool, settings.instance_location, index,
                         min_free_bytes=settings.min_free_space * 1024 * 1024,
                         describe=describe, store_as=settings.store_transfer_syntax)
    handlers: dict[str, Any] = {"echo": handle_echo, "store": store.handle_store}
    from dicomtwist.services.qr import QueryRetrieve

    qr = QueryRetrieve(reactor, pool, index, settings, codec_pool=pixel_pool)
    handlers.update(find=qr.handle_find, move=qr.handle_move, get=qr.handle_get)
    policy = AcceptorPolicy(
        ae_title=settings.ae_title,
        contexts=supported_contexts(),
        scu_role_classes=frozenset(sopclasses.STORAGE_SOP_CLASSES),
        max_pdu=settings.max_pdu,
        require_called_aet=settings.require_called_aet,
        allowed_calling_aets=settings.allowed_calling_aets,
        peers=dict(settings.peers),
    )
    if settings.peers:
        handlers = {service: authorized(policy.access, service, handler)
                    for service, handler in handlers.items()}
    factory = AcceptorFactory(reactor, policy, handlers, sink_for=store.sink_for,
                              acse_timeout=settings.acse_timeout or 30.0,
                              dimse_timeout=settings.dimse_timeout,
                              network_timeout=settings.network_timeout,
                              max_associations=settings.max_associations)
    #: The store pipeline, shared with STOW-RS.
    factory.store = store
    return factory


_access_log = dlog.logger()


def authorized(rules: AccessRules, service: str, handler: Any) -> Any:
    """Wrap a service handler so that a peer whose section does not permit
    ``service`` gets 0x0124 "Refused: Not Authorized" (PS3.7 C.5.19), with
    one warning naming the peer, instead of the service."""
    def guarded(request: Any) -> Any:
        assoc = request.association
        if is_permitted(rules, assoc.peer_ae_title, service):
            return handler(request)
        _access_log.warn("Refusing {service} from {calling} at {peer}: not in its"
                         " permissions", service=service, calling=assoc.peer_ae_title,
                         peer=assoc.peer_description)
        if isinstance(request.data, str):
            # A C-STORE data set already streamed into a temporary file.
            try:
                os.unlink(request.data)
            except OSError:
                pass
        raise DIMSEServiceError(Status.NOT_AUTHORIZED,
                                f"{service} not permitted for {assoc.peer_ae_title}"[:64])

    return guarded


def listen_defaults(settings: configuration.Config) -> tls.ListenDefaults:
    """What ``ssl:`` descriptions leave out: ``tls_cert``, ``tls_key``, ``tls_ca``."""
    from dicomtwist import tls

    return tls.ListenDefaults(settings.tls_cert, settings.tls_key, settings.tls_ca)


def listen_descriptions(settings: configuration.Config) -> list[str]:
    """Every endpoint the archive listens on: ``listen``, or else the one
    :func:`listen_description` gives."""
    return list(settings.listen) or [listen_description(settings)]


def listen_description(settings: configuration.Config) -> str:
    """The endpoint description for the configured port and bind address."""
    description = f"tcp:{settings.port}"
    if settings.bind_address:
        address = settings.bind_address.replace(":", "\\:")
        description += f":interface={address}"
    return description


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the archive service for twistd (or :func:`run`).

    Without ``reactor`` (the daemon's entry points) the global reactor is
    used and the service takes over SIGTERM and SIGINT once it runs.
    """
    daemon = reactor is None
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor
    settings = options["settings"]
    dlog.set_level(options["level"])
    if options["clean"]:
        sys.exit(clean(settings, options["yes"]))
    if options["reindex"]:
        sys.exit(reindex(settings))
    top = service.MultiService()
    from dicomtwist import workers

    inherited = workers.adopted()
    if inherited is None and settings.workers > 1:
        return _supervisor(options, settings, reactor, daemon)
    archive = ArchiveService(settings, reactor, handle_signals=daemon,
                             recover=inherited is None)
    archive.setServiceParent(top)
    if inherited is not None:
        # A worker of --workers: accept on the supervisor's sockets.
        factories = [archive.factory] * len(listen_descriptions(settings))
        if archive.site is not None:
            factories.append(archive.site)
        for (fd, family), factory in zip(inherited, factories):
            workers.AdoptedPortService(reactor, fd, family, factory).setServiceParent(top)
        return top
    from dicomtwist import tls

    for description in listen_descriptions(settings):
        endpoint = tls.listen_endpoint(reactor, description, listen_defaults(settings))
        listener = StreamServerEndpointService(endpoint, archive.factory)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    if archive.site is not None:
        from twisted.internet.endpoints import serverFromString

        web = StreamServerEndpointService(serverFromString(reactor, settings.http), archive.site)
        web._raiseSynchronously = True
        web.setServiceParent(top)
    return top


def _supervisor(options: Options, settings: configuration.Config, reactor: Any,
                daemon: bool) -> service.MultiService:
    """``--workers N``: bind the listening sockets, recover once, and run N
    workers on them (:mod:`dicomtwist.workers`)."""
    from dicomtwist import workers
    from dicomtwist.storage.recovery import recover

    set_node(node_name(settings))
    descriptions = [*listen_descriptions(settings), *([settings.http] if settings.http else [])]
    sockets = []
    for description in descriptions:
        try:
            sockets.append(workers.bind(workers.parse_tcp(description)))
        except OSError as e:
            raise SystemExit(f"dicomqr: cannot listen on {description}: {e.strerror}") from None
    try:
        os.makedirs(settings.instance_location, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"dicomqr: cannot create the instance directory"
                         f" {settings.instance_location}: {e.strerror}") from None
    index = open_index(settings.database_location)
    try:
        log_recovery(recover(settings.instance_location, index))
    finally:
        index.close()
    top = service.MultiService()
    argv = [a for a in options["argv"]]
    supervisor = workers.WorkerSupervisor(reactor, settings.workers, sockets,
                                          workers.worker_argv(argv))
    supervisor.setServiceParent(top)
    if daemon:
        reactor.callWhenRunning(_stop_on_signals, reactor)
    return top


def open_index(location: str) -> Any:
    """The index at ``location`` (sqlite path or PostgreSQL URI).

    :raises SystemExit: it cannot be opened (one line naming it, no
        traceback).
    """
    from dicomtwist.storage.index import IndexUnavailable
    from dicomtwist.storage.index import open_index as opener

    try:
        return opener(location)
    except IndexUnavailable as e:
        raise SystemExit(f"dicomqr: {e}") from None


def clean(settings: configuration.Config, assume_yes: bool = False,
          ask: Any = input) -> int:
    """``--clean``: delete every indexed instance file and empty the index.

    Asks ``[yes/no]`` as the reference does; only ``yes`` proceeds.  Also
    removes leftover temporary files in the instance directory, and never
    anything outside it.

    :returns: the exit status.
    """
    if not assume_yes:
        try:
            answer = ask("This will delete all instances and the database, continue? [yes/no]: ")
        except EOFError:
            # No terminal, or stdin closed: that is not a "yes".
            print()
            answer = ""
        if answer.strip().lower() != "yes":
            print("Cleaning aborted")
            return 1
    from dicomtwist.storage.files import (
        remove_empty_buckets,
        stored_file,
        stored_instances,
        temporary_files,
    )
    from dicomtwist.storage.index import IndexUnavailable, open_index

    root = os.path.realpath(settings.instance_location)
    try:
        index = open_index(settings.database_location)
    except IndexUnavailable as e:
        print(f"dicomqr: {e}", file=sys.stderr)
        return 1
    removed = 0
    for relative in index.paths():
        try:
            # Only the two forms the archive writes, never a symbolic link.
            os.unlink(stored_file(root, relative))
            removed += 1
        except (ValueError, FileNotFoundError):
            pass
    for path in temporary_files(root):
        os.unlink(path)
    # Orphans: instance files whose row never made it (a crash between the
    # rename and the index), in either layout; named as the archive names
    # files, so ours.  Then the buckets this left empty.
    for _, relative in list(stored_instances(root)):
        os.unlink(os.path.join(root, *relative.split("/")))
        removed += 1
    remove_empty_buckets(root)
    index.clear()
    print(f"Removed {removed} instance(s) and emptied the database")
    return 0


def reindex(settings: configuration.Config) -> int:
    """``--reindex``: rebuild the index from the files, then exit.

    :returns: the exit status (1 if some files could not be read).
    """
    from dicomtwist.storage import recovery
    from dicomtwist.storage.index import IndexUnavailable, open_index

    os.makedirs(settings.instance_location, exist_ok=True)
    try:
        index = open_index(settings.database_location)
    except IndexUnavailable as e:
        print(f"dicomqr: {e}", file=sys.stderr)
        return 1
    report = recovery.reindex(settings.instance_location, index)
    index.close()
    print(f"Indexed {report.files_indexed} instance(s);"
          f" {len(report.unreadable)} file(s) could not be read")
    for name in report.unreadable:
        print(f"  unreadable: {name}")
    return 1 if report.unreadable else 0


def run() -> None:
    """The ``dicomqr`` console script: the archive in the foreground."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:])
    except usage.UsageError as e:
        print(f"dicomqr: error: {e}", file=sys.stderr)
        print("Try 'dicomqr --help' for usage.", file=sys.stderr)
        sys.exit(2)
    # After the options: optional.load() has decided what Twisted loads.
    from twisted.internet import reactor

    logs.start_logging(options["level"], sys.stderr)
    top = makeService(options)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


def _stop_on_signals(reactor: Any) -> None:
    """SIGTERM and SIGINT stop the reactor; a second one while it is
    already stopping (waiting for associations) is ignored, where Twisted's
    own handlers would log ``ReactorNotRunning``."""
    import signal

    from twisted.internet.error import ReactorNotRunning

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def handler(number: int, frame: Any) -> None:
        reactor.callFromThread(stop)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
