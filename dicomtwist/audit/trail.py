"""The audit trail: events of the archive, recorded as DICOM audit messages.

:class:`AuditTrail` subscribes to :data:`dicomtwist.events.bus` and turns

* ``ApplicationStarted`` / ``ApplicationStopped`` into Application Activity;
* ``AssociationRejected`` and a failed TLS handshake (``AuthenticationFailed``
  by DIMSE) into Security Alert (Node Authentication); refused HTTP
  credentials into User Authentication (Login, failed), an HTTP request the
  user may not make into Security Alert (Use of Restricted Function);
* ``InstanceStored`` into DICOM Instances Transferred (action Create), one
  message for each study of an association, sent when it ends (instances
  stored by HTTP: one message each);
* ``QueryPerformed`` into Query;
* ``RetrieveStarted`` into Begin Transferring DICOM Instances and
  ``RetrieveEnded`` into DICOM Instances Transferred (action Read), with the
  SOP classes and instances its ``InstanceSent`` events named (for a
  retrieve of one study).

It runs on the reactor and never waits: a message is built, framed and put
in a bounded :class:`~dicomtwist.audit.syslog.MessageQueue`, which its
sender drains when it can; when the queue is full the message is dropped
and counted (:attr:`AuditTrail.dropped`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred

from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.audit import messages as m
from dicomtwist.audit.syslog import (
    FileSender,
    MessageQueue,
    TLSSender,
    UDPSender,
    format_message,
)
from dicomtwist.status import Category, category

__all__ = ["AuditTrail", "Destination", "parse_destination", "build"]

#: Stored instances of one study kept back before a message is sent anyway.
MAX_BATCH = 1000
#: Studies (across associations) waiting for their association to end.
MAX_PENDING = 256


@dataclass(frozen=True)
class Destination:
    """Where audit messages go: ``kind`` is ``udp``, ``tls`` or ``file``."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""


def parse_destination(value: str) -> Destination:
    """``udp:HOST:PORT``, ``tls:HOST:PORT`` or ``file:PATH``
    (an IPv6 address in brackets: ``udp:[::1]:514``).

    :raises ValueError: with the reason.
    """
    kind, sep, rest = value.strip().partition(":")
    kind = kind.lower()
    if not sep or kind not in ("udp", "tls", "file"):
        raise ValueError("udp:HOST:PORT, tls:HOST:PORT or file:PATH")
    if kind == "file":
        if not rest:
            raise ValueError("file: needs a path")
        return Destination("file", path=rest)
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{kind}:HOST:PORT with a port from 1 to 65535")
    return Destination(kind, host=host, port=int(port))


@dataclass
class _StoredStudy:
    """Instances of one study stored over one association, not yet audited."""

    peer: m.Participant
    patient: tuple[str, str]
    duplicate: bool = False
    instances: dict[str, list[str]] = field(default_factory=dict)
    count: int = 0


@dataclass
class _Retrieve:
    """The instances a running retrieve has sent, by SOP class."""

    sent: dict[str, list[str]] = field(default_factory=dict)


def _success(status: int) -> bool:
    """Success, pending, cancel or warning: not a failure (PS3.7 Annex C)."""
    return category(status) is not Category.FAILURE


class AuditTrail:
    """The observer: events in, audit messages out to a sender.

    :param sender_for: builds the sender from the queue (a :class:`UDPSender`,
        :class:`TLSSender` or :class:`FileSender`, or a test double with
        ``start()`` and ``stop()``).
    """

    log = dlog.logger()

    def __init__(self, clock: Any, source: m.Source,
                 sender_for: Callable[[MessageQueue], Any], queue_limit: int = 1000,
                 hostname: str | None = None, procid: str | None = None,
                 bus: events.EventBus | None = None) -> None:
        self.clock = clock
        self.source = source
        self.queue = MessageQueue(queue_limit)
        self.sender = sender_for(self.queue)
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self.procid = procid if procid is not None else str(os.getpid())
        self.bus = bus if bus is not None else events.bus
        self._unsubscribe: Callable[[], None] | None = None
        self._stored: dict[tuple[int | None, str], _StoredStudy] = {}
        self._retrieves: dict[tuple[int | None, str], _Retrieve] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            events.ApplicationStarted: self._application_started,
            events.ApplicationStopped: self._application_stopped,
            events.AssociationRejected: self._association_rejected,
            events.AuthenticationFailed: self._authentication_failed,
            events.InstanceStored: self._instance_stored,
            events.AssociationEnded: self._association_ended,
            events.QueryPerformed: self._query_performed,
            events.RetrieveStarted: self._retrieve_started,
            events.InstanceSent: self._instance_sent,
            events.RetrieveEnded: self._retrieve_ended,
            events.StudyDeleted: self._study_deleted,
            events.ProcedureStepRecorded: self._procedure_step,
        }

    @property
    def dropped(self) -> int:
        """Audit messages lost: the queue was full, or the collector could
        not take them (a datagram too large, a file that cannot be written).
        :class:`dicomtwist.metrics.ArchiveMetrics` exports it as
        ``dicomtwist_audit_messages_dropped_total``."""
        return self.queue.dropped

    # -- life cycle ------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Subscribe to the bus and start the sender."""
        self._unsubscribe = self.bus.subscribe(self)
        return self.sender.start()

    def stop(self) -> Deferred[None]:
        """Send what is kept back, unsubscribe, and stop the sender (which
        sends what it can of the queue first)."""
        for key in list(self._stored):
            self._send_stored(key)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        return self.sender.stop()

    def __call__(self, event: Any) -> None:
        """Observe one bus event."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    # -- sending ----------------------------------------------------------------

    def _emit(self, build: Callable[..., bytes], *args: Any, **kwargs: Any) -> None:
        now = self.clock.seconds()
        xml = build(self.source, now, *args, **kwargs)
        self.queue.put(format_message(xml, m.event_time(now), self.hostname,
                                      procid=self.procid))

    def _us(self, role: m.Code | None = None) -> m.Participant:
        return self.source.participant(role=role)

    @staticmethod
    def _peer(ae_title: str, host: str, requestor: bool,
              role: m.Code | None = None, user: str = "") -> m.Participant:
        return m.Participant(ae_title or user or host or "-", requestor, role,
                             (ae_title,) if ae_title else (), host)

    # -- the events --------------------------------------------------------------

    def _application_started(self, event: events.ApplicationStarted) -> None:
        self._emit(m.application_activity, started=True)

    def _application_stopped(self, event: events.ApplicationStopped) -> None:
        self._emit(m.application_activity, started=False)

    def _association_rejected(self, event: events.AssociationRejected) -> None:
        words = f"Association rejected ({event.reason})"
        if event.detail:
            words += f": {event.detail}"
        performer = self._peer(event.calling_ae, event.peer_host, False)
        self._emit(m.security_alert, m.MINOR_FAILURE, m.NODE_AUTHENTICATION, performer,
                   event.peer_host, words)

    def _authentication_failed(self, event: events.AuthenticationFailed) -> None:
        if event.via == "http" and event.reason.startswith("not permitted"):
            # Authenticated, but the user may not do this (HTTP 403).
            performer = m.Participant(event.user or "-", True, None, (), event.peer_host)
            self._emit(m.security_alert, m.MINOR_FAILURE, m.USE_OF_RESTRICTED_FUNCTION,
                       performer, event.peer_host, f"{event.user}: {event.reason}")
            return
        if event.via == "http":
            user = m.Participant(event.user or "-", True, None, (), event.peer_host)
            self._emit(m.user_authentication, m.MINOR_FAILURE, user,
                       f"Authentication failed: {event.reason}")
            return
        performer = self._peer("", event.peer_host, False, user=event.user)
        self._emit(m.security_alert, m.MINOR_FAILURE, m.NODE_AUTHENTICATION, performer,
                   event.peer_host, f"Node authentication failed: {event.reason}")

    def _instance_stored(self, event: events.InstanceStored) -> None:
        peer = self._peer(event.calling_ae, event.peer_host, True, m.SOURCE)
        if event.association_id is None:
            study = m.Study(event.study_instance_uid,
                            {event.sop_class_uid: (event.sop_instance_uid,)})
            self._emit(m.instances_transferred, "U" if event.duplicate else "C", m.SUCCESS,
                       peer, self._us(m.DESTINATION), (study,),
                       ((event.patient_id, event.patient_name),))
            return
        key = (event.association_id, event.study_instance_uid)
        batch = self._stored.get(key)
        if batch is None:
            if len(self._stored) >= MAX_PENDING:
                self._send_stored(next(iter(self._stored)))
            batch = self._stored[key] = _StoredStudy(
                peer, (event.patient_id, event.patient_name))
        batch.instances.setdefault(event.sop_class_uid, []).append(event.sop_instance_uid)
        batch.duplicate = batch.duplicate or event.duplicate
        batch.count += 1
        if batch.count >= MAX_BATCH:
            self._send_stored(key)

    def _send_stored(self, key: tuple[int | None, str]) -> None:
        batch = self._stored.pop(key)
        study = m.Study(key[1], {sop_class: tuple(uids)
                                 for sop_class, uids in batch.instances.items()})
        self._emit(m.instances_transferred, "U" if batch.duplicate else "C", m.SUCCESS,
                   batch.peer, self._us(m.DESTINATION), (study,), (batch.patient,))

    def _study_deleted(self, event: events.StudyDeleted) -> None:
        deleter = m.Participant(event.user or event.peer_host or "-", True, None, (),
                                event.peer_host)
        instances: dict[str, list[str]] = {}
        for sop_class, sop_instance in event.instances:
            instances.setdefault(sop_class, []).append(sop_instance)
        study = m.Study(event.study_instance_uid,
                        {k: tuple(v) for k, v in instances.items()})
        self._emit(m.study_deleted, m.SUCCESS, deleter, study,
                   (event.patient_id, event.patient_name))

    def _procedure_step(self, event: events.ProcedureStepRecorded) -> None:
        requestor = self._peer(event.calling_ae, event.peer_host, True, m.SOURCE)
        self._emit(m.procedure_record, event.action, m.SUCCESS, requestor,
                   self._us(m.DESTINATION), event.sop_instance_uid,
                   event.study_instance_uids, event.accession_numbers,
                   (event.patient_id, event.patient_name),
                   f"Performed Procedure Step {event.status}" if event.status else "")

    def _association_ended(self, event: events.AssociationEnded) -> None:
        for key in [k for k in self._stored if k[0] == event.association_id]:
            self._send_stored(key)
        for key in [k for k in self._retrieves if k[0] == event.association_id]:
            del self._retrieves[key]

    def _query_performed(self, event: events.QueryPerformed) -> None:
        requestor = self._peer(event.calling_ae, event.peer_host, True, m.SOURCE)
        uri = ""
        if event.via == "http":
            uri = event.query.decode("utf-8", "replace")
        self._emit(m.query, m.SUCCESS if _success(event.status) else m.MINOR_FAILURE,
                   requestor, self._us(m.DESTINATION),
                   event.sop_class_uid if event.via != "http" else "",
                   event.query, event.transfer_syntax, uri)

    def _retrieve_parties(self, event: Any) -> tuple[m.Participant, m.Participant,
                                                     m.Participant | None]:
        """The archive sends, the destination receives; the requestor is a
        third party unless it is the destination (C-GET, WADO)."""
        same = event.service != "move" or (
            event.destination_ae == event.calling_ae
            and event.destination_host == event.peer_host)
        receiver = self._peer(event.destination_ae, event.destination_host, same,
                              m.DESTINATION)
        requestor = None if same else self._peer(event.calling_ae, event.peer_host, True)
        return self._us(m.SOURCE), receiver, requestor

    def _retrieve_started(self, event: events.RetrieveStarted) -> None:
        if event.association_id is not None:
            self._retrieves[(event.association_id, event.destination_ae)] = _Retrieve()
        sender, receiver, requestor = self._retrieve_parties(event)
        self._emit(m.begin_transferring, sender, receiver,
                   tuple(m.Study(uid) for uid in event.study_instance_uids),
                   tuple((pid, "") for pid in event.patient_ids), requestor)

    def _instance_sent(self, event: events.InstanceSent) -> None:
        # A C-MOVE sends over an association of its own: the instance goes
        # to the latest running retrieve to the same destination.
        record = None
        for (_, destination), running in self._retrieves.items():
            if destination == event.destination_ae:
                record = running
        if record is not None and _success(event.status):
            record.sent.setdefault(event.sop_class_uid, []).append(event.sop_instance_uid)

    def _retrieve_ended(self, event: events.RetrieveEnded) -> None:
        record = self._retrieves.pop((event.association_id, event.destination_ae), None)
        # The instances sent are known by SOP class, not by study: they are
        # described only under a retrieve's one study.
        sent = record.sent if record is not None and len(event.study_instance_uids) == 1 else {}
        studies = tuple(m.Study(uid, {c: tuple(i) for c, i in sent.items()})
                        for uid in event.study_instance_uids)
        failed = event.failed > 0 or not _success(event.status)
        words = ""
        if failed:
            words = (f"{event.completed} completed, {event.failed} failed,"
                     f" {event.warning} warning; status 0x{event.status:04X}")
        sender, receiver, requestor = self._retrieve_parties(event)
        self._emit(m.instances_transferred, "R", m.MINOR_FAILURE if failed else m.SUCCESS,
                   sender, receiver, studies, tuple((pid, "") for pid in event.patient_ids),
                   requestor, words)


def build(reactor: Any, settings: Any) -> AuditTrail:
    """The audit trail the settings ask for (``audit`` must be set).

    :raises ValueError: a bad ``audit`` value or unusable TLS files.
    """
    destination = parse_destination(settings.audit)
    hostname = socket.gethostname()
    source = m.Source(settings.audit_source_id or f"{settings.ae_title}@{hostname}",
                      settings.ae_title, hostname)
    if destination.kind == "udp":
        def sender_for(queue: MessageQueue) -> Any:
            return UDPSender(reactor, queue, destination.host, destination.port)
    elif destination.kind == "tls":
        from dicomtwist import tls

        options = tls.client_options(destination.host, settings.audit_tls_ca,
                                     settings.audit_tls_cert, settings.audit_tls_key)

        def sender_for(queue: MessageQueue) -> Any:
            return TLSSender(reactor, queue, destination.host, destination.port, options)
    else:
        def sender_for(queue: MessageQueue) -> Any:
            return FileSender(reactor, queue, destination.path)
    return AuditTrail(reactor, source, sender_for, settings.audit_queue, hostname)
