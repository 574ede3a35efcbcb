"""Conversions in worker processes: the pixel codecs off the daemon's GIL.

The codec libraries hold Python's global interpreter lock while they
encode or decode (measured: two JPEG-LS conversions in two threads take as
long as in one), so conversions in threads take turns with each other and
with the reactor.  :func:`transcode` runs :func:`dicomtwist.codec.transcode`
in a pool of worker processes instead (as many as cores, started on first
use with the ``forkserver`` method, never by forking the daemon with its
threads), and blocks the calling thread -- one of the archive's pixel
pool, which only waits -- until it is done.  Only paths cross the process
boundary; the files are written by the worker.

A worker that crashes (a codec library fault on a corrupt stream) breaks
only the conversion it ran: it raises :class:`~dicomtwist.codec.CodecError`,
and the next conversion gets a fresh pool.  The daemon keeps running.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from dicomtwist.codec.errors import CodecError
from dicomtwist.codec.transcode import transcode as _transcode

__all__ = ["shutdown", "transcode"]

_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None


def _pool() -> ProcessPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            context = multiprocessing.get_context("forkserver")
            _executor = ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                            mp_context=context)
        return _executor


def _forget(broken: ProcessPoolExecutor) -> None:
    global _executor
    with _lock:
        if _executor is broken:
            _executor = None
    broken.shutdown(wait=False, cancel_futures=True)


def transcode(source_path: str, target: str, target_path: str, *,
              allow_lossy: bool = False) -> None:
    """:func:`dicomtwist.codec.transcode` in a worker process; blocks.

    :raises CodecError: the conversion failed, or its worker died.
    """
    executor = _pool()
    try:
        future = executor.submit(_transcode, source_path, target, target_path,
                                 allow_lossy=allow_lossy)
        future.result()
    except BrokenProcessPool:
        _forget(executor)
        try:
            os.unlink(target_path)
        except OSError:
            pass
        raise CodecError(f"the codec process died converting to {target}") from None


def shutdown() -> None:
    """Stop the worker processes (at the daemon's stop)."""
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)
