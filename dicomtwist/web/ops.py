"""What operators and their tools read over HTTP: ``/metrics``,
``/healthz`` and ``/readyz``.

- ``GET /metrics``: the archive's Prometheus metrics
  (:mod:`dicomtwist.metrics`) in the text exposition format, made by
  prometheus-client.  When HTTP users or tokens are configured it obeys
  them, with the ``metrics`` permission (a Prometheus scraper sends a
  bearer token: ``authorization: {credentials: ...}`` in its scrape
  configuration).
- ``GET /healthz``: 200 while the process answers (liveness).
- ``GET /readyz``: 200 when the index answers a cheap query within
  :data:`CHECK_TIMEOUT` seconds, a file can be created and deleted in the
  instance directory, and its free space is above the floor; 503 with one
  reason a line otherwise (readiness).  Both run in the thread pool.

Health checks need no credentials: a load balancer's probe has none, and
they tell nothing but whether the archive can work.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThreadPool
from twisted.web import server
from twisted.web.resource import Resource

from dicomtwist import log as dlog
from dicomtwist.web.auth import Credentials
from dicomtwist.web.dicomweb.resource import HttpError, authorize_request, send_body, send_error

__all__ = ["CHECK_TIMEOUT", "HealthResource", "MetricsResource", "ReadinessChecks",
           "ReadyResource", "mount"]

#: Seconds each readiness check may take before it counts as failed.
CHECK_TIMEOUT = 5.0


class MetricsResource(Resource):
    """``/metrics``: the registry of an :class:`~dicomtwist.metrics.ArchiveMetrics`.

    Values read from the index and the disk are refreshed first (in the
    thread pool, at most every few seconds); the exposition itself is made
    on the reactor from values in memory.
    """

    isLeaf = True
    log = dlog.logger()

    def __init__(self, metrics: Any, credentials: Credentials | None = None) -> None:
        super().__init__()
        self.metrics = metrics
        self.credentials = credentials or Credentials()

    def render_GET(self, request: server.Request) -> Any:
        """Authorize, refresh, answer the exposition."""
        request.route = "metrics"
        try:
            authorize_request(self.credentials, request, "metrics")
        except HttpError as e:
            send_error(request, e)
            return server.NOT_DONE_YET
        d = self.metrics.refresh()
        d.addCallback(lambda _: send_body(request, 200, CONTENT_TYPE_LATEST,
                                          generate_latest(self.metrics.registry),
                                          compress=True))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    render_HEAD = render_GET

    def _failed(self, failure: Any, request: server.Request) -> None:
        self.log.failure("Cannot answer /metrics", failure)
        send_error(request, HttpError(500, "internal error"))


class HealthResource(Resource):
    """``/healthz``: the process is alive and its reactor answers."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        """200 ``ok``."""
        request.route = "healthz"
        request.setHeader("content-type", "text/plain; charset=utf-8")
        request.setHeader("cache-control", "no-store")
        return b"ok\n"

    render_HEAD = render_GET


class ReadinessChecks:
    """The readiness checks of one archive; each gives None or a reason.

    :param reactor: the clock for timeouts and ``deferToThreadPool``.
    :param pool: where the checks run (never on the reactor).
    :param index: an index with ``count(level)``.
    :param directory: the instance directory.
    :param min_free_bytes: the free-space floor (0: none).
    :param free_bytes: how free space is read (a test substitutes it).
    """

    def __init__(self, reactor: Any, pool: Any, index: Any, directory: str,
                 min_free_bytes: int = 0,
                 free_bytes: Callable[[str], int] | None = None) -> None:
        from dicomtwist.storage.files import free_bytes as disk_free

        self.reactor = reactor
        self.pool = pool
        self.index = index
        self.directory = directory
        self.min_free_bytes = min_free_bytes
        self.free_bytes = free_bytes or disk_free

    def run(self) -> Deferred:
        """Every check at once; fires with the list of reasons (empty: ready)."""
        checks = [self._check(self._index, "index"), self._check(self._writable, "instance"
                                                                 " directory"),
                  self._check(self._disk, "free disk space")]
        return DeferredList(checks).addCallback(
            lambda results: [reason for _, reason in results if reason])

    def _check(self, check: Callable[[], str | None], what: str) -> Deferred:
        d = deferToThreadPool(self.reactor, self.pool, check)
        d.addTimeout(CHECK_TIMEOUT, self.reactor)

        def failed(failure: Any) -> str:
            from twisted.internet.defer import TimeoutError as DeferredTimeout

            if failure.check(DeferredTimeout):
                return f"{what}: no answer in {CHECK_TIMEOUT:g} s"
            return f"{what}: {failure.getErrorMessage()}"

        return d.addErrback(failed)

    def _index(self) -> str | None:
        """In a worker: a cheap query (the number of patients)."""
        try:
            self.index.count("PATIENT")
        except Exception as e:
            return f"index not reachable: {e}"
        return None

    def _writable(self) -> str | None:
        """In a worker: create and delete a temporary file in the instance
        directory (named as the store's temporary files, so a crash's
        leftover goes at the next start)."""
        from dicomtwist.storage.files import temp_prefix

        try:
            fd, path = tempfile.mkstemp(dir=self.directory, prefix=temp_prefix(),
                                        suffix=".ready")
            os.close(fd)
            os.unlink(path)
        except OSError as e:
            return f"instance directory {self.directory} not writable: {e.strerror or e}"
        return None

    def _disk(self) -> str | None:
        """In a worker: free space against the floor."""
        if not self.min_free_bytes:
            return None
        try:
            free = self.free_bytes(self.directory)
        except OSError as e:
            return f"cannot read the free space of {self.directory}: {e.strerror or e}"
        if free < self.min_free_bytes:
            return (f"free disk space {free // (1024 * 1024)} MB is below the floor of"
                    f" {self.min_free_bytes // (1024 * 1024)} MB")
        return None


class ReadyResource(Resource):
    """``/readyz``: 200 ``ready``, or 503 with the reasons, one a line."""

    isLeaf = True
    log = dlog.logger()

    def __init__(self, checks: ReadinessChecks) -> None:
        super().__init__()
        self.checks = checks

    def render_GET(self, request: server.Request) -> Any:
        """Run the checks, answer."""
        request.route = "readyz"
        self.checks.run().addCallback(self._answer, request)
        return server.NOT_DONE_YET

    render_HEAD = render_GET

    def _answer(self, reasons: list[str], request: server.Request) -> None:
        headers = {"cache-control": "no-store"}
        if reasons:
            self.log.warn("Not ready: {reasons}", reasons="; ".join(reasons))
            send_body(request, 503, "text/plain; charset=utf-8",
                      "".join(f"{r}\n" for r in reasons).encode("utf-8"), headers)
        else:
            send_body(request, 200, "text/plain; charset=utf-8", b"ready\n", headers)


def mount(root: Resource, metrics: Any, checks: ReadinessChecks,
          credentials: Credentials | None = None) -> Resource:
    """Put ``/metrics`` (when ``metrics`` is given), ``/healthz`` and
    ``/readyz`` under ``root``; returns ``root``."""
    if metrics is not None:
        root.putChild(b"metrics", MetricsResource(metrics, credentials))
    root.putChild(b"healthz", HealthResource())
    root.putChild(b"readyz", ReadyResource(checks))
    return root
