"""Our loggers and their level filter.

Every dicomtwist class logs through ``Logger(observer=observer)``: events
pass a level filter (set from ``-q``/``-v``/``-d``/``-ll``) and then reach
the global log publisher, whatever observer twistd or a console script has
put there.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)

predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [predicate])

#: The spec's ``-ll`` names, with ``warn`` accepted for ``warning``.
LEVELS = {
    "critical": LogLevel.critical,
    "error": LogLevel.error,
    "warning": LogLevel.warn,
    "warn": LogLevel.warn,
    "info": LogLevel.info,
    "debug": LogLevel.debug,
}


def logger() -> Logger:
    """A Logger for a class attribute (``log = logger()``), filtered by level."""
    return Logger(observer=observer)


def set_level(level: LogLevel) -> None:
    """Show our events at ``level`` and above."""
    predicate.setLogLevelForNamespace(None, level)  # type: ignore[arg-type]


def level_from_options(quiet: bool = False, verbose: bool = False, debug: bool = False,
                       log_level: str | None = None) -> LogLevel:
    """The level the spec's options ask for (``-ll`` wins, then -d, -v, -q).

    Without options only warnings and errors show, as the reference does.
    :raises ValueError: an unknown ``-ll`` name.
    """
    if log_level is not None:
        try:
            return LEVELS[log_level.lower()]
        except KeyError:
            raise ValueError(f"unknown log level {log_level!r}; one of"
                             f" {', '.join(sorted(LEVELS))}") from None
    if debug:
        return LogLevel.debug
    if verbose:
        return LogLevel.info
    if quiet:
        return LogLevel.critical
    return LogLevel.warn
