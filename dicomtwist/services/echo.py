"""The Verification service (PS3.4 Annex A): C-ECHO SCP."""

from __future__ import annotations

from dicomtwist.association import ServiceRequest
from dicomtwist.status import Status

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

#: Bound once: reading a member from its IntEnum class costs a slot
#: wrapper's call on Python 3.11 (see :mod:`dicomtwist.ul.fsm`).
_SUCCESS = Status.SUCCESS


def handle_echo(request: ServiceRequest) -> int:
    """Answer every C-ECHO-RQ with Success (PS3.4 A.4)."""
    return _SUCCESS
