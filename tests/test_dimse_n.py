"""DIMSE-N over an association (PS3.7 10): the requestor methods
(``n_event_report``, ``n_get``, ``n_set``, ``n_action``, ``n_create``,
``n_delete``), what a handler is given, the response fields the acceptor
fills in, either direction, and role proposals (PS3.7 D.3.3.4)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import acse
from dicomtwist.association import AcceptorFactory, Response, associate
from dicomtwist.dimse import messages as m
from dicomtwist.errors import DIMSEServiceError
from dicomtwist.status import Status
from tests.helpers import connect_in_memory, policy

SOP_CLASS = "1.2.840.10008.1.20.1"
OTHER_CLASS = "1.2.840.10008.3.1.2.3.3"
INSTANCE = "1.2.3.4.5"
SYNTAXES = [ExplicitVRLittleEndian]


def data(**values) -> Dataset:
    """A small data set."""
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


class DimseNTests(SynchronousTestCase):
    """Every DIMSE-N service from requestor to acceptor, and back."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.seen: list = []

    def handler(self, request):
        """Record the request; answer with its data set and a field or two."""
        self.seen.append((request.message, request.dataset() if request.data else None))
        return Response(Status.SUCCESS, data(PatientID="ANSWER"),
                        {"attribute_identifier_list": (0x00100020,)})

    def connect(self, handlers=None, requestor_handlers=None, **kwargs):
        """Associate in memory: ``(client, server, pump)``."""
        names = ("n-event-report", "n-get", "n-set", "n-action", "n-create", "n-delete")
        factory = AcceptorFactory(
            self.reactor, policy(contexts={SOP_CLASS: SYNTAXES, OTHER_CLASS: SYNTAXES},
                                 scu_role_classes=frozenset({SOP_CLASS})),
            handlers if handlers is not None else {name: self.handler for name in names})
        kwargs.setdefault("contexts", [(SOP_CLASS, SYNTAXES), (OTHER_CLASS, SYNTAXES)])
        d = associate(self.reactor, "127.0.0.1", 11112, handlers=requestor_handlers, **kwargs)
        client, server, pump = connect_in_memory(self.reactor, factory)
        self.assertIs(self.successResultOf(d), client)
        return client, server, pump

    def test_each_service(self) -> None:
        """Each request reaches its handler with its fields and data set; each response
        names the instance, repeats the type ID and carries the handler's fields (table)."""
        client, _, pump = self.connect()
        cases = [
            (client.n_event_report(SOP_CLASS, INSTANCE, 2, data(PatientID="E")),
             m.NEventReportRQ, dict(affected_sop_instance_uid=INSTANCE, event_type_id=2), "E",
             dict(event_type_id=2)),
            (client.n_get(SOP_CLASS, INSTANCE, (0x00100010, 0x00100020)), m.NGetRQ,
             dict(requested_sop_instance_uid=INSTANCE,
                  attribute_identifier_list=(0x00100010, 0x00100020)), None, {}),
            (client.n_set(SOP_CLASS, INSTANCE, data(PatientID="S")), m.NSetRQ,
             dict(requested_sop_instance_uid=INSTANCE), "S", {}),
            (client.n_action(SOP_CLASS, INSTANCE, 1, data(PatientID="A")), m.NActionRQ,
             dict(requested_sop_instance_uid=INSTANCE, action_type_id=1), "A",
             dict(action_type_id=1)),
            (client.n_create(SOP_CLASS, INSTANCE, data(PatientID="C")), m.NCreateRQ,
             dict(affected_sop_instance_uid=INSTANCE), "C", {}),
            (client.n_delete(SOP_CLASS, INSTANCE), m.NDeleteRQ,
             dict(requested_sop_instance_uid=INSTANCE), None, {}),
        ]
        pump.flush()
        self.assertEqual(len(self.seen), len(cases))
        for (d, rq_class, rq_fields, rq_data, rsp_fields), (message, dataset) in zip(
                cases, self.seen):
            self.assertIsInstance(message, rq_class)
            for name, value in rq_fields.items():
                self.assertEqual(getattr(message, name), value, (rq_class, name))
            self.assertEqual(dataset.PatientID if dataset else None, rq_data, rq_class)
            rsp, reply = self.successResultOf(d)
            self.assertIs(type(rsp), RESPONSES[rq_class])
            self.assertEqual((rsp.message_id_being_responded_to, rsp.status,
                              rsp.affected_sop_class_uid, rsp.affected_sop_instance_uid),
                             (message.message_id, Status.SUCCESS, SOP_CLASS, INSTANCE))
            for name, value in rsp_fields.items():
                self.assertEqual(getattr(rsp, name), value, (rq_class, name))
            if "attribute_identifier_list" in {f for f in rsp.__dataclass_fields__}:
                self.assertEqual(rsp.attribute_identifier_list, (0x00100020,))
            self.assertEqual(reply.PatientID, "ANSWER")

    def test_created_instance_uid(self) -> None:
        """An N-CREATE without a UID: the handler's UID is the response's."""
        def create(request):
            return Response(Status.SUCCESS, None, {"affected_sop_instance_uid": "1.2.3.9"})

        client, _, pump = self.connect({"n-create": create})
        d = client.n_create(SOP_CLASS)
        pump.flush()
        rsp, reply = self.successResultOf(d)
        self.assertEqual((rsp.affected_sop_instance_uid, reply), ("1.2.3.9", None))

    def test_refusals(self) -> None:
        """No handler: 0x0122; a handler's DIMSEServiceError: its status and comment;
        another SOP class than the context's: 0x0122."""
        def refuse(request):
            raise DIMSEServiceError(Status.NO_SUCH_ACTION_TYPE, "no such action")

        client, _, pump = self.connect({"n-action": refuse})
        action = client.n_action(SOP_CLASS, INSTANCE, 7)
        get = client.n_get(SOP_CLASS, INSTANCE)
        pump.flush()
        rsp, _ = self.successResultOf(action)
        self.assertEqual((rsp.status, rsp.error_comment, rsp.action_type_id),
                         (Status.NO_SUCH_ACTION_TYPE, "no such action", 7))
        self.assertEqual(self.successResultOf(get)[0].status, Status.SOP_CLASS_NOT_SUPPORTED)

    def test_no_context(self) -> None:
        """A request for a SOP class without an accepted context fails at once."""
        client, _, pump = self.connect(contexts=[(OTHER_CLASS, SYNTAXES)])
        self.failureResultOf(client.n_action(SOP_CLASS, INSTANCE, 1), ValueError)

    def test_acceptor_reports_to_requestor(self) -> None:
        """The acceptor sends an N-EVENT-REPORT on the association; the requestor's
        handler answers it."""
        received = []

        def on_report(request):
            received.append((request.message.event_type_id, request.dataset().PatientID))
            return Status.SUCCESS

        client, server, pump = self.connect(requestor_handlers={"n-event-report": on_report})
        d = server.n_event_report(SOP_CLASS, INSTANCE, 1, data(PatientID="R"))
        pump.flush()
        rsp, _ = self.successResultOf(d)
        self.assertEqual((rsp.status, rsp.event_type_id, rsp.affected_sop_instance_uid),
                         (Status.SUCCESS, 1, INSTANCE))
        self.assertEqual(received, [(1, "R")])

    def test_role_proposals(self) -> None:
        """Proposed roles go in the A-ASSOCIATE-RQ; the acceptor grants the SCP role for
        its ``scu_role_classes`` only, and the requestor's contexts say so."""
        rq = acse.build_rq("A", "B", [(SOP_CLASS, SYNTAXES), (OTHER_CLASS, SYNTAXES)],
                           scp_role_classes=[OTHER_CLASS], roles={SOP_CLASS: (False, True)})
        self.assertEqual([(r.sop_class_uid, r.scu_role, r.scp_role)
                          for r in rq.user_information.role_selections],
                         [(OTHER_CLASS, True, True), (SOP_CLASS, False, True)])
        client, _, _ = self.connect(roles={SOP_CLASS: (False, True), OTHER_CLASS: (True, True)})
        roles = {c.abstract_syntax: (c.scu_role, c.scp_role)
                 for c in client.negotiated.contexts.values()}
        self.assertEqual(roles, {SOP_CLASS: (False, True), OTHER_CLASS: (True, False)})


RESPONSES = {
    m.NEventReportRQ: m.NEventReportRSP,
    m.NGetRQ: m.NGetRSP,
    m.NSetRQ: m.NSetRSP,
    m.NActionRQ: m.NActionRSP,
    m.NCreateRQ: m.NCreateRSP,
    m.NDeleteRQ: m.NDeleteRSP,
}
