"""Tests for start-up recovery and --reindex, on both index backends."""

from __future__ import annotations

import os
import time

from dicomtwist.storage.files import (
    bucket,
    flat_name,
    instance_path,
    relative_path,
    stored_instances,
)
from dicomtwist.storage.recovery import recover, reindex
from tests.backends import both
from tests.helpers import ct_dataset


def write(root: str, ds, flat: bool = False) -> str:
    """Save ``ds`` where the archive keeps it: nested (making its bucket),
    or in the earlier flat layout; returns the path."""
    if flat:
        path = os.path.join(os.path.realpath(root), flat_name(ds.SOPInstanceUID))
    else:
        path = instance_path(root, ds.SOPInstanceUID)
        os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class RecoveryTests:
    """Recovery makes the files and the index agree."""

    def setUp(self):
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.index = self.make_index()

    def store(self, index: bool = True, flat: bool = False, **values):
        """Write an instance file as the archive does (nested), or as it
        did before (``flat``), and index it by its relative path."""
        ds = ct_dataset(**values)
        path = write(self.root, ds, flat)
        if index:
            self.index.add(ds, os.path.relpath(path, os.path.realpath(self.root)),
                           str(ds.file_meta.TransferSyntaxUID), os.path.getsize(path))
        return ds, path

    def test_leftover_temporary_files_removed(self):
        """Temporary files of unanswered stores are deleted."""
        leftover = os.path.join(self.root, ".incoming-abc.part")
        open(leftover, "wb").write(b"partial")
        report = recover(self.root, self.index)
        self.assertFalse(os.path.exists(leftover))
        self.assertEqual(report.temporary_removed, 1)

    def test_only_this_nodes_temporary_files(self):
        """With nodes sharing the directory, a node's recovery removes its own
        temporary and scratch files and other nodes' stale ones, never the
        fresh ones of a node still storing."""
        from dicomtwist.storage import files

        files.set_node("nodea")
        self.addCleanup(files.set_node, "")
        own = os.path.join(self.root, ".incoming-nodea-x1.part")
        fresh = os.path.join(self.root, ".incoming-nodeb-x2.part")
        stale = os.path.join(self.root, ".incoming-nodeb-x3.part")
        own_scratch = files.scratch_file(self.root)
        other = os.path.join(self.root, ".scratch", "nodeb")
        os.makedirs(other)
        other_scratch = os.path.join(other, "x.dcm")
        for path in (own, fresh, stale, other_scratch):
            open(path, "wb").write(b"partial")
        old = time.time() - files.STALE_AFTER - 60
        os.utime(stale, (old, old))
        report = recover(self.root, self.index)
        self.assertEqual([os.path.exists(p) for p in (own, fresh, stale, own_scratch,
                                                      other_scratch)],
                         [False, True, False, False, True])
        self.assertEqual(report.temporary_removed, 3)

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
        self.assertEqual(report.unreadable, [relative_path(ds.SOPInstanceUID)])
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
            path = write(self.root, ds)
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
        self.assertEqual(report.unreadable, [relative_path(cut.SOPInstanceUID)])
        self.assertIsNotNone(self.index.get_path(whole.SOPInstanceUID))
        self.assertIsNone(self.index.get_path(cut.SOPInstanceUID))


class LayoutRecoveryTests:
    """Recovery and ``--reindex`` handle the nested layout and the earlier
    flat one side by side."""

    def setUp(self):
        self.root = os.path.realpath(self.mktemp())
        os.makedirs(self.root)
        self.index = self.make_index()

    def write(self, flat: bool, index: str | None = None, **values):
        """An instance file in one layout, indexed by ``index`` if given."""
        ds = ct_dataset(**values)
        path = write(self.root, ds, flat)
        if index is not None:
            self.index.add(ds, index, str(ds.file_meta.TransferSyntaxUID),
                           os.path.getsize(path))
        return ds, path

    def test_both_layouts_found_and_indexed(self):
        """Unindexed files of both layouts are indexed, each by its own
        relative path; indexed ones of both layouts cost nothing."""
        flat, _ = self.write(flat=True)
        nested, _ = self.write(flat=False)
        kept_flat, _ = self.write(flat=True, index=None)
        self.index.add(kept_flat, flat_name(kept_flat.SOPInstanceUID), "1.2.840.10008.1.2.1", 1)
        kept_nested, _ = self.write(flat=False)
        self.index.add(kept_nested, relative_path(kept_nested.SOPInstanceUID),
                       "1.2.840.10008.1.2.1", 1)
        report = recover(self.root, self.index)
        self.assertEqual((report.files_indexed, report.rows_dropped), (2, 0))
        self.assertEqual(self.index.get_path(flat.SOPInstanceUID), flat_name(flat.SOPInstanceUID))
        self.assertEqual(self.index.get_path(nested.SOPInstanceUID),
                         relative_path(nested.SOPInstanceUID))

    def test_reindex_indexes_both_layouts(self):
        """--reindex indexes flat and nested files alike."""
        flat, _ = self.write(flat=True)
        nested, _ = self.write(flat=False)
        report = reindex(self.root, self.index)
        self.assertEqual(report.files_indexed, 2)
        self.assertEqual(sorted(self.index.paths()),
                         sorted([flat_name(flat.SOPInstanceUID),
                                 relative_path(nested.SOPInstanceUID)]))

    def test_nested_copy_supersedes_flat(self):
        """An instance with a flat and a nested file (stored again, crash
        before the flat one was removed) keeps the nested one, indexed, and
        the flat copy goes; whichever the row named."""
        for row in ("nested", "flat", None):
            ds, flat = self.write(flat=True, PatientID="OLD")
            nested = write(self.root, ct_dataset(SOPInstanceUID=ds.SOPInstanceUID,
                                                 PatientID="NEW"))
            if row is not None:
                self.index.add(ds, relative_path(ds.SOPInstanceUID) if row == "nested"
                               else flat_name(ds.SOPInstanceUID), "1.2.840.10008.1.2.1", 1)
            report = recover(self.root, self.index)
            self.assertEqual(report.superseded_removed, 1, row)
            self.assertFalse(os.path.exists(flat), row)
            self.assertTrue(os.path.exists(nested), row)
            self.assertEqual(self.index.get_path(ds.SOPInstanceUID),
                             relative_path(ds.SOPInstanceUID), row)

    def test_damaged_nested_copy_falls_back_to_flat(self):
        """If the nested file of an instance is damaged, its flat file is
        indexed instead and kept; the damaged one is reported."""
        ds, flat = self.write(flat=True)
        nested = instance_path(self.root, ds.SOPInstanceUID)
        os.makedirs(os.path.dirname(nested))
        with open(nested, "wb") as fp:
            fp.write(b"not dicom")
        report = recover(self.root, self.index)
        self.assertEqual(report.unreadable, [relative_path(ds.SOPInstanceUID)])
        self.assertEqual(self.index.get_path(ds.SOPInstanceUID), flat_name(ds.SOPInstanceUID))
        self.assertTrue(os.path.exists(flat))
        self.flushLoggedErrors()

    def test_row_with_another_path_reindexed(self):
        """A row naming a path of neither form (or the other layout's) for
        an instance whose file exists is replaced by the file's path."""
        ds, _ = self.write(flat=False, index="elsewhere/x.dcm")
        report = recover(self.root, self.index)
        self.assertEqual(report.files_indexed, 1)
        self.assertEqual(self.index.get_path(ds.SOPInstanceUID), relative_path(ds.SOPInstanceUID))

    def test_only_the_layouts_are_instances(self):
        """Files elsewhere -- a wrong bucket, deeper down, the scratch
        directory, a symbolic link, a part file in a bucket -- are not instances."""
        ds = ct_dataset()
        uid = ds.SOPInstanceUID
        first, second = bucket(uid)
        wrong = "00" if first != "00" else "01"
        places = [os.path.join(self.root, wrong, second, flat_name(uid)),
                  os.path.join(self.root, first, second, "ab", flat_name(uid)),
                  os.path.join(self.root, ".scratch", flat_name(uid))]
        for place in places:
            os.makedirs(os.path.dirname(place), exist_ok=True)
            ds.save_as(place, enforce_file_format=True)
        os.symlink(places[0], os.path.join(self.root, flat_name(uid)))
        part = os.path.join(self.root, first, ".incoming-x.part")
        open(part, "wb").close()
        report = recover(self.root, self.index)
        self.assertEqual((report.files_indexed, report.unreadable), (0, []))
        self.assertEqual(self.index.count("IMAGE"), 0)
        self.assertEqual(list(stored_instances(self.root)), [])


both(RecoveryTests)
both(LayoutRecoveryTests)
