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
import threading
import time
from dataclasses import dataclass
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


class MemoryBudget:
    """Bytes that all :class:`SpoolSink` s together may hold in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) past the limit."""
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        """Return reserved bytes."""
        with self._lock:
            self.used -= size


@dataclass
class Spooled:
    """A complete data set from a :class:`SpoolSink`: either in memory
    (``parts``) or in a temporary file (``path``, ``header`` first).

    Call :meth:`release` once the memory may be reused: an in-memory
    spool holds ``size`` bytes of ``budget``.
    """

    header: bytes
    parts: list[memoryview] | None
    path: str | None
    size: int
    budget: MemoryBudget | None = None
    #: Seconds from the sink's first byte to its last (the metrics' and
    #: the store events' "receive" part).
    receive: float = 0.0

    def data(self) -> bytes:
        """The data set bytes (in-memory spool only)."""
        assert self.parts is not None
        return b"".join(self.parts)

    def release(self) -> None:
        """Drop the data and give its memory back to the budget."""
        if self.parts is not None and self.budget is not None:
            self.budget.give(self.size)
        self.parts = None

    def __del__(self) -> None:
        # A data set nobody handled (no handler, association gone) still
        # returns its share of the budget.
        self.release()


class SpoolSink:
    """Hold a data set in memory; past ``memory_limit`` bytes (or when the
    shared ``budget`` is spent) spill it into a :class:`TempFileSink`.

    Small data sets -- nearly all of them -- then cost no file system call
    on the reactor thread: whoever takes the :class:`Spooled` writes them
    out in one go.  The fragments are kept as the memoryviews received
    (no copy): they point into immutable ``bytes`` from the transport.
    """

    def __init__(self, directory: str, header: bytes = b"", prefix: str = ".incoming-",
                 memory_limit: int = 8 * 1024 * 1024,
                 budget: MemoryBudget | None = None) -> None:
        self._directory = directory
        self._header = header
        self._prefix = prefix
        self._limit = memory_limit
        self._budget = budget
        self._parts: list[memoryview] = []
        self._file: TempFileSink | None = None
        #: Bytes received; while not spilled, also the bytes held of ``budget``.
        self.size = 0
        self._started = time.monotonic()

    def write(self, data: memoryview) -> None:
        """Keep the fragment, or append it to the file once spilled."""
        if self._file is None:
            if self.size + len(data) <= self._limit and (
                    self._budget is None or self._budget.take(len(data))):
                self._parts.append(data)
                self.size += len(data)
                return
            self._spill()
            assert self._file is not None
        self._file.write(data)
        self.size += len(data)

    def _spill(self) -> None:
        self._file = TempFileSink(self._directory, self._header, prefix=self._prefix)
        try:
            for part in self._parts:
                self._file.write(part)
        finally:
            self._drop_parts()

    def _drop_parts(self) -> None:
        """Drop the fragments held in memory and give their bytes back."""
        if self._parts and self._budget is not None:
            self._budget.give(self.size)
        self._parts = []

    def close(self) -> Spooled:
        """The data set, in memory or in the flushed temporary file."""
        receive = time.monotonic() - self._started
        if self._file is not None:
            return Spooled(self._header, None, self._file.close(), self.size, receive=receive)
        spooled = Spooled(self._header, self._parts, None, self.size, self._budget, receive)
        self._parts = []
        return spooled

    def discard(self) -> None:
        """Drop the memory, or delete the file."""
        if self._file is None:
            self._drop_parts()
        else:
            self._file.discard()


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
