"""End to end: past one process: several nodes on one PostgreSQL index,
``--workers``, and the database or a node going away.

Every node is a real ``twistd -n dicomqr`` child process (this Python, the
source tree on ``PYTHONPATH``) on a free 127.0.0.1 port, stopped with
SIGTERM in the test's cleanup.  The index is a fresh database in the test
process's throwaway PostgreSQL cluster (:mod:`tests.pg`); nodes of one
test share it and one instance directory.  The peers are DCMTK's tools
from /usr/bin and pynetdicom scripts (``tests/peer_scripts``).  Waits are
bounded: on process exit, on a line of output, or polling with a limit.
"""

from __future__ import annotations

import functools
import glob
import inspect
import json
import os
import signal
import time

from pydicom import dcmread
from pydicom.dataset import Dataset
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from dicomtwist.storage.files import instance_path, stored_instances, temporary_files
from tests import peers, pg
from tests.helpers import ct_dataset, free_port

#: Root of the generated UIDs.
ROOT = "1.2.826.0.1.3680043.9.7433.77"
#: Data Set Trailing Padding, which DCMTK may drop.
TRAILING_PADDING = 0xFFFCFFFC


def inline(method):
    """Run an ``async def`` test method as a Deferred (trial waits for it)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


def sql(uri: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one query against a test database; its rows."""
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        return [tuple(row) for row in conn.execute(statement, params).fetchall()]


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fp:
                stat = fp.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (exists and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fp:
            return fp.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def established(pid: int, port: int) -> set[int]:
    """The remote ports of the established TCP connections to local
    ``port`` whose sockets process ``pid`` holds (/proc/<pid>/fd against
    /proc/<pid>/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    remote = set()
    with open(f"/proc/{pid}/net/tcp") as fp:
        for line in fp.readlines()[1:]:
            fields = line.split()
            local, peer, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and int(local.split(":")[1], 16) == port and inode in inodes:
                remote.add(int(peer.split(":")[1], 16))
    return remote


async def until(condition, what: str, timeout: float = 20.0, interval: float = 0.1):
    """Poll ``condition()`` (a value, or a Deferred or coroutine giving one)
    until it is true; its value.

    :raises AssertionError: still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if isinstance(value, Deferred) or inspect.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, interval, lambda: None)


def gather(coroutines: list) -> Deferred[list]:
    """Run ``coroutines`` at once; fire with their results in order (the
    first failure fails it)."""
    from twisted.internet.defer import gatherResults

    return gatherResults([Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True)


class Node:
    """A running ``twistd -n dicomqr`` node."""

    def __init__(self, ae_title: str, port: int, process: peers.PeerProcess) -> None:
        self.ae_title = ae_title
        self.port = port
        self.process = process

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.transport.pid


class ScaleoutCase(TestCase):
    """Base: a fresh database, a shared instance directory, test data and
    helpers to start nodes and drive them with DCMTK."""

    timeout = 90

    def setUp(self) -> None:
        self.work = os.path.abspath(self.mktemp())
        self.cwd = os.path.join(self.work, "node")
        self.data = os.path.join(self.work, "data")
        self.instances = os.path.join(self.work, "shared-instances")
        for directory in (self.cwd, self.data):
            os.makedirs(directory)
        self.uri = pg.create_database()
        self.addCleanup(pg.drop_database, self.uri)
        self.storescp_port = free_port()
        self.config = os.path.join(self.work, "qrscp.ini")
        with open(self.config, "w") as fp:
            fp.write("[DEFAULT]\nae_title: NODE\nbind_address: 127.0.0.1\n"
                     f"[STORESCP]\naddress: 127.0.0.1\nport: {self.storescp_port}\n")
        self.originals: dict[str, Dataset] = {}

    def generate(self, name: str, count: int, study: str, series: str,
                 modality: str = "CT", first: int = 1, **values) -> list[str]:
        """Write ``count`` small CT instances of one series; their paths."""
        paths = []
        for number in range(first, first + count):
            uid = f"{series}.{number}"
            ds = ct_dataset(16, PatientID=values.pop("PatientID", "SCALE-1"),
                            PatientName="Scale^Out", StudyInstanceUID=study,
                            SeriesInstanceUID=series, SOPInstanceUID=uid,
                            Modality=modality, StudyDate="20240102", StudyTime="101500",
                            AccessionNumber="ACC" + study.rsplit(".", 1)[1],
                            SeriesNumber=int(series.rsplit(".", 1)[1]),
                            InstanceNumber=number, **values)
            path = os.path.join(self.data, f"{name}-{number}.dcm")
            ds.save_as(path, enforce_file_format=True)
            self.originals[uid] = dcmread(path)
            paths.append(path)
        return paths

    def node_args(self, ae_title: str, port: int, *extra: str) -> list[str]:
        """The full command line of a node."""
        return [*peers.TWISTD, "-n", "--pidfile=", "dicomqr", "-c", self.config,
                "--ae-title", ae_title, "--port", str(port),
                "--database-location", self.uri, "--instance-location", self.instances,
                *extra]

    async def start_node(self, ae_title: str, port: int | None = None,
                         *extra: str) -> Node:
        """Start a node and wait until it accepts connections."""
        port = port or free_port()
        process = peers.PeerProcess(reactor, f"twistd dicomqr {ae_title}")
        argv = self.node_args(ae_title, port, *extra)
        reactor.spawnProcess(process, argv[0], argv, env=peers.daemon_env(), path=self.cwd)
        self.addCleanup(process.stop)
        await peers.wait_for_port(reactor, port, process, attempts=400)
        return Node(ae_title, port, process)

    async def stop_node(self, node: Node) -> None:
        """SIGTERM a node and wait until it has exited cleanly."""
        code = await node.process.stop()
        self.assertIn(code, (0, -signal.SIGTERM), node.process.output())

    async def run_daemon(self, *args: str, timeout: float = 30) -> tuple[int, str]:
        """Run ``twistd -n dicomqr`` with ``args`` until it exits; (code, output)."""
        process = peers.PeerProcess(reactor, "twistd dicomqr " + " ".join(args))
        argv = [*peers.TWISTD, "-n", "--pidfile=", "dicomqr", *args]
        reactor.spawnProcess(process, argv[0], argv, env=peers.daemon_env(), path=self.cwd)
        self.addCleanup(process.stop)
        process.transport.closeStdin()
        code = await process.exited.addTimeout(timeout, reactor)
        return code, process.output()

    async def tool(self, name: str, node: Node, *args: str, files=(),
                   expect: int | None = 0, timeout: float = 30) -> str:
        """Run a DCMTK tool against ``node``; returns its output.

        :param expect: the exit code it must have (None: any).
        """
        out, err, code = await peers.run_tool(
            reactor, peers.dcmtk(name),
            ["-aet", name.upper(), "-aec", node.ae_title, *args, peers.LOCALHOST,
             str(node.port), *files], timeout=timeout)
        output = (out + err).decode("utf-8", "replace")
        if expect is not None:
            self.assertEqual(code, expect, output)
        return output

    async def findscu(self, node: Node, *keys: str, expect_success: bool = True
                      ) -> list[Dataset]:
        """Study Root findscu ``-X``: the response identifiers, read back."""
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        args = ["-v", "-S", "-X", "-od", out]
        for key in keys:
            args += ["-k", key]
        output = await self.tool("findscu", node, *args)
        self.assertEqual("Received Final Find Response (Success)" in output, expect_success,
                         output)
        return [dcmread(path) for path in sorted(glob.glob(os.path.join(out, "rsp*.dcm")))]

    async def image_uids(self, node: Node, study: str, series: str) -> list[str]:
        """The SOP Instance UIDs C-FIND finds in one series through ``node``."""
        found = await self.findscu(node, "QueryRetrieveLevel=IMAGE",
                                   f"StudyInstanceUID={study}",
                                   f"SeriesInstanceUID={series}", "SOPInstanceUID")
        return sorted(str(ds.SOPInstanceUID) for ds in found)

    def indexed_rows(self) -> list[tuple[str, int]]:
        """``(SOP Instance UID, rows)`` for every instance in the index."""
        return sql(self.uri, "SELECT sop_instance_uid, count(*) FROM instance "
                             "GROUP BY sop_instance_uid ORDER BY sop_instance_uid")

    def stored_files(self) -> list[str]:
        """The SOP Instance UIDs of the instance files in the shared directory."""
        return sorted(uid for uid, _ in stored_instances(self.instances))

    def assertSameDataset(self, received: Dataset, original: Dataset) -> None:
        """Same elements with the same VRs and values (trailing padding aside)."""
        def tags(ds):
            return sorted(tag for tag in ds.keys() if tag != TRAILING_PADDING)

        self.assertEqual(tags(received), tags(original))
        for element in original:
            if element.tag != TRAILING_PADDING:
                other = received[element.tag]
                self.assertEqual((other.VR, other.value), (element.VR, element.value),
                                 f"{element.tag} {element.name}")

    def assertReceived(self, paths: list[str], expected_uids: list[str]) -> None:
        """The files at ``paths`` are exactly the originals with ``expected_uids``."""
        received = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, paths)}
        self.assertEqual(sorted(received), sorted(expected_uids))
        for uid, ds in received.items():
            self.assertSameDataset(ds, self.originals[uid])


class TwoNodeTests(ScaleoutCase):
    """Two nodes on one database and one instance directory."""

    @inline
    async def test_store_through_one_retrieve_through_other(self) -> None:
        """What storescu stored through node A, node B finds at once (exact
        values) and moves and gets equal to the originals."""
        a = await self.start_node("NODEA")
        b = await self.start_node("NODEB")
        s1, s2 = f"{ROOT}.1", f"{ROOT}.2"
        files = (self.generate("s1a", 3, s1, f"{s1}.1")
                 + self.generate("s1b", 3, s1, f"{s1}.2")
                 + self.generate("s2a", 4, s2, f"{s2}.1", modality="MR"))
        output = await self.tool("storescu", a, "-v", files=files)
        self.assertEqual(output.count("Received Store Response (Success)"), 10, output)

        studies = await self.findscu(b, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                     "PatientID", "PatientName", "AccessionNumber",
                                     "StudyDate", "ModalitiesInStudy",
                                     "NumberOfStudyRelatedSeries",
                                     "NumberOfStudyRelatedInstances")
        self.assertEqual(
            sorted((ds.StudyInstanceUID, ds.PatientID, str(ds.PatientName), ds.AccessionNumber,
                    ds.StudyDate, ds.ModalitiesInStudy, ds.NumberOfStudyRelatedSeries,
                    ds.NumberOfStudyRelatedInstances) for ds in studies),
            [(s1, "SCALE-1", "Scale^Out", "ACC1", "20240102", "CT", 2, 6),
             (s2, "SCALE-1", "Scale^Out", "ACC2", "20240102", "MR", 1, 4)])
        series = await self.findscu(b, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={s1}",
                                    "SeriesInstanceUID", "Modality", "SeriesNumber",
                                    "NumberOfSeriesRelatedInstances")
        self.assertEqual(sorted((ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber,
                                 ds.NumberOfSeriesRelatedInstances) for ds in series),
                         [(f"{s1}.1", "CT", 1, 3), (f"{s1}.2", "CT", 2, 3)])
        images = await self.findscu(b, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={s2}",
                                    f"SeriesInstanceUID={s2}.1", "SOPInstanceUID",
                                    "SOPClassUID", "InstanceNumber")
        self.assertEqual(sorted((ds.SOPInstanceUID, ds.SOPClassUID, ds.InstanceNumber)
                                for ds in images),
                         [(f"{s2}.1.{i}", "1.2.840.10008.5.1.4.1.1.2", i) for i in (1, 2, 3, 4)])

        received = os.path.join(self.work, "moved")
        os.makedirs(received)
        storescp = peers.start_peer(self, reactor, peers.dcmtk("storescp"),
                                    ["-aet", "STORESCP", "-od", received,
                                     str(self.storescp_port)], "storescp")
        await peers.wait_for_port(reactor, self.storescp_port, storescp)
        output = await self.tool("movescu", b, "-v", "-S", "-aem", "STORESCP",
                                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={s1}")
        self.assertIn("Received Final Move Response (Success)", output)
        self.assertReceived(glob.glob(os.path.join(received, "*")),
                            [f"{s1}.{se}.{i}" for se in (1, 2) for i in (1, 2, 3)])

        got = os.path.join(self.work, "got")
        os.makedirs(got)
        output = await self.tool("getscu", b, "-v", "-S", "-od", got,
                                 "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={s2}",
                                 "-k", f"SeriesInstanceUID={s2}.1")
        self.assertIn("Received C-GET Response (Success)", output)
        self.assertIn("Number of Completed Suboperations : 4", output)
        self.assertReceived(glob.glob(os.path.join(got, "*")),
                            [f"{s2}.1.{i}" for i in (1, 2, 3, 4)])

    @inline
    async def test_concurrent_stores_same_study(self) -> None:
        """Four associations through both nodes at once, storing the same
        instances (and some of their own) into one study, leave one row and
        one file per instance and exact derived counts on both nodes."""
        a = await self.start_node("NODEA")
        b = await self.start_node("NODEB")
        study = f"{ROOT}.3"
        shared = (self.generate("ct", 10, study, f"{study}.1")
                  + self.generate("pt", 10, study, f"{study}.2", modality="PT"))
        only_a = self.generate("ct-a", 6, study, f"{study}.1", first=11)
        only_b = self.generate("mr-b", 6, study, f"{study}.3", modality="MR")
        streams = [(a, shared + only_a), (b, list(reversed(shared)) + only_b),
                   (a, shared[10:] + shared[:10]), (b, shared[5:] + shared[:5])]
        outputs = await gather([self.tool("storescu", node, "-v", files=files, timeout=60)
                                for node, files in streams])
        for (_, files), output in zip(streams, outputs):
            self.assertEqual(output.count("Received Store Response (Success)"), len(files),
                             output)

        expected = sorted(self.originals)
        self.assertEqual(len(expected), 32)
        self.assertEqual(self.indexed_rows(), [(uid, 1) for uid in expected])
        self.assertEqual(self.stored_files(), expected)
        self.assertEqual(temporary_files(self.instances), [])
        for node in (a, b):
            studies = await self.findscu(node, "QueryRetrieveLevel=STUDY",
                                         f"StudyInstanceUID={study}", "ModalitiesInStudy",
                                         "NumberOfStudyRelatedSeries",
                                         "NumberOfStudyRelatedInstances")
            self.assertEqual([(list(ds.ModalitiesInStudy), ds.NumberOfStudyRelatedSeries,
                               ds.NumberOfStudyRelatedInstances) for ds in studies],
                             [(["CT", "MR", "PT"], 3, 32)])
            series = await self.findscu(node, "QueryRetrieveLevel=SERIES",
                                        f"StudyInstanceUID={study}", "SeriesInstanceUID",
                                        "Modality", "NumberOfSeriesRelatedInstances")
            self.assertEqual(sorted((ds.SeriesInstanceUID, ds.Modality,
                                     ds.NumberOfSeriesRelatedInstances) for ds in series),
                             [(f"{study}.1", "CT", 16), (f"{study}.2", "PT", 10),
                              (f"{study}.3", "MR", 6)])
            self.assertEqual(await self.image_uids(node, study, f"{study}.2"),
                             sorted(f"{study}.2.{i}" for i in range(1, 11)))


class NodeKilledTests(ScaleoutCase):
    """kill -9 of one node while it stores and the other serves."""

    timeout = 120

    @inline
    async def test_kill_during_stores(self) -> None:
        """Every instance node A answered Success before its kill -9 is on disk
        and found through node B, which served stores and queries throughout;
        A restarted recovers: no temporary files, index and files agree."""
        peers.require_pynetdicom()
        a = await self.start_node("NODEA")
        b = await self.start_node("NODEB")
        study = f"{ROOT}.4"
        stream_files = self.generate("stream", 200, study, f"{study}.1")
        b_files = self.generate("b", 30, study, f"{study}.2", modality="MR")
        stream = peers.start_script_peer(
            self, reactor, "pynetdicom_store_stream.py",
            [peers.LOCALHOST, str(a.port), *stream_files, "--called", a.ae_title])

        def acknowledged() -> list[str]:
            return [line.split()[2] for line in bytes(stream.out).decode().splitlines()
                    if line.startswith("STORED 0x0000 ")]

        # Node B stores and answers queries while A is busy.
        output = await self.tool("storescu", b, "-v", files=b_files[:15])
        self.assertEqual(output.count("Received Store Response (Success)"), 15, output)
        await until(lambda: len(acknowledged()) >= 40, "40 stores through node A")
        self.assertEqual(await self.image_uids(b, study, f"{study}.2"),
                         sorted(f"{study}.2.{i}" for i in range(1, 16)))

        a.process.transport.signalProcess("KILL")
        self.assertEqual(await a.process.exited.addTimeout(20, reactor), -signal.SIGKILL)
        await stream.wait_for_output(b"END ", timeout=30)
        await stream.exited.addTimeout(20, reactor)
        stored = acknowledged()
        self.assertGreaterEqual(len(stored), 40)
        self.assertLess(len(stored), 200, "node A was killed before the end of the stream")
        self.assertEqual(stored, [f"{study}.1.{i}" for i in range(1, len(stored) + 1)])

        # Node B keeps serving: echo, store, and every acknowledged instance
        # is found and on disk.
        self.assertIn("Received Echo Response (Success)", await self.tool("echoscu", b, "-v"))
        output = await self.tool("storescu", b, "-v", files=b_files[15:])
        self.assertEqual(output.count("Received Store Response (Success)"), 15, output)
        found = await self.image_uids(b, study, f"{study}.1")
        self.assertEqual(sorted(set(stored) - set(found)), [])
        for uid in stored:
            self.assertSameDataset(dcmread(instance_path(self.instances, uid)),
                                   self.originals[uid])
        self.assertEqual(await self.image_uids(b, study, f"{study}.2"),
                         sorted(f"{study}.2.{i}" for i in range(1, 31)))

        # A restarted recovers: no temporary file, one row per file and one
        # file per row, exact counts; what it answered is still there.
        a = await self.start_node("NODEA", a.port)
        self.assertEqual(temporary_files(self.instances), [])
        files = self.stored_files()
        self.assertEqual(self.indexed_rows(), [(uid, 1) for uid in files])
        found = await self.image_uids(a, study, f"{study}.1")
        self.assertEqual(found, sorted(uid for uid in files if uid.startswith(f"{study}.1.")))
        self.assertEqual(sorted(set(stored) - set(found)), [])
        series = await self.findscu(a, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                                    "SeriesInstanceUID", "NumberOfSeriesRelatedInstances")
        self.assertEqual(sorted((ds.SeriesInstanceUID, ds.NumberOfSeriesRelatedInstances)
                                for ds in series),
                         [(f"{study}.1", len(found)), (f"{study}.2", 30)])
        output = await self.tool("storescu", a, "-v", files=stream_files[len(found):])
        self.assertEqual(output.count("Received Store Response (Success)"),
                         200 - len(found), output)
        self.assertEqual(await self.image_uids(b, study, f"{study}.1"),
                         sorted(f"{study}.1.{i}" for i in range(1, 201)))


class DatabaseRestartTests(ScaleoutCase):
    """The PostgreSQL server stopping and starting under a running node."""

    timeout = 120

    @inline
    async def test_pg_restart(self) -> None:
        """While PostgreSQL is down C-ECHO answers Success and C-STORE, C-FIND
        and C-MOVE answer failures within their bounds; once it is back the
        node stores and finds again without a restart."""
        node = await self.start_node("NODE")
        study = f"{ROOT}.5"
        files = self.generate("pg", 3, study, f"{study}.1")
        output = await self.tool("storescu", node, "-v", files=files[:1])
        self.assertIn("Received Store Response (Success)", output)
        cluster = pg.cluster()
        await deferToThread(cluster.stop, False)
        try:
            self.assertIn("Received Echo Response (Success)",
                          await self.tool("echoscu", node, "-v"))
            started = time.monotonic()
            store, find, move = await gather([
                self.tool("storescu", node, "-v", files=files[1:2], expect=None, timeout=40),
                self.tool("findscu", node, "-v", "-S", "-k", "QueryRetrieveLevel=STUDY",
                          "-k", "StudyInstanceUID", expect=None, timeout=40),
                self.tool("movescu", node, "-v", "-S", "-aem", "STORESCP",
                          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                          expect=None, timeout=40)])
            elapsed = time.monotonic() - started
            self.assertIn("Received Echo Response (Success)",
                          await self.tool("echoscu", node, "-v"))
        finally:
            await deferToThread(cluster.start)
        self.assertLess(elapsed, 35, (store, find, move))
        self.assertRegex(store, r"Received Store Response \((?!Success)", store)
        self.assertNotIn("Received Store Response (Success)", store)
        self.assertRegex(find, r"Received Final Find Response \((?!Success)", find)
        self.assertNotIn("Received Final Find Response (Success)", find)
        self.assertRegex(move, r"Received Final Move Response \((?!Success)", move)
        self.assertNotIn("Received Final Move Response (Success)", move)
        self.assertEqual(self.indexed_rows(), [(f"{study}.1.1", 1)])

        async def stored() -> bool:
            output = await self.tool("storescu", node, "-v", files=files[1:], expect=None)
            return output.count("Received Store Response (Success)") == 2

        await until(stored, "a store after PostgreSQL restarted", timeout=40, interval=0.5)
        self.assertEqual(await self.image_uids(node, study, f"{study}.1"),
                         [f"{study}.1.{i}" for i in (1, 2, 3)])
        self.assertEqual(self.indexed_rows(), [(f"{study}.1.{i}", 1) for i in (1, 2, 3)])
        self.assertEqual(self.stored_files(), [f"{study}.1.{i}" for i in (1, 2, 3)])


class WorkersTests(ScaleoutCase):
    """``--workers 2`` on PostgreSQL: a supervisor and two worker processes."""

    timeout = 120

    @inline
    async def test_workers(self) -> None:
        """The supervisor runs two workers that share 16 concurrent
        associations, which ``/api/status`` counts whichever worker
        answers; a worker killed is replaced while the port answers;
        SIGTERM to the supervisor ends every process."""
        import treq

        peers.require_pynetdicom()
        http = free_port()
        node = await self.start_node("WORKERS", None, "--workers", "2", "-v",
                                     "--http", f"tcp:{http}:interface=127.0.0.1")
        supervisor = node.pid
        workers = await until(lambda: len(children(supervisor)) == 2 and children(supervisor),
                              "two worker processes")
        # Each worker logs this once, as it adopts the listening socket.
        started = "Archive WORKERS: instances in"
        await until(lambda: node.process.output().count(started) == 2, "two workers started")
        self.assertIn("Received Echo Response (Success)", await self.tool("echoscu", node, "-v"))

        hold = peers.start_script_peer(self, reactor, "pynetdicom_hold.py",
                                       [peers.LOCALHOST, str(node.port), "--count", "16",
                                        "--called", node.ae_title])
        first = json.loads(await hold.wait_for_output(b'"ready"', timeout=40))
        self.assertEqual((first["ready"], first["echo"]), (16, [0] * 16), hold.output())
        by_worker = {pid: established(pid, node.port) for pid in workers}
        self.assertEqual(sorted(port for ports in by_worker.values() for port in ports),
                         sorted(first["ports"]))
        self.assertEqual(established(supervisor, node.port), set())
        for pid, ports in by_worker.items():
            self.assertTrue(ports, f"worker {pid} holds none of the 16 associations:"
                                   f" {by_worker}")
        # Each request on a new connection: the kernel spreads them.
        counts = []
        for _ in range(8):
            response = await treq.get(f"http://127.0.0.1:{http}/api/status",
                                      persistent=False)
            counts.append((await response.json())["associations"])
        self.assertEqual(counts, [16] * 8)
        hold.transport.closeStdin()
        await hold.exited.addTimeout(30, reactor)
        last = json.loads(bytes(hold.out).decode().strip().splitlines()[-1])
        self.assertEqual(last, {"echo": [0] * 16, "released": 16})

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = await until(
            lambda: (not alive(victim) and len(children(supervisor)) == 2
                     and children(supervisor)), "a replacement worker")
        self.assertEqual(len(replaced - workers), 1)
        self.assertIn(max(workers), replaced)
        await until(lambda: node.process.output().count(started) == 3,
                    "the replacement worker started")
        self.assertIn("exited (code None, signal 9)", node.process.output())
        outputs = await gather([self.tool("echoscu", node, "-v") for _ in range(8)])
        for output in outputs:
            self.assertIn("Received Echo Response (Success)", output)
        files = self.generate("w", 8, f"{ROOT}.6", f"{ROOT}.6.1")
        output = await self.tool("storescu", node, "-v", files=files)
        self.assertEqual(output.count("Received Store Response (Success)"), 8, output)
        self.assertEqual(self.indexed_rows(), [(f"{ROOT}.6.1.{i}", 1) for i in range(1, 9)])

        node.process.transport.signalProcess("TERM")
        code = await node.process.exited.addTimeout(40, reactor)
        self.assertIn(code, (0, -signal.SIGTERM), node.process.output())
        await until(lambda: not any(map(alive, replaced)), "the workers to exit", timeout=10)
        self.assertEqual(children(supervisor), set())


class StartFailureTests(ScaleoutCase):
    """An index that cannot be opened at start: one line, no traceback."""

    def assertOneLine(self, code: int, output: str, location: str) -> None:
        """A non-zero exit with exactly one line of output, naming ``location``."""
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        lines = output.strip().splitlines()
        self.assertEqual(len(lines), 1, output)
        self.assertIn(location, lines[0])

    @inline
    async def test_unreachable_database(self) -> None:
        """A PostgreSQL server nobody listens for: the daemon (and a --workers
        supervisor) exits non-zero with one line naming it, without its password."""
        port = free_port()
        uri = f"postgresql://someone:secret@127.0.0.1:{pg._free_port()}/archive"
        for extra in ([], ["--workers", "2"]):
            code, output = await self.run_daemon("-c", self.config, "--port", str(port),
                                                 "--database-location", uri, *extra)
            self.assertOneLine(code, output, "postgresql://someone@127.0.0.1:")
            self.assertNotIn("secret", output)

    @inline
    async def test_sqlite_cannot_open(self) -> None:
        """An sqlite location under a regular file: the daemon exits non-zero
        with one line naming it."""
        blocker = os.path.join(self.work, "not-a-directory")
        with open(blocker, "w") as fp:
            fp.write("a file")
        location = os.path.join(blocker, "sub", "index.sqlite")
        code, output = await self.run_daemon("-c", self.config, "--port", str(free_port()),
                                             "--database-location", location)
        self.assertOneLine(code, output, location)

    @inline
    async def test_instance_directory_cannot_be_made(self) -> None:
        """An instance directory under a regular file: the daemon (and a
        --workers supervisor) exits non-zero with one line naming it."""
        blocker = os.path.join(self.work, "not-a-directory")
        with open(blocker, "w") as fp:
            fp.write("a file")
        location = os.path.join(blocker, "instances")
        for database, extra in ((os.path.join(self.work, "index.sqlite"), []),
                                (self.uri, ["--workers", "2"])):
            code, output = await self.run_daemon(
                "-c", self.config, "--port", str(free_port()), "--database-location",
                database, "--instance-location", location, *extra)
            self.assertOneLine(code, output, location)

    @inline
    async def test_workers_port_in_use(self) -> None:
        """A --workers supervisor whose port is taken exits non-zero with one
        line naming the listener."""
        node = await self.start_node("NODE")
        code, output = await self.run_daemon("-c", self.config, "--port", str(node.port),
                                             "--database-location", self.uri,
                                             "--workers", "2")
        self.assertOneLine(code, output, f"tcp:{node.port}:interface=127.0.0.1")


class RestartWhileOtherStoresTests(ScaleoutCase):
    """A node restarting (and recovering) while another node stores."""

    timeout = 120

    @inline
    async def test_restart_during_other_nodes_stores(self) -> None:
        """Every instance node B answered Success while node A restarted
        three times (each time running start-up recovery) keeps its row and
        its file."""
        peers.require_pynetdicom()
        a = await self.start_node("NODEA")
        b = await self.start_node("NODEB")
        study = f"{ROOT}.7"
        files = self.generate("r", 300, study, f"{study}.1")
        stream = peers.start_script_peer(
            self, reactor, "pynetdicom_store_stream.py",
            [peers.LOCALHOST, str(b.port), *files, "--called", b.ae_title])
        for _ in range(3):
            await self.stop_node(a)
            a = await self.start_node("NODEA", a.port)
        await stream.wait_for_output(b"END ", timeout=60)
        lines = bytes(stream.out).decode().splitlines()
        statuses = [line.split()[1] for line in lines if line.startswith("STORED ")]
        stored = [line.split()[2] for line in lines if line.startswith("STORED 0x0000 ")]
        self.assertEqual(len(statuses), 300, stream.output())
        rows = {uid for uid, _ in self.indexed_rows()}
        self.assertEqual(sorted(set(stored) - rows), [])
        self.assertEqual(sorted(set(stored) - set(self.stored_files())), [])
        self.assertEqual(statuses, ["0x0000"] * 300)


class IndexMaintenanceTests(ScaleoutCase):
    """``--reindex`` and start-up recovery against a PostgreSQL index."""

    def write(self, uid: str, flat: bool = False) -> str:
        """An instance file of one series, in the nested layout or the earlier
        flat one, unindexed; its path relative to the instance directory."""
        from dicomtwist.storage.files import flat_name, relative_path

        study = f"{ROOT}.9"
        ds = ct_dataset(PatientID="MAINT-1", StudyInstanceUID=study,
                        SeriesInstanceUID=f"{study}.1", SOPInstanceUID=uid)
        relative = flat_name(uid) if flat else relative_path(uid)
        path = os.path.join(self.instances, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return relative

    def index_rows(self, rows: dict[str, str]) -> None:
        """Index instances of the series by ``{uid: path}`` (files or not)."""
        from dicomtwist.storage.index import open_index

        index = open_index(self.uri)
        try:
            for uid, path in rows.items():
                ds = ct_dataset(PatientID="MAINT-1", StudyInstanceUID=f"{ROOT}.9",
                                SeriesInstanceUID=f"{ROOT}.9.1", SOPInstanceUID=uid)
                index.add(ds, path, "1.2.840.10008.1.2.1", 100)
        finally:
            index.close()

    async def series_counts(self, node: Node) -> list[tuple[str, int]]:
        """``(Series Instance UID, Number of Series Related Instances)`` of
        the study, by C-FIND through ``node``."""
        found = await self.findscu(node, "QueryRetrieveLevel=SERIES",
                                   f"StudyInstanceUID={ROOT}.9", "SeriesInstanceUID",
                                   "NumberOfSeriesRelatedInstances")
        return [(str(ds.SeriesInstanceUID), int(ds.NumberOfSeriesRelatedInstances))
                for ds in found]

    @inline
    async def test_reindex(self) -> None:
        """``dicomqr --reindex`` rebuilds a PostgreSQL index from the files of
        both layouts: a row without a file goes, a row with a wrong path is
        corrected, unindexed files are indexed, counts are exact."""
        uids = [f"{ROOT}.9.1.{n}" for n in range(1, 5)]
        paths = {uid: self.write(uid, flat=(n == 3)) for n, uid in enumerate(uids)}
        self.index_rows({uids[0]: "elsewhere/x.dcm", f"{ROOT}.9.1.99": "gone.dcm"})
        code, output = await self.run_daemon(
            "-c", self.config, "--database-location", self.uri,
            "--instance-location", self.instances, "--reindex")
        self.assertEqual(code, 0, output)
        self.assertIn("Indexed 4 instance(s); 0 file(s) could not be read", output)
        self.assertEqual(sql(self.uri, "SELECT sop_instance_uid, path FROM instance "
                                       "ORDER BY sop_instance_uid"),
                         sorted(paths.items()))
        node = await self.start_node("NODE")
        self.assertEqual(await self.series_counts(node), [(f"{ROOT}.9.1", 4)])

    @inline
    async def test_startup_recovery(self) -> None:
        """A node starting on a PostgreSQL index recovers: an unindexed file
        is indexed, a row without a file is dropped, a stale temporary file
        goes; counts are exact."""
        from dicomtwist.storage import files

        kept, orphan, gone = (f"{ROOT}.9.1.{n}" for n in (1, 2, 3))
        self.index_rows({kept: self.write(kept), gone: files.relative_path(gone)})
        self.write(orphan)
        stale = os.path.join(self.instances, files.TEMP_PREFIX + "othernode-x.part")
        with open(stale, "wb") as fp:
            fp.write(b"partial")
        old = time.time() - files.STALE_AFTER - 60
        os.utime(stale, (old, old))
        node = await self.start_node("NODE")
        # The port takes connections (the kernel's backlog) while start-up
        # recovery still runs; the daemon answers its first C-FIND only
        # after it: ask first, then look at the rows.
        self.assertEqual(await self.series_counts(node), [(f"{ROOT}.9.1", 2)])
        self.assertEqual(temporary_files(self.instances), [])
        self.assertEqual(self.indexed_rows(), [(kept, 1), (orphan, 1)])
