"""Tests for dicomtwist.association.files.FileProducer: a stored file sent
as P-DATA-TF PDUs framed in place, in batches, paced by the transport."""

from __future__ import annotations

import os

from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from dicomtwist.association import (
    AcceptorFactory,
    Association,
    FileDataSet,
    associate,
    file_dataset,
    files,
)
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.codec import COMMAND, LAST_FRAGMENT, encode_command, fragment
from dicomtwist.status import Status
from dicomtwist.ul import protocol as ul_protocol
from dicomtwist.ul.framing import PDUFramer
from dicomtwist.ul.fsm import State
from dicomtwist.ul.pdu import AAbort, pdata_header
from tests.helpers import CT_IMAGE_STORAGE, ct_dataset, policy
from tests.test_association import InMemoryTestCase

#: The only context proposed: the files below are sent as they are.
EXPLICIT = [(CT_IMAGE_STORAGE, (ExplicitVRLittleEndian,))]


class PacedTransport(StringTransport):
    """A StringTransport that paces a streaming producer as Twisted's TCP
    transport does: paused when more than ``limit`` bytes are buffered,
    resumed by :meth:`drain`.

    :ivar writes: the length of each write, in order.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.writes: list[int] = []
        self.paused = False

    def write(self, data: bytes) -> None:
        """Buffer ``data``; pause the producer past the limit."""
        self.writes.append(len(data))
        super().write(data)
        if (self.producer is not None and self.streaming and not self.paused
                and len(self.io.getvalue()) > self.limit):
            self.paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """Take what was written; resume the producer if it was paused."""
        data = self.value()
        self.clear()
        if self.paused:
            self.paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data


def data_pdus(context_id: int, data: bytes, max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs of a data set, one PDV each, built here from
    :func:`pdata_header` (PS3.8 9.3.5, E.2): ``max_pdu - 6`` bytes of data
    per PDU, the last-fragment bit on the last one only."""
    chunk = max_pdu - 6 if max_pdu else len(data) or 1
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] or [b""]
    return b"".join(pdata_header(context_id, LAST_FRAGMENT if n == len(pieces) - 1 else 0,
                                 len(piece)) + piece
                    for n, piece in enumerate(pieces))


def split_pdus(stream: bytes) -> list[bytes]:
    """The whole PDUs (header included) in ``stream``; all of it must be PDUs."""
    pdus = []
    at = 0
    for _, body in PDUFramer(0).feed(stream):
        pdus.append(stream[at:at + 6 + len(body)])
        at += 6 + len(body)
    assert at == len(stream), (at, len(stream))
    return pdus


class FileDatasetTests(TestCase):
    """file_dataset: where the data set of a Part 10 file starts, read from
    its File Meta Information alone."""

    def check(self, ds) -> None:
        """``ds`` saved as a Part 10 file is located as it was written."""
        path = self.mktemp()
        ds.save_as(path, enforce_file_format=True)
        with open(path, "rb") as fp:
            raw = fp.read()
        # The data set's first element: (0008,0016) SOP Class UID, UI.
        offset = raw.index(b"\x08\x00\x16\x00UI", 132)
        self.assertEqual(file_dataset(path, readahead=True), FileDataSet(
            path, offset, len(raw) - offset, ExplicitVRLittleEndian, ds.SOPClassUID,
            ds.SOPInstanceUID))

    def test_located(self) -> None:
        """Offset, length, transfer syntax and the meta group's UIDs."""
        self.check(ct_dataset(64))

    def test_long_meta_group(self) -> None:
        """A meta group longer than the first read (4 KiB) is read on."""
        ds = ct_dataset(64)
        ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
        ds.file_meta.PrivateInformation = b"\x01" * 6000
        self.check(ds)

    def test_not_part10(self) -> None:
        """A file without the DICM prefix is refused."""
        path = self.mktemp()
        with open(path, "wb") as fp:
            fp.write(b"\x00" * 200)
        self.assertRaises(ValueError, file_dataset, path)


class ReadIntoTests(TestCase):
    """_read_into: slots filled in order, from a short ``preadv`` too."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.content = bytes(range(100))
        with open(self.path, "wb") as fp:
            fp.write(self.content)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.addCleanup(os.close, self.fd)

    def slots(self, *sizes: int) -> tuple[bytearray, list[memoryview]]:
        """A buffer cut into slots of ``sizes`` bytes."""
        buffer = bytearray(sum(sizes))
        view = memoryview(buffer)
        slots, at = [], 0
        for size in sizes:
            slots.append(view[at:at + size])
            at += size
        return buffer, slots

    def test_short_preadv_completed(self) -> None:
        """A ``preadv`` that stops in the middle of a slot is completed from
        there on."""
        preadv = os.preadv
        self.patch(os, "preadv", lambda fd, buffers, offset: preadv(
            fd, [buffers[0], buffers[1][:15]], offset))
        buffer, slots = self.slots(30, 30, 35)
        self.assertTrue(files._read_into(self.fd, slots, 5, 95))
        self.assertEqual(bytes(buffer), self.content[5:])

    def test_file_ends_first(self) -> None:
        """A file shorter than the slots: False."""
        _, slots = self.slots(60, 60)
        self.assertFalse(files._read_into(self.fd, slots, 0, 120))


class FileProducerTestCase(InMemoryTestCase):
    """An established requestor whose transport is then a
    :class:`PacedTransport`: what it sends is checked byte for byte."""

    def setUp(self) -> None:
        super().setUp()
        files._spare.clear()
        self.addCleanup(files._spare.clear)

    def requestor(self, max_pdu: int, limit: int = 1 << 30) -> tuple[Association, PacedTransport]:
        """A requestor whose peer takes PDUs of ``max_pdu`` bytes."""
        client, _, _ = self.established(
            {}, acceptor_policy=policy(contexts={CT_IMAGE_STORAGE: (ExplicitVRLittleEndian,)},
                                       max_pdu=max_pdu),
            contexts=EXPLICIT)
        transport = PacedTransport(limit)
        client.transport = transport
        return client, transport

    def stored(self, content: bytes, prefix: bytes = b"HEADER--") -> FileDataSet:
        """A file holding ``prefix`` then ``content``, the data set."""
        path = self.mktemp()
        with open(path, "wb") as fp:
            fp.write(prefix + content)
        return FileDataSet(path, len(prefix), len(content), ExplicitVRLittleEndian,
                           CT_IMAGE_STORAGE, generate_uid())

    def command_pdus(self, client: Association, source: FileDataSet, message_id: int,
                     max_pdu: int) -> bytes:
        """The C-STORE-RQ's command set in PDUs, as the requestor sends it."""
        message = m.CStoreRQ(message_id, source.sop_class_uid, source.sop_instance_uid,
                             m.Priority.MEDIUM)
        context_id = client.context_for(CT_IMAGE_STORAGE).context_id
        return b"".join(fragment(context_id, encode_command(message, True), True, max_pdu))

    def answer(self, client: Association, message_id: int) -> None:
        """Deliver the C-STORE-RSP (Success) to ``message_id``."""
        context_id = client.context_for(CT_IMAGE_STORAGE).context_id
        rsp = m.CStoreRSP(message_id, Status.SUCCESS, CT_IMAGE_STORAGE)
        client.dataReceived(b"".join(fragment(context_id, encode_command(rsp, False), True, 0)))


class FramingTests(FileProducerTestCase):
    """The PDUs are exactly those of PS3.8 framing, whatever the batching."""

    content = bytes(range(256)) * 40 + b"tail!"  # 10,245 bytes

    def check_sent(self, max_pdu: int) -> tuple[Association, PacedTransport, bytes]:
        """Store :attr:`content` to a peer taking ``max_pdu``; check the
        bytes written are its command set then :func:`data_pdus`, exactly.

        :returns: the requestor, its transport and the bytes written.
        """
        client, transport = self.requestor(max_pdu)
        source = self.stored(self.content)
        message_id = client._message_id + 1
        stored = client.store(source)
        context_id = client.context_for(CT_IMAGE_STORAGE).context_id
        head = self.command_pdus(client, source, message_id, max_pdu)
        sent = transport.drain()
        self.assertEqual(sent, head + data_pdus(context_id, self.content, max_pdu))
        self.assertIsNone(transport.producer)
        self.answer(client, message_id)
        self.assertEqual(self.successResultOf(stored).status, Status.SUCCESS)
        return client, transport, sent

    def test_exact_pdus(self) -> None:
        """A data set of 10,245 bytes to a peer taking 1,000-byte PDUs: its
        command set, then 10 PDUs of 994 data bytes and one of 305, the last
        alone with the last-fragment bit, in one write."""
        _, transport, sent = self.check_sent(1000)
        self.assertEqual(transport.writes, [len(sent)])
        pdus = split_pdus(sent)
        data = [pdu for pdu in pdus if not pdu[11] & COMMAND]
        self.assertEqual([len(pdu) for pdu in data], [1006] * 10 + [317])
        self.assertEqual([pdu[11] for pdu in data], [0] * 10 + [LAST_FRAGMENT])

    def test_batches(self) -> None:
        """Read and framed 2 PDUs at a time: the same bytes, one write per
        batch, the command set in the first."""
        self.patch(files, "BATCH_BYTES", 2000)
        client, transport, sent = self.check_sent(1000)
        head = len(sent) - len(data_pdus(1, self.content, 1000))
        self.assertEqual(transport.writes, [head + 2012] + [2012] * 4 + [317])

    def test_unlimited_pdu(self) -> None:
        """A peer without a maximum (0) gets the data set in one PDU."""
        _, _, sent = self.check_sent(0)
        self.assertEqual(len([p for p in split_pdus(sent) if not p[11] & COMMAND]), 1)

    def test_pdu_of_exactly_the_data(self) -> None:
        """Data filling its PDUs exactly ends with a full PDU carrying the
        last-fragment bit, and no empty one after it."""
        self.content = bytes(994 * 3)
        _, _, sent = self.check_sent(1000)
        data = [p for p in split_pdus(sent) if not p[11] & COMMAND]
        self.assertEqual([len(p) for p in data], [1006] * 3)

    def test_empty_data_set(self) -> None:
        """An empty data set is one PDV of no data, with the last-fragment bit."""
        self.content = b""
        _, _, sent = self.check_sent(1000)
        self.assertTrue(sent.endswith(pdata_header(1, LAST_FRAGMENT, 0)))

    def test_buffer_reused(self) -> None:
        """Files sent one after another through the first one's buffer (kept
        spare) go out with their own bytes: one of the same layout (its PDU
        headers found in place), one shorter (framed anew), then the first
        layout again."""
        self.patch(files, "BUFFER_BYTES", 8192)
        self.patch(files, "BATCH_BYTES", 4096)
        self.check_sent(1000)
        self.assertEqual(len(files._spare), 1)
        spare = files._spare[0]
        first = self.content
        for content in (bytes(reversed(first)), first[:2500], first):
            self.content = content
            self.check_sent(1000)
            self.assertEqual(files._spare, [spare])

    def test_file_shorter_than_said(self) -> None:
        """A file cut short fails the store with an I/O error."""
        client, transport = self.requestor(1000)
        source = self.stored(b"x" * 500)
        source = FileDataSet(source.path, source.offset, 5000, source.transfer_syntax,
                             source.sop_class_uid, source.sop_instance_uid)
        self.failureResultOf(client.store(source), IOError)
        self.assertIsNone(transport.producer)

    def test_file_cut_while_sent(self) -> None:
        """A file found shorter after part of it was sent fails the store
        and aborts the association: the peer holds half a data set."""
        self.patch(files, "BATCH_BYTES", 2000)
        client, transport = self.requestor(1000)
        source = self.stored(b"x" * 3000)
        source = FileDataSet(source.path, source.offset, 5000, source.transfer_syntax,
                             source.sop_class_uid, source.sop_instance_uid)
        stored = client.store(source)
        self.assertTrue(transport.value().endswith(AAbort(0, 0).encode()))
        self.assertEqual(client.machine.state, State.STA13)
        self.failureResultOf(stored, IOError)

    def test_no_room_for_data(self) -> None:
        """A peer whose maximum PDU length leaves no room for data (6 bytes)
        fails the store; nothing is sent."""
        client, transport = self.requestor(6)
        self.failureResultOf(client.store(self.stored(b"x")), ValueError)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(client._outstanding, {})

    def test_missing_file(self) -> None:
        """A file that cannot be opened fails the store; nothing is sent."""
        client, transport = self.requestor(1000)
        source = self.stored(b"x")
        os.remove(source.path)
        self.failureResultOf(client.store(source), FileNotFoundError)
        self.assertEqual(transport.value(), b"")


class FlowControlTests(FileProducerTestCase):
    """The transport paces the file: memory is one batch plus its buffer."""

    content = os.urandom(50_000)

    def setUp(self) -> None:
        super().setUp()
        self.patch(files, "BATCH_BYTES", 4000)  # 4 PDUs of 994 bytes

    def send_paced(self, client: Association, transport: PacedTransport,
                   source: FileDataSet) -> bytes:
        """Drain the transport until the producer is done; each time, what
        was written is at most the limit plus one batch."""
        sent = b""
        while transport.producer is not None:
            chunk = transport.drain()
            self.assertLessEqual(len(chunk), transport.limit + 4 * 1006 + 1000, len(chunk))
            sent += chunk
        return sent + transport.drain()

    def test_paused_and_resumed(self) -> None:
        """Past 5,000 buffered bytes the producer pauses (no more reading);
        each drain lets one more batch out, until all of it is sent."""
        client, transport = self.requestor(1000, limit=5000)
        source = self.stored(self.content)
        message_id = client._message_id + 1
        stored = client.store(source)
        self.assertTrue(transport.paused)
        self.assertLess(len(transport.value()), 5000 + 4100 + 1000)
        sent = self.send_paced(client, transport, source)
        context_id = client.context_for(CT_IMAGE_STORAGE).context_id
        self.assertEqual(sent, self.command_pdus(client, source, message_id, 1000)
                         + data_pdus(context_id, self.content, 1000))
        self.answer(client, message_id)
        self.assertEqual(self.successResultOf(stored).status, Status.SUCCESS)

    def test_started_while_handling_input(self) -> None:
        """A store begun by the response to the previous one (as C-MOVE and
        C-GET sub-operations are) is paced too: its PDUs are written as the
        transport takes them, not queued as events until the whole file
        is read."""
        client, transport = self.requestor(1000, limit=5000)
        first, second = self.stored(b"first"), self.stored(self.content)
        first_id = client._message_id + 1
        stores: list[Deferred] = []
        client.store(first).addCallback(lambda _: stores.append(client.store(second)))
        transport.drain()
        self.answer(client, first_id)
        [stored] = stores
        self.assertTrue(transport.paused)
        self.assertEqual(client._queued, [])
        self.assertLess(len(transport.value()), 5000 + 4100 + 1000)
        sent = self.send_paced(client, transport, second)
        context_id = client.context_for(CT_IMAGE_STORAGE).context_id
        self.assertEqual(sent, self.command_pdus(client, second, first_id + 1, 1000)
                         + data_pdus(context_id, self.content, 1000))
        self.answer(client, first_id + 1)
        self.assertEqual(self.successResultOf(stored).status, Status.SUCCESS)

    def test_connection_lost_while_paused(self) -> None:
        """The connection lost while the producer waits: the store fails,
        the file is closed and its buffer kept for the next."""
        client, transport = self.requestor(1000, limit=5000)
        self.patch(files, "BUFFER_BYTES", 8192)
        stored = client.store(self.stored(self.content))
        self.assertTrue(transport.paused)
        transport.producer.stopProducing()
        client.connectionLost(None)
        self.failureResultOf(stored)
        self.assertEqual(len(files._spare), 1)


class SocketTests(TestCase):
    """A file sent over a real TCP connection: straight to the socket."""

    def setUp(self) -> None:
        files._spare.clear()
        self.addCleanup(files._spare.clear)

    def store_over_tcp(self, size: int) -> Deferred:
        """Store ``size`` bytes of data set to an acceptor on a free
        loopback port; fires with what the acceptor received."""
        received: list[bytes] = []

        def handle_store(request):
            received.append(bytes(request.data))
            return Status.SUCCESS

        factory = AcceptorFactory(reactor, policy(contexts={
            CT_IMAGE_STORAGE: (ExplicitVRLittleEndian,)}, max_pdu=16384),
            {"store": handle_store})
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        path = self.mktemp()
        content = os.urandom(size)
        with open(path, "wb") as fp:
            fp.write(b"META" + content)
        source = FileDataSet(path, 4, size, ExplicitVRLittleEndian, CT_IMAGE_STORAGE,
                             generate_uid())

        async def run() -> None:
            assoc = await associate(reactor, "127.0.0.1", port.getHost().port,
                                    contexts=EXPLICIT)
            rsp = await assoc.store(source)
            self.assertEqual(rsp.status, Status.SUCCESS)
            await assoc.release()
            self.assertEqual(received, [content])

        return Deferred.fromCoroutine(run())

    def record_buffered_writes(self) -> list[int]:
        """The length of each write through ``tcp.Client.write`` (the
        transport's buffer) from now on."""
        buffered: list[int] = []
        write = tcp.Client.write
        self.patch(tcp.Client, "write", lambda transport, data: (
            buffered.append(len(data)), write(transport, data))[-1])
        return buffered

    def test_written_to_the_socket(self) -> None:
        """A 300 KB file goes to the socket directly, its command set and
        data set in one ``send``, not through the transport's buffer, and
        arrives intact."""
        buffered = self.record_buffered_writes()
        sends: list[int] = []
        send_now = ul_protocol._send_now
        self.patch(ul_protocol, "_send_now", lambda transport, data: (
            sends.append(len(data)), send_now(transport, data))[-1])
        d = self.store_over_tcp(300_000)

        def check(_):
            self.assertEqual(buffered, [])
            self.assertEqual(len([size for size in sends if size > 300_000]), 1)

        return d.addCallback(check)

    def test_socket_full(self) -> None:
        """What the socket does not take goes to the transport's buffer
        (copied: the framing buffer is reused), and arrives intact."""
        buffered = self.record_buffered_writes()
        send_now = ul_protocol._send_now
        self.patch(ul_protocol, "_send_now", lambda transport, data: send_now(
            transport, memoryview(data)[:50_000]))
        d = self.store_over_tcp(300_000)

        def check(_):
            # The rest of the batch after the socket's 50,000 bytes, in one
            # write (later writes: the release).
            self.assertGreater(buffered[0], 250_000)

        return d.addCallback(check)
