"""Storage Commitment Push Model SCP (PS3.4 Annex J).

A modality asks the archive, with an N-ACTION (Action Type 1, "Request
Storage Commitment"), to take responsibility for instances it sent; the
archive answers the N-ACTION at once and later reports, with an
N-EVENT-REPORT, which instances it holds (Event Type 1: all of them;
Event Type 2: Failed SOP Sequence with a Failure Reason for the others).

- **Durable first.**  A request is written to disk (one JSON file per
  Transaction UID, fsynced and linked into place atomically) before the
  N-ACTION-RSP goes out; the file is removed only once an N-EVENT-REPORT
  was answered with Success.  Requests outstanding when the archive stops
  are answered after its next start.
- **Only what is durable is committed.**  An instance counts as held when
  the index has it (the store pipeline indexes an instance only after its
  file was fsynced and renamed into place) and its file is there; unknown
  instances fail with 0x0112 (No such object instance), an instance stored
  under another SOP Class with 0x0119 (Class-instance conflict).
- **Where the report goes** (J.3.3.1.2-3): on the N-ACTION's association
  while the requestor keeps it open (it is SCU on that context, so we are
  SCP and may send the notification); otherwise, or when that fails, on a
  new association to the requestor's address from the configuration
  (the destination section named by its calling AE title), proposing the
  SCP role for ourselves through SCP/SCU Role Selection.  When neither
  works the report is retried later (:data:`RETRY_DELAYS`).
- **Several nodes on one instance directory.**  The process handling a
  transaction holds an exclusive ``flock`` on its file; at start each node
  takes only the files nobody holds, so a transaction is reported by one
  node, and a crashed node's locks go with it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from dicomtwist import log as dlog
from dicomtwist.association import Response, ServiceRequest, associate
from dicomtwist.errors import DIMSEServiceError
from dicomtwist.status import Category, Status, category, status_name
from dicomtwist.storage.files import fsync_directory, is_valid_uid, stored_file

__all__ = [
    "DIRECTORY",
    "EVENT_ALL_COMMITTED",
    "EVENT_FAILURES",
    "RETRY_DELAYS",
    "STORAGE_COMMITMENT",
    "WELL_KNOWN_INSTANCE",
    "Held",
    "Result",
    "StorageCommitment",
    "Transaction",
    "TransactionStore",
    "assess",
    "parse_request",
]

#: The Storage Commitment Push Model SOP Class (PS3.4 J.3.5).
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
#: Its well-known SOP Instance, the only one an N-ACTION may name (J.3.5).
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Action Type ID 1: Request Storage Commitment (Table J.3-1).
REQUEST_STORAGE_COMMITMENT = 1
#: Event Type ID 1: storage commitment request successful (Table J.3-2).
EVENT_ALL_COMMITTED = 1
#: Event Type ID 2: storage commitment request complete, failures exist.
EVENT_FAILURES = 2
#: Where outstanding transactions live, under the instance directory.
DIRECTORY = ".commitment"
#: Seconds before each new attempt to deliver a report; the last repeats.
RETRY_DELAYS = (10.0, 60.0, 300.0, 900.0, 3600.0)
#: Transfer syntaxes proposed on a reporting association.
REPORT_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
_SUFFIX = ".json"
_NEW_PREFIX = ".new-"


@dataclass(frozen=True)
class Transaction:
    """One storage commitment request (PS3.4 Table J.3-1).

    :ivar uid: its Transaction UID (0008,1195).
    :ivar calling_ae_title: who asked (where a new association goes).
    :ivar references: ``(SOP Class UID, SOP Instance UID)`` of each item of
        the Referenced SOP Sequence, in order.
    :ivar received: when it arrived (ISO 8601, UTC).
    """

    uid: str
    calling_ae_title: str
    references: tuple[tuple[str, str], ...]
    received: str = ""

    def to_json(self) -> bytes:
        """The file form of the transaction."""
        return json.dumps({"version": 1, "transaction_uid": self.uid,
                           "calling_ae_title": self.calling_ae_title,
                           "references": [list(r) for r in self.references],
                           "received": self.received}, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Transaction":
        """Read the file form back.

        :raises ValueError: it is not a transaction file.
        """
        try:
            doc = json.loads(data.decode("utf-8"))
            references = tuple((str(c), str(i)) for c, i in doc["references"])
            transaction = cls(str(doc["transaction_uid"]), str(doc["calling_ae_title"]),
                              references, str(doc.get("received", "")))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
                ValueError, AttributeError) as e:
            raise ValueError(f"not a storage commitment transaction: {e}") from None
        if not is_valid_uid(transaction.uid):
            raise ValueError(f"invalid Transaction UID {transaction.uid!r}")
        return transaction


@dataclass(frozen=True)
class Result:
    """What the archive commits to for one transaction.

    :ivar committed: ``(class, instance)`` held durably.
    :ivar failed: ``(class, instance, Failure Reason)`` not held.
    """

    committed: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str, int], ...]

    @property
    def event_type(self) -> int:
        """Event Type ID of the report: 1 when everything is held, else 2."""
        return EVENT_FAILURES if self.failed else EVENT_ALL_COMMITTED

    def event_information(self, transaction: Transaction, retrieve_ae_title: str) -> Dataset:
        """The N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2)."""
        ds = Dataset()
        ds.TransactionUID = transaction.uid
        if self.committed:
            # Retrieve AE Title (type 3): where the committed instances are.
            ds.RetrieveAETitle = retrieve_ae_title
            ds.ReferencedSOPSequence = Sequence([_item(c, i) for c, i in self.committed])
        if self.failed:
            items = []
            for c, i, reason in self.failed:
                item = _item(c, i)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = Sequence(items)
        return ds


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def parse_request(request: Dataset, calling_ae_title: str, received: str = "") -> Transaction:
    """The transaction an N-ACTION's Action Information asks for.

    :raises DIMSEServiceError: 0x0115 (Invalid argument value) without a
        valid Transaction UID or with no valid Referenced SOP Sequence item.
    """
    uid = str(request.get("TransactionUID", "") or "")
    if not is_valid_uid(uid):
        raise DIMSEServiceError(Status.INVALID_ARGUMENT_VALUE,
                                "Transaction UID (0008,1195) missing or invalid")
    items = request.get("ReferencedSOPSequence")
    if not items:
        raise DIMSEServiceError(Status.INVALID_ARGUMENT_VALUE,
                                "Referenced SOP Sequence (0008,1199) missing or empty")
    references = []
    for item in items:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "")
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
            raise DIMSEServiceError(Status.INVALID_ARGUMENT_VALUE,
                                    "Referenced SOP Sequence item without valid UIDs")
        references.append((sop_class, sop_instance))
    return Transaction(uid, calling_ae_title, tuple(references), received)


def assess(index: Any, directory: str, references: Iterable[tuple[str, str]]) -> Result:
    """Which referenced instances the archive holds durably (blocking: run
    it in the thread pool).

    Held: indexed (so fsynced and renamed into place first) with its file
    present, under the same SOP Class.
    """
    committed: list[tuple[str, str]] = []
    failed: list[tuple[str, str, int]] = []
    for sop_class, sop_instance in references:
        where = index.locate(sop_instance)
        stored = index.instances(where[0], where[1], sop_instance) if where else []
        if not stored or not _file_present(directory, stored[0].path):
            failed.append((sop_class, sop_instance, int(Status.NO_SUCH_SOP_INSTANCE)))
        elif stored[0].sop_class_uid != sop_class:
            failed.append((sop_class, sop_instance, int(Status.CLASS_INSTANCE_CONFLICT)))
        else:
            committed.append((sop_class, sop_instance))
    return Result(tuple(committed), tuple(failed))


def _file_present(directory: str, relative: str) -> bool:
    try:
        return os.path.isfile(stored_file(directory, relative))
    except ValueError:
        return False


@dataclass
class Held:
    """An outstanding transaction this process is answering: its file,
    open and locked (``flock``) so no other node answers it too."""

    transaction: Transaction
    path: str
    fd: int


class TransactionStore:
    """Outstanding transactions, one file each in ``directory`` (blocking
    methods: call them in the thread pool).

    ``<Transaction UID>.json`` is written under a temporary name, fsynced,
    locked and then linked into place (an existing one is not replaced),
    so it is either whole or absent; it is unlinked once reported.
    """

    log = dlog.logger()

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, uid: str) -> str:
        return os.path.join(self.directory, uid + _SUFFIX)

    def add(self, transaction: Transaction) -> Held | None:
        """Persist a new transaction, locked by this process.

        :returns: None when that Transaction UID is already outstanding.
        :raises OSError: it could not be written (nothing is left behind).
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        final = self._path(transaction.uid)
        if os.path.exists(final):
            return None
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=_NEW_PREFIX, suffix=".tmp")
        try:
            data = memoryview(transaction.to_json())
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
            # The inode is locked before it has its name: a node scanning
            # at that moment cannot take it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.link(temporary, final)
            except FileExistsError:
                os.close(fd)
                return None
            finally:
                os.unlink(temporary)
            fsync_directory(self.directory)
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        return Held(transaction, final, fd)

    def outstanding(self) -> list[Held]:
        """Take every outstanding transaction no other process holds.

        Left-over temporary files (a crash before the N-ACTION was
        answered) are removed; an unreadable file is skipped with one
        warning and kept for an administrator.
        """
        taken: list[Held] = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return taken
        for name in names:
            path = os.path.join(self.directory, name)
            if name.startswith(_NEW_PREFIX):
                self._remove_leftover(path)
                continue
            if not name.endswith(_SUFFIX) or name.startswith("."):
                continue
            held = self._take(path)
            if held is not None:
                taken.append(held)
        return taken

    def _remove_leftover(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _take(self, path: str) -> Held | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            opened = os.fstat(fd)
            # Reported and unlinked by another node while we waited?
            current = os.stat(path, follow_symlinks=False)
            if (opened.st_dev, opened.st_ino) != (current.st_dev, current.st_ino):
                raise FileNotFoundError(path)
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            transaction = Transaction.from_json(b"".join(chunks))
        except ValueError as e:
            self.log.warn("Storage commitment: skipping unreadable {path}: {error}",
                          path=path, error=str(e))
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            return None
        return Held(transaction, path, fd)

    def finish(self, held: Held) -> None:
        """The transaction was reported: remove its file, then unlock it."""
        try:
            os.unlink(held.path)
            fsync_directory(self.directory)
        except FileNotFoundError:
            pass
        finally:
            self.release(held)

    def release(self, held: Held) -> None:
        """Stop holding the transaction (it stays outstanding)."""
        if held.fd >= 0:
            os.close(held.fd)
            held.fd = -1


class StorageCommitment:
    """The Storage Commitment Push Model SCP of the archive.

    :param settings: the archive configuration (AE title, destinations,
        timeouts, max PDU, TLS).
    :param directory: the instance directory (transactions go in its
        :data:`DIRECTORY` subdirectory).
    """

    log = dlog.logger()

    def __init__(self, reactor: Any, pool: Any, index: Any, settings: Any,
                 directory: str, retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.reactor = reactor
        self.pool = pool
        self.index = index
        self.settings = settings
        self.directory = directory
        self.store = TransactionStore(os.path.join(directory, DIRECTORY))
        self.retry_delays = retry_delays
        #: Transactions this process holds, by Transaction UID.
        self.held: dict[str, Held] = {}
        self._running: set[str] = set()
        self._timers: dict[str, Any] = {}
        self._attempts: dict[str, int] = {}
        self._stopped = False

    def _thread(self, f: Any, *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    # -- N-ACTION ------------------------------------------------------------
    def handle_action(self, request: ServiceRequest) -> Deferred[Response]:
        """N-ACTION handler: persist the request, answer, report later."""
        return Deferred.fromCoroutine(self._action(request))

    async def _action(self, request: ServiceRequest) -> Response:
        message = request.message
        if message.requested_sop_instance_uid != WELL_KNOWN_INSTANCE:
            raise DIMSEServiceError(Status.NO_SUCH_SOP_INSTANCE,
                                    "not the well-known instance 1.2.840.10008.1.20.1.1")
        if message.action_type_id != REQUEST_STORAGE_COMMITMENT:
            raise DIMSEServiceError(Status.NO_SUCH_ACTION_TYPE,
                                    f"action type {message.action_type_id}")
        try:
            dataset = request.dataset()
        except DIMSEServiceError as e:
            raise DIMSEServiceError(Status.INVALID_ARGUMENT_VALUE, e.comment) from None
        received = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        transaction = parse_request(dataset, request.association.peer_ae_title, received)
        try:
            held = await self._thread(self.store.add, transaction)
        except OSError as e:
            self.log.error("Storage commitment: cannot persist transaction {uid}: {error}",
                           uid=transaction.uid, error=str(e))
            raise DIMSEServiceError(Status.PROCESSING_FAILURE,
                                    f"cannot persist the request: {e.strerror}"[:64]) from None
        if held is None:
            self.log.info("Storage commitment: transaction {uid} from {calling} is already"
                          " outstanding", uid=transaction.uid, calling=transaction.calling_ae_title)
            return Response(Status.SUCCESS)
        self.log.info("Storage commitment requested by {calling}: transaction {uid},"
                      " {count} instance(s)", calling=transaction.calling_ae_title,
                      uid=transaction.uid, count=len(transaction.references))
        self.held[transaction.uid] = held
        # After the N-ACTION-RSP is queued: the report must follow it.
        self.reactor.callLater(0, self._run, held, request.association)
        return Response(Status.SUCCESS)

    # -- reporting -----------------------------------------------------------
    def start(self) -> Deferred[int]:
        """Take the transactions left outstanding (by a previous run, or a
        crashed node) and report them.

        :returns: fires with how many were taken.
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> int:
        taken = await self._thread(self.store.outstanding)
        count = 0
        for held in taken:
            uid = held.transaction.uid
            if uid in self.held or self._stopped:
                self.store.release(held)
                continue
            self.held[uid] = held
            count += 1
            self._run(held, None)
        if count:
            self.log.info("Storage commitment: {count} outstanding transaction(s) to report",
                          count=count)
        return count

    def stop(self) -> None:
        """Cancel retries and let go of held transactions (they stay on
        disk, outstanding, for the next start)."""
        self._stopped = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for uid, held in list(self.held.items()):
            if uid not in self._running:
                self.store.release(held)
                del self.held[uid]

    def _run(self, held: Held, association: Any) -> None:
        uid = held.transaction.uid
        self._timers.pop(uid, None)
        if uid in self._running or self._stopped:
            return
        self._running.add(uid)
        d = Deferred.fromCoroutine(self._report(held, association))
        d.addErrback(self._failed, uid)
        d.addCallback(self._reported, held)

    def _failed(self, failure: Any, uid: str) -> bool:
        self.log.failure("Storage commitment: reporting {uid} failed", failure, uid=uid)
        return False

    def _reported(self, delivered: bool, held: Held) -> None:
        uid = held.transaction.uid
        self._running.discard(uid)
        if delivered:
            self.held.pop(uid, None)
            self._attempts.pop(uid, None)
            return
        if self._stopped:
            self.held.pop(uid, None)
            self.store.release(held)
            return
        attempt = self._attempts.get(uid, 0)
        self._attempts[uid] = attempt + 1
        delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
        self.log.info("Storage commitment: transaction {uid} not reported yet; next attempt"
                      " in {delay} s", uid=uid, delay=delay)
        self._timers[uid] = self.reactor.callLater(delay, self._run, held, None)

    async def _report(self, held: Held, association: Any) -> bool:
        transaction = held.transaction
        result = await self._thread(assess, self.index, self.directory, transaction.references)
        information = result.event_information(transaction, self.settings.ae_title)
        delivered = False
        if association is not None and self._may_report_on(association):
            delivered = await self._report_on(association, transaction, result, information,
                                              "the same association")
        if not delivered:
            delivered = await self._report_on_new(transaction, result, information)
        if delivered:
            await self._thread(self.store.finish, held)
            self.log.info("Storage commitment: transaction {uid} reported to {calling}"
                          " (event type {event}: {ok} committed, {failed} failed)",
                          uid=transaction.uid, calling=transaction.calling_ae_title,
                          event=result.event_type, ok=len(result.committed),
                          failed=len(result.failed))
        return delivered

    @staticmethod
    def _may_report_on(association: Any) -> bool:
        """Is the N-ACTION's association still open, with the requestor SCU
        of Storage Commitment (we are then SCP, who sends the event)?"""
        if association.machine.is_closed or association.negotiated is None:
            return False
        return any(c.abstract_syntax == STORAGE_COMMITMENT and c.scu_role
                   for c in association.negotiated.contexts.values())

    async def _report_on(self, association: Any, transaction: Transaction, result: Result,
                         information: Dataset, where: str) -> bool:
        try:
            rsp, _ = await association.n_event_report(STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE,
                                                      result.event_type, information)
        except Exception as e:
            self.log.info("Storage commitment: cannot report {uid} on {where}: {error}",
                          uid=transaction.uid, where=where, error=str(e) or type(e).__name__)
            return False
        if category(rsp.status) in (Category.SUCCESS, Category.WARNING):
            return True
        self.log.warn("Storage commitment: {calling} answered the report of {uid} on {where}"
                      " with 0x{status:04X} ({name})", calling=transaction.calling_ae_title,
                      uid=transaction.uid, where=where, status=rsp.status,
                      name=status_name(rsp.status))
        return False

    async def _report_on_new(self, transaction: Transaction, result: Result,
                             information: Dataset) -> bool:
        settings = self.settings
        destination = settings.destinations.get(transaction.calling_ae_title)
        if destination is None:
            self.log.warn("Storage commitment: no destination [{calling}] in the"
                          " configuration to report transaction {uid} to; it stays"
                          " outstanding", calling=transaction.calling_ae_title,
                          uid=transaction.uid)
            return False
        try:
            from dicomtwist import tls

            association = await associate(
                self.reactor, destination.address, destination.port,
                contexts=[(STORAGE_COMMITMENT, REPORT_SYNTAXES)],
                roles={STORAGE_COMMITMENT: (False, True)},
                called_ae_title=destination.ae_title, calling_ae_title=settings.ae_title,
                max_pdu=settings.max_pdu, acse_timeout=settings.acse_timeout or 30.0,
                dimse_timeout=settings.dimse_timeout,
                network_timeout=settings.network_timeout,
                tls=tls.destination_options(destination, settings))
        except Exception as e:
            self.log.warn("Storage commitment: cannot associate with {aet} at {host}:{port}"
                          " to report {uid}: {error}", aet=destination.ae_title,
                          host=destination.address, port=destination.port,
                          uid=transaction.uid, error=str(e) or type(e).__name__)
            return False
        try:
            contexts = [c for c in association.negotiated.contexts.values()
                        if c.abstract_syntax == STORAGE_COMMITMENT]
            if not any(c.scp_role for c in contexts):
                # PS3.4 J.3.3.1.3: the SCU accepts an association where we
                # propose the SCP role; without it we may not notify.
                self.log.warn("Storage commitment: {aet} did not accept us as SCP of"
                              " Storage Commitment; transaction {uid} stays outstanding",
                              aet=destination.ae_title, uid=transaction.uid)
                return False
            return await self._report_on(association, transaction, result, information,
                                         f"a new association to {destination.ae_title}")
        finally:
            if not association.machine.is_closed:
                try:
                    await association.release()
                except Exception:
                    pass
