"""A pynetdicom Query/Retrieve requestor for dicomtwist's end-to-end tests.

Associates with ``host:port``, sends a C-ECHO, a Study Root C-FIND at STUDY
level for ``--patient-id``, then a Study Root C-GET of ``--get-study``
(taking the SCP role for the Storage SOP classes given with ``--storage``),
writing every instance it receives to ``--output`` as a Part 10 file.
Releases and prints one JSON object on stdout::

    {"associated": true, "echo": 0,
     "find": {"statuses": [65280, 0], "studies": [["1.2.3", "PID"]]},
     "get": {"statuses": [65280, 0], "completed": 1, "failed": 0},
     "received": ["1.2.3.4"]}

Run as a child process so pynetdicom's threads never meet trial's reactor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)


def main(argv: list[str]) -> int:
    """Parse arguments, talk to the archive, print the outcome."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--called", default="ANY-SCP")
    parser.add_argument("--calling", default="PYNETQR")
    parser.add_argument("--patient-id", default="")
    parser.add_argument("--get-study", required=True)
    parser.add_argument("--storage", action="append", default=[])
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    received: list[str] = []

    def on_store(event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        ds.save_as(os.path.join(args.output, uid + ".dcm"), enforce_file_format=True)
        received.append(uid)
        return 0x0000

    ae = AE(ae_title=args.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in args.storage:
        ae.add_requested_context(sop_class)
    roles = [build_role(sop_class, scp_role=True) for sop_class in args.storage]

    result: dict = {"associated": False}
    assoc = ae.associate(args.host, args.port, ae_title=args.called, ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if assoc.is_established:
        result["associated"] = True
        status = assoc.send_c_echo()
        result["echo"] = int(status.Status) if "Status" in status else None

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = args.patient_id
        query.StudyInstanceUID = ""
        find = {"statuses": [], "studies": []}
        for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind):
            find["statuses"].append(int(status.Status) if "Status" in status else None)
            if identifier is not None and status.Status in (0xFF00, 0xFF01):
                find["studies"].append([str(identifier.StudyInstanceUID),
                                        str(identifier.PatientID)])
        result["find"] = find

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = args.get_study
        get = {"statuses": []}
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            get["statuses"].append(int(status.Status) if "Status" in status else None)
            if "NumberOfCompletedSuboperations" in status:
                get["completed"] = int(status.NumberOfCompletedSuboperations)
                get["failed"] = int(status.get("NumberOfFailedSuboperations", 0))
        result["get"] = get
        result["received"] = received
        assoc.release()
    print(json.dumps(result), flush=True)
    return 0 if result["associated"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
