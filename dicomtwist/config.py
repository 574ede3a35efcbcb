"""The archive's configuration file (qrscp.rst "Configuration File").

The format is pynetdicom qrscp's: a configparser file whose ``[DEFAULT]``
section configures the application and whose other sections are Move
Destinations (``address`` and ``port``).  A file written for pynetdicom's
qrscp works unchanged.  Unlike configparser's usual behaviour, destination
sections do **not** inherit ``[DEFAULT]`` keys: a destination without a
``port`` is an error, not a silent copy of our own listen port.
"""

from __future__ import annotations

import configparser
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable

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
}


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
    destinations: dict[str, Destination] = field(default_factory=dict)

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
        unknown = set(values) - {"address", "port", "tls"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        if not values.get("address", "").strip():
            raise ConfigError(f"{where} has no address")
        if not values.get("port", "").strip():
            raise ConfigError(f"{where} has no port")
        try:
            port = _port(values["port"])
        except ValueError:
            raise ConfigError(f"{where}: invalid port {values['port']!r}") from None
        tls = values.get("tls", "no").strip().lower() in ("1", "yes", "true", "on")
        config.destinations[title] = Destination(title, values["address"].strip(), port, tls)
    return config
