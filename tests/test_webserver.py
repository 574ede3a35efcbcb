"""Tests for the archive's HTTP server: limits, authentication and CORS.

The real Site of :func:`dicomtwist.web.site.build_site`, over a real index
and store (see :mod:`tests.test_dicomweb`).  Limits are checked on the
wire: request bytes go straight into the Site's protocol over a
``StringTransport``, so a test sees exactly what was answered, and whether
the connection was closed, before the rest of a request was sent.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from dicomtwist.status import Status
from dicomtwist.web import auth
from dicomtwist.web.site import build_site
from tests.test_dicomweb import (
    CT,
    MR,
    STOW_TYPE,
    WebTestCase,
    file_bytes,
    multipart_body,
)

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 8080)


class Answer:
    """An HTTP/1.1 response read off the wire."""

    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, code, *_ = lines[0].split(" ", 2)
        self.status_line = lines[0]
        self.code = int(code)
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()


class WireTestCase(WebTestCase):
    """Base: raw connections to the Site."""

    def connect(self) -> tuple[Any, StringTransport]:
        """A connection to the Site over a StringTransport."""
        transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
        protocol = self.site.buildProtocol(PEER)
        protocol.makeConnection(transport)
        self.addCleanup(self.close, protocol, transport)
        return protocol, transport

    def close(self, protocol: Any, transport: StringTransport) -> None:
        """End a connection (cancelling its timers)."""
        if not getattr(transport, "_closed", False):
            transport._closed = True
            protocol.connectionLost(Failure(ConnectionDone()))

    def head(self, method: str, path: str, *headers: str) -> bytes:
        """A request line and header block."""
        lines = [f"{method} /dicom-web{path} HTTP/1.1", "Host: archive.example", *headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class LimitTests(WireTestCase):
    """Request size limits (413, 431), parts per request, idle timeout."""

    settings = {"http_max_body": 1, "http_max_header": 2048, "http_max_parts": 2,
                "http_idle_timeout": 30.0}

    def tearDown(self) -> None:
        self.assertEqual(self.leftovers(), [])

    def test_announced_body_too_large(self) -> None:
        """A Content-Length over http_max_body is answered 413 at once, before
        any of the body, and the connection is closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(self.head("POST", "/studies", f"Content-Type: {STOW_TYPE}",
                                        f"Content-Length: {1024 * 1024 + 1}"))
        answer = Answer(transport.value())
        self.assertEqual(answer.status_line, "HTTP/1.1 413 Content Too Large")
        self.assertEqual(answer.headers["connection"], "close")
        self.assertEqual(int(answer.headers["content-length"]), len(answer.body))
        self.assertIn(b"over the limit of 1048576", answer.body)
        self.assertTrue(transport.disconnecting)
        # What follows is dropped: no second answer, nothing stored.
        transport.clear()
        protocol.dataReceived(multipart_body([("application/dicom", file_bytes(CT))]))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.index.count("IMAGE"), 0)

    def test_body_at_limit(self) -> None:
        """A body of exactly http_max_body bytes is read (here: not a STOW
        body, so 415 after it)."""
        protocol, transport = self.connect()
        size = 1024 * 1024
        protocol.dataReceived(self.head("POST", "/studies", "Content-Type: text/plain",
                                        f"Content-Length: {size}"))
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"x" * size)
        self.assertEqual(Answer(transport.value()).code, 415)

    def test_chunked_body_too_large(self) -> None:
        """A chunked body passing http_max_body is answered 413 when it does,
        the connection closed and the part being received dropped."""
        self.store.memory_limit = 1024  # the part spills into a temporary file
        protocol, transport = self.connect()
        protocol.dataReceived(self.head("POST", "/studies", f"Content-Type: {STOW_TYPE}",
                                        "Transfer-Encoding: chunked"))
        body = multipart_body([("application/dicom", file_bytes(CT))])[:-40]
        body += b"\0" * (1024 * 1024)
        for n in range(0, len(body), 65536):
            piece = body[n:n + 65536]
            protocol.dataReceived(b"%x\r\n%s\r\n" % (len(piece), piece))
            if transport.value():
                break
        answer = Answer(transport.value())
        self.assertEqual(answer.code, 413)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.index.count("IMAGE"), 0)

    def test_header_block_too_large(self) -> None:
        """Headers over http_max_header are answered 431 and the connection
        closed."""
        protocol, transport = self.connect()
        headers = [f"X-Filler-{n}: {'a' * 100}" for n in range(30)]
        protocol.dataReceived(self.head("GET", "/studies", *headers))
        answer = Answer(transport.value())
        self.assertEqual(answer.status_line, "HTTP/1.1 431 Request Header Fields Too Large")
        self.assertTrue(transport.disconnecting)

    def test_header_line_too_long(self) -> None:
        """One header line longer than http_max_header is 431 too."""
        protocol, transport = self.connect()
        protocol.dataReceived(self.head("GET", "/studies", "X-Long: " + "a" * 4096))
        self.assertEqual(Answer(transport.value()).code, 431)
        self.assertTrue(transport.disconnecting)

    def test_headers_under_limit(self) -> None:
        """Headers just under http_max_header are served."""
        protocol, transport = self.connect()
        protocol.dataReceived(self.head("GET", "/studies", "X-Filler: " + "a" * 1500))
        self.assertEqual(Answer(transport.value()).code, 200)

    def test_too_many_parts(self) -> None:
        """Parts past http_max_parts fail: the first ones are stored, the
        excess answered as a failure (202)."""
        ct, mr = file_bytes(CT), file_bytes(MR)
        response = self.stow([("application/dicom", ct), ("application/dicom", mr),
                              ("application/dicom", ct)])
        self.assertEqual(response.code, 202)
        body = response.json()
        self.assertEqual(len(body["00081199"]["Value"]), 2)
        self.assertEqual(body["00081198"]["Value"],
                         [{"00081197": {"vr": "US", "Value": [Status.STORE_CANNOT_UNDERSTAND]}}])
        self.assertEqual(self.index.count("IMAGE"), 2)

    def test_idle_timeout(self) -> None:
        """A silent connection is closed after http_idle_timeout seconds."""
        protocol, transport = self.connect()
        self.reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_idle_timeout_after_request(self) -> None:
        """The idle timeout restarts with each request, and a kept-alive
        connection is closed once it has been silent long enough."""
        protocol, transport = self.connect()
        self.reactor.advance(20)
        protocol.dataReceived(self.head("GET", "/studies"))
        self.assertEqual(Answer(transport.value()).code, 200)
        self.reactor.advance(20)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_connection_lost_mid_body(self) -> None:
        """A STOW-RS body cut off by the client leaves no temporary file and
        stores nothing of the unfinished part."""
        self.store.memory_limit = 1024
        protocol, transport = self.connect()
        body = multipart_body([("application/dicom", file_bytes(MR)),
                               ("application/dicom", file_bytes(CT))])
        protocol.dataReceived(self.head("POST", "/studies", f"Content-Type: {STOW_TYPE}",
                                        f"Content-Length: {len(body)}"))
        protocol.dataReceived(body[:len(body) - 5000])
        self.assertNotEqual(self.leftovers(), [])
        self.close(protocol, transport)
        self.assertEqual(self.leftovers(), [])
        self.assertEqual(self.index.count("IMAGE"), 1)
        self.assertEqual(transport.value(), b"")


class WireTests(WireTestCase):
    """What goes over one connection: keep-alive, pipelining, HEAD."""

    def test_pipelined_and_head(self) -> None:
        """Requests pipelined on one connection are answered in order; HEAD
        announces the GET's Content-Length and sends no body."""
        ct = self.ingest_file(CT)
        path = f"/studies/{ct.StudyInstanceUID}"
        protocol, transport = self.connect()
        protocol.dataReceived(self.head("GET", path))
        get = Answer(transport.value())
        self.assertEqual(int(get.headers["content-length"]), len(get.body))
        transport.clear()
        protocol.dataReceived(self.head("HEAD", path) + self.head("HEAD", "/studies")
                              + self.head("GET", "/studies?limit=0"))
        answers = transport.value().split(b"HTTP/1.1 ")[1:]
        self.assertEqual(len(answers), 3)
        head = Answer(b"HTTP/1.1 " + answers[0])
        self.assertEqual(head.code, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(head.headers["content-length"], get.headers["content-length"])
        self.assertEqual(Answer(b"HTTP/1.1 " + answers[1]).body, b"")
        last = Answer(b"HTTP/1.1 " + answers[2])
        self.assertEqual((last.code, last.body), (200, b"[]"))
        self.assertFalse(transport.disconnecting)


def users_file(directory: str, lines: list[str]) -> str:
    """Write an ``http_users`` (or tokens) file."""
    path = os.path.join(directory, "users-%d" % len(os.listdir(directory)))
    with open(path, "w", encoding="utf-8") as fp:
        fp.write("\n".join(lines) + "\n")
    return path


TOKEN = "s3cret-token-value"


def basic(name: str, password: str) -> str:
    """A Basic Authorization header value."""
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


class AuthTests(WireTestCase):
    """Basic and bearer authentication, and permissions per service."""

    def configure(self) -> dict[str, Any]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        fast = dict(iterations=1000)
        users = users_file(directory, [
            "# the archive's users",
            "",
            f"alice:{auth.hash_password('wonderland', **fast)}:all",
            f"bob:{auth.hash_password('builder', **fast)}:query",
        ])
        tokens = users_file(directory, [
            f"viewer:{hashlib.sha256(TOKEN.encode()).hexdigest()}:query,retrieve"])
        return dict(http_users=users, http_tokens=tokens,
                    http_cors_origins=("https://viewer.example",))

    def setUp(self) -> None:
        super().setUp()
        self.ct = self.ingest_file(CT)
        self.retrieve_path = f"/studies/{self.ct.StudyInstanceUID}"

    def test_no_credentials(self) -> None:
        """A request without credentials is 401 naming both schemes."""
        response = self.get("/studies")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.header("www-authenticate"),
                         'Basic realm="dicomtwist", charset="UTF-8", Bearer realm="dicomtwist"')
        self.assertEqual(response.json(), {"error": "authentication required", "status": 401})

    def test_wrong_password(self) -> None:
        """A wrong password, an unknown user or a malformed header is 401."""
        for value in (basic("alice", "looking-glass"), basic("carol", "wonderland"),
                      "Basic !!!", "Bearer wrong-token", "Digest x"):
            self.assertEqual(self.get("/studies", Authorization=value).code, 401, value)

    def test_all_permissions(self) -> None:
        """A user with all permissions may query, retrieve and store."""
        alice = basic("alice", "wonderland")
        self.assertEqual(self.get("/studies", Authorization=alice).code, 200)
        self.assertEqual(self.get(self.retrieve_path, Authorization=alice).code, 200)
        response = self.stow([("application/dicom", file_bytes(MR))],
                             headers={"Authorization": alice})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.index.count("IMAGE"), 2)

    def test_query_only(self) -> None:
        """A user permitted to query gets QIDO-RS answers, and 403 for WADO-RS
        and STOW-RS, which stores nothing."""
        bob = basic("bob", "builder")
        response = self.get("/studies", Authorization=bob)
        self.assertEqual(response.code, 200)
        self.assertEqual([m["0020000D"]["Value"] for m in response.json()],
                         [[self.ct.StudyInstanceUID]])
        response = self.get(self.retrieve_path, Authorization=bob)
        self.assertEqual(response.code, 403)
        self.assertEqual(response.json()["error"], "bob may not retrieve")
        self.assertEqual(self.get(self.retrieve_path + "/metadata", Authorization=bob).code,
                         403)
        response = self.stow([("application/dicom", file_bytes(MR))],
                             headers={"Authorization": bob})
        self.assertEqual(response.code, 403)
        self.assertEqual(response.json()["error"], "bob may not store")
        self.assertEqual(self.index.count("IMAGE"), 1)
        self.assertEqual(self.leftovers(), [])

    def test_stow_without_credentials(self) -> None:
        """STOW-RS without credentials is 401 and its body is never stored."""
        response = self.stow([("application/dicom", file_bytes(MR))])
        self.assertEqual(response.code, 401)
        self.assertTrue(response.header("www-authenticate").startswith("Basic "))
        self.assertEqual(self.index.count("IMAGE"), 1)
        self.assertEqual(self.leftovers(), [])

    def test_bearer_token(self) -> None:
        """A bearer token from the tokens file (kept as its SHA-256) works with
        the token's permissions."""
        bearer = f"Bearer {TOKEN}"
        self.assertEqual(self.get("/studies", Authorization=bearer).code, 200)
        response = self.get(self.retrieve_path, Authorization=bearer)
        self.assertEqual(response.code, 200)
        [(_, data)] = response.parts()
        self.assertEqual(data, file_bytes(self.stored_path(self.ct.SOPInstanceUID)))
        response = self.stow([("application/dicom", file_bytes(MR))],
                             headers={"Authorization": bearer})
        self.assertEqual(response.code, 403)
        self.assertEqual(self.index.count("IMAGE"), 1)

    def test_preflight_needs_no_credentials(self) -> None:
        """A CORS preflight is answered without credentials (browsers send
        none), and allows credentials for the origin."""
        response = self.request("OPTIONS", "/studies", {
            "Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        self.assertEqual(response.code, 204)
        self.assertEqual(response.header("access-control-allow-origin"),
                         "https://viewer.example")
        self.assertEqual(response.header("access-control-allow-credentials"), "true")
        self.assertEqual(response.header("access-control-allow-headers"), "authorization")

    def test_malformed_users_file(self) -> None:
        """A malformed users or tokens file is a ValueError naming the file and
        line, from auth.load and from build_site."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        good = f"alice:{auth.hash_password('x', iterations=1000)}:all"
        cases = [
            ([good, "bob-without-colons"], "line 2: expected name:hash:permissions"),
            ([good, "# comment", "bob:plaintext:all"], "line 3: the hash is not"),
            ([good, f"bob:{auth.hash_password('x', iterations=1000)}:erase"],
             "line 2: unknown permission(s) erase"),
        ]
        for lines, message in cases:
            path = users_file(directory, lines)
            with self.assertRaises(ValueError) as caught:
                auth.load(path, None)
            self.assertIn(f"http_users {path} {message}", str(caught.exception))
        tokens = users_file(directory, ["viewer:not-hex:query"])
        with self.assertRaises(ValueError) as caught:
            auth.load(None, tokens)
        self.assertIn(f"http_tokens {tokens} line 1: not the hex SHA-256",
                      str(caught.exception))
        self.config.http_users = path
        with self.assertRaises(ValueError) as caught:
            build_site(self.config, self.reactor, self.pool, self.pool, self.index, self.store)
        self.assertIn("line 2", str(caught.exception))
        self.config.http_users = os.path.join(directory, "missing")
        with self.assertRaises(ValueError) as caught:
            auth.load(self.config.http_users, None)
        self.assertIn("missing", str(caught.exception))


class CorsTests(WireTestCase):
    """CORS (Fetch standard) for browser viewers on other origins."""

    settings = {"http_cors_origins": ("https://viewer.example",)}

    def test_preflight_allowed(self) -> None:
        """A preflight from an allowed origin is 204 with the allowed origin,
        methods and the asked-for headers."""
        response = self.request("OPTIONS", "/studies", {
            "Origin": "https://viewer.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-custom"})
        self.assertEqual(response.code, 204)
        self.assertEqual(response.header("access-control-allow-origin"),
                         "https://viewer.example")
        self.assertEqual(response.header("access-control-allow-methods"),
                         "GET, HEAD, POST, OPTIONS")
        self.assertEqual(response.header("access-control-allow-headers"),
                         "content-type, x-custom")
        self.assertEqual(response.header("access-control-max-age"), "600")
        self.assertEqual(response.header("vary"), "Origin")
        self.assertIsNone(response.header("access-control-allow-credentials"))

    def test_preflight_disallowed(self) -> None:
        """A preflight from another origin gets no Access-Control headers."""
        response = self.request("OPTIONS", "/studies", {
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        self.assertEqual(response.code, 204)
        for name in ("access-control-allow-origin", "access-control-allow-methods",
                     "access-control-allow-headers"):
            self.assertIsNone(response.header(name), name)

    def test_get_with_origin(self) -> None:
        """A GET from an allowed origin gets Access-Control-Allow-Origin and the
        exposed headers; one from another origin does not."""
        response = self.get("/studies", Origin="https://viewer.example")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("access-control-allow-origin"),
                         "https://viewer.example")
        self.assertEqual(response.header("access-control-expose-headers"),
                         "Warning, Content-Type, Content-Length, Content-Location")
        response = self.get("/studies", Origin="https://evil.example")
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.header("access-control-allow-origin"))

    def test_error_with_origin(self) -> None:
        """An error answer carries the CORS headers too, so a browser can read it."""
        response = self.get("/studies?StudyDate=bad", Origin="https://viewer.example")
        self.assertEqual(response.code, 400)
        self.assertEqual(response.header("access-control-allow-origin"),
                         "https://viewer.example")

    def test_no_origins_configured(self) -> None:
        """Without http_cors_origins nothing is allowed."""
        self.config.http_cors_origins = ()
        self.site = build_site(self.config, self.reactor, self.pool, self.pool, self.index,
                               self.store)
        self.agent._serverFactory = self.site
        response = self.get("/studies", Origin="https://viewer.example")
        self.assertIsNone(response.header("access-control-allow-origin"))
