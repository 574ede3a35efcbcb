"""Tests for dicomtwist.storage.index: the archive index, C-FIND and retrieve."""

from __future__ import annotations

import os
import sqlite3
import threading
import warnings
from contextlib import contextmanager
from io import BytesIO

import pydicom.data
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.dimse.codec import encode_dataset
from dicomtwist.status import Status
from dicomtwist.storage.files import part10_header
from dicomtwist.storage.index import UNIQUE_KEYS, Index, InstanceRecord, unsupported_keys
from dicomtwist.storage.matching import QueryError
from tests.backends import both

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"
CHARSET_FILES = os.path.join(os.path.dirname(pydicom.data.__file__), "charset_files")


def instance(sop: str, series: str = "1.1.1", study: str = "1.1", patient: str = "P1",
             **attributes) -> Dataset:
    """A minimal composite instance header; keyword arguments add attributes."""
    ds = Dataset()
    ds.PatientID = patient
    ds.PatientName = "Doe^John"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    ds.SOPClassUID = CT
    ds.Modality = "CT"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def round_trip(ds: Dataset) -> Dataset:
    """Encode ``ds`` with its Specific Character Set and read it back."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    buffer.seek(0)
    return dcmread(buffer, force=True)


def query(level: str, **keys) -> Dataset:
    """A C-FIND identifier at ``level`` with the given keys, and the level's
    unique key as a return key when not given (responses hold only what
    was asked for, and the tests identify matches by it)."""
    ds = bare_query(level, **keys)
    unique = UNIQUE_KEYS.get(level)
    if unique is not None and unique not in ds:
        setattr(ds, unique, "")
    return ds


def bare_query(level: str, **keys) -> Dataset:
    """A C-FIND identifier at ``level`` with exactly the given keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def identifier_from(keys: dict) -> Dataset:
    """An identifier with exactly ``keys``, invalid values allowed."""
    ds = Dataset()
    with warnings.catch_warnings():
        # pydicom warns about the deliberately invalid values.
        warnings.simplefilter("ignore")
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def archive(index: Index) -> None:
    """Fill ``index`` with the test archive.

    P1 Doe^John: study 1.1 (CT series 1.1.1 with 3 instances, MR series 1.1.2
    with 2) and study 1.2 (CT, 1 instance). P2 Müller^Hans (ISO_IR 100):
    study 2.1. P3 Ηλίας (ISO_IR 192): study 3.1. P4 Japanese (ISO 2022 IR
    87): study 4.1.
    """
    add = index.add
    for n in range(1, 4):
        add(instance(f"1.1.1.{n}", StudyDate="20200115", StudyTime="103000",
                     AccessionNumber="ACC%1", StudyDescription="Head_CT",
                     SeriesNumber=1, InstanceNumber=n, ReferringPhysicianName="Who^Doctor",
                     PatientBirthDate="19700101", PatientSex="M"),
            f"1/1.1.1.{n}.dcm", ExplicitVRLittleEndian, 100)
    for n in range(1, 3):
        add(instance(f"1.1.2.{n}", series="1.1.2", Modality="MR", SOPClassUID=MR,
                     StudyDate="20200115", StudyTime="103000", AccessionNumber="ACC%1",
                     SeriesNumber=2, InstanceNumber=n, SeriesDescription="T1 [axial]"),
            f"1/1.1.2.{n}.dcm", ExplicitVRLittleEndian, 100)
    add(instance("1.2.1.1", series="1.2.1", study="1.2", StudyDate="20210301",
                 StudyTime="170000", AccessionNumber="ACCX1", SeriesNumber=1),
        "1/1.2.1.1.dcm", ExplicitVRLittleEndian, 100)
    german = instance("2.1.1.1", series="2.1.1", study="2.1", patient="P2",
                      SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Hans",
                      StudyDate="20191231", StudyTime="0800", AccessionNumber="B2",
                      StudyDescription="Schädel")
    add(round_trip(german), "2/2.1.1.1.dcm", ExplicitVRLittleEndian, 100)
    greek = instance("3.1.1.1", series="3.1.1", study="3.1", patient="P3",
                     SpecificCharacterSet="ISO_IR 192", PatientName="Ηλίας",
                     StudyDate="20220610", Modality="US")
    add(round_trip(greek), "3/3.1.1.1.dcm", ExplicitVRLittleEndian, 100)
    japanese = instance("4.1.1.1", series="4.1.1", study="4.1", patient="P4",
                        SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName=JAPANESE,
                        StudyDate="20230101")
    add(round_trip(japanese), "4/4.1.1.1.dcm", ExplicitVRLittleEndian, 100)


class IndexTestCase:
    """Gives each test a fresh index (a mixin: :func:`tests.backends.both`
    runs it on each backend)."""

    def setUp(self):
        self.index = self.make_index()

    def uids(self, identifier: Dataset, model: str, keyword: str) -> set[str]:
        """The values of ``keyword`` in the responses to ``identifier``."""
        return {str(r.get(keyword)) for r in self.index.find(identifier, model)}

    def row(self, table: str, **where) -> dict:
        """One row of the database."""
        rows = self.index._rows(f"SELECT * FROM {table} WHERE "
                                + " AND ".join(f"{k} = ?" for k in where), where.values())
        self.assertEqual(len(rows), 1)
        return rows[0]

    def sql(self, sql: str, params=()) -> list[tuple]:
        """Run one statement in the index's database; its rows."""
        return self.index._sql(sql, params)


class SqliteFileTests(SynchronousTestCase):
    """The sqlite database file."""

    def test_wal_mode(self):
        """The database is in WAL mode."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "index.sqlite")
        Index(path).close()
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")


class SchemaTests(IndexTestCase):
    """The database."""

    def test_reopen(self):
        """Opening an existing database keeps its rows."""
        self.index.add(instance("9.9"), "a.dcm", ExplicitVRLittleEndian, 1)
        self.index.close()
        again = self.open_index(self.location)
        self.assertEqual(again.paths(), ["a.dcm"])

    def test_indexes(self):
        """The keys people query by are indexed."""
        indexed = self.indexed_columns(self.index)
        for expected in [("patient", ("patient_id", "issuer_of_patient_id")),
                         ("patient", ("patient_name_key",)),
                         ("study", ("study_date",)), ("study", ("accession_number",)),
                         ("study", ("patient_pk",)), ("series", ("modality",)),
                         ("series", ("study_pk",)), ("instance", ("series_pk",))]:
            self.assertIn(expected, indexed)


class WriteTests(IndexTestCase):
    """add, remove and the derived attributes."""

    def test_counts(self):
        """The archive has one row per patient, study, series and instance."""
        archive(self.index)
        self.assertEqual([self.index.count(level) for level in
                          ("PATIENT", "STUDY", "SERIES", "IMAGE")], [4, 5, 6, 9])
        self.assertEqual(self.index.count("instance"), 9)
        self.assertRaises(ValueError, self.index.count, "FRAME")

    def test_replace_same_uid(self):
        """A second add of a SOP Instance UID replaces its row."""
        self.index.add(instance("1.1.1.1"), "old.dcm", ExplicitVRLittleEndian, 1)
        self.index.add(instance("1.1.1.1", InstanceNumber=7), "new.dcm",
                       ExplicitVRLittleEndian, 2)
        self.assertEqual(self.index.count("IMAGE"), 1)
        self.assertEqual(self.index.paths(), ["new.dcm"])
        self.assertEqual(self.row("instance", sop_instance_uid="1.1.1.1")["instance_number"], 7)

    def test_replace_moves_instance(self):
        """An instance added again under another study leaves the old one's counts right."""
        self.index.add(instance("1.1.1.1"), "a", ExplicitVRLittleEndian, 1)
        self.index.add(instance("1.1.1.2"), "b", ExplicitVRLittleEndian, 1)
        self.index.add(instance("1.1.1.2", series="2.1.1", study="2.1", patient="P2"),
                       "b", ExplicitVRLittleEndian, 1)
        self.assertEqual(self.row("series", series_instance_uid="1.1.1")
                         ["number_of_series_related_instances"], 1)
        self.assertEqual(self.row("study", study_instance_uid="1.1")
                         ["number_of_study_related_instances"], 1)
        self.assertEqual(self.row("study", study_instance_uid="2.1")
                         ["number_of_study_related_instances"], 1)
        self.assertEqual(self.row("patient", patient_id="P1")
                         ["number_of_patient_related_instances"], 1)
        self.assertEqual([self.index.count(level) for level in
                          ("PATIENT", "STUDY", "SERIES", "IMAGE")], [2, 2, 2, 2])

    def test_replace_empties_old_parents(self):
        """Moving the only instance of a series removes the emptied series, study and patient."""
        self.index.add(instance("1.1.1.1"), "a", ExplicitVRLittleEndian, 1)
        self.index.add(instance("1.1.1.1", series="2.1.1", study="2.1", patient="P2"),
                       "a", ExplicitVRLittleEndian, 1)
        self.assertEqual([self.index.count(level) for level in
                          ("PATIENT", "STUDY", "SERIES", "IMAGE")], [1, 1, 1, 1])
        self.assertEqual(self.row("patient", patient_id="P2")["patient_id"], "P2")

    def test_derived_attributes(self):
        """Modalities in Study and the Number of ... Related counts follow the archive."""
        archive(self.index)
        study = self.row("study", study_instance_uid="1.1")
        self.assertEqual((study["modalities_in_study"], study["sop_classes_in_study"],
                          study["number_of_study_related_series"],
                          study["number_of_study_related_instances"]),
                         ("CT\\MR", f"{CT}\\{MR}", 2, 5))
        self.assertEqual(self.row("series", series_instance_uid="1.1.2")
                         ["number_of_series_related_instances"], 2)
        patient = self.row("patient", patient_id="P1")
        self.assertEqual((patient["number_of_patient_related_studies"],
                          patient["number_of_patient_related_series"],
                          patient["number_of_patient_related_instances"]), (2, 3, 6))

    def test_derived_attributes_after_remove(self):
        """Removing the MR instances drops MR from Modalities in Study."""
        archive(self.index)
        self.index.remove("1.1.2.1")
        self.index.remove("1.1.2.2")
        study = self.row("study", study_instance_uid="1.1")
        self.assertEqual((study["modalities_in_study"],
                          study["number_of_study_related_series"],
                          study["number_of_study_related_instances"]), ("CT", 1, 3))
        patient = self.row("patient", patient_id="P1")
        self.assertEqual((patient["number_of_patient_related_series"],
                          patient["number_of_patient_related_instances"]), (2, 4))

    def test_remove(self):
        """remove returns the path and deletes emptied series, study and patient rows."""
        archive(self.index)
        self.assertEqual(self.index.remove("2.1.1.1"), "2/2.1.1.1.dcm")
        self.assertEqual([self.index.count(level) for level in
                          ("PATIENT", "STUDY", "SERIES", "IMAGE")], [3, 4, 5, 8])
        self.assertIsNone(self.index.get_path("2.1.1.1"))

    def test_remove_unknown(self):
        """Removing an instance that is not indexed returns None."""
        self.assertIsNone(self.index.remove("9.9.9"))

    def test_delete_study(self):
        """delete_study removes the study's instances, series and metadata, keeps
        the patient's other study with its counts, and returns the paths."""
        archive(self.index)
        self.index.set_metadata("1.1.1.1", b"kept")
        self.index.set_metadata("1.2.1.1", b"kept too")
        self.assertEqual(self.index.delete_study("1.1"),
                         ["1/1.1.1.1.dcm", "1/1.1.1.2.dcm", "1/1.1.1.3.dcm",
                          "1/1.1.2.1.dcm", "1/1.1.2.2.dcm"])
        self.assertEqual([self.index.count(level) for level in
                          ("PATIENT", "STUDY", "SERIES", "IMAGE")], [4, 4, 4, 4])
        self.assertIsNone(self.index.get_path("1.1.2.2"))
        self.assertEqual(self.index.instances("1.1"), [])
        self.assertEqual(self.sql("SELECT sop_instance_uid FROM metadata"), [("1.2.1.1",)])
        patient = self.row("patient", patient_id="P1")
        self.assertEqual((patient["number_of_patient_related_studies"],
                          patient["number_of_patient_related_series"],
                          patient["number_of_patient_related_instances"]), (1, 1, 1))

    def test_delete_last_study_of_patient(self):
        """Deleting a patient's only study removes the patient too."""
        archive(self.index)
        self.assertEqual(self.index.delete_study("2.1"), ["2/2.1.1.1.dcm"])
        self.assertEqual(self.sql("SELECT COUNT(*) FROM patient WHERE patient_id = 'P2'"),
                         [(0,)])
        self.assertEqual(self.index.count("PATIENT"), 3)

    def test_delete_unknown_study(self):
        """Deleting a study that is not indexed returns no paths and changes nothing."""
        archive(self.index)
        self.assertEqual(self.index.delete_study("9.9"), [])
        self.assertEqual(self.index.count("IMAGE"), 9)

    def test_paths_get_path_clear(self):
        """paths lists every file, get_path finds one, clear empties the index."""
        archive(self.index)
        self.assertEqual(len(self.index.paths()), 9)
        self.assertIn("1/1.1.2.2.dcm", self.index.paths())
        self.assertEqual(self.index.get_path("1.1.2.2"), "1/1.1.2.2.dcm")
        self.index.clear()
        self.assertEqual(self.index.paths(), [])
        self.assertEqual(self.index.count("PATIENT"), 0)

    def test_instance_columns(self):
        """The instance row keeps transfer syntax, relative path, size and character set."""
        archive(self.index)
        row = self.row("instance", sop_instance_uid="4.1.1.1")
        self.assertEqual((row["transfer_syntax_uid"], row["path"], row["size"],
                          row["specific_character_set"], row["sop_class_uid"]),
                         (ExplicitVRLittleEndian, "4/4.1.1.1.dcm", 100,
                          "\\ISO 2022 IR 87", CT))

    def test_same_patient_id_same_patient(self):
        """Instances with one Patient ID share a patient row; the latest name wins."""
        self.index.add(instance("1.1.1.1"), "a", ExplicitVRLittleEndian, 1)
        self.index.add(instance("1.2.1.1", series="1.2.1", study="1.2",
                                PatientName="Doe^Johnny"), "b", ExplicitVRLittleEndian, 1)
        self.assertEqual(self.index.count("PATIENT"), 1)
        self.assertEqual(self.row("patient", patient_id="P1")["patient_name"], "Doe^Johnny")

    def test_issuer_separates_patients(self):
        """The same Patient ID from two issuers is two patients."""
        self.index.add(instance("1.1.1.1", IssuerOfPatientID="A"), "a",
                       ExplicitVRLittleEndian, 1)
        self.index.add(instance("1.2.1.1", series="1.2.1", study="1.2",
                                IssuerOfPatientID="B"), "b", ExplicitVRLittleEndian, 1)
        self.assertEqual(self.index.count("PATIENT"), 2)

    def test_missing_uid(self):
        """An instance without a Series Instance UID is refused and nothing is kept."""
        ds = instance("1.1.1.1")
        del ds.SeriesInstanceUID
        self.assertRaises(ValueError, self.index.add, ds, "a", ExplicitVRLittleEndian, 1)
        self.assertEqual(self.index.count("PATIENT"), 0)

    def test_failure_rolls_back(self):
        """A failure in the middle of add leaves no row of the instance behind."""
        self.index.add(instance("1.1.1.1"), "a", ExplicitVRLittleEndian, 1)

        def broken(*args, **kwargs):
            raise OSError("disk I/O error")
        if self.backend == "postgresql":
            # The add is one statement: it fails once the server has run it.
            execute = self.index._execute

            def executed_then_broken(*args, **kwargs):
                execute(*args, **kwargs)
                broken()
            self.patch(self.index, "_execute", executed_then_broken)
        else:
            self.patch(self.index, "_tidy", broken)
            self.patch(self.index, "_count_new", broken)
        self.assertRaises(OSError, self.index.add,
                          instance("2.1.1.1", series="2.1.1", study="2.1", patient="P2"),
                          "b", ExplicitVRLittleEndian, 1)
        self.assertEqual([self.index.count(level) for level in
                          ("PATIENT", "STUDY", "SERIES", "IMAGE")], [1, 1, 1, 1])
        self.assertEqual(self.index.paths(), ["a"])

    def test_transaction_groups_adds(self):
        """In one transaction a failing add rolls back alone; the others commit together."""
        with self.index.transaction():
            self.index.add(instance("1.1.1.1"), "a", ExplicitVRLittleEndian, 1)
            bad = instance("1.1.1.2")
            del bad.StudyInstanceUID
            self.assertRaises(ValueError, self.index.add, bad, "b",
                              ExplicitVRLittleEndian, 1)
            self.index.add(instance("1.1.1.3"), "c", ExplicitVRLittleEndian, 1)
        self.assertEqual(self.index.paths(), ["a", "c"])

    def test_refused_statement_rolls_back_its_block(self):
        """A statement the database refuses in a nested block rolls back
        that block alone (its add too); the transaction goes on and commits."""
        with self.index.transaction():
            self.index.add(instance("1.1.1.1"), "a", ExplicitVRLittleEndian, 1)
            with self.assertRaises(Exception):
                with self.index.transaction():
                    self.index.add(instance("1.1.1.2"), "b", ExplicitVRLittleEndian, 1)
                    self.index._execute("SELECT * FROM no_such_table")
            self.index.add(instance("1.1.1.3"), "c", ExplicitVRLittleEndian, 1)
        self.assertEqual(self.index.paths(), ["a", "c"])
        self.assertEqual(self.sql("SELECT number_of_series_related_instances FROM series"),
                         [(2,)])

    def test_transaction_rolls_back_on_error(self):
        """An exception out of a transaction block undoes all its adds."""
        def block():
            with self.index.transaction():
                self.index.add(instance("1.1.1.1"), "a", ExplicitVRLittleEndian, 1)
                raise RuntimeError("store failed")
        self.assertRaises(RuntimeError, block)
        self.assertEqual(self.index.paths(), [])


class CharacterSetTests(IndexTestCase):
    """Values decoded with the Specific Character Set (PS3.5 6.1, PS3.3 C.12.1.1.2)."""

    def setUp(self):
        super().setUp()
        archive(self.index)

    def test_stored_unicode(self):
        """ISO_IR 100, ISO_IR 192 and ISO 2022 IR 87 names are stored as unicode."""
        self.assertEqual(
            [self.row("patient", patient_id=p)["patient_name"] for p in ("P2", "P3", "P4")],
            ["Müller^Hans", "Ηλίας", JAPANESE])
        self.assertEqual(self.row("study", study_instance_uid="2.1")["study_description"],
                         "Schädel")

    def test_pydicom_charset_files(self):
        """pydicom's Japanese, German and Greek test files index with unicode names."""
        names = {}
        for name in ("chrH31.dcm", "chrGerm.dcm", "chrGreek.dcm", "chrX1.dcm"):
            ds = dcmread(os.path.join(CHARSET_FILES, name))
            self.index.add(ds, name, ExplicitVRLittleEndian, 1)
            names[name] = self.row("patient", patient_id=ds.PatientID)["patient_name"]
        self.assertEqual(names, {"chrH31.dcm": JAPANESE, "chrGerm.dcm": "Äneas^Rüdiger",
                                 "chrGreek.dcm": "Διονυσιος",
                                 "chrX1.dcm": "Wang^XiaoDong=王^小東"})

    def test_response_utf8(self):
        """A response with a non-ASCII value says ISO_IR 192 and encodes as UTF-8."""
        [response] = self.index.find(query("PATIENT", PatientID="P2", PatientName=""),
                                     "PATIENT")
        self.assertEqual(response.SpecificCharacterSet, "ISO_IR 192")
        encoded = round_trip(response)
        self.assertEqual(str(encoded.PatientName), "Müller^Hans")

    def test_response_echoes_character_set(self):
        """An ASCII response echoes the identifier's Specific Character Set."""
        [response] = self.index.find(
            query("PATIENT", PatientID="P1", SpecificCharacterSet="ISO_IR 100"), "PATIENT")
        self.assertEqual(response.SpecificCharacterSet, "ISO_IR 100")

    def test_response_without_character_set(self):
        """An ASCII response to an identifier without one has no Specific Character Set."""
        [response] = self.index.find(query("PATIENT", PatientID="P1"), "PATIENT")
        self.assertNotIn("SpecificCharacterSet", response)

    def test_japanese_identifier(self):
        """An ISO 2022 IR 87 identifier matches the Japanese name in every group form."""
        for name in (JAPANESE, "yamada^tarou", "*山田*"):
            identifier = round_trip(query("PATIENT", SpecificCharacterSet=["", "ISO 2022 IR 87"],
                                          PatientName=name))
            self.assertEqual(self.uids(identifier, "PATIENT", "PatientID"), {"P4"}, name)

    def test_latin1_identifier(self):
        """An ISO_IR 100 identifier matches a Latin-1 name case-insensitively."""
        identifier = round_trip(query("PATIENT", SpecificCharacterSet="ISO_IR 100",
                                      PatientName="MÜLLER*"))
        self.assertEqual(self.uids(identifier, "PATIENT", "PatientID"), {"P2"})


# (name, model, level, keys, returned keyword, expected values)
FIND_CASES = [
    ("patient_all", "PATIENT", "PATIENT", {}, "PatientID", {"P1", "P2", "P3", "P4"}),
    ("patient_pn_wildcard", "PATIENT", "PATIENT", {"PatientName": "doe*"},
     "PatientID", {"P1"}),
    ("patient_pn_case", "PATIENT", "PATIENT", {"PatientName": "DOE^JOHN"},
     "PatientID", {"P1"}),
    ("patient_pn_greek", "PATIENT", "PATIENT", {"PatientName": "ηλίας"}, "PatientID", {"P3"}),
    ("patient_birth_date_range", "PATIENT", "PATIENT", {"PatientBirthDate": "-19800101"},
     "PatientID", {"P1"}),
    ("patient_sex", "PATIENT", "PATIENT", {"PatientSex": "M"}, "PatientID", {"P1"}),
    ("patient_id_wildcard", "PATIENT", "PATIENT", {"PatientID": "P?"},
     "PatientID", {"P1", "P2", "P3", "P4"}),
    ("patient_number_of_studies", "PATIENT", "PATIENT",
     {"NumberOfPatientRelatedStudies": "2"}, "PatientID", {"P1"}),
    ("study_root_all", "STUDY", "STUDY", {}, "StudyInstanceUID",
     {"1.1", "1.2", "2.1", "3.1", "4.1"}),
    ("study_date_range", "STUDY", "STUDY", {"StudyDate": "20200101-20201231"},
     "StudyInstanceUID", {"1.1"}),
    ("study_date_open_end", "STUDY", "STUDY", {"StudyDate": "20210101-"},
     "StudyInstanceUID", {"1.2", "3.1", "4.1"}),
    ("study_date_open_start", "STUDY", "STUDY", {"StudyDate": "-20200115"},
     "StudyInstanceUID", {"1.1", "2.1"}),
    ("study_date_single", "STUDY", "STUDY", {"StudyDate": "20191231"},
     "StudyInstanceUID", {"2.1"}),
    ("study_time_range", "STUDY", "STUDY", {"StudyTime": "1000-1100"},
     "StudyInstanceUID", {"1.1"}),
    ("study_time_partial_stored", "STUDY", "STUDY", {"StudyTime": "-09"},
     "StudyInstanceUID", {"2.1"}),
    ("study_accession_percent_literal", "STUDY", "STUDY", {"AccessionNumber": "ACC%1"},
     "StudyInstanceUID", {"1.1"}),
    ("study_accession_percent_wildcard", "STUDY", "STUDY", {"AccessionNumber": "ACC%*"},
     "StudyInstanceUID", {"1.1"}),
    ("study_description_underscore", "STUDY", "STUDY", {"StudyDescription": "Head_*"},
     "StudyInstanceUID", {"1.1"}),
    ("study_description_underscore_literal", "STUDY", "STUDY",
     {"StudyDescription": "Head?CT"}, "StudyInstanceUID", {"1.1"}),
    ("study_uid_list", "STUDY", "STUDY", {"StudyInstanceUID": "1.2\\3.1\\9.9"},
     "StudyInstanceUID", {"1.2", "3.1"}),
    ("study_modalities_in_study", "STUDY", "STUDY", {"ModalitiesInStudy": "MR"},
     "StudyInstanceUID", {"1.1"}),
    ("study_modalities_list", "STUDY", "STUDY", {"ModalitiesInStudy": "MR\\US"},
     "StudyInstanceUID", {"1.1", "3.1"}),
    ("study_sop_classes", "STUDY", "STUDY", {"SOPClassesInStudy": MR},
     "StudyInstanceUID", {"1.1"}),
    ("study_patient_name_at_study_level", "STUDY", "STUDY", {"PatientName": "m*"},
     "StudyInstanceUID", {"2.1"}),
    ("study_referring_physician", "STUDY", "STUDY", {"ReferringPhysicianName": "who^doctor"},
     "StudyInstanceUID", {"1.1"}),
    ("study_empty_value", "STUDY", "STUDY", {"AccessionNumber": '""'},
     "StudyInstanceUID", {"3.1", "4.1"}),
    ("study_combined_date_time", "STUDY", "STUDY",
     {"StudyDate": "20200101-20211231", "StudyTime": "1600-"},
     "StudyInstanceUID", {"1.2"}),
    ("patient_root_study", "PATIENT", "STUDY", {"PatientID": "P1"},
     "StudyInstanceUID", {"1.1", "1.2"}),
    ("patient_study_only_study", "PATIENT_STUDY_ONLY", "STUDY",
     {"PatientID": "P1", "AccessionNumber": "ACCX*"}, "StudyInstanceUID", {"1.2"}),
    ("series_all", "STUDY", "SERIES", {"StudyInstanceUID": "1.1"},
     "SeriesInstanceUID", {"1.1.1", "1.1.2"}),
    ("series_modality", "STUDY", "SERIES", {"StudyInstanceUID": "1.1", "Modality": "MR"},
     "SeriesInstanceUID", {"1.1.2"}),
    ("series_modality_list", "STUDY", "SERIES",
     {"StudyInstanceUID": "1.1", "Modality": "MR\\CT"},
     "SeriesInstanceUID", {"1.1.1", "1.1.2"}),
    ("series_number", "STUDY", "SERIES", {"StudyInstanceUID": "1.1", "SeriesNumber": "2"},
     "SeriesInstanceUID", {"1.1.2"}),
    ("series_description_bracket", "STUDY", "SERIES",
     {"StudyInstanceUID": "1.1", "SeriesDescription": "*[axial]"},
     "SeriesInstanceUID", {"1.1.2"}),
    ("patient_root_series", "PATIENT", "SERIES",
     {"PatientID": "P1", "StudyInstanceUID": "1.2"}, "SeriesInstanceUID", {"1.2.1"}),
    ("image_all", "STUDY", "IMAGE", {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.1"},
     "SOPInstanceUID", {"1.1.1.1", "1.1.1.2", "1.1.1.3"}),
    ("image_number", "STUDY", "IMAGE",
     {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.1", "InstanceNumber": "2"},
     "SOPInstanceUID", {"1.1.1.2"}),
    ("image_uid_list", "PATIENT", "IMAGE",
     {"PatientID": "P1", "StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.2",
      "SOPInstanceUID": "1.1.2.2\\1.1.1.1"}, "SOPInstanceUID", {"1.1.2.2"}),
    ("image_sop_class", "STUDY", "IMAGE",
     {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.2", "SOPClassUID": CT},
     "SOPInstanceUID", set()),
    ("image_transfer_syntax", "STUDY", "IMAGE",
     {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.2",
      "AvailableTransferSyntaxUID": ExplicitVRLittleEndian},
     "SOPInstanceUID", {"1.1.2.1", "1.1.2.2"}),
]

# (name, model, keys, comment fragment)
INVALID_QUERIES = [
    ("missing_level", "STUDY", {"PatientName": ""}, "Query/Retrieve Level"),
    ("unknown_level", "STUDY", {"QueryRetrieveLevel": "FRAME"}, "FRAME"),
    ("patient_level_in_study_root", "STUDY", {"QueryRetrieveLevel": "PATIENT"}, "PATIENT"),
    ("series_level_patient_study_only", "PATIENT_STUDY_ONLY",
     {"QueryRetrieveLevel": "SERIES", "PatientID": "P1", "StudyInstanceUID": "1.1"},
     "SERIES"),
    ("image_level_patient_study_only", "PATIENT_STUDY_ONLY",
     {"QueryRetrieveLevel": "IMAGE"}, "IMAGE"),
    ("study_without_patient_id", "PATIENT", {"QueryRetrieveLevel": "STUDY"}, "PatientID"),
    ("study_with_wildcard_patient_id", "PATIENT",
     {"QueryRetrieveLevel": "STUDY", "PatientID": "P*"}, "PatientID"),
    ("study_with_empty_patient_id", "PATIENT",
     {"QueryRetrieveLevel": "STUDY", "PatientID": ""}, "PatientID"),
    ("series_without_study_uid", "STUDY", {"QueryRetrieveLevel": "SERIES"},
     "StudyInstanceUID"),
    ("series_with_study_uid_list", "STUDY",
     {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.1\\1.2"}, "StudyInstanceUID"),
    ("image_without_series_uid", "STUDY",
     {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "1.1"}, "SeriesInstanceUID"),
    ("key_below_level", "STUDY", {"QueryRetrieveLevel": "STUDY", "Modality": "CT"},
     "Modality"),
    ("bad_date_range", "STUDY", {"QueryRetrieveLevel": "STUDY", "StudyDate": "abc-def"},
     "DA"),
]


class FindTests(IndexTestCase):
    """C-FIND through Index.find; one generated test per row of the tables."""

    def setUp(self):
        super().setUp()
        archive(self.index)

    def test_one_response_per_study(self):
        """A study with 20 instances gives one study-level response."""
        for n in range(20):
            self.index.add(instance(f"5.1.1.{n}", series=f"5.1.{n % 4}", study="5.1",
                                    patient="P5"), f"5/{n}", ExplicitVRLittleEndian, 1)
        responses = list(self.index.find(
            query("STUDY", StudyInstanceUID="5.1", NumberOfStudyRelatedInstances="",
                  NumberOfStudyRelatedSeries=""), "STUDY"))
        self.assertEqual(len(responses), 1)
        self.assertEqual((responses[0].NumberOfStudyRelatedInstances,
                          responses[0].NumberOfStudyRelatedSeries), (20, 4))

    def test_exact_keys(self):
        """A response holds the requested keys, the level and the unique keys, no more."""
        identifier = query("STUDY", PatientID="P1", StudyDate="", AccessionNumber="",
                           PatientName="", ModalitiesInStudy="", StudyInstanceUID="1.1",
                           Modality="")
        [response] = self.index.find(identifier, "PATIENT")
        self.assertEqual({e.keyword for e in response},
                         {"QueryRetrieveLevel", "PatientID", "StudyDate", "AccessionNumber",
                          "PatientName", "ModalitiesInStudy", "StudyInstanceUID",
                          "Modality"})
        self.assertEqual((response.StudyDate, response.AccessionNumber,
                          str(response.PatientName), list(response.ModalitiesInStudy),
                          response.Modality),
                         ("20200115", "ACC%1", "Doe^John", ["CT", "MR"], ""))

    def test_unrequested_unique_key_not_added(self):
        """A response never carries a key that was not asked for, not even the
        query level's unique key (PS3.4 C.4.1.1.3.2)."""
        identifier = bare_query("IMAGE", PatientID="P1", StudyInstanceUID="1.1",
                                SeriesInstanceUID="1.1.2", InstanceNumber="1")
        [response] = self.index.find(identifier, "PATIENT")
        self.assertEqual({e.keyword for e in response},
                         {"QueryRetrieveLevel", "PatientID", "StudyInstanceUID",
                          "SeriesInstanceUID", "InstanceNumber"})
        self.assertEqual(response.InstanceNumber, 1)

    def test_study_root_has_no_patient_key(self):
        """A Study Root study-level response does not add Patient ID unasked."""
        [response] = self.index.find(query("STUDY", StudyInstanceUID="1.2"), "STUDY")
        self.assertEqual({e.keyword for e in response},
                         {"QueryRetrieveLevel", "StudyInstanceUID"})

    def test_unknown_and_sequence_keys(self):
        """Keys the index does not know come back empty; sequences as empty sequences."""
        identifier = query("STUDY", StudyInstanceUID="1.2", InstitutionName="",
                           ReferencedStudySequence=[], InstanceAvailability="")
        [response] = self.index.find(identifier, "STUDY")
        self.assertEqual((response.InstitutionName, len(response.ReferencedStudySequence),
                          response.InstanceAvailability), ("", 0, "ONLINE"))

    def test_unsupported_keys(self):
        """unsupported_keys names the keys the index does not hold, with a
        value or without, and the item keys a kept sequence does not keep."""
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2"
        item.ReferencedFrameNumber = ""
        identifier = query("STUDY", StudyInstanceUID="", InstitutionName="X",
                           ReferencedStudySequence=[item], PatientName="A*",
                           RetrieveAETitle="", InstanceAvailability="",
                           ReferencedPatientSequence=[])
        self.assertEqual(unsupported_keys(identifier),
                         ["RetrieveAETitle", "InstitutionName",
                          "ReferencedStudySequence>ReferencedFrameNumber",
                          "ReferencedPatientSequence"])
        self.assertEqual(unsupported_keys(query("STUDY", StudyInstanceUID="",
                                                ReferencedStudySequence=[])), [])

    def test_validation_is_eager(self):
        """find checks the identifier when called, before any result is read."""
        self.assertRaises(QueryError, self.index.find, query("FRAME"), "STUDY")

    def test_unknown_model(self):
        """An unknown information model is a programming error."""
        self.assertRaises(ValueError, self.index.find, query("STUDY"), "WORKLIST")


def _make_find_case(name, model, level, keys, keyword, expected):
    def test(self):
        self.assertEqual(self.uids(query(level, **keys), model, keyword), expected)
    test.__doc__ = f"{model} root {level} query {keys!r} finds {sorted(expected)!r}."
    test.__name__ = f"test_find_{name}"
    return test


def _make_invalid_case(name, model, keys, fragment):
    def test(self):
        identifier = identifier_from(keys)
        error = self.assertRaises(QueryError, lambda: list(self.index.find(identifier, model)))
        self.assertEqual(error.status, Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
        self.assertIn(fragment, error.comment)
    test.__doc__ = f"{model} model refuses {keys!r} with 0xA900."
    test.__name__ = f"test_invalid_{name}"
    return test


for _case in FIND_CASES:
    setattr(FindTests, f"test_find_{_case[0]}", _make_find_case(*_case))
for _case in INVALID_QUERIES:
    setattr(FindTests, f"test_invalid_{_case[0]}", _make_invalid_case(*_case))


class StreamingTests(IndexTestCase):
    """Large results are read in batches."""

    def setUp(self):
        super().setUp()
        with self.index.transaction():
            for n in range(1203):
                self.index.add(instance(f"7.1.1.{n}", series="7.1.1", study="7.1",
                                        patient="P7", InstanceNumber=n),
                               f"7/{n}", ExplicitVRLittleEndian, 1)

    def test_all_results(self):
        """An image-level query yields all 1203 instances, each once."""
        identifier = query("IMAGE", StudyInstanceUID="7.1", SeriesInstanceUID="7.1.1",
                           InstanceNumber="")
        numbers = [r.InstanceNumber for r in self.index.find(identifier, "STUDY")]
        self.assertEqual(sorted(numbers), list(range(1203)))

    def test_batches(self):
        """Rows are fetched batch_size at a time, not all at once."""
        self.index.batch_size = 100
        fetched = []
        real = self.index._reading

        @contextmanager
        def recording():
            with real() as execute:
                def recorded(sql, params=()):
                    rows = execute(sql, params).fetchall()
                    fetched.append(len(rows))
                    return _Rows(rows)
                yield recorded
        self.patch(self.index, "_reading", recording)
        results = self.index.find(query("IMAGE", StudyInstanceUID="7.1",
                                        SeriesInstanceUID="7.1.1"), "STUDY")
        next(results)
        self.assertEqual(fetched, [100])
        self.assertEqual(len(list(results)), 1202)
        self.assertEqual(fetched, [100] * 12 + [3])

    def test_lock_released_between_batches(self):
        """Another thread can use the index while a query is suspended between results."""
        results = self.index.find(query("IMAGE", StudyInstanceUID="7.1",
                                        SeriesInstanceUID="7.1.1"), "STUDY")
        next(results)
        counts = []
        thread = threading.Thread(target=lambda: counts.append(self.index.count("IMAGE")))
        thread.start()
        thread.join(10)
        self.assertEqual(counts, [1203])
        self.assertEqual(len(list(results)), 1202)

    def test_early_stop(self):
        """Stopping after a few results reads only the first batch."""
        results = self.index.find(query("IMAGE", StudyInstanceUID="7.1",
                                        SeriesInstanceUID="7.1.1"), "STUDY")
        first = [next(results) for _ in range(3)]
        results.close()
        self.assertEqual(len(first), 3)


class _Rows:
    """A fetched result standing in for a cursor."""

    def __init__(self, rows):
        self._rows = rows

    def fetchall(self):
        return self._rows

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def __iter__(self):
        return iter(self._rows)


# (name, model, keys, expected SOP Instance UIDs)
RETRIEVE_CASES = [
    ("patient", "PATIENT", {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"},
     ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.2.1", "1.1.2.2", "1.2.1.1"]),
    ("patient_study_only_patient", "PATIENT_STUDY_ONLY",
     {"QueryRetrieveLevel": "PATIENT", "PatientID": "P2"}, ["2.1.1.1"]),
    ("patient_root_study", "PATIENT",
     {"QueryRetrieveLevel": "STUDY", "PatientID": "P1", "StudyInstanceUID": "1.2"},
     ["1.2.1.1"]),
    ("patient_root_study_wrong_patient", "PATIENT",
     {"QueryRetrieveLevel": "STUDY", "PatientID": "P2", "StudyInstanceUID": "1.2"}, []),
    ("study_root_study_list", "STUDY",
     {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "2.1\\3.1"}, ["2.1.1.1", "3.1.1.1"]),
    ("study_root_series", "STUDY",
     {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.1",
      "SeriesInstanceUID": "1.1.2"}, ["1.1.2.1", "1.1.2.2"]),
    ("study_root_image_list", "STUDY",
     {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "1.1",
      "SeriesInstanceUID": "1.1.1", "SOPInstanceUID": "1.1.1.3\\1.1.1.1"},
     ["1.1.1.1", "1.1.1.3"]),
    ("patient_root_image", "PATIENT",
     {"QueryRetrieveLevel": "IMAGE", "PatientID": "P4", "StudyInstanceUID": "4.1",
      "SeriesInstanceUID": "4.1.1", "SOPInstanceUID": "4.1.1.1"}, ["4.1.1.1"]),
    ("unknown_study", "STUDY", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "9.9"},
     []),
]

# (name, model, keys)
INVALID_RETRIEVES = [
    ("missing_level", "STUDY", {"StudyInstanceUID": "1.1"}),
    ("missing_unique_key", "STUDY", {"QueryRetrieveLevel": "STUDY"}),
    ("empty_unique_key", "STUDY", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}),
    ("wildcard_unique_key", "STUDY", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.*"}),
    ("patient_id_list", "PATIENT", {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1\\P2"}),
    ("series_without_study", "STUDY",
     {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.1.1"}),
    ("study_without_patient", "PATIENT",
     {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.1"}),
    ("patient_level_study_root", "STUDY", {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}),
    ("series_patient_study_only", "PATIENT_STUDY_ONLY",
     {"QueryRetrieveLevel": "SERIES", "PatientID": "P1", "StudyInstanceUID": "1.1",
      "SeriesInstanceUID": "1.1.1"}),
]


class RetrieveTests(IndexTestCase):
    """C-MOVE / C-GET instance lists through Index.retrieve."""

    def setUp(self):
        super().setUp()
        archive(self.index)

    def test_records(self):
        """retrieve gives SOP Class, SOP Instance, transfer syntax and relative path."""
        identifier = query("SERIES", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.2")
        self.assertEqual(self.index.retrieve(identifier, "STUDY")[0],
                         InstanceRecord(MR, "1.1.2.1", ExplicitVRLittleEndian,
                                        "1/1.1.2.1.dcm"))

    def test_issuer(self):
        """An Issuer of Patient ID in a patient-level retrieve narrows the patient."""
        self.index.add(instance("8.1.1.1", series="8.1.1", study="8.1", patient="P1",
                                IssuerOfPatientID="OTHER"), "8", ExplicitVRLittleEndian, 1)
        identifier = query("PATIENT", PatientID="P1", IssuerOfPatientID="OTHER")
        self.assertEqual([r.sop_instance_uid for r in
                          self.index.retrieve(identifier, "PATIENT")], ["8.1.1.1"])


def _make_retrieve_case(name, model, keys, expected):
    def test(self):
        identifier = identifier_from(keys)
        found = sorted(r.sop_instance_uid for r in self.index.retrieve(identifier, model))
        self.assertEqual(found, expected)
    test.__doc__ = f"{model} model retrieve {keys!r} gives {expected!r}."
    test.__name__ = f"test_retrieve_{name}"
    return test


def _make_invalid_retrieve(name, model, keys):
    def test(self):
        identifier = identifier_from(keys)
        error = self.assertRaises(QueryError, self.index.retrieve, identifier, model)
        self.assertEqual(error.status, Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
    test.__doc__ = f"{model} model refuses the retrieve identifier {keys!r} with 0xA900."
    test.__name__ = f"test_invalid_retrieve_{name}"
    return test


for _case in RETRIEVE_CASES:
    setattr(RetrieveTests, f"test_retrieve_{_case[0]}", _make_retrieve_case(*_case))
for _case in INVALID_RETRIEVES:
    setattr(RetrieveTests, f"test_invalid_retrieve_{_case[0]}", _make_invalid_retrieve(*_case))
del _case


class DerivedCountTests:
    """Derived counts kept incrementally agree with a full recount."""

    def test_incremental_counts_match_recount(self):
        """After many adds, replacements and a removal, every derived value
        equals what a recount gives."""
        index = self.make_index()
        for n in range(60):
            index.add(instance(f"9.{n}", series=f"9.{n % 6}", study=f"9.{n % 3}",
                               patient=f"P{n % 2}", Modality="CT" if n % 6 else "MR",
                               SOPClassUID=CT if n % 4 else "1.2.840.10008.5.1.4.1.1.4"),
                      f"f{n}", ExplicitVRLittleEndian, 1)
        index.add(instance("9.5", series="9.5", study="9.2", patient="P1"), "again",
                  ExplicitVRLittleEndian, 1)
        index.remove("9.7")

        incremental = snapshot(index)
        recount(index)
        self.assertEqual(incremental, snapshot(index))

    def test_known_parents_forgotten_on_rollback(self):
        """A parent first written in a rolled-back transaction is written
        again by the next add (the index's memory of written parents does
        not outlive a rollback)."""
        index = self.make_index()
        with self.assertRaises(RuntimeError):
            with index.transaction():
                index.add(instance("8.1", series="8.1", study="8", patient="P8"), "a",
                          ExplicitVRLittleEndian, 1)
                raise RuntimeError("roll back")
        self.assertEqual(index.count("STUDY"), 0)
        index.add(instance("8.2", series="8.1", study="8", patient="P8"), "b",
                  ExplicitVRLittleEndian, 1)
        self.assertEqual([index.count(level) for level in ("PATIENT", "STUDY", "SERIES", "IMAGE")],
                         [1, 1, 1, 1])
        study = index._sql(
            "SELECT number_of_study_related_series, number_of_study_related_instances"
            " FROM study")
        self.assertEqual(study, [(1, 1)])

    def test_changed_parent_values_are_written(self):
        """A later instance with a different Modality or Patient Name updates
        its series and patient, and Modalities in Study follows."""
        index = self.make_index()
        index.add(instance("7.1", series="7.1", study="7", patient="P7", Modality="CT",
                           PatientName="Old^Name"), "a", ExplicitVRLittleEndian, 1)
        index.add(instance("7.2", series="7.1", study="7", patient="P7", Modality="CT",
                           PatientName="Old^Name"), "b", ExplicitVRLittleEndian, 1)
        index.add(instance("7.3", series="7.1", study="7", patient="P7", Modality="MR",
                           PatientName="New^Name"), "c", ExplicitVRLittleEndian, 1)
        self.assertEqual(index._sql("SELECT modalities_in_study,"
                                    " number_of_study_related_instances FROM study"),
                         [("MR", 3)])
        self.assertEqual(index._sql("SELECT patient_name FROM patient"), [("New^Name",)])


    def test_second_study_of_a_patient(self):
        """A second study for a known patient is counted on that patient,
        and its own counts start from its first instance."""
        index = self.make_index()
        for n, study in enumerate(("6.1", "6.1", "6.2")):
            index.add(instance(f"6.9.{n}", series=f"{study}.1", study=study, patient="P6"),
                      f"f{n}", ExplicitVRLittleEndian, 1)
        self.assertEqual(index._sql("SELECT number_of_patient_related_studies,"
                                    " number_of_patient_related_series,"
                                    " number_of_patient_related_instances FROM patient"),
                         [(2, 2, 3)])
        incremental = snapshot(index)
        recount(index)
        self.assertEqual(incremental, snapshot(index))

    def test_deleted_study_stored_again(self):
        """A study deleted and then stored again under the same UIDs gets
        new rows with fresh counts (nothing remembered of the old ones)."""
        index = self.make_index()
        for n in range(3):
            index.add(instance(f"5.9.{n}", series="5.1.1", study="5.1", patient="P5"),
                      f"f{n}", ExplicitVRLittleEndian, 1)
        index.delete_study("5.1")
        self.assertEqual([index.count(level) for level in ("PATIENT", "STUDY", "SERIES")],
                         [0, 0, 0])
        index.add(instance("5.9.7", series="5.1.1", study="5.1", patient="P5"), "g",
                  ExplicitVRLittleEndian, 1)
        self.assertEqual([index.count(level) for level in ("PATIENT", "STUDY", "SERIES", "IMAGE")],
                         [1, 1, 1, 1])
        incremental = snapshot(index)
        recount(index)
        self.assertEqual(incremental, snapshot(index))

    def test_concurrent_adds(self):
        """Adds from several threads into the same study, each in its own
        transaction as the store's group commits are, keep exact counts."""
        index = self.make_index()

        def add(worker: int) -> None:
            for n in range(15):
                with index.transaction():
                    index.add(instance(f"4.{worker}.{n}", series=f"4.{n % 2}", study="4",
                                       patient="P4"), f"f{worker}.{n}",
                              ExplicitVRLittleEndian, 1)

        threads = [threading.Thread(target=add, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(index._sql("SELECT number_of_study_related_series,"
                                    " number_of_study_related_instances FROM study"),
                         [(2, 60)])
        incremental = snapshot(index)
        recount(index)
        self.assertEqual(incremental, snapshot(index))

    def test_metadata_of_a_replaced_or_new_instance(self):
        """An instance stored again without metadata forgets the earlier
        one; one removed and stored anew has none."""
        index = self.make_index()
        index.add(instance("3.1"), "a", ExplicitVRLittleEndian, 1, metadata=b"old")
        self.assertEqual([r.metadata for r in index.instances("1.1", metadata=True)], [b"old"])
        index.add(instance("3.1"), "a", ExplicitVRLittleEndian, 1)
        self.assertEqual([r.metadata for r in index.instances("1.1", metadata=True)], [None])
        index.add(instance("3.1"), "a", ExplicitVRLittleEndian, 1, metadata=b"again")
        index.remove("3.1")
        index.add(instance("3.1"), "a", ExplicitVRLittleEndian, 1)
        self.assertEqual([r.metadata for r in index.instances("1.1", metadata=True)], [None])


    def test_counts_of_a_batch_with_rollbacks(self):
        """In one transaction (a group commit's batch): new instances, a
        replacement (which recounts), a failed one rolled back after the
        counts noted before it were written inside it, and a read of the
        counts in the middle: the counts then and at the end are exact."""
        index = self.make_index()
        index.add(instance("1.9.0", series="1.1.1", study="1.1"), "f0",
                  ExplicitVRLittleEndian, 1)

        def broken():
            raise OSError(5, "I/O error")

        with index.transaction():
            index.add(instance("1.9.1", series="1.1.1", study="1.1"), "f1",
                      ExplicitVRLittleEndian, 1)
            index.add(instance("1.9.2", series="1.1.2", study="1.1"), "f2",
                      ExplicitVRLittleEndian, 1)
            with self.assertRaises(OSError):
                # A replacement recounts (writing what was noted), then fails.
                index.add(instance("1.9.0", series="1.1.2", study="1.1"), "g0",
                          ExplicitVRLittleEndian, 1, then=broken)
            with self.assertRaises(OSError):
                index.add(instance("1.9.3", series="1.1.3", study="1.2", patient="P2"), "f3",
                          ExplicitVRLittleEndian, 1, then=broken)
            self.assertEqual(index._sql("SELECT number_of_study_related_series,"
                                        " number_of_study_related_instances FROM study"),
                             [(2, 3)])
            index.add(instance("1.9.4", series="1.1.2", study="1.1"), "f4",
                      ExplicitVRLittleEndian, 1)
        self.assertEqual(index._sql("SELECT number_of_series_related_instances FROM series"
                                    " ORDER BY series_instance_uid"), [(2,), (2,)])
        self.assertEqual(index._sql("SELECT number_of_study_related_series,"
                                    " number_of_study_related_instances FROM study"), [(2, 4)])
        self.assertEqual(index._sql("SELECT number_of_patient_related_studies,"
                                    " number_of_patient_related_series,"
                                    " number_of_patient_related_instances FROM patient"),
                         [(1, 2, 4)])
        incremental = snapshot(index)
        recount(index)
        self.assertEqual(incremental, snapshot(index))

    def test_failed_batch_counts_nothing(self):
        """A transaction that rolls back as a whole leaves no count behind,
        and the next one counts from the rows."""
        index = self.make_index()
        index.add(instance("1.8.0"), "a", ExplicitVRLittleEndian, 1)
        with self.assertRaises(RuntimeError):
            with index.transaction():
                index.add(instance("1.8.1"), "b", ExplicitVRLittleEndian, 1)
                raise RuntimeError("roll back")
        index.add(instance("1.8.2"), "c", ExplicitVRLittleEndian, 1)
        self.assertEqual(index._sql("SELECT number_of_study_related_instances FROM study"),
                         [(2,)])
        incremental = snapshot(index)
        recount(index)
        self.assertEqual(incremental, snapshot(index))

    def test_then_runs_in_the_savepoint(self):
        """``add(..., then=f)`` calls ``f`` once the rows are written; if it
        raises, the rows roll back (a replaced instance keeps its old row)
        and the exception propagates."""
        index = self.make_index()
        seen = []
        index.add(instance("2.1", PatientName="First^Name"), "a", ExplicitVRLittleEndian, 1,
                  then=lambda: seen.append(index.get_path("2.1")))
        self.assertEqual(seen, ["a"])

        def broken():
            raise OSError(5, "I/O error")

        with self.assertRaises(OSError):
            index.add(instance("2.2"), "b", ExplicitVRLittleEndian, 1, then=broken)
        self.assertIsNone(index.get_path("2.2"))
        with self.assertRaises(OSError):
            index.add(instance("2.1", PatientName="Second^Name"), "c", ExplicitVRLittleEndian, 2,
                      then=broken)
        self.assertEqual(index.get_path("2.1"), "a")
        self.assertEqual(index._sql("SELECT patient_name FROM patient"), [("First^Name",)])
        self.assertEqual(index.count("IMAGE"), 1)
        incremental = snapshot(index)
        recount(index)
        self.assertEqual(incremental, snapshot(index))


def snapshot(index) -> tuple:
    """Every derived value of the index, by row."""
    return (index._sql("SELECT pk, number_of_series_related_instances FROM series"
                       " ORDER BY pk"),
            index._sql("SELECT pk, number_of_study_related_series,"
                       " number_of_study_related_instances, modalities_in_study,"
                       " sop_classes_in_study FROM study ORDER BY pk"),
            index._sql("SELECT pk, number_of_patient_related_studies,"
                       " number_of_patient_related_series,"
                       " number_of_patient_related_instances FROM patient ORDER BY pk"))


def recount(index) -> None:
    """Recompute every derived value from the rows."""
    with index.transaction():
        index._tidy({r[0] for r in index._execute("SELECT pk FROM series").fetchall()},
                    {r[0] for r in index._execute("SELECT pk FROM study").fetchall()},
                    {r[0] for r in index._execute("SELECT pk FROM patient").fetchall()})


for _suite in (SchemaTests, WriteTests, CharacterSetTests, FindTests, StreamingTests,
               RetrieveTests, DerivedCountTests):
    both(_suite)
del _suite


class FastRowTests(SynchronousTestCase):
    """The values ``add`` decodes itself equal pydicom's."""

    def assertSameRow(self, raw: bytes, name: str) -> None:
        from dicomtwist.storage.index import _ADDED, _row, _stored_value
        fast = _row(dcmread(BytesIO(raw), stop_before_pixels=True, force=True))
        slow_ds = dcmread(BytesIO(raw), stop_before_pixels=True, force=True)
        slow = {a.keyword: _stored_value(slow_ds, a) for a in _ADDED}
        self.assertEqual(fast, slow, name)
        from dicomtwist.storage.header import scan
        from dicomtwist.storage.index import INDEXED_TAGS, _character_set
        from dicomtwist.storage.matching import split_values
        expected = "\\".join(split_values(slow_ds.get("SpecificCharacterSet"))) or None
        self.assertEqual(_character_set(slow_ds), expected, name)
        syntax = slow_ds.file_meta.get("TransferSyntaxUID")
        offset = slow_ds.preamble is not None and raw[128:132] == b"DICM"
        if syntax and offset and not syntax.is_deflated:
            meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
            try:
                scanned = scan(raw[meta_end:], syntax, INDEXED_TAGS)
            except Exception:
                return  # a file only pydicom's leniency reads
            self.assertEqual(_row(scanned), slow, name)
            self.assertEqual(_character_set(scanned), expected, name)

    def test_pydicom_test_files(self):
        """Every readable file pydicom ships gives the same row both ways."""
        import glob
        files = os.path.dirname(pydicom.data.__file__)
        checked = 0
        for path in sorted(glob.glob(os.path.join(files, "**", "*.dcm"), recursive=True)):
            with open(path, "rb") as fp:
                raw = fp.read()
            try:
                dcmread(BytesIO(raw), stop_before_pixels=True)
            except Exception:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.assertSameRow(raw, path)
            checked += 1
        self.assertGreater(checked, 50)

    def test_remembered_values(self):
        """A value decoded once is remembered by its raw bytes, tag, VR,
        byte order and character set: the same value in another byte order
        or character set decodes right, and SOP Instance UIDs (never
        repeated) are not kept."""
        from dicomtwist.storage.header import scan
        from dicomtwist.storage.index import INDEXED_TAGS, _row
        from dicomtwist.storage.index.base import _ROW_MEMO

        def row(syntax, charset, sop):
            ds = instance(sop, PatientName="Müller^Jörg", Rows=258)
            ds.SpecificCharacterSet = charset
            return _row(scan(encode_dataset(ds, syntax), syntax, INDEXED_TAGS))

        first = row(ExplicitVRLittleEndian, "ISO_IR 100", "1.2.3.1")
        again = row(ExplicitVRLittleEndian, "ISO_IR 100", "1.2.3.2")
        self.assertEqual((first["PatientName"], first["Rows"]), ("Müller^Jörg", 258))
        self.assertEqual((again["PatientName"], again["Rows"], again["SOPInstanceUID"]),
                         ("Müller^Jörg", 258, "1.2.3.2"))
        big = row(ExplicitVRBigEndian, "ISO_IR 100", "1.2.3.3")
        self.assertEqual(big["Rows"], 258)
        self.assertNotIn("1.2.3.2", [value for _, value in _ROW_MEMO.values()])
        utf8 = row(ExplicitVRLittleEndian, "ISO_IR 192", "1.2.3.4")
        self.assertEqual(utf8["PatientName"], "Müller^Jörg")

    def test_generated_values(self):
        """Character sets, padding, multiple values, empty values and
        numbers give the same row both ways, in every uncompressed syntax."""
        cases = [
            {},
            {"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Jörg",
             "StudyDescription": "Schädel \\ Hals"},
            {"SpecificCharacterSet": "ISO_IR 192", "PatientName": ["Ηλίας=Ηλίας^Α=", "B=="],
             "PatientComments": "ünï \\ côdé  ", "OtherPatientIDs": ["A1 ", "B2"]},
            {"SpecificCharacterSet": ["", "ISO 2022 IR 87"], "PatientName": JAPANESE},
            {"SpecificCharacterSet": "ISO_IR 144", "PatientName": "Люкceмбypг"},
            {"PatientName": "", "StudyID": "", "SeriesNumber": None, "InstanceNumber": "7",
             "AccessionNumber": " A1 ", "StudyDate": "2020.01.02", "Rows": 512,
             "Columns": 256, "PatientWeight": "70.5", "PatientSize": " 1.80",
             "NumberOfFrames": "3", "ModalitiesInStudy": ["CT", "MR"],
             "NameOfPhysiciansReadingStudy": ["A^B", "C^D"]},
        ]
        for n, values in enumerate(cases):
            ds = instance(f"6.{n}", series=f"6.{n}", study=f"6.{n}")
            for keyword, value in values.items():
                setattr(ds, keyword, value)
            for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
                raw = (part10_header(ds.SOPClassUID, ds.SOPInstanceUID, syntax)
                       + encode_dataset(ds, syntax))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.assertSameRow(raw, f"case {n}, {syntax.name}")

    def test_common_values_skip_pydicom(self):
        """Latin-1 and UTF-8 text, UIDs, dates and US values are decoded
        without pydicom's conversion."""
        from dicomtwist.storage.index import base as index_module
        for charset in ("ISO_IR 100", "ISO_IR 192", None):
            ds = instance("5.1", series="5.1", study="5.1", PatientName="Müller^Jörg",
                          Rows=512, StudyDescription="Schädel")
            if charset:
                ds.SpecificCharacterSet = charset
            raw = (part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
                   + encode_dataset(ds, ExplicitVRLittleEndian))
            parsed = dcmread(BytesIO(raw), stop_before_pixels=True)
            self.patch(index_module, "_stored_value", None)
            row = index_module._row(parsed)
            self.assertEqual((row["PatientName"], row["Rows"], row["StudyDescription"]),
                             ("Müller^Jörg", 512, "Schädel"))
