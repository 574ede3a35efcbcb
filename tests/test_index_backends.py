"""Tests for dicomtwist.storage.index: opening, schema versions, several
connections at once, a PostgreSQL server going away, and the round trips
of the PostgreSQL add path."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading

from pydicom.uid import ExplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import tap
from dicomtwist.storage.index import (
    SCHEMA_VERSION,
    IndexBackend,
    IndexUnavailable,
    open_index,
    safe_location,
)
from dicomtwist.storage.index.base import SqlTypes, create_statements
from tests import pg
from tests.backends import both
from tests.test_index import instance, recount, snapshot

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


class OpenTests(SynchronousTestCase):
    """open_index chooses the backend by the location and fails in one line."""

    def test_sqlite_path(self):
        """A path opens an sqlite index, which is an IndexBackend."""
        path = os.path.join(self.mktemp() + ".sqlite")
        index = open_index(path)
        self.addCleanup(index.close)
        self.assertEqual(type(index).__name__, "SqliteIndex")
        self.assertIsInstance(index, IndexBackend)

    def test_postgres_uri(self):
        """A postgresql:// URI opens a PostgreSQL index, which is an IndexBackend."""
        uri = pg.create_database()
        self.addCleanup(pg.drop_database, uri)
        index = open_index(uri)
        self.addCleanup(index.close)
        self.assertEqual(type(index).__name__, "PostgresIndex")
        self.assertIsInstance(index, IndexBackend)
        self.assertEqual(index.count("IMAGE"), 0)

    def test_sqlite_cannot_open(self):
        """A directory is not an sqlite file: one line naming it."""
        directory = self.mktemp()
        os.makedirs(directory)
        error = self.assertRaises(IndexUnavailable, open_index, directory)
        self.assertIn(directory, str(error))
        self.assertNotIn("\n", str(error))

    def test_sqlite_not_a_database(self):
        """A file that is not an sqlite database: one line naming it."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not a database" * 100)
        error = self.assertRaises(IndexUnavailable, open_index, path)
        self.assertIn(path, str(error))
        self.assertNotIn("\n", str(error))

    def test_unreachable_postgres(self):
        """A server nobody listens for: one line naming the location, no password."""
        uri = f"postgresql://someone:secret@127.0.0.1:{pg._free_port()}/archive"
        error = self.assertRaises(IndexUnavailable, open_index, uri, connect_timeout=2)
        self.assertIn("postgresql://someone@127.0.0.1", str(error))
        self.assertNotIn("secret", str(error))
        self.assertNotIn("\n", str(error))

    def test_safe_location(self):
        """Passwords are stripped from URIs that are logged."""
        self.assertEqual(safe_location("postgresql://u:pw@h:5/db?password=x&sslmode=require"),
                         "postgresql://u@h:5/db?sslmode=require")
        self.assertEqual(safe_location("/var/lib/index.sqlite"), "/var/lib/index.sqlite")

    def test_daemon_exits_with_one_line(self):
        """The daemon with an unreachable database exits non-zero with one line."""
        from twisted.internet.testing import MemoryReactorClock

        options = tap.Options()
        options.parseOptions([
            "--database-location", f"postgresql://127.0.0.1:{pg._free_port()}/x",
            "--instance-location", self.mktemp()])
        self.assertEqual(options["settings"].database_location.split(":")[0], "postgresql")
        error = self.assertRaises(SystemExit, tap.makeService, options, MemoryReactorClock())
        self.assertIsInstance(error.code, str)
        self.assertIn("postgresql://127.0.0.1", error.code)
        self.assertNotIn("\n", error.code)


class SchemaVersionTests:
    """The schema_version table: creation, upgrade from version 1, refusal."""

    def test_created_with_version(self):
        """An empty database gets the schema and the current version."""
        index = self.make_index()
        self.assertEqual(index._sql("SELECT version FROM schema_version"),
                         [(SCHEMA_VERSION,)])
        self.assertEqual(index.opened_version, 0)
        again = self.open_index(self.location)
        self.assertEqual(again.opened_version, SCHEMA_VERSION)

    def test_newer_refused(self):
        """A schema newer than this code is refused in one line."""
        index = self.make_index()
        index._sql("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        index.close()
        error = self.assertRaises(IndexUnavailable, self.open_index, self.location)
        self.assertIn(f"index schema version {SCHEMA_VERSION + 1} is newer than this"
                      f" dicomtwist ({SCHEMA_VERSION})", str(error))
        self.assertNotIn("\n", str(error))

    def test_upgrade_from_version_1(self):
        """The layout without a version record (and without the metadata
        table, as at commit ad2e7ee) is upgraded at open, keeping its rows."""
        location = self.new_location()
        index = self.open_index(location)
        index.add(instance("1.1.1.1"), "a.dcm", ExplicitVRLittleEndian, 1)
        rows = snapshot(index)
        index._sql("DROP TABLE schema_version")
        index._sql("DROP TABLE metadata")
        index.close()
        upgraded = self.open_index(location)
        self.assertEqual(upgraded.opened_version, 1)
        self.assertEqual(upgraded._sql("SELECT version FROM schema_version"),
                         [(SCHEMA_VERSION,)])
        self.assertEqual(snapshot(upgraded), rows)
        self.assertEqual(upgraded.paths(), ["a.dcm"])
        upgraded.add(instance("1.1.1.2"), "b.dcm", ExplicitVRLittleEndian, 1,
                     metadata=b"{}")
        self.assertEqual(upgraded.instances("1.1", metadata=True)[1].metadata, b"{}")


both(SchemaVersionTests)


class SqliteVersion1Tests(SynchronousTestCase):
    """A version 1 sqlite file built as that code built it."""

    def test_upgrade_file_written_by_version_1(self):
        """Tables made by the version 1 DDL (sqlite-utils) are upgraded."""
        import sqlite_utils

        path = self.mktemp()
        db = sqlite_utils.Database(path)
        from dicomtwist.storage.index.base import INDEXES, columns

        parents = {"study": ("patient_pk", "patient"), "series": ("study_pk", "study"),
                   "instance": ("series_pk", "series")}
        for table in ("patient", "study", "series", "instance"):
            keys = [(parents[table][0], parents[table][1], "pk")] if table in parents else []
            db[table].create(columns(table), pk="pk", foreign_keys=keys,
                             not_null={"patient_id", "issuer_of_patient_id"}
                             if table == "patient" else set())
        for table, names, unique in INDEXES:
            if table in ("patient", "study", "series", "instance"):  # version 1's
                db[table].create_index(list(names), unique=unique)
        db.conn.close()
        index = open_index(path)
        self.addCleanup(index.close)
        self.assertEqual(index.opened_version, 1)
        index.add(instance("1.1.1.1"), "a.dcm", ExplicitVRLittleEndian, 1, metadata=b"x")
        self.assertEqual(index.count("IMAGE"), 1)
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT version FROM schema_version").fetchall(),
                         [(SCHEMA_VERSION,)])

    def test_statements_are_idempotent(self):
        """The layout's statements may run over an existing layout."""
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        types = SqlTypes("INTEGER PRIMARY KEY", "INTEGER", "TEXT", "BLOB")
        for _ in range(2):
            for statement in create_statements(types):
                conn.execute(statement)


class ConcurrencyTests(SynchronousTestCase):
    """Several daemons (separate pools) on one PostgreSQL database."""

    def setUp(self):
        from dicomtwist.storage.index.postgres import PostgresIndex

        self.uri = pg.create_database()
        self.addCleanup(pg.drop_database, self.uri)
        self.indexes = [PostgresIndex(self.uri, max_size=2) for _ in range(4)]
        for index in self.indexes:
            self.addCleanup(index.close)

    def run_threads(self, work) -> None:
        errors = []

        def run(n):
            try:
                work(n, self.indexes[n])
            except BaseException as e:  # reported below
                errors.append(e)
        threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        self.assertEqual(errors, [])

    def test_concurrent_adds_exact_counts(self):
        """Four connections adding to the same study (new series, classes,
        modalities, patients' other studies) at once leave every derived
        value equal to a recount."""
        def work(n, index):
            for k in range(40):
                series = f"1.1.{(n + k) % 5}"
                modality = ["CT", "MR", "US", "XA", "PT"][(n + k) % 5]
                with index.transaction():
                    index.add(instance(f"1.1.{n}.{k}", series=series, study="1.1",
                                       Modality=modality, SOPClassUID=CT if k % 2 else MR),
                              f"{n}/{k}", ExplicitVRLittleEndian, 1)
                    index.add(instance(f"2.{k % 3}.{n}.{k}", series=f"2.{k % 3}.{n}",
                                       study=f"2.{k % 3}"),
                              f"{n}/b{k}", ExplicitVRLittleEndian, 1)
        self.run_threads(work)
        index = self.indexes[0]
        self.assertEqual([index.count(level) for level in ("PATIENT", "STUDY", "SERIES",
                                                           "IMAGE")], [1, 4, 17, 320])
        counted = snapshot(index)
        recount(index)
        self.assertEqual(counted, snapshot(index))
        self.assertEqual(index._sql("SELECT number_of_study_related_instances,"
                                    " number_of_study_related_series, modalities_in_study,"
                                    " sop_classes_in_study FROM study"
                                    " WHERE study_instance_uid = '1.1'"),
                         [(160, 5, "CT\\MR\\PT\\US\\XA", f"{CT}\\{MR}")])

    def test_same_instance_one_row(self):
        """The same SOP Instance UIDs added through four connections at once
        give one row each, and exact counts."""
        def work(n, index):
            for k in range(30):
                index.add(instance(f"3.1.{k}", series=f"3.{k % 2}", study="3"),
                          f"node{n}/{k}", ExplicitVRLittleEndian, 1)
        self.run_threads(work)
        index = self.indexes[0]
        self.assertEqual(index.count("IMAGE"), 30)
        counted = snapshot(index)
        recount(index)
        self.assertEqual(counted, snapshot(index))

    def test_moves_and_removes(self):
        """Replacements that move instances between studies, and removals,
        from four connections at once keep the counts exact."""
        def work(n, index):
            for k in range(20):
                study = f"4.{(n + k) % 3}"
                index.add(instance(f"4.9.{k}", series=f"{study}.1", study=study,
                                   patient=f"P{(n + k) % 2}"),
                          f"{n}/{k}", ExplicitVRLittleEndian, 1)
                if k % 5 == 4:
                    index.remove(f"4.9.{k - 1}")
        self.run_threads(work)
        index = self.indexes[0]
        counted = snapshot(index)
        recount(index)
        self.assertEqual(counted, snapshot(index))


    def test_emptied_patient_given_a_study_meanwhile(self):
        """A move that empties a patient while another connection is giving
        that patient a new study waits for it, and keeps the patient."""
        import time

        a, b = self.indexes[:2]
        a.add(instance("7.1.1.1", series="7.1.1", study="7.1", patient="P3"), "x",
              ExplicitVRLittleEndian, 1)
        holding, release, failures = threading.Event(), threading.Event(), []

        def give_study():
            with b.transaction():
                b.add(instance("7.3.1.1", series="7.3.1", study="7.3", patient="P3"), "y",
                      ExplicitVRLittleEndian, 1)
                holding.set()
                release.wait(30)

        def move():
            # The series goes to study 7.2 of patient P4: study 7.1 and
            # (but for the other connection's study) patient P3 are emptied.
            try:
                a.add(instance("7.1.1.1", series="7.1.1", study="7.2", patient="P4"), "x",
                      ExplicitVRLittleEndian, 1)
            except Exception as e:  # reported below
                failures.append(e)
        giver = threading.Thread(target=give_study)
        giver.start()
        self.assertTrue(holding.wait(30))
        mover = threading.Thread(target=move)
        mover.start()
        deadline = time.monotonic() + 30
        while not pg_sql(self.uri, "SELECT 1 FROM pg_stat_activity WHERE "
                                   "wait_event_type = 'Lock' AND datname = current_database()"):
            self.assertLess(time.monotonic(), deadline, "the move never waited")
            time.sleep(0.05)
        release.set()
        giver.join(30)
        mover.join(30)
        self.assertEqual(failures, [])
        index = self.indexes[0]
        self.assertEqual(index._sql("SELECT p.patient_id, st.study_instance_uid FROM study st "
                                    "JOIN patient p ON p.pk = st.patient_pk "
                                    "ORDER BY st.study_instance_uid"),
                         [("P4", "7.2"), ("P3", "7.3")])
        counted = snapshot(index)
        recount(index)
        self.assertEqual(counted, snapshot(index))


def pg_sql(uri: str, statement: str) -> list[tuple]:
    """Run one query on its own connection; its rows."""
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        return conn.execute(statement).fetchall()


class ServerGoneTests(SynchronousTestCase):
    """The PostgreSQL server stopping and starting under an open index."""

    def test_fails_then_reconnects(self):
        """While the server is down calls fail quickly; once it is back the
        pool reconnects by itself."""
        import time

        from dicomtwist.storage.index.postgres import PostgresIndex

        uri = pg.create_database()
        self.addCleanup(pg.drop_database, uri)
        index = PostgresIndex(uri, connect_timeout=2, pool_timeout=3)
        self.addCleanup(index.close)
        index.add(instance("5.1.1.1"), "a", ExplicitVRLittleEndian, 1)
        cluster = pg.cluster()
        cluster.stop(remove=False)
        try:
            started = time.monotonic()
            self.assertRaises(Exception, index.get_path, "5.1.1.1")
            self.assertRaises(Exception, index.add, instance("5.1.1.2"), "b",
                              ExplicitVRLittleEndian, 1)
            self.assertLess(time.monotonic() - started, 20)
        finally:
            cluster.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.assertEqual(index.get_path("5.1.1.1"), "a")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        index.add(instance("5.1.1.3"), "c", ExplicitVRLittleEndian, 1)
        self.assertEqual(index.count("IMAGE"), 2)


class BrokenConnectionTests(SynchronousTestCase):
    """Pooled connections the server closed while they sat in the pool (as
    a restart does) are replaced by the call that finds them broken."""

    def test_replaced_without_failing(self):
        """With every pooled connection closed by the server, and the pool
        lending them without a check (recently returned), adds, reads and
        transactions still succeed."""
        from dicomtwist.storage.index import postgres

        self.patch(postgres, "_FRESH", 3600)
        uri = pg.create_database()
        self.addCleanup(pg.drop_database, uri)
        index = postgres.PostgresIndex(uri, max_size=3)
        self.addCleanup(index.close)

        def close_all() -> None:
            pg_sql(uri, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid != pg_backend_pid()")
        index.add(instance("8.1.1.1"), "a", ExplicitVRLittleEndian, 1)
        self.assertEqual(index.get_path("8.1.1.1"), "a")
        close_all()
        index.add(instance("8.1.1.2"), "b", ExplicitVRLittleEndian, 1)
        close_all()
        self.assertEqual(index.get_path("8.1.1.2"), "b")
        close_all()
        with index.transaction():
            index.add(instance("8.1.1.3"), "c", ExplicitVRLittleEndian, 1)
            index.add(instance("8.1.1.4"), "d", ExplicitVRLittleEndian, 1)
        close_all()
        self.assertEqual(index.paths(), ["a", "b", "c", "d"])
        self.assertEqual(index._sql("SELECT number_of_series_related_instances FROM series"),
                         [(4,)])


class _RecordingConnection:
    """What :class:`~dicomtwist.storage.index.postgres._Session` sends, one
    list per round trip: a statement alone, or the commands of a pipeline."""

    def __init__(self) -> None:
        self.round_trips: list[list[str]] = []
        self._pipeline: list[str] | None = None

    def execute(self, sql: str, params: tuple | None = None, prepare: bool | None = None):
        if self._pipeline is not None:
            self._pipeline.append(sql)
            return None
        self.round_trips.append([sql])
        if sql == "FAIL":
            raise ZeroDivisionError(sql)
        return None

    @contextlib.contextmanager
    def pipeline(self):
        self._pipeline = []
        try:
            yield
        finally:
            sent, self._pipeline = self._pipeline, None
            self.round_trips.append(sent)
        if "FAIL" in sent:
            raise ZeroDivisionError("FAIL")


class SessionTests(SynchronousTestCase):
    """A PostgreSQL transaction's BEGIN, SAVEPOINT and RELEASE travel with
    its next statement; empty blocks send nothing."""

    def setUp(self):
        from dicomtwist.storage.index.postgres import _Session

        self.conn = _RecordingConnection()
        self.session = _Session(self.conn)

    def run_failing(self, statement: str | None) -> None:
        """A nested block that runs ``statement`` (if any), then fails."""
        with self.assertRaises(ZeroDivisionError):
            with self.session.block():
                if statement:
                    self.session.run(statement, ())
                raise ZeroDivisionError("in the block")

    def test_commands_travel_with_statements(self):
        """Each savepoint's statement is one round trip with the commands
        queued before it; the commit drops the last RELEASE."""
        session = self.session
        with session.block():
            for statement in ("one", "two"):
                with session.block(), session.block():
                    session.run(statement, ())
        self.assertEqual(self.conn.round_trips, [
            ["BEGIN", "SAVEPOINT s2", "SAVEPOINT s3", "one"],
            ["RELEASE SAVEPOINT s3", "RELEASE SAVEPOINT s2", "SAVEPOINT s2",
             "SAVEPOINT s3", "two"],
            ["COMMIT"]])

    def test_empty_blocks_send_nothing(self):
        """A block with no statement, nested or not, costs no round trip."""
        session = self.session
        with session.block(), session.block():
            pass
        self.assertEqual(self.conn.round_trips, [])
        with session.block():
            session.run("one", ())
            with session.block(), session.block():
                pass
            session.run("two", ())
        self.assertEqual(self.conn.round_trips, [["BEGIN", "one"], ["two"], ["COMMIT"]])

    def test_failed_block_rolled_back(self):
        """A savepoint that ran a statement and failed is rolled back (its
        inner savepoints with it), then released with the next statement."""
        session = self.session
        with session.block():
            with self.assertRaises(ZeroDivisionError):
                with session.block():
                    with session.block():
                        session.run("one", ())
                    raise ZeroDivisionError("in the block")
            session.run("two", ())
        self.assertEqual(self.conn.round_trips, [
            ["BEGIN", "SAVEPOINT s2", "SAVEPOINT s3", "one"],
            ["ROLLBACK TO SAVEPOINT s2"],
            ["RELEASE SAVEPOINT s2", "two"],
            ["COMMIT"]])

    def test_failed_statement_rolled_back(self):
        """A statement failing in its pipeline: its savepoint is rolled back."""
        with self.session.block():
            self.run_failing("FAIL")
        self.assertEqual(self.conn.round_trips, [
            ["BEGIN", "SAVEPOINT s2", "FAIL"], ["ROLLBACK TO SAVEPOINT s2"], ["COMMIT"]])

    def test_failure_before_any_statement(self):
        """A block failing before any statement sends nothing for it."""
        with self.session.block():
            self.session.run("one", ())
            self.run_failing(None)
            self.session.run("two", ())
        self.assertEqual(self.conn.round_trips, [["BEGIN", "one"], ["two"], ["COMMIT"]])

    def test_outermost_failure_rolls_back(self):
        """The outermost block failing after a statement rolls back; before
        any, sends nothing."""
        self.run_failing(None)
        self.assertEqual(self.conn.round_trips, [])
        self.run_failing("one")
        self.assertEqual(self.conn.round_trips, [["BEGIN", "one"], ["ROLLBACK"]])


class AddFunctionTests(SynchronousTestCase):
    """The server-side function of the PostgreSQL add path."""

    def test_created_once_and_again_when_missing(self):
        """Opening creates the function; a second daemon opening the same
        database finds it; a database without it (made by an earlier
        daemon, or with it dropped) gets it, and adds work."""
        from dicomtwist.storage.index.postgres import _ADD_FUNCTION, PostgresIndex

        uri = pg.create_database()
        self.addCleanup(pg.drop_database, uri)

        def functions(index) -> list[str]:
            return [r[0] for r in index._sql(
                "SELECT proname FROM pg_proc WHERE proname LIKE 'dicomtwist_add_%'")]

        first = PostgresIndex(uri)
        self.addCleanup(first.close)
        second = PostgresIndex(uri)
        self.addCleanup(second.close)
        self.assertEqual(functions(second), [_ADD_FUNCTION.name])
        second.add(instance("6.1.1.1"), "a", ExplicitVRLittleEndian, 1)
        first._sql(f"DROP FUNCTION {_ADD_FUNCTION.name}")
        third = PostgresIndex(uri)
        self.addCleanup(third.close)
        self.assertEqual(functions(third), [_ADD_FUNCTION.name])
        third.add(instance("6.1.1.2"), "b", ExplicitVRLittleEndian, 1)
        self.assertEqual(third.paths(), ["a", "b"])

    def test_one_round_trip_per_add(self):
        """In a group commit each add, with the store's savepoint around it,
        is one round trip to the server; the batch adds the commit, and the
        pool's check of the connection unless it came back just before."""
        import psycopg

        from dicomtwist.storage.index import postgres

        uri = pg.create_database()
        self.addCleanup(pg.drop_database, uri)
        index = postgres.PostgresIndex(uri)
        self.addCleanup(index.close)
        index.add(instance("6.2.1.0"), "first", ExplicitVRLittleEndian, 1)
        sent = []
        execute, pipeline = psycopg.Connection.execute, psycopg.Connection.pipeline

        def recording_execute(conn, *args, **kwargs):
            if not conn._pipeline:
                sent.append("statement")
            return execute(conn, *args, **kwargs)

        def recording_pipeline(conn):
            sent.append("pipeline")
            return pipeline(conn)
        self.patch(psycopg.Connection, "execute", recording_execute)
        self.patch(psycopg.Connection, "pipeline", recording_pipeline)
        for fresh, check in ((3600, []), (0, ["statement"])):
            self.patch(postgres, "_FRESH", fresh)
            del sent[:]
            with index.transaction():
                for n in range(1, 6):
                    sent.append("add")
                    with index.transaction():
                        index.add(instance(f"6.2.{fresh}.{n}"), f"p{fresh}.{n}",
                                  ExplicitVRLittleEndian, 1, metadata=b"x")
            self.assertEqual(sent, check + ["add", "pipeline"] * 5 + ["statement"])
