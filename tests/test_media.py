"""Tests for dicomtwist.web.dicomweb.media, DICOMweb content negotiation
(PS3.18 8.7, RFC 9110 12.5.1)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.web.dicomweb.media import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    MEDIA_TYPE_SYNTAXES,
    MediaRange,
    choose,
    choose_multipart,
    default_syntax,
    parse_accept,
)

ELE = EXPLICIT_VR_LITTLE_ENDIAN
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
JPEG_LS = "1.2.840.10008.1.2.4.80"
DEFLATED = "1.2.840.10008.1.2.1.99"

# What OHIF and dicomweb-client send.
OCTET_AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DICOM_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
JSON_AND_FRAMES = (
    'application/dicom+json, multipart/related; type="application/octet-stream"; '
    "transfer-syntax=*"
)

DICOM = ["application/dicom"]
FRAMES = ["application/octet-stream", "image/jpeg", "image/jls", "image/jp2"]


def never(stored: str, wanted: str) -> bool:
    """A server that converts nothing.

    :param stored: the stored syntax.
    :param wanted: the wanted syntax.
    :returns: ``False``.
    """
    return False


def decompresses(stored: str, wanted: str) -> bool:
    """A server that can only decompress to Explicit VR Little Endian.

    :param stored: the stored syntax.
    :param wanted: the wanted syntax.
    :returns: whether ``wanted`` is Explicit VR Little Endian.
    """
    return wanted == ELE


def anything(stored: str, wanted: str) -> bool:
    """A server that converts between any syntaxes.

    :param stored: the stored syntax.
    :param wanted: the wanted syntax.
    :returns: ``True``.
    """
    return True


class MediaRangeTests(SynchronousTestCase):
    """The MediaRange value."""

    def test_essence(self) -> None:
        """The essence is type/subtype without parameters."""
        self.assertEqual(
            MediaRange("multipart", "related", (("type", "a/b"),)).essence,
            "multipart/related",
        )

    def test_param(self) -> None:
        """param() finds a parameter by name in any case, or gives None."""
        media_range = MediaRange("a", "b", (("transfer-syntax", "*"),))
        self.assertEqual(media_range.param("Transfer-Syntax"), "*")
        self.assertIsNone(media_range.param("type"))

    def test_matches(self) -> None:
        """Wildcards cover what RFC 9110 12.5.1 says they cover."""
        self.assertTrue(MediaRange("*", "*").matches("image/jpeg"))
        self.assertTrue(MediaRange("image", "*").matches("Image/JPEG"))
        self.assertTrue(MediaRange("image", "jpeg").matches("image/jpeg"))
        self.assertFalse(MediaRange("image", "*").matches("application/dicom"))
        self.assertFalse(MediaRange("image", "jpeg").matches("image/jls"))

    def test_frozen_and_hashable(self) -> None:
        """Ranges are immutable values."""
        media_range = MediaRange("a", "b", (("x", "1"),), 0.5)
        self.assertEqual(media_range, MediaRange("a", "b", (("x", "1"),), 0.5))
        self.assertEqual(len({media_range, MediaRange("a", "b", (("x", "1"),), 0.5)}), 1)
        with self.assertRaises(AttributeError):
            media_range.q = 1.0  # type: ignore[misc]


class ParseAcceptTests(SynchronousTestCase):
    """Reading Accept header fields and accept query parameters."""

    def test_absent(self) -> None:
        """No header, an empty one or a blank one means ``*/*``."""
        for value in [None, "", "   ", ",", " , ,"]:
            with self.subTest(value=value):
                self.assertEqual(parse_accept(value), [MediaRange("*", "*")])

    def test_garbage(self) -> None:
        """A header with nothing usable is disregarded: ``*/*``."""
        for value in ["garbage", "text", ";;;", "/", "a/b c", "\u00e9/x", '"a/b']:
            with self.subTest(value=value):
                self.assertEqual(parse_accept(value), [MediaRange("*", "*")])

    def test_malformed_pieces_skipped(self) -> None:
        """Malformed elements are skipped, the rest kept."""
        self.assertEqual(
            parse_accept("garbage, application/json, */json, a/b; c, x/y; q=2"),
            [MediaRange("application", "json")],
        )

    def test_bad_weights_skipped(self) -> None:
        """Elements with weights that are no qvalue are skipped."""
        for weight in ["2", "-1", "abc", "1.5", "", "nan", "0.5x"]:
            with self.subTest(weight=weight):
                self.assertEqual(
                    parse_accept(f"a/b; q={weight}, c/d"), [MediaRange("c", "d")]
                )

    def test_lenient_weights(self) -> None:
        """Weights with extra digits or no leading zero are read."""
        self.assertEqual(
            [r.q for r in parse_accept("a/b;q=.5, c/d;q=0.12345, e/f;q=1.0000")],
            [1.0, 0.5, 0.12345],
        )

    def test_ohif_octet_stream(self) -> None:
        """OHIF's frame request parses to one multipart range."""
        self.assertEqual(
            parse_accept(OCTET_AS_STORED),
            [
                MediaRange(
                    "multipart",
                    "related",
                    (("type", "application/octet-stream"), ("transfer-syntax", "*")),
                )
            ],
        )

    def test_json_and_frames(self) -> None:
        """A list of two ranges keeps both, the more specific first."""
        self.assertEqual(
            [r.essence for r in parse_accept(JSON_AND_FRAMES)],
            ["multipart/related", "application/dicom+json"],
        )

    def test_sorted_by_weight_then_specificity(self) -> None:
        """Ranges sort by weight, then by specificity, then header order."""
        ranges = parse_accept(
            "*/*;q=0.1, application/*;q=0.5, text/plain, application/json;q=0.5, "
            "text/html, text/*;q=1, application/dicom+json;q=0.5;x=1"
        )
        self.assertEqual(
            [(r.essence, r.q) for r in ranges],
            [
                ("text/plain", 1.0),
                ("text/html", 1.0),
                ("text/*", 1.0),
                ("application/dicom+json", 0.5),
                ("application/json", 0.5),
                ("application/*", 0.5),
                ("*/*", 0.1),
            ],
        )

    def test_zero_weight_kept_last(self) -> None:
        """Ranges with q=0 come last, as exclusions."""
        ranges = parse_accept("application/json;q=0, */*;q=0.01")
        self.assertEqual(
            [(r.essence, r.q) for r in ranges],
            [("*/*", 0.01), ("application/json", 0.0)],
        )

    def test_case(self) -> None:
        """Types and parameter names are lower-cased; values are kept."""
        (media_range,) = parse_accept(
            'Multipart/Related; TYPE="Application/DICOM"; Transfer-Syntax=*; Q=0.5'
        )
        self.assertEqual(media_range.essence, "multipart/related")
        self.assertEqual(media_range.param("type"), "Application/DICOM")
        self.assertEqual(media_range.param("transfer-syntax"), "*")
        self.assertEqual(media_range.q, 0.5)

    def test_unquoted_type(self) -> None:
        """``type=application/dicom`` without quotes is understood."""
        (media_range,) = parse_accept("multipart/related; type=application/dicom")
        self.assertEqual(media_range.param("type"), "application/dicom")

    def test_comma_in_quoted_string(self) -> None:
        """Commas inside quoted strings do not split the list."""
        ranges = parse_accept('a/b; x="1,2", c/d')
        self.assertEqual([r.param("x") for r in ranges], ["1,2", None])

    def test_bare_star(self) -> None:
        """A bare ``*`` (old Java clients) means ``*/*``."""
        self.assertEqual(
            parse_accept("text/html, *; q=.2"),
            [MediaRange("text", "html"), MediaRange("*", "*", (), 0.2)],
        )

    def test_query_parameter(self) -> None:
        """The accept query parameter (PS3.18 8.3.3.1) has the same syntax."""
        self.assertEqual(
            parse_accept("application/dicom+json,application/json"),
            [MediaRange("application", "dicom+json"), MediaRange("application", "json")],
        )


class ChooseTests(SynchronousTestCase):
    """Choosing among single media types (QIDO-RS, metadata)."""

    offers = ["application/dicom+json", "application/json"]

    def choose(self, accept: str | None, offers: list[str] | None = None) -> str | None:
        """Parse ``accept`` and choose among ``offers``.

        :param accept: the Accept header value.
        :param offers: the offers, the class's by default.
        :returns: the choice.
        """
        return choose(parse_accept(accept), self.offers if offers is None else offers)

    def test_exact(self) -> None:
        """An exact range picks its offer."""
        self.assertEqual(self.choose("application/json"), "application/json")
        self.assertEqual(self.choose("application/dicom+json"), "application/dicom+json")

    def test_wildcards(self) -> None:
        """``*/*``, ``application/*`` and no header pick the first offer."""
        for accept in ["*/*", "application/*", None, "garbage"]:
            with self.subTest(accept=accept):
                self.assertEqual(self.choose(accept), "application/dicom+json")

    def test_weights(self) -> None:
        """The offer with the highest weight wins."""
        self.assertEqual(
            self.choose("application/dicom+json;q=0.5, application/json"),
            "application/json",
        )
        self.assertEqual(
            self.choose("application/*;q=0.2, application/json;q=0.1"),
            "application/dicom+json",
        )

    def test_most_specific_range_decides(self) -> None:
        """A specific range's weight overrides a wildcard's (RFC 9110)."""
        self.assertEqual(
            self.choose("*/*, application/dicom+json;q=0.1"), "application/json"
        )

    def test_zero_weight_excludes(self) -> None:
        """q=0 rules an offer out even under ``*/*``."""
        self.assertEqual(
            self.choose("*/*, application/dicom+json;q=0"), "application/json"
        )
        self.assertIsNone(self.choose("application/*, application/json;q=0, application/dicom+json;q=0"))

    def test_tie_goes_to_server_order(self) -> None:
        """Equal weights go to the server's preference."""
        self.assertEqual(
            self.choose("application/json, application/dicom+json"),
            "application/dicom+json",
        )

    def test_not_acceptable(self) -> None:
        """Nothing acceptable gives None (406)."""
        for accept in ["text/html", "image/*", "*/*;q=0", OCTET_AS_STORED]:
            with self.subTest(accept=accept):
                self.assertIsNone(self.choose(accept))
        self.assertIsNone(self.choose("*/*", []))

    def test_case_insensitive(self) -> None:
        """Media types match in any case."""
        self.assertEqual(self.choose("Application/JSON"), "application/json")

    def test_parameters_other_than_type_ignored(self) -> None:
        """A charset parameter does not stop a range matching."""
        self.assertEqual(
            self.choose("application/json; charset=utf-8"), "application/json"
        )

    def test_multipart_offer(self) -> None:
        """Multipart offers match on their ``type`` parameter."""
        offers = ['multipart/related; type="application/dicom+xml"', "application/dicom+json"]
        self.assertEqual(
            self.choose('multipart/related; type="application/dicom+xml"', offers),
            offers[0],
        )
        self.assertEqual(
            self.choose("multipart/related; type=application/dicom, */*;q=0.1", offers),
            offers[0],
        )
        self.assertEqual(
            self.choose(
                "multipart/related; type=application/dicom, application/*;q=0.5",
                offers,
            ),
            "application/dicom+json",
        )
        self.assertEqual(self.choose("multipart/*", offers), offers[0])


class ChooseMultipartTests(SynchronousTestCase):
    """Choosing the part type and Transfer Syntax of a WADO-RS response."""

    def choose(
        self,
        accept: str | None,
        part_types: list[str],
        stored: str | None,
        convertible: Callable[[str, str], bool] = never,
    ) -> tuple[str, str | None] | None:
        """Parse ``accept`` and choose.

        :param accept: the Accept header value.
        :param part_types: the part types offered.
        :param stored: the stored Transfer Syntax.
        :param convertible: the conversion predicate.
        :returns: the choice.
        """
        return choose_multipart(parse_accept(accept), part_types, stored, convertible)

    def test_dicom_as_stored(self) -> None:
        """``transfer-syntax=*`` sends instances as stored."""
        self.assertEqual(
            self.choose(DICOM_AS_STORED, DICOM, JPEG_BASELINE),
            ("application/dicom", JPEG_BASELINE),
        )

    def test_octet_stream_as_stored(self) -> None:
        """OHIF's frame request gets octet-stream parts as stored, even
        compressed ones."""
        for stored in [ELE, JPEG_BASELINE, JPEG_2000]:
            with self.subTest(stored=stored):
                self.assertEqual(
                    self.choose(OCTET_AS_STORED, FRAMES, stored),
                    ("application/octet-stream", stored),
                )

    def test_json_and_frames(self) -> None:
        """dicomweb-client's combined header picks the frames range."""
        self.assertEqual(
            self.choose(JSON_AND_FRAMES, ["application/octet-stream"], JPEG_LS),
            ("application/octet-stream", JPEG_LS),
        )

    def test_default_syntax(self) -> None:
        """Without a transfer-syntax parameter instances go as Explicit VR
        Little Endian: stored so, or converted."""
        accept = 'multipart/related; type="application/dicom"'
        self.assertEqual(self.choose(accept, DICOM, ELE), ("application/dicom", ELE))
        self.assertEqual(
            self.choose(accept, DICOM, JPEG_BASELINE, decompresses),
            ("application/dicom", ELE),
        )
        self.assertIsNone(self.choose(accept, DICOM, JPEG_BASELINE, never))

    def test_octet_stream_default(self) -> None:
        """Bulk data without a parameter defaults to Explicit VR LE too."""
        accept = 'multipart/related; type="application/octet-stream"'
        self.assertEqual(
            self.choose(accept, FRAMES, JPEG_BASELINE, decompresses),
            ("application/octet-stream", ELE),
        )
        self.assertIsNone(self.choose(accept, FRAMES, JPEG_BASELINE, never))

    def test_named_syntax(self) -> None:
        """A named syntax is acceptable if stored so or convertible."""
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_2000}'
        self.assertEqual(
            self.choose(accept, DICOM, JPEG_2000), ("application/dicom", JPEG_2000)
        )
        self.assertEqual(
            self.choose(accept, DICOM, ELE, anything), ("application/dicom", JPEG_2000)
        )
        self.assertIsNone(self.choose(accept, DICOM, ELE, never))

    def test_convertible_is_asked_the_right_question(self) -> None:
        """convertible() gets (stored, wanted)."""
        asked: list[tuple[str, str]] = []

        def record(stored: str, wanted: str) -> bool:
            """Record the question and refuse.

            :param stored: the stored syntax.
            :param wanted: the wanted syntax.
            :returns: ``False``.
            """
            asked.append((stored, wanted))
            return False

        accept = f"multipart/related; type=application/dicom; transfer-syntax={DEFLATED}"
        self.assertIsNone(self.choose(accept, DICOM, ELE, record))
        self.assertEqual(asked, [(ELE, DEFLATED)])

    def test_falls_back_in_weight_order(self) -> None:
        """An unacceptable first choice falls back to the next range."""
        accept = (
            f"multipart/related; type=application/dicom; transfer-syntax={JPEG_2000}, "
            f"multipart/related; type=application/dicom; transfer-syntax={ELE}; q=0.5"
        )
        self.assertEqual(self.choose(accept, DICOM, ELE), ("application/dicom", ELE))
        self.assertEqual(
            self.choose(accept, DICOM, JPEG_2000), ("application/dicom", JPEG_2000)
        )

    def test_weight_beats_order(self) -> None:
        """A later range with a higher weight is tried first."""
        accept = (
            f"multipart/related; type=application/dicom; transfer-syntax={ELE}; q=0.5, "
            f"multipart/related; type=application/dicom; transfer-syntax=*"
        )
        self.assertEqual(
            self.choose(accept, DICOM, JPEG_2000, anything),
            ("application/dicom", JPEG_2000),
        )

    def test_bare_application_dicom(self) -> None:
        """A bare ``application/dicom`` asks for the same as the multipart
        form."""
        self.assertEqual(
            self.choose("application/dicom; transfer-syntax=*", DICOM, JPEG_2000),
            ("application/dicom", JPEG_2000),
        )
        self.assertEqual(
            self.choose("application/dicom", DICOM, ELE), ("application/dicom", ELE)
        )

    def test_wildcards(self) -> None:
        """``*/*``, ``multipart/*`` and no header take the first part type
        with its default syntax."""
        for accept in ["*/*", "multipart/*", None, "garbage", "application/*"]:
            with self.subTest(accept=accept):
                self.assertEqual(
                    self.choose(accept, FRAMES, ELE),
                    ("application/octet-stream", ELE),
                )

    def test_wildcard_tries_later_part_types(self) -> None:
        """If the first part type is not possible, ``*/*`` tries the next
        (JPEG Baseline frames cannot be decompressed, but can go as
        image/jpeg)."""
        self.assertEqual(
            self.choose("*/*", FRAMES, JPEG_BASELINE, never),
            ("image/jpeg", JPEG_BASELINE),
        )

    def test_multipart_without_type(self) -> None:
        """``multipart/related`` without ``type`` matches any part type."""
        self.assertEqual(
            self.choose("multipart/related; transfer-syntax=*", DICOM, JPEG_LS),
            ("application/dicom", JPEG_LS),
        )

    def test_other_multipart_subtypes(self) -> None:
        """``multipart/mixed`` does not ask for these parts."""
        self.assertIsNone(
            self.choose('multipart/mixed; type="application/dicom"', DICOM, ELE)
        )

    def test_unquoted_type_and_case(self) -> None:
        """Unquoted and oddly cased type parameters are understood."""
        for accept in [
            "multipart/related; type=application/dicom; transfer-syntax=*",
            'MULTIPART/RELATED; TYPE="Application/Dicom"; Transfer-Syntax=*',
            "multipart/related;type=application/dicom;transfer-syntax=*",
        ]:
            with self.subTest(accept=accept):
                self.assertEqual(
                    self.choose(accept, DICOM, JPEG_2000),
                    ("application/dicom", JPEG_2000),
                )

    def test_image_jpeg_as_stored(self) -> None:
        """``type="image/jpeg"`` takes JPEG Baseline frames as stored."""
        self.assertEqual(
            self.choose('multipart/related; type="image/jpeg"', FRAMES, JPEG_BASELINE),
            ("image/jpeg", JPEG_BASELINE),
        )
        self.assertEqual(
            self.choose(
                'multipart/related; type="image/jpeg"; transfer-syntax=*',
                FRAMES,
                JPEG_BASELINE,
            ),
            ("image/jpeg", JPEG_BASELINE),
        )

    def test_image_jpeg_default_conversion(self) -> None:
        """Uncompressed frames asked for as image/jpeg get the RESTful
        default, JPEG Lossless SV1, if the server can encode it."""
        accept = 'multipart/related; type="image/jpeg"'
        self.assertEqual(
            self.choose(accept, FRAMES, ELE, anything), ("image/jpeg", JPEG_LOSSLESS_SV1)
        )
        self.assertIsNone(self.choose(accept, FRAMES, ELE, never))
        self.assertEqual(
            self.choose(accept + "; transfer-syntax=*", FRAMES, ELE, anything),
            ("image/jpeg", JPEG_LOSSLESS_SV1),
        )

    def test_image_syntax_mismatch(self) -> None:
        """A syntax the image media type cannot carry is refused."""
        accept = f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_2000}'
        self.assertIsNone(self.choose(accept, FRAMES, JPEG_2000, anything))

    def test_image_wildcard_type(self) -> None:
        """``type="image/*"`` (PS3.18's own example) picks a fitting image
        part type."""
        self.assertEqual(
            self.choose('multipart/related; type="image/*"', FRAMES, JPEG_2000),
            ("image/jp2", JPEG_2000),
        )

    def test_part_type_not_offered(self) -> None:
        """Ranges for part types the resource cannot have give None."""
        for accept in [
            "application/dicom+json",
            "application/json",
            'multipart/related; type="application/dicom"',
            'multipart/related; type="video/mp4"',
        ]:
            with self.subTest(accept=accept):
                self.assertIsNone(self.choose(accept, ["application/octet-stream"], ELE))

    def test_zero_weight_excludes(self) -> None:
        """A range with q=0 at least as specific rules a choice out, and
        only the syntax it names."""
        self.assertIsNone(
            self.choose("*/*, multipart/related; type=application/dicom; q=0", DICOM, ELE)
        )
        accept = (
            "multipart/related; type=application/dicom; transfer-syntax=*, "
            f"multipart/related; type=application/dicom; transfer-syntax={JPEG_2000}; q=0, "
            "*/*; q=0.5"
        )
        self.assertIsNone(self.choose(accept, DICOM, JPEG_2000))
        self.assertEqual(
            self.choose(accept, DICOM, JPEG_2000, decompresses),
            ("application/dicom", ELE),
        )
        self.assertEqual(self.choose(accept, DICOM, ELE), ("application/dicom", ELE))

    def test_zero_weight_less_specific_does_not_exclude(self) -> None:
        """A wildcard q=0 does not override a specific positive range."""
        self.assertEqual(
            self.choose("application/dicom, */*;q=0", DICOM, ELE),
            ("application/dicom", ELE),
        )

    def test_nothing_stored_to_negotiate(self) -> None:
        """With no stored syntax any matching range is acceptable."""
        self.assertEqual(
            self.choose(DICOM_AS_STORED, DICOM, None), ("application/dicom", None)
        )
        self.assertEqual(
            self.choose(f"application/dicom; transfer-syntax={ELE}", DICOM, None),
            ("application/dicom", None),
        )


class SyntaxTableTests(SynchronousTestCase):
    """The media type to Transfer Syntax table (PS3.18 Table 8.7.3-5)."""

    def test_defaults(self) -> None:
        """Each compressed media type's RESTful default comes first."""
        self.assertEqual(default_syntax("image/jpeg"), JPEG_LOSSLESS_SV1)
        self.assertEqual(default_syntax("image/jls"), JPEG_LS)
        self.assertEqual(default_syntax("image/jp2"), "1.2.840.10008.1.2.4.90")
        self.assertEqual(default_syntax("image/dicom-rle"), "1.2.840.10008.1.2.5")
        self.assertEqual(default_syntax("image/jphc"), "1.2.840.10008.1.2.4.201")
        self.assertEqual(default_syntax("video/H265"), "1.2.840.10008.1.2.4.107")

    def test_uncompressed_defaults(self) -> None:
        """Instances and uncompressed bulk data default to Explicit VR LE."""
        self.assertEqual(default_syntax("application/dicom"), ELE)
        self.assertEqual(default_syntax("application/octet-stream"), ELE)

    def test_each_syntax_in_one_media_type(self) -> None:
        """No Transfer Syntax belongs to two media types; keys are lower
        case; UIDs are DICOM UIDs."""
        seen: set[str] = set()
        for media_type, syntaxes in MEDIA_TYPE_SYNTAXES.items():
            self.assertEqual(media_type, media_type.lower())
            for syntax in syntaxes:
                self.assertTrue(syntax.startswith("1.2.840.10008.1.2."))
                self.assertNotIn(syntax, seen)
                seen.add(syntax)
        self.assertIn(JPEG_BASELINE, MEDIA_TYPE_SYNTAXES["image/jpeg"])
