"""One association: ACSE negotiation and DIMSE messaging on top of the Upper Layer.

:class:`Association` is the DICOM *service user* of an Upper Layer
connection (:class:`dicomtwist.ul.protocol.DicomProtocol`).  It negotiates
with :mod:`dicomtwist.acse`, reassembles incoming DIMSE messages with
:class:`dicomtwist.dimse.assembly.MessageAssembler`, sends messages in
P-DATA-TF fragments no larger than the peer's maximum, and dispatches
requests to service handlers; the requests it sends itself (and their
responses) are :class:`~dicomtwist.association.requestor.Requestor`'s.
"""

from __future__ import annotations

import itertools
import os
import time
from types import CoroutineType
from typing import Any, Awaitable, Iterator, Mapping

from pydicom.dataset import Dataset
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from dicomtwist import acse
from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.acse import AcceptorPolicy, Negotiated, PresentationContext
from dicomtwist.association.files import FileDataSet, FileProducer
from dicomtwist.association.handlers import (
    LOG_NAMES,
    MULTI_RESPONSE,
    RESPONSE_FOR,
    SERVICE_FOR,
    Handler,
    Response,
    ServiceRequest,
    as_response,
    field_names,
    status_response,
)
from dicomtwist.association.requestor import Requestor, _Outstanding
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.assembly import MessageAssembler, SinkFactory, memory_sink
from dicomtwist.dimse.codec import encode_command, encode_dataset, fragment
from dicomtwist.errors import (
    AssociationAborted,
    AssociationRejected,
    DIMSEDecodeError,
    DIMSEServiceError,
    InvalidEventError,
    TLSError,
)
from dicomtwist.status import Category, Status, category, status_name
from dicomtwist.ul.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    RejectReason,
)
from dicomtwist.ul.protocol import DicomProtocol
from dicomtwist.ul.timers import Deadlines

#: Association ids: unique in the process, in the order connections came.
_association_ids = itertools.count(1)
#: Responses carrying a status alone, by (id of the request message,
#: status): (request, response message, its encoded command set, its
#: P-DATA-TF PDUs by (presentation context id, peer's maximum PDU
#: length)).  The entry holds the request, so its id is not reused while
#: it is kept.
_SIMPLE_RESPONSES: dict[tuple[int, int], tuple[m.Message, m.Message, bytes,
                                               dict[tuple[int, int], tuple[bytes, ...]]]] = {}
#: At most this many; emptied when full.
SIMPLE_RESPONSES_SIZE = 64
#: PDU framings kept per response (contexts and maximum lengths); emptied
#: when full.
FRAMINGS_KEPT = 8
#: Bound once (reading a member from its Enum class costs a slot wrapper's
#: call on Python 3.11; see :mod:`dicomtwist.ul.fsm`).
_PENDING = Category.PENDING
#: The events' words for the access rules' reject reasons (bounded).
_REJECT_REASONS = {
    RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED: "application-context",
    RejectReason.CALLING_AE_NOT_RECOGNIZED: "calling-ae",
    RejectReason.CALLED_AE_NOT_RECOGNIZED: "called-ae",
}


class Association(Requestor, DicomProtocol):
    """One DICOM association, as requestor or acceptor.

    :param clock: reactor (time) for every timer.
    :param handlers: service name (``"echo"``, ``"store"``, ``"find"``,
        ``"get"``, ``"move"``, ``"n-..."``) -> handler.
    :param sink_for: where incoming data sets go (default: memory).
    :param policy: the acceptor's policy; None for a requestor.
    :param acse_timeout: seconds to wait for A-ASSOCIATE and A-RELEASE
        answers (also the ARTIM timeout).
    :param dimse_timeout: seconds to wait for each DIMSE response.
    :param network_timeout: seconds of silence before aborting.
    :param association_id: its id (see ``association_id``); None: the
        next one of the process (0: set later, by the factory using it).
    """

    log = dlog.logger()

    # Slots, not a per-instance dictionary: 1,000 idle associations hold
    # about 1.3 MB less (benchmarks/idle_memory.py).
    __slots__ = ("handlers", "sink_for", "policy", "acse_timeout", "dimse_timeout",
                 "yield_every", "negotiated", "ae_title", "peer_ae_title", "_established",
                 "_establishment", "_establishment_observed", "_closed", "_ended", "_assembler",
                 "_outstanding", "_serving", "_message_id", "_send_queue", "_sending",
                 "_acse_timer", "_abort_cause", "_released", "_busy", "association_id",
                 "_log_fields", "_received_rq")

    def __init__(self, clock: IReactorTime, *, handlers: Mapping[str, Handler] | None = None,
                 sink_for: SinkFactory = memory_sink, policy: AcceptorPolicy | None = None,
                 max_pdu: int = acse.DEFAULT_MAX_PDU, acse_timeout: float = 30.0,
                 dimse_timeout: float | None = 30.0, network_timeout: float | None = None,
                 yield_every: int = 32, timers: Deadlines | None = None,
                 association_id: int | None = None) -> None:
        super().__init__(clock, max_pdu=max_pdu, artim_timeout=acse_timeout,
                         network_timeout=network_timeout, timers=timers)
        # Shared with the factory (every association of a port has the same
        # handlers), not copied: a C-GET requestor replaces it to add its own.
        self.handlers: Mapping[str, Handler] = handlers if handlers is not None else {}
        self.sink_for = sink_for
        self.policy = policy
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.yield_every = yield_every
        self.negotiated: Negotiated | None = None
        #: This association's id in the process (log lines and events).
        self.association_id = (next(_association_ids) if association_id is None
                               else association_id)
        # The fields of its log events, made when first asked for once the
        # A-ASSOCIATE-RQ is known (see ``log_fields``).
        self._log_fields: dict[str, Any] | None = None
        self.ae_title = policy.ae_title if policy else ""
        self.peer_ae_title = ""
        #: The A-ASSOCIATE-RQ received (acceptor).
        self._received_rq: AAssociateRQ | None = None
        # ``established`` is made when first asked for (see the property);
        # how establishment ended: None (not yet), True, or the failure.
        self._established: Deferred[Association] | None = None
        self._establishment: Any = None
        self._establishment_observed = False
        # ``closed`` is made when first asked for, like ``established``;
        # whether the connection has ended.
        self._closed: Deferred[None] | None = None
        self._ended = False
        self._assembler: MessageAssembler | None = None
        self._outstanding: dict[int, _Outstanding] = {}
        self._serving: dict[int, ServiceRequest] = {}
        self._message_id = 0
        self._send_queue: list[tuple[m.Message, int, Any, Deferred, bytes | None]] = []
        self._sending = False
        self._acse_timer: Any = None
        self._abort_cause: str | None = None
        self._released = False
        self._busy = 0

    # -- association establishment -----------------------------------------
    @property
    def established(self) -> Deferred[Association]:
        """Fires with this association once it is established, or fails with
        why it was not (rejection, abort, connection error).

        Made when first asked for: nobody asks for most acceptors' one, and a
        Deferred holding its association as result would keep the association
        in a reference cycle, left to the cyclic garbage collector.
        """
        d = self._established
        if d is None:
            d = self._established = Deferred()
            if self._establishment is not None:
                self._fire_established(d)
        return d

    @property
    def closed(self) -> Deferred[None]:
        """Fires with None once the connection has ended (after
        ``on_connection_lost`` has failed what was outstanding).

        Made when first asked for: most acceptors' one has no listener.
        """
        d = self._closed
        if d is None:
            d = self._closed = Deferred()
            if self._ended:
                d.callback(None)
        return d

    def _settle(self, outcome: Any, observed: bool = False) -> None:
        """Record how establishment ended (once) and fire ``established``.

        :param outcome: True (established) or the error.
        :param observed: the failure needs no listener (an acceptor's
            connection that never associated): listeners added later get
            None, and none at all is no "Unhandled error in Deferred".
        """
        if self._establishment is not None:
            return
        self._establishment = outcome
        self._establishment_observed = observed
        if self._established is not None:
            self._fire_established(self._established)

    def _fire_established(self, d: Deferred) -> None:
        if self._establishment is True:
            d.callback(self)
            return
        d.errback(self._establishment)
        if self._establishment_observed:
            d.addErrback(lambda _: None)

    def makeConnection(self, transport: Any) -> None:
        """Connect (:meth:`DicomProtocol.makeConnection`: an acceptor's
        answer to a request waiting at accept is written meanwhile); then
        an acceptor's factory makes its next association ahead, while our
        peer reads the answer (:meth:`AcceptorFactory.prepare`)."""
        DicomProtocol.makeConnection(self, transport)
        if self.policy is not None:
            prepare = getattr(self.factory, "prepare", None)
            if prepare is not None:
                prepare()

    def connectionMade(self) -> None:
        """Start the ACSE timer (requestor) and the Upper Layer flow."""
        if self.associate_rq is not None:
            self.ae_title = self.associate_rq.calling_ae_title
            self.peer_ae_title = self.associate_rq.called_ae_title
            self._acse_timer = self.clock.callLater(self.acse_timeout, self._acse_expired)
            self.log.info("Requesting Association", **self.log_fields)
        super().connectionMade()
        if self.associate_rq is None and dlog.info_on:
            self.log.info("Association received from {peer}", peer=self.peer_description,
                          association_id=self.association_id)

    def on_associate_rq(self, rq: AAssociateRQ) -> None:
        """Acceptor: negotiate from the policy and answer AC or RJ."""
        self.peer_ae_title = rq.calling_ae_title
        self._received_rq = rq
        if dlog.debug_on:
            self.log.debug("{text}", text=_Lines(rq))
        assert self.policy is not None
        rj = None
        refusal = acse.explain_unacceptable(rq, self.policy, self.peer_host())
        if refusal is not None:
            # Access control and application context: one line naming the
            # peer, at warning level, so an operator sees who was refused.
            self.log.warn("Refusing association from {calling} at {peer} (called {called}):"
                          " {why}", calling=rq.calling_ae_title, peer=self.peer_description,
                          called=rq.called_ae_title, why=refusal.explanation,
                          **self.log_fields)
            rj = refusal.reject()
            reason = ("address" if "(host_check)" in refusal.explanation
                      else _REJECT_REASONS.get(refusal.reason, "other"))
            detail = refusal.explanation
        else:
            # Only acceptable associations count against max_associations.
            admit = getattr(getattr(self, "factory", None), "admit", None)
            rj = admit(self) if admit is not None else None
            reason, detail = "limit", "max_associations reached"
        if rj is not None:
            self.log.info("Association Rejected: calling {calling} from {peer}, reason {reason}",
                          calling=rq.calling_ae_title, peer=self.peer_description,
                          reason=rj.reason, **self.log_fields)
            self.associate_response(rj)
            if events.bus.observed:
                events.bus.publish(events.AssociationRejected(
                    self.association_id, self.peer_host() or "", rq.calling_ae_title,
                    rq.called_ae_title, reason, detail))
            return
        ac, negotiated = acse.negotiate_acceptor(rq, self.policy)
        self._start(negotiated)
        self.associate_response(ac)
        if dlog.info_on:
            self.log.info("Association Accepted: calling {calling} from {peer},"
                          " {count} presentation context(s) accepted",
                          calling=rq.calling_ae_title, peer=self.peer_description,
                          count=len(negotiated.contexts), **self.log_fields)
        self._settle(True)
        if events.bus.observed:
            events.bus.publish(events.AssociationAccepted(
                self.association_id, self.peer_host() or "", self._peer_port(),
                rq.calling_ae_title, rq.called_ae_title))

    @property
    def log_fields(self) -> dict[str, Any]:
        """The structured fields of this association's log events (the JSON
        log shows them): ``association_id``, and once the A-ASSOCIATE-RQ is
        known (received or sent) ``peer_host``, ``calling_ae``,
        ``called_ae``.  Made when first asked for: an association that
        logs nothing at the configured level never builds them."""
        fields = self._log_fields
        if fields is None:
            rq = self._received_rq if self._received_rq is not None else self.associate_rq
            if rq is None:
                return {"association_id": self.association_id}
            fields = {"association_id": self.association_id, "peer_host": self.peer_host() or "",
                      "calling_ae": rq.calling_ae_title, "called_ae": rq.called_ae_title}
            if self.transport is not None:
                # Kept once the peer is known (a requestor not yet connected
                # has no peer host).
                self._log_fields = fields
        return fields

    def _peer_port(self) -> int:
        peer = self.peer_address
        if peer is None and self.transport is not None:
            peer = self.transport.getPeer()
        return int(getattr(peer, "port", 0) or 0)

    def peer_host(self) -> str | None:
        """The address the connection comes from, if known."""
        if self.transport is None:
            return None
        peer = self.peer_address if self.peer_address is not None else self.transport.getPeer()
        return getattr(peer, "host", None)

    def on_associate_ac(self, ac: AAssociateAC) -> None:
        """Requestor: the peer accepted."""
        self._cancel_acse_timer()
        self.log.debug("{text}", text=_Lines(ac))
        assert self.associate_rq is not None
        self._start(acse.interpret_ac(self.associate_rq, ac))
        self.log.info("Association Accepted")
        self._settle(True)

    def on_associate_rj(self, rj: AAssociateRJ) -> None:
        """Requestor: the peer rejected."""
        self._cancel_acse_timer()
        self.log.info("Association Rejected: result {result}, source {source}, reason {reason}",
                      result=rj.result, source=rj.source, reason=rj.reason)
        self._settle(AssociationRejected(rj.result, rj.source, rj.reason))

    def _start(self, negotiated: Negotiated) -> None:
        self.negotiated = negotiated

    # -- release and abort --------------------------------------------------
    def release(self) -> Deferred[None]:
        """A-RELEASE: ask the peer to release; fires when the connection closed.

        :raises InvalidEventError: (in the Deferred) when not established.
        """
        self.log.info("Releasing Association")
        self._released = True
        try:
            self.release_request()
        except InvalidEventError as e:
            return defer.fail(e)
        self._acse_timer = self.clock.callLater(self.acse_timeout, self._acse_expired)
        return self._when_closed()

    def abort(self) -> Deferred[None]:
        """A-ABORT (service-user source); fires when the connection closed."""
        self.log.info("Aborting Association")
        self._abort_cause = "aborted by us"
        self.abort_request()
        return self._when_closed()

    def _when_closed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()

        def fire(result: Any) -> Any:
            d.callback(None)
            return result

        self.closed.addBoth(fire)
        return d

    def on_release_rq(self, payload: Any) -> None:
        """The peer releases: answer (PS3.8 AR-2)."""
        if dlog.info_on:
            self.log.info("Association Released by {peer}",
                          peer=self.peer_ae_title or self.peer_description, **self.log_fields)
        self._released = True
        self.release_response()

    def on_release_rp(self, payload: Any) -> None:
        """Our release was confirmed."""
        self._cancel_acse_timer()
        self.log.info("Association Released", **self.log_fields)

    def on_abort(self, abort: AAbort) -> None:
        """The peer aborted."""
        self._abort_cause = f"A-ABORT from peer (source {abort.source}, reason {abort.reason})"
        self.log.info("Association Aborted by peer (source {source}, reason {reason})",
                      source=abort.source, reason=abort.reason, **self.log_fields)

    def on_p_abort(self, payload: Any) -> None:
        """The provider aborted (bad PDU, timer, connection lost)."""
        if isinstance(payload, AAbort):
            self._abort_cause = (f"A-ABORT from peer's provider (source {payload.source},"
                                 f" reason {payload.reason})")
        elif payload is None:
            self._abort_cause = self._abort_cause or "ARTIM timer expired"
        elif isinstance(payload, Failure):
            self._abort_cause = self._abort_cause or "connection closed by peer"
        else:
            self._abort_cause = self._abort_cause or f"protocol error: {payload}"
        self.log.info("Association Aborted ({cause})", cause=self._abort_cause, **self.log_fields)

    def on_connection_lost(self, reason: Failure | None) -> None:
        """Fail what is outstanding, drop partial data, fire ``closed``."""
        if self._acse_timer is not None:
            self._cancel_acse_timer()
        if self._assembler is not None:
            self._assembler.discard()
        cause = self._abort_cause or ("released" if self._released else "connection closed")
        # (The peer's end of file, the usual end, is no TLS error.)
        tls_error = (None if isinstance(reason, Failure) and type(reason.value) is ConnectionDone
                     else _tls_error(reason))
        if tls_error is not None:
            cause = f"TLS error: {tls_error}"
            if self._establishment is None:
                self.log.warn("TLS handshake with {peer} failed: {error}",
                              peer=self.peer_description, error=tls_error, **self.log_fields)
                if events.bus.observed and self.policy is not None:
                    events.bus.publish(events.AuthenticationFailed(
                        "dimse", self.peer_host() or "", "", f"TLS handshake: {tls_error}"))
        if self._establishment is None:
            error_class = TLSError if tls_error is not None else AssociationAborted
            # An acceptor's ``established`` usually has no listener; a
            # connection that never associated (rejected, bad RQ, ARTIM,
            # port scan) must not log "Unhandled error in Deferred" when
            # the Deferred is garbage collected.  Listeners added before
            # this point still see the failure.
            self._settle(error_class(f"association not established: {cause}"),
                         observed=self.associate_rq is None)
        elif self.policy is not None and self._establishment is True and events.bus.observed:
            events.bus.publish(events.AssociationEnded(
                self.association_id, self.log_fields.get("peer_host", ""),
                self.peer_ae_title, "aborted" if self._abort_cause else "released",
                self._abort_cause or ""))
        if self._outstanding:
            outstanding, self._outstanding = self._outstanding, {}
            for pending in outstanding.values():
                if pending.timer is not None and pending.timer.active():
                    pending.timer.cancel()
                pending.deferred.errback(AssociationAborted(f"association ended: {cause}"))
        for request in self._serving.values():
            request.cancelled = True
        if self._send_queue:
            queue, self._send_queue = self._send_queue, []
            for _, _, _, d, _ in queue:
                d.errback(AssociationAborted(f"association ended: {cause}"))
        self._ended = True
        ended = getattr(self.factory, "association_ended", None)
        if ended is not None:
            ended(self)
        if self._closed is not None:
            self._closed.callback(None)

    def _acse_expired(self) -> None:
        self._acse_timer = None
        self.log.warn("ACSE timeout: no answer from {peer} in {seconds} s, aborting",
                      peer=self.peer_description, seconds=self.acse_timeout, **self.log_fields)
        self._abort_cause = "ACSE timeout"
        self.abort_request()
        if self.transport is not None:
            self.transport.loseConnection()

    def _cancel_acse_timer(self) -> None:
        if self._acse_timer is not None and self._acse_timer.active():
            self._acse_timer.cancel()
        self._acse_timer = None

    # -- sending ----------------------------------------------------------------
    def send_message(self, message: m.Message, context_id: int,
                     data: bytes | FileDataSet | None = None, *,
                     command: bytes | None = None) -> Deferred[None]:
        """Queue a DIMSE message (and its data set) for sending.

        Messages go out one after another, never interleaved; the Deferred
        fires when the whole message is written.

        :param command: the message's command set, already encoded (for a
            data set or not as ``data`` says); None: encoded here.
        """
        d: Deferred[None] = Deferred()
        self._send_queue.append((message, context_id, data, d, command))
        if not self._sending:
            self._pump()
        return d

    def _pump(self) -> None:
        while self._send_queue and not self._sending:
            message, context_id, data, d, command = self._send_queue.pop(0)
            try:
                if isinstance(data, FileDataSet):
                    # The command set's PDUs go out with the file's first
                    # PDUs, in one write.
                    max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
                    head = b"".join(self._command_pdus(message, context_id, command, True))
                    producer = FileProducer(self, data, context_id, max_pdu, Deferred(), head)
                    self._sending = True
                    producer._done.addBoth(self._sent_file, d)
                    producer.start()
                    return
                self._write_message(message, context_id, data, command)
            except InvalidEventError as e:
                d.errback(AssociationAborted(f"cannot send {message.NAME}: {e}"))
                continue
            except (OSError, ValueError) as e:
                # The file cannot be opened, or the peer's maximum PDU
                # length leaves no room for data: nothing of the message
                # was sent.
                d.errback(e)
                continue
            d.callback(None)

    def _command_pdus(self, message: m.Message, context_id: int, command: bytes | None,
                      has_dataset: bool) -> Iterator[bytes]:
        """A message's command set in P-DATA-TF PDUs of the peer's maximum
        length (``command``: already encoded, or None)."""
        max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
        if dlog.debug_on:
            self.log.debug("Sending {message.summary()}", message=message)
        if command is None:
            command = encode_command(message, has_dataset)
        return fragment(context_id, command, True, max_pdu)

    def _write_message(self, message: m.Message, context_id: int, data: Any,
                       command: bytes | None) -> None:
        """Write a message's command set and its data set (bytes), if any,
        in P-DATA-TF PDUs of the peer's maximum length.

        :raises InvalidEventError: the association cannot send.
        """
        max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
        for pdu in self._command_pdus(message, context_id, command, data is not None):
            self.send_pdata(pdu)
        if data is not None:
            for pdu in fragment(context_id, data, False, max_pdu):
                self.send_pdata(pdu)

    def _sent_file(self, result: Any, d: Deferred) -> None:
        self._sending = False
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(None)
        if not self.machine.is_closed:
            self._pump()

    # -- receiving -----------------------------------------------------------
    def on_pdata(self, pdata: Any) -> None:
        """Reassemble PDVs into messages and dispatch each complete one."""
        assembler = self._assembler
        if assembler is None:
            if self.negotiated is None:
                return
            # Made with the first P-DATA: an idle association holds none.
            assembler = self._assembler = MessageAssembler(self.negotiated.contexts,
                                                           self.sink_for)
        for context_id, control, data in pdata.pdvs:  # (a named tuple's fields, unpacked)
            try:
                done = assembler.feed(context_id, control, data)
            except (DIMSEDecodeError, OSError) as e:
                self.log.warn("Invalid DIMSE message from {peer}: {error}; aborting",
                              peer=self.peer_description, error=str(e), **self.log_fields)
                assembler.discard()
                self._abort_cause = f"invalid DIMSE message: {e}"
                self.abort_request(AbortSource.SERVICE_PROVIDER,
                                   AbortReason.INVALID_PDU_PARAMETER_VALUE)
                return
            if done is not None:
                self._dispatch(*done)

    def _dispatch(self, message: m.Message, context: PresentationContext, data: Any) -> None:
        if dlog.debug_on:
            self.log.debug("Received {message.summary()}", message=message)
        if type(message) not in SERVICE_FOR:
            # (Not a request of a service: a response, a C-CANCEL-RQ or a
            # request nobody serves, which is answered below.)
            if message.IS_RESPONSE:
                self._on_response(message, data)
                return
            if isinstance(message, m.CCancelRQ):
                request = self._serving.get(message.message_id_being_responded_to)
                if request is not None:
                    self.log.info("Received Cancel Request for message {id}",
                                  id=message.message_id_being_responded_to)
                    request.cancelled = True
                return
        request = ServiceRequest(self, message, context, data, received=time.monotonic())
        self._busy += 1
        try:
            rest = self._serve(request)
        except BaseException:
            self._busy -= 1
            self._serve_failed(Failure(), request)
            return
        if rest is None:
            # Served at once (a C-ECHO, any handler answering with its
            # result, a refusal): no coroutine, no Deferred.
            self._busy -= 1
            return
        # It awaits a Deferred (a handler's result, a busy send queue):
        # Twisted drives the rest.
        Deferred.fromCoroutine(self._serve_rest(rest)).addErrback(self._serve_failed,
                                                                 request)

    # -- serving requests ----------------------------------------------------
    def is_busy(self) -> bool:
        """An operation is running in either direction."""
        return bool(self._busy or self._outstanding or self._sending)

    def _serve(self, request: ServiceRequest) -> Awaitable[None] | None:
        """Serve ``request`` as far as can be done at once.

        A single-response service whose handler returns its result (not a
        Deferred or coroutine) is answered here, synchronously: the
        response is encoded and written before this returns.

        :returns: None when served; otherwise what remains to be awaited
            (the handler's pending result, a response queued behind other
            messages, a multi-response service's results).
        """
        message = request.message
        service = SERVICE_FOR.get(type(message))
        handler = self.handlers.get(service) if service else None
        if dlog.info_on:
            self.log.info("Received {name} Request (MsgID {id}) from {peer}",
                          name=LOG_NAMES.get(service, service), id=message.message_id,
                          peer=self.peer_ae_title, **self.log_fields)
        sop_class = getattr(message, "affected_sop_class_uid", None) or getattr(
            message, "requested_sop_class_uid", None)
        if handler is None or (sop_class is not None
                               and sop_class != request.context.abstract_syntax):
            self._discard_data(request)
            status = (Status.UNRECOGNIZED_OPERATION if service is None
                      else Status.SOP_CLASS_NOT_SUPPORTED)
            return self._respond(request, Response(status))
        if service in MULTI_RESPONSE:
            return self._serve_many(handler, request)
        try:
            # As ``maybeDeferred(handler, request)``, without wrapping a
            # plain result (C-ECHO) in a Deferred.
            result = handler(request)
            # (A status, the usual result, first: ``isinstance(result,
            # Deferred)`` is an ABC's Python-level check.)
            if result is None or isinstance(result, int):
                pass
            elif isinstance(result, Failure):
                result.raiseException()
            elif isinstance(result, Deferred) or type(result) is CoroutineType:
                return self._serve_later(request, result)
        except Exception as e:  # mapped to a status below
            response = self._error_response(e, request)
        else:
            response = (status_response(result) if isinstance(result, int)
                        else as_response(result))
        return self._respond(request, response)

    async def _serve_rest(self, rest: Awaitable[None]) -> None:
        """Await what :meth:`_serve` left; the operation then ends."""
        try:
            await rest
        finally:
            self._busy -= 1

    async def _serve_later(self, request: ServiceRequest, result: Any) -> None:
        """Answer a single-response request once its handler's Deferred or
        coroutine ``result`` gives the result."""
        try:
            result = await result
        except Exception as e:  # mapped to a status below
            response = self._error_response(e, request)
        else:
            response = as_response(result)
        if (sent := self._respond(request, response)) is not None:
            await sent

    async def _serve_many(self, handler: Handler, request: ServiceRequest) -> None:
        message_id = request.message.message_id
        self._serving[message_id] = request
        try:
            await self._serve_results(handler, request)
        finally:
            self._serving.pop(message_id, None)

    async def _serve_results(self, handler: Handler, request: ServiceRequest) -> None:
        try:
            results = await defer.maybeDeferred(handler, request)
            count = 0
            async for item in _aiter(results):
                response = as_response(item)
                if request.cancelled and category(response.status) is _PENDING:
                    if hasattr(results, "__aiter__"):
                        # An async handler sees ``cancelled`` itself and may
                        # end with its own Cancel response (with counts).
                        continue
                    break
                if self.machine.is_closed:
                    return
                if (sent := self._respond(request, response)) is not None:
                    await sent
                if category(response.status) is not _PENDING:
                    return
                count += 1
                if self.yield_every and count % self.yield_every == 0:
                    # Let other associations run during a long result set.
                    await deferLater(self.clock, 0, lambda: None)
        except Exception as e:
            response = self._error_response(e, request)
        else:
            response = Response(Status.CANCEL if request.cancelled else Status.SUCCESS)
        if (sent := self._respond(request, response)) is not None:
            await sent

    def _error_response(self, error: Exception, request: ServiceRequest) -> Response:
        if isinstance(error, DIMSEServiceError):
            fields = {"error_comment": error.comment[:64]} if error.comment else {}
            return Response(int(error.status), None, fields)
        self.log.failure("Handler for {name} failed", Failure(error),
                         name=request.message.NAME, **self.log_fields)
        return Response(Status.UNABLE_TO_PROCESS)

    def _respond(self, request: ServiceRequest, response: Response) -> Deferred[None] | None:
        """Send ``response`` to ``request``: written now when nothing is
        being sent, else queued behind what is.

        :returns: None once written (or when the association has ended);
            a Deferred firing once the queued response is written.
        """
        if self.machine.is_closed:
            return None
        message = request.message
        data = response.dataset
        status = int(response.status)
        context_id = request.context.context_id
        pdus = None
        command = None
        if data is None and not response.fields:
            rsp, command, pdus = self._status_response(message, status, context_id)
        else:
            rsp = self._response_message(message, response)
            if isinstance(data, Dataset):
                data = encode_dataset(data, request.context.transfer_syntax)
        service = SERVICE_FOR.get(type(message), "")
        if dlog.info_on:
            self.log.info("Sending {name} Response (MsgID {id}): 0x{status:04X} ({status_name})",
                          name=LOG_NAMES.get(service, service), id=message.message_id,
                          status=status, status_name=status_name(status), **self.log_fields)
        if self._sending or self._send_queue or isinstance(data, FileDataSet):
            sent = self.send_message(rsp, context_id, data, command=command)
            sent.addErrback(_ended)
            sent.addCallback(lambda _: self._completed(request, service, status))
            return sent
        # Nothing ahead of it: written now, as send_message would, without
        # a Deferred to fire and await.
        try:
            if pdus is None:
                self._write_message(rsp, context_id, data, command)
            else:
                if dlog.debug_on:
                    self.log.debug("Sending {message.summary()}", message=rsp)
                for pdu in pdus:
                    self.send_pdata(pdu)
        except InvalidEventError:
            pass
        if events.bus.observed:
            self._completed(request, service, status)
        return None

    def _status_response(self, message: m.Message, status: int,
                         context_id: int) -> tuple[m.Message, bytes, tuple[bytes, ...]]:
        """The response to ``message`` carrying ``status`` alone: the
        response message, its command set and its P-DATA-TF PDUs on
        ``context_id`` for the peer's maximum PDU length.

        A status alone answers the same request alike: all three are kept
        for requests that repeat (decode_command's memo gives a repeated
        C-ECHO-RQ's bytes the same message object).
        """
        known = _SIMPLE_RESPONSES.get((id(message), status))
        if known is None or known[0] is not message:
            rsp = self._response_message(message, Response(status))
            known = (message, rsp, encode_command(rsp, False), {})
            if len(_SIMPLE_RESPONSES) >= SIMPLE_RESPONSES_SIZE:
                _SIMPLE_RESPONSES.clear()
            _SIMPLE_RESPONSES[id(message), status] = known
        max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
        framed = known[3]
        pdus = framed.get((context_id, max_pdu))
        if pdus is None:
            pdus = tuple(fragment(context_id, known[2], True, max_pdu))
            if len(framed) >= FRAMINGS_KEPT:
                framed.clear()
            framed[context_id, max_pdu] = pdus
        return known[1], known[2], pdus

    def _completed(self, request: ServiceRequest, service: str, status: int) -> None:
        """Publish the end of an acceptor's operation (a final response
        sent): metrics, audit and the log subscribe."""
        if not events.bus.observed or self.policy is None or category(status) is _PENDING:
            return
        message = request.message
        events.bus.publish(events.OperationCompleted(
            self.association_id, service, status, time.monotonic() - request.received,
            getattr(message, "affected_sop_class_uid", None)
            or getattr(message, "requested_sop_class_uid", None) or "",
            self.log_fields.get("peer_host", ""), self.peer_ae_title))

    @staticmethod
    def _response_message(message: m.Message, response: Response) -> m.Message:
        """The response message answering ``message`` with ``response``."""
        rsp_class = RESPONSE_FOR[type(message)]
        kwargs: dict[str, Any] = {
            "message_id_being_responded_to": message.message_id,
            "status": int(response.status),
        }
        names = field_names(rsp_class)
        for name, requested in (("affected_sop_class_uid", "requested_sop_class_uid"),
                                ("affected_sop_instance_uid", "requested_sop_instance_uid")):
            # DIMSE-N responses name the SOP instance the request named,
            # affected or requested (PS3.7 10.3); a handler may override it
            # (N-CREATE without a UID: the one the SCP made).
            value = getattr(message, name, None) or getattr(message, requested, None)
            if name in names and value is not None:
                kwargs[name] = value
        for name in ("action_type_id", "event_type_id"):
            if name in names and getattr(message, name, None) is not None:
                kwargs[name] = getattr(message, name)
        for name, value in response.fields.items():
            if name in names:
                kwargs[name] = value
        return rsp_class(**kwargs)

    def _serve_failed(self, failure: Failure, request: ServiceRequest) -> None:
        self.log.failure("Serving {name} failed", failure, name=request.message.NAME)

    def _discard_data(self, request: ServiceRequest) -> None:
        if isinstance(request.data, str):
            try:
                os.unlink(request.data)
            except OSError:
                pass


def next_association_id() -> int:
    """The next association id of the process (see ``Association.association_id``)."""
    return next(_association_ids)


class _Lines:
    """A PDU's multi-line description, built only if a log line is written."""

    def __init__(self, pdu: Any) -> None:
        self.pdu = pdu

    def __str__(self) -> str:
        return "\n".join(self.pdu.describe())


def _tls_error(reason: Any) -> str | None:
    """The TLS error a connection was lost with, in words; None if another
    cause (pyOpenSSL's ``SSL.Error``, without importing the optional
    pyOpenSSL here)."""
    if not isinstance(reason, Failure):
        return None
    error = reason.value
    if not type(error).__module__.startswith("OpenSSL"):
        return None
    # SSL.Error carries [(library, function, reason), ...].
    details = [entry[-1] for entry in (error.args[0] if error.args and isinstance(
        error.args[0], list) else []) if isinstance(entry, tuple) and entry]
    return "; ".join(str(d) for d in details if d) or str(error) or type(error).__name__


def _ended(failure: Failure) -> None:
    """A queued response not sent because the association ended: nothing
    more to do (anything else still fails)."""
    failure.trap(AssociationAborted)


async def _aiter(results: Any):
    """Iterate a sync or async iterable (None = nothing)."""
    if results is None:
        return
    if hasattr(results, "__aiter__"):
        async for item in results:
            yield item
    else:
        for item in results:
            yield item
