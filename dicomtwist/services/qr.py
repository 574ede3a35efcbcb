"""Query/Retrieve (PS3.4 Annex C), Basic Worklist (Annex K) and UPS Pull
C-FIND (Annex CC) services of the archive.

C-FIND answers one response per matching entity at the query level,
fetched from the index in bounded batches in the thread pool so a large
result set never stalls the reactor; the index hands each identifier over
already encoded in the presentation context's transfer syntax.  C-MOVE
opens associations to the configured destination and C-GET uses the
requestor's own association; both send stored files as they are (no
decoding) whenever the peer accepted the stored transfer syntax, and
otherwise a copy converted to the best syntax it accepted
(:mod:`dicomtwist.codec`, in a pool of its own); they report
pending counts after a sub-operation, at most one Pending response per
``pending_interval`` seconds (PS3.4 C.4.2.3.1 makes them optional), and
honour C-CANCEL between sub-operations.
"""

from __future__ import annotations

import os
from collections import deque
from functools import lru_cache, partial
from itertools import islice
from typing import Any, AsyncIterator, Iterable, Iterator

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.association import (
    Association,
    FileDataSet,
    Response,
    ServiceRequest,
    associate,
    file_dataset,
)
from dicomtwist.errors import DIMSEServiceError
from dicomtwist.services.published import published_find
from dicomtwist.status import Category, Status, category
from dicomtwist.storage.files import real_directory, scratch_file, stored_file
from dicomtwist.storage.index import unsupported_keys

#: SOP class -> information model name used by the index.
FIND_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.1": "STUDY",
    "1.2.840.10008.5.1.4.1.2.3.1": "PATIENT_STUDY_ONLY",
}
MOVE_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.2": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.2": "STUDY",
    "1.2.840.10008.5.1.4.1.2.3.2": "PATIENT_STUDY_ONLY",
}
GET_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.3": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.3": "STUDY",
    "1.2.840.10008.5.1.4.1.2.3.3": "PATIENT_STUDY_ONLY",
}
#: SOP Class Extended Negotiation we answer (PS3.4 C.5.1.1, C.5.2.1,
#: C.5.3.1): for the FIND classes, byte 1 relational-queries and byte 2
#: combined date-time matching (supported); fuzzy semantic matching of
#: person names, timezone query adjustment and enhanced multi-frame image
#: conversion are answered 0.  For MOVE and GET, byte 1
#: relational-retrieval (supported); enhanced multi-frame image conversion 0.
EXTENDED_NEGOTIATION = {**{uid: b"\x01\x01" for uid in FIND_MODELS},
                        **{uid: b"\x01" for uid in (*MOVE_MODELS, *GET_MODELS)}}
#: Sub-field 1 of each: relational-queries (FIND), relational-retrieval
#: (MOVE, GET).
RELATIONAL = 1
#: Sub-field 2 of the FIND classes: combined date-time matching.
COMBINED_DATE_TIME = 2
#: Worklist and UPS Pull: negotiated and answered, with no records (as the
#: reference does), unless a worklist directory is configured
#: (:mod:`dicomtwist.services.worklist` then answers the worklist).
EMPTY_FIND = frozenset({"1.2.840.10008.5.1.4.31", "1.2.840.10008.5.1.4.34.6.3"})

UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
#: Rows fetched from the index per trip to the thread pool.
BATCH = 64
#: At most this many presentation contexts per sub-operation association.
MAX_CONTEXTS = 128


def _take(iterator: Iterator[Any], count: int) -> list[Any]:
    return list(islice(iterator, count))


def _first_batch(find: Any, *args: Any) -> tuple[Iterator[Any], list[Any]]:
    """Run a query (``find(*args)``) and take its first :data:`BATCH` matches."""
    matches = iter(find(*args))
    return matches, _take(matches, BATCH)


def _negotiated(request: ServiceRequest, option: int) -> bool:
    """Whether the requestor negotiated an option (sub-field ``option``) of
    SOP Class Extended Negotiation for the request's SOP class."""
    # A request made by the archive itself (the web API's send) has no
    # association, so nothing negotiated.
    negotiated = getattr(request.association, "negotiated", None)
    return negotiated is not None and negotiated.extended_option(
        request.context.abstract_syntax, option)


def _relational(request: ServiceRequest) -> bool:
    """Whether the requestor negotiated relational queries or retrievals."""
    return _negotiated(request, RELATIONAL)


def _service_error(error: Exception) -> DIMSEServiceError:
    """Turn the index's QueryError (status, comment) into a DIMSE status."""
    status = getattr(error, "status", None)
    if status is None:
        return DIMSEServiceError(Status.UNABLE_TO_PROCESS, str(error)[:64])
    return DIMSEServiceError(status, (getattr(error, "comment", None) or str(error))[:64])


class QueryRetrieve:
    """C-FIND, C-MOVE and C-GET handlers over an :class:`Index`.

    :param settings: the archive configuration (AE title, destinations,
        timeouts, max PDU).
    """

    log = dlog.logger()

    def __init__(self, reactor: Any, pool: ThreadPool, index: Any, settings: Any,
                 codec_pool: ThreadPool | None = None) -> None:
        self.reactor = reactor
        self.pool = pool
        self.index = index
        self.settings = settings
        #: Where conversions run (pixel codecs hold the CPU): a pool sized
        #: to the cores, apart from the index and fsync work.
        self.codec_pool = codec_pool or pool

    def _thread(self, f: Any, *args: Any) -> Any:
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    # -- C-FIND --------------------------------------------------------------
    def handle_find(self, request: ServiceRequest) -> AsyncIterator[Any]:
        """C-FIND handler: an async iterator of pending matches."""
        if events.bus.observed:
            return published_find(request, self._find(request))
        return self._find(request)

    async def _find(self, request: ServiceRequest) -> AsyncIterator[Any]:
        sop_class = request.message.affected_sop_class_uid
        identifier = request.dataset()
        if sop_class in EMPTY_FIND:
            return
        model = FIND_MODELS[sop_class]
        # PS3.4 C.4.1.1.4: keys the index does not hold are returned empty,
        # and every match says so with 0xFF01 instead of 0xFF00.
        pending = Status.PENDING_WARNING if unsupported_keys(identifier) else Status.PENDING
        try:
            # Identifiers come encoded in the context's transfer syntax
            # (from the rows, in the worker thread), not as data sets.
            # The query is planned and its first batch fetched in one trip
            # to the pool (most queries need no second).
            matches, batch = await self._thread(
                _first_batch, partial(self.index.find_encoded, relational=_relational(request),
                                      combined=_negotiated(request, COMBINED_DATE_TIME)),
                identifier, model, request.context.transfer_syntax)
            while True:
                for match in batch:
                    if request.cancelled:
                        return
                    yield Response(pending, match)
                if len(batch) < BATCH:
                    return
                batch = await self._thread(_take, matches, BATCH)
        except DIMSEServiceError:
            raise
        except Exception as e:
            if getattr(e, "status", None) is None:
                self.log.failure("C-FIND failed")
            raise _service_error(e) from e

    # -- C-MOVE and C-GET -----------------------------------------------------
    def handle_move(self, request: ServiceRequest) -> AsyncIterator[Any]:
        """C-MOVE handler: sub-operations to the named destination."""
        return self._retrieve(request, MOVE_MODELS[request.message.affected_sop_class_uid],
                              move=True)

    def handle_get(self, request: ServiceRequest) -> AsyncIterator[Any]:
        """C-GET handler: sub-operations on the requestor's association."""
        return self._retrieve(request, GET_MODELS[request.message.affected_sop_class_uid],
                              move=False)

    async def _records(self, request: ServiceRequest, model: str) -> list[Any]:
        identifier = request.dataset()
        try:
            return await self._thread(partial(self.index.retrieve,
                                              relational=_relational(request)),
                                      identifier, model)
        except Exception as e:
            if getattr(e, "status", None) is None:
                self.log.failure("Retrieve query failed")
            raise _service_error(e) from e

    async def _retrieve(self, request: ServiceRequest, model: str,
                        move: bool) -> AsyncIterator[Any]:
        message = request.message
        destination = None
        if move:
            destination = self.settings.destinations.get(message.move_destination)
            if destination is None:
                self.log.warn("C-MOVE to unknown destination {aet}", aet=message.move_destination)
                raise DIMSEServiceError(Status.MOVE_DESTINATION_UNKNOWN,
                                        f"unknown destination {message.move_destination}"[:64])
        records = await self._records(request, model)
        progress = _Progress(len(records))
        retrieve = None
        if events.bus.observed:
            retrieve = _retrieve_event(request, destination, len(records))
            events.bus.publish(retrieve)
            progress.sent = []
        if move:
            runs = self._move_runs(request, destination, records, progress)
        else:
            runs = self._get_run(request, records, progress)
        # On a C-CANCEL the runs start no further sub-operation, and end
        # once those already sent (a window's worth) have been answered.
        async for pending in runs:
            yield pending
        final = progress.final(request.cancelled)
        if retrieve is not None:
            events.bus.publish(events.RetrieveEnded(
                retrieve.via, retrieve.service, retrieve.peer_host, retrieve.calling_ae,
                retrieve.destination_ae, retrieve.destination_host,
                retrieve.study_instance_uids, retrieve.patient_ids, progress.completed,
                progress.failed, progress.warning, int(final.status), tuple(progress.sent),
                retrieve.association_id))
        yield final

    async def _move_runs(self, request: ServiceRequest, destination: Any, records: list[Any],
                         progress: "_Progress") -> AsyncIterator[Response]:
        # A send started from the web page (dicomtwist.web.api) has no
        # requesting association, hence no Move Originator (PS3.7 9.1.1.1).
        requestor = request.association
        originator = (None if requestor is None
                      else (requestor.peer_ae_title, request.message.message_id))
        lossy = getattr(destination, "lossy", False)
        order = tuple(getattr(destination, "preference", DEFAULT_ORDER))
        for batch in _batches(records, lossy, order):
            if request.cancelled:
                return
            try:
                assoc = await associate(
                    self.reactor, destination.address, destination.port,
                    contexts=_contexts(batch, lossy, order),
                    called_ae_title=destination.ae_title,
                    calling_ae_title=self.settings.ae_title, max_pdu=self.settings.max_pdu,
                    acse_timeout=self.settings.acse_timeout or 30.0,
                    dimse_timeout=self.settings.dimse_timeout,
                    network_timeout=self.settings.network_timeout,
                    tls=self._tls_for(destination), window=_proposed_window(destination))
            except Exception as e:
                self.log.warn("C-MOVE: cannot associate with {aet} at {host}:{port}: {error}",
                              aet=destination.ae_title, host=destination.address,
                              port=destination.port, error=str(e))
                for record in batch:
                    progress.done(record, Status.UNABLE_TO_PROCESS)
                yield progress.pending()
                continue
            try:
                async for pending in self._sub_operations(
                        request, assoc, self._pipeline(assoc, batch, False, lossy, order),
                        progress, originator):
                    yield pending
                if request.cancelled:
                    return
            finally:
                if not assoc.machine.is_closed:
                    try:
                        await assoc.release()
                    except Exception:
                        pass

    def _tls_for(self, destination: Any) -> Any:
        """The TLS client options for a destination marked ``tls``, else None
        (:func:`dicomtwist.tls.destination_options`, imported only then: a
        daemon without TLS never loads it)."""
        if not getattr(destination, "tls", False):
            return None
        from dicomtwist import tls

        return tls.destination_options(destination, self.settings)

    async def _get_run(self, request: ServiceRequest, records: list[Any],
                       progress: "_Progress") -> AsyncIterator[Response]:
        assoc = request.association
        async for pending in self._sub_operations(
                request, assoc, self._pipeline(assoc, records, True, False, None), progress,
                None, stop_when_closed=True):
            yield pending

    async def _sub_operations(self, request: ServiceRequest, assoc: Association,
                              prepared: Iterator[tuple[Any, Deferred]], progress: "_Progress",
                              originator: tuple[str, int] | None,
                              stop_when_closed: bool = False) -> AsyncIterator[Response]:
        """Send each prepared record as a C-STORE sub-operation on ``assoc``,
        with as many outstanding as its Asynchronous Operations Window lets
        us invoke (one unless negotiated, PS3.7 D.3.3.3): the next request
        goes out while the peer answers the previous one.  Completions are
        counted, and reported, in the order the requests were sent.  A
        C-CANCEL stops new sub-operations (so does the association's end
        with ``stop_when_closed``: a C-GET's requestor is gone; a C-MOVE's
        remaining sub-operations fail one by one instead); those already
        sent are waited for, so the counts stay exact."""
        limit = _invoke_window(assoc)
        interval = getattr(self.settings, "pending_interval", 0.0)
        sent: deque[tuple[Any, Deferred]] = deque()
        for record, preparation in prepared:
            if request.cancelled or (stop_when_closed and assoc.machine.is_closed):
                break
            sent.append((record, Deferred.fromCoroutine(
                self._send(assoc, record, preparation, originator))))
            while len(sent) >= limit:
                record, answer = sent.popleft()
                progress.done(record, await answer)
                if progress.due(self.reactor.seconds(), interval):
                    yield progress.pending()
        while sent:
            record, answer = sent.popleft()
            progress.done(record, await answer)
            if progress.due(self.reactor.seconds(), interval):
                yield progress.pending()

    def _pipeline(self, assoc: Association, records: list[Any], get: bool, lossy: bool,
                  order: tuple[str, ...] | None) -> Iterator[tuple[Any, Deferred]]:
        """``(record, preparation)`` for each record, with the conversions of
        the next ones already running in the codec pool (as many ahead as
        it has threads), so that converting overlaps sending.

        The next records are prepared once the association has settled the
        event being handled
        (:meth:`~dicomtwist.ul.protocol.DicomProtocol.when_settled`): a
        sub-operation started by the previous one's response is sent
        first, and the next file's header is read while the peer receives
        it, not before."""
        ahead = max(1, getattr(self.codec_pool, "max", 1))
        pending: deque[tuple[Any, Deferred]] = deque()
        remaining = iter(records)
        stopped = False

        def fill() -> None:
            while len(pending) <= ahead and not stopped:
                record = next(remaining, None)
                if record is None:
                    return
                pending.append((record, Deferred.fromCoroutine(
                    self._prepare(assoc, record, get, lossy, order))))

        try:
            while True:
                if not pending:
                    # First, or asked for again before a deferred fill ran.
                    fill()
                    if not pending:
                        return
                record, prepared = pending.popleft()
                assoc.when_settled(fill)
                yield record, prepared
        finally:
            # Stopped early (cancel, abort): conversions still running are
            # deleted when they finish; a deferred fill starts no more.
            stopped = True
            for _, prepared in pending:
                prepared.addCallbacks(lambda ready: _discard(ready[1]), lambda failure: None)

    async def _prepare(self, assoc: Association, record: Any, get: bool, lossy: bool,
                       order: tuple[str, ...] | None) -> tuple[FileDataSet, str | None]:
        """What to send for one record: the stored file if the peer accepted
        its syntax, else a copy converted (in the codec pool) to the best
        syntax it accepted for the SOP class (``order``: as stored, lossless
        compressed, uncompressed by default).  The stored file never changes.

        :returns: the data set to send, and the converted copy to delete
            afterwards (or None).
        """
        path = self._path(record)
        # Prepared ahead of its turn: the kernel reads the file meanwhile.
        source = file_dataset(path, readahead=True)
        contexts = assoc.negotiated.contexts.values() if assoc.negotiated else ()
        accepted = [c.transfer_syntax for c in contexts
                    if c.abstract_syntax == record.sop_class_uid and (c.scp_role or not get)]
        if get and not accepted and any(c.abstract_syntax == record.sop_class_uid
                                        for c in contexts):
            raise ValueError("the C-GET SCU did not take the SCP role for"
                             f" {record.sop_class_uid}")
        if source.transfer_syntax in accepted and (order or DEFAULT_ORDER)[0] == "stored":
            return source, None
        codec = _codec()
        chosen = codec.preference(source.transfer_syntax, accepted, allow_lossy=lossy,
                                  order=order or DEFAULT_ORDER)
        if not chosen:
            raise ValueError(f"no accepted transfer syntax for {record.sop_class_uid}"
                             f" stored as {source.transfer_syntax}"
                             + (f" (peer accepted {', '.join(accepted)})" if accepted else ""))
        if chosen[0] == source.transfer_syntax:
            return source, None
        converted = scratch_file(real_directory(self.settings.instance_location))
        try:
            from dicomtwist.codec import processes

            await deferToThreadPool(self.reactor, self.codec_pool, processes.transcode, path,
                                    chosen[0], converted, allow_lossy=lossy)
            return file_dataset(converted), converted
        except BaseException:
            _discard(converted)
            raise

    async def _send(self, assoc: Association, record: Any, prepared: Deferred,
                    originator: tuple[str, int] | None) -> int:
        """One C-STORE sub-operation of a prepared record; returns its status
        (a failure, logged in one line, on any error)."""
        converted = None
        source = None
        status = Status.UNABLE_TO_PROCESS
        try:
            source, converted = await prepared
            rsp = await assoc.store(source, move_originator=originator)
            status = rsp.status
            return status
        except Exception as e:
            self.log.warn("Sub-operation for {uid} failed: {error}",
                          uid=record.sop_instance_uid, error=str(e))
            return status
        finally:
            _discard(converted)
            if events.bus.observed:
                events.bus.publish(events.InstanceSent(
                    "dimse", assoc.peer_ae_title, assoc.peer_host() or "",
                    record.sop_class_uid, record.sop_instance_uid, "", "",
                    source.length if source is not None else 0, int(status),
                    assoc.association_id))

    def _path(self, record: Any) -> str:
        # Only the two forms the archive writes (flat, nested) are read, and
        # no symbolic link: anything else is refused rather than resolved.
        return stored_file(self.settings.instance_location, record.path)


#: At most this many C-STORE sub-operations outstanding on one association,
#: whatever window the peer grants (0 means unlimited in PS3.7 D.3.3.3).
MAX_WINDOW = 16


def _proposed_window(destination: Any) -> tuple[int, int] | None:
    """The Asynchronous Operations Window proposed to a move destination:
    its ``window`` C-STORE requests invoked by us, none performed for it
    beyond one; None (no proposal) for a window of 1."""
    window = getattr(destination, "window", 1)
    return (window, 1) if window > 1 else None


def _invoke_window(assoc: Association) -> int:
    """How many requests we may have outstanding on ``assoc`` (its
    negotiated window: as requestor the operations we invoke, as acceptor
    those the requestor performs), at most :data:`MAX_WINDOW`."""
    negotiated = assoc.negotiated
    if negotiated is None:
        return 1
    window = negotiated.outstanding(requestor=assoc.associate_rq is not None)
    return MAX_WINDOW if window == 0 else max(1, min(window, MAX_WINDOW))


def _discard(path: str | None) -> None:
    """Delete a converted copy (if any)."""
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def _retrieve_event(request: ServiceRequest, destination: Any,
                    count: int) -> events.RetrieveStarted:
    """The :class:`~dicomtwist.events.RetrieveStarted` of a C-MOVE (to
    ``destination``) or C-GET (back to the requestor)."""
    assoc = request.association
    if assoc is None:
        # A send from the web page (dicomtwist.web.api): an HTTP client
        # asked, by user name if it gave one.
        via, peer_host, calling = "http", getattr(request, "peer_host", ""), ""
        association_id = None
    else:
        via, peer_host, calling = "dimse", assoc.log_fields.get("peer_host", ""), \
            assoc.peer_ae_title
        association_id = assoc.association_id
    try:
        identifier = request.dataset()
        studies = _values(identifier.get("StudyInstanceUID"))
        patients = _values(identifier.get("PatientID"))
    except Exception:
        studies = patients = ()
    if destination is not None:
        service, dest_ae, dest_host = "move", destination.ae_title, destination.address
    else:
        service, dest_ae, dest_host = "get", calling, peer_host
    return events.RetrieveStarted(via, service, peer_host, calling, dest_ae, dest_host,
                                  studies, patients, count, association_id)


def _values(value: Any) -> tuple[str, ...]:
    """An identifier's (possibly multi-valued) attribute as a tuple of text."""
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return tuple(str(v) for v in value if str(v))
    return (str(value),)


class _Progress:
    """Sub-operation counts of one C-MOVE/C-GET (PS3.4 C.4.2.1.6)."""

    def __init__(self, total: int) -> None:
        self.remaining = total
        self.completed = 0
        self.failed = 0
        self.warning = 0
        self.failed_uids: list[str] = []
        #: SOP Instance UIDs sent successfully (kept only when somebody
        #: listens to the event bus: the retrieve's event lists them).
        self.sent: list[str] | None = None
        #: When the last Pending response after a sub-operation went out.
        self._reported: float | None = None

    def done(self, record: Any, status: int) -> None:
        self.remaining -= 1
        kind = category(status)
        if kind is Category.SUCCESS:
            self.completed += 1
            if self.sent is not None:
                self.sent.append(record.sop_instance_uid)
        elif kind is Category.WARNING:
            self.warning += 1
            if self.sent is not None:
                self.sent.append(record.sop_instance_uid)
        else:
            self.failed += 1
            self.failed_uids.append(record.sop_instance_uid)

    def _counts(self, remaining: bool) -> dict[str, int]:
        counts = {
            "number_of_completed_sub_operations": self.completed,
            "number_of_failed_sub_operations": self.failed,
            "number_of_warning_sub_operations": self.warning,
        }
        if remaining:
            counts["number_of_remaining_sub_operations"] = self.remaining
        return counts

    def due(self, now: float, interval: float) -> bool:
        """Whether a sub-operation that just ended is reported by a Pending
        response: the first is, then one when ``interval`` seconds have
        passed since the last (0: every one).  The final response carries
        the totals whatever was left out."""
        if self._reported is not None and now - self._reported < interval:
            return False
        self._reported = now
        return True

    def pending(self) -> Response:
        return Response(Status.PENDING, None, self._counts(True))

    def final(self, cancelled: bool) -> Response:
        identifier = None
        if self.failed_uids:
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = self.failed_uids
        if cancelled:
            return Response(Status.CANCEL, identifier, self._counts(True))
        if self.failed or self.warning:
            return Response(Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES, identifier,
                            self._counts(False))
        return Response(Status.SUCCESS, None, self._counts(False))


def _codec() -> Any:
    """:mod:`dicomtwist.codec`, imported on first use: its pixel back ends
    (numpy, the codec libraries) cost a daemon that never converts
    nothing."""
    from dicomtwist import codec

    return codec


#: The default order of transfer syntax preference for a destination.
DEFAULT_ORDER = ("stored", "lossless", "uncompressed")


@lru_cache(maxsize=64)
def _candidates(stored: str, lossy: bool, order: tuple[str, ...]) -> tuple[str, ...]:
    """The transfer syntaxes proposed for an instance stored in ``stored``,
    best first: each one it can be converted to (Deflated and Big Endian
    left out: nobody needs them that cannot take Little Endian).  Asked
    twice per instance of a C-MOVE with the same few arguments: kept."""
    codec = _codec()
    proposable = (stored, *codec.LOSSLESS_TARGETS, *UNCOMPRESSED,
                  *(codec.LOSSY_TARGETS if lossy else ()))
    return tuple(codec.preference(stored, proposable, allow_lossy=lossy, order=order))


def _contexts(records: Iterable[Any], lossy: bool = False,
              order: tuple[str, ...] = DEFAULT_ORDER) -> list[tuple[str, list[str]]]:
    """Presentation contexts for sending ``records``: for each SOP class and
    stored syntax, one context per transfer syntax it can be sent in, so
    that the destination says which of them it takes and the best accepted
    one is used (PS3.8 allows several contexts of one abstract syntax)."""
    contexts: dict[tuple[str, str], None] = {}
    for record in records:
        for syntax in _candidates(record.transfer_syntax_uid, lossy, order):
            contexts.setdefault((record.sop_class_uid, syntax), None)
    return [(sop_class, [syntax]) for sop_class, syntax in contexts]


def _batches(records: list[Any], lossy: bool = False,
             order: tuple[str, ...] = DEFAULT_ORDER) -> Iterator[list[Any]]:
    """Split records so that each batch needs at most MAX_CONTEXTS contexts."""
    batch: list[Any] = []
    keys: set[tuple[str, str]] = set()
    for record in records:
        wanted = {(record.sop_class_uid, syntax)
                  for syntax in _candidates(record.transfer_syntax_uid, lossy, order)}
        if batch and len(keys | wanted) > MAX_CONTEXTS:
            yield batch
            batch, keys = [], set()
        keys |= wanted
        batch.append(record)
    if batch:
        yield batch
