"""Tests for dicomtwist.services.commitment: the Storage Commitment Push
Model SCP (PS3.4 Annex J).

The archive's own factory (``tap.build_factory``) serves in-memory
associations on a real index (sqlite and PostgreSQL) holding instances
stored through C-STORE; thread pool work runs inline.  The requestor is
our own association with an ``n-event-report`` handler; the new
association the archive opens for a report is joined in memory to an
acceptor playing the modality.
"""

from __future__ import annotations

import fcntl
import os

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import config as configuration
from dicomtwist import tap
from dicomtwist.association import AcceptorFactory, associate
from dicomtwist.errors import DIMSEServiceError
from dicomtwist.services.commitment import (
    DIRECTORY,
    STORAGE_COMMITMENT,
    WELL_KNOWN_INSTANCE,
    Result,
    Transaction,
    TransactionStore,
    assess,
    parse_request,
)
from dicomtwist.status import Status
from dicomtwist.storage.files import instance_path
from tests.backends import both
from tests.helpers import CT_IMAGE_STORAGE, connect_in_memory, ct_dataset, policy
from tests.test_store import InlinePool, InlineReactor

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = [ExplicitVRLittleEndian]
COMMITMENT_CONTEXTS = [(STORAGE_COMMITMENT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
STORED = ["1.2.3.10.1", "1.2.3.10.2"]


def request(transaction: str = "1.2.3.99", references=((CT_IMAGE_STORAGE, STORED[0]),)
            ) -> Dataset:
    """An N-ACTION Action Information asking to commit ``references``."""
    ds = Dataset()
    if transaction is not None:
        ds.TransactionUID = transaction
    if references is not None:
        items = []
        for sop_class, sop_instance in references:
            item = Dataset()
            if sop_class is not None:
                item.ReferencedSOPClassUID = sop_class
            if sop_instance is not None:
                item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        ds.ReferencedSOPSequence = Sequence(items)
    return ds


def _pdu_types(data: bytes) -> list[int]:
    """The types of the whole PDUs in ``data``, in order."""
    types, offset = [], 0
    while offset + 6 <= len(data):
        types.append(data[offset])
        offset += 6 + int.from_bytes(data[offset + 2:offset + 6], "big")
    return types


class ParseRequestTests(SynchronousTestCase):
    """The Action Information of a Request Storage Commitment (Table J.3-1)."""

    def test_valid(self) -> None:
        """A Transaction UID and referenced instances make a transaction, in order."""
        refs = ((CT_IMAGE_STORAGE, "1.2.3.4"), (MR_IMAGE_STORAGE, "1.2.3.5"))
        transaction = parse_request(request("1.2.3.99", refs), "MODALITY", "now")
        self.assertEqual(transaction, Transaction("1.2.3.99", "MODALITY", refs, "now"))

    def test_refused(self) -> None:
        """Each malformed request is refused with 0x0115 (Invalid argument value)."""
        cases = {
            "no transaction uid": request(None),
            "invalid transaction uid": request("1.2.x"),
            "no sequence": request("1.2.3", None),
            "empty sequence": request("1.2.3", ()),
            "item without class": request("1.2.3", ((None, "1.2.3.4"),)),
            "item without instance": request("1.2.3", ((CT_IMAGE_STORAGE, None),)),
            "item with invalid instance": request("1.2.3", ((CT_IMAGE_STORAGE, "1..2"),)),
        }
        for name, ds in cases.items():
            with self.assertRaises(DIMSEServiceError, msg=name) as caught:
                parse_request(ds, "MODALITY")
            self.assertEqual(caught.exception.status, Status.INVALID_ARGUMENT_VALUE, name)

    def test_json_round_trip(self) -> None:
        """A transaction survives its file form; a foreign file is refused."""
        transaction = Transaction("1.2.3", "AE", ((CT_IMAGE_STORAGE, "1.2.3.4"),), "t")
        self.assertEqual(Transaction.from_json(transaction.to_json()), transaction)
        for data in (b"", b"{}", b"[1]", b'{"transaction_uid": "x", "calling_ae_title": "A",'
                     b' "references": []}', b"\xff"):
            self.assertRaises(ValueError, Transaction.from_json, data)


class ResultTests(SynchronousTestCase):
    """The Event Information of the report (Table J.3-2)."""

    def test_all_committed(self) -> None:
        """Everything held: event type 1, Referenced SOP Sequence, no Failed SOP Sequence."""
        result = Result(((CT_IMAGE_STORAGE, "1.2.3.4"),), ())
        ds = result.event_information(Transaction("1.2.3", "AE", ()), "QRSCP")
        self.assertEqual(result.event_type, 1)
        self.assertEqual(ds.TransactionUID, "1.2.3")
        self.assertEqual(ds.RetrieveAETitle, "QRSCP")
        self.assertEqual([(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
                          for i in ds.ReferencedSOPSequence], [(CT_IMAGE_STORAGE, "1.2.3.4")])
        self.assertNotIn("FailedSOPSequence", ds)

    def test_failures(self) -> None:
        """Failures: event type 2, each failed item with its Failure Reason."""
        result = Result((), ((CT_IMAGE_STORAGE, "1.2.3.4", 0x0112),
                             (MR_IMAGE_STORAGE, "1.2.3.5", 0x0119)))
        ds = result.event_information(Transaction("1.2.3", "AE", ()), "QRSCP")
        self.assertEqual(result.event_type, 2)
        self.assertNotIn("ReferencedSOPSequence", ds)
        self.assertEqual([(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID, i.FailureReason)
                          for i in ds.FailedSOPSequence],
                         [(CT_IMAGE_STORAGE, "1.2.3.4", 0x0112),
                          (MR_IMAGE_STORAGE, "1.2.3.5", 0x0119)])


class TransactionStoreTests(SynchronousTestCase):
    """Outstanding transactions on disk, one locked file each."""

    def setUp(self) -> None:
        self.directory = os.path.join(os.path.abspath(self.mktemp()), DIRECTORY)
        self.store = TransactionStore(self.directory)
        self.transaction = Transaction("1.2.3.7", "AE", ((CT_IMAGE_STORAGE, "1.2.3.4"),), "t")

    def test_add_once(self) -> None:
        """A transaction is written once; the same UID again is not added."""
        held = self.store.add(self.transaction)
        self.addCleanup(self.store.release, held)
        self.assertEqual(os.listdir(self.directory), ["1.2.3.7.json"])
        self.assertIsNone(self.store.add(self.transaction))
        self.assertEqual(os.listdir(self.directory), ["1.2.3.7.json"])

    def test_outstanding_skips_held(self) -> None:
        """A file another process holds is not taken; once let go, it is."""
        held = self.store.add(self.transaction)
        self.assertEqual(self.store.outstanding(), [])
        self.store.release(held)
        taken = self.store.outstanding()
        self.assertEqual([h.transaction for h in taken], [self.transaction])
        self.assertEqual(self.store.outstanding(), [], "now held by the first taker")
        self.store.finish(taken[0])
        self.assertEqual(os.listdir(self.directory), [])

    def test_outstanding_cleans_and_skips(self) -> None:
        """Crash leftovers go; an unreadable file stays, skipped; other names are ignored."""
        os.makedirs(self.directory)
        for name, data in ((".new-abc.tmp", b"{"), ("1.2.3.8.json", b"not json"),
                           ("README", b"x")):
            with open(os.path.join(self.directory, name), "wb") as fp:
                fp.write(data)
        self.assertEqual(self.store.outstanding(), [])
        self.assertEqual(sorted(os.listdir(self.directory)), ["1.2.3.8.json", "README"])

    def test_leftover_held_is_kept(self) -> None:
        """A temporary file being written (locked) is not removed."""
        os.makedirs(self.directory)
        path = os.path.join(self.directory, ".new-abc.tmp")
        fd = os.open(path, os.O_CREAT | os.O_RDWR)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.store.outstanding()
        self.assertTrue(os.path.exists(path))


class CommitmentSuite:
    """Base: the archive's factory on an index holding two CT instances."""

    settings_destinations: dict = {}

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.instances = os.path.join(base, "instances")
        os.makedirs(self.instances)
        self.index = self.make_index()
        self.reactor = InlineReactor()
        self.pool = InlinePool()
        self.settings = configuration.Config(
            instance_location=self.instances, database_location=self.location,
            destinations={"TESTSCU": configuration.Destination("TESTSCU", "127.0.0.1", 11113)})
        self.factory = self.build()
        client, pump = self.connect([(CT_IMAGE_STORAGE, EXPLICIT)])
        stores = [client.store(ct_dataset(16, SOPInstanceUID=uid)) for uid in STORED]
        pump.flush()
        self.assertEqual([self.successResultOf(d).status for d in stores],
                         [Status.SUCCESS] * len(STORED))
        self.release(client, pump)
        self.reports: list = []

    def build(self):
        """The archive's acceptor factory over the test's settings and index."""
        factory = tap.build_factory(self.settings, self.reactor, self.pool, self.index)
        self.addCleanup(factory.commitment.stop)
        return factory

    def on_report(self, request) -> int:
        """The modality's N-EVENT-REPORT handler: record and answer Success."""
        self.reports.append((request.association, request.message, request.dataset()))
        return Status.SUCCESS

    def connect(self, contexts=COMMITMENT_CONTEXTS, factory=None):
        """Associate in memory with the archive as TESTSCU; ``(client, pump)``."""
        d = associate(self.reactor, "127.0.0.1", 11112, contexts=contexts,
                      called_ae_title="QRSCP", calling_ae_title="TESTSCU",
                      handlers={"n-event-report": self.on_report})
        client, _, pump = connect_in_memory(self.reactor, factory or self.factory)
        self.assertIs(self.successResultOf(d), client)
        return client, pump

    def release(self, client, pump) -> None:
        """Release an association."""
        d = client.release()
        pump.flush()
        self.successResultOf(d)

    def modality(self, accept_scp_role: bool = True) -> AcceptorFactory:
        """The modality's own acceptor, for reports on a new association."""
        roles = frozenset({STORAGE_COMMITMENT}) if accept_scp_role else frozenset()
        return AcceptorFactory(
            self.reactor, policy(ae_title="TESTSCU",
                                 contexts={STORAGE_COMMITMENT: [ExplicitVRLittleEndian]},
                                 scu_role_classes=roles),
            {"n-event-report": self.on_report})

    def action(self, client, pump, ds: Dataset, *, instance: str = WELL_KNOWN_INSTANCE,
               action_type: int = 1):
        """Send an N-ACTION; returns its response."""
        d = client.n_action(STORAGE_COMMITMENT, instance, action_type, ds)
        pump.flush()
        rsp, reply = self.successResultOf(d)
        return rsp

    def outstanding(self) -> list[str]:
        """The transaction files on disk."""
        directory = os.path.join(self.instances, DIRECTORY)
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []

    def assertReport(self, report, event_type: int, committed, failed) -> None:
        """A report's event type and Event Information."""
        _, message, ds = report
        self.assertEqual((message.affected_sop_class_uid, message.affected_sop_instance_uid,
                          message.event_type_id),
                         (STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE, event_type))
        self.assertEqual(ds.TransactionUID, "1.2.3.99")
        self.assertEqual([(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
                          for i in ds.get("ReferencedSOPSequence", [])], list(committed))
        self.assertEqual([(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID, i.FailureReason)
                          for i in ds.get("FailedSOPSequence", [])], list(failed))

    # -- durability of what is committed -------------------------------------
    def test_assess(self) -> None:
        """Held: indexed with its file, same class; else 0x0112 or 0x0119 (table)."""
        os.unlink(instance_path(self.instances, STORED[1]))
        cases = [
            ((CT_IMAGE_STORAGE, STORED[0]), None),
            ((CT_IMAGE_STORAGE, "1.2.3.404"), 0x0112),
            ((MR_IMAGE_STORAGE, STORED[0]), 0x0119),
            ((CT_IMAGE_STORAGE, STORED[1]), 0x0112),
        ]
        result = assess(self.index, self.instances, [ref for ref, _ in cases])
        self.assertEqual(result.committed, tuple(ref for ref, reason in cases if reason is None))
        self.assertEqual(result.failed, tuple((*ref, reason) for ref, reason in cases
                                              if reason is not None))

    # -- N-ACTION ------------------------------------------------------------
    def test_action_refused(self) -> None:
        """Wrong instance, action type or Action Information: refused, nothing kept (table)."""
        client, pump = self.connect()
        cases = [
            (dict(instance="1.2.3.4"), request(), Status.NO_SUCH_SOP_INSTANCE),
            (dict(action_type=2), request(), Status.NO_SUCH_ACTION_TYPE),
            ({}, request(None), Status.INVALID_ARGUMENT_VALUE),
            ({}, request("1.2.3", ()), Status.INVALID_ARGUMENT_VALUE),
        ]
        for kwargs, ds, status in cases:
            rsp = self.action(client, pump, ds, **kwargs)
            self.assertEqual(rsp.status, status, (kwargs, ds))
            self.assertEqual(rsp.affected_sop_class_uid, STORAGE_COMMITMENT)
        self.reactor.advance(0)
        pump.flush()
        self.assertEqual((self.outstanding(), self.reports), ([], []))
        self.release(client, pump)

    def test_report_on_same_association(self) -> None:
        """Success, then event type 1 on the N-ACTION's association; nothing left outstanding."""
        client, pump = self.connect()
        rsp = self.action(client, pump, request(references=[(CT_IMAGE_STORAGE, u)
                                                            for u in STORED]))
        self.assertEqual((rsp.status, rsp.affected_sop_class_uid, rsp.affected_sop_instance_uid,
                          rsp.action_type_id),
                         (Status.SUCCESS, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE, 1))
        self.assertEqual(self.outstanding(), ["1.2.3.99.json"], "persisted before answering")
        self.reactor.advance(0)
        pump.flush()
        self.assertEqual(len(self.reports), 1)
        self.assertIs(self.reports[0][0], client)
        self.assertReport(self.reports[0], 1, [(CT_IMAGE_STORAGE, u) for u in STORED], [])
        self.assertEqual(self.outstanding(), [])
        self.release(client, pump)

    def test_report_failures(self) -> None:
        """Unknown and mismatched instances: event type 2 with their Failure Reasons."""
        client, pump = self.connect()
        self.action(client, pump, request(references=[
            (CT_IMAGE_STORAGE, STORED[0]), (CT_IMAGE_STORAGE, "1.2.3.404"),
            (MR_IMAGE_STORAGE, STORED[1])]))
        self.reactor.advance(0)
        pump.flush()
        self.assertReport(self.reports[0], 2, [(CT_IMAGE_STORAGE, STORED[0])],
                          [(CT_IMAGE_STORAGE, "1.2.3.404", 0x0112),
                           (MR_IMAGE_STORAGE, STORED[1], 0x0119)])
        self.release(client, pump)

    def test_report_on_new_association(self) -> None:
        """The requestor released: the report goes on a new association to its destination,
        where the archive is SCP by role selection."""
        client, pump = self.connect()
        self.action(client, pump, request())
        self.release(client, pump)
        clients = len(self.reactor.tcpClients)
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.tcpClients), clients + 1)
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("127.0.0.1", 11113))
        sub, server, sub_pump = connect_in_memory(self.reactor, self.modality())
        for _ in range(5):
            sub_pump.flush()
        self.assertEqual(len(self.reports), 1)
        self.assertIs(self.reports[0][0], server)
        self.assertReport(self.reports[0], 1, [(CT_IMAGE_STORAGE, STORED[0])], [])
        roles = sub.associate_rq.user_information.role_selections
        self.assertEqual([(r.sop_class_uid, r.scu_role, r.scp_role) for r in roles],
                         [(STORAGE_COMMITMENT, False, True)])
        self.assertEqual((sub.associate_rq.calling_ae_title, sub.associate_rq.called_ae_title),
                         ("QRSCP", "TESTSCU"))
        self.assertTrue(sub.machine.is_closed, "released after the report")
        self.assertEqual(self.outstanding(), [])

    def test_same_association_refused_report(self) -> None:
        """A failure status to the report on the same association: the new association is
        tried."""
        client, pump = self.connect()
        client.handlers["n-event-report"] = lambda request: Status.PROCESSING_FAILURE
        self.action(client, pump, request())
        clients = len(self.reactor.tcpClients)
        self.reactor.advance(0)
        pump.flush()
        self.assertEqual(len(self.reactor.tcpClients), clients + 1)
        sub, _, sub_pump = connect_in_memory(self.reactor, self.modality())
        sub_pump.flush()
        self.assertEqual(len(self.reports), 1)
        self.assertEqual(self.outstanding(), [])
        self.release(client, pump)

    def test_report_answered_then_released_at_once(self) -> None:
        """The modality answers the report and releases straight away: its
        N-EVENT-REPORT-RSP and A-RELEASE-RQ reach the archive in one read,
        and the response is taken before the release (PS3.8 7.2: the
        release follows the last P-DATA), so the report counts as
        delivered on that association."""
        client, pump = self.connect()
        self.action(client, pump, request())
        self.reactor.advance(0)
        pump.pump()  # the report reaches the modality, which answers it
        self.assertEqual(len(self.reports), 1)
        released = client.release()
        pdus = _pdu_types(b"".join(client.transport.stream))
        self.assertEqual(pdus, [0x04, 0x05], "P-DATA-TF then A-RELEASE-RQ, in one read")
        clients = len(self.reactor.tcpClients)
        pump.flush()
        self.successResultOf(released)
        self.assertEqual(self.outstanding(), [], "reported on the same association")
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.tcpClients), clients, "no new association")
        self.assertEqual(len(self.reports), 1)

    def test_released_with_report_unanswered(self) -> None:
        """The modality releases without answering the report (it can no longer:
        PS3.8 Table 9-10 has no P-DATA request in Sta7): the release is
        answered, the report fails when the connection closes, and goes on a
        new association."""
        client, pump = self.connect()
        unanswered: list = []

        def hold(request):
            self.reports.append((request.association, request.message, request.dataset()))
            unanswered.append(Deferred())
            return unanswered[-1]

        client.handlers = {**client.handlers, "n-event-report": hold}
        self.action(client, pump, request())
        self.reactor.advance(0)
        pump.pump()
        self.assertEqual(len(self.reports), 1)
        clients = len(self.reactor.tcpClients)
        released = client.release()
        pump.flush()
        self.successResultOf(released)
        self.assertEqual(self.outstanding(), ["1.2.3.99.json"])
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.tcpClients), clients + 1, "a new association")
        sub, _, sub_pump = connect_in_memory(self.reactor, self.modality())
        for _ in range(5):
            sub_pump.flush()
        self.assertEqual(len(self.reports), 2)
        self.assertReport(self.reports[1], 1, [(CT_IMAGE_STORAGE, STORED[0])], [])
        self.assertEqual(self.outstanding(), [])

    def test_scp_role_refused(self) -> None:
        """A destination that does not accept us as SCP gets no report: it stays outstanding
        and is retried later."""
        client, pump = self.connect()
        self.action(client, pump, request())
        self.release(client, pump)
        self.reactor.advance(0)
        sub, _, sub_pump = connect_in_memory(self.reactor, self.modality(accept_scp_role=False))
        sub_pump.flush()
        self.assertEqual(self.reports, [])
        self.assertEqual(self.outstanding(), ["1.2.3.99.json"])
        clients = len(self.reactor.tcpClients)
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.tcpClients), clients + 1, "retried")
        sub, _, sub_pump = connect_in_memory(self.reactor, self.modality())
        sub_pump.flush()
        self.assertEqual(len(self.reports), 1)
        self.assertEqual(self.outstanding(), [])

    def test_restart_answers_outstanding(self) -> None:
        """A transaction outstanding when the archive stops is reported after its next
        start, once; while another process holds it, a start leaves it alone."""
        self.settings.destinations = {}
        client, pump = self.connect()
        self.action(client, pump, request())
        self.release(client, pump)
        self.reactor.advance(0)
        self.assertEqual((self.reports, self.outstanding()), ([], ["1.2.3.99.json"]))
        # Another node starting meanwhile does not take it.
        other = self.build()
        self.assertEqual(self.successResultOf(other.commitment.start()), 0)
        self.factory.commitment.stop()
        self.settings.destinations = {
            "TESTSCU": configuration.Destination("TESTSCU", "127.0.0.1", 11113)}
        restarted = self.build()
        clients = len(self.reactor.tcpClients)
        self.assertEqual(self.successResultOf(restarted.commitment.start()), 1)
        self.assertEqual(len(self.reactor.tcpClients), clients + 1)
        sub, _, sub_pump = connect_in_memory(self.reactor, self.modality())
        sub_pump.flush()
        self.assertEqual(len(self.reports), 1)
        self.assertReport(self.reports[0], 1, [(CT_IMAGE_STORAGE, STORED[0])], [])
        self.assertEqual(self.outstanding(), [])

    def test_duplicate_transaction(self) -> None:
        """The same Transaction UID while outstanding: Success, and one report only."""
        self.settings.destinations = {}
        client, pump = self.connect()
        self.assertEqual(self.action(client, pump, request()).status, Status.SUCCESS)
        self.release(client, pump)
        self.reactor.advance(0)
        client, pump = self.connect()
        self.assertEqual(self.action(client, pump, request()).status, Status.SUCCESS)
        self.reactor.advance(0)
        pump.flush()
        self.assertEqual(self.reports, [])
        self.assertEqual(self.outstanding(), ["1.2.3.99.json"])
        self.release(client, pump)

    def test_permissions(self) -> None:
        """A peer whose permissions leave out ``commitment`` gets 0x0124."""
        from dicomtwist import access

        self.settings.peers = {"TESTSCU": access.PeerRule("TESTSCU", frozenset({"store"}))}
        client, pump = self.connect(factory=self.build())
        self.assertEqual(self.action(client, pump, request()).status, Status.NOT_AUTHORIZED)
        self.assertEqual(self.outstanding(), [])
        self.release(client, pump)


both(CommitmentSuite)
