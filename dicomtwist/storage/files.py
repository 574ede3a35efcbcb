"""Instance files: safe names, Part 10 headers, atomic and durable writes.

A file path is never built from peer-supplied text without validation:
only a syntactically valid UID (PS3.5 9.1: digits and dots, at most 64
characters, no empty or zero-led components) becomes a file name, and the
resulting path is checked to lie inside the instance directory.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import struct
import tempfile

from dicomtwist import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: Prefix of temporary files inside the instance directory.
TEMP_PREFIX = ".incoming-"
TEMP_SUFFIX = ".part"


def is_valid_uid(value: object) -> bool:
    """True if ``value`` is a UID per PS3.5 9.1 (and so a safe file name)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


@functools.lru_cache(maxsize=16)
def real_directory(directory: str) -> str:
    """``os.path.realpath`` of a directory, remembered (it costs an lstat
    per path component)."""
    return os.path.realpath(directory)


def instance_path(directory: str, sop_instance_uid: str) -> str:
    """The file for an instance: ``<directory>/<SOP Instance UID>.dcm``.

    :raises ValueError: the UID is not valid, or the path would not lie
        directly inside ``directory``.
    """
    if not is_valid_uid(sop_instance_uid):
        raise ValueError(f"invalid SOP Instance UID {sop_instance_uid!r}")
    root = real_directory(directory)
    path = os.path.join(root, sop_instance_uid + ".dcm")
    if os.path.dirname(path) != root:
        raise ValueError(f"SOP Instance UID {sop_instance_uid!r} leaves the instance directory")
    return path


_SHORT = struct.Struct("<HH2sH")
_UL_ELEMENT = struct.Struct("<HH2sHL")
_PREAMBLE = b"\x00" * 128 + b"DICM"
#: (0002,0001) File Meta Information Version, OB, 00 01.
_VERSION = struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def _meta_element(element: int, vr: bytes, value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += pad
    return _SHORT.pack(0x0002, element, vr, len(raw)) + raw


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                  source_ae_title: str | None = None) -> bytes:
    """The 128-byte preamble, ``DICM`` and the File Meta Information group.

    Followed by the data set exactly as received, this is a Part 10 file
    (PS3.10 7.1) in the transfer syntax it arrived in.  Written by hand (it
    is on the path of every C-STORE): Explicit VR Little Endian, UIDs padded
    with NUL and text with a space to even length.

    :raises UnicodeEncodeError: a value is not ASCII.
    """
    parts = [
        _VERSION,
        _meta_element(0x0002, b"UI", sop_class_uid, b"\x00"),
        _meta_element(0x0003, b"UI", sop_instance_uid, b"\x00"),
        _meta_element(0x0010, b"UI", transfer_syntax, b"\x00"),
        _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID, b"\x00"),
        _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME, b" "),
    ]
    if source_ae_title:
        parts.append(_meta_element(0x0016, b"AE", source_ae_title, b" "))
    body = b"".join(parts)
    return b"".join((_PREAMBLE, _UL_ELEMENT.pack(0x0002, 0x0000, b"UL", 4, len(body)), body))


def dataset_offset(buffer: bytes | memoryview) -> int | None:
    """Where the data set of a Part 10 file starts: after the preamble,
    ``DICM`` and the File Meta Information group its (0002,0000) Group
    Length measures; None if the file does not start that way."""
    if len(buffer) < 144 or bytes(buffer[128:132]) != b"DICM":
        return None
    group, element, vr, length, value = _UL_ELEMENT.unpack_from(buffer, 132)
    if (group, element, vr, length) != (0x0002, 0x0000, b"UL", 4):
        return None
    return 144 + value


def fsync_file(path: str) -> None:
    """Flush a closed file's data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temporary(directory: str, header: bytes, data: bytes) -> str:
    """Write ``header`` then ``data`` into a new temporary file in
    ``directory`` and fsync it; return its path.

    :raises OSError: nothing is left behind.
    """
    fd, path = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        try:
            # A small instance goes out in one write; a big one is not copied.
            chunks = [header + data] if len(data) < 65536 else [header, data]
            for chunk in map(memoryview, chunks):
                while chunk:
                    written = os.write(fd, chunk)
                    chunk = chunk[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    return path


def fsync_directory(directory: str) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(directory: str) -> int:
    """Free space available to us in ``directory``'s file system."""
    return shutil.disk_usage(directory).free


def temporary_files(directory: str) -> list[str]:
    """Leftover temporary files (from a crash) in ``directory``: spooled
    stores, and everything in its scratch directory."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [os.path.join(directory, n) for n in names
             if n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX)]
    scratch = os.path.join(directory, SCRATCH)
    if os.path.isdir(scratch) and not os.path.islink(scratch):
        found += [os.path.join(scratch, n) for n in os.listdir(scratch)
                  if os.path.isfile(os.path.join(scratch, n))]
    return found


#: The instance directory's subdirectory for short-lived files (converted
#: copies of instances being sent); emptied at every start.
SCRATCH = ".scratch"


def scratch_file(directory: str, suffix: str = ".dcm") -> str:
    """A new empty file in the instance directory's scratch directory.

    The caller removes it when done; a crash's leftovers go at the next
    start (:func:`temporary_files`).
    """
    scratch = os.path.join(directory, SCRATCH)
    os.makedirs(scratch, mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=scratch, suffix=suffix)
    os.close(fd)
    return path
