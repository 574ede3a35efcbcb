"""Tests for dicomtwist.audit: the audit message builder (validated against
the schema of PS3.15 A.5.1), the syslog framing (RFC 5424/5425), the
bounded queue and the senders, and the trail's mapping of bus events."""

from __future__ import annotations

import base64
import os
import xml.etree.ElementTree as ET

from lxml import etree
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dicomtwist import config as configuration
from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist import tap
from dicomtwist.audit import messages as m
from dicomtwist.audit import syslog
from dicomtwist.audit.trail import AuditTrail, Destination, parse_destination

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "audit")
#: The RELAX NG schema of PS3.15 A.5.1 (trang's conversion of the .rnc).
SCHEMA = etree.RelaxNG(etree.parse(os.path.join(FIXTURES, "audit-message.rng")))

SOURCE = m.Source("QRSCP@archive", "QRSCP", "archive.example")
#: 2026-01-02T03:04:05.678Z
WHEN = 1767323045.678
STUDY = "1.2.826.0.1.3680043.8.498.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT = "1.2.840.10008.1.2.1"


def validate(testcase: SynchronousTestCase, xml: bytes) -> ET.Element:
    """Assert ``xml`` is valid against the schema; return it parsed."""
    document = etree.fromstring(xml)
    if not SCHEMA.validate(document):
        testcase.fail(f"invalid audit message: {SCHEMA.error_log}\n{xml.decode()}")
    return ET.fromstring(xml)


def code(element: ET.Element | None) -> tuple[str, str, str]:
    """A coded value's (csd-code, codeSystemName, originalText)."""
    assert element is not None
    return (element.get("csd-code"), element.get("codeSystemName"), element.get("originalText"))


def participants(root: ET.Element) -> list[dict[str, str]]:
    """Each ActiveParticipant's attributes, with its RoleIDCode as ``role``."""
    result = []
    for element in root.findall("ActiveParticipant"):
        attributes = dict(element.attrib)
        role = element.find("RoleIDCode")
        if role is not None:
            attributes["role"] = role.get("csd-code")
        result.append(attributes)
    return result


PEER = m.Participant("STORESCU", True, m.SOURCE, ("STORESCU",), "192.0.2.7")
US = SOURCE.participant(role=m.DESTINATION)


class SchemaTests(SynchronousTestCase):
    """The schema fixture itself rejects what PS3.15 A.5.1 forbids."""

    def test_rejects_a_message_without_participant(self) -> None:
        """An AuditMessage needs at least one ActiveParticipant."""
        xml = m.application_activity(SOURCE, WHEN, started=True)
        root = etree.fromstring(xml)
        root.remove(root.find("ActiveParticipant"))
        self.assertFalse(SCHEMA.validate(root))

    def test_rejects_an_unknown_outcome(self) -> None:
        """EventOutcomeIndicator is one of 0, 4, 8, 12."""
        root = etree.fromstring(m.application_activity(SOURCE, WHEN, started=True))
        root.find("EventIdentification").set("EventOutcomeIndicator", "3")
        self.assertFalse(SCHEMA.validate(root))


class MessageTests(SynchronousTestCase):
    """Each builder gives a valid message with the standard's codes."""

    def test_event_time(self) -> None:
        """EventDateTime is UTC with milliseconds and a Z."""
        self.assertEqual(m.event_time(WHEN), "2026-01-02T03:04:05.678Z")

    def test_application_start(self) -> None:
        """Application Activity / Application Start: the application is the
        one participant, with role Application (PS3.15 A.5.3.1)."""
        root = validate(self, m.application_activity(SOURCE, WHEN, started=True))
        ident = root.find("EventIdentification")
        self.assertEqual(dict(ident.attrib), {"EventActionCode": "E",
                                              "EventDateTime": "2026-01-02T03:04:05.678Z",
                                              "EventOutcomeIndicator": "0"})
        self.assertEqual(code(ident.find("EventID")), ("110100", "DCM", "Application Activity"))
        self.assertEqual(code(ident.find("EventTypeCode")), ("110120", "DCM", "Application Start"))
        self.assertEqual(participants(root), [{
            "UserID": "QRSCP", "AlternativeUserID": "AETITLES=QRSCP", "UserIsRequestor": "false",
            "NetworkAccessPointID": "archive.example", "NetworkAccessPointTypeCode": "1",
            "role": "110150"}])
        source = root.find("AuditSourceIdentification")
        self.assertEqual(source.get("AuditSourceID"), "QRSCP@archive")
        self.assertEqual(source.find("AuditSourceTypeCode").get("csd-code"), "4")
        self.assertEqual(root.findall("ParticipantObjectIdentification"), [])

    def test_application_stop(self) -> None:
        """Application Stop is the other event type."""
        root = validate(self, m.application_activity(SOURCE, WHEN, started=False))
        self.assertEqual(code(root.find("EventIdentification/EventTypeCode")),
                         ("110121", "DCM", "Application Stop"))

    def test_instances_transferred_store(self) -> None:
        """Instances stored: action C, source and destination roles, the
        study with its SOP classes and instance counts, the patient
        (PS3.15 A.5.3.7)."""
        study = m.Study(STUDY, {CT: ("1.2.3.1", "1.2.3.2"), MR: ("1.2.3.3",)})
        xml = m.instances_transferred(SOURCE, WHEN, "C", m.SUCCESS, PEER, US, (study,),
                                      (("PID-1", "Doe^Jane"),))
        root = validate(self, xml)
        ident = root.find("EventIdentification")
        self.assertEqual(ident.get("EventActionCode"), "C")
        self.assertEqual(code(ident.find("EventID")),
                         ("110104", "DCM", "DICOM Instances Transferred"))
        self.assertEqual(participants(root), [
            {"UserID": "STORESCU", "AlternativeUserID": "AETITLES=STORESCU",
             "UserIsRequestor": "true", "NetworkAccessPointID": "192.0.2.7",
             "NetworkAccessPointTypeCode": "2", "role": "110153"},
            {"UserID": "QRSCP", "AlternativeUserID": "AETITLES=QRSCP",
             "UserIsRequestor": "false", "NetworkAccessPointID": "archive.example",
             "NetworkAccessPointTypeCode": "1", "role": "110152"}])
        study_el, patient_el = root.findall("ParticipantObjectIdentification")
        self.assertEqual(dict(study_el.attrib), {
            "ParticipantObjectID": STUDY, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        self.assertEqual(code(study_el.find("ParticipantObjectIDTypeCode")),
                         ("110180", "DCM", "Study Instance UID"))
        classes = study_el.findall("ParticipantObjectDescription/SOPClass")
        self.assertEqual([(c.get("UID"), c.get("NumberOfInstances"),
                           [i.get("UID") for i in c.findall("Instance")]) for c in classes],
                         [(CT, "2", ["1.2.3.1", "1.2.3.2"]), (MR, "1", ["1.2.3.3"])])
        self.assertEqual(dict(patient_el.attrib), {
            "ParticipantObjectID": "PID-1", "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1"})
        self.assertEqual(code(patient_el.find("ParticipantObjectIDTypeCode")),
                         ("2", "RFC-3881", "Patient Number"))
        self.assertEqual(patient_el.find("ParticipantObjectName").text, "Doe^Jane")

    def test_instances_transferred_retrieve_failure(self) -> None:
        """A retrieve with failures: action R, minor failure, the counts in
        EventOutcomeDescription, the C-MOVE requestor as third participant."""
        sender = SOURCE.participant(role=m.SOURCE)
        receiver = m.Participant("STORESCP", False, m.DESTINATION, ("STORESCP",), "192.0.2.9")
        requestor = m.Participant("MOVESCU", True, None, ("MOVESCU",), "192.0.2.8")
        xml = m.instances_transferred(SOURCE, WHEN, "R", m.MINOR_FAILURE, sender, receiver,
                                      (m.Study(STUDY),), (("PID-1", ""),), requestor,
                                      "1 completed, 1 failed")
        root = validate(self, xml)
        ident = root.find("EventIdentification")
        self.assertEqual((ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")),
                         ("R", "4"))
        self.assertEqual(ident.find("EventOutcomeDescription").text, "1 completed, 1 failed")
        self.assertEqual([(p["UserID"], p["UserIsRequestor"], p.get("role"))
                          for p in participants(root)],
                         [("QRSCP", "false", "110153"), ("STORESCP", "false", "110152"),
                          ("MOVESCU", "true", None)])
        study_el = root.find("ParticipantObjectIdentification")
        self.assertIsNone(study_el.find("ParticipantObjectDescription"))

    def test_begin_transferring(self) -> None:
        """Begin Transferring DICOM Instances (PS3.15 A.5.3.3)."""
        sender = SOURCE.participant(role=m.SOURCE)
        receiver = m.Participant("GETSCU", True, m.DESTINATION, ("GETSCU",), "::1")
        root = validate(self, m.begin_transferring(
            SOURCE, WHEN, sender, receiver, (m.Study(STUDY), m.Study(STUDY + ".2")),
            (("PID-1", ""),)))
        ident = root.find("EventIdentification")
        self.assertEqual(code(ident.find("EventID")),
                         ("110102", "DCM", "Begin Transferring DICOM Instances"))
        self.assertEqual(ident.get("EventActionCode"), "E")
        self.assertEqual(participants(root)[1]["NetworkAccessPointTypeCode"], "2")
        self.assertEqual([p.get("ParticipantObjectID")
                          for p in root.findall("ParticipantObjectIdentification")],
                         [STUDY, STUDY + ".2", "PID-1"])

    def test_query(self) -> None:
        """Query: the SOP class queried, the identifier in base64 as
        ParticipantObjectQuery and its transfer syntax as a detail
        (PS3.15 A.5.3.10)."""
        identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
        requestor = m.Participant("FINDSCU", True, m.SOURCE, ("FINDSCU",), "127.0.0.1")
        root = validate(self, m.query(SOURCE, WHEN, m.SUCCESS, requestor, US, FIND, identifier,
                                      EXPLICIT))
        ident = root.find("EventIdentification")
        self.assertEqual(code(ident.find("EventID")), ("110112", "DCM", "Query"))
        self.assertEqual(ident.get("EventActionCode"), "E")
        self.assertEqual([p.get("role") for p in participants(root)], ["110153", "110152"])
        sop = root.find("ParticipantObjectIdentification")
        self.assertEqual(dict(sop.attrib), {"ParticipantObjectID": FIND,
                                            "ParticipantObjectTypeCode": "2",
                                            "ParticipantObjectTypeCodeRole": "3"})
        self.assertEqual(code(sop.find("ParticipantObjectIDTypeCode")),
                         ("110181", "DCM", "SOP Class UID"))
        self.assertEqual(base64.b64decode(sop.find("ParticipantObjectQuery").text), identifier)
        detail = sop.find("ParticipantObjectDetail")
        self.assertEqual((detail.get("type"), base64.b64decode(detail.get("value"))),
                         ("TransferSyntax", EXPLICIT.encode()))

    def test_query_by_http(self) -> None:
        """A QIDO-RS query is identified by its URI and has no transfer syntax."""
        uri = b"/dicom-web/studies?PatientID=<x>&00100010=D*"
        requestor = m.Participant("192.0.2.1", True, m.SOURCE, (), "192.0.2.1")
        root = validate(self, m.query(SOURCE, WHEN, m.SUCCESS, requestor, US, "", uri,
                                      uri=uri.decode()))
        sop = root.find("ParticipantObjectIdentification")
        self.assertEqual(sop.get("ParticipantObjectID"), uri.decode())
        self.assertEqual(code(sop.find("ParticipantObjectIDTypeCode")), ("12", "RFC-3881", "URI"))
        self.assertEqual(base64.b64decode(sop.find("ParticipantObjectQuery").text), uri)
        self.assertIsNone(sop.find("ParticipantObjectDetail"))

    def test_security_alert(self) -> None:
        """Security Alert / Node Authentication: the archive reports, the
        peer performs (not a requestor), the peer's node is the Alert
        Subject with the words as Alert Description (PS3.15 A.5.3.11)."""
        performer = m.Participant("EVIL", False, None, ("EVIL",), "203.0.113.5")
        words = "Association rejected (calling-ae): calling AE title EVIL not allowed"
        root = validate(self, m.security_alert(SOURCE, WHEN, m.MINOR_FAILURE,
                                               m.NODE_AUTHENTICATION, performer,
                                               "203.0.113.5", words))
        ident = root.find("EventIdentification")
        self.assertEqual(code(ident.find("EventID")), ("110113", "DCM", "Security Alert"))
        self.assertEqual(code(ident.find("EventTypeCode")),
                         ("110126", "DCM", "Node Authentication"))
        self.assertEqual((ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")),
                         ("E", "4"))
        self.assertEqual(ident.find("EventOutcomeDescription").text, words)
        self.assertEqual([(p["UserID"], p["UserIsRequestor"]) for p in participants(root)],
                         [("QRSCP", "false"), ("EVIL", "false")])
        subject = root.find("ParticipantObjectIdentification")
        self.assertEqual(subject.get("ParticipantObjectID"), "203.0.113.5")
        self.assertEqual(code(subject.find("ParticipantObjectIDTypeCode")),
                         ("110182", "DCM", "Node ID"))
        detail = subject.find("ParticipantObjectDetail")
        self.assertEqual((detail.get("type"), base64.b64decode(detail.get("value")).decode()),
                         ("Alert Description", words))

    def test_user_authentication(self) -> None:
        """Refused HTTP credentials: User Authentication / Login, failed."""
        user = m.Participant("alice", True, None, (), "192.0.2.1")
        root = validate(self, m.user_authentication(SOURCE, WHEN, m.MINOR_FAILURE, user,
                                                    "bad password"))
        ident = root.find("EventIdentification")
        self.assertEqual(code(ident.find("EventID")), ("110114", "DCM", "User Authentication"))
        self.assertEqual(code(ident.find("EventTypeCode")), ("110122", "DCM", "Login"))
        self.assertEqual(ident.get("EventOutcomeIndicator"), "4")
        self.assertEqual([p["UserID"] for p in participants(root)], ["alice", "QRSCP"])

    def test_markup_in_values_is_escaped(self) -> None:
        """Peer-controlled text with markup stays text."""
        performer = m.Participant('<a href="x">&', False, None, ('<"&>',), "192.0.2.1")
        root = validate(self, m.security_alert(SOURCE, WHEN, m.MINOR_FAILURE,
                                               m.NODE_AUTHENTICATION, performer, "192.0.2.1",
                                               "</EventOutcomeDescription><x/>"))
        self.assertEqual(participants(root)[1]["UserID"], '<a href="x">&')
        self.assertEqual(root.find("EventIdentification/EventOutcomeDescription").text,
                         "</EventOutcomeDescription><x/>")


class FramingTests(SynchronousTestCase):
    """RFC 5424 messages and RFC 5425 octet counting."""

    def test_format_message(self) -> None:
        """PRI 85 (authpriv.notice), version 1, the header fields, no
        structured data, then BOM and the XML."""
        framed = syslog.format_message(b"<AuditMessage/>", "2026-01-02T03:04:05.678Z",
                                       "archive", procid="1234")
        self.assertEqual(framed, b"<85>1 2026-01-02T03:04:05.678Z archive dicomtwist 1234"
                                 b" IHE+RFC-3881 - \xef\xbb\xbf<AuditMessage/>")

    def test_header_fields_are_printable_and_bounded(self) -> None:
        """Spaces and non-ASCII leave the header fields; empty ones are "-";
        APP-NAME is at most 48 characters."""
        framed = syslog.format_message(b"x", "T", "my host\xe9", app_name="a" * 60, procid="")
        self.assertEqual(framed, b"<85>1 T myhost " + b"a" * 48 + b" - IHE+RFC-3881 - "
                                 b"\xef\xbb\xbfx")

    def test_octet_counting(self) -> None:
        """MSG-LEN SP SYSLOG-MSG, the length in octets."""
        self.assertEqual(syslog.octet_counted("é".encode()), b"2 \xc3\xa9")


class QueueTests(SynchronousTestCase):
    """The bounded queue drops and counts what does not fit."""

    def test_bounded(self) -> None:
        """Beyond its limit a put is refused and counted; take empties it."""
        queue = syslog.MessageQueue(2)
        woken = []
        queue.on_put(lambda: woken.append(len(queue)))
        self.assertEqual([queue.put(b"a"), queue.put(b"b"), queue.put(b"c")],
                         [True, True, False])
        self.assertEqual((queue.dropped, woken), (1, [1, 2]))
        self.assertEqual(queue.take(1), [b"a"])
        self.assertEqual(queue.take(), [b"b"])
        self.assertEqual(len(queue), 0)


class FakeDatagramTransport:
    """Records datagrams; raises when told to."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.error: OSError | None = None

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((data, address))


class FakeUDPReactor:
    """``listenUDP`` connects the protocol to a :class:`FakeDatagramTransport`."""

    def __init__(self) -> None:
        self.transport = FakeDatagramTransport()
        self.listening: list[tuple[int, str]] = []

    def listenUDP(self, port: int, proto: object, interface: str = "") -> object:
        self.listening.append((port, interface))
        proto.makeConnection(self.transport)
        return self

    def stopListening(self) -> None:
        self.listening.clear()


class UDPSenderTests(SynchronousTestCase):
    """One datagram a message; nothing waits."""

    def test_sends_each_message(self) -> None:
        """Queued messages go out at once, each in its own datagram."""
        reactor = FakeUDPReactor()
        queue = syslog.MessageQueue(10)
        queue.put(b"early")
        sender = syslog.UDPSender(reactor, queue, "127.0.0.1", 5514)
        self.successResultOf(sender.start())
        self.assertEqual(reactor.listening, [(0, "")])
        transport = reactor.transport
        queue.put(b"one")
        queue.put(b"two")
        self.assertEqual(transport.sent, [(b"early", ("127.0.0.1", 5514)),
                                          (b"one", ("127.0.0.1", 5514)),
                                          (b"two", ("127.0.0.1", 5514))])
        self.assertEqual((len(queue), queue.dropped), (0, 0))
        self.successResultOf(sender.stop())
        self.assertEqual(reactor.listening, [])

    def test_oversized_and_failed_writes_are_dropped(self) -> None:
        """A message too large for a datagram, or a send error, is counted."""
        reactor = FakeUDPReactor()
        queue = syslog.MessageQueue(10)
        sender = syslog.UDPSender(reactor, queue, "127.0.0.1", 5514)
        sender.start()
        transport = reactor.transport
        queue.put(b"x" * (syslog.MAX_DATAGRAM + 1))
        transport.error = BlockingIOError()
        queue.put(b"y")
        self.assertEqual((transport.sent, queue.dropped), ([], 2))


class TLSSenderTests(SynchronousTestCase):
    """Octet-counted messages over a connection that may be down or slow."""

    def setUp(self) -> None:
        from twisted.internet import ssl

        self.reactor = MemoryReactorClock()
        self.queue = syslog.MessageQueue(3)
        self.sender = syslog.TLSSender(self.reactor, self.queue, "127.0.0.1", 6514,
                                       ssl.optionsForClientTLS("localhost"))

    def test_collector_down(self) -> None:
        """While no connection is up, messages wait up to the limit; more are
        dropped; putting never blocks."""
        self.sender.start()
        for n in range(5):
            self.queue.put(b"m%d" % n)
        self.assertEqual((len(self.queue), self.queue.dropped), (3, 2))
        self.assertTrue(self.reactor.tcpClients or self.reactor.connectors)

    def test_connected_writes_octet_counted(self) -> None:
        """Once connected, waiting messages are written, each octet counted."""
        self.sender.start()
        self.queue.put(b"first")
        client = syslog._OctetCountingClient(self.sender)
        transport = StringTransport()
        client.makeConnection(transport)
        self.queue.put(b"second")
        self.assertEqual(transport.value(), b"5 first6 second")
        self.assertEqual(len(self.queue), 0)

    def test_paused_transport_holds_messages(self) -> None:
        """A full transport pauses writing; resuming writes the rest."""
        self.sender.start()
        client = syslog._OctetCountingClient(self.sender)
        transport = StringTransport()
        client.makeConnection(transport)
        client.pauseProducing()
        self.queue.put(b"held")
        self.assertEqual((transport.value(), len(self.queue)), (b"", 1))
        client.resumeProducing()
        self.assertEqual(transport.value(), b"4 held")

    def test_stop_unregisters_the_producer(self) -> None:
        """Stopping writes what waits and unregisters from the transport (a
        TLS transport closes only without a producer)."""
        self.sender.start()
        client = syslog._OctetCountingClient(self.sender)
        transport = StringTransport()
        client.makeConnection(transport)
        client.pauseProducing()
        self.queue.put(b"last")
        client.paused = False
        self.sender.stop()
        self.assertEqual((transport.value(), transport.producer), (b"4 last", None))

    def test_lost_connection_queues_again(self) -> None:
        """After the connection is lost, messages wait again."""
        self.sender.start()
        client = syslog._OctetCountingClient(self.sender)
        client.makeConnection(StringTransport())
        client.connectionLost(None)
        self.queue.put(b"later")
        self.assertEqual(len(self.queue), 1)


class FileSenderTests(TestCase):
    """Messages appended to a file, one a line, by a thread."""

    @defer.inlineCallbacks
    def test_appends_lines(self) -> None:
        """Each message is one line; stop writes what is queued first."""
        from twisted.internet import reactor

        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"before\n")
        queue = syslog.MessageQueue(100)
        sender = syslog.FileSender(reactor, queue, path)
        yield sender.start()
        for n in range(20):
            queue.put(b"message %d" % n)
        queue.put(b"with\nnewline")
        yield sender.stop()
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        self.assertEqual(lines, [b"before", *(b"message %d" % n for n in range(20)),
                                 b"with newline"])
        self.assertEqual(queue.dropped, 0)

    @defer.inlineCallbacks
    def test_unwritable_file_counts_drops(self) -> None:
        """A file that cannot be opened loses the batch (counted, one warning)."""
        from twisted.internet import reactor

        queue = syslog.MessageQueue(100)
        sender = syslog.FileSender(reactor, queue, os.path.join(self.mktemp(), "no", "file"))
        yield sender.start()
        queue.put(b"lost")
        yield sender.stop()
        self.assertEqual(queue.dropped, 1)


class RecordingSender:
    """A sender that never sends: the trail's queue keeps the messages."""

    def __init__(self, queue: syslog.MessageQueue) -> None:
        self.queue = queue
        self.started = self.stopped = False

    def start(self) -> defer.Deferred[None]:
        self.started = True
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        self.stopped = True
        return defer.succeed(None)


class TrailTests(SynchronousTestCase):
    """Bus events become audit messages."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(WHEN)
        self.bus = events.EventBus()
        self.trail = AuditTrail(self.clock, SOURCE, RecordingSender, queue_limit=100,
                                hostname="archive", procid="42", bus=self.bus)
        self.trail.start()
        self.addCleanup(self.trail.stop)

    def sent(self) -> list[ET.Element]:
        """The messages queued so far (validated), and empty the queue."""
        result = []
        for framed in self.trail.queue.take():
            header, bom, xml = framed.partition(b"\xef\xbb\xbf")
            self.assertEqual(header, b"<85>1 2026-01-02T03:04:05.678Z archive dicomtwist 42"
                                     b" IHE+RFC-3881 - ")
            result.append(validate(self, xml))
        return result

    def event_id(self, root: ET.Element) -> str:
        return root.find("EventIdentification/EventID").get("csd-code")

    def stored(self, association: int | None, study: str, sop_class: str, uid: str,
               duplicate: bool = False) -> events.InstanceStored:
        return events.InstanceStored("dimse" if association else "http", "192.0.2.7",
                                     "STORESCU", sop_class, uid, study, "PID-1", "Doe^Jane",
                                     1000, duplicate, association)

    def test_application_start_and_stop(self) -> None:
        """ApplicationStarted and ApplicationStopped give Application Activity."""
        self.bus.publish(events.ApplicationStarted("QRSCP", "node", ("tcp:11112",)))
        self.bus.publish(events.ApplicationStopped("QRSCP", "node"))
        roots = self.sent()
        self.assertEqual([self.event_id(r) for r in roots], ["110100", "110100"])
        self.assertEqual([r.find("EventIdentification/EventTypeCode").get("csd-code")
                          for r in roots], ["110120", "110121"])

    def test_stores_are_one_message_per_study_and_association(self) -> None:
        """Stored instances wait for their association to end; then each
        study gets one Instances Transferred message with its counts."""
        self.bus.publish(self.stored(7, STUDY, CT, "1.1"))
        self.bus.publish(self.stored(7, STUDY, CT, "1.2"))
        self.bus.publish(self.stored(7, STUDY + ".9", MR, "2.1"))
        self.bus.publish(self.stored(8, STUDY, CT, "3.1"))
        self.assertEqual(self.sent(), [])
        self.bus.publish(events.AssociationEnded(7, "192.0.2.7", "STORESCU", "released"))
        roots = self.sent()
        self.assertEqual([self.event_id(r) for r in roots], ["110104", "110104"])
        summary = [(r.find("ParticipantObjectIdentification").get("ParticipantObjectID"),
                    [(c.get("UID"), c.get("NumberOfInstances"))
                     for c in r.findall(".//SOPClass")]) for r in roots]
        self.assertEqual(summary, [(STUDY, [(CT, "2")]), (STUDY + ".9", [(MR, "1")])])
        self.assertEqual(roots[0].find("EventIdentification").get("EventActionCode"), "C")
        patient = roots[0].findall("ParticipantObjectIdentification")[1]
        self.assertEqual((patient.get("ParticipantObjectID"),
                          patient.find("ParticipantObjectName").text), ("PID-1", "Doe^Jane"))
        # Association 8 is still open; stopping the trail sends it.
        self.trail.stop()
        self.assertEqual([r.find("ParticipantObjectIdentification").get("ParticipantObjectID")
                          for r in self.sent()], [STUDY])

    def test_http_store_is_audited_at_once(self) -> None:
        """A STOW-RS instance (no association) gets its message at once."""
        self.bus.publish(self.stored(None, STUDY, CT, "1.1", duplicate=True))
        (root,) = self.sent()
        self.assertEqual(root.find("EventIdentification").get("EventActionCode"), "U")

    def test_query(self) -> None:
        """QueryPerformed gives Query with the identifier as received."""
        self.bus.publish(events.QueryPerformed("dimse", "127.0.0.1", "FINDSCU", FIND, "STUDY",
                                               b"\x08\x00\x52\x00", 3, 0, 0.01, EXPLICIT, 5))
        self.bus.publish(events.QueryPerformed("dimse", "127.0.0.1", "FINDSCU", FIND, "STUDY",
                                               b"", 0, 0xA900, 0.01, EXPLICIT, 5))
        ok, failed = self.sent()
        self.assertEqual(self.event_id(ok), "110112")
        self.assertEqual(base64.b64decode(ok.find(".//ParticipantObjectQuery").text),
                         b"\x08\x00\x52\x00")
        self.assertEqual(participants(ok)[0]["UserID"], "FINDSCU")
        self.assertEqual([r.find("EventIdentification").get("EventOutcomeIndicator")
                          for r in (ok, failed)], ["0", "4"])

    def test_move(self) -> None:
        """A C-MOVE: Begin Transferring at its start; at its end Instances
        Transferred (Read) with what was sent, the requestor third."""
        self.bus.publish(events.RetrieveStarted("dimse", "move", "192.0.2.8", "MOVESCU",
                                                "STORESCP", "192.0.2.9", (STUDY,), ("PID-1",),
                                                2, 11))
        begin, = self.sent()
        self.assertEqual(self.event_id(begin), "110102")
        self.assertEqual([(p["UserID"], p["UserIsRequestor"], p.get("role"))
                          for p in participants(begin)],
                         [("QRSCP", "false", "110153"), ("STORESCP", "false", "110152"),
                          ("MOVESCU", "true", None)])
        # Sub-operations go over an association of their own (id 12).
        for uid, status in (("1.1", 0), ("1.2", 0xA700)):
            self.bus.publish(events.InstanceSent("dimse", "STORESCP", "192.0.2.9", CT, uid,
                                                 "", "", 100, status, 12))
        self.bus.publish(events.RetrieveEnded("dimse", "move", "192.0.2.8", "MOVESCU",
                                              "STORESCP", "192.0.2.9", (STUDY,), ("PID-1",),
                                              1, 1, 0, 0xB000, association_id=11))
        done, = self.sent()
        ident = done.find("EventIdentification")
        self.assertEqual((self.event_id(done), ident.get("EventActionCode"),
                          ident.get("EventOutcomeIndicator")), ("110104", "R", "4"))
        self.assertEqual(ident.find("EventOutcomeDescription").text,
                         "1 completed, 1 failed, 0 warning; status 0xB000")
        self.assertEqual([(c.get("UID"), c.get("NumberOfInstances"),
                           [i.get("UID") for i in c.findall("Instance")])
                          for c in done.findall(".//SOPClass")], [(CT, "1", ["1.1"])])

    def test_get_requestor_is_the_destination(self) -> None:
        """A C-GET's destination is its requestor: two participants."""
        self.bus.publish(events.RetrieveStarted("dimse", "get", "192.0.2.8", "GETSCU",
                                                "GETSCU", "192.0.2.8", (STUDY,), ("PID-1",),
                                                1, 12))
        begin, = self.sent()
        self.assertEqual([(p["UserID"], p["UserIsRequestor"]) for p in participants(begin)],
                         [("QRSCP", "false"), ("GETSCU", "true")])

    def test_rejection_and_authentication(self) -> None:
        """Rejections and failed TLS handshakes are Security Alerts; refused
        HTTP credentials User Authentication."""
        self.bus.publish(events.AssociationRejected(3, "203.0.113.5", "EVIL", "QRSCP",
                                                    "calling-ae", "not allowed"))
        self.bus.publish(events.AuthenticationFailed("dimse", "203.0.113.6", "",
                                                     "certificate verify failed"))
        self.bus.publish(events.AuthenticationFailed("http", "203.0.113.7", "alice",
                                                     "bad password"))
        rejected, tls_failed, login = self.sent()
        self.assertEqual([self.event_id(r) for r in (rejected, tls_failed, login)],
                         ["110113", "110113", "110114"])
        self.assertEqual(rejected.find("EventIdentification/EventOutcomeDescription").text,
                         "Association rejected (calling-ae): not allowed")
        self.assertEqual(rejected.find("ParticipantObjectIdentification")
                         .get("ParticipantObjectID"), "203.0.113.5")
        self.assertEqual(participants(tls_failed)[1]["UserID"], "203.0.113.6")
        self.assertEqual(participants(login)[0]["UserID"], "alice")

    def test_study_deleted(self) -> None:
        """A deletion from the web page: DICOM Study Deleted (action D), the
        user as the one requestor, the study with its instances and the
        patient."""
        self.bus.publish(events.StudyDeleted("http", "192.0.2.1", "alice", STUDY, "PID-1",
                                             "Doe^Jane", ((CT, "1.1"), (CT, "1.2"))))
        root, = self.sent()
        ident = root.find("EventIdentification")
        self.assertEqual((self.event_id(root), ident.get("EventActionCode"),
                          ident.get("EventOutcomeIndicator")), ("110105", "D", "0"))
        self.assertEqual([(p["UserID"], p["UserIsRequestor"], p["NetworkAccessPointID"])
                          for p in participants(root)], [("alice", "true", "192.0.2.1")])
        self.assertEqual([(c.get("UID"), c.get("NumberOfInstances"),
                           [i.get("UID") for i in c.findall("Instance")])
                          for c in root.findall(".//SOPClass")], [(CT, "2", ["1.1", "1.2"])])
        self.assertEqual([o.get("ParticipantObjectID")
                          for o in root.findall("ParticipantObjectIdentification")],
                         [STUDY, "PID-1"])
        self.assertEqual(root.find(".//ParticipantObjectName").text, "Doe^Jane")

    def test_procedure_step(self) -> None:
        """An MPPS N-CREATE kept: Procedure Record (PS3.15 A.5.3, 110111) with
        action C, the modality as requestor and the archive, each study
        with the step's UID as MPPS and its accession number, the patient;
        an N-SET is action U."""
        for action in ("C", "U"):
            self.bus.publish(events.ProcedureStepRecorded(
                "dimse", "192.0.2.9", "MODALITY", "1.2.3.501", action,
                "IN PROGRESS" if action == "C" else "COMPLETED", "PID-1", "Doe^Jane",
                (STUDY,), ("ACC1",), 3))
        created, updated = self.sent()
        for root, action in ((created, "C"), (updated, "U")):
            ident = root.find("EventIdentification")
            self.assertEqual((self.event_id(root), ident.get("EventActionCode"),
                              ident.get("EventOutcomeIndicator")), ("110111", action, "0"))
        self.assertEqual(created.find(".//EventOutcomeDescription").text,
                         "Performed Procedure Step IN PROGRESS")
        self.assertEqual([(p["UserID"], p["UserIsRequestor"])
                          for p in participants(created)],
                         [("MODALITY", "true"), (SOURCE.ae_title, "false")])
        self.assertEqual([o.get("ParticipantObjectID")
                          for o in created.findall("ParticipantObjectIdentification")],
                         [STUDY, "PID-1"])
        self.assertEqual(created.find(".//MPPS").get("UID"), "1.2.3.501")
        self.assertEqual(created.find(".//Accession").get("Number"), "ACC1")

    def test_http_forbidden(self) -> None:
        """An authenticated HTTP user refused a permission: Security Alert,
        Use of Restricted Function, the user as performer."""
        self.bus.publish(events.AuthenticationFailed("http", "192.0.2.1", "bob",
                                                     "not permitted: delete"))
        (root,) = self.sent()
        self.assertEqual((self.event_id(root),
                          root.find("EventIdentification/EventTypeCode").get("csd-code")),
                         ("110113", "110132"))
        self.assertEqual(participants(root)[1]["UserID"], "bob")
        self.assertEqual(root.find("EventIdentification/EventOutcomeDescription").text,
                         "bob: not permitted: delete")

    def test_qido_query(self) -> None:
        """A QIDO-RS query: identified by its URI, the requestor by address."""
        uri = b"/dicom-web/studies?PatientID=AUDIT-1"
        self.bus.publish(events.QueryPerformed("http", "192.0.2.1", "", "", "STUDY", uri, 1,
                                               0, 0.01))
        (root,) = self.sent()
        sop = root.find("ParticipantObjectIdentification")
        self.assertEqual((sop.get("ParticipantObjectID"),
                          base64.b64decode(sop.find("ParticipantObjectQuery").text)),
                         (uri.decode(), uri))
        self.assertEqual(participants(root)[0]["UserID"], "192.0.2.1")

    def test_wado_retrieve(self) -> None:
        """A WADO-RS retrieve (no association, no AE titles): the client is
        destination and requestor; both messages are valid."""
        self.bus.publish(events.RetrieveStarted("http", "wado", "192.0.2.1", "", "",
                                                "192.0.2.1", (STUDY,), (), 2))
        self.bus.publish(events.RetrieveEnded("http", "wado", "192.0.2.1", "", "", "192.0.2.1",
                                              (STUDY,), (), 2, 0, 0, 0, ("1.1", "1.2")))
        begin, done = self.sent()
        self.assertEqual([self.event_id(begin), self.event_id(done)], ["110102", "110104"])
        self.assertEqual([(p["UserID"], p["UserIsRequestor"], p.get("role"))
                          for p in participants(done)],
                         [("QRSCP", "false", "110153"), ("192.0.2.1", "true", "110152")])
        self.assertEqual(done.find("ParticipantObjectIdentification").get("ParticipantObjectID"),
                         STUDY)

    def test_other_events_are_ignored(self) -> None:
        """Events the trail does not audit give no message."""
        self.bus.publish(events.AssociationAccepted(1, "127.0.0.1", 1234, "A", "B"))
        self.bus.publish(events.HttpRequestServed("qido", "GET", 200, 0.1))
        self.assertEqual(self.sent(), [])

    def test_full_queue_drops_and_counts(self) -> None:
        """A collector that takes nothing: publishing returns at once, the
        queue stays at its limit, the rest is counted as dropped."""
        for _ in range(150):
            self.bus.publish(events.ApplicationStarted("QRSCP", "node"))
        self.assertEqual((len(self.trail.queue), self.trail.dropped), (100, 50))

    def test_drop_count_metric(self) -> None:
        """The archive's metrics export the trail's drop count as the
        counter dicomtwist_audit_messages_dropped_total, read at each scrape."""
        from prometheus_client import generate_latest
        from prometheus_client.parser import text_string_to_metric_families

        from dicomtwist.metrics import ArchiveMetrics

        metrics = ArchiveMetrics(audit=self.trail)

        def dropped() -> float:
            text = generate_latest(metrics.registry).decode()
            return next(sample.value for family in text_string_to_metric_families(text)
                        for sample in family.samples
                        if sample.name == "dicomtwist_audit_messages_dropped_total")

        self.assertEqual(dropped(), 0.0)
        for _ in range(103):
            self.bus.publish(events.ApplicationStarted("QRSCP", "node"))
        self.assertEqual(dropped(), 3.0)

    def test_stop_unsubscribes(self) -> None:
        """After stop, events give no messages and the sender is stopped."""
        self.trail.stop()
        self.assertTrue(self.trail.sender.stopped)
        self.bus.publish(events.ApplicationStarted("QRSCP", "node"))
        self.assertEqual(self.sent(), [])
        self.assertFalse(self.bus.observed)


class DestinationTests(SynchronousTestCase):
    """``audit`` values."""

    def test_parse(self) -> None:
        """udp:, tls: (IPv6 in brackets) and file: destinations."""
        self.assertEqual(parse_destination("udp:127.0.0.1:514"),
                         Destination("udp", "127.0.0.1", 514))
        self.assertEqual(parse_destination("TLS:[::1]:6514"), Destination("tls", "::1", 6514))
        self.assertEqual(parse_destination("file:/var/log/audit.log"),
                         Destination("file", path="/var/log/audit.log"))

    def test_bad(self) -> None:
        """Anything else is a ValueError."""
        for value in ("syslog:x:1", "udp:host", "udp:host:0", "udp::514", "tcp:h:1",
                      "file:", "udp:h:99999", "nothing"):
            with self.assertRaises(ValueError, msg=value):
                parse_destination(value)


class OptionTests(SynchronousTestCase):
    """``--audit`` and the ``audit*`` keys are checked at start."""

    def setUp(self) -> None:
        self.addCleanup(dlog.set_level, dlog.level())

    def test_bad_audit_names_itself(self) -> None:
        """A bad destination is one UsageError naming the option and value."""
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--audit", "syslog:nowhere"])
        self.assertEqual(str(caught.exception).splitlines()[0][:32],
                         "--audit/audit 'syslog:nowhere': ")

    def test_tls_files_are_checked(self) -> None:
        """A CA file that does not exist is reported at start."""
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("[DEFAULT]\naudit = tls:127.0.0.1:6514\naudit_tls_ca = /no/such/ca.pem\n")
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--config", config])
        self.assertIn("--audit/audit 'tls:127.0.0.1:6514'", str(caught.exception))
        self.assertIn("/no/such/ca.pem", str(caught.exception))

    def test_file_path_made_absolute(self) -> None:
        """A relative file: path is made absolute (twistd may chdir)."""
        options = tap.Options()
        options.parseOptions(["--audit", "file:audit.log"])
        self.assertEqual(options["settings"].audit, "file:" + os.path.abspath("audit.log"))

    def test_config_keys(self) -> None:
        """The audit keys of the configuration file."""
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("[DEFAULT]\naudit = udp:127.0.0.1:514\naudit_queue = 50\n"
                    "audit_source_id = PACS-1\n")
        cfg = configuration.load(config)
        self.assertEqual((cfg.audit, cfg.audit_queue, cfg.audit_source_id),
                         ("udp:127.0.0.1:514", 50, "PACS-1"))
        with open(config, "w") as f:
            f.write("[DEFAULT]\naudit_queue = 0\n")
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(config)
        self.assertIn("invalid audit_queue '0'", str(caught.exception))
