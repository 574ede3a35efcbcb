"""Tests for dicomtwist.services.qr: C-FIND, C-MOVE and C-GET of the archive.

The archive's own factory (``tap.build_factory``) serves in-memory
associations on a real index with instances stored through C-STORE.  Work
for the thread pool runs inline (or, where a test needs to act between two
steps, when the test says so).
"""

from __future__ import annotations

import os

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import config as configuration
from dicomtwist import tap
from dicomtwist.association import AcceptorFactory, associate, file_dataset
from dicomtwist.status import Status
from dicomtwist.storage.files import instance_path
from dicomtwist.storage.index import Index
from tests.helpers import CT_IMAGE_STORAGE, connect_in_memory, ct_dataset, policy
from tests.test_store import InlinePool, InlineReactor

PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PS_ONLY_FIND = "1.2.840.10008.5.1.4.1.2.3.1"
PS_ONLY_GET = "1.2.840.10008.5.1.4.1.2.3.3"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
UPS_PULL_FIND = "1.2.840.10008.5.1.4.34.6.3"
EXPLICIT = [ExplicitVRLittleEndian]
QUERY_CONTEXTS = [(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for uid in (
    PATIENT_FIND, PATIENT_MOVE, PATIENT_GET, STUDY_FIND, STUDY_MOVE, STUDY_GET,
    PS_ONLY_FIND, PS_ONLY_GET, WORKLIST_FIND, UPS_PULL_FIND)]

#: The archive's content: patient -> study -> series -> instance count.
CONTENT = {
    ("PA", "Alpha^Anna", "19700101"): {
        ("20240105", "ACC1", "Head"): {(1, "CT"): 2, (2, "CT"): 1},
        ("20240210", "ACC2", "Chest"): {(1, "CT"): 1},
    },
    ("PB", "Beta^Bert", "19800202"): {
        ("20231231", "ACC3", "Knee"): {(1, "CT"): 2},
    },
}


def build_content() -> list[Dataset]:
    """The data sets of :data:`CONTENT`, in storing order."""
    datasets = []
    for n_patient, ((pid, name, birth), studies) in enumerate(CONTENT.items()):
        for n_study, ((date, accession, description), series) in enumerate(studies.items()):
            study_uid = f"1.2.3.{n_patient + 1}.{n_study + 1}"
            for (number, modality), count in series.items():
                series_uid = f"{study_uid}.{number}"
                for instance in range(1, count + 1):
                    datasets.append(ct_dataset(
                        64, PatientID=pid, PatientName=name, PatientBirthDate=birth,
                        StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
                        SOPInstanceUID=f"{series_uid}.{instance}", StudyDate=date,
                        AccessionNumber=accession, StudyDescription=description,
                        SeriesNumber=number, InstanceNumber=instance))
    return datasets


def query(level: str, **keys) -> Dataset:
    """An identifier at ``level`` with the given keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


class QueryRetrieveTestCase(SynchronousTestCase):
    """Base: the archive's factory on a real index holding :data:`CONTENT`."""

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.instances = os.path.join(base, "instances")
        os.makedirs(self.instances)
        self.index = Index(os.path.join(base, "index.sqlite"))
        self.addCleanup(self.index.close)
        # A Pending response after every sub-operation, so the counts can
        # be checked one by one (PendingIntervalTests checks the default).
        self.settings = configuration.Config(
            instance_location=self.instances,
            database_location=os.path.join(base, "index.sqlite"),
            destinations={"DEST": configuration.Destination("DEST", "127.0.0.1", 11113)},
            pending_interval=0)
        self.reactor = InlineReactor()
        self.pool = InlinePool()
        self.factory = tap.build_factory(self.settings, self.reactor, self.pool, self.index)
        self.datasets = build_content()
        client, pump = self.connect([(CT_IMAGE_STORAGE, EXPLICIT)])
        stores = [client.store(ds) for ds in self.datasets]
        pump.flush()
        self.assertEqual([self.successResultOf(d).status for d in stores],
                         [Status.SUCCESS] * len(self.datasets))
        self.release(client, pump)

    def connect(self, contexts=QUERY_CONTEXTS, **kwargs):
        """Associate in memory with the archive; returns ``(client, pump)``."""
        d = associate(self.reactor, "127.0.0.1", 11112, contexts=contexts,
                      called_ae_title="QRSCP", calling_ae_title="TESTSCU", **kwargs)
        client, _, pump = connect_in_memory(self.reactor, self.factory)
        self.assertIs(self.successResultOf(d), client)
        return client, pump

    def release(self, client, pump) -> None:
        """Release an association."""
        d = client.release()
        pump.flush()
        self.successResultOf(d)

    def stored_data_set(self, sop_instance_uid: str) -> bytes:
        """The data set part (after the File Meta Information) of a stored file."""
        source = file_dataset(instance_path(self.instances, sop_instance_uid))
        with open(source.path, "rb") as fp:
            fp.seek(source.offset)
            return fp.read()

    def find(self, identifier: Dataset, sop_class: str = STUDY_FIND) -> list:
        """C-FIND on a new association; returns ``[(rsp, identifier), ...]``."""
        client, pump = self.connect()
        d = client.find(identifier, sop_class)
        pump.flush()
        responses = self.successResultOf(d)
        self.release(client, pump)
        return responses


class FindTests(QueryRetrieveTestCase):
    """C-FIND: one response per entity, exactly the requested keys."""

    def matches(self, identifier: Dataset, sop_class: str = STUDY_FIND) -> list[Dataset]:
        """The pending identifiers of a C-FIND that ends with Success."""
        responses = self.find(identifier, sop_class)
        statuses = [rsp.status for rsp, _ in responses]
        self.assertEqual(statuses, [Status.PENDING] * (len(responses) - 1) + [Status.SUCCESS])
        self.assertIsNone(responses[-1][1])
        return [ds for _, ds in responses[:-1]]

    def assertKeys(self, matches: list[Dataset], identifier: Dataset) -> None:
        """Every match holds exactly the identifier's keys."""
        expected = sorted(e.keyword for e in identifier)
        for match in matches:
            self.assertEqual(sorted(e.keyword for e in match), expected)

    def test_patient_root_patient_level(self) -> None:
        """Patient Root, PATIENT level: one response per patient with the requested keys."""
        identifier = query("PATIENT", PatientID="", PatientName="", PatientBirthDate="",
                           NumberOfPatientRelatedStudies=None,
                           NumberOfPatientRelatedInstances=None)
        matches = self.matches(identifier, PATIENT_FIND)
        self.assertKeys(matches, identifier)
        self.assertEqual(sorted((m.PatientID, str(m.PatientName), m.PatientBirthDate,
                                 m.NumberOfPatientRelatedStudies,
                                 m.NumberOfPatientRelatedInstances) for m in matches),
                         [("PA", "Alpha^Anna", "19700101", 2, 4),
                          ("PB", "Beta^Bert", "19800202", 1, 2)])

    def test_patient_root_study_level(self) -> None:
        """Patient Root, STUDY level under one patient: one response per study."""
        identifier = query("STUDY", PatientID="PA", StudyInstanceUID="", StudyDate="",
                           AccessionNumber="", NumberOfStudyRelatedInstances=None)
        matches = self.matches(identifier, PATIENT_FIND)
        self.assertKeys(matches, identifier)
        self.assertEqual(sorted((m.StudyInstanceUID, m.StudyDate, m.AccessionNumber,
                                 m.NumberOfStudyRelatedInstances) for m in matches),
                         [("1.2.3.1.1", "20240105", "ACC1", 3),
                          ("1.2.3.1.2", "20240210", "ACC2", 1)])

    def test_patient_root_series_level(self) -> None:
        """Patient Root, SERIES level: one response per series of the study."""
        identifier = query("SERIES", PatientID="PA", StudyInstanceUID="1.2.3.1.1",
                           SeriesInstanceUID="", Modality="", SeriesNumber=None,
                           NumberOfSeriesRelatedInstances=None)
        matches = self.matches(identifier, PATIENT_FIND)
        self.assertKeys(matches, identifier)
        self.assertEqual(sorted((m.SeriesInstanceUID, m.Modality, m.SeriesNumber,
                                 m.NumberOfSeriesRelatedInstances) for m in matches),
                         [("1.2.3.1.1.1", "CT", 1, 2), ("1.2.3.1.1.2", "CT", 2, 1)])

    def test_patient_root_image_level(self) -> None:
        """Patient Root, IMAGE level: one response per instance of the series."""
        identifier = query("IMAGE", PatientID="PA", StudyInstanceUID="1.2.3.1.1",
                           SeriesInstanceUID="1.2.3.1.1.1", SOPInstanceUID="",
                           SOPClassUID="", InstanceNumber=None)
        matches = self.matches(identifier, PATIENT_FIND)
        self.assertKeys(matches, identifier)
        self.assertEqual(sorted((m.SOPInstanceUID, m.SOPClassUID, m.InstanceNumber)
                                for m in matches),
                         [("1.2.3.1.1.1.1", CT_IMAGE_STORAGE, 1),
                          ("1.2.3.1.1.1.2", CT_IMAGE_STORAGE, 2)])

    def test_study_root_study_level(self) -> None:
        """Study Root, STUDY level: one response per study (never per instance)."""
        identifier = query("STUDY", StudyInstanceUID="", PatientID="", PatientName="",
                           ModalitiesInStudy="", NumberOfStudyRelatedSeries=None)
        matches = self.matches(identifier, STUDY_FIND)
        self.assertKeys(matches, identifier)
        self.assertEqual(sorted((m.StudyInstanceUID, m.PatientID, str(m.PatientName),
                                 m.ModalitiesInStudy, m.NumberOfStudyRelatedSeries)
                                for m in matches),
                         [("1.2.3.1.1", "PA", "Alpha^Anna", "CT", 2),
                          ("1.2.3.1.2", "PA", "Alpha^Anna", "CT", 1),
                          ("1.2.3.2.1", "PB", "Beta^Bert", "CT", 1)])

    def test_every_transfer_syntax(self) -> None:
        """The same identifiers in each transfer syntax of the query context:
        written from the rows in the Little Endian ones, by pydicom in the
        others."""
        identifier = query("STUDY", StudyInstanceUID="", PatientID="", PatientName="",
                           StudyDate="", NumberOfStudyRelatedInstances=None,
                           ReferencedStudySequence=[])
        results = {}
        for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                       DeflatedExplicitVRLittleEndian):
            client, pump = self.connect([(STUDY_FIND, [syntax])])
            d = client.find(identifier, STUDY_FIND)
            pump.flush()
            responses = self.successResultOf(d)
            self.release(client, pump)
            self.assertEqual([rsp.status for rsp, _ in responses],
                             [Status.PENDING] * 3 + [Status.SUCCESS], syntax.name)
            results[syntax] = [ds for _, ds in responses[:-1]]
            self.assertKeys(results[syntax], identifier)
        for syntax, matches in results.items():
            self.assertEqual(matches, results[ExplicitVRLittleEndian], syntax.name)

    def test_study_root_series_level(self) -> None:
        """Study Root, SERIES level: one response per series."""
        identifier = query("SERIES", StudyInstanceUID="1.2.3.2.1", SeriesInstanceUID="",
                           NumberOfSeriesRelatedInstances=None)
        matches = self.matches(identifier, STUDY_FIND)
        self.assertKeys(matches, identifier)
        self.assertEqual([(m.SeriesInstanceUID, m.NumberOfSeriesRelatedInstances)
                          for m in matches], [("1.2.3.2.1.1", 2)])

    def test_study_root_image_level(self) -> None:
        """Study Root, IMAGE level: one response per instance."""
        identifier = query("IMAGE", StudyInstanceUID="1.2.3.2.1",
                           SeriesInstanceUID="1.2.3.2.1.1", SOPInstanceUID="")
        matches = self.matches(identifier, STUDY_FIND)
        self.assertKeys(matches, identifier)
        self.assertEqual(sorted(m.SOPInstanceUID for m in matches),
                         ["1.2.3.2.1.1.1", "1.2.3.2.1.1.2"])

    def test_patient_study_only_levels(self) -> None:
        """Patient/Study Only: PATIENT and STUDY levels answer one response per entity."""
        patients = self.matches(query("PATIENT", PatientID=""), PS_ONLY_FIND)
        self.assertEqual(sorted(m.PatientID for m in patients), ["PA", "PB"])
        studies = self.matches(query("STUDY", PatientID="PB", StudyInstanceUID=""),
                               PS_ONLY_FIND)
        self.assertEqual([m.StudyInstanceUID for m in studies], ["1.2.3.2.1"])

    def test_patient_study_only_series_level_refused(self) -> None:
        """Patient/Study Only has no SERIES level: 0xA900."""
        responses = self.find(query("SERIES", PatientID="PA", StudyInstanceUID="1.2.3.1.1",
                                    SeriesInstanceUID=""), PS_ONLY_FIND)
        self.assertEqual([rsp.status for rsp, _ in responses], [0xA900])

    def test_wildcard_and_range(self) -> None:
        """Wildcard names and date ranges select the matching studies only."""
        matches = self.matches(query("STUDY", StudyInstanceUID="", PatientName="alpha*",
                                     StudyDate="20240201-"))
        self.assertEqual([m.StudyInstanceUID for m in matches], ["1.2.3.1.2"])
        matches = self.matches(query("STUDY", StudyInstanceUID="", StudyDate="-20240131"))
        self.assertEqual(sorted(m.StudyInstanceUID for m in matches),
                         ["1.2.3.1.1", "1.2.3.2.1"])

    def test_uid_list(self) -> None:
        """A list of Study Instance UIDs matches each listed study."""
        matches = self.matches(query("STUDY", StudyInstanceUID="1.2.3.1.1\\1.2.3.2.1"))
        self.assertEqual(sorted(m.StudyInstanceUID for m in matches),
                         ["1.2.3.1.1", "1.2.3.2.1"])

    def test_no_match(self) -> None:
        """A query matching nothing gets only the final Success."""
        self.assertEqual(self.matches(query("STUDY", StudyInstanceUID="", PatientID="NOBODY")),
                         [])

    def test_missing_level(self) -> None:
        """An identifier without Query/Retrieve Level gets 0xA900."""
        identifier = Dataset()
        identifier.PatientID = "PA"
        responses = self.find(identifier)
        self.assertEqual([rsp.status for rsp, _ in responses], [0xA900])

    def test_level_not_in_model(self) -> None:
        """PATIENT level in Study Root gets 0xA900."""
        responses = self.find(query("PATIENT", PatientID=""), STUDY_FIND)
        self.assertEqual([rsp.status for rsp, _ in responses], [0xA900])

    def test_missing_higher_unique_key(self) -> None:
        """A SERIES query without the Study Instance UID gets 0xA900."""
        responses = self.find(query("SERIES", SeriesInstanceUID=""), STUDY_FIND)
        self.assertEqual([rsp.status for rsp, _ in responses], [0xA900])

    def test_key_below_level_matched(self) -> None:
        """A matching value on a key below the query level gets 0xA900."""
        responses = self.find(query("STUDY", StudyInstanceUID="", Modality="CT"), STUDY_FIND)
        self.assertEqual([rsp.status for rsp, _ in responses], [0xA900])

    def test_worklist_and_ups_pull_empty(self) -> None:
        """Modality Worklist and UPS Pull C-FIND answer zero matches and Success."""
        for sop_class in (WORKLIST_FIND, UPS_PULL_FIND):
            identifier = Dataset()
            identifier.PatientName = "*"
            identifier.PatientID = ""
            responses = self.find(identifier, sop_class)
            self.assertEqual([(rsp.status, ds) for rsp, ds in responses],
                             [(Status.SUCCESS, None)], sop_class)


class ManualPool:
    """A thread pool stand-in that runs work only when the test says so."""

    def __init__(self) -> None:
        self.queue: list = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        """Queue the call."""
        self.queue.append((onResult, f, args, kwargs))

    def run_all(self) -> int:
        """Run queued work (and what it queues) until none is left; returns how many ran."""
        ran = 0
        while self.queue:
            onResult, f, args, kwargs = self.queue.pop(0)
            InlinePool().callInThreadWithCallback(onResult, f, *args, **kwargs)
            ran += 1
        return ran


class CancelTests(QueryRetrieveTestCase):
    """C-CANCEL of a C-FIND."""

    def test_find_cancel(self) -> None:
        """A C-FIND cancelled before its matches are read ends with Cancel (0xFE00) only."""
        pool = ManualPool()
        self.factory = tap.build_factory(self.settings, self.reactor, pool, self.index)
        client, pump = self.connect()
        d = client.find(query("IMAGE", StudyInstanceUID="1.2.3.1.1",
                              SeriesInstanceUID="1.2.3.1.1.1", SOPInstanceUID=""), STUDY_FIND)
        pump.flush()
        self.assertNoResult(d)
        self.assertTrue(pool.queue, "the query should wait for the pool")
        client.cancel(d)
        pump.flush()
        pool.run_all()
        pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual([rsp.status for rsp, _ in responses], [Status.CANCEL])
        self.release(client, pump)


class GetTests(QueryRetrieveTestCase):
    """C-GET: sub-operations on the requestor's association."""

    def get(self, identifier: Dataset, scp_role: bool = True, sop_class: str = STUDY_GET):
        """C-GET with a CT storage context; returns ``(responses, received requests)``."""
        received = []

        def on_store(request):
            received.append(request)
            return Status.SUCCESS

        contexts = QUERY_CONTEXTS + [(CT_IMAGE_STORAGE, EXPLICIT)]
        client, pump = self.connect(
            contexts, scp_role_classes=[CT_IMAGE_STORAGE] if scp_role else [])
        d = client.get(identifier, sop_class, on_store=on_store)
        pump.flush()
        responses = self.successResultOf(d)
        self.release(client, pump)
        return responses, received

    def test_get_study(self) -> None:
        """C-GET of a study sends its instances byte-equal to the stored files, with counts."""
        responses, received = self.get(query("STUDY", StudyInstanceUID="1.2.3.1.1"))
        expected = ["1.2.3.1.1.1.1", "1.2.3.1.1.1.2", "1.2.3.1.1.2.1"]
        self.assertEqual(sorted(r.message.affected_sop_instance_uid for r in received), expected)
        for request in received:
            uid = request.message.affected_sop_instance_uid
            self.assertEqual(request.context.transfer_syntax, ExplicitVRLittleEndian)
            self.assertEqual(bytes(request.data), self.stored_data_set(uid))
        statuses = [rsp.status for rsp, _ in responses]
        self.assertEqual(statuses, [Status.PENDING] * 3 + [Status.SUCCESS])
        self.assertEqual([(rsp.number_of_remaining_sub_operations,
                           rsp.number_of_completed_sub_operations) for rsp, _ in responses[:3]],
                         [(2, 1), (1, 2), (0, 3)])
        final = responses[-1][0]
        self.assertEqual((final.number_of_completed_sub_operations,
                          final.number_of_failed_sub_operations,
                          final.number_of_warning_sub_operations), (3, 0, 0))
        self.assertIsNone(responses[-1][1])

    def test_get_patient_root_series(self) -> None:
        """A Patient Root C-GET at SERIES level sends that series only."""
        responses, received = self.get(
            query("SERIES", PatientID="PB", StudyInstanceUID="1.2.3.2.1",
                  SeriesInstanceUID="1.2.3.2.1.1"), sop_class=PATIENT_GET)
        self.assertEqual(sorted(r.message.affected_sop_instance_uid for r in received),
                         ["1.2.3.2.1.1.1", "1.2.3.2.1.1.2"])
        self.assertEqual(responses[-1][0].status, Status.SUCCESS)

    def test_get_patient_study_only(self) -> None:
        """A Patient/Study Only C-GET at PATIENT level sends all of the patient's instances."""
        responses, received = self.get(query("PATIENT", PatientID="PA"),
                                       sop_class=PS_ONLY_GET)
        self.assertEqual(len(received), 4)
        self.assertEqual(responses[-1][0].status, Status.SUCCESS)

    def test_get_without_scp_role(self) -> None:
        """Without the SCP role for CT, every sub-operation fails: 0xB000 with the failed UIDs."""
        responses, received = self.get(query("STUDY", StudyInstanceUID="1.2.3.2.1"),
                                       scp_role=False)
        self.assertEqual(received, [])
        final, identifier = responses[-1]
        self.assertEqual(final.status, Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES)
        self.assertEqual((final.number_of_completed_sub_operations,
                          final.number_of_failed_sub_operations), (0, 2))
        self.assertEqual(sorted(identifier.FailedSOPInstanceUIDList),
                         ["1.2.3.2.1.1.1", "1.2.3.2.1.1.2"])

    def test_get_invalid_identifier(self) -> None:
        """A C-GET without the unique key of its level gets 0xA900 and no sub-operations."""
        responses, received = self.get(query("SERIES", StudyInstanceUID="1.2.3.1.1"))
        self.assertEqual(received, [])
        self.assertEqual([rsp.status for rsp, _ in responses], [0xA900])

    def test_get_nothing_matches(self) -> None:
        """A C-GET of an unknown study ends with Success and zero sub-operations."""
        responses, received = self.get(query("STUDY", StudyInstanceUID="9.9.9"))
        self.assertEqual(received, [])
        [(final, _)] = responses
        self.assertEqual((final.status, final.number_of_completed_sub_operations),
                         (Status.SUCCESS, 0))


class PendingIntervalTests(QueryRetrieveTestCase):
    """Pending C-GET/C-MOVE responses at most one per ``pending_interval``
    (default 0.1 s): the first sub-operation is reported, the next only
    once the interval has passed; the final response has the totals."""

    def setUp(self) -> None:
        super().setUp()
        self.settings.pending_interval = configuration.Config().pending_interval
        self.factory = tap.build_factory(self.settings, self.reactor, self.pool, self.index)

    def get(self, seconds_per_store: float) -> tuple[list, list]:
        """C-GET of study 1.2.3.1.1 (3 instances), each C-STORE taking
        ``seconds_per_store`` on the reactor's clock."""
        received = []

        def on_store(request):
            received.append(request)
            self.reactor.advance(seconds_per_store)
            return Status.SUCCESS

        client, pump = self.connect(QUERY_CONTEXTS + [(CT_IMAGE_STORAGE, EXPLICIT)],
                                    scp_role_classes=[CT_IMAGE_STORAGE])
        d = client.get(query("STUDY", StudyInstanceUID="1.2.3.1.1"), STUDY_GET,
                       on_store=on_store)
        pump.flush()
        responses = self.successResultOf(d)
        self.release(client, pump)
        self.assertEqual(len(received), 3)
        return [(rsp.status, rsp.number_of_remaining_sub_operations,
                 rsp.number_of_completed_sub_operations) for rsp, _ in responses]

    def test_default(self) -> None:
        """0.1 s by default; 0 is allowed (every sub-operation), a negative value is not."""
        self.assertEqual(configuration.Config().pending_interval, 0.1)
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[DEFAULT]\npending_interval: 0\n")
        self.assertEqual(configuration.load(path).pending_interval, 0)
        with open(path, "w") as f:
            f.write("[DEFAULT]\npending_interval: -1\n")
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(path)
        self.assertIn("pending_interval", str(caught.exception))

    def test_coalesced(self) -> None:
        """Three sub-operations within the interval: one Pending response, after the first."""
        self.assertEqual(self.get(0.0), [(Status.PENDING, 2, 1), (Status.SUCCESS, None, 3)])

    def test_after_interval(self) -> None:
        """0.06 s per sub-operation: reported after the first and the third."""
        self.assertEqual(self.get(0.06), [(Status.PENDING, 2, 1), (Status.PENDING, 0, 3),
                                          (Status.SUCCESS, None, 3)])


class MoveTests(QueryRetrieveTestCase):
    """C-MOVE: sub-operations to a configured destination."""

    def test_unknown_destination(self) -> None:
        """A C-MOVE to an AE title not in the config gets 0xA801."""
        client, pump = self.connect()
        d = client.move(query("STUDY", StudyInstanceUID="1.2.3.1.1"), STUDY_MOVE, "NOWHERE")
        pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual([rsp.status for rsp, _ in responses], [Status.MOVE_DESTINATION_UNKNOWN])
        self.assertEqual(responses[0][0].status, 0xA801)
        self.assertEqual(len(self.reactor.tcpClients), 2, "no association to anyone")
        self.release(client, pump)

    def test_invalid_identifier(self) -> None:
        """A C-MOVE identifier missing its level's unique key gets 0xA900, not 0xA801."""
        client, pump = self.connect()
        d = client.move(query("STUDY", PatientID="PA"), STUDY_MOVE, "DEST")
        pump.flush()
        self.assertEqual([rsp.status for rsp, _ in self.successResultOf(d)], [0xA900])
        self.release(client, pump)

    def test_next_prepared_after_sending(self) -> None:
        """A sub-operation started by the previous one's response is sent
        before the next record is prepared (its file's header read), so
        that reading overlaps the peer's receiving."""
        from copy import deepcopy

        from dicomtwist.association import files
        from dicomtwist.services import qr

        extra = deepcopy(self.datasets[0])
        extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = "1.2.3.1.1.1.3"
        client, pump = self.connect([(CT_IMAGE_STORAGE, EXPLICIT)])
        stored = client.store(extra)
        pump.flush()
        self.assertEqual(self.successResultOf(stored).status, Status.SUCCESS)
        self.release(client, pump)
        events: list[str] = []
        read = qr.file_dataset
        self.patch(qr, "file_dataset", lambda path, **kwargs: (
            events.append("prepare"), read(path, **kwargs))[-1])
        begin = files.FileProducer._begin
        self.patch(files.FileProducer, "_begin", lambda producer: (
            events.append("send"), begin(producer))[-1])
        destination = AcceptorFactory(
            self.reactor, policy(ae_title="DEST",
                                 contexts={CT_IMAGE_STORAGE: [ExplicitVRLittleEndian]}),
            {"store": lambda request: Status.SUCCESS})
        client, pump = self.connect()
        d = client.move(query("STUDY", StudyInstanceUID="1.2.3.1.1"), STUDY_MOVE, "DEST")
        pump.flush()
        _, _, sub_pump = connect_in_memory(self.reactor, destination)
        for _ in range(20):
            sub_pump.flush()
            pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual(responses[-1][0].number_of_completed_sub_operations, 4)
        # Two ready at first (the one sent, and one ahead for the codec
        # pool's one thread); then each next one once a send has started
        # (the first starts on the A-ASSOCIATE-AC, the next ones on the
        # C-STORE-RSPs, all while the association handles that input).
        self.assertEqual(events, ["prepare"] * 2 + ["send", "prepare"] * 2 + ["send"] * 2)

    def test_move_to_destination(self) -> None:
        """A C-MOVE stores the study on a new association to the destination, with counts."""
        received = []

        def on_store(request):
            received.append(request)
            return Status.SUCCESS

        destination = AcceptorFactory(
            self.reactor, policy(ae_title="DEST",
                                 contexts={CT_IMAGE_STORAGE: [ExplicitVRLittleEndian]}),
            {"store": on_store})
        client, pump = self.connect()
        clients_before = len(self.reactor.tcpClients)
        d = client.move(query("STUDY", StudyInstanceUID="1.2.3.1.1"), STUDY_MOVE, "DEST")
        pump.flush()
        self.assertEqual(len(self.reactor.tcpClients), clients_before + 1)
        host, port = self.reactor.tcpClients[-1][:2]
        self.assertEqual((host, port), ("127.0.0.1", 11113))
        sub, _, sub_pump = connect_in_memory(self.reactor, destination)
        for _ in range(20):
            sub_pump.flush()
            pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual(sorted(r.message.affected_sop_instance_uid for r in received),
                         ["1.2.3.1.1.1.1", "1.2.3.1.1.1.2", "1.2.3.1.1.2.1"])
        for request in received:
            self.assertEqual(bytes(request.data),
                             self.stored_data_set(request.message.affected_sop_instance_uid))
            self.assertEqual((request.message.move_originator_application_entity_title,
                              request.message.move_originator_message_id),
                             ("TESTSCU", d.message_id))
        self.assertEqual(sub.associate_rq.calling_ae_title, "QRSCP")
        self.assertEqual(sub.associate_rq.called_ae_title, "DEST")
        self.assertEqual([rsp.status for rsp, _ in responses],
                         [Status.PENDING] * 3 + [Status.SUCCESS])
        self.assertEqual([rsp.number_of_remaining_sub_operations for rsp, _ in responses[:3]],
                         [2, 1, 0])
        self.assertEqual(responses[-1][0].number_of_completed_sub_operations, 3)
        self.assertTrue(sub.machine.is_closed, "the sub-association is released")
        self.release(client, pump)

    def test_destination_unreachable(self) -> None:
        """When the destination refuses the connection, every sub-operation fails: 0xB000."""
        client, pump = self.connect()
        d = client.move(query("STUDY", StudyInstanceUID="1.2.3.2.1"), STUDY_MOVE, "DEST")
        pump.flush()
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))
        pump.flush()
        responses = self.successResultOf(d)
        final, identifier = responses[-1]
        self.assertEqual(final.status, Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES)
        self.assertEqual((final.number_of_completed_sub_operations,
                          final.number_of_failed_sub_operations), (0, 2))
        self.assertEqual(sorted(identifier.FailedSOPInstanceUIDList),
                         ["1.2.3.2.1.1.1", "1.2.3.2.1.1.2"])
        self.flushLoggedErrors(ConnectionRefusedError)
        self.release(client, pump)
