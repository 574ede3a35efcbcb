"""End to end: sequence matching with DCMTK ``findscu -k "(0008,1032)[0]..."``,
relational queries and retrievals from a pynetdicom requestor that
negotiated them (SOP Class Extended Negotiation), and 0xFF01, against the
real ``twistd -n dicomqr`` daemon (see ``tests.test_dicomqr_e2e``)."""

from __future__ import annotations

import glob
import json
import os
import sys

from pydicom.dataset import Dataset
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests import peers
from tests.helpers import CT_IMAGE_STORAGE, ct_dataset
from tests.test_dicomqr_e2e import MR_IMAGE_STORAGE, ROOT, DicomqrCase, inline

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
#: Root of the UIDs of the instances with sequences.
SEQ = f"{ROOT}.9"


def code(value: str, meaning: str, scheme: str = "99LOCAL") -> Dataset:
    """A Code Sequence item."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def request(procedure: str, step: str) -> Dataset:
    """A Request Attributes Sequence item."""
    item = Dataset()
    item.RequestedProcedureID = procedure
    item.ScheduledProcedureStepID = step
    return item


class SequenceMatchingTests(DicomqrCase):
    """findscu sequence keys against the real daemon."""

    def write_sequences(self) -> list[str]:
        """Study SEQ.1 (procedure codes P-HEAD and P-NECK; series SEQ.1.1 with
        request RP-1) and study SEQ.2 (P-KNEE; series SEQ.2.1 with RP-2)."""
        paths = []
        for n, (codes, requests) in enumerate([
                ([code("P-HEAD", "Head CT"), code("P-NECK", "Neck CT")], [request("RP-1", "S-1")]),
                ([code("P-KNEE", "Knee MR", "DCM")], [request("RP-2", "S-2")])], 1):
            ds = ct_dataset(16, PatientID=f"SEQ-P{n}", StudyInstanceUID=f"{SEQ}.{n}",
                            SeriesInstanceUID=f"{SEQ}.{n}.1", SOPInstanceUID=f"{SEQ}.{n}.1.1",
                            ProcedureCodeSequence=codes, RequestAttributesSequence=requests)
            path = os.path.join(self.data, f"seq-{n}.dcm")
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    async def start(self) -> None:
        await self.start_archive()
        await self.tool("storescu", files=self.write_sequences())

    @inline
    async def test_procedure_code(self) -> None:
        """A Code Value with a wild card inside (0008,1032) finds the study
        and returns its matching items with the requested item keys."""
        await self.start()
        responses = await self.findscu(
            "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID=",
            "(0008,1032)[0].(0008,0100)=P-*K*", "(0008,1032)[0].(0008,0104)=")
        self.assertEqual([(r.StudyInstanceUID, [(i.CodeValue, i.CodeMeaning)
                                                for i in r.ProcedureCodeSequence])
                          for r in responses],
                         [(f"{SEQ}.1", [("P-NECK", "Neck CT")]),
                          (f"{SEQ}.2", [("P-KNEE", "Knee MR")])])
        for r in responses:
            self.assertEqual(sorted(e.keyword for e in r.ProcedureCodeSequence[0]),
                             ["CodeMeaning", "CodeValue"])

    @inline
    async def test_keys_in_one_item(self) -> None:
        """Two keys of the query item must match in the same item."""
        await self.start()
        responses = await self.findscu(
            "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID=",
            "ProcedureCodeSequence[0].CodeValue=P-HEAD",
            "ProcedureCodeSequence[0].CodeMeaning=Neck CT")
        self.assertEqual(responses, [])
        responses = await self.findscu(
            "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID=",
            "ProcedureCodeSequence[0].CodeValue=P-HEAD",
            "ProcedureCodeSequence[0].CodingSchemeDesignator=99LOCAL")
        self.assertEqual([r.StudyInstanceUID for r in responses], [f"{SEQ}.1"])

    @inline
    async def test_empty_sequence_returns_all_items(self) -> None:
        """An empty sequence key is universal: every study, with all its items."""
        await self.start()
        responses = await self.findscu("-S", "QueryRetrieveLevel=STUDY",
                                       "StudyInstanceUID=", "ProcedureCodeSequence=",
                                       f"PatientID=SEQ-P*")
        self.assertEqual({r.StudyInstanceUID: [i.CodeValue for i in r.ProcedureCodeSequence]
                          for r in responses},
                         {f"{SEQ}.1": ["P-HEAD", "P-NECK"], f"{SEQ}.2": ["P-KNEE"]})

    @inline
    async def test_request_attributes_at_series_level(self) -> None:
        """Request Attributes Sequence is matched at the SERIES level."""
        await self.start()
        responses = await self.findscu(
            "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={SEQ}.2",
            "SeriesInstanceUID=", "(0040,0275)[0].(0040,1001)=RP-2",
            "(0040,0275)[0].(0040,0009)=")
        self.assertEqual([(r.SeriesInstanceUID,
                           [(i.RequestedProcedureID, i.ScheduledProcedureStepID)
                            for i in r.RequestAttributesSequence]) for r in responses],
                         [(f"{SEQ}.2.1", [("RP-2", "S-2")])])

    @inline
    async def test_unsupported_key_pending_warning(self) -> None:
        """A key the index does not hold is returned empty with 0xFF01."""
        await self.start()
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        output = await self.tool("findscu", "-v", "-S", "-X", "-od", out,
                                 "-k", "QueryRetrieveLevel=STUDY",
                                 "-k", f"StudyInstanceUID={SEQ}.1",
                                 "-k", "InstitutionName=")
        self.assertIn("Received Find Response 1 (Pending: WarningUnsupportedOptionalKeys)",
                      output)
        self.assertIn("Received Final Find Response (Success)", output)
        from pydicom import dcmread

        [response] = [dcmread(p) for p in glob.glob(os.path.join(out, "rsp*.dcm"))]
        self.assertEqual(response.InstitutionName, "")


class RelationalTests(DicomqrCase):
    """A pynetdicom requestor negotiates relational queries and retrievals."""

    timeout = 90

    async def relational(self, *args: str) -> dict:
        received = os.path.join(self.work, "pynetdicom")
        os.makedirs(received, exist_ok=True)
        out, err, code = await peers.run_script(
            reactor, "pynetdicom_relational_scu.py",
            [peers.LOCALHOST, str(self.port), "--called", "QRSCP",
             "--storage", CT_IMAGE_STORAGE, "--storage", MR_IMAGE_STORAGE,
             "--output", received, *args], timeout=60)
        self.assertEqual(code, 0, (out + err).decode())
        return json.loads(out.decode().strip().splitlines()[-1])

    @inline
    async def test_negotiated(self) -> None:
        """With relational-queries and -retrieval negotiated: the AC answers
        them and combined date-time matching 1 (fuzzy matching and timezone
        adjustment 0); a SERIES query without Study
        Instance UID and a Patient Root IMAGE query by name find across
        studies; C-GET and C-MOVE of a list of instances of two studies,
        without study and series, send exactly those."""
        peers.require_pynetdicom()
        await self.start_archive()
        await self.store_all()
        received = os.path.join(self.work, "received")
        os.makedirs(received)
        storescp = peers.start_peer(self, reactor, peers.dcmtk("storescp"),
                                    ["-aet", "STORESCP", "-od", received,
                                     str(self.storescp_port)], "storescp")
        await peers.wait_for_port(reactor, self.storescp_port, storescp)
        wanted = [f"{ROOT}.1.1.1.2", f"{ROOT}.2.2.2.3"]
        moved = [f"{ROOT}.1.2.1.1", f"{ROOT}.2.1.2.2"]
        result = await self.relational("--modality", "MR", "--name", "Smith*",
                                       "--get", "\\".join(wanted),
                                       "--move", "\\".join(moved))
        self.assertEqual(result["extended"], {STUDY_FIND: "01010000", PATIENT_FIND: "01010000",
                                              STUDY_GET: "01", STUDY_MOVE: "01"})
        self.assertEqual(result["series"]["statuses"], [0xFF00, 0x0000])
        self.assertEqual(result["series"]["uids"],
                         list(self.expected("SERIES", lambda ds: ds.Modality == "MR")))
        smith = self.expected("IMAGE", lambda ds: str(ds.PatientName) == "Smith^John")
        self.assertEqual(result["images"]["statuses"], [0xFF00] * 12 + [0x0000])
        self.assertEqual(sorted(result["images"]["uids"]), sorted(smith))
        self.assertEqual(result["get"]["statuses"][-1], 0x0000)
        self.assertEqual((result["get"]["completed"], result["get"]["failed"]), (2, 0))
        self.assertEqual(result["received"], sorted(wanted))
        self.assertReceived(glob.glob(os.path.join(self.work, "pynetdicom", "*")), wanted)
        self.assertEqual(result["move"]["statuses"][-1], 0x0000)
        self.assertEqual(result["move"]["completed"], 2)
        self.assertReceived(glob.glob(os.path.join(received, "*")), moved)

    @inline
    async def test_not_negotiated(self) -> None:
        """Without the extended negotiation the same requests fail with 0xA900
        and the AC carries no answer."""
        peers.require_pynetdicom()
        await self.start_archive()
        await self.store_all()
        result = await self.relational("--no-extended", "--get", f"{ROOT}.1.1.1.2",
                                       "--move", f"{ROOT}.1.1.1.2")
        self.assertEqual(result["extended"], {})
        for operation in ("series", "images", "get", "move"):
            self.assertEqual(result[operation]["statuses"], [0xA900], operation)
        self.assertEqual(result["received"], [])

    @inline
    async def test_our_movescu(self) -> None:
        """dicomtwist's own movescu with --relational-retrieval moves a list of
        instances of two studies, without their study and series, into its
        inline Storage SCP; without the option the archive answers 0xA900."""
        await self.start_archive()
        await self.store_all()
        received = os.path.join(self.work, "movescu")
        os.makedirs(received)
        wanted = [f"{ROOT}.1.1.2.1", f"{ROOT}.2.2.1.3"]
        args = ["-m", "dicomtwist", "movescu", peers.LOCALHOST, str(self.port), "-S",
                "-aec", "QRSCP", "--store", "--store-port", str(self.storescp_port),
                "-od", received, "-k", "QueryRetrieveLevel=IMAGE",
                "-k", "SOPInstanceUID=" + "\\".join(wanted)]

        def movescu(*more: str):
            d = getProcessOutputAndValue(sys.executable, [*args, *more], env=self.env(),
                                         reactor=reactor)
            return d.addTimeout(60, reactor)

        out, err, code = await movescu()
        self.assertNotEqual(code, 0, (out + err).decode())
        self.assertIn("0xA900", (out + err).decode())
        self.assertEqual(os.listdir(received), [])
        out, err, code = await movescu("--relational-retrieval")
        self.assertEqual(code, 0, (out + err).decode())
        self.assertReceived(glob.glob(os.path.join(received, "*")), wanted)
