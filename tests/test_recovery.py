"""Tests for start-up recovery and --reindex."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.storage.files import instance_path
from dicomtwist.storage.index import Index
from dicomtwist.storage.recovery import recover, reindex
from tests.helpers import ct_dataset


class RecoveryTests(SynchronousTestCase):
    """Recovery makes the files and the index agree."""

    def setUp(self):
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.index = Index(os.path.join(self.root, "..", "index.sqlite"))

    def store(self, index: bool = True, **values):
        ds = ct_dataset(**values)
        path = instance_path(self.root, ds.SOPInstanceUID)
        ds.save_as(path, enforce_file_format=True)
        if index:
            self.index.add(ds, os.path.basename(path), str(ds.file_meta.TransferSyntaxUID),
                           os.path.getsize(path))
        return ds, path

    def test_leftover_temporary_files_removed(self):
        """Temporary files of unanswered stores are deleted."""
        leftover = os.path.join(self.root, ".incoming-abc.part")
        open(leftover, "wb").write(b"partial")
        report = recover(self.root, self.index)
        self.assertFalse(os.path.exists(leftover))
        self.assertEqual(report.temporary_removed, 1)

    def test_unindexed_file_indexed(self):
        """A stored file with no row (crash before commit) is indexed."""
        kept, _ = self.store()
        orphan, _ = self.store(index=False, PatientID="ORPHAN")
        report = recover(self.root, self.index)
        self.assertEqual(report.files_indexed, 1)
        self.assertEqual(self.index.count("IMAGE"), 2)
        self.assertIsNotNone(self.index.get_path(orphan.SOPInstanceUID))

    def test_row_without_file_dropped(self):
        """A row whose file has gone is removed, with its emptied parents."""
        gone, path = self.store()
        os.unlink(path)
        report = recover(self.root, self.index)
        self.assertEqual(report.rows_dropped, 1)
        self.assertEqual(self.index.count("IMAGE"), 0)
        self.assertEqual(self.index.count("STUDY"), 0)

    def test_damaged_file_reported_not_fatal(self):
        """An unreadable .dcm file is reported and left alone."""
        bad = os.path.join(self.root, "1.2.3.dcm")
        open(bad, "wb").write(b"not dicom")
        report = recover(self.root, self.index)
        self.assertEqual(report.unreadable, ["1.2.3.dcm"])
        self.assertTrue(os.path.exists(bad))
        self.flushLoggedErrors()

    def test_truncated_unindexed_file_not_indexed(self):
        """A file without a row whose data set is cut short (a damaged
        disk, a copy interrupted) is reported, not indexed."""
        ds, path = self.store(index=False)
        with open(path, "r+b") as fp:
            fp.truncate(os.path.getsize(path) - 100)
        report = recover(self.root, self.index)
        self.assertEqual(report.unreadable, [os.path.basename(path)])
        self.assertEqual(report.files_indexed, 0)
        self.assertEqual(self.index.count("IMAGE"), 0)
        self.assertTrue(os.path.exists(path))
        self.flushLoggedErrors()

    def test_empty_unindexed_file_not_indexed(self):
        """An empty ``<uid>.dcm`` is reported, not indexed."""
        path = os.path.join(self.root, "1.2.3.4.dcm")
        open(path, "wb").close()
        report = recover(self.root, self.index)
        self.assertEqual(report.unreadable, ["1.2.3.4.dcm"])
        self.assertEqual(self.index.count("IMAGE"), 0)

    def test_check_complete_on_whole_files(self):
        """Whole files pass, in each transfer syntax pydicom writes them in."""
        from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian
        from dicomtwist.storage.recovery import check_complete
        for syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian):
            ds = ct_dataset()
            ds.file_meta.TransferSyntaxUID = syntax
            path = instance_path(self.root, ds.SOPInstanceUID)
            ds.save_as(path, enforce_file_format=True)
            check_complete(path, syntax)
            with open(path, "r+b") as fp:
                fp.truncate(os.path.getsize(path) - 1)
            self.assertRaises(ValueError, check_complete, path, syntax)

    def test_reindex_rebuilds_everything(self):
        """--reindex empties the index and indexes every stored file."""
        for i in range(3):
            self.store(index=(i == 0), PatientID=f"P{i}")
        report = reindex(self.root, self.index)
        self.assertEqual(report.files_indexed, 3)
        self.assertEqual(self.index.count("IMAGE"), 3)
        self.assertEqual(self.index.count("PATIENT"), 3)

    def test_reindex_skips_truncated_files(self):
        """--reindex indexes the whole files and reports a truncated one."""
        whole, _ = self.store(index=False, PatientID="WHOLE")
        cut, path = self.store(index=False, PatientID="CUT")
        with open(path, "r+b") as fp:
            fp.truncate(os.path.getsize(path) // 2)
        report = reindex(self.root, self.index)
        self.assertEqual(report.files_indexed, 1)
        self.assertEqual(report.unreadable, [os.path.basename(path)])
        self.assertIsNotNone(self.index.get_path(whole.SOPInstanceUID))
        self.assertIsNone(self.index.get_path(cut.SOPInstanceUID))
