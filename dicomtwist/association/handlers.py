"""What a service handler is given and what it gives back.

A handler (a PS3.4 service) is called as ``handler(request)`` with a
:class:`ServiceRequest` and may return a value, a Deferred, or -- for
C-FIND/C-GET/C-MOVE -- an iterable or async iterable of pending results;
:func:`as_response` turns each into a :class:`Response`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomtwist.acse import PresentationContext
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.codec import decode_dataset
from dicomtwist.errors import DIMSEDecodeError, DIMSEServiceError
from dicomtwist.status import Status

if TYPE_CHECKING:
    from dicomtwist.association.protocol import Association

#: The response class of each request class.
RESPONSE_FOR: dict[type, type] = {
    m.CEchoRQ: m.CEchoRSP,
    m.CStoreRQ: m.CStoreRSP,
    m.CFindRQ: m.CFindRSP,
    m.CGetRQ: m.CGetRSP,
    m.CMoveRQ: m.CMoveRSP,
    m.NEventReportRQ: m.NEventReportRSP,
    m.NGetRQ: m.NGetRSP,
    m.NSetRQ: m.NSetRSP,
    m.NActionRQ: m.NActionRSP,
    m.NCreateRQ: m.NCreateRSP,
    m.NDeleteRQ: m.NDeleteRSP,
}

#: The handler name of each request class.
SERVICE_FOR: dict[type, str] = {
    m.CEchoRQ: "echo",
    m.CStoreRQ: "store",
    m.CFindRQ: "find",
    m.CGetRQ: "get",
    m.CMoveRQ: "move",
    m.NEventReportRQ: "n-event-report",
    m.NGetRQ: "n-get",
    m.NSetRQ: "n-set",
    m.NActionRQ: "n-action",
    m.NCreateRQ: "n-create",
    m.NDeleteRQ: "n-delete",
}

#: Services whose handlers produce several (pending) responses.
MULTI_RESPONSE = frozenset({"find", "get", "move"})

#: The DIMSE-N services: a requestor's Deferred fires with ``(response,
#: data set or None)``.
N_SERVICES = frozenset({"n-event-report", "n-get", "n-set", "n-action", "n-create",
                        "n-delete"})

#: Human names for the log, as the spec's log excerpts print them.
LOG_NAMES = {"echo": "Echo", "store": "Store", "find": "Find", "get": "Get", "move": "Move",
             "n-event-report": "N-EVENT-REPORT", "n-get": "N-GET", "n-set": "N-SET",
             "n-action": "N-ACTION", "n-create": "N-CREATE", "n-delete": "N-DELETE"}


@dataclass(frozen=True)
class Response:
    """One response a handler gives: a status, an optional data set, and
    any other response command fields (``number_of_completed_sub_operations``,
    ``error_comment``, ...) by their message field names."""

    status: int
    dataset: Dataset | bytes | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ServiceRequest:
    """A DIMSE request as a handler sees it.

    :ivar data: the data set as received: ``bytes`` from the default sink,
        or whatever a custom sink returned (e.g. a temporary file's path).
    :ivar cancelled: set when a C-CANCEL-RQ for this request arrives.
    :ivar received: when the request was complete (``time.monotonic()``).
    """

    association: "Association"
    message: m.Message
    context: PresentationContext
    data: Any = None
    cancelled: bool = False
    received: float = 0.0

    def dataset(self) -> Dataset:
        """Decode the request's data set (identifier or SOP instance).

        :raises DIMSEServiceError: the data set cannot be decoded.
        """
        if self.data is None:
            raise DIMSEServiceError(Status.CANNOT_UNDERSTAND, "no data set")
        if isinstance(self.data, (bytes, bytearray, memoryview)):
            try:
                return decode_dataset(self.data, self.context.transfer_syntax)
            except DIMSEDecodeError as e:
                raise DIMSEServiceError(Status.CANNOT_UNDERSTAND, str(e)[:64]) from e
        try:
            return dcmread(self.data, force=True)
        except Exception as e:
            raise DIMSEServiceError(Status.CANNOT_UNDERSTAND, str(e)[:64]) from e


Handler = Callable[[ServiceRequest], Any]


@functools.cache
def field_names(message_class: type) -> frozenset[str]:
    """The field names of a message class (computed once per class)."""
    return frozenset(f.name for f in fields(message_class))


#: What a response carrying a status alone has as its other fields:
#: immutable, so that such responses can be shared.
_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
#: Responses carrying a status alone, by status (a C-ECHO's Success is made
#: once, not per request).
_STATUS_ONLY: dict[int, Response] = {}
#: At most this many (statuses are 16-bit; handlers use a few).
STATUS_ONLY_SIZE = 256
#: Bound once (reading a member from its IntEnum class costs a slot
#: wrapper's call on Python 3.11; see :mod:`dicomtwist.ul.fsm`).
_SUCCESS = Status.SUCCESS


def status_response(status: int) -> Response:
    """The response carrying ``status`` alone (shared: it is immutable)."""
    response = _STATUS_ONLY.get(status)
    if response is None:
        response = Response(status, None, _NO_FIELDS)
        if len(_STATUS_ONLY) < STATUS_ONLY_SIZE:
            _STATUS_ONLY[status] = response
    return response


def as_response(result: Any) -> Response:
    """A handler's result as a :class:`Response`."""
    if result is None:
        return status_response(_SUCCESS)
    if isinstance(result, int):
        return status_response(result)
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple):
        status, dataset = result[0], result[1] if len(result) > 1 else None
        return Response(status, dataset)
    if isinstance(result, Dataset):
        return Response(Status.PENDING, result)
    raise TypeError(f"a handler returned {result!r}, not a status or Response")
