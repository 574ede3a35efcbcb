"""Our loggers and their level filter.

Every dicomtwist class logs through :func:`logger`: an event below the
level set from ``-q``/``-v``/``-d``/``-ll`` is dropped before it is even
built (logging sits on the association hot path), and the rest go to the
global log publisher, whatever observer twistd or a console script has put
there.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import LogLevel, Logger, globalLogPublisher

_PRIORITY = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2,
             LogLevel.error: 3, LogLevel.critical: 4}
#: Events below this priority are dropped.
_threshold = _PRIORITY[LogLevel.info]
#: Whether debug, and info, events are shown: for hot paths, which test
#: them before building an event's fields (an attribute read rather than a
#: call of :func:`debug_enabled` / :func:`info_enabled`).  Kept by
#: :func:`set_level`; read them as ``dlog.debug_on``, never import them.
debug_on = False
info_on = True


class FilteredLogger:
    """A logger with :class:`twisted.logger.Logger`'s methods that drops
    events below the configured level before building them.

    As a class attribute (``log = logger()``) it takes the class as its
    namespace and source once, at class creation, so reading ``self.log``
    costs no descriptor call (logging sits on the association hot path).
    """

    def __init__(self, namespace: str) -> None:
        self._logger = Logger(namespace=namespace, observer=globalLogPublisher)

    def __set_name__(self, owner: type, name: str) -> None:
        self._logger = Logger(namespace=f"{owner.__module__}.{owner.__qualname__}",
                              source=owner, observer=globalLogPublisher)

    @property
    def namespace(self) -> str:
        """The namespace of the events."""
        return self._logger.namespace

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        """Emit unless ``level`` is below the configured one."""
        if _PRIORITY.get(level, 4) >= _threshold:
            self._logger.emit(level, format, **kwargs)

    def debug(self, format: str | None = None, **kwargs: Any) -> None:
        """Emit a debug event."""
        if _threshold == 0:
            self._logger.emit(LogLevel.debug, format, **kwargs)

    def info(self, format: str | None = None, **kwargs: Any) -> None:
        """Emit an info event."""
        if _threshold <= 1:
            self._logger.emit(LogLevel.info, format, **kwargs)

    def warn(self, format: str | None = None, **kwargs: Any) -> None:
        """Emit a warning event."""
        if _threshold <= 2:
            self._logger.emit(LogLevel.warn, format, **kwargs)

    def error(self, format: str | None = None, **kwargs: Any) -> None:
        """Emit an error event."""
        if _threshold <= 3:
            self._logger.emit(LogLevel.error, format, **kwargs)

    def critical(self, format: str | None = None, **kwargs: Any) -> None:
        """Emit a critical event."""
        self._logger.emit(LogLevel.critical, format, **kwargs)

    def failure(self, format: str, failure: Any = None, level: LogLevel = LogLevel.critical,
                **kwargs: Any) -> None:
        """Log a failure (always: failures are our bugs)."""
        self._logger.failure(format, failure, level, **kwargs)


def logger() -> FilteredLogger:
    """A level-filtered logger, for a class attribute (``log = logger()``)
    or a module (namespace: the calling module)."""
    return FilteredLogger(sys._getframe(1).f_globals.get("__name__", "dicomtwist"))


def set_level(level: LogLevel) -> None:
    """Show our events at ``level`` and above."""
    global _threshold, debug_on, info_on
    _threshold = _PRIORITY[level]
    debug_on = _threshold == 0
    info_on = _threshold <= 1


def level() -> LogLevel:
    """The level set by :func:`set_level`."""
    return next(lvl for lvl, priority in _PRIORITY.items() if priority == _threshold)


def debug_enabled() -> bool:
    """True when debug events are shown."""
    return _threshold == 0


def info_enabled() -> bool:
    """True when info events are shown (hot paths test it before building
    an event's fields)."""
    return _threshold <= 1
