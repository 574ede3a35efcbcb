"""Tests for dicomtwist.web.dicomweb.multipart (RFC 2046 5.1, PS3.18 8.6)."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.web.dicomweb.multipart import (
    MultipartError,
    MultipartParser,
    closing,
    content_type_header,
    new_boundary,
    parse_content_type,
    part_head,
)

BOUNDARY = "boundary"
Part = tuple[dict[str, str], bytes]

# A body exercising the corners: a preamble holding near-misses, data
# holding near-miss delimiters and lone CR/LF, a part with no headers and an
# empty body, folded headers, transport padding, and an epilogue that looks
# like more parts.
TRICKY = (
    b"preamble --boundary not at a line start\r\n--bound\r\n"
    b"--boundary  \t\r\n"
    b"Content-Type: application/dicom\r\n"
    b"X-Folded: one\r\n\ttwo\r\n"
    b"\r\n"
    b"\r\n--bound\r\n--boundar\r--boundary\n--boundary\r\n-\r\r\n"
    b"\r\n--boundary\r\n"
    b"\r\n"
    b"\r\n--boundary\r\n"
    b"content-TYPE: application/octet-stream\r\n"
    b"\r\n"
    b"\r\r\n\r\n"
    b"\r\n--boundary-- \r\n"
    b"epilogue\r\n--boundary\r\nContent-Type: x/y\r\n\r\nnot a part\r\n--boundary--"
)
TRICKY_PARTS: list[Part] = [
    (
        {"content-type": "application/dicom", "x-folded": "one two"},
        b"\r\n--bound\r\n--boundar\r--boundary\n--boundary\r\n-\r\r\n",
    ),
    ({}, b""),
    ({"content-type": "application/octet-stream"}, b"\r\r\n\r\n"),
]


class Recorder:
    """Collects what a :class:`MultipartParser` reports.

    :ivar events: ``("begin", headers)``, ``("data", bytes)`` and
        ``("end", None)`` in order.
    """

    def __init__(self) -> None:
        """Start with no events."""
        self.events: list[tuple[str, object]] = []

    def begin(self, headers: dict[str, str]) -> None:
        """Record the start of a part.

        :param headers: the part's headers.
        """
        self.events.append(("begin", headers))

    def data(self, chunk: bytes | memoryview) -> None:
        """Record a piece of a part.

        :param chunk: the octets.
        """
        self.events.append(("data", bytes(chunk)))

    def end(self) -> None:
        """Record the end of a part."""
        self.events.append(("end", None))

    def parser(self, boundary: str = BOUNDARY, **limits: int) -> MultipartParser:
        """Make a parser reporting to this recorder.

        :param boundary: the body's boundary.
        :param limits: ``max_header_size`` / ``max_parts``.
        :returns: the parser.
        """
        return MultipartParser(
            boundary.encode("ascii"), self.begin, self.data, self.end, **limits
        )

    def parts(self) -> list[Part]:
        """The complete parts seen, with their data joined.

        :returns: ``(headers, octets)`` for every part that ended.
        """
        parts: list[Part] = []
        headers: dict[str, str] | None = None
        chunks: list[bytes] = []
        for kind, value in self.events:
            if kind == "begin":
                assert headers is None
                assert isinstance(value, dict)
                headers, chunks = value, []
            elif kind == "data":
                assert headers is not None
                assert isinstance(value, bytes)
                chunks.append(value)
            else:
                assert headers is not None
                parts.append((headers, b"".join(chunks)))
                headers = None
        return parts


def parse(body: bytes, chunks: list[int] | None = None, **limits: int) -> list[Part]:
    """Parse a whole body, closing the parser.

    :param body: the body.
    :param chunks: the split points, or ``None`` for one chunk.
    :param limits: passed to the parser.
    :returns: the parts.
    """
    recorder = Recorder()
    parser = recorder.parser(**limits)
    start = 0
    for end in [*(chunks or []), len(body)]:
        parser.feed(body[start:end])
        start = end
    parser.close()
    return recorder.parts()


def write(boundary: str, parts: list[tuple[str, bytes]]) -> bytes:
    """Write a body with the module's writer functions.

    :param boundary: the boundary.
    :param parts: ``(content type, octets)`` for each part.
    :returns: the body.
    """
    pieces = []
    for index, (content_type, octets) in enumerate(parts):
        pieces.append(part_head(boundary, content_type, first=index == 0))
        pieces.append(octets)
    pieces.append(closing(boundary))
    return b"".join(pieces)


class ParseContentTypeTests(SynchronousTestCase):
    """Reading a Content-Type value (RFC 2045 5.1)."""

    def test_media_type_only(self) -> None:
        """A bare media type is lower-cased and has no parameters."""
        self.assertEqual(
            parse_content_type("Application/DICOM"), ("application/dicom", {})
        )

    def test_parameters(self) -> None:
        """Parameter names are lower-cased; values keep their case."""
        self.assertEqual(
            parse_content_type(
                'multipart/related; Type="application/dicom"; BOUNDARY=AbC'
            ),
            ("multipart/related", {"type": "application/dicom", "boundary": "AbC"}),
        )

    def test_quoted_string_escapes(self) -> None:
        """Quoted-string values lose their quotes and backslash escapes."""
        self.assertEqual(
            parse_content_type(r'a/b; boundary="simple \"boundary\" \\ ;,="'),
            ("a/b", {"boundary": 'simple "boundary" \\ ;,='}),
        )

    def test_spaces_tolerated(self) -> None:
        """White space around the media type, ``;`` and ``=`` is ignored."""
        self.assertEqual(
            parse_content_type('  a/b ;  x = 1 ;\ty= "2"  '),
            ("a/b", {"x": "1", "y": "2"}),
        )

    def test_unquoted_slash(self) -> None:
        """An unquoted ``type=application/dicom`` is read whole."""
        self.assertEqual(
            parse_content_type("multipart/related; type=application/dicom"),
            ("multipart/related", {"type": "application/dicom"}),
        )

    def test_empty_parameters(self) -> None:
        """Empty parameters (``;;``, a trailing ``;``) are skipped."""
        self.assertEqual(parse_content_type("a/b;; x=1;"), ("a/b", {"x": "1"}))

    def test_empty_quoted_value(self) -> None:
        """A quoted empty string is an empty value."""
        self.assertEqual(parse_content_type('a/b; x=""'), ("a/b", {"x": ""}))

    def test_garbage(self) -> None:
        """Values that are not media types raise ValueError."""
        for value in [
            "",
            "   ",
            "text",
            "/json",
            "text/",
            "te xt/plain",
            "a/b c",
            "a/b; c",
            "a/b; c=",
            "a/b; =v",
            'a/b; c="unterminated',
            'a/b; c="x" y',
            "a/b; c=1; C=2",
            "a/b; c=\u00e9",
            "a/b, c/d",
        ]:
            with self.subTest(value=value):
                self.assertRaises(ValueError, parse_content_type, value)


class WriterTests(SynchronousTestCase):
    """Writing a body: boundaries, part heads, close delimiter, header."""

    def test_new_boundary(self) -> None:
        """A new boundary is 40 hex digits and different every time."""
        boundaries = {new_boundary() for _ in range(100)}
        self.assertEqual(len(boundaries), 100)
        for boundary in boundaries:
            self.assertRegex(boundary, r"\A[0-9a-f]{40}\Z")

    def test_first_part_head(self) -> None:
        """The first head has no CRLF before its delimiter line."""
        self.assertEqual(
            part_head("b0", "application/dicom", first=True),
            b"--b0\r\nContent-Type: application/dicom\r\n\r\n",
        )

    def test_part_head(self) -> None:
        """Later heads start with the delimiter's CRLF; extra headers follow
        Content-Type in order."""
        self.assertEqual(
            part_head(
                "b0",
                'application/dicom; transfer-syntax="1.2.840.10008.1.2.1"',
                {"Content-Location": "/studies/1", "Content-Length": "12"},
            ),
            b"\r\n--b0\r\n"
            b'Content-Type: application/dicom; transfer-syntax="1.2.840.10008.1.2.1"'
            b"\r\nContent-Location: /studies/1\r\nContent-Length: 12\r\n\r\n",
        )

    def test_closing(self) -> None:
        """The close delimiter is CRLF--boundary--CRLF."""
        self.assertEqual(closing("b0"), b"\r\n--b0--\r\n")

    def test_body(self) -> None:
        """Heads, octets and the close delimiter make the expected body."""
        self.assertEqual(
            write("b0", [("a/b", b"one"), ("c/d", b""), ("a/b", b"\r\n")]),
            b"--b0\r\nContent-Type: a/b\r\n\r\none"
            b"\r\n--b0\r\nContent-Type: c/d\r\n\r\n"
            b"\r\n--b0\r\nContent-Type: a/b\r\n\r\n\r\n"
            b"\r\n--b0--\r\n",
        )

    def test_content_type_header(self) -> None:
        """The multipart Content-Type quotes the type, not a token boundary."""
        self.assertEqual(
            content_type_header("b0", "application/dicom"),
            'multipart/related; type="application/dicom"; boundary=b0',
        )

    def test_content_type_header_transfer_syntax(self) -> None:
        """A transfer syntax goes between the type and the boundary."""
        self.assertEqual(
            content_type_header(
                "b0", "application/octet-stream", "1.2.840.10008.1.2.4.50"
            ),
            'multipart/related; type="application/octet-stream"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50; boundary=b0",
        )

    def test_content_type_header_quotes_boundary(self) -> None:
        """A boundary holding tspecials or spaces is quoted."""
        header = content_type_header("simple boundary:=?", "application/dicom")
        self.assertEqual(
            header,
            'multipart/related; type="application/dicom"; '
            'boundary="simple boundary:=?"',
        )
        self.assertEqual(
            parse_content_type(header)[1]["boundary"], "simple boundary:=?"
        )

    def test_bad_boundaries(self) -> None:
        """Boundaries outside RFC 2046 5.1.1 are refused."""
        for boundary in ["", "x" * 71, "ends with space ", "a@b", "a\r\nb", "\u00e9"]:
            with self.subTest(boundary=boundary):
                self.assertRaises(ValueError, closing, boundary)
                self.assertRaises(ValueError, part_head, boundary, "a/b")
                self.assertRaises(ValueError, content_type_header, boundary, "a/b")
        self.assertEqual(closing("x" * 70), b"\r\n--" + b"x" * 70 + b"--\r\n")

    def test_header_injection(self) -> None:
        """Header names and values that could break the head are refused."""
        self.assertRaises(ValueError, part_head, "b", "a/b\r\nX-Evil: 1")
        self.assertRaises(ValueError, part_head, "b", "a/b", {"X": "1\n2"})
        self.assertRaises(ValueError, part_head, "b", "a/b", {"X Y": "1"})
        self.assertRaises(ValueError, part_head, "b", "a/b", {"X": "\u00e9"})
        self.assertRaises(ValueError, content_type_header, "b", "a/b\r\n")


class ParserTests(SynchronousTestCase):
    """Splitting a body into parts."""

    def test_round_trip(self) -> None:
        """The parser returns exactly the parts the writer wrote."""
        boundary = new_boundary()
        parts = [
            ("application/dicom", b"DICM" * 1000),
            ("application/octet-stream", b""),
            ("image/jpeg", b"\r\n--" + boundary[:-1].encode() + b"\r\n"),
        ]
        recorder = Recorder()
        parser = recorder.parser(boundary)
        parser.feed(write(boundary, parts))
        parser.close()
        self.assertEqual(
            recorder.parts(), [({"content-type": t}, o) for t, o in parts]
        )
        self.assertEqual(parser.parts, 3)
        self.assertTrue(parser.done)

    def test_tricky_body(self) -> None:
        """Near-miss delimiters, padding, folding, preamble and epilogue."""
        self.assertEqual(parse(TRICKY), TRICKY_PARTS)

    def test_every_split(self) -> None:
        """Splitting the body in two at every offset gives the same parts."""
        for split in range(len(TRICKY) + 1):
            with self.subTest(split=split):
                self.assertEqual(parse(TRICKY, [split]), TRICKY_PARTS)

    def test_every_pair_of_splits(self) -> None:
        """Three chunks split at every pair of offsets give the same parts."""
        for first in range(0, len(TRICKY) + 1, 3):
            for second in range(first, len(TRICKY) + 1):
                self.assertEqual(parse(TRICKY, [first, second]), TRICKY_PARTS)

    def test_one_byte_at_a_time(self) -> None:
        """Feeding one byte at a time gives the same parts, and the parser
        never holds back more than a delimiter's length inside a part."""
        recorder = Recorder()
        parser = recorder.parser()
        for index in range(len(TRICKY)):
            parser.feed(TRICKY[index : index + 1])
            self.assertLessEqual(parser.buffered, 100)
        parser.close()
        self.assertEqual(recorder.parts(), TRICKY_PARTS)

    def test_split_writer_output(self) -> None:
        """Writer output split anywhere parses to the same parts."""
        body = write(BOUNDARY, [("a/b", b"x\r\n--boundar"), ("c/d", b"--boundary")])
        expected = [
            ({"content-type": "a/b"}, b"x\r\n--boundar"),
            ({"content-type": "c/d"}, b"--boundary"),
        ]
        for split in range(len(body) + 1):
            self.assertEqual(parse(body, [split]), expected)
        self.assertEqual(parse(body, list(range(1, len(body)))), expected)

    def test_first_delimiter_at_start(self) -> None:
        """The body may open with ``--boundary``, without preamble or CRLF."""
        self.assertEqual(
            parse(b"--boundary\r\n\r\nx\r\n--boundary--"), [({}, b"x")]
        )

    def test_preamble_and_epilogue_ignored(self) -> None:
        """Text before the first and after the last delimiter is dropped."""
        body = b"This is the preamble.\r\n--boundary\r\n\r\nx\r\n--boundary--\r\nbye"
        self.assertEqual(parse(body), [({}, b"x")])

    def test_preamble_ending_in_cr(self) -> None:
        """A preamble ending in CR before the delimiter's CRLF is dropped."""
        self.assertEqual(
            parse(b"pre\r\r\n--boundary\r\n\r\nx\r\n--boundary--"), [({}, b"x")]
        )

    def test_feed_after_close_delimiter(self) -> None:
        """Input after the close delimiter is epilogue and ignored."""
        recorder = Recorder()
        parser = recorder.parser()
        parser.feed(b"--boundary\r\n\r\nx\r\n--boundary--")
        parser.feed(b"\r\n--boundary\r\n\r\ny\r\n--boundary--")
        parser.close()
        self.assertEqual(recorder.parts(), [({}, b"x")])
        self.assertEqual(parser.buffered, 0)

    def test_no_parts(self) -> None:
        """A body that is only a close delimiter has no parts."""
        self.assertEqual(parse(b"--boundary--\r\n"), [])

    def test_quoted_boundary(self) -> None:
        """A quoted boundary from a Content-Type (RFC 2046's own example,
        with a space) splits the body."""
        _, params = parse_content_type(
            'multipart/related; type="application/dicom"; '
            'boundary="simple boundary"'
        )
        boundary = params["boundary"]
        self.assertEqual(boundary, "simple boundary")
        body = (
            b"--simple boundary\r\nContent-Type: application/dicom\r\n\r\n"
            b"one--simple boundary\r\n--simple boundar"
            b"\r\n--simple boundary--"
        )
        recorder = Recorder()
        parser = recorder.parser(boundary)
        parser.feed(body)
        parser.close()
        self.assertEqual(
            recorder.parts(),
            [
                (
                    {"content-type": "application/dicom"},
                    b"one--simple boundary\r\n--simple boundar",
                )
            ],
        )

    def test_headers(self) -> None:
        """Header names are lower-cased, values stripped, repeats joined,
        and folded lines unfolded (RFC 822 3.1.1)."""
        body = (
            b"--boundary\r\n"
            b"Content-Type:application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
            b"X-Repeat: a\r\nx-repeat:  b  \r\n"
            b"Content-Location: /studies/1\r\n"
            b"\r\nx\r\n--boundary--"
        )
        self.assertEqual(
            parse(body),
            [
                (
                    {
                        "content-type": "application/dicom; "
                        "transfer-syntax=1.2.840.10008.1.2.1",
                        "x-repeat": "a, b",
                        "content-location": "/studies/1",
                    },
                    b"x",
                )
            ],
        )

    def test_bad_header_lines(self) -> None:
        """A header line without a colon, or a leading continuation line,
        raises MultipartError."""
        for head in [b"no colon", b" leading continuation: x", b": no name"]:
            with self.subTest(head=head):
                body = b"--boundary\r\n" + head + b"\r\n\r\nx\r\n--boundary--"
                self.assertRaises(MultipartError, parse, body)

    def test_empty_part(self) -> None:
        """A part with headers and no octets calls no part_data."""
        recorder = Recorder()
        parser = recorder.parser()
        parser.feed(b"--boundary\r\nContent-Type: a/b\r\n\r\n\r\n--boundary--")
        parser.close()
        self.assertEqual(
            recorder.events,
            [("begin", {"content-type": "a/b"}), ("end", None)],
        )

    def test_transport_padding(self) -> None:
        """Spaces and tabs between a delimiter and its CRLF are allowed."""
        self.assertEqual(
            parse(b"--boundary \t \r\n\r\nx\r\n--boundary\t\r\n\r\ny\r\n--boundary-- \r\n"),
            [({}, b"x"), ({}, b"y")],
        )

    def test_truncated(self) -> None:
        """Every proper prefix of a body raises on close()."""
        body = write(BOUNDARY, [("a/b", b"one"), ("a/b", b"two")])
        # Up to the second hyphen after the last boundary, it is truncated.
        for end in range(len(body) - 2):
            with self.subTest(end=end):
                recorder = Recorder()
                parser = recorder.parser()
                parser.feed(body[:end])
                error = self.assertRaises(MultipartError, parser.close)
                self.assertIn("truncated", str(error))
        parse(body[: len(body) - 2])

    def test_nothing_fed(self) -> None:
        """close() without any input raises."""
        parser = Recorder().parser()
        self.assertRaises(MultipartError, parser.close)

    def test_empty_feeds(self) -> None:
        """Empty chunks change nothing."""
        recorder = Recorder()
        parser = recorder.parser()
        for byte in b"--boundary\r\n\r\nx\r\n--boundary--":
            parser.feed(b"")
            parser.feed(bytes([byte]))
        parser.close()
        self.assertEqual(recorder.parts(), [({}, b"x")])

    def test_bytes_after_delimiter(self) -> None:
        """A delimiter followed by anything but padding+CRLF or ``--`` (a
        boundary that is a prefix of a longer one, RFC 2046 5.1.1) raises."""
        for body, reason in [
            (b"--boundaryX\r\n", "unexpected bytes"),
            (b"--boundary-X", "unexpected bytes"),
            (b"--boundary \t-", "unexpected bytes"),
            (b"--boundary\rX", "missing CRLF"),
            (b"--boundary\r\n\r\nx\r\n--boundary2\r\n", "unexpected bytes"),
        ]:
            with self.subTest(body=body):
                error = self.assertRaises(MultipartError, parse, body)
                self.assertIn(reason, str(error))

    def test_header_block_limit(self) -> None:
        """A header block of max_header_size bytes passes; one more fails."""
        line = b"X-Pad: " + b"p" * 93 + b"\r\n"  # 102 bytes with its CRLF
        body = b"--boundary\r\n" + line + b"\r\nx\r\n--boundary--"
        self.assertEqual(
            parse(body, max_header_size=102), [({"x-pad": "p" * 93}, b"x")]
        )
        for split in range(len(body) + 1):
            with self.subTest(split=split):
                error = self.assertRaises(
                    MultipartError, parse, body, [split], max_header_size=101
                )
                self.assertIn("header block too large", str(error))

    def test_unterminated_headers_bounded(self) -> None:
        """Endless header lines fail once past the limit, without the
        parser holding more than the limit."""
        recorder = Recorder()
        parser = recorder.parser(max_header_size=1000)
        parser.feed(b"--boundary\r\n")
        with self.assertRaises(MultipartError):
            for _ in range(1000):
                parser.feed(b"X-Endless: 0123456789\r\n")
                self.assertLessEqual(parser.buffered, 1003)
        self.assertEqual(recorder.events, [])

    def test_max_parts(self) -> None:
        """max_parts parts pass; one more raises before its headers are
        reported."""
        body = write(BOUNDARY, [("a/b", b"1"), ("a/b", b"2"), ("a/b", b"3")])
        self.assertEqual(len(parse(body, max_parts=3)), 3)
        recorder = Recorder()
        parser = recorder.parser(max_parts=2)
        error = self.assertRaises(MultipartError, parser.feed, body)
        self.assertIn("more than 2 parts", str(error))
        self.assertEqual(len(recorder.parts()), 2)
        self.assertEqual(
            [kind for kind, _ in recorder.events].count("begin"), 2
        )

    def test_refuses_input_after_error(self) -> None:
        """After an error feed() and close() raise, and nothing more is
        reported."""
        recorder = Recorder()
        parser = recorder.parser()
        self.assertRaises(MultipartError, parser.feed, b"--boundaryX")
        error = self.assertRaises(
            MultipartError, parser.feed, b"\r\n--boundary\r\n\r\nx"
        )
        self.assertIn("already failed", str(error))
        self.assertRaises(MultipartError, parser.close)
        self.assertEqual(recorder.events, [])

    def test_refuses_input_after_close_error(self) -> None:
        """A failed close() also ends the parser."""
        parser = Recorder().parser()
        parser.feed(b"--boundary\r\n")
        self.assertRaises(MultipartError, parser.close)
        self.assertRaises(MultipartError, parser.feed, b"\r\n")

    def test_callback_error(self) -> None:
        """An exception from a callback propagates and ends the parser."""

        def refuse(chunk: bytes | memoryview) -> None:
            """Fail like a full disk.

            :param chunk: ignored.
            """
            raise OSError("disk full")

        parser = MultipartParser(b"b", lambda headers: None, refuse, lambda: None)
        self.assertRaises(OSError, parser.feed, b"--b\r\n\r\nxyz")
        self.assertRaises(MultipartError, parser.feed, b"\r\n--b--")

    def test_bad_boundary(self) -> None:
        """An empty, overlong or CR/LF boundary is refused."""
        for boundary in [b"", b"x" * 257, b"a\rb", b"a\nb"]:
            with self.subTest(boundary=boundary):
                self.assertRaises(
                    ValueError,
                    MultipartParser,
                    boundary,
                    lambda headers: None,
                    lambda chunk: None,
                    lambda: None,
                )

    def test_chunks_are_stable(self) -> None:
        """Chunks handed to part_data stay valid after the call returns."""
        kept: list[bytes | memoryview] = []
        parser = MultipartParser(b"b", lambda headers: None, kept.append, lambda: None)
        parser.feed(b"--b\r\n\r\nabc\r")
        parser.feed(b"def\r\n--b--")
        parser.close()
        self.assertEqual(b"".join(bytes(chunk) for chunk in kept), b"abc\rdef")

    def test_large_part_bounded(self) -> None:
        """A 20 MB part fed in 64 KiB chunks comes out in large chunks,
        intact, while the parser holds back less than a delimiter."""
        boundary = new_boundary()
        delimiter_length = len(boundary) + 4
        # Every CR starts a near-miss, so that holding back is exercised.
        block = (b"\r\n--" + boundary[:-1].encode() + b"DATA" * 250) * 64
        size = 20 * 1024 * 1024
        octets = (block * (size // len(block) + 1))[:size]
        body = write(boundary, [("application/octet-stream", octets)])
        digest = hashlib.sha256()
        chunk_sizes: list[int] = []

        def data(chunk: bytes | memoryview) -> None:
            """Hash the octets as they arrive.

            :param chunk: a piece of the part.
            """
            digest.update(chunk)
            chunk_sizes.append(len(chunk))

        parser = MultipartParser(
            boundary.encode(), lambda headers: None, data, lambda: None
        )
        most = 0
        step = 64 * 1024
        for start in range(0, len(body), step):
            parser.feed(body[start : start + step])
            most = max(most, parser.buffered)
        parser.close()
        self.assertEqual(digest.digest(), hashlib.sha256(octets).digest())
        self.assertLess(most, delimiter_length)
        self.assertGreater(min(chunk_sizes[:-1]), step - delimiter_length * 2)
        self.assertLessEqual(len(chunk_sizes), len(body) // step + 2)

    def test_one_chunk_one_call(self) -> None:
        """A part wholly inside one chunk is handed out in one call."""
        recorder = Recorder()
        parser = recorder.parser()
        parser.feed(write(BOUNDARY, [("a/b", b"x" * 100000)]))
        self.assertEqual(
            [kind for kind, _ in recorder.events], ["begin", "data", "end"]
        )


# Part octets drawn from the bytes that make delimiters, so that near
# misses are frequent.
_OCTETS = st.lists(
    st.sampled_from([b"\r", b"\n", b"-", b"--", b"b", b"bo", b"bou", b"x", b"\r\n--bo"]),
    max_size=30,
).map(b"".join)


class PropertyTests(SynchronousTestCase):
    """Random bodies split at random offsets."""

    @settings(max_examples=300, deadline=None)
    @given(
        parts=st.lists(_OCTETS.filter(lambda o: b"\r\n--bou" not in o), max_size=5),
        preamble=_OCTETS.filter(lambda p: b"\r\n--bou" not in b"\r\n" + p),
        epilogue=_OCTETS,
        splits=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    )
    def test_any_chunking(
        self, parts: list[bytes], preamble: bytes, epilogue: bytes, splits: list[int]
    ) -> None:
        """Any body from the writer, with any preamble and epilogue, split
        anywhere, parses to the parts written."""
        boundary = "bou"
        body = write(boundary, [("a/b", octets) for octets in parts])
        if parts:
            body = preamble + b"\r\n" + body + epilogue
        recorder = Recorder()
        parser = recorder.parser(boundary)
        start = 0
        for end in sorted({min(split, len(body)) for split in splits}) + [len(body)]:
            parser.feed(body[start:end])
            start = end
        parser.close()
        self.assertEqual(
            recorder.parts(), [({"content-type": "a/b"}, octets) for octets in parts]
        )
