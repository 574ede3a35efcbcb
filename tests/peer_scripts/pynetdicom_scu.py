"""A pynetdicom requestor for dicomtwist's interoperability tests.

Associates with ``host:port``, sends one C-ECHO and a C-STORE of each file,
releases, and prints one JSON object on stdout::

    {"associated": true, "echo": 0, "store": [0, 0], "max_pdu": 16382}

Run as a child process so pynetdicom's threads never meet trial's reactor.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification


def main(argv: list[str]) -> int:
    """Parse arguments, talk to the acceptor, print the outcome."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("files", nargs="*")
    parser.add_argument("--called", default="ANY-SCP")
    parser.add_argument("--calling", default="PYNETSCU")
    parser.add_argument("--max-pdu", type=int, default=16382)
    args = parser.parse_args(argv)

    ae = AE(ae_title=args.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(Verification)
    headers = [dcmread(path, stop_before_pixels=True) for path in args.files]
    for sop_class, syntax in sorted({(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID))
                                     for h in headers}):
        ae.add_requested_context(sop_class, [syntax])

    result: dict = {"associated": False, "echo": None, "store": []}
    assoc = ae.associate(args.host, args.port, ae_title=args.called, max_pdu=args.max_pdu)
    if assoc.is_established:
        result["associated"] = True
        result["max_pdu"] = assoc.acceptor.maximum_length
        status = assoc.send_c_echo()
        result["echo"] = int(status.Status) if "Status" in status else None
        for path in args.files:
            status = assoc.send_c_store(path)
            result["store"].append(int(status.Status) if "Status" in status else None)
        assoc.release()
    print(json.dumps(result), flush=True)
    return 0 if result["associated"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
