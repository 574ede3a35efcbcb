"""What a freshly started daemon loads: no TLS, pixel codec or web modules
unless its configuration uses them (:mod:`dicomtwist.optional`).

The end-to-end tests run the real process (``twistd -n dicomqr`` and the
``dicomqr`` console script) through ``tests/peer_scripts/dicomqr_modules.py``,
which reports ``sys.modules`` once the reactor runs.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dicomtwist import optional
from dicomtwist.codec import backends, installed, syntaxes
from dicomtwist.config import Config, Destination
from tests import peers
from tests.helpers import free_port

#: Top-level packages a default daemon must not import.
OPTIONAL = frozenset({"OpenSSL", "cryptography", "service_identity", "numpy", "PIL", "gdcm",
                      "_gdcm", "pylibjpeg", "libjpeg", "openjpeg", "rle", "jpeg_ls",
                      "requests"})
#: Our modules a default daemon must not import.
OURS = frozenset({"dicomtwist.web", "dicomtwist.codec.processes",
                  "dicomtwist.codec.transcode"})


class StartedDaemonTests(TestCase):
    """The real daemon, started and asked what it imported."""

    timeout = 60

    def setUp(self) -> None:
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        self.out = os.path.join(self.cwd, "report.json")

    async def report(self, *args: str) -> dict:
        """Run the daemon with ``args`` until it reports; return the report."""
        env = peers.daemon_env()
        d = getProcessOutputAndValue(
            sys.executable, [peers.script("dicomqr_modules.py"), self.out, *args],
            env=env, path=self.cwd, reactor=reactor)
        out, err, code = await d
        self.assertEqual(code, 0, (out + err).decode(errors="replace")[-2000:])
        with open(self.out) as fp:
            return json.load(fp)

    def assert_lean(self, modules: list[str]) -> None:
        tops = {name.split(".")[0] for name in modules}
        self.assertEqual(sorted(tops & OPTIONAL), [])
        self.assertEqual(sorted(OURS & set(modules)), [])

    async def test_twistd_default(self) -> None:
        """``twistd -n dicomqr`` with the defaults imports no TLS, codec or web module."""
        report = await self.report("--port", str(free_port()))
        self.assert_lean(report["modules"])
        self.assertIn("pydicom", report["modules"])
        self.assertIn("twisted.internet.tcp", report["modules"])
        self.assertEqual(report["reactor"], "dicomtwist.reactor.DicomReactor")

    async def test_twistd_reactor_option_kept(self) -> None:
        """``twistd --reactor=poll dicomqr`` runs on the reactor chosen."""
        report = await self.report("--reactor=poll", "--port", str(free_port()))
        self.assertEqual(report["reactor"], "twisted.internet.pollreactor.PollReactor")

    async def test_console_script_default(self) -> None:
        """The ``dicomqr`` console script with the defaults is as lean."""
        report = await self.report("--console", "--port", str(free_port()))
        self.assert_lean(report["modules"])
        self.assertEqual(report["reactor"], "dicomtwist.reactor.DicomReactor")

    async def test_tls_listener_loads_tls(self) -> None:
        """An ``ssl:`` listener loads pyOpenSSL, still without pixel codecs."""
        from tests.test_tls import OPENSSL, shared_pki

        if not os.access(OPENSSL, os.X_OK):
            self.fail(f"openssl not installed at {OPENSSL}")
        pki = shared_pki()
        report = await self.report(
            "--listen", f"ssl:{free_port()}:interface=127.0.0.1:privateKey={pki['server.key']}"
                        f":certKey={pki['server.crt']}")
        modules = set(report["modules"])
        self.assertIn("OpenSSL", modules)
        self.assertNotIn("numpy", modules)

    async def test_http_loads_pixels(self) -> None:
        """DICOMweb renders images in the daemon: it loads numpy and the web layer."""
        report = await self.report("--port", str(free_port()),
                                   "--http", f"tcp:{free_port()}:interface=127.0.0.1")
        modules = set(report["modules"])
        self.assertIn("numpy", modules)
        self.assertIn("dicomtwist.web", modules)
        self.assertNotIn("OpenSSL", modules)


class OptionalTests(SynchronousTestCase):
    """What the configuration needs, and hiding a module."""

    def test_needs_tls(self) -> None:
        """Only ``ssl:`` (or any non-plain) endpoints and TLS destinations need TLS."""
        self.assertFalse(optional.needs_tls(Config()))
        self.assertFalse(optional.needs_tls(Config(listen=("tcp:104", "unix:/tmp/s"),
                                                   http="tcp:8042")))
        self.assertTrue(optional.needs_tls(Config(listen=("ssl:2762",))))
        self.assertTrue(optional.needs_tls(Config(http="ssl:8443:privateKey=k")))
        tls = Config()
        tls.destinations["STORE"] = Destination("STORE", "127.0.0.1", 104, tls=True)
        self.assertTrue(optional.needs_tls(tls))

    def test_needs_pixels(self) -> None:
        """Only DICOMweb (rendering) needs the pixel back ends in the daemon."""
        self.assertFalse(optional.needs_pixels(Config()))
        self.assertTrue(optional.needs_pixels(Config(http="tcp:8042")))

    def test_hidden(self) -> None:
        """A hidden module fails to import; afterwards it imports again."""
        name = "dicomtwist_test_never_imported"
        with optional.hidden([name, "os"]):
            with self.assertRaises(ImportError):
                __import__(name)
            self.assertIsNotNone(sys.modules["os"])
        self.assertNotIn(name, sys.modules)


class InstalledCodecsTests(SynchronousTestCase):
    """The metadata answers (no imports) match pydicom's back ends."""

    def test_decoders(self) -> None:
        """can_decode agrees with pydicom's decoder registry for every syntax."""
        for uid in syntaxes.COMPRESSED:
            self.assertEqual(installed.can_decode(uid), backends.can_decode(uid), uid)

    def test_encoders(self) -> None:
        """can_encode agrees with our encoders' own availability checks."""
        for uid in syntaxes.COMPRESSED:
            self.assertEqual(installed.can_encode(uid), backends.can_encode(uid), uid)

    def test_version(self) -> None:
        """A distribution that is not installed has no version."""
        self.assertEqual(installed.version("dicomtwist-no-such-distribution"), ())
        self.assertGreaterEqual(installed.version("pydicom"), (3, 0))


class IdleAssociationMemoryTests(SynchronousTestCase):
    """What an established, idle association holds (benchmarks/idle_memory.py)."""

    def test_bytes_per_idle_association(self) -> None:
        """200 idle associations of the archive hold under 3,000 bytes of Python
        memory each (5,075 before slots and lazy parts; 2,407 after)."""
        from benchmarks import idle_memory

        per = idle_memory.measure(200)
        self.assertLess(per, 3000)
        self.assertGreater(per, 500)
