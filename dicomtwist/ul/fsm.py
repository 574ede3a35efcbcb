"""The DICOM Upper Layer state machine (PS3.8 9.2).

Pure: the machine knows the thirteen states, the nineteen events, the
actions of PS3.8 Tables 9-6 to 9-9 and the State Transition Table 9-10, and
nothing about transports, clocks or wire encoding.  Every side effect goes
through an injected `Effects` object; callers feed events with
`Machine.handle` and never branch on the current state themselves.
"""

from __future__ import annotations

from enum import Enum, unique
from typing import Callable, Protocol

from dicomtwist.errors import InvalidEventError
from dicomtwist.ul.pdu import AAbort, AbortReason, AbortSource


@unique
class State(Enum):
    """The states of the DICOM Upper Layer (PS3.8 Table 9-10, "States").

    Each value quotes the standard's definition of the state.
    """

    STA1 = "Idle"
    STA2 = "Transport connection open (Awaiting A-ASSOCIATE-RQ PDU)"
    STA3 = "Awaiting local A-ASSOCIATE response primitive (from local user)"
    STA4 = ("Awaiting transport connection opening to complete "
            "(from local transport service)")
    STA5 = "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU"
    STA6 = "Association established and ready for data transfer"
    STA7 = "Awaiting A-RELEASE-RP PDU"
    STA8 = "Awaiting local A-RELEASE response primitive (from local user)"
    STA9 = ("Release collision requestor side; awaiting A-RELEASE response "
            "(from local user)")
    STA10 = "Release collision acceptor side; awaiting A-RELEASE-RP PDU"
    STA11 = "Release collision requestor side; awaiting A-RELEASE-RP PDU"
    STA12 = ("Release collision acceptor side; awaiting A-RELEASE response "
             "primitive (from local user)")
    STA13 = ("Awaiting Transport Connection Close Indication "
             "(Association no longer exists)")

    # Members are singletons compared by identity: hash them so too, in C,
    # rather than by name in Python (every event looks up a (state, event)
    # pair in TRANSITIONS).
    __hash__ = object.__hash__


@unique
class Event(Enum):
    """The events of the DICOM Upper Layer (PS3.8 Table 9-10, "Events").

    Each value quotes the standard's definition of the event.
    """

    EVT1 = "A-ASSOCIATE Request (local user)"
    EVT2 = "Transport Connect Confirmation (local transport service)"
    EVT3 = "A-ASSOCIATE-AC PDU (received on transport connection)"
    EVT4 = "A-ASSOCIATE-RJ PDU (received on transport connection)"
    EVT5 = "Transport Connection Indication (local transport service)"
    EVT6 = "A-ASSOCIATE-RQ PDU (received on transport connection)"
    EVT7 = "A-ASSOCIATE response primitive (accept)"
    EVT8 = "A-ASSOCIATE response primitive (reject)"
    EVT9 = "P-DATA request primitive"
    EVT10 = "P-DATA-TF PDU"
    EVT11 = "A-RELEASE Request primitive"
    EVT12 = "A-RELEASE-RQ PDU (received on open transport connection)"
    EVT13 = "A-RELEASE-RP PDU (received on transport connection)"
    EVT14 = "A-RELEASE response primitive"
    EVT15 = "A-ABORT Request primitive"
    EVT16 = "A-ABORT PDU (received on open transport connection)"
    EVT17 = "Transport connection closed indication (local transport service)"
    EVT18 = "ARTIM timer expired (Association reject/release timer)"
    EVT19 = ("Unrecognized or invalid PDU received "
             "(on an open transport connection)")

    # See State.__hash__.
    __hash__ = object.__hash__


@unique
class Indication(Enum):
    """What the machine reports to its service user (PS3.8 9.2, 7.1-7.4).

    Passed to `Effects.indicate` with a payload, named in each value.
    """

    ASSOCIATE_RQ = "A-ASSOCIATE indication; payload the A-ASSOCIATE-RQ PDU"
    ASSOCIATE_AC = ("A-ASSOCIATE confirmation (accept); "
                    "payload the A-ASSOCIATE-AC PDU")
    ASSOCIATE_RJ = ("A-ASSOCIATE confirmation (reject); "
                    "payload the A-ASSOCIATE-RJ PDU")
    P_DATA = "P-DATA indication; payload the P-DATA-TF PDU"
    RELEASE_RQ = "A-RELEASE indication; payload the A-RELEASE-RQ PDU"
    RELEASE_COLLISION = ("A-RELEASE indication (release collision); "
                         "payload the A-RELEASE-RQ PDU")
    RELEASE_RP = "A-RELEASE confirmation; payload the A-RELEASE-RP PDU"
    ABORT = "A-ABORT indication; payload the received A-ABORT PDU"
    P_ABORT = ("A-P-ABORT indication; payload what the event carried "
               "(decode error, unexpected PDU, A-ABORT PDU) or None")
    TRANSPORT_CONNECTED = ("Transport connection confirmed; the "
                           "A-ASSOCIATE-RQ PDU is sent next; payload None")

    # See State.__hash__.
    __hash__ = object.__hash__


#: Members read on every association, bound once.  On Python 3.11
#: ``EnumType`` has a ``__getattr__``, so reading a member from its class
#: (``Indication.RELEASE_RQ``) runs a slot wrapper: about 850 machine
#: instructions, 13 times per C-ECHO association (``benchmarks/assoc_cost.py``).
_STA1 = State.STA1
_STA6 = State.STA6
_ASSOCIATE_RQ = Indication.ASSOCIATE_RQ
_RELEASE_RQ = Indication.RELEASE_RQ


class Effects(Protocol):
    """The side effects the machine asks for; injected by the protocol.

    PDU objects are opaque to the machine: it sends whatever payload the
    local user passed with the event, except the A-ABORT PDUs it builds.
    """

    def connect_transport(self) -> None:
        """Issue a TRANSPORT CONNECT request primitive (AE-1)."""

    def send_pdu(self, pdu: object) -> None:
        """Encode and write ``pdu`` on the transport connection."""

    def start_artim(self) -> None:
        """Start the ARTIM timer, or restart it if it is running."""

    def stop_artim(self) -> None:
        """Stop the ARTIM timer; nothing happens if it is not running."""

    def indicate(self, indication: Indication, payload: object) -> None:
        """Issue a primitive to the service user.

        :param indication: which primitive.
        :param payload: the PDU or error it concerns (see `Indication`).
        """

    def close_transport(self) -> None:
        """Close the transport connection."""

    def check_associate_rq(self, pdu: object) -> object | None:
        """Decide whether the service provider accepts an A-ASSOCIATE-RQ (AE-6).

        :param pdu: the received A-ASSOCIATE-RQ PDU.
        :returns: None if acceptable, else the A-ASSOCIATE-RJ PDU to send.
        """


Action = Callable[["Machine", object], "State | None"]


def _provider_abort(payload: object) -> AAbort:
    """Build the service-provider A-ABORT PDU answering ``payload``.

    :param payload: what the triggering event carried: a decode error with
        an ``abort_reason`` (Evt19), or an unexpected PDU.
    :returns: an A-ABORT with source service-provider and the decode error's
        reason, or "unexpected PDU" (PS3.8 Table 9-26).
    """
    reason = getattr(payload, "abort_reason", AbortReason.UNEXPECTED_PDU)
    return AAbort(AbortSource.SERVICE_PROVIDER, reason)


# Association establishment related actions (PS3.8 Table 9-6).

def ae_1(machine: Machine, payload: object) -> State | None:
    """AE-1: issue TRANSPORT CONNECT request primitive to local transport service.

    The A-ASSOCIATE-RQ PDU in ``payload`` is kept for AE-2.
    """
    machine._is_requestor = True
    machine._associate_rq = payload
    machine.effects.connect_transport()
    return None


def ae_2(machine: Machine, payload: object) -> State | None:
    """AE-2: send A-ASSOCIATE-RQ PDU (the one given with Evt1)."""
    machine.effects.indicate(Indication.TRANSPORT_CONNECTED, None)
    machine.effects.send_pdu(machine._associate_rq)
    return None


def ae_3(machine: Machine, payload: object) -> State | None:
    """AE-3: issue A-ASSOCIATE confirmation (accept) primitive."""
    machine.effects.indicate(Indication.ASSOCIATE_AC, payload)
    return None


def ae_4(machine: Machine, payload: object) -> State | None:
    """AE-4: issue A-ASSOCIATE confirmation (reject) primitive and close
    transport connection."""
    machine.effects.indicate(Indication.ASSOCIATE_RJ, payload)
    machine.effects.close_transport()
    return None


def ae_5(machine: Machine, payload: object) -> State | None:
    """AE-5: issue Transport connection response primitive; start ARTIM timer.

    The transport has already accepted the connection; only ARTIM remains.
    """
    machine._is_requestor = False
    machine.effects.start_artim()
    return None


def ae_6(machine: Machine, payload: object) -> State | None:
    """AE-6: stop ARTIM timer and, if the A-ASSOCIATE-RQ is acceptable by the
    service-provider, issue A-ASSOCIATE indication (next state Sta3);
    otherwise issue A-ASSOCIATE-RJ PDU and start ARTIM timer (next state Sta13).
    """
    machine.effects.stop_artim()
    rejection = machine.effects.check_associate_rq(payload)
    if rejection is None:
        machine.effects.indicate(_ASSOCIATE_RQ, payload)
        return None
    machine.effects.send_pdu(rejection)
    machine.effects.start_artim()
    return State.STA13


def ae_7(machine: Machine, payload: object) -> State | None:
    """AE-7: send A-ASSOCIATE-AC PDU."""
    machine.effects.send_pdu(payload)
    return None


def ae_8(machine: Machine, payload: object) -> State | None:
    """AE-8: send A-ASSOCIATE-RJ PDU and start ARTIM timer."""
    machine.effects.send_pdu(payload)
    machine.effects.start_artim()
    return None


# Data transfer related actions (PS3.8 Table 9-7).

def dt_1(machine: Machine, payload: object) -> State | None:
    """DT-1: send P-DATA-TF PDU."""
    machine.effects.send_pdu(payload)
    return None


def dt_2(machine: Machine, payload: object) -> State | None:
    """DT-2: send P-DATA indication primitive."""
    machine.effects.indicate(Indication.P_DATA, payload)
    return None


# Association release related actions (PS3.8 Table 9-8).

def ar_1(machine: Machine, payload: object) -> State | None:
    """AR-1: send A-RELEASE-RQ PDU."""
    machine.effects.send_pdu(payload)
    return None


def ar_2(machine: Machine, payload: object) -> State | None:
    """AR-2: issue A-RELEASE indication primitive."""
    machine.effects.indicate(_RELEASE_RQ, payload)
    return None


def ar_3(machine: Machine, payload: object) -> State | None:
    """AR-3: issue A-RELEASE confirmation primitive, and close transport
    connection."""
    machine.effects.indicate(Indication.RELEASE_RP, payload)
    machine.effects.close_transport()
    return None


def ar_4(machine: Machine, payload: object) -> State | None:
    """AR-4: issue A-RELEASE-RP PDU and start ARTIM timer."""
    machine.effects.send_pdu(payload)
    machine.effects.start_artim()
    return None


def ar_5(machine: Machine, payload: object) -> State | None:
    """AR-5: stop ARTIM timer."""
    machine.effects.stop_artim()
    return None


def ar_6(machine: Machine, payload: object) -> State | None:
    """AR-6: issue P-DATA indication."""
    machine.effects.indicate(Indication.P_DATA, payload)
    return None


def ar_7(machine: Machine, payload: object) -> State | None:
    """AR-7: issue P-DATA-TF PDU."""
    machine.effects.send_pdu(payload)
    return None


def ar_8(machine: Machine, payload: object) -> State | None:
    """AR-8: issue A-RELEASE indication (release collision); next state Sta9
    if association-requestor, else Sta10."""
    machine.effects.indicate(Indication.RELEASE_COLLISION, payload)
    return State.STA9 if machine.is_requestor else State.STA10


def ar_9(machine: Machine, payload: object) -> State | None:
    """AR-9: send A-RELEASE-RP PDU."""
    machine.effects.send_pdu(payload)
    return None


def ar_10(machine: Machine, payload: object) -> State | None:
    """AR-10: issue A-RELEASE confirmation primitive."""
    machine.effects.indicate(Indication.RELEASE_RP, payload)
    return None


# Association abort related actions (PS3.8 Table 9-9).

def aa_1(machine: Machine, payload: object) -> State | None:
    """AA-1: send A-ABORT PDU (service-user source) and start (or restart if
    already started) ARTIM timer.

    On Evt15 the payload is the user's `AAbort`, sent as is, or None for
    A-ABORT(service-user, not specified).  Any other payload is a PDU (or
    decode error) received in Sta2; like DCMTK we answer it with
    A-ABORT(service-provider, the decode error's reason or "unexpected
    PDU"), since the provider, not the user, detected the fault.
    """
    if isinstance(payload, AAbort):
        abort = payload
    elif payload is None:
        abort = AAbort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED)
    else:
        abort = _provider_abort(payload)
    machine.effects.send_pdu(abort)
    machine.effects.start_artim()
    return None


def aa_2(machine: Machine, payload: object) -> State | None:
    """AA-2: stop ARTIM timer if running; close transport connection."""
    machine.effects.stop_artim()
    machine.effects.close_transport()
    return None


def aa_3(machine: Machine, payload: object) -> State | None:
    """AA-3: if service-user initiated abort, issue A-ABORT indication and
    close transport connection; otherwise (service-provider initiated abort)
    issue A-P-ABORT indication and close transport connection.

    ``payload`` is the received `AAbort`; its source tells the two apart.
    """
    if getattr(payload, "source", None) == AbortSource.SERVICE_PROVIDER:
        machine.effects.indicate(Indication.P_ABORT, payload)
    else:
        machine.effects.indicate(Indication.ABORT, payload)
    machine.effects.close_transport()
    return None


def aa_4(machine: Machine, payload: object) -> State | None:
    """AA-4: issue A-P-ABORT indication primitive."""
    machine.effects.indicate(Indication.P_ABORT, payload)
    return None


def aa_5(machine: Machine, payload: object) -> State | None:
    """AA-5: stop ARTIM timer."""
    machine.effects.stop_artim()
    return None


def aa_6(machine: Machine, payload: object) -> State | None:
    """AA-6: ignore PDU."""
    return None


def aa_7(machine: Machine, payload: object) -> State | None:
    """AA-7: send A-ABORT PDU.

    Service-provider source; the reason is the decode error's (Evt19) or
    "unexpected PDU" (Evt6).
    """
    machine.effects.send_pdu(_provider_abort(payload))
    return None


def aa_8(machine: Machine, payload: object) -> State | None:
    """AA-8: send A-ABORT PDU (service-provider source), issue an A-P-ABORT
    indication, and start ARTIM timer.

    The reason is the decode error's ``abort_reason`` (Evt19), else
    "unexpected PDU".
    """
    machine.effects.send_pdu(_provider_abort(payload))
    machine.effects.indicate(Indication.P_ABORT, payload)
    machine.effects.start_artim()
    return None


_S = State
_E = Event

#: PS3.8 Table 9-10, one entry per non-empty cell, rows (events) in the
#: table's order, columns (states) left to right.
TRANSITIONS: dict[tuple[State, Event], tuple[Action, State]] = {
    # Evt1: A-ASSOCIATE Request (local user)
    (_S.STA1, _E.EVT1): (ae_1, _S.STA4),
    # Evt2: Transport Connect Confirmation
    (_S.STA4, _E.EVT2): (ae_2, _S.STA5),
    # Evt3: A-ASSOCIATE-AC PDU received
    (_S.STA2, _E.EVT3): (aa_1, _S.STA13),
    (_S.STA3, _E.EVT3): (aa_8, _S.STA13),
    (_S.STA5, _E.EVT3): (ae_3, _S.STA6),
    (_S.STA6, _E.EVT3): (aa_8, _S.STA13),
    (_S.STA7, _E.EVT3): (aa_8, _S.STA13),
    (_S.STA8, _E.EVT3): (aa_8, _S.STA13),
    (_S.STA9, _E.EVT3): (aa_8, _S.STA13),
    (_S.STA10, _E.EVT3): (aa_8, _S.STA13),
    (_S.STA11, _E.EVT3): (aa_8, _S.STA13),
    (_S.STA12, _E.EVT3): (aa_8, _S.STA13),
    (_S.STA13, _E.EVT3): (aa_6, _S.STA13),
    # Evt4: A-ASSOCIATE-RJ PDU received
    (_S.STA2, _E.EVT4): (aa_1, _S.STA13),
    (_S.STA3, _E.EVT4): (aa_8, _S.STA13),
    (_S.STA5, _E.EVT4): (ae_4, _S.STA1),
    (_S.STA6, _E.EVT4): (aa_8, _S.STA13),
    (_S.STA7, _E.EVT4): (aa_8, _S.STA13),
    (_S.STA8, _E.EVT4): (aa_8, _S.STA13),
    (_S.STA9, _E.EVT4): (aa_8, _S.STA13),
    (_S.STA10, _E.EVT4): (aa_8, _S.STA13),
    (_S.STA11, _E.EVT4): (aa_8, _S.STA13),
    (_S.STA12, _E.EVT4): (aa_8, _S.STA13),
    (_S.STA13, _E.EVT4): (aa_6, _S.STA13),
    # Evt5: Transport Connection Indication
    (_S.STA1, _E.EVT5): (ae_5, _S.STA2),
    # Evt6: A-ASSOCIATE-RQ PDU received (AE-6 may go to Sta13 instead)
    (_S.STA2, _E.EVT6): (ae_6, _S.STA3),
    (_S.STA3, _E.EVT6): (aa_8, _S.STA13),
    (_S.STA5, _E.EVT6): (aa_8, _S.STA13),
    (_S.STA6, _E.EVT6): (aa_8, _S.STA13),
    (_S.STA7, _E.EVT6): (aa_8, _S.STA13),
    (_S.STA8, _E.EVT6): (aa_8, _S.STA13),
    (_S.STA9, _E.EVT6): (aa_8, _S.STA13),
    (_S.STA10, _E.EVT6): (aa_8, _S.STA13),
    (_S.STA11, _E.EVT6): (aa_8, _S.STA13),
    (_S.STA12, _E.EVT6): (aa_8, _S.STA13),
    (_S.STA13, _E.EVT6): (aa_7, _S.STA13),
    # Evt7: A-ASSOCIATE response primitive (accept)
    (_S.STA3, _E.EVT7): (ae_7, _S.STA6),
    # Evt8: A-ASSOCIATE response primitive (reject)
    (_S.STA3, _E.EVT8): (ae_8, _S.STA13),
    # Evt9: P-DATA request primitive
    (_S.STA6, _E.EVT9): (dt_1, _S.STA6),
    (_S.STA8, _E.EVT9): (ar_7, _S.STA8),
    # Evt10: P-DATA-TF PDU received
    (_S.STA2, _E.EVT10): (aa_1, _S.STA13),
    (_S.STA3, _E.EVT10): (aa_8, _S.STA13),
    (_S.STA5, _E.EVT10): (aa_8, _S.STA13),
    (_S.STA6, _E.EVT10): (dt_2, _S.STA6),
    (_S.STA7, _E.EVT10): (ar_6, _S.STA7),
    (_S.STA8, _E.EVT10): (aa_8, _S.STA13),
    (_S.STA9, _E.EVT10): (aa_8, _S.STA13),
    (_S.STA10, _E.EVT10): (aa_8, _S.STA13),
    (_S.STA11, _E.EVT10): (aa_8, _S.STA13),
    (_S.STA12, _E.EVT10): (aa_8, _S.STA13),
    (_S.STA13, _E.EVT10): (aa_6, _S.STA13),
    # Evt11: A-RELEASE Request primitive
    (_S.STA6, _E.EVT11): (ar_1, _S.STA7),
    # Evt12: A-RELEASE-RQ PDU received (AR-8 picks Sta9 or Sta10)
    (_S.STA2, _E.EVT12): (aa_1, _S.STA13),
    (_S.STA3, _E.EVT12): (aa_8, _S.STA13),
    (_S.STA5, _E.EVT12): (aa_8, _S.STA13),
    (_S.STA6, _E.EVT12): (ar_2, _S.STA8),
    (_S.STA7, _E.EVT12): (ar_8, _S.STA9),
    (_S.STA8, _E.EVT12): (aa_8, _S.STA13),
    (_S.STA9, _E.EVT12): (aa_8, _S.STA13),
    (_S.STA10, _E.EVT12): (aa_8, _S.STA13),
    (_S.STA11, _E.EVT12): (aa_8, _S.STA13),
    (_S.STA12, _E.EVT12): (aa_8, _S.STA13),
    (_S.STA13, _E.EVT12): (aa_6, _S.STA13),
    # Evt13: A-RELEASE-RP PDU received
    (_S.STA2, _E.EVT13): (aa_1, _S.STA13),
    (_S.STA3, _E.EVT13): (aa_8, _S.STA13),
    (_S.STA5, _E.EVT13): (aa_8, _S.STA13),
    (_S.STA6, _E.EVT13): (aa_8, _S.STA13),
    (_S.STA7, _E.EVT13): (ar_3, _S.STA1),
    (_S.STA8, _E.EVT13): (aa_8, _S.STA13),
    (_S.STA9, _E.EVT13): (aa_8, _S.STA13),
    (_S.STA10, _E.EVT13): (ar_10, _S.STA12),
    (_S.STA11, _E.EVT13): (ar_3, _S.STA1),
    (_S.STA12, _E.EVT13): (aa_8, _S.STA13),
    (_S.STA13, _E.EVT13): (aa_6, _S.STA13),
    # Evt14: A-RELEASE response primitive
    (_S.STA8, _E.EVT14): (ar_4, _S.STA13),
    (_S.STA9, _E.EVT14): (ar_9, _S.STA11),
    (_S.STA12, _E.EVT14): (ar_4, _S.STA13),
    # Evt15: A-ABORT Request primitive
    (_S.STA3, _E.EVT15): (aa_1, _S.STA13),
    (_S.STA4, _E.EVT15): (aa_2, _S.STA1),
    (_S.STA5, _E.EVT15): (aa_1, _S.STA13),
    (_S.STA6, _E.EVT15): (aa_1, _S.STA13),
    (_S.STA7, _E.EVT15): (aa_1, _S.STA13),
    (_S.STA8, _E.EVT15): (aa_1, _S.STA13),
    (_S.STA9, _E.EVT15): (aa_1, _S.STA13),
    (_S.STA10, _E.EVT15): (aa_1, _S.STA13),
    (_S.STA11, _E.EVT15): (aa_1, _S.STA13),
    (_S.STA12, _E.EVT15): (aa_1, _S.STA13),
    # Evt16: A-ABORT PDU received
    (_S.STA2, _E.EVT16): (aa_2, _S.STA1),
    (_S.STA3, _E.EVT16): (aa_3, _S.STA1),
    (_S.STA5, _E.EVT16): (aa_3, _S.STA1),
    (_S.STA6, _E.EVT16): (aa_3, _S.STA1),
    (_S.STA7, _E.EVT16): (aa_3, _S.STA1),
    (_S.STA8, _E.EVT16): (aa_3, _S.STA1),
    (_S.STA9, _E.EVT16): (aa_3, _S.STA1),
    (_S.STA10, _E.EVT16): (aa_3, _S.STA1),
    (_S.STA11, _E.EVT16): (aa_3, _S.STA1),
    (_S.STA12, _E.EVT16): (aa_3, _S.STA1),
    (_S.STA13, _E.EVT16): (aa_2, _S.STA1),
    # Evt17: Transport connection closed indication
    (_S.STA2, _E.EVT17): (aa_5, _S.STA1),
    (_S.STA3, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA4, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA5, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA6, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA7, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA8, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA9, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA10, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA11, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA12, _E.EVT17): (aa_4, _S.STA1),
    (_S.STA13, _E.EVT17): (ar_5, _S.STA1),
    # Evt18: ARTIM timer expired
    (_S.STA2, _E.EVT18): (aa_2, _S.STA1),
    (_S.STA13, _E.EVT18): (aa_2, _S.STA1),
    # Evt19: Unrecognized or invalid PDU received
    (_S.STA2, _E.EVT19): (aa_1, _S.STA13),
    (_S.STA3, _E.EVT19): (aa_8, _S.STA13),
    (_S.STA5, _E.EVT19): (aa_8, _S.STA13),
    (_S.STA6, _E.EVT19): (aa_8, _S.STA13),
    (_S.STA7, _E.EVT19): (aa_8, _S.STA13),
    (_S.STA8, _E.EVT19): (aa_8, _S.STA13),
    (_S.STA9, _E.EVT19): (aa_8, _S.STA13),
    (_S.STA10, _E.EVT19): (aa_8, _S.STA13),
    (_S.STA11, _E.EVT19): (aa_8, _S.STA13),
    (_S.STA12, _E.EVT19): (aa_8, _S.STA13),
    (_S.STA13, _E.EVT19): (aa_7, _S.STA13),
}

del _S, _E


class Machine:
    """One association's Upper Layer state machine (PS3.8 9.2).

    :param effects: receives every side effect the actions ask for.
    """

    __slots__ = ("effects", "_state", "_is_requestor", "_associate_rq")

    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self._state = _STA1
        self._is_requestor = False
        self._associate_rq: object = None

    @property
    def state(self) -> State:
        """The current state; for tests and logging, not for branching."""
        return self._state

    @property
    def is_requestor(self) -> bool:
        """Whether we requested the association (Evt1 rather than Evt5)."""
        return self._is_requestor

    @property
    def is_established(self) -> bool:
        """Whether the association is ready for data transfer (Sta6)."""
        return self._state is _STA6

    @property
    def is_closed(self) -> bool:
        """Whether the machine is idle, with no transport connection (Sta1)."""
        return self._state is _STA1

    def handle(self, event: Event, payload: object = None) -> None:
        """Run the Table 9-10 transition for ``event`` in the current state.

        :param event: what happened.
        :param payload: the PDU, primitive's PDU or error the event carries.
        :raises InvalidEventError: the table has no cell for the current
            state and ``event``; the state is left unchanged.
        """
        try:
            action, next_state = TRANSITIONS[self._state, event]
        except KeyError:
            raise InvalidEventError(
                f"{event.name} ({event.value}) is not valid in "
                f"{self._state.name} ({self._state.value})"
            ) from None
        chosen = action(self, payload)
        self._state = next_state if chosen is None else chosen
