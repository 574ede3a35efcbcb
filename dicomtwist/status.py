"""DIMSE status codes and their classes (PS3.7 Annex C, PS3.4 service tables).

``Status`` names the codes dicomtwist sends or recognises; ``category`` sorts
any 16-bit code into its Status Class by the PS3.7 Annex C convention, and
``status_name`` gives the readable meaning used in logs and by the Move SCU.
"""

from __future__ import annotations

from enum import Enum, IntEnum

__all__ = ["Category", "Status", "category", "status_name"]


class Status(IntEnum):
    """Named DIMSE status codes (PS3.7 Annex C; PS3.4 B.2.3, C.4).

    Some codes mean different things in different services (0xB000 is
    "Coercion of Data Elements" for C-STORE and "Sub-operations Complete With
    Failures" for C-MOVE/C-GET); the later names are aliases of the earlier.
    """

    # Success (PS3.7 C.1)
    SUCCESS = 0x0000

    # Pending (PS3.7 C.2; PS3.4 C.4.1.1.4)
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01
    """Matches are continuing; one or more Optional Keys were not supported."""

    # Cancel (PS3.7 C.3)
    CANCEL = 0xFE00

    # Warning (PS3.7 C.4, PS3.4)
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
    ATTRIBUTE_LIST_ERROR = 0x0107
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    SUB_OPERATIONS_COMPLETE_WITH_FAILURES = 0xB000
    COERCION_OF_DATA_ELEMENTS = 0xB000
    STORE_COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007

    # Failure, service specific (PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)
    OUT_OF_RESOURCES = 0xA700
    REFUSED_OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    UNABLE_TO_PROCESS = 0xC001
    """Our general "unable to process" failure (PS3.4 C.4: Cxxx)."""
    STORE_CANNOT_UNDERSTAND = 0xC210

    # Failure, general DIMSE (PS3.7 C.5)
    NO_SUCH_ATTRIBUTE = 0x0105
    INVALID_ATTRIBUTE_VALUE = 0x0106
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    NO_SUCH_EVENT_TYPE = 0x0113
    INVALID_ARGUMENT_VALUE = 0x0115
    INVALID_OBJECT_INSTANCE = 0x0117
    NO_SUCH_SOP_CLASS = 0x0118
    CLASS_INSTANCE_CONFLICT = 0x0119
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NO_SUCH_ACTION_TYPE = 0x0123
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213


class Category(Enum):
    """The Status Classes of PS3.7 Annex C."""

    SUCCESS = "Success"
    PENDING = "Pending"
    CANCEL = "Cancel"
    WARNING = "Warning"
    FAILURE = "Failure"


def category(status: int) -> Category:
    """Return the Status Class of a status code (PS3.7 Annex C).

    Success is 0000; Warning 0001, Bxxx, 0107 and 0116; Cancel FE00; Pending
    FF00 and FF01; everything else (Axxx, Cxxx, other 01xx, 02xx, and codes
    the standard does not allow) is treated as Failure.

    :param status: the Status (0000,0900) value.
    :returns: its class.
    """
    status = int(status)
    if status == 0x0000:
        return Category.SUCCESS
    if status in (0xFF00, 0xFF01):
        return Category.PENDING
    if status == 0xFE00:
        return Category.CANCEL
    if status in (0x0001, 0x0107, 0x0116) or status & 0xF000 == 0xB000:
        return Category.WARNING
    return Category.FAILURE


# One readable meaning per code; where codes are shared, the wording covers
# the service that uses the code most (C-MOVE/C-GET for 0xB000, 0xA900).
_NAMES: dict[int, str] = {
    Status.SUCCESS: "Success",
    Status.PENDING: "Pending",
    Status.PENDING_WARNING: "Pending (Optional Keys Not Supported)",
    Status.CANCEL: "Cancel",
    Status.OPTIONAL_ATTRIBUTES_NOT_SUPPORTED: "Requested Optional Attributes Not Supported",
    Status.ATTRIBUTE_LIST_ERROR: "Attribute List Error",
    Status.ATTRIBUTE_VALUE_OUT_OF_RANGE: "Attribute Value Out of Range",
    Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES: "Sub-operations Complete With Failures",
    Status.ELEMENTS_DISCARDED: "Elements Discarded",
    Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING: "Data Set Does Not Match SOP Class",
    Status.OUT_OF_RESOURCES: "Out of Resources",
    Status.OUT_OF_RESOURCES_MATCHES: "Out of Resources: Unable to Calculate Number of Matches",
    Status.OUT_OF_RESOURCES_SUB_OPERATIONS: "Out of Resources: Unable to Perform Sub-operations",
    Status.MOVE_DESTINATION_UNKNOWN: "Move Destination Unknown",
    Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: "Data Set Does Not Match SOP Class",
    Status.CANNOT_UNDERSTAND: "Cannot Understand",
    Status.UNABLE_TO_PROCESS: "Unable to Process",
    Status.STORE_CANNOT_UNDERSTAND: "Cannot Understand",
    Status.NO_SUCH_ATTRIBUTE: "No Such Attribute",
    Status.INVALID_ATTRIBUTE_VALUE: "Invalid Attribute Value",
    Status.PROCESSING_FAILURE: "Processing Failure",
    Status.DUPLICATE_SOP_INSTANCE: "Duplicate SOP Instance",
    Status.NO_SUCH_SOP_INSTANCE: "No Such SOP Instance",
    Status.NO_SUCH_EVENT_TYPE: "No Such Event Type",
    Status.INVALID_ARGUMENT_VALUE: "Invalid Argument Value",
    Status.INVALID_OBJECT_INSTANCE: "Invalid Object Instance",
    Status.NO_SUCH_SOP_CLASS: "No Such SOP Class",
    Status.CLASS_INSTANCE_CONFLICT: "Class-Instance Conflict",
    Status.MISSING_ATTRIBUTE: "Missing Attribute",
    Status.MISSING_ATTRIBUTE_VALUE: "Missing Attribute Value",
    Status.SOP_CLASS_NOT_SUPPORTED: "SOP Class Not Supported",
    Status.NO_SUCH_ACTION_TYPE: "No Such Action Type",
    Status.NOT_AUTHORIZED: "Not Authorized",
    Status.DUPLICATE_INVOCATION: "Duplicate Invocation",
    Status.UNRECOGNIZED_OPERATION: "Unrecognized Operation",
    Status.MISTYPED_ARGUMENT: "Mistyped Argument",
    Status.RESOURCE_LIMITATION: "Resource Limitation",
}


def status_name(status: int) -> str:
    """Return the readable meaning of a status code, as a Move SCU prints it.

    :param status: the Status (0000,0900) value.
    :returns: e.g. ``"Success"``, ``"Move Destination Unknown"``, or
        ``"Unknown"`` for a code dicomtwist does not name.
    """
    return _NAMES.get(int(status), "Unknown")
