"""Profile our daemon under one of the benchmark's loads, with py-spy.

Usage::

    pip install py-spy
    python benchmarks/hotspots.py store_1 --seconds 20
    python benchmarks/hotspots.py find_all --index 10000 --ours-commit HEAD

Starts dicomtwist alone (the same configuration as ``run.py``), prepares
what the load needs (for the C-FIND/C-MOVE/C-GET loads: ``--index`` small
instances and a 100-instance CT study, loaded before profiling starts),
attaches ``py-spy record`` to the daemon, repeats the load for
``--seconds``, and prints the hottest functions: *cumulative* (share of
samples with the function anywhere on the stack) and *self* (share with it
on top), separately for the reactor thread and the worker threads.  The
collapsed stacks are kept in ``OUT/profile-<load>.txt`` (default OUT:
``benchmarks/results/tmp``) (feed them to
flamegraph.pl or speedscope).

Loads: ``assoc`` (connect + C-ECHO + release, one client; ``assoc_4``: four
client processes), ``store_1``
(0.5 MB CT instances over one association), ``store_16`` (16 concurrent
associations), ``bulk`` (small instances over 4 associations),
``find_patientid``, ``find_all``, ``move``, ``get``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import data, rawclient, run, servers  # noqa: E402

LOADS = ("assoc", "assoc_4", "store_1", "store_16", "bulk", "find_patientid", "find_all", "move", "get")
#: Frames present in nearly every sample of a thread (the reactor loop) say nothing.
EVERYWHERE = 0.97
#: Dispatch wrappers (thread start, context, reactor loop): left out of the
#: cumulative list, which then names the code doing the work.
WRAPPERS = re.compile(r"\((threading\.py|twisted/_threads/|twisted/python/(context|log|"
                      r"threadpool)\.py|twisted/internet/(base|posixbase)\.py|<string>)|"
                      r"^run \(dicomtwist/tap\.py\)|^EPollReactor\.doPoll ")


def pyspy() -> str:
    """The py-spy executable."""
    path = shutil.which("py-spy")
    if not path:
        raise SystemExit("py-spy not found: pip install py-spy")
    return path


#: Leaf frames that mean "waiting", not working: epoll, an idle worker thread.
IDLE_LEAVES = ("EPollReactor.doPoll (", "Condition.wait (", "Event.wait (", "Queue.get (",
               "_Lock.acquire (", "lock.acquire (")


def _frame(frame: str) -> str:
    """``function (file)`` without the line number."""
    return re.sub(r":\d+\)$", ")", frame)


def summarize(path: str, top: int) -> str:
    """Hot functions per thread group from py-spy's raw (collapsed) output.

    Samples whose leaf frame is a wait (:data:`IDLE_LEAVES`) count as idle;
    the percentages are of the busy samples of each group (the reactor
    thread; the worker threads together).
    """
    cumulative: dict[str, collections.Counter] = {}
    selfs: dict[str, collections.Counter] = {}
    busy: collections.Counter = collections.Counter()
    idle: collections.Counter = collections.Counter()
    with open(path) as fp:
        for line in fp:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            # With --threads the first frame names the thread.
            group = "reactor thread" if "MainThread" in frames[0] else "worker threads"
            frames = [_frame(f) for f in frames[1:]]
            n = int(count)
            if not frames or frames[-1].startswith(IDLE_LEAVES):
                idle[group] += n
                continue
            busy[group] += n
            for name in dict.fromkeys(frames):
                cumulative.setdefault(group, collections.Counter())[name] += n
            selfs.setdefault(group, collections.Counter())[frames[-1]] += n
    out = []
    for group in sorted(busy, key=lambda g: -busy[g]):
        total = busy[group]
        out.append(f"## {group}: {total} busy samples, {idle[group]} idle"
                   f" ({100 * idle[group] / (total + idle[group]):.0f}% idle)")
        out.append("")
        out.append("cumulative % | function (file)")
        out.append("---:|---")
        shown = 0
        for name, n in cumulative[group].most_common():
            if n / total >= EVERYWHERE or WRAPPERS.search(name):
                continue
            out.append(f"{100 * n / total:.1f} | {name}")
            shown += 1
            if shown == top:
                break
        out.append("")
        out.append("self % | function (file)")
        out.append("---:|---")
        for name, n in selfs[group].most_common(top):
            out.append(f"{100 * n / total:.1f} | {name}")
        out.append("")
    return "\n".join(out)


class Driver:
    """Prepare and repeat one load against the daemon."""

    def __init__(self, bench: run.Bench, server: servers.Server, load: str, index: int) -> None:
        self.bench = bench
        self.server = server
        self.load = load
        self.index = index
        self.work = bench.work
        self.count = 0  # operations (associations, instances, queries) done

    def prepare(self) -> None:
        """Store what the load needs, before the profiler attaches."""
        self.next = 0
        if self.load in ("store_1", "store_16"):
            self.files, _ = data.write_ct_set(os.path.join(self.work, "ct"), 1280)
        elif self.load == "bulk":
            self.files = data.write_small_set(os.path.join(self.work, "small"), 0, 500).paths
        elif self.load.startswith("find") or self.load in ("move", "get"):
            studies = max(1, self.index // data.INSTANCES_PER_STUDY)
            small = data.write_small_set(os.path.join(self.work, "small"), 0, studies)
            self.bench.load(self.server, small.paths, 4)
            self.patient = small.patient_ids[len(small.patient_ids) // 2]
            paths, self.study = data.write_ct_set(os.path.join(self.work, "ct"), 100)
            self.bench.load(self.server, paths, 1)

    def take(self, count: int) -> list[str]:
        """The next ``count`` prepared files (new instances until they run out)."""
        if self.next + count > len(self.files):
            self.next = 0  # from here on, stores replace earlier copies
        files = self.files[self.next:self.next + count]
        self.next += count
        return files

    def once(self) -> None:
        """One round of the load."""
        b, s = self.bench, self.server
        if self.load == "assoc":
            done, failed, _ = rawclient.echo_loop(s.port, s.ae_title, 10**6, 1.0)
            self.count += done
        elif self.load == "assoc_4":
            futures = [b.pool.submit(rawclient.echo_loop, s.port, s.ae_title, 10**6, 1.0)
                       for _ in range(4)]
            self.count += sum(f.result()[0] for f in futures)
        elif self.load == "store_1":
            _, ok, _, _ = b.storescu(s, [self.take(64)])
            self.count += ok
        elif self.load == "store_16":
            files = self.take(256)
            _, ok, _, _ = b.storescu(s, [files[i::16] for i in range(16)])
            self.count += ok
        elif self.load == "bulk":
            files = self.take(400)
            _, ok, _, _ = b.storescu(s, [files[i::4] for i in range(4)])
            self.count += ok
        elif self.load == "find_patientid":
            b.findscu(s, "STUDY", [f"PatientID={self.patient}", *run.QR_KEYS_STUDY[:1],
                                   *run.QR_KEYS_STUDY[2:]])
            self.count += 1
        elif self.load == "find_all":
            b.findscu(s, "STUDY", list(run.QR_KEYS_STUDY))
            self.count += 1
        else:
            keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={self.study}"]
            if self.load == "move":
                cmd = [servers.dcmtk("movescu"), "-S", "-aet", "MOVESCU", "-aec", s.ae_title,
                       "-aem", servers.MOVE_DESTINATION, "127.0.0.1", str(s.port), *keys]
            else:
                cmd = [servers.dcmtk("getscu"), "-S", "--ignore", "-aet", "GETSCU",
                       "-aec", s.ae_title, "127.0.0.1", str(s.port), *keys]
            run.run_clients([cmd], 300, self.work)
            self.count += 100


def main(argv: list[str]) -> int:
    """Profile one load; print the hot spots."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("load", choices=LOADS)
    parser.add_argument("--summarize", metavar="RAW",
                        help="only print the summary of a saved profile-<load>.txt")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to profile")
    parser.add_argument("--index", type=int, default=10000,
                        help="small instances in the index for find/move/get (default 10000)")
    parser.add_argument("--top", type=int, default=15, help="functions to list")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "tmp"),
                        help="where profile-<load>.txt goes (default: benchmarks/results/tmp,"
                        " not committed)")
    parser.add_argument("--ours-src", metavar="DIR")
    parser.add_argument("--ours-commit", metavar="REV")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize, args.top))
        return 0
    spy = pyspy()
    work = tempfile.mkdtemp(prefix="dicomtwist-profile-",
                            dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    source = run.select_ours(args.ours_src, args.ours_commit, work)
    os.makedirs(args.out, exist_ok=True)
    raw = os.path.join(args.out, f"profile-{args.load}.txt")
    bench = run.Bench(run.SCALES["default"], ["ours"], work, run.Results(), "profile")
    try:
        bench.destination.start()
        bench.start(servers.ALL_MEASURES, "profile")
        server = bench.servers["ours"]
        driver = Driver(bench, server, args.load, args.index)
        run.log(f"preparing {args.load} (dicomtwist from {source})")
        driver.prepare()
        spy_proc = subprocess.Popen([spy, "record", "--pid", str(server.process.pid),
                                     "--rate", str(args.rate), "--format", "raw", "--threads",
                                     "--nonblocking", "--output", raw],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let py-spy attach
        run.log(f"profiling for {args.seconds:.0f} s")
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            driver.once()
        elapsed = time.monotonic() - start
        spy_proc.send_signal(signal.SIGINT)
        _, err = spy_proc.communicate(timeout=60)
        if not os.path.exists(raw):
            raise SystemExit(f"py-spy wrote nothing:\n{err.decode(errors='replace')}")
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"# {args.load}: {driver.count} operations in {elapsed:.1f} s"
          f" ({driver.count / elapsed:.1f}/s under the profiler)\n")
    print(summarize(raw, args.top))
    print(f"collapsed stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
