"""A small raw-socket DICOM client for the association benchmarks.

It speaks just enough of the Upper Layer (PS3.8 9.3) and DIMSE (PS3.7 9.3.5)
to associate with a Verification presentation context, send one C-ECHO,
and release, with every PDU written by hand: the load generator must cost
far less than the servers it measures, and it must not depend on the code
under test.

Two loads:

* :func:`echo_loop` -- sequential connect, A-ASSOCIATE-RQ, C-ECHO-RQ,
  A-RELEASE-RQ, close, bounded by a count and a deadline;
* :class:`IdleAssociations` -- open many associations at once (non-blocking
  sockets, one ``selectors`` loop) and keep them open, idle.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: Our implementation class UID (PS3.7 D.3.3.2), under the 2.25 UUID arc.
IMPLEMENTATION_UID = "2.25.176083424126917215938214802283911562013"
IMPLEMENTATION_VERSION = "BENCH_RAW_0"

PDU_HEADER = struct.Struct(">BxL")
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RP = 0x06
A_ABORT = 0x07


def _uid(value: str) -> bytes:
    """A UID value padded to even length with NUL (PS3.5 9.1)."""
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _item(item_type: int, body: bytes) -> bytes:
    """An item or sub-item: type, reserved, 2-byte length (PS3.8 9.3.2)."""
    return struct.pack(">BxH", item_type, len(body)) + body


def associate_rq(called: str, calling: str = "BENCHSCU", max_pdu: int = 16384) -> bytes:
    """A-ASSOCIATE-RQ with one Verification context (PS3.8 9.3.2)."""
    context = _item(0x20, bytes([1, 0, 0, 0])
                    + _item(0x30, VERIFICATION.encode())
                    + _item(0x40, IMPLICIT_VR_LE.encode()))
    user = _item(0x50, _item(0x51, struct.pack(">L", max_pdu))
                 + _item(0x52, IMPLEMENTATION_UID.encode())
                 + _item(0x55, IMPLEMENTATION_VERSION.encode()))
    body = (struct.pack(">H2x", 1) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + _item(0x10, APPLICATION_CONTEXT.encode()) + context + user)
    return PDU_HEADER.pack(0x01, len(body)) + body


def _element(group: int, element: int, value: bytes) -> bytes:
    """Implicit VR little endian element (PS3.5 7.1.3)."""
    return struct.pack("<HHL", group, element, len(value)) + value


def echo_rq(message_id: int = 1) -> bytes:
    """P-DATA-TF carrying one C-ECHO-RQ command set (PS3.7 9.3.5.1)."""
    rest = (_element(0, 0x0002, _uid(VERIFICATION))
            + _element(0, 0x0100, struct.pack("<H", 0x0030))
            + _element(0, 0x0110, struct.pack("<H", message_id))
            + _element(0, 0x0800, struct.pack("<H", 0x0101)))
    command = _element(0, 0x0000, struct.pack("<L", len(rest))) + rest
    # PDV item: length, context ID 1, control header 0x03 (command, last fragment).
    pdv = struct.pack(">LBB", len(command) + 2, 1, 0x03) + command
    return PDU_HEADER.pack(P_DATA_TF, len(pdv)) + pdv


ECHO_RQ = echo_rq()
RELEASE_RQ = PDU_HEADER.pack(0x05, 4) + bytes(4)
ABORT = PDU_HEADER.pack(A_ABORT, 4) + bytes(4)


class PeerError(Exception):
    """The peer rejected, aborted or answered something unexpected."""


def read_pdu(sock: socket.socket, buffer: bytearray | None = None) -> tuple[int, bytes]:
    """Read one PDU: ``(type, body)``.

    :param buffer: bytes received but not yet read (kept across calls on
        one connection: one ``recv`` usually brings a whole PDU).
    """
    if buffer is None:
        buffer = bytearray()
    while len(buffer) < 6:
        _receive(sock, buffer)
    pdu_type, length = PDU_HEADER.unpack_from(buffer)
    while len(buffer) < 6 + length:
        _receive(sock, buffer)
    body = bytes(buffer[6:6 + length])
    del buffer[:6 + length]
    return pdu_type, body


def _receive(sock: socket.socket, buffer: bytearray) -> None:
    chunk = sock.recv(65536)
    if not chunk:
        raise PeerError("connection closed")
    buffer += chunk


def echo_status(body: bytes) -> int:
    """The Status (0000,0900) of the command set in a P-DATA-TF body."""
    offset = 0
    while offset + 6 <= len(body):
        length, _, control = struct.unpack_from(">LBB", body, offset)
        data = body[offset + 6:offset + 4 + length]
        offset += 4 + length
        if not control & 0x01:
            continue
        pos = 0
        while pos + 8 <= len(data):
            group, element, size = struct.unpack_from("<HHL", data, pos)
            if (group, element) == (0, 0x0900):
                return struct.unpack_from("<H", data, pos + 8)[0]
            pos += 8 + size
    raise PeerError("no status in the C-ECHO-RSP")


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    """A blocking TCP connection to ``127.0.0.1:port`` with Nagle off.

    The timeout is the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO``, which
    also bounds ``connect``), not Python's: a Python timeout makes every
    call a ``poll`` plus the call, and the load generator must cost far
    less than the servers it measures.  A call that times out raises
    ``OSError`` (``EAGAIN``).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        seconds = int(timeout)
        limit = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def echo_once(port: int, called: str, rq: bytes, timeout: float = 10.0) -> None:
    """One association: connect, associate, C-ECHO, release, close.

    :raises PeerError: rejected, aborted, or a failure status.
    :raises OSError: the connection failed or timed out.
    """
    with connect(port, timeout) as sock:
        buffer = bytearray()
        sock.sendall(rq)
        pdu_type, _ = read_pdu(sock, buffer)
        if pdu_type != A_ASSOCIATE_AC:
            raise PeerError(f"association answered with PDU type {pdu_type:#x}")
        sock.sendall(ECHO_RQ)
        pdu_type, body = read_pdu(sock, buffer)
        if pdu_type != P_DATA_TF:
            raise PeerError(f"C-ECHO answered with PDU type {pdu_type:#x}")
        status = echo_status(body)
        if status != 0:
            raise PeerError(f"C-ECHO status {status:#06x}")
        sock.sendall(RELEASE_RQ)
        pdu_type, _ = read_pdu(sock, buffer)
        if pdu_type != A_RELEASE_RP:
            raise PeerError(f"release answered with PDU type {pdu_type:#x}")


def echo_loop(port: int, called: str, count: int, seconds: float) -> tuple[int, int, float]:
    """Sequential associations until ``count`` or ``seconds`` is reached.

    :returns: ``(completed, failed, elapsed seconds)``.
    """
    rq = associate_rq(called)
    done = failed = 0
    start = time.perf_counter()
    deadline = start + seconds
    while done + failed < count and time.perf_counter() < deadline:
        try:
            echo_once(port, called, rq)
            done += 1
        except (OSError, PeerError):
            failed += 1
            # A refusing or crashed server must not become a tight loop.
            time.sleep(0.01)
    return done, failed, time.perf_counter() - start


@dataclass
class _Conn:
    sock: socket.socket
    state: str = "connecting"
    buffer: bytearray = field(default_factory=bytearray)


class IdleAssociations:
    """Hold ``count`` idle associations open to one server.

    :ivar accepted: associations answered with A-ASSOCIATE-AC (and still open).
    :ivar rejected: answered with A-ASSOCIATE-RJ.
    :ivar failed: connection refused, reset, aborted or closed.
    :ivar pending: no answer yet when :meth:`open` gave up waiting.
    :ivar attempted: connections opened.
    """

    def __init__(self, port: int, called: str) -> None:
        self.port = port
        self.rq = associate_rq(called)
        self.conns: list[_Conn] = []
        self.accepted = self.rejected = self.failed = self.pending = 0
        self.attempted = 0

    def open(self, count: int, timeout: float, batch: int = 32,
             batch_timeout: float = 10.0) -> None:
        """Connect and associate ``count`` sockets, ``batch`` at a time.

        A batch is opened once the previous one has been answered, so the
        listen backlog never overflows (dropped SYNs are retried only after
        1, 3, 7... seconds, which would measure TCP's back-off, not the
        server).  Opening stops at ``timeout``, or after a batch in which
        the server did not accept every association (it is full).
        """
        selector = selectors.DefaultSelector()
        deadline = time.monotonic() + timeout
        self.attempted = 0
        while self.attempted < count and time.monotonic() < deadline:
            size = min(batch, count - self.attempted)
            accepted = self.accepted
            waiting = 0
            for _ in range(size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                code = sock.connect_ex(("127.0.0.1", self.port))
                if code not in (0, errno.EINPROGRESS):
                    sock.close()
                    self.failed += 1
                    continue
                conn = _Conn(sock)
                self.conns.append(conn)
                selector.register(sock, selectors.EVENT_WRITE, conn)
                waiting += 1
            self.attempted += size
            waiting = self._pump(selector, waiting, min(deadline, time.monotonic() + batch_timeout))
            self.pending += waiting
            if self.accepted - accepted < size:
                break
        selector.close()

    def _pump(self, selector: selectors.BaseSelector, waiting: int, deadline: float) -> int:
        """Drive connects and associations until answered or ``deadline``.

        :returns: how many are still unanswered.
        """
        while waiting and time.monotonic() < deadline:
            for key, events in selector.select(timeout=0.2):
                conn = key.data
                if conn.state == "connecting":
                    error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        self._drop(selector, conn)
                        waiting -= 1
                        continue
                    conn.sock.sendall(self.rq)  # a few hundred bytes: fits the buffer
                    conn.state = "requested"
                    selector.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                try:
                    data = conn.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._drop(selector, conn)
                    waiting -= 1
                    continue
                conn.buffer += data
                if len(conn.buffer) < 6:
                    continue
                pdu_type = conn.buffer[0]
                selector.unregister(conn.sock)
                waiting -= 1
                if pdu_type == A_ASSOCIATE_AC:
                    conn.state = "associated"
                    self.accepted += 1
                else:
                    conn.state = "closed"
                    self.rejected += 1 if pdu_type == A_ASSOCIATE_RJ else 0
                    self.failed += 0 if pdu_type == A_ASSOCIATE_RJ else 1
                    conn.sock.close()
        return waiting

    def _drop(self, selector: selectors.BaseSelector, conn: _Conn) -> None:
        selector.unregister(conn.sock)
        conn.sock.close()
        conn.state = "closed"
        self.failed += 1

    def close(self, timeout: float = 3.0) -> None:
        """Release the associated ones (A-RELEASE-RQ), then close every socket."""
        live = [c for c in self.conns if c.state == "associated"]
        for conn in live:
            try:
                conn.sock.setblocking(True)
                conn.sock.settimeout(timeout)
                conn.sock.sendall(RELEASE_RQ)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for conn in live:
            left = deadline - time.monotonic()
            if left <= 0:
                break  # a server that answers no A-RELEASE-RQ: just close
            try:
                conn.sock.settimeout(left)
                conn.sock.recv(65536)
            except OSError:
                pass
        for conn in self.conns:
            if conn.state != "closed":
                conn.sock.close()
                conn.state = "closed"


# -- C-STORE -------------------------------------------------------------------
# For benchmarks/store_cost.py: one association sending stored instances
# (already in memory, as their encoded data sets) one after another, each
# C-STORE-RQ waiting for its C-STORE-RSP, as storescu does.

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_META_ELEMENT = struct.Struct("<HH2sH")


@dataclass(frozen=True)
class Instance:
    """One instance to send: its UIDs and its data set as encoded in the
    file (after the File Meta Information)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes


def read_instance(path: str) -> Instance:
    """Read a Part 10 file (PS3.10 7.1) whose File Meta Information has a
    Group Length, as the benchmarks' files do.

    :raises ValueError: not such a file.
    """
    with open(path, "rb") as fp:
        raw = fp.read()
    if raw[128:132] != b"DICM":
        raise ValueError(f"{path}: no DICM prefix")
    group, element, vr, _, length = struct.unpack_from("<HH2sHL", raw, 132)
    if (group, element, vr) != (0x0002, 0x0000, b"UL"):
        raise ValueError(f"{path}: no File Meta Information Group Length")
    end = 144 + length
    values: dict[int, str] = {}
    pos = 144
    while pos < end:
        group, element, vr, short = _META_ELEMENT.unpack_from(raw, pos)
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ"):
            size = struct.unpack_from("<L", raw, pos + 8)[0]
            start = pos + 12
        else:
            size, start = short, pos + 8
        values[element] = raw[start:start + size].decode("ascii").rstrip("\0 ")
        pos = start + size
    return Instance(values[0x0002], values[0x0003], values[0x0010], raw[end:])


def associate_rq_contexts(called: str, contexts: list[tuple[str, str]],
                          calling: str = "STORESCU", max_pdu: int = 16384) -> bytes:
    """A-ASSOCIATE-RQ proposing ``(abstract syntax, transfer syntax)``
    contexts, numbered 1, 3, 5... (PS3.8 9.3.2)."""
    items = b""
    for n, (abstract, transfer) in enumerate(contexts):
        items += _item(0x20, bytes([2 * n + 1, 0, 0, 0])
                       + _item(0x30, abstract.encode()) + _item(0x40, transfer.encode()))
    user = _item(0x50, _item(0x51, struct.pack(">L", max_pdu))
                 + _item(0x52, IMPLEMENTATION_UID.encode())
                 + _item(0x55, IMPLEMENTATION_VERSION.encode()))
    body = (struct.pack(">H2x", 1) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + _item(0x10, APPLICATION_CONTEXT.encode()) + items + user)
    return PDU_HEADER.pack(0x01, len(body)) + body


def _accepted(body: bytes) -> tuple[dict[int, str], int]:
    """The accepted presentation contexts of an A-ASSOCIATE-AC body
    (context ID -> transfer syntax) and the peer's maximum PDU length
    (0: unlimited)."""
    accepted: dict[int, str] = {}
    max_pdu = 0
    pos = 68
    while pos + 4 <= len(body):
        item_type, length = struct.unpack_from(">BxH", body, pos)
        value = body[pos + 4:pos + 4 + length]
        if item_type == 0x21 and value[2] == 0:
            sub = value[4:]
            if len(sub) >= 4 and sub[0] == 0x40:
                size = struct.unpack_from(">H", sub, 2)[0]
                accepted[value[0]] = sub[4:4 + size].decode("ascii").rstrip("\0 ")
        elif item_type == 0x50:
            sub_pos = 0
            while sub_pos + 4 <= len(value):
                sub_type, sub_length = struct.unpack_from(">BxH", value, sub_pos)
                if sub_type == 0x51:
                    max_pdu = struct.unpack_from(">L", value, sub_pos + 4)[0]
                sub_pos += 4 + sub_length
        pos += 4 + length
    return accepted, max_pdu


def store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian."""
    rest = (_element(0, 0x0002, _uid(sop_class_uid))
            + _element(0, 0x0100, struct.pack("<H", 0x0001))
            + _element(0, 0x0110, struct.pack("<H", message_id))
            + _element(0, 0x0700, struct.pack("<H", 0))
            + _element(0, 0x0800, struct.pack("<H", 0x0000))
            + _element(0, 0x1000, _uid(sop_instance_uid)))
    return _element(0, 0x0000, struct.pack("<L", len(rest))) + rest


def p_data(context_id: int, control: int, value: bytes | memoryview, max_pdu: int) -> list[bytes]:
    """``value`` as P-DATA-TF PDUs of one PDV each, none longer than
    ``max_pdu`` (0: no limit); ``control``'s last-fragment bit (0x02) set
    on the last one only (PS3.8 9.3.5, E.2)."""
    room = (max_pdu - 6) if max_pdu else len(value) or 1
    pdus = []
    view = memoryview(value)
    pos = 0
    while True:
        chunk = view[pos:pos + room]
        pos += len(chunk)
        last = pos >= len(view)
        flags = control | 0x02 if last else control & ~0x02
        pdv = struct.pack(">LBB", len(chunk) + 2, context_id, flags) + bytes(chunk)
        pdus.append(PDU_HEADER.pack(P_DATA_TF, len(pdv)) + pdv)
        if last:
            return pdus


class StoreAssociation:
    """One association sending C-STOREs, each waiting for its response.

    The command set and the data set of a request go out in one
    ``sendall`` (their own PDUs): the server's receive work per instance
    is then the same in every run.

    :raises PeerError: rejected, or no context accepted for what is sent.
    """

    def __init__(self, port: int, called: str, contexts: list[tuple[str, str]],
                 timeout: float = 600.0) -> None:
        self.sock = connect(port, timeout)
        self.buffer = bytearray()
        self.message_id = 0
        self.sock.sendall(associate_rq_contexts(called, contexts))
        pdu_type, body = read_pdu(self.sock, self.buffer)
        if pdu_type != A_ASSOCIATE_AC:
            self.sock.close()
            raise PeerError(f"association answered with PDU type {pdu_type:#x}")
        accepted, self.max_pdu = _accepted(body)
        #: (abstract syntax, transfer syntax) -> context ID.
        self.contexts = {(abstract, transfer): 2 * n + 1
                         for n, (abstract, transfer) in enumerate(contexts)
                         if accepted.get(2 * n + 1) == transfer}

    def request(self, instance: Instance) -> bytes:
        """The PDUs of one C-STORE-RQ and its data set (for :meth:`send`)."""
        context = self.contexts.get((instance.sop_class_uid, instance.transfer_syntax))
        if context is None:
            raise PeerError(f"no accepted context for {instance.sop_class_uid}")
        self.message_id = self.message_id % 0xFFFF + 1
        command = store_rq(self.message_id, instance.sop_class_uid, instance.sop_instance_uid)
        return b"".join(p_data(context, 0x01, command, self.max_pdu)
                        + p_data(context, 0x00, instance.dataset, self.max_pdu))

    def send(self, request: bytes) -> int:
        """Send one prepared request and wait for its response; its status."""
        self.sock.sendall(request)
        pdu_type, body = read_pdu(self.sock, self.buffer)
        if pdu_type != P_DATA_TF:
            raise PeerError(f"C-STORE answered with PDU type {pdu_type:#x}")
        return echo_status(body)  # the Status of any response command set

    def release(self) -> None:
        """A-RELEASE-RQ, wait for the RP, close."""
        try:
            self.sock.sendall(RELEASE_RQ)
            read_pdu(self.sock, self.buffer)
        finally:
            self.sock.close()
