"""Unit tests of QIDO-RS's pure parts: the query-parameter parser and the
DICOM JSON of index rows, and the DICOM JSON model's round trip through
pydicom (``Dataset.from_json``)."""

from __future__ import annotations

import json

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.storage.files import dataset_offset
from dicomtwist.web.dicomweb import qido
from dicomtwist.web.dicomweb.dicomjson import encode_metadata


def parse(level: str, query: dict[str, list[str]], **kwargs) -> qido.QidoQuery:
    """``parse_query`` with ``includefield=all`` meaning nothing extra."""
    return qido.parse_query(level, query, **kwargs)


class ParseQueryTests(SynchronousTestCase):
    """``qido.parse_query``: parameters into a C-FIND identifier."""

    def test_keyword_and_tag(self) -> None:
        """An attribute is named by keyword or by eight hex digits, and its
        value becomes the identifier's matching value."""
        query = parse("STUDY", {"PatientName": ["Smith*"], "00080020": ["20200101-"]})
        self.assertEqual(query.identifier.PatientName, "Smith*")
        self.assertEqual(query.identifier.StudyDate, "20200101-")
        self.assertEqual(query.identifier.QueryRetrieveLevel, "STUDY")
        self.assertFalse(query.relational)

    def test_default_return_keys(self) -> None:
        """The study level's default attributes are return keys (empty),
        Retrieve URL and Specific Character Set excepted (the server makes
        them)."""
        query = parse("STUDY", {})
        keys = {element.keyword for element in query.identifier}
        self.assertLessEqual({"StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                              "PatientName", "PatientID", "StudyInstanceUID",
                              "NumberOfStudyRelatedInstances"}, keys)
        self.assertNotIn("RetrieveURL", keys)
        self.assertNotIn("SpecificCharacterSet", keys)
        self.assertEqual(query.identifier.PatientName, "")

    def test_relational_levels(self) -> None:
        """/series and /instances without a study, and /studies/{s}/instances
        without a series, are relational and return the open levels' keys."""
        query = parse("SERIES", {})
        self.assertTrue(query.relational)
        self.assertIn(Tag("StudyDate"), query.identifier)
        query = parse("SERIES", {}, study="1.2.3")
        self.assertFalse(query.relational)
        self.assertEqual(query.identifier.StudyInstanceUID, "1.2.3")
        self.assertNotIn(Tag("StudyDate"), query.identifier)
        query = parse("IMAGE", {}, study="1.2.3")
        self.assertTrue(query.relational)
        self.assertIn(Tag("SeriesNumber"), query.identifier)
        query = parse("IMAGE", {}, study="1.2.3", series="1.2.3.4")
        self.assertFalse(query.relational)

    def test_includefield(self) -> None:
        """includefield takes a comma-separated list, is repeatable, and
        ``all`` adds what it is given."""
        query = parse("STUDY", {"includefield": ["00081030,StudyID", "00080060"]})
        for keyword in ("StudyDescription", "StudyID", "Modality"):
            self.assertEqual(query.identifier[keyword].value, "")
        query = parse("STUDY", {"includefield": ["all"]}, include_all=["PatientComments"])
        self.assertIn(Tag("PatientComments"), query.identifier)

    def test_limit_offset(self) -> None:
        """limit and offset are non-negative integers."""
        query = parse("STUDY", {"limit": ["10"], "offset": ["20"]})
        self.assertEqual((query.limit, query.offset), (10, 20))
        for bad in ({"limit": ["-1"]}, {"offset": ["x"]}, {"limit": ["1e3"]}):
            self.assertRaises(qido.QueryParameterError, parse, "STUDY", bad)

    def test_fuzzymatching(self) -> None:
        """fuzzymatching=true is accepted with a Warning; false gives none;
        anything else is an error."""
        self.assertEqual(parse("STUDY", {"fuzzymatching": ["false"]}).warnings, [])
        warnings = parse("STUDY", {"fuzzymatching": ["true"]}).warnings
        self.assertEqual(len(warnings), 1)
        self.assertTrue(warnings[0].startswith("299 "))
        self.assertRaises(qido.QueryParameterError, parse, "STUDY",
                          {"fuzzymatching": ["maybe"]})

    def test_malformed_values(self) -> None:
        """A value malformed for its VR, an unknown keyword or a malformed
        tag is refused, naming the parameter."""
        for bad in ({"StudyDate": ["2020x"]}, {"StudyTime": ["25:00"]},
                    {"StudyInstanceUID": ["1.2.abc"]}, {"NoSuchKeyword": ["x"]},
                    {"0010001": ["x"]}, {"NumberOfStudyRelatedInstances": ["many"]}):
            with self.assertRaises(qido.QueryParameterError) as caught:
                parse("STUDY", bad)
            self.assertIn(next(iter(bad)), str(caught.exception))

    def test_ranges_and_lists(self) -> None:
        """Date ranges with open ends, time ranges and UID lists are valid."""
        for good in ({"StudyDate": ["-20201231"]}, {"StudyDate": ["20200101-20201231"]},
                     {"StudyTime": ["0800-123000.5"]}, {"StudyInstanceUID": ["1.2\\1.3"]},
                     {"PatientName": ['""']}):
            parse("STUDY", good)

    def test_sequence_keys(self) -> None:
        """``{sequence}.{attribute}`` keys (tags or keywords) go into the
        sequence's one item; ``includefield`` adds an item key to return."""
        query = parse("SERIES", {"00400275.00401001": ["RP1"],
                                 "RequestAttributesSequence.AccessionNumber": ["A*"],
                                 "includefield": ["RequestAttributesSequence.StudyInstanceUID"]})
        self.assertEqual(query.warnings, [])
        [item] = query.identifier.RequestAttributesSequence
        self.assertEqual((item.RequestedProcedureID, item.AccessionNumber,
                          item.StudyInstanceUID), ("RP1", "A*", ""))

    def test_sequence_keys_refused_or_warned(self) -> None:
        """A sequence given a value itself, or nested two deep, is ignored
        with a Warning; a first part that is no sequence is a 400."""
        for args in ({"RequestAttributesSequence": ["X"]},
                     {"ReferencedStudySequence.ReferencedSOPSequence.ReferencedSOPInstanceUID":
                      ["1.2"]}):
            self.assertEqual(len(parse("SERIES", args).warnings), 1, args)
        with self.assertRaises(qido.QueryParameterError) as caught:
            parse("SERIES", {"PatientID.CodeValue": ["X"]})
        self.assertIn("not a sequence", str(caught.exception))
        with self.assertRaises(qido.QueryParameterError):
            parse("SERIES", {"RequestAttributesSequence.StudyInstanceUID": ["not a uid"]})


class RenderMatchesTests(SynchronousTestCase):
    """``qido.render_matches``: index rows as DICOM JSON."""

    def test_values_by_vr(self) -> None:
        """PN becomes component groups, IS and DS numbers, multiple values a
        list, empty values are left out, and the Retrieve URL is absolute."""
        keys = [(Tag("PatientName"), "PN"), (Tag("StudyInstanceUID"), "UI"),
                (Tag("NumberOfStudyRelatedInstances"), "IS"), (Tag("PatientWeight"), "DS"),
                (Tag("ModalitiesInStudy"), "CS"), (Tag("AccessionNumber"), "SH")]
        rows = [("Yamada^Tarou=山田^太郎=やまだ^たろう", "1.2.3", 4, "72.5", "CT\\MR", None)]
        [match] = json.loads(b"".join(qido.render_matches(keys, rows, "STUDY", "http://h/dw")))
        self.assertEqual(match["00100010"]["Value"], [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
             "Phonetic": "やまだ^たろう"}])
        self.assertEqual(match["00201208"], {"vr": "IS", "Value": [4]})
        self.assertEqual(match["00101030"], {"vr": "DS", "Value": [72.5]})
        self.assertEqual(match["00080061"], {"vr": "CS", "Value": ["CT", "MR"]})
        self.assertNotIn("00080050", match)
        self.assertEqual(match["00081190"], {"vr": "UR", "Value": ["http://h/dw/studies/1.2.3"]})
        self.assertEqual(match["00080005"], {"vr": "CS", "Value": ["ISO_IR 192"]})

    def test_sequence_items(self) -> None:
        """A kept sequence's items become DICOM JSON items (their keys with
        a value); no item leaves the sequence out."""
        code_value, meaning = Tag("CodeValue"), Tag("CodeMeaning")
        keys = [(Tag("ProcedureCodeSequence"), "SQ", ((code_value, "SH"), (meaning, "LO"))),
                (Tag("StudyInstanceUID"), "UI", ())]
        rows = [([("MR-KNEE", "MR knee"), ("CT-HEAD", None)], "1.2.3"), ([], "1.2.4")]
        first, second = json.loads(b"".join(qido.render_matches(keys, rows, "STUDY", "x")))
        self.assertEqual(first["00081032"], {"vr": "SQ", "Value": [
            {"00080100": {"vr": "SH", "Value": ["MR-KNEE"]},
             "00080104": {"vr": "LO", "Value": ["MR knee"]}},
            {"00080100": {"vr": "SH", "Value": ["CT-HEAD"]}}]})
        self.assertNotIn("00081032", second)

    def test_empty(self) -> None:
        """No rows is an empty JSON array."""
        self.assertEqual(b"".join(qido.render_matches([], [], "STUDY", "x")), b"[]")


class JsonRoundTripTests(SynchronousTestCase):
    """The metadata kept at ingest, read back by pydicom's ``from_json``."""

    def test_round_trip(self) -> None:
        """``Dataset.from_json`` of a file's kept metadata equals the file's
        data set, bulk data aside."""
        for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
            path = get_testdata_file(name)
            raw = open(path, "rb").read()
            original = dcmread(path)
            text = encode_metadata(memoryview(raw)[dataset_offset(raw):],
                                   original.file_meta.TransferSyntaxUID)
            model = Dataset.from_json(text.decode("utf-8"),
                                      bulk_data_uri_handler=lambda *args: None)
            binary = {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"}
            compared = 0
            for element in original:
                if element.tag.element == 0 or element.VR in binary:
                    continue
                self.assertEqual(model[element.tag].value, element.value,
                                 f"{name} {element.tag}")
                compared += 1
            self.assertGreater(compared, 20)
            self.assertEqual(len(model.get("BeamSequence", [])),
                             len(original.get("BeamSequence", [])))
