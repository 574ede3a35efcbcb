"""The daemons the suite measures, each started with its own configuration.

Every server listens on 127.0.0.1 on a free port, keeps its data in its
own directory under the run's work directory, writes its log to a file
there, and is stopped (SIGTERM, then SIGKILL) when the run ends.

* ``ours``: dicomtwist's archive (``dicomqr``), the *installed* package, so
  run ``pip install .`` after changing the code.
* ``pynetdicom``: pynetdicom's ``qrscp`` app with the same configuration file.
* ``dcmqrscp``: DCMTK's archive with a storage area; it forks a child per
  association (the parent's and the children's memory are summed).
* ``storescp``: DCMTK's storage SCP (store measures only).
* ``orthanc``: Orthanc with a JSON configuration (sqlite index, no plugins,
  HTTP on loopback only).

For the DICOMweb benchmark (``benchmarks/dicomweb.py``), :data:`WEB_SERVERS`:
the same two daemons with an HTTP port each, :class:`OursWeb` (``http`` in
its configuration file) and :class:`OrthancWeb` (the DICOMweb plugin).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import ClassVar

DCMTK = "/usr/bin"
ORTHANC = "/usr/sbin/Orthanc"
#: The C-MOVE destination every archive is configured with.
MOVE_DESTINATION = "STORESCP"
#: Calling AE titles of the load generators (Orthanc wants them declared).
CLIENT_AES = ("STORESCU", "FINDSCU", "MOVESCU", "GETSCU", "BENCHSCU", "ECHOSCU")

#: Which measures a server takes part in.
ALL_MEASURES = frozenset({"assoc", "idle", "store", "bulk", "find", "move", "get", "large"})
STORE_MEASURES = frozenset({"store", "bulk", "large"})


def dcmtk(tool: str) -> str:
    """The path of a DCMTK tool (never a PATH lookup: pyenv shims shadow them)."""
    return os.path.join(DCMTK, tool)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until something accepts connections on ``port``.

    :raises RuntimeError: the process exited or the timeout passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                host, peer = sock.getsockname(), sock.getpeername()
                if host != peer:  # not a loopback self-connect
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout:.0f} s")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fp:
                stat = fp.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after it.
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def status_kib(pid: int, keys: tuple[str, ...] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    """Fields of ``/proc/<pid>/status`` in KiB (missing ones are absent)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fp:
            for line in fp:
                key, _, rest = line.partition(":")
                if key in keys:
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def pss_kib(pid: int) -> int:
    """Proportional set size of a process (shared pages split), in KiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fp:
            for line in fp:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pid: int) -> None:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` 5; needs privileges)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fp:
            fp.write("5")
    except OSError:
        pass


class Server:
    """A daemon under test.

    :param root: the work directory of this server (created).
    :param dest_port: where the C-MOVE destination ``STORESCP`` listens.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    measures: ClassVar[frozenset[str]] = ALL_MEASURES
    #: Forks per association: memory is the sum over the process tree.
    forks: ClassVar[bool] = False
    #: At most this many instances of the bulk load (None: all).
    max_bulk: ClassVar[int | None] = None
    ae_title: ClassVar[str] = "QRSCP"

    def __init__(self, root: str, dest_port: int) -> None:
        self.root = root
        self.dest_port = dest_port
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._log = None

    @classmethod
    def available(cls) -> str | None:
        """Why this server cannot run here, or None."""
        return None

    def command(self) -> list[str]:
        """The command line (after :meth:`configure`)."""
        raise NotImplementedError

    def configure(self) -> None:
        """Write configuration files into :attr:`root`."""

    def env(self) -> dict[str, str]:
        """The environment: ours, with Nagle off for DCMTK."""
        return dict(os.environ, TCP_NODELAY="1")

    def start(self) -> None:
        """Start on a free port with an empty data directory; wait until listening."""
        if os.path.exists(self.root):
            shutil.rmtree(self.root)
        os.makedirs(self.root)
        self.port = free_port()
        self.configure()
        self._log = open(os.path.join(self.root, "server.log"), "wb")
        self.process = subprocess.Popen(self.command(), cwd=self.root, env=self.env(),
                                        stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready()
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {e}\n{self.log_tail()}") from None

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data (a cold
        start: nothing the previous process cached survives but the OS's)."""
        self.stop()
        self._log = open(os.path.join(self.root, "server.log"), "ab")
        self.process = subprocess.Popen(self.command(), cwd=self.root, env=self.env(),
                                        stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready()
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{self.name} did not restart: {e}\n{self.log_tail()}") from None

    def wait_ready(self) -> None:
        """Wait until the daemon listens (:meth:`start`, :meth:`restart`)."""
        wait_for_port(self.port, self.process)

    def alive(self) -> bool:
        """The daemon is still running."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log."""
        try:
            with open(os.path.join(self.root, "server.log"), "rb") as fp:
                text = fp.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        """Send SIGTERM to the process group (:meth:`stop` waits)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group is ours alone
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # also any forked children left behind
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def wipe(self) -> None:
        """Delete the data directory (after :meth:`stop`)."""
        shutil.rmtree(self.root, ignore_errors=True)

    # -- memory ---------------------------------------------------------------
    def pids(self) -> list[int]:
        """The daemon's processes (the parent and, for forking ones, children)."""
        if self.process is None:
            return []
        if self.forks:
            return process_tree(self.process.pid)
        return [self.process.pid]

    def rss_kib(self) -> int:
        """Current resident set, summed over :meth:`pids`."""
        return sum(status_kib(pid).get("VmRSS", 0) for pid in self.pids())

    def memory_kib(self) -> int:
        """The memory figure we report: RSS, or for a forking server the PSS
        summed over its processes (summed RSS would count the pages its
        children share with the parent once per child)."""
        return self.pss_kib() if self.forks else self.rss_kib()

    def pss_kib(self) -> int:
        """Current proportional set size, summed over :meth:`pids`."""
        return sum(pss_kib(pid) for pid in self.pids())

    def hwm_kib(self) -> int:
        """The main process's peak RSS since the last :meth:`reset_peak`."""
        if self.process is None:
            return 0
        return status_kib(self.process.pid).get("VmHWM", 0)

    def reset_peak(self) -> None:
        """Restart the main process's ``VmHWM`` from its current RSS."""
        if self.process is not None:
            reset_peak(self.process.pid)


def _qrscp_ini(server: Server, extra: str = "") -> str:
    """A pynetdicom-qrscp configuration file (ours reads the same format).

    :param extra: more ``[DEFAULT]`` lines.
    """
    path = os.path.join(server.root, "qrscp.ini")
    with open(path, "w") as fp:
        fp.write(f"""[DEFAULT]
ae_title: {server.ae_title}
port: {server.port}
max_pdu: 16382
acse_timeout: 30
dimse_timeout: 60
network_timeout: 60
bind_address: 127.0.0.1
instance_location: {os.path.join(server.root, "instances")}
database_location: {os.path.join(server.root, "instances.sqlite")}
log_identifier: False
{extra}
[{MOVE_DESTINATION}]
address: 127.0.0.1
port: {server.dest_port}
""")
    return path


class Ours(Server):
    """dicomtwist's ``dicomqr``, default options but for ``max_associations``.

    :cvar source: a source tree to import dicomtwist from (``PYTHONPATH``);
        None: the installed package.
    """

    name = "ours"
    label = "dicomtwist"
    source: ClassVar[str | None] = None
    #: Like dcmqrscp's MaxAssociations below: room for the idle-association test.
    MAX_ASSOCIATIONS = 2000

    def command(self) -> list[str]:
        """``dicomqr -c qrscp.ini`` (the console script's function)."""
        launcher = "import sys; sys.argv[0] = 'dicomqr'; from dicomtwist.tap import run; run()"
        ini = _qrscp_ini(self, f"max_associations: {self.MAX_ASSOCIATIONS}\n"
                         + self.extra_ini())
        return [sys.executable, "-c", launcher, "-c", ini]

    def extra_ini(self) -> str:
        """More ``[DEFAULT]`` lines for the configuration file (none here)."""
        return ""

    @classmethod
    def python_env(cls) -> dict[str, str]:
        """The environment importing the chosen dicomtwist (never the cwd's)."""
        env = dict(os.environ, TCP_NODELAY="1")
        env.pop("PYTHONPATH", None)
        if cls.source:
            env["PYTHONPATH"] = cls.source
        return env

    def env(self) -> dict[str, str]:
        """See :meth:`python_env`."""
        return self.python_env()

    @classmethod
    def describe(cls) -> str:
        """The version of the dicomtwist that will run."""
        probe = subprocess.run(
            [sys.executable, "-c", "import dicomtwist; print(dicomtwist.__version__)"],
            cwd="/", env=cls.python_env(), capture_output=True, text=True)
        return probe.stdout.strip() or "?"

    @classmethod
    def available(cls) -> str | None:
        """dicomtwist must import (installed with ``pip install .``, or ``source``)."""
        probe = subprocess.run([sys.executable, "-c", "import dicomtwist.tap"],
                               cwd="/", env=cls.python_env(), capture_output=True)
        return None if probe.returncode == 0 else "dicomtwist is not installed (pip install .)"


class Pynetdicom(Server):
    """pynetdicom's ``qrscp`` app (``python -m pynetdicom qrscp``)."""

    name = "pynetdicom"
    label = "pynetdicom qrscp"

    def command(self) -> list[str]:
        """``python -m pynetdicom qrscp -c qrscp.ini``."""
        return [sys.executable, "-m", "pynetdicom", "qrscp", "-c", _qrscp_ini(self)]

    @classmethod
    def available(cls) -> str | None:
        """pynetdicom and sqlalchemy (qrscp's database) must import."""
        probe = subprocess.run([sys.executable, "-c", "import pynetdicom, sqlalchemy"],
                               capture_output=True)
        return None if probe.returncode == 0 else "pynetdicom or sqlalchemy not installed"


class Dcmqrscp(Server):
    """DCMTK ``dcmqrscp`` with one storage area (forks per association)."""

    name = "dcmqrscp"
    label = "DCMTK dcmqrscp"
    forks = True
    #: Studies the storage area may hold before it deletes the oldest
    #: (dcmqrscp caps it at 500, and its index insert is linear in its size).
    MAX_STUDIES = 500
    max_bulk = MAX_STUDIES * 20

    @classmethod
    def available(cls) -> str | None:
        """DCMTK's binary must exist."""
        return None if os.access(dcmtk("dcmqrscp"), os.X_OK) else "DCMTK dcmqrscp not installed"

    def configure(self) -> None:
        """``dcmqrscp.cfg``: our port, the move destination, a large quota."""
        storage = os.path.join(self.root, "db")
        os.makedirs(storage)
        with open(os.path.join(self.root, "dcmqrscp.cfg"), "w") as fp:
            fp.write(f"""NetworkTCPPort  = {self.port}
MaxPDUSize      = 16384
MaxAssociations = 2000

HostTable BEGIN
destination = ({MOVE_DESTINATION}, 127.0.0.1, {self.dest_port})
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{self.ae_title}  {storage}  RW  ({self.MAX_STUDIES}, 4096mb)  ANY
AETable END
""")

    def command(self) -> list[str]:
        """``dcmqrscp -c dcmqrscp.cfg`` (forking, its default)."""
        return [dcmtk("dcmqrscp"), "-c", os.path.join(self.root, "dcmqrscp.cfg")]


class Storescp(Server):
    """DCMTK ``storescp`` writing to a directory (one association at a time)."""

    name = "storescp"
    label = "DCMTK storescp"
    measures = STORE_MEASURES
    ae_title = "STORESCP"

    @classmethod
    def available(cls) -> str | None:
        """DCMTK's binary must exist."""
        return None if os.access(dcmtk("storescp"), os.X_OK) else "DCMTK storescp not installed"

    def command(self) -> list[str]:
        """``storescp -od DIR PORT``."""
        out = os.path.join(self.root, "out")
        os.makedirs(out, exist_ok=True)
        return [dcmtk("storescp"), "-aet", self.ae_title, "-od", out, str(self.port)]


class Orthanc(Server):
    """Orthanc with its own JSON configuration: sqlite index, no plugins."""

    name = "orthanc"
    label = "Orthanc"
    ae_title = "ORTHANC"

    @classmethod
    def available(cls) -> str | None:
        """The Debian package's binary must exist."""
        return None if os.access(ORTHANC, os.X_OK) else f"Orthanc not installed ({ORTHANC})"

    def configure(self) -> None:
        """``orthanc.json``: DICOM and HTTP on loopback, stores from anyone."""
        self.http_port = free_port()
        modalities = {ae: [ae, "127.0.0.1", self.dest_port if ae == MOVE_DESTINATION else 104]
                      for ae in (*CLIENT_AES, MOVE_DESTINATION)}
        config = {
            "Name": "dicomtwist-bench",
            "StorageDirectory": os.path.join(self.root, "storage"),
            "IndexDirectory": os.path.join(self.root, "index"),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": modalities,
            "SaveJobs": False,
            "HttpsVerifyPeers": False,
        }
        with open(os.path.join(self.root, "orthanc.json"), "w") as fp:
            json.dump(config, fp, indent=2)

    def command(self) -> list[str]:
        """``Orthanc orthanc.json``."""
        return [ORTHANC, os.path.join(self.root, "orthanc.json")]


SERVERS: dict[str, type[Server]] = {
    cls.name: cls for cls in (Ours, Pynetdicom, Dcmqrscp, Storescp, Orthanc)}

#: Orthanc's DICOMweb plugin (Debian's ``orthanc-dicomweb``).
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class OursWeb(Ours):
    """:class:`Ours` serving DICOMweb too, on ``http_port`` (127.0.0.1).

    :ivar http_port: the HTTP port; the service root is ``/dicom-web``.
    """

    def configure(self) -> None:
        """Pick the HTTP port (kept across :meth:`restart`)."""
        self.http_port = free_port()

    def extra_ini(self) -> str:
        """``http: tcp:PORT:interface=127.0.0.1``."""
        return f"http: tcp:{self.http_port}:interface=127.0.0.1\n"

    def wait_ready(self) -> None:
        """Both the DICOM and the HTTP port listen."""
        wait_for_port(self.port, self.process)
        wait_for_port(self.http_port, self.process)


class OrthancWeb(Orthanc):
    """:class:`Orthanc` with its DICOMweb plugin at ``/dicom-web``.

    The plugin keeps its defaults (``StudiesMetadata``/``SeriesMetadata``
    ``Full``: metadata read from the files) but for ``Host``, set to this
    Orthanc's address; Orthanc's own find limits are explicitly off
    (``LimitFindResults``/``LimitFindInstances`` 0, their defaults), so a
    QIDO-RS answer holds every match.
    """

    label = "Orthanc + DICOMweb"

    @classmethod
    def available(cls) -> str | None:
        """Orthanc and the plugin must exist."""
        why = super().available()
        if why is None and not os.path.exists(ORTHANC_DICOMWEB):
            why = f"Orthanc's DICOMweb plugin not installed ({ORTHANC_DICOMWEB})"
        return why

    def configure(self) -> None:
        """:meth:`Orthanc.configure` plus the plugin."""
        super().configure()
        path = os.path.join(self.root, "orthanc.json")
        with open(path) as fp:
            config = json.load(fp)
        config.update({
            "Plugins": [ORTHANC_DICOMWEB],
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": f"127.0.0.1:{self.http_port}", "Ssl": False},
        })
        with open(path, "w") as fp:
            json.dump(config, fp, indent=2)

    def wait_ready(self) -> None:
        """Both the DICOM and the HTTP port listen."""
        wait_for_port(self.port, self.process)
        wait_for_port(self.http_port, self.process)


#: The DICOMweb benchmark's servers.
WEB_SERVERS: dict[str, type[Server]] = {"ours": OursWeb, "orthanc": OrthancWeb}


class Destination:
    """The C-MOVE destination: a DCMTK ``storescp --ignore`` (receives, drops)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start listening as ``STORESCP``."""
        os.makedirs(self.root, exist_ok=True)
        self._log = open(os.path.join(self.root, "destination.log"), "wb")
        self.process = subprocess.Popen(
            [dcmtk("storescp"), "-aet", MOVE_DESTINATION, "--ignore", str(self.port)],
            cwd=self.root, env=dict(os.environ, TCP_NODELAY="1"), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        """Terminate and reap."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self._log.close()


#: Orthanc's GDCM plugin (Debian's ``orthanc-gdcm``): decoder and transcoder.
ORTHANC_GDCM = "/usr/share/orthanc/plugins/libOrthancGdcm.so"
#: JPEG-LS Lossless (PS3.5 A.4.3), the compressed syntax of the transcoding
#: benchmark (``benchmarks/transcode.py``).
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


class OrthancGdcm(Orthanc):
    """:class:`Orthanc` with its GDCM plugin, converting what it sends.

    Transcoding options, explicit though most are Orthanc 1.10's defaults:
    ``TranscodeDicomProtocol`` true (a C-STORE sub-operation is converted
    when the destination does not accept the stored syntax);
    ``BuiltinDecoderTranscoderOrder`` ``"After"`` (plugins first, so GDCM
    decodes and encodes, DCMTK only if GDCM declines; :meth:`set_builtin_order`
    changes it); no ``IngestTranscoding`` (instances are stored as
    received); GDCM enabled without throttling or syntax restriction.
    Not a default:
    ``DicomScuPreferredTransferSyntax`` is JPEG-LS Lossless, the syntax
    Orthanc converts to when the destination accepts neither the stored
    one nor an uncompressed one (its default, Explicit VR Little Endian,
    leaves Orthanc nothing to offer a JPEG-LS-only destination).
    """

    label = "Orthanc + GDCM"
    #: Orthanc's default: plugins (GDCM) first.
    builtin_order: str = "After"

    @classmethod
    def available(cls) -> str | None:
        """Orthanc and the plugin must exist."""
        why = super().available()
        if why is None and not os.path.exists(ORTHANC_GDCM):
            why = (f"Orthanc's GDCM plugin not installed ({ORTHANC_GDCM}):"
                   " apt-get install -y orthanc-gdcm")
        return why

    def configure(self) -> None:
        """:meth:`Orthanc.configure` plus the plugin and the transcoding options."""
        super().configure()
        path = os.path.join(self.root, "orthanc.json")
        with open(path) as fp:
            config = json.load(fp)
        config.update({
            "Plugins": [ORTHANC_GDCM],
            "Gdcm": {"Enable": True},
            "TranscodeDicomProtocol": True,
            "BuiltinDecoderTranscoderOrder": self.builtin_order,
            "DicomScuPreferredTransferSyntax": JPEG_LS_LOSSLESS,
        })
        with open(path, "w") as fp:
            json.dump(config, fp, indent=2)

    def set_builtin_order(self, order: str) -> None:
        """Set ``BuiltinDecoderTranscoderOrder`` (``"Before"``: DCMTK first,
        ``"After"``: GDCM first, ``"Disabled"``: GDCM only) in the
        configuration file; it takes effect at the next :meth:`restart`."""
        self.builtin_order = order
        path = os.path.join(self.root, "orthanc.json")
        with open(path) as fp:
            config = json.load(fp)
        config["BuiltinDecoderTranscoderOrder"] = order
        with open(path, "w") as fp:
            json.dump(config, fp, indent=2)


#: The transcoding benchmark's servers.
TRANSCODE_SERVERS: dict[str, type[Server]] = {"ours": Ours, "orthanc": OrthancGdcm}


class SyntaxDestination:
    """A C-MOVE destination accepting only the given transfer syntaxes: DCMTK
    ``storescp`` with an association profile (``--config-file``), writing
    what it receives into :attr:`out` as received (``+t=``).

    Restartable on the same port with other syntaxes (:meth:`start` after
    :meth:`stop`), so every archive keeps one configured destination.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.out = os.path.join(root, "out")
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self, syntaxes: tuple[str, ...], sop_classes: tuple[str, ...]) -> None:
        """Listen as ``STORESCP``, accepting ``sop_classes`` in ``syntaxes`` only."""
        os.makedirs(self.out, exist_ok=True)
        config = os.path.join(self.root, "storescp.cfg")
        lines = ["[[TransferSyntaxes]]", "[Only]"]
        lines += [f"TransferSyntax{i} = {uid}" for i, uid in enumerate(syntaxes, 1)]
        lines += ["", "[[PresentationContexts]]", "[Contexts]"]
        lines += [f"PresentationContext{i} = {uid}\\Only" for i, uid in enumerate(sop_classes, 1)]
        lines += ["", "[[Profiles]]", "[Bench]", "PresentationContexts = Contexts", ""]
        with open(config, "w") as fp:
            fp.write("\n".join(lines))
        self._log = open(os.path.join(self.root, "destination.log"), "ab")
        self.process = subprocess.Popen(
            [dcmtk("storescp"), "-aet", MOVE_DESTINATION, "-xf", config, "Bench",
             "-od", self.out, str(self.port)],
            cwd=self.root, env=dict(os.environ, TCP_NODELAY="1"), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process)

    def received(self) -> list[str]:
        """The files received so far."""
        return sorted(os.path.join(self.out, name) for name in os.listdir(self.out))

    def clear(self) -> None:
        """Delete the received files."""
        for path in self.received():
            os.unlink(path)

    def stop(self) -> None:
        """Terminate and reap."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self._log.close()


# -- PostgreSQL and workers (benchmarks/scaleout.py) --------------------------
#: Orthanc's PostgreSQL index plugin (Debian's ``orthanc-postgresql``).
ORTHANC_POSTGRESQL = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"


def postgres_bin() -> str | None:
    """The newest Debian PostgreSQL's ``bin`` directory (or ``initdb`` on PATH)."""
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster for the benchmark, durable as shipped.

    ``initdb`` into ``root`` (as ``postgres`` when we are root: initdb
    refuses root), 127.0.0.1 on a free port, trust authentication, and the
    server's defaults otherwise: ``fsync``, ``synchronous_commit`` and
    ``full_page_writes`` stay on (unlike the tests' cluster), so a commit
    costs what it costs in production; only ``max_connections`` is raised
    (workers and Orthanc each hold a pool).
    """

    def __init__(self, parent: str) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
        # A directory of its own (the server's user must reach it), in
        # ``parent`` so that it is on the same disk as the instances.
        self.root = tempfile.mkdtemp(prefix="dicomtwist-bench-pg-", dir=parent)
        self.data = os.path.join(self.root, "data")
        self.port = 0
        self.user: str | None = None

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [os.path.join(self.bin, tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if check and done.returncode:
            raise RuntimeError(f"PostgreSQL's {tool} failed ({done.returncode}):"
                               f" {(done.stderr or done.stdout).strip()[-500:]}")
        return done

    def start(self) -> None:
        """``initdb`` and ``pg_ctl start``; wait until it accepts connections."""
        import pwd

        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8")
        self.port = free_port()
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "max_connections = 300\n")
        self._run("pg_ctl", "-D", self.data, "-w", "-t", "60", "-l",
                  os.path.join(self.root, "log"), "start")

    def stop(self) -> None:
        """Fast shutdown; remove the cluster's files."""
        if self.port:
            self._run("pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop", check=False)
            self.port = 0
        shutil.rmtree(self.root, ignore_errors=True)

    def uri(self, database: str = "postgres") -> str:
        """The connection URI of one of the cluster's databases."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> list[tuple]:
        """Run one statement (autocommit); its rows."""
        import psycopg

        with psycopg.connect(self.uri(database), autocommit=True) as conn:
            cursor = conn.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []

    def recreate(self, database: str) -> None:
        """Drop ``database`` if it exists (closing its sessions) and create it empty."""
        self.sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        self.sql(f"CREATE DATABASE {database}")

    def drop(self, database: str) -> None:
        """Drop ``database`` (closing its sessions)."""
        if self.port:
            self.sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    def version(self) -> str:
        """``server_version``."""
        return str(self.sql("SHOW server_version")[0][0])


class _OnPostgres:
    """A server whose index is a database of :attr:`cluster`, made empty at
    each :meth:`start` and dropped by :meth:`wipe`."""

    #: Set by the benchmark before any server starts.
    cluster: ClassVar[PostgresCluster | None] = None

    @property
    def database(self) -> str:
        """This server's database: ``bench_`` and its name."""
        return "bench_" + self.name.replace("-", "_")

    def create_database(self) -> None:
        """An empty database for this server."""
        if self.cluster is None:
            raise RuntimeError(f"{self.name}: no PostgreSQL cluster configured")
        self.cluster.recreate(self.database)

    def wipe(self) -> None:
        """Delete the data directory and the database."""
        super().wipe()
        if self.cluster is not None:
            self.cluster.drop(self.database)


class OursSqlite(Ours):
    """:class:`Ours` (sqlite index, one process) under its own name."""

    name = "ours-sqlite"
    label = "dicomtwist + sqlite"


class OursPostgres(_OnPostgres, Ours):
    """:class:`Ours` with its index in PostgreSQL and ``--workers`` processes
    (``--database-location`` and ``--workers`` on the command line, the rest
    of :class:`Ours`'s configuration unchanged)."""

    name = "ours-pg"
    label = "dicomtwist + PostgreSQL"
    workers: ClassVar[int] = 1

    def configure(self) -> None:
        """An empty database."""
        self.create_database()

    def command(self) -> list[str]:
        """:meth:`Ours.command` plus the index location and the workers."""
        return [*super().command(), "--database-location", self.cluster.uri(self.database),
                "--workers", str(self.workers)]

    def wait_ready(self) -> None:
        """Until a C-ECHO is answered: with ``--workers`` the supervisor
        listens before its workers accept (the kernel queues the
        connections meanwhile); then a few seconds for the other workers."""
        from benchmarks import rawclient

        wait_for_port(self.port, self.process)
        deadline = time.monotonic() + 90
        while True:
            try:
                rawclient.echo_once(self.port, self.ae_title,
                                    rawclient.associate_rq(self.ae_title), timeout=5)
                break
            except (OSError, rawclient.PeerError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("no C-ECHO answered") from None
        if self.workers > 1:
            time.sleep(3)

    @property
    def forks(self) -> bool:  # type: ignore[override]
        """With workers, memory is summed over the process tree."""
        return self.workers > 1


class OursPostgres2(OursPostgres):
    """:class:`OursPostgres` with ``--workers 2``."""

    name = "ours-pg-w2"
    label = "dicomtwist + PostgreSQL, 2 workers"
    workers = 2


class OrthancPostgres(_OnPostgres, Orthanc):
    """:class:`Orthanc` with its index in PostgreSQL (the ``orthanc-postgresql``
    index plugin; files stay in the storage directory): the plugin's
    defaults but for the connection (``EnableIndex`` true, ``EnableStorage``
    false, ``Lock`` false so a restart does not wait for a stale lock;
    ``IndexConnectionsCount`` left at its default, 1)."""

    name = "orthanc-pg"
    label = "Orthanc + PostgreSQL"

    @classmethod
    def available(cls) -> str | None:
        """Orthanc and the plugin must exist."""
        why = super().available()
        if why is None and not os.path.exists(ORTHANC_POSTGRESQL):
            why = (f"Orthanc's PostgreSQL plugin not installed ({ORTHANC_POSTGRESQL}):"
                   " apt-get install -y orthanc-postgresql")
        return why

    def configure(self) -> None:
        """:meth:`Orthanc.configure` plus the plugin and an empty database."""
        super().configure()
        self.create_database()
        path = os.path.join(self.root, "orthanc.json")
        with open(path) as fp:
            config = json.load(fp)
        config.update({
            "Plugins": [ORTHANC_POSTGRESQL],
            "PostgreSQL": {"EnableIndex": True, "EnableStorage": False,
                           "Host": "127.0.0.1", "Port": self.cluster.port,
                           "Database": self.database, "Username": "postgres",
                           "Password": "", "Lock": False},
        })
        with open(path, "w") as fp:
            json.dump(config, fp, indent=2)


#: The scale-out benchmark's servers.
SCALEOUT_SERVERS: dict[str, type[Server]] = {
    cls.name: cls for cls in (OursSqlite, OursPostgres, OursPostgres2, OrthancPostgres)}
