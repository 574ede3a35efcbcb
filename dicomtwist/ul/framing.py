"""Split a TCP byte stream into Upper Layer PDUs (PS3.8 9.3.1).

Framing knows only the 6-byte PDU header (type, reserved, 32-bit big-endian
length) and the size limits; it does no decoding and holds no policy beyond
"too big" and "unknown type".  It keeps at most one PDU's worth of bytes, and
checks the declared length against the limit *before* waiting for the body,
so a peer cannot make us buffer without bound.
"""

from __future__ import annotations

import struct
from typing import Iterator

from dicomtwist.errors import PDUDecodeError

HEADER = struct.Struct(">BxL")
HEADER_LENGTH = HEADER.size

P_DATA_TF = 0x04
#: The PDU types of PS3.8 Table 9-11 and friends.
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
#: Largest A-ASSOCIATE-RQ/AC body we accept: 128 presentation contexts with
#: many transfer syntaxes each fit comfortably; anything bigger is hostile.
MAX_ASSOCIATE_LENGTH = 1024 * 1024
#: A-RELEASE-RQ/RP, A-ABORT and A-ASSOCIATE-RJ bodies are 4 bytes long.
MAX_SHORT_PDU_LENGTH = 4
#: The standard's ceiling for a PDU length field.
MAX_PDU_LENGTH = 0xFFFFFFFF


class PDUFramer:
    """Incremental splitter of a byte stream into ``(pdu_type, body)``.

    :param max_pdata_length: the largest P-DATA-TF body (PDU length field)
        accepted: our Maximum Length Received (PS3.8 D.1); 0 means the
        standard's ceiling.
    """

    #: One framer per connection: no per-instance dictionary.
    __slots__ = ("_pdata_limit", "_chunks", "_buffered", "_needed", "_header", "_failed")

    #: The largest body of every PDU type but P-DATA-TF (whose limit is the
    #: framer's own); a type not here is unknown.
    LIMITS = {
        0x01: MAX_ASSOCIATE_LENGTH,
        0x02: MAX_ASSOCIATE_LENGTH,
        0x03: MAX_SHORT_PDU_LENGTH,
        P_DATA_TF: MAX_PDU_LENGTH,
        0x05: MAX_SHORT_PDU_LENGTH,
        0x06: MAX_SHORT_PDU_LENGTH,
        0x07: MAX_SHORT_PDU_LENGTH,
    }

    def __init__(self, max_pdata_length: int = 0) -> None:
        self._pdata_limit = max_pdata_length or MAX_PDU_LENGTH
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._needed = HEADER_LENGTH
        self._header: tuple[int, int] | None = None
        self._failed = False

    @property
    def max_pdata_length(self) -> int:
        """The largest P-DATA-TF body accepted."""
        return self._pdata_limit

    @max_pdata_length.setter
    def max_pdata_length(self, value: int) -> None:
        self._pdata_limit = value or MAX_PDU_LENGTH

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for the rest of a PDU."""
        return self._buffered

    def idle(self) -> bool:
        """Whether nothing is held (the next bytes begin a PDU) and the
        framer is alive."""
        return not (self._chunks or self._header is not None or self._failed)

    def single(self, data: bytes) -> tuple[tuple[int, memoryview]] | tuple[()]:
        """``data`` as the one PDU it is, ``((pdu_type, body),)``, when it is
        exactly one whole PDU within the limits and nothing is held; else
        ``()``, and :meth:`feed` frames it.

        The usual input (a request, read at once) is framed so without a
        generator (``dataReceived`` iterates ``single(data) or
        feed(data)``); anything else, errors included, is :meth:`feed`'s.
        """
        if self._chunks or self._header is not None or self._failed:
            return ()
        end = len(data)
        if end < HEADER_LENGTH:
            return ()
        pdu_type, length = HEADER.unpack_from(data)
        if length != end - HEADER_LENGTH or length > (
                self._pdata_limit if pdu_type == P_DATA_TF else _LIMITS.get(pdu_type, -1)):
            return ()
        return ((pdu_type, memoryview(data)[HEADER_LENGTH:]),)

    def feed(self, data: bytes) -> Iterator[tuple[int, memoryview]]:
        """Add bytes from the transport; yield every PDU now complete.

        :raises PDUDecodeError: on an unknown PDU type (abort reason 1) or a
            PDU longer than allowed (abort reason 6).  The framer is then
            dead and ignores further input.
        """
        if self._failed:
            return
        if self._chunks:
            # Complete the header or body held back, from the front of
            # ``data`` alone; the rest is framed in place (joining all of
            # ``data`` to the held bytes would copy every byte once more).
            need = self._needed - self._buffered
            if len(data) < need:
                self._chunks.append(data)
                self._buffered += len(data)
                return
            view = memoryview(data)
            self._chunks.append(view[:need])
            piece = b"".join(self._chunks)
            self._chunks = []
            self._buffered = 0
            views = (memoryview(piece), view[need:])
        else:
            views = (memoryview(data),)
        for view in views:
            offset = 0
            end = len(view)
            while True:
                if self._header is None:
                    if end - offset < HEADER_LENGTH:
                        break
                    pdu_type, length = HEADER.unpack_from(view, offset)
                    self._check(pdu_type, length, offset)
                    self._header = (pdu_type, length)
                    offset += HEADER_LENGTH
                    self._needed = length
                pdu_type, length = self._header
                if end - offset < length:
                    break
                self._header = None
                self._needed = HEADER_LENGTH
                yield pdu_type, view[offset:offset + length]
                offset += length
        # (The completed piece is always used up: it ends where a header or
        # a body ends.)
        if offset < end:
            rest = bytes(view[offset:])
            self._chunks = [rest]
            self._buffered = len(rest)

    def _check(self, pdu_type: int, length: int, offset: int) -> None:
        limit = self._pdata_limit if pdu_type == P_DATA_TF else self.LIMITS.get(pdu_type)
        if limit is None:
            self._failed = True
            raise PDUDecodeError(
                f"unknown PDU type 0x{pdu_type:02X}", offset, abort_reason=1
            )
        if length > limit:
            self._failed = True
            raise PDUDecodeError(
                f"PDU type 0x{pdu_type:02X} length {length} exceeds the"
                f" maximum of {limit}",
                offset,
                abort_reason=6,
            )


#: (:attr:`PDUFramer.LIMITS`, read as a global on the per-PDU path.)
_LIMITS = PDUFramer.LIMITS
