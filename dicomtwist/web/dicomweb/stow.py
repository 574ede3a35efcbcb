"""STOW-RS (PS3.18 10.5): store instances sent as a multipart body.

The body is parsed as it arrives (:class:`StowBody`, installed as the
request's body sink before the body is read): each ``application/dicom``
part's Part 10 header is read from its first bytes, then the data set goes
into the same spool as a C-STORE's (memory, then a temporary file in the
instance directory) and, when the part ends, through the same store
pipeline (checks, fsync, group commit).  Nothing is answered before every
part is durable or has failed; a part that is not DICOM, or whose instance
belongs to another study than the one posted to, fails alone.

The response (PS3.18 10.5.3) is DICOM JSON: Referenced SOP Sequence with a
Retrieve URL per stored instance, Failed SOP Sequence with a Failure
Reason per failed one; 200 when all were stored, 202 when some failed,
409 when none was stored.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, DeferredList

from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.services.store import StoreInfo, publish_store
from dicomtwist.status import Status
from dicomtwist.storage.files import is_valid_uid
from dicomtwist.web.dicomweb import multipart
from dicomtwist.web.dicomweb.resource import DicomWebContext, HttpError, send_body
from dicomtwist.web.server import DiscardBody

__all__ = ["PartResult", "StowBody", "body_sink_for"]

#: The most bytes of a part read before its Part 10 header must be complete.
MAX_META = 64 * 1024
#: Failure Reason (0008,1197) of an instance of another study than the
#: one in the request path (PS3.18 10.5.3.2 leaves the value to the
#: origin server; the archive uses "Data Set does not match SOP Class",
#: as for a C-STORE whose UIDs differ from the request).
STUDY_MISMATCH = Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS

_TAG_VR_LEN = struct.Struct("<HH2sH")
_UL = struct.Struct("<L")
_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL",
                       b"OV", b"SV", b"UV"})


@dataclass
class PartResult:
    """What became of one part: the instance's UIDs (when known) and the
    store status (``Status.SUCCESS`` or a failure) with a comment."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    status: int
    comment: str = ""
    #: What the store pipeline told of it (when somebody listens to the
    #: event bus), and seconds from the part's first byte to its answer.
    info: Any = None
    total: float = 0.0


class _NotPart10(ValueError):
    """A part's first bytes are not a DICOM Part 10 header."""


def parse_meta(head: bytes | bytearray) -> tuple[int, dict[int, str]] | None:
    """Read the File Meta Information of a Part 10 file's first bytes.

    :returns: ``(offset of the data set, {element: value})`` for the UIDs
        of group 0002, or None if more bytes are needed.
    :raises _NotPart10: the bytes are not a Part 10 header.
    """
    if len(head) < 132:
        return None
    if head[128:132] != b"DICM":
        raise _NotPart10("not a DICOM Part 10 file (no DICM prefix)")
    offset = 132
    values: dict[int, str] = {}
    while True:
        if offset + 8 > len(head):
            return None
        group, element, vr, short = _TAG_VR_LEN.unpack_from(head, offset)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if offset + 12 > len(head):
                return None
            length = _UL.unpack_from(head, offset + 8)[0]
            value_at = offset + 12
        else:
            if not vr.isalpha():
                raise _NotPart10("malformed File Meta Information")
            length = short
            value_at = offset + 8
        if length == 0xFFFFFFFF:
            raise _NotPart10("malformed File Meta Information")
        if value_at + length > len(head):
            return None
        if element in (0x0002, 0x0003, 0x0010):
            values[element] = bytes(head[value_at:value_at + length]).decode(
                "ascii", "replace").rstrip("\0 ")
        offset = value_at + length
    return offset, values


class StowBody(DiscardBody):
    """The body of a STOW-RS request, parsed and stored as it arrives.

    Installed as the request's content (a body sink, see
    :mod:`dicomtwist.web.server`).  :meth:`results` waits for every part.

    :param context: the DICOMweb context (its ``store`` pipeline).
    :param boundary: the body's multipart boundary.
    :param study: the Study Instance UID of the path, or None.
    """

    log = dlog.logger()

    def __init__(self, context: DicomWebContext, boundary: str, study: str | None) -> None:
        super().__init__()
        self.context = context
        self.study = study
        self.error: str | None = None
        self._parts: list[Deferred] = []
        self._sink: Any = None
        self._head: bytearray | None = None
        self._meta: tuple[str, str, str] | None = None
        self._failed: PartResult | None = None
        self._aborted = False
        self._parser = multipart.MultipartParser(
            boundary.encode("latin-1"), self._begin, self._data, self._end,
            max_parts=context.limits.max_parts)

    def write(self, data: bytes) -> None:
        """The next piece of the body."""
        self._count += len(data)
        if self.error is not None:
            return
        try:
            self._parser.feed(data)
        except multipart.MultipartError as e:
            self.error = f"malformed multipart body: {e}"
            self._discard()

    def abort(self) -> None:
        """The body will never be complete (connection lost, or over the
        limit): the part being received is dropped."""
        self._aborted = True
        self._discard()

    # Parts

    def _discard(self) -> None:
        if self._sink is not None:
            self._sink.discard()
            self._sink = None
        self._head = None

    def _begin(self, headers: dict[str, str]) -> None:
        self._meta = None
        self._failed = None
        self._head = bytearray()
        self._sink = None
        content_type = headers.get("content-type", "application/dicom")
        try:
            essence, _ = multipart.parse_content_type(content_type)
        except ValueError:
            essence = content_type
        if essence != "application/dicom":
            self._failed = PartResult(None, None, Status.STORE_CANNOT_UNDERSTAND,
                                      f"a part of type {essence[:40]} is not application/dicom")
            self._head = None

    def _data(self, chunk: bytes | memoryview) -> None:
        if self._failed is not None:
            return
        if self._sink is not None:
            self._sink.write(memoryview(chunk))
            return
        assert self._head is not None
        self._head += chunk
        try:
            found = parse_meta(self._head)
        except _NotPart10 as e:
            self._failed = PartResult(None, None, Status.STORE_CANNOT_UNDERSTAND, str(e))
            self._head = None
            return
        if found is None:
            if len(self._head) > MAX_META:
                self._failed = PartResult(None, None, Status.STORE_CANNOT_UNDERSTAND,
                                          "no complete File Meta Information")
                self._head = None
            return
        offset, values = found
        sop_class = values.get(0x0002, "")
        sop_instance = values.get(0x0003, "")
        syntax = values.get(0x0010, "")
        if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance) and is_valid_uid(syntax)):
            self._failed = PartResult(sop_class or None, sop_instance or None,
                                      Status.STORE_CANNOT_UNDERSTAND,
                                      "invalid UIDs in the File Meta Information")
            self._head = None
            return
        self._meta = (sop_class, sop_instance, syntax)
        self._sink = self.context.store.spool(sop_class, sop_instance, syntax)
        rest = memoryview(bytes(self._head[offset:]))
        self._head = None
        if len(rest):
            self._sink.write(rest)

    def _end(self) -> None:
        if self._failed is not None:
            result: Deferred = Deferred()
            result.callback(self._failed)
        elif self._sink is None or self._meta is None:
            result = Deferred()
            result.callback(PartResult(None, None, Status.STORE_CANNOT_UNDERSTAND,
                                       "not a DICOM Part 10 file"))
        else:
            data = self._sink.close()
            self._sink = None
            result = Deferred.fromCoroutine(self._store(self._meta, data))
        self._parts.append(result)

    async def _store(self, meta: tuple[str, str, str], data: Any) -> PartResult:
        sop_class, sop_instance, syntax = meta
        if not events.bus.observed:
            status, comment = await self.context.store.store_spooled(
                sop_class, sop_instance, syntax, data, study=self.study)
            return PartResult(sop_class, sop_instance, status, comment)
        info = StoreInfo()
        started = time.monotonic()
        status, comment = await self.context.store.store_spooled(
            sop_class, sop_instance, syntax, data, study=self.study, info=info)
        return PartResult(sop_class, sop_instance, status, comment, info,
                          info.receive + time.monotonic() - started)

    async def results(self) -> list[PartResult]:
        """Every part's result, once each is durable or has failed.

        :raises HttpError: 400 for a malformed or truncated body.
        """
        if self.error is None:
            try:
                self._parser.close()
            except multipart.MultipartError as e:
                self.error = f"malformed multipart body: {e}"
                self._discard()
        outcomes = await DeferredList(self._parts, consumeErrors=True)
        results = []
        for ok, value in outcomes:
            if ok:
                results.append(value)
            else:
                self.log.failure("Storing a STOW-RS part failed", value)
                results.append(PartResult(None, None, Status.OUT_OF_RESOURCES,
                                          "cannot store the instance"))
        if self.error is not None and not results:
            raise HttpError(400, self.error)
        if self.error is not None:
            results.append(PartResult(None, None, Status.STORE_CANNOT_UNDERSTAND, self.error))
        return results


class _Refused(DiscardBody):
    """The body of a STOW-RS request refused from its headers: counted and
    dropped, the reason answered once the request is complete."""

    def __init__(self, error: HttpError) -> None:
        super().__init__()
        self.refusal = error


def body_sink_for(context: DicomWebContext, authorize: Any) -> Any:
    """The Site's body-sink chooser: STOW-RS bodies go to a :class:`StowBody`.

    :param authorize: ``authorize(authorization header) -> HttpError | None``,
        so an unauthorized body is dropped, never stored.
    """
    root = [s for s in context.root.split("/") if s]

    def choose(method: bytes, path: bytes, headers: Any, length: int | None) -> Any:
        if method != b"POST":
            return None
        segments = [unquote(s) for s in urlsplit(path.decode("latin-1")).path.split("/")][1:]
        if segments and segments[-1] == "":
            segments = segments[:-1]
        if segments[:len(root)] != root:
            return None
        rest = segments[len(root):]
        if not rest or rest[0] != "studies" or len(rest) > 2:
            return None
        study = rest[1] if len(rest) == 2 else None
        if study is not None and not is_valid_uid(study):
            return None
        refusal = authorize(_header(headers, b"authorization"))
        if refusal is not None:
            return _Refused(refusal)
        content_type = _header(headers, b"content-type") or ""
        try:
            essence, params = multipart.parse_content_type(content_type)
        except ValueError:
            return _Refused(HttpError(415, "STOW-RS takes multipart/related;"
                                           ' type="application/dicom"'))
        part_type = params.get("type", "application/dicom").lower()
        if essence != "multipart/related" or part_type != "application/dicom" \
                or not params.get("boundary"):
            return _Refused(HttpError(
                415, f"STOW-RS takes multipart/related; type=\"application/dicom\", not"
                     f" {content_type[:80]}"))
        try:
            return StowBody(context, params["boundary"], study)
        except ValueError as e:
            return _Refused(HttpError(400, f"bad boundary: {e}"))

    return choose


def _header(headers: Any, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else None


async def stow(context: DicomWebContext, request: Any, base: str,
               study: str | None = None) -> None:
    """Answer a STOW-RS request once every part is stored or has failed."""
    body = request.content
    if isinstance(body, _Refused):
        raise body.refusal
    if not isinstance(body, StowBody):
        raise HttpError(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    results = await body.results()
    if not results:
        raise HttpError(400, "the body has no parts")
    stored = [r for r in results if r.status == Status.SUCCESS]
    failed = [r for r in results if r.status != Status.SUCCESS]
    if events.bus.observed:
        host = getattr(request.getClientAddress(), "host", "") or ""
        for r in results:
            publish_store("http", host, "", r.sop_class_uid or "", r.sop_instance_uid or "",
                          r.status, r.comment, r.info, r.total)
    response: dict[str, Any] = {}
    studies = set()
    if stored:
        items = []
        urls = await context.run(_instance_urls, context, base,
                                 [r.sop_instance_uid for r in stored])
        for r, url in zip(stored, urls):
            item = {"00081150": _ui(r.sop_class_uid), "00081155": _ui(r.sop_instance_uid)}
            if url:
                item["00081190"] = {"vr": "UR", "Value": [url]}
                studies.add(url.split("/series/")[0])
            items.append(dict(sorted(item.items())))
        response["00081199"] = {"vr": "SQ", "Value": items}
    if failed:
        items = []
        for r in failed:
            item = {"00081197": {"vr": "US", "Value": [int(r.status)]}}
            if r.sop_class_uid:
                item["00081150"] = _ui(r.sop_class_uid)
            if r.sop_instance_uid:
                item["00081155"] = _ui(r.sop_instance_uid)
            items.append(dict(sorted(item.items())))
            context_log.warn("STOW-RS part failed: 0x{status:04X} {comment}",
                             status=int(r.status), comment=r.comment)
        response["00081198"] = {"vr": "SQ", "Value": items}
    if len(studies) == 1:
        response["00081190"] = {"vr": "UR", "Value": [studies.pop()]}
    elif study is not None:
        response["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    code = 200 if not failed else 202 if stored else 409
    body_bytes = json.dumps(dict(sorted(response.items())), separators=(",", ":")).encode()
    send_body(request, code, "application/dicom+json", body_bytes)


context_log = dlog.logger()


def _ui(value: str | None) -> dict:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _instance_urls(context: DicomWebContext, base: str,
                   uids: list[str | None]) -> list[str | None]:
    """In a worker: the Retrieve URL of each stored instance."""
    urls: list[str | None] = []
    for uid in uids:
        found = context.index.locate(uid) if uid else None
        urls.append(None if found is None else
                    f"{base}/studies/{found[0]}/series/{found[1]}/instances/{uid}")
    return urls
