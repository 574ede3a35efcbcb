"""Tests for dicomtwist.storage.files: UID checks, paths, Part 10 headers."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomtwist.storage.files import instance_path, is_valid_uid, part10_header

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


class Part10HeaderTests(SynchronousTestCase):
    """The hand-written header equals pydicom's, byte for byte."""

    def pydicom_header(self, instance: str, source: str | None) -> bytes:
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = CT
        meta.MediaStorageSOPInstanceUID = instance
        meta.TransferSyntaxUID = EXPLICIT
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        if source:
            meta.SourceApplicationEntityTitle = source
        fp = BytesIO()
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        return fp.getvalue()

    def test_equals_pydicom(self):
        """Even and odd UIDs and AE titles pad exactly as pydicom pads them."""
        for instance in ("1.2.3.4", "1.2.3.45"):
            for source in (None, "PEER", "ODD"):
                self.assertEqual(part10_header(CT, instance, EXPLICIT, source),
                                 self.pydicom_header(instance, source))

    def test_readable(self):
        """pydicom reads the header back as file meta information."""
        ds = dcmread(BytesIO(part10_header(CT, "1.2.3", EXPLICIT)), force=True)
        self.assertEqual(ds.file_meta.MediaStorageSOPInstanceUID, "1.2.3")
        self.assertEqual(ds.file_meta.TransferSyntaxUID, EXPLICIT)


class PathTests(SynchronousTestCase):
    """Only valid UIDs name files, always inside the directory."""

    def test_valid_and_invalid_uids(self):
        """PS3.5 9.1 UIDs pass; traversal, separators, NUL and overlong fail."""
        for good in ("1.2.3", "0.1", "1" * 64):
            self.assertTrue(is_valid_uid(good), good)
        for bad in ("", "../x", "/tmp/x", "1.2/3", "1.2\\3", "1.2\x00", "1.02", "1..2",
                    "1.2.", "1" * 65, None, 12):
            self.assertFalse(is_valid_uid(bad), repr(bad))

    def test_instance_path_inside(self):
        """The path is <directory>/<uid>.dcm; a bad UID raises."""
        root = self.mktemp()
        self.assertTrue(instance_path(root, "1.2.3").endswith("/1.2.3.dcm"))
        self.assertRaises(ValueError, instance_path, root, "../1.2")
