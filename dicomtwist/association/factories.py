"""The factories: one acceptor :class:`Association` per incoming connection,
and :func:`associate`, which connects a requestor."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Factory
from twisted.python.failure import Failure

from dicomtwist import acse
from dicomtwist import log as dlog
from dicomtwist.acse import AcceptorPolicy
from dicomtwist.association.handlers import Handler
from dicomtwist.association.protocol import Association, next_association_id
from dicomtwist.dimse.assembly import SinkFactory, memory_sink
from dicomtwist.ul.pdu import AAssociateRJ, RejectReason, RejectResult, RejectSource
from dicomtwist.ul.timers import deadlines


class AcceptorFactory(Factory):
    """Builds an acceptor :class:`Association` per incoming connection.

    :param reactor: clock for the associations' timers.
    :param policy: AE title, supported contexts and access rules.
    :param handlers: service name -> handler (see :class:`Association`).
    :param sink_for: where incoming data sets go (C-STORE to disk).
    """

    log = dlog.logger()
    noisy = False

    def __init__(self, reactor: IReactorTime, policy: AcceptorPolicy,
                 handlers: Mapping[str, Handler], *, sink_for: SinkFactory = memory_sink,
                 acse_timeout: float = 30.0, dimse_timeout: float | None = 30.0,
                 network_timeout: float | None = None,
                 max_associations: int | None = None) -> None:
        self.reactor = reactor
        self.max_associations = max_associations
        #: Associations past negotiation (they count against the limit;
        #: connections still awaiting their A-ASSOCIATE-RQ do not, and are
        #: dropped by ARTIM).
        self.active: set[Association] = set()
        self.policy = policy
        self.handlers = dict(handlers)
        self.sink_for = sink_for
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self.associations: set[Association] = set()
        #: The associations' timers (see :mod:`dicomtwist.ul.timers`).
        self.timers = deadlines(reactor)
        # The next association, made ahead (see prepare): none or one; not
        # used if a setting it was made with has changed since.
        self._spare: list[Association] = []

    def startFactory(self) -> None:
        """Listening: keep the associations' shared timer call between
        associations."""
        self.timers.hold()

    def stopFactory(self) -> None:
        """No longer listening: the shared timer call may go, and the
        association made ahead."""
        self.timers.release()
        self._spare.clear()

    def buildProtocol(self, addr: Any) -> Association:
        """A new acceptor association with our policy and handlers (the one
        made ahead, if any), numbered now."""
        spare = self._spare
        if spare:
            assoc = spare.pop()
            # (Made with the settings of its moment, which may have
            # changed since: a new policy, say.  Checked here rather than
            # dropped by a ``__setattr__`` on the factory, which made every
            # association cost 5,000-7,000 instructions more.)
            if (assoc.policy is self.policy and assoc.handlers is self.handlers
                    and assoc.sink_for is self.sink_for and assoc.clock is self.reactor
                    and assoc.acse_timeout == self.acse_timeout
                    and assoc.dimse_timeout == self.dimse_timeout
                    and assoc.network_timeout == self.network_timeout):
                assoc.association_id = next_association_id()
            else:
                assoc = self._association(None)
        else:
            assoc = self._association(None)
        assoc.factory = self
        assoc.peer_address = addr
        self.associations.add(assoc)
        return assoc

    def prepare(self) -> None:
        """Make the next association ahead (an association calls this once
        connected, when its answer to a request waiting at accept has been
        written): its making is then not between the next connection's
        request and our answer.  Unnumbered until :meth:`buildProtocol`
        takes it, which makes another instead if a setting (``policy``,
        ``handlers``, ``sink_for``, the timeouts) has changed since."""
        if not self._spare:
            self._spare.append(self._association(0))

    def _association(self, association_id: int | None) -> Association:
        return Association(self.reactor, handlers=self.handlers, sink_for=self.sink_for,
                           policy=self.policy, max_pdu=self.policy.max_pdu,
                           acse_timeout=self.acse_timeout, dimse_timeout=self.dimse_timeout,
                           network_timeout=self.network_timeout, timers=self.timers,
                           association_id=association_id)

    def association_ended(self, assoc: Association) -> None:
        """An association's connection has ended (its ``on_connection_lost``
        calls this before firing ``closed``): it counts no more."""
        self.associations.discard(assoc)
        self.active.discard(assoc)

    def admit(self, assoc: Association) -> AAssociateRJ | None:
        """Count an association that sent its A-ASSOCIATE-RQ; refuse it at
        once, transiently, past ``max_associations`` (PS3.8 Table 9-21:
        presentation provider, local limit exceeded)."""
        if self.max_associations is not None and len(self.active) >= self.max_associations:
            self.log.warn("Refusing association from {peer}: {count} associations already"
                          " (max_associations)", peer=assoc.peer_description,
                          count=len(self.active))
            return AAssociateRJ(RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION,
                                RejectReason.LOCAL_LIMIT_EXCEEDED)
        self.active.add(assoc)
        return None


class RequestorFactory(ClientFactory):
    """Connects one requestor :class:`Association` (used by :func:`associate`)."""

    noisy = False

    def __init__(self, association: Association) -> None:
        self.association = association

    def buildProtocol(self, addr: Any) -> Association:
        """Hand out the prepared association."""
        self.association.factory = self
        return self.association

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        """Fail ``established`` with the connection error."""
        self.association._settle(reason)


def associate(reactor: IReactorTCP, host: str, port: int, *,
              contexts: Sequence[tuple[str, Sequence[str]]], called_ae_title: str = "ANY-SCP",
              calling_ae_title: str = "DICOMTWIST", max_pdu: int = acse.DEFAULT_MAX_PDU,
              scp_role_classes: Iterable[str] = (), extended: Mapping[str, bytes] | None = None,
              handlers: Mapping[str, Handler] | None = None,
              sink_for: SinkFactory = memory_sink, acse_timeout: float = 30.0,
              dimse_timeout: float | None = 30.0, network_timeout: float | None = None,
              connect_timeout: float = 30.0, tls: Any = None,
              roles: Mapping[str, tuple[bool, bool]] | None = None,
              window: tuple[int, int] | None = None) -> Deferred[Association]:
    """Connect to ``host:port`` and negotiate an association.

    :param contexts: ``(abstract syntax, [transfer syntaxes])`` to propose.
    :param roles: role proposals, SOP class -> ``(scu, scp)`` (see
        :func:`dicomtwist.acse.build_rq`).
    :param window: the Asynchronous Operations Window to propose,
        ``(invoked, performed)``; what the peer grants is
        ``negotiated.window``.
    :param tls: connect over TLS with this client connection creator
        (``IOpenSSLClientConnectionCreator``, see
        :func:`dicomtwist.tls.client_options`) through ``connectSSL``;
        a failed handshake fails the Deferred with ``TLSError``.
    :returns: a Deferred firing with the established :class:`Association`,
        or failing with ``AssociationRejected``, ``AssociationAborted`` or
        the connection error.
    """
    rq = acse.build_rq(called_ae_title, calling_ae_title, contexts, max_pdu,
                       scp_role_classes, extended, roles, window)
    assoc = Association(reactor, handlers=handlers, sink_for=sink_for, max_pdu=max_pdu,
                        acse_timeout=acse_timeout, dimse_timeout=dimse_timeout,
                        network_timeout=network_timeout)
    assoc.associate_rq = rq
    if tls is None:
        reactor.connectTCP(host, port, RequestorFactory(assoc), timeout=connect_timeout)
    else:
        reactor.connectSSL(host, port, RequestorFactory(assoc), tls, timeout=connect_timeout)
    return assoc.established
