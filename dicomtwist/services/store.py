"""The Storage service (PS3.4 Annex B) of the archive: C-STORE SCP.

Each data set streams, fragment by fragment, into a temporary file inside
the instance directory (a Part 10 header first, so the file is complete as
soon as the last fragment lands).  Then, off the reactor thread: parse the
header, check the UIDs, fsync the file; then a *group commit* indexes and
renames every instance waiting at that moment in one sqlite transaction
with one directory fsync -- and only then is each answered Success.  Any
failure answers a failure status and leaves neither the file nor a row
behind (a replaced instance keeps its old file and row).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from dicomtwist import log as dlog
from dicomtwist.acse import PresentationContext
from dicomtwist.association import Response, ServiceRequest
from dicomtwist.dimse.assembly import DataSink, TempFileSink, memory_sink
from dicomtwist.dimse.messages import CStoreRQ, Message
from dicomtwist.status import Status
from dicomtwist.storage.files import (
    TEMP_PREFIX,
    free_bytes,
    fsync_directory,
    fsync_file,
    instance_path,
    is_valid_uid,
    part10_header,
)


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


class GuardedFileSink:
    """A :class:`TempFileSink` that turns write errors (ENOSPC...) into a
    refusal instead of an abort, deleting what was written."""

    def __init__(self, sink: TempFileSink) -> None:
        self._sink: TempFileSink | None = sink
        self._refusal: Refused | None = None

    def write(self, data: memoryview) -> None:
        """Write the fragment; remember the first failure."""
        if self._sink is None:
            return
        try:
            self._sink.write(data)
        except OSError as e:
            self._refusal = _refusal_for(e)
            self._sink.discard()
            self._sink = None

    def close(self) -> str | Refused:
        """The temporary file's path, or the refusal."""
        if self._sink is None:
            assert self._refusal is not None
            return self._refusal
        try:
            return self._sink.close()
        except OSError as e:
            self._sink.discard()
            return _refusal_for(e)

    def discard(self) -> None:
        """Delete the temporary file."""
        if self._sink is not None:
            self._sink.discard()
            self._sink = None


def _refusal_for(error: OSError) -> Refused:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return Refused(Status.OUT_OF_RESOURCES, "out of disk space")
    return Refused(Status.OUT_OF_RESOURCES, f"cannot write: {error.strerror}"[:64])


class ArchiveStore:
    """C-STORE SCP writing into ``directory`` and indexing into ``index``.

    :param reactor: for ``deferToThreadPool``.
    :param pool: the thread pool for fsync, parsing and sqlite work.
    :param directory: the instance directory (must exist).
    :param index: an object with ``add(ds, path, transfer_syntax, size)``
        (path relative to ``directory``) and ``remove(sop_instance_uid)``.
    :param min_free_bytes: refuse stores (out of resources) below this.
    """

    log = dlog.logger()

    def __init__(self, reactor: IReactorThreads, pool: ThreadPool, directory: str,
                 index: Any, min_free_bytes: int = 0) -> None:
        self.reactor = reactor
        self.pool = pool
        self.directory = os.path.realpath(directory)
        self.index = index
        self.min_free_bytes = min_free_bytes
        self._waiting: list[tuple[_Prepared, Deferred]] = []
        self._committing = False

    def sink_for(self, message: Message, context: PresentationContext) -> DataSink:
        """Stream C-STORE data sets to a temporary file; others to memory."""
        if not isinstance(message, CStoreRQ):
            return memory_sink(message, context)
        uid = message.affected_sop_instance_uid
        if not is_valid_uid(uid) or not is_valid_uid(message.affected_sop_class_uid):
            return RefusingSink(Status.STORE_CANNOT_UNDERSTAND, "invalid SOP Class or Instance UID")
        try:
            if self.min_free_bytes and free_bytes(self.directory) < self.min_free_bytes:
                return RefusingSink(Status.OUT_OF_RESOURCES, "free disk space below the minimum")
            header = part10_header(message.affected_sop_class_uid, uid, context.transfer_syntax)
            return GuardedFileSink(TempFileSink(self.directory, header, prefix=TEMP_PREFIX))
        except OSError as e:
            return RefusingSink(*_fields(_refusal_for(e)))
        except (ValueError, TypeError) as e:
            return RefusingSink(Status.STORE_CANNOT_UNDERSTAND, str(e)[:64])

    async def handle_store(self, request: ServiceRequest) -> Response:
        """Commit a received instance; answer only once it is durable."""
        data = request.data
        message = request.message
        assert isinstance(message, CStoreRQ)
        if isinstance(data, Refused):
            self.log.warn("Store of {uid} from {peer} refused: {comment}",
                          uid=message.affected_sop_instance_uid[:80],
                          peer=request.association.peer_ae_title, comment=data.comment)
            return Response(data.status, fields={"error_comment": data.comment})
        if not isinstance(data, str):
            return Response(Status.STORE_CANNOT_UNDERSTAND, fields={"error_comment": "no data set"})
        prepared = await deferToThreadPool(self.reactor, self.pool, self.prepare, message,
                                           request.context.transfer_syntax, data)
        if isinstance(prepared, tuple):
            status, comment = prepared
        else:
            status, comment = await self._group_commit(prepared)
        if comment:
            self.log.warn("Store of {uid} failed: 0x{status:04X} {comment}",
                          uid=message.affected_sop_instance_uid, status=status, comment=comment)
            return Response(status, fields={"error_comment": comment[:64]})
        return Response(status)

    def commit(self, message: CStoreRQ, transfer_syntax: str, temp: str) -> tuple[int, str]:
        """Check, fsync, index and rename one instance (in a worker thread).

        :returns: ``(status, error comment or "")``.
        """
        prepared = self.prepare(message, transfer_syntax, temp)
        if isinstance(prepared, tuple):
            return prepared
        return self.commit_batch([prepared])[0]

    def prepare(self, message: CStoreRQ, transfer_syntax: str,
                temp: str) -> "_Prepared | tuple[int, str]":
        """In a worker thread: parse the header, check the UIDs, fsync.

        :returns: what :meth:`commit_batch` needs, or ``(status, comment)``
            of a failure (the temporary file is then gone).
        """
        uid = message.affected_sop_instance_uid
        try:
            try:
                ds = dcmread(temp, stop_before_pixels=True)
                sop_instance = ds.SOPInstanceUID
                sop_class = ds.SOPClassUID
                study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
            except Exception as e:  # any parse error of peer data is "cannot understand"
                _unlink(temp)
                return Status.STORE_CANNOT_UNDERSTAND, f"cannot decode the data set: {e}"[:64]
            if sop_instance != uid or sop_class != message.affected_sop_class_uid:
                _unlink(temp)
                return (Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                        "SOP Class/Instance UID differ from the request")
            if not (is_valid_uid(str(study)) and is_valid_uid(str(series))):
                _unlink(temp)
                return Status.STORE_CANNOT_UNDERSTAND, "invalid Study or Series Instance UID"
            final = instance_path(self.directory, uid)
            size = os.path.getsize(temp)
            fsync_file(temp)
            return _Prepared(ds, uid, temp, final, transfer_syntax, size)
        except OSError as e:
            _unlink(temp)
            refusal = _refusal_for(e)
            return refusal.status, refusal.comment

    def commit_batch(self, items: list["_Prepared"]) -> list[tuple[int, str]]:
        """In a worker thread: index and rename several prepared instances in
        one transaction with one directory fsync (group commit).

        Each instance is indexed, then renamed into place, inside its own
        savepoint: if either step fails, that instance alone rolls back and
        a previously stored instance of its UID keeps its file and row.
        """
        results: list[tuple[int, str]] = []
        try:
            with self.index.transaction():
                for item in items:
                    results.append(self._commit_one(item))
                if any(status == Status.SUCCESS for status, _ in results):
                    fsync_directory(self.directory)
        except Exception as e:
            self.log.failure("Group commit of {count} instance(s) failed", count=len(items))
            comment = f"cannot commit the instance: {e}"[:64]
            results = [(Status.OUT_OF_RESOURCES, comment)] * len(items)
        finally:
            for item in items:
                if item.temp:
                    _unlink(item.temp)
        return results

    def _commit_one(self, item: "_Prepared") -> tuple[int, str]:
        try:
            with self.index.transaction():
                self.index.add(item.ds, os.path.basename(item.final), item.transfer_syntax,
                               item.size)
                os.replace(item.temp, item.final)
            item.temp = ""
            return Status.SUCCESS, ""
        except OSError as e:
            refusal = _refusal_for(e)
            return refusal.status, refusal.comment
        except Exception as e:
            self.log.failure("Indexing {uid} failed", uid=item.uid)
            return Status.OUT_OF_RESOURCES, f"cannot index the instance: {e}"[:64]

    def _group_commit(self, item: "_Prepared") -> Deferred:
        """Queue an instance for the next group commit; fires with its
        ``(status, comment)`` once its file and row are durable."""
        d: Deferred = Deferred()
        self._waiting.append((item, d))
        if not self._committing:
            self._next_batch()
        return d

    def _next_batch(self) -> None:
        if not self._waiting:
            self._committing = False
            return
        self._committing = True
        batch, self._waiting = self._waiting, []

        def done(results: list[tuple[int, str]]) -> None:
            for (_, d), result in zip(batch, results):
                d.callback(result)
            self._next_batch()

        def failed(failure: Any) -> None:
            self.log.failure("Group commit failed", failure)
            for _, d in batch:
                d.callback((Status.OUT_OF_RESOURCES, "cannot commit the instance"))
            self._next_batch()

        deferToThreadPool(self.reactor, self.pool, self.commit_batch,
                          [item for item, _ in batch]).addCallbacks(done, failed)


@dataclass
class _Prepared:
    """An instance whose file is fsynced and checked, ready to commit."""

    ds: Any
    uid: str
    temp: str
    final: str
    transfer_syntax: str
    size: int


def _fields(refusal: Refused) -> tuple[int, str]:
    return refusal.status, refusal.comment


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
