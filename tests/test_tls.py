"""End to end: DICOM TLS (PS3.15 Annex B) between the real ``twistd -n
dicomqr``, our requestor and movescu, and DCMTK's ``+tls`` tools.

The test run makes one certificate authority with the ``openssl`` command
line (a CA, a server certificate for 127.0.0.1, a client certificate, and a
second, untrusted CA with a client certificate of its own), starts the
daemon with a plain ``tcp:`` and an ``ssl:`` listener that requires client
certificates from the CA, and drives it with DCMTK from /usr/bin on
127.0.0.1 free ports.  Skipped only when openssl or DCMTK is not installed.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from pydicom import dcmread
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from dicomtwist import tls
from dicomtwist.association import associate
from dicomtwist.errors import TLSError
from dicomtwist.status import Status
from dicomtwist.storage.files import instance_path
from tests import peers
from tests.helpers import CT_IMAGE_STORAGE, UNCOMPRESSED, VERIFICATION, ct_dataset, free_port
from tests.test_dicomqr_e2e import SOURCE_TREE, TWISTD, inline

OPENSSL = "/usr/bin/openssl"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
#: X.509v3 extensions of the leaf certificates: usable by either side,
#: naming the loopback address (our requestor checks it; DCMTK does not).
LEAF_EXTENSIONS = ("basicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n"
                   "subjectAltName=IP:127.0.0.1,DNS:localhost\n")


def _openssl(directory: str, *args: str) -> None:
    subprocess.run([OPENSSL, *args], cwd=directory, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=60)


def make_pki(directory: str) -> dict[str, str]:
    """A self-made CA with a server and a client certificate, and a rogue CA
    with a client certificate; returns the paths by name (``ca.crt``,
    ``server.key``, ``rogue-client.crt``...)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "leaf.ext"), "w") as fp:
        fp.write(LEAF_EXTENSIONS)
    for ca in ("ca", "rogue-ca"):
        _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                 "-days", "2", "-subj", f"/CN=dicomtwist test {ca}", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.crt", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue-client", "rogue-ca")):
        _openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-sha256",
                 "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt",
                 "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "2", "-sha256",
                 "-extfile", "leaf.ext", "-out", f"{name}.crt")
    return {name: os.path.join(directory, name) for name in os.listdir(directory)}


_SHARED: dict[str, dict[str, str]] = {}


def shared_pki() -> dict[str, str]:
    """One PKI for the tests that only read it (made once per test run)."""
    if "pki" not in _SHARED:
        directory = tempfile.mkdtemp(prefix="dicomtwist-pki-")
        atexit.register(shutil.rmtree, directory, True)
        _SHARED["pki"] = make_pki(directory)
    return _SHARED["pki"]


class TLSCase(TestCase):
    """Base: the PKI, the daemon with a TLS listener, and the tools."""

    timeout = 90

    def setUp(self) -> None:
        if not os.access(OPENSSL, os.X_OK):
            raise SkipTest(f"openssl not installed at {OPENSSL}")
        peers.dcmtk("echoscu")
        self.work = os.path.abspath(self.mktemp())
        self.cwd = os.path.join(self.work, "archive")
        os.makedirs(self.cwd)
        self.pki = shared_pki()
        self.port = free_port()
        self.tls_port = free_port()
        self.storescp_port = free_port()
        self.config = os.path.join(self.work, "qrscp.ini")
        self.write_config()

    def write_config(self, extra: str = "", destinations: str = "") -> None:
        """The daemon's configuration: our AE title and a TLS STORESCP destination."""
        with open(self.config, "w") as fp:
            fp.write(f"[DEFAULT]\nae_title: QRSCP\nport: {self.port}\n"
                     f"bind_address: 127.0.0.1\n{extra}"
                     f"[STORESCP]\naddress: 127.0.0.1\nport: {self.storescp_port}\n"
                     f"tls: true\n{destinations}")

    def env(self) -> dict[str, str]:
        """The environment of our processes: the source tree importable."""
        env = peers.peer_env()
        env["PYTHONPATH"] = os.pathsep.join(
            [SOURCE_TREE, *filter(None, [env.get("PYTHONPATH")])])
        return env

    def tls_listen(self, *extra: str) -> str:
        """The ``ssl:`` description of the daemon's TLS listener."""
        return ":".join([f"ssl:{self.tls_port}", "interface=127.0.0.1",
                         f"privateKey={self.pki['server.key']}",
                         f"certKey={self.pki['server.crt']}", *extra])

    async def start_archive(self, *args: str) -> peers.PeerProcess:
        """Start ``twistd -n dicomqr`` with ``args``; wait for both ports."""
        if not args:
            args = ("--listen", f"tcp:{self.port}:interface=127.0.0.1",
                    "--listen", self.tls_listen(), "--tls-ca", self.pki["ca.crt"])
        process = peers.PeerProcess(reactor, "twistd dicomqr")
        argv = [*TWISTD, "-n", "--pidfile=", "dicomqr", "-c", self.config, "-v", *args]
        reactor.spawnProcess(process, TWISTD[0], argv, env=self.env(), path=self.cwd)
        self.addCleanup(process.stop)
        await peers.wait_for_port(reactor, self.port, process, attempts=400)
        await peers.wait_for_port(reactor, self.tls_port, process, attempts=400)
        return process

    def client_tls(self, name: str = "client") -> list[str]:
        """DCMTK's options for TLS with ``name``'s key and certificate."""
        return ["+tls", self.pki[f"{name}.key"], self.pki[f"{name}.crt"],
                "+cf", self.pki["ca.crt"]]

    async def dcmtk(self, tool: str, *args: str) -> tuple[str, int]:
        """Run a DCMTK tool; returns its output and exit code."""
        out, err, code = await peers.run_tool(reactor, peers.dcmtk(tool), list(args))
        return (out + err).decode("utf-8", "replace"), code

    async def movescu(self, *args: str) -> tuple[str, int]:
        """Run ``python -m dicomtwist movescu``; returns its output and exit code."""
        d = getProcessOutputAndValue(sys.executable, ["-m", "dicomtwist", "movescu", *args],
                                     env=self.env(), path=self.work, reactor=reactor)
        out, err, code = await d.addTimeout(60, reactor)
        return (out + err).decode("utf-8", "replace"), code

    def ct_file(self, name: str = "ct.dcm", **values) -> tuple[str, str]:
        """Write a CT instance; returns its path and SOP Instance UID."""
        ds = ct_dataset(64, **values)
        path = os.path.join(self.work, name)
        ds.save_as(path, enforce_file_format=True)
        return path, str(ds.SOPInstanceUID)


class ArchiveTLSTests(TLSCase):
    """DCMTK's +tls tools against the daemon's TLS listener."""

    @inline
    async def test_echoscu_with_client_certificate(self) -> None:
        """echoscu +tls with a certificate from our CA gets its C-ECHO answered."""
        await self.start_archive()
        output, code = await self.dcmtk("echoscu", "-v", *self.client_tls(), "-aec", "QRSCP",
                                        "127.0.0.1", str(self.tls_port))
        self.assertEqual(code, 0, output)
        self.assertIn("Received Echo Response (Success)", output)

    @inline
    async def test_storescu_stores_over_tls(self) -> None:
        """storescu +tls stores an instance that is then on disk, as sent."""
        await self.start_archive()
        path, uid = self.ct_file()
        output, code = await self.dcmtk("storescu", "-v", *self.client_tls(), "-aec", "QRSCP",
                                        "127.0.0.1", str(self.tls_port), path)
        self.assertEqual(code, 0, output)
        stored = instance_path(os.path.join(self.cwd, "instances"), uid)
        self.assertTrue(os.path.exists(stored), output)
        self.assertEqual(dcmread(stored).PixelData, dcmread(path).PixelData)

    @inline
    async def test_clients_without_valid_certificate_refused(self) -> None:
        """With client verification on, a certificate from another CA, no certificate, or no TLS at all is refused; each handshake failure is logged."""
        archive = await self.start_archive()
        port = str(self.tls_port)
        output, code = await self.dcmtk("echoscu", *self.client_tls("rogue-client"),
                                        "127.0.0.1", port)
        self.assertNotEqual(code, 0, output)
        output, code = await self.dcmtk("echoscu", "+tla", "+cf", self.pki["ca.crt"],
                                        "127.0.0.1", port)
        self.assertNotEqual(code, 0, output)
        output, code = await self.dcmtk("echoscu", "127.0.0.1", port)
        self.assertNotEqual(code, 0, output)
        self.assertIn("TLS handshake with 127.0.0.1", archive.output())
        # The plain listener still serves, and nothing was let through.
        output, code = await self.dcmtk("echoscu", "127.0.0.1", str(self.port))
        self.assertEqual(code, 0, output)
        self.assertEqual(archive.output().count("Association Accepted"), 1, archive.output())

    @inline
    async def test_server_certificate_checked_by_client(self) -> None:
        """echoscu trusting only the rogue CA refuses our server certificate."""
        await self.start_archive()
        output, code = await self.dcmtk(
            "echoscu", "+tls", self.pki["client.key"], self.pki["client.crt"],
            "+cf", self.pki["rogue-ca.crt"], "127.0.0.1", str(self.tls_port))
        self.assertNotEqual(code, 0, output)

    @inline
    async def test_listen_and_tls_from_config(self) -> None:
        """The config file's listen, tls_cert, tls_key and tls_ca keys set up the same TLS listener."""
        self.write_config(
            f"listen: tcp:{self.port}:interface=127.0.0.1\n"
            f"  ssl:{self.tls_port}:interface=127.0.0.1\n"
            f"tls_cert: {self.pki['server.crt']}\ntls_key: {self.pki['server.key']}\n"
            f"tls_ca: {self.pki['ca.crt']}\n")
        await self.start_archive("-q")
        output, code = await self.dcmtk("echoscu", *self.client_tls(), "127.0.0.1",
                                        str(self.tls_port))
        self.assertEqual(code, 0, output)
        output, code = await self.dcmtk("echoscu", *self.client_tls("rogue-client"),
                                        "127.0.0.1", str(self.tls_port))
        self.assertNotEqual(code, 0, output)

    @inline
    async def test_without_tls_ca_no_client_certificate_needed(self) -> None:
        """Without a CA for clients, a TLS client without a certificate is served."""
        await self.start_archive("--listen", f"tcp:{self.port}:interface=127.0.0.1",
                                 "--listen", self.tls_listen())
        output, code = await self.dcmtk("echoscu", "+tla", "+cf", self.pki["ca.crt"],
                                        "127.0.0.1", str(self.tls_port))
        self.assertEqual(code, 0, output)


class RequestorTLSTests(TLSCase):
    """Our requestor (associate(tls=...)) against DCMTK's storescp +tls."""

    async def start_storescp(self) -> str:
        """storescp +tls, requiring a client certificate from our CA."""
        received = os.path.join(self.work, "received")
        os.makedirs(received, exist_ok=True)
        storescp = peers.start_peer(
            self, reactor, peers.dcmtk("storescp"),
            ["-aet", "STORESCP", "-od", received, "+tls", self.pki["server.key"],
             self.pki["server.crt"], "+cf", self.pki["ca.crt"], str(self.storescp_port)],
            "storescp +tls")
        await peers.wait_for_port(reactor, self.storescp_port, storescp)
        return received

    @inline
    async def test_store_to_storescp_over_tls(self) -> None:
        """associate() with TLS client options stores an instance in storescp +tls."""
        received = await self.start_storescp()
        options = tls.client_options("127.0.0.1", self.pki["ca.crt"], self.pki["client.crt"],
                                     self.pki["client.key"])
        assoc = await associate(reactor, "127.0.0.1", self.storescp_port,
                                contexts=[(CT_IMAGE_STORAGE, UNCOMPRESSED),
                                          (VERIFICATION, UNCOMPRESSED)],
                                called_ae_title="STORESCP", tls=options)
        self.assertEqual((await assoc.echo()).status, Status.SUCCESS)
        ds = ct_dataset(64)
        self.assertEqual((await assoc.store(ds)).status, Status.SUCCESS)
        await assoc.release()
        files = glob.glob(os.path.join(received, "*"))
        self.assertEqual([str(dcmread(f).SOPInstanceUID) for f in files],
                         [str(ds.SOPInstanceUID)])

    @inline
    async def test_untrusted_server_fails_with_tls_error(self) -> None:
        """Trusting only the rogue CA, associate() fails with TLSError before any DICOM."""
        await self.start_storescp()
        options = tls.client_options("127.0.0.1", self.pki["rogue-ca.crt"],
                                     self.pki["client.crt"], self.pki["client.key"])
        d = associate(reactor, "127.0.0.1", self.storescp_port,
                      contexts=[(VERIFICATION, UNCOMPRESSED)], tls=options)
        with self.assertRaises(TLSError):
            await d
        self.flushLoggedErrors()

    @inline
    async def test_move_to_tls_destination(self) -> None:
        """movescu --tls against the TLS listener moves a study to a tls: true destination (storescp +tls)."""
        self.write_config(f"tls_cert: {self.pki['client.crt']}\n"
                          f"tls_key: {self.pki['client.key']}\n")
        await self.start_archive()
        received = await self.start_storescp()
        study = "1.2.826.0.1.3680043.9.7433.77.1"
        # Several files: each is sent from disk through the TLS transport.
        made = [self.ct_file(f"ct{i}.dcm", StudyInstanceUID=study) for i in range(3)]
        output, code = await self.dcmtk("storescu", "127.0.0.1", str(self.port),
                                        *(path for path, _ in made))
        self.assertEqual(code, 0, output)
        output, code = await self.movescu(
            "127.0.0.1", str(self.tls_port), "-v", "-S", "-aem", "STORESCP",
            "--tls-ca", self.pki["ca.crt"], "--tls-cert", self.pki["client.crt"],
            "--tls-key", self.pki["client.key"],
            "-k", "QueryRetrieveLevel=STUDY",
            "-k", "StudyInstanceUID=1.2.826.0.1.3680043.9.7433.77.1")
        self.assertEqual(code, 0, output)
        files = glob.glob(os.path.join(received, "*"))
        self.assertEqual(sorted(str(dcmread(f).SOPInstanceUID) for f in files),
                         sorted(uid for _, uid in made))

    @inline
    async def test_movescu_store_scp_over_tls(self) -> None:
        """movescu --store with --store-tls-cert receives the move over TLS itself."""
        store_port = free_port()
        self.write_config(f"tls_cert: {self.pki['client.crt']}\n"
                          f"tls_key: {self.pki['client.key']}\n"
                          f"tls_ca: {self.pki['ca.crt']}\n",
                          f"[MOVESCU]\naddress: 127.0.0.1\nport: {store_port}\ntls: yes\n")
        await self.start_archive()
        path, uid = self.ct_file(StudyInstanceUID="1.2.826.0.1.3680043.9.7433.77.2")
        output, code = await self.dcmtk("storescu", "127.0.0.1", str(self.port), path)
        self.assertEqual(code, 0, output)
        received = os.path.join(self.work, "movescu-received")
        output, code = await self.movescu(
            "127.0.0.1", str(self.tls_port), "-S", "--store", "--store-aet", "MOVESCU",
            "--store-port", str(store_port), "-od", received,
            "--store-tls-cert", self.pki["server.crt"],
            "--store-tls-key", self.pki["server.key"],
            "--tls-ca", self.pki["ca.crt"], "--tls-cert", self.pki["client.crt"],
            "--tls-key", self.pki["client.key"],
            "-k", "QueryRetrieveLevel=STUDY",
            "-k", "StudyInstanceUID=1.2.826.0.1.3680043.9.7433.77.2")
        self.assertEqual(code, 0, output)
        self.assertEqual(os.listdir(received), [f"CT.{uid}"])

    @inline
    async def test_movescu_tls_refused_without_certificate(self) -> None:
        """movescu --tls without a client certificate is refused by the verifying listener: exit 3."""
        await self.start_archive()
        output, code = await self.movescu(
            "127.0.0.1", str(self.tls_port), "-S", "--tls-ca", self.pki["ca.crt"],
            "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3")
        self.assertEqual(code, 3, output)
        self.assertIn("TLS", output)


class DescriptionTests(SynchronousTestCase):
    """tls.split_description and tls.listen_endpoint, without a network."""

    def setUp(self) -> None:
        if not os.access(OPENSSL, os.X_OK):
            raise SkipTest(f"openssl not installed at {OPENSSL}")
        self.pki = shared_pki()

    def test_split(self) -> None:
        """Descriptions split into prefix, arguments and keywords; backslash escapes."""
        self.assertEqual(tls.split_description("ssl:2762:interface=\\:\\:1:privateKey=a=b"),
                         ("ssl", ["2762"], {"interface": "::1", "privateKey": "a=b"}))
        self.assertEqual(tls.split_description("tcp:port=104"), ("tcp", [], {"port": "104"}))

    def test_ssl_endpoint(self) -> None:
        """An ssl: description becomes an SSL4ServerEndpoint with TLS 1.2 at least and, with a CA, required client certificates."""
        from OpenSSL import SSL
        from twisted.internet.endpoints import SSL4ServerEndpoint

        endpoint = tls.listen_endpoint(
            None, f"ssl:2762:interface=127.0.0.1:privateKey={self.pki['server.key']}"
                  f":certKey={self.pki['server.crt']}:caCerts={self.pki['ca.crt']}")
        self.assertIsInstance(endpoint, SSL4ServerEndpoint)
        self.assertEqual((endpoint._port, endpoint._interface), (2762, "127.0.0.1"))
        context = endpoint._sslContextFactory.getContext()
        self.assertTrue(context.get_verify_mode() & SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        # set_options(0) adds nothing and answers the options in force.
        options = context.set_options(0)
        for flag in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
            self.assertTrue(options & flag, hex(flag))
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)

    def test_defaults_fill_in(self) -> None:
        """An ssl: description without keys takes tls_cert, tls_key and tls_ca."""
        from OpenSSL import SSL

        defaults = tls.ListenDefaults(self.pki["server.crt"], self.pki["server.key"])
        endpoint = tls.listen_endpoint(None, "ssl:2762", defaults)
        self.assertEqual(endpoint._sslContextFactory.getContext().get_verify_mode(),
                         SSL.VERIFY_NONE)

    def test_tcp_is_plain(self) -> None:
        """A tcp: description is the plain acceptor endpoint; others pass
        through to Twisted."""
        from twisted.internet.endpoints import TCP6ServerEndpoint

        from dicomtwist.ul.transport import AcceptorEndpoint

        self.assertIsInstance(tls.listen_endpoint(None, "tcp:104"), AcceptorEndpoint)
        self.assertIsInstance(tls.listen_endpoint(None, "tcp6:104"), TCP6ServerEndpoint)

    def test_errors(self) -> None:
        """No key, a missing file, an unknown option or no port is a ValueError naming it."""
        cases = {
            "ssl:2762": "privateKey",
            "ssl:2762:privateKey=/nonexistent.pem": "/nonexistent.pem",
            f"ssl:2762:privateKey={self.pki['server.key']}:sslmethod=TLSv1_METHOD": "sslmethod",
            f"ssl:privateKey={self.pki['server.key']}": "no port",
            f"ssl:2762:privateKey={self.pki['server.key']}:certKey={self.pki['server.crt']}"
            f":caCerts={self.pki['server.key']}": "no PEM certificate",
        }
        for description, fragment in cases.items():
            with self.assertRaises(ValueError, msg=description) as caught:
                tls.listen_endpoint(None, description)
            self.assertIn(fragment, str(caught.exception))

    def test_ca_directory(self) -> None:
        """A directory of CA certificates is read file by file."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        for name in ("ca.crt", "rogue-ca.crt"):
            with open(self.pki[name], "rb") as src, open(os.path.join(directory, name), "wb") as dst:
                dst.write(src.read())
        self.assertEqual(len(tls.load_certificates(directory)), 2)


class OptionsTests(SynchronousTestCase):
    """The TLS options of ``twistd dicomqr`` and movescu."""

    def setUp(self) -> None:
        if not os.access(OPENSSL, os.X_OK):
            raise SkipTest(f"openssl not installed at {OPENSSL}")
        self.pki = shared_pki()

    def test_listen_repeatable(self) -> None:
        """--listen may be given several times; makeService listens on each."""
        from twisted.internet.testing import MemoryReactorClock

        from dicomtwist import tap

        base = os.path.abspath(self.mktemp())
        options = tap.Options()
        options.parseOptions([
            "--instance-location", os.path.join(base, "i"),
            "--database-location", os.path.join(base, "db.sqlite"),
            "--listen", "tcp:4104:interface=127.0.0.1",
            "--listen", f"ssl:4105:privateKey={self.pki['server.key']}"
                        f":certKey={self.pki['server.crt']}",
            "--tls-ca", self.pki["ca.crt"]])
        self.assertEqual(options["settings"].tls_ca, self.pki["ca.crt"])
        reactor_ = MemoryReactorClock()
        top = tap.makeService(options, reactor_)
        top.startService()
        self.addCleanup(top.stopService)
        self.assertEqual([(p, i) for p, _, _, i in reactor_.tcpServers], [(4104, "127.0.0.1")])
        self.assertEqual([p for p, *_ in reactor_.sslServers], [4105])

    def test_default_listen_unchanged(self) -> None:
        """Without --listen the archive listens on --port and -ba as before."""
        from dicomtwist import tap

        options = tap.Options()
        options.parseOptions(["--port", "4200", "-ba", "127.0.0.1"])
        self.assertEqual(tap.listen_descriptions(options["settings"]),
                         ["tcp:4200:interface=127.0.0.1"])

    def test_bad_listen_is_usage_error(self) -> None:
        """A --listen whose key file is missing is a usage error naming the description."""
        from twisted.python import usage

        from dicomtwist import tap

        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--listen", "ssl:2762:privateKey=/nonexistent.pem"])
        self.assertIn("ssl:2762:privateKey=/nonexistent.pem", str(caught.exception))

    def test_movescu_tls_options(self) -> None:
        """movescu's --tls-ca implies --tls; --store-tls-cert builds the Storage SCP's context."""
        from twisted.internet.testing import MemoryReactorClock

        from dicomtwist import movescu

        options = movescu.Options()
        options.parseOptions(movescu.translate_argv([
            "127.0.0.1", "2762", "-k", "PatientID=1", "--tls-ca", self.pki["ca.crt"],
            "--store", "--store-port", "4111", "--store-tls-cert", self.pki["server.crt"],
            "--store-tls-key", self.pki["server.key"]]))
        self.assertTrue(options["tls"])
        self.assertIsNotNone(options["tls-options"])
        session = movescu.MoveSession(MemoryReactorClock(), options, None)
        reactor_ = session.reactor
        options["output-directory"] = os.path.abspath(self.mktemp())
        self.assertIsNone(session.start_store())
        self.assertEqual([p for p, *_ in reactor_.sslServers], [4111])
        self.assertEqual(reactor_.tcpServers, [])

    def test_movescu_store_tls_needs_store(self) -> None:
        """--store-tls-cert without --store is a usage error."""
        from twisted.python import usage

        from dicomtwist import movescu

        with self.assertRaises(usage.UsageError):
            movescu.Options().parseOptions(movescu.translate_argv([
                "127.0.0.1", "2762", "-k", "PatientID=1",
                "--store-tls-cert", self.pki["server.crt"]]))
