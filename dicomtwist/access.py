"""Access control for the acceptor: who may associate, and use what.

Pure functions over :class:`AccessRules`, in the spirit of DCMTK's AE table
and Orthanc's ``DicomModalities``; nothing here touches a transport.  The
rules come from the configuration file (:mod:`dicomtwist.config`):

* ``require_called_aet``: the called AE title must be ours, else
  A-ASSOCIATE-RJ reason 7, "called-AE-title-not-recognized" (PS3.8
  Table 9-21);
* ``allowed_calling_aets``: when given, only these calling AE titles may
  associate, else A-ASSOCIATE-RJ reason 3, "calling-AE-title-not-recognized";
* a peer's own section may narrow it down: ``host_check`` (that AE title is
  only accepted from the section's address, else reason 3) and
  ``permissions`` (the services it may use; any other request is answered
  0x0124 "Refused: Not Authorized", PS3.7 C.5.19).

Everything is off by default: anyone may associate and use every service.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from dicomtwist.ul.pdu import AAssociateRJ, RejectReason, RejectResult, RejectSource

__all__ = [
    "SERVICES",
    "AccessRules",
    "PeerRule",
    "Refusal",
    "check_association",
    "host_addresses",
    "is_permitted",
    "normalize_host",
    "parse_ae_titles",
    "parse_permissions",
    "permissions_for",
]

#: The services a permission can name (the handler names of the archive;
#: ``commitment``: Storage Commitment N-ACTION, ``mpps``: MPPS N-CREATE
#: and N-SET).
SERVICES: frozenset[str] = frozenset({"echo", "store", "find", "move", "get",
                                      "commitment", "mpps"})


@dataclass(frozen=True)
class PeerRule:
    """What one known peer (calling AE title) may do.

    :ivar ae_title: the peer's AE title.
    :ivar permissions: the services it may use (default: all).
    :ivar addresses: with a host check, the addresses its connections must
        come from (normalized, see :func:`normalize_host`); None: any.
    """

    ae_title: str
    permissions: frozenset[str] = SERVICES
    addresses: frozenset[str] | None = None


@dataclass(frozen=True)
class AccessRules:
    """The acceptor's access rules.

    :ivar require_called_aet: refuse a called AE title other than ours.
    :ivar allowed_calling_aets: if not None, only these calling AE titles.
    :ivar peers: calling AE title -> its :class:`PeerRule`.
    """

    require_called_aet: bool = False
    allowed_calling_aets: frozenset[str] | None = None
    peers: Mapping[str, PeerRule] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused: the A-ASSOCIATE-RJ reason and words
    for the log.

    :ivar reason: a service-user reason of PS3.8 Table 9-21.
    :ivar explanation: one line naming the rule that refused it.
    """

    reason: int
    explanation: str

    def reject(self) -> AAssociateRJ:
        """The A-ASSOCIATE-RJ to send: rejected-permanent, service-user."""
        return AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER, self.reason)


def normalize_host(host: str) -> str:
    """An address in one canonical spelling, for comparisons.

    IPv6 addresses are compressed and an IPv4-mapped IPv6 address
    (``::ffff:10.0.0.5``, what a dual-stack listener reports) becomes the
    IPv4 address; anything that is not an IP address is lower-cased.
    """
    host = host.strip()
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def check_association(rules: AccessRules, our_ae_title: str, called_ae_title: str,
                      calling_ae_title: str, peer_host: str | None) -> Refusal | None:
    """Decide whether an A-ASSOCIATE-RQ may proceed (PS3.8 Table 9-21).

    :param peer_host: the address the connection comes from (None when
        unknown: a host check then refuses).
    :returns: the refusal, or None to accept.
    """
    if rules.require_called_aet and called_ae_title != our_ae_title:
        return Refusal(RejectReason.CALLED_AE_NOT_RECOGNIZED,
                       f"called AE title {called_ae_title!r} is not ours ({our_ae_title!r})")
    if (rules.allowed_calling_aets is not None
            and calling_ae_title not in rules.allowed_calling_aets):
        return Refusal(RejectReason.CALLING_AE_NOT_RECOGNIZED,
                       f"calling AE title {calling_ae_title!r} is not in allowed_calling_aets")
    peer = rules.peers.get(calling_ae_title)
    if peer is not None and peer.addresses is not None:
        if peer_host is None or normalize_host(peer_host) not in peer.addresses:
            allowed = ", ".join(sorted(peer.addresses))
            return Refusal(RejectReason.CALLING_AE_NOT_RECOGNIZED,
                           f"calling AE title {calling_ae_title!r} connected from"
                           f" {peer_host or 'an unknown address'}, not from {allowed}"
                           " (host_check)")
    return None


def permissions_for(rules: AccessRules, calling_ae_title: str) -> frozenset[str]:
    """The services a calling AE title may use: its section's
    ``permissions``, or every service for a peer without a section."""
    peer = rules.peers.get(calling_ae_title)
    return SERVICES if peer is None else peer.permissions


def is_permitted(rules: AccessRules, calling_ae_title: str, service: str) -> bool:
    """May ``calling_ae_title`` use ``service`` (``"echo"``, ``"store"``...)?

    Services outside :data:`SERVICES` are not restricted here.
    """
    if service not in SERVICES:
        return True
    return service in permissions_for(rules, calling_ae_title)


def _words(text: str) -> list[str]:
    return [word for word in text.replace(",", " ").split() if word]


def parse_ae_titles(text: str) -> frozenset[str] | None:
    """A comma- and/or space-separated list of AE titles; empty: None (anyone).

    :raises ValueError: a title longer than 16 characters or with a backslash
        or a control character (PS3.5 6.2).
    """
    titles = _words(text)
    for title in titles:
        if len(title) > 16 or "\\" in title or not title.isascii() or not title.isprintable():
            raise ValueError(f"{title!r} is not an AE title (1 to 16 printable ASCII"
                             " characters, no backslash)")
    return frozenset(titles) if titles else None


def parse_permissions(text: str) -> frozenset[str]:
    """A comma- and/or space-separated list of services; ``all`` or ``none``
    may stand alone.

    :raises ValueError: an unknown service name.
    """
    words = [word.lower() for word in _words(text)]
    if words == ["all"]:
        return SERVICES
    if words == ["none"] or not words:
        return frozenset()
    unknown = sorted(set(words) - SERVICES)
    if unknown:
        raise ValueError(f"unknown service {unknown[0]!r}; use {', '.join(sorted(SERVICES))},"
                         " all or none")
    return frozenset(words)


def host_addresses(values: Iterable[str]) -> frozenset[str]:
    """Normalized addresses for a host check (see :func:`normalize_host`)."""
    return frozenset(normalize_host(value) for value in values)
