"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

A QIDO-RS request becomes a C-FIND identifier (Study Root) and goes to the
same index query as C-FIND (``Index.query``), so matching is exactly
C-FIND's: single value, ``*``/``?`` wildcards, DA/TM/DT ranges with open
ends, lists of UIDs.  The differences are PS3.18's: the unique keys of the
levels above need not be given (relational search, for ``/series`` and
``/instances``), and ``limit``/``offset`` page through the matches.

Everything here is pure: parsing the query string into an identifier, and
turning the index's rows into DICOM JSON (PS3.18 F.2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

__all__ = [
    "DEFAULTS",
    "QidoQuery",
    "QueryParameterError",
    "parse_query",
    "render_matches",
]


class QueryParameterError(ValueError):
    """A query parameter is malformed or unknown (answered 400)."""


#: The attributes returned by default at each level (PS3.18 Tables
#: 6.7.1-2, 6.7.1-2a, 6.7.1-2b), Specific Character Set aside.
DEFAULTS: dict[str, tuple[str, ...]] = {
    "STUDY": ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
              "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC",
              "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"),
    "SERIES": ("Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
               "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
               "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
               "RequestAttributesSequence"),
    "IMAGE": ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
              "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceNumber", "Rows", "Columns",
              "BitsAllocated", "NumberOfFrames"),
}

#: Every attribute a level returns when ``includefield=all``: the level's
#: defaults and what the index keeps for it (see ``storage.index``).
_LEVEL_OF_TABLE = {"patient": "STUDY", "study": "STUDY", "series": "SERIES",
                   "instance": "IMAGE"}

_RETRIEVE_URL = Tag("RetrieveURL")
_SPECIFIC_CHARACTER_SET = Tag("SpecificCharacterSet")
_STUDY_UID = Tag("StudyInstanceUID")
_SERIES_UID = Tag("SeriesInstanceUID")
_SOP_UID = Tag("SOPInstanceUID")

#: Parameters of PS3.18 Table 8.3.4-1 that are not attributes.
_CONTROL = frozenset({"includefield", "limit", "offset", "fuzzymatching", "accept",
                      "charset", "emptyvaluematching", "multiplevaluematching"})

_DA = r"\d{8}"
_TM = r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?"
_DT = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?"
_FORMATS = {vr: re.compile(f"(?:{p})?-(?:{p})?|{p}") for vr, p in
            (("DA", _DA), ("TM", _TM), ("DT", _DT))}
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass
class QidoQuery:
    """A parsed QIDO-RS request.

    :ivar level: ``STUDY``, ``SERIES`` or ``IMAGE``.
    :ivar identifier: the C-FIND identifier (matching and return keys).
    :ivar relational: the unique keys of the levels above are not all given.
    :ivar limit: at most this many matches (None: all).
    :ivar offset: matches skipped first.
    :ivar warnings: texts for ``Warning`` headers (PS3.18 8.3.4.1).
    """

    level: str
    identifier: Dataset
    relational: bool
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def _attribute(name: str) -> BaseTag:
    """A query parameter's attribute: a keyword or eight hex digits."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return Tag(int(name, 16))
    tag = tag_for_keyword(name)
    if tag is None:
        raise QueryParameterError(f"unknown attribute or parameter {name!r}")
    return Tag(tag)


def _vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        raise QueryParameterError(f"attribute {tag} is not in the data dictionary") from None


def _check_value(name: str, value: str, vr: str) -> None:
    """Refuse a matching value that is malformed for its VR (400)."""
    if value in ("", '""', "*"):
        return
    for part in value.split("\\"):
        if vr in _FORMATS:
            if not _FORMATS[vr].fullmatch(part):
                raise QueryParameterError(f"{name}: {part!r} is not a valid {vr} value or range")
        elif vr == "UI":
            if not _UID.fullmatch(part) or len(part) > 64:
                raise QueryParameterError(f"{name}: {part!r} is not a UID")
        elif vr in ("IS", "US", "UL", "SS", "SL"):
            if not _INTEGER.fullmatch(part.strip()):
                raise QueryParameterError(f"{name}: {part!r} is not an integer")
        elif vr == "DS":
            if not _DECIMAL.fullmatch(part.strip()):
                raise QueryParameterError(f"{name}: {part!r} is not a decimal number")


def _element_value(vr: str, value: str) -> object:
    """A matching value as pydicom takes it for the VR: binary integers
    (US, UL, SS, SL) as ints, None when empty (a str would make pydicom
    warn on every request)."""
    if vr not in ("US", "UL", "SS", "SL"):
        return value
    if not value:
        return None
    numbers = [int(v) for v in value.split("\\")]
    return numbers[0] if len(numbers) == 1 else numbers


def _count(name: str, value: str) -> int:
    if not re.fullmatch(r"\d{1,9}", value.strip()):
        raise QueryParameterError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def parse_query(level: str, args: Mapping[str, Sequence[str]], *,
                study: str | None = None, series: str | None = None,
                include_all: Iterable[str] = ()) -> QidoQuery:
    """Turn a QIDO-RS request into a C-FIND identifier.

    :param level: ``STUDY``, ``SERIES`` or ``IMAGE``: the resource searched.
    :param args: the query parameters, percent-decoded, by name.
    :param study: the Study Instance UID of the path, if any.
    :param series: the Series Instance UID of the path, if any.
    :param include_all: the keywords ``includefield=all`` adds (what the
        index keeps for the levels searched).
    :raises QueryParameterError: a parameter is unknown or malformed.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    query = QidoQuery(level, identifier, relational=False)
    keys: dict[BaseTag, tuple[str, str]] = {}
    for keyword in _returned(level, study is None, series is None and level == "IMAGE"):
        tag = Tag(keyword)
        keys[tag] = (_vr(tag), "")
    #: Sequence -> its one item's keys (sequence matching, PS3.18 8.3.4.1:
    #: ``{sequence}.{attribute}``; PS3.4 C.2.2.2.6).
    items: dict[BaseTag, dict[BaseTag, tuple[str, str]]] = {}
    includes: list[str] = []
    for name, values in args.items():
        if name in _CONTROL:
            continue
        value = values[-1]
        if "." in name:
            found = _item_key(name, query)
            if found is not None:
                sequence, tag, vr = found
                _check_value(name, value, vr)
                keys[sequence] = ("SQ", "")
                items.setdefault(sequence, {})[tag] = (vr, "" if value == "*" else value)
            continue
        tag = _attribute(name)
        vr = _vr(tag)
        if vr == "SQ":
            if value in ("", "*"):
                keys[tag] = ("SQ", "")  # returned, matched universally
            else:
                query.warnings.append(f"299 dicomtwist: a sequence is matched by its"
                                      f" attributes ({name}.{{attribute}}), {name} ignored")
            continue
        _check_value(name, value, vr)
        keys[tag] = (vr, "" if value == "*" else value)
    for values in args.get("includefield", ()):
        includes.extend(v.strip() for v in values.split(",") if v.strip())
    for name in includes:
        if name.lower() == "all":
            for keyword in include_all:
                tag = Tag(keyword)
                keys.setdefault(tag, (_vr(tag), ""))
            continue
        if "." in name:
            found = _item_key(name, query)
            if found is not None:
                sequence, tag, vr = found
                keys.setdefault(sequence, ("SQ", ""))
                items.setdefault(sequence, {}).setdefault(tag, (vr, ""))
            continue
        tag = _attribute(name)
        keys.setdefault(tag, (_vr(tag), ""))
    if study is not None:
        keys[_STUDY_UID] = ("UI", study)
    if series is not None:
        keys[_SERIES_UID] = ("UI", series)
    keys.pop(_RETRIEVE_URL, None)
    keys.pop(_SPECIFIC_CHARACTER_SET, None)
    for tag in sorted(keys):
        vr, value = keys[tag]
        if vr == "SQ":
            sequence = []
            if tag in items:
                item = Dataset()
                for item_tag in sorted(items[tag]):
                    item_vr, item_value = items[tag][item_tag]
                    item.add_new(item_tag, item_vr, _element_value(item_vr, item_value))
                sequence.append(item)
            identifier.add_new(tag, "SQ", sequence)
            continue
        identifier.add_new(tag, vr, _element_value(vr, value))
    query.relational = ((level in ("SERIES", "IMAGE") and study is None)
                        or (level == "IMAGE" and series is None))
    if "limit" in args:
        query.limit = _count("limit", args["limit"][-1])
    if "offset" in args:
        query.offset = _count("offset", args["offset"][-1])
    fuzzy = args.get("fuzzymatching", ["false"])[-1].strip().lower()
    if fuzzy not in ("false", "true"):
        raise QueryParameterError(f"fuzzymatching must be true or false, not {fuzzy!r}")
    if fuzzy == "true":
        query.warnings.append(
            "299 dicomtwist: The fuzzymatching parameter is not supported. "
            "Only literal matching has been performed.")
    return query


def _item_key(name: str, query: QidoQuery) -> tuple[BaseTag, BaseTag, str] | None:
    """``{sequence}.{attribute}``: the sequence, the item attribute and its
    VR; None (with a warning) for deeper nesting.

    :raises QueryParameterError: an unknown attribute, or the first part is
        not a sequence.
    """
    parts = name.split(".")
    if len(parts) != 2:
        query.warnings.append(f"299 dicomtwist: only one level of sequence matching is"
                              f" supported, {name} ignored")
        return None
    sequence = _attribute(parts[0])
    if _vr(sequence) != "SQ":
        raise QueryParameterError(f"{name}: {parts[0]} is not a sequence")
    tag = _attribute(parts[1])
    vr = _vr(tag)
    if vr == "SQ":
        query.warnings.append(f"299 dicomtwist: only one level of sequence matching is"
                              f" supported, {name} ignored")
        return None
    return sequence, tag, vr


def _returned(level: str, all_studies: bool, all_series: bool) -> list[str]:
    """The default return keys of a search (PS3.18 6.7.1.2.2.1): the
    level's own, and those of the levels above that the path leaves open."""
    keywords = list(DEFAULTS[level])
    if level != "STUDY" and all_studies:
        keywords += DEFAULTS["STUDY"]
    if level == "IMAGE" and all_series:
        keywords += DEFAULTS["SERIES"]
    if level == "IMAGE":
        keywords += ["StudyInstanceUID", "SeriesInstanceUID"]
    elif level == "SERIES":
        keywords.append("StudyInstanceUID")
    return keywords


# DICOM JSON (PS3.18 F.2) of the index's values.

_INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})


def _number(text: str, vr: str) -> int | float | None:
    text = text.strip()
    if not text:
        return None
    try:
        if vr in _INTEGER_VRS:
            return int(text)
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() \
        else number


def _person_name(text: str) -> dict[str, str] | None:
    if not text:
        return None
    groups = text.split("=")
    name = {}
    for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups):
        if group:
            name[key] = group
    return name


def element_json(vr: str, value: object) -> dict:
    """One attribute in DICOM JSON: ``{"vr": ..., "Value": [...]}``.

    :param value: as the index stores it (``str`` with ``\\`` between
        values, ``int``) or None (no ``Value``).
    """
    item: dict = {"vr": vr}
    if value is None or value == "" or vr == "SQ":
        return item
    if isinstance(value, int):
        item["Value"] = [value]
        return item
    parts = str(value).split("\\")
    if vr == "PN":
        item["Value"] = [_person_name(p) for p in parts]
    elif vr in _INTEGER_VRS or vr in _FLOAT_VRS:
        item["Value"] = [_number(p, vr) for p in parts]
    else:
        item["Value"] = [p if p else None for p in parts]
    return item


def render_matches(keys: Sequence[tuple], rows: Iterable[tuple],
                   level: str, base_url: str) -> Iterator[bytes]:
    """The JSON array of the matches, in pieces (one per match).

    Each match holds the return keys that have a value, Specific Character
    Set ``ISO_IR 192`` (the JSON is UTF-8) and its Retrieve URL.

    :param base_url: the service root as the client reached it.
    """
    index = {key[0]: n for n, key in enumerate(keys)}
    study_at = index.get(_STUDY_UID)
    series_at = index.get(_SERIES_UID)
    sop_at = index.get(_SOP_UID)
    names = [f"{int(key[0]):08X}" for key in keys]
    charset = {"vr": "CS", "Value": ["ISO_IR 192"]}
    yield b"["
    first = True
    for row in rows:
        match: dict[str, dict] = {"00080005": charset}
        for name, key, value in zip(names, keys, row):
            if value is None or value == "" or value == []:
                # Attributes without a value are left out, as Orthanc does:
                # viewers (OHIF) read "Value" of any attribute present.
                continue
            if key[1] == "SQ":
                if isinstance(value, list):
                    match[name] = {"vr": "SQ", "Value": [_item_json(key[2], item)
                                                         for item in value]}
                continue
            match[name] = element_json(key[1], value)
        url = _retrieve_url(base_url, level, row, study_at, series_at, sop_at)
        if url:
            match["00081190"] = {"vr": "UR", "Value": [url]}
        text = json.dumps(dict(sorted(match.items())), ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
        yield text if first else b"," + text
        first = False
    yield b"]"


def _item_json(item_keys: Sequence[tuple[BaseTag, str]], values: tuple) -> dict:
    """One sequence item in DICOM JSON: its keys that have a value."""
    item = {}
    for (tag, vr), value in zip(item_keys, values):
        if value is not None and value != "":
            item[f"{int(tag):08X}"] = element_json(vr, value)
    return dict(sorted(item.items()))


def _retrieve_url(base: str, level: str, row: tuple, study_at: int | None,
                  series_at: int | None, sop_at: int | None) -> str | None:
    study = row[study_at] if study_at is not None else None
    if not study:
        return None
    url = f"{base}/studies/{study}"
    if level == "STUDY":
        return url
    series = row[series_at] if series_at is not None else None
    if not series:
        return None
    url += f"/series/{series}"
    if level == "SERIES":
        return url
    sop = row[sop_at] if sop_at is not None else None
    return f"{url}/instances/{sop}" if sop else None


def include_all(levels: Iterable[str], attributes: Iterable[tuple[str, str]]) -> list[str]:
    """The keywords ``includefield=all`` returns for a search.

    :param levels: the levels searched (the query level and those above it
        that the path leaves open).
    :param attributes: ``(keyword, index table)`` of what the index keeps.
    """
    wanted = set(levels)
    return [keyword for keyword, table in attributes if _LEVEL_OF_TABLE[table] in wanted]


def keyword(tag: BaseTag) -> str:
    """A tag's keyword, or its eight hex digits."""
    return keyword_for_tag(tag) or f"{int(tag):08X}"
