"""Start the archive as ``twistd -n dicomqr ARGS`` (or ``dicomqr ARGS`` with
``--console``) would, and once the reactor runs write the names in
``sys.modules`` (JSON), the resident set (KiB), the reactor's class, whether
libcrypto is mapped, where ``hashlib`` takes PBKDF2 from and the class of
pydicom's private dictionary (read or not) to OUT, then stop.  ``--reactor=NAME`` first in ARGS goes to twistd.

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


def libcrypto_mapped() -> bool:
    with open("/proc/self/maps") as fp:
        return "libcrypto" in fp.read()


def makeService(options, reactor=None):
    """The archive's service, with a report once it runs."""
    service = build(options, reactor)
    from twisted.internet import reactor as running

    def report() -> None:
        with open(out, "w") as fp:
            hashlib = sys.modules.get("hashlib")
            datadict = sys.modules.get("pydicom.datadict")
            json.dump({"modules": sorted(sys.modules), "rss_kib": rss_kib(),
                       "reactor": f"{type(running).__module__}.{type(running).__name__}",
                       "libcrypto": libcrypto_mapped(),
                       "pbkdf2": hashlib and hashlib.pbkdf2_hmac.__module__,
                       "private_dictionary": datadict
                       and type(datadict.private_dictionaries).__name__},
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
