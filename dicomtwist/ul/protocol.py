"""The Twisted side of the Upper Layer: transport and clock <-> state machine.

``DicomProtocol`` frames bytes into PDUs, decodes them, feeds the pure
machine of :mod:`dicomtwist.ul.fsm` and carries out the machine's effects
(send a PDU, start/stop ARTIM, close the transport).  It knows nothing of
DIMSE: indications are delivered to ``on_*`` hooks, which the association
layer overrides.  Nothing escapes ``dataReceived``: undecodable input is
Evt19 (A-ABORT with the right reason), and an exception in a hook is logged
and aborts the association.

PDUs sent while input is handled (``connectionMade``, ``dataReceived``) are
collected and written together when the handling ends: one write (and, on a
plain TCP transport with nothing queued, one ``send`` at once rather than a
reactor iteration later) for the answer to a request, however many PDUs it
takes.  Timers started meanwhile (ARTIM, the network timeout) have their
clock calls made after that write: the peer waits for the one, not the
others.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from dicomtwist import log as dlog
from dicomtwist.errors import InvalidEventError, PDUDecodeError
from dicomtwist.ul.framing import PDUFramer
from dicomtwist.ul.fsm import Event, Indication, Machine, State
from dicomtwist.ul.timers import Deadlines, Timer, deadlines
from dicomtwist.ul.transport import AcceptedConnection
from dicomtwist.ul.pdu import (
    AAbort,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    RELEASE_ENCODED,
    RELEASE_PDUS,
    RejectReason,
    RejectResult,
    RejectSource,
    DECODERS,
    MALFORMED,
    PDU_TYPES,
    malformed,
)

#: Which event a received PDU is (PS3.8 Table 9-10 rows).
RECEIVED_EVENTS = {
    0x01: Event.EVT6,
    0x02: Event.EVT3,
    0x03: Event.EVT4,
    0x04: Event.EVT10,
    0x05: Event.EVT12,
    0x06: Event.EVT13,
    0x07: Event.EVT16,
}

#: The machine's idle state (read directly on the per-PDU path, where the
#: ``is_closed`` property's call would cost more than the test).
_CLOSED = State.STA1

#: The machine's established state, and the two data-transfer events
#: :meth:`DicomProtocol._feed` handles there directly (DT-1 and DT-2).
_ESTABLISHED = State.STA6
_RECEIVED_PDATA = Event.EVT10
_SEND_PDATA = Event.EVT9
#: ``_feeding`` while a P-DATA is indicated in Sta6 (DT-2): a true value
#: (other events wait), but not True (a P-DATA request is sent at once).
_INDICATING_PDATA = "DT-2"

#: The other members read once per association, bound once (on Python 3.11
#: reading a member from its Enum class costs a slot wrapper's call; see
#: :mod:`dicomtwist.ul.fsm`).
_CONNECTION_INDICATION = Event.EVT5
_ACCEPT = Event.EVT7
_REJECT = Event.EVT8
_RELEASE_RESPONSE = Event.EVT14
_CONNECTION_CLOSED = Event.EVT17
_RELEASE_RP = Indication.RELEASE_RP
#: The A-RELEASE-RP PDU (one for all: it carries nothing).
_RELEASE_RP_PDU = RELEASE_PDUS[AReleaseRP.PDU_TYPE]
#: An A-RELEASE-RQ as peers send it (reserved bytes zero), its PDU, and
#: which event it is: :meth:`DicomProtocol.dataReceived` takes these bytes,
#: arriving whole and alone, without framing and decoding them.
_RELEASE_RQ_WIRE = RELEASE_ENCODED[AReleaseRQ.PDU_TYPE]
_RELEASE_RQ_PDU = RELEASE_PDUS[AReleaseRQ.PDU_TYPE]
_RECEIVED_RELEASE_RQ = Event.EVT12

#: Default ARTIM timeout in seconds (PS3.8 9.1.5), as our -ta default.
DEFAULT_ARTIM_TIMEOUT = 30.0

#: Bytes read from the socket at once (Twisted's default is 64 KiB): a 0.5 MB
#: data set takes 4 reads instead of 10.  Small PDUs cost no more (the read
#: buffer is shrunk to what arrived); a streaming producer is paused past
#: this much unsent data.
READ_SIZE = 256 * 1024


class DicomProtocol(Protocol):
    """An Upper Layer connection, requestor or acceptor.

    :param clock: the clock for ARTIM and other timers.
    :param max_pdu: our Maximum Length Received for P-DATA-TF (0 = none).
    :param artim_timeout: seconds for the ARTIM timer.
    :param network_timeout: seconds of silence from the peer after which an
        established association is aborted (None = never).
    """

    log = dlog.logger()

    # One per connection: its state in slots rather than a dictionary
    # (Twisted's Protocol keeps one for transport, factory, connected).
    __slots__ = ("clock", "machine", "framer", "artim_timeout", "network_timeout", "_artim",
                 "_timers",
                 "_artim_running", "_artim_pending", "_feeding", "_queued", "_idle", "_idle_pending",
                 "_last_input",
                 "_peer_description",
                 "peer_address", "_answer_release_after_rp", "associate_rq", "_outgoing",
                 "sending_file", "_settled")

    def __init__(self, clock: IReactorTime, max_pdu: int = 16382,
                 artim_timeout: float = DEFAULT_ARTIM_TIMEOUT,
                 network_timeout: float | None = None,
                 timers: Deadlines | None = None) -> None:
        self.clock = clock
        # ARTIM and the network timeout, shared with every association on
        # this clock (one clock call for all; see dicomtwist.ul.timers).
        self._timers = timers if timers is not None else deadlines(clock)
        self.machine = Machine(self)
        self.framer = PDUFramer(max_pdu)
        self.artim_timeout = artim_timeout
        self.network_timeout = network_timeout
        # The ARTIM timer, and whether ARTIM runs.
        self._artim: Timer | None = None
        self._artim_running = False
        # ARTIM was started while input was handled: its call is made when
        # the handling ends (see :meth:`start_artim`).
        self._artim_pending = False
        # Events raised while the machine runs an action (a hook answering
        # an indication at once) wait until the transition is complete:
        # False, True, or _INDICATING_PDATA (see send_pdata).
        self._feeding: bool | str = False
        self._queued: list[tuple[Event, Any]] = []
        self._idle: Timer | None = None
        # The network timeout's timer is to be started when the handling
        # of input ends (see :meth:`_touch`).
        self._idle_pending = False
        # When input last came (the network timeout counts from it).
        self._last_input = 0.0
        # ``host:port``, made when first asked for (log lines only).
        self._peer_description: str | None = None
        #: The peer's address: ``transport.getPeer()`` once connected, or
        #: the address the factory was given (``buildProtocol(addr)``).
        self.peer_address: Any = None
        # Set in a release collision on the acceptor side (PS3.8 9.2.4).
        self._answer_release_after_rp = False
        #: The A-ASSOCIATE-RQ we send as requestor (set before connecting).
        self.associate_rq: AAssociateRQ | None = None
        # Encoded PDUs waiting for the end of the input being handled
        # (None: not handling input, write at once).
        self._outgoing: list[bytes] | None = None
        #: True while a file's producer is registered with the transport
        #: (:class:`dicomtwist.association.files.FileProducer`): its PDUs
        #: are then written at once, never held until the input being
        #: handled ends (see :meth:`_held`).
        self.sending_file = False
        # Calls waiting for the event being handled to complete
        # (:meth:`when_settled`); None when there are none.  (Slots, not
        # class defaults: an instance's slot is read in a specialized
        # instruction, a class default through the generic lookup.)
        self._settled: list[Callable[[], None]] | None = None

    @property
    def peer_description(self) -> str:
        """The peer as ``host:port``, for log lines ("?" until known)."""
        description = self._peer_description
        if description is None:
            peer = self.peer_address
            if peer is None:
                return "?"
            description = self._peer_description = (
                f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}")
        return description

    # -- Twisted Protocol -------------------------------------------------
    def connectionMade(self) -> None:
        """Set TCP_NODELAY, the read size and how the socket closes; start
        the requestor's or acceptor's flow."""
        transport = self.transport
        if not (type(transport) in _ACCEPTED
                and getattr(transport.server, NODELAY_STATE, None) is True):
            # (Nothing to do for a port's accepted sockets once they are
            # known to inherit the option.)
            _set_nodelay(transport)
        if type(transport) in _SOCKET_TRANSPORTS:
            transport.bufferSize = READ_SIZE
            # The socket is this process's alone (close-on-exec): ``close``
            # ends the connection as Twisted's ``shutdown`` + ``close``
            # would, with one system call less.
            transport._shouldShutdown = False
        elif hasattr(transport, "bufferSize"):
            transport.bufferSize = READ_SIZE
        if self.peer_address is None:
            self.peer_address = self.transport.getPeer()
        collecting = self._outgoing is None  # (_collect, inline)
        if collecting:
            self._outgoing = []
        try:
            if self.associate_rq is not None:
                # AE-1 (transport connect) has been done by the endpoint
                # already: Evt1 then Evt2 send the A-ASSOCIATE-RQ.
                self._event(Event.EVT1, self.associate_rq)
                self._event(Event.EVT2, self.associate_rq)
            else:
                self._event(_CONNECTION_INDICATION)
        finally:
            if collecting:
                self._flush()
        self._touch()

    def makeConnection(self, transport: Any) -> None:
        """Connect, then (acceptor on plain TCP) :meth:`_read_early`, once
        every ``connectionMade`` up the class chain has run.

        Both are one handling of input: what they send goes out in one
        write at the end, and ARTIM, started by the connection and
        stopped by an A-ASSOCIATE-RQ found at once, never needs a timer.
        """
        early = self.associate_rq is None and type(transport) in _ACCEPTED
        collecting = early and self._outgoing is None  # (_collect, inline)
        if collecting:
            self._outgoing = []
        try:
            super().makeConnection(transport)
            if early and not transport.disconnecting:
                self._read_early()
        finally:
            if collecting:
                self._flush()

    def _read_early(self) -> None:
        """Read what a just-accepted peer has sent already.

        A requestor sends its A-ASSOCIATE-RQ right after connecting, so it
        is usually there by the time we accept: reading it now, instead of
        on the reactor's next poll, answers it one reactor turn sooner.
        Nothing there (``EAGAIN``), or the connection already closed or
        failed: the reactor's own read finds that as usual (the socket
        stays readable; a reset read here is seen there as an end of
        file, which the state machine treats alike: Evt17).
        """
        try:
            self.transport.doRead()
        except Exception:
            # We are inside the listening port's accept loop: nothing may
            # escape into it (the reactor would close the port).
            self.log.failure("Reading a new connection failed")
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Frame, decode and feed each PDU to the machine; never raise.

        What the machine sends meanwhile goes out in one write at the end.
        An A-RELEASE-RQ read whole and alone, as peers send it, is fed
        without framing and decoding it (the usual last request, answered
        at once).
        """
        collecting = self._outgoing is None
        if collecting:
            self._outgoing = []
        machine = self.machine
        try:
            if self.network_timeout is not None:
                # What _touch does, inline: input came.
                self._last_input = self.clock.seconds()
                if self._idle is None and not self._idle_pending:
                    self._touch()
            framer = self.framer
            if data == _RELEASE_RQ_WIRE and framer.idle():
                # An A-RELEASE-RQ, whole and alone, the usual last request:
                # what framing and decoding it would give, known already.
                self._release_rq_received()
                return
            for pdu_type, body in framer.single(data) or framer.feed(data):
                # What decode_pdu and _event do, inline (the framer yields
                # known types only).
                try:
                    pdu = DECODERS[pdu_type](body)
                except PDUDecodeError as error:
                    self._decode_failed(error)
                    return
                except MALFORMED as error:
                    self._decode_failed(malformed(pdu_type, error))
                    return
                if dlog.debug_on and self.log_pdus:
                    self.log.debug("Received {pdu.summary()}", pdu=pdu)
                event = RECEIVED_EVENTS[pdu_type]
                try:
                    self._feed(event, pdu)
                except InvalidEventError:
                    self._event_failed("Upper Layer event {event} in the wrong state", event)
                except Exception:
                    self._event_failed("Error handling {event}", event)
                if machine._state is _CLOSED:
                    return
        except PDUDecodeError as error:
            self._decode_failed(error)
        finally:
            if collecting:
                self._flush()

    def _release_rq_received(self) -> None:
        """Feed the A-RELEASE-RQ PDU (Evt12), as ``dataReceived`` feeds a
        PDU it has framed and decoded."""
        pdu = _RELEASE_RQ_PDU
        if dlog.debug_on and self.log_pdus:
            self.log.debug("Received {pdu.summary()}", pdu=pdu)
        self._event(_RECEIVED_RELEASE_RQ, pdu)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Evt17 unless we closed the connection ourselves; then clean up."""
        idle, self._idle = self._idle, None  # (_cancel_idle, inline)
        self._idle_pending = False
        if idle is not None:
            self._timers.stop(idle)
        if self.machine._state is not _CLOSED:
            self._event(_CONNECTION_CLOSED, reason)
        self._artim_running = self._artim_pending = False
        artim, self._artim = self._artim, None
        if artim is not None:
            self._timers.stop(artim)
        self.on_connection_lost(reason)
        # The machine, now idle (Sta1), takes no event that has an effect:
        # drop its reference to us, so that the association is freed by
        # reference counting rather than by the cyclic garbage collector.
        self.machine.effects = None

    # -- effects called by the machine ------------------------------------
    #: Log a summary of every PDU at debug level.
    log_pdus = True

    def connect_transport(self) -> None:
        """AE-1: the endpoint has connected before we exist; nothing to do."""

    def send_pdu(self, pdu: Any) -> None:
        """Write a PDU object, pre-encoded bytes, or a list of byte strings
        making up one PDU, to the transport."""
        if type(pdu) is bytes:
            # Encoded already (a DIMSE message's PDUs): held, or written.
            outgoing = self._outgoing
            if outgoing is not None and not self.sending_file:
                outgoing.append(pdu)
                return
            self._write(pdu)
            return
        if type(pdu) not in _PDU_CLASSES:
            if isinstance(pdu, (bytearray, memoryview)):
                self._write(pdu)
                return
            if isinstance(pdu, (list, tuple)):
                held = self._held()
                if held is not None:
                    held.extend(pdu)
                    return
                if self._outgoing:
                    self._flush()
                self.transport.writeSequence(pdu)
                return
        if dlog.debug_on and self.log_pdus:
            self.log.debug("Sending {pdu.summary()}", pdu=pdu)
        data = pdu.encode()
        # (What _write does with bytes, inline: an A-ASSOCIATE-AC or an
        # A-RELEASE-RP is usually an answer, held.)
        outgoing = self._outgoing
        if outgoing is not None and not self.sending_file:
            outgoing.append(data)
            return
        self._write(data)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Write now, or at the end of the input being handled.

        ``data`` may be a view of a buffer its sender reuses once this
        returns (a file's framing buffer): it is sent or copied here.
        """
        held = self._held()
        if held is not None:
            held.append(data if type(data) is bytes else bytes(data))
            return
        if self._outgoing:
            self._flush()
        self._send(data)

    def _held(self) -> list[bytes] | None:
        """Where outgoing PDUs wait for the end of the input being handled;
        None if they go out at once: no input is being handled, or a file
        is being sent (its producer is paced by the transport's buffer, so
        its PDUs are never held back)."""
        if self.sending_file:
            return None
        return self._outgoing

    def _collect(self) -> bool:
        """Start collecting outgoing PDUs; False if already collecting (a
        nested call, whose caller flushes)."""
        if self._outgoing is not None:
            return False
        self._outgoing = []
        return True

    def _flush(self) -> None:
        """Write what was collected while handling input, in one piece;
        then start the timers started meanwhile: ARTIM's call, the network
        timeout's.

        The write comes first: the peer's next step waits for it (an
        A-RELEASE-RP starts ARTIM, a new connection's A-ASSOCIATE-AC the
        network timeout), the timers' calls do not.
        """
        outgoing, self._outgoing = self._outgoing, None
        try:
            if outgoing:
                self._send(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))
        finally:
            if self._artim_pending and self._artim_running:
                self._schedule_artim()
            if self._idle_pending:
                self._start_idle()

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data``: straight to the socket when nothing is queued.

        A reply, or a batch of a file's PDUs, is sent now instead of
        asking the reactor to wait for writability (two ``epoll_ctl``
        calls and a reactor iteration per write, and a copy of the data
        into the transport's buffer), in one ``send``: not the
        transport's ``writeSomeData``, which takes at most ``SEND_LIMIT``
        (128 KiB) a call.  Whatever the socket does not take, or an
        error, goes the usual way: a copy into the transport's buffer
        (which pauses a registered producer when full), whose ``doWrite``
        sends it or reports the error.
        """
        transport = self.transport
        if transport is None:
            return
        if type(transport) in _SOCKET_TRANSPORTS:
            # Nothing buffered and no close in progress: writing to the
            # socket at once keeps the byte order and is what ``doWrite``
            # would do one reactor iteration later.  A registered producer
            # (a file being sent) may write so too: Twisted pauses it only
            # when what it wrote fills the buffer, so while the buffer is
            # empty it is not paused.  (Attributes of Twisted's
            # ``abstract.FileDescriptor`` and ``tcp.Connection``; without
            # them, writes go the usual way, and
            # ``tests.test_protocol.SocketWriteTests`` fails.)
            try:
                queued = (transport.dataBuffer or transport._tempDataLen or transport.TLS
                          or transport.disconnecting or transport._writeDisconnected
                          or transport._aborting or not transport.connected)
            except AttributeError:
                queued = True
            if not queued:
                sent = _send_now(transport, data)
                if sent >= len(data):
                    return
                if sent:
                    data = memoryview(data)[sent:]
        transport.write(bytes(data))

    def start_artim(self) -> None:
        """Start, or restart, the ARTIM timer.

        While input is handled, the timer's call is made when the handling
        ends, if ARTIM still runs then: an acceptor starts ARTIM on a new
        connection (AE-5) and stops it on the A-ASSOCIATE-RQ (AE-6), which
        :meth:`_read_early` usually finds at once; no call is made for that.
        """
        self._artim_running = True
        if self._outgoing is not None:
            self._artim_pending = True
            return
        self._schedule_artim()

    def _schedule_artim(self) -> None:
        self._artim_pending = False
        timers = self._timers
        if self._artim is not None:
            timers.stop(self._artim)
        self._artim = timers.call_later(self.artim_timeout, self._artim_expired)

    def stop_artim(self) -> None:
        """Stop the ARTIM timer if it runs.

        The timer is stopped, not left pending for the next start: an
        established association may stay idle for hours (a pending timer
        would hold it); the acceptor starts ARTIM again only after its
        A-RELEASE-RP.
        """
        self._artim_running = self._artim_pending = False
        artim, self._artim = self._artim, None
        if artim is not None:
            self._timers.stop(artim)

    def close_transport(self) -> None:
        """Close the connection once pending writes are flushed."""
        self._cancel_idle()
        self._flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def check_associate_rq(self, rq: AAssociateRQ) -> AAssociateRJ | None:
        """The provider's acceptance test in AE-6 (protocol version)."""
        return check_protocol_version(rq)

    def is_busy(self) -> bool:
        """True while an operation is in progress (the service user says);
        the network timeout then waits instead of aborting."""
        return False

    def indicate(self, indication: Indication, payload: Any) -> None:
        """Deliver an indication or confirmation to the ``on_*`` hook."""
        getattr(self, _HOOKS[indication])(payload)
        if indication is _RELEASE_RP and self._answer_release_after_rp:
            # Release collision, acceptor side: the RP has arrived (AR-10),
            # now answer the peer's A-RELEASE-RQ (PS3.8 9.2.4).
            self._answer_release_after_rp = False
            self.release_response()

    # -- primitives for the service user ----------------------------------
    def associate_response(self, pdu: Any) -> None:
        """Answer an A-ASSOCIATE indication with an AC (Evt7) or RJ (Evt8)."""
        event = _REJECT if isinstance(pdu, AAssociateRJ) else _ACCEPT
        self._feed(event, pdu)  # (what _primitive does)

    def send_pdata(self, pdu: Any) -> None:
        """P-DATA request (Evt9): ``pdu`` is a PDataTF or encoded bytes.

        In Sta6, with no event running or waiting, or only a P-DATA
        indication (DT-2, which leaves Sta6 as it is), Table 9-10's cell is
        taken at once: DT-1 sends the PDU, Sta6 stays; as :meth:`_feed`
        would, after the indication, with nothing in between.
        """
        if (self._feeding is not True and self.machine._state is _ESTABLISHED
                and not self._queued):
            self.send_pdu(pdu)
            return
        self._feed(_SEND_PDATA, pdu)

    def release_request(self) -> None:
        """A-RELEASE request (Evt11)."""
        self._primitive(Event.EVT11, AReleaseRQ())

    def release_response(self) -> None:
        """A-RELEASE response (Evt14)."""
        self._feed(_RELEASE_RESPONSE, _RELEASE_RP_PDU)  # (what _primitive does)

    def abort_request(self, source: int = AbortSource.SERVICE_USER,
                      reason: int = AbortReason.NOT_SPECIFIED) -> None:
        """A-ABORT request (Evt15); a no-op if the connection is gone."""
        if self.machine.is_closed:
            return
        self._event(Event.EVT15, AAbort(source, reason))

    # -- hooks for the service user (overridden) ---------------------------
    def on_associate_rq(self, rq: AAssociateRQ) -> None:
        """A-ASSOCIATE indication: answer with :meth:`associate_response`."""
        self.abort_request()

    def on_associate_ac(self, ac: Any) -> None:
        """A-ASSOCIATE confirmation (accept)."""

    def on_associate_rj(self, rj: AAssociateRJ) -> None:
        """A-ASSOCIATE confirmation (reject)."""

    def on_pdata(self, pdata: Any) -> None:
        """P-DATA indication."""

    def on_release_rq(self, payload: Any) -> None:
        """A-RELEASE indication: the default answers at once."""
        self.release_response()

    def on_release_collision(self, payload: Any) -> None:
        """A-RELEASE indication during a release collision (PS3.8 9.2.4).

        The requestor answers at once (Sta9, AR-9).  The acceptor must not:
        in Sta10 it first awaits the requestor's A-RELEASE-RP (AR-10 ->
        Sta12) and only then answers (Evt14, AR-4); answering here raised
        InvalidEventError in Sta10 and aborted the association.
        """
        if self.machine.is_requestor:
            self.release_response()
        else:
            self._answer_release_after_rp = True

    def on_release_rp(self, payload: Any) -> None:
        """A-RELEASE confirmation."""

    def on_abort(self, abort: AAbort) -> None:
        """A-ABORT indication (the peer aborted)."""

    def on_p_abort(self, payload: Any) -> None:
        """A-P-ABORT indication (the provider aborted)."""

    def on_transport_connected(self, payload: Any) -> None:
        """Transport connected (requestor)."""

    def on_connection_lost(self, reason: Failure | None) -> None:
        """The TCP connection is gone; release every resource."""

    # -- internals ----------------------------------------------------------
    def when_settled(self, f: Callable[[], None], first: bool = False) -> None:
        """Call ``f`` once the event being handled, and those its hooks
        raised, are complete; at once if no event is being handled.

        A file's producer starts so: started from an indication's hook (a
        C-STORE sub-operation begun by the response to the previous one),
        each of its PDUs would otherwise wait in the queue of raised events
        until the whole file had been read, and the transport could never
        pause it.

        :param first: call ``f`` before the calls already waiting (a
            file's producer: what is sent goes before work that can wait).
        """
        if not self._feeding:
            f()
            return
        if self._settled is None:
            self._settled = []
        if first:
            self._settled.insert(0, f)
        else:
            self._settled.append(f)

    def _feed(self, event: Event, payload: Any) -> None:
        """Run one event, then any raised by the hooks during its action,
        then what waits for them to settle (:meth:`when_settled`)."""
        if self._feeding:
            self._queued.append((event, payload))
            return
        self._feeding = True
        machine = self.machine
        queued = self._queued
        try:
            while True:
                if machine._state is _ESTABLISHED and (event is _RECEIVED_PDATA
                                                       or event is _SEND_PDATA):
                    # Table 9-10's two data-transfer cells of Sta6, taken
                    # directly (the machine would do the same through its
                    # table, action and effects): DT-2 (Evt10) indicates
                    # the P-DATA, DT-1 (Evt9) sends it; Sta6 stays.
                    if event is _RECEIVED_PDATA:
                        # A P-DATA sent meanwhile goes out at once (see
                        # send_pdata); other events wait.
                        self._feeding = _INDICATING_PDATA
                        self.on_pdata(payload)
                        self._feeding = True
                    else:
                        self.send_pdu(payload)
                else:
                    machine.handle(event, payload)
                if not queued:
                    break
                event, payload = queued.pop(0)
        finally:
            self._feeding = False
            if queued:
                # (Left by an exception.)
                queued.clear()
            settled = self._settled
            if settled is not None:
                self._settled = None
                for f in settled:
                    f()

    def _primitive(self, event: Event, payload: Any) -> None:
        """Feed a local primitive; InvalidEventError reaches the caller
        (unless raised from a hook, when the running event handles it)."""
        self._feed(event, payload)

    def _event(self, event: Event, payload: Any = None) -> None:
        """Feed a network or timer event; log and abort on a hook's failure."""
        try:
            self._feed(event, payload)
        except InvalidEventError:
            self._event_failed("Upper Layer event {event} in the wrong state", event)
        except Exception:
            self._event_failed("Error handling {event}", event)

    def _event_failed(self, why: str, event: Event) -> None:
        """Handling ``event`` raised (our bug): log the exception being
        handled, abort."""
        self.log.failure(why, event=event)
        self._hard_close()

    def _hard_close(self) -> None:
        """Last resort after our own bug: abort and drop the connection."""
        if not self.machine.is_closed:
            try:
                self._feed(Event.EVT15, AAbort(AbortSource.SERVICE_PROVIDER,
                                               AbortReason.NOT_SPECIFIED))
            except Exception:
                pass
        self._flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def _decode_failed(self, error: PDUDecodeError) -> None:
        self.log.warn("Invalid PDU from {peer}: {reason}", peer=self.peer_description,
                      reason=str(error))
        self._event(Event.EVT19, error)

    def _artim_expired(self) -> None:
        self._artim = None
        if not self._artim_running:
            return
        self._artim_running = False
        if not self.machine.is_closed:
            self.log.info("ARTIM timer expired ({peer})", peer=self.peer_description)
            self._event(Event.EVT18)

    def _touch(self) -> None:
        """Restart the network (idle) timeout.

        Only the time is noted: the timer's call, made once, looks at it
        when it comes and waits again for what is left (a read costs one
        clock reading rather than moving the call).  While input is
        handled, the call is made when the handling ends, after what it
        answers is written (:meth:`_flush`).
        """
        if self.network_timeout is None:
            return
        self._last_input = self.clock.seconds()
        if self._idle is None and self.machine._state is not _CLOSED:
            if self._outgoing is not None:
                self._idle_pending = True
                return
            self._idle = self._timers.call_later(self.network_timeout, self._idle_expired)

    def _start_idle(self) -> None:
        """Make the network timeout's call noted by :meth:`_touch`, unless
        made, or no longer wanted, meanwhile."""
        self._idle_pending = False
        if self._idle is None and self.machine._state is not _CLOSED:
            self._idle = self._timers.call_later(self.network_timeout, self._idle_expired)

    def _cancel_idle(self) -> None:
        idle, self._idle = self._idle, None
        self._idle_pending = False
        self._timers.stop(idle)

    def _idle_expired(self) -> None:
        self._idle = None
        left = self._last_input + self.network_timeout - self.clock.seconds()
        if left > 0:
            # Input came since the call was made: wait for the rest.
            self._idle = self._timers.call_later(left, self._idle_expired)
            return
        if self.is_busy():
            # A long operation (a C-MOVE sub-operation, a big query) keeps a
            # quiet peer waiting legitimately: look again later.
            self._touch()
            return
        self.log.warn("Network timeout: nothing from {peer} for {seconds} s, aborting",
                      peer=self.peer_description, seconds=self.network_timeout)
        self.abort_request(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)
        if self.transport is not None:
            self.transport.loseConnection()


def check_protocol_version(rq: AAssociateRQ) -> AAssociateRJ | None:
    """The Upper Layer provider's own acceptance test (AE-6).

    Only the protocol version is the provider's business (PS3.8 9.3.2: bit 0
    set); everything else is decided by the service user.
    """
    if not rq.protocol_version & 0x0001:
        return AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_PROVIDER_ACSE,
                            RejectReason.PROTOCOL_VERSION_NOT_SUPPORTED)
    return None


_HOOKS = {
    Indication.ASSOCIATE_RQ: "on_associate_rq",
    Indication.ASSOCIATE_AC: "on_associate_ac",
    Indication.ASSOCIATE_RJ: "on_associate_rj",
    Indication.P_DATA: "on_pdata",
    Indication.RELEASE_RQ: "on_release_rq",
    Indication.RELEASE_COLLISION: "on_release_collision",
    Indication.RELEASE_RP: "on_release_rp",
    Indication.ABORT: "on_abort",
    Indication.P_ABORT: "on_p_abort",
    Indication.TRANSPORT_CONNECTED: "on_transport_connected",
}


#: Transports whose socket :meth:`DicomProtocol._flush` writes to directly
#: when nothing is queued (exact types: a subclass may write differently).
_SOCKET_TRANSPORTS = frozenset({tcp.Server, tcp.Client, AcceptedConnection})
#: Transports of an accepted plain TCP connection.
_ACCEPTED = frozenset({tcp.Server, AcceptedConnection})
#: The PDU classes (objects :meth:`DicomProtocol.send_pdu` encodes).
_PDU_CLASSES = frozenset(PDU_TYPES.values())


def _send_now(transport: Any, data: bytes | bytearray | memoryview) -> int:
    """One ``send`` of ``data`` on a TCP transport's socket: how many bytes
    it took; 0 if it would block or failed (the transport's own write
    then meets the error and reports it)."""
    try:
        return transport.socket.send(data)
    except OSError:
        return 0


#: What a listening port's accepted sockets do with TCP_NODELAY, kept in
#: the port's ``nodelay_inherited`` attribute: True, they inherit it from
#: the listening socket (set there by the first connection; Linux and the
#: BSDs copy it to accepted sockets), so nothing is left to do per
#: connection; False, they do not (set per connection); a number, how many
#: more connections to check before deciding False (those accepted before
#: the listening socket had it have not inherited it); absent, not known
#: yet.
NODELAY_STATE = "nodelay_inherited"
#: Accepted sockets checked for an inherited TCP_NODELAY before giving up.
NODELAY_CHECKS = 32


def _set_nodelay(transport: Any) -> None:
    """Disable Nagle: each DIMSE turn would otherwise wait on delayed ACKs.

    An accepted plain TCP connection inherits the option from its
    listening socket, where the first connection of the port sets it:
    one ``setsockopt`` per port rather than per association (the next
    connections check with ``getsockopt`` until one has it).
    """
    if type(transport) in _ACCEPTED and _inherits_nodelay(transport):
        return
    set_nodelay = getattr(transport, "setTcpNoDelay", None)
    if set_nodelay is not None:
        try:
            set_nodelay(True)
            return
        except (OSError, AttributeError):
            pass
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is not None:
        try:
            get_handle().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


def _inherits_nodelay(transport: tcp.Server) -> bool:
    """True if this accepted socket has TCP_NODELAY from its listening
    socket (see :data:`NODELAY_STATE`); otherwise the caller sets it."""
    port = transport.server
    state = getattr(port, NODELAY_STATE, None)
    if state is True or state is False:
        return state
    try:
        if state is None:
            if getattr(port, "nodelay_set", False):
                # An AcceptorPort set it when it started listening.
                state = NODELAY_CHECKS
            else:
                # The port's first connection: from now on its listening
                # socket hands the option on.
                port.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                setattr(port, NODELAY_STATE, NODELAY_CHECKS)
                return False
        if transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
            setattr(port, NODELAY_STATE, True)
            return True
        setattr(port, NODELAY_STATE, state - 1 if state > 1 else False)
    except (OSError, AttributeError, TypeError):
        # No listening socket to set (a port adopted another way), or no
        # attributes to keep: per connection.
        try:
            setattr(port, NODELAY_STATE, False)
        except AttributeError:
            pass
    return False
