"""What one stored small instance costs our daemon: CPU, instructions, system calls.

Usage::

    python benchmarks/store_cost.py cpu --count 3000
    python benchmarks/store_cost.py callgrind --count 400
    python benchmarks/store_cost.py cprofile --count 2000 --top 40
    python benchmarks/store_cost.py strace --count 1000
    python benchmarks/store_cost.py cpu --ours-src /some/tree   # another tree
    python benchmarks/store_cost.py callgrind --size ct --count 200  # 0.5 MB instances

Starts ``dicomqr`` from this tree (or ``--ours-src``) alone, with the
configuration of ``run.py`` (sqlite), warms it up with ``--warmup``
instances, then sends ``--count`` more: the bulk load's small CT instances
(32x32, about 3 KB, 20 per study, :func:`benchmarks.data.write_small_set`,
new UIDs each run), over ``--associations`` associations at once (4, as
the bulk load), each C-STORE-RQ waiting for its response, by
:class:`benchmarks.rawclient.StoreAssociation` (hand-written PDUs, read
from memory: the client costs little, and runs in its own process). The
associations are opened before the measurement and released after it, so
what is measured is the stores alone. It prints the cost of one instance:

* ``cpu``: the daemon's user and system CPU (``/proc/PID/stat``, all its
  threads), per instance; the machine's load moves it some (use the median
  of a few runs, and compare trees with ``--ours-src`` in one session);
* ``callgrind``: instructions executed in the daemon (valgrind's
  callgrind, switched on for the measured stores only, the kernel not
  counted): deterministic but for the group commit's batching, which
  follows the timing; with the top C functions;
* ``cprofile``: Python's profiler in the daemon (started and stopped by
  signals around the measured stores), in the reactor thread and in every
  task of the thread pools (:data:`PROFILED`): the Python functions, by
  their own time (wall time: the reactor's ``epoll`` wait and the
  workers' ``fsync`` are waits, not CPU; with ``--cpu-timer``, each
  thread's CPU time instead) and by calls per instance;
* ``strace``: the system calls the daemon makes, per instance.

Every store must answer Success (the run stops otherwise): Success is
given only once the file is fsynced and the index committed, so the
figures include the durable path, not a shortcut.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import data, rawclient, servers  # noqa: E402
from benchmarks.assoc_cost import (  # noqa: E402
    Measured, cpu_per, instrument, measured, report, stop)

#: The daemon's launcher under cProfile, for every thread that works on a
#: store: the reactor thread, and each task run in a Twisted thread pool
#: (the store pipeline) or a ``concurrent.futures`` pool (the directory
#: fsyncs), each thread with its own profiler, enabled around each task
#: while profiling is on (``cProfile`` sees only the thread that enables
#: it). SIGUSR1 starts, SIGUSR2 stops and writes the merged statistics to
#: ``ASSOC_COST_PROFILE``.
PROFILED = """
import cProfile, os, pstats, signal, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from twisted.python.threadpool import ThreadPool
def new_profile():
    if os.environ.get("STORE_COST_TIMER") == "cpu":
        return cProfile.Profile(time.thread_time)
    return cProfile.Profile()
profiles = [new_profile()]
lock = threading.Lock()
local = threading.local()
on = False
def profiled(func):
    def task(*args, **kwargs):
        if not on:
            return func(*args, **kwargs)
        profile = getattr(local, "profile", None)
        if profile is None:
            profile = local.profile = new_profile()
            with lock:
                profiles.append(profile)
        profile.enable()
        try:
            return func(*args, **kwargs)
        finally:
            profile.disable()
    return task
call = ThreadPool.callInThreadWithCallback
def callInThreadWithCallback(self, onResult, func, *args, **kw):
    return call(self, onResult, profiled(func), *args, **kw)
ThreadPool.callInThreadWithCallback = callInThreadWithCallback
submit = ThreadPoolExecutor.submit
def submit_profiled(self, fn, /, *args, **kwargs):
    return submit(self, profiled(fn), *args, **kwargs)
ThreadPoolExecutor.submit = submit_profiled
def start(*_):
    global on
    on = True
    profiles[0].enable()
def stop(*_):
    global on
    on = False
    profiles[0].disable()
    with lock:
        for profile in profiles:
            profile.create_stats()
        pstats.Stats(*profiles).dump_stats(os.environ["ASSOC_COST_PROFILE"])
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv[0] = "dicomqr"
from dicomtwist.tap import run
run()
"""

#: The contexts proposed: the bulk load's files are CT images in Explicit
#: VR Little Endian.
CONTEXTS = [(data.CT_IMAGE_STORAGE, rawclient.EXPLICIT_VR_LE)]


class Load:
    """``instances`` split over ``associations`` associations, opened now,
    with every request's PDUs prepared."""

    def __init__(self, server: servers.Server, instances: list[rawclient.Instance],
                 associations: int) -> None:
        self.server = server
        self.count = len(instances)
        self.associations = [rawclient.StoreAssociation(server.port, server.ae_title, CONTEXTS)
                             for _ in range(associations)]
        self.requests = [[assoc.request(i) for i in instances[n::associations]]
                         for n, assoc in enumerate(self.associations)]
        self.failures: list[str] = []
        self.elapsed = 0.0

    def _send(self, assoc: rawclient.StoreAssociation, requests: list[bytes]) -> None:
        try:
            for request in requests:
                status = assoc.send(request)
                if status != 0:
                    self.failures.append(f"status {status:#06x}")
                    return
        except (OSError, rawclient.PeerError) as e:
            self.failures.append(str(e))

    def run(self) -> None:
        """Send every request, each association in its own thread."""
        threads = [threading.Thread(target=self._send, args=(assoc, requests))
                   for assoc, requests in zip(self.associations, self.requests)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.elapsed = time.perf_counter() - start
        if self.failures:
            raise SystemExit(f"{len(self.failures)} association(s) failed: {self.failures[:3]}\n"
                             + self.server.log_tail())

    def release(self) -> None:
        """Release every association."""
        for assoc in self.associations:
            assoc.release()


def ct_instances(directory: str, count: int) -> list[rawclient.Instance]:
    """``count`` new 0.5 MiB CT images (``run.py``'s C-STORE 0.5 MB files,
    :func:`benchmarks.data.write_ct_set`: new UIDs each call)."""
    paths, _ = data.write_ct_set(directory, count)
    return [rawclient.read_instance(path) for path in paths]


def small_instances(directory: str, first_study: int, count: int) -> list[rawclient.Instance]:
    """``count`` new small instances (whole studies of 20, the last cut)."""
    studies = -(-count // data.INSTANCES_PER_STUDY)
    written = data.write_small_set(directory, first_study, studies)
    return [rawclient.read_instance(path) for path in written.paths[:count]]


#: Functions whose own time is waiting, not working.
WAITS = ("<method 'poll' of 'select.epoll' objects>", "<built-in method posix.fsync>",
         "<method 'acquire' of '_thread.lock' objects>")


def waits(path: str, count: int) -> None:
    """The profiled time per instance without the waits in :data:`WAITS`."""
    import pstats

    stats = pstats.Stats(path)
    waited = sum(tt for (_f, _l, name), (_cc, _n, tt, _ct, _c) in stats.stats.items()
                 if name in WAITS)
    print(f"profiled without waits (epoll, fsync, locks): "
          f"{(stats.total_tt - waited) / count * 1e6:.0f} us per instance")


def per_thread(out: str, count: int) -> None:
    """Instructions per instance in each thread (callgrind's
    ``--separate-threads``: one output file per thread, ``-NN`` suffixed),
    and their total."""
    import glob


    total = 0
    rows = []
    for path in sorted(glob.glob(f"{out}.callgrind-*")):
        with open(path) as fp:
            summary = [line for line in fp if line.startswith(("summary:", "totals:"))]
        if not summary:
            continue
        instructions = int(summary[-1].split()[1])
        total += instructions
        rows.append((instructions, path))
    print(f"{total / count:,.0f} instructions per instance ({count} instances)")
    for instructions, path in sorted(rows, reverse=True):
        if instructions:
            print(f"{instructions / count:>12,.0f}  thread {path.rsplit('-', 1)[1]}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tool", choices=("cpu", "callgrind", "cprofile", "strace"))
    parser.add_argument("--count", type=int, default=2000, help="measured instances")
    parser.add_argument("--warmup", type=int, default=400, help="instances stored before")
    parser.add_argument("--associations", type=int, default=4,
                        help="associations storing at once (the bulk load's 4)")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument("--per-thread", action="store_true",
                        help="callgrind: also count each thread's instructions apart")
    parser.add_argument("--cpu-timer", action="store_true",
                        help="cprofile: time each thread's CPU (time.thread_time: the waits"
                             " drop out, the profiler's own cost grows) instead of wall time")
    parser.add_argument("--ours-src", default=ROOT, help="the dicomtwist tree to run")
    parser.add_argument("--work", default=None, help="work directory (default: temporary)")
    parser.add_argument("--size", choices=("small", "ct"), default="small",
                        help="small: the bulk load's 3 KB instances; ct: run.py's 0.5 MB"
                             " C-STORE instances (use a --count of a few hundred)")
    args = parser.parse_args(argv)

    servers.Ours.source = os.path.abspath(args.ours_src)
    work = args.work or tempfile.mkdtemp(prefix="store-cost-")
    os.makedirs(work, exist_ok=True)
    if args.size == "ct":
        warmup = ct_instances(os.path.join(work, "warmup"), args.warmup)
        instances = ct_instances(os.path.join(work, "measured"), args.count)
    else:
        warmup = small_instances(os.path.join(work, "warmup"), 0, args.warmup)
        first = -(-args.warmup // data.INSTANCES_PER_STUDY)
        instances = small_instances(os.path.join(work, "measured"), first, args.count)
    server = Measured(os.path.join(work, "ours"), servers.free_port())
    out = os.path.join(work, "out")
    instrument(server, args.tool, out)
    if args.tool == "callgrind" and args.per_thread:
        server.wrapper.insert(2, "--separate-threads=yes")
    if args.tool == "cprofile":
        server.launcher = PROFILED
        if args.cpu_timer:
            server.extra_env["STORE_COST_TIMER"] = "cpu"
    server.start()
    pid = server.process.pid
    try:
        load = Load(server, warmup, args.associations)
        load.run()
        load.release()
        # Long enough for the store's workers to end (``store.LINGER``):
        # those of the measured stores start under the profiler.
        time.sleep(1.0)
        load = Load(server, instances, args.associations)
        if args.tool == "cpu":
            user, system = cpu_per(pid, load.run, args.count)
            print(f"{args.count} instances in {load.elapsed:.2f} s ({args.count / load.elapsed:,.0f}"
                  f"/s, {args.associations} associations)")
            print(f"daemon CPU per instance: {user + system:.0f} us"
                  f" (user {user:.0f}, system {system:.0f})")
        else:
            measured(args.tool, pid, out, load.run)
        load.release()
    finally:
        stop(server)
    if args.tool == "callgrind" and args.per_thread:
        per_thread(out, args.count)
    else:
        report(args.tool, out, args.count, args.top, unit="instance")
    if args.tool == "cprofile":
        waits(f"{out}.prof", args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
