"""Group commit: concurrent stores share one transaction and one fsync."""

from __future__ import annotations

import os

from pydicom.uid import ExplicitVRLittleEndian
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

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

    def run_next(self) -> None:
        """Run the oldest queued call and report its result."""
        onResult, f, args, kwargs = self.jobs.pop(0)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class GroupCommitTests(SynchronousTestCase):
    """Stores arriving while a commit runs are committed together next."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.index = Index(os.path.join(self.root, "index.sqlite"))
        self.pool = QueuedPool()
        self.store = ArchiveStore(InlineReactor(), self.pool, self.root, self.index)
        self.batches = []
        original = self.store.commit_batch

        def recording(items):
            self.batches.append(len(items))
            return original(items)

        self.store.commit_batch = recording

    def prepared(self):
        ds = ct_dataset()
        temp = os.path.join(self.root, f".incoming-{ds.SOPInstanceUID}.part")
        with open(temp, "wb") as fp:
            fp.write(part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian))
            fp.write(encode_dataset(ds, ExplicitVRLittleEndian))
        message = CStoreRQ(1, ds.SOPClassUID, ds.SOPInstanceUID)
        return ds, self.store.prepare(message, ExplicitVRLittleEndian, temp)

    def test_waiting_stores_share_the_next_batch(self):
        """One store commits alone; three arriving meanwhile commit as one batch,
        and each is answered Success only after its batch."""
        first_ds, first = self.prepared()
        d1 = self.store._group_commit(first)
        rest = [self.prepared() for _ in range(3)]
        waiting = [self.store._group_commit(item) for _, item in rest]
        for d in waiting:
            self.assertNoResult(d)
        self.pool.run_next()
        self.assertEqual(self.successResultOf(d1), (Status.SUCCESS, ""))
        for d in waiting:
            self.assertNoResult(d)
        self.pool.run_next()
        for d in waiting:
            self.assertEqual(self.successResultOf(d), (Status.SUCCESS, ""))
        self.assertEqual(self.batches, [1, 3])
        self.assertEqual(self.index.count("IMAGE"), 4)
        for ds, _ in [(first_ds, first), *rest]:
            self.assertTrue(os.path.exists(os.path.join(self.root, ds.SOPInstanceUID + ".dcm")))
        self.assertEqual([n for n in os.listdir(self.root) if n.endswith(".part")], [])

    def test_one_failure_does_not_fail_the_batch(self):
        """An instance whose index insert fails is refused; the others commit."""
        items = [self.prepared() for _ in range(3)]
        bad_uid = items[1][0].SOPInstanceUID
        original = self.index.add

        def add(ds, *args):
            if ds.SOPInstanceUID == bad_uid:
                raise RuntimeError("index broken for this one")
            return original(ds, *args)

        self.patch(self.index, "add", add)
        results = self.store.commit_batch([item for _, item in items])
        self.assertEqual([status for status, _ in results],
                         [Status.SUCCESS, Status.OUT_OF_RESOURCES, Status.SUCCESS])
        self.assertEqual(self.index.count("IMAGE"), 2)
        self.assertFalse(os.path.exists(os.path.join(self.root, bad_uid + ".dcm")))
        self.flushLoggedErrors(RuntimeError)
