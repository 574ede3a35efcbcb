"""The web page's sends, kept in the index so that every process sees them.

A send (:mod:`dicomtwist.web.api`) runs in the process whose HTTP request
started it; under ``--workers`` and with several nodes the next request
of the page may reach any other.  The ``web_job`` table is where they all
meet (the index database: PostgreSQL under ``--workers``, the same code
on sqlite for one process):

- the running process writes the job's progress and end
  (:func:`update`, coalesced: at most one write in flight per job), and
  reads back its cancel flag each time;
- any process lists the jobs (:func:`recent`), reads one (:func:`get`)
  and asks for a cancel (:func:`request_cancel`: ``cancel`` set to 1);
  the running process, which stops between sub-operations, reads the flag
  with its next write (or its next poll) and records it seen (2);
- a process that died leaves its running jobs ``failed``: a node marks
  the running jobs of its own earlier processes when it starts
  (:func:`abandon`; a ``--workers`` worker only those of processes that
  are gone).

Each job row names its ``owner``, ``<node>:<pid>+<start>`` (the node as
``tap.node_name`` says it: host, AE title and first listener; the process
id, and the process's start time in clock ticks after boot, so that a
later process given the same id is not taken for it; rows of earlier
versions have ``<node>:<pid>``).  Times are
integer milliseconds since the epoch (the JSON gives seconds).  Every
function blocks: call it in the archive's thread pool.
"""

from __future__ import annotations

import os
from typing import Any, Callable

__all__ = ["ABANDONED", "CANCEL_REQUESTED", "CANCEL_SEEN", "PROGRESS", "abandon", "create",
           "forget", "get", "owner", "pid_alive", "process_start", "recent", "request_cancel",
           "start_time", "statements", "to_millisecond", "update"]

#: ``cancel`` once a process was asked to cancel the job...
CANCEL_REQUESTED = 1
#: ... and once the running process has read the request.
CANCEL_SEEN = 2
#: The error of a job whose process is gone.
ABANDONED = "the process running it ended"

_COLUMNS = ("pk", "owner", "destination", "study", "series", "user_name", "peer_host",
            "state", "total", "remaining", "completed", "failed", "warning", "status",
            "error", "started", "finished", "cancel")
#: What the running process writes as the job goes.
PROGRESS = ("state", "total", "remaining", "completed", "failed", "warning", "status",
            "error", "finished")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM web_job"


def statements(types: Any) -> list[str]:
    """The table's ``CREATE`` statements (``IF NOT EXISTS``; schema
    version 4), in a backend's SQL types."""
    i, t = types.integer, types.text
    return [
        "CREATE TABLE IF NOT EXISTS web_job ("
        f"pk {types.primary_key}, owner {t} NOT NULL, destination {t} NOT NULL, "
        f"study {t} NOT NULL, series {t}, user_name {t}, peer_host {t}, "
        f"state {t} NOT NULL, total {i}, remaining {i}, completed {i} NOT NULL, "
        f"failed {i} NOT NULL, warning {i} NOT NULL, status {i}, error {t}, "
        f"started {i} NOT NULL, finished {i}, cancel {i} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS idx_web_job_state ON web_job (state)",
    ]


def owner(node: str, pid: int | None = None) -> str:
    """The owner value of this process (``pid``: another's, as of now)."""
    if pid is None:
        pid = os.getpid()
    start = process_start(pid)
    return f"{node}:{pid}" if start is None else f"{node}:{pid}+{start}"


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot
    (``/proc/PID/stat``, field 22); None if it is not running or the
    system has no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fp:
            return start_time(fp.read())
    except (OSError, ValueError, IndexError):
        return None


def start_time(stat: bytes) -> int:
    """The start time (field 22) of a ``/proc/PID/stat`` line.

    :raises ValueError: or ``IndexError``: not such a line.
    """
    # After the command name in parentheses (which may hold anything, even
    # parentheses), the fields from the third (the state) on.
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


def to_millisecond(seconds: float) -> float:
    """``seconds`` as the table keeps a time: to the millisecond."""
    return int(round(seconds * 1000)) / 1000


def _row(values: dict[str, Any]) -> dict[str, Any]:
    found = dict(values)
    for name in ("started", "finished"):
        if found[name] is not None:
            found[name] = found[name] / 1000
    return found


def create(index: Any, owner: str, destination: str, study: str, series: str | None,
           user: str | None, peer_host: str, started: float) -> int:
    """Record a new running job; its id."""
    with index.transaction():
        row = index._execute(
            "INSERT INTO web_job (owner, destination, study, series, user_name, peer_host,"
            " state, completed, failed, warning, started, cancel)"
            " VALUES (?, ?, ?, ?, ?, ?, 'running', 0, 0, 0, ?, 0) RETURNING pk",
            (owner, destination, study, series, user, peer_host, _ms(started))).fetchall()[0]
    return int(row[0])


def update(index: Any, pk: int, progress: dict[str, Any]) -> bool:
    """Write a job's progress (the :data:`PROGRESS` fields); whether a
    cancel was asked for (it is then recorded as seen)."""
    values = [progress[name] if name != "finished" else _ms(progress[name])
              for name in PROGRESS]
    with index.transaction():
        rows = index._execute(
            f"UPDATE web_job SET {', '.join(f'{name} = ?' for name in PROGRESS)}"
            " WHERE pk = ? RETURNING cancel", (*values, pk)).fetchall()
        if not rows:
            return False
        row = rows[0]
        if row[0] == CANCEL_REQUESTED:
            index._execute("UPDATE web_job SET cancel = ? WHERE pk = ?", (CANCEL_SEEN, pk))
    return row[0] in (CANCEL_REQUESTED, CANCEL_SEEN)


def get(index: Any, pk: int) -> dict[str, Any] | None:
    """One job as a dict by column (times in seconds), or None."""
    rows = index._rows(f"{_SELECT} WHERE pk = ?", (pk,))
    return _row(rows[0]) if rows else None


def recent(index: Any, limit: int) -> list[dict[str, Any]]:
    """Every running job and the latest ``limit`` finished, newest first."""
    rows = index._rows(f"{_SELECT} WHERE state = 'running' OR pk IN (SELECT pk FROM web_job"
                       " WHERE state <> 'running' ORDER BY pk DESC LIMIT ?)"
                       " ORDER BY pk DESC", (limit,))
    return [_row(row) for row in rows]


def request_cancel(index: Any, pk: int) -> dict[str, Any] | None:
    """Ask for a job's cancel (a job that ended is left as it is); the job,
    or None if there is none."""
    with index.transaction():
        index._execute("UPDATE web_job SET cancel = ? WHERE pk = ? AND state = 'running'"
                       " AND cancel = 0", (CANCEL_REQUESTED, pk))
    return get(index, pk)


def forget(index: Any, kept: int) -> None:
    """Delete the finished jobs but the latest ``kept``."""
    with index.transaction():
        index._execute("DELETE FROM web_job WHERE state <> 'running' AND pk NOT IN"
                       " (SELECT pk FROM web_job WHERE state <> 'running'"
                       " ORDER BY pk DESC LIMIT ?)", (kept,))


def abandon(index: Any, node: str, finished: float,
            alive: Callable[[int, int | None], bool] = lambda pid, start: False) -> list[int]:
    """Mark ``failed`` the running jobs of ``node``'s processes that are
    not ``alive(pid, start)`` (``start`` None for an owner of an earlier
    version; by default none is alive: a node that starts); their ids."""
    ended = []
    for row in index._rows("SELECT pk, owner FROM web_job WHERE state = 'running'"):
        name, _, process = str(row["owner"]).rpartition(":")
        pid, _, start = process.partition("+")
        if name != node or not pid.isdigit() or not (start.isdigit() or not start):
            continue
        if not alive(int(pid), int(start) if start else None):
            ended.append(int(row["pk"]))
    if ended:
        with index.transaction():
            for pk in ended:
                index._execute("UPDATE web_job SET state = 'failed', error = ?, finished = ?"
                               " WHERE pk = ? AND state = 'running'",
                               (ABANDONED, _ms(finished), pk))
    return ended


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether a process ``pid`` runs on this host, and, given its
    ``start`` (:func:`process_start`), is still the one that started then
    (not a later process given the same id)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start is None:
        return True
    now = process_start(pid)
    return now is None or now == start
