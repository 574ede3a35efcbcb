"""Tests for dicomtwist.logs' JSON log format (``--log-format json``) and
its selection under twistd and the console script."""

from __future__ import annotations

import io
import json

from twisted.logger import LogLevel, Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import logs, tap


def emit(observer: logs.LineObserver, level: LogLevel, text: str, **fields) -> None:
    """Send one event, as a Logger would, to ``observer``."""
    Logger(namespace="dicomtwist.test", observer=observer).emit(level, text, **fields)


class JsonObserverTests(SynchronousTestCase):
    """One JSON object a line, with the association's fields."""

    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.observer = logs.JsonObserver(self.stream, LogLevel.info)

    def records(self) -> list[dict]:
        lines = self.stream.getvalue().splitlines()
        return [json.loads(line) for line in lines]

    def test_association_event(self) -> None:
        """Timestamp (ISO 8601 UTC), level, namespace, the text and the
        association's structured fields."""
        self.observer({"log_level": LogLevel.info, "log_namespace": "dicomtwist.test",
                       "log_format": "Association Accepted: calling {calling}",
                       "calling": "CT1", "association_id": 7, "peer_host": "10.0.0.5",
                       "calling_ae": "CT1", "called_ae": "QRSCP", "log_time": 1767323045.678})
        self.assertEqual(self.records(), [{
            "timestamp": "2026-01-02T03:04:05.678Z", "level": "info",
            "namespace": "dicomtwist.test", "event": "Association Accepted: calling CT1",
            "association_id": 7, "peer_host": "10.0.0.5", "calling_ae": "CT1",
            "called_ae": "QRSCP"}])

    def test_multiline_and_failure(self) -> None:
        """A multi-line text stays on one line; a failure adds error and traceback."""
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        emit(self.observer, LogLevel.critical, "two\nlines", log_failure=failure)
        self.assertEqual(len(self.stream.getvalue().splitlines()), 1)
        record, = self.records()
        self.assertEqual((record["level"], record["event"], record["error"]),
                         ("critical", "two\nlines", "ZeroDivisionError: division by zero"))
        self.assertIn("Traceback", record["traceback"])
        self.assertNotIn("association_id", record)

    def test_levels_filtered(self) -> None:
        """Events below the level, and Twisted's own info chatter, are left out;
        warnings are "warning"."""
        emit(self.observer, LogLevel.debug, "hidden")
        Logger(namespace="twisted.web", observer=self.observer).info("chatter")
        emit(self.observer, LogLevel.warn, "shown")
        self.assertEqual([(r["level"], r["event"]) for r in self.records()],
                         [("warning", "shown")])


class SelectionTests(SynchronousTestCase):
    """``--log-format`` picks the observer; twistd gets it as a component."""

    def test_option_and_default(self) -> None:
        """``--log-format json`` sets ``log_format``; text is the default; others are refused."""
        options = tap.Options()
        options.parseOptions(["--log-format", "json"])
        self.assertEqual(options["settings"].log_format, "json")
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["settings"].log_format, "text")
        from twisted.python import usage

        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--log-format", "xml"])
        self.assertIn("log_format", str(caught.exception))

    def test_observer_for(self) -> None:
        """``text`` is the console's prefixed lines, ``json`` the JSON lines."""
        stream = io.StringIO()
        self.assertIs(type(logs.observer_for("text", LogLevel.info, stream)), logs.LineObserver)
        self.assertIs(type(logs.observer_for("json", LogLevel.info, stream)), logs.JsonObserver)

    def test_twistd_component(self) -> None:
        """Under twistd, the top service gives the application a JSON observer
        writing to standard output (``-n``, no log file)."""
        from twisted.application import service
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import ILogObserver

        base = self.mktemp()
        options = tap.Options()
        options.parent = {"nodaemon": True, "logfile": None, "syslog": False}
        options.parseOptions(["--log-format", "json", "--instance-location", base + "/i",
                              "--database-location", base + "/i.sqlite"])
        top = tap.makeService(options, MemoryReactorClock())
        application = service.Application("dicomqr")
        top.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsInstance(observer, logs.JsonObserver)
        import sys

        self.assertIs(observer.stream, sys.stdout)
        for child in top:
            if hasattr(child, "index"):
                child.index.close()
