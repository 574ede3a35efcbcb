"""What one C-MOVE or C-GET sub-operation costs our daemon: CPU, instructions.

Usage::

    python benchmarks/retrieve_cost.py cpu --rounds 6
    python benchmarks/retrieve_cost.py cpu --ours-src /tree/a --ours-src /tree/b
    python benchmarks/retrieve_cost.py callgrind --kinds move --repeat 2
    python benchmarks/retrieve_cost.py cprofile --kinds get --repeat 5
    python benchmarks/retrieve_cost.py strace --kinds move --repeat 3

Starts ``dicomqr`` from each tree given (default: this one) with the
configuration of ``run.py``, and the C-MOVE destination of ``run.py`` (DCMTK
``storescp --ignore``); stores the study of ``run.py`` (``--instances`` CT
images of 0.5 MB, :func:`benchmarks.data.write_ct_set`) in each daemon;
warms each up with one C-MOVE and one C-GET; then retrieves the study with
the clients of ``run.py`` (:func:`benchmarks.run.retrieve_command`:
``movescu`` to the destination, ``getscu --ignore``) and prints the cost
of one sub-operation (one instance sent):

* ``cpu``: the daemon's CPU per sub-operation, user and system from
  ``/proc/PID/stat`` (clock ticks) and the run time of all its threads
  from ``/proc/PID/task/*/schedstat`` (nanoseconds); ``--rounds`` rounds,
  each doing ``--repeat`` C-MOVEs then ``--repeat`` C-GETs on every tree
  in turn (so trees alternate: the machine's load moves them alike), and
  the median and range of the rounds per tree. What the machine's load
  does not change much (the CPU, not the wall time, is counted), though
  it moves it some: compare trees within one run;
* ``callgrind``: instructions executed in the daemon (valgrind's
  callgrind, switched on for the measured retrievals only, the kernel not
  counted: deterministic), with the top C functions;
* ``cprofile``: Python's profiler in the daemon, by own time per
  sub-operation;
* ``strace``: the system calls the daemon makes per sub-operation;
* ``memory``: instead of the CT study, one instance of ``--large-mib``
  MiB of pixel data (:func:`benchmarks.stream_memory.write_instance`),
  retrieved once by each kind; prints the daemon's peak resident set
  (``VmHWM``) before and after: streaming keeps it where it was.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pydicom import dcmread  # noqa: E402

from benchmarks import assoc_cost, data, run, servers, stream_memory  # noqa: E402
from benchmarks.assoc_cost import Measured, cpu_ticks  # noqa: E402


def run_time_ns(pid: int) -> int:
    """The CPU time of all of a process's threads, in nanoseconds."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as fp:
                total += int(fp.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


class Tree:
    """One daemon under test, from one source tree, with the study stored."""

    def __init__(self, source: str, root: str, dest_port: int) -> None:
        self.source = source
        servers.Ours.source = source
        self.server = Measured(root, dest_port)

    def start(self) -> None:
        servers.Ours.source = self.source
        self.server.start()

    def retrieve(self, kind: str, study_uid: str, count: int, times: int, work: str) -> None:
        """``times`` retrievals of the study, one after another; each must
        complete every sub-operation."""
        for _ in range(times):
            cmd = run.retrieve_command(kind, self.server, study_uid)
            runs, _ = run.run_clients([cmd], 600.0, work)
            done = run.retrieved(kind, runs[0].output, count)
            if done != count:
                raise SystemExit(f"{kind}: {done}/{count} sub-operations\n{runs[0].output[-2000:]}"
                                 f"\n{self.server.log_tail()}")


def store_study(tree: Tree, paths: list[str], work: str) -> None:
    """Store the study with DCMTK ``storescu`` on one association."""
    cmd = [servers.dcmtk("storescu"), "-nh", "-aet", "STORESCU", "-aec", tree.server.ae_title,
           "127.0.0.1", str(tree.server.port), *paths]
    runs, _ = run.run_clients([cmd], 600.0, work)
    if runs[0].returncode != 0:
        raise SystemExit(f"storing the study failed:\n{runs[0].output[-2000:]}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tool", choices=("cpu", "callgrind", "cprofile", "strace", "memory"))
    parser.add_argument("--ours-src", action="append", default=None,
                        help="a dicomtwist tree to run (repeat to compare trees; default: this one)")
    parser.add_argument("--kinds", default="move,get", help="move, get or both")
    parser.add_argument("--instances", type=int, default=100, help="instances in the study")
    parser.add_argument("--rounds", type=int, default=5, help="cpu: rounds over the trees")
    parser.add_argument("--repeat", type=int, default=5,
                        help="retrievals of each kind per round (per measurement)")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument("--large-mib", type=int, default=300, help="memory: the instance's size")
    parser.add_argument("--work", default=None, help="work directory (default: temporary)")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    sources = [os.path.abspath(s) for s in (args.ours_src or [ROOT])]
    if args.tool not in ("cpu", "memory") and len(sources) > 1:
        parser.error(f"{args.tool} measures one tree at a time")

    work = args.work or tempfile.mkdtemp(prefix="retrieve-cost-")
    os.makedirs(work, exist_ok=True)
    destination = servers.Destination(os.path.join(work, "destination"))
    destination.start()
    if args.tool == "memory":
        path = os.path.join(work, "large.dcm")
        stream_memory.write_instance(path, args.large_mib)
        paths, study_uid = [path], dcmread(path, stop_before_pixels=True).StudyInstanceUID
        args.instances = 1
    else:
        paths, study_uid = data.write_ct_set(os.path.join(work, "ct-study"), args.instances)
    trees = [Tree(source, os.path.join(work, f"ours-{i}"), destination.port)
             for i, source in enumerate(sources)]
    out = os.path.join(work, "out")
    assoc_cost.instrument(trees[0].server, args.tool, out)
    measured = len(kinds) * args.repeat * args.instances
    try:
        for tree in trees:
            tree.start()
            store_study(tree, paths, work)
            if args.tool == "memory":
                continue
            for kind in kinds:
                tree.retrieve(kind, study_uid, args.instances, 1, work)
        if args.tool == "memory":
            for tree in trees:
                before = servers.status_kib(tree.server.process.pid)["VmHWM"]
                for kind in kinds:
                    tree.retrieve(kind, study_uid, 1, 1, work)
                    after = servers.status_kib(tree.server.process.pid)["VmHWM"]
                    print(f"{tree.source} {kind} of {args.large_mib} MiB: peak resident"
                          f" {before / 1024:,.1f} -> {after / 1024:,.1f} MiB")
                    before = after
            return 0
        if args.tool == "cpu":
            cpu_rounds(trees, kinds, study_uid, args, work)
            return 0
        tree = trees[0]
        pid = tree.server.process.pid

        def run() -> None:
            for kind in kinds:
                tree.retrieve(kind, study_uid, args.instances, args.repeat, work)

        assoc_cost.measured(args.tool, pid, out, run)
    finally:
        for tree in trees:
            assoc_cost.stop(tree.server)
        destination.stop()
    assoc_cost.report(args.tool, out, measured, args.top, "sub-operation")
    return 0


def cpu_rounds(trees: list[Tree], kinds: list[str], study_uid: str,
               args: argparse.Namespace, work: str) -> None:
    """Alternate the trees for ``args.rounds`` rounds; print the CPU per
    sub-operation of each tree and kind (median and range of the rounds)."""
    tick = os.sysconf("SC_CLK_TCK")
    per = args.repeat * args.instances
    # (tree, kind) -> [(run time us, user us, system us, wall s)] per round
    results: dict[tuple[int, str], list[tuple[float, float, float, float]]] = {}
    for number in range(args.rounds):
        for i, tree in enumerate(trees):
            pid = tree.server.process.pid
            for kind in kinds:
                ticks, ns = cpu_ticks(pid), run_time_ns(pid)
                start = time.perf_counter()
                tree.retrieve(kind, study_uid, args.instances, args.repeat, work)
                wall = time.perf_counter() - start
                ticks_after, ns_after = cpu_ticks(pid), run_time_ns(pid)
                row = ((ns_after - ns) / 1e3 / per,
                       (ticks_after[0] - ticks[0]) / tick * 1e6 / per,
                       (ticks_after[1] - ticks[1]) / tick * 1e6 / per,
                       per / wall)
                results.setdefault((i, kind), []).append(row)
                run.log(f"round {number + 1}, tree {i} {kind}: {row[0]:.0f} us CPU"
                        f" (user {row[1]:.0f}, system {row[2]:.0f}), {row[3]:,.0f} inst/s")
    print(f"daemon CPU per sub-operation: medians of {args.rounds} rounds"
          f" of {args.repeat} retrievals of {args.instances} instances (range)")
    for i, tree in enumerate(trees):
        for kind in kinds:
            rows = results[(i, kind)]
            cols = list(zip(*rows))

            def show(values: tuple[float, ...], fmt: str = ",.0f") -> str:
                return (f"{statistics.median(values):{fmt}}"
                        f" ({min(values):{fmt}}-{max(values):{fmt}})")
            print(f"{tree.source} {kind}: {show(cols[0])} us (user {show(cols[1])},"
                  f" system {show(cols[2])}); {show(cols[3])} inst/s (wall, not quiet)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
