"""End-to-end tests: ``python -m dicomtwist movescu`` against real Move SCPs.

Every peer is a real process on 127.0.0.1 with free ports: DCMTK's
``dcmqrscp`` (its storage area loaded with test instances by DCMTK's
``storescu``), DCMTK's ``storescp`` as a separate move destination, and
pynetdicom's ``qrscp``.  movescu runs as a subprocess; each test waits for it
to exit and checks its exit status, its output lines and the files it wrote.
Only the start-up of a peer is polled for (its port opening), bounded.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dicomtwist.movescu import (
    EXIT_ASSOCIATION,
    EXIT_CANCEL,
    EXIT_CONNECTION,
    EXIT_FAILURE,
    EXIT_LOCAL,
    EXIT_SUCCESS,
)
from tests.helpers import ct_dataset, free_port

DCMTK = "/usr/bin"
DCMQRSCP = os.path.join(DCMTK, "dcmqrscp")
STORESCU = os.path.join(DCMTK, "storescu")
STORESCP = os.path.join(DCMTK, "storescp")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCALHOST = "127.0.0.1"
#: Seconds a movescu run or a peer start-up may take before the test fails.
TIMEOUT = 120


def require_dcmtk() -> None:
    """:raises SkipTest: DCMTK is not installed at /usr/bin."""
    for tool in (DCMQRSCP, STORESCU, STORESCP):
        if not os.access(tool, os.X_OK):
            raise SkipTest(f"DCMTK is not installed ({tool} missing)")


def require_pynetdicom_qrscp() -> None:
    """:raises SkipTest: pynetdicom's qrscp cannot run (it needs sqlalchemy)."""
    for module in ("pynetdicom", "sqlalchemy"):
        try:
            __import__(module)
        except ImportError:
            raise SkipTest(f"pynetdicom's qrscp needs the {module} package, not installed")


def environment() -> dict[str, str]:
    """Our environment, with this checkout importable and Nagle off for DCMTK."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def port_open(port: int) -> bool:
    """True if something accepts connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect((LOCALHOST, port))
        except OSError:
            return False
        # A connect to a free port in the ephemeral range can pick that same
        # port as its own and "succeed" with nobody listening.
        return s.getsockname() != s.getpeername()


class Peer:
    """A long-running peer process, stopped (and waited for) on cleanup."""

    def __init__(self, testcase: SynchronousTestCase, argv: list[str], cwd: str,
                 port: int, description: str) -> None:
        self.description = description
        self.log_path = os.path.join(cwd, f"{description}.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(argv, cwd=cwd, env=environment(), stdin=subprocess.PIPE,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        testcase.addCleanup(self.stop)
        deadline = time.monotonic() + TIMEOUT
        while not port_open(port):
            if self.process.poll() is not None:
                testcase.fail(f"{description} exited ({self.process.returncode}) before"
                              f" listening:\n{self.output()}")
            if time.monotonic() > deadline:
                testcase.fail(f"{description} is not listening on {port}:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        """What the peer printed so far."""
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """Terminate the peer and wait for it to exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        self._log.close()


class Result:
    """A finished movescu run."""

    def __init__(self, argv: list[str], completed: subprocess.CompletedProcess) -> None:
        self.argv = argv
        self.code = completed.returncode
        self.output = completed.stdout + completed.stderr
        self.lines = self.output.splitlines()

    def __repr__(self) -> str:
        return f"movescu {' '.join(self.argv)} -> {self.code}\n{self.output}"


class MoveTestCase(SynchronousTestCase):
    """Test instances, a scratch directory and a way to run movescu."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="movescu-e2e-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.source = os.path.join(self.tmp, "source")
        os.mkdir(self.source)
        self.study = generate_uid()
        self.instances: dict[str, Dataset] = {}
        for i, (patient, study) in enumerate([("PID1", self.study), ("PID1", self.study),
                                              ("PID2", generate_uid())]):
            ds = ct_dataset(pixels=1024, PatientID=patient, StudyInstanceUID=study,
                            PatientName=f"Patient^{patient}", StudyID="1",
                            SeriesNumber=1, InstanceNumber=i + 1)
            ds.save_as(os.path.join(self.source, f"ct{i}.dcm"), enforce_file_format=True)
            self.instances[ds.SOPInstanceUID] = ds

    def movescu(self, *argv: str) -> Result:
        """Run movescu to completion in the scratch directory."""
        args = [sys.executable, "-m", "dicomtwist", "movescu", *argv]
        completed = subprocess.run(args, cwd=self.tmp, env=environment(), capture_output=True,
                                   text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        return Result(list(argv), completed)

    def assert_lines(self, result: Result, *expected: str) -> None:
        """Each expected line is in the output, in this order."""
        position = -1
        for line in expected:
            try:
                position = result.lines.index(line, position + 1)
            except ValueError:
                self.fail(f"{line!r} not in the output (in order):\n{result!r}")

    def assert_code(self, result: Result, code: int) -> None:
        """movescu exited with ``code``."""
        self.assertEqual(result.code, code, repr(result))

    def assert_received(self, directory: str, patient: str | None = None,
                        study: str | None = None) -> None:
        """``directory`` holds exactly the matching instances, equal to the originals."""
        expected = {uid for uid, ds in self.instances.items()
                    if (patient is None or ds.PatientID == patient)
                    and (study is None or ds.StudyInstanceUID == study)}
        names = sorted(os.listdir(directory))
        self.assertEqual(names, sorted(f"CT.{uid}" for uid in expected))
        for name in names:
            received = dcmread(os.path.join(directory, name))
            original = self.instances[received.SOPInstanceUID]
            # The Move SCP may rewrite the file meta; compare the data sets.
            self.assertEqual(Dataset(received), Dataset(original), name)

    def successful_move(self, result: Result) -> None:
        """The output lines of a move that succeeded with 2 sub-operations."""
        self.assert_code(result, EXIT_SUCCESS)
        self.assert_lines(
            result, "I: Requesting Association", "I: Association Accepted",
            "I: Sending Move Request: MsgID 1", "I: # Request Identifier",
            "I: Move SCP Response: 1 - 0xFF00 (Pending)",
            "I: Move SCP Response: 2 - 0xFF00 (Pending)",
            "I: Move SCP Result: 0x0000 (Success)",
            "I: Releasing Association", "I: Association Released")
        self.assertTrue(any(line.startswith("I: Sub-Operations Remaining: 0, Completed: 2")
                            or line.startswith("I: Sub-Operations Completed: 2")
                            for line in result.lines), repr(result))


class DCMQRSCPTests(MoveTestCase):
    """Against DCMTK's dcmqrscp, its storage area holding the test instances."""

    def setUp(self) -> None:
        require_dcmtk()
        super().setUp()
        self.port = free_port()
        self.store_port = free_port()
        self.other_port = free_port()
        storage = os.path.join(self.tmp, "dcmqrscp-db")
        os.mkdir(storage)
        config = os.path.join(self.tmp, "dcmqrscp.cfg")
        with open(config, "w") as f:
            f.write(f"""\
NetworkTCPPort  = {self.port}
MaxPDUSize      = 16384
MaxAssociations = 16

HostTable BEGIN
movescu_store = (STORESCP, {LOCALHOST}, {self.store_port})
other_store   = (OTHERSCP, {LOCALHOST}, {self.other_port})
movescu_only  = (MOVESCU, {LOCALHOST}, {self.store_port})
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
QRSCP   {storage}  RW  (100, 1024mb)  ANY
STRICT  {storage}  R   (100, 1024mb)  movescu_only
AETable END
""")
        # -dhl: compare peers by address, as the HostTable gives them.
        self.scp = Peer(self, [DCMQRSCP, "-c", config, "-dhl", str(self.port)], self.tmp,
                        self.port, "dcmqrscp")
        load = subprocess.run(
            [STORESCU, "-aet", "LOADER", "-aec", "QRSCP", LOCALHOST, str(self.port),
             *sorted(glob.glob(os.path.join(self.source, "*.dcm")))],
            env=environment(), capture_output=True, timeout=TIMEOUT)
        self.assertEqual(load.returncode, 0, load.stderr.decode("utf-8", "replace"))

    def test_patient_level_store(self) -> None:
        """-P at PATIENT level with --store receives the patient's instances into -od."""
        out = os.path.join(self.tmp, "received", "patient")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-P",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1",
                              "--store", "--store-port", str(self.store_port), "-od", out)
        self.successful_move(result)
        self.assertTrue(any("(0010,0020)" in line and "PID1" in line for line in result.lines))
        self.assert_lines(result, "I: Storage SCP STORESCP listening on port"
                          f" {self.store_port}")
        self.assertTrue(any(line.startswith("I: Storing DICOM file: CT.")
                            for line in result.lines), repr(result))
        self.assert_received(out, patient="PID1")

    def test_study_level_store(self) -> None:
        """-S at STUDY level with --store receives the study's instances."""
        out = os.path.join(self.tmp, "study")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-S",
                              "-k", "QueryRetrieveLevel=STUDY",
                              "-k", f"StudyInstanceUID={self.study}",
                              "--store", "--store-port", str(self.store_port), "-od", out)
        self.successful_move(result)
        self.assert_received(out, study=self.study)

    def test_overwrite(self) -> None:
        """Moving the same instances twice warns and overwrites."""
        out = os.path.join(self.tmp, "twice")
        argv = (LOCALHOST, str(self.port), "-aec", "QRSCP", "-k", "QueryRetrieveLevel=PATIENT",
                "-k", "PatientID=PID2", "--store", "--store-port", str(self.store_port),
                "-od", out)
        self.assert_code(self.movescu(*argv), EXIT_SUCCESS)
        result = self.movescu(*argv)
        self.assert_code(result, EXIT_SUCCESS)
        self.assert_lines(result, "W: DICOM file already exists, overwriting")
        self.assert_received(out, patient="PID2")

    def test_ignore(self) -> None:
        """--ignore receives the instances, answers Success and writes nothing."""
        out = os.path.join(self.tmp, "ignored")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1",
                              "--store", "--ignore", "--store-port", str(self.store_port),
                              "-od", out)
        self.successful_move(result)
        self.assertFalse(os.path.exists(out))
        self.assertEqual([n for n in os.listdir(self.tmp) if n.startswith("CT.")], [])

    def test_separate_storescp(self) -> None:
        """-aem names a separate DCMTK storescp, which receives the instances."""
        out = os.path.join(self.tmp, "storescp")
        os.mkdir(out)
        storescp = Peer(self, [STORESCP, "-aet", "OTHERSCP", "-od", out, str(self.other_port)],
                        self.tmp, self.other_port, "storescp")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-aem", "OTHERSCP",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1")
        self.successful_move(result)
        storescp.stop()
        self.assert_received(out, patient="PID1")

    def test_unknown_destination(self) -> None:
        """A destination dcmqrscp does not know ends with 0xA801 and the failure status."""
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-aem", "NOWHERE",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1")
        self.assert_code(result, EXIT_FAILURE)
        self.assert_lines(result, "I: Association Accepted",
                          "I: Move SCP Result: 0xA801 (Move Destination Unknown)",
                          "I: Releasing Association")

    def test_unknown_calling_ae_rejected(self) -> None:
        """dcmqrscp rejects a calling AE its AETable does not allow: exit 4."""
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "STRICT", "-aet", "STRANGER",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1")
        self.assert_code(result, EXIT_ASSOCIATION)
        self.assert_lines(result, "I: Requesting Association", "E: Association Rejected",
                          "E: Result: Rejected Permanent, Source: Service User")
        self.assertFalse(any("Sending Move Request" in line for line in result.lines))

    def test_allowed_calling_ae(self) -> None:
        """The same AE entry accepts the calling AE it allows."""
        out = os.path.join(self.tmp, "strict")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "STRICT", "-aet", "MOVESCU",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1",
                              "--store", "--store-port", str(self.store_port), "-od", out)
        self.successful_move(result)
        self.assert_received(out, patient="PID1")

    def test_unknown_called_ae_rejected(self) -> None:
        """dcmqrscp rejects an unknown called AE title: exit 4, reason named."""
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "NOSUCHAE",
                              "-k", "QueryRetrieveLevel=PATIENT")
        self.assert_code(result, EXIT_ASSOCIATION)
        self.assert_lines(result, "E: Association Rejected",
                          "E: Result: Rejected Permanent, Source: Service User",
                          "E: Reason: Called AE title not recognised")


class PynetdicomQRSCPTests(MoveTestCase):
    """Against pynetdicom's qrscp, loaded by DCMTK's storescu."""

    def setUp(self) -> None:
        require_dcmtk()
        require_pynetdicom_qrscp()
        super().setUp()
        self.port = free_port()
        self.store_port = free_port()
        # qrscp takes relative locations relative to its own package
        # directory, so every path in its configuration is absolute.
        workdir = os.path.join(self.tmp, "qrscp")
        os.mkdir(workdir)
        config = os.path.join(workdir, "qrscp.ini")
        with open(config, "w") as f:
            f.write(f"""\
[DEFAULT]
    ae_title: QRSCP
    port: {self.port}
    max_pdu: 16382
    acse_timeout: 30
    dimse_timeout: 30
    network_timeout: 30
    bind_address: {LOCALHOST}
    instance_location: {os.path.join(workdir, "instances")}
    database_location: {os.path.join(workdir, "instances.sqlite")}
    log_identifier: True

[STORESCP]
    address: {LOCALHOST}
    port: {self.store_port}
""")
        self.scp = Peer(self, [sys.executable, "-m", "pynetdicom", "qrscp", "-c", config],
                        workdir, self.port, "pynetdicom-qrscp")
        load = subprocess.run(
            [STORESCU, "-aet", "LOADER", "-aec", "QRSCP", LOCALHOST, str(self.port),
             *sorted(glob.glob(os.path.join(self.source, "*.dcm")))],
            env=environment(), capture_output=True, timeout=TIMEOUT)
        self.assertEqual(load.returncode, 0, load.stderr.decode("utf-8", "replace"))

    def test_patient_level_store(self) -> None:
        """-P at PATIENT level with --store receives the patient's instances."""
        out = os.path.join(self.tmp, "patient")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-P",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1",
                              "--store", "--store-port", str(self.store_port), "-od", out)
        self.successful_move(result)
        self.assert_received(out, patient="PID1")

    def test_study_level_store(self) -> None:
        """-S at STUDY level with --store receives the study's instances."""
        out = os.path.join(self.tmp, "study")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-S",
                              "-k", "QueryRetrieveLevel=STUDY",
                              "-k", f"StudyInstanceUID={self.study}",
                              "--store", "--store-port", str(self.store_port), "-od", out)
        self.successful_move(result)
        self.assert_received(out, study=self.study)

    def test_ignore(self) -> None:
        """--ignore: Success, nothing written."""
        out = os.path.join(self.tmp, "ignored")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1",
                              "--store", "--ignore", "--store-port", str(self.store_port),
                              "-od", out)
        self.successful_move(result)
        self.assertFalse(os.path.exists(out))

    def test_unknown_destination(self) -> None:
        """A destination qrscp does not know ends with 0xA801 and the failure status."""
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-aem", "NOWHERE",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1")
        self.assert_code(result, EXIT_FAILURE)
        self.assert_lines(result, "I: Move SCP Result: 0xA801 (Move Destination Unknown)",
                          "I: Releasing Association")


class DicomQRTests(MoveTestCase):
    """Against our own archive (``python -m dicomtwist qrscp``, the dicomqr daemon)."""

    def setUp(self) -> None:
        require_dcmtk()
        try:
            from dicomtwist import tap  # noqa: F401
        except ImportError as e:
            raise SkipTest(f"the archive (dicomtwist.tap) cannot be imported: {e}")
        super().setUp()
        self.port = free_port()
        self.store_port = free_port()
        workdir = os.path.join(self.tmp, "dicomqr")
        os.mkdir(workdir)
        config = os.path.join(workdir, "dicomqr.ini")
        with open(config, "w") as f:
            f.write(f"""\
[DEFAULT]
    ae_title: QRSCP
    port: {self.port}
    bind_address: {LOCALHOST}
    instance_location: {os.path.join(workdir, "instances")}
    database_location: {os.path.join(workdir, "instances.sqlite")}
    # A Pending response after every sub-operation (the lines checked below).
    pending_interval: 0

[STORESCP]
    address: {LOCALHOST}
    port: {self.store_port}
""")
        self.scp = Peer(self, [sys.executable, "-m", "dicomtwist", "qrscp", "-c", config],
                        workdir, self.port, "dicomqr")
        load = subprocess.run(
            [STORESCU, "-aet", "LOADER", "-aec", "QRSCP", LOCALHOST, str(self.port),
             *sorted(glob.glob(os.path.join(self.source, "*.dcm")))],
            env=environment(), capture_output=True, timeout=TIMEOUT)
        self.assertEqual(load.returncode, 0, load.stderr.decode("utf-8", "replace"))

    def test_patient_level_store(self) -> None:
        """-P at PATIENT level with --store receives the patient's instances."""
        out = os.path.join(self.tmp, "patient")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-P",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1",
                              "--store", "--store-port", str(self.store_port), "-od", out)
        self.successful_move(result)
        self.assert_received(out, patient="PID1")

    def test_study_level_store(self) -> None:
        """-S at STUDY level with --store receives the study's instances."""
        out = os.path.join(self.tmp, "study")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-S",
                              "-k", "QueryRetrieveLevel=STUDY",
                              "-k", f"StudyInstanceUID={self.study}",
                              "--store", "--store-port", str(self.store_port), "-od", out)
        self.successful_move(result)
        self.assert_received(out, study=self.study)

    def test_ignore(self) -> None:
        """--ignore: Success, nothing written."""
        out = os.path.join(self.tmp, "ignored")
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1",
                              "--store", "--ignore", "--store-port", str(self.store_port),
                              "-od", out)
        self.successful_move(result)
        self.assertFalse(os.path.exists(out))

    def test_unknown_destination(self) -> None:
        """A destination the archive does not know ends with 0xA801 and the failure status."""
        result = self.movescu(LOCALHOST, str(self.port), "-aec", "QRSCP", "-aem", "NOWHERE",
                              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1")
        self.assert_code(result, EXIT_FAILURE)
        self.assert_lines(result, "I: Move SCP Result: 0xA801 (Move Destination Unknown)",
                          "I: Releasing Association")


#: A pynetdicom Move SCP that sends an instance every 0.2 s until cancelled.
SLOW_MOVE_SCP = """\
import sys, time
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (CTImageStorage,
                                  PatientRootQueryRetrieveInformationModelMove)

port, destination = int(sys.argv[1]), int(sys.argv[2])

def handle_move(event):
    yield ("127.0.0.1", destination)
    yield 1000
    for i in range(1000):
        if event.is_cancelled:
            print("CANCELLED", flush=True)
            yield (0xFE00, None)
            return
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.PatientID = "PID1"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        yield (0xFF00, ds)
        time.sleep(0.2)

ae = AE("SLOWSCP")
ae.add_supported_context(PatientRootQueryRetrieveInformationModelMove)
ae.add_requested_context(CTImageStorage)
ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_MOVE, handle_move)])
"""


class InterruptTests(MoveTestCase):
    """Ctrl-C (SIGINT) in the middle of a long move."""

    def setUp(self) -> None:
        try:
            import pynetdicom  # noqa: F401
        except ImportError:
            raise SkipTest("pynetdicom (the slow Move SCP) is not installed")
        super().setUp()
        self.port = free_port()
        self.store_port = free_port()
        script = os.path.join(self.tmp, "slow_move_scp.py")
        with open(script, "w") as f:
            f.write(SLOW_MOVE_SCP)
        self.scp = Peer(self, [sys.executable, script, str(self.port), str(self.store_port)],
                        self.tmp, self.port, "slow-move-scp")

    def test_sigint_cancels(self) -> None:
        """SIGINT sends C-CANCEL, waits for the final 0xFE00, releases and exits 6."""
        args = [sys.executable, "-m", "dicomtwist", "movescu", LOCALHOST, str(self.port),
                "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID1", "--store",
                "--ignore", "--store-port", str(self.store_port)]
        process = subprocess.Popen(args, cwd=self.tmp, env=environment(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        before = []
        # Wait for the move to be under way (a pending response), not for time.
        for line in process.stderr:
            before.append(line.rstrip("\n"))
            if line.startswith("I: Move SCP Response: 2 - 0xFF00 (Pending)"):
                break
        else:
            self.fail("movescu ended before the move was under way:\n" + "\n".join(before))
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        code = process.wait(timeout=TIMEOUT)
        process.stderr.close()
        lines = before + rest.splitlines()
        result = Result(args, subprocess.CompletedProcess(args, code, "", "\n".join(lines)))
        self.assert_code(result, EXIT_CANCEL)
        self.assert_lines(result, "W: Interrupted: sending C-CANCEL and waiting for the"
                          " final response", "I: Move SCP Result: 0xFE00 (Cancel)",
                          "I: Releasing Association", "I: Association Released")
        self.assertIn("CANCELLED", self.scp.output())


class LocalErrorTests(MoveTestCase):
    """Failures that need no peer at all."""

    def test_connection_refused(self) -> None:
        """Nobody listening: exit 3, the refusal named."""
        port = free_port()
        result = self.movescu(LOCALHOST, str(port), "-k", "QueryRetrieveLevel=PATIENT")
        self.assert_code(result, EXIT_CONNECTION)
        self.assert_lines(result, f"E: Association request failed: unable to connect to"
                          f" {LOCALHOST}:{port} (connection refused)")

    def test_store_port_in_use(self) -> None:
        """A store port in use is reported by name before associating: exit 8."""
        with socket.socket() as busy:
            busy.bind(("", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            result = self.movescu(LOCALHOST, str(free_port()), "-k", "PatientID=1",
                                  "--store", "--store-port", str(port), "-od", self.tmp)
        self.assert_code(result, EXIT_LOCAL)
        self.assertTrue(any(line.startswith(f"E: Cannot start the Storage SCP on port {port}")
                            and "--store-port" in line for line in result.lines), repr(result))
        self.assertFalse(any("Requesting Association" in line for line in result.lines))

    def test_bad_keyword(self) -> None:
        """A bad -k is named before associating: exit 2."""
        result = self.movescu(LOCALHOST, str(free_port()), "-k", "BeamSequence[x]=")
        self.assert_code(result, 2)
        self.assertIn("E: invalid -k argument 'BeamSequence[x]=': index [x] of BeamSequence"
                      " is not a non-negative integer", result.lines)
        self.assertNotIn("Traceback", result.output)

    def test_unreadable_file(self) -> None:
        """An unreadable -f is named before associating: exit 2."""
        path = os.path.join(self.tmp, "nope.dcm")
        result = self.movescu(LOCALHOST, str(free_port()), "-f", path)
        self.assert_code(result, 2)
        self.assertTrue(any(path in line for line in result.lines), repr(result))

    def test_help_lists_exit_statuses(self) -> None:
        """--help exits 0 and lists the exit statuses."""
        result = self.movescu("--help")
        self.assert_code(result, 0)
        self.assertIn("Exit status:", result.lines)
        self.assertTrue(any(line.startswith("  5  ") for line in result.lines))
