"""End-to-end tests of the real daemon against hostile and careless peers.

Silent and trickling connections, the association limit, path traversal
in UIDs, SQL wildcard characters in queries, and ``kill -9`` in the middle
of concurrent stores.  Everything runs on 127.0.0.1 with free ports, and
every load is bounded in count and time.
"""

from __future__ import annotations

import os
import sqlite3
import time

from pydicom.dataset import Dataset
from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from dicomtwist.association import associate
from dicomtwist.errors import AssociationRejected
from dicomtwist.status import Status
from dicomtwist.storage.files import instance_path, relative_path, stored_instances
from tests import peers
from tests.helpers import CT_IMAGE_STORAGE, UNCOMPRESSED, VERIFICATION, ct_dataset, free_port

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CONTEXTS = [(VERIFICATION, UNCOMPRESSED), (CT_IMAGE_STORAGE, UNCOMPRESSED),
            (STUDY_FIND, UNCOMPRESSED)]


class _Silent(protocol.Protocol):
    """Connects and says nothing (or one byte now and then); notes the close."""

    def __init__(self, trickle: bytes = b"") -> None:
        self.trickle = trickle
        self.closed: Deferred[None] = Deferred()
        self._call = None

    def connectionMade(self) -> None:
        if self.trickle:
            self._call = reactor.callLater(0.2, self._drip, 0)

    def _drip(self, at: int) -> None:
        if at < len(self.trickle) and self.transport.connected:
            self.transport.write(self.trickle[at:at + 1])
            self._call = reactor.callLater(0.2, self._drip, at + 1)

    def connectionLost(self, reason=None) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.closed.callback(None)


class HostileCase(TestCase):
    """Base: a daemon in a temporary directory with a given configuration."""

    timeout = 120

    def setUp(self) -> None:
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        self.port = free_port()

    async def start(self, extra: str = "") -> peers.PeerProcess:
        config = os.path.join(self.cwd, "qrscp.ini")
        with open(config, "w") as fp:
            fp.write(f"[DEFAULT]\nae_title: QRSCP\nport: {self.port}\n"
                     f"bind_address: 127.0.0.1\n{extra}")
        return await peers.start_dicomqr(self, reactor, self.cwd, config, self.port)

    def connect(self, **kwargs) -> Deferred:
        return associate(reactor, "127.0.0.1", self.port, called_ae_title="QRSCP",
                         contexts=CONTEXTS, **kwargs)

    def instances(self) -> str:
        return os.path.join(self.cwd, "instances")


class SlowPeerTests(HostileCase):
    """Silent and trickling connections never starve valid clients."""

    async def test_echoes_succeed_among_silent_and_trickling_connections(self):
        """With 200 silent and 50 trickling connections open, echoes keep
        succeeding, and ARTIM drops the bad connections."""
        await self.start("acse_timeout: 2\nmax_associations: 8\n")
        bad = []
        for i in range(250):
            trickle = b"\x01\x00\x00\x00\x01\x00" if i >= 200 else b""
            proto = await protocol.ClientCreator(reactor, _Silent, trickle).connectTCP(
                "127.0.0.1", self.port)
            bad.append(proto)
        for _ in range(10):
            assoc = await self.connect()
            rsp = await assoc.echo()
            self.assertEqual(rsp.status, Status.SUCCESS)
            await assoc.release()
        started = time.monotonic()
        await defer.gatherResults([p.closed for p in bad])
        # ARTIM (2 s) closed every one of them, well before our 120 s limit.
        self.assertLess(time.monotonic() - started, 30)


class LimitTests(HostileCase):
    """Past max_associations a peer is told so at once."""

    async def test_limit_answered_with_fast_rejection(self):
        """With two associations held, a third gets A-ASSOCIATE-RJ (2, 3, 2)."""
        await self.start("max_associations: 2\n")
        held = [await self.connect() for _ in range(2)]
        started = time.monotonic()
        failure = await self.assertFailure(self.connect(), AssociationRejected)
        self.assertEqual((failure.result, failure.source, failure.reason), (2, 3, 2))
        self.assertLess(time.monotonic() - started, 5)
        for assoc in held:
            await assoc.release()
        assoc = await self.connect()
        self.assertEqual((await assoc.echo()).status, Status.SUCCESS)
        await assoc.release()


TRAVERSAL = ["../../x", "/tmp/x", "1.2.3/../../x", "1.2\\3", "1.2.3\x00/x", "1." + "2" * 5000,
             "..", "1.02.3"]


class TraversalTests(HostileCase):
    """UIDs that would leave the instance directory write nothing anywhere."""

    def listing(self) -> set[str]:
        found = set()
        for root, _, files in os.walk(self.cwd):
            found.update(os.path.join(root, name) for name in files)
        return found

    async def test_traversal_uids_refused(self):
        """Bad SOP, Study and Series Instance UIDs get failure statuses and
        nothing is written outside (or inside) the instance directory."""
        await self.start()
        before = self.listing()
        tmp_before = set(os.listdir("/tmp"))
        assoc = await self.connect()
        for bad in TRAVERSAL:
            for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
                ds = ct_dataset(**{key: bad})
                if key == "SOPInstanceUID":
                    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
                rsp = await assoc.store(ds)
                self.assertNotEqual(rsp.status, Status.SUCCESS, f"{key}={bad!r}")
        await assoc.release()
        after = self.listing()
        new = {p for p in after - before if not os.path.basename(p).startswith("instances.sqlite")}
        self.assertEqual(new, set())
        if "x" not in tmp_before:
            self.assertFalse(os.path.exists("/tmp/x"))

    async def test_patient_id_never_becomes_a_path(self):
        """A Patient ID like '../../evil' is stored as text; files land only
        in the instance directory, named by SOP Instance UID."""
        await self.start()
        assoc = await self.connect()
        ds = ct_dataset(PatientID="../../evil")
        rsp = await assoc.store(ds)
        self.assertEqual(rsp.status, Status.SUCCESS)
        await assoc.release()
        self.assertEqual([relative for _, relative in stored_instances(self.instances())],
                         [relative_path(ds.SOPInstanceUID)])
        self.assertFalse(os.path.exists(os.path.join(self.cwd, "..", "evil")))


class LiteralWildcardTests(HostileCase):
    """``%`` and ``_`` in C-FIND values match themselves only."""

    async def test_percent_and_underscore_literal(self):
        """PatientName 'A%B' finds only 'A%B'; 'A_C' finds only 'A_C'."""
        await self.start()
        assoc = await self.connect()
        for name in ("A%B", "AxB", "A_C", "AyC"):
            rsp = await assoc.store(ct_dataset(PatientName=name, PatientID=name))
            self.assertEqual(rsp.status, Status.SUCCESS)
        for query, expected in (("A%B", ["A%B"]), ("A_C", ["A_C"]), ("A*", ["A%B", "A_C", "AxB", "AyC"])):
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.PatientName = query
            responses = await assoc.find(identifier, STUDY_FIND)
            names = sorted(str(ds.PatientName) for rsp, ds in responses if ds is not None)
            self.assertEqual(names, expected, query)
            self.assertEqual(responses[-1][0].status, Status.SUCCESS)
        await assoc.release()


class KillTests(HostileCase):
    """Every instance answered with Success survives ``kill -9``."""

    timeout = 180

    async def store_until_killed(self, acknowledged: set[str], worker: int) -> None:
        try:
            assoc = await self.connect(dimse_timeout=10)
        except Exception:
            return
        n = 0
        while True:
            ds = ct_dataset(pixels=4096, PatientID=f"W{worker}")
            try:
                rsp = await assoc.store(ds)
            except Exception:
                return
            if rsp.status == Status.SUCCESS:
                acknowledged.add(ds.SOPInstanceUID)
            n += 1

    async def test_kill_9_loses_no_acknowledged_instance(self):
        """Three rounds of four concurrent storing clients and kill -9; then
        every acknowledged instance is on disk and in the index."""
        acknowledged: set[str] = set()
        for round_ in range(3):
            process = await self.start()
            workers = [Deferred.fromCoroutine(self.store_until_killed(acknowledged, w))
                       for w in range(4)]
            target = len(acknowledged) + 15
            for _ in range(400):
                if len(acknowledged) >= target:
                    break
                await deferLater(reactor, 0.02, lambda: None)
            process.transport.signalProcess("KILL")
            await process.exited
            await defer.gatherResults(workers)
        self.assertGreaterEqual(len(acknowledged), 45)
        await self.start()
        # twistd listens before the reactor runs (privilegedStartService),
        # and recovery runs when it starts: an answered association proves
        # recovery has finished.
        assoc = await self.connect()
        await assoc.echo()
        await assoc.release()
        db = sqlite3.connect(os.path.join(self.cwd, "instances.sqlite"))
        indexed = {row[0] for row in db.execute("SELECT sop_instance_uid FROM instance")}
        db.close()
        self.assertEqual(acknowledged - indexed, set())
        for uid in acknowledged:
            self.assertTrue(os.path.exists(instance_path(self.instances(), uid)), uid)
        leftovers = [n for n in os.listdir(self.instances()) if n.endswith(".part")]
        self.assertEqual(leftovers, [])


class ShutdownTests(HostileCase):
    """SIGTERM stops accepting, lets running associations finish, then exits."""

    async def test_sigterm_lets_running_association_finish(self):
        """After SIGTERM an open association still stores and releases; new
        connections are refused; the daemon then exits on its own."""
        process = await self.start("shutdown_grace: 20\n")
        assoc = await self.connect()
        process.transport.signalProcess("TERM")
        await deferLater(reactor, 0.5, lambda: None)
        ds = ct_dataset()
        rsp = await assoc.store(ds)
        self.assertEqual(rsp.status, Status.SUCCESS)
        with self.assertRaises(Exception):
            await self.connect(connect_timeout=2)
        self.assertFalse(process.exited.called)
        await assoc.release()
        await process.exited
        self.assertTrue(os.path.exists(instance_path(self.instances(), ds.SOPInstanceUID)))

    async def test_second_sigterm_while_stopping_is_quiet(self):
        """A second SIGTERM during the grace period changes nothing and logs
        no error; the association still finishes and the daemon exits 0."""
        process = await self.start("shutdown_grace: 20\n")
        assoc = await self.connect()
        process.transport.signalProcess("TERM")
        await deferLater(reactor, 0.3, lambda: None)
        process.transport.signalProcess("TERM")
        await deferLater(reactor, 0.3, lambda: None)
        rsp = await assoc.store(ct_dataset())
        self.assertEqual(rsp.status, Status.SUCCESS)
        await assoc.release()
        code = await process.exited
        self.assertEqual(code, 0, process.output())
        self.assertNotIn("ReactorNotRunning", process.output())
        self.assertNotIn("C: ", process.output())

    async def test_sigterm_aborts_after_grace(self):
        """An association still open when the grace period ends is aborted."""
        process = await self.start("shutdown_grace: 1\n")
        assoc = await self.connect()
        process.transport.signalProcess("TERM")
        await assoc.closed
        await process.exited
        self.assertTrue(assoc.machine.is_closed)
