"""``--workers N``: N archive processes behind the same listening ports.

The supervisor (the process ``twistd dicomqr`` or ``dicomqr`` started)
binds every listening socket itself (the DIMSE ports and the HTTP one),
runs start-up recovery once, and spawns N worker processes: the same
program and options, told by ``DICOMTWIST_WORKER_FDS`` which inherited
file descriptors are their listening sockets.  Each worker adopts them
(``IReactorSocket.adoptStreamPort``) and accepts from the same queues, so
the kernel spreads the connections over the workers; each runs its own
reactor, thread pools and index connections.  The index must be one all
processes share safely: PostgreSQL (``tap.py`` refuses ``--workers`` with
sqlite).

With HTTP (``/metrics``), the supervisor makes a fresh private directory
for the workers' metrics (a temporary directory, removed at stop) and
passes it to every worker in ``PROMETHEUS_MULTIPROC_DIR``: prometheus-
client's multiprocess mode, so every worker's ``/metrics`` answers the
totals of all workers (:mod:`dicomtwist.metrics`).  When a worker exits,
its live gauges are dropped (``mark_process_dead``); its counters stay in
the sums.

The supervisor restarts a worker that dies (at most
:data:`MAX_RESTARTS` in :data:`RESTART_WINDOW` seconds each), and at stop
(SIGTERM) passes SIGTERM on and waits for every worker to finish its
associations (their own shutdown grace).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol

from dicomtwist import log as dlog

__all__ = ["ENVIRONMENT", "Listener", "WorkerSupervisor", "adopted", "bind",
           "metrics_directory", "parse_tcp"]

#: The environment variable telling a worker its listening sockets:
#: ``fd:family,fd:family`` in the order of the listen descriptions, the
#: HTTP one last.
ENVIRONMENT = "DICOMTWIST_WORKER_FDS"
#: prometheus-client's multiprocess directory variable, which
#: :data:`dicomtwist.metrics.MULTIPROCESS_ENVIRONMENT` names too: not
#: imported from there, which would load prometheus-client (and with it
#: the standard library's OpenSSL, see :mod:`dicomtwist.optional`) into a
#: supervisor that serves no HTTP.
METRICS_ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"
#: A worker that dies is restarted at most this often...
MAX_RESTARTS = 5
#: ... within this many seconds.
RESTART_WINDOW = 60.0
#: Seconds workers get to stop after SIGTERM before SIGKILL (on top of
#: their own shutdown grace).
STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Listener:
    """A ``tcp:`` endpoint description, parsed."""

    port: int
    interface: str = ""
    backlog: int = 50


def parse_tcp(description: str) -> Listener:
    """Parse ``tcp:PORT[:interface=ADDR][:backlog=N]`` (``\\:`` escapes a
    colon in an IPv6 address), as Twisted's ``serverFromString`` reads it.

    :raises ValueError: not a ``tcp:`` description (``ssl:`` listeners are
        not shared with workers).
    """
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    if parts[0] != "tcp" or len(parts) < 2:
        raise ValueError(f"{description!r}: --workers shares tcp: listeners only")
    values: dict[str, str] = {}
    port = None
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if not sep:
            if port is not None:
                raise ValueError(f"{description!r}: two ports")
            port = part
        else:
            values[name] = value
    port = values.pop("port", port)
    unknown = set(values) - {"interface", "backlog"}
    if port is None or unknown:
        raise ValueError(f"{description!r}: expected tcp:PORT[:interface=ADDR][:backlog=N]")
    return Listener(int(port), values.get("interface", ""), int(values.get("backlog", 50)))


def bind(listener: Listener) -> socket.socket:
    """A listening, inheritable socket for ``listener``."""
    family = socket.AF_INET6 if ":" in listener.interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((listener.interface, listener.port))
    sock.listen(listener.backlog)
    sock.set_inheritable(True)
    sock.setblocking(False)
    return sock


def adopted() -> list[tuple[int, int]] | None:
    """In a worker: its listening sockets as ``(fd, family)``; None in any
    other process."""
    value = os.environ.get(ENVIRONMENT)
    if value is None:
        return None
    found = []
    for item in value.split(","):
        fd, _, family = item.partition(":")
        found.append((int(fd), int(family)))
    return found


def metrics_directory() -> str | None:
    """In a worker: the shared metrics directory the supervisor made (None
    without HTTP, and in any other process)."""
    if os.environ.get(ENVIRONMENT) is None:
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class AdoptedPortService(service.Service):
    """Accept on an inherited listening socket (a worker's port)."""

    def __init__(self, reactor: Any, fd: int, family: int, factory: Any,
                 acceptor: bool = False) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family
        self.factory = factory
        #: DICOM associations: accept with :class:`dicomtwist.ul.transport.AcceptorPort`
        #: (as a ``tcp:`` listener does) rather than Twisted's port.
        self.acceptor = acceptor
        self.port: Any = None

    def privilegedStartService(self) -> None:
        """Adopt the socket (it is already bound and listening)."""
        self._adopt()
        super().privilegedStartService()

    def startService(self) -> None:
        """Adopt the socket unless :meth:`privilegedStartService` did: a
        worker runs ``tap.run``, which only calls ``startService``."""
        self._adopt()
        super().startService()

    def _adopt(self) -> None:
        if self.port is None:
            if self.acceptor:
                from dicomtwist.ul.transport import adopt

                self.port = adopt(self.reactor, self.fd, self.family, self.factory)
            else:
                self.port = self.reactor.adoptStreamPort(self.fd, self.family, self.factory)
            os.close(self.fd)

    def stopService(self) -> Any:
        """Stop accepting."""
        super().stopService()
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
        return None


class _Worker(protocol.ProcessProtocol):
    """One worker process, watched by the supervisor."""

    def __init__(self, supervisor: "WorkerSupervisor", number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.ended: defer.Deferred = defer.Deferred()
        #: The process id (known once spawned; Twisted forgets it at the end).
        self.pid: int | None = None

    def processEnded(self, reason: Any) -> None:
        """Tell the supervisor; fire ``ended``."""
        code = reason.value.exitCode
        self.ended.callback(code)
        self.supervisor.ended(self, code, reason.value.signal)


class WorkerSupervisor(service.Service):
    """Spawn, watch and stop the worker processes.

    :param reactor: spawns the processes.
    :param count: how many workers.
    :param sockets: the listening sockets, in the order the workers adopt
        them.
    :param argv: the worker's command line (this program and its options).
    :param shared_metrics: make a directory for the workers' metrics files
        (prometheus-client's multiprocess mode): with HTTP.
    """

    log = dlog.logger()

    def __init__(self, reactor: Any, count: int, sockets: list[socket.socket],
                 argv: list[str], shared_metrics: bool = False) -> None:
        self.reactor = reactor
        self.count = count
        self.sockets = sockets
        self.argv = argv
        self.workers: dict[int, _Worker] = {}
        self._restarts: dict[int, list[float]] = {}
        self._stopping = False
        self.shared_metrics = shared_metrics
        #: The workers' metrics directory while running (None without).
        self.metrics_directory: str | None = None

    def startService(self) -> None:
        """Make the metrics directory, spawn the workers."""
        super().startService()
        if self.shared_metrics and self.metrics_directory is None:
            self.metrics_directory = tempfile.mkdtemp(prefix="dicomtwist-metrics-")
        for number in range(self.count):
            self._spawn(number)
        self.log.info("Started {count} worker process(es)", count=self.count)

    def _spawn(self, number: int) -> None:
        env = dict(os.environ)
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        mapping = []
        for n, sock in enumerate(self.sockets):
            child_fds[3 + n] = sock.fileno()
            mapping.append(f"{3 + n}:{int(sock.family)}")
        env[ENVIRONMENT] = ",".join(mapping)
        env.pop(METRICS_ENVIRONMENT, None)
        if self.metrics_directory is not None:
            env[METRICS_ENVIRONMENT] = self.metrics_directory
        worker = _Worker(self, number)
        self.workers[number] = worker
        transport = self.reactor.spawnProcess(worker, self.argv[0], self.argv, env=env,
                                              childFDs=child_fds)
        worker.pid = getattr(transport, "pid", None)

    def ended(self, worker: _Worker, code: int | None, signal_number: int | None) -> None:
        """A worker exited: restart it, unless stopping or restarting too often."""
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if self.metrics_directory is not None and worker.pid is not None:
            from prometheus_client.multiprocess import mark_process_dead

            # Its live gauges (associations, queues) leave the sums; its
            # counters stay in the totals.
            mark_process_dead(worker.pid, self.metrics_directory)
        if self._stopping or not self.running:
            return
        self.log.warn("Worker {number} exited (code {code}, signal {signal})",
                      number=worker.number, code=code, signal=signal_number)
        now = self.reactor.seconds()
        recent = [t for t in self._restarts.get(worker.number, []) if now - t < RESTART_WINDOW]
        if len(recent) >= MAX_RESTARTS:
            self.log.error("Worker {number} died {count} times in {window:.0f} s: not"
                           " restarted", number=worker.number, count=len(recent),
                           window=RESTART_WINDOW)
            return
        recent.append(now)
        self._restarts[worker.number] = recent
        self._spawn(worker.number)

    def stopService(self) -> Any:
        """SIGTERM every worker; fire once all have exited (SIGKILL after
        :data:`STOP_TIMEOUT` seconds)."""
        super().stopService()
        self._stopping = True
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, "TERM")
        done = defer.DeferredList([w.ended for w in workers], consumeErrors=True)
        timer = self.reactor.callLater(STOP_TIMEOUT,
                                       lambda: [_signal(w, "KILL") for w in workers])

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            for sock in self.sockets:
                sock.close()
            if self.metrics_directory is not None:
                shutil.rmtree(self.metrics_directory, ignore_errors=True)
                self.metrics_directory = None
            return result

        return done.addBoth(finished)


def _signal(worker: _Worker, name: str) -> None:
    try:
        worker.transport.signalProcess(name)
    except (error.ProcessExitedAlready, OSError, AttributeError):
        pass


def worker_argv(options: list[str]) -> list[str]:
    """The command line a worker runs: this Python, the ``dicomqr`` entry
    point, and the archive options this process was given."""
    return [sys.executable, "-c", "from dicomtwist.tap import run; run()", *options]
