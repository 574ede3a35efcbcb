"""Tests for dicomtwist.ul.fsm, the Upper Layer state machine (PS3.8 9.2)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.errors import InvalidEventError, PDUDecodeError
from dicomtwist.ul import fsm
from dicomtwist.ul.fsm import TRANSITIONS, Event, Indication, Machine, State
from dicomtwist.ul.pdu import AAbort, AbortReason, AbortSource

# PS3.8 Table 9-10 transcribed by hand: one row per event, one column per
# state; a cell is "ACTION>next state number", "." when empty.  AE-6 and AR-8
# choose their next state at run time; the column shows the first choice
# the standard names (Sta3, Sta9), which TRANSITIONS records.
TABLE_9_10 = """
      Sta1   Sta2    Sta3    Sta4   Sta5    Sta6    Sta7    Sta8    Sta9    Sta10    Sta11   Sta12   Sta13
Evt1  AE-1>4 .       .       .      .       .       .       .       .       .        .       .       .
Evt2  .      .       .       AE-2>5 .       .       .       .       .       .        .       .       .
Evt3  .      AA-1>13 AA-8>13 .      AE-3>6  AA-8>13 AA-8>13 AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-6>13
Evt4  .      AA-1>13 AA-8>13 .      AE-4>1  AA-8>13 AA-8>13 AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-6>13
Evt5  AE-5>2 .       .       .      .       .       .       .       .       .        .       .       .
Evt6  .      AE-6>3  AA-8>13 .      AA-8>13 AA-8>13 AA-8>13 AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-7>13
Evt7  .      .       AE-7>6  .      .       .       .       .       .       .        .       .       .
Evt8  .      .       AE-8>13 .      .       .       .       .       .       .        .       .       .
Evt9  .      .       .       .      .       DT-1>6  .       AR-7>8  .       .        .       .       .
Evt10 .      AA-1>13 AA-8>13 .      AA-8>13 DT-2>6  AR-6>7  AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-6>13
Evt11 .      .       .       .      .       AR-1>7  .       .       .       .        .       .       .
Evt12 .      AA-1>13 AA-8>13 .      AA-8>13 AR-2>8  AR-8>9  AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-6>13
Evt13 .      AA-1>13 AA-8>13 .      AA-8>13 AA-8>13 AR-3>1  AA-8>13 AA-8>13 AR-10>12 AR-3>1  AA-8>13 AA-6>13
Evt14 .      .       .       .      .       .       .       AR-4>13 AR-9>11 .        .       AR-4>13 .
Evt15 .      .       AA-1>13 AA-2>1 AA-1>13 AA-1>13 AA-1>13 AA-1>13 AA-1>13 AA-1>13  AA-1>13 AA-1>13 .
Evt16 .      AA-2>1  AA-3>1  .      AA-3>1  AA-3>1  AA-3>1  AA-3>1  AA-3>1  AA-3>1   AA-3>1  AA-3>1  AA-2>1
Evt17 .      AA-5>1  AA-4>1  AA-4>1 AA-4>1  AA-4>1  AA-4>1  AA-4>1  AA-4>1  AA-4>1   AA-4>1  AA-4>1  AR-5>1
Evt18 .      AA-2>1  .       .      .       .       .       .       .       .        .       .       AA-2>1
Evt19 .      AA-1>13 AA-8>13 .      AA-8>13 AA-8>13 AA-8>13 AA-8>13 AA-8>13 AA-8>13  AA-8>13 AA-8>13 AA-7>13
"""

# Opaque stand-ins for the PDUs the local user passes or the peer sends.
RQ = "A-ASSOCIATE-RQ PDU"
AC = "A-ASSOCIATE-AC PDU"
RJ = "A-ASSOCIATE-RJ PDU"
DATA = "P-DATA-TF PDU"
RELEASE_RQ = "A-RELEASE-RQ PDU"
RELEASE_RP = "A-RELEASE-RP PDU"


def parse_table(text: str) -> dict[tuple[State, Event], tuple[str, State]]:
    """Read `TABLE_9_10` into ``{(state, event): (action name, next state)}``.

    :param text: the transcription, header line first.
    :returns: one entry per non-empty cell.
    """
    lines = text.strip().splitlines()
    states = [State[name.upper()] for name in lines[0].split()]
    cells = {}
    for line in lines[1:]:
        row = line.split()
        event = Event[row[0].upper()]
        if len(row) != len(states) + 1:
            raise ValueError(f"{row[0]} has {len(row) - 1} cells")
        for state, cell in zip(states, row[1:]):
            if cell != ".":
                action, next_state = cell.split(">")
                cells[state, event] = (
                    action.lower().replace("-", "_"), State[f"STA{next_state}"]
                )
    return cells


class FakeEffects:
    """Records every effect the machine asks for as a tuple in `calls`.

    :ivar rejection: what `check_associate_rq` returns (None: acceptable).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.rejection: object = None

    def connect_transport(self) -> None:
        """Record a transport connect request."""
        self.calls.append(("connect_transport",))

    def send_pdu(self, pdu: object) -> None:
        """Record a sent PDU."""
        self.calls.append(("send_pdu", pdu))

    def start_artim(self) -> None:
        """Record an ARTIM start."""
        self.calls.append(("start_artim",))

    def stop_artim(self) -> None:
        """Record an ARTIM stop."""
        self.calls.append(("stop_artim",))

    def indicate(self, indication: Indication, payload: object) -> None:
        """Record a primitive issued to the service user."""
        self.calls.append(("indicate", indication, payload))

    def close_transport(self) -> None:
        """Record a transport close."""
        self.calls.append(("close_transport",))

    def check_associate_rq(self, pdu: object) -> object | None:
        """Record the check and answer with `rejection`."""
        self.calls.append(("check_associate_rq", pdu))
        return self.rejection


class TableTests(SynchronousTestCase):
    """TRANSITIONS against the transcription of PS3.8 Table 9-10."""

    def test_every_cell(self) -> None:
        """Every (state, event) pair has exactly the action and next state of
        Table 9-10, and an empty cell raises InvalidEventError leaving the
        state unchanged."""
        expected = parse_table(TABLE_9_10)
        self.assertEqual(len(expected), len(TRANSITIONS))
        for state in State:
            for event in Event:
                if (state, event) in expected:
                    name, next_state = expected[state, event]
                    self.assertEqual(
                        TRANSITIONS.get((state, event)),
                        (getattr(fsm, name), next_state),
                        f"{state.name} {event.name}",
                    )
                else:
                    self.assertNotIn((state, event), TRANSITIONS)
                    effects = FakeEffects()
                    machine = Machine(effects)
                    machine._state = state
                    self.assertRaises(InvalidEventError, machine.handle, event)
                    self.assertIs(machine.state, state)
                    self.assertEqual(effects.calls, [])

    def test_table_order(self) -> None:
        """TRANSITIONS lists its cells row by row, events in table order and
        states left to right within a row."""
        order = [
            (int(event.name[3:]), int(state.name[3:]))
            for state, event in TRANSITIONS
        ]
        self.assertEqual(order, sorted(order))

    def test_descriptions(self) -> None:
        """States and events carry the standard's descriptions."""
        self.assertEqual(
            State.STA6.value, "Association established and ready for data transfer"
        )
        self.assertEqual(Event.EVT18.value,
                         "ARTIM timer expired (Association reject/release timer)")
        self.assertEqual(len(State), 13)
        self.assertEqual(len(Event), 19)


class MachineTestsMixin:
    """Helpers driving a machine with a `FakeEffects`."""

    def setUp(self) -> None:
        """Make a fresh machine in Sta1."""
        self.effects = FakeEffects()
        self.machine = Machine(self.effects)

    def step(self, event: Event, payload: object, state: State,
             *calls: tuple[object, ...]) -> None:
        """Feed ``event``; assert the effects and the state reached.

        :param event: the event to feed.
        :param payload: what it carries.
        :param state: the state expected afterwards.
        :param calls: the effects expected, in order.
        """
        del self.effects.calls[:]
        self.machine.handle(event, payload)
        self.assertEqual(self.effects.calls, list(calls))
        self.assertIs(self.machine.state, state)

    def establish_as_requestor(self) -> None:
        """Bring the machine to Sta6 as association-requestor."""
        self.machine.handle(Event.EVT1, RQ)
        self.machine.handle(Event.EVT2)
        self.machine.handle(Event.EVT3, AC)
        del self.effects.calls[:]

    def establish_as_acceptor(self) -> None:
        """Bring the machine to Sta6 as association-acceptor."""
        self.machine.handle(Event.EVT5)
        self.machine.handle(Event.EVT6, RQ)
        self.machine.handle(Event.EVT7, AC)
        del self.effects.calls[:]


class AssociationTests(MachineTestsMixin, SynchronousTestCase):
    """Association establishment (PS3.8 9.2, Table 9-6)."""

    def test_requestor(self) -> None:
        """As requestor the machine connects, sends the user's A-ASSOCIATE-RQ
        once connected and confirms the A-ASSOCIATE-AC: Sta1, Sta4, Sta5, Sta6."""
        self.assertTrue(self.machine.is_closed)
        self.step(Event.EVT1, RQ, State.STA4, ("connect_transport",))
        self.assertTrue(self.machine.is_requestor)
        self.step(Event.EVT2, None, State.STA5,
                  ("indicate", Indication.TRANSPORT_CONNECTED, None),
                  ("send_pdu", RQ))
        self.assertFalse(self.machine.is_established)
        self.step(Event.EVT3, AC, State.STA6,
                  ("indicate", Indication.ASSOCIATE_AC, AC))
        self.assertTrue(self.machine.is_established)
        self.assertFalse(self.machine.is_closed)

    def test_requestor_rejected(self) -> None:
        """An A-ASSOCIATE-RJ in Sta5 is confirmed to the user and the
        transport closed (AE-4)."""
        self.machine.handle(Event.EVT1, RQ)
        self.machine.handle(Event.EVT2)
        self.step(Event.EVT4, RJ, State.STA1,
                  ("indicate", Indication.ASSOCIATE_RJ, RJ), ("close_transport",))
        self.assertTrue(self.machine.is_closed)

    def test_requestor_aborts_while_connecting(self) -> None:
        """A local A-ABORT in Sta4 closes the transport without sending (AA-2)."""
        self.machine.handle(Event.EVT1, RQ)
        self.step(Event.EVT15, None, State.STA1,
                  ("stop_artim",), ("close_transport",))

    def test_acceptor(self) -> None:
        """As acceptor the machine starts ARTIM, indicates an acceptable
        A-ASSOCIATE-RQ and sends the user's A-ASSOCIATE-AC: Sta1, Sta2, Sta3,
        Sta6."""
        self.step(Event.EVT5, None, State.STA2, ("start_artim",))
        self.assertFalse(self.machine.is_requestor)
        self.step(Event.EVT6, RQ, State.STA3,
                  ("stop_artim",), ("check_associate_rq", RQ),
                  ("indicate", Indication.ASSOCIATE_RQ, RQ))
        self.step(Event.EVT7, AC, State.STA6, ("send_pdu", AC))
        self.assertTrue(self.machine.is_established)

    def test_acceptor_provider_rejects(self) -> None:
        """An A-ASSOCIATE-RQ the provider refuses is answered with its
        A-ASSOCIATE-RJ and ARTIM, without an indication, going to Sta13."""
        self.effects.rejection = RJ
        self.machine.handle(Event.EVT5)
        self.step(Event.EVT6, RQ, State.STA13,
                  ("stop_artim",), ("check_associate_rq", RQ),
                  ("send_pdu", RJ), ("start_artim",))
        self.step(Event.EVT17, None, State.STA1, ("stop_artim",))

    def test_acceptor_user_rejects(self) -> None:
        """The user's A-ASSOCIATE-RJ is sent and ARTIM started (AE-8)."""
        self.machine.handle(Event.EVT5)
        self.machine.handle(Event.EVT6, RQ)
        self.step(Event.EVT8, RJ, State.STA13, ("send_pdu", RJ), ("start_artim",))

    def test_unexpected_pdu_before_request(self) -> None:
        """A PDU other than A-ASSOCIATE-RQ in Sta2 gets a service-provider
        A-ABORT, reason unexpected PDU, and ARTIM (AA-1)."""
        self.machine.handle(Event.EVT5)
        self.step(Event.EVT10, DATA, State.STA13,
                  ("send_pdu", AAbort(AbortSource.SERVICE_PROVIDER,
                                      AbortReason.UNEXPECTED_PDU)),
                  ("start_artim",))

    def test_invalid_pdu_before_request(self) -> None:
        """An undecodable PDU in Sta2 is aborted with the decode error's reason."""
        error = PDUDecodeError("bad item", 10, abort_reason=6)
        self.machine.handle(Event.EVT5)
        self.step(Event.EVT19, error, State.STA13,
                  ("send_pdu", AAbort(2, 6)), ("start_artim",))

    def test_artim_expires_in_sta2(self) -> None:
        """ARTIM expiring while awaiting the A-ASSOCIATE-RQ closes the
        transport (AA-2)."""
        self.machine.handle(Event.EVT5)
        self.step(Event.EVT18, None, State.STA1,
                  ("stop_artim",), ("close_transport",))

    def test_artim_expires_in_sta13(self) -> None:
        """ARTIM expiring while awaiting the peer's close closes the transport."""
        self.effects.rejection = RJ
        self.machine.handle(Event.EVT5)
        self.machine.handle(Event.EVT6, RQ)
        self.step(Event.EVT18, None, State.STA1,
                  ("stop_artim",), ("close_transport",))

    def test_request_in_sta13(self) -> None:
        """An A-ASSOCIATE-RQ in Sta13 is answered with an A-ABORT (AA-7)."""
        self.effects.rejection = RJ
        self.machine.handle(Event.EVT5)
        self.machine.handle(Event.EVT6, RQ)
        self.step(Event.EVT6, RQ, State.STA13, ("send_pdu", AAbort(2, 2)))

    def test_pdu_ignored_in_sta13(self) -> None:
        """A P-DATA-TF in Sta13 is ignored (AA-6)."""
        self.effects.rejection = RJ
        self.machine.handle(Event.EVT5)
        self.machine.handle(Event.EVT6, RQ)
        self.step(Event.EVT10, DATA, State.STA13)

    def test_invalid_event_keeps_state(self) -> None:
        """A P-DATA request in Sta1 raises InvalidEventError and changes nothing."""
        self.assertRaises(InvalidEventError, self.machine.handle, Event.EVT9, DATA)
        self.assertIs(self.machine.state, State.STA1)
        self.assertEqual(self.effects.calls, [])


class DataTransferTests(MachineTestsMixin, SynchronousTestCase):
    """Data transfer (PS3.8 Table 9-7)."""

    def test_send(self) -> None:
        """A P-DATA request in Sta6 sends the P-DATA-TF PDU (DT-1)."""
        self.establish_as_requestor()
        self.step(Event.EVT9, DATA, State.STA6, ("send_pdu", DATA))

    def test_receive(self) -> None:
        """A P-DATA-TF PDU in Sta6 is indicated to the user (DT-2)."""
        self.establish_as_acceptor()
        self.step(Event.EVT10, DATA, State.STA6,
                  ("indicate", Indication.P_DATA, DATA))


class ReleaseTests(MachineTestsMixin, SynchronousTestCase):
    """Association release, with and without collision (PS3.8 Table 9-8)."""

    def test_local_release(self) -> None:
        """The user's release sends A-RELEASE-RQ, data still arriving is
        indicated, and the A-RELEASE-RP is confirmed and the transport closed."""
        self.establish_as_requestor()
        self.step(Event.EVT11, RELEASE_RQ, State.STA7, ("send_pdu", RELEASE_RQ))
        self.step(Event.EVT10, DATA, State.STA7,
                  ("indicate", Indication.P_DATA, DATA))
        self.step(Event.EVT13, RELEASE_RP, State.STA1,
                  ("indicate", Indication.RELEASE_RP, RELEASE_RP),
                  ("close_transport",))

    def test_peer_release(self) -> None:
        """A received A-RELEASE-RQ is indicated, data may still be sent, and
        the user's A-RELEASE-RP is sent with ARTIM until the peer closes."""
        self.establish_as_acceptor()
        self.step(Event.EVT12, RELEASE_RQ, State.STA8,
                  ("indicate", Indication.RELEASE_RQ, RELEASE_RQ))
        self.step(Event.EVT9, DATA, State.STA8, ("send_pdu", DATA))
        self.step(Event.EVT14, RELEASE_RP, State.STA13,
                  ("send_pdu", RELEASE_RP), ("start_artim",))
        self.step(Event.EVT17, None, State.STA1, ("stop_artim",))

    def test_collision_requestor(self) -> None:
        """In a release collision the requestor answers first: Sta7, Sta9,
        Sta11, Sta1."""
        self.establish_as_requestor()
        self.machine.handle(Event.EVT11, RELEASE_RQ)
        self.step(Event.EVT12, RELEASE_RQ, State.STA9,
                  ("indicate", Indication.RELEASE_COLLISION, RELEASE_RQ))
        self.step(Event.EVT14, RELEASE_RP, State.STA11, ("send_pdu", RELEASE_RP))
        self.step(Event.EVT13, RELEASE_RP, State.STA1,
                  ("indicate", Indication.RELEASE_RP, RELEASE_RP),
                  ("close_transport",))

    def test_collision_acceptor(self) -> None:
        """In a release collision the acceptor awaits the A-RELEASE-RP first:
        Sta7, Sta10, Sta12, then Sta13 until the transport closes (AR-4)."""
        self.establish_as_acceptor()
        self.machine.handle(Event.EVT11, RELEASE_RQ)
        self.step(Event.EVT12, RELEASE_RQ, State.STA10,
                  ("indicate", Indication.RELEASE_COLLISION, RELEASE_RQ))
        self.step(Event.EVT13, RELEASE_RP, State.STA12,
                  ("indicate", Indication.RELEASE_RP, RELEASE_RP))
        self.step(Event.EVT14, RELEASE_RP, State.STA13,
                  ("send_pdu", RELEASE_RP), ("start_artim",))
        self.step(Event.EVT17, None, State.STA1, ("stop_artim",))


class AbortTests(MachineTestsMixin, SynchronousTestCase):
    """Association abort (PS3.8 Table 9-9)."""

    def test_local_abort(self) -> None:
        """The user's A-ABORT is sent as given and ARTIM started (AA-1)."""
        abort = AAbort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED)
        self.establish_as_requestor()
        self.step(Event.EVT15, abort, State.STA13,
                  ("send_pdu", abort), ("start_artim",))
        self.step(Event.EVT17, None, State.STA1, ("stop_artim",))

    def test_local_abort_default(self) -> None:
        """An A-ABORT request without a PDU sends service-user, not specified."""
        self.establish_as_acceptor()
        self.step(Event.EVT15, None, State.STA13,
                  ("send_pdu", AAbort(0, 0)), ("start_artim",))

    def test_peer_abort(self) -> None:
        """A service-user A-ABORT PDU is indicated as A-ABORT and the
        transport closed (AA-3)."""
        abort = AAbort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED)
        self.establish_as_acceptor()
        self.step(Event.EVT16, abort, State.STA1,
                  ("indicate", Indication.ABORT, abort), ("close_transport",))
        self.assertTrue(self.machine.is_closed)

    def test_peer_provider_abort(self) -> None:
        """A service-provider A-ABORT PDU is indicated as A-P-ABORT (AA-3)."""
        abort = AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)
        self.establish_as_requestor()
        self.step(Event.EVT16, abort, State.STA1,
                  ("indicate", Indication.P_ABORT, abort), ("close_transport",))

    def test_invalid_pdu(self) -> None:
        """An invalid PDU in Sta6 is answered with a service-provider A-ABORT
        carrying the decode error's reason, an A-P-ABORT indication and ARTIM
        (AA-8)."""
        error = PDUDecodeError("unknown item", 4, abort_reason=4)
        self.establish_as_acceptor()
        self.step(Event.EVT19, error, State.STA13,
                  ("send_pdu", AAbort(AbortSource.SERVICE_PROVIDER,
                                      AbortReason.UNRECOGNIZED_PDU_PARAMETER)),
                  ("indicate", Indication.P_ABORT, error),
                  ("start_artim",))

    def test_unexpected_pdu(self) -> None:
        """An A-ASSOCIATE-AC in Sta6 is answered with A-ABORT(service-provider,
        unexpected PDU) (AA-8)."""
        self.establish_as_requestor()
        self.step(Event.EVT3, AC, State.STA13,
                  ("send_pdu", AAbort(2, 2)),
                  ("indicate", Indication.P_ABORT, AC),
                  ("start_artim",))

    def test_transport_closed(self) -> None:
        """The transport closing in Sta6 is indicated as A-P-ABORT (AA-4)."""
        self.establish_as_requestor()
        self.step(Event.EVT17, None, State.STA1,
                  ("indicate", Indication.P_ABORT, None))
        self.assertTrue(self.machine.is_closed)
