"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, images.

- Retrieve (study, series, instance): ``multipart/related;
  type="application/dicom"``, each stored file written through a push
  producer, so a slow reader holds the archive to one chunk in memory and a
  1 GB instance is never read whole.  The Transfer Syntax comes from the
  Accept header (:mod:`.media`): as stored, or a conversion between the
  uncompressed syntaxes; anything else is 406 until the codec layer exists.
- Metadata: the DICOM JSON kept in the index at ingest
  (:func:`describe`), so a series' metadata never opens its files; an
  instance indexed without it gets it on first request.
- Frames and bulk data: ``application/octet-stream`` parts (or the
  compressed image media type of the stored syntax), read from the stored
  file through a memory map.
- Rendered and thumbnail: JPEG or PNG (:mod:`.rendered`), in the rendering
  pool.
"""

from __future__ import annotations

import mmap
import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.web import server
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from dicomtwist import events
from dicomtwist.association import NATIVE_SYNTAXES, file_dataset
from dicomtwist.storage.files import scratch_file, stored_file
from dicomtwist.storage.index import StoredInstance
from dicomtwist.web.dicomweb import media, multipart
from dicomtwist.web.dicomweb.dicomjson import (
    decode_bulk_path,
    encode_metadata,
    find_bulk_value,
)
from dicomtwist.web.dicomweb.resource import DicomWebContext, HttpError, send_body

__all__ = ["convertible", "describe", "Writer"]

_T = TypeVar("_T")

#: Bytes read from a stored file per write (where ``sendfile`` is not used).
CHUNK = 1024 * 1024
#: Bytes offered to one ``sendfile`` call.
SENDFILE_CHUNK = 8 * 1024 * 1024
#: Bytes sent before the writer lets the reactor run other connections.
YIELD_EVERY = 32 * 1024 * 1024
#: ``"BulkDataURI":"bulkdata/`` as kept in the metadata, made absolute when
#: it is served.
_BULK = b'"BulkDataURI":"bulkdata/'
_PIXEL_DATA = "7FE00010"
#: Explicit and Implicit VR Little Endian: uncompressed frames and bulk
#: data values are the same octets in either, so a file stored in one is
#: served as the other (Explicit, the default, from an Implicit file).
_LITTLE_ENDIAN = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def convertible(stored: str, wanted: str) -> bool:
    """Whether a stored syntax can be sent in another (the codec layer's
    conversions, lossless targets only: a client asking for a lossy
    syntax gets 406)."""
    if stored == wanted:
        return True
    from dicomtwist import codec

    return codec.can_convert(stored, wanted)


def describe(data: Any, transfer_syntax: str) -> bytes:
    """The metadata the index keeps for an instance: its DICOM JSON
    (PS3.18 F.2, large binary values as relative BulkDataURIs), zlib-packed.

    Called by the store pipeline in a worker thread at ingest.
    """
    return zlib.compress(encode_metadata(data, transfer_syntax), 1)


def on_dataset(path: str, work: Callable[[memoryview, str], _T]) -> _T:
    """``work(data set, transfer syntax)`` on a stored Part 10 file's data
    set, seen through a memory map (nothing is read that ``work`` does not
    touch).  ``work`` must not return views of the map.
    """
    found = file_dataset(path)
    with open(path, "rb") as fp:
        mm = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mm)
    data = view[found.offset:]
    try:
        return work(data, found.transfer_syntax)
    finally:
        try:
            data.release()
            view.release()
            mm.close()
        except BufferError:
            # An exception's traceback still holds a view: the map is
            # closed when that is collected.
            pass


def describe_file(path: str) -> bytes:
    """:func:`describe` of a stored Part 10 file."""
    return on_dataset(path, describe)


@implementer(IPushProducer)
class Writer:
    """Writes a response body under back-pressure.

    A push producer registered on the request: when the transport's buffer
    fills, :meth:`write` waits for ``resumeProducing`` before returning, so
    whatever feeds it reads no further ahead than the client takes.
    """

    def __init__(self, request: server.Request) -> None:
        self.request = request
        self._paused: Deferred | None = None
        self.stopped = False
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self.stopProducing())

    def pauseProducing(self) -> None:
        """The transport is full."""
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        """The transport has room again."""
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        """The client has gone: stop at the next write."""
        self.stopped = True
        self.resumeProducing()

    async def write(self, data: bytes) -> None:
        """Write, then wait while the transport is full.

        :raises ConnectionDone: the client has gone.
        """
        if self.stopped:
            raise ConnectionDone("client gone")
        self.request.write(data)
        if self._paused is not None:
            await self._paused
        if self.stopped:
            raise ConnectionDone("client gone")

    async def write_file(self, path: str, start: int = 0, length: int | None = None) -> None:
        """Write part of a file: with ``sendfile`` on a plain TCP
        connection (the kernel copies it to the socket), otherwise
        :data:`CHUNK` bytes at a time."""
        with open(path, "rb") as fp:
            left = os.fstat(fp.fileno()).st_size - start if length is None else length
            transport = self.request.channel.transport
            if _sendfile_socket(transport) is not None:
                await self._sendfile(transport, fp, start, left)
                return
            fp.seek(start)
            while left > 0:
                chunk = fp.read(min(CHUNK, left))
                if not chunk:
                    raise OSError(f"{path} is shorter than indexed")
                left -= len(chunk)
                await self.write(chunk)

    async def _sendfile(self, transport: Any, fp: Any, offset: int, left: int) -> None:
        """``os.sendfile`` from ``fp`` to the connection's socket, never
        blocking the reactor: whatever the transport still buffers goes
        first, and a full socket waits for the transport to say it can
        write again."""
        socket_fd = _sendfile_socket(transport)
        since_yield = 0
        while left > 0:
            if self.stopped:
                raise ConnectionDone("client gone")
            if _buffered(transport):
                # The part's head is usually all it holds: send it now
                # (what the reactor would do on the next turn).
                transport.doWrite()
                if _buffered(transport):
                    await self._drained(transport)
                    continue
            try:
                sent = os.sendfile(socket_fd, fp.fileno(), offset, min(left, SENDFILE_CHUNK))
            except BlockingIOError:
                await self._drained(transport)
                continue
            except (BrokenPipeError, ConnectionResetError):
                self.stopped = True
                raise ConnectionDone("client gone") from None
            if sent == 0:
                raise OSError(f"{fp.name} is shorter than indexed")
            offset += sent
            left -= sent
            since_yield += sent
            if since_yield >= YIELD_EVERY and left:
                # A fast reader does not keep the other connections waiting.
                since_yield = 0
                turn: Deferred = Deferred()
                self.request.channel.callLater(0, turn.callback, None)
                await turn

    def _drained(self, transport: Any) -> Deferred:
        """Fires when the transport has sent all it holds and the socket can
        take more: the transport resumes its paused producer (the HTTP
        channel, which resumes this writer) once its buffer is empty."""
        if self._paused is None:
            self._paused = Deferred()
        paused = self._paused
        transport.producerPaused = True
        transport.startWriting()
        return paused

    def finish(self) -> None:
        """End the response."""
        self.request.unregisterProducer()
        if not self.stopped and not self.request.finished:
            self.request.finish()


def _sendfile_socket(transport: Any) -> int | None:
    """The socket of a plain TCP transport whose buffer we can see, for
    ``sendfile``; None for TLS (the bytes must go through the TLS layer)
    or anything else."""
    from twisted.internet import tcp

    if not isinstance(transport, tcp.Connection) or not hasattr(os, "sendfile"):
        return None
    if not all(hasattr(transport, name) for name in ("dataBuffer", "offset", "_tempDataLen",
                                                      "producerPaused", "startWriting")):
        return None
    try:
        return transport.fileno()
    except Exception:
        return None


def _buffered(transport: Any) -> int:
    """Bytes a transport still holds to send."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@dataclass
class Part:
    """One part of a multipart response: its Content-Type, and its octets
    from a file (``path``, ``start``, ``length``) or in memory (``data``)."""

    content_type: str
    path: str | None = None
    start: int = 0
    length: int | None = None
    data: bytes | None = None
    location: str | None = None

    @property
    def size(self) -> int | None:
        """The octets' length, when known."""
        return len(self.data) if self.data is not None else self.length


async def send_multipart(request: server.Request, type_: str, parts: Sequence[Part],
                         transfer_syntax: str | None = None) -> None:
    """Answer ``multipart/related`` with the parts, streamed.

    When every part's size is known the body has a Content-Length;
    otherwise it goes chunked.
    """
    boundary = multipart.new_boundary()
    request.setResponseCode(200)
    request.setHeader("content-type",
                      multipart.content_type_header(boundary, type_, transfer_syntax))
    total = multipart_length(boundary, parts)
    if total is not None:
        request.setHeader("content-length", str(total))
    if request.method == b"HEAD":
        request.finish()
        return
    writer = Writer(request)
    try:
        first = True
        for part in parts:
            headers = {"Content-Location": part.location} if part.location else None
            await writer.write(multipart.part_head(boundary, part.content_type, headers,
                                                   first=first))
            first = False
            if part.data is not None:
                await writer.write(part.data)
            else:
                assert part.path is not None
                await writer.write_file(part.path, part.start, part.length)
        await writer.write(multipart.closing(boundary))
    except ConnectionDone:
        pass
    except OSError:
        # The headers are gone: all we can do is cut the body short.
        writer.stopped = True
        request.channel.transport.abortConnection()
        raise
    finally:
        writer.finish()


def multipart_length(boundary: str, parts: Sequence[Part]) -> int | None:
    """The body length :func:`send_multipart` writes, None if a part's
    size is unknown."""
    total = len(multipart.closing(boundary))
    for n, part in enumerate(parts):
        if part.size is None:
            return None
        headers = {"Content-Location": part.location} if part.location else None
        total += len(multipart.part_head(boundary, part.content_type, headers,
                                         first=n == 0)) + part.size
    return total


def accept_of(request: server.Request) -> list[media.MediaRange]:
    """The Accept header, or the ``accept`` query parameter (PS3.18 8.3.3.1)."""
    values = request.args.get(b"accept") if request.args else None
    if values:
        return media.parse_accept(",".join(v.decode("utf-8", "replace") for v in values))
    return media.parse_accept(request.getHeader("accept"))


async def find(context: DicomWebContext, study: str, series: str | None = None,
               instance: str | None = None, metadata: bool = False) -> list[StoredInstance]:
    """The stored instances a path names; 404 when there are none."""
    records = await context.run(context.index.instances, study, series, instance, metadata)
    if not records:
        what = "instance" if instance else "series" if series else "study"
        raise HttpError(404, f"no such {what}")
    return records


def stored_path(context: DicomWebContext, record: StoredInstance) -> str:
    """The file of an indexed instance; only ever inside the instance
    directory (:func:`dicomtwist.storage.files.stored_file`)."""
    try:
        return stored_file(context.directory, record.path)
    except ValueError:
        raise HttpError(404, "no such instance") from None


# Retrieve

async def retrieve(context: DicomWebContext, request: server.Request, study: str,
                   series: str | None = None, instance: str | None = None) -> None:
    """WADO-RS Retrieve Study, Series or Instance (PS3.18 10.4.1)."""
    accept = accept_of(request)
    records = await find(context, study, series, instance)
    plans: list[tuple[StoredInstance, str]] = []
    for record in records:
        chosen = media.choose_multipart(accept, ["application/dicom"],
                                        record.transfer_syntax_uid, convertible)
        if chosen is None:
            raise HttpError(406, "none of the accepted media types and transfer syntaxes can"
                                 f" be sent for {record.sop_instance_uid} (stored as"
                                 f" {record.transfer_syntax_uid})")
        plans.append((record, chosen[1] or record.transfer_syntax_uid))
    parts: list[Part] = []
    scratch: list[str] = []
    started = _retrieve_started(request, records) if events.bus.observed else None
    try:
        for record, syntax in plans:
            path = stored_path(context, record)
            if syntax != record.transfer_syntax_uid:
                path = await converted(context, path, syntax, scratch)
            try:
                size = os.path.getsize(path)
            except OSError:
                raise HttpError(404, f"instance {record.sop_instance_uid} is not on disk")
            parts.append(Part(f"application/dicom; transfer-syntax={syntax}", path=path,
                              length=size))
        await send_multipart(request, "application/dicom", parts)
        if started is not None:
            for (record, _), part in zip(plans, parts):
                events.bus.publish(events.InstanceSent(
                    "http", "", started.peer_host, record.sop_class_uid or "",
                    record.sop_instance_uid, record.study_instance_uid, "", part.length or 0))
            events.bus.publish(events.RetrieveEnded(
                "http", "wado", started.peer_host, "", "", started.peer_host,
                started.study_instance_uids, (), len(parts), 0, 0, 0,
                tuple(record.sop_instance_uid for record, _ in plans)))
    finally:
        for path in scratch:
            _unlink(path)


def _retrieve_started(request: server.Request,
                      records: list[StoredInstance]) -> events.RetrieveStarted:
    """Publish the :class:`~dicomtwist.events.RetrieveStarted` of a WADO-RS
    retrieve of ``records`` (the client is its destination) and return it."""
    host = getattr(request.getClientAddress(), "host", "") or ""
    studies = tuple(dict.fromkeys(r.study_instance_uid for r in records))
    event = events.RetrieveStarted("http", "wado", host, "", "", host, studies, (),
                                   len(records))
    events.bus.publish(event)
    return event


async def converted(context: DicomWebContext, path: str, transfer_syntax: str,
                    scratch: list[str]) -> str:
    """A copy of a stored file in another transfer syntax, made in the
    pixel pool into the instance directory's scratch space (its path is
    added to ``scratch`` for the caller to delete).

    :raises HttpError: 406 when the codec cannot convert this instance.
    """
    from dicomtwist import codec
    from dicomtwist.codec import processes

    target = scratch_file(context.directory)
    scratch.append(target)
    try:
        await context.render(processes.transcode, path, transfer_syntax, target)
    except codec.CodecError as e:
        raise HttpError(406, f"cannot convert to {transfer_syntax}: {e}")
    return target


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# Metadata

async def metadata(context: DicomWebContext, request: server.Request, base: str, study: str,
                   series: str | None = None, instance: str | None = None) -> None:
    """WADO-RS Retrieve Metadata (PS3.18 10.4.1.1.2), from the index."""
    offered = media.choose(accept_of(request), ["application/dicom+json", "application/json"])
    if offered is None:
        raise HttpError(406, "metadata is sent as application/dicom+json")
    records = await find(context, study, series, instance, metadata=True)
    body = await context.run(_metadata_body, context, records, base)
    send_body(request, 200, offered, body, compress=True)


def _metadata_body(context: DicomWebContext, records: list[StoredInstance],
                   base: str) -> bytes:
    """In a worker: the JSON array of the instances' metadata."""
    pieces = []
    for record in records:
        packed = record.metadata
        if packed is None:
            try:
                packed = describe_file(stored_path(context, record))
            except (OSError, ValueError):
                continue
            context.index.set_metadata(record.sop_instance_uid, packed)
        prefix = (f'"BulkDataURI":"{base}/studies/{record.study_instance_uid}/series/'
                  f'{record.series_instance_uid}/instances/{record.sop_instance_uid}/bulkdata/')
        pieces.append(zlib.decompress(packed).replace(_BULK, prefix.encode("ascii")))
    return b"[" + b",".join(pieces) + b"]"


# Frames and bulk data

_FRAME_TAGS = frozenset({0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280008})


@dataclass(frozen=True)
class _PixelModule:
    rows: int
    columns: int
    samples: int
    bits: int
    frames: int

    @property
    def frame_size(self) -> int:
        """Bytes of one uncompressed frame (bits rounded up to bytes)."""
        return (self.rows * self.columns * self.samples * self.bits + 7) // 8


def parse_frame_list(text: str) -> list[int]:
    """``frames/1,3,5``: frame numbers, 1-based (PS3.18 10.4.1.1.4)."""
    numbers = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise HttpError(400, f"frame list {text!r}: frame numbers are integers from 1")
        numbers.append(int(piece))
    if not numbers:
        raise HttpError(400, "empty frame list")
    return numbers


def _read_frames(path: str, numbers: list[int]) -> tuple[str, list[bytes]]:
    """In a worker: the stored transfer syntax and the frames' octets
    (as stored: compressed frames stay compressed)."""
    return on_dataset(path, lambda data, syntax: (syntax, _frames_of(data, syntax, numbers)))


def _frames_of(data: memoryview, syntax: str, numbers: list[int]) -> list[bytes]:
    from pydicom.encaps import get_frame

    from dicomtwist.storage.header import scan

    value = find_bulk_value(data, syntax, _PIXEL_DATA)
    if value is None:
        raise HttpError(404, "the instance has no pixel data")
    frames = []
    if syntax in NATIVE_SYNTAXES:
        ds = scan(data, syntax, _FRAME_TAGS)
        module = _PixelModule(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0),
                              int(ds.get("SamplesPerPixel") or 1),
                              int(ds.get("BitsAllocated") or 0),
                              int(ds.get("NumberOfFrames") or 1))
        if module.bits % 8 and module.frames > 1:
            raise HttpError(406, "frames of 1-bit multi-frame pixel data are not byte aligned")
        size = module.frame_size
        for n in numbers:
            if n > module.frames:
                raise HttpError(404, f"frame {n} of {module.frames}")
            frame = bytes(value[(n - 1) * size:n * size])
            if len(frame) != size or size == 0:
                raise HttpError(404, f"frame {n} is not in the pixel data")
            frames.append(frame)
    else:
        count = _frame_count(data, syntax)
        encapsulated = bytes(value)
        for n in numbers:
            if n > count:
                raise HttpError(404, f"frame {n} of {count}")
            frames.append(get_frame(encapsulated, n - 1, number_of_frames=count))
    return frames


def _frame_count(data: memoryview, syntax: str) -> int:
    from dicomtwist.storage.header import scan

    try:
        ds = scan(data, syntax, frozenset({0x00280008}))
    except NotImplementedError:
        return 1
    return int(ds.get("NumberOfFrames") or 1)


async def frames(context: DicomWebContext, request: server.Request, study: str, series: str,
                 instance: str, rest: str) -> None:
    """WADO-RS Retrieve Frames (PS3.18 10.4.1.1.4), and their rendered and
    thumbnail resources (routed from here)."""
    pieces = rest.split("/")
    numbers = parse_frame_list(pieces[0])
    if len(pieces) == 2 and pieces[1] in ("rendered", "thumbnail"):
        if len(numbers) != 1:
            raise HttpError(400, "a rendered frame is one frame")
        record = (await find(context, study, series, instance))[0]
        if numbers[0] > (record.number_of_frames or 1):
            raise HttpError(404, f"frame {numbers[0]} of {record.number_of_frames or 1}")
        return await rendered(context, request, study, series, instance, numbers[0],
                              thumbnail=pieces[1] == "thumbnail")
    if len(pieces) != 1:
        raise HttpError(404, "no such resource")
    record = (await find(context, study, series, instance))[0]
    stored = record.transfer_syntax_uid
    native = stored in NATIVE_SYNTAXES
    part_types = (["application/octet-stream"] if native else
                  [_media_type_of(stored), "application/octet-stream"])

    def as_is(wanted: str | None) -> bool:
        # Uncompressed frames are the same octets in either little endian
        # syntax: an Implicit VR file serves Explicit VR frames as it is.
        return wanted in (None, stored) or (
            native and stored != "1.2.840.10008.1.2.2" and wanted in _LITTLE_ENDIAN)

    chosen = media.choose_multipart(accept_of(request), part_types, stored,
                                    lambda a, b: as_is(b) or convertible(a, b))
    if chosen is None:
        raise HttpError(406, f"frames stored as {stored} cannot be sent as asked")
    part_type, syntax = chosen
    syntax = syntax or stored
    path = stored_path(context, record)
    scratch: list[str] = []
    try:
        if not as_is(syntax):
            # Decoded (or re-encoded) by the codec into a scratch copy,
            # whose frames are then read as stored ones are.
            path = await converted(context, path, syntax, scratch)
        _, octets = await context.run(_read_frames, path, numbers)
    finally:
        for name in scratch:
            _unlink(name)
    content_type = f"{part_type}; transfer-syntax={syntax}"
    parts = [Part(content_type, data=frame) for frame in octets]
    await send_multipart(request, part_type, parts)


def _media_type_of(syntax: str) -> str:
    for media_type, syntaxes in media.MEDIA_TYPE_SYNTAXES.items():
        if syntax in syntaxes:
            return media_type
    return "application/octet-stream"


async def bulkdata(context: DicomWebContext, request: server.Request, study: str,
                   series: str, instance: str, rest: str) -> None:
    """WADO-RS Retrieve Bulk Data (PS3.18 10.4.1.1.5): a BulkDataURI of the
    metadata, as one ``application/octet-stream`` part."""
    if decode_bulk_path(rest) is None:
        raise HttpError(404, "no such bulk data")
    record = (await find(context, study, series, instance))[0]
    stored = record.transfer_syntax_uid
    if rest.upper() == _PIXEL_DATA and stored not in NATIVE_SYNTAXES:
        # Encapsulated pixel data: its frames, as stored.
        return await frames(context, request, study, series, instance,
                            ",".join(str(n) for n in range(1, (record.number_of_frames or 1) + 1)))
    chosen = media.choose_multipart(accept_of(request), ["application/octet-stream"], stored,
                                    lambda a, b: a == b or (a in _LITTLE_ENDIAN
                                                            and b in _LITTLE_ENDIAN))
    if chosen is None:
        raise HttpError(406, "bulk data is sent as application/octet-stream")
    value = await context.run(_read_bulk, stored_path(context, record), rest)
    if value is None:
        raise HttpError(404, "no such bulk data")
    part = Part("application/octet-stream", data=value)
    await send_multipart(request, "application/octet-stream", [part])


def _read_bulk(path: str, bulk_path: str) -> bytes | None:
    """In a worker: the value a bulk data path names, or None."""
    def read(data: memoryview, syntax: str) -> bytes | None:
        value = find_bulk_value(data, syntax, bulk_path)
        return None if value is None else bytes(value)

    return on_dataset(path, read)


# Rendered and thumbnail

async def rendered(context: DicomWebContext, request: server.Request, study: str,
                   series: str | None = None, instance: str | None = None,
                   frame: int | None = None, thumbnail: bool = False) -> None:
    """WADO-RS Retrieve Rendered / Thumbnail (PS3.18 10.4.1.1.3, 10.4.1.1.6).

    A study's or series' thumbnail is that of a representative instance:
    the middle one of the (first) series.
    """
    from dicomtwist.web.dicomweb import rendered as rendering

    args = request.args or {}

    def arg(name: str) -> str | None:
        values = args.get(name.encode())
        return values[-1].decode("utf-8", "replace") if values else None

    try:
        window = rendering.parse_window(arg("window")) if arg("window") else None
        viewport = rendering.parse_viewport(arg("viewport")) if arg("viewport") else None
        quality = rendering.parse_quality(arg("quality")) if arg("quality") else None
    except rendering.RenderError as e:
        raise HttpError(400, str(e))
    media_type = media.choose(accept_of(request), ["image/jpeg", "image/png", "image/gif"])
    if media_type is None:
        raise HttpError(406, "rendered images are image/jpeg, image/png or image/gif")
    records = await find(context, study, series, instance)
    if instance is None:
        first_series = records[0].series_instance_uid
        chosen = [r for r in records if r.series_instance_uid == first_series]
        records = [chosen[len(chosen) // 2]] + [r for r in records if r is not chosen[len(chosen) // 2]][:3]
    last: Exception | None = None
    for record in records:
        path = stored_path(context, record)
        try:
            image = await context.render(_render, path, frame, media_type, window, viewport,
                                         quality, thumbnail)
        except rendering.NotRenderable as e:
            last = e
            continue
        except rendering.RenderError as e:
            raise HttpError(400, str(e))
        send_body(request, 200, media_type, image)
        return
    raise HttpError(406 if instance else 404, f"cannot render: {last}")


def _render(path: str, frame: int | None, media_type: str, window: Any, viewport: Any,
            quality: int | None, thumbnail: bool) -> bytes:
    from pydicom import dcmread

    from dicomtwist.web.dicomweb import rendered as rendering

    ds = dcmread(path)
    return rendering.render(ds, frame, media_type, window=window, viewport=viewport,
                            quality=quality, thumbnail=thumbnail)

