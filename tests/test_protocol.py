"""Bytes in, bytes out: an acceptor Association over a StringTransport (PS3.8 9),
and over real TCP connections (answers written straight to the socket)."""

from __future__ import annotations

import gc
import socket
import struct
import weakref

from pydicom.dataset import Dataset
from twisted.internet import reactor, tcp, threads
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dicomtwist import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomtwist import log as dlog
from dicomtwist.acse import build_rq
from dicomtwist.association import AcceptorFactory, Association, associate
from dicomtwist.dimse import messages as m
from dicomtwist.errors import AssociationAborted
from dicomtwist.dimse.codec import decode_command, encode_command, fragment
from dicomtwist.services.echo import handle_echo
from dicomtwist.ul.framing import PDUFramer
from dicomtwist.ul.fsm import State
from dicomtwist.ul import protocol as ul_protocol
from dicomtwist.ul.protocol import READ_SIZE, DicomProtocol
from dicomtwist.ul.transport import AcceptedConnection, AcceptorEndpoint
from dicomtwist.ul.items import (
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PresentationContextACItem,
    UserInformationItem,
)
from dicomtwist.ul.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationDataValue,
    decode_pdu,
)
from dicomtwist.status import Status
from tests.fixtures.pdus import ECHOSCU_RQ
from tests.helpers import UNCOMPRESSED, VERIFICATION, policy

IMPLICIT = UNCOMPRESSED[0]
HEADER = struct.Struct(">BxL")
ARTIM = 30.0

# The A-ASSOCIATE-AC our default test policy answers to DCMTK's ECHOSCU_RQ:
# both AE titles echoed, context 1 accepted with Implicit VR Little Endian,
# our Maximum Length Received (16382), implementation class UID and version.
EXPECTED_AC = AAssociateAC(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(PresentationContextACItem(1, 0, IMPLICIT),),
    user_information=UserInformationItem((
        MaximumLengthSubItem(16382),
        ImplementationClassUIDSubItem(IMPLEMENTATION_CLASS_UID),
        ImplementationVersionNameSubItem(IMPLEMENTATION_VERSION_NAME),
    )),
)

# A C-ECHO-RQ (message ID 7) in one P-DATA-TF on context 1.
ECHO_RQ = b"".join(fragment(1, encode_command(m.CEchoRQ(7, VERIFICATION), False), True, 0))
RELEASE_RQ = AReleaseRQ().encode()


def decode_written(data: bytes) -> list:
    """Split and decode every PDU in ``data``.

    :param data: bytes written to a transport.
    :returns: the decoded PDUs in order.
    """
    return [decode_pdu(pdu_type, bytes(body)) for pdu_type, body in PDUFramer(0).feed(data)]


def pdata_messages(pdus: list) -> list[m.Message]:
    """The DIMSE messages carried (one command PDV each) by P-DATA-TF PDUs."""
    return [decode_command(bytes(pdv.data))[0]
            for pdu in pdus if isinstance(pdu, PDataTF) for pdv in pdu.pdvs]


class AcceptorProtocolTests(SynchronousTestCase):
    """An acceptor Association fed raw bytes, its output checked byte for byte."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))

    def connect(self, **factory_kwargs) -> Association:
        """Build an acceptor from a factory and connect it to ``self.transport``.

        :param factory_kwargs: extra AcceptorFactory arguments (``policy`` too).
        :returns: the connected association.
        """
        ours = factory_kwargs.pop("policy", None) or policy()
        factory = AcceptorFactory(self.clock, ours, {"echo": handle_echo}, **factory_kwargs)
        proto = factory.buildProtocol(self.transport.getPeer())
        # What ``established`` fires with, seen by a listener that was there
        # from the start (the acceptor swallows an unobserved failure later).
        self.outcome: list = []
        proto.established.addBoth(lambda result: self.outcome.append(result) or result)
        proto.makeConnection(self.transport)
        return proto

    def assertNotEstablished(self) -> None:
        """Assert ``established`` failed with AssociationAborted."""
        [failure] = self.outcome
        self.assertIsInstance(failure, Failure)
        failure.trap(AssociationAborted)

    def take(self) -> bytes:
        """Return and clear what was written so far."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def associated(self, **factory_kwargs) -> Association:
        """A connected acceptor that has accepted ECHOSCU_RQ, output cleared."""
        proto = self.connect(**factory_kwargs)
        proto.dataReceived(ECHOSCU_RQ)
        self.assertEqual(self.take(), EXPECTED_AC.encode())
        return proto

    def assertAbortedWith(self, proto: Association, source: int, reason: int) -> None:
        """Assert exactly one A-ABORT with ``source`` and ``reason`` went out, and
        the connection closes when ARTIM expires."""
        self.assertEqual(self.take(), AAbort(source, reason).encode())
        self.assertEqual(proto.machine.state, State.STA13)
        self.clock.advance(ARTIM)
        self.assertTrue(self.transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(proto.machine.state, State.STA1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    # -- establishment ---------------------------------------------------------
    def test_associate_rq_answered_with_ac(self) -> None:
        """DCMTK's A-ASSOCIATE-RQ is answered with exactly the expected A-ASSOCIATE-AC bytes."""
        proto = self.connect()
        self.assertEqual(self.transport.value(), b"")
        proto.dataReceived(ECHOSCU_RQ)
        written = self.transport.value()
        self.assertEqual(written, EXPECTED_AC.encode())
        [ac] = decode_written(written)
        self.assertIsInstance(ac, AAssociateAC)
        self.assertEqual((ac.called_ae_title, ac.calling_ae_title), ("ANY-SCP", "ECHOSCU"))
        self.assertEqual([(pc.context_id, pc.result, pc.transfer_syntax)
                          for pc in ac.presentation_contexts], [(1, 0, IMPLICIT)])
        self.assertEqual(ac.user_information.maximum_length, 16382)
        self.assertEqual(proto.machine.state, State.STA6)
        self.assertIs(self.successResultOf(proto.established), proto)
        self.assertEqual(proto.negotiated.peer_max_pdu, 16384)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_ac_header_bytes(self) -> None:
        """The AC starts with type 02H, a reserved byte, the right length and protocol version 1."""
        self.connect().dataReceived(ECHOSCU_RQ)
        written = self.transport.value()
        self.assertEqual(written[:6], HEADER.pack(0x02, len(written) - 6))
        self.assertEqual(written[6:10], b"\x00\x01\x00\x00")
        self.assertEqual(written[10:26], b"ANY-SCP" + b" " * 9)
        self.assertEqual(written[26:42], b"ECHOSCU" + b" " * 9)

    def test_rq_one_byte_at_a_time(self) -> None:
        """An A-ASSOCIATE-RQ fed one byte at a time is answered once, after its last byte."""
        proto = self.connect()
        for index in range(len(ECHOSCU_RQ) - 1):
            proto.dataReceived(ECHOSCU_RQ[index:index + 1])
            self.assertEqual(self.transport.value(), b"")
        proto.dataReceived(ECHOSCU_RQ[-1:])
        self.assertEqual(self.transport.value(), EXPECTED_AC.encode())

    def test_rq_and_echo_in_one_chunk(self) -> None:
        """An RQ and a C-ECHO-RQ in one chunk produce the AC and then a Success C-ECHO-RSP."""
        self.connect().dataReceived(ECHOSCU_RQ + ECHO_RQ)
        pdus = decode_written(self.transport.value())
        self.assertEqual(pdus[0], EXPECTED_AC)
        [rsp] = pdata_messages(pdus[1:])
        self.assertIsInstance(rsp, m.CEchoRSP)
        self.assertEqual((rsp.message_id_being_responded_to, rsp.status), (7, Status.SUCCESS))
        self.assertEqual(pdus[1].pdvs[0].context_id, 1)
        self.assertEqual(pdus[1].pdvs[0].control, 0x03)

    def test_rq_from_build_rq(self) -> None:
        """Our own requestor's RQ is accepted with the same answer shape."""
        rq = build_rq("TESTSCP", "CALLER", [(VERIFICATION, UNCOMPRESSED)])
        self.connect().dataReceived(rq.encode())
        [ac] = decode_written(self.transport.value())
        self.assertEqual((ac.called_ae_title, ac.calling_ae_title), ("TESTSCP", "CALLER"))
        self.assertEqual(ac.presentation_contexts, (PresentationContextACItem(1, 0, IMPLICIT),))

    # -- release -----------------------------------------------------------------
    def test_release(self) -> None:
        """An A-RELEASE-RQ is answered with A-RELEASE-RP; the peer then closes."""
        proto = self.associated()
        proto.dataReceived(RELEASE_RQ)
        self.assertEqual(self.take(), AReleaseRP().encode())
        self.assertEqual(proto.machine.state, State.STA13)
        self.assertFalse(self.transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(proto.machine.state, State.STA1)
        self.assertIsNone(self.successResultOf(proto.closed))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_release_collision_acceptor(self) -> None:
        """In a release collision the acceptor answers the peer's RQ only after the peer's RP (PS3.8 9.2.4)."""
        proto = self.associated()
        done = proto.release()
        self.assertEqual(self.take(), RELEASE_RQ)
        proto.dataReceived(RELEASE_RQ)
        self.assertEqual(self.take(), b"")
        self.assertEqual(proto.machine.state, State.STA10)
        proto.dataReceived(AReleaseRP().encode())
        self.assertEqual(self.take(), AReleaseRP().encode())
        self.assertEqual(proto.machine.state, State.STA13)
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(done)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_release_then_artim(self) -> None:
        """After A-RELEASE-RP, a peer that never closes is dropped when ARTIM expires."""
        proto = self.associated()
        proto.dataReceived(RELEASE_RQ)
        self.clock.advance(ARTIM - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.take(), AReleaseRP().encode())

    def release_outcome(self, *chunks: bytes, associate: bool = True) -> dict:
        """What a new acceptor does with an A-RELEASE-RQ arriving in
        ``chunks``: whether it was recognized whole (without framing and
        decoding), the hooks and sends in order, the bytes written, the
        states, the info log lines, and when ARTIM closes the connection.

        :param associate: accept ECHOSCU_RQ first (Sta6); else Sta2.
        """
        self.clock = Clock()
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto = self.associated() if associate else self.connect()
        order: list[str] = []
        recognized = proto._release_rq_received
        proto._release_rq_received = lambda: order.append("whole") or recognized()
        on_release_rq = proto.on_release_rq
        proto.on_release_rq = lambda pdu: order.append(
            f"on_release_rq {type(pdu).__name__} in {proto.machine.state.name}") or on_release_rq(pdu)
        send_pdu = proto.send_pdu
        proto.send_pdu = lambda pdu: order.append(
            f"send_pdu {type(pdu).__name__} in {proto.machine.state.name}") or send_pdu(pdu)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.addCleanup(dlog.set_level, dlog.level())
        dlog.set_level(LogLevel.info)
        for chunk in chunks:
            proto.dataReceived(chunk)
        outcome = {"order": order, "written": self.take(), "state": proto.machine.state,
                   "log": [formatEvent(event) for event in logged],
                   "released": proto._released}
        self.clock.advance(ARTIM - 0.5)
        outcome["open before ARTIM"] = not self.transport.disconnecting
        self.clock.advance(0.5)
        outcome["closed at ARTIM"] = self.transport.disconnecting
        proto.connectionLost(Failure(ConnectionDone()))
        outcome["end"] = (proto.machine.state, self.clock.getDelayedCalls())
        return outcome

    def test_release_rq_recognized_whole(self) -> None:
        """An A-RELEASE-RQ arriving whole and alone is taken without framing
        and decoding it, with exactly the effects of one that is framed (a
        reserved byte set, or one byte at a time): AR-2 indicates it in
        Sta6, the hook's response sends the RP in Sta8 (AR-4), Sta13, the
        same log lines, ARTIM's full time."""
        whole = self.release_outcome(RELEASE_RQ)
        self.assertEqual(whole["order"], ["whole", "on_release_rq AReleaseRQ in STA6",
                                          "send_pdu AReleaseRP in STA8"])
        self.assertEqual(whole["written"], AReleaseRP().encode())
        self.assertEqual(whole["state"], State.STA13)
        self.assertEqual(whole["log"], ["Association Released by ECHOSCU"])
        self.assertTrue(whole["open before ARTIM"])
        self.assertTrue(whole["closed at ARTIM"])
        self.assertEqual(whole["end"], (State.STA1, []))
        reserved = self.release_outcome(RELEASE_RQ[:-1] + b"\x01")
        by_byte = self.release_outcome(*(RELEASE_RQ[i:i + 1] for i in range(len(RELEASE_RQ))))
        for framed in (reserved, by_byte):
            self.assertEqual(framed["order"], whole["order"][1:])
            self.assertEqual({**framed, "order": None}, {**whole, "order": None})

    def test_release_rp_written_before_artim_call(self) -> None:
        """The A-RELEASE-RP is written before ARTIM's call is made (the
        peer waits for the one, not the other); ARTIM still runs its full
        time."""
        proto = self.associated()
        order: list[str] = []
        write = self.transport.write
        self.transport.write = lambda data: order.append(f"write {data!r}") or write(data)
        schedule = proto._schedule_artim
        proto._schedule_artim = lambda: order.append("ARTIM") or schedule()
        proto.dataReceived(RELEASE_RQ)
        self.assertEqual(order, [f"write {AReleaseRP().encode()!r}", "ARTIM"])
        self.clock.advance(ARTIM - 0.5)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(self.transport.disconnecting)

    def test_release_rq_recognized_whole_before_association(self) -> None:
        """A whole A-RELEASE-RQ before any A-ASSOCIATE-RQ (Sta2) goes to the
        machine's table like a framed one: AA-1, an A-ABORT, Sta13."""
        whole = self.release_outcome(RELEASE_RQ, associate=False)
        self.assertEqual(whole["order"], ["whole", "send_pdu AAbort in STA2"])
        self.assertEqual(decode_written(whole["written"]), [AAbort(2, 2)])
        framed = self.release_outcome(RELEASE_RQ[:-1] + b"\x01", associate=False)
        self.assertEqual(framed["order"], whole["order"][1:])
        self.assertEqual({**framed, "order": None}, {**whole, "order": None})

    def test_release_rq_bytes_inside_a_pdu(self) -> None:
        """The bytes of an A-RELEASE-RQ that complete a PDU already begun are
        that PDU's, not a release: here a P-DATA-TF of 10 bytes whose PDV
        item claims more than it holds, answered with an A-ABORT."""
        outcome = self.release_outcome(HEADER.pack(0x04, len(RELEASE_RQ)), RELEASE_RQ)
        self.assertEqual(outcome["order"], ["send_pdu AAbort in STA6"])
        self.assertEqual(decode_written(outcome["written"]), [AAbort(2, 6)])
        self.assertEqual(outcome["state"], State.STA13)

    # -- ARTIM -------------------------------------------------------------------
    def test_artim_after_connect(self) -> None:
        """A peer that sends nothing after connecting is dropped when ARTIM expires, silently."""
        proto = self.connect()
        self.clock.advance(ARTIM - 0.5)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(proto.machine.state, State.STA1)
        self.assertNotEstablished()

    def test_unassociated_close_logs_nothing(self) -> None:
        """A connection closed before any RQ leaves no unhandled failure to log at garbage collection."""
        factory = AcceptorFactory(self.clock, policy(), {})
        proto = factory.buildProtocol(self.transport.getPeer())
        proto.makeConnection(self.transport)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.associations, set())
        del proto
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(AssociationAborted), [])

    def test_artim_restarted_after_release(self) -> None:
        """ARTIM stopped by the RQ and started again after the A-RELEASE-RP runs
        its full time from the restart."""
        proto = self.associated()
        self.clock.advance(ARTIM - 1)
        proto.dataReceived(RELEASE_RQ)
        self.clock.advance(ARTIM - 0.5)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(self.transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_artim_restarted_after_stopped_call_ran(self) -> None:
        """Once the stopped ARTIM's call has run (doing nothing), a restart
        still times out."""
        proto = self.associated()
        self.clock.advance(ARTIM * 2)
        self.assertEqual(proto.machine.state, State.STA6)
        proto.dataReceived(RELEASE_RQ)
        self.clock.advance(ARTIM - 0.5)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(self.transport.disconnecting)

    def test_artim_stopped_by_rq(self) -> None:
        """ARTIM stops when the A-ASSOCIATE-RQ arrives."""
        proto = self.associated()
        self.clock.advance(ARTIM * 10)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(proto.machine.state, State.STA6)

    def test_peer_abort(self) -> None:
        """An A-ABORT from the peer closes the connection at once and sends nothing."""
        proto = self.associated()
        proto.dataReceived(AAbort(0, 0).encode())
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(proto.machine.is_closed)

    def test_artim_after_our_abort(self) -> None:
        """After we abort, ARTIM closes the connection if the peer does not."""
        proto = self.associated()
        proto.abort()
        self.assertAbortedWith(proto, 0, 0)

    # -- cost per association --------------------------------------------------------
    def test_answers_to_one_input_written_once(self) -> None:
        """Everything answered to one chunk of input (AC, C-ECHO-RSP, RP) goes
        out in one write, in order."""
        proto = self.connect()
        writes: list[bytes] = []
        write = self.transport.write
        self.transport.write = lambda data: writes.append(data) or write(data)
        proto.dataReceived(ECHOSCU_RQ + ECHO_RQ + RELEASE_RQ)
        self.assertEqual(len(writes), 1)
        pdus = decode_written(writes[0])
        self.assertEqual([type(pdu) for pdu in pdus], [AAssociateAC, PDataTF, AReleaseRP])
        self.assertEqual(proto.machine.state, State.STA13)

    def test_association_freed_by_reference_counting(self) -> None:
        """A released acceptor association is left in no reference cycle: it
        is freed at once, without the cyclic garbage collector."""
        factory = AcceptorFactory(self.clock, policy(), {"echo": handle_echo})
        proto = factory.buildProtocol(self.transport.getPeer())
        proto.makeConnection(self.transport)
        proto.dataReceived(ECHOSCU_RQ + ECHO_RQ + RELEASE_RQ)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        gc.disable()
        self.addCleanup(gc.enable)
        freed = weakref.ref(proto)
        del proto
        self.assertIsNone(freed())

    def test_established_asked_for_late(self) -> None:
        """``established`` asked for only after acceptance fires with the association."""
        factory = AcceptorFactory(self.clock, policy(), {"echo": handle_echo})
        proto = factory.buildProtocol(self.transport.getPeer())
        proto.makeConnection(self.transport)
        proto.dataReceived(ECHOSCU_RQ)
        self.assertIs(self.successResultOf(proto.established), proto)
        self.assertIs(proto.established, proto.established)

    def test_established_asked_for_after_failed_connection(self) -> None:
        """Asked for after a connection that never associated, an acceptor's
        ``established`` has its failure handled already (nothing to log)."""
        factory = AcceptorFactory(self.clock, policy(), {})
        proto = factory.buildProtocol(self.transport.getPeer())
        proto.makeConnection(self.transport)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(proto.established))
        self.assertEqual(self.flushLoggedErrors(AssociationAborted), [])

    def test_peer_description(self) -> None:
        """The peer is described as host:port for log lines: from the
        address the factory was given, or the transport's once connected;
        "?" while neither is known."""
        proto = self.connect()
        self.assertEqual(proto.peer_description, "127.0.0.1:40000")
        unknown = Association(self.clock)
        self.assertEqual(unknown.peer_description, "?")
        unknown.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 104)))
        self.assertEqual(unknown.peer_description, "10.0.0.9:104")
        self.assertEqual(unknown.peer_address, IPv4Address("TCP", "10.0.0.9", 104))

    # -- malformed input -----------------------------------------------------------
    def test_unknown_pdu_type_before_association(self) -> None:
        """An unknown PDU type instead of an RQ gets A-ABORT(provider, unrecognized PDU)."""
        proto = self.connect()
        proto.dataReceived(HEADER.pack(0x0A, 4) + b"\x00" * 4)
        self.assertAbortedWith(proto, 2, 1)
        self.assertNotEstablished()

    def test_unknown_pdu_type_when_associated(self) -> None:
        """An unknown PDU type on an association gets A-ABORT(provider, unrecognized PDU)."""
        proto = self.associated()
        proto.dataReceived(HEADER.pack(0x11, 0))
        self.assertAbortedWith(proto, 2, 1)

    def test_oversized_pdata(self) -> None:
        """A P-DATA-TF header declaring more than our maximum gets A-ABORT(provider, 6) at once."""
        proto = self.associated()
        proto.dataReceived(HEADER.pack(0x04, 16383))
        self.assertAbortedWith(proto, 2, 6)

    def test_oversized_rq(self) -> None:
        """An A-ASSOCIATE-RQ declaring an absurd length gets A-ABORT(provider, 6)."""
        proto = self.connect()
        proto.dataReceived(HEADER.pack(0x01, 0x7FFFFFFF))
        self.assertAbortedWith(proto, 2, 6)

    def test_truncated_item_in_rq(self) -> None:
        """An RQ whose user information item overruns the PDU gets A-ABORT(provider, 6)."""
        # Offset of the user information item: 6 + 68 + 25 + 50 = 149; raise
        # its length (bytes 151-152) from 58 to 59, past the end of the PDU.
        rq = bytearray(ECHOSCU_RQ)
        self.assertEqual(rq[149], 0x50)
        rq[151:153] = struct.pack(">H", 59)
        proto = self.connect()
        proto.dataReceived(bytes(rq))
        self.assertAbortedWith(proto, 2, 6)
        self.assertNotEstablished()

    def test_cut_short_rq_fixed_fields(self) -> None:
        """An RQ too short for its fixed fields gets A-ABORT(provider, 6)."""
        proto = self.connect()
        proto.dataReceived(HEADER.pack(0x01, 10) + ECHOSCU_RQ[6:16])
        self.assertAbortedWith(proto, 2, 6)

    def test_pdata_on_unaccepted_context(self) -> None:
        """A PDV on a context that was not accepted gets A-ABORT(provider, 6)."""
        proto = self.associated()
        proto.dataReceived(b"".join(fragment(
            3, encode_command(m.CEchoRQ(1, VERIFICATION), False), True, 0)))
        self.assertAbortedWith(proto, 2, 6)

    def test_data_before_command(self) -> None:
        """A data set PDV before any command gets A-ABORT(provider, 6)."""
        proto = self.associated()
        proto.dataReceived(PDataTF((PresentationDataValue(1, 0x02, b"\x08\x00"),)).encode())
        self.assertAbortedWith(proto, 2, 6)

    def test_garbage_command(self) -> None:
        """An undecodable command set gets A-ABORT(provider, 6)."""
        proto = self.associated()
        proto.dataReceived(PDataTF((PresentationDataValue(1, 0x03, b"\xff" * 40),)).encode())
        self.assertAbortedWith(proto, 2, 6)

    def test_undecodable_pdata(self) -> None:
        """A P-DATA-TF whose PDV length overruns the PDU gets A-ABORT(provider, 6)."""
        proto = self.associated()
        proto.dataReceived(HEADER.pack(0x04, 6) + struct.pack(">LBB", 50, 1, 3))
        self.assertAbortedWith(proto, 2, 6)

    def test_second_rq_when_associated(self) -> None:
        """An A-ASSOCIATE-RQ on an established association gets A-ABORT(provider, unexpected PDU)."""
        proto = self.associated()
        proto.dataReceived(ECHOSCU_RQ)
        self.assertAbortedWith(proto, 2, 2)

    def test_release_rp_unexpected(self) -> None:
        """An A-RELEASE-RP nobody asked for gets A-ABORT(provider, unexpected PDU)."""
        proto = self.associated()
        proto.dataReceived(AReleaseRP().encode())
        self.assertAbortedWith(proto, 2, 2)

    def test_input_after_abort_ignored(self) -> None:
        """Bytes after an invalid PDU are ignored: one A-ABORT only, no exception."""
        proto = self.associated()
        proto.dataReceived(HEADER.pack(0x11, 0) + ECHO_RQ)
        proto.dataReceived(ECHO_RQ + RELEASE_RQ)
        self.assertAbortedWith(proto, 2, 1)

    def test_malformed_logs_no_failures(self) -> None:
        """Peer misbehaviour is logged as a warning, never as a failure of ours."""
        for data in (HEADER.pack(0x0A, 0), HEADER.pack(0x04, 1 << 30),
                     PDataTF((PresentationDataValue(1, 0x03, b"junk"),)).encode()):
            self.transport = StringTransport()
            proto = self.associated()
            proto.dataReceived(data)
            self.assertEqual(self.flushLoggedErrors(), [])
            self.assertEqual(decode_written(self.take())[0].source, 2)

    def test_decoder_bug_aborts(self) -> None:
        """A decoder failing on a body with an error of its own (a bug of
        ours, not a checked length) still ends in A-ABORT(provider, 6) and
        a warning, not an exception out of dataReceived."""
        import struct as struct_module

        from dicomtwist.ul import pdu as pdu_module
        for error in (struct_module.error("short"), IndexError("index"), ValueError("value"),
                      TypeError("type")):
            self.transport = StringTransport()
            proto = self.associated()

            def broken(body, error=error):
                raise error

            self.patch(ul_protocol, "DECODERS", {**pdu_module.DECODERS, 0x04: broken})
            proto.dataReceived(ECHO_RQ)
            self.assertAbortedWith(proto, 2, 6)
            self.assertEqual(self.flushLoggedErrors(), [])

    def test_hook_failure_logged_and_aborted(self) -> None:
        """A hook raising while a received PDU is handled is our bug: logged
        as a failure, the association aborted (A-ABORT, provider) and the
        connection dropped."""
        proto = self.associated()

        def on_pdata(pdata):
            raise RuntimeError("bug")

        proto.on_pdata = on_pdata
        proto.dataReceived(ECHO_RQ)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.take(), AAbort(2, 0).encode())
        self.assertTrue(self.transport.disconnecting)

    def test_held_buffer_copied(self) -> None:
        """A PDU written from a reusable buffer while input is handled is
        copied when held: what goes out is what was written, whatever the
        buffer holds by the end of the handling."""
        proto = self.associated()
        buffer = bytearray(b"\x04\x00" + b"\x00" * 10)
        collecting = proto._collect()
        proto.send_pdu(memoryview(buffer))
        buffer[:] = b"\xff" * 12
        proto._flush()
        self.assertTrue(collecting)
        self.assertEqual(self.take(), b"\x04\x00" + b"\x00" * 10)

    def test_when_settled(self) -> None:
        """A call asked for while an event is handled waits until it and the
        events its hooks raised are done (one asked for ``first`` goes
        before those waiting); asked for otherwise, it runs now."""
        proto = self.associated()
        calls: list[str] = []
        original = proto.on_pdata

        def on_pdata(pdata):
            proto.when_settled(lambda: calls.append(f"settled {proto._feeding}"))
            proto.when_settled(lambda: calls.append("first"), first=True)
            calls.append("indicated")
            original(pdata)

        proto.on_pdata = on_pdata
        proto.dataReceived(ECHO_RQ)
        self.assertEqual(calls, ["indicated", "first", "settled False"])
        proto.when_settled(lambda: calls.append("now"))
        self.assertEqual(calls[-1], "now")

    # -- rejection -------------------------------------------------------------------
    def test_reject_application_context(self) -> None:
        """A wrong application context is answered with A-ASSOCIATE-RJ(1, 1, 2); ARTIM then closes."""
        rq = build_rq("TESTSCP", "CALLER", [(VERIFICATION, [IMPLICIT])])
        from dataclasses import replace
        proto = self.connect()
        proto.dataReceived(replace(rq, application_context="1.2.3.4.5").encode())
        self.assertEqual(self.take(), AAssociateRJ(1, 1, 2).encode())
        self.assertEqual(proto.machine.state, State.STA13)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(ARTIM)
        self.assertTrue(self.transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertNotEstablished()

    def test_reject_called_aet(self) -> None:
        """With require_called_aet, a wrong called AE title gets RJ(1, 1, 7); the peer's close ends it."""
        proto = self.connect(policy=policy(require_called_aet=True))
        proto.dataReceived(ECHOSCU_RQ)
        self.assertEqual(self.take(), AAssociateRJ(1, 1, 7).encode())
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(proto.machine.state, State.STA1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNotEstablished()

    def test_reject_protocol_version(self) -> None:
        """A protocol version without bit 0 gets RJ from the ACSE provider (1, 2, 2)."""
        rq = bytearray(ECHOSCU_RQ)
        rq[6:8] = b"\x00\x02"
        proto = self.connect()
        proto.dataReceived(bytes(rq))
        self.assertEqual(self.take(), AAssociateRJ(1, 2, 2).encode())

    def test_data_transfer_shortcut_agrees_with_the_table(self) -> None:
        """The protocol takes Sta6's Evt9 and Evt10 directly (DT-1 sends the
        P-DATA, DT-2 indicates it to ``on_pdata``, Sta6 stays): exactly the
        cells of the machine's table."""
        from dicomtwist.ul import fsm
        self.assertEqual(fsm.TRANSITIONS[State.STA6, fsm.Event.EVT9], (fsm.dt_1, State.STA6))
        self.assertEqual(fsm.TRANSITIONS[State.STA6, fsm.Event.EVT10], (fsm.dt_2, State.STA6))
        self.assertEqual(ul_protocol._HOOKS[fsm.Indication.P_DATA], "on_pdata")
        proto = self.associated()
        received = []
        proto.on_pdata = received.append
        proto.dataReceived(ECHO_RQ)
        self.assertEqual([type(p).__name__ for p in received], ["PDataTF"])
        proto.send_pdata(ECHO_RQ)
        self.assertEqual(self.take(), ECHO_RQ)
        self.assertEqual(proto.machine.state, State.STA6)

    def test_pdata_sent_during_indication_goes_at_once(self) -> None:
        """A P-DATA sent while a P-DATA is indicated (DT-2, Sta6 stays) is
        sent at once (DT-1), before an abort the hook raises after it; one
        sent while an action runs waits for the transition, and the table
        takes it in the next state (Sta8: AR-7, sent before the RP)."""
        proto = self.associated()
        order: list[str] = []
        send_pdu = proto.send_pdu

        def recording(pdu):
            order.append(type(pdu).__name__)
            send_pdu(pdu)

        proto.send_pdu = recording

        def on_pdata(pdata):
            proto.send_pdata(ECHO_RQ)
            order.append(f"{proto.machine.state.name}, {len(proto._queued)} waiting")
            proto.abort_request()
            order.append(f"{len(proto._queued)} waiting")

        proto.on_pdata = on_pdata
        proto.dataReceived(ECHO_RQ)
        self.assertEqual(order, ["bytes", "STA6, 0 waiting", "1 waiting", "AAbort"])
        self.assertEqual(self.take(), ECHO_RQ + AAbort(0, 0).encode())

        proto = self.associated()
        proto.send_pdu = recording
        order.clear()

        def on_release_rq(payload):
            proto.send_pdata(ECHO_RQ)
            order.append(f"{len(proto._queued)} waiting")
            proto.release_response()

        proto.on_release_rq = on_release_rq
        proto.dataReceived(RELEASE_RQ)
        self.assertEqual(order, ["1 waiting", "bytes", "AReleaseRP"])
        self.assertEqual(self.take(), ECHO_RQ + AReleaseRP().encode())
        self.assertEqual(proto.machine.state, State.STA13)

    # -- timeouts ------------------------------------------------------------------
    def test_listening_factory_keeps_one_timer_call(self) -> None:
        """While its factory listens, associations one after another share
        one clock call for their timers; it goes when the factory stops,
        and the timers still fire on time meanwhile."""
        factory = AcceptorFactory(self.clock, policy(), {"echo": handle_echo},
                                  network_timeout=10)
        factory.doStart()
        calls = []
        for _ in range(3):
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
            proto = factory.buildProtocol(transport.getPeer())
            proto.makeConnection(transport)
            proto.dataReceived(ECHOSCU_RQ + ECHO_RQ + RELEASE_RQ)
            proto.connectionLost(Failure(ConnectionDone()))
            calls.append(self.clock.getDelayedCalls())
        self.assertEqual(len(calls[0]), 1)
        self.assertEqual(calls, [calls[0]] * 3)
        idle = factory.buildProtocol(self.transport.getPeer())
        idle.makeConnection(self.transport)
        idle.dataReceived(ECHOSCU_RQ)
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)
        idle.connectionLost(Failure(ConnectionDone()))
        factory.doStop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_network_timeout_started_after_the_answer(self) -> None:
        """The network timeout's call, when input handled starts it, is made
        after the answer is written; it still expires network_timeout
        seconds after that input."""
        proto = self.associated(network_timeout=10)
        proto._cancel_idle()
        order: list[str] = []
        write = self.transport.write
        self.transport.write = lambda data: order.append("write") or write(data)
        start_idle = proto._start_idle
        proto._start_idle = lambda: order.append("network timeout") or start_idle()
        proto.dataReceived(ECHO_RQ)
        self.assertEqual(order, ["write", "network timeout"])
        self.assertEqual(pdata_messages(decode_written(self.take())),
                         [m.CEchoRSP(7, Status.SUCCESS, VERIFICATION)])
        self.clock.advance(9.5)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.5)
        self.assertEqual(self.take(), AAbort(2, 0).encode())
        self.assertTrue(self.transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_network_timeout_not_started_once_closed(self) -> None:
        """A network timeout noted while input is handled is not started if
        the connection is closed meanwhile (here by the peer's A-ABORT,
        after a request answered first)."""
        proto = self.associated(network_timeout=10)
        proto._cancel_idle()
        proto.dataReceived(ECHO_RQ + AAbort(0, 0).encode())
        self.assertEqual(pdata_messages(decode_written(self.take())),
                         [m.CEchoRSP(7, Status.SUCCESS, VERIFICATION)])
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(proto._idle)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(proto._idle)

    def test_next_association_made_ahead(self) -> None:
        """Once an association is connected, its factory makes the next one
        ahead; the next connection gets it, numbered then (ids in the order
        connections came, none skipped), and it answers as one made then
        would; one made before a setting changed is not used, and the
        factory stopping drops it."""
        factory = AcceptorFactory(self.clock, policy(), {"echo": handle_echo},
                                  network_timeout=10)
        factory.doStart()
        peer = self.transport.getPeer()

        def serve(proto: Association) -> bytes:
            transport = StringTransport(peerAddress=peer)
            proto.makeConnection(transport)
            proto.dataReceived(ECHOSCU_RQ + ECHO_RQ + RELEASE_RQ)
            proto.connectionLost(Failure(ConnectionDone()))
            return transport.value()

        first = factory.buildProtocol(peer)
        self.assertEqual(factory._spare, [])
        answers = serve(first)
        [ahead] = factory._spare
        self.assertEqual(ahead.association_id, 0)
        requestor = Association(self.clock)
        second = factory.buildProtocol(peer)
        self.assertIs(second, ahead)
        self.assertEqual(factory._spare, [])
        self.assertEqual((requestor.association_id, second.association_id),
                         (first.association_id + 1, first.association_id + 2))
        self.assertEqual(serve(second), answers)
        self.assertEqual(factory.associations, set())

        for setting, value in (("policy", policy(ae_title="OTHER")), ("handlers", {}),
                               ("sink_for", lambda message, context: None),
                               ("acse_timeout", 5.0), ("dimse_timeout", None),
                               ("network_timeout", 20)):
            [ahead] = factory._spare
            setattr(factory, setting, value)
            made = factory.buildProtocol(peer)
            self.assertIsNot(made, ahead, setting)
            self.assertIs(getattr(made, setting), value)
            self.assertEqual(made.association_id, second.association_id + 1)
            second = made
            serve(made)
        self.assertEqual(len(factory._spare), 1)
        factory.doStop()
        self.assertEqual(factory._spare, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_network_timeout(self) -> None:
        """An association idle for network_timeout seconds is aborted and closed."""
        proto = self.associated(network_timeout=10)
        self.clock.advance(9)
        proto.dataReceived(ECHO_RQ)
        self.take()
        self.clock.advance(9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.take(), AAbort(2, 0).encode())
        self.assertTrue(self.transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(proto.machine.state, State.STA1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _EchoClient(Protocol):
    """Associate, C-ECHO, release, close: each PDU sent once the previous
    answer arrived; fires ``done`` with the types of the PDUs received."""

    def __init__(self) -> None:
        self.framer = PDUFramer(0)
        self.received: list[int] = []
        self.done: Deferred[list[int]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(ECHOSCU_RQ)

    def dataReceived(self, data: bytes) -> None:
        for pdu_type, _ in self.framer.feed(data):
            self.received.append(pdu_type)
            if pdu_type == AAssociateAC.PDU_TYPE:
                self.transport.write(ECHO_RQ)
            elif pdu_type == PDataTF.PDU_TYPE:
                self.transport.write(RELEASE_RQ)
            elif pdu_type == AReleaseRP.PDU_TYPE:
                self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(self.received)


def _read_pdu_types(sock: socket.socket, count: int) -> list[int]:
    """Block until ``count`` PDUs arrived; their types."""
    framer = PDUFramer(0)
    types: list[int] = []
    while len(types) < count:
        data = sock.recv(65536)
        if not data:
            break
        types += [pdu_type for pdu_type, _ in framer.feed(data)]
    return types


def _finish_echo(sock: socket.socket) -> list[int]:
    """In a thread: after the RQ was sent, read the AC, C-ECHO, release, close."""
    sock.settimeout(10)
    received = _read_pdu_types(sock, 1)
    sock.sendall(ECHO_RQ)
    received += _read_pdu_types(sock, 1)
    sock.sendall(RELEASE_RQ)
    received += _read_pdu_types(sock, 1)
    sock.close()
    return received


def _read_to_end(sock: socket.socket) -> bytes:
    """In a thread: everything until the server closes (or resets)."""
    sock.settimeout(10)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


class SocketWriteTests(TestCase):
    """An acceptor on a real TCP port (Twisted's, as a test or a tool
    listens): answers go straight to the socket."""

    #: The type of the accepted connections' transport.
    transport_type: type = tcp.Server

    def listen_port(self, factory: AcceptorFactory) -> Deferred:
        """Listen on a free loopback port; fires with the port."""
        return succeed(reactor.listenTCP(0, factory, interface="127.0.0.1"))

    def listen(self, handlers: dict) -> tuple[AcceptorFactory, int, list[Association]]:
        """Listen on a free loopback port.

        :returns: the factory, the port number, and the associations it built.
        """
        factory = AcceptorFactory(reactor, policy(contexts={
            VERIFICATION: UNCOMPRESSED, STUDY_FIND: UNCOMPRESSED}), handlers)
        built: list[Association] = []
        build = factory.buildProtocol

        def record(addr):
            assoc = build(addr)
            built.append(assoc)
            return assoc

        factory.buildProtocol = record  # type: ignore[method-assign]
        port = self.successResultOf(self.listen_port(factory))
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port, built

    def record_buffered_writes(self) -> list[bytes]:
        """What goes through ``tcp.Server.write`` (the transport's buffer)
        from now on."""
        buffered: list[bytes] = []
        write = tcp.Server.write
        self.patch(tcp.Server, "write", lambda transport, data: (
            buffered.append(data), write(transport, data))[-1])
        return buffered

    def echo(self, port: int) -> Deferred:
        """Run an :class:`_EchoClient` against ``port``; fires with the
        types of the PDUs it received."""
        client = _EchoClient()
        connecting = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        return connecting.addCallback(lambda _: client.done)

    def test_answers_written_to_the_socket(self) -> None:
        """AC, C-ECHO-RSP and RP are sent from ``dataReceived`` without going
        through the transport's buffer; the association then closes."""
        buffered = self.record_buffered_writes()
        _, port, built = self.listen({"echo": handle_echo})
        echoed = self.echo(port)

        def check(received: list[int]) -> Deferred:
            self.assertEqual(received, [0x02, 0x04, 0x06])
            self.assertEqual(buffered, [])
            [assoc] = built
            self.assertIs(type(assoc.transport), self.transport_type)
            self.assertEqual(assoc.transport.bufferSize, READ_SIZE)
            return assoc.closed

        return echoed.addCallback(check)

    def test_request_waiting_at_accept_is_answered_at_once(self) -> None:
        """An A-ASSOCIATE-RQ already received when the connection is
        accepted is read and answered during the accept, not on a later
        reactor turn; the association then runs as usual."""
        states: list[State] = []
        original = DicomProtocol._read_early

        def recording(protocol):
            original(protocol)
            states.append(protocol.machine.state)

        self.patch(DicomProtocol, "_read_early", recording)
        artim_timers: list = []
        make_connection = DicomProtocol.makeConnection

        def making(protocol, transport):
            make_connection(protocol, transport)
            artim_timers.append((protocol._artim, protocol._timers.pending()))

        self.patch(DicomProtocol, "makeConnection", making)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.addCleanup(dlog.set_level, dlog.level())
        dlog.set_level(LogLevel.info)
        _, port, built = self.listen({"echo": handle_echo})
        sock = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(sock.close)
        sock.sendall(ECHOSCU_RQ)  # before the reactor accepts

        def check(received: list[int]) -> Deferred:
            self.assertEqual(received, [0x02, 0x04, 0x06])
            self.assertEqual(states, [State.STA6])
            # ARTIM ran from the connection (AE-5) to the request (AE-6)
            # within the accept: no timer was made for it.
            self.assertEqual(artim_timers, [(None, 0)])
            # Logged in the order things happened: the connection, then
            # the association on it.
            texts = [formatEvent(e) for e in events]
            received_at = next(i for i, t in enumerate(texts)
                               if t.startswith("Association received from"))
            accepted_at = next(i for i, t in enumerate(texts)
                               if t.startswith("Association Accepted"))
            self.assertLess(received_at, accepted_at, texts)
            return built[0].closed

        return threads.deferToThread(_finish_echo, sock).addCallback(check)

    def test_nodelay_set_once_on_the_listening_socket(self) -> None:
        """The port's first connection sets TCP_NODELAY on the listening
        socket, and the later ones inherit it, setting nothing themselves:
        every accepted socket has it.  Each closes without a ``shutdown``
        first (its socket is the process's alone)."""
        calls: list[bool] = []
        set_nodelay = tcp.Server.setTcpNoDelay
        self.patch(tcp.Server, "setTcpNoDelay", lambda transport, enabled: (
            calls.append(enabled), set_nodelay(transport, enabled))[-1])
        seen: list[tuple[bool, bool]] = []
        made = Association.connectionMade

        def recording(assoc):
            made(assoc)
            handle = assoc.transport.getHandle()
            seen.append((bool(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
                         assoc.transport._shouldShutdown))

        self.patch(Association, "connectionMade", recording)
        _, port, built = self.listen({"echo": handle_echo})
        echoed = self.echo(port)
        for _ in range(2):
            echoed.addCallback(lambda _: self.echo(port))

        def check(received: list[int]) -> None:
            self.assertEqual(received, [0x02, 0x04, 0x06])
            self.assertEqual(calls, self.nodelay_calls)
            self.assertEqual(seen, [(True, False)] * 3)
            listening = built[0].transport.server.socket
            self.assertTrue(listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        return echoed.addCallback(check)

    #: ``setTcpNoDelay`` calls for three connections: the first one's
    #: (it sets the option on the listening socket).
    nodelay_calls = [True]

    def test_peer_gone_before_accept(self) -> None:
        """A peer that connected and closed before the accept ends its
        association; the port keeps accepting."""
        _, port, built = self.listen({"echo": handle_echo})
        socket.create_connection(("127.0.0.1", port)).close()
        echoed = self.echo(port)

        def check(received: list[int]) -> Deferred:
            self.assertEqual(received, [0x02, 0x04, 0x06])
            self.assertEqual(len(built), 2)
            return built[0].closed

        return echoed.addCallback(check)

    def test_failure_in_early_read_spares_the_port(self) -> None:
        """An exception while reading at accept aborts that connection
        alone (it must not reach the listening port, which the reactor
        would close); the next peer is served."""
        calls: list[int] = []
        original = DicomProtocol.dataReceived

        def failing_once(protocol, data):
            calls.append(len(data))
            if len(calls) == 1:
                raise RuntimeError("broken")
            return original(protocol, data)

        self.patch(DicomProtocol, "dataReceived", failing_once)
        _, port, built = self.listen({"echo": handle_echo})
        sock = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(sock.close)
        sock.sendall(ECHOSCU_RQ)

        def second(_: object) -> Deferred:
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
            return self.echo(port)

        def check(received: list[int]) -> None:
            self.assertEqual(received, [0x02, 0x04, 0x06])

        aborted = threads.deferToThread(_read_to_end, sock)
        return aborted.addCallback(second).addCallback(check)

    def test_later_answer_written_to_the_socket(self) -> None:
        """An answer whose handler finishes later (a Deferred fired outside
        ``dataReceived``, as a store committed in a worker is) goes straight
        to the socket too."""
        buffered = self.record_buffered_writes()

        def later_echo(request):
            d = Deferred()
            reactor.callLater(0, d.callback, None)
            return d

        _, port, _ = self.listen({"echo": later_echo})
        echoed = self.echo(port)

        def check(received: list[int]) -> None:
            self.assertEqual(received, [0x02, 0x04, 0x06])
            self.assertEqual(buffered, [])

        return echoed.addCallback(check)

    def test_partial_send_then_buffered(self) -> None:
        """What the socket does not take at once is buffered by the transport,
        ahead of anything written later: C-FIND responses arrive complete
        and in order when each send takes only part of the data."""
        send = tcp.Server.writeSomeData
        self.patch(tcp.Server, "writeSomeData",
                   lambda transport, data: send(transport, memoryview(data)[:1000]))
        send_now = ul_protocol._send_now
        self.patch(ul_protocol, "_send_now",
                   lambda transport, data: send_now(transport, memoryview(data)[:1000]))
        results = []
        for index in range(40):
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientID = str(index)
            ds.PatientComments = "x" * 2000
            results.append(ds)
        _, port, _ = self.listen({"find": lambda request: results})
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = ""
        associating = associate(reactor, "127.0.0.1", port, called_ae_title="TESTSCP",
                                contexts=[(STUDY_FIND, UNCOMPRESSED)])

        def find(assoc: Association) -> Deferred:
            return assoc.find(query, STUDY_FIND).addCallback(
                lambda responses: assoc.release().addCallback(lambda _: responses))

        def check(responses: list) -> None:
            self.assertEqual([message.status for message, _ in responses],
                             [Status.PENDING] * 40 + [Status.SUCCESS])
            self.assertEqual([ds.PatientID for _, ds in responses[:-1]],
                             [str(index) for index in range(40)])

        return associating.addCallback(find).addCallback(check)


class AcceptorPortSocketWriteTests(SocketWriteTests):
    """The same, on the daemon's own port (:class:`AcceptorPort`, what a
    ``tcp:`` listen description builds): the same bytes, the same early
    read and direct writes."""

    transport_type = AcceptedConnection
    #: The listening socket had TCP_NODELAY before any connection: none
    #: sets it.
    nodelay_calls: list[bool] = []

    def listen_port(self, factory: AcceptorFactory) -> Deferred:
        return AcceptorEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
