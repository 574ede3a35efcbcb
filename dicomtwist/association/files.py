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
from dicomtwist.ul.pdu import pdata_header

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
    with open(path, "rb") as fp:
        head = fp.read(4096)
        size = os.fstat(fp.fileno()).st_size
        if len(head) < 132 or head[128:132] != b"DICM":
            raise ValueError(f"{path}: not a DICOM Part 10 file")
        values: dict[int, str] = {}
        offset = 132
        while True:
            if offset + 12 > len(head) and len(head) < size:
                fp.seek(0)
                head = fp.read(offset + 65536)
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
                    fp.seek(value_at)
                    raw = fp.read(length)
                else:
                    raw = head[value_at:value_at + length]
                values[element] = raw.rstrip(b"\x00 ").decode("ascii", "replace")
            offset = value_at + length
        if readahead and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fp.fileno(), offset, size - offset, os.POSIX_FADV_WILLNEED)
    transfer_syntax = values.get(0x0010)
    if transfer_syntax is None:
        raise ValueError(f"{path}: no Transfer Syntax UID in the file meta information")
    return FileDataSet(path, offset, size - offset, transfer_syntax,
                       values.get(0x0002), values.get(0x0003))


@implementer(IPushProducer)
class FileProducer:
    """Send a :class:`FileDataSet` as P-DATA-TF PDUs, pausing with the transport.

    Memory use is one PDU whatever the file's size.
    """

    def __init__(self, association: "Association", source: FileDataSet, context_id: int,
                 max_pdu: int, done: Deferred) -> None:
        self._association = association
        # A large buffer: one read() per megabyte, not one per PDU.
        self._file = open(source.path, "rb", buffering=1 << 20)
        self._file.seek(source.offset)
        self._remaining = source.length
        self._context_id = context_id
        self._chunk = (max_pdu or (1 << 20)) - 6
        if max_pdu == 0 or self._chunk > (1 << 20):
            self._chunk = 1 << 20
        self._done = done
        self._paused = False
        self._finished = False
        self._registered = False

    def start(self) -> None:
        transport = self._association.transport
        transport.registerProducer(self, True)
        self._registered = True
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and not self._finished:
            size = min(self._chunk, self._remaining)
            data = self._file.read(size)
            if len(data) != size:
                self._finish(IOError("stored file shorter than expected"))
                return
            self._remaining -= size
            control = LAST_FRAGMENT if self._remaining == 0 else 0
            try:
                self._association.send_pdata([pdata_header(self._context_id, control, size), data])
            except InvalidEventError as e:
                self._finish(AssociationAborted(f"association ended while sending: {e}"))
                return
            if self._remaining == 0:
                self._finish(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._finish(AssociationAborted("connection lost while sending a data set"))

    def _finish(self, error: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._file.close()
        transport = self._association.transport
        if transport is not None and self._registered:
            # Not ``transport.producer is self``: a TLS transport wraps the
            # producer it is given, so ask for our own registration.
            self._registered = False
            transport.unregisterProducer()
        if error is None:
            self._done.callback(None)
        else:
            self._done.errback(Failure(error))
