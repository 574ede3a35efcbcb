"""C-FIND attribute matching (PS3.4 C.2.2.2) as SQL conditions and predicates.

Every function here is pure: it turns one identifier value into a
``Condition`` (an SQL fragment with ``?`` placeholders and its bound
parameters; values are never interpolated into the SQL text) or into a
Python predicate over a stored value, so the index and the tests share one
reading of the rules.

There is one builder for both index backends; what differs between sqlite
and PostgreSQL is kept in a :class:`Dialect` (``SQLITE``, ``POSTGRES``):
the wild card operator and the placeholder style.  Everything else the
builder writes (``=``, ``IN``, ``>=``/``<=`` on text, ``IS NULL``, ``TRUE``
and ``FALSE``) means the same on both, given that PostgreSQL compares text
columns in the ``"C"`` collation (byte order, as sqlite's ``BINARY``).

Stored values (see ``dicomtwist.storage.index``) are decoded Python ``str``;
multi-valued attributes are joined with ``\\``. Some VRs need a *match key*
kept next to the value, computed by ``match_key``:

- PN: case-folded, trailing empty components (``^``) and groups (``=``)
  removed, so ``"yamada^tarou"`` matches ``"Yamada^Tarou^^^"``. Person name
  matching is case-insensitive, as DCMTK and pynetdicom SCPs do; PS3.4
  C.2.2.2.1 leaves PN case sensitivity to the implementation.
- TM and DT: padded to full precision (``HHMMSS.FFFFFF``), so partial
  values such as ``"10"`` or ``"1030"`` compare as strings.

Rules, in the order of PS3.4 C.2.2.2:

- single value matching (C.2.2.2.1): case-sensitive equality, except PN.
  A DA value is compared exactly; a TM or DT value is a range covering its
  own precision (``"1030"`` matches 10:30:00 to 10:30:59.999999).
- list of UID matching (C.2.2.2.2): ``UI`` values separated by ``\\``.
- universal matching (C.2.2.2.3): an empty value (or a lone ``*``) matches
  everything; the key is only a return key.
- wild card matching (C.2.2.2.4): ``*`` and ``?`` for AE, CS, LO, LT, PN,
  SH, ST, UC, UR and UT, translated by the SQL dialect: ``GLOB`` with ``[``
  escaped on sqlite, ``LIKE ... ESCAPE`` with ``%``, ``_`` and ``\\``
  escaped on PostgreSQL, so ``%``, ``_`` and ``[`` match literally on both
  and the match is case-sensitive on both. Other VRs take ``*``/``?`` as
  ordinary characters.
- range matching (C.2.2.2.5): ``A-B``, ``-B``, ``A-`` for DA, TM and DT.
  When both Study Date and Study Time are given they are matched
  independently, unless combined date-time matching was negotiated
  (C.2.2.2.5.1, PS3.4 C.5.1.1): then two ranges are one date-time range
  (:func:`combined_condition`); DT offsets from UTC are ignored.
- sequence matching (C.2.2.2.6): the index builds it from these rules,
  one condition per key of the query item (``storage.index.base``).
- multiple values: an identifier value with several values (for example
  Modalities in Study ``CT\\MR``) matches an entity if any one of them
  matches, each by the rules above.
- empty value matching: the value ``""`` (two quotes) matches entities whose
  value is empty or unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dicomtwist.errors import DIMSEServiceError
from dicomtwist.status import Status

__all__ = [
    "Condition",
    "Dialect",
    "POSTGRES",
    "SQLITE",
    "QueryError",
    "WILDCARD_VRS",
    "condition",
    "glob_pattern",
    "like_pattern",
    "is_universal",
    "match_key",
    "combined_bounds",
    "combined_condition",
    "predicate",
    "range_bounds",
    "split_values",
]

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
"""VRs for which ``*`` and ``?`` are wild cards (PS3.4 C.2.2.2.4)."""

RANGE_VRS = frozenset({"DA", "TM", "DT"})
"""VRs that allow range matching (PS3.4 C.2.2.2.5)."""

KEYED_VRS = frozenset({"PN", "TM", "DT"})
"""VRs whose matching uses a normalised match key column (see ``match_key``)."""

NUMERIC_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "UV", "SV"})
"""VRs stored as SQL integers."""

EMPTY_VALUE = '""'
"""The value asking for entities with an empty value."""


class QueryError(DIMSEServiceError):
    """A C-FIND, C-MOVE or C-GET identifier cannot be processed (PS3.4 C.4).

    :param status: the failure status, by default Identifier Does Not Match
        SOP Class (0xA900).
    :param comment: the Error Comment for the response, at most 64 characters.
    """

    def __init__(self, status: int = Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                 comment: str | None = None) -> None:
        if comment is not None:
            comment = comment[:64]
        super().__init__(status, comment)


@dataclass(frozen=True)
class Condition:
    """An SQL boolean expression with ``?`` placeholders and their values."""

    sql: str
    params: tuple = ()

    @classmethod
    def any_of(cls, conditions: Sequence[Condition]) -> Condition:
        """Join conditions with ``OR``; an empty list matches nothing."""
        if not conditions:
            return cls("FALSE")
        if len(conditions) == 1:
            return conditions[0]
        sql = " OR ".join(f"({c.sql})" for c in conditions)
        params = tuple(p for c in conditions for p in c.params)
        return cls(f"({sql})", params)


def split_values(value: object) -> list[str]:
    """The values of an identifier element as strings (``\\`` separates values).

    :param value: a pydicom element value: ``str``, ``PersonName``, a number,
        a ``MultiValue`` or ``None``.
    """
    if value is None:
        return []
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [("" if v is None else str(v)) for v in value]
    text = str(value)
    return text.split("\\") if text else []


def is_universal(value: object) -> bool:
    """Whether the value asks for universal matching (PS3.4 C.2.2.2.3).

    An empty value, or one made only of ``*``, matches every entity.
    """
    values = split_values(value)
    if not values:
        return True
    return len(values) == 1 and values[0].strip() != "" and set(values[0]) == {"*"}


def has_wildcard(text: str, vr: str) -> bool:
    """Whether ``text`` uses wild card matching for this VR (PS3.4 C.2.2.2.4)."""
    return vr in WILDCARD_VRS and ("*" in text or "?" in text)


def _normalise_pn(text: str) -> str:
    # PS3.5 6.2.1: trailing empty components and component groups may be
    # omitted, so "A^B^^^" and "A^B" are the same name.
    groups = [g.rstrip("^") for g in text.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _pad_time(text: str, filler: str) -> str:
    # HH, HHMM, HHMMSS and HHMMSS.F{1,6} (and the ACR-NEMA "HH:MM:SS") to
    # HHMMSS.FFFFFF: "0" fills a lower bound or a stored value, "9" an upper
    # bound, so that "1030" as an upper bound covers all of 10:30.
    whole, _, fraction = text.strip().replace(":", "").partition(".")
    return f"{whole.ljust(6, filler)}.{fraction.ljust(6, filler)[:6]}"


def _strip_offset(text: str) -> str:
    # A DT may end with an offset from UTC, "&ZZXX"; it is ignored here.
    match = re.fullmatch(r"([0-9.]*)([+-]\d{4})?", text.strip())
    return match.group(1) if match else text.strip()


def _pad_datetime(text: str, filler: str) -> str:
    # YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]] to YYYYMMDDHHMMSS.FFFFFF, as _pad_time.
    whole, _, fraction = _strip_offset(text).partition(".")
    return f"{whole.ljust(14, filler)}.{fraction.ljust(6, filler)[:6]}"


def match_key(value: str | None, vr: str) -> str | None:
    """The normalised form of a stored value that matching compares.

    :param value: the stored value (``\\`` between values), or ``None``.
    :param vr: its VR; only PN, TM and DT have a key different from the value.
    :returns: the key, or ``None`` for an empty value.
    """
    if value is None or value == "":
        return None
    if vr == "PN":
        return "\\".join(_normalise_pn(v).casefold() for v in value.split("\\"))
    if vr == "TM":
        return "\\".join(_pad_time(v, "0") for v in value.split("\\"))
    if vr == "DT":
        return "\\".join(_pad_datetime(v, "0") for v in value.split("\\"))
    return value


def glob_pattern(text: str) -> str:
    """Translate a DICOM wild card value to an SQLite ``GLOB`` pattern.

    ``*`` and ``?`` keep their meaning; ``[`` is the only other character
    ``GLOB`` treats specially and becomes ``[[]``. ``%`` and ``_`` are
    literal in ``GLOB`` already.
    """
    return text.replace("[", "[[]")


def like_pattern(text: str) -> str:
    """Translate a DICOM wild card value to an SQL ``LIKE`` pattern with
    ``ESCAPE '\\'``: ``\\``, ``%`` and ``_`` are escaped, then ``*`` becomes
    ``%`` and ``?`` becomes ``_``."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


class Dialect:
    """What differs between the SQL of the index backends (this class:
    sqlite; ``name`` says which)."""

    name = "sqlite"

    def wildcard(self, column: str, text: str) -> Condition:
        """``column`` matches the DICOM wild card value ``text`` (``*``, ``?``),
        case-sensitively, every other character literally."""
        return Condition(f"{column} GLOB ?", (glob_pattern(text),))

    def sql(self, text: str) -> str:
        """The statement with this dialect's placeholders (``?`` here)."""
        return text

    def first_group(self, column: str) -> str:
        """The SQL expression of ``column``'s text before its first ``=``
        (a PN key's alphabetic component group), all of it without one."""
        return f"substr({column}, 1, instr({column} || '=', '=') - 1)"


class _Postgres(Dialect):
    """PostgreSQL: ``LIKE`` with an escape character, ``%s`` placeholders."""

    name = "postgresql"

    def wildcard(self, column: str, text: str) -> Condition:
        return Condition(f"{column} LIKE ? ESCAPE '\\'", (like_pattern(text),))

    def sql(self, text: str) -> str:
        # psycopg's placeholders are %s, so a literal % is %%; the builder
        # writes no '?' other than placeholders (values are parameters).
        return text.replace("%", "%%").replace("?", "%s")

    def first_group(self, column: str) -> str:
        return f"split_part({column}, '=', 1)"


SQLITE = Dialect()
"""sqlite: ``GLOB``, ``?`` placeholders."""

POSTGRES = _Postgres()
"""PostgreSQL: ``LIKE ... ESCAPE``, ``%s`` placeholders."""


def range_bounds(text: str, vr: str) -> tuple[str | None, str | None]:
    """The inclusive bounds of a range (or single) DA, TM or DT value.

    :param text: ``"A-B"``, ``"-B"``, ``"A-"`` or ``"A"``.
    :returns: ``(low, high)`` comparable with ``match_key`` values; either is
        ``None`` when open.
    :raises QueryError: if the value is not a range of this VR.
    """
    if vr == "DT":
        # A DT offset may contain '-', so split on the '-' that separates two
        # date-times: the first one not followed by four digits and the end.
        parts = re.fullmatch(r"([0-9.]*(?:[+-]\d{4})?)?-([0-9.]*(?:[+-]\d{4})?)?", text)
        if parts is not None:
            low, high = parts.group(1) or "", parts.group(2) or ""
        else:
            low = high = text
    elif "-" in text:
        low, _, high = text.partition("-")
    else:
        low = high = text
    low, high = low.strip(), high.strip()
    if not low and not high:
        raise QueryError(comment=f"Invalid {vr} range {text!r}")
    for part in (low, high):
        if part and not re.fullmatch(r"[0-9.:+-]+", part):
            raise QueryError(comment=f"Invalid {vr} value {part!r}")
    if vr == "DA":
        return (low.replace(".", "") or None, high.replace(".", "") or None)
    if vr == "TM":
        return (_pad_time(low, "0") if low else None, _pad_time(high, "9") if high else None)
    return (_pad_datetime(low, "0") if low else None, _pad_datetime(high, "9") if high else None)


def combined_bounds(date: object, time: object) -> tuple[str | None, str | None] | None:
    """The bounds of a combined date-time range (PS3.4 C.2.2.2.5.1), when
    combined date-time matching was negotiated.

    A Date and its Time key (Study Date and Study Time...) are combined when
    both hold one range value: ``20060705-20060707`` with ``1000-1800``
    means from 2006-07-05 10:00 to 2006-07-07 18:00, not 10:00 to 18:00 on
    each day.  An open time bound is the start (end) of its day; an open
    date bound leaves that end of the range open.  Anything else (a single
    value, a list, a universal or empty value) is matched independently.

    :returns: ``(low, high)`` comparable with a stored date followed by the
        ``match_key`` of its time (``YYYYMMDDHHMMSS.FFFFFF``), either None
        when open; None when the keys are not combined.
    :raises QueryError: a range that cannot be read.
    """
    dates, times = split_values(date), split_values(time)
    if len(dates) != 1 or len(times) != 1 or "-" not in dates[0] or "-" not in times[0]:
        return None
    date_low, date_high = range_bounds(dates[0], "DA")
    time_low, time_high = range_bounds(times[0], "TM")
    low = None if date_low is None else date_low + (time_low or _pad_time("", "0"))
    high = None if date_high is None else date_high + (time_high or _pad_time("", "9"))
    return low, high


def combined_condition(date_column: str, time_key_column: str, date: object,
                       time: object) -> Condition | None:
    """The SQL condition of a combined date-time range (see
    :func:`combined_bounds`), or None when the keys are not combined.

    A stored date without a time counts as its midnight.
    """
    bounds = combined_bounds(date, time)
    if bounds is None:
        return None
    value = f"({date_column} || COALESCE({time_key_column}, '{_pad_time('', '0')}'))"
    parts, params = [f"{date_column} IS NOT NULL"], []
    for bound, operator in zip(bounds, (">=", "<=")):
        if bound is not None:
            parts.append(f"{value} {operator} ?")
            params.append(bound)
    return Condition(" AND ".join(parts), tuple(params))


def _single_condition(column: str, key_column: str, text: str, vr: str,
                      dialect: Dialect) -> Condition:
    if text == EMPTY_VALUE:
        return Condition(f"({column} IS NULL OR {column} = '')")
    if vr in RANGE_VRS and (vr != "DA" or "-" in text):
        low, high = range_bounds(text, vr)
        column = key_column if vr != "DA" else column
        parts, params = [], []
        if low is not None:
            parts.append(f"{column} >= ?")
            params.append(low)
        if high is not None:
            parts.append(f"{column} <= ?")
            params.append(high)
        return Condition(" AND ".join(parts), tuple(params))
    if vr == "PN":
        target = _normalise_pn(text).casefold()
        if "=" in target:
            return dialect.wildcard(key_column, target)
        # A name without '=' may also match the first (alphabetic) group of
        # a name that has ideographic and phonetic groups (PS3.5 6.2.1.2).
        # "target=*" keeps an index usable for a prefix; the group itself
        # is then checked, as a wild card in the target could otherwise
        # match across the '=' ("?" would match "==A").
        group = dialect.wildcard(dialect.first_group(key_column), target)
        prefix = dialect.wildcard(key_column, target + "=*")
        return Condition.any_of([
            dialect.wildcard(key_column, target),
            Condition(f"{prefix.sql} AND {group.sql}", prefix.params + group.params)])
    if vr in NUMERIC_VRS:
        try:
            return Condition(f"{column} = ?", (int(text),))
        except ValueError:
            raise QueryError(comment=f"Invalid {vr} value {text!r}") from None
    if has_wildcard(text, vr):
        return dialect.wildcard(column, text)
    return Condition(f"{column} = ?", (text,))


def condition(column: str, value: object, vr: str, key_column: str | None = None,
              dialect: Dialect = SQLITE) -> Condition | None:
    """The SQL condition for one identifier element (PS3.4 C.2.2.2).

    :param column: the SQL expression of the stored value.
    :param value: the element's value in the identifier.
    :param vr: the element's VR.
    :param key_column: the SQL expression of the stored ``match_key`` (PN,
        TM, DT); defaults to ``column``.
    :param dialect: the SQL dialect of the index (sqlite by default).
    :returns: the condition, or ``None`` for universal matching.
    :raises QueryError: for a value the rules cannot read (a bad range).
    """
    if is_universal(value):
        return None
    key_column = key_column or column
    values = split_values(value)
    if vr == "UI":
        # List of UID matching (PS3.4 C.2.2.2.2).
        if len(values) == 1:
            return Condition(f"{column} = ?", (values[0],))
        marks = ", ".join("?" for _ in values)
        return Condition(f"{column} IN ({marks})", tuple(values))
    return Condition.any_of(
        [_single_condition(column, key_column, v, vr, dialect) for v in values]
    )


def _wildcard_regex(text: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text]
    return re.compile("".join(parts), re.DOTALL)


def predicate(value: object, vr: str) -> Callable[[str | None], bool] | None:
    """The same rules as ``condition``, as a predicate over a stored value.

    Used where a value is not in an SQL column, and by the tests to check
    the SQL against a reference.

    :returns: a function of the stored value (``None`` when empty), or
        ``None`` for universal matching.
    """
    if is_universal(value):
        return None
    values = split_values(value)
    if vr == "UI":
        uids = set(values)
        return lambda stored: stored in uids

    tests: list[Callable[[str | None], bool]] = []
    for text in values:
        tests.append(_single_predicate(text, vr))
    return lambda stored: any(test(stored) for test in tests)


def _single_predicate(text: str, vr: str) -> Callable[[str | None], bool]:
    if text == EMPTY_VALUE:
        return lambda stored: stored is None or stored == ""
    if vr in RANGE_VRS and (vr != "DA" or "-" in text):
        low, high = range_bounds(text, vr)

        def in_range(stored: str | None) -> bool:
            key = stored.replace(".", "") if vr == "DA" and stored else match_key(stored, vr)
            if key is None:
                return False
            return (low is None or key >= low) and (high is None or key <= high)
        return in_range
    if vr == "PN":
        target = _normalise_pn(text).casefold()
        regex = _wildcard_regex(target)

        def pn_matches(stored: str | None) -> bool:
            key = match_key(stored, "PN")
            if key is None:
                return False
            if regex.fullmatch(key):
                return True
            return "=" not in target and regex.fullmatch(key.split("=")[0]) is not None
        return pn_matches
    if vr in NUMERIC_VRS:
        number = int(text)
        return lambda stored: stored is not None and stored != "" and int(stored) == number
    if has_wildcard(text, vr):
        regex = _wildcard_regex(text)
        return lambda stored: stored is not None and regex.fullmatch(stored) is not None
    return lambda stored: stored == text
