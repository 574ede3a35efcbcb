"""The web page's JSON API: status, sends to destinations, study deletion.

What the page needs beyond DICOMweb, at ``/api`` of the HTTP endpoint,
under the same authentication as DICOMweb (:mod:`dicomtwist.web.auth`):

``GET /api/status`` (``query``)
    version, AE title, the DICOMweb root, counts (patients, studies,
    series, instances), the instance directory's disk use, active
    associations, the configured destinations, and what the caller may do.
``POST /api/studies/{study}[/series/{series}]/send?destination=AE`` (``send``)
    start a send: the C-MOVE SCP's own retrieve pipeline
    (:class:`dicomtwist.services.qr.QueryRetrieve`) to a configured
    destination.  Answered ``202`` with the job (and its ``Location``), or,
    with ``Accept: text/event-stream``, with the job's progress as
    server-sent events on the same response (``progress`` events, then one
    ``done``), which works whichever worker process took the request.
``GET /api/jobs`` and ``GET /api/jobs/{id}`` (``query``)
    the archive's recent jobs, or one (``text/event-stream`` as above).
``DELETE /api/jobs/{id}`` (``send``)
    cancel a running send between two sub-operations.
``DELETE /api/studies/{study}`` (``delete``)
    remove a study: its index rows in one transaction, then its files.

A job outlives the request that started it: a send runs to its end (or its
cancel) even if the page is closed.  Finished jobs are kept, the latest
:data:`KEPT_JOBS` of them.

Jobs live in the index (``web_job``, :mod:`dicomtwist.storage.index.jobs`),
where every process of the archive meets: under ``--workers`` (and with
several nodes) the next request of the page reaches any process, which
lists the job, reads it and cancels it all the same.  The process that
started a job runs it and writes its progress there as it goes (at most
one write in flight; each write also reads the cancel flag, and so does
a poll every :data:`JOB_POLL` seconds); a ``DELETE`` through any process
sets the flag, and the running process stops between two sub-operations
once it has read it (at once when the ``DELETE`` reaches it).  The
events of the starting request come from the running process itself; a
``GET`` with ``text/event-stream`` through another process follows the
row, read every :data:`JOB_POLL` seconds.  A process that dies leaves its
running jobs ``failed``: marked when its node or its replacement worker
starts, and when the jobs or one of them are next read on its node (a
worker that was not restarted).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web import server

import dicomtwist
from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.status import Category, category
from dicomtwist.storage.files import is_valid_uid, stored_file
from dicomtwist.storage.index import jobs as job_table
from dicomtwist.web.auth import PERMISSIONS, Principal
from dicomtwist.web.dicomweb.resource import DicomWebContext, HttpError, query_args
from dicomtwist.web.routed import RoutedResource, allow, send_json

__all__ = ["ApiResource", "JOB_POLL", "Job", "Jobs", "KEPT_JOBS", "delete_study"]

#: Finished jobs remembered for ``GET /api/jobs``.
KEPT_JOBS = 100
#: Seconds between two reads of a running job's cancel flag by the process
#: running it, and of a job's row for the events of another process.
JOB_POLL = 1.0
#: Tries to record a job's end before it is left to the index as it was.
FINAL_ATTEMPTS = 30
#: The ``cancel`` of a job's JSON, by the index's flag.
_CANCEL = {0: None, job_table.CANCEL_REQUESTED: "requested", job_table.CANCEL_SEEN: "seen"}
#: The Study Root C-MOVE SOP Class: the model a page's send uses.
_STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


@dataclass
class Job:
    """One send of a study or series to a destination, and its progress.

    :ivar state: ``running``, ``done`` (every sub-operation succeeded),
        ``failed`` (some failed, or none could run) or ``cancelled``.
    :ivar total: sub-operations in all (known once the instances are found).
    :ivar cancelled: the running process: stop before the next
        sub-operation; another's copy: a cancel was asked for.
    :ivar cancel: the index's cancel flag (0, requested, seen).
    """

    id: str
    destination: str
    study: str
    series: str | None
    user: str | None
    started: float
    peer_host: str = ""
    state: str = "running"
    total: int | None = None
    remaining: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: int | None = None
    error: str | None = None
    finished: float | None = None
    cancelled: bool = False
    cancel: int = 0
    _watchers: list[Callable[["Job"], None]] = field(default_factory=list, repr=False)
    #: The running process: a write of the progress is in flight, another
    #: is due after it, who waits for the writes to end, the poll's timer.
    _writing: bool = field(default=False, repr=False)
    _again: bool = field(default=False, repr=False)
    _idle: list[Deferred] = field(default_factory=list, repr=False)
    _poll: Any = field(default=None, repr=False)
    #: The last write failed (the index is away).
    _unwritten: bool = field(default=False, repr=False)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Job":
        """A job as the index holds it (:func:`~dicomtwist.storage.index.jobs.get`)."""
        return cls(str(row["pk"]), row["destination"], row["study"], row["series"],
                   row["user_name"], row["started"], row["peer_host"] or "",
                   state=row["state"], total=row["total"], remaining=row["remaining"],
                   completed=row["completed"], failed=row["failed"], warning=row["warning"],
                   status=row["status"], error=row["error"], finished=row["finished"],
                   cancelled=bool(row["cancel"]), cancel=int(row["cancel"]))

    def as_json(self) -> dict[str, Any]:
        """What the API answers about the job (``cancel``: null, or
        ``requested`` once asked for and ``seen`` once the running process
        has read it)."""
        return {
            "id": self.id, "destination": self.destination, "study": self.study,
            "series": self.series, "user": self.user, "state": self.state,
            "total": self.total, "remaining": self.remaining, "completed": self.completed,
            "failed": self.failed, "warning": self.warning,
            "status": None if self.status is None else f"{self.status:04X}",
            "error": self.error, "started": self.started, "finished": self.finished,
            "cancel": _CANCEL.get(self.cancel),
        }

    def progress(self) -> dict[str, Any]:
        """What the running process writes (``jobs.PROGRESS``)."""
        return {name: getattr(self, name) for name in job_table.PROGRESS}

    def watch(self, watcher: Callable[["Job"], None]) -> Callable[[], None]:
        """Call ``watcher(job)`` on each change; returns how to stop."""
        self._watchers.append(watcher)
        return lambda: watcher in self._watchers and self._watchers.remove(watcher)

    def changed(self) -> None:
        """Tell the watchers."""
        for watcher in list(self._watchers):
            watcher(self)


class _Message:
    """The parts of a C-MOVE-RQ the retrieve pipeline reads."""

    affected_sop_class_uid = _STUDY_ROOT_MOVE
    message_id = 0

    def __init__(self, destination: str) -> None:
        self.move_destination = destination


class _PageRequest:
    """A send from the page, as the C-MOVE handler sees a request: an
    identifier, a destination, a cancel flag and no requesting
    association (so no Move Originator)."""

    association = None
    context = None

    def __init__(self, job: Job) -> None:
        self.message = _Message(job.destination)
        self._job = job
        #: Who asked (the events of the retrieve name them).
        self.peer_host = job.peer_host
        self.user = job.user
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES" if job.series else "STUDY"
        identifier.StudyInstanceUID = job.study
        if job.series:
            identifier.SeriesInstanceUID = job.series
        self._identifier = identifier

    @property
    def cancelled(self) -> bool:
        """Set by ``DELETE /api/jobs/{id}``."""
        return self._job.cancelled

    def dataset(self) -> Dataset:
        """The C-MOVE identifier."""
        return self._identifier


class Jobs:
    """The archive's sends: the index's ``web_job`` rows, and those this
    process runs.

    :param retriever: the C-MOVE SCP (``handle_move(request)``, an async
        iterator of responses).
    :param clock: the job times and the polls.
    :param index: where the jobs are kept.
    :param run: ``run(function, *args)`` in the archive's thread pool.
    :param node: this archive node's name (``tap.node_name``); with the
        process id it names the jobs this process runs.
    """

    log = dlog.logger()

    def __init__(self, retriever: Any, clock: Any, kept: int = KEPT_JOBS, *, index: Any,
                 run: Callable[..., Deferred], node: str = "") -> None:
        self.retriever = retriever
        self.clock = clock
        self.kept = kept
        self.index = index
        self.run = run
        self.node = node
        self.owner = job_table.owner(node)
        #: The jobs this process runs, by id.
        self.running: dict[str, Job] = {}

    async def get(self, job_id: str) -> Job | None:
        """A job by id (this process's own as it is now)."""
        job = self.running.get(job_id)
        if job is not None or not job_id.isdigit():
            return job
        row = await self.run(self._settled, job_table.get, int(job_id))
        return None if row is None else Job.from_row(row)

    async def all(self) -> list[Job]:
        """Every running job and the latest finished, the newest first."""
        rows = await self.run(self._settled, job_table.recent, self.kept)
        return [self.running.get(str(row["pk"])) or Job.from_row(row) for row in rows]

    def _settled(self, read: Callable[..., Any], *args: Any) -> Any:
        """In the pool: ``read(index, *args)``, after marking ``failed`` the
        running jobs of this node's processes that are gone (a ``--workers``
        worker that died and was not restarted; the others are marked as
        their replacement or their node starts)."""
        job_table.abandon(self.index, self.node, self.clock.seconds(), job_table.pid_alive)
        return read(self.index, *args)

    async def cancel(self, job_id: str) -> Job | None:
        """Ask for a job's cancel, whichever process runs it; the job, or
        None if there is none."""
        job = self.running.get(job_id)
        if job is not None:
            job.cancelled = True
            job.cancel = job_table.CANCEL_SEEN
        if not job_id.isdigit():
            return None
        row = await self.run(job_table.request_cancel, self.index, int(job_id))
        if row is None:
            return None
        return job if job is not None else Job.from_row(row)

    async def start(self, destination: str, study: str, series: str | None,
                    user: str | None, peer_host: str = "") -> Job:
        """Record a job and start sending; the job runs on its own (its end
        is logged).

        :param peer_host: the address of the HTTP client that asked.
        """
        started = job_table.to_millisecond(self.clock.seconds())
        pk = await self.run(job_table.create, self.index, self.owner, destination, study,
                            series, user, peer_host, started)
        job = Job(str(pk), destination, study, series, user, started, peer_host)
        self.running[job.id] = job
        self.log.info("Sending {what} {uid} to {aet} (web job {id}, {user})",
                      what="series" if series else "study", uid=series or study,
                      aet=destination, id=job.id, user=user or "anonymous")
        job._poll = self.clock.callLater(JOB_POLL, self._tick, job)
        Deferred.fromCoroutine(self._run(job))
        return job

    async def _run(self, job: Job) -> None:
        try:
            async for response in self.retriever.handle_move(_PageRequest(job)):
                fields = response.fields
                job.completed = fields.get("number_of_completed_sub_operations", job.completed)
                job.failed = fields.get("number_of_failed_sub_operations", job.failed)
                job.warning = fields.get("number_of_warning_sub_operations", job.warning)
                job.remaining = fields.get("number_of_remaining_sub_operations", 0)
                if job.total is None:
                    job.total = job.completed + job.failed + job.warning + job.remaining
                job.status = response.status
                if category(response.status) is Category.PENDING:
                    self._write(job)
                    job.changed()
            kind = category(job.status) if job.status is not None else Category.FAILURE
            if job.cancelled:
                job.state = "cancelled"
            elif kind is Category.SUCCESS:
                job.state = "done"
            else:
                job.state = "failed"
        except Exception as e:
            job.status = getattr(e, "status", None)
            job.error = getattr(e, "comment", None) or str(e) or type(e).__name__
            job.state = "failed"
            if job.status is None:
                self.log.failure("Web job {id} failed", id=job.id)
        job.remaining = 0 if job.state != "cancelled" else job.remaining
        job.total = job.total if job.total is not None else 0
        job.finished = job_table.to_millisecond(self.clock.seconds())
        if job._poll is not None and job._poll.active():
            job._poll.cancel()
        self.log.info("Web job {id} {state}: {completed} sent, {failed} failed,"
                      " {warned} with warnings", id=job.id, state=job.state,
                      completed=job.completed, failed=job.failed, warned=job.warning)
        # Its end is in the index before anyone is told.
        await self._written(job)
        try:
            await self.run(job_table.forget, self.index, self.kept)
        except Exception:
            self.log.failure("Cannot forget old web jobs")
        del self.running[job.id]
        job.changed()
        job._watchers.clear()

    def _tick(self, job: Job) -> None:
        """Every JOB_POLL seconds while it runs: write, read the cancel flag."""
        job._poll = None
        if job.state == "running":
            self._write(job)
            job._poll = self.clock.callLater(JOB_POLL, self._tick, job)

    def _write(self, job: Job) -> None:
        """Write the job's progress to the index and read its cancel flag;
        with a write in flight, once more after it."""
        if job._writing:
            job._again = True
            return
        job._writing = True
        job._again = False

        def written(cancel: bool) -> None:
            job._unwritten = False
            if cancel:
                job.cancelled = True
                job.cancel = job_table.CANCEL_SEEN

        def done(_: Any) -> None:
            job._writing = False
            if job._again:
                self._write(job)
                return
            waiters, job._idle = job._idle, []
            for waiter in waiters:
                waiter.callback(None)

        d = self.run(job_table.update, self.index, int(job.id), job.progress())
        def failed(failure: Any) -> None:
            job._unwritten = True
            self.log.failure("Cannot record the progress of web job {id}", failure,
                             id=job.id)

        d.addCallbacks(written, failed)
        d.addBoth(done)

    async def _written(self, job: Job) -> None:
        """Write the job as it is now; fires once that is written (or,
        the index being away, after :data:`FINAL_ATTEMPTS` tries, one
        every :data:`JOB_POLL` seconds)."""
        for attempt in range(FINAL_ATTEMPTS):
            if attempt:
                await deferLater(self.clock, JOB_POLL, lambda: None)
            self._write(job)
            while job._writing:
                waiter: Deferred = Deferred()
                job._idle.append(waiter)
                await waiter
            if not job._unwritten:
                return


def delete_study(index: Any, directory: str, study: str) -> tuple[int, int]:
    """Remove a study's rows, then its files (blocking: run it in a pool).

    The index commits first: a crash after it leaves files without rows,
    which start-up recovery indexes again, never rows without files.

    :returns: ``(instances removed from the index, files deleted)``.
    """
    paths = index.delete_study(study)
    deleted = 0
    for relative in paths:
        try:
            os.unlink(stored_file(directory, relative))
            deleted += 1
        except (ValueError, FileNotFoundError):
            # Gone already, or a path the archive never writes: not ours
            # to resolve (stored_file refuses anything else).
            pass
    return len(paths), deleted


def study_contents(index: Any, study: str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """A study's patient ID and name and its ``(SOP class, SOP instance)``
    pairs, for the audit trail's record of a deletion (blocking)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    identifier.PatientID = ""
    identifier.PatientName = ""
    patient_id = patient_name = ""
    for match in index.find(identifier, "STUDY"):
        patient_id = str(match.get("PatientID", "") or "")
        patient_name = str(match.get("PatientName", "") or "")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study
    identifier.SOPInstanceUID = ""
    identifier.SOPClassUID = ""
    instances = tuple((str(match.get("SOPClassUID", "") or ""), str(match.SOPInstanceUID))
                      for match in index.find(identifier, "STUDY", relational=True))
    return patient_id, patient_name, instances


def _wants_events(request: server.Request) -> bool:
    return "text/event-stream" in (request.getHeader("accept") or "")


class ApiResource(RoutedResource):
    """``/api``: a leaf that routes the rest of its path itself.

    :param context: what the DICOMweb services work with (index, pools,
        directory, credentials).
    :param authorize: ``authorize(request, permission)`` -> the principal
        (None without authentication); raises :class:`HttpError` 401/403.
    :param settings: the archive configuration (AE title, destinations).
    :param retriever: the C-MOVE SCP whose pipeline sends run through.
    :param associations: the number of active associations (None: unknown).
    :param node: this archive node's name (the owner of the jobs it runs).
    """

    log = dlog.logger()

    def __init__(self, context: DicomWebContext,
                 authorize: Callable[[Any, str], Principal | None], settings: Any,
                 retriever: Any, associations: Callable[[], int] | None = None,
                 node: str = "") -> None:
        super().__init__()
        self.context = context
        self.authorize = authorize
        self.settings = settings
        self.jobs = Jobs(retriever, context.reactor, index=context.index, run=context.run,
                         node=node)
        self.associations = associations

    async def _route(self, request: server.Request, method: str, segments: list[str]) -> None:
        n = len(segments)
        if segments == ["status"]:
            allow(method, "GET")
            return await self.status(request)
        if segments[:1] == ["jobs"] and n <= 2:
            if n == 1:
                allow(method, "GET")
                self.authorize(request, "query")
                return send_json(request, 200, [j.as_json() for j in await self.jobs.all()])
            allow(method, "GET", "DELETE")
            self.authorize(request, "query" if method == "GET" else "send")
            if method == "DELETE":
                job = await self.jobs.cancel(segments[1])
            else:
                job = await self.jobs.get(segments[1])
            if job is None:
                raise HttpError(404, f"no job {segments[1]}")
            if method == "DELETE":
                return send_json(request, 202, job.as_json())
            return self._job(request, job, 200)
        if segments[:1] == ["studies"] and n >= 2 and is_valid_uid(segments[1]):
            study = segments[1]
            if n == 2:
                allow(method, "DELETE")
                return await self.delete(request, study)
            if n == 3 and segments[2] == "send":
                allow(method, "POST")
                return await self.send(request, study, None)
            if (n == 5 and segments[2] == "series" and is_valid_uid(segments[3])
                    and segments[4] == "send"):
                allow(method, "POST")
                return await self.send(request, study, segments[3])
        raise HttpError(404, "no such resource")

    # -- status ------------------------------------------------------------
    async def status(self, request: server.Request) -> None:
        """``GET /api/status``."""
        principal = self.authorize(request, "query")
        index = self.context.index
        directory = self.context.directory

        def gather() -> dict[str, Any]:
            counts = {name: index.count(level) for name, level in (
                ("patients", "PATIENT"), ("studies", "STUDY"), ("series", "SERIES"),
                ("instances", "IMAGE"))}
            usage = shutil.disk_usage(directory)
            return {"counts": counts,
                    "disk": {"total": usage.total, "used": usage.used, "free": usage.free}}

        found = await self.context.run(gather)
        if principal is None:
            permissions = sorted(PERMISSIONS)
            user = None
        else:
            permissions = sorted(principal.permissions)
            user = principal.name
        send_json(request, 200, {
            "version": dicomtwist.__version__,
            "ae_title": self.settings.ae_title,
            "dicomweb": self.context.root,
            **found,
            "associations": None if self.associations is None else self.associations(),
            "destinations": sorted(self.settings.destinations),
            "user": user,
            "permissions": permissions,
        })

    # -- send --------------------------------------------------------------
    async def send(self, request: server.Request, study: str, series: str | None) -> None:
        """``POST .../send?destination=AE``: start a job."""
        principal = self.authorize(request, "send")
        destination = (query_args(request).get("destination") or [""])[-1].strip()
        if not destination:
            raise HttpError(400, "destination is required")
        if destination not in self.settings.destinations:
            known = ", ".join(sorted(self.settings.destinations)) or "none"
            raise HttpError(400, f"unknown destination {destination!r} (configured: {known})")
        client = request.getClientAddress()
        job = await self.jobs.start(destination, study, series,
                                    principal.name if principal is not None else None,
                                    getattr(client, "host", ""))
        self._job(request, job, 202)

    def _job(self, request: server.Request, job: Job, code: int) -> None:
        location = f"/api/jobs/{job.id}"
        if not _wants_events(request):
            send_json(request, code, job.as_json(), headers={"location": location})
            return
        request.setResponseCode(200)
        request.setHeader("content-type", "text/event-stream; charset=utf-8")
        request.setHeader("cache-control", "no-store")
        request.setHeader("location", location)

        def emit(current: Job) -> None:
            if request.finished or request._disconnected:
                return
            event = "progress" if current.state == "running" else "done"
            data = json.dumps(current.as_json(), ensure_ascii=False)
            request.write(f"event: {event}\ndata: {data}\n\n".encode("utf-8"))
            if event == "done":
                stop()
                request.finish()

        if job.id in self.jobs.running:
            stop = job.watch(emit)
        else:
            stop = self._follow(job, emit)
        request.notifyFinish().addBoth(lambda _: stop())
        emit(job)

    def _follow(self, job: Job, emit: Callable[[Job], None]) -> Callable[[], None]:
        """A job another process runs: read its row every JOB_POLL seconds
        and ``emit`` it when it changed; returns how to stop."""
        clock = self.context.reactor
        state: dict[str, Any] = {"last": job.as_json(), "timer": None, "stopped": False}

        def poll() -> None:
            state["timer"] = None
            Deferred.fromCoroutine(self.jobs.get(job.id)).addCallbacks(read, failed)

        def failed(failure: Any) -> None:
            # The index is away for a while: try again, as the page would.
            self.log.failure("Cannot read web job {id}", failure, id=job.id)
            if not state["stopped"]:
                state["timer"] = clock.callLater(JOB_POLL, poll)

        def read(current: Job | None) -> None:
            if state["stopped"]:
                return
            if current is None:
                current = job
                current.state, current.error = "failed", "the job is gone"
            seen = current.as_json()
            if seen != state["last"]:
                state["last"] = seen
                emit(current)
            if current.state == "running" and not state["stopped"]:
                state["timer"] = clock.callLater(JOB_POLL, poll)

        def stop() -> None:
            state["stopped"] = True
            if state["timer"] is not None and state["timer"].active():
                state["timer"].cancel()

        if job.state == "running":
            state["timer"] = clock.callLater(JOB_POLL, poll)
        return stop

    # -- delete ------------------------------------------------------------
    async def delete(self, request: server.Request, study: str) -> None:
        """``DELETE /api/studies/{study}``."""
        principal = self.authorize(request, "delete")
        contents = None
        if events.bus.observed and is_valid_uid(study):
            contents = await self.context.run(study_contents, self.context.index, study)
        instances, files = await self.context.run(delete_study, self.context.index,
                                                  self.context.directory, study)
        if not instances:
            raise HttpError(404, f"no study {study}")
        if contents is not None:
            events.bus.publish(events.StudyDeleted(
                "http", request.getClientAddress().host or "",
                principal.name if principal is not None else "", study, *contents))
        self.log.info("Deleted study {uid}: {instances} instance(s), {files} file(s)"
                      " ({user}, web)", uid=study, instances=instances, files=files,
                      user=principal.name if principal is not None else "anonymous")
        send_json(request, 200, {"study": study, "instances": instances, "files": files})
