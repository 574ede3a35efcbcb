"""End to end: Storage Commitment and MPPS of the real ``twistd -n dicomqr``
driven by a pynetdicom modality (``tests/peer_scripts/pynetdicom_dimsen_scu.py``).

- Storage commitment with the report on the N-ACTION's association (kept
  open), and on a new association to the modality's own SCP (listening on a
  free port, configured as the destination named by its AE title), where
  the archive is SCP of Storage Commitment by role selection; and a request
  left outstanding by a stopped archive, reported after its restart.
- MPPS: N-CREATE, N-SET to COMPLETED, a duplicate and a late N-SET
  refused; the step is then read back over HTTP (``/api/mpps``).
"""

from __future__ import annotations

import functools
import json
import os

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests import peers
from tests.helpers import free_port

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MPPS_UID = "1.2.826.0.1.3680043.2.1143.500"
STUDY_UID = "1.2.826.0.1.3680043.2.1143.400"


def inline(method):
    """Run an ``async def`` test method as a Deferred (trial waits for it)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


class DimseNTests(TestCase):
    """The archive's DIMSE-N services against a pynetdicom modality."""

    timeout = 90

    def setUp(self) -> None:
        peers.require_pynetdicom()
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        self.port = free_port()
        self.scp_port = free_port()
        self.http_port = free_port()
        self.config = os.path.join(self.cwd, "qrscp.ini")
        with open(self.config, "w") as fp:
            fp.write(f"[DEFAULT]\nae_title: QRSCP\nport: {self.port}\n"
                     f"bind_address: 127.0.0.1\n"
                     f"http: tcp:{self.http_port}:interface=127.0.0.1\n"
                     f"[PYNETSCU]\naddress: 127.0.0.1\nport: {self.scp_port}\n")
        self.files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
        self.ct, self.mr = (dcmread(path, stop_before_pixels=True) for path in self.files)

    async def start(self) -> peers.PeerProcess:
        """Start the archive and store the two test files into it."""
        archive = await peers.start_dicomqr(self, reactor, self.cwd, self.config, self.port,
                                            "--verbose")
        out, err, code = await peers.run_script(
            reactor, "pynetdicom_scu.py",
            [peers.LOCALHOST, str(self.port), *self.files, "--called", "QRSCP"])
        self.assertEqual(json.loads(out.decode().splitlines()[-1])["store"], [0, 0],
                         (out + err).decode())
        return archive

    async def modality(self, *args: str) -> dict:
        """Run the pynetdicom modality; its JSON outcome."""
        out, err, code = await peers.run_script(
            reactor, "pynetdicom_dimsen_scu.py", list(args), timeout=60)
        self.assertEqual(code, 0, (out + err).decode())
        return json.loads(out.decode().strip().splitlines()[-1])

    def commit_args(self, *extra: str) -> list[str]:
        """``commit`` of the CT (held), the MR named as CT (class conflict) and an
        unknown instance."""
        return ["commit", peers.LOCALHOST, str(self.port),
                "--ref", f"{CT_IMAGE_STORAGE}:{self.ct.SOPInstanceUID}",
                "--ref", f"{CT_IMAGE_STORAGE}:{self.mr.SOPInstanceUID}",
                "--ref", f"{CT_IMAGE_STORAGE}:1.2.826.0.1.3680043.2.1143.404", *extra]

    def assertReport(self, report: dict, calling: str) -> None:
        """Event type 2: the CT committed, the MR and the unknown failed with their
        reasons."""
        self.assertEqual(report["calling"], calling)
        self.assertEqual((report["class"], report["instance"], report["event_type"]),
                         (STORAGE_COMMITMENT, WELL_KNOWN, 2))
        self.assertEqual(report["transaction"], "1.2.826.0.1.3680043.2.1143.99")
        self.assertEqual(report["retrieve_ae"], "QRSCP")
        self.assertEqual(report["committed"], [[CT_IMAGE_STORAGE, str(self.ct.SOPInstanceUID)]])
        self.assertEqual(report["failed"], [
            [CT_IMAGE_STORAGE, str(self.mr.SOPInstanceUID), 0x0119],
            [CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.2.1143.404", 0x0112]])

    def outstanding(self) -> list[str]:
        """Transaction files the archive still holds."""
        directory = os.path.join(self.cwd, "instances", ".commitment")
        return os.listdir(directory) if os.path.isdir(directory) else []

    @inline
    async def test_commitment_same_association(self) -> None:
        """A requestor keeping its association open gets the report on it."""
        archive = await self.start()
        result = await self.modality(*self.commit_args("--same"))
        self.assertEqual(result["action"], 0)
        self.assertEqual(len(result["reports"]), 1, result)
        self.assertReport(result["reports"][0], "PYNETSCU")
        await self.reported(archive)

    @inline
    async def test_commitment_new_association(self) -> None:
        """A requestor releasing at once gets the report on a new association to its
        configured address, from the archive's AE title."""
        archive = await self.start()
        result = await self.modality(*self.commit_args("--listen", str(self.scp_port)))
        self.assertEqual(result["action"], 0)
        self.assertEqual(len(result["reports"]), 1, result)
        self.assertReport(result["reports"][0], "QRSCP")
        await self.reported(archive)

    @inline
    async def test_commitment_after_restart(self) -> None:
        """A result that could not be delivered (no destination configured) is kept
        across a restart and reported after it, on a new association."""
        with open(self.config) as fp:
            configured = fp.read()
        with open(self.config, "w") as fp:
            fp.write(configured.split("[PYNETSCU]")[0])
        archive = await self.start()
        result = await self.modality(*self.commit_args("--wait", "0"))
        self.assertEqual((result["action"], result["reports"]), (0, []))
        await archive.wait_for_output(b"no destination [PYNETSCU]")
        self.assertIn(await archive.stop(), (0, -15), archive.output())
        self.assertEqual(len(self.outstanding()), 1)
        with open(self.config, "w") as fp:
            fp.write(configured)
        listener = peers.start_script_peer(self, reactor, "pynetdicom_dimsen_scu.py", [
            "listen", peers.LOCALHOST, "0", "--listen", str(self.scp_port), "--wait", "40"])
        await listener.wait_for_output(b"LISTENING")
        archive = await peers.start_dicomqr(self, reactor, self.cwd, self.config, self.port,
                                            "--verbose")
        line = await listener.wait_for_output(b'"reports"', timeout=40)
        reports = json.loads(line)["reports"]
        self.assertEqual(len(reports), 1, reports)
        self.assertReport(reports[0], "QRSCP")
        await self.reported(archive)

    @inline
    async def test_mpps_then_http(self) -> None:
        """N-CREATE and N-SET COMPLETED succeed, a duplicate and a late N-SET are refused,
        and the completed step reads back over HTTP as DICOM JSON."""
        await self.start()
        result = await self.modality("mpps", peers.LOCALHOST, str(self.port),
                                     "--uid", MPPS_UID, "--study", STUDY_UID)
        self.assertEqual((result["create"], result["duplicate"], result["complete"],
                          result["late"]), (0x0000, 0x0111, 0x0000, 0x0110))
        self.assertEqual(result["late_comment"],
                         "Performed Procedure Step Object may no longer be updated")
        code, body = await self.get(f"/api/mpps/{MPPS_UID}")
        self.assertEqual(code, 200, body)
        step = Dataset.from_json(json.loads(body))
        self.assertEqual((step.SOPInstanceUID, step.PerformedProcedureStepStatus,
                          str(step.PatientName), step.PerformedProcedureStepEndTime),
                         (MPPS_UID, "COMPLETED", "Müller^Anna", "103000"))
        self.assertEqual(step.ScheduledStepAttributesSequence[0].StudyInstanceUID, STUDY_UID)
        self.assertEqual(step.PerformedSeriesSequence[0].ReferencedImageSequence[0]
                         .ReferencedSOPInstanceUID, STUDY_UID + ".1.1")
        code, body = await self.get("/api/mpps")
        self.assertEqual(code, 200, body)
        self.assertEqual([s["00080018"]["Value"] for s in json.loads(body)], [[MPPS_UID]])

    async def reported(self, archive: peers.PeerProcess) -> None:
        """Wait for the archive's log line saying it reported; then nothing is
        outstanding."""
        try:
            await archive.wait_for_output(b"reported to PYNETSCU")
        except Exception:
            self.fail(archive.output())
        self.assertEqual(self.outstanding(), [])

    async def get(self, path: str) -> tuple[int, str]:
        """GET a path of the archive's HTTP endpoint: ``(code, body)``."""
        response = await Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{self.http_port}{path}".encode())
        body = await readBody(response)
        return response.code, body.decode("utf-8")
