"""Tests for the archive's query options: SOP Class Extended Negotiation
answers (PS3.4 C.5.1.1, C.5.2.1, C.5.3.1), relational queries and
retrievals on a negotiated association, 0xFF01 for unsupported keys, and
sequence matching through C-FIND (in memory, on the real services)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import acse
from dicomtwist.association import AcceptorFactory
from dicomtwist.services.qr import EXTENDED_NEGOTIATION
from dicomtwist.status import Status
from dicomtwist.ul.items import SOPClassExtendedNegotiationSubItem
from dicomtwist.ul.pdu import AAssociateAC
from tests.helpers import CT_IMAGE_STORAGE, connect_in_memory, policy
from tests.test_qr import (
    EXPLICIT,
    PATIENT_FIND,
    PATIENT_GET,
    QUERY_CONTEXTS,
    STUDY_FIND,
    STUDY_GET,
    STUDY_MOVE,
    WORKLIST_FIND,
    QueryRetrieveTestCase,
    query,
)

PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
CT_STORAGE_CONTEXT = [(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])]


class AnswerExtendedTests(SynchronousTestCase):
    """answer_extended: one byte back per byte proposed, 1 only where both
    sides say 1."""

    CASES = [
        # proposed, supported, answer
        (b"\x01", b"\x01", b"\x01"),
        (b"\x00", b"\x01", b"\x00"),
        (b"\x01\x01\x01\x01", b"\x01", b"\x01\x00\x00\x00"),
        (b"\x01\x01\x01\x01\x01\x01", b"\x01", b"\x01\x00\x00\x00\x00\x00"),
        (b"\x00\x01\x01", b"\x01", b"\x00\x00\x00"),
        (b"\x02", b"\x01", b"\x00"),
        (b"\x01", b"\x00", b"\x00"),
        (b"", b"\x01", b""),
        (b"\x01\x01", b"\x01\x01", b"\x01\x01"),
    ]

    def test_cases(self):
        """Each proposal gets its answer (PS3.4 C.5.1.1.2: accept with 1, turn
        down with 0, the proposal's length)."""
        for proposed, supported, expected in self.CASES:
            self.assertEqual(acse.answer_extended(proposed, supported), expected,
                             (proposed, supported))


class NegotiationTests(SynchronousTestCase):
    """The A-ASSOCIATE-AC answers SOP Class Extended Negotiation."""

    POLICY = policy(contexts={uid: [ExplicitVRLittleEndian] for uid in
                              (STUDY_FIND, STUDY_MOVE, STUDY_GET, PATIENT_FIND)},
                    extended_negotiation=EXTENDED_NEGOTIATION)

    def negotiate(self, extended: dict[str, bytes],
                  contexts=(STUDY_FIND, STUDY_MOVE, STUDY_GET)) -> tuple:
        rq = acse.build_rq("ANY-SCP", "SCU", [(uid, [ExplicitVRLittleEndian])
                                              for uid in contexts], extended=extended)
        ac, negotiated = acse.negotiate_acceptor(rq, self.POLICY)
        # What the requestor reads from the bytes on the wire.
        decoded = AAssociateAC.decode(ac.encode()[6:])
        return decoded, negotiated, acse.interpret_ac(rq, decoded)

    def answers(self, ac) -> dict[str, bytes]:
        return {e.sop_class_uid: bytes(e.info) for e in ac.user_information.sop_class_extended}

    def test_table(self):
        """FIND: relational-queries and combined date-time matching accepted,
        fuzzy matching, timezone and enhanced conversion answered 0; MOVE and
        GET: relational-retrieval accepted, enhanced conversion 0."""
        for extended, expected in [
            ({STUDY_FIND: b"\x01"}, {STUDY_FIND: b"\x01"}),
            ({STUDY_FIND: b"\x01\x01\x01\x01\x01"}, {STUDY_FIND: b"\x01\x01\x00\x00\x00"}),
            ({STUDY_FIND: b"\x00\x01\x01"}, {STUDY_FIND: b"\x00\x01\x00"}),
            ({STUDY_MOVE: b"\x01\x01", STUDY_GET: b"\x01"},
             {STUDY_MOVE: b"\x01\x00", STUDY_GET: b"\x01"}),
            ({STUDY_GET: b"\x00"}, {STUDY_GET: b"\x00"}),
            ({}, {}),
        ]:
            ac, negotiated, seen = self.negotiate(extended)
            self.assertEqual(self.answers(ac), expected, extended)
            self.assertEqual(negotiated.extended, expected)
            self.assertEqual(seen.extended, expected)

    def test_not_accepted_or_unknown_left_out(self):
        """A SOP class without an accepted context, or without options, gets
        no sub-item: no option is agreed for it."""
        ac, negotiated, _ = self.negotiate(
            {PATIENT_FIND: b"\x01", "1.2.840.10008.1.1": b"\x01",
             "1.2.840.10008.5.1.4.31": b"\x01\x01\x01"})
        self.assertEqual(self.answers(ac), {})
        self.assertEqual(negotiated.extended, {})

    def test_extended_option(self):
        """Negotiated.extended_option reads one agreed sub-field (1-based); a
        missing one is 0."""
        _, negotiated, _ = self.negotiate({STUDY_FIND: b"\x01\x00\x01", STUDY_MOVE: b"\x00"})
        self.assertTrue(negotiated.extended_option(STUDY_FIND, 1))
        self.assertFalse(negotiated.extended_option(STUDY_FIND, 2))
        self.assertFalse(negotiated.extended_option(STUDY_FIND, 3))
        self.assertFalse(negotiated.extended_option(STUDY_FIND, 4))
        self.assertFalse(negotiated.extended_option(STUDY_MOVE, 1))
        self.assertFalse(negotiated.extended_option(STUDY_GET, 1))

    def test_sub_item_bytes(self):
        """The answer is a 56H sub-item: UID length, UID, the bytes."""
        ac, _, _ = self.negotiate({STUDY_FIND: b"\x01\x01\x01"})
        item = SOPClassExtendedNegotiationSubItem(STUDY_FIND, b"\x01\x01\x00")
        self.assertIn(item.encode(), ac.encode())
        self.assertEqual(item.encode()[:6], b"\x56\x00\x00\x20\x00\x1b")


RELATIONAL = {uid: b"\x01" for uid in EXTENDED_NEGOTIATION}


class RelationalServiceTests(QueryRetrieveTestCase):
    """Relational requests succeed only on an association that negotiated them."""

    def find_on(self, identifier: Dataset, sop_class: str, extended: dict | None) -> list:
        client, pump = self.connect(extended=extended)
        # The requestor reads the archive's answer from the A-ASSOCIATE-AC.
        self.assertEqual(client.negotiated.extended_option(sop_class, 1),
                         (extended or {}).get(sop_class, b"")[:1] == b"\x01")
        d = client.find(identifier, sop_class)
        pump.flush()
        responses = self.successResultOf(d)
        self.release(client, pump)
        return responses

    def test_find_series_without_study(self):
        """A Study Root SERIES query without Study Instance UID: 0xA900
        without the negotiation, every matching series with it."""
        identifier = query("SERIES", SeriesInstanceUID="", Modality="CT")
        responses = self.find_on(identifier, STUDY_FIND, None)
        self.assertEqual([r.status for r, _ in responses], [0xA900])
        responses = self.find_on(identifier, STUDY_FIND, {STUDY_FIND: b"\x00"})
        self.assertEqual([r.status for r, _ in responses], [0xA900])
        responses = self.find_on(identifier, STUDY_FIND, RELATIONAL)
        self.assertEqual([r.status for r, _ in responses],
                         [Status.PENDING] * 4 + [Status.SUCCESS])
        self.assertEqual(sorted(ds.SeriesInstanceUID for _, ds in responses[:-1]),
                         ["1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.1.2.1", "1.2.3.2.1.1"])

    def test_find_patient_root_image_by_patient_name(self):
        """A Patient Root IMAGE query by a patient key alone, relationally."""
        identifier = query("IMAGE", SOPInstanceUID="", PatientName="Beta*")
        responses = self.find_on(identifier, PATIENT_FIND, {PATIENT_FIND: b"\x01\x01\x01"})
        self.assertEqual(sorted(ds.SOPInstanceUID for _, ds in responses[:-1]),
                         ["1.2.3.2.1.1.1", "1.2.3.2.1.1.2"])
        self.assertEqual([r.status for r, _ in responses][-1], Status.SUCCESS)

    def test_combined_date_time(self):
        """Study Date and Study Time ranges are one date-time range only when
        combined date-time matching was negotiated (the stored studies have
        no time: midnight)."""
        identifier = query("STUDY", StudyInstanceUID="", StudyDate="20240105-20240210",
                           StudyTime="0100-2300")
        for extended, expected in [(None, []), ({STUDY_FIND: b"\x01"}, []),
                                   ({STUDY_FIND: b"\x00\x01"}, ["1.2.3.1.2"])]:
            responses = self.find_on(identifier, STUDY_FIND, extended)
            self.assertEqual([ds.StudyInstanceUID for _, ds in responses[:-1]], expected,
                             extended)
            self.assertEqual(responses[-1][0].status, Status.SUCCESS)

    def get(self, identifier: Dataset, sop_class: str, extended: dict | None):
        received = []

        def on_store(request):
            received.append(request.message.affected_sop_instance_uid)
            return Status.SUCCESS

        client, pump = self.connect(QUERY_CONTEXTS + [(CT_IMAGE_STORAGE, EXPLICIT)],
                                    scp_role_classes=[CT_IMAGE_STORAGE], extended=extended)
        d = client.get(identifier, sop_class, on_store=on_store)
        pump.flush()
        responses = self.successResultOf(d)
        self.release(client, pump)
        return responses, received

    def test_get_list_of_instances(self):
        """C-GET of instances of two studies by SOP Instance UID alone: 0xA900
        without the negotiation, those instances with it."""
        identifier = query("IMAGE", SOPInstanceUID="1.2.3.1.1.1.2\\1.2.3.2.1.1.1")
        responses, received = self.get(identifier, STUDY_GET, None)
        self.assertEqual(([r.status for r, _ in responses], received), ([0xA900], []))
        responses, received = self.get(identifier, STUDY_GET, RELATIONAL)
        self.assertEqual(sorted(received), ["1.2.3.1.1.1.2", "1.2.3.2.1.1.1"])
        self.assertEqual(responses[-1][0].status, Status.SUCCESS)
        responses, received = self.get(identifier, PATIENT_GET, {PATIENT_GET: b"\x01"})
        self.assertEqual(len(received), 2)

    def test_move_list_of_instances(self):
        """C-MOVE of instances by SOP Instance UID alone, relationally, sends
        them to the destination; without the negotiation 0xA900."""
        client, pump = self.connect()
        identifier = query("IMAGE", SOPInstanceUID="1.2.3.1.2.1.1\\1.2.3.2.1.1.2")
        d = client.move(identifier, PATIENT_MOVE, "DEST")
        pump.flush()
        self.assertEqual([r.status for r, _ in self.successResultOf(d)], [0xA900])
        self.release(client, pump)

        received = []

        def on_store(request):
            received.append(request.message.affected_sop_instance_uid)
            return Status.SUCCESS

        destination = AcceptorFactory(
            self.reactor, policy(ae_title="DEST",
                                 contexts={CT_IMAGE_STORAGE: [ExplicitVRLittleEndian]}),
            {"store": on_store})
        client, pump = self.connect(extended={PATIENT_MOVE: b"\x01"})
        d = client.move(identifier, PATIENT_MOVE, "DEST")
        pump.flush()
        _, _, sub_pump = connect_in_memory(self.reactor, destination)
        for _ in range(20):
            sub_pump.flush()
            pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual(sorted(received), ["1.2.3.1.2.1.1", "1.2.3.2.1.1.2"])
        self.assertEqual(responses[-1][0].status, Status.SUCCESS)
        self.release(client, pump)


class PendingStatusTests(QueryRetrieveTestCase):
    """0xFF01 when the identifier holds a key the index does not hold."""

    CASES = [
        # keys, pending status
        ({"StudyInstanceUID": "", "PatientName": ""}, Status.PENDING),
        ({"StudyInstanceUID": "", "InstanceAvailability": ""}, Status.PENDING),
        ({"StudyInstanceUID": "", "InstitutionName": ""}, Status.PENDING_WARNING),
        ({"StudyInstanceUID": "", "RetrieveAETitle": ""}, Status.PENDING_WARNING),
        ({"StudyInstanceUID": "", "StudyComments": "x*"}, Status.PENDING_WARNING),
        ({"StudyInstanceUID": "", "ProcedureCodeSequence": []}, Status.PENDING),
        ({"StudyInstanceUID": "", "ReferencedPatientSequence": []}, Status.PENDING_WARNING),
    ]

    def test_cases(self):
        """Every match is 0xFF01 with an unsupported key (returned empty), 0xFF00
        otherwise; the final status is Success."""
        for keys, pending in self.CASES:
            responses = self.find(query("STUDY", **keys), STUDY_FIND)
            self.assertEqual([r.status for r, _ in responses],
                             [pending] * 3 + [Status.SUCCESS], keys)
            for _, ds in responses[:-1]:
                self.assertEqual(sorted(e.keyword for e in ds),
                                 sorted([*keys, "QueryRetrieveLevel"]))
                for keyword in ("InstitutionName", "RetrieveAETitle", "StudyComments"):
                    if keyword in keys:
                        self.assertEqual(ds[keyword].value, "")

    def test_item_key_not_kept(self):
        """An item key a kept sequence does not keep is 0xFF01 too."""
        item = Dataset()
        item.CodeValue = ""
        item.ContextIdentifier = ""
        responses = self.find(query("STUDY", StudyInstanceUID="",
                                    ProcedureCodeSequence=[item]), STUDY_FIND)
        self.assertEqual([r.status for r, _ in responses],
                         [Status.PENDING_WARNING] * 3 + [Status.SUCCESS])

    def test_worklist_unchanged(self):
        """The worklist has its own matcher: no 0xFF01 from the index's rules."""
        responses = self.find(query("", PatientName="", InstitutionName=""), WORKLIST_FIND)
        self.assertNotIn(Status.PENDING_WARNING, [r.status for r, _ in responses])


class SequenceFindTests(QueryRetrieveTestCase):
    """Sequence matching through C-FIND, in both Little Endian syntaxes."""

    def setUp(self):
        super().setUp()
        from tests.helpers import ct_dataset

        code = Dataset()
        code.CodeValue = "PROC-7"
        code.CodingSchemeDesignator = "99LOCAL"
        code.CodeMeaning = "Knee MRI"
        ds = ct_dataset(16, PatientID="PC", StudyInstanceUID="1.2.3.3.1",
                        SeriesInstanceUID="1.2.3.3.1.1", SOPInstanceUID="1.2.3.3.1.1.1",
                        ProcedureCodeSequence=[code])
        client, pump = self.connect([(CT_IMAGE_STORAGE, EXPLICIT)])
        d = client.store(ds)
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)
        self.release(client, pump)

    def test_matches_and_returns_the_item(self):
        """The study whose Procedure Code Sequence has a matching item is
        returned with that item's requested keys."""
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            item = Dataset()
            item.CodeValue = "PROC-*"
            item.CodeMeaning = ""
            identifier = query("STUDY", StudyInstanceUID="", ProcedureCodeSequence=[item])
            client, pump = self.connect([(STUDY_FIND, [syntax])])
            d = client.find(identifier, STUDY_FIND)
            pump.flush()
            responses = self.successResultOf(d)
            self.release(client, pump)
            self.assertEqual([r.status for r, _ in responses], [Status.PENDING, Status.SUCCESS])
            ds = responses[0][1]
            self.assertEqual(ds.StudyInstanceUID, "1.2.3.3.1")
            self.assertEqual([(i.CodeValue, i.CodeMeaning) for i in ds.ProcedureCodeSequence],
                             [("PROC-7", "Knee MRI")])
            self.assertNotIn("CodingSchemeDesignator", ds.ProcedureCodeSequence[0])
