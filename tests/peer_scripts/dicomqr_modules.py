"""Start the archive as ``twistd -n dicomqr ARGS`` (or ``dicomqr ARGS`` with
``--console``) would, and once the reactor runs write the names in
``sys.modules`` (JSON), the resident set (KiB) and the reactor's class to
OUT, then stop.  ``--reactor=NAME`` first in ARGS goes to twistd.

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
            json.dump({"modules": sorted(sys.modules), "rss_kib": rss_kib(),
                       "reactor": f"{type(running).__module__}.{type(running).__name__}"},
                      fp)
        running.stop()

    running.callWhenRunning(running.callLater, 0, report)
    return service


tap.makeService = makeService
if console:
    sys.argv = ["dicomqr", *args]
    tap.run()
else:
    from twisted.scripts.twistd import run

    chosen = args[:1] if args[:1] and args[0].startswith("--reactor=") else []
    sys.argv = ["twistd", "-n", "--pidfile=", *chosen, "dicomqr", *args[len(chosen):]]
    run()
