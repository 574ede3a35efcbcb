"""Tests for dicomtwist.keywords: every rule and example of keyword-pathing.md."""

from __future__ import annotations

import os
import tempfile

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.keywords import (
    KeywordError,
    apply_keyword,
    build_identifier,
    parse_path,
    read_query_file,
)


class KeywordExampleTests(SynchronousTestCase):
    """The examples of keyword-pathing.md, one test each."""

    def test_several_arguments_build_the_identifier(self) -> None:
        """Each -k adds one element; together they make the whole Identifier."""
        ds = build_identifier(["QueryRetrieveLevel=PATIENT", "PatientID=1234"])
        self.assertEqual(ds.QueryRetrieveLevel, "PATIENT")
        self.assertEqual(ds.PatientID, "1234")
        self.assertEqual(len(ds), 2)

    def test_later_argument_overrides(self) -> None:
        """A second -k for the same element replaces the first."""
        ds = build_identifier(["PatientID=1", "PatientID=2"])
        self.assertEqual(ds.PatientID, "2")

    def test_value_after_first_equals_is_literal(self) -> None:
        """Everything after the first '=' is the value, '=' included."""
        ds = build_identifier(["PatientID=a=b"])
        self.assertEqual(ds.PatientID, "a=b")

    def test_quotes_are_part_of_the_value(self) -> None:
        """PatientName="A" gives a value with quote characters."""
        ds = build_identifier(['PatientName="A"'])
        self.assertEqual(str(ds.PatientName), '"A"')

    def test_keyword(self) -> None:
        """An element can be named by its keyword."""
        ds = build_identifier(["PatientName=CITIZEN^Jan"])
        self.assertEqual(str(ds[0x00100010].value), "CITIZEN^Jan")

    def test_tag(self) -> None:
        """An element can be named by its (gggg,eeee) tag."""
        ds = build_identifier(["(0010,0010)=CITIZEN^Jan"])
        self.assertEqual(str(ds.PatientName), "CITIZEN^Jan")

    def test_tag_hex_is_case_insensitive(self) -> None:
        """Tag hex digits may be upper or lower case."""
        ds = build_identifier(["(300a,00B0)="])
        self.assertIn(0x300A00B0, ds)
        ds = build_identifier(["(300A,00b0)="])
        self.assertIn(0x300A00B0, ds)

    def test_empty_value_is_universal_matching(self) -> None:
        """PatientName= makes an element with no value."""
        ds = build_identifier(["PatientName="])
        self.assertIn("PatientName", ds)
        self.assertEqual(ds["PatientName"].VR, "PN")
        self.assertFalse(ds.PatientName)

    def test_empty_numeric_value(self) -> None:
        """An empty numeric element has no value (None)."""
        ds = build_identifier(["Rows="])
        self.assertIsNone(ds["Rows"].value)

    def test_numeric_vr_becomes_number(self) -> None:
        """Numeric VRs (US, FD, ...) become numbers."""
        ds = build_identifier(["Rows=512", "PatientWeight=70.5", "RescaleSlope=1.5",
                               "ReferencedFrameNumber=3"])
        self.assertEqual(ds.Rows, 512)
        self.assertIsInstance(ds["Rows"].value, int)
        self.assertEqual(ds.RescaleSlope, 1.5)

    def test_float_vr(self) -> None:
        """FL/FD values are floats."""
        ds = build_identifier(["(0018,9087)=2.5"])  # Diffusion b-value, FD
        self.assertEqual(ds[0x00189087].value, 2.5)
        self.assertEqual(ds[0x00189087].VR, "FD")

    def test_pixel_data_hex_is_ow(self) -> None:
        """PixelData=00FFEA08 gives the four bytes, as OW."""
        ds = build_identifier(["PixelData=00FFEA08"])
        self.assertEqual(ds.PixelData, b"\x00\xff\xea\x08")
        self.assertEqual(ds["PixelData"].VR, "OW")

    def test_ob_bytes(self) -> None:
        """An OB element is read as hex too."""
        ds = build_identifier(["(0028,7FE0)=0a0B"])  # Pixel Data Provider URL is UR: text
        self.assertEqual(ds[0x00287FE0].value, "0a0B")
        ds = build_identifier(["(0042,0011)=CAFE"])  # Encapsulated Document, OB
        self.assertEqual(ds[0x00420011].value, b"\xca\xfe")
        self.assertEqual(ds[0x00420011].VR, "OB")

    def test_text_vr_stays_string(self) -> None:
        """Text VRs stay strings, even when they look like numbers."""
        ds = build_identifier(["PatientID=0012"])
        self.assertEqual(ds.PatientID, "0012")

    def test_multiple_values(self) -> None:
        """AcquisitionIndex=1\\2\\3\\4 gives four values."""
        ds = build_identifier(["AcquisitionIndex=1\\2\\3\\4"])
        self.assertEqual(list(ds.AcquisitionIndex), [1, 2, 3, 4])

    def test_multiple_text_values(self) -> None:
        """A backslash separates text values too (a list of UIDs)."""
        ds = build_identifier(["StudyInstanceUID=1.2.3\\1.2.4"])
        self.assertEqual(list(ds.StudyInstanceUID), ["1.2.3", "1.2.4"])

    def test_empty_sequence(self) -> None:
        """BeamSequence= gives an empty sequence."""
        ds = build_identifier(["BeamSequence="])
        self.assertEqual(ds["BeamSequence"].VR, "SQ")
        self.assertEqual(len(ds.BeamSequence), 0)

    def test_sequence_one_empty_item(self) -> None:
        """BeamSequence[0]= gives one empty item."""
        ds = build_identifier(["BeamSequence[0]="])
        self.assertEqual(len(ds.BeamSequence), 1)
        self.assertEqual(len(ds.BeamSequence[0]), 0)

    def test_sequence_items_up_to_index(self) -> None:
        """BeamSequence[3]= gives four empty items."""
        ds = build_identifier(["BeamSequence[3]="])
        self.assertEqual(len(ds.BeamSequence), 4)
        self.assertTrue(all(len(item) == 0 for item in ds.BeamSequence))

    def test_element_inside_item(self) -> None:
        """BeamSequence[0].PatientName=CITIZEN^Jan sets an element inside item 0."""
        ds = build_identifier(["BeamSequence[0].PatientName=CITIZEN^Jan"])
        self.assertEqual(str(ds.BeamSequence[0].PatientName), "CITIZEN^Jan")

    def test_nested(self) -> None:
        """Nesting goes on, and the nested element is converted by its own VR."""
        ds = build_identifier(
            ["BeamSequence[0].BeamLimitingDeviceSequence[0].NumberOfLeafJawPairs=1"])
        element = ds.BeamSequence[0].BeamLimitingDeviceSequence[0]["NumberOfLeafJawPairs"]
        self.assertEqual(element.VR, "IS")
        self.assertEqual(element.value, 1)

    def test_nested_tags(self) -> None:
        """Tags work inside paths: (300a,00b0)[0].(300a,00b6)[0].(300a,00bc)=1."""
        ds = build_identifier(["(300a,00b0)[0].(300a,00b6)[0].(300a,00bc)=1"])
        self.assertEqual(ds.BeamSequence[0].BeamLimitingDeviceSequence[0].NumberOfLeafJawPairs, 1)

    def test_nested_numeric_vr(self) -> None:
        """A nested US element becomes a number."""
        ds = build_identifier(["ReferencedImageSequence[0].ReferencedFrameNumber=2",
                               "ReferencedImageSequence[0].(0028,0010)=5"])
        self.assertEqual(ds.ReferencedImageSequence[0].Rows, 5)
        self.assertIsInstance(ds.ReferencedImageSequence[0].Rows, int)

    def test_index_past_end_of_existing_sequence(self) -> None:
        """An index past the end of an existing sequence creates the missing items."""
        ds = build_identifier(["BeamSequence[0].PatientName=A", "BeamSequence[2].PatientName=C"])
        self.assertEqual(len(ds.BeamSequence), 3)
        self.assertEqual(str(ds.BeamSequence[0].PatientName), "A")
        self.assertEqual(len(ds.BeamSequence[1]), 0)
        self.assertEqual(str(ds.BeamSequence[2].PatientName), "C")

    def test_existing_items_kept(self) -> None:
        """Setting an element in item 0 keeps the item's other elements."""
        ds = build_identifier(["BeamSequence[0].PatientName=A", "BeamSequence[0].PatientID=1"])
        self.assertEqual(len(ds.BeamSequence), 1)
        self.assertEqual(ds.BeamSequence[0].PatientID, "1")
        self.assertEqual(str(ds.BeamSequence[0].PatientName), "A")

    def test_file_then_keywords(self) -> None:
        """With -f, each -k adds to or overwrites the file's elements."""
        base = Dataset()
        base.PatientID = "FROMFILE"
        base.PatientName = "File^Name"
        ds = build_identifier(["PatientID=OVERRIDE", "QueryRetrieveLevel=PATIENT"], base)
        self.assertEqual(ds.PatientID, "OVERRIDE")
        self.assertEqual(str(ds.PatientName), "File^Name")
        self.assertEqual(ds.QueryRetrieveLevel, "PATIENT")

    def test_file_sequence_extended(self) -> None:
        """A -k index past the end of a sequence read from a file adds items."""
        base = Dataset()
        base.BeamSequence = Sequence([Dataset()])
        base.BeamSequence[0].PatientID = "X"
        ds = build_identifier(["BeamSequence[1].PatientID=Y"], base)
        self.assertEqual([i.PatientID for i in ds.BeamSequence], ["X", "Y"])


class KeywordErrorTests(SynchronousTestCase):
    """Each error case: one KeywordError naming the argument."""

    def assert_error(self, argument: str, *fragments: str) -> KeywordError:
        """Building from ``argument`` raises a one-line KeywordError naming it."""
        with self.assertRaises(KeywordError) as caught:
            build_identifier([argument])
        message = str(caught.exception)
        self.assertIn(repr(argument), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertEqual(caught.exception.argument, argument)
        return caught.exception

    def test_unknown_keyword(self) -> None:
        """A keyword the dictionary does not know is an error."""
        self.assert_error("PatientNam=X", "unknown keyword")

    def test_keywords_are_case_sensitive(self) -> None:
        """patientname is not a keyword."""
        self.assert_error("patientname=X", "unknown keyword")

    def test_unknown_tag(self) -> None:
        """A tag not in the dictionary is an error."""
        self.assert_error("(0009,1001)=X", "not in the DICOM data dictionary")

    def test_malformed_tag(self) -> None:
        """A tag with the wrong number of digits is an error."""
        self.assert_error("(0010,001)=X", "not a keyword or a (gggg,eeee) tag")

    def test_unknown_keyword_inside_path(self) -> None:
        """A bad name deeper in a path is an error."""
        self.assert_error("BeamSequence[0].Nonsense=1", "unknown keyword 'Nonsense'")

    def test_negative_index(self) -> None:
        """An index that is negative is an error."""
        self.assert_error("BeamSequence[-1]=", "not a non-negative integer")

    def test_non_integer_index(self) -> None:
        """An index that is not an integer is an error."""
        self.assert_error("BeamSequence[a]=", "not a non-negative integer")
        self.assert_error("BeamSequence[]=", "not a non-negative integer")
        self.assert_error("BeamSequence[1.5]=", "not a non-negative integer")

    def test_unclosed_index(self) -> None:
        """An unclosed bracket is an error."""
        self.assert_error("BeamSequence[0=", "not a keyword")

    def test_index_on_non_sequence(self) -> None:
        """An index on an element that is not a sequence is an error."""
        self.assert_error("PatientName[0]=X", "not a sequence")

    def test_path_through_non_sequence(self) -> None:
        """A path through an element that is not a sequence is an error."""
        self.assert_error("PatientName.PatientID=X", "not a sequence")

    def test_sequence_without_index_in_path(self) -> None:
        """A sequence in the middle of a path needs an index."""
        self.assert_error("BeamSequence.PatientID=X", "BeamSequence[0]")

    def test_value_for_sequence(self) -> None:
        """A sequence or an item takes no value."""
        self.assert_error("BeamSequence=X", "takes no value")
        self.assert_error("BeamSequence[0]=X", "takes no value")

    def test_bad_integer(self) -> None:
        """A value that is not a number for a numeric VR is an error."""
        self.assert_error("Rows=abc", "not an integer", "US")
        self.assert_error("AcquisitionIndex=1\\x\\3", "not an integer")

    def test_integer_out_of_range(self) -> None:
        """A number out of the VR's range is an error."""
        self.assert_error("Rows=65536", "out of range")
        self.assert_error("Rows=-1", "out of range")

    def test_bad_float(self) -> None:
        """A value that is not a number for FD is an error."""
        self.assert_error("(0018,9087)=fast", "not a number")

    def test_bad_integer_string(self) -> None:
        """IS needs an integer."""
        self.assert_error("BeamSequence[0].BeamLimitingDeviceSequence[0]"
                          ".NumberOfLeafJawPairs=one", "integer string")

    def test_bad_decimal_string(self) -> None:
        """DS needs a decimal number."""
        self.assert_error("PatientWeight=heavy", "decimal string")

    def test_bad_hex(self) -> None:
        """Byte VRs need hex."""
        self.assert_error("PixelData=00FG", "not hex bytes")
        self.assert_error("PixelData=0", "not hex bytes")

    def test_bad_uid(self) -> None:
        """A UI value that is not a UID is an error."""
        self.assert_error("StudyInstanceUID=1.2.abc", "not a UID")

    def test_no_equals(self) -> None:
        """An argument without '=' is an error."""
        self.assert_error("PatientName", "PATH=VALUE")

    def test_no_path(self) -> None:
        """An argument with nothing before '=' is an error."""
        self.assert_error("=X", "no element")

    def test_apply_keyword_leaves_earlier_elements(self) -> None:
        """A failing argument does not undo the arguments before it."""
        ds = Dataset()
        apply_keyword(ds, "PatientID=1")
        self.assertRaises(KeywordError, apply_keyword, ds, "Rows=x")
        self.assertEqual(ds.PatientID, "1")


class PathAndFileTests(SynchronousTestCase):
    """parse_path and read_query_file."""

    def test_parse_path(self) -> None:
        """A path parses into tags, VRs and indices."""
        components = parse_path("x", "BeamSequence[2].(300a,00b6)[0].NumberOfLeafJawPairs")
        self.assertEqual([(c.tag, c.vr, c.index) for c in components],
                         [(0x300A00B0, "SQ", 2), (0x300A00B6, "SQ", 0),
                          (0x300A00BC, "IS", None)])

    def test_private_creator_is_lo(self) -> None:
        """A private creator tag is known, as LO."""
        ds = build_identifier(["(0009,0010)=ACME"])
        self.assertEqual(ds[0x00090010].VR, "LO")

    def test_read_query_file(self) -> None:
        """-f reads a DICOM file and drops its File Meta Information."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = "1.2.3"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
        fd, path = tempfile.mkstemp(suffix=".dcm")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        ds.save_as(path, enforce_file_format=True)
        read = read_query_file(path)
        self.assertEqual(read.QueryRetrieveLevel, "STUDY")
        self.assertEqual(read.StudyInstanceUID, "1.2.3")
        self.assertFalse(any(e.tag.group == 2 for e in read))

    def test_read_missing_file(self) -> None:
        """A missing -f file is an error naming the file."""
        with self.assertRaises(ValueError) as caught:
            read_query_file("/nonexistent/query.dcm")
        self.assertIn("/nonexistent/query.dcm", str(caught.exception))

    def test_read_garbage_file(self) -> None:
        """A -f file that is not DICOM is an error naming the file."""
        fd, path = tempfile.mkstemp(suffix=".dcm")
        os.write(fd, b"")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        with self.assertRaises(ValueError) as caught:
            read_query_file(path)
        self.assertIn(path, str(caught.exception))
