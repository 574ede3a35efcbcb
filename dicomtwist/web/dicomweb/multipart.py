"""multipart/related bodies (RFC 2046 5.1, RFC 2387) as DICOMweb uses them.

PS3.18 8.6.1.2 packs STOW-RS requests and WADO-RS responses into
``multipart/related`` payloads: parts separated by a delimiter line
``CRLF "--" boundary``, each part a block of MIME headers, a blank line and
the part's octets, the whole closed by ``CRLF "--" boundary "--"``.

This module is pure (no reactor, no I/O):

- :func:`parse_content_type` reads a ``Content-Type`` value (RFC 2045 5.1)
  into its media type and parameters;
- :class:`MultipartParser` splits a body that arrives in arbitrary chunks
  into parts, handing each part's octets on as soon as they cannot belong to
  a delimiter, so that its memory stays bounded whatever the size of a part;
- :func:`new_boundary`, :func:`part_head`, :func:`closing` and
  :func:`content_type_header` write such a body.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from enum import Enum

__all__ = [
    "MultipartError",
    "MultipartParser",
    "closing",
    "content_type_header",
    "new_boundary",
    "parse_content_type",
    "part_head",
]

#: RFC 2046 5.1.1: a boundary is 1 to 70 characters long.
MAX_BOUNDARY_LENGTH = 70
#: The parser is more forgiving than the writer about the length of a peer's
#: boundary, but a bound keeps the held-back tail (see
#: :attr:`MultipartParser.buffered`) small.
MAX_PARSED_BOUNDARY_LENGTH = 256

# RFC 2045 5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or
# tspecials>; tspecials are ()<>@,;:\"/[]?=
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# An unquoted parameter value, read leniently: peers send type=a/b unquoted
# although "/" is a tspecial; anything printable short of ";" and '"' goes.
_LENIENT_VALUE_RE = re.compile(r'[!#-:<-~]+')
_QUOTED_RE = re.compile(r'"((?:[^"\\\r\n]|\\[\x00-\x7f])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_OWS_RE = re.compile(r"[ \t]*")
# RFC 2046 5.1.1: bchars := bcharsnospace / " ", and the last one is no space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 2046 5.1.1: transport-padding := *LWSP-char, LWSP-char = SPACE / HTAB.
_PADDING_RE = re.compile(rb"[ \t]*")
_HEADER_LINE_RE = re.compile(rb"\r?\n")

_CRLF = b"\r\n"
_HEADER_END = b"\r\n\r\n"
_HYPHEN = 0x2D
_CR = 0x0D
_LF = 0x0A


class MultipartError(ValueError):
    """A multipart body does not follow RFC 2046 5.1.1, or breaks a limit."""


def _skip_ows(value: str, pos: int) -> int:
    """Return the index of the first character at or after ``pos`` that is
    not optional white space (RFC 9110 5.6.3).

    :param value: the header value.
    :param pos: where to start.
    :returns: the index past any spaces and tabs.
    """
    match = _OWS_RE.match(value, pos)
    assert match is not None  # "[ \t]*" matches everywhere
    return match.end()


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Parse a ``Content-Type`` (or one media range) into its parts.

    The grammar is RFC 2045 5.1 (``type "/" subtype *(";" parameter)``) read
    with RFC 9110 8.3.1's optional white space around ``;`` and tolerance for
    white space around ``=``, for empty parameters (``;;``) and for unquoted
    values holding ``/`` (``type=application/dicom``, as some DICOMweb
    clients send it).

    :param value: the header field value.
    :returns: the media type, lower-cased (``"multipart/related"``), and the
        parameters, their names lower-cased and quoted-string values unquoted
        (RFC 9110 5.6.4: backslash escapes removed); values keep their case.
    :raises ValueError: if ``value`` is not ASCII, the media type is not
        ``token "/" token``, a parameter has no ``=`` or value, a quoted
        string is unterminated, something follows a value, or a parameter
        name repeats (two ``boundary`` values would make the body ambiguous).
    """
    if not value.isascii():
        raise ValueError("media type is not ASCII")
    pos = _skip_ows(value, 0)
    main = _TOKEN_RE.match(value, pos)
    if main is None or value[main.end() : main.end() + 1] != "/":
        raise ValueError(f"not a media type: {value!r}")
    sub = _TOKEN_RE.match(value, main.end() + 1)
    if sub is None:
        raise ValueError(f"not a media type: {value!r}")
    media_type = f"{main.group()}/{sub.group()}".lower()
    params: dict[str, str] = {}
    pos = _skip_ows(value, sub.end())
    while pos < len(value):
        if value[pos] != ";":
            raise ValueError(f"unexpected {value[pos]!r} in media type")
        pos = _skip_ows(value, pos + 1)
        if pos == len(value) or value[pos] == ";":
            continue
        name_match = _TOKEN_RE.match(value, pos)
        if name_match is None:
            raise ValueError(f"bad parameter name in {value!r}")
        name = name_match.group().lower()
        pos = _skip_ows(value, name_match.end())
        if value[pos : pos + 1] != "=":
            raise ValueError(f"parameter {name!r} has no value")
        pos = _skip_ows(value, pos + 1)
        if value[pos : pos + 1] == '"':
            quoted = _QUOTED_RE.match(value, pos)
            if quoted is None:
                raise ValueError(f"unterminated quoted string in {name!r}")
            param = _QUOTED_PAIR_RE.sub(r"\1", quoted.group(1))
            pos = quoted.end()
        else:
            plain = _LENIENT_VALUE_RE.match(value, pos)
            if plain is None:
                raise ValueError(f"parameter {name!r} has no value")
            param = plain.group()
            pos = plain.end()
        if name in params:
            raise ValueError(f"parameter {name!r} repeats")
        params[name] = param
        pos = _skip_ows(value, pos)
    return media_type, params


def _parse_headers(block: bytes) -> dict[str, str]:
    """Parse one part's MIME header block (RFC 2045 3, RFC 822 3.1).

    :param block: the header lines without the blank line that ends them.
    :returns: field values by lower-cased field name; folded lines are
        unfolded, a repeated field's values joined by ``", "``.
    :raises MultipartError: on a line that is neither ``name: value`` nor a
        continuation of the line before.
    """
    headers: dict[str, str] = {}
    name: str | None = None
    if not block:
        return headers
    for raw in _HEADER_LINE_RE.split(block):
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t"):
            # RFC 822 3.1.1: a line starting with white space continues the
            # field before it (folding).
            if name is None:
                raise MultipartError("part header starts with a continuation line")
            headers[name] = f"{headers[name]} {line.strip()}".strip()
            continue
        field, colon, field_value = line.partition(":")
        field = field.strip()
        if not colon or _TOKEN_RE.fullmatch(field) is None:
            raise MultipartError("malformed part header line")
        name = field.lower()
        field_value = field_value.strip()
        if name in headers:
            headers[name] = f"{headers[name]}, {field_value}"
        else:
            headers[name] = field_value
    return headers


class _State(Enum):
    """Where the parser is in the body (RFC 2046 5.1.1 ``multipart-body``)."""

    PREAMBLE = "looking for the first delimiter"
    DELIMITER = "after a delimiter: '--', or padding and CRLF"
    HEADERS = "reading a part's header block"
    BODY = "reading a part's octets"
    EPILOGUE = "after the close delimiter"


class MultipartParser:
    """Incremental splitter of a multipart body into parts.

    Feed it the body in chunks of any size; it calls ``part_begin(headers)``
    when a part's header block is complete, ``part_data(chunk)`` with the
    part's octets (as large slices as it can, once they are known not to
    begin a delimiter), and ``part_end()`` when the delimiter after the part
    arrives.  The preamble before the first delimiter and the epilogue after
    the close delimiter are ignored (RFC 2046 5.1.1).

    Memory is bounded: inside a part it holds back fewer bytes than the
    delimiter is long, whatever the size of the part; in a header block at
    most ``max_header_size`` and a few more (see :attr:`buffered`).

    ``part_data`` may receive ``memoryview`` slices of immutable ``bytes``;
    they stay valid after the call, but copy them (``bytes(view)``) if only
    a small piece of a large chunk is kept.

    :param boundary: the ``boundary`` parameter of the body's Content-Type.
    :param part_begin: called with each part's headers, names lower-cased.
    :param part_data: called with each piece of a part's octets.
    :param part_end: called when a part is complete.
    :param max_header_size: the largest header block of one part, in bytes
        (its lines and their CRLFs, not the blank line that ends it).
    :param max_parts: the most parts accepted; ``None`` for no limit.
    :raises ValueError: if the boundary is empty, longer than
        :data:`MAX_PARSED_BOUNDARY_LENGTH` or contains CR or LF.
    """

    def __init__(
        self,
        boundary: bytes,
        part_begin: Callable[[dict[str, str]], None],
        part_data: Callable[[bytes | memoryview], None],
        part_end: Callable[[], None],
        *,
        max_header_size: int = 16384,
        max_parts: int | None = None,
    ) -> None:
        if not 0 < len(boundary) <= MAX_PARSED_BOUNDARY_LENGTH:
            raise ValueError("boundary must be 1 to 256 bytes long")
        if b"\r" in boundary or b"\n" in boundary:
            raise ValueError("boundary contains CR or LF")
        self._part_begin = part_begin
        self._part_data = part_data
        self._part_end = part_end
        self._max_header_size = max_header_size
        self._max_parts = max_parts
        # RFC 2046 5.1.1: delimiter := CRLF dash-boundary.
        self._delimiter = b"\r\n--" + bytes(boundary)
        # The first delimiter may open the body without a preamble and so
        # without its CRLF (dash-boundary); an imagined CRLF before the body
        # lets one search find both forms.
        self._tail = _CRLF
        self._state = _State.PREAMBLE
        self._padded = False
        self._scanned = 0
        self._parts = 0
        self._error: MultipartError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held back between calls to :meth:`feed`.

        Inside a part's octets this is less than ``len(boundary) + 4`` (a
        possible start of the next delimiter); while a header block is
        incomplete it is at most ``max_header_size + 3``.
        """
        return len(self._tail)

    @property
    def parts(self) -> int:
        """The number of parts begun so far."""
        return self._parts

    @property
    def done(self) -> bool:
        """Whether the close delimiter has been seen."""
        return self._state is _State.EPILOGUE

    def feed(self, data: bytes) -> None:
        """Parse the next chunk of the body, calling the callbacks.

        :param data: the next bytes of the body, of any length.
        :raises MultipartError: if the body is malformed or breaks a limit;
            the parser then refuses further input.  An exception raised by a
            callback propagates and also ends the parser.
        """
        if self._error is not None:
            raise MultipartError(f"parser already failed: {self._error}")
        if self._state is _State.EPILOGUE or not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        buf = self._tail + data if self._tail else data
        try:
            pos = self._run(buf)
        except MultipartError as error:
            self._error = error
            self._tail = b""
            raise
        except BaseException as error:
            self._error = MultipartError(f"a callback failed: {error!r}")
            self._tail = b""
            raise
        self._tail = b"" if self._state is _State.EPILOGUE else buf[pos:]

    def close(self) -> None:
        """Declare the body complete.

        :raises MultipartError: if the close delimiter (``--boundary--``)
            was never seen: the body was truncated.
        """
        if self._error is not None:
            raise MultipartError(f"parser already failed: {self._error}")
        if self._state is not _State.EPILOGUE:
            self._error = MultipartError("truncated body: no close delimiter")
            self._tail = b""
            raise self._error

    def _run(self, buf: bytes) -> int:
        """Consume as much of ``buf`` as can be decided now.

        :param buf: the held-back bytes followed by the new chunk.
        :returns: the offset of the first byte to hold back.
        :raises MultipartError: on malformed input or a broken limit.
        """
        delimiter = self._delimiter
        size = len(buf)
        view = memoryview(buf)
        pos = 0
        while True:
            state = self._state
            if state is _State.BODY:
                found = buf.find(delimiter, pos)
                if found < 0:
                    # Only a suffix shorter than the delimiter can begin one,
                    # and a delimiter begins with CR.
                    cr = buf.find(b"\r", max(pos, size - len(delimiter) + 1))
                    end = size if cr < 0 else cr
                    if end > pos:
                        self._part_data(view[pos:end])
                    return end
                if found > pos:
                    self._part_data(view[pos:found])
                self._part_end()
                pos = found + len(delimiter)
                self._state = _State.DELIMITER
                self._padded = False
            elif state is _State.DELIMITER:
                pos = self._after_delimiter(buf, pos)
                if self._state is _State.DELIMITER:
                    return pos
            elif state is _State.HEADERS:
                # The header block runs from the CRLF ending the delimiter
                # line to the blank line: CRLF headers CRLF CRLF, or just
                # CRLF CRLF when the part has no headers.
                start = pos + max(0, self._scanned - 3)
                end = buf.find(_HEADER_END, start)
                if end < 0:
                    self._scanned = size - pos
                    if size - pos - 3 > self._max_header_size:
                        raise MultipartError("part header block too large")
                    return pos
                if end - pos > self._max_header_size:
                    raise MultipartError("part header block too large")
                headers = _parse_headers(buf[pos + 2 : end])
                self._scanned = 0
                self._state = _State.BODY
                pos = end + len(_HEADER_END)
                self._part_begin(headers)
            elif state is _State.PREAMBLE:
                found = buf.find(delimiter, pos)
                if found < 0:
                    return max(pos, size - len(delimiter) + 1)
                pos = found + len(delimiter)
                self._state = _State.DELIMITER
                self._padded = False
            else:
                return size

    def _after_delimiter(self, buf: bytes, pos: int) -> int:
        """Decide what follows a delimiter (RFC 2046 5.1.1).

        ``--`` makes it the close delimiter; otherwise optional transport
        padding and CRLF open the next part.

        :param buf: the bytes at hand.
        :param pos: the offset just past the delimiter (or past padding
            already skipped).
        :returns: the offset reached; the state is still ``DELIMITER`` if
            more bytes are needed.
        :raises MultipartError: on anything else after the delimiter, or if
            the next part would exceed ``max_parts``.
        """
        size = len(buf)
        if pos == size:
            return pos
        if buf[pos] == _HYPHEN and not self._padded:
            if pos + 1 == size:
                return pos
            if buf[pos + 1] != _HYPHEN:
                raise MultipartError("unexpected bytes after a boundary delimiter")
            self._state = _State.EPILOGUE
            return size
        padding = _PADDING_RE.match(buf, pos)
        assert padding is not None  # "[ \t]*" matches everywhere
        if padding.end() > pos:
            self._padded = True
            pos = padding.end()
        if pos == size:
            return pos
        if buf[pos] != _CR:
            raise MultipartError("unexpected bytes after a boundary delimiter")
        if pos + 1 == size:
            return pos
        if buf[pos + 1] != _LF:
            raise MultipartError("missing CRLF after a boundary delimiter")
        if self._max_parts is not None and self._parts >= self._max_parts:
            raise MultipartError(f"more than {self._max_parts} parts")
        self._parts += 1
        self._state = _State.HEADERS
        self._scanned = 0
        # Keep the CRLF: it begins the header block's CRLF CRLF terminator
        # when the part has no headers.
        return pos


def _quote(value: str) -> str:
    """Render a parameter value as a token, or as a quoted string if it
    must be one (RFC 2045 5.1, RFC 9110 5.6.4).

    :param value: the parameter value.
    :returns: ``value`` itself if it is a token, else ``"value"`` with
        backslash and double quote escaped.
    :raises ValueError: if the value holds CR, LF or non-ASCII characters.
    """
    if not value.isascii() or "\r" in value or "\n" in value:
        raise ValueError(f"cannot put {value!r} in a header")
    if _TOKEN_RE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _check_boundary(boundary: str) -> bytes:
    """Check a boundary against RFC 2046 5.1.1 and encode it.

    :param boundary: the boundary we write.
    :returns: its ASCII bytes.
    :raises ValueError: if it is empty, longer than 70 characters, holds a
        character outside ``bchars`` or ends with a space.
    """
    if _BOUNDARY_RE.fullmatch(boundary) is None:
        raise ValueError(f"not an RFC 2046 boundary: {boundary!r}")
    return boundary.encode("ascii")


def new_boundary() -> str:
    """Make a fresh random boundary.

    40 hexadecimal digits: RFC 2046 5.1.1 ``bcharsnospace`` only, so it
    needs no quoting, and 160 random bits, so it will not occur in the
    parts by chance.

    :returns: the boundary, without the leading ``--``.
    """
    return secrets.token_hex(20)


def part_head(
    boundary: str,
    content_type: str,
    headers: Mapping[str, str] | None = None,
    first: bool = False,
) -> bytes:
    """The bytes that open one part: delimiter line, headers, blank line.

    A body is ``part_head(b, t, first=True) + octets + part_head(b, t) +
    octets + ... + closing(b)``: every head but the first starts with the
    CRLF that belongs to the delimiter (RFC 2046 5.1.1), so the octets of a
    part are written exactly as they are.

    :param boundary: the body's boundary.
    :param content_type: the part's Content-Type value (PS3.18 8.6.1.2
        requires one in every part).
    :param headers: more part headers (e.g. ``Content-Location``), written
        in their order after Content-Type.
    :param first: whether this is the first part, whose delimiter line
        opens the body and so has no CRLF before it.
    :returns: the encoded head.
    :raises ValueError: if the boundary is not valid, a header name is not a
        token, or a value holds CR, LF or non-ASCII characters.
    """
    fields = [("Content-Type", content_type)]
    if headers:
        fields.extend(headers.items())
    lines = [b"--" + _check_boundary(boundary)]
    for name, value in fields:
        if _TOKEN_RE.fullmatch(name) is None:
            raise ValueError(f"not a header name: {name!r}")
        if not value.isascii() or "\r" in value or "\n" in value:
            raise ValueError(f"cannot put {value!r} in a header")
        lines.append(f"{name}: {value}".encode("ascii"))
    head = _CRLF.join(lines) + _HEADER_END
    return head if first else _CRLF + head


def closing(boundary: str) -> bytes:
    """The close delimiter that ends a body: ``CRLF "--" boundary "--" CRLF``.

    :param boundary: the body's boundary.
    :returns: the encoded close delimiter (RFC 2046 5.1.1), with a CRLF
        after it as an empty epilogue.
    :raises ValueError: if the boundary is not valid.
    """
    return b"\r\n--" + _check_boundary(boundary) + b"--\r\n"


def content_type_header(
    boundary: str, type_: str, transfer_syntax: str | None = None
) -> str:
    """The Content-Type of a DICOMweb multipart body (PS3.18 8.7.3.5.1).

    For example ``multipart/related; type="application/dicom";
    boundary=0f3c...``.  Values are quoted where RFC 2045 5.1 requires it
    (the ``type`` always, since it holds ``/``).

    :param boundary: the body's boundary.
    :param type_: the media type of the parts (RFC 2387 3.1 ``type``).
    :param transfer_syntax: a Transfer Syntax UID for the
        ``transfer-syntax`` parameter (PS3.18 8.7.3.5.2), or ``None``.
    :returns: the header value.
    :raises ValueError: if the boundary is not valid or a value cannot be
        put in a header.
    """
    _check_boundary(boundary)
    pieces = ["multipart/related", f"type={_quote(type_)}"]
    if transfer_syntax is not None:
        pieces.append(f"transfer-syntax={_quote(transfer_syntax)}")
    pieces.append(f"boundary={_quote(boundary)}")
    return "; ".join(pieces)
