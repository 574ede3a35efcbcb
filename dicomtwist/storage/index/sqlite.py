"""The index in one sqlite file: the embedded default.

One sqlite connection (WAL, ``synchronous=NORMAL``) is guarded by a lock;
queries take the lock for one batch of rows at a time, never across a
``yield``.  A transaction holds the lock for its whole block, so other
threads see committed data only.

``add`` keeps a memory of the parent rows this connection wrote, and bumps
the derived counts of a new instance instead of recounting: right for one
process that owns the file (sqlite's own locking keeps a second process
from corrupting it, but not this memory; several daemons on one index need
PostgreSQL, see ``postgres.py``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from contextlib import contextmanager
from typing import Any

from dicomtwist.storage.index.base import (
    BATCH_SIZE,
    IndexUnavailable,
    SqlIndex,
    SqlTypes,
    _WRITTEN_COLUMNS,
)

__all__ = ["SqliteIndex"]

#: A parent row known to be unchanged (see ``SqliteIndex._parent``).
_SAME = object()
#: The derived counts of new instances, one parent row at a time
#: (``SqliteIndex._flush_counts``).
_COUNT_SERIES = ("UPDATE series SET number_of_series_related_instances = "
                 "COALESCE(number_of_series_related_instances, 0) + ? WHERE pk = ?")
_COUNT_STUDY = ("UPDATE study SET number_of_study_related_series = "
                "COALESCE(number_of_study_related_series, 0) + ?, "
                "number_of_study_related_instances = "
                "COALESCE(number_of_study_related_instances, 0) + ? WHERE pk = ?")
COUNT_NEW_PATIENTS = (
    "UPDATE patient SET number_of_patient_related_studies = "
    "COALESCE(number_of_patient_related_studies, 0) + ?, "
    "number_of_patient_related_series = "
    "COALESCE(number_of_patient_related_series, 0) + ?, "
    "number_of_patient_related_instances = "
    "COALESCE(number_of_patient_related_instances, 0) + ? WHERE pk = ?")
#: Parent rows remembered before the memory is cleared.
_KNOWN_LIMIT = 4096
#: The attributes a parent row's values are made of, as a tuple, by table
#: (what ``SqliteIndex._parent`` compares with the last written).
_STATE = {table: itemgetter(*(keyword for keyword, *_ in columns))
          for table, columns in _WRITTEN_COLUMNS.items()}


class SqliteIndex(SqlIndex):
    """The sqlite index of an archive, shared between threads.

    :param path: the database file; created with its schema if needed, an
        older schema upgraded.
    :param batch_size: rows fetched per lock acquisition by ``find``.
    :raises IndexUnavailable: (one line naming the file) if it cannot be
        opened, is not an sqlite database, or has a newer schema.
    """

    types = SqlTypes(primary_key="INTEGER PRIMARY KEY", integer="INTEGER", text="TEXT",
                     blob="BLOB")

    def __init__(self, path: str, batch_size: int = BATCH_SIZE) -> None:
        self.location = path
        self.batch_size = batch_size
        self._lock = threading.RLock()
        self._depth = 0
        #: Parent rows as this connection last wrote them:
        #: ``(table, key) -> (pk, values)``, and the SOP classes of studies.
        #: A parent whose values are unchanged needs no upsert.  Forgotten
        #: on any rollback, removal or recount.
        self._known: dict[tuple, tuple[int, tuple]] = {}
        self._study_classes: dict[int, set[str]] = {}
        #: New instances whose derived counts are still to be written in
        #: this transaction: ``(series pk, study pk, patient pk, new series,
        #: new study)``; those before ``_flushed`` are written already.
        self._counts: list[tuple[int, int, int, int, int]] = []
        self._flushed = 0
        self._sql_cache: dict[tuple, str] = {}
        #: The version the file had when opened (0: new).
        self.opened_version = 0
        try:
            # isolation_level=None: transactions are our SAVEPOINTs, not the
            # sqlite3 module's implicit BEGINs.
            self._conn = sqlite3.connect(path, check_same_thread=False,
                                         isolation_level=None, timeout=30)
            #: One cursor for SAVEPOINT and RELEASE (used under the lock;
            #: ``Connection.execute`` makes a new cursor every time).
            self._control = self._conn.cursor()
        except sqlite3.Error as e:
            raise IndexUnavailable(f"cannot open the index {path}: {e}") from None
        try:
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                # One transaction for the DDL (creation or upgrade): one commit.
                with self.transaction():
                    self.opened_version = self._prepare_schema()
        except IndexUnavailable:
            self._conn.close()
            raise
        except sqlite3.Error as e:
            self._conn.close()
            raise IndexUnavailable(f"cannot open the index {path}: {e}") from None

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def _table_names(self) -> set[str]:
        return {r[0] for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}

    # Connections

    @contextmanager
    def _reading(self) -> Iterator[Callable[..., Any]]:
        with self._lock:
            if self._flushed < len(self._counts):
                self._flush_counts()
            yield self._conn.execute

    def _execute(self, sql: str, params: Iterable = ()) -> Any:
        if self._flushed < len(self._counts):
            self._flush_counts()
        return self._conn.execute(sql, tuple(params))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes in one transaction (group commit for the store pipeline).

        ``add`` and ``remove`` inside the block are each a savepoint: one that
        fails rolls back alone and raises, the others stay. Everything is
        durable when the block exits; answer a store only after that. Blocks
        nest. The lock is held for the whole block, so queries see committed
        data only.
        """
        with self._lock:
            self._depth += 1
            name = f"sp{self._depth}"
            # The new instances' counts written so far, and those only noted.
            counted, flushed = len(self._counts), self._flushed
            try:
                self._control.execute(f"SAVEPOINT {name}")
                try:
                    yield
                except BaseException:
                    self._forget()
                    # Its counts go with it: those noted in it, and those
                    # written in it (noted before: to be written again).
                    del self._counts[counted:]
                    self._flushed = min(self._flushed, flushed)
                    self._control.execute(f"ROLLBACK TO {name}")
                    self._control.execute(f"RELEASE {name}")
                    raise
                try:
                    if self._depth == 1:
                        if self._flushed < len(self._counts):
                            self._flush_counts()
                        self._counts.clear()
                        self._flushed = 0
                    self._control.execute(f"RELEASE {name}")
                except BaseException:
                    self._forget()
                    if self._depth == 1:
                        self._counts.clear()
                        self._flushed = 0
                        if self._conn.in_transaction:
                            self._conn.execute("ROLLBACK")
                    raise
            finally:
                self._depth -= 1

    # Writing

    def _forget(self) -> None:
        self._known.clear()
        self._study_classes.clear()

    def clear(self) -> None:
        """Remove every row."""
        with self.transaction():
            self._forget()
            super().clear()

    def _tidy(self, series: set[int], studies: set[int], patients: set[int]) -> None:
        self._forget()
        if self._flushed < len(self._counts):
            self._flush_counts()  # then recounted: right either way
        super()._tidy(series, studies, patients)

    def _flush_counts(self) -> None:
        """Write the derived counts of the new instances noted since the
        last flush (:meth:`_count_new`): one ``UPDATE`` per parent row."""
        series: dict[int, int] = {}
        studies: dict[int, list[int]] = {}
        patients: dict[int, list[int]] = {}
        for series_pk, study_pk, patient_pk, new_series, new_study in (
                self._counts[self._flushed:]):
            series[series_pk] = series.get(series_pk, 0) + 1
            study = studies.get(study_pk)
            if study is None:
                studies[study_pk] = [new_series, 1]
            else:
                study[0] += new_series
                study[1] += 1
            patient = patients.get(patient_pk)
            if patient is None:
                patients[patient_pk] = [new_study, new_series, 1]
            else:
                patient[0] += new_study
                patient[1] += new_series
                patient[2] += 1
        self._flushed = len(self._counts)
        executemany = self._conn.executemany
        executemany(_COUNT_SERIES, [(n, pk) for pk, n in series.items()])
        executemany(_COUNT_STUDY, [(*n, pk) for pk, n in studies.items()])
        executemany(COUNT_NEW_PATIENTS, [(*n, pk) for pk, n in patients.items()])

    def _lock_instance(self, sop_instance_uid: str) -> tuple | None:
        # The connection's lock and sqlite's write lock are enough.
        return self._conn.execute(
            "SELECT i.pk, i.path, i.series_pk, se.study_pk, st.patient_pk "
            "FROM instance i JOIN series se ON se.pk = i.series_pk "
            "JOIN study st ON st.pk = se.study_pk WHERE i.sop_instance_uid = ?",
            (sop_instance_uid,)).fetchone()

    def _lock_study(self, study_instance_uid: str) -> tuple | None:
        # As for an instance: the connection's lock and the write lock.
        return self._conn.execute(
            "SELECT pk, patient_pk FROM study WHERE study_instance_uid = ?",
            (study_instance_uid,)).fetchone()

    def _upsert(self, table: str, values: dict[str, object], conflict: Iterable[str],
                keep: bool = False) -> int:
        # Parents keep their known values when a new instance lacks them;
        # the instance row is replaced outright.
        columns = tuple(values)
        conflict = tuple(conflict)
        sql = self._sql_cache.get((table, columns, conflict, keep))
        if sql is None:
            updates = ", ".join(
                f"{c} = COALESCE(excluded.{c}, {c})" if keep else f"{c} = excluded.{c}"
                for c in columns if c not in conflict)
            sql = (f"INSERT INTO {table} ({', '.join(columns)}) "
                   f"VALUES ({', '.join('?' for _ in columns)}) "
                   f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {updates} RETURNING pk")
            self._sql_cache[(table, columns, conflict, keep)] = sql
        return self._conn.execute(sql, list(values.values())).fetchone()[0]

    def _parent(self, table: str, key: tuple, state: tuple, row: dict,
                parent: tuple[str, int] | None, conflict: tuple[str, ...],
                where_parent: str | None) -> tuple[int, object]:
        """Upsert a parent row unless this connection wrote it with these
        values already.

        :param state: what the row's values are made of: the instance's
            values of its attributes, and its parent's pk (compared with
            what was written last, before anything is computed from them).
        :param parent: the column and pk of its parent row, if any.
        :returns: ``(pk, previous parent)``: the previous parent is
            ``_SAME`` when the row was known unchanged, None for a new row,
            or the parent pk the row had (``where_parent``'s column).
        """
        known = self._known.get((table, key))
        if known is not None and known[1] == state:
            return known[0], _SAME
        values = self._table_values(table, row)
        if parent is not None:
            values[parent[0]] = parent[1]
        previous = None
        if where_parent is not None:
            found = self._conn.execute(where_parent, key).fetchone()
            previous = found[0] if found is not None else None
        pk = self._upsert(table, values, conflict, keep=True)
        if len(self._known) > _KNOWN_LIMIT:
            self._forget()
        self._known[(table, key)] = (pk, state)
        return pk, previous

    def _add(self, row: dict, extra: dict[str, object]) -> bool:
        """Write the rows of one instance; True if it is new (no row of
        its SOP Instance UID before)."""
        execute = self._conn.execute
        patient_pk, _ = self._parent(
            "patient", (row["PatientID"], row["IssuerOfPatientID"]), _STATE["patient"](row),
            row, None, ("patient_id", "issuer_of_patient_id"), None)
        study_pk, old_study = self._parent(
            "study", (row["StudyInstanceUID"],), (*_STATE["study"](row), patient_pk), row,
            ("patient_pk", patient_pk), ("study_instance_uid",),
            "SELECT patient_pk FROM study WHERE study_instance_uid = ?")
        series_pk, old_series = self._parent(
            "series", (row["SeriesInstanceUID"],), (*_STATE["series"](row), study_pk), row,
            ("study_pk", study_pk), ("series_instance_uid",),
            "SELECT study_pk FROM series WHERE series_instance_uid = ?")
        values = self._table_values("instance", row)
        values["series_pk"] = series_pk
        values.update(extra)
        columns = tuple(values)
        sql = self._sql_cache.get(("instance-new", columns))
        if sql is None:
            sql = (f"INSERT INTO instance ({', '.join(columns)}) "
                   f"VALUES ({', '.join('?' for _ in columns)}) "
                   "ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING pk")
            self._sql_cache[("instance-new", columns)] = sql
        if execute(sql, list(values.values())).fetchone() is not None and (
                old_series in (_SAME, None, study_pk) and old_study in (_SAME, None, patient_pk)):
            # A new instance that moved nothing: bump the derived counts
            # instead of recounting (a recount is O(instances) per add, so
            # O(n^2) over a bulk load).
            self._count_new(series_pk, study_pk, patient_pk, new_series=old_series is None,
                            new_study=old_study is None, series_changed=old_series is not _SAME,
                            sop_class=row.get("SOPClassUID"))
            return True
        # A replaced instance, or a series or study that changed parent:
        # recount every row touched, old and new.
        old = execute(
            "SELECT i.series_pk, se.study_pk, st.patient_pk FROM instance i "
            "JOIN series se ON se.pk = i.series_pk JOIN study st ON st.pk = se.study_pk "
            "WHERE i.sop_instance_uid = ?", (row["SOPInstanceUID"],)).fetchone()
        self._upsert("instance", values, ["sop_instance_uid"])
        series = {series_pk}
        studies = {study_pk}
        patients = {patient_pk}
        if old is not None:
            series.add(old[0])
            studies.add(old[1])
            patients.add(old[2])
        if isinstance(old_series, int):
            studies.add(old_series)
        if isinstance(old_study, int):
            patients.add(old_study)
        self._tidy(series, studies, patients)
        return old is None

    def _count_new(self, series_pk: int, study_pk: int, patient_pk: int, new_series: bool,
                   new_study: bool, series_changed: bool, sop_class: object) -> None:
        """Derived attributes after adding one new instance (PS3.4 C.3.4)."""
        execute = self._conn.execute
        # The counts are written once per parent row when the transaction
        # ends (or before anything reads or recounts them in it): noted here.
        self._counts.append((series_pk, study_pk, patient_pk, int(new_series), int(new_study)))
        classes = self._study_classes.get(study_pk)
        if classes is None:
            stored = execute("SELECT sop_classes_in_study FROM study WHERE pk = ?",
                             (study_pk,)).fetchone()[0]
            classes = self._study_classes[study_pk] = set(stored.split("\\")) if stored else set()
        new_class = bool(sop_class) and str(sop_class) not in classes
        if new_class or series_changed:
            assignments = []
            params: list[object] = []
            if new_class:
                classes.add(str(sop_class))
                assignments.append("sop_classes_in_study = ?")
                params.append("\\".join(sorted(classes)))
            if series_changed:
                assignments.append("modalities_in_study = ?")
                params.append(self._modalities(study_pk))
            execute(f"UPDATE study SET {', '.join(assignments)} WHERE pk = ?",
                    (*params, study_pk))
