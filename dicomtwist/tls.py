"""DICOM TLS (PS3.15 Annex B, BCP 195 profiles): contexts and listeners.

The archive listens on Twisted endpoint descriptions.  ``tcp:...`` and any
other kind go to :func:`twisted.internet.endpoints.serverFromString` as
they are; ``ssl:...`` descriptions are built here, so that every TLS
listener

* negotiates TLS 1.2 or later only (BCP 195, RFC 8996; PS3.15 B.10 and
  B.12: "shall not negotiate TLS version 1.1 or 1.0"), TLS 1.3 preferred
  when both sides have it, with Twisted's default cipher suites (forward
  secret AEAD suites first);
* can require and verify a client certificate against our own CA
  certificates (``caCerts=`` in the description, or the archive's
  ``tls_ca``): a client without a certificate that chains to one of them
  fails the handshake and never reaches the DICOM layer.

Client side, :func:`client_options` gives the connection creator that
:func:`dicomtwist.association.associate` passes to ``connectSSL``: the
server's certificate is verified against the given CA certificates (or the
platform's trust store) and its name or address, and our own certificate
is presented when given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet import endpoints

__all__ = [
    "ListenDefaults",
    "client_options",
    "listen_endpoint",
    "load_certificates",
    "server_options",
    "split_description",
]

#: Keys of an ``ssl:`` listen description (Twisted's, plus ``caCerts``).
SSL_KEYS = frozenset({"port", "interface", "backlog", "privateKey", "certKey",
                      "extraCertChain", "dhParameters", "caCerts"})
#: Keywords of a ``tcp:`` listen description (Twisted's own).
TCP_KEYS = frozenset({"port", "interface", "backlog"})
#: File name endings read from a CA certificate directory.
_CERTIFICATE_SUFFIXES = (".pem", ".crt", ".cer")
_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


@dataclass(frozen=True)
class ListenDefaults:
    """What an ``ssl:`` description leaves out comes from here.

    :ivar certificate: our certificate (PEM), for ``certKey``.
    :ivar private_key: its private key (PEM), for ``privateKey``.
    :ivar ca: CA certificates (a PEM file or a directory of them) that
        client certificates must chain to; None: no client certificate
        is asked for.
    """

    certificate: str | None = None
    private_key: str | None = None
    ca: str | None = None


def split_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split an endpoint description into its prefix, arguments and keywords.

    The grammar is Twisted's: fields separated by ``:``, ``key=value``
    fields are keywords, a backslash makes the next character literal
    (``interface=\\:\\:1``).

    :returns: ``(prefix, positional arguments, keyword arguments)``.
    """
    fields: list[list[str]] = [[]]
    equals: list[int | None] = [None]
    characters = iter(description)
    for character in characters:
        if character == "\\":
            fields[-1].append(next(characters, ""))
        elif character == ":":
            fields.append([])
            equals.append(None)
        elif character == "=" and equals[-1] is None:
            equals[-1] = len(fields[-1])
            fields[-1].append(character)
        else:
            fields[-1].append(character)
    prefix = "".join(fields[0])
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for field, equal in zip(fields[1:], equals[1:]):
        text = "".join(field)
        if equal is None:
            args.append(text)
        else:
            kwargs[text[:equal]] = text[equal + 1:]
    return prefix, args, kwargs


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fp:
            return fp.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path!r}: {e.strerror or e}") from None


def load_certificates(path: str) -> list[Any]:
    """The certificates in a PEM file (one or more) or in a directory's
    ``*.pem``/``*.crt``/``*.cer`` files.

    :returns: :class:`twisted.internet.ssl.Certificate` objects.
    :raises ValueError: unreadable, or no certificate found.
    """
    from twisted.internet import ssl

    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path)
                       if name.lower().endswith(_CERTIFICATE_SUFFIXES))
        blobs = [_read(os.path.join(path, name), "CA certificate") for name in names]
    else:
        blobs = [_read(path, "CA certificate file")]
    certificates = []
    for blob in blobs:
        start = blob.find(_BEGIN)
        while start != -1:
            end = blob.find(_END, start)
            if end == -1:
                break
            end += len(_END)
            try:
                certificates.append(ssl.Certificate.loadPEM(blob[start:end]))
            except Exception as e:  # pyOpenSSL's error types vary by version
                raise ValueError(f"{path}: not a PEM certificate: {e}") from None
            start = blob.find(_BEGIN, end)
    if not certificates:
        raise ValueError(f"no PEM certificate in {path!r}")
    return certificates


def _private_certificate(certificate: str, private_key: str) -> Any:
    """Our certificate with its key, as a ``PrivateCertificate``."""
    from twisted.internet import ssl

    pem = _read(certificate, "certificate") + b"\n" + _read(private_key, "private key")
    try:
        return ssl.PrivateCertificate.loadPEM(pem)
    except Exception as e:  # pyOpenSSL's error types vary by version
        raise ValueError(f"cannot load the certificate {certificate!r} with the key"
                         f" {private_key!r}: {e}") from None


def server_options(certificate: str, private_key: str, ca: str | None = None,
                   extra_chain: str | None = None, dh_parameters: str | None = None) -> Any:
    """The context factory of a TLS listener (BCP 195: TLS 1.2 or later).

    :param ca: with CA certificates (file or directory), every client must
        present a certificate that chains to one of them.
    :returns: a :class:`twisted.internet.ssl.CertificateOptions`.
    :raises ValueError: a file is missing or not what it should be.
    """
    from twisted.internet import ssl

    ours = _private_certificate(certificate, private_key)
    kwargs: dict[str, Any] = {
        "privateKey": ours.privateKey.original,
        "certificate": ours.original,
        "raiseMinimumTo": ssl.TLSVersion.TLSv1_2,
    }
    if extra_chain is not None:
        kwargs["extraCertChain"] = [c.original for c in load_certificates(extra_chain)]
    if dh_parameters is not None:
        from twisted.python.filepath import FilePath

        kwargs["dhParameters"] = ssl.DiffieHellmanParameters.fromFile(FilePath(dh_parameters))
    if ca is not None:
        kwargs.update(verify=True, requireCertificate=True,
                      caCerts=[c.original for c in load_certificates(ca)])
    return ssl.CertificateOptions(**kwargs)


def client_options(hostname: str, ca: str | None = None, certificate: str | None = None,
                   private_key: str | None = None) -> Any:
    """The connection creator of a TLS requestor (BCP 195: TLS 1.2 or later).

    :param hostname: the peer's host name or IP address; its certificate
        must name it (subjectAltName DNS or IP entry).
    :param ca: CA certificates (file or directory) the peer's certificate
        must chain to; None: the platform's trust store.
    :param certificate: our certificate, presented when the peer asks
        (with ``private_key``; a key alone is read from ``certificate``).
    :returns: an ``IOpenSSLClientConnectionCreator``.
    :raises ValueError: a file is missing or not what it should be.
    """
    from twisted.internet import ssl

    trust = ssl.trustRootFromCertificates(load_certificates(ca)) if ca else ssl.platformTrust()
    ours = None
    if certificate is not None:
        ours = _private_certificate(certificate, private_key or certificate)
    return ssl.optionsForClientTLS(
        hostname, trustRoot=trust, clientCertificate=ours,
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})


def destination_options(destination: Any, settings: Any) -> Any:
    """The TLS client options for a configured destination marked ``tls``
    (a C-MOVE destination, a Storage Commitment SCU's own port), else None.

    Its own ``tls_ca``/``tls_cert``/``tls_key``, or the archive's; the
    destination's certificate must name its address.

    :raises ValueError: a certificate or key file cannot be used.
    """
    if not getattr(destination, "tls", False):
        return None
    certificate = destination.tls_cert or getattr(settings, "tls_cert", None)
    key = destination.tls_key or (getattr(settings, "tls_key", None)
                                  if not destination.tls_cert else None)
    return client_options(destination.address,
                          ca=destination.tls_ca or getattr(settings, "tls_ca", None),
                          certificate=certificate, private_key=key)


def listen_endpoint(reactor: Any, description: str,
                    defaults: ListenDefaults = ListenDefaults()) -> Any:
    """A server endpoint for a listen description.

    ``ssl:PORT[:interface=A][:backlog=N][:privateKey=K][:certKey=C]
    [:extraCertChain=F][:dhParameters=F][:caCerts=F]`` is built with
    :func:`server_options`; a missing ``privateKey``/``certKey``/``caCerts``
    comes from ``defaults``.  ``tcp:PORT[:interface=A][:backlog=N]``
    listens with :class:`dicomtwist.ul.transport.AcceptorPort`.  Anything
    else goes to :func:`~twisted.internet.endpoints.serverFromString`.

    :raises ValueError: a bad description or an unusable file.
    """
    prefix, args, kwargs = split_description(description)
    if prefix not in ("ssl", "tcp"):
        return endpoints.serverFromString(reactor, description)
    keys = SSL_KEYS if prefix == "ssl" else TCP_KEYS
    unknown = sorted(set(kwargs) - keys)
    if unknown:
        raise ValueError(f"{description!r}: unknown {prefix} option {unknown[0]!r}"
                         f" (one of {', '.join(sorted(keys))})")
    port, backlog = _port_and_backlog(description, args, kwargs)
    if prefix == "tcp":
        from dicomtwist.ul.transport import AcceptorEndpoint

        return AcceptorEndpoint(reactor, port, backlog, kwargs.get("interface", ""))
    private_key = kwargs.get("privateKey", defaults.private_key)
    certificate = kwargs.get("certKey", defaults.certificate if "privateKey" not in kwargs
                             else None) or private_key
    if private_key is None or certificate is None:
        raise ValueError(f"{description!r}: no privateKey= (nor tls_key/--tls-key)")
    options = server_options(certificate, private_key, kwargs.get("caCerts", defaults.ca),
                             kwargs.get("extraCertChain"), kwargs.get("dhParameters"))
    return endpoints.SSL4ServerEndpoint(reactor, port, options, backlog=backlog,
                                        interface=kwargs.get("interface", ""))


def _port_and_backlog(description: str, args: list[str],
                      kwargs: dict[str, str]) -> tuple[int, int]:
    """The port and backlog of a ``tcp:``/``ssl:`` description."""
    if len(args) > 1 or (args and "port" in kwargs):
        raise ValueError(f"{description!r}: give the port once")
    raw_port = args[0] if args else kwargs.get("port")
    if raw_port is None:
        raise ValueError(f"{description!r}: no port")
    try:
        port = int(raw_port)
        backlog = int(kwargs.get("backlog", 50))
    except ValueError:
        raise ValueError(f"{description!r}: the port and backlog are numbers") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{description!r}: a port is between 0 and 65535")
    return port, backlog
