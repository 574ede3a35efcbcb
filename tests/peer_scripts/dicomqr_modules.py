"""Start the archive as ``twistd -n dicomqr ARGS`` (or ``dicomqr ARGS`` with
``--console``) would, and once the reactor runs write the names in
``sys.modules`` (JSON) and the resident set (KiB) to OUT, then stop.

Usage: ``dicomqr_modules.py OUT [--console] ARGS...``
"""

import json
import sys

import dicomtwist.tap as tap

out = sys.argv[1]
console = sys.argv[2:3] == ["--console"]
args = sys.argv[3:] if console else sys.argv[2:]
build = tap.makeService


def rss_kib() -> int:
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def makeService(options, reactor=None):
    """The archive's service, with a report once it runs."""
    service = build(options, reactor)
    from twisted.internet import reactor as running

    def report() -> None:
        with open(out, "w") as fp:
            json.dump({"modules": sorted(sys.modules), "rss_kib": rss_kib()}, fp)
        running.stop()

    running.callWhenRunning(running.callLater, 0, report)
    return service


tap.makeService = makeService
if console:
    sys.argv = ["dicomqr", *args]
    tap.run()
else:
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "-n", "--pidfile=", "dicomqr", *args]
    run()
