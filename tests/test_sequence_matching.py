"""Tests for sequence matching (PS3.4 C.2.2.2.6), combined date-time
matching (C.2.2.2.5.1), relational queries and
retrievals (PS3.4 C.4.1.2.2, C.4.2.2.1) and unsupported keys in the index,
on both backends (:func:`tests.backends.both`)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.filewriter import write_dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.storage.header import scan
from dicomtwist.storage.index import INDEXED_TAGS, SCHEMA_VERSION, SEQUENCES, QueryError
from tests.backends import both
from tests.test_index import IndexTestCase, instance, query

STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.2"


def item(**keys) -> Dataset:
    """One sequence item with the given keys."""
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def sequences_archive(index) -> None:
    """Study 1.1 (two procedure codes, one referenced study; series 1.1.1
    with request attributes RP1), study 2.1 (one procedure code; series
    2.1.1 with RP2 and series 2.1.2 with RP3), study 3.1 (no sequences)."""
    index.add(instance(
        "1.1.1.1", ProcedureCodeSequence=[
            item(CodeValue="CT-HEAD", CodingSchemeDesignator="LOCAL", CodeMeaning="CT head"),
            item(CodeValue="CT-NECK", CodingSchemeDesignator="LOCAL")],
        ReferencedStudySequence=[item(ReferencedSOPClassUID=STUDY_COMPONENT,
                                      ReferencedSOPInstanceUID="9.9.1")],
        RequestAttributesSequence=[item(RequestedProcedureID="RP1",
                                        ScheduledProcedureStepID="SPS1",
                                        AccessionNumber="A1")]),
        "1.dcm", ExplicitVRLittleEndian, 1)
    index.add(instance(
        "2.1.1.1", series="2.1.1", study="2.1", patient="P2",
        ProcedureCodeSequence=[item(CodeValue="MR-KNEE", CodingSchemeDesignator="DCM",
                                    CodeMeaning="MR knee")],
        RequestAttributesSequence=[item(RequestedProcedureID="RP2",
                                        ScheduledProcedureStepID="SPS2")]),
        "2.dcm", ExplicitVRLittleEndian, 1)
    index.add(instance(
        "2.1.2.1", series="2.1.2", study="2.1", patient="P2",
        RequestAttributesSequence=[item(RequestedProcedureID="RP3",
                                        RequestedProcedureDescription="Knee left")]),
        "3.dcm", ExplicitVRLittleEndian, 1)
    index.add(instance("3.1.1.1", series="3.1.1", study="3.1", patient="P3"),
              "4.dcm", ExplicitVRLittleEndian, 1)


def items_of(response: Dataset, keyword: str) -> list[dict[str, str]]:
    """The items of a response's sequence as ``{keyword: value}``."""
    return [{e.keyword: str(e.value) if e.VR != "SQ" else len(e.value) for e in i}
            for i in response[keyword].value]


class SequenceMatchingTests(IndexTestCase):
    """Sequence matching: one item of keys, matched against each item."""

    def setUp(self):
        super().setUp()
        sequences_archive(self.index)

    def answers(self, level: str, keyword: str, items: list[Dataset], model: str = "STUDY",
                **keys) -> dict[str, list[dict[str, str]]]:
        """The responses as ``{unique key: items of the sequence}``."""
        unique = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID"}[level]
        identifier = query(level, **keys)
        setattr(identifier, keyword, items)
        return {str(r[unique].value): items_of(r, keyword)
                for r in self.index.find(identifier, model)}


def _case(name: str, level: str, keyword: str, keys: dict | None, expected: dict,
          **others):
    def test(self):
        items = [] if keys is None else [item(**keys)]
        self.assertEqual(self.answers(level, keyword, items, **others), expected)
    test.__name__ = f"test_{name}"
    test.__doc__ = f"Sequence matching: {name.replace('_', ' ')}."
    setattr(SequenceMatchingTests, test.__name__, test)


HEAD = {"CodeValue": "CT-HEAD"}
#: name, level, sequence, query item keys (None: no item), expected.
for _name, _level, _keyword, _keys, _expected, _others in [
    ("single_value", "STUDY", "ProcedureCodeSequence", {"CodeValue": "CT-HEAD"},
     {"1.1": [HEAD]}, {}),
    ("single_value_is_case_sensitive", "STUDY", "ProcedureCodeSequence",
     {"CodeValue": "ct-head"}, {}, {}),
    ("wild_card_returns_the_matching_items", "STUDY", "ProcedureCodeSequence",
     {"CodeValue": "CT*"}, {"1.1": [HEAD, {"CodeValue": "CT-NECK"}]}, {}),
    ("keys_match_within_one_item", "STUDY", "ProcedureCodeSequence",
     {"CodeValue": "CT-NECK", "CodeMeaning": "CT head"}, {}, {}),
    ("two_keys_of_one_item", "STUDY", "ProcedureCodeSequence",
     {"CodeValue": "CT-HEAD", "CodeMeaning": "CT*"},
     {"1.1": [{"CodeValue": "CT-HEAD", "CodeMeaning": "CT head"}]}, {}),
    ("empty_value_matching", "STUDY", "ProcedureCodeSequence",
     {"CodeValue": "", "CodeMeaning": '""'},
     {"1.1": [{"CodeValue": "CT-NECK", "CodeMeaning": ""}]}, {}),
    ("return_keys_only_match_every_entity", "STUDY", "ProcedureCodeSequence",
     {"CodeValue": "", "CodingSchemeDesignator": ""},
     {"1.1": [{"CodeValue": "CT-HEAD", "CodingSchemeDesignator": "LOCAL"},
              {"CodeValue": "CT-NECK", "CodingSchemeDesignator": "LOCAL"}],
      "2.1": [{"CodeValue": "MR-KNEE", "CodingSchemeDesignator": "DCM"}],
      "3.1": []}, {}),
    ("no_item_is_universal_with_every_kept_value", "STUDY", "ProcedureCodeSequence", None,
     {"1.1": [{"CodeValue": "CT-HEAD", "CodingSchemeDesignator": "LOCAL",
               "CodeMeaning": "CT head"},
              {"CodeValue": "CT-NECK", "CodingSchemeDesignator": "LOCAL"}],
      "2.1": [{"CodeValue": "MR-KNEE", "CodingSchemeDesignator": "DCM",
               "CodeMeaning": "MR knee"}],
      "3.1": []}, {}),
    ("key_not_kept_is_returned_empty", "STUDY", "ProcedureCodeSequence",
     {"CodeValue": "MR*", "ContextIdentifier": ""},
     {"2.1": [{"CodeValue": "MR-KNEE", "ContextIdentifier": ""}]}, {}),
    ("uid", "STUDY", "ReferencedStudySequence", {"ReferencedSOPInstanceUID": "9.9.1"},
     {"1.1": [{"ReferencedSOPInstanceUID": "9.9.1"}]}, {}),
    ("list_of_uids", "STUDY", "ReferencedStudySequence",
     {"ReferencedSOPInstanceUID": "9.9.2\\9.9.1", "ReferencedSOPClassUID": ""},
     {"1.1": [{"ReferencedSOPInstanceUID": "9.9.1",
               "ReferencedSOPClassUID": STUDY_COMPONENT}]}, {}),
    ("series_level", "SERIES", "RequestAttributesSequence",
     {"RequestedProcedureID": "RP?", "ScheduledProcedureStepID": "SPS2"},
     {"2.1.1": [{"RequestedProcedureID": "RP2", "ScheduledProcedureStepID": "SPS2"}]},
     {"StudyInstanceUID": "2.1"}),
    ("series_level_wild_card", "SERIES", "RequestAttributesSequence",
     {"RequestedProcedureID": "", "RequestedProcedureDescription": "Knee*"},
     {"2.1.2": [{"RequestedProcedureID": "RP3",
                 "RequestedProcedureDescription": "Knee left"}]},
     {"StudyInstanceUID": "2.1"}),
    ("study_sequence_at_series_level", "SERIES", "ProcedureCodeSequence",
     {"CodeValue": "MR-KNEE"},
     {"2.1.1": [{"CodeValue": "MR-KNEE"}], "2.1.2": [{"CodeValue": "MR-KNEE"}]},
     {"StudyInstanceUID": "2.1"}),
    ("with_other_keys", "STUDY", "ProcedureCodeSequence", {"CodeValue": "*"},
     {"2.1": [{"CodeValue": "MR-KNEE"}]}, {"PatientID": "P2"}),
]:
    _case(_name, _level, _keyword, _keys, _expected, **_others)


class SequenceRulesTests(IndexTestCase):
    """Identifiers sequence matching refuses or leaves alone."""

    def setUp(self):
        super().setUp()
        sequences_archive(self.index)

    def test_two_items_refused(self):
        """A query sequence holds one item: two are 0xA900."""
        identifier = query("STUDY", ProcedureCodeSequence=[item(CodeValue="A"),
                                                           item(CodeValue="B")])
        error = self.assertRaises(QueryError, self.index.find, identifier, "STUDY")
        self.assertEqual(error.status, 0xA900)

    def test_below_level_with_a_value_refused(self):
        """A series sequence with a matching key in a study query is 0xA900."""
        identifier = query("STUDY", RequestAttributesSequence=[
            item(RequestedProcedureID="RP1")])
        self.assertRaises(QueryError, self.index.find, identifier, "STUDY")

    def test_below_level_universal_returned_empty(self):
        """A series sequence of return keys in a study query is returned empty."""
        identifier = query("STUDY", RequestAttributesSequence=[
            item(RequestedProcedureID="")])
        responses = list(self.index.find(identifier, "STUDY"))
        self.assertEqual(len(responses), 3)
        self.assertEqual({len(r.RequestAttributesSequence) for r in responses}, {0})

    def test_nested_sequence_in_the_item(self):
        """A sequence inside the query item is not kept: returned empty in
        each item (and named by unsupported_keys)."""
        from dicomtwist.storage.index import unsupported_keys

        identifier = query("STUDY", ProcedureCodeSequence=[
            item(CodeValue="MR*", ConceptCodeSequence=[item(CodeValue="X")])])
        [response] = self.index.find(identifier, "STUDY")
        [found] = response.ProcedureCodeSequence
        self.assertEqual((found.CodeValue, len(found.ConceptCodeSequence)), ("MR-KNEE", 0))
        self.assertEqual(unsupported_keys(identifier),
                         ["ProcedureCodeSequence>ConceptCodeSequence"])

    def test_encoded_responses_hold_the_items(self):
        """find_encoded writes the same items as find (the pydicom path)."""
        from dicomtwist.dimse.codec import encode_dataset

        identifier = query("STUDY", ProcedureCodeSequence=[item(CodeValue="CT*")])
        expected = [encode_dataset(r, ImplicitVRLittleEndian)
                    for r in self.index.find(identifier, "STUDY")]
        self.assertEqual(list(self.index.find_encoded(identifier, "STUDY",
                                                      ImplicitVRLittleEndian)), expected)
        self.assertEqual(len(expected), 1)

    def test_batches(self):
        """Items are read per batch of rows, and every row keeps its own."""
        self.index.batch_size = 1
        identifier = query("STUDY", ProcedureCodeSequence=[item(CodeValue="")])
        responses = {r.StudyInstanceUID: len(r.ProcedureCodeSequence)
                     for r in self.index.find(identifier, "STUDY")}
        self.assertEqual(responses, {"1.1": 2, "2.1": 1, "3.1": 0})

    def test_qido_values(self):
        """query (QIDO-RS) gives a kept sequence's items as value tuples,
        with the item keys."""
        identifier = query("STUDY", ProcedureCodeSequence=[item(CodeValue="MR*")])
        keys, rows = self.index.query(identifier, "STUDY")
        self.assertEqual([tuple(r) for r in rows], [([("MR-KNEE",)], "2.1")])
        self.assertEqual(keys[0][2], ((Tag("CodeValue"), "SH"),))

    def test_qido_sequence_matching(self):
        """A QIDO-RS search with ``{sequence}.{attribute}`` keys matches
        as C-FIND does and answers the matching items in DICOM JSON."""
        import json

        from dicomtwist.web.dicomweb import qido

        search = qido.parse_query("SERIES", {
            "RequestAttributesSequence.RequestedProcedureID": ["RP*"],
            "RequestAttributesSequence.ScheduledProcedureStepID": ["SPS2"]}, study="2.1")
        keys, rows = self.index.query(search.identifier, "STUDY",
                                      relational=search.relational)
        matches = json.loads(b"".join(qido.render_matches(keys, rows, "SERIES", "http://h")))
        self.assertEqual([m["0020000E"]["Value"] for m in matches], [["2.1.1"]])
        self.assertEqual(matches[0]["00400275"], {"vr": "SQ", "Value": [
            {"00401001": {"vr": "SH", "Value": ["RP2"]},
             "00400009": {"vr": "SH", "Value": ["SPS2"]}}]})


class SequenceStorageTests(IndexTestCase):
    """The items kept at ingest, replaced and removed with their owners."""

    def items(self, table: str) -> list[tuple]:
        return self.sql(f"SELECT owner_pk, position, * FROM {table} ORDER BY pk")

    def codes(self) -> list[tuple]:
        return self.sql("SELECT st.study_instance_uid, q.position, q.code_value "
                        "FROM procedure_code_item q JOIN study st ON st.pk = q.owner_pk "
                        "ORDER BY st.study_instance_uid, q.position")

    def test_latest_non_empty_wins(self):
        """A later instance with the sequence replaces the study's items; one
        without it (or with it empty) keeps them."""
        add = self.index.add
        add(instance("1.1.1.1", ProcedureCodeSequence=[item(CodeValue="A"),
                                                       item(CodeValue="B")]),
            "1.dcm", ExplicitVRLittleEndian, 1)
        self.assertEqual(self.codes(), [("1.1", 0, "A"), ("1.1", 1, "B")])
        add(instance("1.1.1.2", ProcedureCodeSequence=[item(CodeValue="C")]),
            "2.dcm", ExplicitVRLittleEndian, 1)
        add(instance("1.1.1.3"), "3.dcm", ExplicitVRLittleEndian, 1)
        add(instance("1.1.1.4", ProcedureCodeSequence=[]), "4.dcm", ExplicitVRLittleEndian, 1)
        add(instance("1.1.1.5", ProcedureCodeSequence=[item(CodeMeaning="")]),
            "5.dcm", ExplicitVRLittleEndian, 1)
        self.assertEqual(self.codes(), [("1.1", 0, "C")])

    def test_removed_with_their_owner(self):
        """Removing the last instance of a study or series removes its items."""
        sequences_archive(self.index)
        for uid in ("1.1.1.1", "2.1.1.1", "2.1.2.1", "3.1.1.1"):
            self.index.remove(uid)
        for sequence in SEQUENCES:
            self.assertEqual(self.sql(f"SELECT COUNT(*) FROM {sequence.item_table}"), [(0,)])

    def test_study_deleted(self):
        """delete_study removes the items of the study and of its series."""
        sequences_archive(self.index)
        self.index.delete_study("2.1")
        self.assertEqual(self.codes(), [("1.1", 0, "CT-HEAD"), ("1.1", 1, "CT-NECK")])
        self.assertEqual(self.sql("SELECT requested_procedure_id FROM "
                                  "request_attributes_item"), [("RP1",)])

    def test_cleared(self):
        """clear empties the item tables."""
        sequences_archive(self.index)
        self.index.clear()
        for sequence in SEQUENCES:
            self.assertEqual(self.sql(f"SELECT COUNT(*) FROM {sequence.item_table}"), [(0,)])

    def test_from_the_header_scanner(self):
        """The store pipeline's scanned header (raw sequence elements, implicit
        and explicit VR, defined and undefined lengths) gives the same items."""
        ds = instance("1.1.1.1", ProcedureCodeSequence=[
            item(CodeValue="CT-HEAD", CodingSchemeDesignator="LOCAL", CodeMeaning="Tête")],
            SpecificCharacterSet="ISO_IR 100")
        for n, (syntax, implicit) in enumerate([(ImplicitVRLittleEndian, True),
                                                (ExplicitVRLittleEndian, False)]):
            for undefined in (False, True):
                ds.ProcedureCodeSequence.is_undefined_length = undefined
                buffer = DicomBytesIO()
                buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
                write_dataset(buffer, ds)
                scanned = scan(buffer.getvalue(), syntax, INDEXED_TAGS)
                self.index.add(scanned, "1.dcm", syntax, 1)
                self.assertEqual(
                    self.sql("SELECT code_value, coding_scheme_designator, code_meaning "
                             "FROM procedure_code_item"),
                    [("CT-HEAD", "LOCAL", "Tête")], (n, undefined))

    def test_nul_and_unreadable(self):
        """A NUL in an item value is dropped (PostgreSQL text holds none); an
        item of unknown attributes only is not kept."""
        self.index.add(instance("1.1.1.1", ProcedureCodeSequence=[
            item(CodeValue="A\0B"), item(ContextIdentifier="99")]),
            "1.dcm", ExplicitVRLittleEndian, 1)
        self.assertEqual(self.codes(), [("1.1", 0, "AB")])


class SchemaUpgradeTests:
    """Version 2 (before the item tables) is upgraded to the current
    version at open."""

    def test_upgrade_from_version_2(self):
        """The item tables are added, the rows kept, and new instances keep
        their items."""
        location = self.new_location()
        index = self.open_index(location)
        index.add(instance("1.1.1.1"), "a.dcm", ExplicitVRLittleEndian, 1)
        for sequence in SEQUENCES:
            index._sql(f"DROP TABLE {sequence.item_table}")
        index._sql("DROP TABLE web_job")  # version 4's
        index._sql("UPDATE schema_version SET version = 2")
        index.close()
        upgraded = self.open_index(location)
        self.assertEqual(upgraded.opened_version, 2)
        self.assertEqual(upgraded._sql("SELECT version FROM schema_version"),
                         [(SCHEMA_VERSION,)])
        self.assertEqual(upgraded.paths(), ["a.dcm"])
        upgraded.add(instance("1.1.1.2", ProcedureCodeSequence=[item(CodeValue="X")]),
                     "b.dcm", ExplicitVRLittleEndian, 1)
        [response] = upgraded.find(query("STUDY", ProcedureCodeSequence=[
            item(CodeValue="X")]), "STUDY")
        self.assertEqual(response.ProcedureCodeSequence[0].CodeValue, "X")

    def test_upgrade_warns_to_reindex(self):
        """open_index says, once, that instances indexed before the upgrade
        need --reindex for sequence matching; not for a new index."""
        from twisted.logger import globalLogPublisher
        from twisted.internet.testing import EventLoggingObserver

        from dicomtwist.storage.index import open_index

        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        location = self.new_location()
        index = open_index(location)
        index.add(instance("1.1.1.1"), "a.dcm", ExplicitVRLittleEndian, 1)
        index._sql("UPDATE schema_version SET version = 2")
        index.close()
        self.addCleanup(open_index(location).close)
        self.addCleanup(open_index(location).close)
        warnings = [e for e in observer if "--reindex" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual((warnings[0]["old"], warnings[0]["new"]), (2, SCHEMA_VERSION))


class RelationalTests(IndexTestCase):
    """Relational queries and retrievals leave out the unique keys above."""

    def setUp(self):
        super().setUp()
        sequences_archive(self.index)

    def test_find_below_study_without_study_uid(self):
        """A SERIES query without Study Instance UID: 0xA900 hierarchically,
        every matching series relationally."""
        identifier = query("SERIES", Modality="CT")
        self.assertRaises(QueryError, self.index.find, identifier, "STUDY")
        found = {r.SeriesInstanceUID for r in self.index.find(identifier, "STUDY",
                                                              relational=True)}
        self.assertEqual(found, {"1.1.1", "2.1.1", "2.1.2", "3.1.1"})

    def test_find_with_higher_keys_matched(self):
        """Relationally, keys of the levels above (a wild card Patient ID, a
        sequence) narrow an IMAGE query of the Patient Root."""
        identifier = query("IMAGE", PatientID="P2*")
        identifier.ProcedureCodeSequence = [item(CodeValue="MR-KNEE")]
        self.assertRaises(QueryError, self.index.find, identifier, "PATIENT")
        found = {r.SOPInstanceUID for r in self.index.find(identifier, "PATIENT",
                                                           relational=True)}
        self.assertEqual(found, {"2.1.1.1", "2.1.2.1"})

    def test_find_encoded_relational(self):
        """find_encoded takes the same option."""
        identifier = query("IMAGE", SOPInstanceUID="3.1.1.1")
        self.assertRaises(QueryError, self.index.find_encoded, identifier, "STUDY",
                          ExplicitVRLittleEndian)
        self.assertEqual(len(list(self.index.find_encoded(
            identifier, "STUDY", ExplicitVRLittleEndian, relational=True))), 1)

    def test_retrieve_list_of_instances(self):
        """A list of SOP Instance UIDs of several studies, without study and
        series: 0xA900 hierarchically, those instances relationally."""
        identifier = query("IMAGE", SOPInstanceUID="3.1.1.1\\1.1.1.1\\9.9.9")
        self.assertRaises(QueryError, self.index.retrieve, identifier, "STUDY")
        records = self.index.retrieve(identifier, "STUDY", relational=True)
        self.assertEqual(sorted(r.sop_instance_uid for r in records),
                         ["1.1.1.1", "3.1.1.1"])
        records = self.index.retrieve(identifier, "PATIENT", relational=True)
        self.assertEqual(len(records), 2)

    def test_retrieve_series_without_study(self):
        """A SERIES retrieve without Study Instance UID, relationally."""
        records = self.index.retrieve(query("SERIES", SeriesInstanceUID="2.1.2"), "STUDY",
                                      relational=True)
        self.assertEqual([r.sop_instance_uid for r in records], ["2.1.2.1"])

    def test_retrieve_higher_keys_still_narrow(self):
        """Given, a higher unique key still narrows a relational retrieve."""
        identifier = query("IMAGE", StudyInstanceUID="2.1", SOPInstanceUID="3.1.1.1")
        self.assertEqual(self.index.retrieve(identifier, "STUDY", relational=True), [])

    def test_retrieve_still_needs_its_level_key(self):
        """Relational retrieval still needs the unique key of its level."""
        self.assertRaises(QueryError, self.index.retrieve, query("IMAGE", SOPInstanceUID=""),
                          "STUDY", relational=True)


class KeptSequencesTests(SynchronousTestCase):
    """The kept sequences are the ones the conformance statement lists."""

    def test_listed(self):
        """Procedure Code, Referenced Study and Request Attributes Sequences,
        read by the header scanner."""
        self.assertEqual([(s.keyword, s.table) for s in SEQUENCES],
                         [("ProcedureCodeSequence", "study"),
                          ("ReferencedStudySequence", "study"),
                          ("RequestAttributesSequence", "series")])
        self.assertTrue({int(s.tag) for s in SEQUENCES} <= INDEXED_TAGS)


for _suite in (SequenceMatchingTests, SequenceRulesTests, SequenceStorageTests,
               SchemaUpgradeTests, RelationalTests):
    both(_suite)
del _suite


class CombinedDateTimeTests(IndexTestCase):
    """Combined date-time matching (PS3.4 C.2.2.2.5.1), when negotiated."""

    STUDIES = {"1": ("20060705", "090000"), "2": ("20060705", "110000"),
               "3": ("20060706", "030000"), "4": ("20060707", "170000"),
               "5": ("20060707", "190000"), "6": ("20060708", "120000"),
               "7": ("20060706", None)}

    CASES = [
        # Study Date, Study Time, combined matches, independent matches
        ("20060705-20060707", "1000-1800", "2347", "24"),
        ("20060705-", "1000-", "234567", "2456"),
        ("-20060707", "-1800", "12347", "1234"),
        ("20060705-20060707", "-1800", "12347", "1234"),
        ("20060705-20060707", "1000-", "23457", "245"),
        ("20060705-20060707", "1100", "2", "2"),
        ("20060706", "0000-0400", "3", "3"),
        ("20060705-20060707", "", "123457", "123457"),
        ("20060705-20060707\\20060708", "1000-1800", "246", "246"),
    ]

    def setUp(self):
        super().setUp()
        for uid, (date, time) in self.STUDIES.items():
            extra = {"StudyTime": time} if time else {}
            self.index.add(instance(f"{uid}.1.1", series=f"{uid}.1", study=uid,
                                    StudyDate=date, **extra),
                           f"{uid}.dcm", ExplicitVRLittleEndian, 1)

    def test_cases(self):
        """Two ranges are one date-time range; anything else is matched as
        before, and without the negotiation always independently."""
        for date, time, combined, independent in self.CASES:
            identifier = query("STUDY", StudyDate=date, StudyTime=time)
            for flag, expected in ((True, combined), (False, independent)):
                found = "".join(sorted(r.StudyInstanceUID for r in self.index.find(
                    identifier, "STUDY", combined=flag)))
                self.assertEqual(found, expected, (date, time, flag))

    def test_series_level_and_encoded(self):
        """At SERIES level the study pair is still combined; find_encoded
        takes the option too."""
        identifier = query("SERIES", StudyInstanceUID="2", StudyDate="20060705-20060707",
                           StudyTime="1000-1800")
        self.assertEqual(len(list(self.index.find_encoded(
            identifier, "STUDY", ExplicitVRLittleEndian, combined=True))), 1)

    def test_bad_range(self):
        """An unreadable range is still 0xA900."""
        identifier = query("STUDY", StudyDate="2006-x", StudyTime="1000-1800")
        self.assertRaises(QueryError, self.index.find, identifier, "STUDY", combined=True)


both(CombinedDateTimeTests)
