"""The archive's Prometheus metrics: an observer of the event bus.

:class:`ArchiveMetrics` keeps counters and histograms in a registry of its
own (never prometheus-client's process-global one: each archive, and each
test, has its own), moved by the events of :mod:`dicomtwist.events`; what
is a level rather than a count (thread-pool and group-commit queues, the
index's size, free disk space) is read when the registry is collected.

Label values are bounded: services, status classes, reasons and routes
come from fixed sets; a status code is its hex spelling only for the codes
PS3.7 names (:class:`~dicomtwist.status.Status`), else ``other``; a peer's
AE title is a label value only when it is listed in ``metrics_ae_titles``
(others are ``other``).  No UID, patient value or path is ever a label.

Index counts and free space need the file system or the database: they
are refreshed off the reactor (:meth:`ArchiveMetrics.refresh`, in the
thread pool, before a scrape is answered) and kept for :data:`LEVELS_TTL`
seconds, or until an instance is stored; collecting never blocks.

Under ``--workers N`` (:mod:`dicomtwist.workers`) every worker is given
``shared``, the directory the supervisor made for the workers' metrics
(``PROMETHEUS_MULTIPROC_DIR`` in their environment), and prometheus-client
runs in its multiprocess mode: each worker's counters, histograms and
gauges live in memory-mapped files there, and every worker's ``/metrics``
answers the same exposition, merged from all the files
(``MultiProcessCollector``).  Counters and histograms are summed over the
workers (a worker that exited or was restarted keeps its counts in the
sum, so totals never go back).  Levels are gauges with the mode that
gives one meaningful value for the archive: ``livesum`` for what each
worker has (associations, queues, threads, held memory: the archive's
total is the sum over the live workers) and ``livemostrecent`` for what
every worker measures the same (index counts, free space: the freshest
measurement).  A worker writes its levels every :data:`SAMPLE_INTERVAL`
seconds and just before it answers a scrape; the supervisor drops the
gauges of a worker that exits (``mark_process_dead``).  Without
``shared`` (one process) nothing of this is used: a private registry in
memory, as before.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.status import Category, Status, category

__all__ = ["ArchiveMetrics", "MULTIPROCESS_ENVIRONMENT", "SAMPLE_INTERVAL", "status_label",
           "LEVELS_TTL"]

# The ``*_created`` series (a timestamp per counter and label set) double
# the exposition and tell a scraper nothing it does not know.
disable_created_metrics()

#: Seconds the index counts and the free space are kept between refreshes.
LEVELS_TTL = 10.0
#: Under ``--workers``: seconds between two writes of a worker's levels
#: (thread pools, queues, associations) to the shared directory.
SAMPLE_INTERVAL = 1.0
#: The gauge of the associations established now.
ASSOCIATIONS_ACTIVE = "dicomtwist_associations_active"
#: The environment variable prometheus-client's multiprocess mode reads
#: (the directory of the memory-mapped files); set for workers only.
MULTIPROCESS_ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"

#: Latency buckets (seconds): a store or a query takes from a millisecond
#: (in memory, group-committed) to seconds (a big spilled instance, a
#: query over millions of rows).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)

_OUTCOMES = {Category.SUCCESS: "success", Category.WARNING: "warning",
             Category.FAILURE: "failure", Category.CANCEL: "cancel",
             Category.PENDING: "pending"}
_STATUS_CODES = frozenset(int(s) for s in Status)
_LEVELS = frozenset({"PATIENT", "STUDY", "SERIES", "IMAGE"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_REJECT_REASONS = frozenset({"called-ae", "calling-ae", "address", "application-context",
                             "limit", "other"})
_SERVICES = frozenset({"echo", "store", "find", "get", "move", "n-event-report", "n-get",
                       "n-set", "n-action", "n-create", "n-delete", "wado"})
#: Index levels exported, and the index's name of each.
_ENTITIES = (("patients", "PATIENT"), ("studies", "STUDY"), ("series", "SERIES"),
             ("instances", "IMAGE"))


def status_label(status: int) -> str:
    """A DIMSE status as a bounded label value: ``0xA700`` for a code PS3.7
    names, ``other`` for any other."""
    status = int(status)
    return f"0x{status:04X}" if status in _STATUS_CODES else "other"


def outcome(status: int) -> str:
    """The status class of a DIMSE status: success, warning, failure, cancel."""
    return _OUTCOMES[category(status)]


class ArchiveMetrics:
    """Counters, histograms and gauges of one archive, fed by the event bus.

    :param ae_titles: calling AE titles that get a label value of their own.
    :param pools: name -> thread pool, whose queue and workers are gauges.
    :param store: the store pipeline (its group-commit queue is a gauge).
    :param index: the index (its counts are gauges, refreshed in ``pool``).
    :param directory: the instance directory (its free space is a gauge).
    :param reactor: for ``deferToThreadPool``.
    :param pool: where index counts and free space are read.
    :param active: a callable giving the associations established now.
    :param audit: the audit trail, if any (its ``dropped`` count is exported).
    :param shared: under ``--workers``: the directory of the workers'
        metrics files (prometheus-client's multiprocess mode); None (one
        process): a registry in memory.
    """

    log = dlog.logger()

    def __init__(self, *, ae_titles: Iterable[str] = (), pools: dict[str, Any] | None = None,
                 store: Any = None, index: Any = None, directory: str | None = None,
                 reactor: Any = None, pool: Any = None,
                 active: Callable[[], int] | None = None, audit: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 shared: str | None = None) -> None:
        self.ae_titles = frozenset(ae_titles)
        self.pools = dict(pools or {})
        self.store = store
        self.index = index
        self.directory = directory
        self.reactor = reactor
        self.pool = pool
        self.audit = audit
        self._active = active
        self._clock = clock
        #: Index counts by level name and free bytes, and when read.
        self.levels: dict[str, int] = {}
        self.free_bytes: int | None = None
        self._levels_at: float | None = None
        #: An instance was stored since the counts were read.
        self._stale = False
        #: Who waits for the refresh running now (None: none runs).
        self._waiters: list[Deferred] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.shared = shared
        #: Under ``--workers``: writes the levels every SAMPLE_INTERVAL.
        self._sampler: LoopingCall | None = None
        #: Under ``--workers``: the pending write of the association count.
        self._active_write: Any = None
        if shared is None:
            _in_memory_values()
            #: What ``/metrics`` exposes.
            self.registry = CollectorRegistry(auto_describe=True)
            self._build(self.registry)
            self.registry.register(_Levels(self))
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            _shared_values(shared)
            # The metrics write to the shared files; their own registry is
            # never exposed (it holds this worker's values only).
            own = CollectorRegistry(auto_describe=True)
            self._build(own)
            self._build_levels(own)
            self.registry = CollectorRegistry()
            # Collected in this order: this worker's levels are written,
            # then every worker's files are merged.
            self.registry.register(_Sampler(self))
            MultiProcessCollector(self.registry, path=shared)
        self._handlers: dict[type, Callable[[Any], None]] = {
            events.AssociationAccepted: self._accepted,
            events.AssociationRejected: self._rejected,
            events.AssociationEnded: self._ended,
            events.OperationCompleted: self._operation,
            events.InstanceStored: self._stored,
            events.StoreFailed: self._store_failed,
            events.InstanceSent: self._sent,
            events.QueryPerformed: self._query,
            events.RetrieveEnded: self._retrieve_ended,
            events.AuthenticationFailed: self._auth_failed,
            events.HttpRequestServed: self._http,
        }

    def _build(self, r: CollectorRegistry) -> None:
        p = "dicomtwist_"
        self.associations_accepted = Counter(
            p + "associations_accepted", "Associations accepted, by calling AE title"
            " (metrics_ae_titles; others are 'other')", ["calling_ae"], registry=r)
        self.associations_rejected = Counter(
            p + "associations_rejected", "Associations rejected, by reason",
            ["reason"], registry=r)
        self.associations_aborted = Counter(
            p + "associations_aborted", "Established associations that ended in an abort"
            " (either side, or the connection lost)", registry=r)
        self.associations_released = Counter(
            p + "associations_released", "Established associations released", registry=r)
        self.associations_active = Gauge(
            ASSOCIATIONS_ACTIVE, "Associations established now", registry=r,
            multiprocess_mode="livesum")
        if self._active is not None and self.shared is None:
            self.associations_active.set_function(self._active)
        self.operations = Counter(
            p + "dimse_operations", "DIMSE requests served, by service and final status"
            " (outcome: success/warning/failure/cancel; status: the code when PS3.7 names"
            " it, else 'other')", ["service", "outcome", "status"], registry=r)
        self.operation_seconds = Histogram(
            p + "dimse_operation_seconds", "Seconds from a DIMSE request to its final"
            " response, by service", ["service"], buckets=BUCKETS, registry=r)
        self.instances_stored = Counter(
            p + "instances_stored", "Instances stored (durable and indexed), by way"
            " (dimse/http) and calling AE title", ["via", "calling_ae"], registry=r)
        self.bytes_stored = Counter(
            p + "stored_bytes", "Bytes of the instance files stored", ["via"], registry=r)
        self.store_failures = Counter(
            p + "store_failures", "Stores answered with a failure status", ["via", "status"],
            registry=r)
        self.store_seconds = Histogram(
            p + "store_seconds", "Store latency and its parts: total (first byte to"
            " Success), receive (first to last byte), fsync (temporary file written and"
            " made durable), commit (the group commit)", ["part"], buckets=BUCKETS,
            registry=r)
        self._store_parts = tuple(self.store_seconds.labels(part)
                                  for part in ("total", "receive", "fsync", "commit"))
        self.instances_sent = Counter(
            p + "instances_sent", "Instances sent (C-MOVE/C-GET sub-operations that"
            " succeeded, WADO-RS parts)", ["via"], registry=r)
        self.bytes_sent = Counter(
            p + "sent_bytes", "Bytes of the instances sent", ["via"], registry=r)
        self.sub_operations = Counter(
            p + "sub_operations", "C-MOVE/C-GET sub-operations, by result"
            " (success/warning/failure)", ["result"], registry=r)
        self.retrieves = Counter(
            p + "retrieves", "Retrieves ended (C-MOVE, C-GET, WADO-RS), by service and"
            " outcome", ["service", "outcome"], registry=r)
        self.queries = Counter(
            p + "queries", "Queries answered (C-FIND, QIDO-RS), by way, level and outcome",
            ["via", "level", "outcome"], registry=r)
        self.query_seconds = Histogram(
            p + "query_seconds", "Query latency (C-FIND: request to final response;"
            " QIDO-RS: the index query and its JSON)", ["via"], buckets=BUCKETS, registry=r)
        self.query_matches = Counter(
            p + "query_matches", "Matches returned by queries", ["via"], registry=r)
        self.authentication_failures = Counter(
            p + "authentication_failures", "Credentials refused (HTTP) and TLS handshakes"
            " that failed (DICOM)", ["via"], registry=r)
        self.http_requests = Counter(
            p + "http_requests", "HTTP requests answered, by route, method and status code",
            ["route", "method", "code"], registry=r)
        self.http_seconds = Histogram(
            p + "http_request_seconds", "Seconds to answer an HTTP request, by route",
            ["route"], buckets=BUCKETS, registry=r)

    def _build_levels(self, r: CollectorRegistry) -> None:
        """Under ``--workers``: the levels :class:`_Levels` reads at scrape
        time in one process, as gauges written by :meth:`sample` (and a
        counter for the audit drops), each with its multiprocess mode."""
        p = "dicomtwist_"
        self.pool_queued = Gauge(
            p + "thread_pool_queued", "Work items waiting for a thread, by pool",
            ["pool"], registry=r, multiprocess_mode="livesum")
        self.pool_busy = Gauge(
            p + "thread_pool_busy", "Threads working, by pool", ["pool"], registry=r,
            multiprocess_mode="livesum")
        self.pool_max = Gauge(
            p + "thread_pool_max", "Threads a pool may run, by pool", ["pool"], registry=r,
            multiprocess_mode="livesum")
        self.group_commit_queued = Gauge(
            p + "group_commit_queued", "Prepared instances waiting for the next group"
            " commit", registry=r, multiprocess_mode="livesum")
        self.spool_memory = Gauge(
            p + "spool_memory_bytes", "Bytes of received data sets held in memory",
            registry=r, multiprocess_mode="livesum")
        self.index_entities = Gauge(
            p + "index_entities", "Entities in the index, by level (refreshed every few"
            " seconds)", ["level"], registry=r, multiprocess_mode="livemostrecent")
        self.free_space = Gauge(
            p + "instance_directory_free_bytes", "Free space of the instance directory's"
            " file system", registry=r, multiprocess_mode="livemostrecent")
        self.audit_dropped = Counter(
            p + "audit_messages_dropped", "Audit messages dropped (the queue to the"
            " collector was full)", registry=r)
        #: The audit drops already added to ``audit_dropped``.
        self._audit_counted = 0

    def associations_established(self) -> int | None:
        """Under ``--workers``: the associations established now in every
        live worker, as ``/metrics`` shows them (this worker's count written
        first, then the workers' files of live sums merged); None in one
        process, whose caller counts its own."""
        if self.shared is None:
            return None
        self._set_active()
        from prometheus_client.multiprocess import MultiProcessCollector

        files = glob.glob(os.path.join(self.shared, "gauge_livesum_*.db"))
        for family in MultiProcessCollector.merge(files, accumulate=False):
            if family.name == ASSOCIATIONS_ACTIVE:
                return int(sum(sample.value for sample in family.samples))
        return 0

    def sample(self) -> None:
        """Under ``--workers``: write this worker's levels to the shared
        files (every :data:`SAMPLE_INTERVAL` seconds and before a scrape)."""
        if self.shared is None:
            return
        for name, pool in self.pools.items():
            waiting, working = _pool_state(pool)
            self.pool_queued.labels(name).set(waiting)
            self.pool_busy.labels(name).set(working)
            self.pool_max.labels(name).set(getattr(pool, "max", 0))
        if self.store is not None:
            self.group_commit_queued.set(len(getattr(self.store, "_queue", ())))
            budget = getattr(self.store, "budget", None)
            if budget is not None:
                self.spool_memory.set(budget.used)
        self._set_active()
        if self.audit is not None:
            dropped = int(getattr(self.audit, "dropped", 0))
            if dropped > self._audit_counted:
                self.audit_dropped.inc(dropped - self._audit_counted)
                self._audit_counted = dropped

    # -- the bus -------------------------------------------------------------
    def subscribe(self, bus: events.EventBus = events.bus) -> None:
        """Start counting the events of ``bus`` (under ``--workers``, and
        writing the levels every :data:`SAMPLE_INTERVAL` seconds)."""
        if self._unsubscribe is None:
            self._unsubscribe = bus.subscribe(self.observe)
        if self.shared is not None and self._sampler is None and self.reactor is not None:
            self._sampler = LoopingCall(self.sample)
            self._sampler.clock = self.reactor
            self._sampler.start(SAMPLE_INTERVAL, now=True).addErrback(
                lambda f: self.log.failure("Cannot write the metrics levels", f))

    def unsubscribe(self) -> None:
        """Stop counting."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._sampler is not None:
            if self._sampler.running:
                self._sampler.stop()
            self._sampler = None
        if self._active_write is not None:
            if self._active_write.active():
                self._active_write.cancel()
            self._active_write = None

    def observe(self, event: Any) -> None:
        """Count one event (the bus's observer)."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _ae(self, title: str) -> str:
        if not title:
            return ""
        return title if title in self.ae_titles else "other"

    def _accepted(self, e: events.AssociationAccepted) -> None:
        self.associations_accepted.labels(self._ae(e.calling_ae)).inc()
        if self._active is None:
            self.associations_active.inc()
        elif self.shared is not None:
            self._active_changed()

    def _rejected(self, e: events.AssociationRejected) -> None:
        reason = e.reason if e.reason in _REJECT_REASONS else "other"
        self.associations_rejected.labels(reason).inc()

    def _ended(self, e: events.AssociationEnded) -> None:
        if e.how == "aborted":
            self.associations_aborted.inc()
        else:
            self.associations_released.inc()
        if self._active is None:
            self.associations_active.dec()
        elif self.shared is not None:
            self._active_changed()

    def _active_changed(self) -> None:
        """Under ``--workers``: write this worker's association count once
        the event being published is handled (an ending association counts
        until just after it publishes its end), so that every worker's
        ``/api/status`` and ``/metrics`` show it at once, not at the next
        sample."""
        if self._active_write is None and self.reactor is not None:
            self._active_write = self.reactor.callLater(0, self._write_active)

    def _write_active(self) -> None:
        self._active_write = None
        self._set_active()

    def _set_active(self) -> None:
        """Under ``--workers``: write this worker's association count."""
        if self._active is not None:
            self.associations_active.set(self._active())

    def _operation(self, e: events.OperationCompleted) -> None:
        service = e.service if e.service in _SERVICES else "other"
        self.operations.labels(service, outcome(e.status), status_label(e.status)).inc()
        self.operation_seconds.labels(service).observe(e.seconds)

    def _stored(self, e: events.InstanceStored) -> None:
        self._stale = True
        via = _via(e.via)
        self.instances_stored.labels(via, self._ae(e.calling_ae)).inc()
        self.bytes_stored.labels(via).inc(e.size)
        total, receive, fsync, commit = self._store_parts
        total.observe(e.total)
        receive.observe(e.receive)
        fsync.observe(e.fsync)
        commit.observe(e.commit)

    def _store_failed(self, e: events.StoreFailed) -> None:
        self.store_failures.labels(_via(e.via), status_label(e.status)).inc()

    def _sent(self, e: events.InstanceSent) -> None:
        via = _via(e.via)
        kind = outcome(e.status)
        if via == "dimse":
            self.sub_operations.labels(kind if kind in ("success", "warning")
                                       else "failure").inc()
        if kind in ("success", "warning"):
            self.instances_sent.labels(via).inc()
            self.bytes_sent.labels(via).inc(e.size)

    def _retrieve_ended(self, e: events.RetrieveEnded) -> None:
        service = e.service if e.service in _SERVICES else "other"
        self.retrieves.labels(service, outcome(e.status)).inc()

    def _query(self, e: events.QueryPerformed) -> None:
        via = _via(e.via)
        level = e.level if e.level in _LEVELS else "other"
        self.queries.labels(via, level, outcome(e.status)).inc()
        self.query_seconds.labels(via).observe(e.seconds)
        self.query_matches.labels(via).inc(e.matches)

    def _auth_failed(self, e: events.AuthenticationFailed) -> None:
        self.authentication_failures.labels(_via(e.via)).inc()

    def _http(self, e: events.HttpRequestServed) -> None:
        method = e.method if e.method in _METHODS else "other"
        code = str(e.status) if 100 <= e.status <= 599 else "other"
        self.http_requests.labels(e.route, method, code).inc()
        self.http_seconds.labels(e.route).observe(e.seconds)

    # -- levels read at scrape time ------------------------------------------
    def refresh(self) -> Deferred:
        """Read the index counts and the free space again if they are older
        than :data:`LEVELS_TTL` (in the thread pool); fires when they are
        current (a failure is logged and leaves the old values)."""
        if self._waiters is not None:
            waiter: Deferred = Deferred()
            self._waiters.append(waiter)
            return waiter
        now = self._clock()
        if (not self._stale and self._levels_at is not None
                and now - self._levels_at < LEVELS_TTL):
            return succeed(None)
        if self.pool is None or (self.index is None and self.directory is None):
            return succeed(None)
        waiter = Deferred()
        self._waiters = [waiter]
        self._stale = False
        deferToThreadPool(self.reactor, self.pool, self._read_levels).addBoth(self._refreshed)
        return waiter

    def _refreshed(self, result: Any) -> None:
        waiters, self._waiters = self._waiters or [], None
        if isinstance(result, Failure):
            self.log.failure("Cannot read the index size or the free space", result)
        else:
            self.levels, self.free_bytes = result
            self._levels_at = self._clock()
            if self.shared is not None:
                for name, count in self.levels.items():
                    self.index_entities.labels(name).set(count)
                if self.free_bytes is not None:
                    self.free_space.set(self.free_bytes)
        for waiter in waiters:
            waiter.callback(None)

    def _read_levels(self) -> tuple[dict[str, int], int | None]:
        """In a worker: the index counts and the free space."""
        from dicomtwist.storage.files import free_bytes

        levels = {}
        if self.index is not None:
            for name, level in _ENTITIES:
                levels[name] = int(self.index.count(level))
        free = free_bytes(self.directory) if self.directory is not None else None
        return levels, free


def _in_memory_values() -> None:
    """One process: prometheus-client keeps values in memory, even if
    ``PROMETHEUS_MULTIPROC_DIR`` was in the environment when it was
    imported (only the workers of ``--workers`` share files)."""
    if values.ValueClass is not values.MutexValue:
        values.ValueClass = values.MutexValue
        os.environ.pop(MULTIPROCESS_ENVIRONMENT, None)


def _shared_values(directory: str) -> None:
    """A worker: prometheus-client writes values to files in ``directory``
    (as it does when ``PROMETHEUS_MULTIPROC_DIR`` was set at import, which
    the supervisor does)."""
    os.environ[MULTIPROCESS_ENVIRONMENT] = directory
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()


def _via(via: str) -> str:
    return via if via in ("dimse", "http") else "other"


class _Levels(Collector):
    """What is read when collected: thread pools, the group-commit queue,
    the index's size and free space (as last refreshed), audit drops."""

    def __init__(self, metrics: ArchiveMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list:
        """Nothing to describe ahead (the families depend on the setup)."""
        return []

    def collect(self) -> Iterable[Any]:
        """The gauges, as they are now."""
        m = self.metrics
        p = "dicomtwist_"
        queued = GaugeMetricFamily(p + "thread_pool_queued", "Work items waiting for a"
                                   " thread, by pool", labels=["pool"])
        busy = GaugeMetricFamily(p + "thread_pool_busy", "Threads working, by pool",
                                 labels=["pool"])
        size = GaugeMetricFamily(p + "thread_pool_max", "Threads a pool may run, by pool",
                                 labels=["pool"])
        for name, pool in m.pools.items():
            waiting, working = _pool_state(pool)
            queued.add_metric([name], waiting)
            busy.add_metric([name], working)
            size.add_metric([name], getattr(pool, "max", 0))
        yield queued
        yield busy
        yield size
        if m.store is not None:
            yield GaugeMetricFamily(p + "group_commit_queued", "Prepared instances waiting"
                                    " for the next group commit",
                                    value=len(getattr(m.store, "_queue", ())))
            budget = getattr(m.store, "budget", None)
            if budget is not None:
                yield GaugeMetricFamily(p + "spool_memory_bytes", "Bytes of received data"
                                        " sets held in memory", value=budget.used)
        if m.levels:
            entities = GaugeMetricFamily(p + "index_entities", "Entities in the index, by"
                                         " level (refreshed every few seconds)",
                                         labels=["level"])
            for name, _ in _ENTITIES:
                if name in m.levels:
                    entities.add_metric([name], m.levels[name])
            yield entities
        if m.free_bytes is not None:
            yield GaugeMetricFamily(p + "instance_directory_free_bytes", "Free space of the"
                                    " instance directory's file system",
                                    value=m.free_bytes)
        if m.audit is not None:
            yield CounterMetricFamily(p + "audit_messages_dropped", "Audit messages dropped"
                                      " (the queue to the collector was full)",
                                      value=int(getattr(m.audit, "dropped", 0)))


class _Sampler(Collector):
    """Under ``--workers``: writes this worker's levels when the shared
    registry is collected, before the files are merged; yields nothing."""

    def __init__(self, metrics: ArchiveMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list:
        """Nothing."""
        return []

    def collect(self) -> Iterable[Any]:
        """Sample; no family of its own."""
        self.metrics.sample()
        return []


def _pool_state(pool: Any) -> tuple[int, int]:
    """A Twisted thread pool's waiting work items and busy threads."""
    team = getattr(pool, "_team", None)
    if team is not None:
        try:
            stats = team.statistics()
            return stats.backloggedWorkCount, stats.busyWorkerCount
        except Exception:
            pass
    return 0, len(getattr(pool, "working", ()))
