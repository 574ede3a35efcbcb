"""End to end: the real daemon's audit trail received by a real rsyslog.

Each test starts ``rsyslogd -n`` (Debian's rsyslog, with rsyslog-gnutls for
TLS) with a configuration of its own in a temporary directory: UDP and TLS
(RFC 5425) inputs on free 127.0.0.1 ports, every message written as
received to a file.  Then the real ``twistd -n dicomqr`` runs with
``--audit`` pointing at it, DCMTK tools talk to it, and the messages the
collector received are parsed and validated against the schema of
PS3.15 A.5.1.
"""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET

from lxml import etree
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests import peers
from tests.helpers import ct_dataset, free_port
from tests.test_audit import SCHEMA
from tests.test_dicomqr_e2e import inline
from tests.test_tls import shared_pki

RSYSLOGD = "/usr/sbin/rsyslogd"
BOM = b"\xef\xbb\xbf"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY = "1.2.826.0.1.3680043.9.7433.77.1"


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector:
    """A running rsyslogd that writes every message it receives to a file."""

    def __init__(self, testcase: TestCase, directory: str, pki: dict[str, str]) -> None:
        self.directory = directory
        self.udp_port = free_udp_port()
        self.tls_port = free_port()
        self.received = os.path.join(directory, "received.log")
        os.makedirs(directory, exist_ok=True)
        self.config = os.path.join(directory, "rsyslog.conf")
        with open(self.config, "w") as fp:
            fp.write(f"""\
global(workDirectory="{directory}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{pki['ca.crt']}"
       defaultNetstreamDriverCertFile="{pki['server.crt']}"
       defaultNetstreamDriverKeyFile="{pki['server.key']}")
module(load="imudp")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
       StreamDriver.AuthMode="anon")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}")
input(type="imtcp" address="127.0.0.1" port="{self.tls_port}")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{self.received}" template="raw")
""")
        self.testcase = testcase

    async def start(self) -> None:
        """Start rsyslogd; return once a UDP probe has come through."""
        self.process = peers.start_peer(
            self.testcase, reactor, RSYSLOGD,
            ["-n", "-f", self.config, "-i", os.path.join(self.directory, "rsyslogd.pid")],
            "rsyslogd")
        await peers.wait_for_port(reactor, self.tls_port, self.process)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(200):
                s.sendto(b"<13>1 - - probe - - - probe", ("127.0.0.1", self.udp_port))
                if b"probe" in self._read():
                    return
                await deferLater(reactor, 0.05, lambda: None)
        raise RuntimeError(f"rsyslogd received nothing:\n{self.process.output()}")

    def _read(self) -> bytes:
        try:
            with open(self.received, "rb") as fp:
                return fp.read()
        except FileNotFoundError:
            return b""

    def messages(self) -> list[tuple[bytes, ET.Element]]:
        """The audit messages received so far: ``(header, XML)``, each
        validated against the schema."""
        result = []
        for line in self._read().splitlines():
            if b"IHE+RFC-3881" not in line:
                continue
            header, bom, xml = line.partition(BOM)
            self.testcase.assertEqual(bom, BOM, line)
            document = etree.fromstring(xml)
            if not SCHEMA.validate(document):
                self.testcase.fail(f"invalid audit message: {SCHEMA.error_log}\n{xml!r}")
            result.append((header, ET.fromstring(xml)))
        return result

    async def wait_for(self, count: int, event: str, attempts: int = 200
                       ) -> list[tuple[bytes, ET.Element]]:
        """Poll (bounded) until ``count`` messages with EventID ``event`` came."""
        for _ in range(attempts):
            found = [(h, r) for h, r in self.messages() if event_id(r) == event]
            if len(found) >= count:
                return found
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"{count} message(s) {event} not received:"
                             f" {[event_id(r) for _, r in self.messages()]}")


def event_id(root: ET.Element) -> str:
    """The csd-code of a message's EventID."""
    return root.find("EventIdentification/EventID").get("csd-code")


def event_type(root: ET.Element) -> str:
    """The csd-code of a message's first EventTypeCode."""
    return root.find("EventIdentification/EventTypeCode").get("csd-code")


class AuditTrailTests(TestCase):
    """twistd dicomqr --audit, DCMTK traffic, rsyslog."""

    timeout = 120

    def setUp(self) -> None:
        if not os.access(RSYSLOGD, os.X_OK):
            from twisted.trial.unittest import SkipTest

            raise SkipTest(f"rsyslog not installed at {RSYSLOGD}")
        self.work = os.path.abspath(self.mktemp())
        self.cwd = os.path.join(self.work, "archive")
        os.makedirs(self.cwd)
        self.pki = shared_pki()
        self.collector = Collector(self, os.path.join(self.work, "rsyslog"), self.pki)
        self.port = free_port()
        self.move_port = free_port()
        self.config = os.path.join(self.work, "qrscp.ini")

    def write_config(self, extra: str = "") -> None:
        """The archive's configuration: a MOVESCU destination (DCMTK movescu's
        own Store SCP) and called AE title checking."""
        with open(self.config, "w") as fp:
            fp.write(f"[DEFAULT]\nae_title: QRSCP\nport: {self.port}\nbind_address: 127.0.0.1\n"
                     f"require_called_aet: true\n{extra}"
                     f"[MOVESCU]\naddress: 127.0.0.1\nport: {self.move_port}\n")

    async def dcmtk(self, tool: str, *args: str) -> str:
        """Run a DCMTK tool, which must succeed; returns its output."""
        out, err, code = await peers.run_tool(reactor, peers.dcmtk(tool), list(args))
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, output)
        return output

    async def store_two(self) -> None:
        """storescu two CT instances of ``STUDY`` (patient AUDIT-1)."""
        paths = []
        for n in (1, 2):
            ds = ct_dataset(16, PatientID="AUDIT-1", PatientName="Audit^Anna",
                            StudyInstanceUID=STUDY, SeriesInstanceUID=STUDY + ".1",
                            SOPInstanceUID=f"{STUDY}.1.{n}")
            path = os.path.join(self.work, f"ct{n}.dcm")
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        await self.dcmtk("storescu", "-aet", "STORESCU", "-aec", "QRSCP", "127.0.0.1",
                         str(self.port), *paths)

    async def stop(self, archive: peers.PeerProcess) -> None:
        """SIGTERM the daemon and wait for it to exit cleanly."""
        code = await archive.stop()
        self.assertEqual(code, 0, archive.output())

    @inline
    async def test_dcmtk_traffic_over_udp(self) -> None:
        """Start, a rejected association, a store, a query, a C-MOVE and the
        stop each reach rsyslog over UDP as valid audit messages with the
        values of the traffic."""
        await self.collector.start()
        self.write_config()
        archive = await peers.start_dicomqr(
            self, reactor, self.cwd, self.config, self.port,
            "--audit", f"udp:127.0.0.1:{self.collector.udp_port}")
        (header, start), = await self.collector.wait_for(1, "110100")
        self.assertTrue(header.startswith(b"<85>1 "), header)
        self.assertIn(b" dicomtwist ", header)
        self.assertEqual(event_type(start), "110120")
        self.assertEqual(start.find("ActiveParticipant").get("UserID"), "QRSCP")

        # A wrong called AE title: rejected, a Security Alert.
        out, err, code = await peers.run_tool(reactor, peers.dcmtk("echoscu"), [
            "-aet", "INTRUDER", "-aec", "NOTQRSCP", "127.0.0.1", str(self.port)])
        self.assertNotEqual(code, 0)
        (_, alert), = await self.collector.wait_for(1, "110113")
        self.assertEqual(event_type(alert), "110126")
        self.assertEqual(alert.find("EventIdentification").get("EventOutcomeIndicator"), "4")
        performer = alert.findall("ActiveParticipant")[1]
        self.assertEqual((performer.get("UserID"), performer.get("NetworkAccessPointID")),
                         ("INTRUDER", "127.0.0.1"))

        # A store of two instances of one study: one message at the end of
        # the association.
        await self.store_two()
        (_, stored), = await self.collector.wait_for(1, "110104")
        self.assertEqual(stored.find("EventIdentification").get("EventActionCode"), "C")
        source = stored.findall("ActiveParticipant")[0]
        self.assertEqual((source.get("UserID"), source.get("UserIsRequestor"),
                          source.find("RoleIDCode").get("csd-code")),
                         ("STORESCU", "true", "110153"))
        study, patient = stored.findall("ParticipantObjectIdentification")
        self.assertEqual(study.get("ParticipantObjectID"), STUDY)
        sop_class = study.find("ParticipantObjectDescription/SOPClass")
        self.assertEqual((sop_class.get("UID"), sop_class.get("NumberOfInstances")),
                         ("1.2.840.10008.5.1.4.1.1.2", "2"))
        self.assertEqual(sorted(i.get("UID") for i in sop_class.findall("Instance")),
                         [f"{STUDY}.1.1", f"{STUDY}.1.2"])
        self.assertEqual((patient.get("ParticipantObjectID"),
                          patient.find("ParticipantObjectName").text), ("AUDIT-1", "Audit^Anna"))

        # A query.
        await self.dcmtk("findscu", "-aet", "FINDSCU", "-aec", "QRSCP", "-S",
                         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                         "127.0.0.1", str(self.port))
        (_, query), = await self.collector.wait_for(1, "110112")
        queried = query.find("ParticipantObjectIdentification")
        self.assertEqual(queried.get("ParticipantObjectID"), STUDY_FIND)
        import base64

        from pydicom.filebase import DicomBytesIO
        from pydicom.filereader import read_dataset

        syntax = base64.b64decode(queried.find("ParticipantObjectDetail").get("value")).decode()
        identifier = read_dataset(
            DicomBytesIO(base64.b64decode(queried.find("ParticipantObjectQuery").text)),
            is_implicit_VR=syntax == "1.2.840.10008.1.2", is_little_endian=True)
        self.assertEqual((identifier.QueryRetrieveLevel, identifier.StudyInstanceUID),
                         ("STUDY", STUDY))
        self.assertEqual(query.find("ActiveParticipant").get("UserID"), "FINDSCU")

        # A C-MOVE to movescu's own Store SCP.
        received = os.path.join(self.work, "moved")
        os.makedirs(received)
        await self.dcmtk("movescu", "-aet", "MOVESCU", "-aec", "QRSCP", "-aem", "MOVESCU",
                         "+P", str(self.move_port), "-od", received, "-S",
                         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                         "127.0.0.1", str(self.port))
        self.assertEqual(len(os.listdir(received)), 2)
        (_, begin), = await self.collector.wait_for(1, "110102")
        self.assertEqual(begin.find("ParticipantObjectIdentification")
                         .get("ParticipantObjectID"), STUDY)
        transferred = await self.collector.wait_for(2, "110104")
        (_, moved), = [(h, r) for h, r in transferred
                       if r.find("EventIdentification").get("EventActionCode") == "R"]
        self.assertEqual(moved.find("EventIdentification").get("EventOutcomeIndicator"), "0")
        self.assertEqual([(p.get("UserID"), p.get("UserIsRequestor"))
                          for p in moved.findall("ActiveParticipant")],
                         [("QRSCP", "false"), ("MOVESCU", "true")])
        sop_class = moved.find(".//SOPClass")
        self.assertEqual(sop_class.get("NumberOfInstances"), "2")

        await self.stop(archive)
        stopped = await self.collector.wait_for(2, "110100")
        self.assertEqual(event_type(stopped[1][1]), "110121")

    @inline
    async def test_dicomweb(self) -> None:
        """QIDO-RS and WADO-RS requests (curl) are audited as Query, Begin
        Transferring and Instances Transferred, the client by its address."""
        await self.collector.start()
        self.write_config()
        http_port = free_port()
        await peers.start_dicomqr(
            self, reactor, self.cwd, self.config, self.port,
            "--audit", f"udp:127.0.0.1:{self.collector.udp_port}",
            "--http", f"tcp:{http_port}:interface=127.0.0.1")
        await self.store_two()
        await self.collector.wait_for(1, "110104")
        base = f"http://127.0.0.1:{http_port}/dicom-web"
        out, err, code = await peers.run_tool(reactor, "/usr/bin/curl", [
            "-sf", f"{base}/studies?PatientID=AUDIT-1"])
        self.assertEqual(code, 0, err)
        (_, query), = await self.collector.wait_for(1, "110112")
        queried = query.find("ParticipantObjectIdentification")
        self.assertEqual(queried.get("ParticipantObjectID"),
                         "/dicom-web/studies?PatientID=AUDIT-1")
        self.assertEqual(query.find("ActiveParticipant").get("NetworkAccessPointID"),
                         "127.0.0.1")
        out, err, code = await peers.run_tool(reactor, "/usr/bin/curl", [
            "-sf", "-o", os.path.join(self.work, "study.multipart"),
            "-H", 'Accept: multipart/related; type="application/dicom"',
            f"{base}/studies/{STUDY}"])
        self.assertEqual(code, 0, err)
        (_, begin), = await self.collector.wait_for(1, "110102")
        self.assertEqual(begin.find("ParticipantObjectIdentification")
                         .get("ParticipantObjectID"), STUDY)
        sent = [r for _, r in await self.collector.wait_for(2, "110104")
                if r.find("EventIdentification").get("EventActionCode") == "R"]
        self.assertEqual(len(sent), 1)
        self.assertEqual(sent[0].find("EventIdentification").get("EventOutcomeIndicator"), "0")
        # Nothing was lost, as /metrics says.
        out, err, code = await peers.run_tool(reactor, "/usr/bin/curl", [
            "-sf", f"http://127.0.0.1:{http_port}/metrics"])
        self.assertEqual(code, 0, err)
        from prometheus_client.parser import text_string_to_metric_families

        dropped = [sample.value for family in text_string_to_metric_families(out.decode())
                   for sample in family.samples
                   if sample.name == "dicomtwist_audit_messages_dropped_total"]
        self.assertEqual(dropped, [0.0])

    @inline
    async def test_tls_collector(self) -> None:
        """Over TLS (RFC 5425 octet counting) rsyslog receives the same
        messages whole; the collector's certificate is checked against
        audit_tls_ca."""
        await self.collector.start()
        self.write_config(f"audit: tls:127.0.0.1:{self.collector.tls_port}\n"
                          f"audit_tls_ca: {self.pki['ca.crt']}\n")
        archive = await peers.start_dicomqr(self, reactor, self.cwd, self.config, self.port)
        await self.collector.wait_for(1, "110100")
        out, err, code = await peers.run_tool(reactor, peers.dcmtk("echoscu"), [
            "-aec", "WRONG", "127.0.0.1", str(self.port)])
        self.assertNotEqual(code, 0)
        (_, alert), = await self.collector.wait_for(1, "110113")
        self.assertIn("called-ae", alert.find("EventIdentification/EventOutcomeDescription").text)
        await self.stop(archive)
        start, stop = await self.collector.wait_for(2, "110100")
        self.assertEqual([event_type(start[1]), event_type(stop[1])], ["110120", "110121"])

    @inline
    async def test_tls_collector_comes_up_later(self) -> None:
        """Messages queued while the TLS collector is down are delivered, in
        order, once it is up (the sender reconnects)."""
        self.write_config(f"audit: tls:127.0.0.1:{self.collector.tls_port}\n"
                          f"audit_tls_ca: {self.pki['ca.crt']}\n")
        archive = await peers.start_dicomqr(self, reactor, self.cwd, self.config, self.port)
        out, err, code = await peers.run_tool(reactor, peers.dcmtk("echoscu"), [
            "-aec", "WRONG", "127.0.0.1", str(self.port)])
        self.assertNotEqual(code, 0)
        await self.collector.start()
        await self.collector.wait_for(1, "110113", attempts=600)
        self.assertEqual([event_id(r) for _, r in self.collector.messages()],
                         ["110100", "110113"])
        await self.stop(archive)
        await self.collector.wait_for(2, "110100")

    @inline
    async def test_file_and_collector_down(self) -> None:
        """With file: every message is a line of the file; a TLS collector
        that is down slows nothing: echoes are answered and the daemon stops
        at once."""
        audit_file = os.path.join(self.work, "audit.log")
        self.write_config()
        archive = await peers.start_dicomqr(self, reactor, self.cwd, self.config, self.port,
                                            "--audit", f"file:{audit_file}")
        await self.dcmtk("echoscu", "-aec", "QRSCP", "127.0.0.1", str(self.port))
        await self.stop(archive)
        with open(audit_file, "rb") as fp:
            lines = fp.read().splitlines()
        roots = [ET.fromstring(line.partition(BOM)[2]) for line in lines]
        for line in lines:
            self.assertTrue(SCHEMA.validate(etree.fromstring(line.partition(BOM)[2])))
        self.assertEqual([(event_id(r), event_type(r)) for r in roots],
                         [("110100", "110120"), ("110100", "110121")])

        # Nobody listens on the collector's port.
        self.write_config(f"audit: tls:127.0.0.1:{free_port()}\n"
                          f"audit_tls_ca: {self.pki['ca.crt']}\naudit_queue: 2\n")
        archive = await peers.start_dicomqr(self, reactor, self.cwd, self.config, self.port)
        for _ in range(3):
            await self.dcmtk("echoscu", "-aec", "QRSCP", "127.0.0.1", str(self.port))
        start = reactor.seconds()
        await self.stop(archive)
        self.assertLess(reactor.seconds() - start, 10)
