"""Group commit: concurrent stores share one transaction and one fsync."""

from __future__ import annotations

import os

from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.dimse.assembly import Spooled
from dicomtwist.dimse.codec import encode_dataset
from dicomtwist.dimse.messages import CStoreRQ
from dicomtwist.services.store import ArchiveStore
from dicomtwist.status import Status
from dicomtwist.storage.files import part10_header
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
            self.assertTrue(os.path.exists(os.path.join(self.root, ds.SOPInstanceUID + ".dcm")))
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

        def add(ds, *args):
            if ds.SOPInstanceUID == bad_uid:
                raise RuntimeError("index broken for this one")
            return original(ds, *args)

        self.patch(self.index, "add", add)
        results = self.store.commit_batch(prepared)
        self.assertEqual([status for status, _ in results],
                         [Status.SUCCESS, Status.OUT_OF_RESOURCES, Status.SUCCESS])
        self.assertEqual(self.index.count("IMAGE"), 2)
        self.assertFalse(os.path.exists(os.path.join(self.root, bad_uid + ".dcm")))
        self.assertEqual([n for n in os.listdir(self.root) if n.endswith(".part")], [])
        self.flushLoggedErrors(RuntimeError)
