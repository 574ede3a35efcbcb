"""Tests for dicomtwist.tap: ``twistd dicomqr`` options, service and ``--clean``.

The plugin is found through ``twisted.plugin.getPlugins``: in the source tree
``twisted/plugins/dicomqr.py`` is importable from the working directory; CI
runs ``pip install '.[test]'`` first, which installs it where Twisted looks.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import config as configuration
from dicomtwist import log as dlog
from dicomtwist import tap
from dicomtwist.association import AcceptorFactory
from dicomtwist.storage.files import TEMP_PREFIX, TEMP_SUFFIX
from dicomtwist.storage.index import Index
from tests.helpers import ct_dataset

#: A configuration file whose every setting differs from the defaults.
CONFIG = """\
[DEFAULT]
ae_title: FROMFILE
port: 2001
max_pdu: 8192
acse_timeout: 11
dimse_timeout: 12
network_timeout: 13
bind_address: 127.0.0.1
instance_location: file-instances
database_location: file.sqlite

[STORESCP]
address: 127.0.0.1
port: 2002
"""


def parse(*argv: str) -> tap.Options:
    """Parse ``argv`` with a fresh :class:`tap.Options`."""
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


class OptionsTestCase(SynchronousTestCase):
    """Base: keep the global log level as it was."""

    def setUp(self) -> None:
        self.addCleanup(dlog.set_level, dlog.level())

    def assertSubset(self, expected: dict, actual: dict) -> None:
        """Every key of ``expected`` is in ``actual`` with the same value."""
        self.assertEqual({key: actual.get(key) for key in expected}, expected)

    def write_config(self, text: str = CONFIG) -> str:
        """Write a configuration file and return its path."""
        path = self.mktemp()
        with open(path, "w") as fp:
            fp.write(text)
        return path


class DefaultsTests(OptionsTestCase):
    """``twistd dicomqr`` with no options."""

    def test_defaults(self) -> None:
        """With no options the archive is QRSCP on 11112 with its files in the working directory."""
        options = parse()
        cwd = os.getcwd()
        self.assertSubset({
            "config": None, "quiet": 0, "verbose": 0, "debug": 0, "clean": 0,
            "log-level": None, "ae-title": None, "port": None, "level": LogLevel.warn,
            "settings": configuration.Config(
                instance_location=os.path.join(cwd, "instances"),
                database_location=os.path.join(cwd, "instances.sqlite")),
        }, dict(options))

    def test_relative_config_paths_resolve_against_cwd(self) -> None:
        """Relative locations in the config file resolve against the working directory."""
        options = parse("-c", self.write_config())
        settings = options["settings"]
        cwd = os.getcwd()
        self.assertEqual((settings.instance_location, settings.database_location),
                         (os.path.join(cwd, "file-instances"), os.path.join(cwd, "file.sqlite")))

    def test_config_file_values(self) -> None:
        """Without overrides the config file's values are used."""
        settings = parse("--config", self.write_config())["settings"]
        self.assertEqual(
            (settings.ae_title, settings.port, settings.max_pdu, settings.acse_timeout,
             settings.dimse_timeout, settings.network_timeout, settings.bind_address),
            ("FROMFILE", 2001, 8192, 11.0, 12.0, 13.0, "127.0.0.1"))
        self.assertEqual(settings.destinations,
                         {"STORESCP": configuration.Destination("STORESCP", "127.0.0.1", 2002)})


class OverrideTests(OptionsTestCase):
    """Command-line values override the configuration file."""

    #: option -> (value, Config attribute, parsed value)
    OVERRIDES = {
        "--ae-title": ("CMDLINE", "ae_title", "CMDLINE"),
        "--port": ("3001", "port", 3001),
        "--bind-address": ("::1", "bind_address", "::1"),
        "--acse-timeout": ("21", "acse_timeout", 21.0),
        "--dimse-timeout": ("22.5", "dimse_timeout", 22.5),
        "--network-timeout": ("23", "network_timeout", 23.0),
        "--max-pdu": ("0", "max_pdu", 0),
        "--database-location": ("/var/tmp/x.sqlite", "database_location", "/var/tmp/x.sqlite"),
        "--instance-location": ("/var/tmp/x", "instance_location", "/var/tmp/x"),
        "--poll-spin": ("0", "poll_spin", 0),
    }

    def test_each_option_overrides_config(self) -> None:
        """Each network and database option replaces the config file's value, alone."""
        path = self.write_config()
        reference = parse("-c", path)["settings"]
        for option, (value, attribute, parsed) in self.OVERRIDES.items():
            settings = parse("-c", path, option, value)["settings"]
            self.assertEqual(getattr(settings, attribute), parsed, option)
            others = {k: v for k, v in vars(settings).items() if k != attribute}
            expected = {k: v for k, v in vars(reference).items() if k != attribute}
            self.assertEqual(others, expected, option)

    def test_all_options_together(self) -> None:
        """All overrides at once, with --opt=value forms, replace all config values."""
        argv = ["-c", self.write_config()]
        argv += [f"{option}={value}" for option, (value, _, _) in self.OVERRIDES.items()]
        settings = parse(*argv)["settings"]
        self.assertEqual({attribute: getattr(settings, attribute)
                          for _, attribute, _ in self.OVERRIDES.values()},
                         {attribute: parsed for _, attribute, parsed in self.OVERRIDES.values()})

    def test_relative_override_resolves_against_cwd(self) -> None:
        """A relative --instance-location resolves against the working directory."""
        settings = parse("--instance-location", "here")["settings"]
        self.assertEqual(settings.instance_location, os.path.join(os.getcwd(), "here"))

    def test_single_dash_forms(self) -> None:
        """The spec's -aet, -ba, -ta, -td, -tn, -pdu and -ll mean their long options."""
        options = parse("-aet", "SHORT", "-ba", "127.0.0.1", "-ta", "1", "-td", "2",
                        "-tn", "3", "-pdu", "4096", "-ll", "debug")
        settings = options["settings"]
        self.assertEqual(
            (settings.ae_title, settings.bind_address, settings.acse_timeout,
             settings.dimse_timeout, settings.network_timeout, settings.max_pdu,
             options["level"]),
            ("SHORT", "127.0.0.1", 1.0, 2.0, 3.0, 4096, LogLevel.debug))

    def test_single_dash_with_equals(self) -> None:
        """``-aet=NAME`` is accepted like ``--ae-title=NAME``."""
        self.assertEqual(parse("-aet=EQ")["settings"].ae_title, "EQ")

    def test_short_flags(self) -> None:
        """-q, -v and -d set the log level; -ll wins over them."""
        self.assertEqual(parse("-q")["level"], LogLevel.critical)
        self.assertEqual(parse("-v")["level"], LogLevel.info)
        self.assertEqual(parse("-d")["level"], LogLevel.debug)
        self.assertEqual(parse("-d", "-ll", "error")["level"], LogLevel.error)


class LogLevelTests(OptionsTestCase):
    """``-ll``/``--log-level``."""

    def test_warning_and_warn(self) -> None:
        """Both ``warning`` (the spec) and ``warn`` are accepted."""
        self.assertEqual(parse("-ll", "warning")["level"], LogLevel.warn)
        self.assertEqual(parse("--log-level", "warn")["level"], LogLevel.warn)

    def test_every_spec_level(self) -> None:
        """Every level the spec lists is accepted."""
        self.assertEqual([parse("-ll", name)["level"]
                          for name in ("critical", "error", "warning", "info", "debug")],
                         [LogLevel.critical, LogLevel.error, LogLevel.warn, LogLevel.info,
                          LogLevel.debug])

    def test_bogus_level(self) -> None:
        """An unknown level is a UsageError naming it."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("-ll", "bogus")
        self.assertIn("'bogus'", str(caught.exception))


class BadValueTests(OptionsTestCase):
    """Bad values are UsageErrors naming the option and value."""

    def check(self, argv: list[str], *fragments: str) -> None:
        """Parsing ``argv`` raises UsageError mentioning every fragment."""
        with self.assertRaises(usage.UsageError) as caught:
            parse(*argv)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))

    def test_bad_port(self) -> None:
        """A non-numeric --port is named."""
        self.check(["--port", "eleven"], "--port", "'eleven'")

    def test_port_out_of_range(self) -> None:
        """A --port above 65535 is named."""
        self.check(["--port", "65536"], "--port", "'65536'")

    def test_bad_timeout(self) -> None:
        """A non-numeric -td is named as --dimse-timeout."""
        self.check(["-td", "x"], "--dimse-timeout", "'x'")

    def test_bad_max_pdu(self) -> None:
        """A -pdu below the minimum is named as --max-pdu."""
        self.check(["-pdu", "12"], "--max-pdu", "'12'")

    def test_bad_ae_title(self) -> None:
        """An over-long -aet is named as --ae-title."""
        self.check(["-aet", "X" * 17], "--ae-title")

    def test_bad_poll_spin(self) -> None:
        """A --poll-spin past 1000 microseconds, or negative, is named;
        so is one in the config file."""
        self.check(["--poll-spin", "1001"], "--poll-spin", "'1001'", "0 to 1000")
        self.check(["--poll-spin", "-1"], "--poll-spin", "'-1'")
        self.check(["-c", self.write_config("[DEFAULT]\npoll_spin: soon\n")], "poll_spin",
                   "'soon'")

    def test_missing_config(self) -> None:
        """A config file that does not exist is a UsageError naming it."""
        self.check(["-c", "/nonexistent/qrscp.ini"], "/nonexistent/qrscp.ini")

    def test_bad_config(self) -> None:
        """An invalid config file is a UsageError naming the key."""
        path = self.write_config("[PACS]\naddress: 10.0.0.1\n")
        self.check(["-c", path], "[PACS]", "no port")

    def test_unknown_option(self) -> None:
        """An unknown option is a UsageError."""
        self.check(["--frobnicate"], "frobnicate")


class PluginTests(SynchronousTestCase):
    """The twistd plugin."""

    def test_plugin_found(self) -> None:
        """getPlugins(IServiceMaker) finds ``dicomqr`` with tap's Options and makeService."""
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "dicomqr"]
        self.assertTrue(makers, "the dicomqr plugin was not found")
        maker = makers[0]
        self.assertIs(maker.options, tap.Options)
        self.assertEqual(maker.makeService, tap.makeService)
        self.assertTrue(maker.description)

    def test_plugin_module_imports(self) -> None:
        """``twisted.plugins.dicomqr`` is importable and holds the ServiceMaker."""
        from twisted.plugins import dicomqr
        self.assertEqual(dicomqr.dicomqr.tapname, "dicomqr")


class MakeServiceTests(OptionsTestCase):
    """makeService."""

    def options(self, *argv: str) -> tap.Options:
        """Options with the instance directory and index in a temporary directory."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        return parse("--instance-location", os.path.join(base, "instances"),
                     "--database-location", os.path.join(base, "index.sqlite"), *argv)

    def test_multiservice_with_endpoint_service(self) -> None:
        """makeService returns a MultiService holding a StreamServerEndpointService."""
        reactor = MemoryReactorClock()
        top = tap.makeService(self.options("--port", "4104"), reactor)
        self.assertIsInstance(top, MultiService)
        listeners = [s for s in top if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(len(listeners), 1)
        self.assertIsInstance(listeners[0].factory, AcceptorFactory)
        self.assertEqual(listeners[0].factory.policy.ae_title, "QRSCP")
        self.assertTrue(os.path.isdir(os.path.join(self.base, "instances")))
        self.assertTrue(os.path.exists(os.path.join(self.base, "index.sqlite")))

    def test_listens_on_configured_port(self) -> None:
        """Starting the service listens on the configured port and bind address."""
        reactor = MemoryReactorClock()
        top = tap.makeService(self.options("--port", "4105", "-ba", "127.0.0.1"), reactor)
        top.startService()
        self.addCleanup(top.stopService)
        self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers],
                         [(4105, "127.0.0.1")])

    def test_sets_the_reactor_spin(self) -> None:
        """Our reactor spins as ``poll_spin`` says (40 µs by default)."""
        from dicomtwist.reactor import DicomReactor

        for argv, spin in (((), 40e-6), (("--poll-spin", "0"), 0.0),
                           (("--poll-spin", "250"), 250e-6)):
            reactor = DicomReactor()
            self.addCleanup(reactor._poller.close)
            tap.makeService(self.options(*argv), reactor)
            self.assertAlmostEqual(reactor.spin, spin, msg=argv)

    def test_sets_log_level(self) -> None:
        """makeService applies the log level of the options."""
        tap.makeService(self.options("-ll", "error"), MemoryReactorClock())
        self.assertEqual(dlog.level(), LogLevel.error)

    def test_listen_description_ipv6(self) -> None:
        """An IPv6 bind address has its colons escaped in the endpoint description."""
        settings = configuration.Config(port=104, bind_address="::1")
        self.assertEqual(tap.listen_description(settings), "tcp:104:interface=\\:\\:1")

    def test_clean_option_exits(self) -> None:
        """With --clean --yes makeService empties the archive and exits with status 0."""
        options = self.options("--clean", "--yes")
        self.patch(sys, "stdout", io.StringIO())
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options, MemoryReactorClock())
        self.assertEqual(caught.exception.code, 0)


class CleanTests(SynchronousTestCase):
    """``--clean``: delete indexed instance files and empty the index."""

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.instances = os.path.join(base, "instances")
        os.makedirs(self.instances)
        self.settings = configuration.Config(
            instance_location=self.instances,
            database_location=os.path.join(base, "index.sqlite"))
        self.outside = os.path.join(base, "outside.dcm")
        with open(self.outside, "wb") as fp:
            fp.write(b"not ours")
        index = Index(self.settings.database_location)
        self.stored = []
        for n in range(3):
            ds = ct_dataset(PatientID=f"P{n}")
            name = f"{ds.SOPInstanceUID}.dcm"
            path = os.path.join(self.instances, name)
            ds.save_as(path, enforce_file_format=True)
            index.add(ds, name, str(ds.file_meta.TransferSyntaxUID), os.path.getsize(path))
            self.stored.append(path)
        # A tampered row pointing outside the instance directory.
        index.add(ct_dataset(PatientID="OUT"), "../outside.dcm", "1.2.840.10008.1.2.1", 8)
        index.close()
        self.temp = os.path.join(self.instances, f"{TEMP_PREFIX}abc{TEMP_SUFFIX}")
        with open(self.temp, "wb") as fp:
            fp.write(b"partial")
        self.stdout = io.StringIO()
        self.patch(sys, "stdout", self.stdout)

    def counts(self) -> dict[str, int]:
        """Rows per level in the index."""
        index = Index(self.settings.database_location)
        try:
            return {level: index.count(level) for level in ("PATIENT", "STUDY", "SERIES", "IMAGE")}
        finally:
            index.close()

    def test_answer_no(self) -> None:
        """Answering anything but yes removes nothing and exits non-zero."""
        for answer in ("no", "", "y"):
            questions = []
            status = tap.clean(self.settings, ask=lambda q: (questions.append(q), answer)[1])
            self.assertNotEqual(status, 0)
            self.assertEqual(len(questions), 1)
            self.assertIn("[yes/no]", questions[0])
        for path in (*self.stored, self.temp, self.outside):
            self.assertTrue(os.path.exists(path), path)
        self.assertEqual(self.counts()["IMAGE"], 4)

    def test_end_of_input(self) -> None:
        """End of input at the prompt (stdin closed) means no, without a traceback."""
        def eof(question):
            raise EOFError()

        self.assertNotEqual(tap.clean(self.settings, ask=eof), 0)
        for path in (*self.stored, self.temp, self.outside):
            self.assertTrue(os.path.exists(path), path)
        self.assertEqual(self.counts()["IMAGE"], 4)

    def test_answer_yes(self) -> None:
        """Yes removes indexed and temporary files and empties the index, nothing outside."""
        status = tap.clean(self.settings, ask=lambda q: " YES\n")
        self.assertEqual(status, 0)
        self.assertEqual(os.listdir(self.instances), [])
        self.assertEqual(self.counts(), {"PATIENT": 0, "STUDY": 0, "SERIES": 0, "IMAGE": 0})
        with open(self.outside, "rb") as fp:
            self.assertEqual(fp.read(), b"not ours")

    def test_assume_yes(self) -> None:
        """With assume_yes nothing is asked and everything is cleaned."""
        status = tap.clean(self.settings, assume_yes=True, ask=lambda q: self.fail("asked"))
        self.assertEqual(status, 0)
        self.assertEqual(os.listdir(self.instances), [])
        self.assertTrue(os.path.exists(self.outside))

    def test_symlink_out_of_directory_not_followed(self) -> None:
        """An indexed name that is a symlink to a file outside is not followed."""
        target = os.path.join(os.path.dirname(self.instances), "target.dcm")
        with open(target, "wb") as fp:
            fp.write(b"keep")
        os.unlink(self.stored[0])
        os.symlink(target, self.stored[0])
        tap.clean(self.settings, assume_yes=True)
        with open(target, "rb") as fp:
            self.assertEqual(fp.read(), b"keep")

    def test_orphaned_instance_removed(self) -> None:
        """An unindexed ``<uid>.dcm`` left in the instance directory is removed too."""
        orphan = os.path.join(self.instances, "1.2.3.4.dcm")
        with open(orphan, "wb") as fp:
            fp.write(b"orphan")
        tap.clean(self.settings, assume_yes=True)
        self.assertFalse(os.path.exists(orphan))

    def test_missing_files_tolerated(self) -> None:
        """Indexed files that are already gone do not stop the clean."""
        os.unlink(self.stored[1])
        self.assertEqual(tap.clean(self.settings, assume_yes=True), 0)
        self.assertEqual(self.counts()["IMAGE"], 0)


class RunTests(SynchronousTestCase):
    """The ``dicomqr`` console script."""

    def test_bad_option_exits_2(self) -> None:
        """A bad option prints a one-line error naming it and exits with status 2."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.patch(sys, "argv", ["dicomqr", "--port", "eleven"])
        with self.assertRaises(SystemExit) as caught:
            tap.run()
        self.assertEqual(caught.exception.code, 2)
        self.assertIn("'eleven'", stderr.getvalue().splitlines()[0])
