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

def logger() -> Logger:
    """A Logger for a class attribute (``log = logger()``), filtered by level."""
    return Logger(observer=observer)


def set_level(level: LogLevel) -> None:
    """Show our events at ``level`` and above."""
    predicate.setLogLevelForNamespace(None, level)  # type: ignore[arg-type]
