"""C-FIND answers told to the event bus: one
:class:`~dicomtwist.events.QueryPerformed` per query, whichever service
(Query/Retrieve or Modality Worklist) answered it."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

from dicomtwist import events
from dicomtwist.errors import DIMSEServiceError
from dicomtwist.status import Status

__all__ = ["published_find"]


async def published_find(request: Any, answers: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Pass ``answers`` through, counting them; when they end (or fail),
    publish the query with its final status and duration."""
    matches = 0
    status: int = Status.SUCCESS
    try:
        async for response in answers:
            matches += 1
            yield response
    except DIMSEServiceError as e:
        status = e.status
        raise
    except Exception:
        status = Status.UNABLE_TO_PROCESS
        raise
    finally:
        if request.cancelled and status == Status.SUCCESS:
            status = Status.CANCEL
        assoc = request.association
        level = ""
        try:
            level = str(request.dataset().get("QueryRetrieveLevel", ""))
        except Exception:
            pass  # an undecodable identifier was answered with its failure
        data = request.data
        events.bus.publish(events.QueryPerformed(
            "dimse", assoc.log_fields.get("peer_host", ""), assoc.peer_ae_title,
            request.message.affected_sop_class_uid, level,
            bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else b"",
            matches, int(status), time.monotonic() - request.received,
            request.context.transfer_syntax, assoc.association_id))
