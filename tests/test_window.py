"""The Asynchronous Operations Window (PS3.7 D.3.3.3): its negotiation, and
C-MOVE/C-GET sub-operations sent while earlier ones are still answered.

In memory: the archive's factory on a real index (``tests.test_qr``), and
peers whose C-STORE handlers answer only when the test says so, so that
the number of requests outstanding at once is seen exactly.
"""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import acse, config as configuration, tap
from dicomtwist.association import AcceptorFactory
from dicomtwist.status import Status
from dicomtwist.ul.items import AsynchronousOperationsWindowSubItem
from dicomtwist.ul.pdu import AAssociateAC, AAssociateRQ
from tests.helpers import CT_IMAGE_STORAGE, VERIFICATION, connect_in_memory, policy
from tests.test_qr import (
    EXPLICIT,
    QUERY_CONTEXTS,
    STUDY_GET,
    QueryRetrieveTestCase,
    query,
)

CONTEXTS = [(VERIFICATION, [ExplicitVRLittleEndian])]


class NegotiationTests(SynchronousTestCase):
    """Proposing, answering and reading the window."""

    def negotiate(self, proposed, granted):
        """``(AC sub-item, requestor's view, acceptor's view)``."""
        rq = acse.build_rq("SCP", "SCU", CONTEXTS, window=proposed)
        rq = AAssociateRQ.decode(rq.encode()[6:])
        ac, acceptor_view = acse.negotiate_acceptor(
            rq, policy(contexts={VERIFICATION: [ExplicitVRLittleEndian]}, window=granted))
        ac = AAssociateAC.decode(ac.encode()[6:])
        return ac.user_information.async_ops_window, acse.interpret_ac(rq, ac), acceptor_view

    def test_proposed(self) -> None:
        """build_rq proposes the window in the User Information item."""
        rq = acse.build_rq("SCP", "SCU", CONTEXTS, window=(4, 1))
        self.assertEqual(rq.user_information.async_ops_window,
                         AsynchronousOperationsWindowSubItem(4, 1))
        self.assertIsNone(acse.build_rq("SCP", "SCU", CONTEXTS).user_information.async_ops_window)

    def test_granted_no_more_than_proposed(self) -> None:
        """The acceptor answers the smaller of each pair; both sides see it."""
        answer, requestor, acceptor = self.negotiate((4, 1), (2, 8))
        self.assertEqual(answer, AsynchronousOperationsWindowSubItem(2, 1))
        self.assertEqual(requestor.window, (2, 1))
        self.assertEqual(acceptor.window, (2, 1))
        self.assertEqual((requestor.outstanding(True), requestor.outstanding(False)), (2, 1))

    def test_unlimited(self) -> None:
        """0 is unlimited: the other side's number wins."""
        answer, requestor, _ = self.negotiate((0, 3), (5, 0))
        self.assertEqual(answer, AsynchronousOperationsWindowSubItem(5, 3))
        self.assertEqual(requestor.window, (5, 3))

    def test_not_granted(self) -> None:
        """An acceptor without a window does not answer: one operation each way."""
        answer, requestor, acceptor = self.negotiate((4, 4), None)
        self.assertIsNone(answer)
        self.assertEqual((requestor.window, acceptor.window), ((1, 1), (1, 1)))

    def test_not_proposed(self) -> None:
        """No proposal, no answer, whatever the acceptor would grant."""
        answer, requestor, acceptor = self.negotiate(None, (8, 8))
        self.assertIsNone(answer)
        self.assertEqual((requestor.window, acceptor.window), ((1, 1), (1, 1)))

    def test_narrower(self) -> None:
        """narrower() treats 0 as unlimited."""
        self.assertEqual([acse.narrower(a, b) for a, b in ((0, 0), (0, 3), (3, 0), (2, 5))],
                         [0, 3, 3, 2])


class HeldStores:
    """A C-STORE handler that answers only when :meth:`answer` is called."""

    def __init__(self) -> None:
        self.requests: list = []
        self.answers: list[Deferred] = []

    def __call__(self, request) -> Deferred:
        self.requests.append(request)
        d: Deferred = Deferred()
        self.answers.append(d)
        return d

    @property
    def waiting(self) -> int:
        """Requests received and not yet answered."""
        return sum(1 for d in self.answers if not d.called)

    def answer(self) -> None:
        """Answer the oldest waiting request with Success."""
        next(d for d in self.answers if not d.called).callback(Status.SUCCESS)


class WindowedMoveTests(QueryRetrieveTestCase):
    """C-MOVE to a destination with a configured ``window``."""

    def move(self, window: int, granted: tuple[int, int] | None, patient: str = "PA"):
        """Start a C-MOVE of ``patient``; returns ``(held, pump, sub pump, Deferred)``."""
        self.settings.destinations["DEST"] = configuration.Destination(
            "DEST", "127.0.0.1", 11113, window=window)
        held = HeldStores()
        destination = AcceptorFactory(
            self.reactor, policy(ae_title="DEST", window=granted,
                                 contexts={CT_IMAGE_STORAGE: [ExplicitVRLittleEndian]}),
            {"store": held})
        client, pump = self.connect()
        self.client = client
        d = client.move(query("PATIENT", PatientID=patient), "1.2.840.10008.5.1.4.1.2.1.2",
                        "DEST")
        pump.flush()
        sub, _, sub_pump = connect_in_memory(self.reactor, destination)
        self.sub = sub
        self.flush(pump, sub_pump)
        return held, pump, sub_pump, d

    def flush(self, *pumps) -> None:
        for _ in range(10):
            for pump in pumps:
                pump.flush()

    def test_window_used(self) -> None:
        """Granted 2, the archive has two C-STOREs outstanding at once, then
        one more for each answer; counts come in order and are exact."""
        held, pump, sub_pump, d = self.move(window=3, granted=(2, 1))
        self.assertEqual(self.sub.negotiated.window, (2, 1))
        self.assertEqual((len(held.requests), held.waiting), (2, 2))
        held.answer()
        self.flush(pump, sub_pump)
        self.assertEqual((len(held.requests), held.waiting), (3, 2))
        while held.waiting:
            held.answer()
            self.flush(pump, sub_pump)
        responses = self.successResultOf(d)
        self.assertEqual(len(held.requests), 4)
        self.assertEqual(sorted(r.message.affected_sop_instance_uid for r in held.requests),
                         ["1.2.3.1.1.1.1", "1.2.3.1.1.1.2", "1.2.3.1.1.2.1", "1.2.3.1.2.1.1"])
        self.assertEqual([rsp.status for rsp, _ in responses], [Status.PENDING] * 4
                         + [Status.SUCCESS])
        self.assertEqual([rsp.number_of_remaining_sub_operations for rsp, _ in responses[:4]],
                         [3, 2, 1, 0])
        self.assertEqual(responses[-1][0].number_of_completed_sub_operations, 4)
        self.assertTrue(self.sub.machine.is_closed)
        self.release(self.client, pump)

    def test_not_granted(self) -> None:
        """A destination that does not answer the proposal gets one C-STORE at a time."""
        held, pump, sub_pump, d = self.move(window=4, granted=None)
        self.assertIsNotNone(self.sub.associate_rq.user_information.async_ops_window)
        self.assertEqual(self.sub.negotiated.window, (1, 1))
        for count in range(1, 5):
            self.assertEqual((len(held.requests), held.waiting), (count, 1))
            held.answer()
            self.flush(pump, sub_pump)
        self.assertEqual(self.successResultOf(d)[-1][0].status, Status.SUCCESS)
        self.release(self.client, pump)

    def test_window_of_one_not_proposed(self) -> None:
        """The default window (1) proposes nothing."""
        held, pump, sub_pump, d = self.move(window=1, granted=(8, 8))
        self.assertIsNone(self.sub.associate_rq.user_information.async_ops_window)
        self.assertEqual(held.waiting, 1)
        while held.waiting:
            held.answer()
            self.flush(pump, sub_pump)
        self.assertEqual(self.successResultOf(d)[-1][0].status, Status.SUCCESS)
        self.release(self.client, pump)

    def test_cancel_waits_for_sent(self) -> None:
        """A C-CANCEL stops new sub-operations; the two already sent are
        answered and counted in the final Cancel response."""
        held, pump, sub_pump, d = self.move(window=2, granted=(2, 1))
        self.assertEqual(held.waiting, 2)
        self.client.cancel(d)
        self.flush(pump, sub_pump)
        while held.waiting:
            held.answer()
            self.flush(pump, sub_pump)
        responses = self.successResultOf(d)
        self.assertEqual(len(held.requests), 2)
        final = responses[-1][0]
        self.assertEqual(final.status, Status.CANCEL)
        self.assertEqual((final.number_of_completed_sub_operations,
                          final.number_of_remaining_sub_operations), (2, 2))
        self.release(self.client, pump)


class WindowedGetTests(QueryRetrieveTestCase):
    """C-GET from an archive granting a window (``async_operations``)."""

    def get(self, window: tuple[int, int] | None, async_operations: int = 4):
        """Start a C-GET of study 1.2.3.1.1 (3 instances)."""
        self.settings.async_operations = async_operations
        self.factory = tap.build_factory(self.settings, self.reactor, self.pool, self.index)
        held = HeldStores()
        client, pump = self.connect(QUERY_CONTEXTS + [(CT_IMAGE_STORAGE, EXPLICIT)],
                                    scp_role_classes=[CT_IMAGE_STORAGE], window=window)
        d = client.get(query("STUDY", StudyInstanceUID="1.2.3.1.1"), STUDY_GET, on_store=held)
        pump.flush()
        return client, held, pump, d

    def test_performed_window_used(self) -> None:
        """The SCU performs 2 at once: the archive sends 2 C-STOREs before an answer."""
        client, held, pump, d = self.get(window=(1, 2))
        self.assertEqual(client.negotiated.window, (1, 2))
        self.assertEqual(held.waiting, 2)
        while held.waiting:
            held.answer()
            pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual(len(held.requests), 3)
        self.assertEqual([rsp.status for rsp, _ in responses], [Status.PENDING] * 3
                         + [Status.SUCCESS])
        self.release(client, pump)

    def test_default_one_at_a_time(self) -> None:
        """Without a window (archive default ``async_operations`` 1), one at a time."""
        client, held, pump, d = self.get(window=(1, 2), async_operations=1)
        self.assertEqual(client.negotiated.window, (1, 1))
        for count in range(1, 4):
            self.assertEqual((len(held.requests), held.waiting), (count, 1))
            held.answer()
            pump.flush()
        self.assertEqual(self.successResultOf(d)[-1][0].status, Status.SUCCESS)
        self.release(client, pump)


class ConfigTests(SynchronousTestCase):
    """The ``window`` of a destination and the archive's ``async_operations``."""

    def load(self, text: str) -> configuration.Config:
        path = self.mktemp()
        with open(path, "w") as fp:
            fp.write(text)
        return configuration.load(path)

    def test_keys(self) -> None:
        """Both keys are read; their defaults are 1 (no window)."""
        config = self.load("[DEFAULT]\nasync_operations: 8\n\n[PACS]\naddress: 10.0.0.1\n"
                           "port: 104\nwindow: 4\n\n[OTHER]\naddress: 10.0.0.2\nport: 104\n")
        self.assertEqual(config.async_operations, 8)
        self.assertEqual(config.destinations["PACS"].window, 4)
        self.assertEqual(config.destinations["OTHER"].window, 1)
        self.assertEqual(configuration.Config().async_operations, 1)

    def test_bad_window(self) -> None:
        """A window below 1 names the destination and the key."""
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load("[PACS]\naddress: 10.0.0.1\nport: 104\nwindow: 0\n")
        self.assertIn("[PACS]: invalid window '0'", str(caught.exception))

    def test_policy(self) -> None:
        """The archive's policy grants async_operations both ways, or nothing at 1."""
        settings = configuration.Config(async_operations=3)
        factory = tap.build_factory(settings, Clock(), None, _NoIndex())
        self.assertEqual(factory.policy.window, (3, 3))
        factory = tap.build_factory(configuration.Config(), Clock(), None, _NoIndex())
        self.assertIsNone(factory.policy.window)


class _NoIndex:
    """An index nobody asks anything while the factory is built."""
