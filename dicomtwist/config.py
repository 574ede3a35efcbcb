"""The archive's configuration file (qrscp.rst "Configuration File").

The format is pynetdicom qrscp's: a configparser file whose ``[DEFAULT]``
section configures the application and whose other sections are Move
Destinations (``address`` and ``port``).  A file written for pynetdicom's
qrscp works unchanged.  Unlike configparser's usual behaviour, destination
sections do **not** inherit ``[DEFAULT]`` keys: a destination without a
``port`` is an error, not a silent copy of our own listen port.

Our additions (docs/security.md): access control (``require_called_aet``,
``allowed_calling_aets``; a peer section's ``permissions`` and
``host_check``, where a section that carries either of them may omit
``port`` when the peer is no move destination) and TLS (``listen``,
``tls_ca``, ``tls_cert``, ``tls_key``; a destination's ``tls`` and its own
``tls_ca``/``tls_cert``/``tls_key``).
"""

from __future__ import annotations

import configparser
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from dicomtwist import access
from dicomtwist.errors import DicomError


class ConfigError(DicomError):
    """A configuration file or value is wrong; the message names it."""


@dataclass(frozen=True)
class Destination:
    """A C-MOVE destination: an AE title with an address and port."""

    ae_title: str
    address: str
    port: int
    tls: bool = False
    #: With ``tls``: CA certificates the destination's certificate must
    #: chain to, and our client certificate and key (None: [DEFAULT]'s).
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: May instances be compressed lossily for this destination (when it
    #: accepts nothing else)?  Off: such a sub-operation fails.
    lossy: bool = False
    #: The order in which transfer syntaxes are preferred for it.
    preference: tuple[str, ...] = ("stored", "lossless", "uncompressed")
    #: C-STORE sub-operations we may have outstanding on its associations:
    #: above 1, proposed as the Asynchronous Operations Window (PS3.7
    #: D.3.3.3) and used as far as the destination grants it.
    window: int = 1


#: The words of a destination's ``preference``.
PREFERENCE_WORDS = ("stored", "lossless", "uncompressed")


def _preference(value: str) -> tuple[str, ...]:
    """``stored, lossless, uncompressed`` in any order (each once; missing
    ones come last in that order)."""
    words = [w.strip().lower() for w in value.replace(",", " ").split() if w.strip()]
    unknown = [w for w in words if w not in PREFERENCE_WORDS]
    if unknown or len(set(words)) != len(words):
        raise ValueError(f"a list of {', '.join(PREFERENCE_WORDS)}, each at most once")
    return tuple(words + [w for w in PREFERENCE_WORDS if w not in words])


def _ae_title(value: str) -> str:
    value = value.strip()
    if not value or len(value) > 16 or "\\" in value or not value.isascii() or not value.isprintable():
        raise ValueError("an AE title is 1 to 16 printable ASCII characters, no backslash")
    return value


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("a port is between 0 and 65535")
    return port


def _max_pdu(value: str) -> int:
    size = int(value)
    if size != 0 and not 4096 <= size <= 0xFFFFFFFF:
        raise ValueError("0 (unlimited) or 4096 to 4294967295")
    return size


def _seconds(value: str) -> float | None:
    if value.strip().lower() in ("", "none"):
        return None
    seconds = float(value)
    if seconds <= 0:
        raise ValueError("a timeout is a positive number of seconds")
    return seconds


def _address(value: str) -> str:
    value = value.strip()
    if value:
        ipaddress.ip_address(value)
    return value


def _boolean(value: str) -> bool:
    word = value.strip().lower()
    if word in ("1", "yes", "true", "on"):
        return True
    if word in ("0", "no", "false", "off"):
        return False
    raise ValueError("one of true/false, yes/no, on/off, 1/0")


def _count(value: str) -> int:
    count = int(value)
    if count < 1:
        raise ValueError("must be at least 1")
    return count


#: The longest ``poll_spin``, in microseconds.
MAX_POLL_SPIN = 1000


def _microseconds(value: str) -> int:
    number = int(value)
    if not 0 <= number <= MAX_POLL_SPIN:
        raise ValueError(f"microseconds, 0 to {MAX_POLL_SPIN}")
    return number


def _megabytes(value: str) -> int:
    size = int(value)
    if size < 0:
        raise ValueError("a size in megabytes, 0 or more")
    return size


def _grace(value: str) -> float:
    seconds = float(value)
    if seconds < 0:
        raise ValueError("a number of seconds, 0 or more")
    return seconds


def _text(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _optional_text(value: str) -> str | None:
    return value.strip() or None


def _descriptions(value: str) -> tuple[str, ...]:
    """Endpoint descriptions separated by white space or new lines."""
    return tuple(value.split())


#: Short names of the lossless syntaxes ``store_transfer_syntax`` takes.
STORE_SYNTAX_NAMES = {
    "rle": "1.2.840.10008.1.2.5",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "jpeg-2000": "1.2.840.10008.1.2.4.90",
}


def _store_syntax(value: str) -> str | None:
    """A lossless transfer syntax, by UID or short name; empty: none."""
    value = value.strip()
    if not value or value.lower() == "none":
        return None
    uid = STORE_SYNTAX_NAMES.get(value.lower(), value)
    if uid not in STORE_SYNTAX_NAMES.values():
        raise ValueError(f"one of {', '.join(STORE_SYNTAX_NAMES)} (or their UIDs)")
    return uid


def _words(value: str) -> tuple[str, ...]:
    """Values separated by white space or commas."""
    return tuple(w for w in value.replace(",", " ").split() if w)


def _url_path(value: str) -> str:
    value = value.strip()
    if not value.startswith("/") or value.strip("/") == "" or any(
            c in value for c in "?#% \\") or ".." in value.split("/"):
        raise ValueError("a URL path such as /dicom-web")
    return "/" + value.strip("/")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _header_bytes(value: str) -> int:
    number = int(value)
    if number < 1024:
        raise ValueError("at least 1024 bytes")
    return number


def _ae_titles(value: str) -> tuple[str, ...]:
    """AE titles separated by white space or commas."""
    return tuple(_ae_title(w) for w in _words(value))


#: The values of ``log_format``.
LOG_FORMATS = ("text", "json")


def _log_format(value: str) -> str:
    value = value.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"one of {', '.join(LOG_FORMATS)}")
    return value


#: The [DEFAULT] keys, their parsers and defaults.
SETTINGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "ae_title": (_ae_title, "QRSCP"),
    "port": (_port, 11112),
    "max_pdu": (_max_pdu, 16382),
    "acse_timeout": (_seconds, 30.0),
    "dimse_timeout": (_seconds, 30.0),
    "network_timeout": (_seconds, 30.0),
    "bind_address": (_address, ""),
    "instance_location": (_text, "instances"),
    "database_location": (_text, "instances.sqlite"),
    # pynetdicom's default.ini has it: log C-FIND/C-GET/C-MOVE identifiers.
    "log_identifier": (_boolean, True),
    # Our additions (see docs/user-guide.md).
    "max_associations": (_count, 64),
    "min_free_space": (_megabytes, 0),
    "shutdown_grace": (_grace, 10.0),
    # Asynchronous Operations Window granted to requestors (docs/conformance.md).
    "async_operations": (_positive, 1),
    # Pending C-MOVE/C-GET responses at most this often (docs/conformance.md).
    "pending_interval": (_grace, 0.1),
    # Processes behind the listening ports (docs/scaling.md).
    "workers": (_count, 1),
    # Polling before sleeping while requests come close together
    # (docs/user-guide.md, dicomtwist/reactor.py).
    "poll_spin": (_microseconds, 40),
    # Compression on ingest (docs/user-guide.md).
    "store_transfer_syntax": (_store_syntax, None),
    # Modality Worklist items (*.wl files; docs/user-guide.md).
    "worklist_location": (_optional_text, None),
    # Access control (docs/security.md).
    "require_called_aet": (_boolean, False),
    "allowed_calling_aets": (access.parse_ae_titles, None),
    # Listeners and TLS (docs/security.md).
    "listen": (_descriptions, ()),
    "tls_ca": (_optional_text, None),
    "tls_cert": (_optional_text, None),
    "tls_key": (_optional_text, None),
    # The HTTP endpoint: DICOMweb (docs/dicomweb.md).
    "http": (_optional_text, None),
    "http_root": (_url_path, "/dicom-web"),
    "http_static": (_descriptions, ()),
    "http_users": (_optional_text, None),
    "http_tokens": (_optional_text, None),
    "http_cors_origins": (_words, ()),
    "http_max_body": (_positive, 4096),
    "http_max_header": (_header_bytes, 16384),
    "http_max_parts": (_positive, 10000),
    "http_idle_timeout": (_grace, 60.0),
    # The audit trail (docs/operations.md "Audit trail").
    "audit": (_optional_text, None),
    "audit_queue": (_positive, 1000),
    "audit_source_id": (_optional_text, None),
    "audit_tls_ca": (_optional_text, None),
    "audit_tls_cert": (_optional_text, None),
    "audit_tls_key": (_optional_text, None),
    # Operations: metrics, readiness, log format (docs/operations.md).
    "metrics_ae_titles": (_ae_titles, ()),
    "min_free_disk": (_megabytes, 0),
    "log_format": (_log_format, "text"),
}

#: Keys of a peer (move destination) section.
PEER_KEYS = frozenset({"address", "port", "tls", "tls_ca", "tls_cert", "tls_key",
                       "lossy", "preference", "window",
                       "permissions", "host_check"})


@dataclass
class Config:
    """The archive's settings (all of ``SETTINGS``) and move destinations."""

    ae_title: str = "QRSCP"
    port: int = 11112
    max_pdu: int = 16382
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = 30.0
    network_timeout: float | None = 30.0
    bind_address: str = ""
    instance_location: str = "instances"
    database_location: str = "instances.sqlite"
    log_identifier: bool = True
    #: Associations served at once; more get an immediate transient reject.
    max_associations: int = 64
    #: Megabytes of free disk space below which stores are refused.
    min_free_space: int = 0
    #: Seconds running associations get to finish at shutdown.
    shutdown_grace: float = 10.0
    #: Operations a requestor proposing an Asynchronous Operations Window
    #: may invoke at once, and C-STORE sub-operations we may invoke at once
    #: on a C-GET SCU's association (1: no window is granted).
    async_operations: int = 1
    #: Seconds between Pending C-MOVE/C-GET responses at least (0: one
    #: after each sub-operation).
    pending_interval: float = 0.1
    #: Archive processes behind the same listening ports (PostgreSQL only).
    workers: int = 1
    #: Microseconds the reactor polls before it sleeps while requests
    #: come close together (0: it never does).
    poll_spin: int = 40
    #: A lossless syntax to store uncompressed instances in (None: as
    #: received).
    store_transfer_syntax: str | None = None
    #: The directory of Modality Worklist items (``*.wl`` files); None:
    #: the worklist answers no records.
    worklist_location: str | None = None
    #: Refuse a called AE title other than ``ae_title`` (reason 7).
    require_called_aet: bool = False
    #: Only these calling AE titles may associate (None: anyone; reason 3).
    allowed_calling_aets: frozenset[str] | None = None
    #: Endpoint descriptions to listen on (empty: ``port``/``bind_address``).
    listen: tuple[str, ...] = ()
    #: CA certificates (file or directory): client certificates on ``ssl:``
    #: listeners must chain to them; TLS destinations' too.
    tls_ca: str | None = None
    #: Our certificate and key: for ``ssl:`` listeners without their own,
    #: and presented to TLS move destinations.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: The HTTP endpoint description (None: no HTTP port is opened).
    http: str | None = None
    #: The DICOMweb service root.
    http_root: str = "/dicom-web"
    #: ``/PATH=DIRECTORY`` entries served as static files.
    http_static: tuple[str, ...] = ()
    #: Users (Basic) and bearer tokens files; none: no authentication.
    http_users: str | None = None
    http_tokens: str | None = None
    #: Origins allowed to call from a browser (CORS); ``*`` for any.
    http_cors_origins: tuple[str, ...] = ()
    #: Request body limit (MB), header limit (bytes), parts per request.
    http_max_body: int = 4096
    http_max_header: int = 16384
    http_max_parts: int = 10000
    #: Seconds an HTTP connection may stay idle.
    http_idle_timeout: float = 60.0
    #: Where audit messages go: ``udp:HOST:PORT``, ``tls:HOST:PORT`` or
    #: ``file:PATH`` (None: no audit trail).
    audit: str | None = None
    #: Audit messages waiting for the collector; more are dropped (counted).
    audit_queue: int = 1000
    #: The AuditSourceID of the messages (None: ``AE_TITLE@HOST``).
    audit_source_id: str | None = None
    #: For ``tls:``: the collector's CA certificates (None: the platform's
    #: trust store), and our client certificate and key, if it wants one.
    audit_tls_ca: str | None = None
    audit_tls_cert: str | None = None
    audit_tls_key: str | None = None
    #: Calling AE titles that get a metrics label value of their own
    #: (others count as ``other``).
    metrics_ae_titles: tuple[str, ...] = ()
    #: Megabytes of free disk space below which ``/readyz`` answers 503
    #: (the floor is the larger of this and ``min_free_space``).
    min_free_disk: int = 0
    #: ``text`` (the console format) or ``json`` (one object a line).
    log_format: str = "text"
    destinations: dict[str, Destination] = field(default_factory=dict)
    #: Access rules of the peers that have a ``permissions`` or
    #: ``host_check`` key, by AE title.
    peers: dict[str, access.PeerRule] = field(default_factory=dict)

    def access_rules(self) -> access.AccessRules:
        """The access rules these settings describe."""
        return access.AccessRules(self.require_called_aet, self.allowed_calling_aets,
                                  dict(self.peers))

    def set(self, key: str, raw: str, where: str) -> None:
        """Parse and set one setting.

        :raises ConfigError: naming ``where`` and the key when invalid.
        """
        parse, _ = SETTINGS[key]
        try:
            setattr(self, key, parse(raw))
        except ValueError as e:
            raise ConfigError(f"{where}: invalid {key} {raw!r}: {e}") from None


def load(path: str) -> Config:
    """Read a configuration file.

    :raises ConfigError: the file is missing or unreadable, has an unknown
        key, a bad value, or a destination without address or port.
    """
    parser = configparser.ConfigParser(default_section="\x00none", interpolation=None)
    try:
        with open(path, encoding="utf-8") as fp:
            parser.read_file(fp)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        # configparser's messages span lines; the error is one line.
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ConfigError(f"config file {path!r} cannot be read: {reason}") from None
    config = Config()
    for section in parser.sections():
        values = parser[section]
        if section == "DEFAULT":
            for key, raw in values.items():
                if key not in SETTINGS:
                    raise ConfigError(f"{path}: unknown key {key!r} in [DEFAULT]")
                config.set(key, raw, path)
            continue
        where = f"{path}: move destination [{section}]"
        try:
            title = _ae_title(section)
        except ValueError as e:
            raise ConfigError(f"{where}: invalid AE title: {e}") from None
        unknown = set(values) - PEER_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        # A section with access rules may describe a peer that is no move
        # destination: then it needs no port (nor, without host_check, an
        # address).
        rules_only = ("permissions" in values or "host_check" in values) \
            and not values.get("port", "").strip()
        address = values.get("address", "").strip()
        host_check = _section_boolean(values, "host_check", where)
        if not address and (host_check or not rules_only):
            raise ConfigError(f"{where} has no address")
        if not rules_only:
            if not values.get("port", "").strip():
                raise ConfigError(f"{where} has no port")
            try:
                port = _port(values["port"])
            except ValueError:
                raise ConfigError(f"{where}: invalid port {values['port']!r}") from None
            tls = _section_boolean(values, "tls", where)
            lossy = _section_boolean(values, "lossy", where)
            try:
                preference = _preference(values.get("preference", ""))
            except ValueError as e:
                raise ConfigError(f"{where}: invalid preference"
                                  f" {values['preference']!r}: {e}") from None
            try:
                window = _positive(values.get("window", "1"))
            except ValueError:
                raise ConfigError(f"{where}: invalid window {values['window']!r}:"
                                  " a number of operations, at least 1") from None
            config.destinations[title] = Destination(
                title, address, port, tls, *(_optional_text(values.get(key, ""))
                                            for key in ("tls_ca", "tls_cert", "tls_key")),
                lossy=lossy, preference=preference, window=window)
        if "permissions" in values or "host_check" in values:
            try:
                permissions = access.parse_permissions(values.get("permissions", "all"))
            except ValueError as e:
                raise ConfigError(f"{where}: invalid permissions"
                                  f" {values['permissions']!r}: {e}") from None
            addresses = _resolve(address, where) if host_check else None
            config.peers[title] = access.PeerRule(title, permissions, addresses)
    return config


def _section_boolean(values: Any, key: str, where: str) -> bool:
    raw = values.get(key, "no")
    try:
        return _boolean(raw)
    except ValueError as e:
        raise ConfigError(f"{where}: invalid {key} {raw!r}: {e}") from None


def _resolve(address: str, where: str) -> frozenset[str]:
    """The addresses a host check accepts: the address itself, or every
    address its host name resolves to (once, at start-up)."""
    try:
        ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        pass
    else:
        return access.host_addresses([address])
    try:
        infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
    except OSError as e:
        raise ConfigError(f"{where}: host_check: cannot resolve {address!r}: {e}") from None
    return access.host_addresses(info[4][0] for info in infos)
