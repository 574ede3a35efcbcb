"""Associations: ACSE negotiation and DIMSE messaging on top of the Upper Layer.

:class:`Association` is the DICOM *service user* of an Upper Layer
connection (:class:`dicomtwist.ul.protocol.DicomProtocol`).  It negotiates
with :mod:`dicomtwist.acse`, reassembles incoming DIMSE messages with
:class:`dicomtwist.dimse.assembly.MessageAssembler`, sends messages in
P-DATA-TF fragments no larger than the peer's maximum, dispatches requests
to service handlers and matches responses to outstanding requests.

The same class serves both roles:

* **acceptor**: built by :class:`AcceptorFactory`; answers the
  A-ASSOCIATE-RQ from its :class:`~dicomtwist.acse.AcceptorPolicy` and
  serves requests with the factory's handlers;
* **requestor**: made by :func:`associate`; offers ``echo``, ``store``,
  ``find``, ``get``, ``move``, ``cancel``, ``release`` and ``abort``, each
  returning a Deferred.

Handlers (PS3.4 services) are called as ``handler(request)`` with a
:class:`ServiceRequest` and may return a value, a Deferred, or -- for
C-FIND/C-GET/C-MOVE -- an iterable or async iterable of pending results.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass, field, fields
from types import CoroutineType
from typing import Any, Callable, Iterable, Mapping, Sequence

from pydicom import dcmread
from pydicom.dataset import Dataset
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Factory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from dicomtwist import log as dlog
from dicomtwist import acse
from dicomtwist.acse import AcceptorPolicy, Negotiated, PresentationContext
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.assembly import MessageAssembler, SinkFactory, memory_sink
from dicomtwist.dimse.codec import LAST_FRAGMENT, decode_dataset, encode_command, encode_dataset, fragment
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
    RejectResult,
    RejectSource,
    pdata_header,
)
from dicomtwist.ul.protocol import DicomProtocol

VERIFICATION = "1.2.840.10008.1.1"
#: Transfer syntaxes a data set can be re-encoded between with pydicom alone.
NATIVE_SYNTAXES = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
})

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

#: Human names for the log, as the spec's log excerpts print them.
_LOG_NAMES = {"echo": "Echo", "store": "Store", "find": "Find", "get": "Get", "move": "Move"}


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
    """

    association: "Association"
    message: m.Message
    context: PresentationContext
    data: Any = None
    cancelled: bool = False

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


@dataclass(frozen=True)
class FileDataSet:
    """A data set stored in a file, sent as it is (no decoding).

    :ivar path: the file.
    :ivar offset: where the data set starts (after preamble and group 0002).
    :ivar length: its length in bytes.
    :ivar transfer_syntax: the transfer syntax it is encoded in.
    """

    path: str
    offset: int
    length: int
    transfer_syntax: str
    #: From the file meta information, when known.
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


_TAG_VR_LEN = struct.Struct("<HH2sH")
_UL = struct.Struct("<L")


def file_dataset(path: str) -> FileDataSet:
    """Locate the data set in a DICOM Part 10 file without decoding it.

    Reads only the preamble and the File Meta Information (group 0002,
    always Explicit VR Little Endian, PS3.10 7.1), usually in one read; the
    meta group's SOP Class and Instance UIDs come along, so sending the
    file needs no further parsing.

    :raises ValueError: the file is not a Part 10 file.
    """
    with open(path, "rb") as fp:
        head = fp.read(4096)
        size = os.fstat(fp.fileno()).st_size
        if len(head) < 132 or head[128:132] != b"DICM":
            raise ValueError(f"{path}: not a DICOM Part 10 file")
        values: dict[int, str] = {}
        offset = 132
        while True:
            if offset + 12 > len(head) and len(head) < size:
                fp.seek(0)
                head = fp.read(offset + 65536)
            if offset + 8 > len(head):
                break
            group, element, vr, short = _TAG_VR_LEN.unpack_from(head, offset)
            if group != 0x0002:
                break
            if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
                length = _UL.unpack_from(head, offset + 8)[0]
                value_at = offset + 12
            else:
                length = short
                value_at = offset + 8
            if element in (0x0002, 0x0003, 0x0010):
                if value_at + length > len(head):
                    fp.seek(value_at)
                    raw = fp.read(length)
                else:
                    raw = head[value_at:value_at + length]
                values[element] = raw.rstrip(b"\x00 ").decode("ascii", "replace")
            offset = value_at + length
    transfer_syntax = values.get(0x0010)
    if transfer_syntax is None:
        raise ValueError(f"{path}: no Transfer Syntax UID in the file meta information")
    return FileDataSet(path, offset, size - offset, transfer_syntax,
                       values.get(0x0002), values.get(0x0003))


@implementer(IPushProducer)
class _FileProducer:
    """Send a :class:`FileDataSet` as P-DATA-TF PDUs, pausing with the transport.

    Memory use is one PDU whatever the file's size.
    """

    def __init__(self, association: "Association", source: FileDataSet, context_id: int,
                 max_pdu: int, done: Deferred) -> None:
        self._association = association
        # A large buffer: one read() per megabyte, not one per PDU.
        self._file = open(source.path, "rb", buffering=1 << 20)
        self._file.seek(source.offset)
        self._remaining = source.length
        self._context_id = context_id
        self._chunk = (max_pdu or (1 << 20)) - 6
        if max_pdu == 0 or self._chunk > (1 << 20):
            self._chunk = 1 << 20
        self._done = done
        self._paused = False
        self._finished = False
        self._registered = False

    def start(self) -> None:
        transport = self._association.transport
        transport.registerProducer(self, True)
        self._registered = True
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and not self._finished:
            size = min(self._chunk, self._remaining)
            data = self._file.read(size)
            if len(data) != size:
                self._finish(IOError("stored file shorter than expected"))
                return
            self._remaining -= size
            control = LAST_FRAGMENT if self._remaining == 0 else 0
            try:
                self._association.send_pdata([pdata_header(self._context_id, control, size), data])
            except InvalidEventError as e:
                self._finish(AssociationAborted(f"association ended while sending: {e}"))
                return
            if self._remaining == 0:
                self._finish(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._finish(AssociationAborted("connection lost while sending a data set"))

    def _finish(self, error: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._file.close()
        transport = self._association.transport
        if transport is not None and self._registered:
            # Not ``transport.producer is self``: a TLS transport wraps the
            # producer it is given, so ask for our own registration.
            self._registered = False
            transport.unregisterProducer()
        if error is None:
            self._done.callback(None)
        else:
            self._done.errback(Failure(error))


@dataclass
class _Outstanding:
    """A request we sent and whose final response we await."""

    deferred: Deferred
    context: PresentationContext
    service: str
    on_response: Callable[[m.Message, Dataset | None], None] | None = None
    responses: list = field(default_factory=list)
    timer: Any = None


Handler = Callable[[ServiceRequest], Any]


class Association(DicomProtocol):
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
    """

    log = dlog.logger()

    def __init__(self, clock: IReactorTime, *, handlers: Mapping[str, Handler] | None = None,
                 sink_for: SinkFactory = memory_sink, policy: AcceptorPolicy | None = None,
                 max_pdu: int = acse.DEFAULT_MAX_PDU, acse_timeout: float = 30.0,
                 dimse_timeout: float | None = 30.0, network_timeout: float | None = None,
                 yield_every: int = 32) -> None:
        super().__init__(clock, max_pdu=max_pdu, artim_timeout=acse_timeout,
                         network_timeout=network_timeout)
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.sink_for = sink_for
        self.policy = policy
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.yield_every = yield_every
        self.negotiated: Negotiated | None = None
        self.ae_title = policy.ae_title if policy else ""
        self.peer_ae_title = ""
        # ``established`` is made when first asked for (see the property);
        # how establishment ended: None (not yet), True, or the failure.
        self._established: Deferred[Association] | None = None
        self._establishment: Any = None
        self._establishment_observed = False
        self.closed: Deferred[None] = Deferred()
        self._assembler: MessageAssembler | None = None
        self._outstanding: dict[int, _Outstanding] = {}
        self._serving: dict[int, ServiceRequest] = {}
        self._message_id = 0
        self._send_queue: list[tuple[m.Message, int, Any, Deferred]] = []
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

    def connectionMade(self) -> None:
        """Start the ACSE timer (requestor) and the Upper Layer flow."""
        if self.associate_rq is not None:
            self.ae_title = self.associate_rq.calling_ae_title
            self.peer_ae_title = self.associate_rq.called_ae_title
            self._acse_timer = self.clock.callLater(self.acse_timeout, self._acse_expired)
            self.log.info("Requesting Association")
        super().connectionMade()
        if self.associate_rq is None:
            self.log.info("Association received from {peer}", peer=self.peer_description)

    def on_associate_rq(self, rq: AAssociateRQ) -> None:
        """Acceptor: negotiate from the policy and answer AC or RJ."""
        self.peer_ae_title = rq.calling_ae_title
        self.log.debug("{text}", text=_Lines(rq))
        assert self.policy is not None
        rj = None
        refusal = acse.explain_unacceptable(rq, self.policy, self.peer_host())
        if refusal is not None:
            # Access control and application context: one line naming the
            # peer, at warning level, so an operator sees who was refused.
            self.log.warn("Refusing association from {calling} at {peer} (called {called}):"
                          " {why}", calling=rq.calling_ae_title, peer=self.peer_description,
                          called=rq.called_ae_title, why=refusal.explanation)
            rj = refusal.reject()
        else:
            # Only acceptable associations count against max_associations.
            admit = getattr(getattr(self, "factory", None), "admit", None)
            rj = admit(self) if admit is not None else None
        if rj is not None:
            self.log.info("Association Rejected: calling {calling} from {peer}, reason {reason}",
                          calling=rq.calling_ae_title, peer=self.peer_description,
                          reason=rj.reason)
            self.associate_response(rj)
            return
        ac, negotiated = acse.negotiate_acceptor(rq, self.policy)
        self._start(negotiated)
        self.associate_response(ac)
        self.log.info("Association Accepted: calling {calling} from {peer},"
                      " {count} presentation context(s) accepted",
                      calling=rq.calling_ae_title, peer=self.peer_description,
                      count=len(negotiated.contexts))
        self._settle(True)

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
        self._assembler = MessageAssembler(negotiated.contexts, self.sink_for)

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
        self.log.info("Association Released by {peer}", peer=self.peer_ae_title or self.peer_description)
        self._released = True
        self.release_response()

    def on_release_rp(self, payload: Any) -> None:
        """Our release was confirmed."""
        self._cancel_acse_timer()
        self.log.info("Association Released")

    def on_abort(self, abort: AAbort) -> None:
        """The peer aborted."""
        self._abort_cause = f"A-ABORT from peer (source {abort.source}, reason {abort.reason})"
        self.log.info("Association Aborted by peer (source {source}, reason {reason})",
                      source=abort.source, reason=abort.reason)

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
        self.log.info("Association Aborted ({cause})", cause=self._abort_cause)

    def on_connection_lost(self, reason: Failure | None) -> None:
        """Fail what is outstanding, drop partial data, fire ``closed``."""
        self._cancel_acse_timer()
        if self._assembler is not None:
            self._assembler.discard()
        cause = self._abort_cause or ("released" if self._released else "connection closed")
        tls_error = _tls_error(reason)
        if tls_error is not None:
            cause = f"TLS error: {tls_error}"
            if self._establishment is None:
                self.log.warn("TLS handshake with {peer} failed: {error}",
                              peer=self.peer_description, error=tls_error)
        if self._establishment is None:
            error_class = TLSError if tls_error is not None else AssociationAborted
            # An acceptor's ``established`` usually has no listener; a
            # connection that never associated (rejected, bad RQ, ARTIM,
            # port scan) must not log "Unhandled error in Deferred" when
            # the Deferred is garbage collected.  Listeners added before
            # this point still see the failure.
            self._settle(error_class(f"association not established: {cause}"),
                         observed=self.associate_rq is None)
        outstanding, self._outstanding = self._outstanding, {}
        for pending in outstanding.values():
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            pending.deferred.errback(AssociationAborted(f"association ended: {cause}"))
        for request in self._serving.values():
            request.cancelled = True
        queue, self._send_queue = self._send_queue, []
        for _, _, _, d in queue:
            d.errback(AssociationAborted(f"association ended: {cause}"))
        self.closed.callback(None)

    def _acse_expired(self) -> None:
        self._acse_timer = None
        self.log.warn("ACSE timeout: no answer from {peer} in {seconds} s, aborting",
                      peer=self.peer_description, seconds=self.acse_timeout)
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
                     data: bytes | FileDataSet | None = None) -> Deferred[None]:
        """Queue a DIMSE message (and its data set) for sending.

        Messages go out one after another, never interleaved; the Deferred
        fires when the whole message is written.
        """
        d: Deferred[None] = Deferred()
        self._send_queue.append((message, context_id, data, d))
        if not self._sending:
            self._pump()
        return d

    def _pump(self) -> None:
        while self._send_queue and not self._sending:
            message, context_id, data, d = self._send_queue.pop(0)
            max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
            self.log.debug("Sending {message.summary()}", message=message)
            try:
                for pdu in fragment(context_id, encode_command(message, data is not None),
                                    True, max_pdu):
                    self.send_pdata(pdu)
                if isinstance(data, FileDataSet):
                    self._sending = True
                    producer = _FileProducer(self, data, context_id, max_pdu, Deferred())
                    producer._done.addBoth(self._sent_file, d)
                    producer.start()
                    return
                if data is not None:
                    for pdu in fragment(context_id, data, False, max_pdu):
                        self.send_pdata(pdu)
            except InvalidEventError as e:
                d.errback(AssociationAborted(f"cannot send {message.NAME}: {e}"))
                continue
            d.callback(None)

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
            return
        for pdv in pdata.pdvs:
            try:
                done = assembler.feed(pdv.context_id, pdv.control, pdv.data)
            except (DIMSEDecodeError, OSError) as e:
                self.log.warn("Invalid DIMSE message from {peer}: {error}; aborting",
                              peer=self.peer_description, error=str(e))
                assembler.discard()
                self._abort_cause = f"invalid DIMSE message: {e}"
                self.abort_request(AbortSource.SERVICE_PROVIDER,
                                   AbortReason.INVALID_PDU_PARAMETER_VALUE)
                return
            if done is not None:
                self._dispatch(*done)

    def _dispatch(self, message: m.Message, context: PresentationContext, data: Any) -> None:
        self.log.debug("Received {message.summary()}", message=message)
        if message.IS_RESPONSE:
            self._on_response(message, data)
        elif isinstance(message, m.CCancelRQ):
            request = self._serving.get(message.message_id_being_responded_to)
            if request is not None:
                self.log.info("Received Cancel Request for message {id}",
                              id=message.message_id_being_responded_to)
                request.cancelled = True
        else:
            request = ServiceRequest(self, message, context, data)
            serving = self._serve(request)
            try:
                serving.send(None)
            except StopIteration:
                return  # served at once (a C-ECHO, a refusal): no Deferred needed
            except BaseException:
                self._serve_failed(Failure(), request)
                return
            # It awaits a Deferred (a handler's result, a busy send queue):
            # Twisted drives the rest, resuming it on that same Deferred.
            Deferred.fromCoroutine(serving).addErrback(self._serve_failed, request)

    # -- serving requests ----------------------------------------------------
    def is_busy(self) -> bool:
        """An operation is running in either direction."""
        return bool(self._busy or self._outstanding or self._sending)

    async def _serve(self, request: ServiceRequest) -> None:
        self._busy += 1
        try:
            await self._serve_one(request)
        finally:
            self._busy -= 1

    async def _serve_one(self, request: ServiceRequest) -> None:
        message = request.message
        service = SERVICE_FOR.get(type(message))
        handler = self.handlers.get(service) if service else None
        self.log.info("Received {name} Request (MsgID {id}) from {peer}",
                      name=_LOG_NAMES.get(service, service), id=message.message_id,
                      peer=self.peer_ae_title)
        sop_class = getattr(message, "affected_sop_class_uid", None) or getattr(
            message, "requested_sop_class_uid", None)
        if handler is None or (sop_class is not None
                               and sop_class != request.context.abstract_syntax):
            self._discard_data(request)
            status = (Status.UNRECOGNIZED_OPERATION if service is None
                      else Status.SOP_CLASS_NOT_SUPPORTED)
            await self._respond(request, Response(status))
            return
        if service not in MULTI_RESPONSE:
            try:
                # As ``await maybeDeferred(handler, request)``, without
                # wrapping a plain result (C-ECHO) in a Deferred.
                result = handler(request)
                if isinstance(result, Failure):
                    result.raiseException()
                elif isinstance(result, Deferred) or type(result) is CoroutineType:
                    result = await result
            except Exception as e:  # mapped to a status below
                response = self._error_response(e, request)
            else:
                response = _as_response(result)
            await self._respond(request, response)
            return
        self._serving[message.message_id] = request
        try:
            await self._serve_many(handler, request)
        finally:
            self._serving.pop(message.message_id, None)

    async def _serve_many(self, handler: Handler, request: ServiceRequest) -> None:
        try:
            results = await defer.maybeDeferred(handler, request)
            count = 0
            async for item in _aiter(results):
                response = _as_response(item)
                if request.cancelled and category(response.status) is Category.PENDING:
                    if hasattr(results, "__aiter__"):
                        # An async handler sees ``cancelled`` itself and may
                        # end with its own Cancel response (with counts).
                        continue
                    break
                if self.machine.is_closed:
                    return
                await self._respond(request, response)
                if category(response.status) is not Category.PENDING:
                    return
                count += 1
                if self.yield_every and count % self.yield_every == 0:
                    # Let other associations run during a long result set.
                    await deferLater(self.clock, 0, lambda: None)
        except Exception as e:
            await self._respond(request, self._error_response(e, request))
            return
        if request.cancelled:
            await self._respond(request, Response(Status.CANCEL))
        else:
            await self._respond(request, Response(Status.SUCCESS))

    def _error_response(self, error: Exception, request: ServiceRequest) -> Response:
        if isinstance(error, DIMSEServiceError):
            fields = {"error_comment": error.comment[:64]} if error.comment else {}
            return Response(int(error.status), None, fields)
        self.log.failure("Handler for {name} failed", Failure(error),
                         name=request.message.NAME)
        return Response(Status.UNABLE_TO_PROCESS)

    async def _respond(self, request: ServiceRequest, response: Response) -> None:
        if self.machine.is_closed:
            return
        message = request.message
        rsp_class = RESPONSE_FOR[type(message)]
        kwargs: dict[str, Any] = {
            "message_id_being_responded_to": message.message_id,
            "status": int(response.status),
        }
        names = _field_names(rsp_class)
        for name in ("affected_sop_class_uid", "affected_sop_instance_uid"):
            if name in names and getattr(message, name, None) is not None:
                kwargs[name] = getattr(message, name)
        for name, value in response.fields.items():
            if name in names:
                kwargs[name] = value
        rsp = rsp_class(**kwargs)
        data = response.dataset
        if isinstance(data, Dataset):
            data = encode_dataset(data, request.context.transfer_syntax)
        service = SERVICE_FOR.get(type(message), "")
        self.log.info("Sending {name} Response (MsgID {id}): 0x{status:04X} ({status_name})",
                      name=_LOG_NAMES.get(service, service), id=message.message_id,
                      status=int(response.status), status_name=status_name(response.status))
        try:
            await self.send_message(rsp, request.context.context_id, data)
        except AssociationAborted:
            pass

    def _serve_failed(self, failure: Failure, request: ServiceRequest) -> None:
        self.log.failure("Serving {name} failed", failure, name=request.message.NAME)

    def _discard_data(self, request: ServiceRequest) -> None:
        if isinstance(request.data, str):
            try:
                os.unlink(request.data)
            except OSError:
                pass

    # -- requesting ------------------------------------------------------------
    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def context_for(self, abstract_syntax: str,
                    transfer_syntax: str | None = None) -> PresentationContext:
        """An accepted presentation context for an abstract syntax.

        :param transfer_syntax: prefer (and for a stored file, require) this
            transfer syntax.
        :raises ValueError: no such context was accepted.
        """
        if self.negotiated is None:
            raise ValueError("association not established")
        candidates = [c for c in self.negotiated.contexts.values()
                      if c.abstract_syntax == abstract_syntax]
        if transfer_syntax is not None:
            exact = [c for c in candidates if c.transfer_syntax == transfer_syntax]
            if exact:
                return exact[0]
        if not candidates:
            raise ValueError(f"no accepted presentation context for {abstract_syntax}")
        return candidates[0]

    def _request(self, message: m.Message, context: PresentationContext, data: Any,
                 service: str, on_response: Callable | None = None) -> Deferred:
        d: Deferred = Deferred()
        pending = _Outstanding(d, context, service, on_response)
        self._outstanding[message.message_id] = pending
        self._arm_dimse_timer(message.message_id, pending)
        self.log.info("Sending {name} Request: MsgID {id}",
                      name=_LOG_NAMES.get(service, service), id=message.message_id)
        sent = self.send_message(message, context.context_id, data)
        sent.addErrback(self._send_failed, message.message_id)
        return d

    def _send_failed(self, failure: Failure, message_id: int) -> None:
        pending = self._outstanding.pop(message_id, None)
        if pending is not None:
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            pending.deferred.errback(failure)

    def _arm_dimse_timer(self, message_id: int, pending: _Outstanding) -> None:
        if self.dimse_timeout is None:
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.reset(self.dimse_timeout)
        else:
            pending.timer = self.clock.callLater(self.dimse_timeout, self._dimse_expired,
                                                 message_id)

    def _dimse_expired(self, message_id: int) -> None:
        self.log.warn("DIMSE timeout: no response to message {id} in {seconds} s, aborting",
                      id=message_id, seconds=self.dimse_timeout)
        self._abort_cause = "DIMSE timeout"
        self.abort_request()
        if self.transport is not None:
            self.transport.loseConnection()

    def _on_response(self, message: m.Message, data: Any) -> None:
        message_id = message.message_id_being_responded_to
        pending = self._outstanding.get(message_id)
        if pending is None:
            self.log.warn("Response {summary} to no request of ours; ignored",
                          summary=message.summary())
            return
        dataset = None
        if isinstance(data, (bytes, bytearray)) and data:
            try:
                dataset = decode_dataset(data, pending.context.transfer_syntax)
            except DIMSEDecodeError as e:
                self.log.warn("Undecodable data set in {summary}: {error}",
                              summary=message.summary(), error=str(e))
        status = message.status
        # Multi-response services (FIND/MOVE/GET) are reported by their
        # callers (movescu prints each one); echo and store are ours to log.
        emit = self.log.debug if pending.service in MULTI_RESPONSE else self.log.info
        emit("Received {name} Response (Status: 0x{status:04X} {status_name})",
                      name=_LOG_NAMES.get(pending.service, pending.service), status=status,
                      status_name=status_name(status))
        if category(status) is Category.PENDING:
            self._arm_dimse_timer(message_id, pending)
            pending.responses.append((message, dataset))
            if pending.on_response is not None:
                pending.on_response(message, dataset)
            return
        del self._outstanding[message_id]
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        if pending.service in MULTI_RESPONSE:
            pending.responses.append((message, dataset))
            if pending.on_response is not None:
                pending.on_response(message, dataset)
            pending.deferred.callback(pending.responses)
        else:
            pending.deferred.callback(message)

    def echo(self) -> Deferred[m.CEchoRSP]:
        """C-ECHO: fires with the C-ECHO-RSP."""
        try:
            context = self.context_for(VERIFICATION)
        except ValueError as e:
            return defer.fail(e)
        message = m.CEchoRQ(self._next_id(), VERIFICATION)
        return self._request(message, context, None, "echo")

    def store(self, dataset: Dataset | str | FileDataSet, *,
              priority: int = m.Priority.MEDIUM,
              move_originator: tuple[str, int] | None = None) -> Deferred[m.CStoreRSP]:
        """C-STORE a data set, a Part 10 file path, or a :class:`FileDataSet`.

        A file whose transfer syntax was accepted is sent as stored, without
        decoding; otherwise it is decoded and re-encoded (uncompressed
        syntaxes only).  Fires with the C-STORE-RSP.
        """
        try:
            if isinstance(dataset, str):
                dataset = file_dataset(dataset)
            if isinstance(dataset, FileDataSet):
                sop_class, sop_instance = dataset.sop_class_uid, dataset.sop_instance_uid
                if not (sop_class and sop_instance):
                    ds = dcmread(dataset.path, stop_before_pixels=True, force=True)
                    sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
                context = self.context_for(sop_class, dataset.transfer_syntax)
                if context.transfer_syntax == dataset.transfer_syntax:
                    data: Any = dataset
                elif (dataset.transfer_syntax in NATIVE_SYNTAXES
                      and context.transfer_syntax in NATIVE_SYNTAXES):
                    full = dcmread(dataset.path, force=True)
                    data = encode_dataset(full, context.transfer_syntax)
                else:
                    # Changing an encapsulated (compressed) syntax needs a
                    # codec: refuse rather than send broken pixel data.
                    raise ValueError(f"peer did not accept {dataset.transfer_syntax}"
                                     f" for {sop_class}")
            else:
                sop_class, sop_instance = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
                tsyntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
                context = self.context_for(sop_class, tsyntax)
                if (tsyntax is not None and tsyntax not in NATIVE_SYNTAXES
                        and context.transfer_syntax != tsyntax):
                    raise ValueError(f"peer did not accept {tsyntax} for {sop_class}")
                data = encode_dataset(dataset, context.transfer_syntax)
        except (ValueError, AttributeError, OSError) as e:
            return defer.fail(e)
        kwargs: dict[str, Any] = {}
        if move_originator is not None:
            kwargs = {"move_originator_application_entity_title": move_originator[0],
                      "move_originator_message_id": move_originator[1]}
        message = m.CStoreRQ(self._next_id(), sop_class, sop_instance, priority, **kwargs)
        return self._request(message, context, data, "store")

    def _query(self, cls: type, service: str, identifier: Dataset, sop_class: str,
               on_response: Callable | None, **extra: Any) -> Deferred:
        try:
            context = self.context_for(sop_class)
            data = encode_dataset(identifier, context.transfer_syntax)
        except (ValueError, AttributeError) as e:
            return defer.fail(e)
        message = cls(self._next_id(), sop_class, **extra)
        d = self._request(message, context, data, service, on_response)
        d.message_id = message.message_id  # type: ignore[attr-defined]
        return d

    def find(self, identifier: Dataset, sop_class: str, *,
             on_response: Callable | None = None,
             priority: int = m.Priority.MEDIUM) -> Deferred[list]:
        """C-FIND: fires with every ``(C-FIND-RSP, identifier)``, final last.

        ``on_response`` is called for each response as it arrives.  The
        Deferred has a ``message_id`` attribute for :meth:`cancel`.
        """
        return self._query(m.CFindRQ, "find", identifier, sop_class, on_response,
                           priority=priority)

    def move(self, identifier: Dataset, sop_class: str, destination: str, *,
             on_response: Callable | None = None,
             priority: int = m.Priority.MEDIUM) -> Deferred[list]:
        """C-MOVE to ``destination``: fires with every ``(C-MOVE-RSP, dataset)``."""
        return self._query(m.CMoveRQ, "move", identifier, sop_class, on_response,
                           move_destination=destination, priority=priority)

    def get(self, identifier: Dataset, sop_class: str, *,
            on_store: Handler | None = None, on_response: Callable | None = None,
            priority: int = m.Priority.MEDIUM) -> Deferred[list]:
        """C-GET: fires with every ``(C-GET-RSP, dataset)``.

        The C-STORE sub-operations arrive on this association and go to
        ``on_store`` (or the association's ``"store"`` handler).
        """
        if on_store is not None:
            self.handlers["store"] = on_store
        return self._query(m.CGetRQ, "get", identifier, sop_class, on_response,
                           priority=priority)

    def cancel(self, request: int | Deferred) -> None:
        """C-CANCEL an outstanding C-FIND, C-GET or C-MOVE.

        :param request: its message ID, or the Deferred ``find`` & co. gave.
        """
        message_id = request if isinstance(request, int) else request.message_id  # type: ignore[union-attr]
        pending = self._outstanding.get(message_id)
        if pending is None:
            return
        self.log.info("Sending Cancel Request for message {id}", id=message_id)
        self.send_message(m.CCancelRQ(message_id), pending.context.context_id).addErrback(
            lambda f: None)


class _Lines:
    """A PDU's multi-line description, built only if a log line is written."""

    def __init__(self, pdu: Any) -> None:
        self.pdu = pdu

    def __str__(self) -> str:
        return "\n".join(self.pdu.describe())


@functools.cache
def _field_names(message_class: type) -> frozenset[str]:
    """The field names of a message class (computed once per class)."""
    return frozenset(f.name for f in fields(message_class))


def _as_response(result: Any) -> Response:
    """A handler's result as a :class:`Response`."""
    if result is None:
        return Response(Status.SUCCESS)
    if isinstance(result, Response):
        return result
    if isinstance(result, int):
        return Response(result)
    if isinstance(result, tuple):
        status, dataset = result[0], result[1] if len(result) > 1 else None
        return Response(status, dataset)
    if isinstance(result, Dataset):
        return Response(Status.PENDING, result)
    raise TypeError(f"a handler returned {result!r}, not a status or Response")


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


class AcceptorFactory(Factory):
    """Builds an acceptor :class:`Association` per incoming connection.

    :param reactor: clock for the associations' timers.
    :param policy: AE title, supported contexts and access rules.
    :param handlers: service name -> handler (see :class:`Association`).
    :param sink_for: where incoming data sets go (C-STORE to disk).
    """

    log = dlog.logger()
    noisy = False

    def __init__(self, reactor: IReactorTime, policy: AcceptorPolicy,
                 handlers: Mapping[str, Handler], *, sink_for: SinkFactory = memory_sink,
                 acse_timeout: float = 30.0, dimse_timeout: float | None = 30.0,
                 network_timeout: float | None = None,
                 max_associations: int | None = None) -> None:
        self.reactor = reactor
        self.max_associations = max_associations
        #: Associations past negotiation (they count against the limit;
        #: connections still awaiting their A-ASSOCIATE-RQ do not, and are
        #: dropped by ARTIM).
        self.active: set[Association] = set()
        self.policy = policy
        self.handlers = dict(handlers)
        self.sink_for = sink_for
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self.associations: set[Association] = set()

    def buildProtocol(self, addr: Any) -> Association:
        """A new acceptor association with our policy and handlers."""
        assoc = Association(self.reactor, handlers=self.handlers, sink_for=self.sink_for,
                            policy=self.policy, max_pdu=self.policy.max_pdu,
                            acse_timeout=self.acse_timeout, dimse_timeout=self.dimse_timeout,
                            network_timeout=self.network_timeout)
        assoc.factory = self
        assoc.peer_address = addr
        self.associations.add(assoc)

        def forget(_: Any) -> None:
            self.associations.discard(assoc)
            self.active.discard(assoc)

        assoc.closed.addBoth(forget)
        return assoc

    def admit(self, assoc: Association) -> AAssociateRJ | None:
        """Count an association that sent its A-ASSOCIATE-RQ; refuse it at
        once, transiently, past ``max_associations`` (PS3.8 Table 9-21:
        presentation provider, local limit exceeded)."""
        if self.max_associations is not None and len(self.active) >= self.max_associations:
            self.log.warn("Refusing association from {peer}: {count} associations already"
                          " (max_associations)", peer=assoc.peer_description,
                          count=len(self.active))
            return AAssociateRJ(RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION,
                                RejectReason.LOCAL_LIMIT_EXCEEDED)
        self.active.add(assoc)
        return None


class RequestorFactory(ClientFactory):
    """Connects one requestor :class:`Association` (used by :func:`associate`)."""

    noisy = False

    def __init__(self, association: Association) -> None:
        self.association = association

    def buildProtocol(self, addr: Any) -> Association:
        """Hand out the prepared association."""
        self.association.factory = self
        return self.association

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        """Fail ``established`` with the connection error."""
        self.association._settle(reason)


def associate(reactor: IReactorTCP, host: str, port: int, *,
              contexts: Sequence[tuple[str, Sequence[str]]], called_ae_title: str = "ANY-SCP",
              calling_ae_title: str = "DICOMTWIST", max_pdu: int = acse.DEFAULT_MAX_PDU,
              scp_role_classes: Iterable[str] = (), extended: Mapping[str, bytes] | None = None,
              handlers: Mapping[str, Handler] | None = None,
              sink_for: SinkFactory = memory_sink, acse_timeout: float = 30.0,
              dimse_timeout: float | None = 30.0, network_timeout: float | None = None,
              connect_timeout: float = 30.0, tls: Any = None) -> Deferred[Association]:
    """Connect to ``host:port`` and negotiate an association.

    :param contexts: ``(abstract syntax, [transfer syntaxes])`` to propose.
    :param tls: connect over TLS with this client connection creator
        (``IOpenSSLClientConnectionCreator``, see
        :func:`dicomtwist.tls.client_options`) through ``connectSSL``;
        a failed handshake fails the Deferred with ``TLSError``.
    :returns: a Deferred firing with the established :class:`Association`,
        or failing with ``AssociationRejected``, ``AssociationAborted`` or
        the connection error.
    """
    rq = acse.build_rq(called_ae_title, calling_ae_title, contexts, max_pdu,
                       scp_role_classes, extended)
    assoc = Association(reactor, handlers=handlers, sink_for=sink_for, max_pdu=max_pdu,
                        acse_timeout=acse_timeout, dimse_timeout=dimse_timeout,
                        network_timeout=network_timeout)
    assoc.associate_rq = rq
    if tls is None:
        reactor.connectTCP(host, port, RequestorFactory(assoc), timeout=connect_timeout)
    else:
        reactor.connectSSL(host, port, RequestorFactory(assoc), tls, timeout=connect_timeout)
    return assoc.established
