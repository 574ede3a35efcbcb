"""Tests for dicomtwist.movescu: options, main() on an in-memory reactor, the Store SCP."""

from __future__ import annotations

import io
import os
import tempfile
import warnings

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import log as stack_log
from dicomtwist import movescu
from dicomtwist.acse import AcceptorPolicy, PresentationContext
from dicomtwist.association import AcceptorFactory, Response, ServiceRequest, associate
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.codec import encode_dataset
from dicomtwist.errors import DIMSEServiceError
from dicomtwist.logs import LineObserver
from dicomtwist.storage.files import is_valid_uid, part10_header
from dicomtwist.movescu import (
    EXIT_ASSOCIATION,
    EXIT_CANCEL,
    EXIT_CODES,
    EXIT_CONNECTION,
    EXIT_FAILURE,
    EXIT_LOCAL,
    EXIT_USAGE,
    EXIT_WARNING,
    Options,
    StoreHandler,
    file_prefix,
    make_store_factory,
    translate_argv,
)
from dicomtwist.sopclasses import (
    PATIENT_ROOT_MOVE,
    PATIENT_STUDY_ONLY_MOVE,
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    STUDY_ROOT_MOVE,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
)
from dicomtwist.status import Status
from dicomtwist.ul.items import SOPClassExtendedNegotiationSubItem
from tests.helpers import CT_IMAGE_STORAGE, UNCOMPRESSED, connect_in_memory, ct_dataset

MOVE_CONTEXTS = {uid: UNCOMPRESSED for uid in
                 (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE, PATIENT_STUDY_ONLY_MOVE)}


def parse(*argv: str) -> Options:
    """Parse a movescu command line."""
    options = Options()
    options.parseOptions(translate_argv(argv))
    return options


class OptionTests(SynchronousTestCase):
    """Option parsing and the spec's defaults."""

    def test_defaults(self) -> None:
        """Every option has the spec's default."""
        options = parse("127.0.0.1", "11112", "-k", "PatientID=1")
        expected = {
            "quiet": 0, "verbose": 0, "debug": 0, "log-level": None,
            "calling-aet": "MOVESCU", "called-aet": "ANY-SCP", "move-aet": "STORESCP",
            "acse-timeout": 30.0, "dimse-timeout": 30.0, "network-timeout": 30.0,
            "max-pdu": 16382, "store": 0, "store-port": 11113, "store-aet": "STORESCP",
            "store-bind-address": "", "patient": 0, "study": 0, "psonly": 0,
            "model": "patient", "sop-class": PATIENT_ROOT_MOVE, "keywords": ["PatientID=1"],
            "file": None, "relational-retrieval": 0, "enhanced-conversion": 0,
            "output-directory": ".", "ignore": 0, "addr": "127.0.0.1", "port": 11112,
        }
        self.assertEqual({k: options[k] for k in expected}, expected)
        self.assertEqual(options.level(), LogLevel.info)

    def test_single_dash_long_options(self) -> None:
        """-aet, -aec, -aem, -ta, -td, -tn, -pdu, -ll and -od are accepted."""
        options = parse("-aet", "ME", "-aec", "THEM", "-aem", "DEST", "-ta", "5", "-td", "6",
                        "-tn", "7", "-pdu", "32768", "-ll", "debug", "-od", "/tmp/x",
                        "host", "104", "-k", "PatientID=1")
        self.assertEqual(
            (options["calling-aet"], options["called-aet"], options["move-aet"],
             options["acse-timeout"], options["dimse-timeout"], options["network-timeout"],
             options["max-pdu"], options["log-level"], options["output-directory"]),
            ("ME", "THEM", "DEST", 5.0, 6.0, 7.0, 32768, "debug", "/tmp/x"))
        self.assertEqual(options.level(), LogLevel.debug)

    def test_long_options(self) -> None:
        """The long spellings work too, with the positionals first."""
        options = parse("host", "104", "--calling-aet", "ME", "--store", "--store-port",
                        "4000", "--store-aet", "INLINE", "--ignore", "-k", "PatientID=1")
        self.assertEqual((options["calling-aet"], options["store"], options["store-port"],
                          options["store-aet"], options["ignore"]),
                         ("ME", 1, 4000, "INLINE", 1))

    def test_move_aet_follows_store_aet(self) -> None:
        """With --store and no -aem, the move destination is --store-aet."""
        self.assertEqual(parse("h", "1", "-k", "A=", "--store", "--store-aet", "X")["move-aet"],
                         "X")
        self.assertEqual(parse("h", "1", "-k", "A=", "--store", "--store-aet", "X",
                               "-aem", "Y")["move-aet"], "Y")

    def test_information_models(self) -> None:
        """-P, -S and -O select the MOVE SOP classes."""
        self.assertEqual(parse("h", "1", "-k", "A=", "-P")["sop-class"], PATIENT_ROOT_MOVE)
        self.assertEqual(parse("h", "1", "-k", "A=", "-S")["sop-class"], STUDY_ROOT_MOVE)
        self.assertEqual(parse("h", "1", "-k", "A=", "-O")["sop-class"],
                         PATIENT_STUDY_ONLY_MOVE)
        self.assertEqual(parse("h", "1", "-k", "A=", "--study")["sop-class"], STUDY_ROOT_MOVE)

    def test_two_models_refused(self) -> None:
        """-P with -S is an error."""
        self.assertRaises(usage.UsageError, parse, "h", "1", "-k", "A=", "-P", "-S")

    def test_keywords_in_order(self) -> None:
        """-k may be given many times; the values are kept in order, '=' and all."""
        options = parse("h", "1", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientName=",
                        "--keyword", "PatientID=a=b")
        self.assertEqual(options["keywords"],
                         ["QueryRetrieveLevel=PATIENT", "PatientName=", "PatientID=a=b"])

    def test_value_that_looks_like_an_alias(self) -> None:
        """An option's value is never translated, even if it is '-aet'."""
        self.assertEqual(parse("h", "1", "-k", "A=", "-aec", "-aet")["called-aet"], "-aet")

    def test_file_only(self) -> None:
        """-f without -k is enough."""
        self.assertEqual(parse("h", "1", "-f", "q.dcm")["file"], "q.dcm")

    def test_query_required(self) -> None:
        """Neither -k nor -f is an error."""
        self.assertRaises(usage.UsageError, parse, "h", "1")

    def test_bad_values(self) -> None:
        """Bad ports, sizes, timeouts, AE titles and log levels are errors."""
        for argv in (["h", "0"], ["h", "x"], ["h", "1", "-pdu", "100"],
                     ["h", "1", "-ta", "-1"], ["h", "1", "-ta", "soon"],
                     ["h", "1", "-aet", "A" * 17], ["h", "1", "-ll", "loud"],
                     ["h", "1", "--store-port", "70000"], ["h"], ["h", "1", "2"]):
            self.assertRaises(usage.UsageError, parse, *argv, "-k", "A=")

    def test_quiet_verbose_debug(self) -> None:
        """-q keeps only critical events; -v is info; -d is debug; -ll wins."""
        self.assertEqual(parse("h", "1", "-k", "A=", "-q").level(), LogLevel.critical)
        self.assertEqual(parse("h", "1", "-k", "A=", "-v").level(), LogLevel.info)
        self.assertEqual(parse("h", "1", "-k", "A=", "-d").level(), LogLevel.debug)
        self.assertEqual(parse("h", "1", "-k", "A=", "-d", "-ll", "warning").level(),
                         LogLevel.warn)
        self.assertEqual(parse("h", "1", "-k", "A=", "-ll", "warn").level(), LogLevel.warn)

    def test_help_lists_exit_codes(self) -> None:
        """--help lists every exit status and the single-dash options."""
        text = str(Options())
        for code, meaning in EXIT_CODES.items():
            self.assertIn(f"{code}  {meaning}", text)
        self.assertIn("-aet", text)
        self.assertEqual(len(set(EXIT_CODES)), len(EXIT_CODES))


class _Port:
    """A listening port that records stopListening."""

    def __init__(self) -> None:
        self.stopped = False

    def stopListening(self) -> None:
        self.stopped = True


class _Reactor(MemoryReactorClock):
    """MemoryReactorClock whose ports record stopListening, and may refuse."""

    refuse_listen = False

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if self.refuse_listen:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        super().listenTCP(port, factory, backlog, interface)
        self.port = _Port()
        return self.port


class MainTestCase(SynchronousTestCase):
    """Run main() on a memory reactor and capture its log lines."""

    def setUp(self) -> None:
        self.reactor = _Reactor()
        self.output = io.StringIO()
        self.observer = LineObserver(self.output, LogLevel.info)
        self.levels: list[LogLevel] = []

        def fake_start_logging(level, stream=None):
            self.levels.append(level)
            self.observer.level = level
            globalLogPublisher.addObserver(self.observer)
            self.addCleanup(globalLogPublisher.removeObserver, self.observer)
            return self.observer

        self.patch(movescu, "start_logging", fake_start_logging)
        self.addCleanup(stack_log.set_level, LogLevel.info)
        self.directory = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.directory)

    def lines(self) -> list[str]:
        """The log lines printed so far."""
        return self.output.getvalue().splitlines()

    def exit_code(self, d: Deferred) -> int:
        """The exit status main()'s Deferred gives (0 for success)."""
        if not d.called:
            self.fail("main() has not finished")
        result: list = []
        d.addBoth(result.append)
        if isinstance(result[0], Failure):
            return result[0].trap(SystemExit) and result[0].value.code
        return 0

    def move_scp(self, handle_move, **policy) -> AcceptorFactory:
        """A Move SCP factory."""
        return AcceptorFactory(self.reactor, AcceptorPolicy(
            ae_title="ANY-SCP", contexts=MOVE_CONTEXTS, **policy), {"move": handle_move})

    def run_move(self, handle_move, *argv: str):
        """Start main, join its client to a Move SCP, pump until done.

        :returns: ``(deferred, client, server, pump)``.
        """
        d = movescu.main(self.reactor, "127.0.0.1", "11112", *argv)
        client, server, pump = connect_in_memory(self.reactor, self.move_scp(handle_move))
        pump.flush()
        return d, client, server, pump


def _rmtree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


def _pending(remaining: int, completed: int) -> Response:
    return Response(Status.PENDING, None, {"number_of_remaining_sub_operations": remaining,
                                           "number_of_completed_sub_operations": completed,
                                           "number_of_failed_sub_operations": 0,
                                           "number_of_warning_sub_operations": 0})


def _final(status: int, completed: int = 2, failed: int = 0) -> Response:
    return Response(status, None, {"number_of_remaining_sub_operations": 0,
                                   "number_of_completed_sub_operations": completed,
                                   "number_of_failed_sub_operations": failed,
                                   "number_of_warning_sub_operations": 0})


class MainTests(MainTestCase):
    """main(reactor, *argv) end to end in memory."""

    def test_store_listens_before_associating(self) -> None:
        """--store puts the Store SCP factory in tcpServers, then the client in tcpClients."""
        d = movescu.main(self.reactor, "127.0.0.1", "11112", "-k", "PatientID=1", "--store",
                         "--store-port", "11113", "-od", self.directory)
        self.assertEqual(len(self.reactor.tcpServers), 1)
        port, factory, _backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (11113, ""))
        self.assertIsInstance(factory, AcceptorFactory)
        self.assertEqual(factory.policy.ae_title, "STORESCP")
        self.assertEqual(set(factory.policy.contexts) - {"1.2.840.10008.1.1"},
                         set(STORAGE_SOP_CLASSES))
        host, port, _factory, _timeout, _bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 11112))
        self.assertNoResult(d)

    def test_store_bind_address(self) -> None:
        """--store-bind-address restricts the Store SCP's interface."""
        movescu.main(self.reactor, "h", "1", "-k", "PatientID=1", "--store",
                     "--store-bind-address", "127.0.0.1", "-od", self.directory)
        self.assertEqual(self.reactor.tcpServers[0][3], "127.0.0.1")

    def test_success(self) -> None:
        """A move that succeeds logs each response and its counts, releases, exits 0."""
        d, client, server, pump = self.run_move(
            lambda request: [_pending(1, 1), _pending(0, 2)],
            "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientName=", "--store",
            "-od", self.directory)
        self.assertEqual(self.exit_code(d), 0)
        lines = self.lines()
        for expected in ["I: Requesting Association", "I: Association Accepted",
                         "I: Sending Move Request: MsgID 1", "I: # Request Identifier",
                         "I: Move SCP Response: 1 - 0xFF00 (Pending)",
                         "I: Sub-Operations Remaining: 1, Completed: 1, Failed: 0, Warning: 0",
                         "I: Move SCP Response: 2 - 0xFF00 (Pending)",
                         "I: Move SCP Result: 0x0000 (Success)",
                         "I: Sub-Operations Remaining: 0, Completed: 2, Failed: 0, Warning: 0",
                         "I: Releasing Association", "I: Association Released"]:
            self.assertIn(expected, lines)
        self.assertTrue(any("(0008,0052)" in line and "PATIENT" in line for line in lines))
        self.assertTrue(any("(0010,0010)" in line for line in lines))
        self.assertLess(lines.index("I: Move SCP Result: 0x0000 (Success)"),
                        lines.index("I: Releasing Association"))
        self.assertTrue(self.reactor.port.stopped)

    def test_move_request(self) -> None:
        """The C-MOVE carries the identifier, the -aem destination and the -S SOP class."""
        requests: list[ServiceRequest] = []

        def handle_move(request):
            requests.append(request)
            return []

        d, client, server, pump = self.run_move(
            handle_move, "-S", "-aem", "ELSEWHERE", "-k", "QueryRetrieveLevel=STUDY",
            "-k", "StudyInstanceUID=1.2.3")
        self.assertEqual(self.exit_code(d), 0)
        message = requests[0].message
        self.assertEqual((message.move_destination, message.affected_sop_class_uid),
                         ("ELSEWHERE", STUDY_ROOT_MOVE))
        identifier = requests[0].dataset()
        self.assertEqual((identifier.QueryRetrieveLevel, identifier.StudyInstanceUID),
                         ("STUDY", "1.2.3"))
        rq = client.associate_rq
        self.assertEqual((rq.calling_ae_title, rq.called_ae_title), ("MOVESCU", "ANY-SCP"))
        self.assertEqual([pc.abstract_syntax for pc in rq.presentation_contexts],
                         [STUDY_ROOT_MOVE])
        self.assertEqual(rq.presentation_contexts[0].transfer_syntaxes,
                         UNCOMPRESSED_TRANSFER_SYNTAXES)
        self.assertEqual(rq.user_information.sop_class_extended, ())

    def test_extended_negotiation(self) -> None:
        """--relational-retrieval and --enhanced-conversion are PS3.4 C.5.3 bytes 0 and 1."""
        d = movescu.main(self.reactor, "h", "1", "-k", "PatientID=1",
                         "--relational-retrieval", "--enhanced-conversion")
        rq = self.reactor.tcpClients[0][2].association.associate_rq
        self.assertEqual(list(rq.user_information.sop_class_extended),
                         [SOPClassExtendedNegotiationSubItem(PATIENT_ROOT_MOVE, b"\x01\x01")])
        reactor = _Reactor()
        self.patch(self, "reactor", reactor)
        movescu.main(reactor, "h", "1", "-k", "PatientID=1", "--enhanced-conversion", "-O")
        rq = reactor.tcpClients[0][2].association.associate_rq
        self.assertEqual(list(rq.user_information.sop_class_extended),
                         [SOPClassExtendedNegotiationSubItem(PATIENT_STUDY_ONLY_MOVE,
                                                             b"\x00\x01")])
        self.assertNoResult(d)

    def test_destination_unknown(self) -> None:
        """A final 0xA801 is logged with its name and exits with the failure status."""
        d, *_ = self.run_move(
            lambda request: [Response(Status.MOVE_DESTINATION_UNKNOWN)], "-k", "PatientID=1")
        self.assertEqual(self.exit_code(d), EXIT_FAILURE)
        self.assertIn("I: Move SCP Result: 0xA801 (Move Destination Unknown)", self.lines())

    def test_warning(self) -> None:
        """A final 0xB000 exits with the warning status."""
        d, *_ = self.run_move(lambda request: [_final(0xB000, 1, 1)], "-k", "PatientID=1")
        self.assertEqual(self.exit_code(d), EXIT_WARNING)
        self.assertIn("I: Sub-Operations Remaining: 0, Completed: 1, Failed: 1, Warning: 0",
                      self.lines())

    def test_connection_refused(self) -> None:
        """A refused connection is reported and exits 3; the Store SCP stops."""
        d = movescu.main(self.reactor, "127.0.0.1", "11112", "-k", "PatientID=1", "--store",
                         "-od", self.directory)
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(self.exit_code(d), EXIT_CONNECTION)
        self.assertIn("E: Association request failed: unable to connect to 127.0.0.1:11112"
                      " (connection refused)", self.lines())
        self.assertTrue(self.reactor.port.stopped)

    def test_rejected(self) -> None:
        """An A-ASSOCIATE-RJ is reported with result, source and reason; exit 4."""
        d = movescu.main(self.reactor, "127.0.0.1", "11112", "-k", "PatientID=1",
                         "-aec", "WRONG")
        connect_in_memory(self.reactor, self.move_scp(lambda r: [], require_called_aet=True))
        self.assertEqual(self.exit_code(d), EXIT_ASSOCIATION)
        lines = self.lines()
        self.assertIn("E: Association Rejected", lines)
        self.assertIn("E: Result: Rejected Permanent, Source: Service User", lines)
        self.assertIn("E: Reason: Called AE title not recognised", lines)

    def test_no_context(self) -> None:
        """A peer that accepts no MOVE context: exit 4 after release."""
        d = movescu.main(self.reactor, "h", "1", "-k", "PatientID=1")
        scp = AcceptorFactory(self.reactor, AcceptorPolicy(
            ae_title="ANY-SCP", contexts={CT_IMAGE_STORAGE: UNCOMPRESSED}), {})
        client, server, pump = connect_in_memory(self.reactor, scp)
        pump.flush()
        self.assertEqual(self.exit_code(d), EXIT_ASSOCIATION)
        self.assertTrue(any("accepted no presentation context" in line
                            for line in self.lines()))

    def test_aborted_during_move(self) -> None:
        """A peer abort in the middle of the move exits 4."""
        gate: Deferred = Deferred()

        async def handle_move(request):
            yield _pending(1, 0)
            await gate

        d, client, server, pump = self.run_move(handle_move, "-k", "PatientID=1")
        self.assertNoResult(d)
        server.abort()
        pump.flush()
        self.assertEqual(self.exit_code(d), EXIT_ASSOCIATION)
        self.assertTrue(any(line.startswith("E: Association Aborted during the move")
                            for line in self.lines()))

    def test_interrupt_cancels(self) -> None:
        """An interrupt sends C-CANCEL, waits for the final response, releases and exits 6."""
        gates = [Deferred() for _ in range(3)]

        async def handle_move(request):
            for i, gate in enumerate(gates):
                yield _pending(3 - i, i)
                await gate
                if request.cancelled:
                    yield _final(Status.CANCEL, i + 1)
                    return

        d, client, server, pump = self.run_move(handle_move, "-k", "PatientID=1")
        self.assertIn("I: Move SCP Response: 1 - 0xFF00 (Pending)", self.lines())
        # The shutdown trigger (SIGTERM, or the reactor's own SIGINT) interrupts.
        trigger, args, kwargs = self.reactor.triggers["before"]["shutdown"][0]
        waiting = trigger(*args, **kwargs)
        pump.flush()
        self.assertNoResult(d)
        self.assertNoResult(waiting)
        gates[0].callback(None)
        pump.flush()
        self.assertEqual(self.exit_code(d), EXIT_CANCEL)
        self.successResultOf(waiting)
        lines = self.lines()
        self.assertIn("I: Move SCP Result: 0xFE00 (Cancel)", lines)
        self.assertIn("I: Releasing Association", lines)
        self.assertLess(lines.index("I: Move SCP Result: 0xFE00 (Cancel)"),
                        lines.index("I: Releasing Association"))
        self.assertTrue(any("C-CANCEL" in line for line in lines))

    def test_sigint_handler_installed_when_running(self) -> None:
        """main asks to install its SIGINT handler once the reactor runs."""
        movescu.main(self.reactor, "h", "1", "-k", "PatientID=1")
        hooks = [hook for hook, args, kwargs in self.reactor.whenRunningHooks]
        self.assertIn(movescu._install_sigint, hooks)

    def test_interrupt_while_connecting(self) -> None:
        """An interrupt before the association is up exits 6 at once."""
        d = movescu.main(self.reactor, "h", "1", "-k", "PatientID=1")
        session = self.reactor.whenRunningHooks[0][1][1]
        session.interrupt()
        self.assertEqual(self.exit_code(d), EXIT_CANCEL)

    def test_bad_keyword_before_associating(self) -> None:
        """A bad -k is reported by name and exits 2 before any connection or listen."""
        d = movescu.main(self.reactor, "h", "1", "-k", "PatientNme=X", "--store",
                         "-od", self.directory)
        self.assertEqual(self.exit_code(d), EXIT_USAGE)
        self.assertEqual((self.reactor.tcpClients, self.reactor.tcpServers), ([], []))
        self.assertIn("E: invalid -k argument 'PatientNme=X': unknown keyword 'PatientNme'",
                      self.lines())

    def test_unreadable_file(self) -> None:
        """An unreadable -f is reported by name and exits 2 before connecting."""
        path = os.path.join(self.directory, "missing.dcm")
        d = movescu.main(self.reactor, "h", "1", "-f", path)
        self.assertEqual(self.exit_code(d), EXIT_USAGE)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertTrue(any(path in line for line in self.lines()))

    def test_store_port_in_use(self) -> None:
        """A store port in use is reported by name and exits 8 before connecting."""
        self.reactor.refuse_listen = True
        d = movescu.main(self.reactor, "h", "1", "-k", "PatientID=1", "--store",
                         "--store-port", "11113", "-od", self.directory)
        self.assertEqual(self.exit_code(d), EXIT_LOCAL)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertTrue(any("--store-port" in line and "11113" in line
                            and "in use" in line for line in self.lines()))

    def test_usage_error(self) -> None:
        """A usage error exits 2 with a message."""
        d = movescu.main(self.reactor, "h")
        self.assertEqual(self.exit_code(d), EXIT_USAGE)
        self.assertTrue(self.lines()[0].startswith("E: movescu:"))

    def test_output_directory_created(self) -> None:
        """-od is created if missing (and not with --ignore)."""
        target = os.path.join(self.directory, "a", "b")
        movescu.main(self.reactor, "h", "1", "-k", "PatientID=1", "--store", "-od", target)
        self.assertTrue(os.path.isdir(target))
        other = os.path.join(self.directory, "c")
        movescu.main(_Reactor(), "h", "1", "-k", "PatientID=1", "--store", "--ignore",
                     "-od", other)
        self.assertFalse(os.path.exists(other))

    def test_quiet(self) -> None:
        """-q selects the critical level: no info lines."""
        d, *_ = self.run_move(lambda request: [], "-k", "PatientID=1", "-q")
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(self.levels, [LogLevel.critical])
        self.assertEqual(self.lines(), [])

    def test_debug(self) -> None:
        """-d shows the network stack's debug events (PDU summaries) too."""
        d, *_ = self.run_move(lambda request: [], "-k", "PatientID=1", "-d")
        self.assertEqual(self.exit_code(d), 0)
        self.assertTrue(any(line.startswith("D: ") for line in self.lines()))


class StoreTestCase(SynchronousTestCase):
    """The inline Store SCP, reached by an in-memory requestor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.directory)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self, handler: StoreHandler, syntaxes=UNCOMPRESSED):
        """Associate with a Store SCP built around ``handler``."""
        factory = make_store_factory(self.reactor, handler, "STORESCP")
        d = associate(self.reactor, "127.0.0.1", 11113, contexts=[
            (CT_IMAGE_STORAGE, syntaxes), ("1.2.840.10008.5.1.4.1.1.4", syntaxes)],
            calling_ae_title="QRSCP", called_ae_title="STORESCP")
        client, server, pump = connect_in_memory(self.reactor, factory)
        pump.flush()
        self.assertIs(self.successResultOf(d), client)
        return client, server, pump

    def store(self, client, pump, dataset) -> int:
        """C-STORE a data set; return the response status."""
        d = client.store(dataset)
        pump.flush()
        return self.successResultOf(d).status

    def files(self) -> list[str]:
        """Every file in the output directory (temporary ones included)."""
        return sorted(os.listdir(self.directory))

    def messages(self) -> list[str]:
        """The formatted log messages so far."""
        from twisted.logger import formatEvent
        return [formatEvent(event) for event in self.events]


class StoreTests(StoreTestCase):
    """Files written by the Store SCP."""

    def test_writes_file(self) -> None:
        """A stored instance becomes CT.<SOP Instance UID>, a Part 10 file equal to it."""
        client, server, pump = self.connect(StoreHandler(self.directory))
        ds = ct_dataset(pixels=256)
        self.assertEqual(self.store(client, pump, ds), Status.SUCCESS)
        name = f"CT.{ds.SOPInstanceUID}"
        self.assertEqual(self.files(), [name])
        stored = dcmread(os.path.join(self.directory, name))
        self.assertEqual(stored.file_meta.MediaStorageSOPInstanceUID, ds.SOPInstanceUID)
        self.assertEqual(stored.file_meta.MediaStorageSOPClassUID, CT_IMAGE_STORAGE)
        self.assertIn(stored.file_meta.TransferSyntaxUID, UNCOMPRESSED)
        self.assertEqual(Dataset(stored), Dataset(ds))
        self.assertIn(f"Storing DICOM file: {name}", self.messages())

    def test_implicit_vr(self) -> None:
        """A data set received in Implicit VR Little Endian makes a readable file."""
        client, server, pump = self.connect(StoreHandler(self.directory),
                                            (ImplicitVRLittleEndian,))
        ds = ct_dataset()
        self.assertEqual(self.store(client, pump, ds), Status.SUCCESS)
        stored = dcmread(os.path.join(self.directory, f"CT.{ds.SOPInstanceUID}"))
        self.assertEqual(stored.file_meta.TransferSyntaxUID, ImplicitVRLittleEndian)
        self.assertEqual(stored.PatientID, ds.PatientID)
        self.assertEqual(stored.PixelData, ds.PixelData)

    def test_prefix(self) -> None:
        """Files are named by the SOP class's modality prefix, UN when unknown."""
        self.assertEqual(file_prefix(CT_IMAGE_STORAGE), "CT")
        self.assertEqual(file_prefix("1.2.840.10008.5.1.4.1.1.4"), "MR")
        self.assertEqual(file_prefix("1.2.840.10008.5.1.4.1.1.481.2"), "RD")
        self.assertEqual(file_prefix("1.2.840.10008.5.1.4.1.1.77.1.6"), "UN")

    def test_overwrite_warns(self) -> None:
        """Storing the same instance twice warns and overwrites."""
        client, server, pump = self.connect(StoreHandler(self.directory))
        ds = ct_dataset()
        self.assertEqual(self.store(client, pump, ds), Status.SUCCESS)
        ds.PatientID = "CHANGED"
        self.assertEqual(self.store(client, pump, ds), Status.SUCCESS)
        self.assertEqual(self.files(), [f"CT.{ds.SOPInstanceUID}"])
        self.assertIn("DICOM file already exists, overwriting", self.messages())
        stored = dcmread(os.path.join(self.directory, f"CT.{ds.SOPInstanceUID}"))
        self.assertEqual(stored.PatientID, "CHANGED")

    def test_path_traversal_refused(self) -> None:
        """A SOP Instance UID that is not digits and dots gets 0xC210; nothing is written."""
        outside = os.path.join(os.path.dirname(self.directory), "CT.evil")
        client, server, pump = self.connect(StoreHandler(self.directory))
        for uid in ("../../../tmp/evil", "1.2/../../x", "/etc/passwd", "",
                    "1." + "2" * 70, "..", "1..2", "1.2.3\x00x"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom: "Invalid value for VR UI"
                ds = ct_dataset(SOPInstanceUID=uid)
                status = self.store(client, pump, ds)
            self.assertEqual(status, Status.STORE_CANNOT_UNDERSTAND, uid)
        self.assertEqual(self.files(), [])
        self.assertFalse(os.path.exists(outside))

    def test_ignore(self) -> None:
        """With --ignore the instance is answered Success and nothing is written."""
        handler = StoreHandler(self.directory, ignore=True)
        client, server, pump = self.connect(handler)
        self.assertEqual(self.store(client, pump, ct_dataset()), Status.SUCCESS)
        self.assertEqual(self.files(), [])
        self.assertEqual(handler.received, 1)

    def test_progress_callback(self) -> None:
        """on_stored is called for every instance received."""
        calls: list[None] = []
        client, server, pump = self.connect(
            StoreHandler(self.directory, on_stored=lambda: calls.append(None)))
        self.store(client, pump, ct_dataset())
        self.store(client, pump, ct_dataset())
        self.assertEqual(len(calls), 2)

    def test_every_storage_class_accepted(self) -> None:
        """The Store SCP's policy accepts every storage SOP class and transfer syntax."""
        policy = make_store_factory(self.reactor, StoreHandler(self.directory)).policy
        for uid in STORAGE_SOP_CLASSES:
            self.assertEqual(tuple(policy.contexts[uid]), STORAGE_TRANSFER_SYNTAXES)


class StoreHandlerTests(StoreTestCase):
    """The handler on data sets an in-memory requestor cannot send."""

    def receive(self, handler: StoreHandler, message: m.CStoreRQ, data: bytes,
                syntax: str = ExplicitVRLittleEndian):
        """Feed ``data`` through the handler's sink, then call the handler."""
        context = PresentationContext(1, message.affected_sop_class_uid, syntax)
        sink = handler.sink_for(message, context)
        sink.write(memoryview(data))
        request = ServiceRequest(None, message, context, sink.close())  # type: ignore[arg-type]
        return handler(request)

    def test_undecodable(self) -> None:
        """A data set that cannot be decoded gets 0xC210 and leaves no file."""
        handler = StoreHandler(self.directory)
        message = m.CStoreRQ(1, CT_IMAGE_STORAGE, "1.2.3.4")
        d = self.receive(handler, message, b"\x08\x00\x16\x00UI\xff\x7f1.2")
        failure = self.failureResultOf(d, DIMSEServiceError)
        self.assertEqual(failure.value.status, Status.STORE_CANNOT_UNDERSTAND)
        self.assertEqual(self.files(), [])

    def test_truncated(self) -> None:
        """A data set cut short gets 0xC210."""
        handler = StoreHandler(self.directory)
        ds = ct_dataset()
        data = encode_dataset(ds, ExplicitVRLittleEndian)[:-20]
        d = self.receive(handler, m.CStoreRQ(1, CT_IMAGE_STORAGE, ds.SOPInstanceUID), data)
        self.assertEqual(self.failureResultOf(d, DIMSEServiceError).value.status,
                         Status.STORE_CANNOT_UNDERSTAND)
        self.assertEqual(self.files(), [])

    def test_no_uids(self) -> None:
        """A data set without its SOP Instance UID gets 0xC210."""
        handler = StoreHandler(self.directory)
        ds = ct_dataset()
        del ds.SOPInstanceUID
        del ds.SOPClassUID
        data = encode_dataset(ds, ExplicitVRLittleEndian)
        d = self.receive(handler, m.CStoreRQ(1, CT_IMAGE_STORAGE, "1.2.3.4"), data)
        self.assertEqual(self.failureResultOf(d, DIMSEServiceError).value.status,
                         Status.STORE_CANNOT_UNDERSTAND)
        self.assertEqual(self.files(), [])

    def test_empty(self) -> None:
        """An empty data set gets 0xC210."""
        handler = StoreHandler(self.directory)
        d = self.receive(handler, m.CStoreRQ(1, CT_IMAGE_STORAGE, "1.2.3.4"), b"")
        self.assertEqual(self.failureResultOf(d, DIMSEServiceError).value.status,
                         Status.STORE_CANNOT_UNDERSTAND)
        self.assertEqual(self.files(), [])

    def test_bad_sop_class_uid(self) -> None:
        """A SOP Class UID that is not a UID is refused too (it goes in the file meta)."""
        handler = StoreHandler(self.directory)
        ds = ct_dataset()
        d = self.receive(handler, m.CStoreRQ(1, "../x", ds.SOPInstanceUID),
                         encode_dataset(ds, ExplicitVRLittleEndian))
        self.assertEqual(self.failureResultOf(d, DIMSEServiceError).value.status,
                         Status.STORE_CANNOT_UNDERSTAND)
        self.assertEqual(self.files(), [])

    def test_safe_uid(self) -> None:
        """Only digits and dots, at most 64 characters, make a safe UID."""
        self.assertTrue(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"))
        self.assertTrue(is_valid_uid("1" * 64))
        for bad in ("", "1" * 65, "1.2.", ".1", "1..2", "1.a", "../1", "1/2", None, 12):
            self.assertFalse(is_valid_uid(bad), bad)

    def test_part10_header(self) -> None:
        """The header is a preamble, DICM and a File Meta group pydicom reads."""
        header = part10_header(CT_IMAGE_STORAGE, "1.2.3", ExplicitVRLittleEndian, "PEER")
        self.assertEqual(header[:132], b"\x00" * 128 + b"DICM")
        ds = ct_dataset(SOPInstanceUID="1.2.3")
        path = os.path.join(self.directory, "f.dcm")
        with open(path, "wb") as f:
            f.write(header + encode_dataset(ds, ExplicitVRLittleEndian))
        read = dcmread(path)
        self.assertEqual(read.file_meta.SourceApplicationEntityTitle, "PEER")
        self.assertEqual(read.SOPInstanceUID, "1.2.3")


class SOPClassTests(SynchronousTestCase):
    """The shared SOP class and transfer syntax lists."""

    def test_errata_uid(self) -> None:
        """Intra-Oral For Processing uses the standard's UID, not the spec's typo."""
        self.assertIn("1.2.840.10008.5.1.4.1.1.1.3.1", STORAGE_SOP_CLASSES)
        self.assertNotIn("1.2.840.10008.5.1.1.4.1.1.3.1", STORAGE_SOP_CLASSES)

    def test_counts(self) -> None:
        """157 storage classes, 15 transfer syntaxes, no duplicates."""
        self.assertEqual(len(STORAGE_SOP_CLASSES), 157)
        self.assertEqual(len(set(STORAGE_TRANSFER_SYNTAXES)), 15)
        self.assertEqual(STORAGE_TRANSFER_SYNTAXES[:3], UNCOMPRESSED_TRANSFER_SYNTAXES)


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class LogsTests(SynchronousTestCase):
    """dicomtwist.logs: the console observer movescu (and the daemon) use."""

    def event(self, text: str, level: LogLevel = LogLevel.info,
              namespace: str = "dicomtwist.movescu") -> dict:
        """A log event with a literal message."""
        return {"log_format": "{text}", "text": text, "log_level": level,
                "log_namespace": namespace}

    def test_prefixes_and_filter(self) -> None:
        """Lines carry the level's letter; events below the level are dropped."""
        stream = io.StringIO()
        observer = LineObserver(stream, LogLevel.info)
        observer(self.event("hello"))
        observer(self.event("careful", LogLevel.warn))
        observer(self.event("bad", LogLevel.error))
        observer(self.event("detail", LogLevel.debug))
        self.assertEqual(stream.getvalue(), "I: hello\nW: careful\nE: bad\n")

    def test_multiline(self) -> None:
        """Each line of a message gets the prefix; empty lines are a bare prefix."""
        stream = io.StringIO()
        LineObserver(stream)(self.event("\n# Request Identifier\nline\n"))
        self.assertEqual(stream.getvalue(), "I:\nI: # Request Identifier\nI: line\nI:\n")

    def test_twisted_chatter_is_debug(self) -> None:
        """Twisted's own info events show only at debug level."""
        stream = io.StringIO()
        observer = LineObserver(stream, LogLevel.info)
        observer(self.event("Starting factory", namespace="twisted.internet.protocol"))
        observer({"log_format": "Starting factory {factory!r}", "factory": 1,
                  "log_level": LogLevel.info, "log_namespace": "x.Factory"})
        observer(self.event("port closed", namespace="log_legacy"))
        self.assertEqual(stream.getvalue(), "")
        observer.level = LogLevel.debug
        observer(self.event("Starting factory", namespace="twisted.internet.protocol"))
        self.assertEqual(stream.getvalue(), "D: Starting factory\n")

    def test_status_line_on_terminal(self) -> None:
        """On a terminal the status line is drawn, and log lines go above it."""
        stream = _Terminal()
        observer = LineObserver(stream)
        observer.set_status("3 done")
        observer(self.event("hello"))
        observer.set_status(None)
        self.assertEqual(stream.getvalue(),
                         "\r\x1b[K3 done" "\r\x1b[KI: hello\n3 done" "\r\x1b[K")

    def test_no_status_line_in_logs(self) -> None:
        """A stream that is not a terminal never gets the status line."""
        stream = io.StringIO()
        observer = LineObserver(stream)
        observer.set_status("3 done")
        observer(self.event("hello"))
        self.assertEqual(stream.getvalue(), "I: hello\n")

    def test_progress_text(self) -> None:
        """The progress line counts sub-operations and received instances."""
        progress = movescu.Progress(None, store=True)
        progress.update(m.CMoveRSP(1, Status.PENDING, number_of_remaining_sub_operations=3,
                                   number_of_completed_sub_operations=2,
                                   number_of_failed_sub_operations=1,
                                   number_of_warning_sub_operations=0))
        progress.instance_received()
        self.assertEqual(progress.text(), "Move: completed 2, failed 1, warning 0,"
                                          " remaining 3; received 1")

    def test_level_names(self) -> None:
        """-ll names, with warn as an alias of warning; unknown names fail."""
        from dicomtwist.logs import level_from_options, parse_level
        self.assertEqual(parse_level("WARNING"), LogLevel.warn)
        self.assertEqual(parse_level("warn"), LogLevel.warn)
        self.assertEqual(parse_level("critical"), LogLevel.critical)
        self.assertRaises(ValueError, parse_level, "loud")
        self.assertEqual(level_from_options(), LogLevel.info)
        self.assertEqual(level_from_options(quiet=True, verbose=True), LogLevel.info)
