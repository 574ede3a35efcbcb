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

from dicomtwist import optional

# Twisted imports the standard library's OpenSSL, which the daemon uses
# only for TLS or HTTP (see dicomtwist.optional; in a process that has
# loaded it already, a test runner's, this hides nothing).
with optional.standard_openssl_hidden():
    from twisted.application import service
    from twisted.application.internet import StreamServerEndpointService
    from twisted.logger import LogLevel
    from twisted.python import usage
    from twisted.python.threadpool import ThreadPool

    import dicomtwist
    from dicomtwist import config as configuration
    from dicomtwist import events
    from dicomtwist import log as dlog
    from dicomtwist import logs
from dicomtwist.access import AccessRules, is_permitted
from dicomtwist.errors import DicomError, DIMSEServiceError
from dicomtwist.status import Status

if TYPE_CHECKING:
    from dicomtwist import tls
    from dicomtwist.acse import AcceptorPolicy
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
        ["worklist-location", None, None, "answer Modality Worklist queries from the"
                                          " *.wl files in this directory (default: no"
                                          " worklist records)"],
        ["workers", None, None, "run N archive processes behind the same listening"
                                " ports (needs a PostgreSQL index; default 1)"],
        ["poll-spin", None, None, "microseconds the reactor polls before it sleeps"
                                  " while requests come close together, 0 to 1000"
                                  " (default 40; 0: never)"],
        ["log-format", None, None, "text (the console format, default) or json (one"
                                   " JSON object a line, for log shippers)"],
        ["http", None, None, "serve DICOMweb on this endpoint, e.g. tcp:8042 or"
                             " tcp:8042:interface=127.0.0.1 or ssl:8443:privateKey=...:"
                             "certKey=... (default: no HTTP port)"],
        ["audit", None, None, "send DICOM audit messages (PS3.15 A.5) to udp:HOST:PORT or"
                              " tls:HOST:PORT (syslog), or append them to file:PATH"
                              " (default: no audit trail)"],
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
        "log-format": "log_format",
        "store-transfer-syntax": "store_transfer_syntax",
        "worklist-location": "worklist_location",
        "workers": "workers",
        "poll-spin": "poll_spin",
        "audit": "audit",
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
        try:
            super().parseOptions(self["argv"])
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # Under twistd, which would print its whole usage text to
            # standard output: one line on standard error, exit status 1.
            raise SystemExit(f"dicomqr: error: {e}") from None

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
        for key in ("tls_ca", "tls_cert", "tls_key", "http_users", "http_tokens",
                    "audit_tls_ca", "audit_tls_cert", "audit_tls_key", "worklist_location"):
            if getattr(cfg, key) is not None:
                setattr(cfg, key, os.path.abspath(getattr(cfg, key)))
        optional.load(tls=optional.needs_tls(cfg), pixels=optional.needs_pixels(cfg))
        if cfg.worklist_location is not None and not os.path.isdir(cfg.worklist_location):
            raise usage.UsageError(f"--worklist-location/worklist_location"
                                   f" {cfg.worklist_location!r}: not a directory")
        if cfg.audit is not None:
            _check_audit(cfg)
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


def _check_audit(cfg: configuration.Config) -> None:
    """Check the audit trail's destination (and TLS files) now.

    :raises usage.UsageError: naming ``audit`` and what is wrong.
    """
    from dicomtwist import tls
    from dicomtwist.audit.trail import parse_destination

    try:
        destination = parse_destination(cfg.audit)
        if destination.kind == "file":
            cfg.audit = "file:" + os.path.abspath(destination.path)
        elif destination.kind == "tls":
            tls.client_options(destination.host, cfg.audit_tls_ca, cfg.audit_tls_cert,
                               cfg.audit_tls_key)
    except ValueError as e:
        raise usage.UsageError(f"--audit/audit {cfg.audit!r}: {e}") from None


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
    spec (data sets are stored as received); the query/retrieve, worklist,
    UPS, Storage Commitment and MPPS classes take the uncompressed ones.
    """
    from dicomtwist import sopclasses
    from dicomtwist.services import qr
    from dicomtwist.services.commitment import STORAGE_COMMITMENT
    from dicomtwist.services.mpps import MPPS

    # Explicit VR Little Endian first: it keeps the VRs of private elements.
    explicit = "1.2.840.10008.1.2.1"
    storage = [explicit, *(ts for ts in sopclasses.STORAGE_TRANSFER_SYNTAXES if ts != explicit)]
    uncompressed = [explicit, *(ts for ts in sopclasses.UNCOMPRESSED_TRANSFER_SYNTAXES
                                if ts != explicit), "1.2.840.10008.1.2.1.99"]
    contexts: dict[str, list[str]] = {}
    for uid in sopclasses.STORAGE_SOP_CLASSES:
        contexts[uid] = storage
    contexts[sopclasses.VERIFICATION] = storage
    for uid in (*qr.FIND_MODELS, *qr.MOVE_MODELS, *qr.GET_MODELS, *qr.EMPTY_FIND,
                STORAGE_COMMITMENT, MPPS):
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
                 handle_signals: bool = False, recover: bool = True,
                 shared_metrics: str | None = None) -> None:
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
        check_writable(settings.instance_location)
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
        #: The Prometheus metrics (:mod:`dicomtwist.metrics`), kept only
        #: when they are served (``http`` set): otherwise nobody listens
        #: to the event bus.
        self.metrics = None
        #: The HTTP site (DICOMweb, /metrics, /healthz, /readyz), with
        #: ``http`` set.
        self.site = None
        if settings.http is not None:
            from dicomtwist.metrics import ArchiveMetrics
            from dicomtwist.web.site import build_site

            factory = self.factory
            self.metrics = ArchiveMetrics(
                ae_titles=settings.metrics_ae_titles,
                pools={"store": self.pool, "pixels": self.pixel_pool},
                store=factory.store, index=self.index,
                directory=settings.instance_location, reactor=reactor, pool=self.pool,
                active=lambda: len(factory.active), shared=shared_metrics)
            self.site = build_site(settings, reactor, self.pool, self.pixel_pool,
                                   self.index, self.factory.store, metrics=self.metrics,
                                   associations=self._associations_now,
                                   node=node_name(settings))
        #: The audit trail (:mod:`dicomtwist.audit`), with ``audit`` set;
        #: its ``dropped`` counts the messages it lost.
        self.audit = None
        if settings.audit is not None:
            from dicomtwist.audit import trail

            self.audit = trail.build(reactor, settings)
            if self.metrics is not None:
                self.metrics.audit = self.audit

    def _associations_now(self) -> int:
        """``/api/status``'s count: this process's associations, or under
        ``--workers`` those established in every worker."""
        shared = self.metrics.associations_established()
        return len(self.factory.associations) if shared is None else shared

    def startService(self) -> None:
        """Recover, then start the worker threads."""
        from dicomtwist.storage.recovery import recover

        # Temporary files carry this node's name (nodes may share the
        # instance directory): recovery removes only its own.
        set_node(node_name(self.settings))
        if self.recover:
            report = recover(self.settings.instance_location, self.index)
            log_recovery(report)
        abandon_jobs(self.index, self.settings, worker=not self.recover)
        super().startService()
        # Everything loaded so far (pydicom's dictionaries, Twisted) lives
        # as long as the process: keep it out of every full collection.
        gc.collect()
        gc.freeze()
        self.pool.start()
        self.pixel_pool.start()
        # Storage commitment requests left outstanding are reported once
        # the reactor runs.
        self.reactor.callWhenRunning(self._start_commitment)
        if self.handle_signals:
            self.reactor.callWhenRunning(_stop_on_signals, self.reactor)
        self.log.info("Archive {aet}: instances in {dir}, index {db}",
                      aet=self.settings.ae_title, dir=self.settings.instance_location,
                      db=self.index.location)
        if self.audit is not None:
            self.audit.start()
        if self.metrics is not None:
            self.metrics.subscribe()
        if events.bus.observed:
            events.bus.publish(events.ApplicationStarted(
                self.settings.ae_title, node_name(self.settings),
                tuple(listen_descriptions(self.settings))
                + ((self.settings.http,) if self.settings.http else ())))

    def _start_commitment(self) -> None:
        if self.running:
            self.factory.commitment.start().addErrback(
                lambda f: self.log.failure("Storage commitment: cannot read outstanding"
                                           " requests", f))

    def stopService(self) -> Any:
        """Let associations finish (bounded), abort the rest, stop the pool."""
        super().stopService()
        if events.bus.observed:
            events.bus.publish(events.ApplicationStopped(self.settings.ae_title,
                                                         node_name(self.settings)))
        from twisted.internet import defer

        self.factory.commitment.stop()

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
            if self.metrics is not None:
                self.metrics.unsubscribe()
            if self.audit is not None:
                return self.audit.stop()
            return None

        waiting.addBoth(done)
        return waiting


def abandon_jobs(index: Any, settings: configuration.Config, worker: bool = False) -> None:
    """Mark ``failed`` the web jobs an earlier process of this node left
    running (it died): at a node's start all of them, at a ``--workers``
    worker's start those of processes that are gone (blocking, at start)."""
    import time

    from dicomtwist.storage.index import jobs

    alive = jobs.pid_alive if worker else (lambda pid, start: False)
    try:
        ended = jobs.abandon(index, node_name(settings), time.time(), alive)
    except Exception:
        _log.failure("Cannot mark the web jobs of ended processes")
        return
    if ended:
        _log.warn("Marked {count} web job(s) of ended processes failed: {ids}",
                  count=len(ended), ids=", ".join(map(str, ended)))


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
    from dicomtwist.services import qr as qr_module
    from dicomtwist.services.qr import EXTENDED_NEGOTIATION, QueryRetrieve

    qr = QueryRetrieve(reactor, pool, index, settings, codec_pool=pixel_pool)
    handlers.update(find=qr.handle_find, move=qr.handle_move, get=qr.handle_get)
    if settings.worklist_location is not None:
        from dicomtwist.services.worklist import WORKLIST_FIND, Worklist

        worklist = Worklist(reactor, pool, settings.worklist_location)
        finds = {uid: qr.handle_find for uid in (*qr_module.FIND_MODELS, *qr_module.EMPTY_FIND)}
        finds[WORKLIST_FIND] = worklist.handle_find
        handlers["find"] = by_sop_class(finds)
    policy = AcceptorPolicy(
        ae_title=settings.ae_title,
        contexts=supported_contexts(),
        scu_role_classes=frozenset(sopclasses.STORAGE_SOP_CLASSES),
        max_pdu=settings.max_pdu,
        require_called_aet=settings.require_called_aet,
        allowed_calling_aets=settings.allowed_calling_aets,
        peers=dict(settings.peers),
        window=((settings.async_operations,) * 2 if settings.async_operations > 1 else None),
        extended_negotiation=EXTENDED_NEGOTIATION,
    )
    if settings.peers:
        handlers = {service: authorized(policy.access, service, handler)
                    for service, handler in handlers.items()}
    commitment, normalized = _normalized_services(settings, reactor, pool, index, policy)
    handlers.update(normalized)
    factory = AcceptorFactory(reactor, policy, handlers, sink_for=store.sink_for,
                              acse_timeout=settings.acse_timeout or 30.0,
                              dimse_timeout=settings.dimse_timeout,
                              network_timeout=settings.network_timeout,
                              max_associations=settings.max_associations)
    #: The store pipeline, shared with STOW-RS.
    factory.store = store
    #: The Storage Commitment SCP (started and stopped with the archive).
    factory.commitment = commitment
    return factory


def _normalized_services(settings: configuration.Config, reactor: Any, pool: ThreadPool,
                         index: Any, policy: AcceptorPolicy) -> tuple[Any, dict[str, Any]]:
    """The DIMSE-N services: Storage Commitment (N-ACTION) and MPPS
    (N-CREATE, N-SET), by handler name, each routed by SOP class; a peer's
    ``permissions`` name them ``commitment`` and ``mpps``.

    :returns: the Storage Commitment service and the handlers.
    """
    from dicomtwist.services.commitment import STORAGE_COMMITMENT, StorageCommitment
    from dicomtwist.services.mpps import MPPS, ModalityPerformedProcedureStep

    commitment = StorageCommitment(reactor, pool, index, settings, settings.instance_location)
    mpps = ModalityPerformedProcedureStep(reactor, pool, settings.instance_location)
    routes: dict[str, dict[str, Any]] = {
        "n-action": {STORAGE_COMMITMENT: ("commitment", commitment.handle_action)},
        "n-create": {MPPS: ("mpps", mpps.handle_create)},
        "n-set": {MPPS: ("mpps", mpps.handle_set)},
        "n-get": {}, "n-delete": {}, "n-event-report": {},
    }
    handlers = {}
    for name, by_class in routes.items():
        if settings.peers:
            by_class = {uid: (permission, authorized(policy.access, permission, handler))
                        for uid, (permission, handler) in by_class.items()}
        handlers[name] = by_sop_class({uid: h for uid, (_, h) in by_class.items()})
    return commitment, handlers


def by_sop_class(handlers: dict[str, Any]) -> Any:
    """One handler for a DIMSE-N service that the SOP class's own handler
    serves; a SOP class that does not offer the operation (an N-GET of
    MPPS, any N-EVENT-REPORT to the archive) gets 0x0211 "Unrecognized
    Operation" (PS3.7 Annex C)."""
    def route(request: Any) -> Any:
        message = request.message
        sop_class = (getattr(message, "affected_sop_class_uid", None)
                     or getattr(message, "requested_sop_class_uid", None))
        handler = handlers.get(sop_class)
        if handler is None:
            raise DIMSEServiceError(Status.UNRECOGNIZED_OPERATION,
                                    f"{message.NAME[:-3]} not offered for {sop_class}"[:64])
        return handler(request)

    return route


_access_log = dlog.logger()
_log = dlog.logger()


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
        reactor = _global_reactor()
    settings = options["settings"]
    if hasattr(reactor, "spin"):
        # Our reactor (dicomtwist.reactor): the configured spin.
        reactor.spin = settings.poll_spin * 1e-6
    dlog.set_level(options["level"])
    if options["clean"]:
        sys.exit(clean(settings, options["yes"]))
    if options["reindex"]:
        sys.exit(reindex(settings))
    top = _Top()
    if settings.log_format != "text" and getattr(options, "parent", None) is not None:
        top.log_observer = _twistd_observer(options.parent, settings.log_format,
                                            options["level"])
    from dicomtwist import workers

    inherited = workers.adopted()
    if inherited is None and settings.workers > 1:
        supervisor = _supervisor(options, settings, reactor, daemon)
        supervisor.log_observer = top.log_observer
        return supervisor
    if daemon and inherited is None:
        # A port in use is one line and a non-zero exit now, before twistd
        # logs, daemonizes or writes its pid file.
        check_ports([*listen_descriptions(settings), *([settings.http] if settings.http
                                                       else [])])
    archive = ArchiveService(settings, reactor, handle_signals=daemon,
                             recover=inherited is None,
                             shared_metrics=workers.metrics_directory())
    archive.setServiceParent(top)
    if inherited is not None:
        # A worker of --workers: accept on the supervisor's sockets.
        factories = [archive.factory] * len(listen_descriptions(settings))
        if archive.site is not None:
            factories.append(archive.site)
        for (fd, family), factory in zip(inherited, factories):
            workers.AdoptedPortService(reactor, fd, family, factory,
                                       acceptor=factory is archive.factory).setServiceParent(top)
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


def check_writable(directory: str) -> None:
    """Create and delete a file in the instance directory.

    :raises SystemExit: one line naming the directory and the cause.
    """
    import tempfile

    try:
        fd, path = tempfile.mkstemp(dir=directory, prefix=".dicomtwist-check-")
        os.close(fd)
        os.unlink(path)
    except OSError as e:
        raise SystemExit(f"dicomqr: cannot write in the instance directory {directory}:"
                         f" {e.strerror or e}") from None


class _Top(service.MultiService):
    """The archive's top service; under twistd with ``--log-format json`` it
    gives the application its log observer (twistd uses an application's
    :class:`~twisted.logger.ILogObserver` component in place of its own)."""

    log_observer: Any = None

    def setServiceParent(self, parent: Any) -> None:
        """Join ``parent``; set our log observer on it (twistd's application)."""
        super().setServiceParent(parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log_observer)


def _twistd_observer(twistd_options: Any, log_format: str, level: LogLevel) -> Any:
    """The log observer of ``log_format`` writing where twistd would have
    written (``--logfile``; standard output with ``-n`` and no log file;
    ``twistd.log`` otherwise).  None under ``--syslog`` (twistd's own)."""
    if twistd_options.get("syslog"):
        return None
    name = twistd_options.get("logfile")
    if name == "-" or (twistd_options.get("nodaemon") and not name):
        stream: Any = sys.stdout
    else:
        from twisted.python.logfile import LogFile

        stream = LogFile.fromFullPath(os.path.abspath(name or "twistd.log"))
    return logs.observer_for(log_format, level, stream)


def check_ports(descriptions: list[str]) -> None:
    """Bind each ``tcp:``/``ssl:`` endpoint description's address for a
    moment, so that a port in use (or one we may not bind) is reported
    before anything starts.

    :raises SystemExit: one line naming the description and the cause.
    """
    import socket

    for description in descriptions:
        address = _listen_address(description)
        if address is None or address[1] == 0:
            continue
        interface, port = address
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            # As Twisted binds its listening ports.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((interface, port))
        except OSError as e:
            raise SystemExit(f"dicomqr: cannot listen on {description}:"
                             f" {e.strerror or e}") from None
        finally:
            probe.close()


def _listen_address(description: str) -> tuple[str, int] | None:
    """``(interface, port)`` of a ``tcp:``/``ssl:`` description, or None
    for other kinds (``unix:``...) and what cannot be read (the endpoint
    parser reports that)."""
    import re

    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    if parts[0] not in ("tcp", "ssl") or len(parts) < 2:
        return None
    port = None
    interface = ""
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if not sep and port is None:
            port = part
        elif name == "port":
            port = value
        elif name == "interface":
            interface = value
    try:
        return interface, int(port) if port is not None else 0
    except ValueError:
        return None


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
        abandon_jobs(index, settings)
    finally:
        index.close()
    top = _Top()
    argv = [a for a in options["argv"]]
    supervisor = workers.WorkerSupervisor(reactor, settings.workers, sockets,
                                          workers.worker_argv(argv),
                                          shared_metrics=settings.http is not None)
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


def _global_reactor() -> Any:
    """The process's reactor: ours (:mod:`dicomtwist.reactor`), unless one
    was chosen (``twistd --reactor``) or installed already."""
    from dicomtwist import reactor as dicom_reactor

    dicom_reactor.install()
    from twisted.internet import reactor

    return reactor


def run() -> None:
    """The ``dicomqr`` console script: the archive in the foreground."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:])
    except usage.UsageError as e:
        print(f"dicomqr: error: {e} (dicomqr --help lists the options)", file=sys.stderr)
        sys.exit(2)
    # After the options: optional.load() has decided what Twisted loads.
    reactor = _global_reactor()
    logs.start_logging(options["level"], sys.stderr, options["settings"].log_format)
    top = makeService(options)
    from twisted.internet.error import CannotListenError

    try:
        # Listen before anything starts (as twistd does), so that a port
        # taken meanwhile stops us at once instead of leaving us running
        # without it.
        top.privilegedStartService()
    except CannotListenError as e:
        print(f"dicomqr: cannot listen on {e.interface or '*'}:{e.port}:"
              f" {getattr(e.socketError, 'strerror', None) or e.socketError}", file=sys.stderr)
        sys.exit(1)
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
