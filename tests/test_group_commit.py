"""Group commit: concurrent stores share one transaction and one fsync
round, and new bucket directories are durable before Success."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.dimse.assembly import Spooled
from dicomtwist.dimse.codec import encode_dataset
from dicomtwist.dimse.messages import CStoreRQ
from dicomtwist.services import store as store_module
from dicomtwist.services.store import ArchiveStore
from dicomtwist.status import Status
from dicomtwist.storage.files import (
    bucket,
    flat_name,
    instance_path,
    part10_header,
    relative_path,
)
from dicomtwist.storage.index import Index
from tests.helpers import ct_dataset
from tests.test_store import InlineReactor


class QueuedPool:
    """A thread pool stand-in whose jobs wait until the test runs them."""

    def __init__(self) -> None:
        self.jobs = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        """Queue the call."""
        self.jobs.append((onResult, f, args, kwargs))

    def callInThread(self, f, *args, **kwargs) -> None:
        """Queue the call; its result goes nowhere."""
        self.jobs.append((None, f, args, kwargs))

    def run_next(self) -> None:
        """Run the oldest queued call and report its result."""
        onResult, f, args, kwargs = self.jobs.pop(0)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            if onResult is None:
                raise
            onResult(False, Failure())
        else:
            if onResult is not None:
                onResult(True, result)


class GroupCommitTests(SynchronousTestCase):
    """Stores ready while a commit runs are committed together next."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.index = Index(os.path.join(self.root, "index.sqlite"))
        self.addCleanup(self.index.close)
        self.pool = QueuedPool()
        self.store = ArchiveStore(InlineReactor(), self.pool, self.root, self.index)
        self.batches = []
        self.during_first_commit = []
        original = self.store.commit_batch

        def recording(items):
            self.batches.append(len(items))
            if len(self.batches) == 1:
                # Other workers finish preparing while this commit runs.
                for f in self.during_first_commit:
                    f()
            return original(items)

        self.store.commit_batch = recording

    def request(self):
        """A data set as the store receives it: ``(ds, message, spooled)``."""
        ds = ct_dataset()
        header = part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        data = encode_dataset(ds, ExplicitVRLittleEndian)
        spooled = Spooled(header, [memoryview(data)], None, len(data))
        return ds, CStoreRQ(1, ds.SOPClassUID, ds.SOPInstanceUID), spooled

    def test_ready_stores_share_the_next_batch(self):
        """The first store commits alone and is answered at once; three
        ready meanwhile are queued, then committed as one batch by another
        worker, and each is answered Success only after that batch."""
        first_ds, first_message, first_data = self.request()
        rest = [self.request() for _ in range(3)]
        answers = [Deferred() for _ in rest]
        queued = []

        def arrive():
            for (_, message, data), answer in zip(rest, answers):
                queued.append(self.store.store(message, ExplicitVRLittleEndian, data, answer))

        self.during_first_commit.append(arrive)
        result = self.store.store(first_message, ExplicitVRLittleEndian, first_data, Deferred())
        self.assertEqual(result, (Status.SUCCESS, ""))
        self.assertEqual(queued, [None, None, None])
        self.assertEqual(self.batches, [1])
        for answer in answers:
            self.assertNoResult(answer)
        self.assertEqual(len(self.pool.jobs), 1, "the queue is handed to another worker")
        self.pool.run_next()
        for answer in answers:
            self.assertEqual(self.successResultOf(answer), (Status.SUCCESS, ""))
        self.assertEqual(self.batches, [1, 3])
        self.assertEqual(self.index.count("IMAGE"), 4)
        for ds in [first_ds] + [ds for ds, _, _ in rest]:
            self.assertTrue(os.path.exists(instance_path(self.root, ds.SOPInstanceUID)))
        self.assertEqual([n for n in os.listdir(self.root) if n.endswith(".part")], [])
        self.assertFalse(self.store._committing)

    def test_stopping_pool_gets_no_hand_off(self):
        """While the pool stops (it would drop new work), the worker that
        committed its own instance commits what was queued meanwhile too."""
        first_ds, first_message, first_data = self.request()
        rest = [self.request() for _ in range(2)]
        answers = [Deferred() for _ in rest]

        def arrive():
            for (_, message, data), answer in zip(rest, answers):
                self.store.store(message, ExplicitVRLittleEndian, data, answer)

        self.during_first_commit.append(arrive)
        self.pool.joined = True
        result = self.store.store(first_message, ExplicitVRLittleEndian, first_data, Deferred())
        self.assertEqual(result, (Status.SUCCESS, ""))
        self.assertEqual(self.pool.jobs, [])
        for answer in answers:
            self.assertEqual(self.successResultOf(answer), (Status.SUCCESS, ""))
        self.assertEqual(self.batches, [1, 2])
        self.assertFalse(self.store._committing)

    def test_next_store_after_idle_commits_at_once(self):
        """Once the queue is empty the next store commits in its own worker again."""
        for _ in range(2):
            _, message, data = self.request()
            self.assertEqual(self.store.store(message, ExplicitVRLittleEndian, data, Deferred()),
                             (Status.SUCCESS, ""))
        self.assertEqual(self.batches, [1, 1])
        self.assertEqual(self.pool.jobs, [])

    def test_failed_preparation_is_answered_without_a_commit(self):
        """A data set that does not match its request is refused before any commit."""
        _, message, data = self.request()
        other = CStoreRQ(1, message.affected_sop_class_uid, message.affected_sop_instance_uid + ".9")
        status, _ = self.store.store(other, ExplicitVRLittleEndian, data, Deferred())
        self.assertEqual(status, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)
        self.assertEqual(self.batches, [])
        self.assertEqual(sorted(os.listdir(self.root)), ["index.sqlite", "index.sqlite-shm",
                                                  "index.sqlite-wal"])

    def test_one_failure_does_not_fail_the_batch(self):
        """An instance whose index insert fails is refused; the others commit."""
        items = [self.request() for _ in range(3)]
        prepared = [self.store.prepare(message, ExplicitVRLittleEndian, data)
                    for _, message, data in items]
        bad_uid = items[1][0].SOPInstanceUID
        original = self.index.add

        def add(ds, *args, **kwargs):
            if ds.SOPInstanceUID == bad_uid:
                raise RuntimeError("index broken for this one")
            return original(ds, *args, **kwargs)

        self.patch(self.index, "add", add)
        results = self.store.commit_batch(prepared)
        self.assertEqual([status for status, _ in results],
                         [Status.SUCCESS, Status.OUT_OF_RESOURCES, Status.SUCCESS])
        self.assertEqual(self.index.count("IMAGE"), 2)
        self.assertFalse(os.path.exists(instance_path(self.root, bad_uid)))
        self.assertEqual([n for n in os.listdir(self.root) if n.endswith(".part")], [])
        self.flushLoggedErrors(RuntimeError)


class CountingReactor(InlineReactor):
    """An inline reactor that counts the calls made from threads."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads = 0

    def callFromThread(self, f, *args, **kwargs) -> None:
        """Count, then run ``f`` now."""
        self.from_threads += 1
        f(*args, **kwargs)


class AnswerTests(SynchronousTestCase):
    """``store_spooled`` (C-STORE and STOW-RS) is answered from the worker
    in one call to the reactor per batch."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.index = Index(os.path.join(self.root, "index.sqlite"))
        self.addCleanup(self.index.close)
        self.pool = QueuedPool()
        self.reactor = CountingReactor()
        self.store = ArchiveStore(self.reactor, self.pool, self.root, self.index)

    def spooled(self):
        """``(ds, spooled data set)`` of a new instance."""
        ds = ct_dataset()
        header = part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        data = encode_dataset(ds, ExplicitVRLittleEndian)
        return ds, Spooled(header, [memoryview(data)], None, len(data))

    def start(self, ds, data) -> Deferred:
        return Deferred.fromCoroutine(self.store.store_spooled(
            ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, data))

    def test_lone_store_one_call(self):
        """A lone store goes to the pool once and comes back once, with
        Success once its file and row are in place; its data set is
        released."""
        ds, data = self.spooled()
        answer = self.start(ds, data)
        self.assertNoResult(answer)
        self.pool.run_next()
        self.assertEqual(self.successResultOf(answer), (Status.SUCCESS, ""))
        self.assertEqual(self.reactor.from_threads, 1)
        self.assertTrue(os.path.exists(instance_path(self.root, ds.SOPInstanceUID)))
        self.assertEqual(self.index.get_path(ds.SOPInstanceUID), relative_path(ds.SOPInstanceUID))
        self.assertIsNone(data.parts)
        self.assertEqual(self.pool.jobs, [])

    def test_batch_answered_in_one_call(self):
        """Stores prepared while a commit runs are committed next by the
        same worker (no hand-off to another) and answered together, in one
        call; the first store's own answer came in one call of its own
        before."""
        first = self.spooled()
        rest = [self.spooled() for _ in range(3)]
        original = self.store.commit_batch
        answers = []
        self.batches = []

        def commit(items):
            self.batches.append(len(items))
            if not answers:
                for ds, data in rest:
                    answers.append(self.start(ds, data))
                    self.pool.run_next()  # prepared, queued behind this commit
            return original(items)

        self.store.commit_batch = commit
        fired = []
        answer = self.start(*first)
        answer.addCallback(lambda result: fired.append(
            [queued.called for queued in answers]) or result)
        self.pool.run_next()
        self.assertEqual(self.successResultOf(answer), (Status.SUCCESS, ""))
        self.assertEqual(fired, [[False, False, False]], "answered before the next batch")
        for queued in answers:
            self.assertEqual(self.successResultOf(queued), (Status.SUCCESS, ""))
        self.assertEqual(self.reactor.from_threads, 2)
        self.assertEqual(self.pool.jobs, [])
        self.assertEqual(self.batches, [1, 3])
        self.assertEqual(self.index.count("IMAGE"), 4)
        self.assertFalse(self.store._committing)

    def test_refusal_answered(self):
        """A data set that does not match its request is answered with the
        failure status, without a commit."""
        ds, data = self.spooled()
        answer = Deferred.fromCoroutine(self.store.store_spooled(
            ds.SOPClassUID, ds.SOPInstanceUID + ".9", ExplicitVRLittleEndian, data))
        self.pool.run_next()
        status, _ = self.successResultOf(answer)
        self.assertEqual(status, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)
        self.assertEqual(self.index.count("IMAGE"), 0)

    def test_exception_in_worker_fails_the_answer(self):
        """An unexpected exception in the worker fails the answer (the
        dispatcher then answers "unable to process")."""
        def broken(*args):
            raise RuntimeError("broken")

        self.patch(self.store, "prepare", broken)
        ds, data = self.spooled()
        answer = self.start(ds, data)
        self.pool.run_next()
        self.failureResultOf(answer, RuntimeError)
        self.assertIsNone(data.parts)


class RenameFailureTests(SynchronousTestCase):
    """A rename that fails after the rows are written rolls them back."""

    def test_failed_rename_rolls_back(self):
        """The instance is refused with 0xA700, its row rolled back, its
        temporary file removed; the one stored before under its UID keeps
        its file and row."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        index = Index(os.path.join(root, "index.sqlite"))
        self.addCleanup(index.close)
        store = ArchiveStore(InlineReactor(), QueuedPool(), root, index)
        ds = ct_dataset(PatientName="Kept^Name")

        def request(ds):
            header = part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
            data = encode_dataset(ds, ExplicitVRLittleEndian)
            return (CStoreRQ(1, ds.SOPClassUID, ds.SOPInstanceUID), ExplicitVRLittleEndian,
                    Spooled(header, [memoryview(data)], None, len(data)), Deferred())

        self.assertEqual(store.store(*request(ds)), (Status.SUCCESS, ""))
        path = instance_path(root, ds.SOPInstanceUID)
        with open(path, "rb") as fp:
            kept = fp.read()

        def broken(source, target):
            raise OSError(errno.EIO, "I/O error")

        self.patch(store_module.os, "replace", broken)
        again = ct_dataset(PatientName="New^Name", SOPInstanceUID=ds.SOPInstanceUID,
                           StudyInstanceUID=ds.StudyInstanceUID,
                           SeriesInstanceUID=ds.SeriesInstanceUID)
        status, _ = store.store(*request(again))
        self.assertEqual(status, Status.OUT_OF_RESOURCES)
        self.assertEqual(index._sql("SELECT patient_name FROM patient"), [("Kept^Name",)])
        self.assertEqual(index.get_path(ds.SOPInstanceUID), relative_path(ds.SOPInstanceUID))
        with open(path, "rb") as fp:
            self.assertEqual(fp.read(), kept)
        self.assertEqual([n for n in os.listdir(root) if n.endswith(".part")], [])


class WorkersTests(SynchronousTestCase):
    """The store's workers: long-lived tasks of a real thread pool."""

    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=0, maxthreads=6, name="test-store")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.workers = store_module._Workers(self.pool, 3)

    def run_all(self, tasks, timeout: float = 10.0) -> list:
        """Submit ``(f, args)`` tasks; wait for every report."""
        reports = []
        done = threading.Semaphore(0)

        def report(ok, result):
            reports.append((ok, result))
            done.release()

        for f, args in tasks:
            self.workers.callInThreadWithCallback(report, f, *args)
        for _ in tasks:
            self.assertTrue(done.acquire(timeout=timeout), "a task was never reported")
        return reports

    def test_results_and_failures_reported(self):
        """Every task's result, or its failure, reaches its callback."""
        def fail():
            raise ValueError("no")

        reports = self.run_all([(lambda n=n: n * 2, ()) for n in range(20)] + [(fail, ())])
        self.assertEqual(sorted(r for ok, r in reports if ok), [n * 2 for n in range(20)])
        failures = [r for ok, r in reports if not ok]
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0], Failure)
        self.assertTrue(failures[0].check(ValueError))

    def test_concurrent_up_to_the_limit(self):
        """Blocked tasks run side by side, never more than the limit at once;
        the others wait in the queue and all run in the end."""
        release = threading.Event()
        running = []
        lock = threading.Lock()
        peak = []

        def task():
            with lock:
                running.append(1)
                peak.append(len(running))
            release.wait(10)
            with lock:
                running.pop()

        reports = []
        reporter = threading.Thread(target=lambda: reports.extend(self.run_all([(task, ())] * 7)))
        reporter.start()
        for _ in range(1000):  # until three run at once (each waits on the event)
            with lock:
                if len(running) == 3:
                    break
            threading.Event().wait(0.01)
        release.set()
        reporter.join(10)
        self.assertEqual(max(peak), 3)
        self.assertEqual(len(reports), 7)

    def test_workers_end_when_idle(self):
        """Workers give their threads back once nothing came for LINGER."""
        self.run_all([(int, ())] * 5)
        for _ in range(1000):
            if self.workers._running == 0:
                break
            threading.Event().wait(0.01)
        self.assertEqual((self.workers._running, self.workers._idle), (0, 0))
        self.assertEqual(self.run_all([(int, ("7",))]), [(True, 7)])


def uid_in(wanted, start: int = 1) -> str:
    """A SOP Instance UID whose bucket satisfies ``wanted(bucket)``."""
    n = start
    while not wanted(bucket(f"1.2.826.0.1.3680043.9.7.{n}")):
        n += 1
    return f"1.2.826.0.1.3680043.9.7.{n}"


class DurabilityTests(SynchronousTestCase):
    """A new bucket directory is durable in its parent before Success.

    ``fsync_directory`` is replaced by a recorder that notes, at each
    call, the directory (relative to the instance directory), whether the
    instance files are in place and whether the index rows are committed
    (seen from another sqlite connection).
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.root = os.path.join(self.base, "instances")
        os.makedirs(self.root)
        self.database = os.path.join(self.base, "index.sqlite")
        self.index = Index(self.database)
        self.addCleanup(self.index.close)
        self.events = []
        self.lock = threading.Lock()
        #: Instances whose file must be in place at every fsync ...
        self.watched = []
        #: ... and those whose (first) row must not be committed yet.
        self.new_rows = []
        self.patch(store_module, "fsync_directory", self.fsync)
        self.store = self.new_store()

    def new_store(self) -> ArchiveStore:
        """An ArchiveStore on the directory (as after a restart)."""
        return ArchiveStore(InlineReactor(), QueuedPool(), self.root, self.index)

    def fsync(self, directory: str) -> None:
        """Record a directory fsync and what is durable-to-be at that moment."""
        reader = sqlite3.connect(self.database)
        try:
            committed = {row[0] for row in reader.execute(
                "SELECT sop_instance_uid FROM instance")}
        finally:
            reader.close()
        with self.lock:  # the fsyncs of a batch run in several threads
            self.events.append(("fsync", os.path.relpath(directory, self.root)))
        for uid in self.watched:
            self.assertTrue(os.path.exists(instance_path(self.root, uid)), uid)
        for uid in self.new_rows:
            self.assertNotIn(uid, committed, "row committed before the fsync")

    def store_uid(self, uid: str, store: ArchiveStore | None = None) -> tuple[int, str]:
        """Store an instance with ``uid`` at once; record the answer."""
        ds = ct_dataset(SOPInstanceUID=uid)
        header = part10_header(ds.SOPClassUID, uid, ExplicitVRLittleEndian)
        data = encode_dataset(ds, ExplicitVRLittleEndian)
        spooled = Spooled(header, [memoryview(data)], None, len(data))
        self.watched = [uid]
        self.new_rows = [uid] if self.index.get_path(uid) is None else []
        result = (store or self.store).store(CStoreRQ(1, ds.SOPClassUID, uid),
                                             ExplicitVRLittleEndian, spooled, Deferred())
        self.events.append(("answer", result))
        return result

    def prepared(self, uid: str):
        """An instance prepared for :meth:`ArchiveStore.commit_batch`."""
        ds = ct_dataset(SOPInstanceUID=uid)
        header = part10_header(ds.SOPClassUID, uid, ExplicitVRLittleEndian)
        data = encode_dataset(ds, ExplicitVRLittleEndian)
        return self.store.prepare(CStoreRQ(1, ds.SOPClassUID, uid), ExplicitVRLittleEndian,
                                  Spooled(header, [memoryview(data)], None, len(data)))

    def test_new_bucket_and_parents_fsynced_before_answer(self):
        """The first store into a new bucket fsyncs the bucket (file in
        place, row not yet committed), its parent and the instance
        directory, all at once (in any order), and only then is answered
        Success."""
        uid = uid_in(lambda b: True)
        first, second = bucket(uid)
        self.assertEqual(self.store_uid(uid), (Status.SUCCESS, ""))
        self.assertEqual(sorted(self.events[:3]), [("fsync", "."), ("fsync", first),
                                                   ("fsync", f"{first}/{second}")])
        self.assertEqual(self.events[3:], [("answer", (Status.SUCCESS, ""))])
        self.assertEqual(self.index.get_path(uid), relative_path(uid))

    def test_known_bucket_fsyncs_only_itself(self):
        """A bucket this process made durable is fsynced alone next time; a
        new bucket under a known parent still fsyncs the parent chain."""
        uid = uid_in(lambda b: True)
        first, second = bucket(uid)
        self.store_uid(uid)
        self.events.clear()
        again = uid_in(lambda b: b == (first, second), start=2)
        self.assertEqual(self.store_uid(again), (Status.SUCCESS, ""))
        self.assertEqual(self.events, [("fsync", f"{first}/{second}"),
                                       ("answer", (Status.SUCCESS, ""))])
        self.events.clear()
        sibling = uid_in(lambda b: b[0] == first and b[1] != second, start=2)
        self.assertEqual(self.store_uid(sibling), (Status.SUCCESS, ""))
        self.assertEqual(sorted(self.events[:3]), [("fsync", "."), ("fsync", first),
                                                   ("fsync", "/".join(bucket(sibling)))])
        self.assertEqual(self.events[3:], [("answer", (Status.SUCCESS, ""))])

    def test_restart_fsyncs_existing_buckets_again(self):
        """After a restart an existing bucket is fsynced with its parents once
        more: the process that made it may have died before its fsync."""
        uid = uid_in(lambda b: True)
        self.store_uid(uid)
        self.events.clear()
        again = uid_in(lambda b: b == bucket(uid), start=2)
        self.assertEqual(self.store_uid(again, self.new_store()), (Status.SUCCESS, ""))
        first, second = bucket(uid)
        self.assertEqual(sorted(self.events[:3]), [("fsync", "."), ("fsync", first),
                                                   ("fsync", f"{first}/{second}")])
        self.assertEqual(self.events[3:], [("answer", (Status.SUCCESS, ""))])

    def test_batch_fsyncs_each_directory_once(self):
        """A batch fsyncs every bucket it renamed into once, and each new
        bucket's parent and the instance directory once, before its commit."""
        one = uid_in(lambda b: True)
        same = uid_in(lambda b: b == bucket(one), start=2)
        other = uid_in(lambda b: b[0] != bucket(one)[0], start=2)
        items = [self.prepared(uid) for uid in (one, same, other)]
        self.watched = self.new_rows = [one, same, other]
        results = self.store.commit_batch(items)
        self.assertEqual(results, [(Status.SUCCESS, "")] * 3)
        # The fsyncs run at once, so in any order.
        self.assertEqual(sorted(self.events), sorted([
            ("fsync", "/".join(bucket(one))), ("fsync", "/".join(bucket(other))),
            ("fsync", bucket(one)[0]), ("fsync", bucket(other)[0]), ("fsync", ".")]))

    def test_failed_fsync_fails_the_batch(self):
        """An fsync error answers the batch with a failure, and the bucket is
        fsynced again by the next store."""
        def broken(directory):
            raise OSError(errno.EIO, "I/O error")

        self.patch(store_module, "fsync_directory", broken)
        uid = uid_in(lambda b: True)
        status, _ = self.store_uid(uid)
        self.assertEqual(status, Status.OUT_OF_RESOURCES)
        self.assertIsNone(self.index.get_path(uid))
        self.flushLoggedErrors(OSError)
        self.patch(store_module, "fsync_directory", self.fsync)
        self.events.clear()
        self.assertEqual(self.store_uid(uid), (Status.SUCCESS, ""))
        self.assertEqual(len([e for e in self.events if e[0] == "fsync"]), 3)

    def test_one_failed_fsync_among_several_fails_the_batch(self):
        """An fsync that fails in one of the fsync threads (not the
        committer's own) fails the batch too, once every fsync has ended."""
        uid = uid_in(lambda b: True)
        leaf = os.path.dirname(instance_path(self.root, uid))
        ended = []

        def leaf_broken(directory):
            if directory == leaf:
                raise OSError(errno.EIO, "I/O error")
            ended.append(directory)

        self.patch(store_module, "fsync_directory", leaf_broken)
        status, _ = self.store_uid(uid)
        self.assertEqual(status, Status.OUT_OF_RESOURCES)
        self.assertEqual(sorted(ended), sorted([os.path.dirname(leaf), self.root]))
        self.assertIsNone(self.index.get_path(uid))
        self.flushLoggedErrors(OSError)

    def test_bucket_removed_while_running_is_made_again(self):
        """A bucket removed by hand while the archive runs is made again and
        fsynced with its parents."""
        uid = uid_in(lambda b: True)
        self.store_uid(uid)
        leaf = os.path.dirname(instance_path(self.root, uid))
        os.unlink(instance_path(self.root, uid))
        os.rmdir(leaf)
        self.events.clear()
        self.assertEqual(self.store_uid(uid), (Status.SUCCESS, ""))
        self.assertTrue(os.path.exists(instance_path(self.root, uid)))
        self.assertEqual(len([e for e in self.events if e[0] == "fsync"]), 3)

    def test_flat_file_replaced_and_removed_after_commit(self):
        """Storing again an instance kept in the flat layout writes it nested,
        indexes the nested path and removes the flat file only after the
        commit (it is still there at every fsync)."""
        uid = uid_in(lambda b: True)
        ds = ct_dataset(SOPInstanceUID=uid, PatientID="FLAT")
        flat = os.path.join(os.path.realpath(self.root), flat_name(uid))
        ds.save_as(flat, enforce_file_format=True)
        self.index.add(ds, flat_name(uid), ExplicitVRLittleEndian, os.path.getsize(flat))
        seen = []
        recorder = self.fsync
        self.patch(store_module, "fsync_directory",
                   lambda d: (seen.append(os.path.exists(flat)), recorder(d)))
        self.assertEqual(self.store_uid(uid), (Status.SUCCESS, ""))
        self.assertEqual(seen, [True, True, True])
        self.assertFalse(os.path.exists(flat))
        self.assertEqual(self.index.get_path(uid), relative_path(uid))
        self.assertNotEqual(dcmread(instance_path(self.root, uid)).PatientID, "FLAT")
