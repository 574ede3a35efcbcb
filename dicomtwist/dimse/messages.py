"""DIMSE messages: one frozen dataclass per command (PS3.7 9.3 and 10.3).

Field names are the snake_case form of the command element keywords of
PS3.7 Annex E (``AffectedSOPClassUID`` -> ``affected_sop_class_uid``).  An
optional element whose value is ``None`` is left out of the command set.
CommandField (0000,0100) is the class's ``COMMAND_FIELD``; CommandDataSetType
(0000,0800) is not a field: ``dicomtwist.dimse.codec`` carries it as
``has_dataset`` beside the message.

Tags in ``offending_element`` and ``attribute_identifier_list`` are ints
``(group << 16) | element``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from dicomtwist.status import status_name

__all__ = [
    "COMMAND_FIELDS",
    "CCancelRQ",
    "CEchoRQ",
    "CEchoRSP",
    "CFindRQ",
    "CFindRSP",
    "CGetRQ",
    "CGetRSP",
    "CMoveRQ",
    "CMoveRSP",
    "CStoreRQ",
    "CStoreRSP",
    "Message",
    "NActionRQ",
    "NActionRSP",
    "NCreateRQ",
    "NCreateRSP",
    "NDeleteRQ",
    "NDeleteRSP",
    "NEventReportRQ",
    "NEventReportRSP",
    "NGetRQ",
    "NGetRSP",
    "NSetRQ",
    "NSetRSP",
    "Priority",
]


class Priority(IntEnum):
    """Priority (0000,0700) values (PS3.7 Annex E)."""

    MEDIUM = 0x0000
    HIGH = 0x0001
    LOW = 0x0002


class Message:
    """Behaviour shared by every DIMSE message class.

    Subclasses are frozen dataclasses that set ``COMMAND_FIELD``, ``NAME`` and
    ``IS_RESPONSE``.
    """

    COMMAND_FIELD: ClassVar[int]
    NAME: ClassVar[str]
    IS_RESPONSE: ClassVar[bool]

    def summary(self) -> str:
        """Describe the message in one line for the log.

        :returns: e.g. ``"C-ECHO-RQ message 1"`` or
            ``"C-STORE-RSP message 3, status 0x0000 (Success)"``.
        """
        if not self.IS_RESPONSE:
            return f"{self.NAME} message {getattr(self, 'message_id')}"
        text = f"{self.NAME} message {getattr(self, 'message_id_being_responded_to')}"
        status = getattr(self, "status", None)
        if status is not None:
            text += f", status 0x{int(status):04X} ({status_name(status)})"
        return text


# Composite services (PS3.7 9.3).


@dataclass(frozen=True)
class CStoreRQ(Message):
    """C-STORE-RQ (PS3.7 9.3.1.1, Table 9.3-1)."""

    COMMAND_FIELD: ClassVar[int] = 0x0001
    NAME: ClassVar[str] = "C-STORE-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: int = Priority.MEDIUM
    move_originator_application_entity_title: str | None = None
    move_originator_message_id: int | None = None


@dataclass(frozen=True)
class CStoreRSP(Message):
    """C-STORE-RSP (PS3.7 9.3.1.2, Table 9.3-2)."""

    COMMAND_FIELD: ClassVar[int] = 0x8001
    NAME: ClassVar[str] = "C-STORE-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None


@dataclass(frozen=True)
class CGetRQ(Message):
    """C-GET-RQ (PS3.7 9.3.3.1, Table 9.3-5)."""

    COMMAND_FIELD: ClassVar[int] = 0x0010
    NAME: ClassVar[str] = "C-GET-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    affected_sop_class_uid: str
    priority: int = Priority.MEDIUM


@dataclass(frozen=True)
class CGetRSP(Message):
    """C-GET-RSP (PS3.7 9.3.3.2, Table 9.3-6)."""

    COMMAND_FIELD: ClassVar[int] = 0x8010
    NAME: ClassVar[str] = "C-GET-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    number_of_remaining_sub_operations: int | None = None
    number_of_completed_sub_operations: int | None = None
    number_of_failed_sub_operations: int | None = None
    number_of_warning_sub_operations: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None


@dataclass(frozen=True)
class CFindRQ(Message):
    """C-FIND-RQ (PS3.7 9.3.2.1, Table 9.3-3)."""

    COMMAND_FIELD: ClassVar[int] = 0x0020
    NAME: ClassVar[str] = "C-FIND-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    affected_sop_class_uid: str
    priority: int = Priority.MEDIUM


@dataclass(frozen=True)
class CFindRSP(Message):
    """C-FIND-RSP (PS3.7 9.3.2.2, Table 9.3-4)."""

    COMMAND_FIELD: ClassVar[int] = 0x8020
    NAME: ClassVar[str] = "C-FIND-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None


@dataclass(frozen=True)
class CMoveRQ(Message):
    """C-MOVE-RQ (PS3.7 9.3.4.1, Table 9.3-7)."""

    COMMAND_FIELD: ClassVar[int] = 0x0021
    NAME: ClassVar[str] = "C-MOVE-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    affected_sop_class_uid: str
    move_destination: str
    priority: int = Priority.MEDIUM


@dataclass(frozen=True)
class CMoveRSP(Message):
    """C-MOVE-RSP (PS3.7 9.3.4.2, Table 9.3-8)."""

    COMMAND_FIELD: ClassVar[int] = 0x8021
    NAME: ClassVar[str] = "C-MOVE-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    number_of_remaining_sub_operations: int | None = None
    number_of_completed_sub_operations: int | None = None
    number_of_failed_sub_operations: int | None = None
    number_of_warning_sub_operations: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None


@dataclass(frozen=True)
class CEchoRQ(Message):
    """C-ECHO-RQ (PS3.7 9.3.5.1, Table 9.3-12)."""

    COMMAND_FIELD: ClassVar[int] = 0x0030
    NAME: ClassVar[str] = "C-ECHO-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    affected_sop_class_uid: str = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class CEchoRSP(Message):
    """C-ECHO-RSP (PS3.7 9.3.5.2, Table 9.3-13)."""

    COMMAND_FIELD: ClassVar[int] = 0x8030
    NAME: ClassVar[str] = "C-ECHO-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    error_comment: str | None = None


@dataclass(frozen=True)
class CCancelRQ(Message):
    """C-CANCEL-RQ for C-FIND, C-GET or C-MOVE (PS3.7 9.3.2.3, Table 9.3-3a).

    An unconfirmed request that names the operation it cancels, so its summary
    reads ``"C-CANCEL-RQ for message N"``.
    """

    COMMAND_FIELD: ClassVar[int] = 0x0FFF
    NAME: ClassVar[str] = "C-CANCEL-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id_being_responded_to: int

    def summary(self) -> str:
        """Describe the cancel request in one line for the log.

        :returns: e.g. ``"C-CANCEL-RQ for message 3"``.
        """
        return f"{self.NAME} for message {self.message_id_being_responded_to}"


# Normalized services (PS3.7 10.3).


@dataclass(frozen=True)
class NEventReportRQ(Message):
    """N-EVENT-REPORT-RQ (PS3.7 10.3.1.1, Table 10.3-1)."""

    COMMAND_FIELD: ClassVar[int] = 0x0100
    NAME: ClassVar[str] = "N-EVENT-REPORT-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    event_type_id: int


@dataclass(frozen=True)
class NEventReportRSP(Message):
    """N-EVENT-REPORT-RSP (PS3.7 10.3.1.2, Table 10.3-2)."""

    COMMAND_FIELD: ClassVar[int] = 0x8100
    NAME: ClassVar[str] = "N-EVENT-REPORT-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    event_type_id: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None


@dataclass(frozen=True)
class NGetRQ(Message):
    """N-GET-RQ (PS3.7 10.3.2.1, Table 10.3-3)."""

    COMMAND_FIELD: ClassVar[int] = 0x0110
    NAME: ClassVar[str] = "N-GET-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    attribute_identifier_list: tuple[int, ...] | None = None


@dataclass(frozen=True)
class NGetRSP(Message):
    """N-GET-RSP (PS3.7 10.3.2.2, Table 10.3-4)."""

    COMMAND_FIELD: ClassVar[int] = 0x8110
    NAME: ClassVar[str] = "N-GET-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None


@dataclass(frozen=True)
class NSetRQ(Message):
    """N-SET-RQ (PS3.7 10.3.3.1, Table 10.3-5)."""

    COMMAND_FIELD: ClassVar[int] = 0x0120
    NAME: ClassVar[str] = "N-SET-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str


@dataclass(frozen=True)
class NSetRSP(Message):
    """N-SET-RSP (PS3.7 10.3.3.2, Table 10.3-6)."""

    COMMAND_FIELD: ClassVar[int] = 0x8120
    NAME: ClassVar[str] = "N-SET-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None


@dataclass(frozen=True)
class NActionRQ(Message):
    """N-ACTION-RQ (PS3.7 10.3.4.1, Table 10.3-7)."""

    COMMAND_FIELD: ClassVar[int] = 0x0130
    NAME: ClassVar[str] = "N-ACTION-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    action_type_id: int


@dataclass(frozen=True)
class NActionRSP(Message):
    """N-ACTION-RSP (PS3.7 10.3.4.2, Table 10.3-8)."""

    COMMAND_FIELD: ClassVar[int] = 0x8130
    NAME: ClassVar[str] = "N-ACTION-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    action_type_id: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None


@dataclass(frozen=True)
class NCreateRQ(Message):
    """N-CREATE-RQ (PS3.7 10.3.5.1, Table 10.3-9)."""

    COMMAND_FIELD: ClassVar[int] = 0x0140
    NAME: ClassVar[str] = "N-CREATE-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str | None = None


@dataclass(frozen=True)
class NCreateRSP(Message):
    """N-CREATE-RSP (PS3.7 10.3.5.2, Table 10.3-10)."""

    COMMAND_FIELD: ClassVar[int] = 0x8140
    NAME: ClassVar[str] = "N-CREATE-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None


@dataclass(frozen=True)
class NDeleteRQ(Message):
    """N-DELETE-RQ (PS3.7 10.3.6.1, Table 10.3-11)."""

    COMMAND_FIELD: ClassVar[int] = 0x0150
    NAME: ClassVar[str] = "N-DELETE-RQ"
    IS_RESPONSE: ClassVar[bool] = False

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str


@dataclass(frozen=True)
class NDeleteRSP(Message):
    """N-DELETE-RSP (PS3.7 10.3.6.2, Table 10.3-12)."""

    COMMAND_FIELD: ClassVar[int] = 0x8150
    NAME: ClassVar[str] = "N-DELETE-RSP"
    IS_RESPONSE: ClassVar[bool] = True

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None


COMMAND_FIELDS: dict[int, type[Message]] = {
    0x0001: CStoreRQ,
    0x8001: CStoreRSP,
    0x0010: CGetRQ,
    0x8010: CGetRSP,
    0x0020: CFindRQ,
    0x8020: CFindRSP,
    0x0021: CMoveRQ,
    0x8021: CMoveRSP,
    0x0030: CEchoRQ,
    0x8030: CEchoRSP,
    0x0FFF: CCancelRQ,
    0x0100: NEventReportRQ,
    0x8100: NEventReportRSP,
    0x0110: NGetRQ,
    0x8110: NGetRSP,
    0x0120: NSetRQ,
    0x8120: NSetRSP,
    0x0130: NActionRQ,
    0x8130: NActionRSP,
    0x0140: NCreateRQ,
    0x8140: NCreateRSP,
    0x0150: NDeleteRQ,
    0x8150: NDeleteRSP,
}
"""CommandField (0000,0100) value -> message class (PS3.7 Annex E)."""
