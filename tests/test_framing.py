"""Tests for dicomtwist.ul.framing, the PDU framer (PS3.8 9.3.1)."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.errors import PDUDecodeError
from dicomtwist.ul.framing import MAX_ASSOCIATE_LENGTH, PDUFramer
from dicomtwist.ul.pdu import AAbort, AReleaseRQ, PDataTF, PresentationDataValue

HEADER = struct.Struct(">BxL")

RELEASE_RQ = AReleaseRQ().encode()
ABORT = AAbort(2, 6).encode()
PDATA = PDataTF((PresentationDataValue(1, 3, b"\x01\x02\x03\x04"),)).encode()


def frames(framer: PDUFramer, data: bytes) -> list[tuple[int, bytes]]:
    """Feed ``data`` and return the complete PDUs as ``(type, body bytes)``.

    :param framer: the framer under test.
    :param data: the bytes to feed.
    :returns: the PDUs now complete, bodies copied out of their views.
    """
    return [(pdu_type, bytes(body)) for pdu_type, body in framer.feed(data)]


class PDUFramerTests(SynchronousTestCase):
    """Splitting a byte stream into ``(pdu_type, body)`` pairs."""

    def test_one_pdu(self) -> None:
        """One complete PDU in one chunk comes out as its type and body."""
        framer = PDUFramer()
        self.assertEqual(frames(framer, PDATA), [(0x04, PDATA[6:])])
        self.assertEqual(framer.buffered, 0)

    def test_bodies_are_memoryviews(self) -> None:
        """The framer hands out memoryview slices, not copies."""
        framer = PDUFramer()
        [(pdu_type, body)] = list(framer.feed(PDATA))
        self.assertIsInstance(body, memoryview)

    def test_held_bytes_completed_without_copying_the_next_chunk(self) -> None:
        """A PDU cut by a read is completed from the front of the next
        chunk; the PDUs after it are views of that chunk itself, not of a
        copy of it joined to the held bytes."""
        framer = PDUFramer()
        stream = PDATA * 6
        first, second = stream[:len(PDATA) + 8], stream[len(PDATA) + 8:]  # mid-body
        self.assertEqual(frames(framer, first), [(0x04, PDATA[6:])])
        bodies = list(framer.feed(second))
        self.assertEqual([bytes(b) for _, b in bodies], [PDATA[6:]] * 5)
        self.assertIsNot(bodies[0][1].obj, second)  # the completed one: joined
        self.assertTrue(all(body.obj is second for _, body in bodies[1:]))
        self.assertEqual(framer.buffered, 0)

    def test_header_completed_then_body_in_place(self) -> None:
        """Held bytes of a header: the header is completed, its body framed
        in place from the next chunk."""
        framer = PDUFramer()
        self.assertEqual(frames(framer, PDATA[:3]), [])
        [(pdu_type, body)] = list(framer.feed(PDATA[3:] + RELEASE_RQ[:2]))
        self.assertEqual((pdu_type, bytes(body)), (0x04, PDATA[6:]))
        self.assertEqual(frames(framer, RELEASE_RQ[2:]), [(0x05, RELEASE_RQ[6:])])

    def test_two_pdus_in_one_chunk(self) -> None:
        """Two PDUs arriving in one chunk come out in order."""
        framer = PDUFramer()
        self.assertEqual(frames(framer, PDATA + RELEASE_RQ),
                         [(0x04, PDATA[6:]), (0x05, RELEASE_RQ[6:])])

    def test_one_byte_at_a_time(self) -> None:
        """A stream fed one byte at a time yields each PDU exactly once, when complete."""
        framer = PDUFramer()
        stream = PDATA + RELEASE_RQ + ABORT
        seen = []
        ends = []
        for index in range(len(stream)):
            got = frames(framer, stream[index:index + 1])
            if got:
                ends.append(index + 1)
            seen.extend(got)
        self.assertEqual(seen, [(0x04, PDATA[6:]), (0x05, RELEASE_RQ[6:]), (0x07, ABORT[6:])])
        self.assertEqual(ends, [len(PDATA), len(PDATA) + len(RELEASE_RQ), len(stream)])

    def test_header_split_across_chunks(self) -> None:
        """A header split over two chunks is reassembled."""
        framer = PDUFramer()
        self.assertEqual(frames(framer, PDATA[:3]), [])
        self.assertEqual(frames(framer, PDATA[3:8]), [])
        self.assertEqual(frames(framer, PDATA[8:]), [(0x04, PDATA[6:])])

    def test_pdu_and_partial_header(self) -> None:
        """A complete PDU followed by part of the next header yields the first and keeps the rest."""
        framer = PDUFramer()
        self.assertEqual(frames(framer, PDATA + RELEASE_RQ[:2]), [(0x04, PDATA[6:])])
        self.assertEqual(framer.buffered, 2)
        self.assertEqual(frames(framer, RELEASE_RQ[2:]), [(0x05, RELEASE_RQ[6:])])

    def test_empty_chunk(self) -> None:
        """An empty chunk yields nothing and changes nothing."""
        framer = PDUFramer()
        self.assertEqual(frames(framer, b""), [])
        self.assertEqual(frames(framer, PDATA[:4]), [])
        self.assertEqual(frames(framer, b""), [])
        self.assertEqual(frames(framer, PDATA[4:]), [(0x04, PDATA[6:])])

    def test_oversized_pdata_rejected_from_header(self) -> None:
        """A P-DATA-TF longer than the limit is rejected from its header alone, reason 6."""
        framer = PDUFramer(max_pdata_length=100)
        with self.assertRaises(PDUDecodeError) as caught:
            frames(framer, HEADER.pack(0x04, 101))
        self.assertEqual(caught.exception.abort_reason, 6)
        self.assertEqual(framer.buffered, 0)

    def test_pdata_at_limit_accepted(self) -> None:
        """A P-DATA-TF exactly as long as the limit is accepted."""
        framer = PDUFramer(max_pdata_length=len(PDATA) - 6)
        self.assertEqual(frames(framer, PDATA), [(0x04, PDATA[6:])])

    def test_limit_setter(self) -> None:
        """Changing max_pdata_length applies to the next PDU; 0 means the standard's ceiling."""
        framer = PDUFramer(max_pdata_length=100)
        framer.max_pdata_length = 0
        self.assertEqual(framer.max_pdata_length, 0xFFFFFFFF)
        self.assertEqual(frames(framer, HEADER.pack(0x04, 200)), [])
        framer = PDUFramer()
        framer.max_pdata_length = 4
        self.assertRaises(PDUDecodeError, frames, framer, PDATA)

    def test_oversized_associate_rq(self) -> None:
        """An A-ASSOCIATE-RQ longer than the associate limit is rejected from its header, reason 6."""
        framer = PDUFramer()
        with self.assertRaises(PDUDecodeError) as caught:
            frames(framer, HEADER.pack(0x01, MAX_ASSOCIATE_LENGTH + 1))
        self.assertEqual(caught.exception.abort_reason, 6)

    def test_oversized_short_pdu(self) -> None:
        """An A-RELEASE-RQ declaring more than 4 bytes is rejected, reason 6."""
        framer = PDUFramer()
        with self.assertRaises(PDUDecodeError) as caught:
            frames(framer, HEADER.pack(0x05, 5))
        self.assertEqual(caught.exception.abort_reason, 6)

    def test_unknown_pdu_type(self) -> None:
        """An unknown PDU type is rejected with abort reason 1."""
        framer = PDUFramer()
        with self.assertRaises(PDUDecodeError) as caught:
            frames(framer, HEADER.pack(0x08, 4) + b"\x00" * 4)
        self.assertEqual(caught.exception.abort_reason, 1)

    def test_unknown_type_after_good_pdu(self) -> None:
        """A good PDU before an unknown type is still yielded before the error."""
        framer = PDUFramer()
        got = []
        with self.assertRaises(PDUDecodeError):
            for pdu_type, body in framer.feed(RELEASE_RQ + HEADER.pack(0x00, 0)):
                got.append(pdu_type)
        self.assertEqual(got, [0x05])

    def test_dead_after_error(self) -> None:
        """After an error the framer ignores all further input."""
        framer = PDUFramer()
        self.assertRaises(PDUDecodeError, frames, framer, HEADER.pack(0x09, 0))
        self.assertEqual(frames(framer, RELEASE_RQ), [])
        self.assertEqual(frames(framer, PDATA), [])
        self.assertEqual(framer.buffered, 0)

    def test_buffered_bounded_by_one_pdu(self) -> None:
        """The framer holds only the incomplete tail, never a completed PDU."""
        framer = PDUFramer()
        for _ in range(50):
            frames(framer, PDATA + RELEASE_RQ)
        self.assertEqual(framer.buffered, 0)
        partial = PDATA[:-1]
        frames(framer, partial)
        self.assertEqual(framer.buffered, len(partial) - 6)
        self.assertEqual(frames(framer, PDATA[-1:]), [(0x04, PDATA[6:])])
        self.assertEqual(framer.buffered, 0)

    def test_large_pdu_in_many_chunks(self) -> None:
        """A large body in many chunks is yielded once, intact, and the buffer empties."""
        body = bytes(range(256)) * 400
        pdu = HEADER.pack(0x04, len(body)) + body
        framer = PDUFramer()
        got = []
        for start in range(0, len(pdu), 1000):
            got.extend(frames(framer, pdu[start:start + 1000]))
            self.assertLessEqual(framer.buffered, len(body))
        self.assertEqual(got, [(0x04, body)])
        self.assertEqual(framer.buffered, 0)

    def test_zero_length_body(self) -> None:
        """A PDU with an empty body is yielded with an empty body."""
        framer = PDUFramer()
        self.assertEqual(frames(framer, HEADER.pack(0x04, 0) + RELEASE_RQ),
                         [(0x04, b""), (0x05, RELEASE_RQ[6:])])


class SingleTests(SynchronousTestCase):
    """``PDUFramer.single``: one whole PDU framed without a generator, and
    everything else left to ``feed`` (``dataReceived`` iterates
    ``single(data) or feed(data)``)."""

    def combined(self, framer: PDUFramer, data: bytes) -> list[tuple[int, bytes]]:
        """What ``dataReceived`` frames from ``data``."""
        return [(pdu_type, bytes(body))
                for pdu_type, body in framer.single(data) or framer.feed(data)]

    def test_exactly_one_pdu(self) -> None:
        """A chunk that is exactly one PDU comes out as its type and a
        memoryview of its body, and nothing is held."""
        framer = PDUFramer()
        [(pdu_type, body)] = framer.single(PDATA)
        self.assertEqual((pdu_type, bytes(body)), (0x04, PDATA[6:]))
        self.assertIsInstance(body, memoryview)
        self.assertEqual(framer.buffered, 0)
        self.assertEqual(framer.single(HEADER.pack(0x04, 0)), ((0x04, memoryview(b"")),))

    def test_anything_else_is_left_to_feed(self) -> None:
        """Part of a PDU, more than one PDU, a PDU over its limit or of an
        unknown type: ``single`` frames nothing and holds nothing."""
        framer = PDUFramer(max_pdata_length=len(PDATA) - 7)
        for data in (b"", PDATA[:5], PDATA[:-1], PDATA + RELEASE_RQ, PDATA,
                     HEADER.pack(0x05, 5) + b"\0" * 5, HEADER.pack(0x08, 4) + b"\0" * 4):
            self.assertEqual(framer.single(data), (), data)
            self.assertEqual(framer.buffered, 0)

    def test_not_while_holding(self) -> None:
        """While part of a PDU, or a header alone, is held, a chunk that
        looks like a whole PDU is the rest of the held one: ``feed``'s."""
        framer = PDUFramer()
        self.assertEqual(self.combined(framer, RELEASE_RQ[:3]), [])
        self.assertEqual(framer.single(RELEASE_RQ), ())
        framer = PDUFramer()
        header = HEADER.pack(0x04, len(RELEASE_RQ))
        self.assertEqual(self.combined(framer, header), [])
        self.assertEqual(framer.buffered, 0)
        self.assertEqual(framer.single(RELEASE_RQ), ())
        self.assertEqual(self.combined(framer, RELEASE_RQ), [(0x04, RELEASE_RQ)])

    def test_idle(self) -> None:
        """``idle`` is true only while nothing is held and the framer is
        alive: not with part of a header, a header alone, part of a body,
        nor after an error."""
        framer = PDUFramer()
        self.assertTrue(framer.idle())
        for held in (RELEASE_RQ[:3], HEADER.pack(0x04, len(RELEASE_RQ)), PDATA[:-1]):
            framer = PDUFramer()
            self.assertEqual(self.combined(framer, held), [])
            self.assertFalse(framer.idle(), held)
        self.assertEqual(self.combined(framer, PDATA[-1:] + RELEASE_RQ),
                         [(0x04, PDATA[6:]), (0x05, RELEASE_RQ[6:])])
        self.assertTrue(framer.idle())
        self.assertRaises(PDUDecodeError, frames, framer, HEADER.pack(0x09, 0))
        self.assertFalse(framer.idle())

    def test_errors_still_raised(self) -> None:
        """Oversized and unknown PDUs still fail in the combined framing,
        with their abort reasons, and the framer is then dead."""
        framer = PDUFramer(max_pdata_length=4)
        with self.assertRaises(PDUDecodeError) as caught:
            self.combined(framer, PDATA)
        self.assertEqual(caught.exception.abort_reason, 6)
        self.assertEqual(framer.single(RELEASE_RQ), ())
        self.assertEqual(self.combined(framer, RELEASE_RQ), [])
        with self.assertRaises(PDUDecodeError) as caught:
            self.combined(PDUFramer(), HEADER.pack(0x08, 4) + b"\0" * 4)
        self.assertEqual(caught.exception.abort_reason, 1)

    def test_one_byte_at_a_time(self) -> None:
        """A stream fed byte by byte, then whole PDUs: the same PDUs in order."""
        framer = PDUFramer()
        stream = PDATA + RELEASE_RQ + ABORT
        got = []
        for i in range(len(stream)):
            got.extend(self.combined(framer, stream[i:i + 1]))
        for pdu in (PDATA, RELEASE_RQ, ABORT):
            got.extend(self.combined(framer, pdu))
        expected = [(0x04, PDATA[6:]), (0x05, RELEASE_RQ[6:]), (0x07, ABORT[6:])]
        self.assertEqual(got, expected * 2)
