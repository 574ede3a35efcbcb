"""The archive index: patients, studies, series and instances in SQL.

The services talk to an :class:`IndexBackend` and never know which one:
:class:`~dicomtwist.storage.index.sqlite.SqliteIndex` (one file, the
embedded default; ``Index`` is its old name) or
:class:`~dicomtwist.storage.index.postgres.PostgresIndex` (one PostgreSQL
database shared by several daemons).  :func:`open_index` chooses by the
location.  Both run the same C-FIND planning and matching
(``dicomtwist.storage.matching``, one SQL builder with the dialects kept
apart) over the same layout (see ``base``), and the same tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Callable, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicomtwist import log as dlog
from dicomtwist.storage.index.base import (
    ATTRIBUTES,
    BATCH_SIZE,
    INDEXED_TAGS,
    LEVELS,
    MODELS,
    SCHEMA_VERSION,
    SEQUENCES,
    TABLES,
    UNIQUE_KEYS,
    Attribute,
    IndexUnavailable,
    InstanceRecord,
    QueryError,
    StoredInstance,
    _ADDED,
    _character_set,
    _row,
    _stored_value,
    unsupported_keys,
)
from dicomtwist.storage.index.sqlite import SqliteIndex

__all__ = [
    "ATTRIBUTES",
    "Attribute",
    "BATCH_SIZE",
    "INDEXED_TAGS",
    "Index",
    "IndexBackend",
    "IndexUnavailable",
    "InstanceRecord",
    "LEVELS",
    "MODELS",
    "QueryError",
    "SCHEMA_VERSION",
    "SEQUENCES",
    "SqliteIndex",
    "StoredInstance",
    "TABLES",
    "UNIQUE_KEYS",
    "is_postgres_location",
    "open_index",
    "safe_location",
    "unsupported_keys",
]

Index = SqliteIndex
"""The sqlite index (``Index(path)``), as before there were two backends."""

#: The schema version that added the sequence item tables (sequence matching).
SEQUENCE_ITEMS_VERSION = 3

_log = dlog.logger()

# For the tests of row decoding.
_ADDED, _character_set, _row, _stored_value = _ADDED, _character_set, _row, _stored_value


@runtime_checkable
class IndexBackend(Protocol):
    """What the services call on an index, every method blocking: call it
    from a worker thread (``deferToThreadPool``), never on the reactor.

    Writes are grouped by :meth:`transaction` (nestable; each ``add`` and
    ``remove`` is a savepoint of the enclosing one).  Queries read
    committed data, ``batch_size`` rows per trip to the database, and hold
    no lock or connection between batches.
    """

    batch_size: int
    location: str

    def add(self, ds: Dataset, path: str, transfer_syntax: str, size: int,
            metadata: bytes | None = None,
            then: Callable[[], object] | None = None) -> None:
        """Index one stored instance (a second add of a UID replaces it);
        ``then()`` runs inside the same savepoint once the rows are
        written, and its exception rolls them back."""

    def remove(self, sop_instance_uid: str) -> str | None:
        """Remove one instance and its emptied parents; its path, or None."""

    def delete_study(self, study_instance_uid: str) -> list[str]:
        """Remove a study and its emptied patient; the removed paths."""

    def clear(self) -> None:
        """Remove every row."""

    def transaction(self) -> AbstractContextManager[None]:
        """A block of writes committed together (durable at its end)."""

    def find(self, identifier: Dataset, model: str, *, relational: bool = False,
             combined: bool = False) -> Iterator[Dataset]:
        """C-FIND: one response identifier per match (``relational``:
        relational queries were negotiated; ``combined``: combined
        date-time matching was)."""

    def find_encoded(self, identifier: Dataset, model: str, transfer_syntax: str, *,
                     relational: bool = False, combined: bool = False) -> Iterator[bytes]:
        """C-FIND: each response identifier encoded in ``transfer_syntax``."""

    def query(self, identifier: Dataset, model: str, *, relational: bool = False,
              offset: int = 0, limit: int | None = None,
              ) -> tuple[tuple[tuple[BaseTag, str], ...], Iterator[tuple]]:
        """QIDO-RS: the return keys and the matches as plain values."""

    def retrieve(self, identifier: Dataset, model: str, *,
                 relational: bool = False) -> list[InstanceRecord]:
        """C-MOVE/C-GET: the instances under the entities an identifier names
        (``relational``: relational retrieval was negotiated)."""

    def instances(self, study: str, series: str | None = None,
                  instance: str | None = None,
                  metadata: bool = False) -> list[StoredInstance]:
        """WADO-RS: the stored instances of a study, series or instance."""

    def locate(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """The Study and Series Instance UIDs of an instance, or None."""

    def set_metadata(self, sop_instance_uid: str, metadata: bytes) -> None:
        """Keep the metadata of an indexed instance."""

    def get_path(self, sop_instance_uid: str) -> str | None:
        """The path of an instance, or None."""

    def paths(self) -> list[str]:
        """The paths of all indexed instances."""

    def count(self, level: str) -> int:
        """The number of patients, studies, series or instances."""

    def close(self) -> None:
        """Release the database (connections, pool)."""


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_location(location: str) -> bool:
    """Whether ``location`` is a PostgreSQL connection URI (libpq's
    ``postgresql://`` or ``postgres://``) rather than an sqlite file."""
    return location.lower().startswith(_POSTGRES_SCHEMES)


def safe_location(location: str) -> str:
    """``location`` as it may be logged: a URI without its password
    (``postgresql://user@host/db``), a path as it is."""
    if not is_postgres_location(location):
        return location
    try:
        parts = urlsplit(location)
        netloc = parts.netloc
        if "@" in netloc:
            credentials, _, hosts = netloc.rpartition("@")
            user = credentials.split(":", 1)[0]
            netloc = f"{user}@{hosts}" if user else hosts
        query = "&".join(p for p in parts.query.split("&")
                         if p and not p.lower().startswith("password="))
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return location.split("://", 1)[0] + "://..."


def open_index(location: str, **options: object) -> IndexBackend:
    """Open the index at ``location``: PostgreSQL for a ``postgresql://`` or
    ``postgres://`` URI (passwords from ``~/.pgpass`` or ``PGPASSWORD``, or
    the URI), sqlite for a path.

    The schema is created in an empty database; an older one is upgraded
    in one transaction (automatically: every step so far only adds tables
    and indexes, and an older daemon refuses the result).

    :param options: passed to the backend (PostgreSQL: timeouts, pool size).
    :raises IndexUnavailable: one line naming the location (no password):
        unreachable, not a database, or a schema newer than this code.
    """
    index: IndexBackend
    if is_postgres_location(location):
        from dicomtwist.storage.index.postgres import PostgresIndex

        index = PostgresIndex(location, **options)  # type: ignore[arg-type]
    else:
        index = SqliteIndex(location, **options)  # type: ignore[arg-type]
    opened = getattr(index, "opened_version", 0)
    if 0 < opened < SEQUENCE_ITEMS_VERSION and index.count("IMAGE"):
        _log.warn("Index at {location} upgraded from schema version {old} to {new}:"
                  " sequence matching sees the instances stored before the upgrade"
                  " only after --reindex", location=index.location, old=opened,
                  new=SCHEMA_VERSION)
    return index
