"""Tests for the archive's event publishers (:mod:`dicomtwist.events`): the
association, store, query and retrieve code tell the bus what happened.

The archive's factory serves in-memory associations on a real index, as in
:mod:`tests.test_qr`; a recorder subscribed to the bus collects the events.
"""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import events
from dicomtwist.association import associate
from dicomtwist.errors import AssociationRejected
from dicomtwist.status import Status
from tests.helpers import CT_IMAGE_STORAGE, connect_in_memory, ct_dataset
from tests.test_qr import EXPLICIT, QUERY_CONTEXTS, STUDY_FIND, QueryRetrieveTestCase, query


def record(case: SynchronousTestCase) -> list:
    """Subscribe a list to the bus for the test's duration; return it."""
    seen: list = []
    case.addCleanup(events.bus.subscribe(seen.append))
    return seen


def of(seen: list, kind: type) -> list:
    """The recorded events of one type."""
    return [e for e in seen if isinstance(e, kind)]


class PublishTests(QueryRetrieveTestCase):
    """Each thing the archive does reaches the bus once, with its facts."""

    def test_nobody_listens_nothing_built(self) -> None:
        """Without observers the bus is not observed (publishers skip events)."""
        self.assertFalse(events.bus.observed)
        unsubscribe = events.bus.subscribe(lambda event: None)
        self.assertTrue(events.bus.observed)
        unsubscribe()
        self.assertFalse(events.bus.observed)

    def test_association_and_store(self) -> None:
        """An accepted association, a stored instance with its timings, the
        store operation's status and the release are published."""
        seen = record(self)
        client, pump = self.connect([(CT_IMAGE_STORAGE, EXPLICIT)])
        ds = ct_dataset(64, PatientID="PX", PatientName="Ex^Ample",
                        StudyInstanceUID="1.2.9.1")
        d = client.store(ds)
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)
        self.release(client, pump)
        accepted, = of(seen, events.AssociationAccepted)
        self.assertEqual((accepted.peer_host, accepted.peer_port, accepted.calling_ae,
                          accepted.called_ae), ("127.0.0.1", 40000, "TESTSCU", "QRSCP"))
        stored, = of(seen, events.InstanceStored)
        self.assertEqual((stored.via, stored.calling_ae, stored.sop_instance_uid,
                          stored.study_instance_uid, stored.patient_id, stored.patient_name,
                          stored.association_id),
                         ("dimse", "TESTSCU", ds.SOPInstanceUID, "1.2.9.1", "PX", "Ex^Ample",
                          accepted.association_id))
        self.assertGreater(stored.size, 128)
        self.assertGreaterEqual(stored.total, stored.receive)
        operation, = of(seen, events.OperationCompleted)
        self.assertEqual((operation.service, operation.status, operation.sop_class_uid,
                          operation.calling_ae),
                         ("store", Status.SUCCESS, CT_IMAGE_STORAGE, "TESTSCU"))
        ended, = of(seen, events.AssociationEnded)
        self.assertEqual((ended.association_id, ended.how, ended.calling_ae),
                         (accepted.association_id, "released", "TESTSCU"))

    def test_store_failure(self) -> None:
        """A store answered with a failure publishes StoreFailed, not InstanceStored."""
        seen = record(self)
        client, pump = self.connect([(CT_IMAGE_STORAGE, EXPLICIT)])
        ds = ct_dataset(64)
        del ds.StudyInstanceUID
        d = client.store(ds)
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.STORE_CANNOT_UNDERSTAND)
        self.release(client, pump)
        self.assertEqual(of(seen, events.InstanceStored), [])
        failed, = of(seen, events.StoreFailed)
        self.assertEqual((failed.via, failed.sop_instance_uid, failed.status),
                         ("dimse", ds.SOPInstanceUID, Status.STORE_CANNOT_UNDERSTAND))

    def test_rejection_reason(self) -> None:
        """A refused calling AE title is published with the bounded reason."""
        self.factory.policy = dataclasses.replace(self.factory.policy,
                                                  allowed_calling_aets=frozenset({"OTHER"}))
        seen = record(self)
        d = associate(self.reactor, "127.0.0.1", 11112, contexts=QUERY_CONTEXTS,
                      called_ae_title="QRSCP", calling_ae_title="TESTSCU")
        connect_in_memory(self.reactor, self.factory)
        self.failureResultOf(d, AssociationRejected)
        rejected, = of(seen, events.AssociationRejected)
        self.assertEqual((rejected.reason, rejected.calling_ae, rejected.peer_host),
                         ("calling-ae", "TESTSCU", "127.0.0.1"))
        self.assertIn("allowed_calling_aets", rejected.detail)
        self.assertEqual(of(seen, events.AssociationEnded), [])

    def test_limit_rejection(self) -> None:
        """An association past max_associations is published as "limit"."""
        self.factory.max_associations = 0
        seen = record(self)
        d = associate(self.reactor, "127.0.0.1", 11112, contexts=QUERY_CONTEXTS)
        connect_in_memory(self.reactor, self.factory)
        self.failureResultOf(d, AssociationRejected)
        self.assertEqual([e.reason for e in of(seen, events.AssociationRejected)], ["limit"])

    def test_abort(self) -> None:
        """An association the peer aborts ends "aborted"."""
        seen = record(self)
        client, pump = self.connect()
        client.abort()
        pump.flush()
        ended, = of(seen, events.AssociationEnded)
        self.assertEqual(ended.how, "aborted")
        self.assertIn("A-ABORT", ended.cause)

    def test_find(self) -> None:
        """A C-FIND publishes QueryPerformed with the identifier bytes and the match count."""
        seen = record(self)
        responses = self.find(query("STUDY", PatientID="PA", StudyInstanceUID=""))
        self.assertEqual(len(responses), 3)
        performed, = of(seen, events.QueryPerformed)
        self.assertEqual((performed.via, performed.calling_ae, performed.sop_class_uid,
                          performed.level, performed.matches, performed.status),
                         ("dimse", "TESTSCU", STUDY_FIND, "STUDY", 2, Status.SUCCESS))
        self.assertIn(b"PA", performed.query)
        operation, = of(seen, events.OperationCompleted)
        self.assertEqual((operation.service, operation.status), ("find", Status.SUCCESS))

    def test_get(self) -> None:
        """A C-GET publishes RetrieveStarted, one InstanceSent per
        sub-operation and RetrieveEnded with the counts."""
        seen = record(self)
        self.get(query("STUDY", StudyInstanceUID="1.2.3.1.1"))
        started, = of(seen, events.RetrieveStarted)
        self.assertEqual((started.service, started.destination_ae, started.count,
                          started.study_instance_uids), ("get", "TESTSCU", 3, ("1.2.3.1.1",)))
        sent = of(seen, events.InstanceSent)
        self.assertEqual(sorted(e.sop_instance_uid for e in sent),
                         ["1.2.3.1.1.1.1", "1.2.3.1.1.1.2", "1.2.3.1.1.2.1"])
        self.assertEqual({e.status for e in sent}, {Status.SUCCESS})
        self.assertTrue(all(e.size > 0 for e in sent))
        ended, = of(seen, events.RetrieveEnded)
        self.assertEqual((ended.completed, ended.failed, ended.warning, ended.status),
                         (3, 0, 0, Status.SUCCESS))
        self.assertEqual(sorted(ended.sop_instance_uids),
                         ["1.2.3.1.1.1.1", "1.2.3.1.1.1.2", "1.2.3.1.1.2.1"])

    def get(self, identifier):
        """C-GET with a CT storage context (the peer takes every instance)."""
        contexts = QUERY_CONTEXTS + [(CT_IMAGE_STORAGE, EXPLICIT)]
        client, pump = self.connect(contexts, scp_role_classes=[CT_IMAGE_STORAGE])
        d = client.get(identifier, "1.2.840.10008.5.1.4.1.2.2.3",
                       on_store=lambda request: Status.SUCCESS)
        pump.flush()
        responses = self.successResultOf(d)
        self.release(client, pump)
        return responses

    def test_tls_handshake_failure(self) -> None:
        """A connection lost to a TLS error before association is published
        as an authentication failure."""
        from OpenSSL import SSL
        from twisted.internet.address import IPv4Address
        from twisted.python.failure import Failure

        seen = record(self)
        assoc = self.factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 4000))
        from twisted.internet.testing import StringTransport

        assoc.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4000)))
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        assoc.connectionLost(Failure(error))
        failed, = of(seen, events.AuthenticationFailed)
        self.assertEqual((failed.via, failed.peer_host, failed.reason),
                         ("dimse", "10.1.2.3", "TLS handshake: certificate verify failed"))
        self.flushLoggedErrors()
