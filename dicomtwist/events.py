"""What happens in the archive, told to whoever listens.

The network and service layers *publish* events (an association accepted, an
instance stored, a query answered, ...); observers *subscribe*: the
Prometheus metrics, the DICOM audit trail, the JSON log.  The publishers know
nothing about their observers, and an observer cannot break a publisher:
an observer that raises is logged and the event goes on to the others.

Events are small frozen dataclasses with plain values (strings, numbers,
tuples); they never carry a peer-controlled value into a label set: bounding
labels is the metrics' job, and the audit trail wants the values as they are.

Every event has ``via`` ("dimse" or "http") where it can come from either,
and the peer as ``peer_host`` and, for DIMSE, the AE titles.

Observers run synchronously on the reactor thread when the event is
published: they must be quick (count, append to a bounded queue) and never
block.  Publishing from another thread is not allowed; use
``reactor.callFromThread(bus.publish, event)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from dicomtwist import log as dlog

__all__ = [
    "EventBus", "bus",
    "ApplicationStarted", "ApplicationStopped",
    "AssociationAccepted", "AssociationRejected", "AssociationEnded",
    "OperationCompleted", "InstanceStored", "InstanceSent", "StoreFailed",
    "QueryPerformed", "RetrieveStarted", "RetrieveEnded",
    "AuthenticationFailed", "HttpRequestServed", "StudyDeleted",
]

Observer = Callable[[Any], None]


class EventBus:
    """Observers of events; ``publish`` calls each in subscription order."""

    log = dlog.logger()

    def __init__(self) -> None:
        self._observers: list[Observer] = []

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Add an observer; returns a function that removes it again."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def publish(self, event: Any) -> None:
        """Give ``event`` to every observer; one that raises is logged."""
        for observer in tuple(self._observers):
            try:
                observer(event)
            except Exception:
                self.log.failure("Event observer {observer!r} failed on {event!r}",
                                 observer=observer, event=event)

    @property
    def observed(self) -> bool:
        """Somebody listens (publishers may skip building costly events)."""
        return bool(self._observers)


#: The process's bus: the daemon's publishers and observers meet here.
bus = EventBus()


# -- the application ---------------------------------------------------------

@dataclass(frozen=True)
class ApplicationStarted:
    """The archive started serving (after recovery, listening)."""

    ae_title: str
    node: str
    listening: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApplicationStopped:
    """The archive is stopping (before connections are closed)."""

    ae_title: str
    node: str


# -- associations -------------------------------------------------------------

@dataclass(frozen=True)
class AssociationAccepted:
    """An A-ASSOCIATE-RQ was accepted (acceptor side)."""

    association_id: int
    peer_host: str
    peer_port: int
    calling_ae: str
    called_ae: str


@dataclass(frozen=True)
class AssociationRejected:
    """An A-ASSOCIATE-RQ was rejected.

    ``reason`` is one of a bounded set: ``"called-ae"``, ``"calling-ae"``,
    ``"address"`` (access rules), ``"application-context"``,
    ``"limit"`` (max_associations), ``"other"``; ``detail`` is the words
    the log line gives.
    """

    association_id: int
    peer_host: str
    calling_ae: str
    called_ae: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class AssociationEnded:
    """An established association ended: ``how`` is ``"released"`` or
    ``"aborted"`` (``cause`` says by whom and why)."""

    association_id: int
    peer_host: str
    calling_ae: str
    how: str
    cause: str = ""


@dataclass(frozen=True)
class OperationCompleted:
    """A DIMSE request we served got its final response.

    ``service``: ``"echo"``, ``"store"``, ``"find"``, ``"get"``, ``"move"``,
    ``"n-action"``, ``"n-create"``, ``"n-set"``, ...; ``status``: the final
    status; ``seconds``: from the request's arrival to the final response;
    ``sop_class_uid``: the affected SOP class.
    """

    association_id: int
    service: str
    status: int
    seconds: float
    sop_class_uid: str = ""
    peer_host: str = ""
    calling_ae: str = ""


# -- instances ----------------------------------------------------------------

@dataclass(frozen=True)
class InstanceStored:
    """An instance was stored and acknowledged (durable and indexed).

    Timings in seconds: ``receive`` (first byte to last byte of the data
    set), ``fsync`` (file made durable), ``commit`` (index transaction),
    ``total`` (first byte to Success).  Any may be 0.0 when unknown.
    """

    via: str
    peer_host: str
    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    patient_id: str
    patient_name: str
    size: int
    duplicate: bool = False
    association_id: int | None = None
    receive: float = 0.0
    fsync: float = 0.0
    commit: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class StoreFailed:
    """A store was answered with a failure status (nothing kept)."""

    via: str
    peer_host: str
    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    status: int
    reason: str = ""
    association_id: int | None = None


@dataclass(frozen=True)
class InstanceSent:
    """A C-STORE sub-operation (C-MOVE/C-GET) or a WADO-RS answer sent one
    instance; ``status`` is the destination's C-STORE status (0 for HTTP)."""

    via: str
    destination_ae: str
    destination_host: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    patient_id: str
    size: int
    status: int = 0
    association_id: int | None = None


# -- queries and retrieves ----------------------------------------------------

@dataclass(frozen=True)
class QueryPerformed:
    """A C-FIND or QIDO-RS query was answered.

    ``query``: the identifier as received (DIMSE: the encoded data set bytes
    in ``transfer_syntax``; HTTP: the request URI as bytes), for the audit
    trail's ParticipantObjectQuery.  ``matches``: responses sent.
    """

    via: str
    peer_host: str
    calling_ae: str
    sop_class_uid: str
    level: str
    query: bytes
    matches: int
    status: int
    seconds: float
    transfer_syntax: str = ""
    association_id: int | None = None


@dataclass(frozen=True)
class RetrieveStarted:
    """A C-MOVE, C-GET or WADO-RS retrieve begins sending instances."""

    via: str
    service: str  # "move", "get", "wado"
    peer_host: str
    calling_ae: str
    destination_ae: str
    destination_host: str
    study_instance_uids: tuple[str, ...]
    patient_ids: tuple[str, ...]
    count: int
    association_id: int | None = None


@dataclass(frozen=True)
class RetrieveEnded:
    """A retrieve ended: sub-operation counts and the final status."""

    via: str
    service: str
    peer_host: str
    calling_ae: str
    destination_ae: str
    destination_host: str
    study_instance_uids: tuple[str, ...]
    patient_ids: tuple[str, ...]
    completed: int
    failed: int
    warning: int
    status: int
    sop_instance_uids: tuple[str, ...] = field(default=(), repr=False)
    association_id: int | None = None


@dataclass(frozen=True)
class StudyDeleted:
    """A study was deleted (its index rows, then its files) at a user's
    request: ``user`` is the HTTP user (empty without authentication).
    ``instances``: ``(SOP Class UID, SOP Instance UID)`` pairs removed."""

    via: str
    peer_host: str
    user: str
    study_instance_uid: str
    patient_id: str
    patient_name: str
    instances: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ProcedureStepRecorded:
    """A Modality Performed Procedure Step was created (N-CREATE,
    ``action="C"``) or updated (N-SET, ``action="U"``) and kept."""

    via: str
    peer_host: str
    calling_ae: str
    sop_instance_uid: str
    action: str
    status: str
    patient_id: str
    patient_name: str
    study_instance_uids: tuple[str, ...] = ()
    accession_numbers: tuple[str, ...] = ()
    association_id: int | None = None


# -- security and HTTP --------------------------------------------------------

@dataclass(frozen=True)
class AuthenticationFailed:
    """A peer failed authentication: HTTP credentials refused
    (``via="http"``), or a TLS handshake that failed (``via="dimse"``)."""

    via: str
    peer_host: str
    user: str
    reason: str


@dataclass(frozen=True)
class HttpRequestServed:
    """An HTTP request was answered.  ``route`` is a bounded name
    (``"qido"``, ``"wado"``, ``"stow"``, ``"metrics"``, ``"ui"``, ...), never
    the path itself."""

    route: str
    method: str
    status: int
    seconds: float
    peer_host: str = ""
    user: str = ""
