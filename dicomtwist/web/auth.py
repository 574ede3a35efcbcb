"""HTTP authentication and permissions for the archive's web services.

Off unless configured.  Two schemes (RFC 7617 Basic, RFC 6750 Bearer),
each from a file an administrator writes:

- ``http_users``: one user a line, ``name:hash:permissions``; the hash is
  ``pbkdf2_sha256$<iterations>$<salt, base64>$<digest, base64>`` as
  :func:`hash_password` (and ``python -m dicomtwist.web.auth NAME``) makes
  it; a password is never stored.
- ``http_tokens``: one bearer token a line, ``name:sha256:permissions``,
  with the hex SHA-256 of the token (the token itself is not stored).

Permissions are the DIMSE idea (a peer may query and retrieve but not
store) in DICOMweb words: ``query`` (QIDO-RS), ``retrieve`` (WADO-RS),
``store`` (STOW-RS), and for the web page's JSON API (:mod:`dicomtwist.web.api`)
``send`` (a study or series to a configured destination) and ``delete``
(a study, its rows and files), comma-separated, or ``all``.  Blank lines and lines
starting with ``#`` are ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass, field

__all__ = ["PERMISSIONS", "Credentials", "Principal", "hash_password", "load"]

#: What a user or token may be permitted (``metrics``: read ``/metrics``).
PERMISSIONS = frozenset({"query", "retrieve", "store", "send", "delete", "metrics"})
_ITERATIONS = 200_000


@dataclass(frozen=True)
class Principal:
    """Who made a request, and what they may do."""

    name: str
    permissions: frozenset[str]


def _permissions(text: str, where: str) -> frozenset[str]:
    words = {w.strip().lower() for w in text.split(",") if w.strip()}
    if "all" in words:
        return PERMISSIONS
    unknown = words - PERMISSIONS
    if unknown:
        raise ValueError(f"{where}: unknown permission(s) {', '.join(sorted(unknown))}"
                         f" (use {', '.join(sorted(PERMISSIONS))} or all)")
    return frozenset(words)


def hash_password(password: str, salt: bytes | None = None,
                  iterations: int = _ITERATIONS) -> str:
    """The ``http_users`` hash of a password (PBKDF2-HMAC-SHA256)."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return (f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def _check_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"),
                                     base64.b64decode(salt), int(iterations))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass
class Credentials:
    """The users and tokens the web services accept.

    :ivar users: name -> (password hash, permissions).
    :ivar tokens: SHA-256 hex of a token -> principal.
    """

    users: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    tokens: dict[str, Principal] = field(default_factory=dict)
    #: Successful Basic checks, remembered (PBKDF2 is slow on purpose).
    _verified: dict[tuple[str, str], bool] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """Whether any request must authenticate."""
        return bool(self.users or self.tokens)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal an ``Authorization`` header names, or None."""
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and self.tokens:
            digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
            for known, principal in self.tokens.items():
                if hmac.compare_digest(known, digest):
                    return principal
            return None
        if scheme == "basic" and self.users:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            name, sep, password = decoded.partition(":")
            if not sep or name not in self.users:
                return None
            stored, permissions = self.users[name]
            key = (name, hashlib.sha256(password.encode("utf-8")).hexdigest())
            ok = self._verified.get(key)
            if ok is None:
                ok = _check_password(password, stored)
                if ok:
                    if len(self._verified) > 1024:
                        self._verified.clear()
                    self._verified[key] = True
            return Principal(name, permissions) if ok else None
        return None


def load(users_path: str | None, tokens_path: str | None) -> Credentials:
    """Read the users and tokens files.

    :raises ValueError: a file cannot be read or a line is malformed; the
        message names the file and line.
    """
    credentials = Credentials()
    for path, kind in ((users_path, "users"), (tokens_path, "tokens")):
        if path is None:
            continue
        try:
            with open(path, encoding="utf-8") as fp:
                lines = fp.read().splitlines()
        except OSError as e:
            raise ValueError(f"http_{kind} {path}: {e.strerror}") from None
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"http_{kind} {path} line {number}"
            parts = line.split(":")
            if len(parts) != 3 or not parts[0] or not parts[1]:
                raise ValueError(f"{where}: expected name:{'hash' if kind == 'users' else 'sha256'}"
                                 ":permissions")
            name, secret, permissions = parts
            allowed = _permissions(permissions, where)
            if kind == "users":
                if not secret.startswith("pbkdf2_sha256$"):
                    raise ValueError(f"{where}: the hash is not pbkdf2_sha256$... (make one with"
                                     " python -m dicomtwist.web.auth NAME)")
                credentials.users[name] = (secret, allowed)
            else:
                secret = secret.lower()
                if len(secret) != 64 or any(c not in "0123456789abcdef" for c in secret):
                    raise ValueError(f"{where}: not the hex SHA-256 of a token")
                credentials.tokens[secret] = Principal(name, allowed)
    return credentials


def main(argv: list[str]) -> int:
    """``python -m dicomtwist.web.auth NAME [PERMISSIONS]``: ask for a
    password and print the ``http_users`` line."""
    import getpass

    if not argv:
        print("usage: python -m dicomtwist.web.auth NAME"
              " [query,retrieve,store,send,delete,metrics]",
              file=sys.stderr)
        return 2
    name = argv[0]
    permissions = argv[1] if len(argv) > 1 else "all"
    _permissions(permissions, "permissions")
    password = getpass.getpass(f"Password for {name}: ")
    print(f"{name}:{hash_password(password)}:{permissions}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
