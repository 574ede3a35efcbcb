"""The seven Upper Layer PDUs (PS3.8 9.3) and their constants.

Every PDU is a frozen dataclass with a ``PDU_TYPE`` class variable,
``encode()`` returning the whole PDU (6-byte header included) and a
``decode(body)`` class method taking the bytes after the header.  Splitting
the byte stream into ``(pdu_type, body)`` is :mod:`dicomtwist.ul.framing`'s
job; :func:`decode_pdu` takes it from there.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, NamedTuple, Union

from dicomtwist.errors import PDUDecodeError
from dicomtwist.ul.items import (
    ApplicationContextItem,
    PresentationContextACItem,
    PresentationContextRQItem,
    UnknownSubItem,
    UserIdentityACSubItem,
    UserIdentityRQSubItem,
    UserInformationItem,
    iter_items,
)

__all__ = [
    "AAssociateRQ",
    "AAssociateAC",
    "AAssociateRJ",
    "PresentationDataValue",
    "PDataTF",
    "AReleaseRQ",
    "AReleaseRP",
    "AAbort",
    "PDU",
    "PDU_TYPES",
    "PDU_HEADER",
    "decode_pdu",
    "pdata_header",
    "pack_pdata_header",
    "PDATA_HEADER_LENGTH",
    "AbortSource",
    "AbortReason",
    "RejectResult",
    "RejectSource",
    "RejectReason",
    "ContextResult",
    "COMMAND",
    "LAST_FRAGMENT",
    "DEFAULT_APPLICATION_CONTEXT",
]

#: The DICOM Application Context Name (PS3.7 A.2.1).
DEFAULT_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

#: Message control header bit 0: the fragment is a command, not a data set
#: (PS3.8 E.2).
COMMAND = 0x01
#: Message control header bit 1: the last fragment of the command or data set.
LAST_FRAGMENT = 0x02

#: PDU header: PDU type, reserved, PDU length (PS3.8 9.3.1).
PDU_HEADER = struct.Struct(">BxL")
# Protocol version, reserved, called AE title, calling AE title, 32 reserved.
_ASSOCIATE_HEAD = struct.Struct(">Hxx16s16s32x")
# Reserved, result, source, reason (PS3.8 9.3.4).
_REJECT_BODY = struct.Struct(">xBBB")
# Reserved, reserved, source, reason (PS3.8 9.3.8).
_ABORT_BODY = struct.Struct(">xxBB")
_RELEASE_BODY = b"\x00\x00\x00\x00"
# PDV item: length, presentation context id, message control header.
_PDV_HEAD = struct.Struct(">LBB")
_PDV_HEAD_SIZE = _PDV_HEAD.size
# A P-DATA-TF PDU header followed by the head of its only PDV.
_PDATA_HEADER = struct.Struct(">BxLLBB")

_AE_TITLE_LENGTH = 16


class AbortSource(IntEnum):
    """A-ABORT source (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    """A-ABORT reason when the source is the service provider (PS3.8 Table 9-26)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    RESERVED = 3
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ result (PS3.8 Table 9-21)."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ source (PS3.8 Table 9-21)."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason:
    """A-ASSOCIATE-RJ reasons (PS3.8 Table 9-21); their meaning depends on the source.

    A plain class because values repeat across sources.
    """

    # Source 1, DICOM UL service-user.
    USER_NO_REASON = 1
    APPLICATION_CONTEXT_NOT_SUPPORTED = 2
    CALLING_AE_NOT_RECOGNIZED = 3
    CALLED_AE_NOT_RECOGNIZED = 7
    # Source 2, DICOM UL service-provider (ACSE related function).
    ACSE_NO_REASON = 1
    PROTOCOL_VERSION_NOT_SUPPORTED = 2
    # Source 3, DICOM UL service-provider (presentation related function).
    TEMPORARY_CONGESTION = 1
    LOCAL_LIMIT_EXCEEDED = 2


class ContextResult(IntEnum):
    """Presentation context result/reason of an A-ASSOCIATE-AC (PS3.8 9.3.3.2)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    PROVIDER_REJECTION = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


_CONTEXT_RESULT_TEXT = {
    0: "accepted",
    1: "user rejection",
    2: "provider rejection (no reason)",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}


def _pdu(pdu_type: int, parts: list[bytes | memoryview]) -> bytes:
    """Join ``parts`` behind a PDU header carrying their total length."""
    parts.insert(0, PDU_HEADER.pack(pdu_type, sum(map(len, parts))))
    return b"".join(parts)


def _encode_ae_title(title: str) -> bytes:
    """Return ``title`` as 16 space-padded ASCII bytes (PS3.8 9.3.2).

    :raises ValueError: the title is longer than 16 characters.
    """
    raw = title.encode("ascii")
    if len(raw) > _AE_TITLE_LENGTH:
        raise ValueError(f"AE title {title!r} is longer than 16 characters")
    return raw.ljust(_AE_TITLE_LENGTH, b" ")


def _decode_ae_title(raw: bytes, what: str, offset: int) -> str:
    """Return an AE title field without its leading and trailing spaces.

    :raises PDUDecodeError: the field is not ASCII (abort reason 6).
    """
    try:
        return raw.decode("ascii").strip(" ")
    except UnicodeDecodeError:
        raise PDUDecodeError(
            f"{what} is not ASCII", offset, AbortReason.INVALID_PDU_PARAMETER_VALUE
        ) from None


#: How decoding makes a P-DATA-TF and its PDVs, one per fragment received:
#: the immutable objects without their generated ``__init__`` (the same
#: objects, fields set once).
_new_tuple = tuple.__new__
_new_object = object.__new__
_set_attribute = object.__setattr__


def _view(body: bytes | memoryview) -> memoryview:
    """Return a flat byte view of ``body`` without copying."""
    if type(body) is memoryview and body.format == "B" and body.ndim == 1:
        # As the framer hands bodies out: the view itself.
        return body
    view = memoryview(body)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _check_length(body: memoryview, size: int, what: str) -> None:
    """Raise unless ``body`` is exactly ``size`` bytes long.

    :raises PDUDecodeError: the length is wrong (abort reason 6).
    """
    if len(body) != size:
        raise PDUDecodeError(
            f"{what} body must be {size} bytes long, not {len(body)}",
            PDU_HEADER.size,
            AbortReason.INVALID_PDU_PARAMETER_VALUE,
        )


def _describe_user_information(user_information: UserInformationItem) -> list[str]:
    """Return debug lines for a user information item."""
    lines = ["User Information:"]
    info = user_information
    lines.append(f"  Maximum Length:        {info.maximum_length}")
    lines.append(f"  Implementation Class:  {info.implementation_class_uid}")
    lines.append(f"  Implementation Version: {info.implementation_version_name}")
    window = info.async_ops_window
    if window is not None:
        lines.append(
            f"  Asynchronous Operations Window: invoked {window.invoked}, performed {window.performed}"
        )
    for role in info.role_selections:
        lines.append(
            f"  Role Selection: {role.sop_class_uid} SCU {'yes' if role.scu_role else 'no'},"
            f" SCP {'yes' if role.scp_role else 'no'}"
        )
    for extended in info.sop_class_extended:
        lines.append(f"  Extended Negotiation: {extended.sop_class_uid} ({len(extended.info)} bytes)")
    for common in info.sop_class_common_extended:
        lines.append(
            f"  Common Extended Negotiation: {common.sop_class_uid}"
            f" service class {common.service_class_uid}"
            + (f" related {', '.join(common.related_general_sop_classes)}"
               if common.related_general_sop_classes else "")
        )
    identity = info.user_identity
    if isinstance(identity, UserIdentityRQSubItem):
        lines.append(
            f"  User Identity: type {identity.identity_type},"
            f" response {'requested' if identity.positive_response_requested else 'not requested'}"
        )
    elif isinstance(identity, UserIdentityACSubItem):
        lines.append(f"  User Identity response: {len(identity.server_response)} bytes")
    for sub_item in info.sub_items:
        if isinstance(sub_item, UnknownSubItem):
            lines.append(
                f"  Unknown sub-item 0x{sub_item.item_type:02X} ({len(sub_item.data)} bytes, ignored)"
            )
    return lines


def _decode_associate(cls: type, body: bytes | memoryview, context_class: type, name: str):
    """Decode the body of an A-ASSOCIATE-RQ or -AC (same layout).

    :raises PDUDecodeError: the fixed fields are cut short (6), an item is
        malformed, an unknown item type appears (4), a single-valued item is
        repeated (5), or the application context or user information is
        missing (6).
    """
    view = _view(body)
    if len(view) < _ASSOCIATE_HEAD.size:
        raise PDUDecodeError(
            f"{name} body is {len(view)} bytes, shorter than its {_ASSOCIATE_HEAD.size} fixed bytes",
            PDU_HEADER.size,
            AbortReason.INVALID_PDU_PARAMETER_VALUE,
        )
    version, called, calling = _ASSOCIATE_HEAD.unpack_from(view, 0)
    called_ae_title = _decode_ae_title(called, "called AE title", 10)
    calling_ae_title = _decode_ae_title(calling, "calling AE title", 26)
    application_context: str | None = None
    user_information: UserInformationItem | None = None
    contexts = []
    for item_type, item_body, item_offset in iter_items(
        view[_ASSOCIATE_HEAD.size:], PDU_HEADER.size + _ASSOCIATE_HEAD.size, name
    ):
        header_offset = item_offset - 4
        if item_type == ApplicationContextItem.ITEM_TYPE:
            if application_context is not None:
                raise PDUDecodeError(
                    f"{name} has two application context items", header_offset,
                    AbortReason.UNEXPECTED_PDU_PARAMETER,
                )
            application_context = ApplicationContextItem.decode(item_body, item_offset).name
        elif item_type == context_class.ITEM_TYPE:
            contexts.append(context_class.decode(item_body, item_offset))
        elif item_type == UserInformationItem.ITEM_TYPE:
            if user_information is not None:
                raise PDUDecodeError(
                    f"{name} has two user information items", header_offset,
                    AbortReason.UNEXPECTED_PDU_PARAMETER,
                )
            user_information = UserInformationItem.decode(item_body, item_offset)
        else:
            raise PDUDecodeError(
                f"unrecognized item type 0x{item_type:02X} in {name}", header_offset,
                AbortReason.UNRECOGNIZED_PDU_PARAMETER,
            )
    if application_context is None:
        raise PDUDecodeError(
            f"{name} has no application context item", PDU_HEADER.size,
            AbortReason.INVALID_PDU_PARAMETER_VALUE,
        )
    if user_information is None:
        raise PDUDecodeError(
            f"{name} has no user information item", PDU_HEADER.size,
            AbortReason.INVALID_PDU_PARAMETER_VALUE,
        )
    return cls(
        called_ae_title=called_ae_title,
        calling_ae_title=calling_ae_title,
        presentation_contexts=tuple(contexts),
        user_information=user_information,
        application_context=application_context,
        protocol_version=version,
    )


def _encode_associate(pdu) -> bytes:
    """Encode an A-ASSOCIATE-RQ or -AC: application context, contexts, user information."""
    parts = [
        _ASSOCIATE_HEAD.pack(
            pdu.protocol_version,
            _encode_ae_title(pdu.called_ae_title),
            _encode_ae_title(pdu.calling_ae_title),
        ),
        ApplicationContextItem(pdu.application_context).encode(),
    ]
    parts.extend(context.encode() for context in pdu.presentation_contexts)
    parts.append(pdu.user_information.encode())
    return _pdu(pdu.PDU_TYPE, parts)


def _describe_associate(pdu, name: str) -> list[str]:
    """The header lines both A-ASSOCIATE-RQ and -AC descriptions begin with."""
    return [
        f"{name} PDU",
        f"Protocol Version:         {pdu.protocol_version}",
        f"Called Application Name:  {pdu.called_ae_title}",
        f"Calling Application Name: {pdu.calling_ae_title}",
        f"Application Context Name: {pdu.application_context}",
    ]


def _plural(count: int, word: str) -> str:
    """Return ``"1 word"`` or ``"N words"``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


#: Recently decoded A-ASSOCIATE-RQ PDUs by their body: a peer associating
#: again and again sends the same bytes each time, and PDUs are immutable.
#: Requests carrying a User Identity (credentials) are never kept.
_RQ_MEMO: dict[bytes, AAssociateRQ] = {}
#: At most this many; the memo is emptied when full.
RQ_MEMO_SIZE = 64
#: Bodies longer than this are not kept (a usual RQ is well under 10 KiB).
RQ_MEMO_MAX_BODY = 64 * 1024


def _memoized_encode(pdu) -> bytes:
    """``_encode_associate(pdu)``, computed once per (immutable) PDU object;
    the bytes are kept beside the dataclass fields."""
    encoded = pdu.__dict__.get("_encoded")
    if encoded is None:
        encoded = _encode_associate(pdu)
        pdu.__dict__["_encoded"] = encoded
    return encoded


@dataclass(frozen=True)
class AAssociateRQ:
    """A-ASSOCIATE-RQ PDU (PS3.8 9.3.2).

    :ivar called_ae_title: the AE title the requestor wants to reach.
    :ivar calling_ae_title: the requestor's AE title.
    :ivar presentation_contexts: the proposed presentation contexts.
    :ivar user_information: maximum length, implementation, negotiation.
    :ivar application_context: the application context name.
    :ivar protocol_version: bit field; bit 0 is version 1 (PS3.8 9.3.2).
    """

    PDU_TYPE: ClassVar[int] = 0x01
    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextRQItem, ...]
    user_information: UserInformationItem
    application_context: str = DEFAULT_APPLICATION_CONTEXT
    protocol_version: int = 1

    def encode(self) -> bytes:
        """Return the whole PDU, header included.

        :raises ValueError: an AE title is longer than 16 characters.
        """
        return _memoized_encode(self)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> AAssociateRQ:
        """Decode the bytes after the PDU header; items may come in any order.

        The same bytes as a recent request give the same (immutable) object.

        :raises PDUDecodeError: the PDU is malformed.
        """
        key = bytes(body)
        pdu = _RQ_MEMO.get(key) if cls is AAssociateRQ else None
        if pdu is None:
            pdu = _decode_associate(cls, key, PresentationContextRQItem, "A-ASSOCIATE-RQ")
            if (cls is AAssociateRQ and len(key) <= RQ_MEMO_MAX_BODY
                    and pdu.user_information.user_identity is None):
                if len(_RQ_MEMO) >= RQ_MEMO_SIZE:
                    _RQ_MEMO.clear()
                _RQ_MEMO[key] = pdu
        return pdu

    def summary(self) -> str:
        """Return a one-line description for debug logs."""
        return (
            f"A-ASSOCIATE-RQ PDU: called {self.called_ae_title!r} calling {self.calling_ae_title!r},"
            f" {_plural(len(self.presentation_contexts), 'presentation context')}"
        )

    def describe(self) -> list[str]:
        """Return the PDU's fields as lines for a debug log."""
        lines = _describe_associate(self, "A-ASSOCIATE-RQ")
        roles = {role.sop_class_uid: role for role in self.user_information.role_selections}
        for context in self.presentation_contexts:
            lines.append("Presentation Context:")
            lines.append(f"  Context ID:        {context.context_id} (Proposed)")
            lines.append(f"    Abstract Syntax: {context.abstract_syntax}")
            role = roles.get(context.abstract_syntax)
            if role is None:
                lines.append("    Proposed SCP/SCU Role: Default")
            else:
                lines.append(
                    f"    Proposed SCP/SCU Role: SCU {'yes' if role.scu_role else 'no'},"
                    f" SCP {'yes' if role.scp_role else 'no'}"
                )
            lines.append("    Proposed Transfer Syntaxes:")
            lines.extend(f"      {name}" for name in context.transfer_syntaxes)
        lines.extend(_describe_user_information(self.user_information))
        return lines


@dataclass(frozen=True)
class AAssociateAC:
    """A-ASSOCIATE-AC PDU (PS3.8 9.3.3).

    The AE title fields are reserved: the acceptor echoes the RQ's values,
    and a receiver does not test them.

    :ivar called_ae_title: echo of the RQ's called AE title.
    :ivar calling_ae_title: echo of the RQ's calling AE title.
    :ivar presentation_contexts: the answer for each proposed context.
    :ivar user_information: maximum length, implementation, negotiation.
    :ivar application_context: the application context name.
    :ivar protocol_version: bit field; bit 0 is version 1.
    """

    PDU_TYPE: ClassVar[int] = 0x02
    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextACItem, ...]
    user_information: UserInformationItem
    application_context: str = DEFAULT_APPLICATION_CONTEXT
    protocol_version: int = 1

    def encode(self) -> bytes:
        """Return the whole PDU, header included.

        :raises ValueError: an AE title is longer than 16 characters.
        """
        return _memoized_encode(self)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> AAssociateAC:
        """Decode the bytes after the PDU header; items may come in any order.

        :raises PDUDecodeError: the PDU is malformed.
        """
        return _decode_associate(cls, body, PresentationContextACItem, "A-ASSOCIATE-AC")

    def summary(self) -> str:
        """Return a one-line description for debug logs."""
        accepted = sum(1 for context in self.presentation_contexts if context.result == 0)
        return (
            f"A-ASSOCIATE-AC PDU: called {self.called_ae_title!r} calling {self.calling_ae_title!r},"
            f" {accepted} of {_plural(len(self.presentation_contexts), 'presentation context')}"
            " accepted"
        )

    def describe(self) -> list[str]:
        """Return the PDU's fields as lines for a debug log."""
        lines = _describe_associate(self, "A-ASSOCIATE-AC")
        for context in self.presentation_contexts:
            result = _CONTEXT_RESULT_TEXT.get(context.result, f"unknown result {context.result}")
            lines.append("Presentation Context:")
            lines.append(f"  Context ID:        {context.context_id} ({result})")
            if context.result == ContextResult.ACCEPTANCE:
                lines.append(f"    Accepted Transfer Syntax: {context.transfer_syntax}")
        for role in self.user_information.role_selections:
            lines.append(
                f"Accepted Role: {role.sop_class_uid} SCU {'yes' if role.scu_role else 'no'},"
                f" SCP {'yes' if role.scp_role else 'no'}"
            )
        lines.extend(_describe_user_information(self.user_information))
        return lines


@dataclass(frozen=True)
class AAssociateRJ:
    """A-ASSOCIATE-RJ PDU (PS3.8 9.3.4).

    :ivar result: a :class:`RejectResult`.
    :ivar source: a :class:`RejectSource`.
    :ivar reason: a :class:`RejectReason` value for that source.
    """

    PDU_TYPE: ClassVar[int] = 0x03
    result: int
    source: int
    reason: int

    def encode(self) -> bytes:
        """Return the whole PDU, header included."""
        return _pdu(self.PDU_TYPE, [_REJECT_BODY.pack(self.result, self.source, self.reason)])

    @classmethod
    def decode(cls, body: bytes | memoryview) -> AAssociateRJ:
        """Decode the bytes after the PDU header.

        :raises PDUDecodeError: the body is not 4 bytes long.
        """
        view = _view(body)
        _check_length(view, _REJECT_BODY.size, "A-ASSOCIATE-RJ")
        return cls(*_REJECT_BODY.unpack_from(view, 0))

    def summary(self) -> str:
        """Return a one-line description for debug logs."""
        return f"A-ASSOCIATE-RJ PDU: result {self.result}, source {self.source}, reason {self.reason}"


class PresentationDataValue(NamedTuple):
    """One Presentation Data Value item of a P-DATA-TF (PS3.8 9.3.5.1).

    A named tuple (immutable, like the other PDUs' dataclasses): one is
    made per fragment received, on the data path of every data set, where
    a frozen dataclass's ``__init__`` cost more than the rest of its
    decoding.

    :ivar context_id: the presentation context of the fragment.
    :ivar control: message control header: bit 0 set for a command
        (:data:`COMMAND`), bit 1 set on the last fragment (:data:`LAST_FRAGMENT`).
    :ivar data: the fragment; a view into the received PDU after decoding.
    """

    context_id: int
    control: int
    data: bytes | memoryview

    @property
    def is_command(self) -> bool:
        """True if the fragment belongs to a command rather than a data set."""
        return bool(self.control & COMMAND)

    @property
    def is_last(self) -> bool:
        """True if the fragment is the last of its command or data set."""
        return bool(self.control & LAST_FRAGMENT)

    def encode_parts(self) -> list[bytes | memoryview]:
        """Return the PDV item as a head and the (uncopied) data."""
        return [_PDV_HEAD.pack(len(self.data) + 2, self.context_id, self.control), self.data]

    def encode(self) -> bytes:
        """Return the whole PDV item, its length field included."""
        return b"".join(self.encode_parts())


@dataclass(frozen=True)
class PDataTF:
    """P-DATA-TF PDU (PS3.8 9.3.5).

    :ivar pdvs: one or more presentation data values.
    """

    PDU_TYPE: ClassVar[int] = 0x04
    pdvs: tuple[PresentationDataValue, ...]

    def encode(self) -> bytes:
        """Return the whole PDU, header included."""
        parts: list[bytes | memoryview] = []
        for pdv in self.pdvs:
            parts.extend(pdv.encode_parts())
        return _pdu(self.PDU_TYPE, parts)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> PDataTF:
        """Decode the bytes after the PDU header without copying the data.

        Each PDV's ``data`` is a slice of a memoryview over ``body``.

        :raises PDUDecodeError: no PDV, a PDV length below 2, or a PDV
            overrunning the body (abort reason 6).
        """
        view = _view(body)
        end = len(view)
        if end >= _PDV_HEAD_SIZE:
            length, context_id, control = _PDV_HEAD.unpack_from(view, 0)
            if length + 4 == end and length >= 2:
                # One PDV filling the body (a command, a fragment of a
                # data set): the usual P-DATA-TF, checked as the loop
                # below checks it.
                pdu = _new_object(cls)
                _set_attribute(pdu, "pdvs", (_new_tuple(
                    PresentationDataValue, (context_id, control, view[_PDV_HEAD_SIZE:])),))
                return pdu
        position = 0
        pdvs = []
        while position < end:
            offset = PDU_HEADER.size + position
            if position + _PDV_HEAD.size > end:
                raise PDUDecodeError(
                    f"PDV header cut short: {end - position} bytes left", offset,
                    AbortReason.INVALID_PDU_PARAMETER_VALUE,
                )
            length, context_id, control = _PDV_HEAD.unpack_from(view, position)
            if length < 2:
                raise PDUDecodeError(
                    f"PDV length {length} is less than 2", offset,
                    AbortReason.INVALID_PDU_PARAMETER_VALUE,
                )
            stop = position + 4 + length
            if stop > end:
                raise PDUDecodeError(
                    f"PDV length {length} overruns the {end}-byte P-DATA-TF body", offset,
                    AbortReason.INVALID_PDU_PARAMETER_VALUE,
                )
            pdvs.append(_new_tuple(PresentationDataValue,
                                   (context_id, control, view[position + _PDV_HEAD.size:stop])))
            position = stop
        if not pdvs:
            raise PDUDecodeError(
                "P-DATA-TF without any PDV", PDU_HEADER.size,
                AbortReason.INVALID_PDU_PARAMETER_VALUE,
            )
        pdu = _new_object(cls)
        _set_attribute(pdu, "pdvs", tuple(pdvs))
        return pdu

    def summary(self) -> str:
        """Return a one-line description for debug logs."""
        if len(self.pdvs) == 1:
            pdv = self.pdvs[0]
            return (
                f"P-DATA-TF PDU: 1 PDV, context {pdv.context_id},"
                f" {'command' if pdv.is_command else 'dataset'},"
                f" {'last' if pdv.is_last else 'not last'} fragment, {len(pdv.data)} bytes"
            )
        total = sum(len(pdv.data) for pdv in self.pdvs)
        return f"P-DATA-TF PDU: {len(self.pdvs)} PDVs, {total} bytes"


class _ReleasePDU:
    """A-RELEASE-RQ and -RP: a header and 4 reserved bytes (PS3.8 9.3.6-7)."""

    PDU_TYPE: ClassVar[int]
    NAME: ClassVar[str]

    def encode(self) -> bytes:
        """Return the whole PDU: header and 4 reserved bytes (the same 10
        bytes every time, made once: an A-RELEASE-RP answers every
        released association)."""
        return RELEASE_ENCODED[self.PDU_TYPE]

    @classmethod
    def decode(cls, body: bytes | memoryview):
        """Decode the bytes after the PDU header (4 reserved, untested bytes).

        :raises PDUDecodeError: the body is not 4 bytes long.
        """
        _check_length(_view(body), 4, cls.NAME)
        return RELEASE_PDUS[cls.PDU_TYPE]

    def summary(self) -> str:
        """Return a one-line description for debug logs."""
        return f"{self.NAME} PDU"


@dataclass(frozen=True)
class AReleaseRQ(_ReleasePDU):
    """A-RELEASE-RQ PDU (PS3.8 9.3.6)."""

    PDU_TYPE: ClassVar[int] = 0x05
    NAME: ClassVar[str] = "A-RELEASE-RQ"


@dataclass(frozen=True)
class AReleaseRP(_ReleasePDU):
    """A-RELEASE-RP PDU (PS3.8 9.3.7)."""

    PDU_TYPE: ClassVar[int] = 0x06
    NAME: ClassVar[str] = "A-RELEASE-RP"


#: The one A-RELEASE-RQ and the one A-RELEASE-RP, by PDU type: they carry
#: nothing, so decoding (and the release primitives) hand these out rather
#: than make one per association.
RELEASE_PDUS = {AReleaseRQ.PDU_TYPE: AReleaseRQ(), AReleaseRP.PDU_TYPE: AReleaseRP()}
#: Their encodings, by PDU type.
RELEASE_ENCODED = {pdu_type: _pdu(pdu_type, [_RELEASE_BODY]) for pdu_type in RELEASE_PDUS}


@dataclass(frozen=True)
class AAbort:
    """A-ABORT PDU (PS3.8 9.3.8).

    :ivar source: an :class:`AbortSource`.
    :ivar reason: an :class:`AbortReason` (significant for the provider only).
    """

    PDU_TYPE: ClassVar[int] = 0x07
    source: int = 0
    reason: int = 0

    def encode(self) -> bytes:
        """Return the whole PDU, header included."""
        return _pdu(self.PDU_TYPE, [_ABORT_BODY.pack(self.source, self.reason)])

    @classmethod
    def decode(cls, body: bytes | memoryview) -> AAbort:
        """Decode the bytes after the PDU header.

        :raises PDUDecodeError: the body is not 4 bytes long.
        """
        view = _view(body)
        _check_length(view, _ABORT_BODY.size, "A-ABORT")
        return cls(*_ABORT_BODY.unpack_from(view, 0))

    def summary(self) -> str:
        """Return a one-line description for debug logs."""
        return f"A-ABORT PDU: source {self.source}, reason {self.reason}"


PDU = Union[AAssociateRQ, AAssociateAC, AAssociateRJ, PDataTF, AReleaseRQ, AReleaseRP, AAbort]

#: PDU types and their classes (PS3.8 Table 9-11).
PDU_TYPES: dict[int, type] = {
    0x01: AAssociateRQ,
    0x02: AAssociateAC,
    0x03: AAssociateRJ,
    0x04: PDataTF,
    0x05: AReleaseRQ,
    0x06: AReleaseRP,
    0x07: AAbort,
}


def decode_pdu(pdu_type: int, body: bytes | memoryview) -> PDU:
    """Decode a PDU from its type and the bytes after its header.

    :param pdu_type: the first byte of the PDU header.
    :param body: the PDU's variable part (memoryview slices are kept for
        P-DATA-TF data).
    :returns: the decoded PDU.
    :raises PDUDecodeError: the type is unknown (abort reason 1) or the body
        is malformed.
    """
    pdu_class = PDU_TYPES.get(pdu_type)
    if pdu_class is None:
        raise PDUDecodeError(
            f"unrecognized PDU type 0x{pdu_type:02X}", 0, AbortReason.UNRECOGNIZED_PDU
        )
    try:
        return pdu_class.decode(body)
    except MALFORMED as e:
        raise malformed(pdu_type, e) from e


#: The errors a decoder's own bug may raise on a malformed body (every
#: decoder checks its lengths; these are a safety net so that a bug of
#: ours still turns into an A-ABORT and not a crash).
MALFORMED = (struct.error, IndexError, ValueError, TypeError)

#: Each PDU type's decoder (``PDU_TYPES[t].decode``), for a caller that
#: has checked the type (the framer has) and catches :data:`MALFORMED`.
DECODERS = {pdu_type: pdu_class.decode for pdu_type, pdu_class in PDU_TYPES.items()}


def malformed(pdu_type: int, error: Exception) -> PDUDecodeError:
    """The PDUDecodeError (abort reason 6) for a body of ``pdu_type`` whose
    decoder failed with one of the :data:`MALFORMED` errors."""
    return PDUDecodeError(f"malformed {PDU_TYPES[pdu_type].__name__}: {error}", 0,
                          AbortReason.INVALID_PDU_PARAMETER_VALUE)


def pdata_header(context_id: int, control: int, data_length: int) -> bytes:
    """Return the 12 bytes preceding ``data`` in a P-DATA-TF with a single PDV.

    The PDU header, PDV length, context id and message control header, so a
    sender can write these and then the data itself without joining them.

    :param context_id: the presentation context id.
    :param control: the message control header (:data:`COMMAND`,
        :data:`LAST_FRAGMENT`).
    :param data_length: the number of data bytes that will follow.
    """
    return _PDATA_HEADER.pack(PDataTF.PDU_TYPE, data_length + 6, data_length + 2, context_id, control)


#: The length of :func:`pdata_header`'s bytes.
PDATA_HEADER_LENGTH = _PDATA_HEADER.size


def pack_pdata_header(buffer: bytearray | memoryview, offset: int, context_id: int,
                      control: int, data_length: int) -> None:
    """Write :func:`pdata_header`'s 12 bytes into ``buffer`` at ``offset``,
    for a sender that frames data in place (the data follows at
    ``offset + PDATA_HEADER_LENGTH``)."""
    _PDATA_HEADER.pack_into(buffer, offset, PDataTF.PDU_TYPE, data_length + 6, data_length + 2,
                            context_id, control)
