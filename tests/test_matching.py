"""Tests for dicomtwist.storage.matching: PS3.4 C.2.2.2 matching rules.

Each row of ``CASES`` becomes one test that checks the SQL condition (run
against sqlite, and against PostgreSQL) and the Python predicate give the
expected answer.
"""

from __future__ import annotations

import sqlite3

import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.status import Status
from dicomtwist.storage import matching
from dicomtwist.storage.matching import Condition, QueryError
from tests import pg

JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"

# (name, rule, VR, identifier value, stored value, matches)
CASES = [
    # Universal matching (C.2.2.2.3)
    ("universal_empty_lo", "universal", "LO", "", "ABC", True),
    ("universal_star_cs", "universal", "CS", "*", "CT", True),
    ("universal_empty_ui", "universal", "UI", "", "1.2.3", True),
    ("universal_empty_matches_empty", "universal", "LO", "", None, True),
    # Single value matching (C.2.2.2.1)
    ("single_lo_exact", "single", "LO", "ABC", "ABC", True),
    ("single_lo_case_sensitive", "single", "LO", "abc", "ABC", False),
    ("single_sh_other", "single", "SH", "ACC1", "ACC2", False),
    ("single_cs_exact", "single", "CS", "CT", "CT", True),
    ("single_cs_no_prefix", "single", "CS", "C", "CT", False),
    ("single_ae", "single", "AE", "STORESCU", "STORESCU", True),
    ("single_lo_empty_stored", "single", "LO", "ABC", None, False),
    ("single_da_exact", "single", "DA", "20200615", "20200615", True),
    ("single_da_other", "single", "DA", "20200615", "20200616", False),
    ("single_is_number", "single", "IS", "5", "5", True),
    ("single_is_leading_zero", "single", "IS", "05", "5", True),
    ("single_is_other", "single", "IS", "5", "6", False),
    ("single_us", "single", "US", "512", "512", True),
    ("single_ui_not_wildcard", "single", "UI", "1.2.*", "1.2.3", False),
    ("single_da_star_literal", "single", "DA", "2020*", "20200101", False),
    ("single_tm_covers_minute", "single", "TM", "1030", "103045.5", True),
    ("single_tm_other_minute", "single", "TM", "1030", "103100", False),
    ("single_dt_covers_day", "single", "DT", "20200101", "20200101235959", True),
    # PN: case-insensitive, trailing empty components ignored
    ("pn_case_insensitive", "single", "PN", "doe^john", "Doe^John", True),
    ("pn_trailing_carets_stored", "single", "PN", "Doe^John", "Doe^John^^^", True),
    ("pn_trailing_carets_query", "single", "PN", "Doe^John^^", "Doe^John", True),
    ("pn_trailing_group_query", "single", "PN", "Doe^John=", "Doe^John", True),
    ("pn_other_name", "single", "PN", "Doe^Jane", "Doe^John", False),
    ("pn_family_only", "single", "PN", "Doe", "Doe^John", False),
    ("pn_latin1_casefold", "single", "PN", "müller^hans", "Müller^Hans", True),
    ("pn_greek_casefold", "single", "PN", "ΗΛΊΑΣ", "Ηλίας", True),
    ("pn_first_group", "single", "PN", "yamada^tarou", JAPANESE, True),
    ("pn_all_groups", "single", "PN", JAPANESE, JAPANESE, True),
    ("pn_wrong_groups", "single", "PN", "Yamada^Tarou=山田^次郎", JAPANESE, False),
    # Wild card matching (C.2.2.2.4)
    ("wildcard_star_suffix", "wildcard", "LO", "AB*", "ABCD", True),
    ("wildcard_star_anchored", "wildcard", "LO", "AB*", "XABC", False),
    ("wildcard_star_prefix", "wildcard", "SH", "*CD", "ABCD", True),
    ("wildcard_star_case_sensitive", "wildcard", "LO", "ab*", "ABCD", False),
    ("wildcard_question", "wildcard", "CS", "C?", "CT", True),
    ("wildcard_question_one_char", "wildcard", "CS", "C?", "CTX", False),
    ("wildcard_question_unicode", "wildcard", "LO", "M?ller", "Müller", True),
    ("wildcard_star_empty_run", "wildcard", "LO", "A*B", "AB", True),
    ("wildcard_pn_prefix", "wildcard", "PN", "doe*", "Doe^John", True),
    ("wildcard_pn_suffix", "wildcard", "PN", "*JOHN", "Doe^John", True),
    ("wildcard_pn_question", "wildcard", "PN", "d?e^*", "Doe^John", True),
    ("wildcard_pn_ideographic", "wildcard", "PN", "*山田*", JAPANESE, True),
    ("wildcard_pn_no_match", "wildcard", "PN", "smith*", "Doe^John", False),
    # '%', '_' and '[' are literal characters, not SQL patterns
    ("literal_percent", "wildcard", "LO", "100%", "1000", False),
    ("literal_percent_same", "single", "LO", "100%", "100%", True),
    ("literal_percent_with_star", "wildcard", "LO", "A%*", "ABC", False),
    ("literal_percent_with_star_match", "wildcard", "LO", "A%*", "A%BC", True),
    ("literal_underscore", "single", "SH", "A_C", "ABC", False),
    ("literal_underscore_with_star", "wildcard", "SH", "A_*", "AB", False),
    ("literal_underscore_with_star_match", "wildcard", "SH", "A_*", "A_B", True),
    ("literal_bracket", "wildcard", "LO", "[AB]*", "A1", False),
    ("literal_bracket_match", "wildcard", "LO", "[AB]*", "[AB]1", True),
    ("literal_pn_underscore", "wildcard", "PN", "o_brien*", "OXBrien^Pat", False),
    ("literal_pn_underscore_match", "wildcard", "PN", "o_brien*", "O_Brien^Pat", True),
    ("literal_pn_percent", "single", "PN", "a%b", "AXB", False),
    # List of UID matching (C.2.2.2.2)
    ("uid_single", "uid_list", "UI", "1.2.3", "1.2.3", True),
    ("uid_single_prefix", "uid_list", "UI", "1.2", "1.2.3", False),
    ("uid_list_second", "uid_list", "UI", "1.2\\1.3", "1.3", True),
    ("uid_list_none", "uid_list", "UI", "1.2\\1.3", "1.4", False),
    # Range matching (C.2.2.2.5): DA
    ("da_range_inside", "range", "DA", "20200101-20201231", "20200615", True),
    ("da_range_lower_bound", "range", "DA", "20200101-20201231", "20200101", True),
    ("da_range_upper_bound", "range", "DA", "20200101-20201231", "20201231", True),
    ("da_range_after", "range", "DA", "20200101-20201231", "20210101", False),
    ("da_range_open_start", "range", "DA", "-20201231", "19991231", True),
    ("da_range_open_start_after", "range", "DA", "-20201231", "20210101", False),
    ("da_range_open_end", "range", "DA", "20200101-", "20300101", True),
    ("da_range_open_end_before", "range", "DA", "20200101-", "20191231", False),
    ("da_range_empty_stored", "range", "DA", "20200101-", None, False),
    ("da_range_acr_nema_dots", "range", "DA", "2020.01.01-2020.12.31", "20200615", True),
    # Range matching: TM, partial and fractional
    ("tm_range_inside", "range", "TM", "1000-1100", "103000", True),
    ("tm_range_upper_minute", "range", "TM", "1000-1100", "110059", True),
    ("tm_range_after", "range", "TM", "1000-1100", "110100", False),
    ("tm_range_hour_only", "range", "TM", "10-10", "105959.999999", True),
    ("tm_range_before", "range", "TM", "1000-1100", "095959.9", False),
    ("tm_range_open_start", "range", "TM", "-0900", "085959.999999", True),
    ("tm_range_open_start_after", "range", "TM", "-0900", "090100", False),
    ("tm_range_fraction_lower", "range", "TM", "103000.5-", "103000.50001", True),
    ("tm_range_fraction_lower_before", "range", "TM", "103000.5-", "103000.4", False),
    ("tm_range_partial_stored", "range", "TM", "1000-", "10", True),
    ("tm_range_acr_nema_colons", "range", "TM", "10:00:00-11:00:00", "10:30:00", True),
    # Range matching: DT
    ("dt_range_inside", "range", "DT", "20200101-20201231", "20200615120000", True),
    ("dt_range_year_open_end", "range", "DT", "2020-", "20191231235959", False),
    ("dt_range_year_covers", "range", "DT", "2020-2020", "20201231235959.999", True),
    ("dt_range_seconds", "range", "DT", "20200101120000-", "20200101115959.9", False),
    ("dt_range_open_start", "range", "DT", "-20200101", "20200101235959", True),
    ("dt_range_offsets_ignored", "range", "DT", "20200101+0100-20200102+0100",
     "20200101120000", True),
    # Multiple values: any one matches
    ("multi_cs_second", "multiple", "CS", "CT\\MR", "MR", True),
    ("multi_cs_none", "multiple", "CS", "CT\\MR", "US", False),
    ("multi_cs_wildcard", "multiple", "CS", "C*\\MR", "CT", True),
    ("multi_is", "multiple", "IS", "5\\6", "6", True),
    ("multi_da_ranges", "multiple", "DA", "2019-\\-2000", "19990101", True),
    # Empty value matching
    ("empty_value_matches_empty", "empty", "LO", '""', None, True),
    ("empty_value_matches_blank", "empty", "LO", '""', "", True),
    ("empty_value_not_filled", "empty", "LO", '""', "X", False),
]


def _sql_matches(vr: str, query: str, stored: str | None) -> bool:
    """Run ``matching.condition`` against a one-row sqlite table."""
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE t (v, k)")
        value: object = stored
        if stored is not None and vr in matching.NUMERIC_VRS:
            value = int(stored)
        db.execute("INSERT INTO t VALUES (?, ?)", (value, matching.match_key(stored, vr)))
        found = matching.condition("v", query, vr, key_column="k")
        if found is None:
            return True
        return db.execute(f"SELECT COUNT(*) FROM t WHERE {found.sql}",
                          found.params).fetchone()[0] == 1
    finally:
        db.close()


_pg_lock = threading.Lock()
_pg_connection: list = []


def _postgres_matches(vr: str, query: str, stored: str | None) -> bool:
    """Run ``matching.condition`` in PostgreSQL's dialect over one row with
    the index's column types (``TEXT COLLATE "C"``, ``BIGINT``)."""
    import psycopg

    with _pg_lock:
        if not _pg_connection:
            _pg_connection.append(psycopg.connect(pg.create_database(), autocommit=True))
        conn = _pg_connection[0]
        kind = "bigint" if vr in matching.NUMERIC_VRS else "text"
        collate = "" if vr in matching.NUMERIC_VRS else ' COLLATE "C"'
        value: object = stored
        if stored is not None and vr in matching.NUMERIC_VRS:
            value = int(stored)
        found = matching.condition("v", query, vr, key_column="k", dialect=matching.POSTGRES)
        if found is None:
            return True
        sql = (f"SELECT COUNT(*) FROM (SELECT CAST(%s AS {kind}){collate} AS v, "
               'CAST(%s AS text) COLLATE "C" AS k) AS t WHERE ')
        return conn.execute(sql + matching.POSTGRES.sql(found.sql),
                            (value, matching.match_key(stored, vr)) + found.params
                            ).fetchone()[0] == 1


def _predicate_matches(vr: str, query: str, stored: str | None) -> bool:
    """Run ``matching.predicate`` on the stored value."""
    test = matching.predicate(query, vr)
    return True if test is None else test(stored)


class MatchingRuleTests(SynchronousTestCase):
    """One generated test per row of ``CASES`` (sqlite)."""

    sql_matches = staticmethod(_sql_matches)


class MatchingRuleTestsPostgres(SynchronousTestCase):
    """One generated test per row of ``CASES`` (PostgreSQL)."""

    sql_matches = staticmethod(_postgres_matches)


def _make_case(name, rule, vr, query, stored, expected):
    def test(self):
        self.assertEqual(
            (self.sql_matches(vr, query, stored), _predicate_matches(vr, query, stored)),
            (expected, expected))
    verb = "matches" if expected else "does not match"
    test.__doc__ = f"{rule} matching: {vr} {query!r} {verb} {stored!r}."
    test.__name__ = f"test_{name}"
    return test


for _case in CASES:
    setattr(MatchingRuleTests, f"test_{_case[0]}", _make_case(*_case))
    setattr(MatchingRuleTestsPostgres, f"test_{_case[0]}", _make_case(*_case))
del _case


class ConditionTests(SynchronousTestCase):
    """Shape of the SQL conditions."""

    def test_values_are_bound_not_interpolated(self):
        """A value with quotes and SQL reaches the database only as a parameter."""
        value = "x' OR 1=1 --"
        found = matching.condition("v", value, "LO")
        self.assertNotIn("OR 1=1", found.sql)
        self.assertEqual(found.params, (value,))

    def test_universal_is_none(self):
        """Universal matching gives no condition at all."""
        self.assertIsNone(matching.condition("v", "", "PN"))
        self.assertIsNone(matching.condition("v", None, "PN"))
        self.assertIsNone(matching.condition("v", "**", "LO"))

    def test_uid_list_is_in(self):
        """A list of UIDs becomes one IN with a parameter per UID."""
        found = matching.condition("v", ["1.2", "1.3", "1.4"], "UI")
        self.assertEqual(found, Condition("v IN (?, ?, ?)", ("1.2", "1.3", "1.4")))

    def test_any_of_empty(self):
        """An empty alternative matches nothing."""
        self.assertEqual(Condition.any_of([]).sql, "FALSE")

    def test_glob_pattern_escapes_bracket(self):
        """Only '[' needs escaping for GLOB; '%' and '_' are literal already."""
        self.assertEqual(matching.glob_pattern("a[b]%_*?"), "a[[]b]%_*?")

    def test_like_pattern_escapes(self):
        """For LIKE, '\\', '%' and '_' are escaped before '*' and '?' become '%' and '_'."""
        self.assertEqual(matching.like_pattern("a\\b%_*?["), "a\\\\b\\%\\_%_[")
        self.assertEqual(matching.POSTGRES.wildcard("v", "A*"),
                         Condition("v LIKE ? ESCAPE '\\'", ("A%",)))
        self.assertEqual(matching.POSTGRES.sql("v IN (?, ?)"), "v IN (%s, %s)")

    def test_invalid_range(self):
        """A range that is not a date raises QueryError with 0xA900."""
        error = self.assertRaises(QueryError, matching.condition, "v", "abc-def", "DA")
        self.assertEqual(error.status, Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
        self.assertRaises(QueryError, matching.range_bounds, "-", "TM")

    def test_invalid_number(self):
        """A non-numeric IS value raises QueryError."""
        self.assertRaises(QueryError, matching.condition, "v", "five", "IS")

    def test_error_comment_truncated(self):
        """QueryError keeps its Error Comment within 64 characters."""
        self.assertEqual(len(QueryError(comment="x" * 100).comment), 64)


class MatchKeyTests(SynchronousTestCase):
    """Normalised match keys."""

    def test_pn(self):
        """PN keys are case-folded without trailing empty components or groups."""
        self.assertEqual(matching.match_key("Doe^John^^=", "PN"), "doe^john")
        self.assertEqual(matching.match_key("A^B\\C^^", "PN"), "a^b\\c")

    def test_tm(self):
        """TM keys are padded to HHMMSS.FFFFFF."""
        self.assertEqual(matching.match_key("10", "TM"), "100000.000000")
        self.assertEqual(matching.match_key("103015.5", "TM"), "103015.500000")

    def test_dt(self):
        """DT keys are padded to YYYYMMDDHHMMSS.FFFFFF without the UTC offset."""
        self.assertEqual(matching.match_key("2020010110+0100", "DT"),
                         "20200101100000.000000")

    def test_other_and_empty(self):
        """Other VRs keep their value; empty values have no key."""
        self.assertEqual(matching.match_key("CT", "CS"), "CT")
        self.assertIsNone(matching.match_key("", "PN"))
        self.assertIsNone(matching.match_key(None, "TM"))

    def test_range_bounds(self):
        """Upper bounds fill with nines so a partial value covers its span."""
        self.assertEqual(matching.range_bounds("10-1030", "TM"),
                         ("100000.000000", "103099.999999"))
        self.assertEqual(matching.range_bounds("-20201231", "DA"), (None, "20201231"))
        self.assertEqual(matching.range_bounds("20200101-", "DA"), ("20200101", None))


_PATTERN = st.text(alphabet="aAb%_[]*?^=ü", max_size=8)
_STORED = st.text(alphabet="aAb%_[]^=ü", max_size=8)


_STORED_PG = st.text(alphabet="aAb%_[]^=ü\\", max_size=8)


class AgreementTests:
    """The SQL conditions and the Python predicates agree on any value."""

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.differing_executors])
    @given(query=_PATTERN, stored=_STORED_PG, vr=st.sampled_from(["LO", "CS", "UI"]))
    def test_case_sensitive(self, query, stored, vr):
        """For case-sensitive VRs, the wild card operator (GLOB with '['
        escaped; LIKE with '%', '_' and '\\' escaped) matches like a regex."""
        self.assertEqual(self.sql_matches(vr, query, stored or None),
                         _predicate_matches(vr, query, stored or None))

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.differing_executors])
    @given(query=_PATTERN, stored=_STORED)
    def test_person_name(self, query, stored):
        """For PN, the match key column and the predicate agree."""
        self.assertEqual(self.sql_matches("PN", query, stored or None),
                         _predicate_matches("PN", query, stored or None))

    def test_person_name_wildcard_stays_in_the_first_group(self):
        """A wild card matched against the alphabetic group does not reach
        across '=' into the other groups (found by the property above)."""
        for query, stored, expected in [("?", "==A", False), ("a*b", "A=B=C", False),
                                        ("a*", "A=B=C", True), ("*=b*", "A=B=C", True),
                                        ("doe", "Doe=X", True), ("doe?", "Doe=X", False)]:
            self.assertEqual(self.sql_matches("PN", query, stored), expected, (query, stored))
            self.assertEqual(_predicate_matches("PN", query, stored), expected, (query, stored))


class AgreementTestsSqlite(AgreementTests, SynchronousTestCase):
    """The sqlite conditions agree with the predicates."""

    sql_matches = staticmethod(_sql_matches)


class AgreementTestsPostgres(AgreementTests, SynchronousTestCase):
    """The PostgreSQL conditions agree with the predicates."""

    sql_matches = staticmethod(_postgres_matches)
