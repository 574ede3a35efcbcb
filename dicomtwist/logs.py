"""Console logging in the style of the DICOM command-line tools.

Every event becomes one line per line of its text, prefixed with the first
letter of its level: ``I: Association Accepted``, ``W: ...``, ``E: ...``,
``D: ...``.  Events below the chosen level are dropped.  Twisted's own
informational chatter (``Starting factory ...``) is demoted to debug, so the
default output holds only what the application says.

A terminal may also show one *status line* (a live progress count) under
the log: :meth:`LineObserver.set_status` draws it, and each log line is
written above it.  On a stream that is not a terminal the status line is
never drawn; the log lines alone tell the story.

Both ``movescu`` and the archive daemon use :func:`level_from_options` for
their ``-q``/``-v``/``-d``/``-ll`` options and :func:`start_logging`.

For log shippers the archive can write one JSON object a line instead
(:class:`JsonObserver`, ``--log-format json``): the time in ISO 8601 UTC,
the level, the namespace, the event's text, and the structured fields an
association's events carry (``association_id``, ``peer_host``,
``calling_ae``, ``called_ae``).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any, Iterable

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner
from zope.interface import implementer

__all__ = [
    "JSON_FIELDS",
    "LEVEL_NAMES",
    "JsonObserver",
    "LineObserver",
    "level_from_options",
    "parse_level",
    "start_logging",
]

#: ``-ll`` values and the level each stands for (``warn`` is an alias, as
#: ``errata.md`` asks).
LEVEL_NAMES: dict[str, LogLevel] = {
    "critical": LogLevel.critical,
    "error": LogLevel.error,
    "warning": LogLevel.warn,
    "warn": LogLevel.warn,
    "info": LogLevel.info,
    "debug": LogLevel.debug,
}

#: The line prefix of each level.
PREFIXES: dict[LogLevel, str] = {
    LogLevel.debug: "D",
    LogLevel.info: "I",
    LogLevel.warn: "W",
    LogLevel.error: "E",
    LogLevel.critical: "C",
}

#: Namespaces whose debug and info events are shown only at debug level.
QUIET_NAMESPACES: tuple[str, ...] = ("twisted.", "log_legacy")

#: Twisted's own messages (by format) shown only at debug level: a factory
#: that is not marked ``noisy = False`` announces every start and stop.
QUIET_FORMATS: frozenset[str] = frozenset({
    "Starting factory {factory!r}",
    "Stopping factory {factory!r}",
})

#: Erase the current terminal line (carriage return, erase to end of line).
_ERASE_LINE = "\r\x1b[K"


def parse_level(name: str) -> LogLevel:
    """The log level for a ``-ll`` value.

    :param name: one of :data:`LEVEL_NAMES`, in any case.
    :raises ValueError: for any other name.
    """
    try:
        return LEVEL_NAMES[name.strip().lower()]
    except KeyError:
        choices = ", ".join(LEVEL_NAMES)
        raise ValueError(f"unknown log level {name!r} (choose from {choices})") from None


def level_from_options(quiet: bool = False, verbose: bool = False, debug: bool = False,
                       log_level: str | LogLevel | None = None,
                       default: LogLevel = LogLevel.info) -> LogLevel:
    """The level the ``-q``/``-v``/``-d``/``-ll`` options select.

    The most explicit option wins: ``-ll``, then ``-d``, then ``-v``, then
    ``-q``.  Quiet mode keeps only critical events, so no warnings or
    errors are printed.

    :param default: the level with none of the options.
    :raises ValueError: ``log_level`` is not a known level name.
    """
    if log_level is not None:
        return log_level if isinstance(log_level, LogLevel) else parse_level(log_level)
    if debug:
        return LogLevel.debug
    if verbose:
        return LogLevel.info
    if quiet:
        return LogLevel.critical
    return default


@implementer(ILogObserver)
class LineObserver:
    """Write log events to a text stream as ``X: message`` lines.

    :param stream: where the lines go.
    :param level: the least severe level written.
    :param quiet_namespaces: namespace prefixes whose events below warning
        are treated as debug events.
    """

    def __init__(self, stream: IO[str], level: LogLevel = LogLevel.info,
                 quiet_namespaces: Iterable[str] = QUIET_NAMESPACES) -> None:
        self.stream = stream
        self.level = level
        self.quiet_namespaces = tuple(quiet_namespaces)
        self._status: str | None = None
        isatty = getattr(stream, "isatty", None)
        try:
            self.is_terminal = bool(isatty and isatty())
        except (ValueError, OSError):
            self.is_terminal = False

    def effective_level(self, event: dict[str, Any]) -> LogLevel:
        """The level an event is filtered and prefixed by."""
        level = event.get("log_level", LogLevel.info)
        if level < LogLevel.warn:
            namespace = event.get("log_namespace") or ""
            if (namespace.startswith(self.quiet_namespaces)
                    or event.get("log_format") in QUIET_FORMATS):
                return LogLevel.debug
        return level

    def format(self, event: dict[str, Any], level: LogLevel) -> str:
        """The lines (newline-terminated) an event is written as."""
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            detail = failure.getTraceback() if self.level <= LogLevel.debug else (
                f"{failure.type.__name__}: {failure.getErrorMessage()}")
            text = f"{text}\n{detail}" if text else detail
        prefix = PREFIXES.get(level, "I")
        lines = text.replace("\r\n", "\n").split("\n")
        return "".join(f"{prefix}: {line}\n" if line else f"{prefix}:\n" for line in lines)

    def __call__(self, event: dict[str, Any]) -> None:
        """Write one event if its level passes the filter."""
        level = self.effective_level(event)
        if level < self.level:
            return
        self.write(self.format(event, level))

    def write(self, text: str) -> None:
        """Write text above the status line (if one is shown)."""
        try:
            if self._status is not None:
                self.stream.write(_ERASE_LINE + text + self._status)
            else:
                self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            # A closed or broken stream must never break the program.
            pass

    def set_status(self, text: str | None) -> None:
        """Show (or, with None, clear) a live status line on a terminal.

        Does nothing when the stream is not a terminal, or when the level
        is above info (quiet mode).
        """
        if not self.is_terminal or self.level > LogLevel.info:
            return
        self._status = text
        try:
            self.stream.write(_ERASE_LINE + (text or ""))
            self.stream.flush()
        except (OSError, ValueError):
            pass


#: Structured fields of an event copied into its JSON object when present.
JSON_FIELDS = ("association_id", "peer_host", "calling_ae", "called_ae")

#: The JSON ``level`` of each level (the words log shippers expect).
JSON_LEVELS: dict[LogLevel, str] = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warning",
    LogLevel.error: "error",
    LogLevel.critical: "critical",
}


@implementer(ILogObserver)
class JsonObserver(LineObserver):
    """Write log events to a text stream as one JSON object a line.

    ``{"timestamp": "2026-01-02T03:04:05.678Z", "level": "info",
    "namespace": "dicomtwist.association.protocol.Association", "event":
    "Association Accepted: ...", "association_id": 7, "peer_host":
    "10.0.0.5", "calling_ae": "CT1", "called_ae": "QRSCP"}``; an event
    with a failure adds ``error`` (type and message) and ``traceback``.
    The text of a multi-line event stays in one line (JSON escapes its
    newlines).  Levels filter as :class:`LineObserver`'s do.
    """

    def format(self, event: dict[str, Any], level: LogLevel) -> str:
        """The event's JSON line (newline-terminated)."""
        when = event.get("log_time")
        stamp = datetime.fromtimestamp(when if when is not None else 0, timezone.utc)
        record: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": JSON_LEVELS.get(level, "info"),
            "namespace": event.get("log_namespace") or "",
            "event": formatEvent(event),
        }
        for name in JSON_FIELDS:
            value = event.get(name)
            if value is not None and value != "":
                record[name] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            record["traceback"] = failure.getTraceback()
        return json.dumps(record, ensure_ascii=False, default=str) + "\n"

    def set_status(self, text: str | None) -> None:
        """No status line among JSON lines."""


#: ``--log-format`` values and their observers.
OBSERVERS: dict[str, type[LineObserver]] = {"text": LineObserver, "json": JsonObserver}


def observer_for(log_format: str, level: LogLevel, stream: IO[str]) -> LineObserver:
    """The observer writing ``log_format`` (``text`` or ``json``) to ``stream``."""
    return OBSERVERS[log_format](stream, level)


def start_logging(level: LogLevel, stream: IO[str] | None = None,
                  log_format: str = "text") -> LineObserver:
    """Send every Twisted log event to ``stream`` as prefixed lines (or, with
    ``log_format="json"``, as JSON objects).

    Begins global logging (:data:`twisted.logger.globalLogBeginner`), so it
    is called once per process, by a program's entry point.

    :param level: the least severe level shown.
    :param stream: default ``sys.stderr``.
    :returns: the observer, for :meth:`LineObserver.set_status`.
    """
    observer = observer_for(log_format, level, stream if stream is not None else sys.stderr)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    return observer
