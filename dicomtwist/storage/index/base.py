"""What both index backends share: the layout, row decoding and the SQL.

The index is plain synchronous Python, safe to share between the threads of
a pool: the service layer calls it through ``deferToThreadPool`` and never
on the reactor thread.  :class:`SqlIndex` holds everything that does not
depend on the database (planning a C-FIND, reading the rows, removing,
recounting); ``sqlite.py`` and ``postgres.py`` hold connections,
transactions, the schema's SQL types and the ``add`` path.  Statements are
written once with ``?`` placeholders; ``matching.Dialect.sql`` gives each
database its own.

Layout, one table per Query/Retrieve level (PS3.4 C.6):

- ``patient``: identified by Patient ID and Issuer of Patient ID (PS3.4
  C.6.1.1.2: Patient ID is the Patient level unique key; an empty issuer
  is stored as ``""``). Instances with the same Patient ID (and issuer)
  share one row.
- ``study``, ``series``, ``instance``: keyed by their UIDs, each holding the
  integer key of its parent.
- ``metadata``: each instance's DICOMweb metadata, apart from the narrow
  rows C-FIND scans.
- ``procedure_code_item``, ``referenced_study_item``,
  ``request_attributes_item``: the items of the sequences kept for
  sequence matching (:data:`SEQUENCES`), each row owned by a study or
  series row (``owner_pk``).
- ``schema_version``: one row, the layout's version (:data:`SCHEMA_VERSION`).

Values are stored decoded to ``str`` as pydicom gives them after applying
the data set's Specific Character Set (PS3.5 6.1, PS3.3 C.12.1.1.2); PN
values keep all component groups (``Yamada^Tarou=山田^太郎=やまだ^たろう``),
multi-valued values are joined with ``\\``, IS and US are integers. PN, TM
and DT values also keep a ``<column>_key`` with the normalised form that
``matching`` compares. Parent rows take the non-empty values of the latest
instance added.

Modalities in Study and SOP Classes in Study are matched against the series
and instance rows they come from, so any one value matches; other stored
multi-valued attributes (Other Patient IDs, Name of Physicians Reading
Study) are matched against their whole stored value.

Derived attributes (Number of Patient/Study/Series Related ..., Modalities
in Study, SOP Classes in Study) are columns recomputed for the rows an
``add`` or ``remove`` touches, in the same transaction.

Schema versions (:data:`SCHEMA_VERSION`): version 1 is the layout without a
version record (dicomtwist up to the PostgreSQL backend; some such files
lack the ``metadata`` table); version 2 adds ``schema_version``; version
3 the item tables (empty, after an upgrade, for the instances indexed
before it, until ``--reindex``); version 4 the web page's jobs
(``web_job``, see ``jobs``).  Opening
an index creates the schema in an empty database, upgrades an older one
automatically in one transaction (each step only adds: tables, indexes),
and refuses a newer one (:class:`IndexUnavailable`), so that an older
daemon never writes a layout it does not know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any, NamedTuple, TypeVar

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag

from dicomtwist.storage import matching
from dicomtwist.storage.matching import Condition, QueryError
from dicomtwist.storage.responses import ResponseEncoder

__all__ = [
    "ATTRIBUTES",
    "Attribute",
    "BATCH_SIZE",
    "IndexUnavailable",
    "InstanceRecord",
    "LEVELS",
    "MODELS",
    "QueryError",
    "SCHEMA_VERSION",
    "SEQUENCES",
    "SequenceAttribute",
    "SqlIndex",
    "StoredInstance",
    "UNIQUE_KEYS",
    "unsupported_keys",
]

BATCH_SIZE = 500
"""Rows fetched per lock acquisition while streaming query results."""

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
"""Query/Retrieve levels, top to bottom (PS3.4 C.3)."""

TABLES = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
_ALIASES = {"patient": "p", "study": "st", "series": "se", "instance": "i"}
_DEPTH = {"patient": 0, "study": 1, "series": 2, "instance": 3}

MODELS = {
    "PATIENT": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "STUDY": ("STUDY", "SERIES", "IMAGE"),
    "PATIENT_STUDY_ONLY": ("PATIENT", "STUDY"),
}
"""The levels of each information model (PS3.4 C.6.1, C.6.2, C.6.3)."""

UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
"""The unique key of each level (PS3.4 C.6.1.1, C.6.2.1)."""

_LEVEL_OF = {table: level for level, table in TABLES.items()}
#: Date and Time keys matched as one range when combined date-time matching
#: was negotiated (PS3.4 C.2.2.2.5.1).
DATE_TIME_PAIRS = (("PatientBirthDate", "PatientBirthTime"), ("StudyDate", "StudyTime"),
                   ("SeriesDate", "SeriesTime"), ("ContentDate", "ContentTime"))
_EMPTY = DataElement(0x00000000, "UL", None)
_QUERY_RETRIEVE_LEVEL = Tag("QueryRetrieveLevel")
_SPECIFIC_CHARACTER_SET = Tag("SpecificCharacterSet")
_INSTANCE_AVAILABILITY = Tag("InstanceAvailability")
_UTF8 = "ISO_IR 192"


@dataclass(frozen=True)
class Attribute:
    """An attribute the index stores and matches.

    :param keyword: the DICOM keyword.
    :param table: ``patient``, ``study``, ``series`` or ``instance``.
    :param column: the SQL column.
    :param vr: the VR.
    :param derived: computed by the index, not read from the data set.
    """

    keyword: str
    table: str
    column: str
    vr: str
    derived: bool = False
    tag: BaseTag = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", Tag(self.keyword))

    @property
    def key_column(self) -> str | None:
        """The column holding ``matching.match_key`` of the value, if any."""
        return f"{self.column}_key" if self.vr in matching.KEYED_VRS else None

    @property
    def sql_type(self) -> type:
        """The Python type sqlite-utils maps to the column's SQL type."""
        return int if self.vr in matching.NUMERIC_VRS else str


def _a(keyword: str, table: str, column: str, derived: bool = False) -> Attribute:
    return Attribute(keyword, table, column, dictionary_VR(keyword), derived)


ATTRIBUTES: tuple[Attribute, ...] = (
    # Patient level (PS3.4 C.6.1.1.2)
    _a("PatientID", "patient", "patient_id"),
    _a("IssuerOfPatientID", "patient", "issuer_of_patient_id"),
    _a("PatientName", "patient", "patient_name"),
    _a("PatientBirthDate", "patient", "patient_birth_date"),
    _a("PatientBirthTime", "patient", "patient_birth_time"),
    _a("PatientSex", "patient", "patient_sex"),
    _a("OtherPatientIDs", "patient", "other_patient_ids"),
    _a("OtherPatientNames", "patient", "other_patient_names"),
    _a("EthnicGroup", "patient", "ethnic_group"),
    _a("PatientComments", "patient", "patient_comments"),
    _a("NumberOfPatientRelatedStudies", "patient", "number_of_patient_related_studies", True),
    _a("NumberOfPatientRelatedSeries", "patient", "number_of_patient_related_series", True),
    _a("NumberOfPatientRelatedInstances", "patient", "number_of_patient_related_instances", True),
    # Study level (PS3.4 C.6.1.1.3, C.6.2.1.2)
    _a("StudyInstanceUID", "study", "study_instance_uid"),
    _a("StudyDate", "study", "study_date"),
    _a("StudyTime", "study", "study_time"),
    _a("AccessionNumber", "study", "accession_number"),
    _a("StudyID", "study", "study_id"),
    _a("StudyDescription", "study", "study_description"),
    _a("ReferringPhysicianName", "study", "referring_physician_name"),
    _a("NameOfPhysiciansReadingStudy", "study", "name_of_physicians_reading_study"),
    _a("AdmittingDiagnosesDescription", "study", "admitting_diagnoses_description"),
    _a("PatientAge", "study", "patient_age"),
    _a("PatientSize", "study", "patient_size"),
    _a("PatientWeight", "study", "patient_weight"),
    _a("Occupation", "study", "occupation"),
    _a("AdditionalPatientHistory", "study", "additional_patient_history"),
    _a("ModalitiesInStudy", "study", "modalities_in_study", True),
    _a("SOPClassesInStudy", "study", "sop_classes_in_study", True),
    _a("NumberOfStudyRelatedSeries", "study", "number_of_study_related_series", True),
    _a("NumberOfStudyRelatedInstances", "study", "number_of_study_related_instances", True),
    # Series level (PS3.4 C.6.1.1.4)
    _a("SeriesInstanceUID", "series", "series_instance_uid"),
    _a("Modality", "series", "modality"),
    _a("SeriesNumber", "series", "series_number"),
    _a("SeriesDescription", "series", "series_description"),
    _a("SeriesDate", "series", "series_date"),
    _a("SeriesTime", "series", "series_time"),
    _a("BodyPartExamined", "series", "body_part_examined"),
    _a("Laterality", "series", "laterality"),
    _a("ProtocolName", "series", "protocol_name"),
    _a("PerformingPhysicianName", "series", "performing_physician_name"),
    _a("NumberOfSeriesRelatedInstances", "series", "number_of_series_related_instances", True),
    # Composite object instance level (PS3.4 C.6.1.1.5)
    _a("SOPInstanceUID", "instance", "sop_instance_uid"),
    _a("SOPClassUID", "instance", "sop_class_uid"),
    _a("InstanceNumber", "instance", "instance_number"),
    _a("ContentDate", "instance", "content_date"),
    _a("ContentTime", "instance", "content_time"),
    _a("AcquisitionNumber", "instance", "acquisition_number"),
    _a("NumberOfFrames", "instance", "number_of_frames"),
    _a("Rows", "instance", "rows"),
    _a("Columns", "instance", "columns"),
    _a("AvailableTransferSyntaxUID", "instance", "transfer_syntax_uid", True),
)
"""Every attribute the index stores, by level."""

_BY_TAG = {a.tag: a for a in ATTRIBUTES}
#: The attributes ``add`` reads from a data set.
_ADDED = tuple(a for a in ATTRIBUTES if not a.derived)
_ADDED_KEYWORDS = tuple(a.keyword for a in _ADDED)
_ADDED_BY_TAG = {int(a.tag): a for a in _ADDED}
#: ``tag -> (keyword, VR, stored as an integer, a date, the attribute)``
#: of what ``add`` reads, for :func:`_row` (no property or call per element).
_ROW_SPECS = {int(a.tag): (a.keyword, a.vr, a.sql_type is int, a.vr == "DA", a) for a in _ADDED}
#: ``(keyword, column, key column or None, VR)`` of what ``add`` writes, by table.
_WRITTEN_COLUMNS = {table: tuple((a.keyword, a.column, a.key_column, a.vr)
                                 for a in _ADDED if a.table == table)
                    for table in ("patient", "study", "series", "instance")}
_BY_KEYWORD = {a.keyword: a for a in ATTRIBUTES}


@dataclass(frozen=True)
class SequenceAttribute:
    """A sequence attribute the index keeps, item by item, for sequence
    matching (PS3.4 C.2.2.2.6).

    :param keyword: the DICOM keyword of the sequence.
    :param table: the level's table that owns it (``study``, ``series``).
    :param item_table: the SQL table of its items: ``pk``, ``owner_pk``
        (the owner row), ``position`` (from 0), then one column per
        attribute of :attr:`items`.
    :param items: the attributes of an item the index keeps (their
        ``table`` is ``item_table``).
    """

    keyword: str
    table: str
    item_table: str
    items: tuple[Attribute, ...]
    tag: BaseTag = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", Tag(self.keyword))

    def item(self, tag: BaseTag) -> Attribute | None:
        """The item attribute of ``tag``, or None if the index does not keep it."""
        return next((a for a in self.items if a.tag == tag), None)


def _s(keyword: str, table: str, item_table: str,
       items: tuple[tuple[str, str], ...]) -> SequenceAttribute:
    return SequenceAttribute(keyword, table, item_table,
                             tuple(_a(k, item_table, column) for k, column in items))


SEQUENCES: tuple[SequenceAttribute, ...] = (
    # Study level (General Study Module, PS3.3 C.7.2.1)
    _s("ProcedureCodeSequence", "study", "procedure_code_item", (
        ("CodeValue", "code_value"),
        ("CodingSchemeDesignator", "coding_scheme_designator"),
        ("CodingSchemeVersion", "coding_scheme_version"),
        ("CodeMeaning", "code_meaning"))),
    _s("ReferencedStudySequence", "study", "referenced_study_item", (
        ("ReferencedSOPClassUID", "referenced_sop_class_uid"),
        ("ReferencedSOPInstanceUID", "referenced_sop_instance_uid"))),
    # Series level (General Series Module, PS3.3 C.7.3.1; PS3.4 C.6.1.1.4)
    _s("RequestAttributesSequence", "series", "request_attributes_item", (
        ("RequestedProcedureID", "requested_procedure_id"),
        ("ScheduledProcedureStepID", "scheduled_procedure_step_id"),
        ("AccessionNumber", "accession_number"),
        ("StudyInstanceUID", "study_instance_uid"),
        ("RequestedProcedureDescription", "requested_procedure_description"),
        ("ScheduledProcedureStepDescription", "scheduled_procedure_step_description"))),
)
"""Every sequence attribute the index keeps for sequence matching."""

_SEQUENCE_BY_TAG = {s.tag: s for s in SEQUENCES}
#: Items kept of one sequence at most (the rest are ignored).
MAX_ITEMS = 64
#: The tags ``add`` reads from a data set (with Specific Character Set).
INDEXED_TAGS = frozenset([a.tag for a in _ADDED] + [s.tag for s in SEQUENCES]
                         + [_SPECIFIC_CHARACTER_SET])

# Multi-valued derived attributes are matched against the rows they are
# derived from, so that "CT\MR" matches a study having any of them
# (PS3.4 C.6.1.1.3.1 for Modalities in Study).
_DERIVED_MATCH = {
    "ModalitiesInStudy": (
        "EXISTS (SELECT 1 FROM series ms WHERE ms.study_pk = st.pk AND {cond})",
        "ms.modality", "CS"),
    "SOPClassesInStudy": (
        "EXISTS (SELECT 1 FROM instance mi JOIN series ms ON ms.pk = mi.series_pk "
        "WHERE ms.study_pk = st.pk AND {cond})",
        "mi.sop_class_uid", "UI"),
}

_FROM = {
    "patient": "patient p",
    "study": "study st JOIN patient p ON p.pk = st.patient_pk",
    "series": ("series se JOIN study st ON st.pk = se.study_pk "
               "JOIN patient p ON p.pk = st.patient_pk"),
    "instance": ("instance i JOIN series se ON se.pk = i.series_pk "
                 "JOIN study st ON st.pk = se.study_pk "
                 "JOIN patient p ON p.pk = st.patient_pk"),
}


class StoredInstance(NamedTuple):
    """One stored instance as DICOMweb retrieves it (WADO-RS).

    ``path`` is relative to the instance directory; ``metadata`` is what
    :meth:`Index.add` was given (compressed JSON), None if it was not
    asked for or never kept.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None
    transfer_syntax_uid: str
    path: str
    number_of_frames: int | None
    metadata: bytes | None


#: The patient's derived counts after one new instance (parameters: new
#: study 0/1, new series 0/1, patient pk), the same on both backends.
COUNT_NEW_PATIENT = (
    "UPDATE patient SET number_of_patient_related_studies = "
    "COALESCE(number_of_patient_related_studies, 0) + ?, "
    "number_of_patient_related_series = "
    "COALESCE(number_of_patient_related_series, 0) + ?, "
    "number_of_patient_related_instances = "
    "COALESCE(number_of_patient_related_instances, 0) + 1 WHERE pk = ?")


class InstanceRecord(NamedTuple):
    """One stored instance to send for a C-MOVE or C-GET.

    ``path`` is relative to the instance directory.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str


_T = TypeVar("_T")


@dataclass(frozen=True)
class _ReturnKey:
    tag: BaseTag
    vr: str
    expression: str | None  # SQL expression, or None for "always empty"
    constant: object = None
    #: A kept sequence (``expression`` is then its owner's pk): the keys of
    #: its items, and the SQL reading the matching items of owners.
    items: tuple[_ReturnKey, ...] = ()
    item_sql: str = ""
    item_params: tuple = ()


@dataclass(frozen=True)
class _Plan:
    level: str
    table: str
    keys: tuple[_ReturnKey, ...]
    sql: str
    params: tuple
    character_set: object

    @property
    def sequences(self) -> tuple[tuple[int, _ReturnKey], ...]:
        """``(row position, key)`` of each kept sequence returned."""
        found = []
        position = 1
        for key in self.keys:
            if key.expression:
                if key.item_sql:
                    found.append((position, key))
                position += 1
        return tuple(found)


def _stored_value(ds: Dataset, attribute: Attribute) -> object:
    """The value of ``attribute`` in ``ds`` as the index stores it."""
    tag = attribute.tag
    if tag not in ds:
        return None
    return _stored(matching.split_values(ds[tag].value), attribute)


def _stored(values: list[str], attribute: Attribute) -> object:
    if not any(values):
        return None
    if attribute.sql_type is int:
        try:
            return int(values[0])
        except ValueError:
            return None
    if attribute.vr == "DA":
        values = [v.replace(".", "") for v in values]
    return "\\".join(values)


#: Python codecs for the character sets decoded without pydicom: the
#: default repertoire (pydicom reads it as Latin-1), Latin-1 and UTF-8.
_FAST_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
                  "ISO_IR 192": "utf-8"}
_ASCII_VRS = frozenset({"UI", "CS", "AS", "DA", "TM", "DT", "IS"})
_MULTI_TEXT_VRS = frozenset({"LO", "SH"})


def _fast_codec(ds: Dataset) -> str | None:
    """The Python codec for ``ds``'s text, when its Specific Character Set
    is one of :data:`_FAST_CHARSETS`; otherwise None."""
    element = ds.get_item(_SPECIFIC_CHARACTER_SET)
    if element is None or element.value is None:
        return "latin-1"
    value = element.value
    if isinstance(element, RawDataElement):
        try:
            value = bytes(value).decode("ascii").strip(" \0")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    return _FAST_CHARSETS.get(value.strip())


def _raw_values(element: RawDataElement, vr: str, codec: str | None) -> list[str] | None:
    """The values of a raw element as pydicom would give them, for the
    common VRs and character sets; None where pydicom must decode."""
    if element.VR is not None and element.VR != vr:
        return None
    raw = element.value
    if not raw:
        return []
    if vr == "US":
        if len(raw) < 2:
            return None
        return [str(int.from_bytes(raw[:2], "little" if element.is_little_endian else "big"))]
    if vr in _ASCII_VRS:
        text = bytes(raw).decode("latin-1").rstrip(" \0")
        return text.split("\\") if text else []
    if codec is None or 0x1B in raw:
        return None
    try:
        if vr == "PN":
            # pydicom's PersonName drops empty trailing component groups.
            text = bytes(raw).rstrip(b"\0 ").decode(codec)
            return [v.rstrip("=") for v in text.split("\\")] if text else []
        text = bytes(raw).decode(codec)
    except UnicodeDecodeError:
        return None
    if vr in _MULTI_TEXT_VRS:
        return [v.rstrip("\0 ") for v in text.split("\\")]
    if vr == "LT":
        text = text.rstrip("\0 ")
        return text.split("\\") if text else []
    return None


#: ``(tag, VR, raw value, little endian, codec) -> (keyword, stored value)`` of raw
#: elements :func:`_row` decoded: the patient's, study's and series'
#: values repeat instance after instance.  Cleared when full.
_ROW_MEMO: dict[tuple, tuple[str, object]] = {}
_ROW_MEMO_LIMIT = 4096
#: Values that never repeat, not remembered.
_ROW_UNIQUE = frozenset({int(Tag("SOPInstanceUID"))})


def _row(ds: Dataset) -> dict[str, object]:
    """Every written attribute of ``ds`` as the index stores it.

    Raw elements of the common VRs and character sets are decoded here
    (those of the ASCII VRs inline, and each value remembered,
    :data:`_ROW_MEMO`: this runs for every stored instance); the rest (and
    anything unusual) goes through pydicom, which gives the same values
    more slowly.  The elements are read from the data set's own mapping:
    ``Dataset.get_item`` costs more than the decoding, and the tags are
    looked up as plain ``int`` s (a ``BaseTag`` key would call its Python
    ``__eq__`` on every hit).
    """
    codec = _fast_codec(ds)
    row: dict[str, object] = dict.fromkeys(_ADDED_KEYWORDS)
    specs = _ROW_SPECS
    memo = _ROW_MEMO
    for tag, element in ds._dict.items():
        raw_element = isinstance(element, RawDataElement)
        if raw_element:
            key = (tag, element.VR, element.value, element.is_little_endian, codec)
            known = memo.get(key)
            if known is not None:
                row[known[0]] = known[1]
                continue
        spec = specs.get(int(tag))
        if spec is None:
            continue
        keyword, vr, is_int, is_date, attribute = spec
        value: object
        if raw_element and (element.VR is None or element.VR == vr):
            raw = element.value
            if not raw:
                value = None
            elif vr in _ASCII_VRS:
                # What _stored(_raw_values(...)) gives, without the lists.
                text = bytes(raw).decode("latin-1").rstrip(" \0")
                if not text.strip("\\"):
                    value = None  # no value, or only empty ones
                elif is_int:
                    try:
                        value = int(text.split("\\", 1)[0])
                    except ValueError:
                        value = None
                elif is_date:
                    value = text.replace(".", "")
                else:
                    value = text
            else:
                values = _raw_values(element, vr, codec)
                if values is None:
                    row[keyword] = _stored_value(ds, attribute)
                    continue
                value = _stored(values, attribute)
            row[keyword] = value
            if int(tag) not in _ROW_UNIQUE:
                if len(memo) >= _ROW_MEMO_LIMIT:
                    memo.clear()
                memo[key] = (keyword, value)
            continue
        row[keyword] = _stored_value(ds, attribute)
    return row


def _sequence_items(ds: Dataset) -> dict[SequenceAttribute, list[dict[str, object]]]:
    """The items of each kept sequence in ``ds`` that has any, as the
    index stores them: per item, its columns (and key columns) -> values.

    Items without any kept value are left out; so is a sequence pydicom
    cannot decode (the instance is still stored: these are optional
    attributes).
    """
    found: dict[SequenceAttribute, list[dict[str, object]]] = {}
    for sequence in SEQUENCES:
        if sequence.tag not in ds._dict:
            continue
        try:
            items = ds[sequence.tag].value
            rows = []
            for item in islice(items or (), MAX_ITEMS):
                values: dict[str, object] = {}
                for attribute in sequence.items:
                    value = _stored_value(item, attribute)
                    if isinstance(value, str):
                        # PostgreSQL text cannot hold NUL.
                        value = value.replace("\0", "")
                    values[attribute.column] = value
                    if attribute.key_column:
                        values[attribute.key_column] = matching.match_key(value, attribute.vr)
                if any(v is not None for v in values.values()):
                    rows.append(values)
        except Exception:
            continue
        if rows:
            found[sequence] = rows
    return found


def _character_set(ds: Dataset) -> str | None:
    """Specific Character Set as the index stores it."""
    element = ds._dict.get(_SPECIFIC_CHARACTER_SET)
    if element is None:
        return None
    if isinstance(element, RawDataElement):
        values = _raw_values(element, "CS", None)
        if values is not None:
            return "\\".join(values) or None
    return "\\".join(matching.split_values(ds.get("SpecificCharacterSet"))) or None


def _is_single_value(value: object, vr: str) -> bool:
    values = matching.split_values(value)
    if len(values) != 1 or not values[0] or values[0] == matching.EMPTY_VALUE:
        return False
    return not matching.has_wildcard(values[0], vr) and "*" not in values[0]


def _check_model(model: str) -> tuple[str, ...]:
    try:
        return MODELS[model]
    except KeyError:
        raise ValueError(f"unknown information model {model!r}") from None


def _query_level(identifier: Dataset, model: str) -> str:
    """The Query/Retrieve Level of an identifier, checked against the model.

    :raises QueryError: 0xA900 if it is missing or not a level of the model.
    """
    levels = _check_model(model)
    level = identifier.get("QueryRetrieveLevel")
    if not level or not isinstance(level, str):
        raise QueryError(comment="Missing or invalid Query/Retrieve Level")
    level = level.strip()
    if level not in levels:
        raise QueryError(comment=f"Query/Retrieve Level {level} invalid for model")
    return level


def _check_higher_unique_keys(identifier: Dataset, model: str, level: str) -> None:
    # PS3.4 C.4.1.2.1 (C-FIND), C.4.2.2.1 (C-MOVE), C.4.3.2.1 (C-GET):
    # with the hierarchical method, the unique key of each level above the
    # query level shall be given, with single value matching.
    levels = MODELS[model]
    for higher in levels[:levels.index(level)]:
        keyword = UNIQUE_KEYS[higher]
        attribute = _BY_KEYWORD[keyword]
        if keyword not in identifier or not _is_single_value(
                identifier[keyword].value, attribute.vr):
            raise QueryError(comment=f"{keyword} needs a single value at {level} level")


def unsupported_keys(identifier: Dataset) -> list[str]:
    """The keys of an identifier that the index does not hold.

    They are treated as universal matching (PS3.4 C.2.2.2.3) and returned
    empty; the service answers each match with Pending 0xFF01, "one or more
    Optional Keys were not supported for existence and/or matching" (PS3.4
    C.4.1.1.4), when this is not empty.  Query/Retrieve Level, Specific
    Character Set, group lengths and Instance Availability (always
    ``ONLINE``) are supported; inside a kept sequence (:data:`SEQUENCES`),
    so are the item attributes it keeps.

    :returns: the keywords (or tags) of those keys, ``Sequence>Item`` for
        an item's key.
    """
    found = []
    for element in identifier:
        tag = element.tag
        if tag in (_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET, _INSTANCE_AVAILABILITY) \
                or tag.element == 0 or tag in _BY_TAG:
            continue
        name = element.keyword or str(tag)
        sequence = _SEQUENCE_BY_TAG.get(tag)
        if sequence is None or element.VR != "SQ":
            found.append(name)
            continue
        for item in element.value or ():
            for item_element in item:
                if item_element.tag.element != 0 and sequence.item(item_element.tag) is None:
                    found.append(f"{name}>{item_element.keyword or item_element.tag}")
    return found


SCHEMA_VERSION = 4
"""The layout this code writes: 1 had no version record, 2 records it, 3
adds the item tables of :data:`SEQUENCES`, 4 the web page's jobs
(``jobs.statements``)."""

_PARENTS = {"study": ("patient_pk", "patient"), "series": ("study_pk", "study"),
            "instance": ("series_pk", "series")}

#: ``(table, columns, unique)``: the indexes of the layout (sqlite-utils
#: named them ``idx_<table>_<columns>`` in version 1; so do we).
INDEXES = (
    ("patient", ("patient_id", "issuer_of_patient_id"), True),
    ("patient", ("patient_name_key",), False),
    ("patient", ("patient_birth_date",), False),
    ("study", ("study_instance_uid",), True),
    ("study", ("patient_pk",), False),
    ("study", ("study_date",), False),
    ("study", ("accession_number",), False),
    ("study", ("study_id",), False),
    ("series", ("series_instance_uid",), True),
    ("series", ("study_pk",), False),
    ("series", ("modality",), False),
    ("instance", ("sop_instance_uid",), True),
    ("instance", ("series_pk",), False),
    ("instance", ("sop_class_uid",), False),
    ("procedure_code_item", ("owner_pk",), False),
    ("procedure_code_item", ("code_value",), False),
    ("referenced_study_item", ("owner_pk",), False),
    ("referenced_study_item", ("referenced_sop_instance_uid",), False),
    ("request_attributes_item", ("owner_pk",), False),
    ("request_attributes_item", ("requested_procedure_id",), False),
)


def columns(table: str) -> dict[str, type]:
    """The columns of a level's table and their Python types (``int``,
    ``str``), in the order of the layout."""
    found: dict[str, type] = {"pk": int}
    sequence = next((q for q in SEQUENCES if q.item_table == table), None)
    if sequence is not None:
        found.update(owner_pk=int, position=int)
        for attribute in sequence.items:
            found[attribute.column] = attribute.sql_type
            if attribute.key_column:
                found[attribute.key_column] = str
        return found
    if table in _PARENTS:
        found[_PARENTS[table][0]] = int
    for attribute in ATTRIBUTES:
        if attribute.table == table:
            found[attribute.column] = attribute.sql_type
            if attribute.key_column:
                found[attribute.key_column] = str
    if table == "instance":
        found.update(path=str, size=int, specific_character_set=str)
    return found


class IndexUnavailable(Exception):
    """The index cannot be opened: an unreachable database, a file that is
    not an sqlite database, a schema newer than this code.  The message is
    one line naming the location (without a password)."""


@dataclass(frozen=True)
class SqlTypes:
    """The SQL types of a backend's layout."""

    primary_key: str
    integer: str
    text: str
    blob: str


def create_statements(types: SqlTypes) -> list[str]:
    """``CREATE TABLE`` and ``CREATE INDEX`` statements of the layout, each
    ``IF NOT EXISTS`` (so an upgrade may run them over an older layout)."""
    statements = []
    for table in ("patient", "study", "series", "instance",
                  *(q.item_table for q in SEQUENCES)):
        parts = []
        for column, kind in columns(table).items():
            if column == "pk":
                parts.append(f"pk {types.primary_key}")
                continue
            sql = f"{column} {types.integer if kind is int else types.text}"
            if (table == "patient" and column in ("patient_id", "issuer_of_patient_id")
                    or column in ("owner_pk", "position")):
                sql += " NOT NULL"
            parts.append(sql)
        if table in _PARENTS:
            column, other = _PARENTS[table]
            parts.append(f"FOREIGN KEY ({column}) REFERENCES {other} (pk)")
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(parts)})")
    for table, names, unique in INDEXES:
        statements.append(
            f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS "
            f"idx_{table}_{'_'.join(names)} ON {table} ({', '.join(names)})")
    # Each instance's DICOMweb metadata (PS3.18 F.2 JSON, zlib), kept
    # apart from the narrow rows that C-FIND scans.
    statements.append("CREATE TABLE IF NOT EXISTS metadata ("
                      f"sop_instance_uid {types.text} PRIMARY KEY, json {types.blob} NOT NULL)")
    statements.append("CREATE TABLE IF NOT EXISTS schema_version "
                      f"(version {types.integer} NOT NULL)")
    from dicomtwist.storage.index import jobs

    statements.extend(jobs.statements(types))
    return statements


class SqlIndex:
    """The index over one SQL database; a backend supplies the connections.

    Subclasses provide :meth:`transaction`, :meth:`_reading` (a statement
    runner for a few reads, inside the current transaction if there is
    one), :meth:`_execute` (a statement in the current transaction),
    :meth:`_add`, :meth:`_lock_instance`, :meth:`close`, ``dialect`` and
    ``types``.

    :ivar batch_size: rows fetched per trip to the database by ``find``.
    :ivar location: where the index is, safe to log (no password).
    """

    dialect: matching.Dialect = matching.SQLITE
    types: SqlTypes
    batch_size: int = BATCH_SIZE
    location: str = ""

    # Backend hooks

    @contextmanager
    def transaction(self) -> Iterator[None]:  # pragma: no cover - abstract
        """Group writes in one transaction; blocks nest as savepoints."""
        raise NotImplementedError
        yield

    @contextmanager
    def _reading(self) -> Iterator[Callable[..., Any]]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _execute(self, sql: str, params: Iterable = ()) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _add(self, row: dict, extra: dict[str, object]) -> bool | None:  # pragma: no cover
        raise NotImplementedError

    def _lock_instance(self, sop_instance_uid: str) -> tuple | None:  # pragma: no cover
        """``(pk, path, series_pk, study_pk, patient_pk)`` of an instance,
        its rows locked for removal, or None."""
        raise NotImplementedError

    def _lock_study(self, study_instance_uid: str) -> tuple | None:  # pragma: no cover
        """``(study_pk, patient_pk)`` of a study, its rows locked for
        removal, or None."""
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        """Release the database connections."""
        raise NotImplementedError

    def _table_names(self) -> set[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    # Raw access (tests, tools)

    def _sql(self, sql: str, params: Iterable = ()) -> list[tuple]:
        """Run one statement in a transaction of its own; its rows."""
        with self.transaction():
            cursor = self._execute(sql, tuple(params))
            return list(cursor.fetchall()) if cursor.description else []

    def _rows(self, sql: str, params: Iterable = ()) -> list[dict[str, Any]]:
        """As :meth:`_sql`, each row as a dict by column name."""
        with self._reading() as execute:
            cursor = execute(sql, tuple(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    # Schema

    def _prepare_schema(self) -> int:
        """Create, check or upgrade the schema, inside a transaction.

        :returns: the version the database had (0 for an empty database).
        :raises IndexUnavailable: for a schema newer than :data:`SCHEMA_VERSION`.
        """
        tables = self._table_names()
        if "schema_version" in tables:
            row = self._execute("SELECT MAX(version) FROM schema_version").fetchone()
            found = row[0] if row and row[0] is not None else 1
        elif "instance" in tables:
            found = 1  # the layout before versions: detected by its tables
        else:
            found = 0
        if found > SCHEMA_VERSION:
            raise IndexUnavailable(f"index schema version {found} is newer than this"
                                   f" dicomtwist ({SCHEMA_VERSION}) at {self.location}")
        if found < SCHEMA_VERSION:
            # Every step so far only adds (version 1 -> 2: the metadata
            # table where it is missing, schema_version; 2 -> 3: the item
            # tables of SEQUENCES, empty for the instances already
            # indexed until --reindex; 3 -> 4: the web_job table): the
            # statements of the current layout, IF NOT EXISTS, are the upgrade.
            for statement in create_statements(self.types):
                self._execute(statement)
            self._execute("DELETE FROM schema_version")
            self._execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        return found

    # Writing

    def add(self, ds: Dataset, path: str, transfer_syntax: str, size: int,
            metadata: bytes | None = None,
            then: Callable[[], object] | None = None) -> None:
        """Index one stored instance, in one transaction (savepoint).

        A second ``add`` of the same SOP Instance UID replaces its row, even
        if the instance moved to another series, study or patient; the
        derived counts of old and new parents are recomputed.

        :param ds: the data set (its header is enough); values are decoded
            with its Specific Character Set.
        :param path: the file, relative to the instance directory.
        :param transfer_syntax: the Transfer Syntax UID of the file.
        :param size: the file size in bytes.
        :param metadata: the instance's metadata as :meth:`instances` gives
            it back (compressed JSON); None forgets any earlier one.
        :param then: called inside the same savepoint once the rows are
            written (the store renames the file into place there): if it
            raises, the rows are rolled back and its exception propagates.
            One savepoint instead of the caller's around this one.
        :raises ValueError: if a UID the index needs is missing.
        :raises Exception: the database's error if the write fails; nothing
            of this instance is kept, so the caller can delete the file.
        """
        row = _row(ds)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if not row[keyword]:
                raise ValueError(f"data set has no {keyword}")
        row["PatientID"] = row["PatientID"] or ""
        row["IssuerOfPatientID"] = row["IssuerOfPatientID"] or ""
        extra = {
            "transfer_syntax_uid": transfer_syntax,
            "path": path,
            "size": size,
            "specific_character_set": _character_set(ds),
        }
        self._add_row(row, extra, metadata, _sequence_items(ds), then)

    def _set_items(self, row: dict,
                   sequences: dict[SequenceAttribute, list[dict[str, object]]]) -> None:
        """Replace the items of the study's and series' kept sequences with
        this instance's (a parent takes the latest non-empty values)."""
        for sequence, items in sequences.items():
            unique = _BY_KEYWORD[UNIQUE_KEYS[_LEVEL_OF[sequence.table]]]
            uid = row[unique.keyword]
            owner = f"SELECT pk FROM {sequence.table} WHERE {unique.column} = ?"
            self._execute(f"DELETE FROM {sequence.item_table} WHERE owner_pk = ({owner})",
                          (uid,))
            for position, values in enumerate(items):
                columns = ", ".join(values)
                marks = ", ".join("?" for _ in values)
                self._execute(f"INSERT INTO {sequence.item_table} (owner_pk, position, "
                              f"{columns}) SELECT pk, ?, {marks} FROM {sequence.table} "
                              f"WHERE {unique.column} = ?",
                              (position, *values.values(), uid))

    def _delete_items(self, table: str, pk: int) -> None:
        """Delete the sequence items of a study or series row being deleted."""
        for sequence in SEQUENCES:
            if sequence.table == table:
                self._execute(f"DELETE FROM {sequence.item_table} WHERE owner_pk = ?", (pk,))

    def _add_row(self, row: dict, extra: dict[str, object], metadata: bytes | None,
                 sequences: dict[SequenceAttribute, list[dict[str, object]]],
                 then: Callable[[], object] | None = None) -> None:
        with self.transaction():
            new = self._add(row, extra)
            if metadata is not None or new is not True:
                # A new instance has no metadata row to forget: one exists
                # only with its instance's row (remove, delete_study and
                # clear delete both, set_metadata needs the instance).
                self._set_metadata(row["SOPInstanceUID"], metadata)
            if sequences:
                self._set_items(row, sequences)
            if then is not None:
                then()

    def _set_metadata(self, sop_instance_uid: str, metadata: bytes | None) -> None:
        if metadata is None:
            self._execute("DELETE FROM metadata WHERE sop_instance_uid = ?",
                          (sop_instance_uid,))
        else:
            self._execute("INSERT INTO metadata (sop_instance_uid, json) VALUES (?, ?) "
                          "ON CONFLICT (sop_instance_uid) DO UPDATE SET json = excluded.json",
                          (sop_instance_uid, metadata))

    @staticmethod
    def _table_values(table: str, row: dict) -> dict[str, object]:
        values: dict[str, object] = {}
        for keyword, column, key_column, vr in _WRITTEN_COLUMNS[table]:
            value = row[keyword]
            values[column] = value
            if key_column:
                values[key_column] = matching.match_key(value, vr)
        return values

    def _tidy(self, series: set[int], studies: set[int], patients: set[int]) -> None:
        """Delete emptied parents and recompute the derived attributes."""
        execute = self._execute
        for pk in sorted(series):
            if execute("SELECT 1 FROM instance WHERE series_pk = ? LIMIT 1", (pk,)).fetchone():
                count = execute("SELECT COUNT(*) FROM instance WHERE series_pk = ?",
                                (pk,)).fetchone()[0]
                execute("UPDATE series SET number_of_series_related_instances = ? "
                        "WHERE pk = ?", (count, pk))
            else:
                execute("DELETE FROM series WHERE pk = ?", (pk,))
                self._delete_items("series", pk)
        for pk in sorted(studies):
            n_series = execute("SELECT COUNT(*) FROM series WHERE study_pk = ?",
                               (pk,)).fetchone()[0]
            if not n_series:
                execute("DELETE FROM study WHERE pk = ?", (pk,))
                self._delete_items("study", pk)
                continue
            n_instances = execute(
                "SELECT COUNT(*) FROM instance i JOIN series se ON se.pk = i.series_pk "
                "WHERE se.study_pk = ?", (pk,)).fetchone()[0]
            execute("UPDATE study SET number_of_study_related_series = ?, "
                    "number_of_study_related_instances = ?, modalities_in_study = ?, "
                    "sop_classes_in_study = ? WHERE pk = ?",
                    (n_series, n_instances, self._modalities(pk),
                     self._sop_classes(pk), pk))
        for pk in sorted(patients):
            n_studies = execute("SELECT COUNT(*) FROM study WHERE patient_pk = ?",
                                (pk,)).fetchone()[0]
            if not n_studies:
                execute("DELETE FROM patient WHERE pk = ?", (pk,))
                continue
            n_series, n_instances = execute(
                "SELECT COUNT(DISTINCT se.pk), COUNT(i.pk) FROM study st "
                "JOIN series se ON se.study_pk = st.pk "
                "JOIN instance i ON i.series_pk = se.pk WHERE st.patient_pk = ?",
                (pk,)).fetchone()
            execute("UPDATE patient SET number_of_patient_related_studies = ?, "
                    "number_of_patient_related_series = ?, "
                    "number_of_patient_related_instances = ? WHERE pk = ?",
                    (n_studies, n_series, n_instances, pk))

    def _modalities(self, study_pk: int) -> str | None:
        """Modalities in Study as stored: the distinct modalities, sorted."""
        return "\\".join(r[0] for r in self._execute(
            "SELECT DISTINCT modality FROM series WHERE study_pk = ? "
            "AND modality IS NOT NULL AND modality != '' ORDER BY modality",
            (study_pk,))) or None

    def _sop_classes(self, study_pk: int) -> str | None:
        """SOP Classes in Study as stored: the distinct classes, sorted."""
        return "\\".join(r[0] for r in self._execute(
            "SELECT DISTINCT i.sop_class_uid FROM instance i "
            "JOIN series se ON se.pk = i.series_pk WHERE se.study_pk = ? "
            "AND i.sop_class_uid IS NOT NULL ORDER BY i.sop_class_uid", (study_pk,))) or None

    def remove(self, sop_instance_uid: str) -> str | None:
        """Remove one instance, and the series, study and patient it empties.

        :returns: the instance's path, or ``None`` if it was not indexed.
        """
        with self.transaction():
            row = self._lock_instance(sop_instance_uid)
            if row is None:
                return None
            pk, path, series_pk, study_pk, patient_pk = row
            self._execute("DELETE FROM instance WHERE pk = ?", (pk,))
            self._execute("DELETE FROM metadata WHERE sop_instance_uid = ?",
                          (sop_instance_uid,))
            self._tidy({series_pk}, {study_pk}, {patient_pk})
            return path

    def delete_study(self, study_instance_uid: str) -> list[str]:
        """Remove a study: its instances, their metadata, its series, the
        study, and its patient if no other study is left, in one
        transaction (savepoint).

        The files are the caller's to delete, after this returns (once the
        rows are gone for good): a crash between the two leaves files
        without rows, which start-up recovery indexes again, never rows
        without files.

        :returns: the paths of the removed instances (relative to the
            instance directory); empty if the study is not indexed.
        """
        with self.transaction():
            found = self._lock_study(study_instance_uid)
            if found is None:
                return []
            study_pk, patient_pk = found
            of_study = "SELECT pk FROM series WHERE study_pk = ?"
            paths = [r[0] for r in self._execute(
                f"SELECT path FROM instance WHERE series_pk IN ({of_study}) ORDER BY pk",
                (study_pk,)).fetchall()]
            self._execute("DELETE FROM metadata WHERE sop_instance_uid IN (SELECT"
                          f" sop_instance_uid FROM instance WHERE series_pk IN ({of_study}))",
                          (study_pk,))
            self._execute(f"DELETE FROM instance WHERE series_pk IN ({of_study})",
                          (study_pk,))
            for sequence in SEQUENCES:
                if sequence.table == "series":
                    self._execute(f"DELETE FROM {sequence.item_table} WHERE owner_pk IN "
                                  f"({of_study})", (study_pk,))
            self._execute("DELETE FROM series WHERE study_pk = ?", (study_pk,))
            self._tidy(set(), {study_pk}, {patient_pk})
            return paths

    def clear(self) -> None:
        """Remove every row."""
        with self.transaction():
            for table in ("metadata", *(q.item_table for q in SEQUENCES),
                          "instance", "series", "study", "patient"):
                self._execute(f"DELETE FROM {table}")

    # Reading

    def get_path(self, sop_instance_uid: str) -> str | None:
        """The path of an instance, or ``None`` if it is not indexed."""
        with self._reading() as execute:
            row = execute("SELECT path FROM instance WHERE sop_instance_uid = ?",
                          (sop_instance_uid,)).fetchone()
        return None if row is None else row[0]

    def paths(self) -> list[str]:
        """The paths of all indexed instances."""
        with self._reading() as execute:
            return [r[0] for r in execute("SELECT path FROM instance ORDER BY pk").fetchall()]

    def count(self, level: str) -> int:
        """The number of patients, studies, series or instances.

        :param level: a Query/Retrieve level (``"IMAGE"`` for instances) or a
            table name.
        """
        table = TABLES.get(level, level)
        if table not in _DEPTH:
            raise ValueError(f"unknown level {level!r}")
        with self._reading() as execute:
            return execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    # C-FIND

    def find(self, identifier: Dataset, model: str, *, relational: bool = False,
             combined: bool = False) -> Iterator[Dataset]:
        """Match an identifier; one response per matching entity at its level.

        The identifier is checked before this returns; the rows are then
        read lazily, ``batch_size`` at a time, so a caller can stream them
        and stop early.

        :param identifier: the C-FIND request identifier.
        :param model: ``"PATIENT"`` (Patient Root), ``"STUDY"`` (Study Root)
            or ``"PATIENT_STUDY_ONLY"``.
        :returns: response identifiers holding exactly the requested keys,
            Query/Retrieve Level, and Specific Character Set when needed.
        :param relational: relational queries were negotiated (PS3.4
            C.4.1.2.2): the unique keys of the levels above the query level
            may be left out, or given with any matching value.
        :param combined: combined date-time matching was negotiated (PS3.4
            C.2.2.2.5.1): a date range and a time range of a pair in
            :data:`DATE_TIME_PAIRS` are one date-time range.
        :raises QueryError: 0xA900 for an identifier the model does not allow.
        """
        plan = self._plan(identifier, model, relational=relational, combined=combined)
        return self._run(plan, partial(self._response, plan))

    def find_encoded(self, identifier: Dataset, model: str, transfer_syntax: str, *,
                     relational: bool = False, combined: bool = False) -> Iterator[bytes]:
        """As :meth:`find`, each response identifier encoded in a transfer syntax.

        The bytes are those of ``encode_dataset`` of :meth:`find`'s data
        set; in Implicit or Explicit VR Little Endian they are written
        straight from the row (see ``responses``), with no data set.

        :param transfer_syntax: the presentation context's transfer syntax.
        :param relational: as for :meth:`find`.
        :param combined: as for :meth:`find`.
        :raises QueryError: 0xA900 for an identifier the model does not allow.
        """
        plan = self._plan(identifier, model, relational=relational, combined=combined)
        encoder = ResponseEncoder(plan.keys, partial(self._response, plan),
                                  plan.character_set, transfer_syntax)
        return self._run(plan, encoder.encode)

    def query(self, identifier: Dataset, model: str, *, relational: bool = False,
              offset: int = 0, limit: int | None = None,
              ) -> tuple[tuple[tuple[BaseTag, str, tuple], ...], Iterator[tuple]]:
        """Match an identifier as :meth:`find` does; the matches as plain values.

        The same planning and matching as C-FIND (QIDO-RS uses it), with
        two additions: ``relational`` drops the hierarchical rule that
        the unique keys of the levels above be given (PS3.4 C.4.1.2.2,
        relational queries; QIDO-RS ``/series`` and ``/instances``), and
        ``offset``/``limit`` page through the matches in index order.

        :returns: the return keys ``(tag, VR, item keys)`` in identifier
            order (the item keys, ``(tag, VR)`` pairs, of a kept sequence;
            empty for any other key), and an iterator of rows, one per
            match: a tuple of values aligned with the keys (``str``,
            ``int`` or None for empty; a kept sequence's matching items as
            tuples aligned with its item keys; other sequences None).
        :raises QueryError: 0xA900 for an identifier the model does not allow.
        """
        plan = self._plan(identifier, model, relational=relational)
        keys = tuple((k.tag, k.vr, tuple((i.tag, i.vr) for i in k.items if i.expression))
                     for k in plan.keys)

        def values(row: tuple) -> tuple:
            found = iter(row[1:])
            return tuple(next(found) if k.expression else k.constant for k in plan.keys)

        rows = self._run(plan, values, skip=offset)
        if limit is not None:
            rows = islice(rows, limit)
        return keys, rows

    def _plan(self, identifier: Dataset, model: str, relational: bool = False,
              combined: bool = False) -> _Plan:
        level = _query_level(identifier, model)
        if not relational:
            _check_higher_unique_keys(identifier, model, level)
        table = TABLES[level]
        depth = _DEPTH[table]
        keys: list[_ReturnKey] = []
        conditions: list[Condition] = []
        seen = set()
        #: Keys matched by a combined date-time condition instead of alone.
        paired: set[BaseTag] = set()
        if combined:
            conditions.extend(self._combined(identifier, depth, paired))
        for element in identifier:
            tag = element.tag
            if tag in (_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET) or tag.element == 0:
                continue
            seen.add(tag)
            sequence = _SEQUENCE_BY_TAG.get(tag)
            if sequence is not None and element.VR == "SQ":
                key, found = self._sequence_key(sequence, element, level, depth)
                keys.append(key)
                if found is not None:
                    conditions.append(found)
                continue
            attribute = _BY_TAG.get(tag)
            if attribute is None:
                constant = "ONLINE" if tag == _INSTANCE_AVAILABILITY else None
                # An ambiguous VR ("US or SS") takes its first choice.
                vr = str(element.VR).split(" or ")[0]
                keys.append(_ReturnKey(tag, vr, None, constant))
                continue
            if _DEPTH[attribute.table] > depth:
                # PS3.4 C.4.1.2.1: a key below the query level can't be matched.
                if not matching.is_universal(element.value):
                    raise QueryError(
                        comment=f"{attribute.keyword} is below the {level} level")
                keys.append(_ReturnKey(tag, attribute.vr, None))
                continue
            alias = _ALIASES[attribute.table]
            keys.append(_ReturnKey(tag, attribute.vr, f"{alias}.{attribute.column}"))
            if tag in paired:
                continue
            found = self._condition(attribute, element.value)
            if found is not None:
                conditions.append(found)
        # PS3.4 C.4.1.1.3.2: a response holds the requested keys, the
        # Query/Retrieve Level and (when needed) Specific Character Set --
        # nothing else.  Unique keys of higher levels are in the request
        # already (hierarchical search requires them).
        alias = _ALIASES[table]
        expressions = [f"{alias}.pk"] + [k.expression for k in keys if k.expression]
        where = " AND ".join(f"({c.sql})" for c in conditions) or "TRUE"
        sql = (f"SELECT {', '.join(expressions)} FROM {_FROM[table]} "
               f"WHERE {where} AND {alias}.pk > ? ORDER BY {alias}.pk LIMIT ?")
        params = tuple(p for c in conditions for p in c.params)
        return _Plan(level, table, tuple(keys), sql, params,
                     identifier.get("SpecificCharacterSet"))

    def _combined(self, identifier: Dataset, depth: int,
                  paired: set[BaseTag]) -> list[Condition]:
        """The combined date-time conditions of an identifier's pairs of
        Date and Time keys at or above the query level (adds their tags to
        ``paired``)."""
        found = []
        for date_keyword, time_keyword in DATE_TIME_PAIRS:
            date, time = _BY_KEYWORD[date_keyword], _BY_KEYWORD[time_keyword]
            if (date.tag not in identifier or time.tag not in identifier
                    or _DEPTH[date.table] > depth):
                continue
            alias = _ALIASES[date.table]
            condition = matching.combined_condition(
                f"{alias}.{date.column}", f"{alias}.{time.key_column}",
                identifier[date.tag].value, identifier[time.tag].value)
            if condition is not None:
                found.append(condition)
                paired.update((date.tag, time.tag))
        return found

    def _sequence_key(self, sequence: SequenceAttribute, element: DataElement, level: str,
                      depth: int) -> tuple[_ReturnKey, Condition | None]:
        """The return key and the condition of a kept sequence key
        (sequence matching, PS3.4 C.2.2.2.6).

        The key holds one item (or none: universal matching, every kept
        attribute of the items returned).  The keys of the item are
        matched by the rules of C.2.2.2 against each item of the entity's
        sequence; the entity matches when one item matches them all, and
        the response holds the matching items with the item's keys.

        :raises QueryError: more than one item, or a matching key below
            the query level.
        """
        query = list(element.value or ())
        if len(query) > 1:
            raise QueryError(comment=f"{sequence.keyword} needs one item, not {len(query)}")
        if query:
            item_elements = [e for e in query[0] if e.tag.element != 0]
        else:
            item_elements = [DataElement(a.tag, a.vr, None) for a in sequence.items]
        if _DEPTH[sequence.table] > depth:
            if any(not matching.is_universal(e.value) for e in item_elements
                   if e.VR != "SQ"):
                raise QueryError(comment=f"{sequence.keyword} is below the {level} level")
            return _ReturnKey(element.tag, "SQ", None), None
        items: list[_ReturnKey] = []
        conditions: list[Condition] = []
        for item_element in item_elements:
            attribute = sequence.item(item_element.tag)
            if attribute is None:
                # Not kept: returned empty (the service answers 0xFF01).
                vr = str(item_element.VR).split(" or ")[0]
                items.append(_ReturnKey(item_element.tag, vr, None))
                continue
            items.append(_ReturnKey(attribute.tag, attribute.vr, f"q.{attribute.column}"))
            key_column = f"q.{attribute.key_column}" if attribute.key_column else None
            found = matching.condition(f"q.{attribute.column}", item_element.value,
                                       attribute.vr, key_column, dialect=self.dialect)
            if found is not None:
                conditions.append(found)
        alias = _ALIASES[sequence.table]
        where = "".join(f" AND ({c.sql})" for c in conditions)
        params = tuple(p for c in conditions for p in c.params)
        columns = "".join(f", {k.expression}" for k in items if k.expression)
        # Parameters: the owners' pks, then the item condition's.
        item_sql = (f"SELECT q.owner_pk{columns} FROM {sequence.item_table} q "
                    f"WHERE q.owner_pk IN ({{owners}}){where} ORDER BY q.owner_pk, q.position")
        # No item asked: every kept attribute that has a value is returned.
        key = _ReturnKey(element.tag, "SQ", f"{alias}.pk", constant=not query,
                         items=tuple(items), item_sql=item_sql, item_params=params)
        if not conditions:
            return key, None
        return key, Condition(f"EXISTS (SELECT 1 FROM {sequence.item_table} q "
                              f"WHERE q.owner_pk = {alias}.pk{where})", params)

    def _items(self, key: _ReturnKey, owners: list[int],
               execute: Callable[..., Any]) -> dict[int, list[tuple]]:
        """The matching items of a sequence key for each owner pk."""
        found: dict[int, list[tuple]] = {}
        unique = sorted(set(owners))
        sql = key.item_sql.format(owners=", ".join("?" for _ in unique))
        for row in execute(sql, tuple(unique) + key.item_params).fetchall():
            found.setdefault(row[0], []).append(tuple(row[1:]))
        return found

    def _condition(self, attribute: Attribute, value: object) -> Condition | None:
        if attribute.keyword in _DERIVED_MATCH:
            template, column, vr = _DERIVED_MATCH[attribute.keyword]
            found = matching.condition(column, value, vr, dialect=self.dialect)
            if found is None:
                return None
            return Condition(template.format(cond=found.sql), found.params)
        alias = _ALIASES[attribute.table]
        key_column = f"{alias}.{attribute.key_column}" if attribute.key_column else None
        return matching.condition(f"{alias}.{attribute.column}", value, attribute.vr,
                                  key_column, dialect=self.dialect)

    def _run(self, plan: _Plan, respond: Callable[[tuple], _T], skip: int = 0) -> Iterator[_T]:
        """``respond`` to each matching row after the first ``skip``,
        ``batch_size`` rows per lock."""
        last = 0
        sequences = plan.sequences
        while True:
            with self._reading() as execute:
                rows = execute(plan.sql, plan.params + (last, self.batch_size)).fetchall()
                if sequences and rows:
                    rows = self._with_items(rows, sequences, execute)
            for row in rows:
                if skip:
                    skip -= 1
                    continue
                yield respond(row)
            if len(rows) < self.batch_size:
                return
            last = rows[-1][0]

    def _with_items(self, rows: list, sequences: tuple[tuple[int, _ReturnKey], ...],
                    execute: Callable[..., Any]) -> list[tuple]:
        """The rows with each kept sequence's owner pk replaced by its
        matching items (a list of value tuples aligned with the item keys)."""
        rows = [list(row) for row in rows]
        for position, key in sequences:
            items = self._items(key, [row[position] for row in rows], execute)
            for row in rows:
                row[position] = items.get(row[position], [])
        # The pk stays first: batches continue after the last one.
        return [tuple(row) for row in rows]

    @staticmethod
    def _response(plan: _Plan, row: tuple) -> Dataset:
        response = Dataset()
        values = iter(row[1:])
        non_ascii = False
        for key in plan.keys:
            if key.vr == "SQ":
                items = next(values) if key.expression else ()
                sequence = DicomSequence()
                for found in items:
                    item = Dataset()
                    values_of_item = iter(found)
                    for item_key in key.items:
                        value = next(values_of_item) if item_key.expression else None
                        if value is None and key.constant:
                            continue
                        if value is None:
                            value = [] if item_key.vr == "SQ" else ""
                        elif isinstance(value, str) and not value.isascii():
                            non_ascii = True
                        item.add(DataElement(item_key.tag, item_key.vr, value))
                    sequence.append(item)
                response.add(DataElement(key.tag, "SQ", sequence))
                continue
            value = next(values) if key.expression else key.constant
            if value is None:
                value = ""
            elif isinstance(value, str) and not value.isascii():
                non_ascii = True
            response.add(DataElement(key.tag, key.vr, value))
        response.QueryRetrieveLevel = plan.level
        if non_ascii:
            response.SpecificCharacterSet = _UTF8
        elif plan.character_set is not None:
            response.SpecificCharacterSet = plan.character_set
        return response

    # WADO-RS

    def instances(self, study: str, series: str | None = None,
                  instance: str | None = None, metadata: bool = False) -> list[StoredInstance]:
        """The stored instances of a study, a series of it, or one instance.

        Each UID must match exactly (a series of another study is not
        found).  Ordered by series, then Instance Number.

        :param metadata: also read each instance's kept metadata.
        """
        conditions = ["st.study_instance_uid = ?"]
        params: list[str] = [study]
        if series is not None:
            conditions.append("se.series_instance_uid = ?")
            params.append(series)
        if instance is not None:
            conditions.append("i.sop_instance_uid = ?")
            params.append(instance)
        blob = "m.json" if metadata else "NULL"
        join = (" LEFT JOIN metadata m ON m.sop_instance_uid = i.sop_instance_uid"
                if metadata else "")
        sql = ("SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, "
               f"i.sop_class_uid, i.transfer_syntax_uid, i.path, i.number_of_frames, {blob} "
               "FROM instance i JOIN series se ON se.pk = i.series_pk "
               f"JOIN study st ON st.pk = se.study_pk{join} "
               f"WHERE {' AND '.join(conditions)} "
               "ORDER BY se.pk, i.instance_number, i.pk")
        with self._reading() as execute:
            return [StoredInstance(*r) for r in execute(sql, tuple(params)).fetchall()]

    def locate(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """The Study and Series Instance UIDs of an instance, or None."""
        with self._reading() as execute:
            found = execute(
                "SELECT st.study_instance_uid, se.series_instance_uid FROM instance i "
                "JOIN series se ON se.pk = i.series_pk JOIN study st ON st.pk = se.study_pk "
                "WHERE i.sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return None if found is None else (found[0], found[1])

    def set_metadata(self, sop_instance_uid: str, metadata: bytes) -> None:
        """Keep the metadata of an instance indexed without it (an older
        index, a recovered file); nothing if the instance is gone."""
        with self.transaction():
            if self._execute("SELECT 1 FROM instance WHERE sop_instance_uid = ?",
                             (sop_instance_uid,)).fetchone():
                self._set_metadata(sop_instance_uid, metadata)

    # C-MOVE and C-GET

    def retrieve(self, identifier: Dataset, model: str, *,
                 relational: bool = False) -> list[InstanceRecord]:
        """The instances under the entities a C-MOVE or C-GET identifier names.

        The identifier needs the unique key of its level (a list of UIDs is
        allowed there; PS3.4 C.4.2.2.1, C.4.3.2.1) and a single value for the
        unique key of each level above. Other keys are ignored.

        :param relational: relational retrieval was negotiated (PS3.4
            C.4.2.2.1.2, C.4.3.2.1.2): the unique keys of the levels above
            may be left out (a list of SOP Instance UIDs alone names
            instances of any series); given, they narrow the match.
        :raises QueryError: 0xA900 if the identifier is not valid for the model.
        """
        level = _query_level(identifier, model)
        if not relational:
            _check_higher_unique_keys(identifier, model, level)
        attribute = _BY_KEYWORD[UNIQUE_KEYS[level]]
        values = matching.split_values(identifier.get(attribute.keyword))
        if not values or any(not v or "*" in v or "?" in v for v in values):
            raise QueryError(comment=f"{attribute.keyword} is needed at {level} level")
        if attribute.vr != "UI" and len(values) != 1:
            raise QueryError(comment=f"{attribute.keyword} needs a single value")
        conditions = []
        levels = MODELS[model]
        for name in levels[:levels.index(level) + 1]:
            attribute = _BY_KEYWORD[UNIQUE_KEYS[name]]
            column = f"{_ALIASES[attribute.table]}.{attribute.column}"
            found = matching.condition(column, identifier.get(attribute.tag, _EMPTY).value,
                                       attribute.vr, dialect=self.dialect)
            if found is not None:  # None: left out by a relational retrieve
                conditions.append(found)
        issuer = identifier.get("IssuerOfPatientID")
        if "PATIENT" in levels[:levels.index(level) + 1] and issuer:
            conditions.append(Condition("p.issuer_of_patient_id = ?", (str(issuer),)))
        where = " AND ".join(f"({c.sql})" for c in conditions)
        sql = ("SELECT i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.path "
               f"FROM {_FROM['instance']} WHERE {where} "
               "ORDER BY st.pk, se.pk, i.instance_number, i.pk")
        with self._reading() as execute:
            rows = execute(sql, tuple(p for c in conditions for p in c.params)).fetchall()
        return [InstanceRecord(*r) for r in rows]

