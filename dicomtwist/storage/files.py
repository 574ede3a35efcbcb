"""Instance files: safe names, Part 10 headers, atomic and durable writes.

A file path is never built from peer-supplied text without validation:
only a syntactically valid UID (PS3.5 9.1: digits and dots, at most 64
characters, no empty or zero-led components) becomes a file name, and the
resulting path is checked to lie inside the instance directory.

The layout of the instance directory: a new instance goes to
``<aa>/<bb>/<SOP Instance UID>.dcm``, where ``aabb`` are the first four hex
digits of the SHA-256 of the UID (:func:`relative_path`): 65,536 buckets
of about 150 files each at 10 million instances, whatever the UIDs look
like.  Files of the earlier flat layout, ``<SOP Instance UID>.dcm`` at the
top, are still read, found and removed; nothing else is an instance.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import shutil
import stat
import struct
import tempfile

from collections.abc import Iterator

from dicomtwist import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

#: PS3.5 9.1: components of digits, no leading zero, dot separated.  No
#: capturing groups, possessive repeats: it runs on every UID stored.
_UID = re.compile(r"(?:0|[1-9][0-9]*+)(?:\.(?:0|[1-9][0-9]*+))*+")
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


#: What an instance file's name ends with.
SUFFIX = ".dcm"
_BUCKET = re.compile(r"[0-9a-f]{2}")


def bucket(sop_instance_uid: str) -> tuple[str, str]:
    """The two directory levels of an instance in the nested layout: the
    first four hex digits of the SHA-256 of its (valid) UID, as ``("ab",
    "cd")``.  Part of the on-disk format: never change it."""
    digest = hashlib.sha256(sop_instance_uid.encode("ascii")).hexdigest()
    return digest[:2], digest[2:4]


def relative_path(sop_instance_uid: str) -> str:
    """Where a new instance goes, relative to the instance directory (and
    as the index keeps it): ``ab/cd/<SOP Instance UID>.dcm``.

    :raises ValueError: the UID is not valid.
    """
    if not is_valid_uid(sop_instance_uid):
        raise ValueError(f"invalid SOP Instance UID {sop_instance_uid!r}")
    first, second = bucket(sop_instance_uid)
    return f"{first}/{second}/{sop_instance_uid}{SUFFIX}"


def flat_name(sop_instance_uid: str) -> str:
    """An instance's file name in the earlier flat layout (read, never
    written): ``<SOP Instance UID>.dcm`` at the top of the directory."""
    return sop_instance_uid + SUFFIX


def instance_path(directory: str, sop_instance_uid: str) -> str:
    """The file a new instance is written to (its directories may not
    exist yet): ``<directory>/ab/cd/<SOP Instance UID>.dcm``.

    :raises ValueError: the UID is not valid.
    """
    return os.path.join(real_directory(directory), *relative_path(sop_instance_uid).split("/"))


def uid_of(relative: str) -> str | None:
    """The SOP Instance UID a relative path of either layout names, or
    None if it is neither ``<uid>.dcm`` nor ``ab/cd/<uid>.dcm`` with the
    right bucket."""
    if not isinstance(relative, str):
        return None
    parts = relative.split("/")
    name = parts[-1]
    if not name.endswith(SUFFIX):
        return None
    uid = name[:-len(SUFFIX)]
    if not is_valid_uid(uid):
        return None
    if len(parts) == 1 or (len(parts) == 3 and tuple(parts[:2]) == bucket(uid)):
        return uid
    return None


def stored_file(directory: str, relative: object) -> str:
    """The file an indexed path names, for reading or removing it.

    The one check every reader of ``index.path`` goes through: ``relative``
    must be exactly a flat name ``<uid>.dcm`` or the nested
    ``ab/cd/<uid>.dcm`` of its UID (so no ``..``, no absolute path, no
    other separator can pass), and what exists of it on disk must be what
    the archive makes: bucket directories and a regular file, none of them
    a symbolic link.

    :returns: the path; it may not exist (opening it then fails as for any
        missing file).
    :raises ValueError: the path is not one of the two forms, or a part of
        it is a symbolic link or not what it should be.
    """
    if not isinstance(relative, str) or uid_of(relative) is None:
        raise ValueError(f"indexed path {relative!r} is not an instance file")
    path = real_directory(directory)
    parts = relative.split("/")
    for n, part in enumerate(parts):
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return os.path.join(path, *parts[n + 1:])
        wanted = stat.S_ISREG(mode) if n == len(parts) - 1 else stat.S_ISDIR(mode)
        if not wanted:
            raise ValueError(f"indexed path {relative!r}: {part} is a link or of the wrong type")
    return path


def stored_instances(directory: str) -> Iterator[tuple[str, str]]:
    """``(SOP Instance UID, relative path)`` of every instance file in
    ``directory``, in either layout (a UID may come twice: flat and nested).

    Walks the top and the two bucket levels only, never deeper, and never
    follows a symbolic link; ``.scratch``, temporary files and anything
    not named as the archive names files are skipped.
    """
    root = real_directory(directory)
    buckets = []
    for entry in _entries(root):
        if _BUCKET.fullmatch(entry.name):
            if entry.is_dir(follow_symlinks=False):
                buckets.append(entry.name)
        elif uid_of(entry.name) is not None and entry.is_file(follow_symlinks=False):
            yield entry.name[:-len(SUFFIX)], entry.name
    for first in sorted(buckets):
        for second in _subdirectories(os.path.join(root, first)):
            leaf = os.path.join(root, first, second)
            for entry in _entries(leaf):
                relative = f"{first}/{second}/{entry.name}"
                uid = uid_of(relative)
                if uid is not None and entry.is_file(follow_symlinks=False):
                    yield uid, relative


def _entries(directory: str) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _subdirectories(directory: str) -> list[str]:
    """The bucket-named subdirectories (not symbolic links) of ``directory``."""
    return sorted(e.name for e in _entries(directory)
                  if _BUCKET.fullmatch(e.name) and e.is_dir(follow_symlinks=False))


def remove_empty_buckets(directory: str) -> int:
    """Remove the nested layout's bucket directories left empty; returns
    how many went.  A bucket holding anything stays."""
    root = real_directory(directory)
    removed = 0
    for first in _subdirectories(root):
        top = os.path.join(root, first)
        for second in _subdirectories(top):
            try:
                os.rmdir(os.path.join(top, second))
                removed += 1
            except OSError:
                pass
        try:
            os.rmdir(top)
            removed += 1
        except OSError:
            pass
    return removed


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
    before, after = _meta_around_instance(sop_class_uid, transfer_syntax, source_ae_title)
    instance = _meta_element(0x0003, b"UI", sop_instance_uid, b"\x00")
    return b"".join((_PREAMBLE,
                     _UL_ELEMENT.pack(0x0002, 0x0000, b"UL", 4,
                                      len(before) + len(instance) + len(after)),
                     before, instance, after))


@functools.lru_cache(maxsize=256)
def _meta_around_instance(sop_class_uid: str, transfer_syntax: str,
                          source_ae_title: str | None) -> tuple[bytes, bytes]:
    """The File Meta Information elements before and after (0002,0003)
    Media Storage SOP Instance UID: the same for every instance of a SOP
    class received in one transfer syntax (from one AE), so made once."""
    before = b"".join((_VERSION, _meta_element(0x0002, b"UI", sop_class_uid, b"\x00")))
    parts = [
        _meta_element(0x0010, b"UI", transfer_syntax, b"\x00"),
        _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID, b"\x00"),
        _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME, b" "),
    ]
    if source_ae_title:
        parts.append(_meta_element(0x0016, b"AE", source_ae_title, b" "))
    return before, b"".join(parts)


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


#: Flags of a new temporary file: created, never an existing file or a
#: symbolic link (as ``tempfile.mkstemp`` opens one), write only.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Numbers the temporary files of this process (:func:`create_temporary`).
_serial = itertools.count(1)
#: This process's ID, remembered (``os.getpid`` is a system call), and
#: forgotten in a forked child.
_pid = 0


def _remember_pid() -> int:
    global _pid
    _pid = os.getpid()
    return _pid


def _forget_pid() -> None:
    global _pid
    _pid = 0


os.register_at_fork(after_in_child=_forget_pid)


def create_temporary(directory: str, prefix: str, suffix: str = TEMP_SUFFIX) -> tuple[int, str]:
    """Create a new file ``<prefix><pid>-<n><suffix>`` in ``directory``
    (mode 0600, as ``tempfile.mkstemp`` makes them) and open it for writing.

    The name is unique without a random draw: the process ID tells this
    process's files from those of every other process running, and a
    counter numbers them; ``O_EXCL`` makes sure, and a name taken (left
    over by a process that had the same ID) is skipped.  A tenth of
    ``mkstemp``'s cost, on the path of every store.

    :returns: the open file descriptor and the path.
    :raises OSError: the file cannot be created.
    """
    pid = _pid or _remember_pid()
    for _ in range(10000):
        path = f"{directory}/{prefix}{pid}-{next(_serial)}{suffix}"
        try:
            return os.open(path, _CREATE, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {directory}")


def write_temporary(directory: str, header: bytes,
                    data: bytes | memoryview | list[bytes | memoryview],
                    prefix: str | None = None) -> str:
    """Write ``header`` then ``data`` into a new temporary file in
    ``directory`` and fsync it; return its path.

    :param data: the bytes, or a list of fragments (a spooled data set),
        written in order with ``writev``, never joined.
    :param prefix: the file name's prefix (default: :func:`temp_prefix`).
    :raises OSError: nothing is left behind.
    """
    if type(data) is list and len(data) == 1:
        # One fragment (a small data set): as bytes, which costs less
        # than a writev (measured: benchmarks/store_cost.py).
        data = data[0]
    fd, path = create_temporary(directory, temp_prefix() if prefix is None else prefix)
    try:
        try:
            if type(data) is list:
                write_chunks(fd, [header, *data])
            # A small instance goes out in one write; a big one is not copied.
            elif len(data) < 65536:
                chunk = header + data
                written = os.write(fd, chunk)
                if written < len(chunk):
                    _write_all(fd, memoryview(chunk)[written:])
            else:
                _write_all(fd, memoryview(header))
                _write_all(fd, memoryview(data))
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


#: The most buffers one ``writev`` takes (POSIX ``IOV_MAX``; Linux: 1024).
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16


def write_chunks(fd: int, chunks: list[bytes | memoryview]) -> None:
    """Write byte buffers in order, ``IOV_MAX`` to a ``writev``, going on
    after a partial write where it stopped.

    :param chunks: ``bytes`` or byte ``memoryview`` s; the list is changed.
    """
    first = 0
    count = len(chunks)
    while first < count:
        batch = chunks[first:first + IOV_MAX]
        written = os.writev(fd, batch)
        if written == sum(map(len, batch)):  # nearly always
            first += len(batch)
            continue
        for chunk in batch:
            size = len(chunk)
            if written < size:
                chunks[first] = memoryview(chunk)[written:]
                break
            written -= size
            first += 1


def _write_all(fd: int, chunk: memoryview) -> None:
    while chunk:
        written = os.write(fd, chunk)
        chunk = chunk[written:]


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


#: This process's node name (:func:`set_node`), in the names of its
#: temporary files; empty: a lone archive (or a tool), whose temporary
#: files are all of them.
_NODE = ""
#: Another node's temporary files older than this (seconds) are a crash's
#: leftovers, removed by anyone's recovery.
STALE_AFTER = 24 * 3600.0


def set_node(name: str) -> None:
    """Name this archive node (several may share one instance directory):
    its temporary files carry the name, and its start-up recovery removes
    only its own (and other nodes' stale ones), never those of a node still
    storing."""
    global _NODE
    _NODE = re.sub(r"[^A-Za-z0-9_.]", "_", name)[:64]


def temp_prefix() -> str:
    """The prefix of this node's temporary store files."""
    return f"{TEMP_PREFIX}{_NODE}-" if _NODE else TEMP_PREFIX


def _leftover(path: str, own: bool, now: float) -> bool:
    if own:
        return True
    try:
        return now - os.stat(path).st_mtime > STALE_AFTER
    except OSError:
        return False


def temporary_files(directory: str) -> list[str]:
    """Leftover temporary files (from a crash) in ``directory``: spooled
    stores and scratch files of this node (:func:`set_node`; of every node
    when none is named), and other nodes' that are :data:`STALE_AFTER` old."""
    import time

    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    now = time.time()
    found = [os.path.join(directory, n) for n in names
             if n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX)
             and _leftover(os.path.join(directory, n), n.startswith(temp_prefix()), now)]
    scratch = os.path.join(directory, SCRATCH)
    if os.path.isdir(scratch) and not os.path.islink(scratch):
        for name in os.listdir(scratch):
            path = os.path.join(scratch, name)
            if os.path.islink(path):
                continue
            if os.path.isfile(path):
                found.append(path)
            elif os.path.isdir(path):
                own = not _NODE or name == _NODE
                found += [os.path.join(path, n) for n in os.listdir(path)
                          if os.path.isfile(os.path.join(path, n))
                          and _leftover(os.path.join(path, n), own, now)]
    return found


#: The instance directory's subdirectory for short-lived files (converted
#: copies of instances being sent), one subdirectory a node; emptied at
#: every start.
SCRATCH = ".scratch"


def scratch_file(directory: str, suffix: str = ".dcm") -> str:
    """A new empty file in this node's scratch directory, inside the
    instance directory.

    The caller removes it when done; a crash's leftovers go at the next
    start (:func:`temporary_files`).
    """
    scratch = os.path.join(directory, SCRATCH, _NODE or "local")
    os.makedirs(scratch, mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=scratch, suffix=suffix)
    os.close(fd)
    return path
