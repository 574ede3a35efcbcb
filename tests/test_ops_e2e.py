"""End to end: operating the real daemon.

- ``/metrics`` of ``twistd -n dicomqr --http ...`` after DCMTK traffic
  (echoscu, storescu, findscu, movescu to a DCMTK storescp, a rejected
  association), parsed with prometheus-client's parser: exact increments.
- ``--log-format json`` under twistd and under the ``dicomqr`` console
  script: every line a JSON object, association events with their fields.
- Start-up failures (a port in use, an instance directory that cannot be
  written, an index that cannot be opened, a TLS key that cannot be read):
  one line on standard error naming the cause and a non-zero exit status,
  for ``twistd dicomqr`` and ``dicomqr`` alike.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from dicomtwist.association import file_dataset
from dicomtwist.storage.files import instance_path
from tests import peers
from tests.helpers import free_port
from tests.test_dicomqr_e2e import ROOT, TWISTD, DicomqrCase, generate, inline

#: The ``dicomqr`` console script, run from the source tree.
DICOMQR = [sys.executable, "-c", "import sys; from dicomtwist.tap import run;"
           " sys.argv[0] = 'dicomqr'; run()"]


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition: ``(name, sorted labels) -> value``."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsEndToEndTests(DicomqrCase):
    """The daemon's /metrics after real DICOM traffic."""

    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.http_port = free_port()
        with open(self.config) as fp:
            text = fp.read()
        text = text.replace("[DEFAULT]\n", "[DEFAULT]\nmetrics_ae_titles: STORESCU\n"
                                           "require_called_aet: true\n", 1)
        with open(self.config, "w") as fp:
            fp.write(text)

    def twistd_args(self, *args: str) -> list[str]:
        """The daemon with an HTTP port."""
        return super().twistd_args("--http", f"tcp:{self.http_port}:interface=127.0.0.1",
                                   *args)

    async def scrape(self) -> dict[tuple[str, tuple], float]:
        """GET /metrics and parse it."""
        response = await treq.get(f"http://127.0.0.1:{self.http_port}/metrics", persistent=False)
        body = await treq.content(response)
        self.assertEqual(response.code, 200, body)
        return parse(body.decode("utf-8"))

    async def settled(self) -> dict[tuple[str, tuple], float]:
        """Scrape until no association is active (the daemon sees a
        connection close a moment after the tool that released it exits)."""
        for _ in range(200):
            found = await self.scrape()
            if found.get(("dicomtwist_associations_active", ())) == 0:
                return found
            await deferLater(reactor, 0.05, lambda: None)
        self.fail("associations still active")

    @inline
    async def test_traffic_counted_exactly(self) -> None:
        """echoscu, storescu (6 instances), findscu, movescu (6 sub-operations)
        and a refused called AE title move exactly their counters."""
        await self.start_archive()
        files = sorted(p for p in generate(self.data) if "E2E-P1-1-" in p)
        self.assertEqual(len(files), 6)
        received = os.path.join(self.work, "received")
        os.makedirs(received)
        storescp = peers.start_peer(self, reactor, peers.dcmtk("storescp"),
                                    ["-aet", "STORESCP", "-od", received,
                                     str(self.storescp_port)], "storescp")
        await peers.wait_for_port(reactor, self.storescp_port, storescp)
        before = await self.settled()
        self.assertEqual(before[("dicomtwist_associations_released_total", ())], 0)

        await self.tool("echoscu")
        await self.tool("storescu", files=files)
        studies = await self.findscu("-S", "QueryRetrieveLevel=STUDY", "PatientID=E2E-P1",
                                     "StudyInstanceUID")
        self.assertEqual([ds.StudyInstanceUID for ds in studies], [f"{ROOT}.1.1"])
        output = await self.tool("movescu", "-S", "-aem", "STORESCP",
                                 "-k", "QueryRetrieveLevel=STUDY",
                                 "-k", f"StudyInstanceUID={ROOT}.1.1")
        self.assertEqual(len(os.listdir(received)), 6, output)
        out, err, code = await peers.run_tool(
            reactor, peers.dcmtk("echoscu"), ["-aec", "WRONG", peers.LOCALHOST, str(self.port)])
        self.assertNotEqual(code, 0)

        after = await self.settled()

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        accepted = "dicomtwist_associations_accepted_total"
        self.assertEqual(delta(accepted, calling_ae="STORESCU"), 1)
        self.assertEqual(delta(accepted, calling_ae="other"), 3)
        self.assertEqual(delta("dicomtwist_associations_rejected_total", reason="called-ae"), 1)
        self.assertEqual(delta("dicomtwist_associations_released_total"), 4)
        self.assertEqual(delta("dicomtwist_associations_aborted_total"), 0)
        operations = "dicomtwist_dimse_operations_total"
        for service, count in (("echo", 1), ("store", 6), ("find", 1), ("move", 1)):
            self.assertEqual(delta(operations, service=service, outcome="success",
                                   status="0x0000"), count, service)
        self.assertEqual(delta("dicomtwist_instances_stored_total", via="dimse",
                               calling_ae="STORESCU"), 6)
        instances = os.path.join(self.cwd, "instances")
        uids = [f"{ROOT}.1.1.{se}.{i}" for se in (1, 2) for i in (1, 2, 3)]
        stored = sum(os.path.getsize(instance_path(instances, uid)) for uid in uids)
        self.assertEqual(delta("dicomtwist_stored_bytes_total", via="dimse"), stored)
        for part in ("total", "receive", "fsync", "commit"):
            self.assertEqual(delta("dicomtwist_store_seconds_count", part=part), 6, part)
        self.assertEqual(delta("dicomtwist_queries_total", via="dimse", level="STUDY",
                               outcome="success"), 1)
        self.assertEqual(delta("dicomtwist_query_matches_total", via="dimse"), 1)
        self.assertEqual(delta("dicomtwist_query_seconds_count", via="dimse"), 1)
        self.assertEqual(delta("dicomtwist_sub_operations_total", result="success"), 6)
        self.assertEqual(delta("dicomtwist_instances_sent_total", via="dimse"), 6)
        sent = sum(file_dataset(instance_path(instances, uid)).length for uid in uids)
        self.assertEqual(delta("dicomtwist_sent_bytes_total", via="dimse"), sent)
        self.assertEqual(delta("dicomtwist_retrieves_total", service="move",
                               outcome="success"), 1)
        for level, count in (("patients", 1), ("studies", 1), ("series", 2),
                             ("instances", 6)):
            self.assertEqual(after[("dicomtwist_index_entities", (("level", level),))], count)
        self.assertGreater(after[("dicomtwist_instance_directory_free_bytes", ())], 0)
        self.assertEqual(after[("dicomtwist_group_commit_queued", ())], 0)
        self.assertGreaterEqual(delta("dicomtwist_http_requests_total", route="metrics",
                                      method="GET", code="200"), 1)

        response = await treq.get(f"http://127.0.0.1:{self.http_port}/readyz", persistent=False)
        self.assertEqual((response.code, await treq.content(response)), (200, b"ready\n"))
        response = await treq.get(f"http://127.0.0.1:{self.http_port}/healthz", persistent=False)
        self.assertEqual((response.code, await treq.content(response)), (200, b"ok\n"))


class JsonLogTests(DicomqrCase):
    """--log-format json under twistd and the console script."""

    timeout = 60

    def check_lines(self, text: str) -> list[dict]:
        """Every line is a JSON object with the four keys; returns them."""
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        self.assertTrue(records)
        for record in records:
            self.assertLessEqual({"timestamp", "level", "namespace", "event"}, set(record))
            self.assertTrue(record["timestamp"].endswith("Z"), record)
        return records

    def check_association(self, records: list[dict]) -> None:
        """The accepted echoscu association has its structured fields."""
        accepted = [r for r in records if r["event"].startswith("Association Accepted")]
        self.assertEqual(len(accepted), 1, records)
        record = accepted[0]
        self.assertEqual((record["level"], record["peer_host"], record["calling_ae"],
                          record["called_ae"]), ("info", "127.0.0.1", "ECHOSCU", "QRSCP"))
        self.assertIsInstance(record["association_id"], int)
        released = [r for r in records if r["event"].startswith("Association Released")]
        self.assertEqual([r["association_id"] for r in released], [record["association_id"]])

    @inline
    async def test_twistd(self) -> None:
        """twistd -n writes JSON lines to standard output."""
        process = peers.PeerProcess(reactor, "twistd dicomqr")
        reactor.spawnProcess(process, TWISTD[0],
                             [TWISTD[0], *self.twistd_args("--log-format", "json", "-v")],
                             env=self.env(), path=self.cwd)
        self.addCleanup(process.stop)
        await peers.wait_for_port(reactor, self.port, process, attempts=400)
        await self.tool("echoscu")
        await process.stop()
        self.check_association(self.check_lines(process.out.decode("utf-8")))

    @inline
    async def test_console_script(self) -> None:
        """dicomqr writes JSON lines to standard error."""
        process = peers.PeerProcess(reactor, "dicomqr")
        reactor.spawnProcess(process, DICOMQR[0],
                             [*DICOMQR, "-c", self.config, "--log-format", "json", "-v"],
                             env=self.env(), path=self.cwd)
        self.addCleanup(process.stop)
        await peers.wait_for_port(reactor, self.port, process, attempts=400)
        await self.tool("echoscu")
        await process.stop()
        self.assertEqual(process.out, b"")
        self.check_association(self.check_lines(process.err.decode("utf-8")))


class StartupFailureTests(TestCase):
    """What stops the archive at start is one line on standard error."""

    timeout = 120

    def setUp(self) -> None:
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        self.port = free_port()

    async def run_both(self, *args: str) -> list[str]:
        """Run ``twistd -n dicomqr`` and ``dicomqr`` with ``args``; each must
        exit non-zero with one line on standard error and nothing on standard
        output; returns the two lines."""
        lines = []
        for argv in ([*TWISTD, "-n", "--pidfile=", "dicomqr"], DICOMQR):
            out, err, code = await getProcessOutputAndValue(
                argv[0], [*argv[1:], *args], env=peers.daemon_env(), path=self.cwd,
                reactor=reactor).addTimeout(60, reactor)
            text = err.decode("utf-8", "replace")
            self.assertNotEqual(code, 0, text)
            self.assertEqual(out, b"", text)
            self.assertEqual(len(text.splitlines()), 1, text)
            lines.append(text.strip())
        return lines

    @inline
    async def test_port_in_use(self) -> None:
        """A port another process listens on is named."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", self.port))
        taken.listen()
        lines = await self.run_both("--port", str(self.port), "-ba", "127.0.0.1")
        self.assertEqual(lines, [f"dicomqr: cannot listen on tcp:{self.port}:interface="
                                 f"127.0.0.1: Address already in use"] * 2)
        self.assertEqual(os.listdir(self.cwd), [])

    @inline
    async def test_http_port_in_use(self) -> None:
        """The HTTP port in use is named too."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        http_port = free_port()
        taken.bind(("127.0.0.1", http_port))
        taken.listen()
        lines = await self.run_both("--port", str(self.port), "--http",
                                    f"tcp:{http_port}:interface=127.0.0.1")
        self.assertEqual(lines, [f"dicomqr: cannot listen on tcp:{http_port}:interface="
                                 f"127.0.0.1: Address already in use"] * 2)

    @inline
    async def test_instance_directory_not_writable(self) -> None:
        """An instance directory where no file can be created is named."""
        lines = await self.run_both("--port", str(self.port), "--instance-location", "/proc/1")
        for line in lines:
            self.assertTrue(line.startswith("dicomqr: cannot write in the instance directory"
                                            " /proc/1: "), line)

    @inline
    async def test_index_cannot_be_opened(self) -> None:
        """An index that cannot be opened is named."""
        index = os.path.join(self.cwd, "index.sqlite")
        os.makedirs(index)
        lines = await self.run_both("--port", str(self.port), "--database-location", index)
        self.assertEqual(lines, [f"dicomqr: cannot open the index {index}: unable to open"
                                 " database file"] * 2)

    @inline
    async def test_tls_key_unreadable(self) -> None:
        """A TLS key that cannot be read is named."""
        from tests.test_tls import OPENSSL, _openssl

        self.assertTrue(os.access(OPENSSL, os.X_OK))
        _openssl(self.cwd, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-subj", "/CN=dicomtwist", "-keyout", "key.pem", "-out", "cert.pem")
        missing = os.path.join(self.cwd, "missing.pem")
        lines = await self.run_both("--listen", f"ssl:{self.port}", "--tls-cert",
                                    os.path.join(self.cwd, "cert.pem"), "--tls-key", missing)
        for line in lines:
            self.assertTrue(line.startswith("dicomqr: error: "), line)
            self.assertIn(f"cannot read the private key '{missing}': No such file or"
                          " directory", line)
