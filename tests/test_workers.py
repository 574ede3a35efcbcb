"""``--workers``: parsing listeners, sharing sockets, refusing sqlite."""

from __future__ import annotations

import os
import socket

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import workers
from dicomtwist.tap import Options


class ParseTests(SynchronousTestCase):
    """``workers.parse_tcp``: the tcp: descriptions workers share."""

    def test_forms(self) -> None:
        """Port, interface (with escaped IPv6 colons) and backlog are read as
        Twisted reads them."""
        self.assertEqual(workers.parse_tcp("tcp:11112"), workers.Listener(11112))
        self.assertEqual(workers.parse_tcp("tcp:8042:interface=127.0.0.1"),
                         workers.Listener(8042, "127.0.0.1"))
        self.assertEqual(workers.parse_tcp("tcp:port=104:interface=\\:\\:1:backlog=10"),
                         workers.Listener(104, "::1", 10))

    def test_refused(self) -> None:
        """ssl: listeners and malformed descriptions are refused by name."""
        for bad in ("ssl:2762:privateKey=k.pem", "tcp", "tcp:1:2", "tcp:1:mode=0"):
            with self.assertRaises(ValueError) as caught:
                workers.parse_tcp(bad)
            self.assertIn(bad.split(":")[0], str(caught.exception))


class SocketTests(SynchronousTestCase):
    """``workers.bind`` and ``workers.adopted``."""

    def test_bind_listens_and_is_inheritable(self) -> None:
        """The supervisor's socket listens on loopback and is passed to children."""
        sock = workers.bind(workers.Listener(0, "127.0.0.1"))
        self.addCleanup(sock.close)
        self.assertTrue(sock.get_inheritable())
        client = socket.create_connection(sock.getsockname(), timeout=5)
        client.close()

    def test_adopted(self) -> None:
        """A worker reads its sockets from the environment; others have none."""
        os.environ.pop(workers.ENVIRONMENT, None)
        self.assertIsNone(workers.adopted())
        os.environ[workers.ENVIRONMENT] = f"3:{int(socket.AF_INET)},4:{int(socket.AF_INET6)}"
        self.addCleanup(os.environ.pop, workers.ENVIRONMENT, None)
        self.assertEqual(workers.adopted(), [(3, socket.AF_INET), (4, socket.AF_INET6)])

    def test_worker_argv(self) -> None:
        """A worker runs the dicomqr entry point with the same options."""
        argv = workers.worker_argv(["--port", "104", "--workers", "2"])
        self.assertEqual(argv[-4:], ["--port", "104", "--workers", "2"])
        self.assertIn("from dicomtwist.tap import run; run()", argv)


class OptionTests(SynchronousTestCase):
    """``--workers`` on the command line."""

    def test_sqlite_refused(self) -> None:
        """More than one worker on an sqlite index is a usage error saying why."""
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--workers", "2", "--database-location",
                                    self.mktemp()])
        self.assertIn("PostgreSQL", str(caught.exception))

    def test_one_worker_is_the_default(self) -> None:
        """--workers 1 is accepted with sqlite (it is the plain daemon)."""
        options = Options()
        options.parseOptions(["--workers", "1", "--database-location", self.mktemp()])
        self.assertEqual(options["settings"].workers, 1)

    def test_ssl_listener_refused(self) -> None:
        """Workers share tcp: listeners only."""
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--workers", "2", "--database-location",
                                    "postgresql://127.0.0.1/x", "--listen",
                                    "ssl:2762:privateKey=k.pem:certKey=c.pem"])
        self.assertIn("tcp:", str(caught.exception))

    def test_bad_count(self) -> None:
        """A count below 1 is refused, naming the option."""
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--workers", "0"])
        self.assertIn("workers", str(caught.exception))


class _Transport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class _Reactor:
    """Spawns nothing: records the environment and gives process ids."""

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.callLater = self.clock.callLater
        self.seconds = self.clock.seconds
        self.spawned: list[tuple[object, dict]] = []
        self.pids = iter(range(7001, 7100))

    def spawnProcess(self, protocol, executable, args, env, childFDs):  # noqa: N802
        transport = _Transport(next(self.pids))
        protocol.transport = transport
        self.spawned.append((protocol, env))
        return transport


def _end(worker: object, code: int = 1) -> None:
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    worker.processEnded(Failure(ProcessTerminated(exitCode=code)))


class SharedMetricsDirectoryTests(SynchronousTestCase):
    """The supervisor's directory for the workers' metrics."""

    def test_made_passed_dropped_removed(self) -> None:
        """A fresh private directory is passed to every worker (and only
        with shared metrics); a worker that exits has its live gauges
        dropped, the restarted one gets the same directory; the directory
        is removed at stop."""
        reactor = _Reactor()
        supervisor = workers.WorkerSupervisor(reactor, 2, [], ["python"],
                                              shared_metrics=True)
        supervisor.startService()
        directory = supervisor.metrics_directory
        self.assertTrue(os.path.isdir(directory))
        self.assertEqual(os.listdir(directory), [])
        self.assertEqual([env["PROMETHEUS_MULTIPROC_DIR"] for _, env in reactor.spawned],
                         [directory, directory])
        first = reactor.spawned[0][0]
        for name in ("gauge_livesum_7001.db", "gauge_livesum_7002.db", "counter_7001.db"):
            open(os.path.join(directory, name), "wb").close()
        _end(first)
        self.assertEqual(sorted(os.listdir(directory)),
                         ["counter_7001.db", "gauge_livesum_7002.db"])
        self.assertEqual(len(reactor.spawned), 3)
        self.assertEqual(reactor.spawned[2][1]["PROMETHEUS_MULTIPROC_DIR"], directory)
        stopped = supervisor.stopService()
        for worker in list(supervisor.workers.values()):
            _end(worker, 0)
        self.successResultOf(stopped)
        self.assertFalse(os.path.exists(directory))
        self.assertIsNone(supervisor.metrics_directory)

    def test_none_without_http(self) -> None:
        """Without shared metrics no directory is made, and a
        PROMETHEUS_MULTIPROC_DIR of the supervisor's environment is not
        passed on."""
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = "/nonexistent"
        self.addCleanup(os.environ.pop, "PROMETHEUS_MULTIPROC_DIR", None)
        reactor = _Reactor()
        supervisor = workers.WorkerSupervisor(reactor, 1, [], ["python"])
        supervisor.startService()
        self.assertIsNone(supervisor.metrics_directory)
        self.assertNotIn("PROMETHEUS_MULTIPROC_DIR", reactor.spawned[0][1])
        stopped = supervisor.stopService()
        _end(reactor.spawned[0][0], 0)
        self.successResultOf(stopped)

    def test_metrics_directory_in_workers_only(self) -> None:
        """A worker reads the directory from its environment; a process
        that is not a worker never does."""
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = "/somewhere"
        self.addCleanup(os.environ.pop, "PROMETHEUS_MULTIPROC_DIR", None)
        os.environ.pop(workers.ENVIRONMENT, None)
        self.assertIsNone(workers.metrics_directory())
        os.environ[workers.ENVIRONMENT] = f"3:{int(socket.AF_INET)}"
        self.addCleanup(os.environ.pop, workers.ENVIRONMENT, None)
        self.assertEqual(workers.metrics_directory(), "/somewhere")


class MetricsEnvironmentTests(SynchronousTestCase):
    """The supervisor names prometheus-client's directory variable without
    importing :mod:`dicomtwist.metrics`."""

    def test_same_name(self) -> None:
        """The two constants name the same variable."""
        from dicomtwist.metrics import MULTIPROCESS_ENVIRONMENT

        self.assertEqual(workers.METRICS_ENVIRONMENT, MULTIPROCESS_ENVIRONMENT)
