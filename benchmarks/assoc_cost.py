"""What one association costs our daemon: CPU, instructions, system calls.

Usage::

    python benchmarks/assoc_cost.py cpu --count 3000
    python benchmarks/assoc_cost.py callgrind --count 500
    python benchmarks/assoc_cost.py cprofile --count 3000 --top 40
    python benchmarks/assoc_cost.py strace --count 1000
    python benchmarks/assoc_cost.py cpu --ours-src /some/tree   # another tree
    python benchmarks/assoc_cost.py cpu --server orthanc        # a peer, for comparison

Starts ``dicomqr`` from this tree (or ``--ours-src``) alone, with the
configuration of ``run.py`` (sqlite: a C-ECHO touches no index), warms it
up with a few hundred associations, then measures ``--count`` more made
one after another by :func:`benchmarks.rawclient.echo_loop` (connect,
A-ASSOCIATE-RQ, C-ECHO-RQ, A-RELEASE-RQ, close), and prints the cost of
one association:

* ``cpu``: the daemon's user and system CPU (``/proc/PID/stat``), per
  association; what the machine's load does not change much, but it does
  move it (use the median of a few runs);
* ``callgrind``: instructions executed in the daemon process (valgrind's
  callgrind, instrumentation switched on for the measured associations
  only), per association: deterministic, the kernel not counted; the
  C functions of the interpreter and of the extension modules, with
  ``--top``;
* ``cprofile``: Python's profiler in the daemon (started and stopped by
  signals around the measured associations): the Python functions, by
  their own time and by calls per association;
* ``strace``: the system calls the daemon makes, per association.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import rawclient, servers  # noqa: E402

#: The daemon's launcher under cProfile: SIGUSR1 starts the profiler,
#: SIGUSR2 stops it and writes the statistics to the file named in
#: ``ASSOC_COST_PROFILE``.
PROFILED = """
import cProfile, os, signal, sys
profile = cProfile.Profile()
def start(*_):
    profile.enable()
def stop(*_):
    profile.disable()
    profile.dump_stats(os.environ["ASSOC_COST_PROFILE"])
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv[0] = "dicomqr"
from dicomtwist.tap import run
run()
"""


class Measured(servers.Ours):
    """Our daemon, its command behind a wrapper (valgrind) or launcher."""

    name = "ours"
    wrapper: list[str] = []
    launcher: str | None = None

    def command(self) -> list[str]:
        command = super().command()
        if self.launcher is not None:
            command[2] = self.launcher
        return self.wrapper + command

    def env(self) -> dict[str, str]:
        env = dict(super().env(), PYTHONHASHSEED="0")
        env.update(getattr(self, "extra_env", {}))
        return env

    def wait_ready(self) -> None:
        servers.wait_for_port(self.port, self.process, timeout=600.0)


def instrument(server: Measured, tool: str, out: str) -> None:
    """Before the start: run ``server`` under callgrind (instrumentation
    off) or with the profiling launcher, as ``tool`` needs."""
    if tool == "callgrind":
        server.wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                          f"--callgrind-out-file={out}.callgrind"]
    elif tool == "cprofile":
        server.launcher = PROFILED
        server.extra_env = {"ASSOC_COST_PROFILE": f"{out}.prof"}


def measured(tool: str, pid: int, out: str, run: Callable[[], object]) -> None:
    """Call ``run()`` with ``tool`` measuring the daemon ``pid`` around it
    (callgrind's instrumentation, the profiler, strace): its output goes to
    ``out`` + ``.callgrind``/``.prof``/``.strace``."""
    tracer = None
    if tool == "callgrind":
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True,
                       capture_output=True)
    elif tool == "cprofile":
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.5)
    elif tool == "strace":
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", f"{out}.strace",
                                   "-p", str(pid)], stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    run()
    if tool == "callgrind":
        subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True,
                       capture_output=True)
    elif tool == "cprofile":
        os.kill(pid, signal.SIGUSR2)
        time.sleep(2.0)
    elif tracer is not None:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(60)


def report(tool: str, out: str, count: int, top: int, unit: str = "association") -> None:
    """Print what ``tool`` measured, per ``unit``."""
    if tool == "callgrind":
        report_callgrind(f"{out}.callgrind", count, top, unit)
    elif tool == "cprofile":
        report_cprofile(f"{out}.prof", count, top, unit)
    elif tool == "strace":
        report_strace(f"{out}.strace", count, unit)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """User and system CPU of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as fp:
        fields = fp.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_per(pid: int, run: Callable[[], object], count: int) -> tuple[float, float]:
    """Call ``run()``; the user and system CPU of process ``pid`` meanwhile,
    in microseconds per one of its ``count`` units."""
    before = cpu_ticks(pid)
    run()
    after = cpu_ticks(pid)
    scale = 1e6 / os.sysconf("SC_CLK_TCK") / count
    return (after[0] - before[0]) * scale, (after[1] - before[1]) * scale


def loop(server: servers.Server, count: int) -> float:
    """``count`` associations, one after another; their seconds."""
    done, failed, elapsed = rawclient.echo_loop(server.port, server.ae_title, count, 600.0)
    if failed or done != count:
        raise SystemExit(f"{failed} association(s) failed, {done} of {count} done:\n"
                         + server.log_tail())
    return elapsed


def stop(server: servers.Server, timeout: float = 300.0) -> None:
    """SIGTERM the daemon and wait (valgrind writes its output at exit)."""
    process = server.process
    if process is None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    server.process = None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tool", choices=("cpu", "callgrind", "cprofile", "strace"))
    parser.add_argument("--count", type=int, default=2000, help="measured associations")
    parser.add_argument("--warmup", type=int, default=300, help="associations before")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument("--ours-src", default=ROOT, help="the dicomtwist tree to run")
    parser.add_argument("--work", default=None, help="work directory (default: temporary)")
    parser.add_argument("--server", default="ours", choices=sorted(servers.SERVERS),
                        help="measure this server instead of ours (cpu and strace only;"
                             " configured as run.py configures it)")
    args = parser.parse_args(argv)
    if args.server != "ours" and args.tool not in ("cpu", "strace"):
        parser.error(f"--server {args.server}: only with cpu or strace")

    servers.Ours.source = os.path.abspath(args.ours_src)
    work = args.work or tempfile.mkdtemp(prefix="assoc-cost-")
    os.makedirs(work, exist_ok=True)
    if args.server == "ours":
        server = Measured(os.path.join(work, "ours"), servers.free_port())
    else:
        server = servers.SERVERS[args.server](os.path.join(work, args.server), servers.free_port())
    out = os.path.join(work, "out")
    instrument(server, args.tool, out)
    server.start()
    pid = server.process.pid
    try:
        loop(server, args.warmup)
        if args.tool == "cpu":
            timed: list[float] = []
            user, system = cpu_per(pid, lambda: timed.append(loop(server, args.count)),
                                   args.count)
            elapsed = timed[0]
            print(f"{args.count} associations in {elapsed:.2f} s"
                  f" ({args.count / elapsed:,.0f}/s, one client)")
            print(f"daemon CPU per association: {user + system:.0f} us"
                  f" (user {user:.0f}, system {system:.0f})")
        else:
            measured(args.tool, pid, out, lambda: loop(server, args.count))
    finally:
        stop(server)
    report(args.tool, out, args.count, args.top)
    return 0


def report_callgrind(path: str, count: int, top: int, unit: str = "association") -> None:
    """Instructions per ``unit``, and the top C functions by self cost."""
    annotate = subprocess.run(["callgrind_annotate", "--threshold=100", path],
                              capture_output=True, text=True, check=True).stdout
    total = None
    for line in annotate.splitlines():
        match = re.match(r"\s*([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", line)
        if match:
            total = int(match.group(1).replace(",", ""))
    if total is None:
        raise SystemExit(f"no totals in {path}")
    print(f"{total / count:,.0f} instructions per {unit} ({count} {unit}s)")
    print(f"(output: {path})")
    shown = 0
    for line in annotate.splitlines():
        match = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(\S.*)", line)
        if match and "PROGRAM TOTALS" not in line:
            ir = int(match.group(1).replace(",", ""))
            print(f"{ir / count:>10,.0f} {match.group(2):>5}%  {match.group(3)[:110]}")
            shown += 1
            if shown >= top:
                break


def report_cprofile(path: str, count: int, top: int, unit: str = "association") -> None:
    """Python functions by their own time, per ``unit``."""
    stats = pstats.Stats(path)
    total = stats.total_tt
    print(f"profiled: {total / count * 1e6:.0f} us per {unit} (with the profiler's"
          f" overhead), {count} {unit}s; {path}")
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)
    print(f"{'self us':>8} {'cum us':>8} {'calls':>7}  function")
    for (filename, line, name), (_cc, calls, tt, ct, _callers) in rows[:top]:
        where = filename.replace(ROOT + "/", "").split("site-packages/")[-1]
        print(f"{tt / count * 1e6:8.2f} {ct / count * 1e6:8.2f} {calls / count:7.2f}"
              f"  {name} ({where}:{line})")


def report_strace(path: str, count: int, unit: str = "association") -> None:
    """System calls per ``unit``."""
    with open(path) as fp:
        text = fp.read()
    print(f"system calls per {unit} ({count} {unit}s):")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls = int(parts[3])
            print(f"{calls / count:8.2f}  {parts[-1]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
