"""Tests for dicomtwist.storage.files: UID checks, paths, Part 10 headers."""

from __future__ import annotations

import os
import stat
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomtwist.storage import files as files_module
from dicomtwist.storage.files import (
    TEMP_SUFFIX,
    create_temporary,
    instance_path,
    is_valid_uid,
    part10_header,
    temp_prefix,
    temporary_files,
    write_temporary,
)

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


class TemporaryFileTests(SynchronousTestCase):
    """Temporary store files: new names without a random draw."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_write_temporary(self):
        """write_temporary leaves one file with the header then the data,
        mode 0600, named with this node's prefix and the ``.part`` suffix."""
        path = write_temporary(self.directory, b"HEAD", b"data" * 10)
        with open(path, "rb") as fp:
            self.assertEqual(fp.read(), b"HEAD" + b"data" * 10)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        name = os.path.basename(path)
        self.assertTrue(name.startswith(temp_prefix()), name)
        self.assertTrue(name.endswith(TEMP_SUFFIX), name)
        self.assertEqual(temporary_files(self.directory), [path])

    def test_large_data_written_whole(self):
        """A data set of 64 KiB or more is written after the header, whole."""
        data = bytes(range(256)) * 1024
        path = write_temporary(self.directory, b"H" * 132, memoryview(data))
        with open(path, "rb") as fp:
            self.assertEqual(fp.read(), b"H" * 132 + data)

    def test_fragments_written_in_order(self):
        """A list of fragments is written after the header, in order, none
        joined, IOV_MAX of them to a writev."""
        data = bytes(range(256)) * 64
        parts = [memoryview(data)[i:i + 1000] for i in range(0, len(data), 1000)]
        calls = []
        writev = os.writev

        def counted(fd, buffers):
            calls.append(len(buffers))
            return writev(fd, buffers)

        self.patch(files_module, "IOV_MAX", 4)
        self.patch(os, "writev", counted)
        path = write_temporary(self.directory, b"H" * 132, list(parts))
        with open(path, "rb") as fp:
            self.assertEqual(fp.read(), b"H" * 132 + data)
        self.assertEqual(calls, [4, 4, 4, 4, 2])

    def test_partial_writes_resumed(self):
        """A writev that writes only part of its buffers (here at most 700
        bytes) is followed by one for the rest, from where it stopped."""
        data = bytes(range(251)) * 40
        parts = [data[i:i + 333] for i in range(0, len(data), 333)]
        writev = os.writev

        def short(fd, buffers):
            return writev(fd, [b"".join(bytes(b) for b in buffers)[:700]])

        self.patch(os, "writev", short)
        path = write_temporary(self.directory, b"HEAD", parts)
        with open(path, "rb") as fp:
            self.assertEqual(fp.read(), b"HEAD" + data)

    def test_fragments_fsynced(self):
        """The file of a list of fragments is fsynced before it is closed."""
        events = []
        fsync, close = os.fsync, os.close
        self.patch(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
        self.patch(os, "close", lambda fd: (events.append("close"), close(fd))[1])
        write_temporary(self.directory, b"H", [b"a", memoryview(b"b")])
        self.assertEqual(events, ["fsync", "close"])

    def test_fragments_failure_leaves_nothing(self):
        """A writev that fails removes the new file."""
        def broken(fd, buffers):
            raise OSError(28, "No space left on device")

        self.patch(os, "writev", broken)
        self.assertRaises(OSError, write_temporary, self.directory, b"H", [b"da", b"ta"])
        self.assertEqual(os.listdir(self.directory), [])

    def test_names_unique(self):
        """Successive files get new names."""
        paths = {create_temporary(self.directory, ".x-")[1] for _ in range(50)}
        self.assertEqual(len(paths), 50)
        self.assertEqual(len(os.listdir(self.directory)), 50)

    def test_taken_name_skipped(self):
        """A name already taken (a file left by a process that had our ID)
        is skipped, never opened: the file keeps its content."""
        fd, first = create_temporary(self.directory, ".x-")
        os.close(fd)
        pid, number = os.path.basename(first)[3:-len(TEMP_SUFFIX)].split("-")
        taken = os.path.join(self.directory, f".x-{pid}-{int(number) + 1}{TEMP_SUFFIX}")
        with open(taken, "wb") as fp:
            fp.write(b"keep")
        fd, path = create_temporary(self.directory, ".x-")
        os.close(fd)
        self.assertNotIn(path, (first, taken))
        with open(taken, "rb") as fp:
            self.assertEqual(fp.read(), b"keep")

    def test_symbolic_link_never_followed(self):
        """A symbolic link in the way is skipped like any taken name."""
        fd, first = create_temporary(self.directory, ".y-")
        os.close(fd)
        pid, number = os.path.basename(first)[3:-len(TEMP_SUFFIX)].split("-")
        target = os.path.join(self.directory, "target")
        os.symlink(target, os.path.join(self.directory, f".y-{pid}-{int(number) + 1}{TEMP_SUFFIX}"))
        fd, path = create_temporary(self.directory, ".y-")
        os.close(fd)
        self.assertFalse(os.path.exists(target))
        self.assertTrue(os.path.isfile(path) and not os.path.islink(path))

    def test_failure_leaves_nothing(self):
        """A write that fails removes the new file."""
        def broken(fd, data):
            raise OSError(28, "No space left on device")

        self.patch(os, "write", broken)
        self.assertRaises(OSError, write_temporary, self.directory, b"H", b"data")
        self.assertEqual(os.listdir(self.directory), [])
