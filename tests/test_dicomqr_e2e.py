"""End to end: the real ``twistd -n dicomqr`` daemon driven by real peers.

Each test starts the daemon as a child process (this Python, the twistd
script, the source tree on ``PYTHONPATH`` so the plugin in
``twisted/plugins`` is found) in its own working directory, on a free
127.0.0.1 port, with a ``[STORESCP]`` move destination; it waits until the
port accepts connections and stops the daemon with SIGTERM in the cleanup,
waiting for it to exit.  The peers are DCMTK's tools from /usr/bin (the
``findscu`` & co. on PATH may be pynetdicom shims) and a pynetdicom script.

The archive holds pydicom's CT_small and MR_small and 24 generated CT
instances: 2 patients x 2 studies x 2 series x 3 instances, one patient
named ``Müller^Hans`` in ISO_IR 100.  Query results are read back from the
files ``findscu --extract`` writes and compared exactly with what was
stored; retrieved instances are compared element by element.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import sys
from collections import defaultdict

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

import dicomtwist
from dicomtwist.storage.files import instance_path, stored_instances
from dicomtwist.storage.index import Index
from tests import peers
from tests.helpers import CT_IMAGE_STORAGE, ct_dataset, free_port

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: The directory holding the ``dicomtwist`` package and ``twisted/plugins``.
SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(dicomtwist.__file__)))
#: Run twistd with this interpreter.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
#: (0008,0005), (0010,0010) of the Latin-1 patient.
LATIN1_NAME = "Müller^Hans"
#: Root of the generated UIDs.
ROOT = "1.2.826.0.1.3680043.9.7433.42"
#: Data Set Trailing Padding, which DCMTK may drop.
TRAILING_PADDING = 0xFFFCFFFC


def inline(method):
    """Run an ``async def`` test method as a Deferred (trial waits for it)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


def generate(directory: str) -> list[str]:
    """Write the 24 generated instances to ``directory``; returns their paths."""
    patients = [("E2E-P1", LATIN1_NAME, "ISO_IR 100", "19600101"),
                ("E2E-P2", "Smith^John", None, "19750505")]
    paths = []
    for p, (pid, name, charset, birth) in enumerate(patients, 1):
        for s in (1, 2):
            study = f"{ROOT}.{p}.{s}"
            for se in (1, 2):
                series = f"{study}.{se}"
                for i in (1, 2, 3):
                    ds = ct_dataset(
                        64, PatientID=pid, PatientName=name, PatientBirthDate=birth,
                        StudyInstanceUID=study, SeriesInstanceUID=series,
                        SOPInstanceUID=f"{series}.{i}", StudyDate=f"202{s}0{p}15",
                        StudyTime="101500", AccessionNumber=f"ACC{p}{s}", StudyID=f"{s}",
                        StudyDescription=f"Study {s} of {pid}", SeriesNumber=se,
                        InstanceNumber=i)
                    if charset:
                        ds.SpecificCharacterSet = charset
                    path = os.path.join(directory, f"{pid}-{s}-{se}-{i}.dcm")
                    ds.save_as(path, enforce_file_format=True)
                    paths.append(path)
    return paths


class Archive:
    """A running ``twistd -n dicomqr`` and where it keeps things."""

    def __init__(self, cwd: str, port: int, process: peers.PeerProcess) -> None:
        self.cwd = cwd
        self.port = port
        self.process = process

    @property
    def instances(self) -> str:
        """The instance directory (``instances`` in its working directory)."""
        return os.path.join(self.cwd, "instances")


class DicomqrCase(TestCase):
    """Base: the daemon, its test data and the DCMTK tools."""

    timeout = 60

    def setUp(self) -> None:
        self.work = os.path.abspath(self.mktemp())
        self.cwd = os.path.join(self.work, "archive")
        self.data = os.path.join(self.work, "data")
        os.makedirs(self.cwd)
        os.makedirs(self.data)
        self.files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm"),
                      *generate(self.data)]
        self.originals = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, self.files)}
        self.port = free_port()
        self.storescp_port = free_port()
        self.config = os.path.join(self.work, "qrscp.ini")
        with open(self.config, "w") as fp:
            # pending_interval 0: a Pending response after every
            # sub-operation, so the clients' counts can be checked exactly.
            fp.write(f"[DEFAULT]\nae_title: QRSCP\nport: {self.port}\n"
                     f"bind_address: 127.0.0.1\npending_interval: 0\n"
                     f"[STORESCP]\naddress: 127.0.0.1\nport: {self.storescp_port}\n")

    def env(self) -> dict[str, str]:
        """The daemon's environment: the peers', with the source tree importable."""
        env = peers.peer_env()
        env["PYTHONPATH"] = os.pathsep.join(
            [SOURCE_TREE, *filter(None, [env.get("PYTHONPATH")])])
        return env

    def twistd_args(self, *args: str) -> list[str]:
        """Arguments for ``twistd -n --pidfile= dicomqr -c <config> *args``."""
        return [*TWISTD[1:], "-n", "--pidfile=", "dicomqr", "-c", self.config, *args]

    async def start_archive(self) -> Archive:
        """Start the daemon and wait until it accepts connections."""
        process = peers.PeerProcess(reactor, "twistd dicomqr")
        reactor.spawnProcess(process, TWISTD[0], [TWISTD[0], *self.twistd_args()],
                             env=self.env(), path=self.cwd)
        self.addCleanup(process.stop)
        await peers.wait_for_port(reactor, self.port, process, attempts=400)
        return Archive(self.cwd, self.port, process)

    async def stop_archive(self, archive: Archive) -> None:
        """SIGTERM the daemon and wait for it to exit."""
        code = await archive.process.stop()
        # twistd shuts down cleanly, then ends itself with the same signal.
        self.assertIn(code, (0, -15), archive.process.output())
        self.assertIn("Server Shut Down", archive.process.output())

    async def run_twistd(self, *args: str, stdin: bytes | None = None) -> tuple[int, str]:
        """Run ``twistd -n dicomqr`` to completion (``--clean``); returns (code, output)."""
        process = peers.PeerProcess(reactor, "twistd dicomqr " + " ".join(args))
        reactor.spawnProcess(process, TWISTD[0], [TWISTD[0], *self.twistd_args(*args)],
                             env=self.env(), path=self.cwd)
        self.addCleanup(process.stop)
        if stdin is not None:
            process.transport.write(stdin)
        process.transport.closeStdin()
        code = await process.exited
        return code, process.output()

    async def tool(self, name: str, *args, files=(), expect: int | None = 0) -> str:
        """Run a DCMTK tool against the archive; returns its output.

        :param files: arguments after peer and port (storescu's files).
        :param expect: the exit code it must have (None: any).
        """
        out, err, code = await peers.run_tool(
            reactor, peers.dcmtk(name), ["-aet", name.upper(), "-aec", "QRSCP", *args,
                                         peers.LOCALHOST, str(self.port), *files])
        output = (out + err).decode("utf-8", "replace")
        if expect is not None:
            self.assertEqual(code, expect, output)
        return output

    async def store_all(self) -> None:
        """storescu every test file into the archive."""
        await self.tool("storescu", files=self.files)

    async def findscu(self, model: str, *keys: str | bytes, expect_failure: bool = False
                      ) -> list[Dataset]:
        """findscu with ``-X``: the response identifiers, read back with pydicom.

        :param model: ``-P``, ``-S`` or ``-O``.
        :param keys: ``-k`` values.
        """
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        args: list = [model, "-X", "-od", out]
        for key in keys:
            args += ["-k", key]
        output = await self.tool("findscu", "-v", *args)
        self.assertEqual("DataSetDoesNotMatchSOPClass" in output, expect_failure, output)
        if not expect_failure:
            self.assertIn("Received Final Find Response (Success)", output)
        return [dcmread(path) for path in sorted(glob.glob(os.path.join(out, "rsp*.dcm")))]

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

    def expected(self, level: str, where=lambda ds: True) -> dict[str, set]:
        """The entities of the originals at ``level`` (keyed by unique key) and their
        instances, for originals selected by ``where``."""
        key = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
               "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
        found: dict[str, set] = defaultdict(set)
        for uid, ds in self.originals.items():
            if where(ds):
                found[str(ds[key].value)].add(uid)
        return dict(found)


class BasicTests(DicomqrCase):
    """Echo, store, restart and --clean."""

    @inline
    async def test_echo(self) -> None:
        """echoscu gets Success from the daemon."""
        await self.start_archive()
        output = await self.tool("echoscu", "-v")
        self.assertIn("Received Echo Response (Success)", output)

    @inline
    async def test_store_writes_instances(self) -> None:
        """storescu's 26 instances land in instances/ab/cd/<uid>.dcm, equal to the originals."""
        archive = await self.start_archive()
        await self.store_all()
        self.assertEqual(sorted(uid for uid, _ in stored_instances(archive.instances)),
                         sorted(self.originals))
        self.assertReceived([instance_path(archive.instances, uid) for uid in self.originals],
                            list(self.originals))

    @inline
    async def test_restart_keeps_index_then_clean(self) -> None:
        """A restarted daemon serves what was stored; ``--clean --yes`` then empties it."""
        archive = await self.start_archive()
        await self.store_all()
        await self.stop_archive(archive)
        archive = await self.start_archive()
        studies = await self.findscu("-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
        self.assertEqual(sorted(ds.StudyInstanceUID for ds in studies),
                         sorted(self.expected("STUDY")))
        await self.stop_archive(archive)

        code, output = await self.run_twistd("--clean", "--yes")
        self.assertEqual(code, 0, output)
        self.assertEqual(os.listdir(archive.instances), [])
        index = Index(os.path.join(self.cwd, "instances.sqlite"))
        self.addCleanup(index.close)
        self.assertEqual(index.count("IMAGE"), 0)

    @inline
    async def test_clean_asks(self) -> None:
        """``--clean`` removes nothing unless ``yes`` is typed at its prompt."""
        archive = await self.start_archive()
        await self.tool("storescu", files=self.files[:3])
        await self.stop_archive(archive)

        code, output = await self.run_twistd("--clean", stdin=b"no\n")
        self.assertNotEqual(code, 0, output)
        self.assertIn("[yes/no]", output)
        self.assertEqual(len(os.listdir(archive.instances)), 3)

        code, output = await self.run_twistd("--clean", stdin=b"")
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(len(os.listdir(archive.instances)), 3)

        code, output = await self.run_twistd("--clean", stdin=b"yes\n")
        self.assertEqual(code, 0, output)
        self.assertEqual(os.listdir(archive.instances), [])

    @inline
    async def test_bad_config_does_not_start(self) -> None:
        """A destination without a port is named in one line and the daemon does not start."""
        with open(self.config, "a") as fp:
            fp.write("[BROKEN]\naddress: 127.0.0.1\n")
        code, output = await self.run_twistd()
        self.assertNotEqual(code, 0)
        self.assertIn("[BROKEN] has no port", output)
        self.assertNotIn("Traceback", output)


class FindTests(DicomqrCase):
    """findscu at every level of Patient Root and Study Root."""

    @inline
    async def test_patient_root_every_level(self) -> None:
        """findscu -P answers one response per patient, study, series and image, exactly."""
        await self.start_archive()
        await self.store_all()
        patients = await self.findscu("-P", "QueryRetrieveLevel=PATIENT", "PatientID",
                                      "PatientName", "NumberOfPatientRelatedInstances")
        expected = self.expected("PATIENT")
        self.assertEqual(sorted(ds.PatientID for ds in patients), sorted(expected))
        self.assertEqual({ds.PatientID: ds.NumberOfPatientRelatedInstances for ds in patients},
                         {pid: len(uids) for pid, uids in expected.items()})
        names = {ds.PatientID: str(ds.PatientName) for ds in patients}
        self.assertEqual(names["E2E-P1"], LATIN1_NAME)
        self.assertEqual(names["1CT1"], "CompressedSamples^CT1")

        studies = await self.findscu("-P", "QueryRetrieveLevel=STUDY", "PatientID=E2E-P1",
                                     "StudyInstanceUID", "StudyDate", "AccessionNumber",
                                     "NumberOfStudyRelatedInstances")
        self.assertEqual(sorted((ds.StudyInstanceUID, ds.StudyDate, ds.AccessionNumber,
                                 ds.NumberOfStudyRelatedInstances) for ds in studies),
                         [(f"{ROOT}.1.1", "20210115", "ACC11", 6),
                          (f"{ROOT}.1.2", "20220115", "ACC12", 6)])
        for ds in studies:
            self.assertEqual(sorted(e.keyword for e in ds),
                             sorted(["QueryRetrieveLevel", "PatientID", "StudyInstanceUID",
                                     "StudyDate", "AccessionNumber",
                                     "NumberOfStudyRelatedInstances"]))

        series = await self.findscu("-P", "QueryRetrieveLevel=SERIES", "PatientID=E2E-P2",
                                    f"StudyInstanceUID={ROOT}.2.1", "SeriesInstanceUID",
                                    "SeriesNumber", "NumberOfSeriesRelatedInstances")
        self.assertEqual(sorted((ds.SeriesInstanceUID, ds.SeriesNumber,
                                 ds.NumberOfSeriesRelatedInstances) for ds in series),
                         [(f"{ROOT}.2.1.1", 1, 3), (f"{ROOT}.2.1.2", 2, 3)])

        images = await self.findscu("-P", "QueryRetrieveLevel=IMAGE", "PatientID=E2E-P2",
                                    f"StudyInstanceUID={ROOT}.2.1",
                                    f"SeriesInstanceUID={ROOT}.2.1.2", "SOPInstanceUID",
                                    "InstanceNumber")
        self.assertEqual(sorted((ds.SOPInstanceUID, ds.InstanceNumber) for ds in images),
                         [(f"{ROOT}.2.1.2.{i}", i) for i in (1, 2, 3)])

    @inline
    async def test_study_root_every_level(self) -> None:
        """findscu -S answers one response per study, series and image; PATIENT is refused."""
        await self.start_archive()
        await self.store_all()
        await self.findscu("-S", "QueryRetrieveLevel=PATIENT", "PatientID",
                           expect_failure=True)

        studies = await self.findscu("-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                     "PatientID", "ModalitiesInStudy",
                                     "NumberOfStudyRelatedSeries")
        expected = self.expected("STUDY")
        self.assertEqual(len(studies), len(expected), "one response per study")
        self.assertEqual(sorted(ds.StudyInstanceUID for ds in studies), sorted(expected))
        by_study = {ds.StudyInstanceUID: ds for ds in studies}
        for study, uids in expected.items():
            originals = [self.originals[uid] for uid in uids]
            found = by_study[study]
            self.assertEqual(found.PatientID, originals[0].PatientID)
            self.assertEqual(found.ModalitiesInStudy, originals[0].Modality)
            self.assertEqual(found.NumberOfStudyRelatedSeries,
                             len({str(ds.SeriesInstanceUID) for ds in originals}))

        series = await self.findscu("-S", "QueryRetrieveLevel=SERIES",
                                    f"StudyInstanceUID={ROOT}.1.2", "SeriesInstanceUID",
                                    "Modality")
        self.assertEqual(sorted((ds.SeriesInstanceUID, ds.Modality) for ds in series),
                         [(f"{ROOT}.1.2.1", "CT"), (f"{ROOT}.1.2.2", "CT")])

        images = await self.findscu("-S", "QueryRetrieveLevel=IMAGE",
                                    f"StudyInstanceUID={ROOT}.1.2",
                                    f"SeriesInstanceUID={ROOT}.1.2.1", "SOPInstanceUID",
                                    "SOPClassUID")
        self.assertEqual(sorted((ds.SOPInstanceUID, ds.SOPClassUID) for ds in images),
                         [(f"{ROOT}.1.2.1.{i}", CT_IMAGE_STORAGE) for i in (1, 2, 3)])

        mr = await self.findscu("-S", "QueryRetrieveLevel=IMAGE",
                                "StudyInstanceUID=1.3.6.1.4.1.5962.1.2.4.20040826185059.5457",
                                "SeriesInstanceUID=1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457",
                                "SOPInstanceUID", "SOPClassUID")
        self.assertEqual([ds.SOPClassUID for ds in mr], [MR_IMAGE_STORAGE])

    @inline
    async def test_wildcards_and_dates(self) -> None:
        """Wildcards, date ranges and Latin-1 names select exactly the matching studies."""
        await self.start_archive()
        await self.store_all()

        async def studies(*keys):
            found = await self.findscu("-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                       *keys)
            return sorted(ds.StudyInstanceUID for ds in found)

        ct_small = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
        mr_small = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"
        self.assertEqual(await studies("PatientName=Compressed*"), [ct_small, mr_small])
        self.assertEqual(await studies("PatientName=*CT?"), [ct_small])
        self.assertEqual(await studies("PatientID=E2E-P?"),
                         [f"{ROOT}.{p}.{s}" for p in (1, 2) for s in (1, 2)])
        self.assertEqual(await studies("StudyDate=20040101-20041231"), [ct_small, mr_small])
        self.assertEqual(await studies("StudyDate=20220101-"), [f"{ROOT}.1.2", f"{ROOT}.2.2"])
        self.assertEqual(await studies("StudyDate=-20210131"),
                         sorted([ct_small, mr_small, f"{ROOT}.1.1"]))
        self.assertEqual(await studies("StudyDate=20210215"), [f"{ROOT}.2.1"])
        self.assertEqual(await studies(f"StudyInstanceUID={ROOT}.1.1\\{ROOT}.2.2"),
                         [f"{ROOT}.1.1", f"{ROOT}.2.2"])
        # '%' and '_' are not wildcards.
        self.assertEqual(await studies("PatientID=E2E_P1"), [])
        self.assertEqual(await studies("PatientID=%"), [])
        # One character of a decoded Latin-1 name matches '?'.
        self.assertEqual(await studies("PatientName=M?ller*"), [f"{ROOT}.1.1", f"{ROOT}.1.2"])
        # A query in ISO_IR 100 matches the stored Latin-1 name; PN is case-insensitive.
        found = await self.findscu("-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                   "SpecificCharacterSet=ISO_IR 100",
                                   "PatientName=müller*".encode("latin-1"))
        self.assertEqual(sorted(ds.StudyInstanceUID for ds in found),
                         [f"{ROOT}.1.1", f"{ROOT}.1.2"])
        self.assertEqual({str(ds.PatientName) for ds in found}, {LATIN1_NAME})


class RetrieveTests(DicomqrCase):
    """movescu to a DCMTK storescp destination, getscu, and a pynetdicom requestor."""

    @inline
    async def test_move_to_storescp(self) -> None:
        """movescu moves a study to the configured storescp; the files equal the originals."""
        await self.start_archive()
        await self.store_all()
        received = os.path.join(self.work, "received")
        os.makedirs(received)
        storescp = peers.start_peer(self, reactor, peers.dcmtk("storescp"),
                                    ["-aet", "STORESCP", "-od", received,
                                     str(self.storescp_port)], "storescp")
        await peers.wait_for_port(reactor, self.storescp_port, storescp)
        output = await self.tool("movescu", "-v", "-S", "-aem", "STORESCP",
                                 "-k", "QueryRetrieveLevel=STUDY",
                                 "-k", f"StudyInstanceUID={ROOT}.1.1")
        self.assertIn("Received Final Move Response (Success)", output)
        self.assertReceived(glob.glob(os.path.join(received, "*")),
                            sorted(self.expected("STUDY")[f"{ROOT}.1.1"]))
        # Patient Root, SERIES level, to the same destination.
        for path in glob.glob(os.path.join(received, "*")):
            os.unlink(path)
        output = await self.tool("movescu", "-v", "-P", "-aem", "STORESCP",
                                 "-k", "QueryRetrieveLevel=SERIES", "-k", "PatientID=1CT1",
                                 "-k", "StudyInstanceUID=1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
                                 "-k", "SeriesInstanceUID=1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322")
        self.assertIn("Received Final Move Response (Success)", output)
        self.assertReceived(glob.glob(os.path.join(received, "*")),
                            ["1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"])

    @inline
    async def test_move_unknown_destination(self) -> None:
        """movescu to an AE title that is not configured is refused with 0xA801."""
        await self.start_archive()
        await self.store_all()
        output = await self.tool("movescu", "-d", "-S", "-aem", "NOWHERE",
                                 "-k", "QueryRetrieveLevel=STUDY",
                                 "-k", f"StudyInstanceUID={ROOT}.1.1", expect=None)
        self.assertIn("0xa801", output)
        self.assertIn("MoveDestinationUnknown", output)

    @inline
    async def test_move_destination_down(self) -> None:
        """movescu to a configured destination that is not listening ends with failures."""
        await self.start_archive()
        await self.store_all()
        output = await self.tool("movescu", "-d", "-S", "-aem", "STORESCP",
                                 "-k", "QueryRetrieveLevel=SERIES",
                                 "-k", f"StudyInstanceUID={ROOT}.2.2",
                                 "-k", f"SeriesInstanceUID={ROOT}.2.2.1", expect=None)
        self.assertIn("0xb000", output)
        for i in (1, 2, 3):
            self.assertIn(f"{ROOT}.2.2.1.{i}", output)

    @inline
    async def test_getscu(self) -> None:
        """getscu -od receives the series' instances, equal to the originals."""
        await self.start_archive()
        await self.store_all()
        received = os.path.join(self.work, "got")
        os.makedirs(received)
        output = await self.tool("getscu", "-v", "-S", "-od", received,
                                 "-k", "QueryRetrieveLevel=SERIES",
                                 "-k", f"StudyInstanceUID={ROOT}.1.1",
                                 "-k", f"SeriesInstanceUID={ROOT}.1.1.2")
        self.assertIn("Received C-GET Response (Success)", output)
        self.assertIn("Number of Completed Suboperations : 3", output)
        self.assertReceived(glob.glob(os.path.join(received, "*")),
                            [f"{ROOT}.1.1.2.{i}" for i in (1, 2, 3)])

    @inline
    async def test_pynetdicom_echo_find_get(self) -> None:
        """A pynetdicom requestor's echo, find and get (with SCP role) all succeed."""
        peers.require_pynetdicom()
        await self.start_archive()
        await self.store_all()
        received = os.path.join(self.work, "pynetdicom")
        os.makedirs(received)
        out, err, code = await peers.run_script(
            reactor, "pynetdicom_qr_scu.py",
            [peers.LOCALHOST, str(self.port), "--called", "QRSCP", "--patient-id", "E2E-P2",
             "--get-study", f"{ROOT}.2.2", "--storage", CT_IMAGE_STORAGE,
             "--storage", MR_IMAGE_STORAGE, "--output", received])
        self.assertEqual(code, 0, (out + err).decode())
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual((result["associated"], result["echo"]), (True, 0))
        self.assertEqual(result["find"]["statuses"], [0xFF00, 0xFF00, 0x0000])
        self.assertEqual(sorted(result["find"]["studies"]),
                         [[f"{ROOT}.2.1", "E2E-P2"], [f"{ROOT}.2.2", "E2E-P2"]])
        self.assertEqual(result["get"]["statuses"], [0xFF00] * 6 + [0x0000])
        self.assertEqual((result["get"]["completed"], result["get"]["failed"]), (6, 0))
        expected = sorted(self.expected("STUDY")[f"{ROOT}.2.2"])
        self.assertEqual(sorted(result["received"]), expected)
        self.assertReceived(glob.glob(os.path.join(received, "*")), expected)
