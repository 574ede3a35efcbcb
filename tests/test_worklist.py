"""Tests for dicomtwist.services.worklist: the Modality Worklist C-FIND SCP.

The matcher, the query check and the answers are tested rule by rule from
tables (each row: what, item, query, expected), then the worklist directory
(re-reading, caching, skipping) and the service through the archive's own
factory on in-memory associations.  The end-to-end comparison with DCMTK's
``wlmscpfs`` is in ``test_worklist_e2e``.
"""

from __future__ import annotations

import copy
import os
from datetime import date

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import config as configuration
from dicomtwist import tap
from dicomtwist.association import associate
from dicomtwist.services import worklist
from dicomtwist.services.worklist import (
    QueryError,
    WorklistDirectory,
    check_query,
    element_matches,
    incomplete,
    matches,
    parse_date,
    parse_time,
    response,
)
from dicomtwist.status import Status
from dicomtwist.storage.index import Index
from tests.helpers import connect_in_memory
from tests.test_store import InlinePool, InlineReactor
from tests.worklist_items import bad_items, code, extra_items, item, query, reference, write

WORKLIST_FIND = worklist.WORKLIST_FIND
DATE = "ScheduledProcedureStepStartDate"
TIME = "ScheduledProcedureStepStartTime"


def element(keyword: str, value) -> object:
    """A data element by keyword (from a throw-away data set)."""
    ds = Dataset()
    setattr(ds, keyword, value)
    return ds[keyword]


def checked(identifier: Dataset) -> Dataset:
    """The expanded mask of a valid query."""
    return check_query(identifier).mask


#: The item most rows match against.
ITEM = item(1, "SMITH^ANNA", "P1", "CT", ["CT01", "CT02"], "20240311", "081500",
            PatientBirthDate="19800101")


class ValueParsingTests(SynchronousTestCase):
    """DA and TM values."""

    def test_dates(self) -> None:
        """Dates parse as YYYYMMDD (and the old YYYY.MM.DD); others are None."""
        for text, expected in [("20240311", date(2024, 3, 11)), ("2024.03.11", date(2024, 3, 11)),
                               (" 20240311 ", date(2024, 3, 11)), ("20240230", None),
                               ("2024031", None), ("", None), ("x", None)]:
            self.assertEqual(parse_date(text), expected, text)

    def test_times(self) -> None:
        """Times parse as seconds since midnight, to the fraction."""
        for text, expected in [("08", 8 * 3600), ("0815", 8 * 3600 + 900),
                               ("081530", 8 * 3600 + 930), ("081530.25", 8 * 3600 + 930.25),
                               ("08:15:30", 8 * 3600 + 930), ("2400", None), ("0860", None),
                               ("8", None), ("", None)]:
            self.assertEqual(parse_time(text), expected, text)


class ElementMatchingTests(SynchronousTestCase):
    """One key against one element (PS3.4 C.2.2.2)."""

    #: (what, keyword, query value, item value or None (absent), wildcards, matches)
    ROWS = [
        ("universal: empty", "PatientName", "", "SMITH^ANNA", True, True),
        ("universal: absent in the item", "ReferringPhysicianName", "", None, True, True),
        ("universal: only asterisks", "PatientName", "**", None, True, True),
        ("universal '*' without wildcards", "PatientID", "*", "P1", False, True),
        ("single value", "PatientID", "P1", "P1", False, True),
        ("single value differs", "PatientID", "P2", "P1", False, False),
        ("single value is case-sensitive", "PatientName", "smith^anna", "SMITH^ANNA", True, False),
        ("no wildcards for Patient ID", "PatientID", "P*", "P1", False, False),
        ("wildcard *", "PatientName", "SMITH*", "SMITH^ANNA", True, True),
        ("wildcard * inside", "PatientName", "S*ANNA", "SMITH^ANNA", True, True),
        ("wildcard ?", "PatientName", "SMITH?ANNA", "SMITH^ANNA", True, True),
        ("wildcard ? is one character", "PatientName", "SMIT?", "SMITH^ANNA", True, False),
        ("no component matching", "PatientName", "SMITH", "SMITH^ANNA", True, False),
        ("regex characters are literal", "AccessionNumber", "A.C", "ABC", True, False),
        ("surrounding spaces do not count", "RequestedProcedureID", "RP1 ", "RP1", True, True),
        ("a value needs the element", "PatientSex", "F", None, True, False),
        ("an empty element matches no value", "PatientSex", "F", "", True, False),
        ("any query value", "PatientName", ["JONES*", "SMITH*"], "SMITH^ANNA", True, True),
        ("any item value", "ScheduledStationAETitle", "CT02", ["CT01", "CT02"], False, True),
        ("date single value", "PatientBirthDate", "19800101", "19800101", True, True),
        ("date range", "PatientBirthDate", "19790101-19801231", "19800101", True, True),
        ("date range bounds included", "PatientBirthDate", "19800101-19800101", "19800101",
         True, True),
        ("date open end", "PatientBirthDate", "19800102-", "19800101", True, False),
        ("date open start", "PatientBirthDate", "-19800101", "19800101", True, True),
        ("date not parsable in the item", "PatientBirthDate", "19800101-", "1980", True, False),
        ("time range", "StudyTime", "0800-0900", "081500", True, True),
        ("time single value to the second", "StudyTime", "0815", "081500", True, True),
        ("time fraction", "StudyTime", "081500.5-", "081500", True, False),
    ]

    def test_rows(self) -> None:
        """Each row's key matches (or not) as the row says."""
        for what, keyword, wanted, value, wildcards, expected in self.ROWS:
            candidate = None if value is None else element(keyword, value)
            self.assertEqual(element_matches(element(keyword, wanted), candidate, wildcards),
                             expected, what)


class DateTimeMatchingTests(SynchronousTestCase):
    """Scheduled Procedure Step Start Date and Time, matched together."""

    #: (what, date query or None, time query or None, matches 20240311 081500)
    ROWS = [
        ("date alone", "20240311", None, True),
        ("other date", "20240312", None, False),
        ("date with empty time", "20240311", "", True),
        ("date and time: one instant", "20240311", "0815", True),
        ("date and other time", "20240311", "0816", False),
        ("single date, time range: each on its own", "20240311", "0800-0900", True),
        ("single date, time range missed", "20240311", "0900-1000", False),
        ("date range alone includes its last day", "20240301-20240311", None, True),
        ("date range and empty time", "20240301-20240311", "", True),
        ("both ranges: one date-time range", "20240310-20240311", "1200-0900", True),
        ("both ranges: before the start", "20240311-20240312", "0900-1000", False),
        ("both ranges: after the end", "20240301-20240311", "0000-0800", False),
        ("date range, missing end time is midnight", "20240301-20240311", "0700-", False),
        ("date range, missing start time is midnight", "20240311-20240312", "-0700", True),
        ("open date ranges alike", "20240311-", "0800-", True),
        ("open date ranges alike, missed", "-20240311", "-0800", False),
        ("open date, time bound on the open side: each on its own", "20240101-", "-0900",
         True),
        ("open date, time bound on the open side, missed", "20240101-", "-0800", False),
        ("date range, single time: each on its own", "20240101-20241231", "081500", True),
        ("time alone", None, "0800-0830", True),
        ("time alone, missed", None, "0830-", False),
        ("empty date, time", "", "0830-", False),
    ]

    def test_rows(self) -> None:
        """Each row matches (or not) the item scheduled at 20240311 081500."""
        for what, wanted_date, wanted_time, expected in self.ROWS:
            step = {}
            if wanted_date is not None:
                step[DATE] = wanted_date
            if wanted_time is not None:
                step[TIME] = wanted_time
            mask = checked(query({"PatientName": ""}, step))
            self.assertEqual(matches(ITEM, mask), expected, what)


class DatasetMatchingTests(SynchronousTestCase):
    """Whole queries against whole items."""

    #: (what, top-level keys, step keys or None, matches ITEM)
    ROWS = [
        ("no keys", {}, None, True),
        ("patient name", {"PatientName": "SMITH*"}, None, True),
        ("patient name and ID, one wrong", {"PatientName": "SMITH*", "PatientID": "P2"}, None,
         False),
        ("modality", {}, {"Modality": "CT"}, True),
        ("other modality", {}, {"Modality": "MR"}, False),
        ("no wildcards for Modality", {}, {"Modality": "C*"}, False),
        ("station", {}, {"ScheduledStationAETitle": "CT02"}, True),
        ("other station", {}, {"ScheduledStationAETitle": "MR01"}, False),
        ("performing physician with wildcards", {},
         {"ScheduledPerformingPhysicianName": "WHO*"}, True),
        ("every step key must match", {}, {"Modality": "CT", "ScheduledStationAETitle": "X"},
         False),
        ("return keys do not match", {"StudyInstanceUID": "9.9", "MedicalAlerts": "X"},
         {"ScheduledStationName": "NOWHERE"}, True),
        ("empty step item: universal", {}, {}, True),
        ("accession with ?", {"AccessionNumber": "X000?"}, None, True),
        ("birth date range", {"PatientBirthDate": "-19791231"}, None, False),
        ("study date needs the element", {"StudyDate": "20240311"}, None, False),
        ("priority", {"RequestedProcedurePriority": "ROUT*"}, None, True),
    ]

    def test_rows(self) -> None:
        """Each row's query matches (or not) :data:`ITEM`."""
        for what, top, step, expected in self.ROWS:
            mask = checked(query(top, step, empty_step=step == {}))
            self.assertEqual(matches(ITEM, mask), expected, what)

    def test_any_step_item(self) -> None:
        """An item with several scheduled steps matches on any one of them."""
        two = copy.deepcopy(ITEM)
        second = Dataset()
        second.Modality = "MR"
        second.ScheduledStationAETitle = "MR01"
        two.ScheduledProcedureStepSequence = Sequence(
            [ITEM.ScheduledProcedureStepSequence[0], second])
        self.assertTrue(matches(two, checked(query({}, {"Modality": "MR"}))))
        self.assertFalse(matches(two, checked(query({}, {"Modality": "US"}))))


class QueryCheckTests(SynchronousTestCase):
    """Checking and expanding a query (as ``wlmscpfs`` does)."""

    def test_empty_step_expanded(self) -> None:
        """An empty Scheduled Procedure Step item asks for every step key,
        with an expanded Scheduled Protocol Code Sequence."""
        mask = checked(query({"PatientName": ""}, {}))
        step = mask.ScheduledProcedureStepSequence[0]
        self.assertEqual(sorted(e.keyword for e in step), sorted([
            "Modality", "RequestedContrastAgent", "ScheduledStationAETitle",
            "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
            "ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime",
            "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
            "ScheduledProtocolCodeSequence", "ScheduledProcedureStepID", "ScheduledStationName",
            "ScheduledProcedureStepLocation", "PreMedication", "ScheduledProcedureStepStatus",
            "CommentsOnTheScheduledProcedureStep"]))
        self.assertEqual(sorted(e.keyword for e in step.ScheduledProtocolCodeSequence[0]),
                         ["CodeMeaning", "CodeValue", "CodingSchemeDesignator",
                          "CodingSchemeVersion"])
        self.assertTrue(all(not e.value for e in step if e.VR != "SQ"))

    def test_sequence_without_item_expanded(self) -> None:
        """A sequence with no item is expanded as one with an empty item."""
        ds = query({"ReferencedStudySequence": []})
        mask = checked(ds)
        self.assertEqual(sorted(e.keyword for e in mask.ReferencedStudySequence[0]),
                         ["ReferencedSOPClassUID", "ReferencedSOPInstanceUID"])

    def test_unsupported_keys_left_out(self) -> None:
        """Keys neither matching nor return keys are left out and flagged
        (0xFF01); the Specific Character Set is left out silently."""
        ds = query({"PatientName": "", "StudyDescription": "",
                    "SpecificCharacterSet": "ISO_IR 100"},
                   {"Modality": "", "ReferencedStudySequence": []})
        result = check_query(ds)
        self.assertTrue(result.unsupported)
        self.assertEqual([e.keyword for e in result.mask], ["PatientName",
                                                           "ScheduledProcedureStepSequence"])
        self.assertEqual([e.keyword for e in result.mask.ScheduledProcedureStepSequence[0]],
                         ["Modality"])
        plain = check_query(query({"PatientName": "", "SpecificCharacterSet": "ISO_IR 100"}))
        self.assertFalse(plain.unsupported)

    def test_group_length_dropped(self) -> None:
        """Group lengths are not keys."""
        ds = query({"PatientName": ""})
        ds.add_new(0x00100000, "UL", 10)
        result = check_query(ds)
        self.assertFalse(result.unsupported)
        self.assertEqual([e.keyword for e in result.mask], ["PatientName"])

    #: (what, top keys, step keys, error comment)
    INVALID = [
        ("backslash in a CS key", {}, {"Modality": "CT\\MR"},
         "Invalid Character Repertoire for datatype CS"),
        ("lower case in a CS key", {"PatientSex": "f"}, None,
         "Invalid Character Repertoire for datatype CS"),
        ("date", {"PatientBirthDate": "2024"}, None, "Invalid value for an attribute with VR=DA"),
        ("open range both sides", {"PatientBirthDate": "-"}, None,
         "Invalid value for an attribute with VR=DA"),
        ("time", {}, {TIME: "25"}, "Invalid value for an attribute with VR=TM"),
        ("tilde in a PN key without a character set", {"PatientName": "A~"}, None,
         "Invalid Character Repertoire for datatype PN"),
        ("two problems", {"PatientBirthDate": "x"}, {TIME: "x"},
         "Syntax error in 1 or more matching keys"),
    ]

    def test_invalid_queries(self) -> None:
        """Invalid matching keys fail the query with 0xA900 and a comment."""
        for what, top, step, comment in self.INVALID:
            with self.assertRaises(QueryError, msg=what) as caught:
                check_query(query(top, step))
            self.assertEqual(caught.exception.status, Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
            self.assertEqual(caught.exception.comment, comment, what)

    def test_two_step_items(self) -> None:
        """A sequence with two items is an error."""
        ds = query({}, {"Modality": ""})
        ds.ScheduledProcedureStepSequence.append(Dataset())
        with self.assertRaises(QueryError) as caught:
            check_query(ds)
        self.assertEqual(caught.exception.comment, "More than 1 item in sequence.")

    def test_character_set_allows_text(self) -> None:
        """With a Specific Character Set, PN, LO and SH keys take any text."""
        check_query(query({"PatientName": "Müller*", "SpecificCharacterSet": "ISO_IR 100"}))
        with self.assertRaises(QueryError):
            check_query(query({"PatientName": "Müller*"}))

    def test_return_key_values_not_checked(self) -> None:
        """Values of return keys are not checked (they are overwritten)."""
        check_query(query({"StudyInstanceUID": "not a uid ~"}))


class ResponseTests(SynchronousTestCase):
    """The answers: the query's keys, filled from the item."""

    def test_requested_keys_only(self) -> None:
        """An answer holds the requested keys with the item's values, and
        the item's Specific Character Set."""
        answer = response(ITEM, checked(query({"PatientName": "", "PatientID": "",
                                                "AdmissionID": ""}, {"Modality": ""})))
        self.assertEqual(sorted(e.keyword for e in answer),
                         ["AdmissionID", "PatientID", "PatientName",
                          "ScheduledProcedureStepSequence", "SpecificCharacterSet"])
        self.assertEqual(str(answer.PatientName), "SMITH^ANNA")
        self.assertIn(answer.AdmissionID, ("", None))
        self.assertEqual(answer.SpecificCharacterSet, "ISO_IR 100")
        self.assertEqual([e.keyword for e in answer.ScheduledProcedureStepSequence[0]],
                         ["Modality"])
        self.assertEqual(answer.ScheduledProcedureStepSequence[0].Modality, "CT")

    def test_no_character_set_without_text(self) -> None:
        """An answer without text carries no Specific Character Set."""
        answer = response(ITEM, checked(query({"StudyInstanceUID": ""})))
        self.assertEqual([e.keyword for e in answer], ["StudyInstanceUID"])

    def test_multi_valued(self) -> None:
        """Multi-valued elements come back whole."""
        answer = response(ITEM, checked(query({}, {"ScheduledStationAETitle": "CT02"})))
        self.assertEqual(list(answer.ScheduledProcedureStepSequence[0].ScheduledStationAETitle),
                         ["CT01", "CT02"])

    def test_empty_step_answer(self) -> None:
        """An empty step item is answered with every step key; an empty
        protocol code item is left out, a description is kept."""
        answer = response(ITEM, checked(query({}, {})))
        step = answer.ScheduledProcedureStepSequence[0]
        self.assertNotIn("ScheduledProtocolCodeSequence", step)
        self.assertEqual(step.ScheduledProcedureStepDescription, "PROCEDURE")
        self.assertEqual(step.ScheduledStationName, "STATION1")
        self.assertIn(step.ScheduledProcedureStepStatus, ("", None))

    def test_codes_instead_of_empty_description(self) -> None:
        """With a protocol code and no description, the code is answered
        and the empty description is left out."""
        coded = item(2, "A^B", "P2", "CT", "CT01", "20240311", "080000", description=None,
                     protocol=code("P2", "99LOCAL", "CT CHEST"))
        step = response(coded, checked(query({}, {}))).ScheduledProcedureStepSequence[0]
        self.assertNotIn("ScheduledProcedureStepDescription", step)
        self.assertEqual([(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning,
                           c.CodingSchemeVersion or "")
                          for c in step.ScheduledProtocolCodeSequence],
                         [("P2", "99LOCAL", "CT CHEST", "")])

    def test_references(self) -> None:
        """Referenced studies are answered per item; an empty reference
        item (none in the item) leaves an empty sequence."""
        mask = checked(query({"ReferencedStudySequence": []}))
        with_refs = item(3, "A^B", "P3", "CT", "CT01", "20240311", "080000",
                         references=[reference(3), reference(4)])
        answer = response(with_refs, mask)
        self.assertEqual([r.ReferencedSOPInstanceUID for r in answer.ReferencedStudySequence],
                         [reference(3).ReferencedSOPInstanceUID,
                          reference(4).ReferencedSOPInstanceUID])
        self.assertEqual(len(response(ITEM, mask).ReferencedStudySequence), 0)

    def test_pregnancy_status_unknown(self) -> None:
        """Pregnancy Status absent from the item is answered as 4 (unknown)."""
        mask = checked(query({"PregnancyStatus": None}))
        self.assertEqual(response(ITEM, mask).PregnancyStatus, 4)
        pregnant = copy.deepcopy(ITEM)
        pregnant.PregnancyStatus = 2
        self.assertEqual(response(pregnant, mask).PregnancyStatus, 2)

    def test_items_are_not_changed(self) -> None:
        """Answering leaves the cached item as it was."""
        before = ITEM.to_json()
        response(ITEM, checked(query({"PatientName": ""}, {})))
        self.assertEqual(ITEM.to_json(), before)


class CompletenessTests(SynchronousTestCase):
    """Items without what every answer must carry are not answered."""

    def test_complete(self) -> None:
        """The test items are complete."""
        for name, ds in extra_items().items():
            self.assertIsNone(incomplete(ds), name)

    def test_incomplete(self) -> None:
        """Each row's item is incomplete, for the reason given."""
        no_step = copy.deepcopy(ITEM)
        del no_step.ScheduledProcedureStepSequence
        two_steps = copy.deepcopy(ITEM)
        two_steps.ScheduledProcedureStepSequence = Sequence([Dataset(), Dataset()])
        no_modality = item(2, "A^B", "P", "", "CT01", "20240311", "080000")
        no_description = item(2, "A^B", "P", "CT", "CT01", "20240311", "080000",
                              description=None)
        empty_codes = item(2, "A^B", "P", "CT", "CT01", "20240311", "080000",
                           protocol=Dataset())
        bad_reference = item(2, "A^B", "P", "CT", "CT01", "20240311", "080000",
                             references=[Dataset()])
        rows = [(no_step, "exactly one item"), (two_steps, "exactly one item"),
                (no_modality, "Modality is missing or empty"),
                (no_description, "neither (0040,0007) nor its code sequence"),
                (empty_codes, "incomplete code"), (bad_reference, "no references"),
                *((ds, "") for ds in bad_items().values())]
        for ds, reason in rows:
            problem = incomplete(ds)
            self.assertIsNotNone(problem)
            self.assertIn(reason, problem)


class DirectoryTests(SynchronousTestCase):
    """Reading the worklist directory."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        os.makedirs(self.path)
        self.directory = WorklistDirectory(self.path)
        self.reads: list[str] = []
        original = worklist.read_item

        def counting(path: str) -> Dataset:
            self.reads.append(os.path.basename(path))
            return original(path)

        self.patch(worklist, "read_item", counting)

    def write(self, name: str, ds: Dataset, implicit: bool = False) -> None:
        """Write an item into the directory."""
        write(ds, os.path.join(self.path, name), implicit)

    def names(self) -> list[str]:
        """The file names of the items read now (and no problems)."""
        items, problems = self.directory.items()
        self.assertEqual(problems, [])
        return [name for name, _ in items]

    def test_only_wl_files(self) -> None:
        """Only ``*.wl`` files are items: not the lockfile, ``*.dcm``,
        ``*.wl.tmp`` nor directories."""
        self.write("a.wl", ITEM)
        self.write("b.dcm", ITEM)
        self.write("c.wl.tmp", ITEM)
        os.makedirs(os.path.join(self.path, "d.wl"))
        open(os.path.join(self.path, "lockfile"), "w").close()
        self.assertEqual(self.names(), ["a.wl"])

    def test_unchanged_files_not_parsed_again(self) -> None:
        """A second read parses nothing; a changed file is parsed again,
        a new one read and a removed one forgotten."""
        self.write("a.wl", ITEM)
        self.write("b.wl", ITEM, implicit=True)
        self.assertEqual(self.names(), ["a.wl", "b.wl"])
        self.assertEqual(sorted(self.reads), ["a.wl", "b.wl"])
        del self.reads[:]
        self.assertEqual(self.names(), ["a.wl", "b.wl"])
        self.assertEqual(self.reads, [])
        changed = copy.deepcopy(ITEM)
        changed.PatientID = "CHANGED-ID"
        self.write("a.wl", changed)
        os.utime(os.path.join(self.path, "a.wl"), ns=(1, 1))
        self.write("c.wl", ITEM)
        os.unlink(os.path.join(self.path, "b.wl"))
        items, _ = self.directory.items()
        self.assertEqual([(n, ds.PatientID) for n, ds in items],
                         [("a.wl", "CHANGED-ID"), ("c.wl", "P1")])
        self.assertEqual(sorted(self.reads), ["a.wl", "c.wl"])

    def test_bad_files_reported_once(self) -> None:
        """Corrupt, truncated and incomplete files are skipped and reported
        once per version; the others are still items."""
        self.write("good.wl", ITEM)
        with open(os.path.join(self.path, "garbage.wl"), "wb") as fp:
            fp.write(b"\x00\x01garbage" * 10)
        self.write("truncated.wl", ITEM)
        path = os.path.join(self.path, "truncated.wl")
        with open(path, "rb+") as fp:
            fp.truncate(os.path.getsize(path) - 7)
        for name, ds in bad_items().items():
            self.write(name, ds)
        items, problems = self.directory.items()
        self.assertEqual([name for name, _ in items], ["good.wl"])
        self.assertEqual(sorted(name for name, _ in problems),
                         ["garbage.wl", "no-patient-id.wl", "no-step.wl", "truncated.wl"])
        self.assertIn("is incomplete", dict(problems)["no-step.wl"])
        self.assertIn("cannot be read", dict(problems)["truncated.wl"])
        # Unchanged: not reported again, nor parsed again.
        del self.reads[:]
        self.assertEqual(self.names(), ["good.wl"])
        self.assertEqual(self.reads, [])
        # Fixed: an item again.
        self.write("no-step.wl", ITEM)
        self.assertEqual(self.names(), ["good.wl", "no-step.wl"])

    def test_write_lock_waited_for(self) -> None:
        """A writer's lock on DCMTK's ``lockfile`` is waited for, boundedly:
        past the wait the items are read anyway and the lock reported."""
        import subprocess
        import sys

        self.write("a.wl", ITEM)
        lockfile = os.path.join(self.path, "lockfile")
        open(lockfile, "w").close()
        self.assertEqual(self.names(), ["a.wl"])
        writer = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'r+');"
             " fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True);"
             " sys.stdin.read()", lockfile],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(writer.wait)
        self.addCleanup(writer.stdin.close)
        self.assertEqual(writer.stdout.readline().strip(), "locked")
        self.patch(worklist, "LOCK_WAIT", 0.1)
        items, problems = self.directory.items()
        self.assertEqual([name for name, _ in items], ["a.wl"])
        self.assertEqual([name for name, _ in problems], ["lockfile"])
        writer.stdin.close()
        writer.wait()
        self.assertEqual(self.names(), ["a.wl"])

    def test_missing_directory(self) -> None:
        """A directory that went away is an OSError for the caller."""
        os.rmdir(self.path)
        self.assertRaises(OSError, self.directory.items)


class ServiceTests(SynchronousTestCase):
    """The worklist through the archive's factory, in memory."""

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.path = os.path.join(base, "worklist")
        os.makedirs(self.path)
        for name, ds in {**extra_items(), **bad_items()}.items():
            write(ds, os.path.join(self.path, name))
        self.index = Index(os.path.join(base, "index.sqlite"))
        self.addCleanup(self.index.close)
        self.settings = configuration.Config(
            instance_location=os.path.join(base, "instances"),
            database_location=os.path.join(base, "index.sqlite"),
            worklist_location=self.path)
        self.reactor = InlineReactor()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.factory = tap.build_factory(self.settings, self.reactor, InlinePool(), self.index)

    def find(self, identifier: Dataset, settings=None,
             syntax: str = ExplicitVRLittleEndian) -> list:
        """C-FIND on the worklist; returns ``[(status, identifier), ...]``."""
        factory = self.factory if settings is None else tap.build_factory(
            settings, self.reactor, InlinePool(), self.index)
        d = associate(self.reactor, "127.0.0.1", 11112,
                      contexts=[(WORKLIST_FIND, [syntax])],
                      called_ae_title="QRSCP", calling_ae_title="MODALITY")
        client, _, pump = connect_in_memory(self.reactor, factory)
        self.successResultOf(d)
        found = client.find(identifier, WORKLIST_FIND)
        pump.flush()
        responses = self.successResultOf(found)
        release = client.release()
        pump.flush()
        self.successResultOf(release)
        return [(rsp.status, ds) for rsp, ds in responses]

    def warnings(self) -> list[str]:
        """The worklist's warnings logged so far."""
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events
                if e.get("log_namespace", "").startswith("dicomtwist.services.worklist")]

    def test_answers(self) -> None:
        """Each matching item is one pending answer, then Success; the bad
        files are skipped with one warning each."""
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            responses = self.find(query({"PatientName": "", "PatientID": ""},
                                        {"Modality": "CT"}), syntax=syntax)
            self.assertEqual([status for status, _ in responses],
                             [Status.PENDING, Status.PENDING, Status.SUCCESS])
            self.assertEqual(sorted(ds.PatientID for _, ds in responses[:-1]), ["P1", "P2"])
        skipped = [w for w in self.warnings() if "skipped" in w]
        self.assertEqual(len(skipped), 2, skipped)
        self.assertTrue(any("no-step.wl" in w for w in skipped))

    def test_latin1_answer(self) -> None:
        """An item in ISO_IR 100 is answered in it, with its character set."""
        responses = self.find(query({"PatientName": "Müller*", "SpecificCharacterSet":
                                     "ISO_IR 100"}))
        self.assertEqual([str(ds.PatientName) for _, ds in responses[:-1]], ["Müller^Jürgen"])
        self.assertEqual(responses[0][1].SpecificCharacterSet, "ISO_IR 100")

    def test_unsupported_key_warning_status(self) -> None:
        """Answers to a query with an unsupported key are 0xFF01."""
        responses = self.find(query({"PatientID": "P3", "StudyDescription": ""}))
        self.assertEqual([status for status, _ in responses],
                         [Status.PENDING_WARNING, Status.SUCCESS])
        self.assertNotIn("StudyDescription", responses[0][1])

    def test_invalid_query(self) -> None:
        """An invalid query is answered 0xA900."""
        responses = self.find(query({}, {"Modality": "ct"}))
        self.assertEqual(responses, [(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None)])

    def test_changes_seen(self) -> None:
        """A file added after a query is answered by the next one."""
        wanted = query({"PatientID": "NEW"})
        self.assertEqual(len(self.find(wanted)), 1)
        write(item(7, "NEW^ONE", "NEW", "CT", "CT01", "20240311", "080000"),
              os.path.join(self.path, "new.wl"))
        self.assertEqual([ds.PatientID for _, ds in self.find(wanted)[:-1]], ["NEW"])

    def test_directory_gone(self) -> None:
        """A worklist directory that cannot be read is 0xC001, logged."""
        for name in os.listdir(self.path):
            os.unlink(os.path.join(self.path, name))
        os.rmdir(self.path)
        self.assertEqual(self.find(query({"PatientID": ""})),
                         [(Status.UNABLE_TO_PROCESS, None)])
        self.assertTrue(any("cannot be read" in w for w in self.warnings()))

    def test_query_published(self) -> None:
        """A worklist C-FIND publishes QueryPerformed (audit trail, metrics)
        with the identifier as received and the number of answers."""
        from dicomtwist import events

        seen: list = []
        self.addCleanup(events.bus.subscribe(seen.append))
        self.find(query({"PatientID": "P3"}))
        self.find(query({}, {"Modality": "ct"}))
        performed = [e for e in seen if isinstance(e, events.QueryPerformed)]
        self.assertEqual([(e.via, e.calling_ae, e.sop_class_uid, e.matches, e.status)
                          for e in performed],
                         [("dimse", "MODALITY", WORKLIST_FIND, 1, Status.SUCCESS),
                          ("dimse", "MODALITY", WORKLIST_FIND, 0,
                           Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)])
        self.assertIn(b"P3", performed[0].query)

    def test_without_worklist_location(self) -> None:
        """Without a worklist directory the worklist answers no records."""
        settings = configuration.Config(instance_location=self.settings.instance_location,
                                        database_location=self.settings.database_location)
        self.assertEqual(self.find(query({"PatientID": ""}), settings=settings),
                         [(Status.SUCCESS, None)])


class OptionTests(SynchronousTestCase):
    """``--worklist-location`` and the ``worklist_location`` key."""

    def test_option(self) -> None:
        """The option names a directory, made absolute."""
        path = self.mktemp()
        os.makedirs(path)
        options = tap.Options()
        options.parseOptions(["--worklist-location", path])
        self.assertEqual(options["settings"].worklist_location, os.path.abspath(path))

    def test_config_key(self) -> None:
        """The config key names it too; default none."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        config = self.mktemp()
        with open(config, "w") as fp:
            fp.write(f"[DEFAULT]\nworklist_location: {path}\n")
        self.assertEqual(configuration.load(config).worklist_location, path)
        self.assertIsNone(configuration.Config().worklist_location)

    def test_not_a_directory(self) -> None:
        """A worklist location that is no directory is a UsageError naming it."""
        options = tap.Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--worklist-location", "/nonexistent/worklist"])
        self.assertIn("worklist_location", str(caught.exception))
        self.assertIn("/nonexistent/worklist", str(caught.exception))
