"""Tests for dicomtwist.services.store: the archive's C-STORE SCP.

A requestor and an acceptor serving :class:`ArchiveStore` are joined in
memory; the store writes into a real instance directory and a real
:class:`Index` in the test's temporary directory.  The thread pool is a
stand-in that runs work inline, and the reactor's ``callFromThread`` runs
inline too, so ``deferToThreadPool`` completes synchronously.
"""

from __future__ import annotations

import errno
import os
import uuid
import warnings

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import IMPLEMENTATION_CLASS_UID
from dicomtwist.association import AcceptorFactory, associate
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.assembly import TempFileSink
from dicomtwist.dimse.codec import encode_dataset
from dicomtwist.services import store as store_module
from dicomtwist.storage import files as files_module
from dicomtwist.services.store import ArchiveStore
from dicomtwist.status import Status
from dicomtwist.storage.files import (
    instance_path,
    is_valid_uid,
    relative_path,
    stored_instances,
)
from dicomtwist.storage.index import Index
from tests.helpers import CT_IMAGE_STORAGE, UNCOMPRESSED, connect_in_memory, ct_dataset, policy

#: SOP Instance UIDs a peer might send that must never become a path.
INVALID_UIDS = {
    "parent traversal": "../../x",
    "absolute path": "/tmp/dicomtwist-" + uuid.uuid4().hex,
    "traversal after digits": "1.2.3/../../x",
    "backslash": "a\\b",
    "embedded NUL": "1.2\x003",
    "5000 characters": "1." + "2" * 4998,
    "zero-led component": "1.02",
}


class InlineReactor(MemoryReactorClock):
    """A memory reactor whose ``callFromThread`` runs the call at once."""

    def callFromThread(self, f, *args, **kwargs) -> None:
        """Run ``f`` now, on this thread."""
        f(*args, **kwargs)


class InlinePool:
    """A thread pool stand-in that runs each call inline (for ``deferToThreadPool``)."""

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        """Call ``f`` and report its result or failure to ``onResult``."""
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def callInThread(self, f, *args, **kwargs) -> None:
        """Call ``f`` now."""
        f(*args, **kwargs)


class StoreTestCase(SynchronousTestCase):
    """Base: an ArchiveStore on a real index in a fresh directory tree.

    The instance directory is ``<base>/a/b/instances`` so that ``../../x``
    would land inside ``<base>``, where the test can see it.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.directory = os.path.join(self.base, "a", "b", "instances")
        os.makedirs(self.directory)
        self.index = Index(os.path.join(self.base, "index.sqlite"))
        self.addCleanup(self.index.close)
        self.reactor = InlineReactor()
        self.store = ArchiveStore(self.reactor, InlinePool(), self.directory, self.index)

    def connect(self, contexts=None):
        """Associate in memory with an acceptor serving ``self.store``.

        :returns: ``(client, server, pump)``.
        """
        factory = AcceptorFactory(self.reactor, policy(), {"store": self.store.handle_store},
                                  sink_for=self.store.sink_for)
        d = associate(self.reactor, "127.0.0.1", 11112,
                      contexts=contexts or [(CT_IMAGE_STORAGE, UNCOMPRESSED)])
        client, server, pump = connect_in_memory(self.reactor, factory)
        self.assertIs(self.successResultOf(d), client)
        self.addCleanup(self.release, client, pump)
        return client, server, pump

    def release(self, client, pump) -> None:
        """Release the association if it is still up."""
        if not client.machine.is_closed:
            d = client.release()
            pump.flush()
            self.successResultOf(d)

    def store_dataset(self, ds, contexts=None) -> m.CStoreRSP:
        """C-STORE ``ds`` on a new association; return the response."""
        client, _, pump = self.connect(contexts)
        with warnings.catch_warnings():
            # pydicom warns about the invalid UIDs some tests send on purpose.
            warnings.simplefilter("ignore")
            d = client.store(ds)
            pump.flush()
        return self.successResultOf(d)

    def store_raw(self, sop_instance_uid: str, data: bytes,
                  sop_class_uid: str = CT_IMAGE_STORAGE) -> m.CStoreRSP:
        """Send a C-STORE-RQ whose command and data set we choose independently.

        ``Association.store`` takes both from one data set, so this goes
        through the association's request path directly.
        """
        client, _, pump = self.connect()
        context = client.context_for(CT_IMAGE_STORAGE, ImplicitVRLittleEndian)
        message = m.CStoreRQ(client._next_id(), sop_class_uid, sop_instance_uid,
                             m.Priority.MEDIUM)
        d = client._request(message, context, data, "store")
        pump.flush()
        return self.successResultOf(d)

    def tree(self) -> list[str]:
        """Every file under the base directory, relative, sorted."""
        found = []
        for root, _, files in os.walk(self.base):
            found += [os.path.relpath(os.path.join(root, f), self.base) for f in files]
        return sorted(found)

    def instance_files(self) -> list[str]:
        """The instance files in the instance directory, relative to it, sorted."""
        return sorted(relative for _, relative in stored_instances(self.directory))

    def index_files(self) -> list[str]:
        """The index's own files (sqlite and its WAL companions)."""
        return [f for f in self.tree() if f.startswith("index.sqlite")]

    def assertNothingStored(self) -> None:
        """No instance file, no temporary file and no row anywhere."""
        self.assertEqual(self.tree(), self.index_files())
        self.assertEqual(self.index.count("IMAGE"), 0)
        self.assertEqual(self.index.paths(), [])


class StoreSuccessTests(StoreTestCase):
    """Instances that are stored."""

    def test_store_writes_part10_file_and_indexes(self) -> None:
        """A stored CT lands at instances/ab/cd/<uid>.dcm as a Part 10 file equal to it, and is indexed."""
        ds = ct_dataset(4096, PatientID="STORE1")
        rsp = self.store_dataset(ds, [(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])])
        self.assertEqual((rsp.status, rsp.affected_sop_instance_uid),
                         (Status.SUCCESS, ds.SOPInstanceUID))
        path = instance_path(self.directory, ds.SOPInstanceUID)
        self.assertEqual(self.instance_files(), [relative_path(ds.SOPInstanceUID)])
        self.assertEqual(os.path.relpath(path, os.path.realpath(self.directory)),
                         relative_path(ds.SOPInstanceUID))
        stored = dcmread(path)
        self.assertEqual(stored, ds)
        meta = stored.file_meta
        self.assertEqual(
            (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID,
             meta.TransferSyntaxUID, meta.ImplementationClassUID),
            (CT_IMAGE_STORAGE, ds.SOPInstanceUID, ExplicitVRLittleEndian,
             IMPLEMENTATION_CLASS_UID))
        with open(path, "rb") as fp:
            self.assertEqual(fp.read(132)[128:], b"DICM")
        self.assertEqual(self.index.paths(), [relative_path(ds.SOPInstanceUID)])
        self.assertEqual(self.index.get_path(ds.SOPInstanceUID), relative_path(ds.SOPInstanceUID))
        self.assertEqual(self.index.count("IMAGE"), 1)

    def test_stored_as_received(self) -> None:
        """The data set is stored in the transfer syntax it arrived in, byte for byte."""
        ds = ct_dataset(256)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        rsp = self.store_dataset(ds, [(CT_IMAGE_STORAGE, [ImplicitVRLittleEndian])])
        self.assertEqual(rsp.status, Status.SUCCESS)
        path = instance_path(self.directory, ds.SOPInstanceUID)
        stored = dcmread(path)
        self.assertEqual(stored.file_meta.TransferSyntaxUID, ImplicitVRLittleEndian)
        with open(path, "rb") as fp:
            data = fp.read()
        self.assertTrue(data.endswith(encode_dataset(ds, ImplicitVRLittleEndian)))

    def test_second_store_replaces(self) -> None:
        """A second store of the same SOP Instance UID replaces file and row, no duplicate."""
        first = ct_dataset(64, PatientName="First^Version")
        self.assertEqual(self.store_dataset(first).status, Status.SUCCESS)
        second = ct_dataset(128, SOPInstanceUID=first.SOPInstanceUID,
                            StudyInstanceUID=first.StudyInstanceUID,
                            SeriesInstanceUID=first.SeriesInstanceUID,
                            PatientName="Second^Version")
        self.assertEqual(self.store_dataset(second).status, Status.SUCCESS)
        self.assertEqual(self.instance_files(), [relative_path(first.SOPInstanceUID)])
        stored = dcmread(instance_path(self.directory, first.SOPInstanceUID))
        self.assertEqual(stored, second)
        self.assertEqual(self.index.count("IMAGE"), 1)
        self.assertEqual(self.index.paths(), [relative_path(first.SOPInstanceUID)])

    def test_many_on_one_association(self) -> None:
        """Several stores on one association each get Success and their own file."""
        client, _, pump = self.connect()
        datasets = [ct_dataset(32) for _ in range(5)]
        ds = [client.store(d) for d in datasets]
        pump.flush()
        self.assertEqual([self.successResultOf(d).status for d in ds], [Status.SUCCESS] * 5)
        self.assertEqual(self.instance_files(),
                         sorted(relative_path(d.SOPInstanceUID) for d in datasets))
        self.assertEqual(self.index.count("IMAGE"), 5)


def quiet_ct_dataset(pixels: int = 64, **values):
    """:func:`ct_dataset` without pydicom's warnings about invalid UIDs we set on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct_dataset(pixels, **values)


class InvalidUIDTests(StoreTestCase):
    """SOP Instance UIDs that are not UIDs never touch the file system."""

    def check(self, name: str, send) -> None:
        """``send(uid)`` for every invalid UID gets a failure and writes nothing."""
        for case, uid in INVALID_UIDS.items():
            rsp = send(uid)
            self.assertEqual(rsp.status, Status.STORE_CANNOT_UNDERSTAND, case)
            self.assertNothingStored()
        absolute = INVALID_UIDS["absolute path"]
        for path in (absolute, absolute + ".dcm"):
            self.assertFalse(os.path.exists(path), path)

    def test_invalid_uid_in_command_and_data_set(self) -> None:
        """An invalid UID in command and data set alike gets 0xC210 and no file anywhere."""
        self.check("store", lambda uid: self.store_dataset(quiet_ct_dataset(SOPInstanceUID=uid)))

    def test_invalid_uid_in_command_only(self) -> None:
        """An invalid UID in the command (valid data set) gets 0xC210 and no file anywhere."""
        data = encode_dataset(ct_dataset(64), ImplicitVRLittleEndian)
        self.check("raw", lambda uid: self.store_raw(uid, data))

    def test_invalid_sop_class_uid(self) -> None:
        """An invalid Affected SOP Class UID gets a failure and writes nothing."""
        ds = ct_dataset(64)
        rsp = self.store_raw(ds.SOPInstanceUID, encode_dataset(ds, ImplicitVRLittleEndian),
                             sop_class_uid="1.2.840.10008.5.1.4.1.1.2/../x")
        self.assertNotEqual(rsp.status, Status.SUCCESS)
        self.assertNothingStored()

    def test_invalid_study_uid(self) -> None:
        """A data set whose Study Instance UID is not a UID gets 0xC210 and no file."""
        ds = quiet_ct_dataset(StudyInstanceUID="../study")
        self.assertEqual(self.store_dataset(ds).status, Status.STORE_CANNOT_UNDERSTAND)
        self.assertNothingStored()

    def test_is_valid_uid(self) -> None:
        """is_valid_uid accepts PS3.5 9.1 UIDs and refuses every invalid case."""
        for uid in ("0", "1.2.3", "1.2.840.10008.1.2.1", "1." + "2" * 62):
            self.assertTrue(is_valid_uid(uid), uid)
        for case, uid in {**INVALID_UIDS, "empty": "", "65 characters": "1." + "2" * 63,
                          "trailing dot": "1.2.", "empty component": "1..2",
                          "not a string": 123}.items():
            self.assertFalse(is_valid_uid(uid), case)

    def test_instance_path(self) -> None:
        """instance_path is <directory>/ab/cd/<uid>.dcm and refuses invalid UIDs."""
        self.assertEqual(instance_path(self.directory, "1.2.3"),
                         os.path.join(os.path.realpath(self.directory), "c4", "7f", "1.2.3.dcm"))
        for case, uid in INVALID_UIDS.items():
            self.assertRaises(ValueError, instance_path, self.directory, uid)


class DataSetFailureTests(StoreTestCase):
    """Data sets that do not fit their command, or cannot be read."""

    def test_uid_differs_from_command(self) -> None:
        """A data set whose SOP Instance UID differs from the command's gets 0xA900, no file."""
        ds = ct_dataset(64)
        rsp = self.store_raw("1.2.3.4.5", encode_dataset(ds, ImplicitVRLittleEndian))
        self.assertEqual(rsp.status, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)
        self.assertEqual(rsp.status, 0xA900)
        self.assertNothingStored()

    def test_sop_class_differs_from_command(self) -> None:
        """A data set whose SOP Class UID differs from the command's gets 0xA900, no file."""
        ds = ct_dataset(64)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        rsp = self.store_raw(ds.SOPInstanceUID, encode_dataset(ds, ImplicitVRLittleEndian))
        self.assertEqual(rsp.status, 0xA900)
        self.assertNothingStored()

    def test_undecodable_data_set(self) -> None:
        """Bytes that are not a data set get 0xC210 and leave no file."""
        rsp = self.store_raw("1.2.3.4.6", b"\xff\xff\xff\xff\x00\x10garbage" * 50)
        self.assertEqual(rsp.status, 0xC210)
        self.assertNothingStored()

    def test_undecodable_spilled_data_set(self) -> None:
        """Bytes that are not a data set, spilled into a temporary file, get
        0xC210; the file is unmapped and deleted."""
        self.store = ArchiveStore(self.reactor, InlinePool(), self.directory, self.index,
                                  memory_limit=0)
        rsp = self.store_raw("1.2.3.4.6", b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00" * 40)
        self.assertEqual(rsp.status, 0xC210)
        self.assertNothingStored()

    def test_spilled_file_header_error(self) -> None:
        """A malformed spilled file raises the scanner's HeaderError (not the
        map's BufferError: no view of the file outlives the scan)."""
        from dicomtwist.storage.files import part10_header
        from dicomtwist.storage.header import HeaderError
        header = part10_header("1.2", "1.2.3", ImplicitVRLittleEndian)
        path = os.path.join(self.directory, "garbage.part")
        with open(path, "wb") as fp:
            fp.write(header + b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00" * 40)
        with self.assertRaises(HeaderError):
            store_module.read_header_from_file(path, len(header), ImplicitVRLittleEndian)

    def test_empty_data_set(self) -> None:
        """An empty data set gets 0xC210 and leaves no file."""
        rsp = self.store_raw("1.2.3.4.7", b"")
        self.assertEqual(rsp.status, 0xC210)
        self.assertNothingStored()

    def test_data_set_without_study_uid(self) -> None:
        """A data set missing Study Instance UID gets 0xC210 and leaves no file."""
        ds = ct_dataset(64)
        del ds.StudyInstanceUID
        rsp = self.store_raw(ds.SOPInstanceUID, encode_dataset(ds, ImplicitVRLittleEndian))
        self.assertEqual(rsp.status, 0xC210)
        self.assertNothingStored()


class IndexFailureTests(StoreTestCase):
    """A failure between writing the file and indexing it."""

    def test_index_add_raises(self) -> None:
        """When index.add raises, the store fails and leaves neither file nor row."""
        def broken_add(*args, **kwargs):
            raise RuntimeError("disk I/O error")

        self.patch(self.index, "add", broken_add)
        rsp = self.store_dataset(ct_dataset(64))
        self.assertEqual(rsp.status, Status.OUT_OF_RESOURCES)
        self.assertNothingStored()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_index_add_raises_on_replacement(self) -> None:
        """A failed replacement store answers failure and leaves no temporary file or stale row."""
        first = ct_dataset(64)
        self.assertEqual(self.store_dataset(first).status, Status.SUCCESS)

        def broken_add(*args, **kwargs):
            raise RuntimeError("disk I/O error")

        self.patch(self.index, "add", broken_add)
        second = ct_dataset(96, SOPInstanceUID=first.SOPInstanceUID,
                            StudyInstanceUID=first.StudyInstanceUID,
                            SeriesInstanceUID=first.SeriesInstanceUID)
        rsp = self.store_dataset(second)
        self.assertEqual(rsp.status, Status.OUT_OF_RESOURCES)
        self.flushLoggedErrors(RuntimeError)
        # Files and rows agree: whatever is indexed exists, whatever exists is indexed.
        self.assertEqual(self.instance_files(), sorted(self.index.paths()))

    def test_index_add_raises_keeps_previous_instance(self) -> None:
        """A failed replacement store leaves the previously stored instance in place."""
        first = ct_dataset(64)
        self.assertEqual(self.store_dataset(first).status, Status.SUCCESS)

        def broken_add(*args, **kwargs):
            raise RuntimeError("disk I/O error")

        self.patch(self.index, "add", broken_add)
        second = ct_dataset(96, SOPInstanceUID=first.SOPInstanceUID,
                            StudyInstanceUID=first.StudyInstanceUID,
                            SeriesInstanceUID=first.SeriesInstanceUID)
        self.assertEqual(self.store_dataset(second).status, Status.OUT_OF_RESOURCES)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.index.get_path(first.SOPInstanceUID),
                         relative_path(first.SOPInstanceUID))
        self.assertEqual(dcmread(instance_path(self.directory, first.SOPInstanceUID)), first)


class OutOfSpaceTests(StoreTestCase):
    """Out of disk space gets 0xA700 and leaves nothing behind."""

    def spill_everything(self) -> None:
        """Make every data set stream to a temporary file as it arrives."""
        self.store = ArchiveStore(self.reactor, InlinePool(), self.directory, self.index,
                                  memory_limit=0)

    def test_enospc_writing_spooled_data_set(self) -> None:
        """ENOSPC writing an in-memory data set out gets 0xA700 and leaves no file."""
        def full(fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        # Its fragments go out with writev, never joined.
        self.patch(files_module.os, "write", full)
        self.patch(files_module.os, "writev", full)
        rsp = self.store_dataset(ct_dataset(4096))
        self.assertEqual(rsp.status, Status.OUT_OF_RESOURCES)
        self.assertEqual(rsp.status, 0xA700)
        self.assertNothingStored()

    def test_enospc_on_fsync_of_spooled_data_set(self) -> None:
        """ENOSPC from fsync of an in-memory data set's file gets 0xA700 and
        leaves no file."""
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(files_module.os, "fsync", full)
        rsp = self.store_dataset(ct_dataset(64))
        self.assertEqual(rsp.status, 0xA700)
        self.assertNothingStored()

    def test_enospc_while_spilling(self) -> None:
        """ENOSPC from a spilled data set's temporary file gets 0xA700 and
        leaves no file."""
        self.spill_everything()

        def full(sink, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(TempFileSink, "write", full)
        rsp = self.store_dataset(ct_dataset(4096))
        self.assertEqual(rsp.status, 0xA700)
        self.assertNothingStored()

    def test_enospc_while_flushing_spilled_file(self) -> None:
        """ENOSPC when a spilled temporary file is closed (flushed) gets
        0xA700 and leaves no file."""
        self.spill_everything()
        original_close = TempFileSink.close

        def full(sink):
            original_close(sink)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(TempFileSink, "close", full)
        rsp = self.store_dataset(ct_dataset(64))
        self.assertEqual(rsp.status, 0xA700)
        self.assertNothingStored()

    def test_enospc_on_fsync_of_spilled_file(self) -> None:
        """ENOSPC from fsync of a spilled file gets 0xA700 and leaves no file."""
        self.spill_everything()

        def full(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(store_module, "fsync_file", full)
        rsp = self.store_dataset(ct_dataset(64))
        self.assertEqual(rsp.status, 0xA700)
        self.assertNothingStored()

    def test_min_free_bytes(self) -> None:
        """With min_free_bytes above the free space every store gets 0xA700 and writes nothing."""
        self.store = ArchiveStore(self.reactor, InlinePool(), self.directory, self.index,
                                  min_free_bytes=2 ** 62)
        rsp = self.store_dataset(ct_dataset(64))
        self.assertEqual(rsp.status, 0xA700)
        self.assertNothingStored()


class AbortTests(StoreTestCase):
    """An association that ends in the middle of a data set."""

    def cut_off(self):
        """Deliver half of a 0.5 MiB data set, then drop the connection."""
        client, server, pump = self.connect()
        d = client.store(ct_dataset(512 * 1024))
        data = pump.clientIO.getOutBuffer()
        server.dataReceived(data[:len(data) // 2])
        return client, pump, d

    def test_connection_lost_mid_store_releases_memory(self) -> None:
        """A spooled data set cut off by a lost connection gives its memory
        back and leaves no file."""
        client, pump, d = self.cut_off()
        self.assertGreater(self.store.budget.used, 128 * 1024,
                           "the test must cut the data set off mid-transfer")
        client.transport.loseConnection()
        pump.flush()
        self.failureResultOf(d)
        self.assertEqual(self.store.budget.used, 0)
        self.assertNothingStored()

    def test_connection_lost_mid_store_leaves_no_temp_file(self) -> None:
        """A spilled data set cut off by a lost connection leaves no temporary file."""
        self.store = ArchiveStore(self.reactor, InlinePool(), self.directory, self.index,
                                  memory_limit=64 * 1024)
        client, pump, d = self.cut_off()
        self.assertTrue(any(name.endswith(".part") for name in os.listdir(self.directory)),
                        "the test must cut the data set off mid-transfer")
        self.assertEqual(self.store.budget.used, 0)
        client.transport.loseConnection()
        pump.flush()
        self.failureResultOf(d)
        self.assertNothingStored()
