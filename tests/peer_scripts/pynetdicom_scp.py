"""A pynetdicom acceptor (Verification and Storage SCP) for interop tests.

Listens on 127.0.0.1 (port 0 = any free port), prints ``LISTENING <port>``
once it accepts connections, writes every received instance as a Part 10
file ``<SOPInstanceUID>.dcm`` in the output directory before answering
Success, and stops when its stdin is closed.  With ``--hold PREFIX``, the
n-th C-STORE (from 1) prints ``HOLDING <n>`` and is answered only once a
file ``<PREFIX><n>`` exists (a test's way to keep a sub-operation going).

Run as a child process so pynetdicom's threads never meet trial's reactor.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def main(argv: list[str]) -> int:
    """Serve until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ae-title", default="PYNETSCP")
    parser.add_argument("--max-pdu", type=int, default=16382)
    parser.add_argument("--hold", default=None)
    args = parser.parse_args(argv)
    stores = itertools.count(1)

    def on_echo(event) -> int:
        return 0x0000

    def on_store(event) -> int:
        if args.hold is not None:
            number = next(stores)
            print(f"HOLDING {number}", flush=True)
            deadline = time.monotonic() + 60
            while not os.path.exists(f"{args.hold}{number}") and time.monotonic() < deadline:
                time.sleep(0.02)
        ds = event.dataset
        ds.file_meta = event.file_meta
        name = f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(os.path.join(args.output, name), enforce_file_format=True)
        return 0x0000

    ae = AE(ae_title=args.ae_title)
    ae.maximum_pdu_size = args.max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_supported_context(Verification)
    for sop_class in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE):
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", args.port), block=False,
                             evt_handlers=[(evt.EVT_C_ECHO, on_echo),
                                           (evt.EVT_C_STORE, on_store)])
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        sys.stdin.read()
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
