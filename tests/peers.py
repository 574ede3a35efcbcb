"""Run real DICOM peers (DCMTK tools, pynetdicom scripts) for end-to-end tests.

Every peer is a child process spawned through the reactor, so the test's
reactor never blocks and pynetdicom's threads never run inside it.  Peers
only ever talk to 127.0.0.1.  A started peer is killed in the test's cleanup
and the cleanup waits for it to exit.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from twisted.internet import defer, error, protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

#: Where the DCMTK binaries live; the ``echoscu`` & co. on PATH may be
#: pyenv shims running pynetdicom's apps instead.
DCMTK_BIN = "/usr/bin"
#: The pynetdicom peer scripts (run with this interpreter).
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_scripts")
LOCALHOST = "127.0.0.1"


def dcmtk(name: str) -> str:
    """The path of a DCMTK tool.

    :raises SkipTest: the tool is not installed.
    """
    path = os.path.join(DCMTK_BIN, name)
    if not os.access(path, os.X_OK):
        raise SkipTest(f"DCMTK {name} not installed at {path}")
    return path


def require_pynetdicom() -> None:
    """:raises SkipTest: pynetdicom (the test peer) is not installed."""
    try:
        import pynetdicom  # noqa: F401
    except ImportError:
        raise SkipTest("pynetdicom not installed")


def peer_env() -> dict[str, str]:
    """The environment for peers: ours, with Nagle off for DCMTK."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def run_tool(reactor, executable: str, args: Sequence[str],
             timeout: float = 30.0) -> Deferred[tuple[bytes, bytes, int]]:
    """Run a command to completion.

    :returns: a Deferred firing with ``(stdout, stderr, exit code)``; a
        process still running after ``timeout`` seconds is killed (and then
        reports a non-zero code through its signal).
    """
    d = getProcessOutputAndValue(executable, list(args), env=peer_env(), reactor=reactor)

    def killed(failure):
        # getProcessOutputAndValue errbacks with (out, err, signal) on a kill.
        out, err, signal = failure.value.args
        return out, err, -signal

    d.addErrback(killed)
    return d.addTimeout(timeout, reactor)


def script(name: str) -> str:
    """The path of a script in ``tests/peer_scripts``."""
    return os.path.join(SCRIPTS, name)


def run_script(reactor, name: str, args: Sequence[str],
               timeout: float = 30.0) -> Deferred[tuple[bytes, bytes, int]]:
    """Run a peer script with this Python until it exits."""
    return run_tool(reactor, sys.executable, [script(name), *args], timeout)


class PeerProcess(protocol.ProcessProtocol):
    """A long-running peer (an SCP): collects its output, stops on cleanup.

    :ivar exited: fires with the exit code (or ``-signal``) when it ends.
    """

    def __init__(self, reactor, description: str, polite: bool = False) -> None:
        self.reactor = reactor
        self.description = description
        self.polite = polite
        self.out = bytearray()
        self.err = bytearray()
        self.exited: Deferred[int] = Deferred()
        self._line_waiters: list[tuple[bytes, Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        """Keep stdout and wake whoever waits for a marker in it."""
        self.out += data
        self._check_waiters()

    def errReceived(self, data: bytes) -> None:
        """Keep stderr (DCMTK logs there)."""
        self.err += data

    def processEnded(self, reason) -> None:
        """Fire ``exited``; fail anyone still waiting for output."""
        value = reason.value
        code = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        waiters, self._line_waiters = self._line_waiters, []
        for _, d in waiters:
            d.errback(RuntimeError(f"{self.description} exited ({code}) before"
                                   f" printing the expected line:\n{self.output()}"))
        self.exited.callback(code)

    def output(self) -> str:
        """Everything the peer printed, for failure messages."""
        return (self.out + self.err).decode("utf-8", "replace")

    def wait_for_output(self, marker: bytes, timeout: float = 20.0) -> Deferred[bytes]:
        """Fire with the first stdout line containing ``marker``."""
        d: Deferred[bytes] = Deferred()
        self._line_waiters.append((marker, d))
        self._check_waiters()
        return d.addTimeout(timeout, self.reactor)

    def _check_waiters(self) -> None:
        lines = bytes(self.out).splitlines()
        still = []
        for marker, d in self._line_waiters:
            line = next((ln for ln in lines if marker in ln), None)
            if line is None:
                still.append((marker, d))
            else:
                d.callback(line)
        self._line_waiters = still

    def stop(self, timeout: float = 10.0) -> Deferred[int]:
        """Stop the peer and fire when it has exited.

        A polite peer (our scripts) is asked to stop by closing its stdin;
        others (DCMTK SCPs) get SIGTERM.  Either is killed after ``timeout``.
        """
        if self.exited.called:
            return defer.succeed(None)
        done: Deferred[int] = Deferred()
        self.exited.addBoth(lambda r: (done.called or done.callback(r), r)[1])
        try:
            if self.polite:
                self.transport.closeStdin()
            else:
                self.transport.signalProcess("TERM")
        except (error.ProcessExitedAlready, OSError):
            pass
        timer = self.reactor.callLater(timeout, self._kill)
        done.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return done

    def _kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass


def start_peer(testcase, reactor, executable: str, args: Sequence[str],
               description: str, polite: bool = False) -> PeerProcess:
    """Spawn a long-running peer, stopped in ``testcase``'s cleanup.

    :param polite: the peer stops when its stdin closes.
    """
    peer = PeerProcess(reactor, description, polite)
    reactor.spawnProcess(peer, executable, [executable, *args], env=peer_env())
    testcase.addCleanup(peer.stop)
    return peer


def start_script_peer(testcase, reactor, name: str, args: Sequence[str]) -> PeerProcess:
    """Spawn a peer script from ``tests/peer_scripts`` with this Python."""
    return start_peer(testcase, reactor, sys.executable, ["-u", script(name), *args], name,
                      polite=True)


class _Probe(protocol.Protocol):
    """Connect, note whether it was a TCP self-connect, hang up."""

    self_connected = False

    def connectionMade(self) -> None:
        # Connecting to a free ephemeral-range port on loopback can pick that
        # same port as the local one and "succeed" with nobody listening.
        host, peer = self.transport.getHost(), self.transport.getPeer()
        self.self_connected = (host.host, host.port) == (peer.host, peer.port)
        self.transport.loseConnection()


async def _wait_for_port(reactor, port: int, peer: PeerProcess | None,
                         attempts: int, interval: float) -> None:
    creator = protocol.ClientCreator(reactor, _Probe)
    for _ in range(attempts):
        if peer is not None and peer.exited.called:
            raise RuntimeError(f"{peer.description} exited before listening:\n{peer.output()}")
        try:
            probe = await creator.connectTCP(LOCALHOST, port, timeout=2)
        except error.ConnectError:
            pass
        else:
            if not probe.self_connected:
                return
        await deferLater(reactor, interval, lambda: None)
    raise RuntimeError(f"nothing listening on {LOCALHOST}:{port}"
                       f" after {attempts} attempts"
                       + (f":\n{peer.output()}" if peer is not None else ""))


def wait_for_port(reactor, port: int, peer: PeerProcess | None = None,
                  attempts: int = 200, interval: float = 0.05) -> Deferred[None]:
    """Fire once ``127.0.0.1:port`` accepts a connection (bounded polling).

    :raises RuntimeError: (in the Deferred) after ``attempts`` refused
        connections, or when ``peer`` exits first.
    """
    return Deferred.fromCoroutine(_wait_for_port(reactor, port, peer, attempts, interval))


#: Run twistd with this interpreter (the plugin is found through PYTHONPATH).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
#: The source tree, put first on the daemon's PYTHONPATH.
SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def daemon_env() -> dict[str, str]:
    """The daemon's environment: the peers', with the source tree importable."""
    env = peer_env()
    env["PYTHONPATH"] = os.pathsep.join([SOURCE_TREE, *filter(None, [env.get("PYTHONPATH")])])
    return env


async def start_dicomqr(testcase, reactor, cwd: str, config: str, port: int,
                        *args: str) -> PeerProcess:
    """Start ``twistd -n dicomqr -c config`` in ``cwd``; fire once it listens
    on ``127.0.0.1:port``.  It is stopped (SIGTERM) in the test's cleanup."""
    process = PeerProcess(reactor, "twistd dicomqr")
    argv = [*TWISTD, "-n", "--pidfile=", "dicomqr", "-c", config, *args]
    reactor.spawnProcess(process, TWISTD[0], argv, env=daemon_env(), path=cwd)
    testcase.addCleanup(process.stop)
    await wait_for_port(reactor, port, process, attempts=400)
    return process
