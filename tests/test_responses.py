"""Tests for dicomtwist.storage.responses: C-FIND responses encoded from rows.

Every test compares ``Index.find_encoded`` with ``encode_dataset`` of what
``Index.find`` gives, byte for byte, and checks that the rows it should
write itself did not take the pydicom path.
"""

from __future__ import annotations

import warnings
from functools import partial

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from twisted.trial.unittest import SynchronousTestCase
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomtwist.dimse.codec import element_prefix, encode_dataset
from dicomtwist.storage.index import ATTRIBUTES, LEVELS, TABLES
from dicomtwist.storage.responses import ResponseEncoder
from tests.backends import both
from tests.test_index import IndexTestCase, archive, instance

LITTLE_ENDIAN = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
OTHER_SYNTAXES = (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
_DEPTH = {"patient": 0, "study": 1, "series": 2, "instance": 3}


def keys_for(level: str) -> list[str]:
    """Every indexed attribute at or above ``level``, and one below it."""
    depth = _DEPTH[TABLES[level]]
    keywords = [a.keyword for a in ATTRIBUTES if _DEPTH[a.table] <= depth]
    if depth < 3:
        keywords.append("SOPInstanceUID")
    return keywords


def identifier(level: str, keywords: list[str], **values) -> Dataset:
    """A C-FIND identifier at ``level``: ``keywords`` empty, ``values`` set."""
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.QueryRetrieveLevel = level
        for keyword in keywords:
            setattr(ds, keyword, "" if keyword not in values else values[keyword])
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return ds


class ResponseEncoderTests(IndexTestCase):
    """``find_encoded`` gives exactly the bytes pydicom writes for ``find``."""

    def setUp(self):
        super().setUp()
        archive(self.index)

    def encoder(self, ds: Dataset, model: str, transfer_syntax: str) -> ResponseEncoder:
        plan = self.index._plan(ds, model)
        return ResponseEncoder(plan.keys, partial(self.index._response, plan),
                               plan.character_set, transfer_syntax)

    def assertSameBytes(self, ds: Dataset, model: str, direct: bool = True,
                        fallbacks: int = 0) -> list[bytes]:
        """``find_encoded`` and pydicom agree in every transfer syntax; in the
        Little Endian ones the encoder writes ``direct``-ly with ``fallbacks``
        rows through pydicom.  Returns the Implicit VR responses."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = {ts: [encode_dataset(r, ts) for r in self.index.find(ds, model)]
                        for ts in LITTLE_ENDIAN + OTHER_SYNTAXES}
            for ts in LITTLE_ENDIAN + OTHER_SYNTAXES:
                self.assertEqual(list(self.index.find_encoded(ds, model, ts)), expected[ts],
                                 ts.name)
            for ts in LITTLE_ENDIAN:
                encoder = self.encoder(ds, model, ts)
                self.assertEqual(encoder.direct, direct, ts.name)
                plan = self.index._plan(ds, model)
                got = [encoder.encode(row) for row in self.index._run(plan, lambda row: row)]
                self.assertEqual(got, expected[ts], ts.name)
                self.assertEqual(encoder.fallbacks, fallbacks if direct else len(got),
                                 ts.name)
            for ts in OTHER_SYNTAXES:
                self.assertFalse(self.encoder(ds, model, ts).direct)
        self.assertTrue(expected[ImplicitVRLittleEndian], "no matches")
        return expected[ImplicitVRLittleEndian]

    def every_level(self):
        """Identifiers with every indexed attribute, at each level of each root."""
        for model, levels in (("PATIENT", LEVELS), ("STUDY", LEVELS[1:])):
            for level in levels:
                ds = identifier(level, keys_for(level))
                if model == "PATIENT" and level != "PATIENT":
                    ds.PatientID = "P1"
                if level in ("SERIES", "IMAGE"):
                    ds.StudyInstanceUID = "1.1"
                if level == "IMAGE":
                    ds.SeriesInstanceUID = "1.1.1"
                yield ds, model

    def test_every_attribute(self):
        """Every indexed attribute at each level, in both root models."""
        for ds, model in self.every_level():
            self.assertSameBytes(ds, model)

    def test_all_studies(self):
        """The benchmark's query: all studies, seven keys."""
        ds = identifier("STUDY", ["PatientName", "PatientID", "StudyDate", "StudyTime",
                                  "AccessionNumber", "StudyID", "StudyInstanceUID"])
        responses = self.assertSameBytes(ds, "STUDY")
        self.assertEqual(len(responses), 5)

    def test_character_sets(self):
        """With each request character set: echoed for ASCII rows, ISO_IR 192
        for the others; sets that may change ASCII take the pydicom path."""
        for charset, direct in ((None, True), ("", True), ("ISO_IR 100", True),
                                ("ISO_IR 192", True), ("GB18030", True),
                                ("ISO_IR 13", False), (["", "ISO 2022 IR 87"], False),
                                ("ISO 2022 IR 6", False)):
            ds = identifier("PATIENT", ["PatientID", "PatientName", "OtherPatientNames",
                                        "PatientComments"])
            if charset is not None:
                ds.SpecificCharacterSet = charset
            self.assertSameBytes(ds, "PATIENT", direct=direct)

    def test_unknown_sequence_and_constant_keys(self):
        """Keys the index lacks (text, binary, numeric, private), sequences, and
        Instance Availability."""
        ds = identifier("STUDY", ["StudyInstanceUID", "InstitutionName", "InstanceAvailability",
                                  "ReferencedPatientSequence", "PatientName", "Rows",
                                  "SmallestImagePixelValue", "PixelSpacing",
                                  "RetrieveAETitle", "StudyComments"],
                        ReferencedPatientSequence=[], PixelData=b"")
        ds.add_new(0x00091010, "LO", "")
        ds.add_new(0x00091011, "UN", b"")
        self.assertSameBytes(ds, "STUDY")

    def test_kept_sequence(self):
        """A sequence the index keeps (its items vary by row) takes the pydicom
        path, with the same bytes."""
        ds = identifier("STUDY", ["StudyInstanceUID", "ProcedureCodeSequence",
                                  "PatientName"], ProcedureCodeSequence=[])
        self.assertSameBytes(ds, "STUDY", direct=False)

    def stored(self, table: str, column: str, value: object, where: str = "TRUE") -> None:
        self.index._sql(f"UPDATE {table} SET {column} = ? WHERE {where}", (value,))

    def test_value_forms(self):
        """Multiple values, trailing empty PN groups, padding, UI spaces, US and
        IS numbers, decimal strings: written directly, all as pydicom does."""
        self.stored("patient", "patient_name", "Doe^John=", "patient_id = 'P1'")
        self.stored("patient", "other_patient_names", "A^B==\\C=D=\\\\É^F=", "patient_id = 'P1'")
        self.stored("patient", "other_patient_ids", "X\\Y\\Z", "patient_id = 'P2'")
        self.stored("patient", "patient_comments", "odd\\back\\slashes", "patient_id = 'P3'")
        self.stored("patient", "ethnic_group", "", "patient_id = 'P4'")
        self.stored("patient", "patient_id", " P2 ", "patient_id = 'P2'")
        self.stored("study", "patient_weight", "70.5\\-1\\+2.25")
        self.stored("study", "patient_size", "1.8", "pk = 1")
        self.stored("study", "patient_age", "042Y")
        self.stored("study", "study_time", "103000.123")
        self.stored("instance", "rows", 65535, "pk = 1")
        self.stored("instance", "columns", 0, "pk = 1")
        self.stored("instance", "number_of_frames", -(2 ** 31), "pk = 2")
        self.stored("instance", "instance_number", 2 ** 31 - 1, "pk = 3")
        self.stored("instance", "sop_class_uid", " 1.2.3 \\1.2.40", "pk = 4")
        for ds, model in self.every_level():
            self.assertSameBytes(ds, model)

    def test_odd_values_take_the_pydicom_path(self):
        """Values pydicom would rewrite, or write in another way, go through it."""
        # (P1 has two studies.)
        cases = [
            ("patient", "patient_sex", "É", "PatientSex"),  # non-ASCII CS
            ("patient", "patient_birth_date", "2000 01 01\u00e9", "PatientBirthDate"),
            ("study", "patient_weight", " 70.5", "PatientWeight"),  # DS stripped
            ("study", "patient_weight", "7.05e1", "PatientWeight"),
            ("study", "patient_weight", "12345678901234567", "PatientWeight"),
            ("study", "patient_weight", "abc", "PatientWeight"),
        ]
        for table, column, value, keyword in cases:
            self.stored(table, column, value, "pk = 1")
            ds = identifier("STUDY", ["StudyInstanceUID", keyword])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    expected = [encode_dataset(r, ImplicitVRLittleEndian)
                                for r in self.index.find(ds, "STUDY")]
                except Exception as e:
                    # pydicom refuses the value: so does find_encoded.
                    self.assertRaises(type(e), list, self.index.find_encoded(
                        ds, "STUDY", ImplicitVRLittleEndian))
                else:
                    self.assertEqual(list(self.index.find_encoded(
                        ds, "STUDY", ImplicitVRLittleEndian)), expected, value)
                    self.assertSameBytes(ds, "STUDY", fallbacks=2 if table == "patient" else 1)
            self.stored(table, column, None, "pk = 1")

    def test_out_of_range_numbers(self):
        """US and IS numbers pydicom cannot (or may not) write go through it
        (and text in an integer column, which only sqlite can hold)."""
        self.stored("instance", "rows", 70000, "pk = 1")
        self.stored("instance", "number_of_frames", 2 ** 31, "pk = 2")
        self.stored("instance", "columns", "many" if self.backend == "sqlite" else 2 ** 40,
                    "pk = 3")
        ds = identifier("IMAGE", ["SOPInstanceUID", "NumberOfFrames"], PatientID="P1",
                        StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1")
        self.assertSameBytes(ds, "PATIENT", fallbacks=1)
        for keyword in ("Rows", "Columns"):
            ds = identifier("IMAGE", ["SOPInstanceUID", keyword], PatientID="P1",
                            StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.assertRaises(Exception, list, self.index.find_encoded(
                    ds, "PATIENT", ImplicitVRLittleEndian))
                self.assertRaises(Exception, lambda: [
                    encode_dataset(r, ImplicitVRLittleEndian)
                    for r in self.index.find(ds, "PATIENT")])

    def test_long_value(self):
        """A value too long for a 2-byte length: pydicom's UN in Explicit VR."""
        self.stored("patient", "patient_comments", "x" * 70001, "patient_id = 'P1'")
        ds = identifier("PATIENT", ["PatientID", "PatientComments"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for ts in LITTLE_ENDIAN:
                expected = [encode_dataset(r, ts) for r in self.index.find(ds, "PATIENT")]
                encoder = self.encoder(ds, "PATIENT", ts)
                plan = self.index._plan(ds, "PATIENT")
                got = [encoder.encode(row) for row in self.index._run(plan, lambda row: row)]
                self.assertEqual(got, expected)
                self.assertEqual(encoder.fallbacks, 1 if ts == ExplicitVRLittleEndian else 0)

    def test_many_rows(self):
        """Rows across several fetch batches, with names in several scripts."""
        self.index.batch_size = 7
        names = ["Ηλίας", "Wang^XiaoDong=王^小東", "O'Brien^Ann", "", "Müller", "A=B=C"]
        for n in range(40):
            self.index.add(instance(f"9.{n}.1.1", series=f"9.{n}.1", study=f"9.{n}",
                                    patient=f"Q{n % 9}", StudyDate=f"2001{n % 12 + 1:02d}01",
                                    AccessionNumber="A" * (n % 5), StudyID=str(n)),
                           f"9/{n}", ExplicitVRLittleEndian, 1)
            self.stored("patient", "patient_name", names[n % len(names)],
                        f"patient_id = 'Q{n % 9}'")
        ds = identifier("STUDY", ["PatientName", "PatientID", "StudyDate", "StudyTime",
                                  "AccessionNumber", "StudyID", "StudyInstanceUID",
                                  "ModalitiesInStudy", "NumberOfStudyRelatedInstances"])
        self.assertEqual(len(self.assertSameBytes(ds, "STUDY")), 45)


#: Text with the characters that matter to the encoding: separators of
#: values, PN groups and components, padding and stripping; mostly ASCII.
_SPECIAL = st.sampled_from("\\=^ .0aZ\x00\t")
_ASCII = st.text(_SPECIAL, max_size=12)
_TEXT = st.text(st.one_of(_SPECIAL, st.characters(blacklist_categories=("Cs",))),
                max_size=12)
_STRING = st.one_of(_ASCII, _ASCII, _TEXT)
_NUMBER = st.one_of(st.none(), st.integers(-(2 ** 31) - 2, 2 ** 31 + 1),
                    st.integers(0, 70000), _TEXT)
#: DS values pydicom writes as they are (at most 16 characters each).
_USUAL_DECIMAL = st.one_of(st.none(), st.from_regex(r"\A[+-]?[0-9]{1,7}(\.[0-9]{1,7})?\Z"),
                           st.from_regex(r"\A[0-9]{1,5}(\\[0-9]{1,5})?\Z"))
_DECIMAL = st.one_of(_USUAL_DECIMAL, _TEXT)


class RandomValueTests(IndexTestCase):
    """Random stored values: the encoder's bytes, or its error, are pydicom's."""

    def setUp(self):
        super().setUp()
        self.index.add(instance("1.1.1.1", StudyDate="20200101", Rows=1, InstanceNumber=1),
                       "1", ExplicitVRLittleEndian, 1)

    def compare(self, values: dict, charset: str | None) -> list[ResponseEncoder]:
        """Store ``values`` in the one patient, study and instance; compare the
        responses to an image query returning them.  Returns the encoders."""
        if self.backend != "sqlite":
            # PostgreSQL holds neither NUL in text nor text in an integer column.
            # (add drops NUL there; so do these values.)
            values = {k: v.replace("\0", "") if isinstance(v, str) else v
                      for k, v in values.items()}
            assume(all(isinstance(values[k], (int, type(None))) for k in ("rows", "number")))
        with self.index.transaction():
            execute = self.index._execute
            v = values
            execute("UPDATE patient SET patient_name = ?, other_patient_names = ?,"
                    " patient_id = ?, patient_sex = ?, patient_comments = ?",
                    (v["name"], v["other_names"], v["patient_id"], v["sex"], v["comments"]))
            execute("UPDATE study SET patient_weight = ?, patient_age = ?, "
                    "accession_number = ?", (v["weight"], v["age"], v["accession"]))
            execute("UPDATE instance SET sop_class_uid = ?, rows = ?, "
                    "instance_number = ?", (v["sop_class"], v["rows"], v["number"]))
        ds = identifier("IMAGE", ["PatientName", "OtherPatientNames", "PatientSex",
                                  "PatientComments", "PatientWeight", "PatientAge",
                                  "AccessionNumber", "SOPClassUID", "Rows", "InstanceNumber",
                                  "PatientID"],
                        StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1")
        if charset is not None:
            ds.SpecificCharacterSet = charset
        encoders = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for ts in LITTLE_ENDIAN:
                try:
                    expected = [encode_dataset(r, ts) for r in self.index.find(ds, "STUDY")]
                except Exception as e:
                    self.assertRaises(type(e), list, self.index.find_encoded(ds, "STUDY", ts))
                else:
                    self.assertEqual(len(expected), 1)
                    self.assertEqual(list(self.index.find_encoded(ds, "STUDY", ts)), expected)
                plan = self.index._plan(ds, "STUDY")
                encoder = ResponseEncoder(plan.keys, partial(self.index._response, plan),
                                          plan.character_set, ts)
                for row in self.index._run(plan, lambda row: row):
                    try:
                        encoder.encode(row)
                    except Exception:
                        pass
                encoders.append(encoder)
        return encoders

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.differing_executors])
    @given(name=st.one_of(st.none(), _TEXT), other_names=_TEXT, patient_id=_TEXT,
           sex=_STRING, comments=_TEXT, weight=_DECIMAL, age=_STRING,
           accession=_TEXT, sop_class=_STRING, rows=_NUMBER, number=_NUMBER,
           charset=st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6"]))
    def test_random_values(self, charset, **values):
        """Any values: the same bytes, or the same error."""
        self.compare(values, charset)

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.differing_executors])
    @given(name=st.one_of(st.none(), _TEXT), other_names=_TEXT, patient_id=_TEXT,
           sex=_ASCII, comments=_TEXT, weight=_USUAL_DECIMAL, age=_ASCII, accession=_TEXT,
           sop_class=_ASCII,
           rows=st.one_of(st.none(), st.integers(0, 0xFFFF)),
           number=st.one_of(st.none(), st.integers(-(2 ** 31), 2 ** 31 - 1)),
           charset=st.sampled_from([None, "", "ISO_IR 100", "ISO_IR 192"]))
    def test_random_usual_values(self, charset, **values):
        """Values of the usual forms: the same bytes, none through pydicom."""
        for encoder in self.compare(values, charset):
            self.assertTrue(encoder.direct)
            self.assertEqual(encoder.fallbacks, 0)


for _suite in (ResponseEncoderTests, RandomValueTests):
    both(_suite)
del _suite


class ElementPrefixTests(SynchronousTestCase):
    """``codec.element_prefix``: the element header pydicom writes."""

    def test_against_pydicom(self):
        for vr, value in (("LO", "ab"), ("UT", "ab"), ("SQ", []), ("US", 7), ("UN", b"ab"),
                          ("OB", b"ab"), ("UC", "ab"), ("UR", "ab")):
            for ts in LITTLE_ENDIAN:
                ds = Dataset()
                ds.add_new(Tag(0x00091010), vr, value)
                encoded = encode_dataset(ds, ts)
                prefix, length = element_prefix(0x00091010, vr, ts)
                self.assertTrue(encoded.startswith(prefix), (vr, ts.name))
                (size,) = length.unpack_from(encoded, len(prefix))
                self.assertEqual(len(prefix) + length.size + size, len(encoded), (vr, ts))

    def test_refuses(self):
        self.assertRaises(ValueError, element_prefix, 0x00100010, "PN", ExplicitVRBigEndian)
        self.assertRaises(ValueError, element_prefix, 0x00280106, "US or SS",
                          ExplicitVRLittleEndian)
