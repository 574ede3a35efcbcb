"""A throwaway PostgreSQL cluster for the tests of the PostgreSQL index.

The first test that asks for a database starts one cluster for the whole
test process: ``initdb`` into a temporary directory as an unprivileged
user (``postgres`` when we are root, as Debian's package creates it),
listening on 127.0.0.1 on a free port (its unix socket in the same
directory), trust authentication.  It is stopped and removed at exit.
Each test gets a database of its own (:func:`create_database`), dropped
by its cleanup.

PostgreSQL comes from Debian (``apt-get install postgresql``): its binaries
are looked for under ``/usr/lib/postgresql/*/bin`` and on ``PATH``.  When
none is installed the tests that need it fail with a message saying so.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading

__all__ = ["Cluster", "cluster", "create_database", "drop_database"]

_lock = threading.Lock()
_cluster: Cluster | None = None
_names = itertools.count(1)


class PostgresMissing(Exception):
    """PostgreSQL is not installed where the tests look for it."""


def _bin_dir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    raise PostgresMissing(
        "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on"
        " PATH): apt-get install postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One running cluster: ``initdb``, ``pg_ctl start``; :meth:`stop` ends it."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.directory = tempfile.mkdtemp(prefix="dicomtwist-pg-")
        self.data = os.path.join(self.directory, "data")
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            # initdb refuses root: run the server as the package's user.
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.directory}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 300\n")
        self.start()
        atexit.register(self.stop)

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [os.path.join(self.bin, tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True,
                              cwd=self.directory)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", self.data, "-w", "-t", "60", "-l",
                  os.path.join(self.directory, "log"), "start")

    def stop(self, remove: bool = True) -> None:
        """Stop the server (fast shutdown); remove its files unless told not to."""
        try:
            self._run("pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")
        except subprocess.CalledProcessError:
            pass
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    def uri(self, database: str = "postgres") -> str:
        """The connection URI of one of the cluster's databases."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement (CREATE/DROP DATABASE) as the superuser."""
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True) as conn:
            conn.execute(sql)


def cluster() -> Cluster:
    """The test process's cluster, started on first use.

    :raises PostgresMissing: when PostgreSQL is not installed.
    """
    global _cluster
    with _lock:
        if _cluster is None:
            _cluster = Cluster()
        return _cluster


def create_database() -> str:
    """A new empty database in the cluster; its URI."""
    name = f"test_{os.getpid()}_{next(_names)}"
    found = cluster()
    found.admin(f"CREATE DATABASE {name}")
    return found.uri(name)


def drop_database(uri: str) -> None:
    """Drop a database :func:`create_database` made (closing its sessions)."""
    name = uri.rsplit("/", 1)[1]
    cluster().admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
