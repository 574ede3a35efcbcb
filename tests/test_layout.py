"""The instance directory's layout: new files nested in hashed buckets
(``ab/cd/<uid>.dcm``), files of the earlier flat layout (``<uid>.dcm``)
still read, and nothing but these two forms read from an index row."""

from __future__ import annotations

import hashlib
import io
import os
import sys

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import config as configuration
from dicomtwist import tap
from dicomtwist.status import Status
from dicomtwist.storage.files import (
    TEMP_PREFIX,
    TEMP_SUFFIX,
    bucket,
    flat_name,
    instance_path,
    relative_path,
    remove_empty_buckets,
    stored_file,
    stored_instances,
    uid_of,
)
from dicomtwist.storage.index import Index
from tests.helpers import CT_IMAGE_STORAGE, connect_in_memory, ct_dataset, policy
from tests.test_dicomweb import WebTestCase
from tests.test_qr import (
    EXPLICIT,
    QUERY_CONTEXTS,
    STUDY_GET,
    STUDY_MOVE,
    QueryRetrieveTestCase,
    query,
)

#: A UID and where the nested layout keeps it.
UID = "1.2.3"
NESTED = "c4/7f/1.2.3.dcm"


class RelativePathTests(SynchronousTestCase):
    """Where an instance goes, and which relative paths name one."""

    def test_nested_path_from_sha256(self):
        """The two levels are the first four hex digits of the SHA-256 of the UID."""
        digest = hashlib.sha256(UID.encode()).hexdigest()
        self.assertEqual(relative_path(UID), f"{digest[:2]}/{digest[2:4]}/{UID}.dcm")
        self.assertEqual(relative_path(UID), NESTED)
        self.assertEqual(bucket(UID), ("c4", "7f"))
        self.assertEqual(flat_name(UID), "1.2.3.dcm")

    def test_instance_path_is_nested(self):
        """instance_path is the nested file under the real instance directory."""
        root = self.mktemp()
        os.makedirs(root)
        self.assertEqual(instance_path(root, UID),
                         os.path.join(os.path.realpath(root), "c4", "7f", "1.2.3.dcm"))
        self.assertRaises(ValueError, relative_path, "../1.2")

    def test_uid_of_accepts_exactly_two_forms(self):
        """The flat name and the nested path of the right bucket give the
        UID; anything else gives None."""
        self.assertEqual(uid_of("1.2.3.dcm"), UID)
        self.assertEqual(uid_of(NESTED), UID)
        for bad in ("", "1.2.3", "00/00/1.2.3.dcm", "c4/7f/../1.2.3.dcm", "c4/1.2.3.dcm",
                    "C4/7F/1.2.3.dcm", "./1.2.3.dcm", "c4/7f/x/1.2.3.dcm", "/1.2.3.dcm",
                    "c4//7f/1.2.3.dcm", "../x.dcm", "/etc/passwd", "ab/../../x.dcm",
                    "c4/7f/1.02.dcm", ".scratch/1.2.3.dcm", None, 3):
            self.assertIsNone(uid_of(bad), repr(bad))


class StoredFileTests(SynchronousTestCase):
    """``stored_file``: the one check of every indexed path read."""

    def setUp(self):
        self.base = os.path.realpath(self.mktemp())
        self.root = os.path.join(self.base, "instances")
        os.makedirs(self.root)
        self.outside = os.path.join(self.base, "x.dcm")
        with open(self.outside, "wb") as fp:
            fp.write(b"outside")

    def test_both_forms(self):
        """A flat name and a nested path name their files."""
        flat = os.path.join(self.root, "1.2.3.dcm")
        nested = instance_path(self.root, UID)
        os.makedirs(os.path.dirname(nested))
        for path in (flat, nested):
            open(path, "wb").close()
        self.assertEqual(stored_file(self.root, "1.2.3.dcm"), flat)
        self.assertEqual(stored_file(self.root, NESTED), nested)

    def test_missing_file_is_a_path(self):
        """A file (or bucket) that is not there gives its path; opening it fails."""
        self.assertEqual(stored_file(self.root, NESTED), instance_path(self.root, UID))
        self.assertEqual(stored_file(self.root, "1.2.3.dcm"),
                         os.path.join(self.root, "1.2.3.dcm"))

    def test_crafted_paths_refused(self):
        """Traversal, absolute paths, wrong buckets, other separators: refused."""
        for bad in ("../x.dcm", "/etc/passwd", "ab/../../x.dcm", "c4/7f/../../../x.dcm",
                    self.outside, "00/00/1.2.3.dcm", "..", ".", "", "1.2.3.dcm/",
                    "c4\\7f\\1.2.3.dcm", None):
            self.assertRaises(ValueError, stored_file, self.root, bad)

    def test_symbolic_links_refused(self):
        """A flat or nested file that is a link, or a bucket that is a
        link, is refused."""
        os.symlink(self.outside, os.path.join(self.root, "1.2.3.dcm"))
        self.assertRaises(ValueError, stored_file, self.root, "1.2.3.dcm")
        os.makedirs(os.path.join(self.root, "c4", "7f"))
        os.symlink(self.outside, instance_path(self.root, UID))
        self.assertRaises(ValueError, stored_file, self.root, NESTED)
        os.unlink(instance_path(self.root, UID))
        os.rmdir(os.path.join(self.root, "c4", "7f"))
        elsewhere = os.path.join(self.base, "elsewhere")
        os.makedirs(elsewhere)
        open(os.path.join(elsewhere, "1.2.3.dcm"), "wb").close()
        os.symlink(elsewhere, os.path.join(self.root, "c4", "7f"))
        self.assertRaises(ValueError, stored_file, self.root, NESTED)

    def test_a_directory_is_not_a_file(self):
        """A directory named like an instance file is refused."""
        os.makedirs(os.path.join(self.root, "1.2.3.dcm"))
        self.assertRaises(ValueError, stored_file, self.root, "1.2.3.dcm")


class WalkTests(SynchronousTestCase):
    """``stored_instances`` and ``remove_empty_buckets``."""

    def test_walk_both_layouts_fixed_depth(self):
        """Both layouts are listed; deeper files, scratch and temporary
        files are not."""
        root = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(root, "c4", "7f", "ab", "cd"))
        os.makedirs(os.path.join(root, ".scratch"))
        for relative in ("1.2.3.dcm", NESTED, "c4/7f/ab/cd/1.2.3.dcm", ".scratch/1.2.3.dcm",
                         f"{TEMP_PREFIX}x{TEMP_SUFFIX}", "notes.txt"):
            open(os.path.join(root, relative), "wb").close()
        self.assertEqual(sorted(stored_instances(root)),
                         [(UID, "1.2.3.dcm"), (UID, NESTED)])

    def test_remove_empty_buckets(self):
        """Empty buckets and emptied parents go; a bucket holding a file stays."""
        root = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(root, "00", "01"))
        os.makedirs(os.path.join(root, "c4", "7f"))
        os.makedirs(os.path.join(root, ".scratch"))
        open(os.path.join(root, "c4", "7f", "keep"), "wb").close()
        self.assertEqual(remove_empty_buckets(root), 2)
        self.assertEqual(sorted(os.listdir(root)), [".scratch", "c4"])


def flat_instance(directory: str, index: Index, **values):
    """An instance of the earlier flat layout: written by hand as
    ``<uid>.dcm`` at the top and indexed by that name."""
    ds = ct_dataset(64, **values)
    path = os.path.join(os.path.realpath(directory), flat_name(ds.SOPInstanceUID))
    ds.save_as(path, enforce_file_format=True)
    index.add(ds, flat_name(ds.SOPInstanceUID), ExplicitVRLittleEndian, os.path.getsize(path))
    return ds


#: Index rows that must never be read, by what they try.
CRAFTED = ["../x.dcm", "/etc/passwd", "ab/../../x.dcm", "link"]


class RetrieveLayoutTests(QueryRetrieveTestCase):
    """C-GET and C-MOVE send flat and nested files and refuse crafted rows."""

    def setUp(self) -> None:
        super().setUp()
        # A flat-layout series in the study the test content stores nested.
        self.flat = flat_instance(self.instances, self.index, PatientID="PA",
                                  PatientName="Alpha^Anna", StudyInstanceUID="1.2.3.1.1",
                                  SeriesInstanceUID="1.2.3.1.1.3",
                                  SOPInstanceUID="1.2.3.1.1.3.1")

    def get(self, identifier):
        """C-GET with a CT storage context; returns ``(responses, received requests)``."""
        received = []

        def on_store(request):
            received.append(request)
            return Status.SUCCESS

        client, pump = self.connect(QUERY_CONTEXTS + [(CT_IMAGE_STORAGE, EXPLICIT)],
                                    scp_role_classes=[CT_IMAGE_STORAGE])
        d = client.get(identifier, STUDY_GET, on_store=on_store)
        pump.flush()
        responses = self.successResultOf(d)
        self.release(client, pump)
        return responses, received

    def expected_data(self, uid: str) -> bytes:
        """The data set part of the file the index names for ``uid``."""
        from dicomtwist.association import file_dataset

        source = file_dataset(stored_file(self.instances, self.index.get_path(uid)))
        with open(source.path, "rb") as fp:
            fp.seek(source.offset)
            return fp.read()

    def craft(self, how: str):
        """A study of one instance whose row tries ``how`` to escape."""
        ds = ct_dataset(64, PatientID="EVIL", StudyInstanceUID="1.2.3.66",
                        SeriesInstanceUID="1.2.3.66.1", SOPInstanceUID="1.2.3.66.1.1")
        outside = os.path.join(os.path.dirname(self.instances), "x.dcm")
        ds.save_as(outside, enforce_file_format=True)
        path = how
        if how == "link":
            path = flat_name(ds.SOPInstanceUID)
            os.symlink(outside, os.path.join(self.instances, path))
        self.index.add(ds, path, ExplicitVRLittleEndian, os.path.getsize(outside))
        return ds

    def test_get_sends_flat_and_nested(self):
        """C-GET of a study holding nested and flat files sends them all."""
        responses, received = self.get(query("STUDY", StudyInstanceUID="1.2.3.1.1"))
        uids = sorted(r.message.affected_sop_instance_uid for r in received)
        self.assertEqual(uids, ["1.2.3.1.1.1.1", "1.2.3.1.1.1.2", "1.2.3.1.1.2.1",
                                "1.2.3.1.1.3.1"])
        self.assertEqual(self.index.get_path("1.2.3.1.1.3.1"), "1.2.3.1.1.3.1.dcm")
        self.assertEqual(self.index.get_path("1.2.3.1.1.1.1"), relative_path("1.2.3.1.1.1.1"))
        for request in received:
            self.assertEqual(bytes(request.data),
                             self.expected_data(request.message.affected_sop_instance_uid))
        self.assertEqual(responses[-1][0].status, Status.SUCCESS)

    def test_get_refuses_crafted_rows(self):
        """A row with ``..``, an absolute path or a link is not read: its
        sub-operation fails and nothing is sent."""
        for how in CRAFTED:
            self.craft(how)
            responses, received = self.get(query("STUDY", StudyInstanceUID="1.2.3.66"))
            self.assertEqual(received, [], how)
            self.assertEqual(responses[-1][0].number_of_failed_sub_operations, 1, how)
            self.index.remove("1.2.3.66.1.1")
        self.flushLoggedErrors()

    def test_move_sends_flat_file(self):
        """C-MOVE of a flat-layout instance stores it at the destination."""
        from dicomtwist.association import AcceptorFactory

        received = []

        def on_store(request):
            received.append(request)
            return Status.SUCCESS

        destination = AcceptorFactory(
            self.reactor, policy(ae_title="DEST",
                                 contexts={CT_IMAGE_STORAGE: [ExplicitVRLittleEndian]}),
            {"store": on_store})
        client, pump = self.connect()
        d = client.move(query("SERIES", StudyInstanceUID="1.2.3.1.1",
                              SeriesInstanceUID="1.2.3.1.1.3"), STUDY_MOVE, "DEST")
        pump.flush()
        sub, _, sub_pump = connect_in_memory(self.reactor, destination)
        for _ in range(20):
            sub_pump.flush()
            pump.flush()
        responses = self.successResultOf(d)
        self.assertEqual([r.message.affected_sop_instance_uid for r in received],
                         ["1.2.3.1.1.3.1"])
        self.assertEqual(bytes(received[0].data), self.expected_data("1.2.3.1.1.3.1"))
        self.assertEqual(responses[-1][0].status, Status.SUCCESS)
        self.release(client, pump)


class WadoLayoutTests(WebTestCase):
    """WADO-RS sends flat and nested files and refuses crafted rows."""

    def instance_url(self, ds) -> str:
        """The WADO-RS path of an instance."""
        return (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")

    def test_flat_and_nested_retrieved(self):
        """An instance of each layout is retrieved as its stored file."""
        flat = flat_instance(self.directory, self.index)
        nested = ct_dataset(64)
        buffer = io.BytesIO()
        nested.save_as(buffer, enforce_file_format=True)
        status, _ = self.ingest(buffer.getvalue())
        self.assertEqual(status, Status.SUCCESS)
        self.assertEqual(self.index.get_path(nested.SOPInstanceUID),
                         relative_path(nested.SOPInstanceUID))
        for ds in (flat, nested):
            response = self.get(self.instance_url(ds),
                                Accept='multipart/related; type="application/dicom"')
            self.assertEqual(response.code, 200)
            [(_, data)] = response.parts()
            path = stored_file(self.directory, self.index.get_path(ds.SOPInstanceUID))
            with open(path, "rb") as fp:
                self.assertEqual(data, fp.read())
            self.assertEqual(dcmread(io.BytesIO(data)).SOPInstanceUID, ds.SOPInstanceUID)

    def test_crafted_rows_are_not_found(self):
        """A row with ``..``, an absolute path or a link gets 404."""
        outside = os.path.join(self.base, "x.dcm")
        for n, how in enumerate(CRAFTED):
            ds = ct_dataset(64, SOPInstanceUID=f"1.2.3.77.{n + 1}")
            ds.save_as(outside, enforce_file_format=True)
            path = how
            if how == "link":
                path = flat_name(ds.SOPInstanceUID)
                os.symlink(outside, os.path.join(self.directory, path))
            self.index.add(ds, path, ExplicitVRLittleEndian, os.path.getsize(outside))
            response = self.get(self.instance_url(ds),
                                Accept='multipart/related; type="application/dicom"')
            self.assertEqual(response.code, 404, how)


class CleanLayoutTests(SynchronousTestCase):
    """``--clean`` removes the files of both layouts and the emptied buckets."""

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.instances = os.path.join(base, "instances")
        os.makedirs(self.instances)
        self.settings = configuration.Config(
            instance_location=self.instances,
            database_location=os.path.join(base, "index.sqlite"))
        self.patch(sys, "stdout", io.StringIO())

    def nested(self, index: Index | None) -> str:
        """A nested-layout instance file, indexed if ``index`` is given."""
        ds = ct_dataset(16)
        path = instance_path(self.instances, ds.SOPInstanceUID)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        if index is not None:
            index.add(ds, relative_path(ds.SOPInstanceUID), ExplicitVRLittleEndian,
                      os.path.getsize(path))
        return path

    def test_both_layouts_and_empty_buckets_removed(self):
        """Indexed and orphaned files of both layouts go, and so do the
        buckets they leave empty; the index is emptied."""
        index = Index(self.settings.database_location)
        flat_instance(self.instances, index)
        self.nested(index)
        self.nested(None)
        orphan = os.path.join(self.instances, "1.2.3.4.dcm")
        open(orphan, "wb").close()
        index.close()
        self.assertEqual(tap.clean(self.settings, assume_yes=True), 0)
        self.assertEqual(os.listdir(self.instances), [])
        index = Index(self.settings.database_location)
        self.addCleanup(index.close)
        self.assertEqual(index.count("IMAGE"), 0)

    def test_foreign_file_keeps_its_bucket(self):
        """A file the archive did not name stays, and so does its bucket."""
        path = self.nested(None)
        foreign = os.path.join(os.path.dirname(path), "README")
        open(foreign, "wb").close()
        tap.clean(self.settings, assume_yes=True)
        self.assertFalse(os.path.exists(path))
        self.assertTrue(os.path.exists(foreign))

    def test_crafted_rows_remove_nothing_outside(self):
        """Rows with ``..`` or an absolute path remove nothing."""
        outside = os.path.join(os.path.dirname(self.instances), "x.dcm")
        open(outside, "wb").close()
        index = Index(self.settings.database_location)
        for n, path in enumerate(("../x.dcm", outside, "ab/../../x.dcm")):
            index.add(ct_dataset(8, SOPInstanceUID=f"1.2.3.88.{n + 1}"), path,
                      ExplicitVRLittleEndian, 1)
        index.close()
        self.assertEqual(tap.clean(self.settings, assume_yes=True), 0)
        self.assertTrue(os.path.exists(outside))
