"""Where one association's round trips go: the client's wait for each
answer, split at the daemon's poll and ``send``.

Usage::

    python benchmarks/critical_path.py --count 3000
    python benchmarks/critical_path.py --count 3000 --ours-src /some/tree
    python benchmarks/critical_path.py --count 3000 --server orthanc   # client side only

With one client associating again and again, the rate is set by latency:
each request waits for the answer to the one before.  This starts
``dicomqr`` (run.py's configuration) under a launcher that notes, with
the monotonic clock every process shares (``time.perf_counter``), when
the reactor's poll returns and when each answer's ``send`` has returned
(``dicomtwist.ul.protocol._send_now``), between SIGUSR1 and SIGUSR2; the
client (:mod:`benchmarks.rawclient`'s PDUs, in this process) notes when
it sends each request and when it holds the answer.  For each answer
(A-ASSOCIATE-AC, C-ECHO-RSP, A-RELEASE-RP), the medians of:

* ``wake``: the client's ``send`` to the daemon's poll returning (the
  kernel's delivery and the daemon's wake-up, or its spin finding it;
  for the A-ASSOCIATE-AC the poll is often the connection's, before the
  request was sent: a negative figure, the daemon was up already);
* ``daemon``: the poll returning to the answer's ``send`` having
  returned (our Python, and the ``send``, which on loopback runs the
  client's receive path);
* ``back``: that to the client holding the answer;
* ``total``, and the daemon's time from the ``send`` to its next poll
  (what it does after answering, off the path while the client reads).

With ``--server NAME`` (another daemon of ``benchmarks/servers.py``) only
the client's side is measured: ``total`` per answer, and the connection's
``connect`` and ``close``.  The readings and the daemon's notes are kept
in the work directory (``readings.json``, ``notes.json``).  Run it on a
quiet machine: with other processes busy on the cores, fewer answers are
matched (the report says how many).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import rawclient, servers  # noqa: E402

#: The daemon's launcher: the reactor's poller and ``_send_now`` wrapped to
#: note their times in ``CRITICAL_PATH_OUT`` (JSON) between SIGUSR1 and
#: SIGUSR2.  ``["X", t, n]``: a poll returned with n events; ``["E", t]``:
#: a poll was entered; ``["S", t, length]``: a send returned.
LAUNCHER = r"""
import json, os, signal, sys, time
sys.argv[0] = "dicomqr"
clock = time.perf_counter
notes = []
on = [False]
import dicomtwist.reactor as reactor_module
import dicomtwist.ul.protocol as protocol_module

class Noting:
    def __init__(self, poller):
        self.poller = poller
    def poll(self, *args):
        if on[0]:
            notes.append(("E", clock()))
        events = self.poller.poll(*args)
        if on[0]:
            notes.append(("X", clock(), len(events)))
        return events
    def __getattr__(self, name):
        return getattr(self.poller, name)

made = reactor_module.DicomReactor.__init__
def noting_init(self, *args, **kwargs):
    made(self, *args, **kwargs)
    self._poller = Noting(self._poller)
reactor_module.DicomReactor.__init__ = noting_init

send_now = protocol_module._send_now
def noting_send(transport, data):
    sent = send_now(transport, data)
    if on[0]:
        notes.append(("S", clock(), len(data)))
    return sent
protocol_module._send_now = noting_send

def start(*_):
    on[0] = True
def stop(*_):
    on[0] = False
    out = os.environ["CRITICAL_PATH_OUT"]
    with open(out + ".part", "w") as fp:
        json.dump(notes, fp)
    os.replace(out + ".part", out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
from dicomtwist.tap import run
run()
"""

#: The answers, in the order an association gets them.
ANSWERS = ("A-ASSOCIATE-AC", "C-ECHO-RSP", "A-RELEASE-RP")


class Noted(servers.Ours):
    """Our daemon under :data:`LAUNCHER`, its notes in ``out``."""

    out = ""

    def command(self) -> list[str]:
        command = super().command()
        command[2] = LAUNCHER
        return command

    def env(self) -> dict[str, str]:
        return dict(super().env(), CRITICAL_PATH_OUT=self.out)


def client_loop(server: servers.Server, count: int) -> list[tuple[float, ...]]:
    """``count`` associations; for each, the client's clock readings:
    before connect, connected, then (sent, answered) for each answer, and
    closed."""
    rq = rawclient.associate_rq(server.ae_title)
    requests = (rq, rawclient.ECHO_RQ, rawclient.RELEASE_RQ)
    expected = (rawclient.A_ASSOCIATE_AC, rawclient.P_DATA_TF, rawclient.A_RELEASE_RP)
    clock = time.perf_counter
    readings = []
    for _ in range(count):
        start = clock()
        sock = rawclient.connect(server.port)
        row = [start, clock()]
        buffer = bytearray()
        with sock:
            for request, wanted in zip(requests, expected):
                row.append(clock())
                sock.sendall(request)
                pdu_type, _ = rawclient.read_pdu(sock, buffer)
                row.append(clock())
                if pdu_type != wanted:
                    raise SystemExit(f"answered with PDU type {pdu_type:#x}, not {wanted:#x}")
        row.append(clock())
        readings.append(tuple(row))
    return readings


def median_us(values: list[float]) -> str:
    """A median in microseconds, for the report."""
    return f"{statistics.median(values) * 1e6:7.1f}" if values else "      –"


def split(readings: list[tuple[float, ...]], notes: list[list]) -> dict[str, list[tuple]]:
    """Each answer's ``(wake, daemon, back, total, after)`` in seconds,
    where the daemon's notes show one poll and one send between the
    client's request and its answer."""
    returned = [note[1] for note in notes if note[0] == "X" and note[2]]
    entered = [note[1] for note in notes if note[0] == "E"]
    sends = [note[1] for note in notes if note[0] == "S"]
    parts: dict[str, list[tuple]] = {answer: [] for answer in ANSWERS}
    for row in readings:
        for n, answer in enumerate(ANSWERS):
            sent, answered = row[2 + 2 * n], row[3 + 2 * n]
            j = bisect.bisect_left(sends, sent)
            if j == len(sends) or sends[j] > answered:
                continue
            wrote = sends[j]
            # The last poll to return before the answer was written: for
            # the A-ASSOCIATE-AC it may be the connection's, before the
            # request was sent (a negative wake: the daemon was up).
            i = bisect.bisect_right(returned, wrote) - 1
            if i < 0 or returned[i] < row[0]:
                continue
            woke = returned[i]
            k = bisect.bisect_left(entered, wrote)
            after = entered[k] - wrote if k < len(entered) else float("nan")
            parts[answer].append((woke - sent, wrote - woke, answered - wrote,
                                  answered - sent, after))
    return parts


def report(readings: list[tuple[float, ...]], notes: list[list] | None) -> None:
    """Print the medians (see the module's docstring)."""
    count = len(readings)
    elapsed = readings[-1][-1] - readings[0][0]
    print(f"{count} associations in {elapsed:.2f} s ({count / elapsed:,.0f}/s, one client)")
    print(f"client side, µs (medians): connect {median_us([r[1] - r[0] for r in readings])},"
          f" close {median_us([r[-1] - r[-2] for r in readings])}")
    parts = split(readings, notes) if notes is not None else None
    header = "answer            total" + ("     wake   daemon     back    after"
                                         if parts is not None else "")
    print(header)
    for n, answer in enumerate(ANSWERS):
        totals = [r[3 + 2 * n] - r[2 + 2 * n] for r in readings]
        line = f"{answer:14s} {median_us(totals)}"
        if parts is not None:
            columns = list(zip(*parts[answer])) or [[]] * 5
            line += " " + " ".join(median_us([v for v in column if v == v])
                                   for column in columns)
            line += f"   ({len(parts[answer])} of {count} matched)"
        print(line)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="measured associations")
    parser.add_argument("--warmup", type=int, default=500, help="associations before")
    parser.add_argument("--ours-src", default=ROOT, help="the dicomtwist tree to run")
    parser.add_argument("--work", default=None, help="work directory (default: temporary)")
    parser.add_argument("--server", default="ours", choices=sorted(servers.SERVERS),
                        help="measure this server instead (client side only)")
    args = parser.parse_args(argv)
    servers.Ours.source = os.path.abspath(args.ours_src)
    work = args.work or tempfile.mkdtemp(prefix="critical-path-")
    os.makedirs(work, exist_ok=True)
    if args.server == "ours":
        server: servers.Server = Noted(os.path.join(work, "ours"), servers.free_port())
        server.out = os.path.join(work, "notes.json")
    else:
        server = servers.SERVERS[args.server](os.path.join(work, args.server),
                                              servers.free_port())
    server.start()
    notes = None
    try:
        done, failed, _ = rawclient.echo_loop(server.port, server.ae_title, args.warmup, 120.0)
        if failed or done != args.warmup:
            raise SystemExit(f"{failed} warm-up association(s) failed:\n" + server.log_tail())
        if isinstance(server, Noted):
            os.kill(server.process.pid, signal.SIGUSR1)
            time.sleep(0.3)
        readings = client_loop(server, args.count)
        with open(os.path.join(work, "readings.json"), "w") as fp:
            json.dump(readings, fp)
        if isinstance(server, Noted):
            time.sleep(0.3)
            os.kill(server.process.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not os.path.exists(server.out) and time.monotonic() < deadline:
                time.sleep(0.1)
            with open(server.out) as fp:
                notes = json.load(fp)
    finally:
        server.stop()
    report(readings, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
