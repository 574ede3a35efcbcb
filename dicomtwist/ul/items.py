"""Items and sub-items of the A-ASSOCIATE PDUs (PS3.8 9.3.2, 9.3.3 and Annex D).

Every item is a frozen dataclass with an ``ITEM_TYPE`` class variable,
``encode()`` returning the whole item (header included) and a ``decode(body)``
class method taking the bytes after the 4-byte item header.  Decoders check
every length against the bytes present and raise
:class:`~dicomtwist.errors.PDUDecodeError` on malformed input.

The optional ``offset`` argument of ``decode`` is the position of ``body``
inside the enclosing PDU; it only makes error offsets point at the right byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Iterator, Union

from dicomtwist.errors import PDUDecodeError

__all__ = [
    "ApplicationContextItem",
    "AbstractSyntaxSubItem",
    "TransferSyntaxSubItem",
    "PresentationContextRQItem",
    "PresentationContextACItem",
    "MaximumLengthSubItem",
    "ImplementationClassUIDSubItem",
    "AsynchronousOperationsWindowSubItem",
    "RoleSelectionSubItem",
    "ImplementationVersionNameSubItem",
    "SOPClassExtendedNegotiationSubItem",
    "SOPClassCommonExtendedNegotiationSubItem",
    "UserIdentityRQSubItem",
    "UserIdentityACSubItem",
    "UnknownSubItem",
    "UserInformationItem",
    "UserInformationSubItem",
    "ITEM_HEADER",
    "iter_items",
    "ITEM_TYPES",
    "USER_INFO_SUB_ITEMS",
]

# Abort reasons of PS3.8 Table 9-26 used by the decoders.
_UNRECOGNIZED_PARAMETER = 4
_UNEXPECTED_PARAMETER = 5
_INVALID_PARAMETER_VALUE = 6

#: Item header: item type, reserved (or sub-item version), item length.
ITEM_HEADER = struct.Struct(">BBH")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">L")
_TWO_U16 = struct.Struct(">HH")
# Presentation context id, reserved, result/reason (reserved in RQ), reserved.
_CONTEXT_HEAD = struct.Struct(">BxBx")
# User identity type, positive response requested.
_IDENTITY_HEAD = struct.Struct(">BB")
_ROLES = struct.Struct(">BB")


def _view(body: bytes | memoryview) -> memoryview:
    """Return a flat byte view of ``body`` without copying."""
    view = memoryview(body)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _need(body: memoryview, start: int, count: int, what: str, offset: int) -> None:
    """Raise unless ``body`` holds ``count`` bytes from ``start`` on.

    :raises PDUDecodeError: the bytes are not there (abort reason 6).
    """
    if start + count > len(body):
        raise PDUDecodeError(
            f"{what}: needs {count} bytes, only {max(len(body) - start, 0)} present",
            offset + start,
            _INVALID_PARAMETER_VALUE,
        )


def _decode_text(raw: bytes | memoryview, what: str, offset: int) -> str:
    """Decode an ASCII UID or name, dropping trailing NUL and space padding.

    Peers pad UIDs to an even length with a NUL (PS3.5 9.1) and names with
    spaces; neither padding is part of the value.

    :raises PDUDecodeError: the bytes are not ASCII (abort reason 6).
    """
    try:
        return bytes(raw).rstrip(b"\x00 ").decode("ascii")
    except UnicodeDecodeError:
        raise PDUDecodeError(f"{what} is not ASCII", offset, _INVALID_PARAMETER_VALUE) from None


def _encode_text(value: str) -> bytes:
    """Encode a UID or name as ASCII, without padding."""
    return value.encode("ascii")


def _read_prefixed(body: memoryview, start: int, what: str, offset: int) -> tuple[memoryview, int]:
    """Read a field preceded by its 2-byte length.

    :returns: the field and the index just after it.
    :raises PDUDecodeError: the length or the field overruns ``body``.
    """
    _need(body, start, 2, f"{what} length", offset)
    (length,) = _U16.unpack_from(body, start)
    start += 2
    _need(body, start, length, what, offset)
    return body[start:start + length], start + length


def _prefixed(data: bytes) -> list[bytes]:
    """Return ``data`` preceded by its 2-byte length, as parts to join."""
    return [_U16.pack(len(data)), data]


def _item(item_type: int, parts: list[bytes], header_byte: int = 0) -> bytes:
    """Join ``parts`` behind an item header carrying their total length.

    :raises ValueError: the item would not fit the 16-bit length field.
    """
    length = sum(len(part) for part in parts)
    if length > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} is {length} bytes long, more than 65535")
    parts.insert(0, ITEM_HEADER.pack(item_type, header_byte, length))
    return b"".join(parts)


def iter_items(body: bytes | memoryview, offset: int, what: str) -> Iterator[tuple[int, memoryview, int]]:
    """Split a run of items (each with a 4-byte header) into their bodies.

    :param body: the bytes holding the items and nothing else.
    :param offset: position of ``body`` in the enclosing PDU, for errors.
    :param what: what holds the items, for error messages.
    :returns: an iterator of ``(item_type, item_body, body_offset)``, where
        ``body_offset`` is the position of ``item_body`` in the PDU.
    :raises PDUDecodeError: a header is cut short or a length overruns.
    """
    view = _view(body)
    position = 0
    end = len(view)
    while position < end:
        _need(view, position, ITEM_HEADER.size, f"item header in {what}", offset)
        item_type, _, length = ITEM_HEADER.unpack_from(view, position)
        start = position + ITEM_HEADER.size
        _need(view, start, length, f"item 0x{item_type:02X} in {what}", offset)
        yield item_type, view[start:start + length], offset + start
        position = start + length


# --- PS3.8 9.3.2.1 and 9.3.2.2 ------------------------------------------------


@dataclass(frozen=True)
class ApplicationContextItem:
    """Application Context Item (PS3.8 9.3.2.1).

    :ivar name: the application context name, a UID.
    """

    ITEM_TYPE: ClassVar[int] = 0x10
    name: str

    def encode(self) -> bytes:
        """Return the whole item, header included."""
        return _item(self.ITEM_TYPE, [_encode_text(self.name)])

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> ApplicationContextItem:
        """Decode the bytes after the item header.

        :raises PDUDecodeError: the name is not ASCII.
        """
        return cls(_decode_text(body, "application context name", offset))


@dataclass(frozen=True)
class AbstractSyntaxSubItem:
    """Abstract Syntax Sub-Item (PS3.8 9.3.2.2.1).

    :ivar name: the abstract syntax name (a SOP Class UID).
    """

    ITEM_TYPE: ClassVar[int] = 0x30
    name: str

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        return _item(self.ITEM_TYPE, [_encode_text(self.name)])

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> AbstractSyntaxSubItem:
        """Decode the bytes after the sub-item header.

        :raises PDUDecodeError: the name is not ASCII.
        """
        return cls(_decode_text(body, "abstract syntax name", offset))


@dataclass(frozen=True)
class TransferSyntaxSubItem:
    """Transfer Syntax Sub-Item (PS3.8 9.3.2.2.2).

    :ivar name: the transfer syntax UID.
    """

    ITEM_TYPE: ClassVar[int] = 0x40
    name: str

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        return _item(self.ITEM_TYPE, [_encode_text(self.name)])

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> TransferSyntaxSubItem:
        """Decode the bytes after the sub-item header.

        :raises PDUDecodeError: the name is not ASCII.
        """
        return cls(_decode_text(body, "transfer syntax name", offset))


def _context_head(body: bytes | memoryview, offset: int, what: str) -> tuple[memoryview, int, int]:
    """Read the 4 bytes that start a presentation context item.

    :returns: the body as a view, the context id and the result byte.
    """
    view = _view(body)
    _need(view, 0, _CONTEXT_HEAD.size, what, offset)
    context_id, result = _CONTEXT_HEAD.unpack_from(view, 0)
    return view, context_id, result


@dataclass(frozen=True)
class PresentationContextRQItem:
    """Presentation Context Item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2).

    :ivar context_id: odd number 1-255 naming the context.
    :ivar abstract_syntax: the proposed abstract syntax.
    :ivar transfer_syntaxes: the proposed transfer syntaxes, in order.
    """

    ITEM_TYPE: ClassVar[int] = 0x20
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]

    def encode(self) -> bytes:
        """Return the whole item: the abstract syntax, then each transfer syntax."""
        parts = [
            _CONTEXT_HEAD.pack(self.context_id, 0),
            AbstractSyntaxSubItem(self.abstract_syntax).encode(),
        ]
        parts.extend(TransferSyntaxSubItem(name).encode() for name in self.transfer_syntaxes)
        return _item(self.ITEM_TYPE, parts)

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> PresentationContextRQItem:
        """Decode the bytes after the item header.

        The reserved bytes are not checked (PS3.8 9.3.2.2: "not tested").

        :raises PDUDecodeError: a length overruns (6), a sub-item other than
            abstract or transfer syntax (4), a second abstract syntax (5), or
            no abstract syntax or no transfer syntax (6).
        """
        view, context_id, _ = _context_head(body, offset, "presentation context item")
        abstract_syntax: str | None = None
        transfer_syntaxes: list[str] = []
        for item_type, item_body, item_offset in iter_items(
            view[_CONTEXT_HEAD.size:], offset + _CONTEXT_HEAD.size, "presentation context item"
        ):
            if item_type == AbstractSyntaxSubItem.ITEM_TYPE:
                if abstract_syntax is not None:
                    raise PDUDecodeError(
                        f"presentation context {context_id} has two abstract syntaxes",
                        item_offset - ITEM_HEADER.size,
                        _UNEXPECTED_PARAMETER,
                    )
                abstract_syntax = AbstractSyntaxSubItem.decode(item_body, item_offset).name
            elif item_type == TransferSyntaxSubItem.ITEM_TYPE:
                transfer_syntaxes.append(TransferSyntaxSubItem.decode(item_body, item_offset).name)
            else:
                raise PDUDecodeError(
                    f"unrecognized sub-item 0x{item_type:02X} in presentation context {context_id}",
                    item_offset - ITEM_HEADER.size,
                    _UNRECOGNIZED_PARAMETER,
                )
        if abstract_syntax is None:
            raise PDUDecodeError(
                f"presentation context {context_id} has no abstract syntax", offset,
                _INVALID_PARAMETER_VALUE,
            )
        if not transfer_syntaxes:
            raise PDUDecodeError(
                f"presentation context {context_id} has no transfer syntax", offset,
                _INVALID_PARAMETER_VALUE,
            )
        return cls(context_id, abstract_syntax, tuple(transfer_syntaxes))


@dataclass(frozen=True)
class PresentationContextACItem:
    """Presentation Context Item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2).

    :ivar context_id: the id of the proposed context this answers.
    :ivar result: 0 acceptance, 1 user rejection, 2 provider rejection,
        3 abstract syntax not supported, 4 transfer syntaxes not supported.
    :ivar transfer_syntax: the accepted transfer syntax; meaningless (and
        usually empty) when ``result`` is not 0.
    """

    ITEM_TYPE: ClassVar[int] = 0x21
    context_id: int
    result: int
    transfer_syntax: str = ""

    def encode(self) -> bytes:
        """Return the whole item, always with one transfer syntax sub-item.

        PS3.8 9.3.3.2 requires the sub-item even when the context is rejected
        (its value is then not significant).
        """
        return _item(
            self.ITEM_TYPE,
            [_CONTEXT_HEAD.pack(self.context_id, self.result),
             TransferSyntaxSubItem(self.transfer_syntax).encode()],
        )

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> PresentationContextACItem:
        """Decode the bytes after the item header.

        A missing transfer syntax sub-item is tolerated (some peers leave it
        out of rejected contexts) and gives ``""``.

        :raises PDUDecodeError: a length overruns (6), a sub-item other than
            transfer syntax (4), or a second transfer syntax (5).
        """
        view, context_id, result = _context_head(body, offset, "presentation context item")
        transfer_syntax: str | None = None
        for item_type, item_body, item_offset in iter_items(
            view[_CONTEXT_HEAD.size:], offset + _CONTEXT_HEAD.size, "presentation context item"
        ):
            if item_type != TransferSyntaxSubItem.ITEM_TYPE:
                raise PDUDecodeError(
                    f"unrecognized sub-item 0x{item_type:02X} in presentation context {context_id}",
                    item_offset - ITEM_HEADER.size,
                    _UNRECOGNIZED_PARAMETER,
                )
            if transfer_syntax is not None:
                raise PDUDecodeError(
                    f"presentation context {context_id} has two transfer syntaxes",
                    item_offset - ITEM_HEADER.size,
                    _UNEXPECTED_PARAMETER,
                )
            transfer_syntax = TransferSyntaxSubItem.decode(item_body, item_offset).name
        return cls(context_id, result, transfer_syntax or "")


# --- User information sub-items: PS3.8 D.1, PS3.7 D.3.3 -----------------------


def _exact_length(body: memoryview, size: int, what: str, offset: int) -> None:
    """Raise unless ``body`` is exactly ``size`` bytes long.

    :raises PDUDecodeError: the length is wrong (abort reason 6).
    """
    if len(body) != size:
        raise PDUDecodeError(
            f"{what} must be {size} bytes long, not {len(body)}", offset,
            _INVALID_PARAMETER_VALUE,
        )


@dataclass(frozen=True)
class MaximumLengthSubItem:
    """Maximum Length Sub-Item (PS3.8 D.1.1).

    :ivar maximum_length: the largest P-DATA-TF PDU body (variable field)
        the sender can receive; 0 means no limit.
    """

    ITEM_TYPE: ClassVar[int] = 0x51
    maximum_length: int

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        return _item(self.ITEM_TYPE, [_U32.pack(self.maximum_length)])

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> MaximumLengthSubItem:
        """Decode the bytes after the sub-item header.

        :raises PDUDecodeError: the body is not 4 bytes long.
        """
        view = _view(body)
        _exact_length(view, _U32.size, "maximum length sub-item", offset)
        return cls(_U32.unpack_from(view, 0)[0])


@dataclass(frozen=True)
class ImplementationClassUIDSubItem:
    """Implementation Class UID Sub-Item (PS3.7 D.3.3.2).

    :ivar uid: the implementation class UID.
    """

    ITEM_TYPE: ClassVar[int] = 0x52
    uid: str

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        return _item(self.ITEM_TYPE, [_encode_text(self.uid)])

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> ImplementationClassUIDSubItem:
        """Decode the bytes after the sub-item header.

        :raises PDUDecodeError: the UID is not ASCII.
        """
        return cls(_decode_text(body, "implementation class UID", offset))


@dataclass(frozen=True)
class AsynchronousOperationsWindowSubItem:
    """Asynchronous Operations Window Sub-Item (PS3.7 D.3.3.3).

    :ivar invoked: maximum number of operations invoked, 0 for unlimited.
    :ivar performed: maximum number of operations performed, 0 for unlimited.
    """

    ITEM_TYPE: ClassVar[int] = 0x53
    invoked: int
    performed: int

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        return _item(self.ITEM_TYPE, [_TWO_U16.pack(self.invoked, self.performed)])

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> AsynchronousOperationsWindowSubItem:
        """Decode the bytes after the sub-item header.

        :raises PDUDecodeError: the body is not 4 bytes long.
        """
        view = _view(body)
        _exact_length(view, _TWO_U16.size, "asynchronous operations window sub-item", offset)
        return cls(*_TWO_U16.unpack_from(view, 0))


@dataclass(frozen=True)
class RoleSelectionSubItem:
    """SCP/SCU Role Selection Sub-Item (PS3.7 D.3.3.4).

    :ivar sop_class_uid: the SOP Class the roles apply to.
    :ivar scu_role: the sender proposes (RQ) or accepts (AC) the SCU role.
    :ivar scp_role: the sender proposes (RQ) or accepts (AC) the SCP role.
    """

    ITEM_TYPE: ClassVar[int] = 0x54
    sop_class_uid: str
    scu_role: bool
    scp_role: bool

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        parts = _prefixed(_encode_text(self.sop_class_uid))
        parts.append(_ROLES.pack(int(self.scu_role), int(self.scp_role)))
        return _item(self.ITEM_TYPE, parts)

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> RoleSelectionSubItem:
        """Decode the bytes after the sub-item header.

        Any non-zero role byte reads as support of that role.

        :raises PDUDecodeError: the UID overruns, is not ASCII, or the body
            does not end with exactly the two role bytes.
        """
        view = _view(body)
        uid, position = _read_prefixed(view, 0, "role selection SOP class UID", offset)
        _exact_length(view[position:], _ROLES.size, "role selection roles", offset + position)
        scu, scp = _ROLES.unpack_from(view, position)
        return cls(_decode_text(uid, "role selection SOP class UID", offset + 2), bool(scu), bool(scp))


@dataclass(frozen=True)
class ImplementationVersionNameSubItem:
    """Implementation Version Name Sub-Item (PS3.7 D.3.3.2).

    :ivar name: 1 to 16 characters naming the implementation version.
    """

    ITEM_TYPE: ClassVar[int] = 0x55
    name: str

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        return _item(self.ITEM_TYPE, [_encode_text(self.name)])

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> ImplementationVersionNameSubItem:
        """Decode the bytes after the sub-item header.

        :raises PDUDecodeError: the name is not ASCII.
        """
        return cls(_decode_text(body, "implementation version name", offset))


@dataclass(frozen=True)
class SOPClassExtendedNegotiationSubItem:
    """SOP Class Extended Negotiation Sub-Item (PS3.7 D.3.3.5).

    :ivar sop_class_uid: the SOP Class the information applies to.
    :ivar info: the service-class-application-information, as sent.
    """

    ITEM_TYPE: ClassVar[int] = 0x56
    sop_class_uid: str
    info: bytes

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        parts = _prefixed(_encode_text(self.sop_class_uid))
        parts.append(bytes(self.info))
        return _item(self.ITEM_TYPE, parts)

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> SOPClassExtendedNegotiationSubItem:
        """Decode the bytes after the sub-item header.

        :raises PDUDecodeError: the UID overruns or is not ASCII.
        """
        view = _view(body)
        uid, position = _read_prefixed(view, 0, "extended negotiation SOP class UID", offset)
        return cls(
            _decode_text(uid, "extended negotiation SOP class UID", offset + 2),
            bytes(view[position:]),
        )


@dataclass(frozen=True)
class SOPClassCommonExtendedNegotiationSubItem:
    """SOP Class Common Extended Negotiation Sub-Item (PS3.7 D.3.3.6).

    Its header's second byte is the sub-item version, 0 in this edition; the
    decoder accepts any version.

    :ivar sop_class_uid: the SOP Class proposed.
    :ivar service_class_uid: the service class it belongs to.
    :ivar related_general_sop_classes: related general SOP Class UIDs.
    """

    ITEM_TYPE: ClassVar[int] = 0x57
    SUB_ITEM_VERSION: ClassVar[int] = 0
    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """Return the whole sub-item, header (with version 0) included."""
        parts = _prefixed(_encode_text(self.sop_class_uid))
        parts.extend(_prefixed(_encode_text(self.service_class_uid)))
        related: list[bytes] = []
        for uid in self.related_general_sop_classes:
            related.extend(_prefixed(_encode_text(uid)))
        parts.append(_U16.pack(sum(len(part) for part in related)))
        parts.extend(related)
        return _item(self.ITEM_TYPE, parts, self.SUB_ITEM_VERSION)

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> SOPClassCommonExtendedNegotiationSubItem:
        """Decode the bytes after the sub-item header.

        Bytes after the related SOP classes field are reserved and ignored.

        :raises PDUDecodeError: a length overruns or a UID is not ASCII.
        """
        view = _view(body)
        sop_class, position = _read_prefixed(view, 0, "common extended negotiation SOP class UID", offset)
        sop_class_uid = _decode_text(sop_class, "common extended negotiation SOP class UID", offset)
        service, position = _read_prefixed(view, position, "service class UID", offset)
        service_class_uid = _decode_text(service, "service class UID", offset + position)
        related_field, position = _read_prefixed(
            view, position, "related general SOP class identification", offset
        )
        related_offset = offset + position - len(related_field)
        related: list[str] = []
        cursor = 0
        while cursor < len(related_field):
            uid, cursor = _read_prefixed(
                related_field, cursor, "related general SOP class UID", related_offset
            )
            related.append(_decode_text(uid, "related general SOP class UID", related_offset + cursor))
        return cls(sop_class_uid, service_class_uid, tuple(related))


@dataclass(frozen=True)
class UserIdentityRQSubItem:
    """User Identity Sub-Item of an A-ASSOCIATE-RQ (PS3.7 D.3.3.7.1).

    :ivar identity_type: 1 username, 2 username and passcode, 3 Kerberos,
        4 SAML, 5 JWT.
    :ivar positive_response_requested: the requestor wants a server response.
    :ivar primary_field: username or token.
    :ivar secondary_field: passcode (type 2 only), else empty.
    """

    ITEM_TYPE: ClassVar[int] = 0x58
    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        parts = [_IDENTITY_HEAD.pack(self.identity_type, int(self.positive_response_requested))]
        parts.extend(_prefixed(bytes(self.primary_field)))
        parts.extend(_prefixed(bytes(self.secondary_field)))
        return _item(self.ITEM_TYPE, parts)

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> UserIdentityRQSubItem:
        """Decode the bytes after the sub-item header.

        :raises PDUDecodeError: a field overruns or bytes follow the last one.
        """
        view = _view(body)
        _need(view, 0, _IDENTITY_HEAD.size, "user identity sub-item", offset)
        identity_type, positive = _IDENTITY_HEAD.unpack_from(view, 0)
        primary, position = _read_prefixed(view, _IDENTITY_HEAD.size, "user identity primary field", offset)
        secondary, position = _read_prefixed(view, position, "user identity secondary field", offset)
        _exact_length(view, position, "user identity sub-item", offset)
        return cls(identity_type, bool(positive), bytes(primary), bytes(secondary))


@dataclass(frozen=True)
class UserIdentityACSubItem:
    """User Identity Sub-Item of an A-ASSOCIATE-AC (PS3.7 D.3.3.7.2).

    :ivar server_response: Kerberos ticket, SAML or JWT response, or empty.
    """

    ITEM_TYPE: ClassVar[int] = 0x59
    server_response: bytes

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        return _item(self.ITEM_TYPE, _prefixed(bytes(self.server_response)))

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> UserIdentityACSubItem:
        """Decode the bytes after the sub-item header.

        :raises PDUDecodeError: the response overruns or bytes follow it.
        """
        view = _view(body)
        response, position = _read_prefixed(view, 0, "user identity server response", offset)
        _exact_length(view, position, "user identity sub-item", offset)
        return cls(bytes(response))


@dataclass(frozen=True)
class UnknownSubItem:
    """A user information sub-item this module does not recognise.

    Kept so that decoding and encoding round-trip; the association layer
    ignores it (PS3.7 D.3.3: unrecognised sub-items are ignored).

    :ivar item_type: the sub-item type byte.
    :ivar data: the sub-item body, after its header.
    """

    item_type: int
    data: bytes

    def encode(self) -> bytes:
        """Return the whole sub-item, header included."""
        return _item(self.item_type, [bytes(self.data)])


UserInformationSubItem = Union[
    MaximumLengthSubItem,
    ImplementationClassUIDSubItem,
    AsynchronousOperationsWindowSubItem,
    RoleSelectionSubItem,
    ImplementationVersionNameSubItem,
    SOPClassExtendedNegotiationSubItem,
    SOPClassCommonExtendedNegotiationSubItem,
    UserIdentityRQSubItem,
    UserIdentityACSubItem,
    UnknownSubItem,
]

#: User information sub-item types and their classes (PS3.8 Annex D, PS3.7 D.3.3).
USER_INFO_SUB_ITEMS: dict[int, type] = {
    0x51: MaximumLengthSubItem,
    0x52: ImplementationClassUIDSubItem,
    0x53: AsynchronousOperationsWindowSubItem,
    0x54: RoleSelectionSubItem,
    0x55: ImplementationVersionNameSubItem,
    0x56: SOPClassExtendedNegotiationSubItem,
    0x57: SOPClassCommonExtendedNegotiationSubItem,
    0x58: UserIdentityRQSubItem,
    0x59: UserIdentityACSubItem,
}


@dataclass(frozen=True)
class UserInformationItem:
    """User Information Item (PS3.8 9.3.2.3, 9.3.3.3).

    :ivar sub_items: the sub-items in the order sent, unknown ones included.
    """

    ITEM_TYPE: ClassVar[int] = 0x50
    sub_items: tuple[UserInformationSubItem, ...] = ()

    def encode(self) -> bytes:
        """Return the whole item, header included."""
        return _item(self.ITEM_TYPE, [sub_item.encode() for sub_item in self.sub_items])

    @classmethod
    def decode(cls, body: bytes | memoryview, offset: int = 0) -> UserInformationItem:
        """Decode the bytes after the item header.

        Unrecognised sub-items become :class:`UnknownSubItem`.

        :raises PDUDecodeError: a sub-item is malformed.
        """
        sub_items: list[UserInformationSubItem] = []
        for item_type, item_body, item_offset in iter_items(body, offset, "user information item"):
            sub_item_class = USER_INFO_SUB_ITEMS.get(item_type)
            if sub_item_class is None:
                sub_items.append(UnknownSubItem(item_type, bytes(item_body)))
            else:
                sub_items.append(sub_item_class.decode(item_body, item_offset))
        return cls(tuple(sub_items))

    def _first(self, sub_item_class: type) -> object | None:
        """Return the first sub-item of ``sub_item_class``, or None."""
        for sub_item in self.sub_items:
            if isinstance(sub_item, sub_item_class):
                return sub_item
        return None

    def _all(self, sub_item_class: type) -> tuple:
        """Return every sub-item of ``sub_item_class``, in order."""
        return tuple(sub_item for sub_item in self.sub_items if isinstance(sub_item, sub_item_class))

    @property
    def maximum_length(self) -> int | None:
        """The maximum length received, or None when absent."""
        sub_item = self._first(MaximumLengthSubItem)
        return None if sub_item is None else sub_item.maximum_length

    @property
    def implementation_class_uid(self) -> str | None:
        """The implementation class UID, or None when absent."""
        sub_item = self._first(ImplementationClassUIDSubItem)
        return None if sub_item is None else sub_item.uid

    @property
    def implementation_version_name(self) -> str | None:
        """The implementation version name, or None when absent."""
        sub_item = self._first(ImplementationVersionNameSubItem)
        return None if sub_item is None else sub_item.name

    @property
    def async_ops_window(self) -> AsynchronousOperationsWindowSubItem | None:
        """The asynchronous operations window sub-item, or None."""
        return self._first(AsynchronousOperationsWindowSubItem)

    @property
    def role_selections(self) -> tuple[RoleSelectionSubItem, ...]:
        """Every SCP/SCU role selection sub-item."""
        return self._all(RoleSelectionSubItem)

    @property
    def sop_class_extended(self) -> tuple[SOPClassExtendedNegotiationSubItem, ...]:
        """Every SOP class extended negotiation sub-item."""
        return self._all(SOPClassExtendedNegotiationSubItem)

    @property
    def sop_class_common_extended(self) -> tuple[SOPClassCommonExtendedNegotiationSubItem, ...]:
        """Every SOP class common extended negotiation sub-item."""
        return self._all(SOPClassCommonExtendedNegotiationSubItem)

    @property
    def user_identity(self) -> UserIdentityRQSubItem | UserIdentityACSubItem | None:
        """The user identity sub-item (RQ or AC form), or None."""
        return self._first((UserIdentityRQSubItem, UserIdentityACSubItem))


#: A-ASSOCIATE item types and their classes (PS3.8 9.3.2, 9.3.3).
ITEM_TYPES: dict[int, type] = {
    0x10: ApplicationContextItem,
    0x20: PresentationContextRQItem,
    0x21: PresentationContextACItem,
    0x30: AbstractSyntaxSubItem,
    0x40: TransferSyntaxSubItem,
    0x50: UserInformationItem,
}
