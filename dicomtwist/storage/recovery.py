"""Start-up recovery and ``--reindex``: make the index and the files agree.

After a crash (even ``kill -9`` mid-store) the instance directory may hold
temporary files of stores that were never answered, and -- if the process
died between the rename and the index commit -- a stored file whose row is
missing.  Recovery removes the former and indexes the latter, once its
data set is found well formed to the last byte (a damaged or truncated
file is reported, never indexed); rows whose file has gone are dropped.
Every instance that was answered with Success was durable on disk and in
the index before the answer, so nothing acknowledged is ever lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread

from dicomtwist import log as dlog
from dicomtwist.storage.files import is_valid_uid, temporary_files
from dicomtwist.storage.header import scan_file

_log = dlog.logger()


@dataclass
class Report:
    """What recovery did."""

    temporary_removed: int = 0
    rows_dropped: int = 0
    files_indexed: int = 0
    unreadable: list[str] = field(default_factory=list)


def _stored_files(root: str) -> dict[str, str]:
    """``{SOP Instance UID: file name}`` for every ``<uid>.dcm`` in ``root``."""
    files = {}
    for name in os.listdir(root):
        if name.endswith(".dcm") and is_valid_uid(name[:-4]):
            files[name[:-4]] = name
    return files


def _index_file(index: Any, root: str, name: str, report: Report) -> None:
    path = os.path.join(root, name)
    try:
        ds = dcmread(path, stop_before_pixels=True)
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        if str(ds.SOPInstanceUID) != name[:-4]:
            raise ValueError("SOP Instance UID differs from the file name")
        check_complete(path, transfer_syntax)
        index.add(ds, name, transfer_syntax, os.path.getsize(path))
    except Exception as e:  # a damaged file is reported, never fatal
        _log.warn("Cannot index {path}: {error}", path=path, error=str(e))
        report.unreadable.append(name)
    else:
        report.files_indexed += 1


def check_complete(path: str, transfer_syntax: str) -> None:
    """Check that a stored file's data set is well formed to its last byte
    (a store cut short leaves a truncated one).

    :raises ValueError: it is not.
    """
    try:
        scan_file(path, transfer_syntax, frozenset())
    except NotImplementedError:  # deflated, or no group length: pydicom reads all of it
        dcmread(path)
    except ValueError as e:
        raise ValueError(f"incomplete or malformed: {e}") from None


def _remove_temporary(root: str, report: Report) -> None:
    for path in temporary_files(root):
        try:
            os.unlink(path)
            report.temporary_removed += 1
        except OSError:
            pass


def recover(directory: str, index: Any) -> Report:
    """Remove leftover temporary files; index stored files the index lacks;
    drop rows whose file is missing."""
    root = os.path.realpath(directory)
    report = Report()
    _remove_temporary(root, report)
    files = _stored_files(root)
    indexed = {}
    for relative in index.paths():
        name = os.path.basename(relative)
        indexed[name[:-4] if name.endswith(".dcm") else name] = relative
    for uid in indexed.keys() - files.keys():
        index.remove(uid)
        report.rows_dropped += 1
    for uid in sorted(files.keys() - indexed.keys()):
        _index_file(index, root, files[uid], report)
    return report


def reindex(directory: str, index: Any) -> Report:
    """Rebuild the whole index from the stored files."""
    root = os.path.realpath(directory)
    report = Report()
    _remove_temporary(root, report)
    index.clear()
    with index.transaction():
        for uid, name in sorted(_stored_files(root).items()):
            _index_file(index, root, name, report)
    return report
