"""Index backends for the tests: every suite of the index runs on both.

A suite is written as a plain mixin class using ``self.make_index()``;
:func:`both` turns it into two test cases, ``<Name>Sqlite`` and
``<Name>Postgres``, with identical expectations.  The PostgreSQL one
needs the throwaway cluster of ``tests.pg`` (it fails, never skips, when
PostgreSQL is not installed).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.storage.index import SqliteIndex
from tests import pg

__all__ = ["PostgresBackend", "SqliteBackend", "both"]


class SqliteBackend:
    """Indexes in sqlite files under the test's temporary directory."""

    backend = "sqlite"

    def new_location(self) -> str:
        """A location for a new, empty index."""
        directory = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(directory)
        return os.path.join(directory, "index.sqlite")

    def open_index(self, location: str, **options: Any) -> Any:
        """Open the index at ``location``, closed by the test's cleanup."""
        index = SqliteIndex(location, **options)
        self.addCleanup(index.close)  # type: ignore[attr-defined]
        return index

    def make_index(self, **options: Any) -> Any:
        """A new, empty index."""
        self.location = self.new_location()
        return self.open_index(self.location, **options)

    def indexed_columns(self, index: Any) -> set[tuple[str, tuple[str, ...]]]:
        """``(table, columns)`` of every index of the database."""
        found = set()
        for table in ("patient", "study", "series", "instance"):
            for _, name, *_ in index._sql(f"PRAGMA index_list({table})"):
                found.add((table, tuple(r[2] for r in index._sql(f"PRAGMA index_info({name})"))))
        return found


class PostgresBackend:
    """Indexes in databases of the test process's PostgreSQL cluster."""

    backend = "postgresql"

    def new_location(self) -> str:
        """A new, empty database, dropped by the test's cleanup."""
        uri = pg.create_database()
        self.addCleanup(pg.drop_database, uri)  # type: ignore[attr-defined]
        return uri

    def open_index(self, location: str, **options: Any) -> Any:
        """Open the index at ``location``, closed by the test's cleanup."""
        from dicomtwist.storage.index.postgres import PostgresIndex

        index = PostgresIndex(location, **options)
        self.addCleanup(index.close)  # type: ignore[attr-defined]
        return index

    def make_index(self, **options: Any) -> Any:
        """A new, empty index."""
        self.location = self.new_location()
        return self.open_index(self.location, **options)

    def indexed_columns(self, index: Any) -> set[tuple[str, tuple[str, ...]]]:
        """``(table, columns)`` of every index of the database."""
        rows = index._sql(
            "SELECT t.relname, array_agg(a.attname ORDER BY k.n) FROM pg_index x "
            "JOIN pg_class t ON t.oid = x.indrelid "
            "JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n) ON TRUE "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
            "WHERE t.relname IN ('patient', 'study', 'series', 'instance') "
            "GROUP BY x.indexrelid, t.relname")
        return {(table, tuple(names)) for table, names in rows}


def both(suite: type, module: str | None = None) -> tuple[type, type]:
    """Define ``<Name>Sqlite`` and ``<Name>Postgres`` test cases running
    the mixin ``suite`` in the calling module.

    :param module: the module to define them in (the caller's by default).
    """
    if module is None:
        module = sys._getframe(1).f_globals["__name__"]
    made = []
    for backend, suffix in ((SqliteBackend, "Sqlite"), (PostgresBackend, "Postgres")):
        name = f"{suite.__name__}{suffix}"
        case = type(name, (suite, backend, SynchronousTestCase),
                    {"__module__": module, "__doc__": f"{suite.__doc__} ({backend.backend})"})
        setattr(sys.modules[module], name, case)
        made.append(case)
    return made[0], made[1]
