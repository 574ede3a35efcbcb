"""Modality Worklist: the Basic Worklist Management C-FIND SCP (PS3.4
Annex K, SOP class 1.2.840.10008.5.1.4.31) over a directory of worklist
items.

The items are the files DCMTK's ``wlmscpfs`` reads: one DICOM file (with
or without the file meta header) per scheduled procedure step, named
``*.wl``; every other file in the directory (DCMTK's ``lockfile``,
``*.dcm``, ``*.wl.tmp`` written before a rename) is not an item.  The
directory is read again on each query, in the thread pool: a file whose
``(mtime_ns, size, inode)`` has not changed is not parsed again, a new or
changed one is, and a removed one is forgotten.  A file that cannot be
parsed, or lacks what every worklist answer must carry (PS3.4 K.6.1.2.2,
as ``wlmscpfs --enable-file-reject`` checks it), is left out with one
warning per version of the file.  When the directory holds DCMTK's
``lockfile``, it is read-locked while the files are read, as ``wlmscpfs``
does, so that tools which write items under its write lock are respected
(for at most :data:`LOCK_WAIT` seconds).  :func:`save_item` and
:func:`remove_item` write and remove items (atomically) for the HTTP
endpoint (:mod:`dicomtwist.web.worklist`).

Queries are checked, expanded, matched and answered as ``wlmscpfs``
(DCMTK 3.6.7) does, which follows PS3.4 K.6.1 and C.2.2.2:

- matching keys (:data:`TOP_KEYS`, :data:`SPS_KEYS`): single value,
  wildcard (``*``, ``?``; not for Patient ID, Modality and Scheduled
  Station AE Title, whose values match exactly), universal (empty or only
  ``*``), any value of a multi-valued key against any value of the item;
  dates and times by range (``A-B``, ``A-``, ``-B``), a date with its time
  as one date-time range when both are ranges of the same shape;
  sequence matching inside the Scheduled Procedure Step Sequence;
- return keys (:data:`TOP_RETURN_KEYS`, :data:`NESTED_RETURN_KEYS`): each
  requested key is returned with the item's value (empty when the item
  has none); a key neither matching nor return key is left out of the
  answers, which are then Pending with status 0xFF01;
- a sequence asked for with no item or one empty item is expanded to all
  the keys of that sequence (PS3.4 C.2.2.2.6), as ``wlmscpfs`` expands it;
- Specific Character Set: the item's, when the answer holds text.

A key with a value its VR does not allow, or a sequence with more than one
item, fails the query with 0xA900 (Identifier Does Not Match SOP Class)
and an Error Comment naming the problem.
"""

from __future__ import annotations

import copy
import errno
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from struct import error as struct_error
from typing import Any, AsyncIterator

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from twisted.internet.threads import deferToThreadPool

from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.association import Response
from dicomtwist.errors import DIMSEServiceError
from dicomtwist.services.published import published_find
from dicomtwist.status import Status

#: Modality Worklist Information Model - FIND (PS3.4 K.6).
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: Worklist items are the files with this suffix (as ``wlmscpfs`` reads).
ITEM_SUFFIX = ".wl"
#: DCMTK's lock file: read-locked while the items are read, if present.
LOCKFILE = "lockfile"
#: Seconds a query waits for a writer's lock on :data:`LOCKFILE`.
LOCK_WAIT = 10.0


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"no DICOM keyword {keyword!r}")
    return int(tag)


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(_tag(k) for k in keywords)


SPECIFIC_CHARACTER_SET = _tag("SpecificCharacterSet")
SPS = _tag("ScheduledProcedureStepSequence")
PROTOCOL_CODES = _tag("ScheduledProtocolCodeSequence")
PROCEDURE_CODES = _tag("RequestedProcedureCodeSequence")
REFERENCED_STUDIES = _tag("ReferencedStudySequence")
REFERENCED_PATIENTS = _tag("ReferencedPatientSequence")
PREGNANCY_STATUS = _tag("PregnancyStatus")
CODE_VALUE = _tag("CodeValue")
CODING_SCHEME = _tag("CodingSchemeDesignator")
REFERENCED_CLASS = _tag("ReferencedSOPClassUID")
REFERENCED_INSTANCE = _tag("ReferencedSOPInstanceUID")
SPS_DESCRIPTION = _tag("ScheduledProcedureStepDescription")
PROCEDURE_DESCRIPTION = _tag("RequestedProcedureDescription")
#: Data Set Trailing Padding: dropped from a query, as group lengths are.
TRAILING_PADDING = 0xFFFCFFFC

#: Matching keys of the top level: (tag, wildcards allowed).
TOP_KEYS: tuple[tuple[int, bool], ...] = tuple((_tag(k), w) for k, w in (
    ("PatientName", True), ("ResponsiblePerson", True), ("ResponsiblePersonRole", True),
    ("PatientID", False), ("AccessionNumber", True), ("RequestedProcedureID", True),
    ("ReferringPhysicianName", True), ("PatientSex", True), ("RequestingPhysician", True),
    ("AdmissionID", True), ("RequestedProcedurePriority", True),
    ("PatientBirthDate", True), ("IssuerOfPatientID", True)))
#: Matching keys inside the Scheduled Procedure Step Sequence.
SPS_KEYS: tuple[tuple[int, bool], ...] = tuple((_tag(k), w) for k, w in (
    ("ScheduledStationAETitle", False), ("Modality", False),
    ("ScheduledPerformingPhysicianName", True)))
#: Date and time keys matched together (PS3.4 C.2.2.2.5).
TOP_DATE_TIMES = ((_tag("StudyDate"), _tag("StudyTime")),)
SPS_DATE_TIMES = ((_tag("ScheduledProcedureStepStartDate"),
                   _tag("ScheduledProcedureStepStartTime")),)

#: Every matching key, by the sequence it is in (None: the top level).
MATCHING_KEYS: dict[int | None, frozenset[int]] = {
    None: frozenset({t for t, _ in TOP_KEYS} | {t for pair in TOP_DATE_TIMES for t in pair}
                    | {SPS}),
    SPS: frozenset({t for t, _ in SPS_KEYS} | {t for pair in SPS_DATE_TIMES for t in pair}),
}
#: Return keys of the top level (besides the matching keys).
TOP_RETURN_KEYS = _tags(
    "ScheduledProcedureStepSequence", "RequestedProcedureID", "RequestedProcedureDescription",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferencedStudySequence",
    "RequestedProcedurePriority", "PatientTransportArrangements", "AccessionNumber",
    "RequestingPhysician", "ReferringPhysicianName", "AdmissionID", "CurrentPatientLocation",
    "ReferencedPatientSequence", "PatientName", "ResponsiblePerson", "ResponsiblePersonRole",
    "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientWeight",
    "ConfidentialityConstraintOnPatientDataDescription", "PatientState", "PregnancyStatus",
    "MedicalAlerts", "Allergies", "SpecialNeeds", "NamesOfIntendedRecipientsOfResults",
    "InstitutionName", "AdmittingDiagnosesDescription", "OtherPatientIDs", "PatientSize",
    "EthnicGroup", "PatientComments", "AdditionalPatientHistory", "LastMenstrualDate",
    "InstitutionAddress", "OtherPatientNames", "PatientAddress", "MilitaryRank",
    "SmokingStatus", "RequestingService", "IssuerOfAdmissionID",
    "ReasonForTheRequestedProcedure", "RequestedProcedureLocation", "ConfidentialityCode",
    "ReportingPriority", "RequestedProcedureComments", "ReasonForTheImagingServiceRequest",
    "IssueDateOfImagingServiceRequest", "IssueTimeOfImagingServiceRequest", "OrderEnteredBy",
    "OrderEntererLocation", "OrderCallbackPhoneNumber",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
    "ImagingServiceRequestComments", "RequestedProcedureCodeSequence")
_CODE_KEYS = ("CodeValue", "CodingSchemeVersion", "CodingSchemeDesignator", "CodeMeaning")
_REFERENCE_KEYS = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")
_SPS_RETURN = (
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "Modality", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription", "ScheduledStationName",
    "ScheduledProcedureStepLocation", "PreMedication", "ScheduledProcedureStepID",
    "RequestedContrastAgent", "CommentsOnTheScheduledProcedureStep",
    "ScheduledProcedureStepStatus", "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepEndTime")
#: Return keys inside each sequence.
NESTED_RETURN_KEYS: dict[int, frozenset[int]] = {
    SPS: _tags(*_SPS_RETURN, "ScheduledProtocolCodeSequence"),
    REFERENCED_STUDIES: _tags(*_REFERENCE_KEYS),
    REFERENCED_PATIENTS: _tags(*_REFERENCE_KEYS),
    PROTOCOL_CODES: _tags(*_CODE_KEYS),
    PROCEDURE_CODES: _tags(*_CODE_KEYS),
}
#: What an empty sequence in a query expands to (PS3.4 C.2.2.2.6): the
#: keys ``wlmscpfs`` puts in (sequences: with their own expansion).
EXPANSIONS: dict[int, tuple[str, ...]] = {
    SPS: (*_SPS_RETURN, "ScheduledProtocolCodeSequence"),
    PROTOCOL_CODES: _CODE_KEYS,
    PROCEDURE_CODES: _CODE_KEYS,
    REFERENCED_STUDIES: _REFERENCE_KEYS,
    REFERENCED_PATIENTS: _REFERENCE_KEYS,
}
#: VRs whose values the Specific Character Set applies to.
TEXT_VRS = frozenset({"SH", "LO", "ST", "PN", "LT", "UC", "UT"})
#: VRs matched with wildcards (where the key allows them).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: Characters a matching key's value may use, by VR (``wlmscpfs``'s check;
#: PN, LO and SH only when the query names no Specific Character Set).
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
REPERTOIRES = {
    "CS": frozenset("*?ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _"),
    "AE": frozenset(_PRINTABLE),
    "PN": frozenset(_PRINTABLE[:-1]),
    "LO": frozenset(_PRINTABLE[:-1]),
    "SH": frozenset(_PRINTABLE[:-1]),
}


class QueryError(DIMSEServiceError):
    """The identifier is not a valid worklist query (status 0xA900)."""

    def __init__(self, comment: str) -> None:
        super().__init__(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment[:64])


# -- values ------------------------------------------------------------------
def _values(element: DataElement | None) -> list[str]:
    """The values of an element as strings (none when it is empty)."""
    if element is None or element.VR == "SQ":
        return []
    value = element.value
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [_text(v) for v in value]
    return [_text(value)]


def values_of(element: DataElement | None) -> list[str]:
    """The values of an element as strings (none when it is empty)."""
    return _values(element)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _is_empty(element: DataElement) -> bool:
    value = element.value
    return value is None or value == "" or value == b"" or (
        isinstance(value, (MultiValue, list, tuple)) and len(value) == 0)


def _universal(element: DataElement) -> bool:
    """Universal matching: no value, or values of only ``*`` (C.2.2.2.3)."""
    return all(not v.strip(" ").strip("*") for v in _values(element))


# -- dates and times ---------------------------------------------------------
_DATE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_TIME = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?")


def parse_date(text: str) -> date | None:
    """``YYYYMMDD`` (or the old ``YYYY.MM.DD``) as a date; None if invalid."""
    m = _DATE.fullmatch(text.strip(" "))
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def parse_time(text: str) -> float | None:
    """``HH[MM[SS[.F]]]`` (colons allowed) as seconds since midnight."""
    m = _TIME.fullmatch(text.strip(" "))
    if m is None:
        return None
    hours, minutes, seconds = int(m[1]), int(m[2] or 0), int(m[3] or 0)
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return hours * 3600 + minutes * 60 + seconds + float(m[4] or 0)


@dataclass(frozen=True)
class _Range:
    """A query value split at its dash: ``first-second`` or one value."""

    first: str
    second: str
    is_range: bool

    @classmethod
    def split(cls, text: str) -> "_Range":
        text = text.strip(" ")
        first, dash, second = text.partition("-")
        return cls(first, second if dash else first, bool(dash))


def _valid_range(text: str, parse: Any) -> bool:
    r = _Range.split(text)
    if not r.is_range:
        return parse(r.first) is not None
    if not r.first and not r.second:
        return False
    return all(parse(part) is not None for part in (r.first, r.second) if part)


def _range_matches(query: str, candidate: str, parse: Any) -> bool:
    """Single value or range matching of one DA or TM value (C.2.2.2.5)."""
    if not query.strip(" "):
        return True
    value = parse(candidate)
    if value is None:
        return False
    r = _Range.split(query)
    if not r.is_range:
        return parse(r.first) == value
    low = parse(r.first) if r.first else None
    high = parse(r.second) if r.second else None
    if (r.first and low is None) or (r.second and high is None):
        return False
    return (low is None or low <= value) and (high is None or value <= high)


def _date_time_matches(date_query: str, time_query: str, date_value: str,
                       time_value: str) -> bool:
    """A date and a time key matched together (PS3.4 C.2.2.2.5.1).

    Two ranges of the same shape (both bounded, or open on the same side)
    make one date-time range (``D1-D2`` with ``T1-T2``: from D1 T1 to
    D2 T2, a missing time being midnight); a single date with a single
    time is one instant.  Otherwise (a single date with a time range, a
    date range with a single time, or a time bound where the date range
    is open) the date and the time are matched each on its own; this is
    what DCMTK 3.6.7 does.
    """
    d, t = _Range.split(date_query), _Range.split(time_query)
    separately = (d.is_range != t.is_range
                  or (d.is_range and ((not d.first and t.first) or (not d.second and t.second))))
    if separately:
        return (_range_matches(date_query, date_value, parse_date)
                and _range_matches(time_query, time_value, parse_time))
    day = parse_date(date_value)
    moment = parse_time(time_value) if time_value.strip(" ") else 0.0
    if day is None or moment is None:
        return False
    candidate = (day, moment)
    if not d.is_range:
        first = (parse_date(d.first), parse_time(t.first))
        return None not in first and first == candidate

    def bound(day_text: str, time_text: str) -> tuple[date, float] | None:
        bound_time = parse_time(time_text) if time_text else 0.0
        return (parse_date(day_text), bound_time)  # type: ignore[return-value]

    low = bound(d.first, t.first) if d.first else None
    high = bound(d.second, t.second) if d.second else None
    if (low and None in low) or (high and None in high):
        return False
    return (low is None or low <= candidate) and (high is None or candidate <= high)


def _wildcard(query: str, value: str) -> bool:
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in query)
    return re.fullmatch(pattern, value, re.DOTALL) is not None


def _value_matches(query: str, value: str, vr: str, wildcards: bool) -> bool:
    query, value = query.strip(" "), value.strip(" ")
    if not query:
        return True
    if vr == "DA":
        return _range_matches(query, value, parse_date)
    if vr == "TM":
        return _range_matches(query, value, parse_time)
    if wildcards and vr in WILDCARD_VRS:
        return _wildcard(query, value)
    return query == value


def element_matches(query: DataElement, candidate: DataElement | None,
                    wildcards: bool = True) -> bool:
    """Does an item's element match a query key?

    Universal matching needs nothing from the item; any other value needs
    the element, and matches when one of the query's values matches one
    of the item's values (an item's empty element matches nothing).
    """
    if _universal(query):
        return True
    if candidate is None:
        return False
    return any(_value_matches(q, v, query.VR, wildcards)
               for q in _values(query) for v in _values(candidate))


@dataclass(frozen=True)
class Level:
    """The matching keys of one level of the information model."""

    keys: tuple[tuple[int, bool], ...]
    date_times: tuple[tuple[int, int], ...] = ()
    sequences: tuple[tuple[int, "Level"], ...] = ()


ROOT = Level(TOP_KEYS, TOP_DATE_TIMES, ((SPS, Level(SPS_KEYS, SPS_DATE_TIMES)),))


def matches(item: Dataset, mask: Dataset, level: Level = ROOT) -> bool:
    """Does a worklist item match a checked query (:func:`check_query`)?"""
    for tag, wildcards in level.keys:
        query = mask.get(tag)
        if query is not None and query.VR != "SQ" and not element_matches(
                query, item.get(tag), wildcards):
            return False
    for date_tag, time_tag in level.date_times:
        if not _date_time_key_matches(item, mask.get(date_tag), mask.get(time_tag),
                                      date_tag, time_tag):
            return False
    for tag, sublevel in level.sequences:
        query = mask.get(tag)
        if query is None or query.VR != "SQ" or not query.value:
            continue
        candidate = item.get(tag)
        if candidate is None or candidate.VR != "SQ" or not any(
                matches(got, wanted, sublevel)
                for wanted in query.value for got in candidate.value):
            return False
    return True


def _date_time_key_matches(item: Dataset, date_query: DataElement | None,
                           time_query: DataElement | None, date_tag: int,
                           time_tag: int) -> bool:
    if date_query is None or _universal(date_query):
        return time_query is None or element_matches(time_query, item.get(time_tag), False)
    if time_query is None or _universal(time_query):
        return element_matches(date_query, item.get(date_tag), False)
    dates, times = item.get(date_tag), item.get(time_tag)
    if dates is None or times is None:
        return False
    return any(_date_time_matches(dq, tq, dv, tv)
               for dq in _values(date_query) for tq in _values(time_query)
               for dv in _values(dates) for tv in (_values(times) or [""]))


# -- queries -----------------------------------------------------------------
@dataclass
class Query:
    """A checked worklist query.

    :ivar mask: the identifier with only supported keys, empty sequences
        expanded.
    :ivar unsupported: keys were left out (answers are 0xFF01).
    """

    mask: Dataset
    unsupported: bool = False
    errors: list[str] = field(default_factory=list)


def check_query(identifier: Dataset, expand: bool = True) -> Query:
    """Check and expand a worklist query (``wlmscpfs``'s rules).

    :param expand: expand empty sequences (PS3.4 C.2.2.2.6).
    :raises QueryError: a matching key has a value its VR does not allow,
        or a sequence holds more than one item.
    """
    mask = copy.deepcopy(identifier)
    charset = bool(_values(identifier.get(SPECIFIC_CHARACTER_SET)))
    query = Query(mask)
    _check_level(query, mask, None, charset, expand)
    if query.errors:
        raise QueryError(query.errors[0] if len(query.errors) == 1
                         else "Syntax error in 1 or more matching keys")
    return query


def _check_level(query: Query, container: Dataset, sequence: int | None, charset: bool,
                 expand: bool) -> None:
    matching = MATCHING_KEYS.get(sequence, frozenset())
    returned = TOP_RETURN_KEYS if sequence is None else NESTED_RETURN_KEYS.get(
        sequence, frozenset())
    for tag in list(container.keys()):
        tag = int(tag)
        if tag & 0xFFFF == 0 or tag == TRAILING_PADDING:
            del container[tag]
            continue
        element = container[tag]
        if tag not in matching and tag not in returned:
            del container[tag]
            if tag != SPECIFIC_CHARACTER_SET:
                query.unsupported = True
            continue
        if element.VR == "SQ":
            items = element.value
            if len(items) == 0 or (len(items) == 1 and len(items[0]) == 0):
                if expand:
                    element.value = [expansion(tag)]
                continue
            if len(items) > 1:
                query.errors.append("More than 1 item in sequence.")
                element.value = [items[0]]
            _check_level(query, element.value[0], tag, charset, expand)
        elif tag in matching:
            problem = _value_problem(element, charset)
            if problem:
                query.errors.append(problem)


def _value_problem(element: DataElement, charset: bool) -> str | None:
    """Why a matching key's value is invalid for its VR, or None."""
    vr = element.VR
    text = "\\".join(_values(element))
    if vr in ("DA", "TM"):
        text = text.strip(" ")
        if text and not _valid_range(text, parse_date if vr == "DA" else parse_time):
            return f"Invalid value for an attribute with VR={vr}"
        return None
    allowed = REPERTOIRES.get(vr)
    if allowed is None or (vr in ("PN", "LO", "SH") and charset):
        return None
    if any(c not in allowed for c in text):
        return f"Invalid Character Repertoire for datatype {vr}"
    return None


def expansion(sequence: int) -> Dataset:
    """The item an empty sequence of a query expands to."""
    item = Dataset()
    for keyword in EXPANSIONS[sequence]:
        tag = _tag(keyword)
        vr = dictionary_VR(tag)
        if vr == "SQ":
            item.add(DataElement(tag, "SQ", [expansion(tag)]))
        else:
            item.add(DataElement(tag, vr, None))
    return item


# -- answers -----------------------------------------------------------------
def response(item: Dataset, mask: Dataset) -> Dataset:
    """The answer a matching item gives to a checked query: the query's
    keys with the item's values, then cleaned as ``wlmscpfs`` cleans it."""
    answer = copy.deepcopy(mask)
    _fill(answer, item)
    steps = answer.get(SPS)
    if steps is not None and steps.VR == "SQ" and len(steps.value):
        _drop_empty_description_or_codes(steps.value[0], SPS_DESCRIPTION, PROTOCOL_CODES)
    _drop_empty_description_or_codes(answer, PROCEDURE_DESCRIPTION, PROCEDURE_CODES)
    _drop_empty_reference(answer, REFERENCED_STUDIES)
    _drop_empty_reference(answer, REFERENCED_PATIENTS)
    charset = item.get(SPECIFIC_CHARACTER_SET)
    if charset is not None and _values(charset) and _has_text(answer):
        answer.add(DataElement(SPECIFIC_CHARACTER_SET, "CS", copy.deepcopy(charset.value)))
    return answer


def _fill(answer: Dataset, source: Dataset | None) -> None:
    for tag in list(answer.keys()):
        element = answer[tag]
        found = source.get(tag) if source is not None else None
        if element.VR == "SQ":
            _fill_sequence(element, found)
            continue
        if tag == PREGNANCY_STATUS:
            values = _values(found)
            value: Any = int(values[0]) if values and values[0].isdigit() else 4
        elif found is not None and found.VR != "SQ":
            value = copy.deepcopy(found.value)
        else:
            value = None
        answer[tag] = DataElement(tag, element.VR, value)


def _fill_sequence(element: DataElement, found: DataElement | None) -> None:
    """One answer item per item of the worklist item's sequence, each the
    query's item filled from it; with none, the query's item stays as it is."""
    if len(element.value) != 1:
        return
    sources = list(found.value) if found is not None and found.VR == "SQ" else []
    if not sources:
        return
    template = element.value[0]
    items = [template] + [copy.deepcopy(template) for _ in sources[1:]]
    for answer, source in zip(items, sources):
        _fill(answer, source)
    element.value = items


def _present_and_empty(container: Dataset, tag: int) -> bool:
    element = container.get(tag)
    return element is not None and _is_empty(element)


def _drop_empty_description_or_codes(container: Dataset, description: int,
                                     codes: int) -> None:
    """An empty code sequence (or one item of empty code value and scheme)
    is left out; else an empty description is."""
    sequence = container.get(codes)
    if sequence is not None and sequence.VR == "SQ" and (
            len(sequence.value) == 0 or (
                len(sequence.value) == 1
                and _present_and_empty(sequence.value[0], CODE_VALUE)
                and _present_and_empty(sequence.value[0], CODING_SCHEME))):
        del container[codes]
        return
    if _present_and_empty(container, description):
        del container[description]


def _drop_empty_reference(container: Dataset, tag: int) -> None:
    """A Referenced Study/Patient Sequence item of empty references goes."""
    sequence = container.get(tag)
    if sequence is not None and sequence.VR == "SQ" and len(sequence.value) == 1 and (
            _present_and_empty(sequence.value[0], REFERENCED_CLASS)
            and _present_and_empty(sequence.value[0], REFERENCED_INSTANCE)):
        sequence.value = []


def _has_text(container: Dataset) -> bool:
    for element in container:
        if element.VR in TEXT_VRS:
            return True
        if element.VR == "SQ" and any(_has_text(item) for item in element.value):
            return True
    return False


# -- items -------------------------------------------------------------------
def incomplete(item: Dataset) -> str | None:
    """What a worklist item lacks of the return keys of type 1 (PS3.4
    K.6.1.2.2), as ``wlmscpfs`` checks them; None when it is complete."""
    steps = item.get(SPS)
    if steps is None or steps.VR != "SQ" or len(steps.value) != 1:
        return "its Scheduled Procedure Step Sequence does not have exactly one item"
    step = steps.value[0]
    for container, keywords in (
            (step, ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                    "ScheduledProcedureStepStartTime", "Modality",
                    "ScheduledProcedureStepID")),
            (item, ("RequestedProcedureID", "StudyInstanceUID", "PatientName",
                    "PatientID"))):
        for keyword in keywords:
            element = container.get(_tag(keyword))
            if element is None or _is_empty(element):
                return f"{keyword} is missing or empty"
    for container, description, codes in ((step, SPS_DESCRIPTION, PROTOCOL_CODES),
                                          (item, PROCEDURE_DESCRIPTION, PROCEDURE_CODES)):
        problem = _description_or_codes_problem(container, description, codes)
        if problem:
            return problem
    for tag in (REFERENCED_STUDIES, REFERENCED_PATIENTS):
        sequence = item.get(tag)
        if sequence is not None and sequence.VR == "SQ" and any(
                _is_missing(entry, REFERENCED_CLASS) or _is_missing(entry, REFERENCED_INSTANCE)
                for entry in sequence.value):
            return f"an item of ({tag >> 16:04X},{tag & 0xFFFF:04X}) has no references"
    return None


def _is_missing(container: Dataset, tag: int) -> bool:
    element = container.get(tag)
    return element is None or _is_empty(element)


def _description_or_codes_problem(container: Dataset, description: int,
                                  codes: int) -> str | None:
    name = f"({description >> 16:04X},{description & 0xFFFF:04X})"
    sequence = container.get(codes)
    if sequence is not None and sequence.VR == "SQ":
        if len(sequence.value) == 0:
            return f"its code sequence next to {name} is empty"
        if any(_is_missing(entry, CODE_VALUE) or _is_missing(entry, CODING_SCHEME)
               for entry in sequence.value):
            return f"its code sequence next to {name} has an incomplete code"
    text = container.get(description)
    if text is None:
        if sequence is None:
            return f"neither {name} nor its code sequence is present"
    elif _is_empty(text):
        return f"{name} is empty"
    return None


def read_item(path: str) -> Dataset:
    """Read and fully decode one worklist file.

    :raises Exception: it cannot be read or decoded (pydicom's errors).
    """
    item = dcmread(path, force=True)
    _decode_all(item)
    return item


def _decode_all(container: Dataset) -> None:
    """Decode every value now (pydicom decodes on first access), so that a
    corrupt file fails here and is skipped, not in a later query; a value
    cut short by the end of the file (which pydicom reads without
    complaint) is an error too, as it is for DCMTK.

    :raises ValueError: a value is cut short.
    """
    for tag in list(container.keys()):
        raw = container.get_item(tag)
        length, value = getattr(raw, "length", None), getattr(raw, "value", None)
        if (isinstance(value, bytes) and length is not None and length != 0xFFFFFFFF
                and len(value) < length):
            raise ValueError(f"the value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) is cut"
                             " short by the end of the file")
        element = container[tag]
        if element.VR == "SQ":
            for entry in element.value:
                _decode_all(entry)


@dataclass(frozen=True)
class _Version:
    """A version of a file, by what changes when it is rewritten."""

    mtime_ns: int
    size: int
    inode: int


@dataclass
class _Entry:
    version: _Version
    item: Dataset | None
    problem: str | None = None


class WorklistDirectory:
    """The worklist items of a directory, re-read as they change.

    :param path: the directory holding the ``*.wl`` files.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def items(self) -> tuple[list[tuple[str, Dataset]], list[tuple[str, str]]]:
        """Every readable, complete item as ``(file name, data set)``, and
        the files newly found unusable as ``(file name, why)`` (each version
        of a file is reported once).  Blocking: run it in a thread pool.

        :raises OSError: the directory cannot be listed.
        """
        problems: list[tuple[str, str]] = []
        with self._lock, _ReadLock(os.path.join(self.path, LOCKFILE)) as lock:
            if lock.locked is False:
                problems.append((LOCKFILE, f"stays write-locked (waited {LOCK_WAIT:g} s);"
                                           " the items were read without the lock"))
            names = sorted(name for name in os.listdir(self.path) if name.endswith(ITEM_SUFFIX))
            entries: dict[str, _Entry] = {}
            for name in names:
                entry = self._entry(name)
                if entry is None:
                    continue
                entries[name] = entry
                known = self._entries.get(name)
                if entry.problem and (known is None or known.version != entry.version
                                      or known.problem != entry.problem):
                    problems.append((name, entry.problem))
            self._entries = entries
        return ([(name, entry.item) for name, entry in entries.items()
                 if entry.item is not None], problems)

    def _entry(self, name: str) -> _Entry | None:
        path = os.path.join(self.path, name)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            return _Entry(_Version(-1, -1, -1), None, f"cannot be read: {e.strerror}")
        if not os.path.isfile(path):
            return None
        version = _Version(info.st_mtime_ns, info.st_size, info.st_ino)
        known = self._entries.get(name)
        if known is not None and known.version == version:
            return known
        try:
            item = read_item(path)
        except Exception as e:
            return _Entry(version, None, f"cannot be read: {str(e) or type(e).__name__}")
        problem = incomplete(item)
        if problem:
            return _Entry(version, None, f"is incomplete: {problem}")
        return _Entry(version, item)


class _ReadLock:
    """A shared lock on DCMTK's lock file while the items are read, when
    the directory has one (``wlmscpfs`` takes the same lock).

    A writer holding its write lock is waited for, at most
    :data:`LOCK_WAIT` seconds (``wlmscpfs`` waits for ever; a pool thread
    must not): then the items are read without the lock.
    """

    def __init__(self, path: str, wait: float | None = None) -> None:
        self.path = path
        self.wait = LOCK_WAIT if wait is None else wait
        self.fd: int | None = None
        #: Whether the lock could be taken (None: there is no lock file).
        self.locked: bool | None = None

    def __enter__(self) -> "_ReadLock":
        import fcntl

        try:
            self.fd = os.open(self.path, os.O_RDWR)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EACCES, errno.EISDIR):
                raise
            return self
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    self.locked = False
                    return self
                time.sleep(0.05)
            else:
                self.locked = True
                return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


#: The names under which items are written and removed over HTTP: a
#: plain file name ending in ``.wl``, no directory, not hidden.
ITEM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.wl")


def is_item_name(name: str) -> bool:
    """Is ``name`` a worklist file name items may be written under?"""
    return ITEM_NAME.fullmatch(name) is not None


def new_item_name() -> str:
    """A fresh, unique worklist file name."""
    import uuid

    return f"{uuid.uuid4().hex}{ITEM_SUFFIX}"


def save_item(directory: str, name: str, item: Dataset) -> bool:
    """Write a worklist item as ``directory/name``, atomically: a temporary
    file (not ``*.wl``) written and fsynced, renamed over the name, the
    directory fsynced.  A query sees the old file or the new one, never a
    part.  Blocking: run it in a thread pool.

    :returns: whether the name was new.
    :raises ValueError: the name is not a worklist file name, or the item
        is incomplete (it would never be answered) or cannot be encoded.
    :raises OSError: it cannot be written (nothing is left behind).
    """
    from dicomtwist.dimse.codec import encode_dataset
    from dicomtwist.storage.files import (
        fsync_directory,
        part10_header,
        write_temporary,
    )

    if not is_item_name(name):
        raise ValueError(f"{name!r} is not a worklist file name (*.wl, no directory)")
    problem = incomplete(item)
    if problem:
        raise ValueError(f"the item is incomplete: {problem}")
    # File meta information belongs in the header, not in the data set.
    item = Dataset({tag: element for tag, element in item.items() if tag >> 16 != 0x0002})
    explicit = "1.2.840.10008.1.2.1"
    try:
        data = encode_dataset(item, explicit)
        header = part10_header(WORKLIST_FIND, str(item.StudyInstanceUID), explicit)
    except (ValueError, TypeError, UnicodeError, OverflowError, struct_error) as e:
        raise ValueError(f"the item cannot be encoded: {e}") from e
    path = os.path.join(directory, name)
    existed = os.path.exists(path)
    temporary = write_temporary(directory, header, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    fsync_directory(directory)
    return not existed


def remove_item(directory: str, name: str) -> bool:
    """Remove the worklist item ``directory/name`` (blocking).

    :returns: whether there was one.
    :raises ValueError: the name is not a worklist file name.
    """
    from dicomtwist.storage.files import fsync_directory

    if not is_item_name(name):
        raise ValueError(f"{name!r} is not a worklist file name (*.wl, no directory)")
    try:
        os.unlink(os.path.join(directory, name))
    except FileNotFoundError:
        return False
    fsync_directory(directory)
    return True


@dataclass
class Answers:
    """What a worklist query found.

    :ivar datasets: one answer per matching item.
    :ivar unsupported: keys of the query were left out (0xFF01).
    :ivar problems: files newly found unusable, ``(file name, why)``.
    """

    datasets: list[Dataset]
    unsupported: bool
    problems: list[tuple[str, str]]


def find(directory: WorklistDirectory, identifier: Dataset) -> Answers:
    """Answer a worklist query from a directory (blocking).

    :raises QueryError: the query is invalid.
    :raises OSError: the directory cannot be read.
    """
    query = check_query(identifier)
    items, problems = directory.items()
    return Answers([response(item, query.mask) for _, item in items
                    if matches(item, query.mask)], query.unsupported, problems)


class Worklist:
    """The Modality Worklist C-FIND handler over a worklist directory.

    :param pool: where the directory is read and the query matched.
    """

    log = dlog.logger()

    def __init__(self, reactor: Any, pool: Any, path: str) -> None:
        self.reactor = reactor
        self.pool = pool
        self.directory = WorklistDirectory(path)

    def handle_find(self, request: Any) -> AsyncIterator[Response]:
        """C-FIND handler: one pending answer per matching item; with the
        event bus observed (audit trail, metrics), then a
        :class:`~dicomtwist.events.QueryPerformed`."""
        if events.bus.observed:
            return published_find(request, self._find(request))
        return self._find(request)

    async def _find(self, request: Any) -> AsyncIterator[Response]:
        identifier = request.dataset()
        try:
            answers = await deferToThreadPool(self.reactor, self.pool, find, self.directory,
                                              identifier)
        except QueryError as e:
            self.log.warn("Worklist query refused: {comment}", comment=e.comment)
            raise
        except OSError as e:
            self.log.error("Worklist directory {path} cannot be read: {error}",
                           path=self.directory.path, error=e.strerror)
            raise DIMSEServiceError(Status.UNABLE_TO_PROCESS,
                                    "worklist directory cannot be read") from e
        for name, problem in answers.problems:
            if name == LOCKFILE:
                self.log.warn("Worklist lock file in {path} {problem}",
                              path=self.directory.path, problem=problem)
            else:
                self.log.warn("Worklist file {name} skipped: it {problem}", name=name,
                              problem=problem)
        status = Status.PENDING_WARNING if answers.unsupported else Status.PENDING
        for answer in answers.datasets:
            if request.cancelled:
                return
            yield Response(status, answer)
