"""Tests for dicomtwist.association: requestor and acceptor joined in memory."""

from __future__ import annotations

import os

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import events
from dicomtwist.association import (
    AcceptorFactory,
    Association,
    FileDataSet,
    Response,
    ServiceRequest,
    associate,
    file_dataset,
)
from dicomtwist.association.handlers import as_response, status_response
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.codec import decode_dataset, encode_command, fragment
from dicomtwist.errors import AssociationAborted, AssociationRejected, DIMSEServiceError
from dicomtwist.services.echo import handle_echo
from dicomtwist.status import Status
from dicomtwist.ul.framing import PDUFramer
from dicomtwist.ul.fsm import State
from dicomtwist.ul.pdu import AAbort, decode_pdu
from tests.helpers import (
    CT_IMAGE_STORAGE,
    UNCOMPRESSED,
    VERIFICATION,
    connect_in_memory,
    ct_dataset,
    policy,
)

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

#: Everything the tests' acceptor supports.
ALL_CONTEXTS = {
    VERIFICATION: UNCOMPRESSED,
    CT_IMAGE_STORAGE: UNCOMPRESSED,
    STUDY_FIND: UNCOMPRESSED,
    STUDY_MOVE: UNCOMPRESSED,
    STUDY_GET: UNCOMPRESSED,
}
#: What the tests' requestor proposes.
PROPOSED = [(uid, UNCOMPRESSED) for uid in ALL_CONTEXTS]


def identifier(**values) -> Dataset:
    """A C-FIND/C-MOVE/C-GET identifier with the given attributes."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def statuses(responses: list) -> list[int]:
    """The statuses of ``[(message, dataset), ...]``."""
    return [message.status for message, _ in responses]


class PDURecorder:
    """Split the bytes a protocol receives into PDUs, noting each P-DATA-TF length.

    Installed in front of a protocol's ``dataReceived``, so it sees exactly
    what the peer wrote.
    """

    def __init__(self, proto: Association) -> None:
        self.framer = PDUFramer(0)
        self.pdata_lengths: list[int] = []
        #: The P-DATA-TF PDUs' bodies.
        self.pdata: list[bytes] = []
        self.types: list[int] = []
        receive = proto.dataReceived

        def data_received(data: bytes) -> None:
            for pdu_type, body in self.framer.feed(data):
                self.types.append(pdu_type)
                if pdu_type == 0x04:
                    self.pdata_lengths.append(len(body))
                    self.pdata.append(bytes(body))
            receive(data)

        proto.dataReceived = data_received  # type: ignore[method-assign]


class InMemoryTestCase(SynchronousTestCase):
    """Base: a requestor from ``associate`` joined to an AcceptorFactory's association."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def connect(self, handlers: dict, *, acceptor_policy=None, factory_kwargs=None,
                **associate_kwargs):
        """Associate in memory.

        :param handlers: the acceptor's handlers.
        :param acceptor_policy: the acceptor's policy (default: ALL_CONTEXTS).
        :param factory_kwargs: extra AcceptorFactory arguments.
        :param associate_kwargs: extra ``associate`` arguments.
        :returns: ``(established Deferred, client, server, pump)``.
        """
        ours = acceptor_policy or policy(contexts=ALL_CONTEXTS)
        factory = AcceptorFactory(self.reactor, ours, handlers, **(factory_kwargs or {}))
        associate_kwargs.setdefault("contexts", PROPOSED)
        d = associate(self.reactor, "127.0.0.1", 11112, **associate_kwargs)
        client, server, pump = connect_in_memory(self.reactor, factory)
        return d, client, server, pump

    def established(self, handlers: dict, **kwargs):
        """Associate in memory and return ``(client, server, pump)``, established."""
        d, client, server, pump = self.connect(handlers, **kwargs)
        self.assertIs(self.successResultOf(d), client)
        self.assertEqual(server.machine.state, State.STA6)
        return client, server, pump

    def release(self, client: Association, server: Association, pump) -> None:
        """Release the association and check both ends closed cleanly."""
        done = client.release()
        pump.flush()
        self.successResultOf(done)
        self.assertEqual((client.machine.state, server.machine.state), (State.STA1, State.STA1))


class EchoStoreTests(InMemoryTestCase):
    """C-ECHO and C-STORE from requestor to acceptor."""

    def test_echo(self) -> None:
        """A C-ECHO is answered with Success."""
        client, server, pump = self.established({"echo": handle_echo})
        d = client.echo()
        pump.flush()
        rsp = self.successResultOf(d)
        self.assertIsInstance(rsp, m.CEchoRSP)
        self.assertEqual(rsp.status, Status.SUCCESS)
        self.release(client, server, pump)

    def test_repeated_echo(self) -> None:
        """C-ECHOs repeated on a second association (the same command set
        bytes: the same request message, and the kept response and PDUs)
        are answered as the first ones: each response names its request's
        message ID, and its PDUs are the ones a fresh encoding gives."""
        answers = []
        for _ in range(2):
            client, server, pump = self.established({"echo": handle_echo})
            recorder = PDURecorder(client)
            for _ in range(2):
                d = client.echo()
                pump.flush()
                answers.append(self.successResultOf(d))
            self.assertEqual(recorder.types, [0x04, 0x04])
            context_id = server.negotiated.by_abstract_syntax[VERIFICATION][0].context_id
            self.assertEqual(recorder.pdata, [
                pdu[6:] for rsp in answers[-2:]
                for pdu in fragment(context_id, encode_command(rsp, False), True,
                                    server.negotiated.peer_max_pdu)])
            self.release(client, server, pump)
        self.assertEqual([(a.message_id_being_responded_to, a.status, a.affected_sop_class_uid)
                          for a in answers], [(1, 0, VERIFICATION), (2, 0, VERIFICATION)] * 2)

    def test_store(self) -> None:
        """A stored data set reaches the handler as bytes decoding to the same data set."""
        received = []

        def handle_store(request):
            received.append(request)
            return Status.SUCCESS

        client, server, pump = self.established({"store": handle_store})
        ds = ct_dataset(1000)
        d = client.store(ds)
        pump.flush()
        rsp = self.successResultOf(d)
        self.assertEqual((rsp.status, rsp.affected_sop_instance_uid),
                         (Status.SUCCESS, ds.SOPInstanceUID))
        [request] = received
        self.assertIsInstance(request.data, bytes)
        self.assertEqual(request.message.affected_sop_instance_uid, ds.SOPInstanceUID)
        got = decode_dataset(request.data, request.context.transfer_syntax)
        self.assertEqual(got, ds)
        self.assertEqual(request.dataset(), ds)
        self.release(client, server, pump)

    def _store_big(self, max_pdu: int) -> None:
        """Store a 2 MB data set to an acceptor whose maximum PDU is ``max_pdu``."""
        received = []
        client, server, pump = self.established(
            {"store": lambda request: received.append(request.data)},
            acceptor_policy=policy(contexts=ALL_CONTEXTS, max_pdu=max_pdu))
        self.assertEqual(client.negotiated.peer_max_pdu, max_pdu)
        recorder = PDURecorder(server)
        ds = ct_dataset(1024 * 1024)
        self.assertEqual(len(ds.PixelData), 2 * 1024 * 1024)
        d = client.store(ds)
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)
        self.assertEqual(decode_dataset(received[0], ImplicitVRLittleEndian), ds)
        if max_pdu:
            self.assertTrue(all(length <= max_pdu for length in recorder.pdata_lengths),
                            max(recorder.pdata_lengths))
            self.assertGreater(len(recorder.pdata_lengths), 2 * 1024 * 1024 // max_pdu)
        else:
            # Unlimited: the data set may go in one PDU.
            self.assertGreaterEqual(max(recorder.pdata_lengths), 2 * 1024 * 1024)
        self.release(client, server, pump)

    def test_store_big_max_pdu_4096(self) -> None:
        """A 2 MB data set goes in P-DATA-TF PDUs of at most 4096 bytes when the peer says 4096."""
        self._store_big(4096)

    def test_store_big_max_pdu_16382(self) -> None:
        """A 2 MB data set goes in P-DATA-TF PDUs of at most 16382 bytes when the peer says 16382."""
        self._store_big(16382)

    def test_store_big_max_pdu_unlimited(self) -> None:
        """A 2 MB data set arrives intact when the peer's maximum is 0 (unlimited)."""
        self._store_big(0)

    def test_store_file_from_disk(self) -> None:
        """A Part 10 file sent as a FileDataSet arrives byte-identical to the data set in the file."""
        path = self.mktemp() + ".dcm"
        ds = ct_dataset(100_000)
        ds.save_as(path, enforce_file_format=True)
        source = file_dataset(path)
        self.assertEqual(source.transfer_syntax, ExplicitVRLittleEndian)
        with open(path, "rb") as f:
            expected = f.read()[source.offset:]
        self.assertEqual(len(expected), source.length)
        received = []
        client, server, pump = self.established(
            {"store": lambda request: received.append(request)},
            acceptor_policy=policy(contexts={CT_IMAGE_STORAGE: (ExplicitVRLittleEndian,)},
                                   max_pdu=4096),
            contexts=[(CT_IMAGE_STORAGE, UNCOMPRESSED)])
        recorder = PDURecorder(server)
        d = client.store(source)
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)
        [request] = received
        self.assertEqual(request.context.transfer_syntax, ExplicitVRLittleEndian)
        self.assertEqual(request.data, expected)
        self.assertEqual(request.message.affected_sop_instance_uid, ds.SOPInstanceUID)
        self.assertTrue(all(length <= 4096 for length in recorder.pdata_lengths))
        self.assertIsNone(client.transport.producer)
        # A path works as well as a FileDataSet.
        d = client.store(path)
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)
        self.assertEqual(received[1].data, expected)
        self.release(client, server, pump)

    def test_store_file_other_syntax_reencoded(self) -> None:
        """A file whose transfer syntax was not accepted is decoded and sent in the accepted one."""
        path = self.mktemp() + ".dcm"
        ds = ct_dataset(1000)
        ds.save_as(path, enforce_file_format=True)
        received = []
        client, server, pump = self.established(
            {"store": lambda request: received.append(request)},
            contexts=[(CT_IMAGE_STORAGE, (ImplicitVRLittleEndian,))])
        d = client.store(FileDataSet(**vars(file_dataset(path))))
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)
        self.assertEqual(received[0].context.transfer_syntax, ImplicitVRLittleEndian)
        self.assertEqual(received[0].dataset(), ds)

    def test_store_unaccepted_sop_class(self) -> None:
        """Storing a SOP class without an accepted context fails locally with ValueError."""
        client, server, pump = self.established({})
        ds = ct_dataset(16, SOPClassUID=MR_IMAGE_STORAGE)
        self.failureResultOf(client.store(ds), ValueError)

    def test_handler_service_error(self) -> None:
        """A handler raising DIMSEServiceError(0xA700) answers with that status and comment."""
        def handle_store(request):
            raise DIMSEServiceError(Status.OUT_OF_RESOURCES, "disk full")

        client, server, pump = self.established({"store": handle_store})
        d = client.store(ct_dataset())
        pump.flush()
        rsp = self.successResultOf(d)
        self.assertEqual((rsp.status, rsp.error_comment), (0xA700, "disk full"))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.release(client, server, pump)

    def test_handler_unexpected_error(self) -> None:
        """A handler raising ValueError answers 0xC001 and the failure is logged."""
        def handle_store(request):
            raise ValueError("bug")

        client, server, pump = self.established({"store": handle_store})
        d = client.store(ct_dataset())
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, 0xC001)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.release(client, server, pump)

    def test_async_handler(self) -> None:
        """A handler returning a Deferred is answered when the Deferred fires."""
        later: Deferred = Deferred()
        client, server, pump = self.established({"store": lambda request: later})
        d = client.store(ct_dataset())
        pump.flush()
        self.assertNoResult(d)
        later.callback(Status.SUCCESS)
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)

    def test_unsupported_service(self) -> None:
        """A request for a service without a handler is answered 0x0122."""
        client, server, pump = self.established({"store": lambda request: 0})
        d = client.echo()
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, 0x0122)
        self.release(client, server, pump)


class SynchronousServingTests(InMemoryTestCase):
    """A single-response handler that returns its result is answered at
    once, without a coroutine or Deferred, exactly as one answering later."""

    def answer(self, handler, request=None, service: str = "echo") -> tuple[list[bytes], object]:
        """Send one request (a C-ECHO, or ``request(client)``) to an
        acceptor with ``handler``; return the P-DATA-TF bodies the
        requestor received and its Deferred's result (or None)."""
        client, server, pump = self.established({service: handler})
        recorder = PDURecorder(client)
        d = request(client) if request is not None else client.echo()
        pump.flush()
        results: list = []
        d.addBoth(results.append)
        return recorder.pdata, (results[0] if results else None)

    def test_served_at_once(self) -> None:
        """A handler's plain result leaves nothing to await; a Deferred or
        a coroutine leaves what remains, answered when it comes."""
        client, server, pump = self.established({"echo": handle_echo})
        context = server.negotiated.by_abstract_syntax[VERIFICATION][0]
        message = m.CEchoRQ(message_id=7, affected_sop_class_uid=VERIFICATION)
        request = ServiceRequest(server, message, context)
        self.assertIsNone(server._serve(request))
        later: Deferred = Deferred()
        server.handlers = {"echo": lambda request: later}
        rest = Deferred.fromCoroutine(server._serve(request))
        self.assertNoResult(rest)
        later.callback(Status.SUCCESS)
        self.assertIsNone(self.successResultOf(rest))

        async def coroutine_handler(request):
            return Status.SUCCESS

        server.handlers = {"echo": coroutine_handler}
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(server._serve(request))))

    def test_status_responses_shared(self) -> None:
        """A status alone (None is Success) is one shared, immutable
        response per status; other results are responses of their own."""
        self.assertIs(as_response(None), as_response(Status.SUCCESS))
        self.assertIs(as_response(0), as_response(None))
        self.assertIs(status_response(0x0110), as_response(0x0110))
        shared = as_response(0xA700)
        self.assertEqual((shared.status, shared.dataset, dict(shared.fields)), (0xA700, None, {}))
        with self.assertRaises(TypeError):
            shared.fields["error_comment"] = "x"  # type: ignore[index]
        ds = Dataset()
        self.assertEqual(as_response(ds), Response(Status.PENDING, ds))
        self.assertEqual(as_response((0xFF00, ds)), Response(0xFF00, ds))
        given = Response(0, None, {"error_comment": "x"})
        self.assertIs(as_response(given), given)
        self.assertRaises(TypeError, as_response, object())

    def test_same_bytes_as_later_answers(self) -> None:
        """A status answered at once (C-ECHO Success, a failure status, a
        status with a comment) puts the same bytes on the wire as the same
        result given through a fired Deferred, a Deferred fired later, or a
        coroutine."""
        for result in (Status.SUCCESS, 0x0110, Response(0x0110, None, {"error_comment": "x"})):
            async def coroutine_handler(request, result=result):
                return result

            pending: list[Deferred] = []

            def later_handler(request):
                pending.append(Deferred())
                return pending[-1]

            answers = [self.answer(lambda request, result=result: result),
                       self.answer(lambda request, result=result: succeed(result)),
                       self.answer(coroutine_handler)]
            client, server, pump = self.established({"echo": later_handler})
            recorder = PDURecorder(client)
            d = client.echo()
            pump.flush()
            self.assertEqual(recorder.pdata, [])
            pending[0].callback(result)
            pump.flush()
            answers.append((recorder.pdata, self.successResultOf(d)))
            pdata, rsp = answers[0]
            self.assertEqual(rsp.status, int(getattr(result, "status", result)))
            self.assertEqual(len(pdata), 1)
            for other in answers[1:]:
                self.assertEqual(other[0], pdata)

    def test_failures_give_their_status(self) -> None:
        """A handler failing at once answers as one failing later: a
        DIMSEServiceError its status and comment, anything else (raised or
        returned as a Failure) 0xC001, logged."""
        def service_error(request):
            raise DIMSEServiceError(Status.OUT_OF_RESOURCES, "disk full")

        def bug(request):
            raise ValueError("bug")

        pdata, rsp = self.answer(service_error)
        self.assertEqual((rsp.status, rsp.error_comment), (0xA700, "disk full"))
        self.assertEqual(pdata, self.answer(lambda request: fail(
            DIMSEServiceError(Status.OUT_OF_RESOURCES, "disk full")))[0])
        self.assertEqual(self.flushLoggedErrors(), [])
        pdata, rsp = self.answer(bug)
        self.assertEqual(rsp.status, Status.UNABLE_TO_PROCESS)
        self.assertEqual(self.answer(lambda request: Failure(ValueError("bug")))[0], pdata)
        self.assertEqual(self.answer(lambda request: fail(ValueError("bug")))[0], pdata)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 3)

    def test_unusable_result_logged(self) -> None:
        """A result that is no status is our bug: logged, no response, and
        the association is not left busy."""
        client, server, pump = self.established({"echo": lambda request: object()})
        d = client.echo()
        pump.flush()
        self.assertNoResult(d)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertFalse(server.is_busy())
        client.abort()
        pump.flush()
        self.failureResultOf(d, AssociationAborted)

    def test_event_published(self) -> None:
        """An operation answered at once is published as one answered
        later: once, when its response is written, with its facts."""
        seen: list = []
        self.addCleanup(events.bus.subscribe(seen.append))
        later: Deferred = Deferred()
        for handler in (handle_echo, lambda request: later):
            del seen[:]
            client, server, pump = self.established({"echo": handler})
            d = client.echo()
            pump.flush()
            if not later.called and handler is not handle_echo:
                self.assertEqual([e for e in seen if isinstance(e, events.OperationCompleted)],
                                 [])
                later.callback(Status.SUCCESS)
                pump.flush()
            self.successResultOf(d)
            [completed] = [e for e in seen if isinstance(e, events.OperationCompleted)]
            self.assertEqual(
                (completed.association_id, completed.service, completed.status,
                 completed.sop_class_uid, completed.peer_host, completed.calling_ae),
                (server.association_id, "echo", 0, VERIFICATION, "127.0.0.1", "DICOMTWIST"))

    def test_queued_behind_a_message_being_sent(self) -> None:
        """A response ready at once while another message is being sent
        waits its turn; it is published once written."""
        seen: list = []
        self.addCleanup(events.bus.subscribe(seen.append))
        client, server, pump = self.established({"echo": handle_echo})
        server._sending = True
        d = client.echo()
        pump.flush()
        self.assertNoResult(d)
        self.assertTrue(server.is_busy())
        self.assertEqual([e for e in seen if isinstance(e, events.OperationCompleted)], [])
        server._sending = False
        server._pump()
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)
        self.assertFalse(server.is_busy())
        self.assertEqual(len([e for e in seen if isinstance(e, events.OperationCompleted)]), 1)
        self.release(client, server, pump)


class QueryRetrieveTests(InMemoryTestCase):
    """C-FIND, C-GET and C-MOVE with several responses, and C-CANCEL."""

    def test_find_list(self) -> None:
        """A find handler returning three data sets gives three pending responses, then Success."""
        matches = [identifier(PatientID=f"P{i}") for i in range(3)]
        client, server, pump = self.established({"find": lambda request: matches})
        seen = []
        d = client.find(identifier(PatientID="*"), STUDY_FIND,
                        on_response=lambda message, ds: seen.append(message.status))
        pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual(statuses(responses), [0xFF00, 0xFF00, 0xFF00, 0x0000])
        self.assertEqual([ds.PatientID for _, ds in responses[:3]], ["P0", "P1", "P2"])
        self.assertIsNone(responses[3][1])
        self.assertEqual(seen, statuses(responses))
        self.release(client, server, pump)

    def test_find_receives_identifier(self) -> None:
        """The find handler sees the identifier the requestor sent."""
        queries = []

        def handle_find(request):
            queries.append(request.dataset())
            return []

        client, server, pump = self.established({"find": handle_find})
        d = client.find(identifier(PatientID="ABC*"), STUDY_FIND)
        pump.flush()
        self.assertEqual(statuses(self.successResultOf(d)), [0x0000])
        self.assertEqual(queries[0].PatientID, "ABC*")

    def test_find_async_generator(self) -> None:
        """A find handler that is an async generator streams its results."""
        async def handle_find(request):
            for i in range(2):
                yield identifier(PatientID=f"A{i}")

        client, server, pump = self.established({"find": handle_find})
        d = client.find(identifier(), STUDY_FIND)
        pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual(statuses(responses), [0xFF00, 0xFF00, 0x0000])
        self.assertEqual([ds.PatientID for _, ds in responses[:2]], ["A0", "A1"])

    def test_find_many_yields_to_reactor(self) -> None:
        """A long result set pauses every yield_every responses and completes as the clock runs."""
        client, server, pump = self.established(
            {"find": lambda request: [identifier(PatientID=str(i)) for i in range(40)]})
        d = client.find(identifier(), STUDY_FIND)
        pump.flush()
        self.assertNoResult(d)
        self.reactor.advance(0)
        pump.flush()
        self.assertEqual(len(self.successResultOf(d)), 41)

    def _find_cancelled(self, handle_find, gates: list[Deferred]) -> list:
        """Run a find, cancel it after the first match, then open every gate.

        :returns: the find's responses.
        """
        client, server, pump = self.established({"find": handle_find})
        d = client.find(identifier(), STUDY_FIND)
        pump.flush()
        self.assertNoResult(d)
        gates[0].callback(None)
        pump.flush()
        self.assertNoResult(d)
        client.cancel(d)
        pump.flush()
        for gate in gates[1:]:
            if not gate.called:
                gate.callback(None)
            pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual(server._serving, {})
        self.release(client, server, pump)
        return responses

    def test_find_cancel(self) -> None:
        """A handler that stops when ``request.cancelled`` is set ends the find with Cancel (0xFE00)."""
        gates = [Deferred() for _ in range(3)]
        opened = []

        async def handle_find(request):
            for i, gate in enumerate(gates):
                await gate
                if request.cancelled:
                    return
                opened.append(i)
                yield identifier(PatientID=f"S{i}")

        responses = self._find_cancelled(handle_find, gates)
        self.assertEqual(statuses(responses), [0xFF00, 0xFE00])
        self.assertEqual(opened, [0])

    def test_find_cancel_ignored_by_handler(self) -> None:
        """Matches a handler yields after the cancel are dropped and the find ends with Cancel."""
        gates = [Deferred() for _ in range(3)]

        async def handle_find(request):
            for i, gate in enumerate(gates):
                await gate
                yield identifier(PatientID=f"S{i}")

        responses = self._find_cancelled(handle_find, gates)
        self.assertEqual(statuses(responses), [0xFF00, 0xFE00])

    def test_cancel_unknown_request(self) -> None:
        """Cancelling a request that is not outstanding does nothing."""
        client, server, pump = self.established({"find": lambda request: []})
        client.cancel(12345)
        pump.flush()
        self.assertEqual(client.machine.state, State.STA6)

    def test_find_handler_service_error(self) -> None:
        """A find handler failing with DIMSEServiceError(0xA700) ends the find with that status."""
        def handle_find(request):
            raise DIMSEServiceError(0xA700)

        client, server, pump = self.established({"find": handle_find})
        d = client.find(identifier(), STUDY_FIND)
        pump.flush()
        self.assertEqual(statuses(self.successResultOf(d)), [0xA700])

    def test_find_generator_fails_midway(self) -> None:
        """A find generator raising ValueError after one match ends with 0xC001, logged."""
        def handle_find(request):
            yield identifier(PatientID="X")
            raise ValueError("bug")

        client, server, pump = self.established({"find": handle_find})
        d = client.find(identifier(), STUDY_FIND)
        pump.flush()
        self.assertEqual(statuses(self.successResultOf(d)), [0xFF00, 0xC001])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_get_with_store_sub_operations(self) -> None:
        """A C-GET's C-STORE sub-operations come back on the same association to the requestor."""
        instances = [ct_dataset(64) for _ in range(2)]

        async def handle_get(request):
            completed = 0
            for index, ds in enumerate(instances):
                rsp = await request.association.store(ds)
                self.assertEqual(rsp.status, Status.SUCCESS)
                completed += 1
                yield Response(Status.PENDING, None, {
                    "number_of_remaining_sub_operations": len(instances) - index - 1,
                    "number_of_completed_sub_operations": completed,
                    "number_of_failed_sub_operations": 0,
                    "number_of_warning_sub_operations": 0,
                })
            yield Response(Status.SUCCESS, None, {
                "number_of_completed_sub_operations": completed,
                "number_of_failed_sub_operations": 0,
                "number_of_warning_sub_operations": 0,
            })

        stored = []

        def on_store(request):
            stored.append(request.dataset())
            return Status.SUCCESS

        client, server, pump = self.established(
            {"get": handle_get},
            acceptor_policy=policy(contexts=ALL_CONTEXTS,
                                   scu_role_classes=frozenset({CT_IMAGE_STORAGE})),
            scp_role_classes=[CT_IMAGE_STORAGE])
        ct_context = client.context_for(CT_IMAGE_STORAGE)
        self.assertTrue(ct_context.scp_role)
        d = client.get(identifier(StudyInstanceUID="1.2.3"), STUDY_GET, on_store=on_store)
        pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual(statuses(responses), [0xFF00, 0xFF00, 0x0000])
        self.assertEqual([r.number_of_remaining_sub_operations for r, _ in responses[:2]], [1, 0])
        self.assertEqual(responses[-1][0].number_of_completed_sub_operations, 2)
        self.assertEqual(stored, instances)
        self.release(client, server, pump)

    def test_move_responses_with_counts(self) -> None:
        """A move handler's Response objects carry their sub-operation counts to the requestor."""
        destinations = []

        def handle_move(request):
            destinations.append(request.message.move_destination)
            return [
                Response(Status.PENDING, None, {"number_of_remaining_sub_operations": 1,
                                                "number_of_completed_sub_operations": 1,
                                                "number_of_failed_sub_operations": 0,
                                                "number_of_warning_sub_operations": 0}),
                Response(0xB000, None, {"number_of_completed_sub_operations": 1,
                                        "number_of_failed_sub_operations": 1,
                                        "number_of_warning_sub_operations": 0}),
            ]

        client, server, pump = self.established({"move": handle_move})
        d = client.move(identifier(StudyInstanceUID="1.2.3"), STUDY_MOVE, "DEST")
        pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual(destinations, ["DEST"])
        self.assertEqual(statuses(responses), [0xFF00, 0xB000])
        first, last = responses[0][0], responses[1][0]
        self.assertEqual((first.number_of_remaining_sub_operations,
                          first.number_of_completed_sub_operations), (1, 1))
        self.assertEqual((last.number_of_completed_sub_operations,
                          last.number_of_failed_sub_operations), (1, 1))
        self.release(client, server, pump)


class LifecycleTests(InMemoryTestCase):
    """Release, abort, rejection, timeouts and lost connections."""

    def test_release(self) -> None:
        """Release by the requestor closes both ends and fires both ``closed`` Deferreds."""
        client, server, pump = self.established({})
        d = client.release()
        pump.flush()
        self.successResultOf(d)
        self.successResultOf(client.closed)
        self.successResultOf(server.closed)
        self.assertEqual((client.machine.state, server.machine.state), (State.STA1, State.STA1))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_release_collision(self) -> None:
        """When both sides release at once, both end in Sta1 and both Deferreds fire."""
        client, server, pump = self.established({})
        from_client = client.release()
        from_server = server.release()
        pump.flush()
        self.successResultOf(from_client)
        self.successResultOf(from_server)
        self.assertEqual((client.machine.state, server.machine.state), (State.STA1, State.STA1))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_release_when_not_established(self) -> None:
        """Releasing twice fails the second time with InvalidEventError, locally."""
        from dicomtwist.errors import InvalidEventError
        client, server, pump = self.established({})
        first = client.release()
        self.failureResultOf(client.release(), InvalidEventError)
        pump.flush()
        self.successResultOf(first)

    def test_abort(self) -> None:
        """An abort by the requestor reaches the acceptor's on_abort; both ends close."""
        client, server, pump = self.established({})
        aborts = []
        server.on_abort = aborts.append  # type: ignore[method-assign]
        d = client.abort()
        pump.flush()
        self.successResultOf(d)
        self.assertEqual(aborts, [AAbort(0, 0)])
        self.successResultOf(server.closed)
        self.assertTrue(server.machine.is_closed)
        self.assertTrue(client.machine.is_closed)

    def test_abort_fails_outstanding(self) -> None:
        """Aborting fails every outstanding request with AssociationAborted."""
        client, server, pump = self.established({"store": lambda request: Deferred()})
        d = client.store(ct_dataset())
        pump.flush()
        client.abort()
        pump.flush()
        self.failureResultOf(d, AssociationAborted)

    def test_rejected(self) -> None:
        """A rejected association fails with AssociationRejected carrying result, source and reason."""
        d, client, server, pump = self.connect(
            {}, acceptor_policy=policy(require_called_aet=True), called_ae_title="WRONG")
        failure = self.failureResultOf(d, AssociationRejected)
        self.assertEqual((failure.value.result, failure.value.source, failure.value.reason),
                         (1, 1, 7))
        self.assertTrue(client.machine.is_closed)
        self.assertTrue(server.machine.is_closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_common_context(self) -> None:
        """An association with no accepted context is established but every request fails locally."""
        client, server, pump = self.established(
            {}, contexts=[(MR_IMAGE_STORAGE, UNCOMPRESSED)])
        self.assertEqual(client.negotiated.contexts, {})
        self.failureResultOf(client.echo(), ValueError)
        self.release(client, server, pump)

    def test_acse_timeout(self) -> None:
        """A peer that never answers the RQ is aborted after the ACSE timeout: AssociationAborted."""
        d = associate(self.reactor, "127.0.0.1", 11112, contexts=PROPOSED, acse_timeout=5)
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[0]
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 11112))
        transport = StringTransport()
        client.makeConnection(transport)
        self.assertEqual(transport.value()[:1], b"\x01")
        transport.clear()
        self.reactor.advance(4)
        self.assertNoResult(d)
        self.reactor.advance(1)
        self.assertEqual(transport.value(), AAbort(0, 0).encode())
        self.assertTrue(transport.disconnecting)
        client.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(d, AssociationAborted)
        self.assertIn("ACSE timeout", str(failure.value))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_connection_refused(self) -> None:
        """A failed connection attempt fails ``associate`` with the connection error."""
        from twisted.internet.error import ConnectionRefusedError
        d = associate(self.reactor, "127.0.0.1", 11112, contexts=PROPOSED)
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)

    def test_dimse_timeout(self) -> None:
        """A request unanswered for dimse_timeout seconds aborts the association and fails."""
        client, server, pump = self.established({"store": lambda request: Deferred()},
                                                dimse_timeout=10)
        d = client.store(ct_dataset())
        pump.flush()
        self.reactor.advance(9)
        pump.flush()
        self.assertNoResult(d)
        self.reactor.advance(1)
        pump.flush()
        failure = self.failureResultOf(d, AssociationAborted)
        self.assertIn("DIMSE timeout", str(failure.value))
        self.assertTrue(client.machine.is_closed)
        self.assertTrue(server.machine.is_closed)

    def test_pending_responses_rearm_dimse_timer(self) -> None:
        """Each pending response restarts the DIMSE timer, so a slow find does not time out."""
        gates = [Deferred() for _ in range(3)]

        async def handle_find(request):
            for gate in gates:
                await gate
                yield identifier()

        client, server, pump = self.established({"find": handle_find}, dimse_timeout=10)
        d = client.find(identifier(), STUDY_FIND)
        pump.flush()
        for gate in gates:
            self.reactor.advance(8)
            gate.callback(None)
            pump.flush()
        self.assertEqual(statuses(self.successResultOf(d)), [0xFF00] * 3 + [0])

    def test_connection_lost_mid_request(self) -> None:
        """Losing the connection with a request outstanding fails it with AssociationAborted."""
        client, server, pump = self.established({"store": lambda request: Deferred()})
        d = client.store(ct_dataset())
        pump.flush()
        client.connectionLost(Failure(ConnectionLost()))
        failure = self.failureResultOf(d, AssociationAborted)
        self.assertIn("association ended", str(failure.value))
        self.successResultOf(client.closed)

    def test_peer_drops_connection(self) -> None:
        """The acceptor dropping the TCP connection fails the requestor's outstanding request."""
        client, server, pump = self.established({"store": lambda request: Deferred()})
        d = client.store(ct_dataset())
        pump.flush()
        server.transport.loseConnection()
        pump.flush()
        self.failureResultOf(d, AssociationAborted)
        self.assertTrue(client.machine.is_closed)

    def test_request_after_close(self) -> None:
        """A request on a closed association fails with AssociationAborted."""
        client, server, pump = self.established({"echo": handle_echo})
        self.release(client, server, pump)
        self.failureResultOf(client.echo(), AssociationAborted)
