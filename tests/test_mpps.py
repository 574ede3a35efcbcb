"""Tests for dicomtwist.services.mpps: the Modality Performed Procedure
Step SCP (PS3.4 F.7): the attribute rules of N-CREATE and N-SET (table
driven), the state machine IN PROGRESS -> COMPLETED / DISCONTINUED, and the
service over in-memory associations with the archive's own factory."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import events
from dicomtwist import config as configuration
from dicomtwist import tap
from dicomtwist.association import associate
from dicomtwist.services.mpps import (
    DIRECTORY,
    MPPS,
    MppsError,
    MppsStore,
    check_create,
    check_set,
    merge,
)
from dicomtwist.status import Status
from dicomtwist.storage.index import Index
from dicomtwist.web.site import build_site
from tests.helpers import connect_in_memory
from tests.test_dicomweb import WebTestCase, body_producer
from tests.test_store import InlinePool, InlineReactor

API = "http://archive.example/api"

STEP = "1.2.3.500"


def _tag(group: int, element: int) -> int:
    return (group << 16) | element


def series_item(**values) -> Dataset:
    """A Performed Series Sequence item."""
    item = Dataset()
    item.SeriesInstanceUID = values.pop("SeriesInstanceUID", "1.2.3.600")
    item.ProtocolName = values.pop("ProtocolName", "Head")
    item.PerformingPhysicianName = ""
    item.OperatorsName = ""
    item.SeriesDescription = ""
    item.RetrieveAETitle = ""
    image = Dataset()
    image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    image.ReferencedSOPInstanceUID = "1.2.3.600.1"
    item.ReferencedImageSequence = Sequence([image])
    for key, value in values.items():
        setattr(item, key, value)
    return item


def create_list(**values) -> Dataset:
    """An N-CREATE Attribute List with the type 1 and 2 attributes of Table F.7.2-1."""
    ds = Dataset()
    scheduled = Dataset()
    scheduled.StudyInstanceUID = "1.2.3.400"
    scheduled.AccessionNumber = "ACC1"
    scheduled.RequestedProcedureID = "RP1"
    scheduled.ScheduledProcedureStepID = "SPS1"
    scheduled.ReferencedStudySequence = Sequence()
    ds.ScheduledStepAttributesSequence = Sequence([scheduled])
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "MODALITY"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20240105"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def set_list(**values) -> Dataset:
    """An N-SET Modification List."""
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def final_list(status: str = "COMPLETED", **values) -> Dataset:
    """An N-SET Modification List ending the step."""
    defaults = dict(PerformedProcedureStepStatus=status,
                    PerformedProcedureStepEndDate="20240105",
                    PerformedProcedureStepEndTime="103000",
                    PerformedSeriesSequence=Sequence([series_item()]))
    defaults.update(values)
    return set_list(**defaults)


class CreateRuleTests(SynchronousTestCase):
    """N-CREATE attribute rules (F.7.2.1, Table F.7.2-1), one row a case."""

    def test_accepted(self) -> None:
        """A complete IN PROGRESS step is accepted without warning; type 2 may be left out."""
        self.assertIsNone(check_create(create_list()))
        self.assertIsNone(check_create(create_list(PatientName=None, StudyID=None,
                                                   PerformedSeriesSequence=None)))
        self.assertIsNone(check_create(create_list(PerformedProcedureStepStartTime="1015")))

    def test_refused(self) -> None:
        """Each broken Attribute List is refused with its status and attribute."""
        no_study = Dataset()
        no_study.AccessionNumber = "A"
        cases = [
            (dict(PerformedProcedureStepID=None), 0x0120, [_tag(0x0040, 0x0253)]),
            (dict(Modality=None, PerformedStationAETitle=None), 0x0120,
             [_tag(0x0040, 0x0241), _tag(0x0008, 0x0060)]),
            (dict(ScheduledStepAttributesSequence=None), 0x0120, [_tag(0x0040, 0x0270)]),
            (dict(PerformedProcedureStepStartDate=""), 0x0121, [_tag(0x0040, 0x0244)]),
            (dict(ScheduledStepAttributesSequence=Sequence()), 0x0121, [_tag(0x0040, 0x0270)]),
            (dict(ScheduledStepAttributesSequence=Sequence([no_study])), 0x0120,
             [_tag(0x0020, 0x000D)]),
            (dict(PerformedProcedureStepStatus="COMPLETED"), 0x0106, [_tag(0x0040, 0x0252)]),
            (dict(PerformedProcedureStepStatus="DONE"), 0x0106, [_tag(0x0040, 0x0252)]),
            (dict(PerformedProcedureStepStartDate="2024-01-05"), 0x0106,
             [_tag(0x0040, 0x0244)]),
            (dict(PerformedProcedureStepStartDate="20241305"), 0x0106, [_tag(0x0040, 0x0244)]),
            (dict(PerformedProcedureStepStartTime="251500"), 0x0106, [_tag(0x0040, 0x0245)]),
            (dict(Modality="ct"), 0x0106, [_tag(0x0008, 0x0060)]),
            (dict(PerformedSeriesSequence=Sequence([series_item(SeriesInstanceUID="1.x")])),
             0x0106, [_tag(0x0040, 0x0340)]),
            (dict(PerformedSeriesSequence=Sequence([series_item(ProtocolName="")])),
             0x0121, [_tag(0x0018, 0x1030)]),
        ]
        for values, status, tags in cases:
            with self.assertRaises(MppsError, msg=values) as caught:
                check_create(create_list(**values))
            self.assertEqual((caught.exception.status, list(caught.exception.tags)),
                             (status, tags), values)

    def test_end_before_start(self) -> None:
        """An end before the start is kept, with a 0x0116 warning naming it."""
        out = check_create(create_list(PerformedProcedureStepEndDate="20240104",
                                       PerformedProcedureStepEndTime="090000"))
        self.assertEqual(out.PerformedProcedureStepEndDate, "20240104")
        out = check_create(create_list(PerformedProcedureStepEndDate="20240105",
                                       PerformedProcedureStepEndTime="1000"))
        self.assertEqual(out.PerformedProcedureStepEndTime, "1000")
        self.assertIsNone(check_create(create_list(PerformedProcedureStepEndDate="20240105",
                                                   PerformedProcedureStepEndTime="1016")))


class SetRuleTests(SynchronousTestCase):
    """N-SET attribute rules and the state machine (F.7.2.2), one row a case."""

    def test_transitions(self) -> None:
        """From IN PROGRESS: stay, COMPLETED or DISCONTINUED; from a final state: 0x0110."""
        current = create_list()
        cases = [
            ("IN PROGRESS", set_list(PerformedProcedureStepDescription="Head CT"), None),
            ("IN PROGRESS", final_list("COMPLETED"), None),
            ("IN PROGRESS", final_list("DISCONTINUED"), None),
            ("COMPLETED", set_list(PerformedProcedureStepDescription="late"), 0x0110),
            ("DISCONTINUED", final_list("COMPLETED"), 0x0110),
            ("COMPLETED", final_list("IN PROGRESS"), 0x0110),
        ]
        for state, modifications, status in cases:
            current.PerformedProcedureStepStatus = state
            if status is None:
                self.assertIsNone(check_set(current, modifications), (state, modifications))
                continue
            with self.assertRaises(MppsError) as caught:
                check_set(current, modifications)
            self.assertEqual(caught.exception.status, status)
            self.assertEqual(caught.exception.error_id, 0xA710)

    def test_refused(self) -> None:
        """Not allowed, invalid or missing for the final state: refused (table)."""
        cases = [
            (set_list(PatientName="Other^Name"), 0x0106, [_tag(0x0010, 0x0010)]),
            (set_list(Modality="MR", PerformedProcedureStepStartDate="20240106"), 0x0106,
             [_tag(0x0008, 0x0060), _tag(0x0040, 0x0244)]),
            (set_list(ScheduledStepAttributesSequence=Sequence()), 0x0106,
             [_tag(0x0040, 0x0270)]),
            (set_list(PerformedProcedureStepStatus="SCHEDULED"), 0x0106,
             [_tag(0x0040, 0x0252)]),
            (set_list(PerformedProcedureStepStatus=""), 0x0121, [_tag(0x0040, 0x0252)]),
            (set_list(PerformedProcedureStepEndTime="2500"), 0x0106, [_tag(0x0040, 0x0251)]),
            (final_list(PerformedProcedureStepEndDate=""), 0x0121, [_tag(0x0040, 0x0250)]),
            (final_list(PerformedSeriesSequence=Sequence()), 0x0121, [_tag(0x0040, 0x0340)]),
            (set_list(PerformedProcedureStepStatus="COMPLETED"), 0x0121,
             [_tag(0x0040, 0x0250), _tag(0x0040, 0x0251), _tag(0x0040, 0x0340)]),
        ]
        for modifications, status, tags in cases:
            with self.assertRaises(MppsError, msg=modifications) as caught:
                check_set(create_list(), modifications)
            self.assertEqual((caught.exception.status, list(caught.exception.tags)),
                             (status, tags), modifications)

    def test_merge(self) -> None:
        """An N-SET replaces the attributes it carries, sequences whole; text meets in UTF-8."""
        current = create_list(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Anna")
        current.PerformedSeriesSequence = Sequence([series_item(), series_item()])
        modifications = final_list(PerformedProcedureStepDescription="Ünterschied")
        modifications.SpecificCharacterSet = "ISO_IR 192"
        merged = merge(current, modifications)
        self.assertEqual(merged.PerformedProcedureStepStatus, "COMPLETED")
        self.assertEqual(len(merged.PerformedSeriesSequence), 1)
        self.assertEqual(merged.SpecificCharacterSet, "ISO_IR 192")
        self.assertEqual(str(merged.PatientName), "Müller^Anna")
        self.assertEqual(merged.PerformedProcedureStepDescription, "Ünterschied")
        self.assertEqual(current.PerformedProcedureStepStatus, "IN PROGRESS", "not changed")


class MppsServiceTests(SynchronousTestCase):
    """N-CREATE and N-SET through the archive's factory, kept under .mpps/."""

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.instances = os.path.join(base, "instances")
        os.makedirs(self.instances)
        self.index = Index(os.path.join(base, "index.sqlite"))
        self.addCleanup(self.index.close)
        self.reactor = InlineReactor()
        settings = configuration.Config(instance_location=self.instances,
                                        database_location=os.path.join(base, "index.sqlite"))
        self.factory = tap.build_factory(settings, self.reactor, InlinePool(), self.index)
        d = associate(self.reactor, "127.0.0.1", 11112,
                      contexts=[(MPPS, [ExplicitVRLittleEndian])],
                      called_ae_title="QRSCP", calling_ae_title="MODALITY")
        self.client, _, self.pump = connect_in_memory(self.reactor, self.factory)
        self.successResultOf(d)
        self.store = MppsStore(os.path.join(self.instances, DIRECTORY))

    def tearDown(self) -> None:
        d = self.client.release()
        self.pump.flush()
        self.successResultOf(d)

    def call(self, d):
        """Pump, then the ``(response, data set)`` of a request."""
        self.pump.flush()
        return self.successResultOf(d)

    def test_create_then_complete(self) -> None:
        """N-CREATE keeps the step IN PROGRESS; N-SET completes it; another N-SET: 0x0110."""
        rsp, data = self.call(self.client.n_create(MPPS, STEP, create_list()))
        self.assertEqual((rsp.status, rsp.affected_sop_class_uid, rsp.affected_sop_instance_uid),
                         (Status.SUCCESS, MPPS, STEP))
        stored = dcmread(os.path.join(self.instances, DIRECTORY, STEP + ".dcm"))
        self.assertEqual((stored.SOPClassUID, stored.SOPInstanceUID,
                          stored.PerformedProcedureStepStatus, stored.file_meta.TransferSyntaxUID),
                         (MPPS, STEP, "IN PROGRESS", ExplicitVRLittleEndian))
        rsp, _ = self.call(self.client.n_set(MPPS, STEP, final_list()))
        self.assertEqual((rsp.status, rsp.affected_sop_class_uid, rsp.affected_sop_instance_uid),
                         (Status.SUCCESS, MPPS, STEP))
        step = self.store.get(STEP)
        self.assertEqual((step.PerformedProcedureStepStatus, step.PerformedProcedureStepEndTime,
                          step.PatientID), ("COMPLETED", "103000", "PID1"))
        rsp, _ = self.call(self.client.n_set(MPPS, STEP, set_list(
            PerformedProcedureStepDescription="late")))
        self.assertEqual((rsp.status, rsp.error_id), (Status.PROCESSING_FAILURE, 0xA710))
        self.assertEqual(rsp.error_comment,
                         "Performed Procedure Step Object may no longer be updated")
        self.assertEqual(self.store.get(STEP).PerformedProcedureStepDescription, "")

    def test_steps_published(self) -> None:
        """A kept N-CREATE and N-SET are told to the bus (the audit trail's
        Procedure Record): action, status, patient, studies and accession
        numbers; a refused one is not."""
        seen: list = []
        self.addCleanup(events.bus.subscribe(seen.append))
        self.call(self.client.n_create(MPPS, STEP, create_list()))
        self.call(self.client.n_set(MPPS, STEP, final_list()))
        self.call(self.client.n_create(MPPS, STEP, create_list()))  # 0x0111
        steps = [e for e in seen if isinstance(e, events.ProcedureStepRecorded)]
        self.assertEqual([(e.action, e.status, e.sop_instance_uid, e.calling_ae, e.patient_id,
                           e.patient_name, e.study_instance_uids, e.accession_numbers)
                          for e in steps],
                         [(action, status, STEP, "MODALITY", "PID1", "Doe^Jane",
                           ("1.2.3.400",), ("ACC1",))
                          for action, status in (("C", "IN PROGRESS"), ("U", "COMPLETED"))])

    def test_duplicate(self) -> None:
        """A second N-CREATE of the same step: 0x0111, the first kept."""
        self.call(self.client.n_create(MPPS, STEP, create_list()))
        rsp, _ = self.call(self.client.n_create(MPPS, STEP, create_list(PatientID="OTHER")))
        self.assertEqual(rsp.status, Status.DUPLICATE_SOP_INSTANCE)
        self.assertEqual(self.store.get(STEP).PatientID, "PID1")

    def test_uid_given_by_scp(self) -> None:
        """An N-CREATE without a SOP Instance UID gets one, returned in the response."""
        rsp, _ = self.call(self.client.n_create(MPPS, None, create_list()))
        self.assertEqual(rsp.status, Status.SUCCESS)
        self.assertEqual([s.SOPInstanceUID for s in self.store.all()],
                         [rsp.affected_sop_instance_uid])

    def test_refusals(self) -> None:
        """Refusals carry the status, the Attribute Identifier List and keep nothing."""
        rsp, _ = self.call(self.client.n_create(MPPS, STEP, create_list(Modality=None)))
        self.assertEqual((rsp.status, rsp.attribute_identifier_list),
                         (Status.MISSING_ATTRIBUTE, (_tag(0x0008, 0x0060),)))
        rsp, _ = self.call(self.client.n_set(MPPS, STEP, final_list()))
        self.assertEqual(rsp.status, Status.NO_SUCH_SOP_INSTANCE)
        rsp, _ = self.call(self.client.n_create(MPPS, "1.2.x", create_list()))
        self.assertEqual(rsp.status, Status.INVALID_OBJECT_INSTANCE)
        self.assertEqual(self.store.all(), [])
        self.call(self.client.n_create(MPPS, STEP, create_list()))
        rsp, _ = self.call(self.client.n_set(MPPS, STEP, set_list(PatientID="X")))
        self.assertEqual((rsp.status, rsp.attribute_identifier_list),
                         (Status.INVALID_ATTRIBUTE_VALUE, (_tag(0x0010, 0x0020),)))
        self.assertEqual(self.store.get(STEP).PatientID, "PID1")

    def test_out_of_range_warning(self) -> None:
        """An end before the start: kept, answered 0x0116 with the attributes concerned."""
        self.call(self.client.n_create(MPPS, STEP, create_list()))
        rsp, data = self.call(self.client.n_set(MPPS, STEP, final_list(
            PerformedProcedureStepEndDate="20240101")))
        self.assertEqual(rsp.status, Status.ATTRIBUTE_VALUE_OUT_OF_RANGE)
        self.assertEqual(data.PerformedProcedureStepEndDate, "20240101")
        self.assertEqual(self.store.get(STEP).PerformedProcedureStepStatus, "COMPLETED")

    def test_other_operations(self) -> None:
        """N-GET and N-DELETE are not MPPS operations: 0x0211."""
        self.call(self.client.n_create(MPPS, STEP, create_list()))
        rsp, _ = self.call(self.client.n_get(MPPS, STEP))
        self.assertEqual(rsp.status, Status.UNRECOGNIZED_OPERATION)
        rsp, _ = self.call(self.client.n_delete(MPPS, STEP))
        self.assertEqual(rsp.status, Status.UNRECOGNIZED_OPERATION)


class MppsHttpTests(WebTestCase):
    """``/api/mpps``: the kept steps as DICOM JSON over the archive's Site."""

    def setUp(self) -> None:
        super().setUp()
        self.steps = MppsStore(os.path.join(self.directory, DIRECTORY))
        for uid, start, status in (("1.2.3.501", "080000", "COMPLETED"),
                                   ("1.2.3.502", "093000", "IN PROGRESS")):
            ds = create_list(PerformedProcedureStepStartTime=start,
                             PerformedProcedureStepStatus=status)
            ds.SOPClassUID, ds.SOPInstanceUID = MPPS, uid
            self.steps.create(ds)

    def test_list(self) -> None:
        """The list: every step, newest start first, with the summary attributes."""
        response = self.request("GET", API + "/mpps")
        self.assertEqual((response.code, response.header("content-type")),
                         (200, "application/dicom+json"))
        steps = response.json()
        self.assertEqual([s["00080018"]["Value"] for s in steps],
                         [["1.2.3.502"], ["1.2.3.501"]])
        self.assertEqual([s["00400252"]["Value"] for s in steps],
                         [["IN PROGRESS"], ["COMPLETED"]])
        self.assertEqual(steps[0]["00100010"], {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]})
        self.assertNotIn("00400270", steps[0], "the list leaves the sequences out")

    def test_one(self) -> None:
        """One step by its UID: all its attributes; an unknown or invalid UID is 404."""
        response = self.request("GET", API + "/mpps/1.2.3.501")
        self.assertEqual(response.code, 200)
        step = Dataset.from_json(response.json())
        self.assertEqual(step.ScheduledStepAttributesSequence[0].StudyInstanceUID, "1.2.3.400")
        self.assertEqual((step.SOPClassUID, step.PerformedProcedureStepStatus),
                         (MPPS, "COMPLETED"))
        for path in ("/mpps/1.2.3.404", "/mpps/..", "/mpps/1.2/extra"):
            response = self.request("GET", API + path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(response.json()["status"], 404)

    def test_read_only(self) -> None:
        """Only GET (and HEAD) are served: anything else is 405 naming GET;
        HEAD answers the headers alone."""
        for method in ("POST", "PUT", "DELETE"):
            response = self.request(method, API + "/mpps/1.2.3.501")
            self.assertEqual((response.code, response.header("allow")), (405, "GET"), method)
        response = self.request("HEAD", API + "/mpps/1.2.3.501")
        self.assertEqual((response.code, response.body), (200, b""))
        self.assertGreater(int(response.header("content-length")), 0)

    def test_read_failure(self) -> None:
        """A step directory that cannot be read is a logged 500, not a hang."""
        def broken(*args):
            raise OSError(5, "Input/output error")

        mpps = self.site.resource.children[b"api"].children[b"mpps"]
        self.patch(mpps.store, "all", broken)
        response = self.request("GET", API + "/mpps")
        self.assertEqual(response.code, 500)
        self.assertEqual(response.json()["error"], "cannot read the performed procedure steps")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_empty(self) -> None:
        """Without any step the list is empty."""
        for name in os.listdir(self.steps.directory):
            os.unlink(os.path.join(self.steps.directory, name))
        self.assertEqual(self.request("GET", API + "/mpps").json(), [])

    def test_beside_a_leaf(self) -> None:
        """Mounted below a leaf resource at ``/api`` (the web page's API), both answer."""
        from twisted.web.resource import Resource

        from dicomtwist.web.site import _place

        class Leaf(Resource):
            isLeaf = True

            def render_GET(self, request):
                return b"/".join(request.postpath)

        root = Resource()
        _place(root, "/api", Leaf())
        mpps = self.site.resource.children[b"api"].children[b"mpps"]
        _place(root, "/api/mpps", mpps)
        self.site.resource = root
        self.agent = RequestTraversalAgent(root)
        self.agent._serverFactory = self.site
        self.client = HTTPClient(self.agent, data_to_body_producer=body_producer)
        self.assertEqual(self.request("GET", API + "/status/x").body, b"status/x")
        self.assertEqual(len(self.request("GET", API + "/mpps").json()), 2)

    def test_permissions(self) -> None:
        """With authentication on, reading needs credentials with ``query``."""
        self.site = build_site(replace(self.config, http_tokens=self.tokens()), self.reactor,
                               self.pool, self.pool, self.index, self.store)
        self.agent = RequestTraversalAgent(self.site.resource)
        self.agent._serverFactory = self.site
        self.client = HTTPClient(self.agent, data_to_body_producer=body_producer)
        self.assertEqual(self.request("GET", API + "/mpps").code, 401)
        self.assertEqual(self.request("GET", API + "/mpps", {
            "Authorization": "Bearer stower"}).code, 403)
        self.assertEqual(self.request("GET", API + "/mpps/1.2.3.501", {
            "Authorization": "Bearer viewer"}).code, 200)

    def tokens(self) -> str:
        """A tokens file: ``viewer`` may query, ``stower`` only store."""
        path = os.path.join(self.base, "tokens")
        with open(path, "w") as fp:
            for token, permissions in (("viewer", "query"), ("stower", "store")):
                fp.write(f"{token}:{hashlib.sha256(token.encode()).hexdigest()}:{permissions}\n")
        return path
