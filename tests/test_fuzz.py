"""Property tests: mutated PDU streams against a live acceptor.

Whatever bytes a peer sends, the acceptor ends either still associated or
aborted/closed: never an exception out of ``dataReceived``, never a logged
failure, never an unbounded buffer.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.acse import build_rq
from dicomtwist.association import AcceptorFactory, Response
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.codec import encode_command, encode_dataset, fragment
from dicomtwist.services.echo import handle_echo
from dicomtwist.status import Status
from dicomtwist.ul.pdu import AReleaseRQ
from tests.helpers import UNCOMPRESSED, VERIFICATION, policy

FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT = UNCOMPRESSED[0]


def _find(request):
    """A C-FIND handler that decodes the identifier and answers one match."""
    identifier = request.dataset()
    return [Response(Status.PENDING, identifier)]


def valid_stream() -> list[bytes]:
    """A-ASSOCIATE-RQ, C-ECHO, C-FIND with an identifier, A-RELEASE-RQ."""
    rq = build_rq("TESTSCP", "FUZZER", [(VERIFICATION, [IMPLICIT]), (FIND, [IMPLICIT])])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "A*"
    identifier.StudyInstanceUID = ""
    pdus = [rq.encode()]
    pdus += fragment(1, encode_command(m.CEchoRQ(1), False), True, 16382)
    pdus += fragment(3, encode_command(m.CFindRQ(2, FIND), True), True, 16382)
    pdus += fragment(3, encode_dataset(identifier, IMPLICIT), False, 64)
    pdus.append(AReleaseRQ().encode())
    return pdus


STREAM = b"".join(valid_stream())


@st.composite
def mutated(draw):
    """The valid stream with a few bytes changed, cut or inserted."""
    data = bytearray(STREAM)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            data = bytearray(b"\x01")
    chunk = draw(st.integers(1, 97))
    return bytes(data), chunk


class MutatedStreamTests(SynchronousTestCase):
    """A live acceptor fed mutated streams never raises nor logs a failure."""

    def feed(self, data: bytes, chunk: int):
        clock = Clock()
        factory = AcceptorFactory(clock, policy(contexts={VERIFICATION: UNCOMPRESSED,
                                                          FIND: UNCOMPRESSED}),
                                  {"echo": handle_echo, "find": _find}, network_timeout=60)
        assoc = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        assoc.makeConnection(transport)
        for start in range(0, len(data), chunk):
            assoc.dataReceived(data[start:start + chunk])
            if transport.disconnecting:
                break
        self.assertLessEqual(assoc.framer.buffered, 16382 + 6)
        clock.advance(assoc.artim_timeout + 1)
        clock.advance(61)
        if transport.disconnecting:
            assoc.connectionLost(None)
        return assoc, transport

    def test_valid_stream_completes(self):
        """The unmutated stream associates, answers both requests and releases."""
        assoc, transport = self.feed(STREAM, 7)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(assoc.machine.is_closed)
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(mutated())
    def test_mutated_stream_never_raises(self, case):
        """Any mutation ends associated, aborted or closed, without a traceback."""
        data, chunk = case
        assoc, transport = self.feed(data, chunk)
        # Idle timers have fired: the association is closed, or still
        # established only if the peer's last PDU left it waiting.
        self.assertTrue(transport.disconnecting or not assoc.machine.is_closed)
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=600), st.integers(1, 64))
    def test_random_bytes_never_raise(self, data, chunk):
        """Arbitrary bytes from a peer end in an abort or a close."""
        assoc, transport = self.feed(data, chunk)
        self.assertEqual(self.flushLoggedErrors(), [])
