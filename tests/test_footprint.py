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
        # twistd imports no OpenSSL before it loads the plugin: as lean.
        self.assertFalse(report["libcrypto"])

    async def test_twistd_reactor_option_kept(self) -> None:
        """``twistd --reactor=poll dicomqr`` runs on the reactor chosen."""
        report = await self.report("--reactor=poll", "--port", str(free_port()))
        self.assertEqual(report["reactor"], "twisted.internet.pollreactor.PollReactor")

    async def test_twistd_private_dictionary_unread(self) -> None:
        """Under twistd too, pydicom's private dictionary is not read at start."""
        report = await self.report("--port", str(free_port()))
        self.assertEqual(report["private_dictionary"], "PrivateDictionaries")

    async def test_console_script_default(self) -> None:
        """The ``dicomqr`` console script with the defaults is as lean, and
        maps no OpenSSL at all: neither the standard library's ``ssl`` nor
        hashlib's ``_hashlib`` is imported."""
        report = await self.report("--console", "--port", str(free_port()))
        self.assert_lean(report["modules"])
        self.assertEqual(report["reactor"], "dicomtwist.reactor.DicomReactor")
        self.assertEqual(sorted(set(optional.STANDARD_OPENSSL) & set(report["modules"])), [])
        self.assertFalse(report["libcrypto"])
        self.assertEqual(report["pbkdf2"], "hashlib")  # the built-in fallback
        self.assertEqual(report["private_dictionary"], "PrivateDictionaries")

    async def test_console_script_http_has_openssl(self) -> None:
        """With HTTP, the console script's hashlib is OpenSSL's again (the
        HTTP users' PBKDF2)."""
        report = await self.report("--console", "--port", str(free_port()),
                                   "--http", f"tcp:{free_port()}:interface=127.0.0.1")
        self.assertIn("_hashlib", report["modules"])
        self.assertEqual(report["pbkdf2"], "_hashlib")
        self.assertTrue(report["libcrypto"])

    async def test_console_script_tls_listener(self) -> None:
        """With a TLS listener the console script loads pyOpenSSL and hashlib
        is OpenSSL's."""
        from tests.test_tls import shared_pki

        pki = shared_pki()
        report = await self.report(
            "--console",
            "--listen", f"ssl:{free_port()}:interface=127.0.0.1:privateKey={pki['server.key']}"
                        f":certKey={pki['server.crt']}")
        self.assertIn("OpenSSL", report["modules"])
        self.assertEqual(report["pbkdf2"], "_hashlib")

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


#: A fresh interpreter: optional.load() as the daemon calls it, then a
#: check printed as JSON (``{check}`` is replaced).
FRESH = """
import json, sys
from dicomtwist import optional
with optional.standard_openssl_hidden():
    import hashlib, hmac
optional.load(tls=False, pixels=False)
import pydicom.datadict as datadict
{check}
"""


class LeanStartTests(TestCase):
    """The standard library's OpenSSL and pydicom's private dictionary,
    in fresh interpreters started as the ``dicomqr`` script starts."""

    timeout = 60

    async def fresh(self, check: str) -> object:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-c", FRESH.replace("{check}", check)],
            env=peers.daemon_env(), reactor=reactor)
        self.assertEqual(code, 0, err.decode(errors="replace"))
        return json.loads(out)

    async def test_private_dictionary_read_on_first_use(self) -> None:
        """Unread after ``import pydicom``; the first lookup reads it, and
        every answer is the real dictionary's."""
        from pydicom._private_dict import private_dictionaries

        got = await self.fresh(
            "before = type(datadict.private_dictionaries).__name__\n"
            "entry = datadict.get_private_entry(0x00191002, 'GEMS_ACQU_01')\n"
            "vr = datadict.private_dictionary_VR(0x00291008, 'SIEMENS CSA HEADER')\n"
            "print(json.dumps([before, type(datadict.private_dictionaries).__name__,"
            " list(entry), vr, len(datadict.private_dictionaries),"
            " isinstance(datadict.private_dictionaries, dict)]))")
        before, after, entry, vr, count, is_dict = got
        self.assertEqual(before, "PrivateDictionaries")
        self.assertEqual(after, "_Read")
        self.assertEqual(entry, list(private_dictionaries["GEMS_ACQU_01"]["0019xx02"]))
        self.assertEqual(vr, private_dictionaries["SIEMENS CSA HEADER"]["0029xx08"][0])
        self.assertEqual(count, len(private_dictionaries))
        self.assertTrue(is_dict)

    async def test_entries_added_before_the_first_read(self) -> None:
        """``add_private_dict_entries`` before anything was read keeps both
        the new entries and pydicom's own."""
        got = await self.fresh(
            "datadict.add_private_dict_entries('ACME 1.1', {0x00410001: ('US', '1', 'Test',"
            " '')})\n"
            "print(json.dumps([datadict.private_dictionary_description(0x00410001, 'ACME 1.1'),"
            " datadict.private_dictionary_VR(0x00191002, 'GEMS_ACQU_01')]))")
        from pydicom._private_dict import private_dictionaries

        self.assertEqual(got, ["Test", private_dictionaries["GEMS_ACQU_01"]["0019xx02"][0]])

    async def test_private_element_of_an_implicit_data_set(self) -> None:
        """Decoding a private element of an implicit VR data set types it
        from the dictionary, as pydicom always did."""
        got = await self.fresh(
            "from io import BytesIO\n"
            "from pydicom.filereader import read_dataset\n"
            "raw = (bytes.fromhex('19001000') + (12).to_bytes(4, 'little') + b'GEMS_ACQU_01'"
            " + bytes.fromhex('19000210') + (4).to_bytes(4, 'little')"
            " + (7).to_bytes(4, 'little'))\n"
            "ds = read_dataset(BytesIO(raw), True, True)\n"
            "element = ds[0x00191002]\n"
            "print(json.dumps([element.VR, element.value, element.name]))")
        self.assertEqual(got[:2], ["SL", 7])
        self.assertIn("Detector Channel", got[2])

    async def test_hashlib_back_on_openssl(self) -> None:
        """Hidden at start: hashlib and hmac work without OpenSSL (same
        digests); ``standard_openssl_back`` puts them back on it."""
        got = await self.fresh(
            "import hashlib, hmac\n"
            "lean = [optional.lean(), hashlib.pbkdf2_hmac.__module__,"
            " hashlib.sha256(b'1.2.3').hexdigest(), hmac.new(b'k', b'm', 'sha256').hexdigest()]\n"
            "optional.standard_openssl_back()\n"
            "back = [optional.lean(), hashlib.pbkdf2_hmac.__module__,"
            " hashlib.sha256(b'1.2.3').hexdigest(), hmac.new(b'k', b'm', 'sha256').hexdigest()]\n"
            "print(json.dumps([lean, back]))")
        import hashlib
        import hmac

        digest = hashlib.sha256(b"1.2.3").hexdigest()
        mac = hmac.new(b"k", b"m", "sha256").hexdigest()
        self.assertEqual(got, [[True, "hashlib", digest, mac], [False, "_hashlib", digest, mac]])


    async def test_back_after_openssl_loaded_since(self) -> None:
        """Something that loads OpenSSL after the start (psycopg does)
        leaves the modules imported without it as they were;
        ``standard_openssl_back`` still reloads them."""
        got = await self.fresh(
            "import urllib.request\n"
            "before = hasattr(urllib.request, 'HTTPSHandler')\n"
            "import ssl\n"
            "loaded = [optional.lean(), hasattr(urllib.request, 'HTTPSHandler')]\n"
            "optional.standard_openssl_back()\n"
            "print(json.dumps([before, loaded, hasattr(urllib.request, 'HTTPSHandler'),"
            " hashlib.pbkdf2_hmac.__module__]))")
        self.assertEqual(got, [False, [False, False], True, "_hashlib"])

    async def test_every_module_imports_in_a_lean_process(self) -> None:
        """Every module a daemon without TLS or HTTP may import later (all
        but the HTTP layer and the metrics) imports in a process started
        lean: none needs the HTTPS classes of ``http.client`` or
        ``urllib``."""
        got = await self.fresh(
            "import importlib, pkgutil\n"
            "import dicomtwist\n"
            "names = sorted(m.name for m in pkgutil.walk_packages(dicomtwist.__path__,"
            " 'dicomtwist.') if not m.name.startswith(('dicomtwist.web',"
            " 'dicomtwist.metrics')))\n"
            "failed = {}\n"
            "for name in names:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as e:\n"
            "        failed[name] = repr(e)\n"
            "print(json.dumps([len(names), failed]))")
        count, failed = got
        self.assertEqual(failed, {})
        self.assertGreater(count, 50)


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
