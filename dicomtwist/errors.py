"""Exceptions raised by dicomtwist."""

from __future__ import annotations


class DicomError(Exception):
    """Base class of every dicomtwist error."""


class PDUDecodeError(DicomError):
    """Bytes from the peer are not a valid PDU, item or sub-item (PS3.8 9.3).

    :param reason: what is wrong, for the log.
    :param offset: byte offset in the PDU (or item) where the problem is.
    :param abort_reason: the A-ABORT reason to send (PS3.8 Table 9-26):
        1 unrecognized PDU, 2 unexpected PDU, 4 unrecognized PDU parameter,
        5 unexpected PDU parameter, 6 invalid PDU parameter value.
    """

    def __init__(self, reason: str, offset: int = 0, abort_reason: int = 6) -> None:
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset
        self.abort_reason = abort_reason


class DIMSEDecodeError(DicomError):
    """A DIMSE command set or P-DATA fragment sequence is not valid (PS3.7)."""


class InvalidEventError(DicomError):
    """A local primitive was issued in an Upper Layer state that forbids it."""


class AssociationRejected(DicomError):
    """The peer (or its provider) answered A-ASSOCIATE-RJ.

    :param result: 1 rejected-permanent, 2 rejected-transient.
    :param source: 1 service-user, 2 provider (ACSE), 3 provider (presentation).
    :param reason: the reason code of PS3.8 Table 9-21 for that source.
    """

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(
            f"association rejected: result {result}, source {source}, reason {reason}"
        )
        self.result = result
        self.source = source
        self.reason = reason


class AssociationAborted(DicomError):
    """The association ended by A-ABORT or A-P-ABORT, or the connection was lost.

    :param source: A-ABORT source (0 service-user, 2 service-provider), or None.
    :param reason: A-ABORT reason, or None.
    """

    def __init__(self, message: str = "association aborted",
                 source: int | None = None, reason: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason


class TLSError(AssociationAborted):
    """The TLS handshake failed (or TLS broke) before the association was
    established: a certificate not trusted or not presented, no common
    protocol version or cipher suite (PS3.15 Annex B)."""


class DIMSEServiceError(DicomError):
    """A service handler refuses a request with a DIMSE status (PS3.7 Annex C).

    :param status: the status to answer with (a ``Status`` member or int).
    :param comment: optional Error Comment (0000,0902), at most 64 characters.
    """

    def __init__(self, status: int, comment: str | None = None) -> None:
        super().__init__(f"DIMSE status 0x{int(status):04X}" + (f": {comment}" if comment else ""))
        self.status = status
        self.comment = comment
