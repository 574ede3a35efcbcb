"""Stored data sets sent as they are: locate one in a Part 10 file, and
push it to the peer PDU by PDU with the transport's flow control."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomtwist.dimse.codec import LAST_FRAGMENT
from dicomtwist.errors import AssociationAborted, InvalidEventError
from dicomtwist.ul.pdu import PDATA_HEADER_LENGTH, pack_pdata_header

if TYPE_CHECKING:
    from dicomtwist.association.protocol import Association

#: Transfer syntaxes a data set can be re-encoded between with pydicom alone.
NATIVE_SYNTAXES = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
})


@dataclass(frozen=True)
class FileDataSet:
    """A data set stored in a file, sent as it is (no decoding).

    :ivar path: the file.
    :ivar offset: where the data set starts (after preamble and group 0002).
    :ivar length: its length in bytes.
    :ivar transfer_syntax: the transfer syntax it is encoded in.
    """

    path: str
    offset: int
    length: int
    transfer_syntax: str
    #: From the file meta information, when known.
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


_TAG_VR_LEN = struct.Struct("<HH2sH")
_UL = struct.Struct("<L")


def file_dataset(path: str, readahead: bool = False) -> FileDataSet:
    """Locate the data set in a DICOM Part 10 file without decoding it.

    Reads only the preamble and the File Meta Information (group 0002,
    always Explicit VR Little Endian, PS3.10 7.1), usually in one read; the
    meta group's SOP Class and Instance UIDs come along, so sending the
    file needs no further parsing.

    :param readahead: ask the kernel to read the data set into the page
        cache now, in the background (``POSIX_FADV_WILLNEED``), so that
        sending it later does not wait for the disk on the reactor thread.

    :raises ValueError: the file is not a Part 10 file.
    """
    # os.open and pread, not open(): no Python file object, and none of
    # the system calls it makes (isatty's ioctl, a second fstat, lseek).
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 4096, 0)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise ValueError(f"{path}: not a DICOM Part 10 file")
        values: dict[int, str] = {}
        offset = 132
        while True:
            if offset + 12 > len(head) and len(head) < size:
                head = os.pread(fd, offset + 65536, 0)
            if offset + 8 > len(head):
                break
            group, element, vr, short = _TAG_VR_LEN.unpack_from(head, offset)
            if group != 0x0002:
                break
            if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
                length = _UL.unpack_from(head, offset + 8)[0]
                value_at = offset + 12
            else:
                length = short
                value_at = offset + 8
            if element in (0x0002, 0x0003, 0x0010):
                if value_at + length > len(head):
                    raw = os.pread(fd, length, value_at)
                else:
                    raw = head[value_at:value_at + length]
                values[element] = raw.rstrip(b"\x00 ").decode("ascii", "replace")
            offset = value_at + length
        if readahead and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, offset, size - offset, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)
    transfer_syntax = values.get(0x0010)
    if transfer_syntax is None:
        raise ValueError(f"{path}: no Transfer Syntax UID in the file meta information")
    return FileDataSet(path, offset, size - offset, transfer_syntax,
                       values.get(0x0002), values.get(0x0003))


#: Data set bytes read (one ``preadv``) and framed per batch of PDUs; each
#: batch is one write: a 0.5 MB instance in 16 KB PDUs is one batch.
BATCH_BYTES = 1 << 20
#: At most this many PDUs per batch: ``preadv`` takes at most ``IOV_MAX``
#: (1024 on Linux) buffers; only a peer with tiny PDUs reaches this.
BATCH_PDUS = 512
#: The framing buffer of a file of at least a batch: room for a batch of
#: the largest PDUs (the data of a PDU is at most :data:`BATCH_BYTES`)
#: or of :data:`BATCH_PDUS` small ones.
BUFFER_BYTES = BATCH_BYTES + BATCH_PDUS * PDATA_HEADER_LENGTH
#: Framing buffers kept for the next files (taken one per file being sent;
#: allocating and zeroing a megabyte per instance would cost more than
#: framing it).  Smaller ones (small files) are made to measure.
SPARE_BUFFERS = 2


class _Frame:
    """A framing buffer, and the layout of PDUs last framed in it: the
    next batch of the same layout (the same command set length, PDU
    sizes and control bytes) finds its PDU headers in place and its data
    slots made, so framing it costs no Python object per PDU.

    :ivar layout: what the headers in the buffer were written for, or None.
    :ivar slots: the data slots of that layout (views of the buffer).
    :ivar length: the bytes that layout fills.
    """

    __slots__ = ("data", "view", "layout", "slots", "length")

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        self.layout: tuple[int, ...] | None = None
        self.slots: list[memoryview] = []
        self.length = 0


_spare: list[_Frame] = []


def _take_buffer(size: int) -> _Frame:
    """A framing buffer of at least ``size`` bytes (at most
    :data:`BUFFER_BYTES`): a spare one, or a new one."""
    if size < BUFFER_BYTES // 8:
        return _Frame(size)
    if _spare:
        return _spare.pop()
    return _Frame(BUFFER_BYTES)


def _give_back(frame: _Frame) -> None:
    """Keep ``frame`` for the next file (nothing refers to its buffer any
    more: what was written of it was sent or copied)."""
    if len(frame.data) == BUFFER_BYTES and len(_spare) < SPARE_BUFFERS:
        _spare.append(frame)


def _read_into(fd: int, slots: list[memoryview], position: int, wanted: int) -> bool:
    """Fill ``slots`` (``wanted`` bytes in all) from ``fd`` at
    ``position``, in order; False if the file ends first."""
    if hasattr(os, "preadv"):
        got = os.preadv(fd, slots, position)
        if got == wanted:
            return True
        position += got
        # Short (a file cut meanwhile, or a read split by the kernel): go
        # on from where it stopped.
        rest = []
        for slot in slots:
            if got >= len(slot):
                got -= len(slot)
            else:
                rest.append(slot[got:] if got else slot)
                got = 0
        slots = rest
    for slot in slots:
        filled = 0
        while filled < len(slot):
            data = os.pread(fd, len(slot) - filled, position)
            if not data:
                return False
            slot[filled:filled + len(data)] = data
            filled += len(data)
            position += len(data)
    return True


@implementer(IPushProducer)
class FileProducer:
    """Send a :class:`FileDataSet` as P-DATA-TF PDUs, pausing with the transport.

    The file is read in batches of PDUs (:data:`BATCH_BYTES` of data) into
    one buffer where each PDU's header sits in front of its data (one
    ``preadv`` fills the data of the whole batch), and each batch goes to
    the association as one write: no Python object per PDU, no copy of
    the data in Python when the socket takes it at once
    (:meth:`~dicomtwist.ul.protocol.DicomProtocol.send_pdu`).  Memory use
    is one batch (plus what the transport buffers before it pauses us)
    whatever the file's size.
    """

    def __init__(self, association: "Association", source: FileDataSet, context_id: int,
                 max_pdu: int, done: Deferred, head: bytes = b"") -> None:
        self._association = association
        # PDUs going first (the message's command set): written with the
        # first batch, in front of it, when they fit in the buffer.
        self._head = head
        self._path = source.path
        self._fd = os.open(source.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        # Part of the message was sent (a failure then aborts).
        self._sent = False
        self._position = source.offset
        self._remaining = source.length
        self._context_id = context_id
        # The data of one PDU: its maximum length less the PDV item's
        # header (length, context id, control: PS3.8 9.3.5.1).
        chunk = (max_pdu or (1 << 20)) - 6
        if max_pdu == 0 or chunk > BATCH_BYTES:
            chunk = BATCH_BYTES
        self._chunk = chunk
        self._per_batch = min(BATCH_PDUS, max(1, BATCH_BYTES // chunk))
        pdus = max(1, -(-source.length // chunk))
        self._buffer: _Frame | None = None
        self._buffer_size = min(pdus, self._per_batch) * (chunk + PDATA_HEADER_LENGTH) + len(head)
        self._done = done
        self._paused = False
        self._finished = False
        self._registered = False

    def start(self) -> None:
        """Send the file, once the association has settled the event being
        handled (:meth:`~dicomtwist.ul.protocol.DicomProtocol.when_settled`);
        ``done`` fires when it is all written, or fails."""
        self._association.when_settled(self._begin, first=True)

    def _begin(self) -> None:
        association = self._association
        transport = association.transport
        if transport is None or association.machine.is_closed:
            self._finish(AssociationAborted("association ended before sending a data set"))
            return
        self._buffer = _take_buffer(self._buffer_size)
        head = self._head
        if head and len(self._buffer.data) < self._buffer_size:
            # More than the room a batch leaves in the buffer: on its own.
            self._head = b""
            try:
                association.send_pdata(head)
            except InvalidEventError as e:
                self._finish(AssociationAborted(f"association ended while sending: {e}"))
                return
        transport.registerProducer(self, True)
        association.sending_file = True
        self._registered = True
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and not self._finished:
            try:
                batch = self._next_batch()
            except OSError as e:
                self._failed_reading(e)
                return
            if batch is None:
                self._failed_reading(IOError("stored file shorter than expected"))
                return
            try:
                self._association.send_pdata(batch)
            except InvalidEventError as e:
                self._finish(AssociationAborted(f"association ended while sending: {e}"))
                return
            self._sent = True
            if self._remaining == 0:
                self._finish(None)

    def _next_batch(self) -> memoryview | None:
        """Read and frame the next PDUs; None if the file ends too soon.

        :returns: the PDUs, one after another, in the framing buffer.
        """
        chunk = self._chunk
        remaining = self._remaining
        pdus = min(self._per_batch, max(1, -(-remaining // chunk)))
        data_length = min(remaining, pdus * chunk)
        last = data_length - (pdus - 1) * chunk
        head = self._head
        frame = self._buffer
        # The last PDU of the batch carries the last-fragment bit if it
        # ends the data set.
        layout = (len(head), chunk, pdus, last, data_length == remaining, self._context_id)
        if head:
            frame.view[:len(head)] = head
            self._head = b""
        if layout != frame.layout:
            self._frame(frame, layout)
        if not _read_into(self._fd, frame.slots, self._position, data_length):
            return None
        self._position += data_length
        self._remaining = remaining - data_length
        return frame.view[:frame.length]

    @staticmethod
    def _frame(frame: _Frame, layout: tuple[int, ...]) -> None:
        """Write the PDU headers of ``layout`` into ``frame`` and make its
        data slots."""
        head_length, chunk, pdus, last, final, context_id = layout
        view = frame.view
        slots = []
        at = head_length
        for n in range(pdus):
            size = chunk if n < pdus - 1 else last
            control = LAST_FRAGMENT if final and n == pdus - 1 else 0
            pack_pdata_header(view, at, context_id, control, size)
            at += PDATA_HEADER_LENGTH
            slots.append(view[at:at + size])
            at += size
        frame.layout = layout
        frame.slots = slots
        frame.length = at

    def _failed_reading(self, error: Exception) -> None:
        """The file could not be read to its end: fail.  If part of the
        message went out, the association is aborted: the peer holds a
        data set whose last fragment (PS3.8 Annex E) will never come."""
        if self._sent:
            association = self._association
            association.log.warn("Aborting: stored file {path} could not be read to its end"
                                 " ({error})", path=self._path, error=str(error))
            association.abort()
        self._finish(error)

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._finish(AssociationAborted("connection lost while sending a data set"))

    def _finish(self, error: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        os.close(self._fd)
        if self._buffer is not None:
            _give_back(self._buffer)
            self._buffer = None
        association = self._association
        transport = association.transport
        if self._registered:
            association.sending_file = False
            if transport is not None:
                # Not ``transport.producer is self``: a TLS transport wraps
                # the producer it is given, so ask for our own registration.
                transport.unregisterProducer()
            self._registered = False
        if error is None:
            self._done.callback(None)
        else:
            self._done.errback(Failure(error))
