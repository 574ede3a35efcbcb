"""Tests for dicomtwist.metrics and dicomtwist.web.ops: each event moves
the right counter, the archive's traffic is counted exactly, and the
health checks answer 503 with the reason of each failing condition.

Expositions are parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import hashlib
import os

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import events
from dicomtwist.metrics import ArchiveMetrics, status_label
from dicomtwist.services.store import ArchiveStore
from dicomtwist.status import Status
from dicomtwist.storage.index import Index
from dicomtwist.web import ops
from dicomtwist.web.site import build_site
from tests.helpers import CT_IMAGE_STORAGE
from tests.test_dicomweb import WebTestCase
from tests.test_qr import EXPLICIT, QUERY_CONTEXTS, QueryRetrieveTestCase, query
from tests.test_store import InlinePool, InlineReactor


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition: ``(name, sorted labels) -> value``."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: ArchiveMetrics, name: str, **labels: str) -> float:
    """One sample of ``metrics``' exposition (0 when absent)."""
    from prometheus_client import generate_latest

    return samples(generate_latest(metrics.registry).decode()).get(
        (name, tuple(sorted(labels.items()))), 0.0)


class EventCountTests(SynchronousTestCase):
    """Each event moves its own counter, with bounded label values."""

    def setUp(self) -> None:
        self.metrics = ArchiveMetrics(ae_titles=("CT1",))

    def test_associations(self) -> None:
        """Accepted (allow-listed AE titles by name, others as "other"),
        rejected by reason, released and aborted, and the active gauge."""
        m = self.metrics
        m.observe(events.AssociationAccepted(1, "10.0.0.1", 5000, "CT1", "QRSCP"))
        m.observe(events.AssociationAccepted(2, "10.0.0.2", 5000, "STRANGER", "QRSCP"))
        m.observe(events.AssociationAccepted(3, "10.0.0.3", 5000, "ANOTHER", "QRSCP"))
        self.assertEqual(value(m, "dicomtwist_associations_accepted_total", calling_ae="CT1"), 1)
        self.assertEqual(value(m, "dicomtwist_associations_accepted_total", calling_ae="other"),
                         2)
        self.assertEqual(value(m, "dicomtwist_associations_active"), 3)
        m.observe(events.AssociationEnded(1, "10.0.0.1", "CT1", "released"))
        m.observe(events.AssociationEnded(2, "10.0.0.2", "STRANGER", "aborted", "peer"))
        self.assertEqual(value(m, "dicomtwist_associations_released_total"), 1)
        self.assertEqual(value(m, "dicomtwist_associations_aborted_total"), 1)
        self.assertEqual(value(m, "dicomtwist_associations_active"), 1)
        m.observe(events.AssociationRejected(4, "10.0.0.4", "X", "QRSCP", "calling-ae"))
        m.observe(events.AssociationRejected(5, "10.0.0.4", "X", "QRSCP", "limit"))
        m.observe(events.AssociationRejected(6, "10.0.0.4", "X", "QRSCP", "unheard-of"))
        for reason in ("calling-ae", "limit", "other"):
            self.assertEqual(value(m, "dicomtwist_associations_rejected_total", reason=reason), 1)

    def test_operations(self) -> None:
        """DIMSE operations by service, outcome and named status; an
        unnamed status is "other"; their durations go to a histogram."""
        m = self.metrics
        m.observe(events.OperationCompleted(1, "store", 0, 0.002))
        m.observe(events.OperationCompleted(1, "store", 0xA700, 0.001))
        m.observe(events.OperationCompleted(1, "find", 0xFE00, 0.5))
        m.observe(events.OperationCompleted(1, "find", 0xC123, 0.5))
        name = "dicomtwist_dimse_operations_total"
        self.assertEqual(value(m, name, service="store", outcome="success", status="0x0000"), 1)
        self.assertEqual(value(m, name, service="store", outcome="failure", status="0xA700"), 1)
        self.assertEqual(value(m, name, service="find", outcome="cancel", status="0xFE00"), 1)
        self.assertEqual(value(m, name, service="find", outcome="failure", status="other"), 1)
        self.assertEqual(value(m, "dicomtwist_dimse_operation_seconds_count", service="find"), 2)
        self.assertEqual(value(m, "dicomtwist_dimse_operation_seconds_sum", service="find"), 1.0)
        self.assertEqual(status_label(0xB000), "0xB000")

    def test_stores(self) -> None:
        """Instances and bytes stored by way, the latency of each part, failures by status."""
        m = self.metrics
        m.observe(events.InstanceStored("dimse", "h", "CT1", "1.2", "1.2.3", "1.2.4", "P", "N",
                                        1000, receive=0.01, fsync=0.02, commit=0.03,
                                        total=0.07))
        m.observe(events.InstanceStored("http", "h", "", "1.2", "1.2.5", "1.2.4", "P", "N",
                                        500, total=0.2))
        m.observe(events.StoreFailed("dimse", "h", "X", "1.2", "1.2.6", 0xA700, "disk"))
        self.assertEqual(value(m, "dicomtwist_instances_stored_total", via="dimse",
                               calling_ae="CT1"), 1)
        self.assertEqual(value(m, "dicomtwist_instances_stored_total", via="http",
                               calling_ae=""), 1)
        self.assertEqual(value(m, "dicomtwist_stored_bytes_total", via="dimse"), 1000)
        self.assertEqual(value(m, "dicomtwist_stored_bytes_total", via="http"), 500)
        for part, seconds in (("receive", 0.01), ("fsync", 0.02), ("commit", 0.03)):
            self.assertAlmostEqual(value(m, "dicomtwist_store_seconds_sum", part=part), seconds)
        self.assertAlmostEqual(value(m, "dicomtwist_store_seconds_sum", part="total"), 0.27)
        self.assertEqual(value(m, "dicomtwist_store_seconds_count", part="total"), 2)
        self.assertEqual(value(m, "dicomtwist_store_seconds_bucket", part="total", le="0.1"), 1)
        self.assertEqual(value(m, "dicomtwist_store_failures_total", via="dimse",
                               status="0xA700"), 1)

    def test_sent_and_retrieves(self) -> None:
        """Sub-operations by result; only successful ones count as sent."""
        m = self.metrics
        m.observe(events.InstanceSent("dimse", "D", "h", "1.2", "1.3", "", "", 700, 0))
        m.observe(events.InstanceSent("dimse", "D", "h", "1.2", "1.4", "", "", 700, 0xB007))
        m.observe(events.InstanceSent("dimse", "D", "h", "1.2", "1.5", "", "", 700, 0xA702))
        m.observe(events.InstanceSent("http", "", "h", "1.2", "1.6", "", "", 300))
        for result in ("success", "warning", "failure"):
            self.assertEqual(value(m, "dicomtwist_sub_operations_total", result=result), 1)
        self.assertEqual(value(m, "dicomtwist_instances_sent_total", via="dimse"), 2)
        self.assertEqual(value(m, "dicomtwist_sent_bytes_total", via="dimse"), 1400)
        self.assertEqual(value(m, "dicomtwist_instances_sent_total", via="http"), 1)
        m.observe(events.RetrieveEnded("dimse", "move", "h", "A", "D", "h", (), (), 1, 1, 1,
                                       0xB000))
        self.assertEqual(value(m, "dicomtwist_retrieves_total", service="move",
                               outcome="warning"), 1)

    def test_queries(self) -> None:
        """Queries by way, bounded level and outcome; latency and matches."""
        m = self.metrics
        m.observe(events.QueryPerformed("dimse", "h", "A", "1.2", "STUDY", b"", 3, 0, 0.004))
        m.observe(events.QueryPerformed("dimse", "h", "A", "1.2", "BOGUS", b"", 0, 0xC000, 0.1))
        m.observe(events.QueryPerformed("http", "h", "", "", "SERIES", b"/", 5, 0, 0.01))
        self.assertEqual(value(m, "dicomtwist_queries_total", via="dimse", level="STUDY",
                               outcome="success"), 1)
        self.assertEqual(value(m, "dicomtwist_queries_total", via="dimse", level="other",
                               outcome="failure"), 1)
        self.assertEqual(value(m, "dicomtwist_query_matches_total", via="dimse"), 3)
        self.assertEqual(value(m, "dicomtwist_query_seconds_count", via="dimse"), 2)
        self.assertEqual(value(m, "dicomtwist_query_seconds_bucket", via="dimse",
                               le="0.005"), 1)
        self.assertEqual(value(m, "dicomtwist_queries_total", via="http", level="SERIES",
                               outcome="success"), 1)

    def test_http_and_authentication(self) -> None:
        """HTTP requests by route, method and code; unknown methods are
        "other"; authentication failures by way."""
        m = self.metrics
        m.observe(events.HttpRequestServed("qido", "GET", 200, 0.01))
        m.observe(events.HttpRequestServed("qido", "BREW", 405, 0.01))
        m.observe(events.AuthenticationFailed("http", "h", "bob", "invalid credentials"))
        m.observe(events.AuthenticationFailed("dimse", "h", "", "TLS handshake"))
        self.assertEqual(value(m, "dicomtwist_http_requests_total", route="qido", method="GET",
                               code="200"), 1)
        self.assertEqual(value(m, "dicomtwist_http_requests_total", route="qido",
                               method="other", code="405"), 1)
        self.assertEqual(value(m, "dicomtwist_http_request_seconds_count", route="qido"), 2)
        self.assertEqual(value(m, "dicomtwist_authentication_failures_total", via="http"), 1)
        self.assertEqual(value(m, "dicomtwist_authentication_failures_total", via="dimse"), 1)

    def test_levels(self) -> None:
        """Thread-pool, group-commit and index gauges, free space and audit
        drops are read when collected (the index and disk after a refresh)."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        index = Index(os.path.join(base, "index.sqlite"))
        self.addCleanup(index.close)

        class Audit:
            dropped = 7

        class Pool:
            max = 4
            working = [1, 2]

        store = ArchiveStore(InlineReactor(), InlinePool(), base, index)
        store._queue.extend([object(), object()])
        m = ArchiveMetrics(pools={"store": Pool()}, store=store, index=index, directory=base,
                           reactor=InlineReactor(), pool=InlinePool(), audit=Audit())
        self.assertEqual(value(m, "dicomtwist_index_entities", level="patients"), 0)
        self.successResultOf(m.refresh())
        self.assertEqual(value(m, "dicomtwist_thread_pool_busy", pool="store"), 2)
        self.assertEqual(value(m, "dicomtwist_thread_pool_max", pool="store"), 4)
        self.assertEqual(value(m, "dicomtwist_group_commit_queued"), 2)
        self.assertEqual(value(m, "dicomtwist_audit_messages_dropped_total"), 7)
        for level in ("patients", "studies", "series", "instances"):
            self.assertEqual(samples_has(m, "dicomtwist_index_entities", level=level), True)
        self.assertGreater(value(m, "dicomtwist_instance_directory_free_bytes"), 0)


class CacheTests(SynchronousTestCase):
    """Index counts are read again after LEVELS_TTL or once an instance is stored."""

    def test_cached(self) -> None:
        """Two scrapes within the TTL count once; a store or the TTL reads again."""
        from dicomtwist.metrics import LEVELS_TTL

        counted: list[str] = []

        class Counting:
            def count(self, level: str) -> int:
                counted.append(level)
                return 1

        now = [100.0]
        m = ArchiveMetrics(index=Counting(), reactor=InlineReactor(), pool=InlinePool(),
                           clock=lambda: now[0])
        self.successResultOf(m.refresh())
        self.assertEqual(counted, ["PATIENT", "STUDY", "SERIES", "IMAGE"])
        self.successResultOf(m.refresh())
        self.assertEqual(len(counted), 4)
        m.observe(events.InstanceStored("dimse", "h", "A", "1.2", "1.3", "1.4", "P", "N", 1))
        self.successResultOf(m.refresh())
        self.assertEqual(len(counted), 8)
        now[0] += LEVELS_TTL
        self.successResultOf(m.refresh())
        self.assertEqual(len(counted), 12)
        self.assertEqual(value(m, "dicomtwist_index_entities", level="series"), 1)


def samples_has(metrics: ArchiveMetrics, name: str, **labels: str) -> bool:
    """Whether the exposition has the sample at all."""
    from prometheus_client import generate_latest

    return (name, tuple(sorted(labels.items()))) in samples(
        generate_latest(metrics.registry).decode())


class ArchiveTrafficTests(QueryRetrieveTestCase):
    """The archive's own factory, with metrics subscribed: exact increments."""

    def setUp(self) -> None:
        super().setUp()
        self.metrics = ArchiveMetrics(index=self.index, directory=self.instances,
                                      reactor=self.reactor, pool=self.pool,
                                      store=self.factory.store,
                                      active=lambda: len(self.factory.active))
        self.metrics.subscribe()
        self.addCleanup(self.metrics.unsubscribe)

    def test_store_find_get(self) -> None:
        """A store, a C-FIND and a C-GET on two associations move exactly
        their counters; the index size counts what is stored."""
        from tests.helpers import ct_dataset

        m = self.metrics
        client, pump = self.connect([(CT_IMAGE_STORAGE, EXPLICIT)])
        self.assertEqual(value(m, "dicomtwist_associations_active"), 1)
        d = client.store(ct_dataset(64, PatientID="PZ"))
        pump.flush()
        self.assertEqual(self.successResultOf(d).status, Status.SUCCESS)
        self.release(client, pump)
        self.find(query("STUDY", PatientID="PA", StudyInstanceUID=""))
        client, pump = self.connect(QUERY_CONTEXTS + [(CT_IMAGE_STORAGE, EXPLICIT)],
                                    scp_role_classes=[CT_IMAGE_STORAGE])
        d = client.get(query("STUDY", StudyInstanceUID="1.2.3.1.1"),
                       "1.2.840.10008.5.1.4.1.2.2.3", on_store=lambda r: Status.SUCCESS)
        pump.flush()
        self.successResultOf(d)
        self.release(client, pump)
        self.successResultOf(m.refresh())
        self.assertEqual(value(m, "dicomtwist_associations_accepted_total", calling_ae="other"),
                         3)
        self.assertEqual(value(m, "dicomtwist_associations_released_total"), 3)
        self.assertEqual(value(m, "dicomtwist_associations_active"), 0)
        ops_name = "dicomtwist_dimse_operations_total"
        self.assertEqual(value(m, ops_name, service="store", outcome="success",
                               status="0x0000"), 1)
        self.assertEqual(value(m, ops_name, service="find", outcome="success",
                               status="0x0000"), 1)
        self.assertEqual(value(m, ops_name, service="get", outcome="success",
                               status="0x0000"), 1)
        self.assertEqual(value(m, "dicomtwist_instances_stored_total", via="dimse",
                               calling_ae="other"), 1)
        self.assertEqual(value(m, "dicomtwist_store_seconds_count", part="commit"), 1)
        self.assertEqual(value(m, "dicomtwist_queries_total", via="dimse", level="STUDY",
                               outcome="success"), 1)
        self.assertEqual(value(m, "dicomtwist_query_matches_total", via="dimse"), 2)
        self.assertEqual(value(m, "dicomtwist_sub_operations_total", result="success"), 3)
        self.assertEqual(value(m, "dicomtwist_instances_sent_total", via="dimse"), 3)
        self.assertEqual(value(m, "dicomtwist_index_entities", level="patients"), 3)
        self.assertEqual(value(m, "dicomtwist_index_entities", level="instances"),
                         len(self.datasets) + 1)


class HttpTlsTests(SynchronousTestCase):
    """A failed TLS handshake on the HTTP port is an authentication failure."""

    def test_handshake_failure_published(self) -> None:
        """The channel's connection lost to an OpenSSL error publishes it."""
        from OpenSSL import SSL
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure
        from twisted.web.resource import Resource

        from dicomtwist.web.server import Limits
        from dicomtwist.web.server import build_site as make_site

        seen: list = []
        self.addCleanup(events.bus.subscribe(seen.append))
        site = make_site(Resource(), Limits(), MemoryReactorClock())
        channel = site.buildProtocol(IPv4Address("TCP", "10.9.8.7", 5000))
        channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.9.8.7",
                                                                       5000)))
        channel.connectionLost(Failure(SSL.Error([("SSL routines", "", "no shared cipher")])))
        self.assertEqual(seen, [events.AuthenticationFailed(
            "http", "10.9.8.7", "", "TLS handshake: no shared cipher")])


class Never:
    """A thread pool that never runs what it is given (a hung check)."""

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        """Drop it."""


class ReadinessTests(SynchronousTestCase):
    """Each failing condition gives its own reason; all passing: ready."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.index = Index(os.path.join(self.base, "index.sqlite"))
        self.addCleanup(self.index.close)

    def run_checks(self, checks: ops.ReadinessChecks) -> list[str]:
        return self.successResultOf(checks.run())

    def test_ready(self) -> None:
        """A reachable index, a writable directory and enough space: no reason."""
        checks = ops.ReadinessChecks(InlineReactor(), InlinePool(), self.index, self.base,
                                     1024, free_bytes=lambda d: 2048)
        self.assertEqual(self.run_checks(checks), [])
        self.assertEqual(sorted(os.listdir(self.base)), ["index.sqlite", "index.sqlite-shm",
                                                         "index.sqlite-wal"])

    def test_index_unreachable(self) -> None:
        """An index that fails its query is named."""
        self.index.close()
        checks = ops.ReadinessChecks(InlineReactor(), InlinePool(), self.index, self.base)
        reasons = self.run_checks(checks)
        self.assertEqual(len(reasons), 1)
        self.assertTrue(reasons[0].startswith("index not reachable: "), reasons)

    def test_index_hangs(self) -> None:
        """Checks that do not answer within the timeout are reasons too."""
        reactor = MemoryReactorClock()
        checks = ops.ReadinessChecks(reactor, Never(), self.index, self.base)
        d = checks.run()
        self.assertNoResult(d)
        reactor.advance(ops.CHECK_TIMEOUT)
        self.assertEqual(self.successResultOf(d), [
            "index: no answer in 5 s", "instance directory: no answer in 5 s",
            "free disk space: no answer in 5 s"])

    def test_directory_not_writable(self) -> None:
        """An instance directory where no file can be created is named."""
        missing = os.path.join(self.base, "gone")
        checks = ops.ReadinessChecks(InlineReactor(), InlinePool(), self.index, missing)
        self.assertEqual(self.run_checks(checks), [
            f"instance directory {missing} not writable: No such file or directory"])

    def test_disk_below_floor(self) -> None:
        """Free space under the floor is named with both figures."""
        checks = ops.ReadinessChecks(InlineReactor(), InlinePool(), self.index, self.base,
                                     100 * 1024 * 1024, free_bytes=lambda d: 40 * 1024 * 1024)
        self.assertEqual(self.run_checks(checks), [
            "free disk space 40 MB is below the floor of 100 MB"])


TOKEN = "scrape-me"


class OpsHttpTests(WebTestCase):
    """/metrics, /healthz and /readyz through the archive's Site."""

    def setUp(self) -> None:
        super().setUp()
        tokens = os.path.join(self.base, "tokens")
        with open(tokens, "w") as fp:
            fp.write(f"prometheus:{hashlib.sha256(TOKEN.encode()).hexdigest()}:metrics\n"
                     f"reader:{hashlib.sha256(b'reader').hexdigest()}:query\n")
        self.config.http_tokens = tokens
        self.metrics = ArchiveMetrics(index=self.index, directory=self.directory,
                                      reactor=self.reactor, pool=self.pool, store=self.store)
        self.metrics.subscribe()
        self.addCleanup(self.metrics.unsubscribe)
        self.site = build_site(self.config, self.reactor, self.pool, self.pool, self.index,
                               self.store, metrics=self.metrics)
        from treq.client import HTTPClient
        from treq.testing import RequestTraversalAgent

        from tests.test_dicomweb import body_producer

        self.agent = RequestTraversalAgent(self.site.resource)
        self.agent._serverFactory = self.site
        self.client = HTTPClient(self.agent, data_to_body_producer=body_producer)

    def scrape(self) -> dict[tuple[str, tuple], float]:
        response = self.get("http://127.0.0.1/metrics", authorization=f"Bearer {TOKEN}")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.header("content-type").startswith("text/plain; version="))
        return samples(response.body.decode())

    def test_metrics_need_the_permission(self) -> None:
        """/metrics obeys the configured tokens: none is 401, a token
        without the metrics permission 403, with it 200."""
        self.assertEqual(self.get("http://127.0.0.1/metrics").code, 401)
        self.assertEqual(self.get("http://127.0.0.1/metrics",
                                  authorization="Bearer reader").code, 403)
        self.scrape()

    def test_http_requests_counted(self) -> None:
        """QIDO-RS requests and refused credentials are counted by route and code."""
        self.assertEqual(self.get("/studies", authorization="Bearer reader").code, 200)
        self.assertEqual(self.get("/studies", authorization="Bearer wrong").code, 401)
        found = self.scrape()
        key = ("dicomtwist_http_requests_total",
               (("code", "200"), ("method", "GET"), ("route", "qido")))
        self.assertEqual(found[key], 1)
        key = ("dicomtwist_http_requests_total",
               (("code", "401"), ("method", "GET"), ("route", "qido")))
        self.assertEqual(found[key], 1)
        self.assertEqual(found[("dicomtwist_authentication_failures_total",
                                (("via", "http"),))], 1)
        self.assertEqual(found[("dicomtwist_queries_total",
                                (("level", "STUDY"), ("outcome", "success"),
                                 ("via", "http")))], 1)

    def test_stow_and_wado_counted(self) -> None:
        """A STOW-RS store and a WADO-RS retrieve move the HTTP store and sent
        counters; the web page's paths count under route "ui"."""
        from pydicom import dcmread

        from tests.test_dicomweb import CT, file_bytes

        auth = {"authorization": f"Bearer {TOKEN}"}
        self.config.http_tokens = None
        self.site = build_site(self.config, self.reactor, self.pool, self.pool, self.index,
                               self.store, metrics=self.metrics)
        from treq.client import HTTPClient
        from treq.testing import RequestTraversalAgent

        from tests.test_dicomweb import body_producer

        self.agent = RequestTraversalAgent(self.site.resource)
        self.agent._serverFactory = self.site
        self.client = HTTPClient(self.agent, data_to_body_producer=body_producer)
        response = self.stow([("application/dicom", file_bytes(CT))])
        self.assertEqual(response.code, 200, response.body)
        study = dcmread(CT).StudyInstanceUID
        response = self.get(f"/studies/{study}", accept="multipart/related;"
                            " type=\"application/dicom\"")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.get("http://127.0.0.1/ui/no-such-file.js").code, 404)
        found = samples(self.get("http://127.0.0.1/metrics", **auth).body.decode())
        self.assertEqual(found[("dicomtwist_instances_stored_total",
                                (("calling_ae", ""), ("via", "http")))], 1)
        self.assertEqual(found[("dicomtwist_instances_sent_total", (("via", "http"),))], 1)
        self.assertEqual(found[("dicomtwist_sent_bytes_total", (("via", "http"),))],
                         os.path.getsize(self.stored_path(dcmread(CT).SOPInstanceUID)))
        self.assertEqual(found[("dicomtwist_retrieves_total",
                                (("outcome", "success"), ("service", "wado")))], 1)
        for route, method, code in (("stow", "POST", "200"), ("wado", "GET", "200"),
                                    ("ui", "GET", "404")):
            self.assertEqual(found[("dicomtwist_http_requests_total",
                                    (("code", code), ("method", method),
                                     ("route", route)))], 1, route)

    def test_health(self) -> None:
        """/healthz answers ok without credentials; /readyz ready."""
        response = self.get("http://127.0.0.1/healthz")
        self.assertEqual((response.code, response.body), (200, b"ok\n"))
        response = self.get("http://127.0.0.1/readyz")
        self.assertEqual((response.code, response.body), (200, b"ready\n"))

    def test_not_ready(self) -> None:
        """/readyz answers 503 with the reasons, one a line."""
        self.index.close()
        self.config.min_free_disk = 10 ** 9
        self.site = build_site(self.config, self.reactor, self.pool, self.pool, self.index,
                               self.store, metrics=self.metrics)
        from treq.testing import RequestTraversalAgent

        self.agent = RequestTraversalAgent(self.site.resource)
        self.agent._serverFactory = self.site
        from treq.client import HTTPClient

        from tests.test_dicomweb import body_producer

        self.client = HTTPClient(self.agent, data_to_body_producer=body_producer)
        response = self.get("http://127.0.0.1/readyz")
        self.assertEqual(response.code, 503)
        lines = response.body.decode().splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("index not reachable: "), lines)
        self.assertTrue(lines[1].startswith("free disk space "), lines)
        self.assertTrue(lines[1].endswith(" is below the floor of 1000000000 MB"), lines)


class _Pool:
    """A thread pool's state as :func:`dicomtwist.metrics._pool_state` reads it."""

    def __init__(self, working: int, size: int) -> None:
        self.working = [object()] * working
        self.max = size


class _Clock:
    """prometheus-client's wall clock, for the timestamps of ``mostrecent``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class SharedMetricsTests(SynchronousTestCase):
    """Under ``--workers``: prometheus-client's multiprocess mode over a
    shared directory.  Two workers are simulated in this process, one after
    the other, each with its own process id (as prometheus-client's own
    tests do)."""

    def setUp(self) -> None:
        from prometheus_client import values

        self.directory = self.mktemp()
        os.makedirs(self.directory)
        saved = values.ValueClass
        self.addCleanup(setattr, values, "ValueClass", saved)
        self.addCleanup(os.environ.pop, "PROMETHEUS_MULTIPROC_DIR", None)
        import prometheus_client.metrics

        self.clock = _Clock()
        self.patch(prometheus_client.metrics, "time", self.clock)

    def worker(self, pid: int, **options: object) -> ArchiveMetrics:
        """The metrics of a worker whose process id is ``pid``."""
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue(lambda: pid)
        return ArchiveMetrics(shared=self.directory, **options)

    def stored(self, metrics: ArchiveMetrics, count: int) -> None:
        for n in range(count):
            metrics.observe(events.InstanceStored(
                "dimse", "h", "CT1", "1.2", f"1.3.{n}", "1.4", "P", "N", 100, total=0.002))

    def test_counters_and_histograms_summed(self) -> None:
        """Every worker's exposition shows the sums over all workers."""
        first = self.worker(101)
        self.stored(first, 2)
        second = self.worker(102)
        self.stored(second, 3)
        second.observe(events.QueryPerformed("http", "h", "", "1.2", "STUDY", b"", 4, 0, 0.01))
        for m in (first, second):
            self.assertEqual(value(m, "dicomtwist_instances_stored_total", via="dimse",
                                   calling_ae=""), 0)
            self.assertEqual(value(m, "dicomtwist_instances_stored_total", via="dimse",
                                   calling_ae="other"), 5)
            self.assertEqual(value(m, "dicomtwist_stored_bytes_total", via="dimse"), 500)
            self.assertEqual(value(m, "dicomtwist_store_seconds_count", part="total"), 5)
            self.assertEqual(value(m, "dicomtwist_store_seconds_bucket", part="total",
                                   le="0.0025"), 5)
            self.assertEqual(value(m, "dicomtwist_query_matches_total", via="http"), 4)
        self.assertEqual(sorted(os.listdir(self.directory))[:2],
                         ["counter_101.db", "counter_102.db"])

    def test_live_levels_summed_and_dropped_when_dead(self) -> None:
        """Associations, thread pools and queues are summed over the live
        workers; a worker marked dead leaves the sum, its counts stay."""
        from prometheus_client.multiprocess import mark_process_dead

        first = self.worker(201, active=lambda: 2, pools={"store": _Pool(1, 8)})
        self.stored(first, 1)
        first.sample()
        second = self.worker(202, active=lambda: 3, pools={"store": _Pool(4, 8)})
        self.assertEqual(value(second, "dicomtwist_associations_active"), 5)
        self.assertEqual(value(second, "dicomtwist_thread_pool_busy", pool="store"), 5)
        self.assertEqual(value(second, "dicomtwist_thread_pool_max", pool="store"), 16)
        mark_process_dead(201, self.directory)
        self.assertEqual(value(second, "dicomtwist_associations_active"), 3)
        self.assertEqual(value(second, "dicomtwist_thread_pool_busy", pool="store"), 4)
        self.assertEqual(value(second, "dicomtwist_instances_stored_total", via="dimse",
                               calling_ae="other"), 1)

    def test_associations_established_in_every_worker(self) -> None:
        """What ``/api/status`` reports under ``--workers``: the live
        workers' associations summed, this worker's own count fresh."""
        active = [2]
        first = self.worker(251, active=lambda: active[0])
        first.sample()
        second = self.worker(252, active=lambda: 3)
        self.assertEqual(second.associations_established(), 5)
        active[0] = 6
        self.assertEqual(first.associations_established(), 9)
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(251, self.directory)
        self.assertEqual(second.associations_established(), 3)

    def test_association_count_written_on_events(self) -> None:
        """A worker writes its association count as associations start and
        end (after the event: the factory still counts an ending one), so
        the other workers need not wait for its next sample."""
        from twisted.internet.task import Clock

        active = [0]
        clock = Clock()
        first = self.worker(261, active=lambda: active[0], reactor=clock)
        second = self.worker(262, active=lambda: 1)
        self.assertEqual(second.associations_established(), 1)
        active[0] = 4
        first.observe(events.AssociationAccepted(1, "h", 1, "A", "B"))
        first.observe(events.AssociationAccepted(2, "h", 1, "A", "B"))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual(second.associations_established(), 5)
        first.observe(events.AssociationEnded(1, "h", "A", "released", ""))
        active[0] = 3
        clock.advance(0)
        self.assertEqual(second.associations_established(), 4)
        first.observe(events.AssociationEnded(2, "h", "A", "released", ""))
        first.unsubscribe()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_associations_established_in_one_process(self) -> None:
        """One process: None, the caller counts its own."""
        self.assertIsNone(ArchiveMetrics(active=lambda: 2).associations_established())

    def test_index_counts_are_the_latest_measurement(self) -> None:
        """Index counts and free space, which every worker measures the
        same, are the most recent measurement, not a sum."""
        first = self.worker(301)
        first._refreshed(({"instances": 10, "studies": 1}, 5000))
        self.clock.now += 1
        second = self.worker(302)
        second._refreshed(({"instances": 12, "studies": 2}, 4000))
        for m in (first, second):
            self.assertEqual(value(m, "dicomtwist_index_entities", level="instances"), 12)
            self.assertEqual(value(m, "dicomtwist_index_entities", level="studies"), 2)
            self.assertEqual(value(m, "dicomtwist_instance_directory_free_bytes"), 4000)

    def test_levels_written_every_interval(self) -> None:
        """A worker writes its levels when subscribed and every
        SAMPLE_INTERVAL seconds, so another worker's scrape sees them; the
        audit drops are a counter."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        from twisted.internet.task import Clock

        from dicomtwist.metrics import SAMPLE_INTERVAL

        class Audit:
            dropped = 0

        active = [1]
        audit = Audit()
        clock = Clock()
        m = self.worker(401, active=lambda: active[0], reactor=clock, audit=audit)
        bus = events.EventBus()
        m.subscribe(bus)
        self.addCleanup(m.unsubscribe)

        def merged(name: str) -> float:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.directory)
            return samples(generate_latest(registry).decode()).get((name, ()), 0.0)

        self.assertEqual(merged("dicomtwist_associations_active"), 1)
        active[0] = 4
        audit.dropped = 3
        clock.advance(SAMPLE_INTERVAL)
        self.assertEqual(merged("dicomtwist_associations_active"), 4)
        self.assertEqual(merged("dicomtwist_audit_messages_dropped_total"), 3)
        audit.dropped = 5
        clock.advance(SAMPLE_INTERVAL)
        self.assertEqual(merged("dicomtwist_audit_messages_dropped_total"), 5)
        m.unsubscribe()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_process_keeps_memory(self) -> None:
        """Without ``shared`` (one process), nothing is written to files,
        even if PROMETHEUS_MULTIPROC_DIR was set when prometheus-client was
        imported: the values stay in memory, as before."""
        from prometheus_client import values

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.directory
        values.ValueClass = values.MultiProcessValue(lambda: 501)
        m = ArchiveMetrics(active=lambda: 2)
        self.stored(m, 2)
        self.assertIs(values.ValueClass, values.MutexValue)
        self.assertNotIn("PROMETHEUS_MULTIPROC_DIR", os.environ)
        self.assertEqual(os.listdir(self.directory), [])
        self.assertEqual(value(m, "dicomtwist_instances_stored_total", via="dimse",
                               calling_ae="other"), 2)
        self.assertEqual(value(m, "dicomtwist_associations_active"), 2)
