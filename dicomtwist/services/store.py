"""The Storage service (PS3.4 Annex B) of the archive: C-STORE SCP.

Each data set is spooled in memory as its fragments arrive (a big one
spills into a temporary file inside the instance directory), so the
reactor thread does no file system work for ordinary instances.  Then, in
one hop to a worker thread: scan the header (:mod:`dicomtwist.storage.header`),
check the UIDs, write the temporary file -- a Part 10 header, then the data
set as received -- and fsync it; then a *group commit* indexes and renames
every instance ready at that moment into its bucket directory
(``ab/cd/<uid>.dcm``, :func:`dicomtwist.storage.files.relative_path`) in
one sqlite transaction, fsyncs the bucket directories it renamed into (and,
the first time this process uses a bucket, the bucket's parents, so that a
new subdirectory is durable too) -- and only then is each answered Success.  The first
worker to find no commit running commits its own instance at once; the
instances that become ready meanwhile are committed together by the next
one.  Any failure answers a failure status and leaves neither the file nor
a row behind (a replaced instance keeps its old file and row).
"""

from __future__ import annotations

import errno
import functools
import io
import mmap
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.internet.interfaces import IReactorThreads
from twisted.python.threadpool import ThreadPool

from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.acse import PresentationContext
from dicomtwist.association import Response, ServiceRequest
from dicomtwist.dimse.assembly import DataSink, MemoryBudget, Spooled, SpoolSink, memory_sink
from dicomtwist.dimse.messages import CStoreRQ, Message
from dicomtwist.status import Status
from dicomtwist.storage.files import (
    temp_prefix,
    flat_name,
    free_bytes,
    fsync_directory,
    fsync_file,
    is_valid_uid,
    dataset_offset,
    part10_header,
    relative_path,
    scratch_file,
    write_temporary,
)
from dicomtwist.storage.header import scan_file, scan_fragments, tag_object
from dicomtwist.storage.index import INDEXED_TAGS


#: Data sets up to this size are spooled in memory, bigger ones stream to
#: a temporary file.
MEMORY_LIMIT = 8 * 1024 * 1024
#: All spooled data sets together hold at most this much memory.
MEMORY_BUDGET = 128 * 1024 * 1024


@dataclass(frozen=True)
class Refused:
    """What a sink returns instead of a path when the store cannot succeed."""

    status: int
    comment: str


class RefusingSink:
    """Swallow a data set we already know we will refuse."""

    def __init__(self, status: int, comment: str) -> None:
        self.refusal = Refused(status, comment)

    def write(self, data: memoryview) -> None:
        """Drop the fragment."""

    def close(self) -> Refused:
        """Return the refusal."""
        return self.refusal

    def discard(self) -> None:
        """Nothing to release."""


class GuardedSink:
    """A sink whose write errors (ENOSPC...) become a refusal instead of
    an abort, deleting what was written."""

    def __init__(self, sink: DataSink) -> None:
        self._sink: DataSink | None = sink
        self._refusal: Refused | None = None

    def write(self, data: memoryview) -> None:
        """Pass the fragment on; remember the first failure."""
        if self._sink is None:
            return
        try:
            self._sink.write(data)
        except OSError as e:
            self._refusal = _refusal_for(e)
            self._sink.discard()
            self._sink = None

    def close(self) -> object:
        """What the sink returns, or the refusal."""
        if self._sink is None:
            assert self._refusal is not None
            return self._refusal
        try:
            return self._sink.close()
        except OSError as e:
            self._sink.discard()
            return _refusal_for(e)

    def discard(self) -> None:
        """Release what the sink holds."""
        if self._sink is not None:
            self._sink.discard()
            self._sink = None


@dataclass(slots=True)
class StoreInfo:
    """What the pipeline tells of one stored instance, for its event
    (:class:`~dicomtwist.events.InstanceStored`): filled in the worker
    only when a caller passes one (somebody listens to the event bus).

    Timings in seconds: ``receive`` (the data set's first byte to its
    last), ``fsync`` (the temporary file written and made durable),
    ``commit`` (the group commit that indexed and renamed it).
    """

    receive: float = 0.0
    fsync: float = 0.0
    commit: float = 0.0
    size: int = 0
    study_instance_uid: str = ""
    patient_id: str = ""
    patient_name: str = ""


def publish_store(via: str, peer_host: str, calling_ae: str, sop_class_uid: str,
                  sop_instance_uid: str, status: int, comment: str, info: StoreInfo | None,
                  total: float, association_id: int | None = None) -> None:
    """Publish what became of one store: :class:`~dicomtwist.events.InstanceStored`
    on Success, else :class:`~dicomtwist.events.StoreFailed`."""
    if status == Status.SUCCESS and info is not None:
        events.bus.publish(events.InstanceStored(
            via, peer_host, calling_ae, sop_class_uid, sop_instance_uid,
            info.study_instance_uid, info.patient_id, info.patient_name, info.size,
            association_id=association_id, receive=info.receive, fsync=info.fsync,
            commit=info.commit, total=total))
    elif status != Status.SUCCESS:
        events.bus.publish(events.StoreFailed(
            via, peer_host, calling_ae, sop_class_uid, sop_instance_uid, int(status), comment,
            association_id=association_id))


def _refusal_for(error: OSError) -> Refused:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return Refused(Status.OUT_OF_RESOURCES, "out of disk space")
    return Refused(Status.OUT_OF_RESOURCES, f"cannot write: {error.strerror}"[:64])


class ArchiveStore:
    """C-STORE SCP writing into ``directory`` and indexing into ``index``.

    :param reactor: for ``callFromThread``.
    :param pool: the thread pool for parsing, writing, fsync and sqlite work.
    :param directory: the instance directory (must exist).
    :param index: an object with ``add(ds, path, transfer_syntax, size)``
        (path relative to ``directory``), ``remove(sop_instance_uid)`` and
        ``transaction()``.
    :param min_free_bytes: refuse stores (out of resources) below this.
    :param memory_limit: data sets up to this size are spooled in memory.
    :param memory_budget: what all spooled data sets together may hold in
        memory; past it, data sets go straight to temporary files.
    :param describe: ``describe(data set bytes, transfer syntax)`` gives
        the metadata the index keeps with each instance (DICOMweb's, built
        by the layer that serves it); called in the worker, before the
        commit.  None: no metadata is kept.
    :param store_as: a lossless transfer syntax to compress uncompressed
        instances to before they are committed (:mod:`dicomtwist.codec`, in
        the worker; Success still only once the compressed file is durable).
    """

    log = dlog.logger()

    def __init__(self, reactor: IReactorThreads, pool: ThreadPool, directory: str,
                 index: Any, min_free_bytes: int = 0, memory_limit: int = MEMORY_LIMIT,
                 memory_budget: int = MEMORY_BUDGET,
                 describe: Callable[[Any, str], bytes] | None = None,
                 store_as: str | None = None) -> None:
        self.reactor = reactor
        self.describe = describe
        #: A lossless syntax uncompressed instances are stored in (None:
        #: everything as received).
        self.store_as = store_as
        self.pool = pool
        #: What runs each store: long-lived tasks of ``pool`` when it is a
        #: Twisted thread pool, else the pool itself (tests' stand-ins).
        self._workers: Any = (_Workers(pool, max(1, pool.max - STORE_THREADS_LEFT))
                              if isinstance(pool, ThreadPool) else pool)
        self.directory = os.path.realpath(directory)
        self.index = index
        self.min_free_bytes = min_free_bytes
        self.memory_limit = memory_limit
        self.budget = MemoryBudget(memory_budget)
        self._lock = threading.Lock()
        self._queue: list[tuple[_Prepared, Deferred]] = []
        self._committing = False
        #: One flag per bucket (``ab/cd`` as 0xabcd): its directory and
        #: its parents' entries for it are known durable, made so by a
        #: commit of this process.  Only the committer touches it.
        self._durable_buckets = bytearray(_BUCKETS)

    def spool(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> DataSink:
        """A sink for one instance's data set, as a C-STORE's is spooled.

        STOW-RS feeds each part through one.  A UID that cannot be stored,
        or a full disk, gives a sink whose ``close()`` is a :class:`Refused`.
        """
        if not is_valid_uid(sop_instance_uid) or not is_valid_uid(sop_class_uid):
            return RefusingSink(Status.STORE_CANNOT_UNDERSTAND, "invalid SOP Class or Instance UID")
        try:
            if self.min_free_bytes and free_bytes(self.directory) < self.min_free_bytes:
                return RefusingSink(Status.OUT_OF_RESOURCES, "free disk space below the minimum")
            header = part10_header(sop_class_uid, sop_instance_uid, transfer_syntax)
        except OSError as e:
            return RefusingSink(*_fields(_refusal_for(e)))
        except (ValueError, TypeError) as e:
            return RefusingSink(Status.STORE_CANNOT_UNDERSTAND, str(e)[:64])
        return GuardedSink(SpoolSink(self.directory, header, prefix=temp_prefix(),
                                     memory_limit=self.memory_limit, budget=self.budget))

    async def store_spooled(self, sop_class_uid: str, sop_instance_uid: str,
                            transfer_syntax: str, data: object,
                            study: str | None = None,
                            info: StoreInfo | None = None) -> tuple[int, str]:
        """Store what a :meth:`spool` sink gave; answer once it is durable.

        The same pipeline as C-STORE (checks, temporary file, fsync, group
        commit).  ``data`` is released whatever happens.

        :param study: the Study Instance UID the data set must have (STOW-RS
            to ``/studies/{study}``); another fails with 0xA900.

        :param info: filled with the instance's timings and attributes (for
            its event), when given.
        :returns: ``(status, comment)``; the comment is empty on Success.
        """
        if isinstance(data, Refused):
            return data.status, data.comment
        if not isinstance(data, Spooled):
            return Status.STORE_CANNOT_UNDERSTAND, "no data set"
        message = CStoreRQ(message_id=0, affected_sop_class_uid=sop_class_uid,
                           affected_sop_instance_uid=sop_instance_uid)
        return await self._store_message(message, transfer_syntax, data, study, info)

    def _store_message(self, message: CStoreRQ, transfer_syntax: str, data: Spooled,
                       study: str | None, info: StoreInfo | None) -> Deferred:
        """:meth:`store_spooled` of a spooled data set, with the request it
        came with (a C-STORE's own, not a copy); ``data`` is released
        whatever happens.

        :returns: a Deferred firing with ``(status, comment)``.
        """
        if info is not None:
            info.receive = data.receive
        answer: Deferred = Deferred()
        try:
            # One trip to the pool, and one back for every instance its
            # commit answers (not one for the trip and one for the answer).
            self._workers.callInThreadWithCallback(
                functools.partial(_answer_failure, self.reactor, answer), self._store_answered,
                message, transfer_syntax, data, answer, study, info)
        except BaseException:
            data.release()
            raise
        # Released in the worker once written; again (a no-op then) once
        # answered, for a pool that never ran it.
        answer.addBoth(_released, data)
        return answer

    def sink_for(self, message: Message, context: PresentationContext) -> DataSink:
        """Spool C-STORE data sets (memory, then a temporary file); others to memory."""
        if not isinstance(message, CStoreRQ):
            return memory_sink(message, context)
        return self.spool(message.affected_sop_class_uid, message.affected_sop_instance_uid,
                          context.transfer_syntax)

    async def handle_store(self, request: ServiceRequest) -> Response:
        """Store a received instance; answer only once it is durable."""
        data = request.data
        message = request.message
        assert isinstance(message, CStoreRQ)
        assoc = request.association
        if isinstance(data, Refused):
            self.log.warn("Store of {uid} from {peer} refused: {comment}",
                          uid=message.affected_sop_instance_uid[:80],
                          peer=assoc.peer_ae_title, comment=data.comment,
                          **assoc.log_fields)
            if events.bus.observed:
                publish_store("dimse", assoc.log_fields.get("peer_host", ""),
                              assoc.peer_ae_title, message.affected_sop_class_uid,
                              message.affected_sop_instance_uid, data.status, data.comment,
                              None, 0.0, assoc.association_id)
            return Response(data.status, fields={"error_comment": data.comment})
        if not isinstance(data, Spooled):
            return Response(Status.STORE_CANNOT_UNDERSTAND, fields={"error_comment": "no data set"})
        info = None
        if events.bus.observed:
            info = StoreInfo()
            started = time.monotonic()
        status, comment = await self._store_message(
            message, request.context.transfer_syntax, data, None, info)
        if info is not None:
            publish_store("dimse", assoc.log_fields.get("peer_host", ""), assoc.peer_ae_title,
                          message.affected_sop_class_uid, message.affected_sop_instance_uid,
                          status, comment, info, info.receive + time.monotonic() - started,
                          assoc.association_id)
        if comment:
            self.log.warn("Store of {uid} failed: 0x{status:04X} {comment}",
                          uid=message.affected_sop_instance_uid, status=status, comment=comment)
            return Response(status, fields={"error_comment": comment[:64]})
        return Response(status)

    def store(self, message: CStoreRQ, transfer_syntax: str, data: Spooled,
              answer: Deferred, study: str | None = None,
              info: StoreInfo | None = None) -> tuple[int, str] | None:
        """In a worker thread: prepare, then commit or queue for the next commit.

        :returns: ``(status, comment)``, or None when the instance was queued
            for a commit running in another thread: ``answer`` then fires
            with it (on the reactor thread).
        """
        prepared = self.prepare(message, transfer_syntax, data, study, info)
        if isinstance(prepared, tuple):
            return prepared
        with self._lock:
            self._queue.append((prepared, answer))
            if self._committing:
                return None
            self._committing = True
        return self._commit_queued(own=prepared)

    def _store_answered(self, message: CStoreRQ, transfer_syntax: str, data: Spooled,
                        answer: Deferred, study: str | None = None,
                        info: StoreInfo | None = None) -> None:
        """:meth:`store`, in a worker thread, always answering through
        ``answer``: an instance this worker commits is answered in the one
        ``callFromThread`` that answers its whole batch."""
        try:
            prepared = self.prepare(message, transfer_syntax, data, study, info)
        finally:
            # The data set is written (or refused): its memory is free now,
            # not once the commit is done.
            data.release()
        if isinstance(prepared, tuple):
            self.reactor.callFromThread(answer.callback, prepared)
            return
        with self._lock:
            self._queue.append((prepared, answer))
            if self._committing:
                return
            self._committing = True
        # Its own answer goes out with its batch's, before the next batch:
        # nothing waits on this worker, so it commits what was queued
        # meanwhile itself (no hand-off to another worker).
        self._commit_queued()

    def _commit_queued(self, own: "_Prepared | None" = None) -> tuple[int, str] | None:
        """Commit the queue in batches (group commit), as the only committer.

        With ``own`` (:meth:`store`), return its result as soon as its batch
        is done and hand what was queued meanwhile to another worker, so
        that its answer is not held up; without, answer every batch through
        the Deferreds (one ``callFromThread`` a batch) until the queue is
        empty.
        """
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._committing = False
                    return None
            results = self.commit_batch([item for item, _ in batch])
            mine = None
            answers = []
            for (item, answer), result in zip(batch, results):
                if item is own:
                    mine = result
                else:
                    answers.append((answer, result))
            if answers:
                self.reactor.callFromThread(_fire, answers)
            if own is not None:
                with self._lock:
                    if not self._queue:
                        self._committing = False
                        return mine
                if getattr(self.pool, "joined", False):
                    # The pool is stopping (shutdown) and would drop a
                    # hand-off: commit the rest here before answering.
                    self._commit_queued()
                else:
                    self.pool.callInThread(self._commit_queued)
                return mine

    def prepare(self, message: CStoreRQ, transfer_syntax: str, data: Spooled,
                study: str | None = None,
                info: StoreInfo | None = None) -> "_Prepared | tuple[int, str]":
        """In a worker thread: scan the header, check the UIDs, write and
        fsync the temporary file.

        :returns: what :meth:`commit_batch` needs, or ``(status, comment)``
            of a failure (no temporary file is then left).
        """
        uid = message.affected_sop_instance_uid
        temp = data.path
        try:
            try:
                if temp is None:
                    # The fragments as received: neither scanning nor
                    # writing joins them (a copy of the whole data set).
                    parts = data.parts
                    assert parts is not None
                    ds = read_header(parts, transfer_syntax)
                else:
                    ds = read_header_from_file(temp, len(data.header), transfer_syntax)
                sop_instance, sop_class, found_study, series = (
                    _uid(ds, tag) for tag in _CHECKED_UIDS)
            except Exception as e:  # any parse error of peer data is "cannot understand"
                return Status.STORE_CANNOT_UNDERSTAND, f"cannot decode the data set: {e}"[:64]
            if sop_instance != uid or sop_class != message.affected_sop_class_uid:
                return (Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                        "SOP Class/Instance UID differ from the request")
            if not (is_valid_uid(found_study) and is_valid_uid(series)):
                return Status.STORE_CANNOT_UNDERSTAND, "invalid Study or Series Instance UID"
            if study is not None and found_study != study:
                return (Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                        f"Study Instance UID {found_study} is not {study}"[:64])
            relative = relative_path(uid)  # one SHA-256 for the bucket, kept
            final = f"{self.directory}/{relative}"
            compress = self._compress_to(transfer_syntax)
            written = time.monotonic()
            if temp is None:
                metadata = (None if compress or self.describe is None else
                            self._describe(data.data(), transfer_syntax))
                temp = write_temporary(self.directory, data.header, parts)
                size = len(data.header) + data.size
            else:
                metadata = (None if compress else
                            self._describe_file(temp, len(data.header), transfer_syntax))
                size = os.path.getsize(temp)
                if not compress:
                    fsync_file(temp)
            if compress:
                transfer_syntax, size, metadata = self._compress(temp, transfer_syntax,
                                                                 compress, uid)
            prepared = _Prepared(ds, uid, temp, final, transfer_syntax, size, metadata,
                                 relative=relative,
                                 bucket=int(relative[:2] + relative[3:5], 16))
            temp = None
            if info is not None:
                info.fsync = time.monotonic() - written
                info.size = size
                info.study_instance_uid = found_study
                info.patient_id = _text(ds, _PATIENT_ID)
                info.patient_name = _text(ds, _PATIENT_NAME)
                prepared.info = info
            return prepared
        except OSError as e:
            refusal = _refusal_for(e)
            return refusal.status, refusal.comment
        finally:
            if temp is not None:
                _unlink(temp)

    def _compress_to(self, transfer_syntax: str) -> str | None:
        """The syntax to store an instance received in ``transfer_syntax``
        in (``store_as``, for uncompressed data sets), or None."""
        if self.store_as is None or transfer_syntax == self.store_as:
            return None
        if transfer_syntax not in _UNCOMPRESSED_SYNTAXES:
            return None
        return self.store_as

    def _compress(self, temp: str, transfer_syntax: str, target: str,
                  uid: str) -> tuple[str, int, bytes | None]:
        """In the worker: replace the temporary file by a copy compressed to
        ``target`` (fsynced), keeping it as received when the codec cannot
        (logged).

        :returns: the stored syntax, the file size and its metadata.
        """
        from dicomtwist import codec
        from dicomtwist.codec import processes

        converted = scratch_file(self.directory)
        try:
            processes.transcode(temp, target, converted)
            fsync_file(converted)
            os.replace(converted, temp)
            transfer_syntax = target
        except codec.CodecError as e:
            self.log.warn("Storing {uid} as received: cannot compress it to {target}: {error}",
                          uid=uid, target=target, error=str(e))
            fsync_file(temp)
        finally:
            _unlink(converted)
        size = os.path.getsize(temp)
        offset = file_dataset_offset(temp)
        return transfer_syntax, size, self._describe_file(temp, offset, transfer_syntax)

    def _describe(self, data: Any, transfer_syntax: str) -> bytes | None:
        """The metadata to keep, or None (not kept, or it failed: the data
        set is well formed, so the store goes on; it is made on demand)."""
        if self.describe is None:
            return None
        try:
            return self.describe(data, transfer_syntax)
        except Exception:
            self.log.failure("Cannot describe the data set for the index")
            return None

    def _describe_file(self, path: str, offset: int, transfer_syntax: str) -> bytes | None:
        """:meth:`_describe` of the data set at ``offset`` in a spilled file."""
        if self.describe is None:
            return None
        with open(path, "rb") as fp:
            mm = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        part = view[offset:]
        try:
            return self._describe(part, transfer_syntax)
        finally:
            try:
                part.release()
                view.release()
                mm.close()
            except BufferError:
                # A logged failure's traceback still holds a view: the map
                # is closed when that is collected.
                pass

    def commit_batch(self, items: list["_Prepared"]) -> list[tuple[int, str]]:
        """In a worker thread: index and rename several prepared instances in
        one transaction, fsyncing each directory renamed into once (group
        commit).

        Each instance is indexed, then renamed into place, inside its own
        savepoint: if either step fails, that instance alone rolls back and
        a previously stored instance of its UID keeps its file and row.
        Once the transaction is committed, a flat-layout file an instance
        replaced is removed.
        """
        results: list[tuple[int, str]] = []
        started = time.monotonic()
        try:
            with self.index.transaction():
                for item in items:
                    results.append(self._commit_one(item))
                self._sync_directories([item for item, (status, _) in zip(items, results)
                                        if status == Status.SUCCESS])
            for item, (status, _) in zip(items, results):
                if status == Status.SUCCESS:
                    # The old file of an instance stored before the nested
                    # layout; only now, once its new file and row are
                    # durable (a crash before this leaves both files:
                    # recovery keeps the nested one).
                    _unlink(os.path.join(self.directory, flat_name(item.uid)))
            took = time.monotonic() - started
            for item in items:
                if item.info is not None:
                    item.info.commit = took
        except Exception as e:
            self.log.failure("Group commit of {count} instance(s) failed", count=len(items))
            comment = f"cannot commit the instance: {e}"[:64]
            results = [(Status.OUT_OF_RESOURCES, comment)] * len(items)
        finally:
            for item in items:
                if item.temp:
                    _unlink(item.temp)
        return results

    def _sync_directories(self, items: list["_Prepared"]) -> None:
        """fsync every bucket directory the committed ``items`` were renamed
        into, once each; for a bucket not yet known durable, also its parent
        and the instance directory (the entries of a new subdirectory); all
        at once.

        :raises OSError: an fsync failed; the batch is then not answered
            Success.
        """
        leaves: dict[str, None] = {}
        parents: dict[str, None] = {}
        new: list[int] = []
        top = self.directory
        for item in items:
            # ``relative`` is "ab/cd/<uid>.dcm": the leaf is "ab/cd", its parent "ab".
            leaves[f"{top}/{item.relative[:5]}"] = None
            number = item.bucket
            if not self._durable_buckets[number]:
                new.append(number)
                parents[f"{top}/{item.relative[:2]}"] = None
        # All at once: every rename and mkdir they cover is done, and the
        # batch is answered only when all have returned, so their order
        # does not matter (a crash in between loses only what was not
        # answered).  A batch's instances land in as many buckets as there
        # are instances, and concurrent fsyncs share the file system's
        # journal commit, where one after another each waits for its own
        # (a new bucket's leaf, parent and the instance directory were three
        # commits in a row).
        directories = list(leaves)
        directories += [d for d in parents if d != self.directory]
        if new:
            directories.append(self.directory)
        _fsync_all(directories)
        for number in new:
            self._durable_buckets[number] = 1

    def _commit_one(self, item: "_Prepared") -> tuple[int, str]:
        """Index one instance and rename its file into place, in one
        savepoint of the batch's transaction (the rename is the index's
        ``then``: if it fails, the rows roll back)."""
        try:
            if not self._durable_buckets[item.bucket]:
                _make_bucket(os.path.dirname(item.final))
            rename = functools.partial(self._rename, item)
            if item.metadata is None:
                self.index.add(item.ds, item.relative, item.transfer_syntax, item.size,
                               then=rename)
            else:
                self.index.add(item.ds, item.relative, item.transfer_syntax,
                               item.size, metadata=item.metadata, then=rename)
            item.temp = ""
            return Status.SUCCESS, ""
        except OSError as e:
            refusal = _refusal_for(e)
            return refusal.status, refusal.comment
        except Exception as e:
            self.log.failure("Indexing {uid} failed", uid=item.uid)
            return Status.OUT_OF_RESOURCES, f"cannot index the instance: {e}"[:64]

    def _rename(self, item: "_Prepared") -> None:
        """Move an instance's temporary file to its place (inside its
        savepoint, once its rows are written)."""
        try:
            os.replace(item.temp, item.final)
        except FileNotFoundError:
            # The bucket went (removed by hand while running): make it
            # again, and fsync it and its parents.
            self._durable_buckets[item.bucket] = 0
            _make_bucket(os.path.dirname(item.final))
            os.replace(item.temp, item.final)


def _make_bucket(leaf: str) -> None:
    """Make a bucket directory and its parent as needed (``os.makedirs``
    with ``exist_ok``, in one ``mkdir`` when the parent exists).

    :raises OSError: as ``os.mkdir``, but for an existing directory.
    """
    try:
        os.mkdir(leaf)
    except FileExistsError:
        pass
    except FileNotFoundError:
        try:
            os.mkdir(os.path.dirname(leaf))
        except FileExistsError:
            pass
        try:
            os.mkdir(leaf)
        except FileExistsError:
            pass


#: Threads of the pool the store's workers leave to other work (C-FIND,
#: C-MOVE, metrics) when busy.
STORE_THREADS_LEFT = 2
#: Seconds a store worker waits for the next instance before it gives
#: its thread back to the pool.
LINGER = 0.1


class _Workers:
    """Run store tasks in long-lived tasks of a Twisted thread pool.

    Each worker is one task of the pool that takes store tasks from one
    queue, one after another, until none has come for :data:`LINGER`
    seconds; a task that finds every worker busy starts another, up to
    ``limit``.  A task of the pool per instance cost about 83k
    instructions of coordination (its team's locks, a Python ``Queue``,
    the idle set), a hand-off through a ``SimpleQueue`` about 24k
    (callgrind, in a loop), on the path of every stored instance.  The
    work still runs in the pool's threads, counted in its metrics, and
    ends with it (a stopping pool starts no new worker; the running ones
    finish what is queued).

    :param limit: at most this many workers at once.
    """

    def __init__(self, pool: ThreadPool, limit: int) -> None:
        self._pool = pool
        self._limit = limit
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: Workers running, and of them those waiting for a task.
        self._running = 0
        self._idle = 0

    def callInThreadWithCallback(self, onResult: Callable[[bool, object], object],
                                 f: Callable[..., object], *args: object) -> None:
        """Run ``f(*args)`` in a worker, then ``onResult(True, result)`` or
        ``onResult(False, Failure)`` there (as the pool's method does)."""
        with self._lock:
            self._queue.put((onResult, f, args))
            if self._queue.qsize() <= self._idle or self._running >= self._limit:
                return
            self._running += 1
        self._pool.callInThread(self._work)

    def _work(self) -> None:
        get = self._queue.get
        lock = self._lock
        while True:
            with lock:
                self._idle += 1
            try:
                onResult, f, args = get(timeout=LINGER)
            except queue.Empty:
                with lock:
                    self._idle -= 1
                    if self._queue.qsize():
                        continue
                    self._running -= 1
                    return
            with lock:
                self._idle -= 1
            try:
                try:
                    result = f(*args)
                except BaseException:
                    onResult(False, Failure())
                else:
                    onResult(True, result)
            except BaseException:
                ArchiveStore.log.failure("A store task's result was lost")


#: How many buckets the nested layout has (two levels of 256).
_BUCKETS = 256 * 256


#: At most this many directory fsyncs of a batch run at once.
FSYNC_CONCURRENCY = 16


class _Countdown:
    """The directory fsyncs of one batch still running, and their errors."""

    __slots__ = ("left", "lock", "done", "errors")

    def __init__(self, count: int) -> None:
        self.left = count
        self.lock = threading.Lock()
        #: Held until the last fsync has ended.
        self.done = threading.Lock()
        self.done.acquire()
        self.errors: list[BaseException] = []

    def finish(self, error: BaseException | None) -> None:
        """One fsync ended (``error`` if it failed)."""
        with self.lock:
            if error is not None:
                self.errors.append(error)
            self.left -= 1
            if not self.left:
                self.done.release()


class _FsyncThreads:
    """Threads that fsync directories for the group commit, started as
    needed up to ``size`` and kept (daemons, each waiting on one queue).

    Lighter than a ``concurrent.futures`` pool, whose future, condition
    and waiter per fsync cost as much Python as the rest of a commit.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._started = 0
        self._lock = threading.Lock()

    def fsync_all(self, directories: list[str]) -> None:
        """fsync ``directories`` at once: all but the last in the threads,
        the last in this one; return when all have ended.

        :raises BaseException: the first fsync that failed.
        """
        others = directories[:-1]
        countdown = _Countdown(len(others))
        wanted = min(self.size, len(others))
        if self._started < wanted:
            with self._lock:
                while self._started < wanted:
                    self._started += 1
                    threading.Thread(target=self._work, daemon=True,
                                     name=f"dicomtwist-fsync-{self._started}").start()
        for directory in others:
            self._queue.put((directory, countdown))
        error: BaseException | None = None
        try:
            fsync_directory(directories[-1])
        except BaseException as e:
            error = e
        countdown.done.acquire()
        if error is not None:
            raise error
        if countdown.errors:
            raise countdown.errors[0]

    def _work(self) -> None:
        while True:
            directory, countdown = self._queue.get()
            try:
                fsync_directory(directory)
            except BaseException as e:
                countdown.finish(e)
            else:
                countdown.finish(None)


_fsync_threads = _FsyncThreads(FSYNC_CONCURRENCY)


def _fsync_all(directories: list[str]) -> None:
    """fsync ``directories``, concurrently when there are several (in a
    few threads of their own: the caller is a worker of the store pool,
    which it must not wait on).

    :raises OSError: the first fsync that failed (after all have ended).
    """
    if len(directories) <= 1:
        for directory in directories:
            fsync_directory(directory)
        return
    _fsync_threads.fsync_all(directories)


#: Syntaxes ``store_as`` compresses (uncompressed and Deflated).
_UNCOMPRESSED_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                    "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})


def file_dataset_offset(path: str) -> int:
    """Where the data set starts in a Part 10 file we wrote."""
    with open(path, "rb") as fp:
        offset = dataset_offset(fp.read(65536))
    if offset is None:
        raise OSError(f"{path}: no File Meta Information Group Length")
    return offset


#: SOP Instance, SOP Class, Study Instance and Series Instance UID, as
#: the header scanner's own tag objects (found by identity).
_CHECKED_UIDS = tuple(map(tag_object, (0x00080018, 0x00080016, 0x0020000D, 0x0020000E)))


_PATIENT_ID = tag_object(0x00100020)
_PATIENT_NAME = tag_object(0x00100010)


def _uid(ds: Dataset, tag: int) -> str:
    """A UID of the data set, decoded without pydicom's value conversion
    when still raw (what pydicom would give: trailing NULs and spaces off).

    :raises KeyError: the data set lacks it.
    """
    element = ds._dict.get(tag)
    if element is None:
        raise KeyError(f"no ({tag >> 16:04X},{tag & 0xFFFF:04X})")
    if isinstance(element, RawDataElement):
        return bytes(element.value or b"").decode("latin-1").rstrip("\0 ")
    return str(element.value)


def _released(result: object, data: Spooled) -> object:
    data.release()
    return result


def _fire(answers: list[tuple[Deferred, tuple[int, str]]]) -> None:
    for answer, result in answers:
        answer.callback(result)


def _answer_failure(reactor: IReactorThreads, answer: Deferred, success: bool,
                    result: object) -> None:
    """The pool's report on :meth:`ArchiveStore._store_answered`, in the
    worker: an exception fails ``answer`` (on the reactor thread); a return
    has answered it already."""
    if not success:
        reactor.callFromThread(_fail, answer, result)


def _fail(answer: Deferred, failure: object) -> None:
    if not answer.called:  # a failure after the batch was answered: logged by the pool
        answer.errback(failure)


def read_header(parts: list[bytes | memoryview], transfer_syntax: str) -> Dataset:
    """The indexed attributes of an encoded data set (no file meta), given
    as its fragments.

    :raises Exception: the data set is not well formed.
    """
    try:
        return scan_fragments(parts, transfer_syntax, INDEXED_TAGS)
    except NotImplementedError:  # Deflated: pydicom inflates it
        pass
    return dcmread(io.BytesIO(b"".join([part10_header("1.2", "1.2", transfer_syntax), *parts])),
                   stop_before_pixels=True)


def read_header_from_file(path: str, offset: int, transfer_syntax: str) -> Dataset:
    """:func:`read_header` of the data set at ``offset`` in a file."""
    try:
        return scan_file(path, transfer_syntax, INDEXED_TAGS, offset)
    except NotImplementedError:  # Deflated: pydicom inflates it
        return dcmread(path, stop_before_pixels=True)


@dataclass(slots=True)
class _Prepared:
    """An instance whose file is fsynced and checked, ready to commit."""

    ds: Any
    uid: str
    temp: str
    final: str
    transfer_syntax: str
    size: int
    metadata: bytes | None = None
    info: StoreInfo | None = None
    #: Its path relative to the instance directory (``ab/cd/<uid>.dcm``).
    relative: str = ""
    #: Its bucket, ``ab/cd`` as 0xabcd.
    bucket: int = 0


def _text(ds: Dataset, tag: int) -> str:
    """An attribute of the scanned header as text, "" when absent or not
    decodable (for events only: never fails a store).  ASCII values are
    read from the raw bytes; others through pydicom's conversion (the
    data set's character set)."""
    element = ds._dict.get(tag)
    if element is None:
        return ""
    if isinstance(element, RawDataElement):
        raw = bytes(element.value or b"")
        if raw.isascii():
            return raw.decode("ascii").rstrip("\0 ")
    try:
        value = ds[tag].value
        return "" if value is None else str(value)
    except Exception:
        return ""


def _fields(refusal: Refused) -> tuple[int, str]:
    return refusal.status, refusal.comment


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
