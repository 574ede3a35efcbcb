"""Reassembly of DIMSE messages from P-DATA-TF PDVs (PS3.7 8.1, PS3.8 Annex E).

A message is a command set, fragmented into command PDVs, optionally
followed by a data set in data PDVs on the same presentation context.  The
command set is small and is joined in memory (bounded); the data set goes
fragment by fragment into a *sink* chosen once the command is known, so a
C-STORE data set can stream to a file and never be held whole in memory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Mapping, Protocol

from dicomtwist.acse import PresentationContext
from dicomtwist.dimse.codec import COMMAND, LAST_FRAGMENT, decode_command
from dicomtwist.dimse.messages import CStoreRQ, Message
from dicomtwist.errors import DIMSEDecodeError

#: The largest command set we accept: real ones are a few hundred bytes.
MAX_COMMAND_LENGTH = 64 * 1024
#: The largest identifier (C-FIND/C-MOVE/C-GET, N-service data sets) we
#: accept: real ones are a few kilobytes.
MAX_IDENTIFIER_LENGTH = 1024 * 1024
#: The largest C-STORE data set held in memory by the default sink (a
#: requestor's C-GET without a file sink); archives stream to files instead.
MAX_MEMORY_DATA_SET = 1024 * 1024 * 1024


class DataSink(Protocol):
    """Where the fragments of one incoming data set go."""

    def write(self, data: memoryview) -> None:
        """Take the next fragment; may raise to refuse it."""

    def close(self) -> object:
        """The data set is complete; return what the handler receives."""

    def discard(self) -> None:
        """The data set will never complete; release everything."""


class MemorySink:
    """Collect a data set in memory, up to a limit."""

    def __init__(self, limit: int = MAX_MEMORY_DATA_SET) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit

    def write(self, data: memoryview) -> None:
        """Keep a copy of the fragment.

        :raises DIMSEDecodeError: past the size limit.
        """
        self._size += len(data)
        if self._size > self._limit:
            raise DIMSEDecodeError(f"data set larger than {self._limit} bytes")
        self._parts.append(bytes(data))

    def close(self) -> bytes:
        """Return the whole data set."""
        data = b"".join(self._parts)
        self._parts = []
        return data

    def discard(self) -> None:
        """Drop what was collected."""
        self._parts = []


class TempFileSink:
    """Stream a data set into a temporary file in ``directory``.

    ``header`` (e.g. a Part 10 preamble and file meta group) is written
    first.  ``close`` flushes and returns the path; the caller fsyncs,
    renames or deletes it.  ``discard`` deletes the file.
    """

    def __init__(self, directory: str, header: bytes = b"", prefix: str = ".incoming-") -> None:
        fd, self.path = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".part")
        self._file = os.fdopen(fd, "wb", buffering=256 * 1024)
        self.size = 0
        if header:
            self._file.write(header)

    def write(self, data: memoryview) -> None:
        """Append the fragment to the file."""
        self._file.write(data)
        self.size += len(data)

    def close(self) -> str:
        """Flush and close the file; return its path."""
        self._file.close()
        return self.path

    def discard(self) -> None:
        """Close and delete the file."""
        try:
            self._file.close()
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


SinkFactory = Callable[[Message, PresentationContext], DataSink]


def memory_sink(message: Message, context: PresentationContext) -> DataSink:
    """The default sink factory: a bounded in-memory buffer (small for
    identifiers, large for C-STORE data sets)."""
    if isinstance(message, CStoreRQ):
        return MemorySink(MAX_MEMORY_DATA_SET)
    return MemorySink(MAX_IDENTIFIER_LENGTH)


class MessageAssembler:
    """Turn a stream of PDVs into complete DIMSE messages.

    :param contexts: the accepted presentation contexts by ID.
    :param sink_for: chooses the sink for a message's data set.
    """

    def __init__(self, contexts: Mapping[int, PresentationContext],
                 sink_for: SinkFactory = memory_sink) -> None:
        self._contexts = contexts
        self._sink_for = sink_for
        self._command: list[bytes] = []
        self._command_size = 0
        self._context: PresentationContext | None = None
        self._message: Message | None = None
        self._sink: DataSink | None = None

    def feed(self, context_id: int, control: int,
             data: memoryview) -> tuple[Message, PresentationContext, object] | None:
        """Take one PDV; return ``(message, context, data)`` when complete.

        ``data`` is None for a message without a data set, otherwise what
        the sink's ``close`` returned.

        :raises DIMSEDecodeError: on a PDV that breaks PS3.7/PS3.8 rules:
            an unaccepted context, a context change inside a message, data
            before the command is complete, an oversized or undecodable
            command set.
        """
        context = self._contexts.get(context_id)
        if context is None:
            raise DIMSEDecodeError(f"PDV on presentation context {context_id}, not accepted")
        if self._context is not None and context is not self._context:
            raise DIMSEDecodeError(
                f"PDV on context {context_id} inside a message on context"
                f" {self._context.context_id}")
        if control & COMMAND:
            if self._message is not None:
                raise DIMSEDecodeError("command fragment while a data set was expected")
            self._context = context
            self._command_size += len(data)
            if self._command_size > MAX_COMMAND_LENGTH:
                raise DIMSEDecodeError(f"command set larger than {MAX_COMMAND_LENGTH} bytes")
            self._command.append(bytes(data))
            if not control & LAST_FRAGMENT:
                return None
            raw = b"".join(self._command)
            self._command = []
            self._command_size = 0
            message, has_dataset = decode_command(raw)
            if not has_dataset:
                self._context = None
                return message, context, None
            self._message = message
            self._sink = self._sink_for(message, context)
            return None
        if self._message is None or self._sink is None:
            raise DIMSEDecodeError("data set fragment without a command set")
        self._sink.write(data)
        if not control & LAST_FRAGMENT:
            return None
        message, sink = self._message, self._sink
        self._message = self._sink = self._context = None
        return message, context, sink.close()

    def discard(self) -> None:
        """Release a partly received data set (the association ended)."""
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.discard()
        self._message = self._context = None
        self._command = []
