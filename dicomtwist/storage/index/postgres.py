"""The index in PostgreSQL: one database shared by several daemons.

psycopg 3 with a psycopg_pool ``ConnectionPool``, called from threads.
The services already call the index through ``deferToThreadPool`` (the
store pipeline's group commit holds a transaction across a rename and an
fsync in its worker thread), so the blocking API fits the seam as it is;
psycopg's async API would need the asyncio reactor and an async seam for
both backends.  Measured on this machine (localhost, PostgreSQL 15, 20,000
look-ups of a path by SOP Instance UID, 8 at a time): 8 threads through
this index 0.22 ms a call (with the pool's connection check, one more round
trip per borrow), 8 asyncio tasks on an ``AsyncConnectionPool`` without
the check 0.10 ms a call.  The difference is the check and the thread
hop, so the blocking API stays, and the check is skipped for a connection
that came back to the pool in good order less than a second before
(:func:`_check_connection`).

Round trips are what an index on another process (or machine) costs, so
each write counts them: a block of :meth:`PostgresIndex.transaction`
binds one pooled connection to the calling thread until it ends (nested
blocks and each ``add``/``remove`` are savepoints on it), and its
``BEGIN``, ``SAVEPOINT`` and ``RELEASE`` commands travel with its next
statement (:class:`_Session`); an ``add`` is one statement, a server-side
function (:class:`_AddFunction`).  In the store pipeline's group commit
an instance costs one round trip, and a batch one more for its
``COMMIT`` (``benchmarks/pg_add.py`` measures it).  Reads outside a
transaction take a connection for one batch of rows and give it back, so
a C-FIND being streamed holds no connection between batches.

A connection found broken by the first round trip of a transaction, or
by a read (the server restarted, or closed it while it sat in the pool),
is replaced and the call goes on: nothing of it had reached the server.
The pool reconnects by itself when the server comes back; while it is
away, calls fail within ``pool_timeout`` (and ``connect_timeout``,
``statement_timeout``), never hang.

Concurrency between daemons is PostgreSQL's: an ``add`` locks the rows it
touches, top down (the patient by its upsert, then the study and the
series ``FOR UPDATE``, then the instance), and only then reads what it
bumps, so the derived counts stay exact when several daemons store into
one study at once; a second ``add`` of the same SOP Instance UID waits for
the first and replaces it (one row).  A move between parents, a
replacement or a removal also locks the old parents (and the patient of
a study it may empty), then recounts them.  Two such transactions can
deadlock; PostgreSQL aborts one, whose savepoint is retried.

Text columns are ``COLLATE "C"`` (byte order, as sqlite's ``BINARY``), so
ranges, ``LIKE`` and sorted derived values agree with sqlite whatever the
database's locale.  PostgreSQL text cannot hold NUL: NUL characters in
values are dropped on ``add``.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from dicomtwist.storage import matching
from dicomtwist.storage.index.base import (
    BATCH_SIZE,
    COUNT_NEW_PATIENT,
    IndexUnavailable,
    SEQUENCES,
    SequenceAttribute,
    SqlIndex,
    SqlTypes,
    columns,
)

__all__ = ["PostgresIndex"]

#: Savepoint retries of an ``add`` or ``remove`` chosen as a deadlock victim.
_RETRIES = 10
#: Serialises schema creation and upgrade between daemons starting at once.
_SCHEMA_LOCK = 0x6469636F6D  # "dicom"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _without_nul(value: object) -> object:
    if isinstance(value, str) and "\0" in value:
        return value.replace("\0", "")
    return value


class _Session:
    """One connection bound to a thread for a transaction, whose ``BEGIN``,
    ``SAVEPOINT`` and ``RELEASE`` commands ride along with its statements.

    A block's opening command is queued, not sent: the next statement
    takes the queue with it in one pipeline (psycopg's pipeline mode: one
    round trip, the statement's error raised as before).  A block that
    runs no statement costs nothing; the ``RELEASE`` of a savepoint waits
    in the queue for the next statement, and the ``COMMIT`` that releases
    every savepoint drops it.  So in a group commit each instance's
    savepoints (the store's and ``_retrying``'s) and its ``add`` cost one
    round trip, where each command used to cost its own.
    """

    def __init__(self, conn: psycopg.Connection,
                 renew: Callable[[psycopg.Connection], psycopg.Connection] | None = None,
                 ) -> None:
        self.conn = conn
        self._renew = renew
        self._queued: list[str] = []
        #: Open blocks, and how many of them (outermost first) were sent.
        self._depth = 0
        self._sent = 0

    def run(self, sql: str, params: tuple) -> Any:
        """Run one statement in the transaction; its cursor.

        If the transaction's first round trip (its ``BEGIN`` queued with
        it) finds the connection broken -- the server restarted, or closed
        it while it sat in the pool -- nothing of the transaction reached
        the server: it is sent again on another connection (``renew``).
        """
        if not self._queued:
            return self.conn.execute(sql, params)
        queued, self._queued = self._queued, []
        self._sent = self._depth
        while True:
            conn = self.conn
            try:
                with conn.pipeline():
                    for command in queued:
                        conn.execute(command, prepare=False)
                    return conn.execute(sql, params)
            except psycopg.OperationalError:
                if self._renew is None or queued[0] != "BEGIN" or not conn.broken:
                    raise
                self.conn = self._renew(conn)

    @contextmanager
    def block(self) -> Iterator[None]:
        """A transaction (outermost) or a savepoint (nested)."""
        self._depth += 1
        level = self._depth
        savepoint = f"s{level}" if level > 1 else None
        mark = len(self._queued)
        self._queued.append(f"SAVEPOINT {savepoint}" if savepoint else "BEGIN")
        try:
            yield
        except BaseException:
            sent = self._sent >= level
            self._depth -= 1
            self._sent = min(self._sent, self._depth)
            if not sent:
                # Nothing of it reached the server (nor of the blocks it
                # held, whose commands follow its own in the queue).
                del self._queued[mark:]
                raise
            # What is queued belongs to blocks inside it: gone with it.
            self._queued.clear()
            try:
                if savepoint:
                    self.conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint}", prepare=False)
                    self._queued.append(f"RELEASE SAVEPOINT {savepoint}")
                else:
                    self.conn.execute("ROLLBACK", prepare=False)
            except psycopg.Error:
                pass  # a broken connection: the pool discards it
            raise
        sent = self._sent >= level
        self._depth -= 1
        self._sent = min(self._sent, self._depth)
        if not sent:
            del self._queued[mark:]
        elif savepoint:
            self._queued.append(f"RELEASE SAVEPOINT {savepoint}")
        else:
            self._queued.clear()
            self.conn.execute("COMMIT", prepare=False)


#: Seconds since a connection came back to the pool in good order during
#: which the pool lends it again without a round trip to check it.
_FRESH = 1.0


def _check_connection(conn: psycopg.Connection) -> None:
    """The pool's check of a connection before lending it: a round trip
    (``ConnectionPool.check_connection``), unless the connection came back
    in good order less than :data:`_FRESH` seconds ago -- the common case
    under load, where the check would cost each group commit and each
    C-FIND batch a round trip.  One that broke meanwhile (a server
    restart) fails the first statement on it, which is then sent again on
    another connection (``_Session.run``, ``PostgresIndex._read_on``)."""
    returned = getattr(conn, "_dicomtwist_returned", None)
    if returned is None or time.monotonic() - returned >= _FRESH:
        ConnectionPool.check_connection(conn)


def _text(value: object) -> str | None:
    """A value as an element of the add function's text arrays."""
    return value if value is None or isinstance(value, str) else str(value)


def _substitute(sql: str, *expressions: str) -> str:
    """``sql`` with its ``?`` placeholders replaced by SQL expressions, in order."""
    parts = sql.split("?")
    if len(parts) != len(expressions) + 1:
        raise ValueError("placeholders and expressions differ in number")
    return "".join(p + e for p, e in zip(parts, expressions)) + parts[-1]


#: The tables whose values the add function takes, one text array each,
#: in its argument order.
_ADD_TABLES = ("patient", "study", "series", "instance")
_ADD_ARGUMENTS = {"patient": "a_patient", "study": "a_study", "series": "a_series",
                  "instance": "a_instance"}
_ADD_KEYS = {"patient": ("patient_id", "issuer_of_patient_id"),
             "study": ("study_instance_uid",), "series": ("series_instance_uid",),
             "instance": ("sop_instance_uid",)}


class _AddFunction:
    """The server-side function (PL/pgSQL) that indexes one instance in
    one statement.

    It does what the client did in ten statements, with the same locks in
    the same order: the patient upsert; the study's and the series' claim
    (update and lock the row, or insert it; again if another connection
    inserted it meanwhile); the instance insert, or lock of the row it
    would replace; for a new instance that moved nothing, the derived
    counts (PS3.4 C.3.4) read from the locked rows; the metadata; the
    items of the kept sequences (:data:`base.SEQUENCES`) of its study and
    series.  It
    returns ``(patient pk, study pk, previous patient of the study, series
    pk, previous study of the series, instance pk, previous series of the
    instance)``, a previous parent NULL for a row it inserted; for
    anything else (a replacement, a move between parents) the client
    goes on in the same transaction and recounts.

    Its source is made from the layout (:func:`base.columns`), and its
    name carries a digest of the source, so each version of the layout
    and of this code has its own function: the daemon creates it with the
    schema if it is missing, and daemons of other versions on the same
    database keep theirs (nothing else depends on it; dropping one no
    daemon uses is safe).
    """

    def __init__(self) -> None:
        from dicomtwist.storage.index.base import _WRITTEN_COLUMNS

        #: Each table's columns as the function takes them, in order.
        self.columns: dict[str, tuple[str, ...]] = {}
        for table in _ADD_TABLES:
            names: list[str] = []
            for _, column, key_column, _ in _WRITTEN_COLUMNS[table]:
                names.append(column)
                if key_column:
                    names.append(key_column)
            self.columns[table] = tuple(names)
        parents = {"study": "patient_pk", "series": "study_pk", "instance": "series_pk"}
        #: The instance's columns that ``add`` passes besides the data set's
        #: values (``extra``: transfer syntax, path, size, character set).
        self.extra = tuple(c for c in columns("instance")
                           if c not in ("pk", parents["instance"])
                           and c not in self.columns["instance"])
        self.columns["instance"] += self.extra
        self._integers = {table: frozenset(c for c, kind in columns(table).items()
                                           if kind is int) for table in _ADD_TABLES}
        #: Each kept sequence's item columns, in order (:data:`base.SEQUENCES`).
        self.item_columns = {
            sequence: tuple(c for c in columns(sequence.item_table)
                            if c not in ("pk", "owner_pk", "position"))
            for sequence in SEQUENCES}
        body = self._body()
        self.name = "dicomtwist_add_" + hashlib.sha1(body.encode()).hexdigest()[:12]
        self.create = f"CREATE FUNCTION {self.name}{body}"
        self.call = (f"SELECT * FROM {self.name}(?::text[], ?::text[], ?::text[], "
                     "?::text[], ?::bytea" + ", ?::text[]" * len(SEQUENCES) + ")")

    def values(self, table: str, row: dict, extra: dict[str, object]) -> list[object]:
        """The values of ``table``'s columns for one instance, in order."""
        values = list(SqlIndex._table_values(table, row).values())
        if table == "instance":
            values.extend(extra.get(c) for c in self.extra)
        return values

    def arguments(self, table: str, row: dict, extra: dict[str, object]) -> list[str | None]:
        """:meth:`values` as the function's text array takes them."""
        return [_text(v) for v in self.values(table, row, extra)]

    def items(self, sequences: dict[SequenceAttribute, list[dict[str, object]]],
              ) -> list[list[list[str | None]] | None]:
        """The items of each kept sequence as the function takes them: a
        two-dimensional text array (item by column), None for a sequence
        the instance does not have (its owner keeps its items)."""
        found: list[list[list[str | None]] | None] = []
        for sequence, names in self.item_columns.items():
            items = sequences.get(sequence)
            found.append(None if not items else [[_text(item.get(c)) for c in names]
                                                 for item in items])
        return found

    def install(self, execute: Callable[..., Any]) -> None:
        """Create the function unless the database has it (in the schema
        transaction, under its advisory lock)."""
        found = execute("SELECT 1 FROM pg_proc WHERE proname = ? "
                        "AND pronamespace = to_regnamespace(current_schema())",
                        (self.name,)).fetchone()
        if found is None:
            execute(self.create)

    def _value(self, table: str, column: str) -> str:
        """The SQL expression of one column's argument."""
        expression = f"{_ADD_ARGUMENTS[table]}[{self.columns[table].index(column) + 1}]"
        return f"{expression}::bigint" if column in self._integers[table] else expression

    def _claim(self, table: str, parent: str, parent_value: str, pk: str,
               previous: str) -> str:
        names = self.columns[table]
        key = _ADD_KEYS[table][0]
        updates = ", ".join([f"{parent} = {parent_value}"] + [
            f"{c} = COALESCE({self._value(table, c)}, t.{c})" for c in names if c != key])
        values = ", ".join(self._value(table, c) for c in names)
        return f"""
  LOOP
    WITH old AS (SELECT pk, {parent} AS parent FROM {table}
                 WHERE {key} = {self._value(table, key)} FOR UPDATE)
    UPDATE {table} t SET {updates} FROM old WHERE t.pk = old.pk
      RETURNING t.pk, old.parent INTO {pk}, {previous};
    EXIT WHEN FOUND;
    -- Not there: insert it; if another connection just did, its insert
    -- is committed by now (ON CONFLICT waited): update it.
    INSERT INTO {table} ({', '.join(names)}, {parent}) VALUES ({values}, {parent_value})
      ON CONFLICT ({key}) DO NOTHING RETURNING pk INTO {pk};
    EXIT WHEN FOUND;
  END LOOP;"""

    def _body(self) -> str:
        value = self._value
        patient = self.columns["patient"]
        updates = ", ".join(f"{c} = COALESCE(excluded.{c}, patient.{c})" for c in patient
                            if c not in _ADD_KEYS["patient"])
        instance = self.columns["instance"]
        uid = value("instance", "sop_instance_uid")
        count_patient = _substitute(COUNT_NEW_PATIENT, "(o_old_patient IS NULL)::int",
                                    "(o_old_study IS NULL)::int", "o_patient")
        return f"""(
  a_patient text[], a_study text[], a_series text[], a_instance text[], a_metadata bytea,{
      "".join(f" a_items{n} text[]," for n in range(len(SEQUENCES)))}
  OUT o_patient bigint, OUT o_study bigint, OUT o_old_patient bigint,
  OUT o_series bigint, OUT o_old_study bigint,
  OUT o_instance bigint, OUT o_old_series bigint)
LANGUAGE plpgsql AS $dicomtwist$
BEGIN
  INSERT INTO patient ({', '.join(patient)})
    VALUES ({', '.join(value("patient", c) for c in patient)})
    ON CONFLICT ({', '.join(_ADD_KEYS["patient"])}) DO UPDATE SET {updates}
    RETURNING pk INTO o_patient;{self._claim("study", "patient_pk", "o_patient",
                                             "o_study", "o_old_patient")}{
        self._claim("series", "study_pk", "o_study", "o_series", "o_old_study")}
  LOOP
    INSERT INTO instance ({', '.join(instance)}, series_pk)
      VALUES ({', '.join(value("instance", c) for c in instance)}, o_series)
      ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING pk INTO o_instance;
    EXIT WHEN FOUND;
    SELECT pk, series_pk INTO o_instance, o_old_series FROM instance
      WHERE sop_instance_uid = {uid} FOR UPDATE;
    EXIT WHEN FOUND;
  END LOOP;
  IF o_old_series IS NULL AND (o_old_patient IS NULL OR o_old_patient = o_patient)
      AND (o_old_study IS NULL OR o_old_study = o_study) THEN
    -- A new instance that moved nothing: its counts, from the locked rows.
    UPDATE series SET number_of_series_related_instances =
      COALESCE(number_of_series_related_instances, 0) + 1 WHERE pk = o_series;
    UPDATE study SET number_of_study_related_series =
      COALESCE(number_of_study_related_series, 0) + (o_old_study IS NULL)::int,
      number_of_study_related_instances = COALESCE(number_of_study_related_instances, 0) + 1,
      -- The stored classes and this one, distinct and sorted.
      sop_classes_in_study = (SELECT string_agg(c, '\\' ORDER BY c COLLATE "C") FROM
        (SELECT DISTINCT c FROM unnest(string_to_array(sop_classes_in_study, '\\')
         || {value("instance", "sop_class_uid")}) AS c
         WHERE c IS NOT NULL AND c != '') AS classes),
      modalities_in_study = (SELECT string_agg(DISTINCT modality, '\\' ORDER BY modality)
        FROM series WHERE study_pk = o_study AND modality IS NOT NULL AND modality != '')
      WHERE pk = o_study;
    {count_patient};
  END IF;
  IF a_metadata IS NULL THEN
    DELETE FROM metadata WHERE sop_instance_uid = {uid};
  ELSE
    INSERT INTO metadata (sop_instance_uid, json) VALUES ({uid}, a_metadata)
      ON CONFLICT (sop_instance_uid) DO UPDATE SET json = excluded.json;
  END IF;{self._items()}
END
$dicomtwist$"""

    def _items(self) -> str:
        """Replace the items of the owners' kept sequences with the
        instance's (an owner takes the latest non-empty values)."""
        owners = {"study": "o_study", "series": "o_series"}
        parts = []
        for n, (sequence, names) in enumerate(self.item_columns.items()):
            integers = {c for c, kind in columns(sequence.item_table).items() if kind is int}
            values = ", ".join(f"a_items{n}[k][{i + 1}]" + ("::bigint" if c in integers else "")
                               for i, c in enumerate(names))
            owner = owners[sequence.table]
            parts.append(f"""
  IF a_items{n} IS NOT NULL THEN
    DELETE FROM {sequence.item_table} WHERE owner_pk = {owner};
    INSERT INTO {sequence.item_table} (owner_pk, position, {', '.join(names)})
      SELECT {owner}, k - 1, {values} FROM generate_subscripts(a_items{n}, 1) AS k;
  END IF;""")
        return "".join(parts)


_ADD_FUNCTION = _AddFunction()


class PostgresIndex(SqlIndex):
    """The index in a PostgreSQL database, shared between threads and daemons.

    :param location: a libpq connection URI (``postgresql://user@host:port/db``);
        a password comes from ``~/.pgpass``, ``PGPASSWORD`` or the URI and is
        never logged (:attr:`location` has none).
    :param batch_size: rows fetched per trip by ``find``.
    :param connect_timeout: seconds to establish a connection (libpq's
        ``connect_timeout``, unless the URI sets one).
    :param pool_timeout: seconds a call waits for a pooled connection (all
        busy, or the server away) before failing.
    :param statement_timeout: seconds one statement may run.
    :param max_size: connections in the pool at most.
    :raises IndexUnavailable: one line naming the location when the server
        cannot be reached, refuses us, or has a newer schema.
    """

    dialect = matching.POSTGRES
    types = SqlTypes(primary_key="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                     integer="BIGINT", text='TEXT COLLATE "C"', blob="BYTEA")

    def __init__(self, location: str, batch_size: int = BATCH_SIZE, *,
                 connect_timeout: float = 5, pool_timeout: float = 10,
                 statement_timeout: float = 60, max_size: int = 8) -> None:
        from dicomtwist.storage.index import safe_location

        self.location = safe_location(location)
        self.batch_size = batch_size
        self._local = threading.local()
        self._statements: dict[str, str] = {}
        try:
            params = conninfo_to_dict(location)
        except psycopg.Error as e:
            raise IndexUnavailable(f"invalid index location {self.location}: "
                                   f"{_first_line(e)}") from None
        params.setdefault("connect_timeout", max(2, round(connect_timeout)))
        params.setdefault("application_name", "dicomtwist")
        options = str(params.get("options") or "")
        params["options"] = (f"{options} -c statement_timeout="
                             f"{int(statement_timeout * 1000)}").strip()
        conninfo = make_conninfo("", **params)
        #: The version the database had when opened (0: new).
        self.opened_version = 0
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn, self._bound(conn):
                self._execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
                self.opened_version = self._prepare_schema()
                _ADD_FUNCTION.install(self._execute)
        except psycopg.Error as e:
            raise IndexUnavailable(f"cannot open the index at {self.location}: "
                                   f"{_first_line(e)}") from None
        #: Connections renewed in a row at most by one call (every pooled
        #: one may be broken after a server restart).
        self._renewals = max_size + 1
        self._pool = ConnectionPool(
            conninfo, kwargs={"autocommit": True}, min_size=1, max_size=max_size,
            timeout=pool_timeout, open=False, name="dicomtwist-index",
            check=_check_connection)
        try:
            self._pool.open(wait=True, timeout=connect_timeout + pool_timeout)
        except Exception as e:
            self._pool.close()
            raise IndexUnavailable(f"cannot open the index at {self.location}: "
                                   f"{_first_line(e)}") from None

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.close()

    def _table_names(self) -> set[str]:
        return {r[0] for r in self._execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema()").fetchall()}

    # Connections

    def _statement(self, sql: str) -> str:
        found = self._statements.get(sql)
        if found is None:
            found = self._statements[sql] = self.dialect.sql(sql)
        return found

    @contextmanager
    def _reading(self) -> Iterator[Callable[..., Any]]:
        session = getattr(self._local, "session", None)
        if session is not None:
            yield partial(self._run_in, session)
            return
        borrowed = [self._pool.getconn()]
        healthy = False
        try:
            yield partial(self._read_on, borrowed)
            healthy = True
        finally:
            self._give_back(borrowed[0], healthy)

    def _read_on(self, borrowed: list[psycopg.Connection], sql: str,
                 params: Iterable = ()) -> Any:
        """Run a read on the borrowed connection, on another one if it
        is found broken (reads can be repeated)."""
        sql, params = self._statement(sql), tuple(params)
        renewals = self._renewals
        while True:
            conn = borrowed[0]
            try:
                return conn.execute(sql, params)
            except psycopg.OperationalError:
                if not conn.broken or not renewals:
                    raise
                renewals -= 1
                borrowed[0] = self._renew(conn)

    def _renew(self, broken: psycopg.Connection) -> psycopg.Connection:
        """Give a broken connection back (the pool replaces it); another."""
        self._pool.putconn(broken)
        return self._pool.getconn()

    def _give_back(self, conn: psycopg.Connection, healthy: bool) -> None:
        if healthy and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn._dicomtwist_returned = time.monotonic()  # type: ignore[attr-defined]
        self._pool.putconn(conn)

    def _run_in(self, session: _Session, sql: str, params: Iterable = ()) -> Any:
        return session.run(self._statement(sql), tuple(params))

    def _execute(self, sql: str, params: Iterable = ()) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            raise RuntimeError("PostgresIndex._execute outside a transaction")
        return session.run(self._statement(sql), tuple(params))

    @contextmanager
    def _bound(self, conn: psycopg.Connection) -> Iterator[_Session]:
        """Bind ``conn`` (not pooled: the schema's) to the calling thread
        for one outermost block."""
        session = self._local.session = _Session(conn)
        try:
            with session.block():
                yield session
        finally:
            self._local.session = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes in one transaction (group commit for the store pipeline).

        One pooled connection is bound to the calling thread for the
        block; nested blocks (and each ``add`` or ``remove``) are
        savepoints on it: one that fails rolls back alone and raises.
        Everything is committed when the outermost block exits.  The
        ``BEGIN``, ``SAVEPOINT`` and ``RELEASE`` commands cost no round
        trip of their own (see :class:`_Session`).
        """
        session = getattr(self._local, "session", None)
        if session is not None:
            with session.block():
                yield
            return
        renewals = self._renewals

        def renew(broken: psycopg.Connection) -> psycopg.Connection:
            nonlocal renewals
            if not renewals:
                raise psycopg.OperationalError("no working connection to the index")
            renewals -= 1
            return self._renew(broken)
        session = self._local.session = _Session(self._pool.getconn(), renew)
        healthy = False
        try:
            with session.block():
                yield
            healthy = True
        finally:
            self._local.session = None
            self._give_back(session.conn, healthy)

    def _retrying(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` in a savepoint, again if PostgreSQL chose it as
        the victim of a deadlock."""
        for attempt in range(1, _RETRIES + 1):
            try:
                with self.transaction():
                    return action()
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == _RETRIES:
                    raise
                # Let the winner finish before trying again.
                time.sleep(random.uniform(0, 0.02 * attempt))
        raise AssertionError("unreachable")

    # Writing

    def _add_row(self, row: dict, extra: dict[str, object], metadata: bytes | None,
                 sequences: dict[SequenceAttribute, list[dict[str, object]]],
                 then: Callable[[], object] | None = None) -> None:
        row = {k: _without_nul(v) for k, v in row.items()}
        extra = {k: _without_nul(v) for k, v in extra.items()}

        def add() -> None:
            self._add(row, extra, metadata, sequences)
            if then is not None:
                then()  # in the savepoint: it rolls back if this raises
        self._retrying(add)

    def remove(self, sop_instance_uid: str) -> str | None:
        """Remove one instance, and the series, study and patient it empties.

        :returns: the instance's path, or ``None`` if it was not indexed.
        """
        return self._retrying(partial(SqlIndex.remove, self, sop_instance_uid))

    def _lock_instance(self, sop_instance_uid: str) -> tuple | None:
        # Parents first, top down as add locks them, then the instance;
        # again if it moved meanwhile.
        select = ("SELECT i.pk, i.path, i.series_pk, se.study_pk, st.patient_pk "
                  "FROM instance i JOIN series se ON se.pk = i.series_pk "
                  "JOIN study st ON st.pk = se.study_pk WHERE i.sop_instance_uid = ?")
        while True:
            row = self._execute(select, (sop_instance_uid,)).fetchone()
            if row is None:
                return None
            self._lock("patient", row[4])
            self._lock("study", row[3])
            self._lock("series", row[2])
            again = self._execute(select + " FOR UPDATE OF i", (sop_instance_uid,)).fetchone()
            if again is None or tuple(again) == tuple(row):
                return again

    def delete_study(self, study_instance_uid: str) -> list[str]:
        """Remove a study, its instances and series, and its patient if
        emptied (see :meth:`SqlIndex.delete_study`).

        :returns: the paths of the removed instances.
        """
        return self._retrying(partial(SqlIndex.delete_study, self, study_instance_uid))

    def _lock_study(self, study_instance_uid: str) -> tuple | None:
        # Top down as add locks them: the patient, then the study; again
        # if the study moved to another patient meanwhile.
        select = "SELECT pk, patient_pk FROM study WHERE study_instance_uid = ?"
        while True:
            row = self._execute(select, (study_instance_uid,)).fetchone()
            if row is None:
                return None
            self._lock("patient", row[1])
            again = self._execute(select + " FOR UPDATE", (study_instance_uid,)).fetchone()
            if again is None or tuple(again) == tuple(row):
                return again

    def _lock_study_row(self, pk: int) -> int | None:
        """Lock one study row, then its patient (whose studies ``_tidy``
        counts before it may delete it: unlocked, another connection could
        be giving it a study meanwhile); the patient pk, None if gone."""
        patient_pk = self._lock("study", pk)
        if patient_pk is not None:
            self._lock("patient", patient_pk)
        return patient_pk

    def _lock(self, table: str, pk: int) -> Any:
        """Lock one row; its parent pk (None for a patient)."""
        parent = {"study": "patient_pk", "series": "study_pk"}.get(table, "pk")
        found = self._execute(f"SELECT {parent} FROM {table} WHERE pk = ? FOR UPDATE",
                              (pk,)).fetchone()
        return None if found is None or table == "patient" else found[0]

    def _add(self, row: dict, extra: dict[str, object], metadata: bytes | None = None,
             sequences: dict[SequenceAttribute, list[dict[str, object]]] | None = None,
             ) -> None:
        # One statement: the server-side function does the upserts, the
        # claims, the instance, the counts of a new instance, the metadata
        # and the sequence items, and says what it found.
        values = [_ADD_FUNCTION.arguments(table, row, extra) for table in _ADD_TABLES]
        items = _ADD_FUNCTION.items(sequences or {})
        found = self._execute(_ADD_FUNCTION.call, (*values, metadata, *items)).fetchone()
        patient_pk, study_pk, old_patient, series_pk, old_study, instance_pk, old_series = found
        if old_series is None and old_patient in (None, patient_pk) and (
                old_study in (None, study_pk)):
            return  # a new instance that moved nothing: counted already
        # A replaced instance, or a study or series that changed parent:
        # lock the old parents too, then recount every row touched.
        series, studies, patients = {series_pk}, {study_pk}, {patient_pk}
        if old_patient is not None:
            patients.add(old_patient)
            self._lock("patient", old_patient)
        if old_study is not None and old_study != study_pk:
            studies.add(old_study)
            patients.add(self._lock_study_row(old_study))
        if old_series is not None:
            series.add(old_series)
            old_study_pk = self._lock("series", old_series)
            studies.add(old_study_pk)
            patients.add(self._lock_study_row(old_study_pk))
            columns = _ADD_FUNCTION.columns["instance"]
            assignments = ", ".join(f"{c} = ?" for c in columns)
            self._execute(f"UPDATE instance SET {assignments}, series_pk = ? WHERE pk = ?",
                          (*_ADD_FUNCTION.values("instance", row, extra), series_pk,
                           instance_pk))
        patients.discard(None)
        self._tidy(series, studies, patients)
