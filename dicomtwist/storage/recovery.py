"""Start-up recovery and ``--reindex``: make the index and the files agree.

After a crash (even ``kill -9`` mid-store) the instance directory may hold
temporary files of stores that were never answered, and -- if the process
died between the rename and the index commit -- a stored file whose row is
missing.  Recovery removes the former and indexes the latter, once its
data set is found well formed to the last byte (a damaged or truncated
file is reported, never indexed); rows whose file has gone are dropped.
Every instance that was answered with Success was durable on disk and in
the index before the answer, so nothing acknowledged is ever lost.

Files are found in both layouts (:func:`dicomtwist.storage.files.stored_instances`:
the nested ``ab/cd/<uid>.dcm`` and the earlier flat ``<uid>.dcm``).  When an
instance has both, the nested one is the newer (only the flat layout's
files predate it): it is indexed, and the flat copy it replaced removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread

from dicomtwist import log as dlog
from dicomtwist.storage.files import stored_instances, temporary_files, uid_of
from dicomtwist.storage.header import scan_file

_log = dlog.logger()


@dataclass
class Report:
    """What recovery did."""

    temporary_removed: int = 0
    rows_dropped: int = 0
    files_indexed: int = 0
    #: Flat-layout files removed because the instance was stored again
    #: (nested) and that copy is indexed.
    superseded_removed: int = 0
    unreadable: list[str] = field(default_factory=list)


def _stored_files(root: str) -> dict[str, list[str]]:
    """``{SOP Instance UID: [relative path, ...]}`` of every instance file
    in ``root``, the nested one first."""
    files: dict[str, list[str]] = {}
    for uid, relative in stored_instances(root):
        found = files.setdefault(uid, [])
        if "/" in relative:
            found.insert(0, relative)
        else:
            found.append(relative)
    return files


def _index_file(index: Any, root: str, relative: str, report: Report) -> bool:
    path = os.path.join(root, *relative.split("/"))
    try:
        ds = dcmread(path, stop_before_pixels=True)
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        if str(ds.SOPInstanceUID) != uid_of(relative):
            raise ValueError("SOP Instance UID differs from the file name")
        check_complete(path, transfer_syntax)
        index.add(ds, relative, transfer_syntax, os.path.getsize(path))
    except Exception as e:  # a damaged file is reported, never fatal
        _log.warn("Cannot index {path}: {error}", path=path, error=str(e))
        report.unreadable.append(relative)
        return False
    report.files_indexed += 1
    return True


def _index_first(index: Any, root: str, candidates: list[str], report: Report) -> str | None:
    """Index the first well-formed file of an instance (nested before
    flat); returns it, or None if none is."""
    for relative in candidates:
        if _index_file(index, root, relative, report):
            return relative
    return None


def _superseded(candidates: list[str], kept: str | None) -> list[str]:
    """The flat copies an indexed nested file replaced."""
    if kept is None or "/" not in kept:
        return []
    return [relative for relative in candidates if "/" not in relative]


def _remove_superseded(root: str, superseded: list[str], report: Report) -> None:
    for relative in superseded:
        try:
            os.unlink(os.path.join(root, relative))
            report.superseded_removed += 1
        except OSError:
            pass


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
    """Remove leftover temporary files; index stored files the index lacks
    (or names by another path); drop rows whose file is missing.

    A row naming the file found for its instance costs nothing: a large
    archive is listed (the top and the two bucket levels), not read.
    """
    root = os.path.realpath(directory)
    report = Report()
    _remove_temporary(root, report)
    # The index first, then the files: another node sharing the directory
    # renames a file into place before it commits its row, so every row
    # read here has its file in the listing that follows (the reverse
    # order could drop the row of an instance committed in between).
    indexed = {}
    for relative in index.paths():
        uid = uid_of(relative)
        if uid is None:  # neither layout: by its name, so that it is replaced or dropped
            name = os.path.basename(relative)
            uid = name[:-4] if name.endswith(".dcm") else name
        indexed[uid] = relative
    files = _stored_files(root)
    for uid in indexed.keys() - files.keys():
        index.remove(uid)
        report.rows_dropped += 1
    superseded: list[str] = []
    for uid in sorted(files):
        candidates = files[uid]
        kept: str | None = indexed.get(uid)
        if kept != candidates[0]:
            kept = _index_first(index, root, candidates, report)
        superseded += _superseded(candidates, kept)
    _remove_superseded(root, superseded, report)
    return report


def reindex(directory: str, index: Any) -> Report:
    """Rebuild the whole index from the stored files (both layouts)."""
    root = os.path.realpath(directory)
    report = Report()
    _remove_temporary(root, report)
    index.clear()
    superseded: list[str] = []
    with index.transaction():
        for uid, candidates in sorted(_stored_files(root).items()):
            kept = _index_first(index, root, candidates, report)
            superseded += _superseded(candidates, kept)
    _remove_superseded(root, superseded, report)
    return report
