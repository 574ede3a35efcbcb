"""Association negotiation (PS3.8 Annex D.3.3, PS3.7 Annex D.3.3): pure functions.

Nothing here touches a transport: given what a peer proposed and what we
support, these functions compute the answer (presentation context results,
SCP/SCU roles, maximum PDU lengths, A-ASSOCIATE-RJ reasons).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Mapping, Sequence

from dicomtwist import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomtwist.access import AccessRules, PeerRule, Refusal, check_association
from dicomtwist.ul.items import (
    AsynchronousOperationsWindowSubItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PresentationContextACItem,
    PresentationContextRQItem,
    RoleSelectionSubItem,
    SOPClassExtendedNegotiationSubItem,
    UserInformationItem,
)
from dicomtwist.ul.protocol import check_protocol_version
from dicomtwist.ul.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    ContextResult,
    RejectReason,
)

#: The DICOM Application Context Name (PS3.7 A.2.1).
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
#: Our default Maximum Length Received (PS3.8 D.1), as DCMTK and pynetdicom.
DEFAULT_MAX_PDU = 16382


@dataclass(frozen=True)
class PresentationContext:
    """An accepted presentation context of an established association.

    ``scu_role``/``scp_role`` are the roles of the *association requestor*
    for this SOP class after role selection (PS3.7 D.3.3.4); by default the
    requestor is SCU only.
    """

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    scu_role: bool = True
    scp_role: bool = False


@dataclass(frozen=True)
class AcceptorPolicy:
    """What an acceptor supports and allows.

    :param ae_title: our AE title.
    :param contexts: abstract syntax -> transfer syntaxes we accept, in our
        order of preference.
    :param scu_role_classes: abstract syntaxes for which we agree to act as
        SCU when the requestor proposes the SCP role (C-GET storage
        sub-operations).
    :param require_called_aet: reject a called AE title other than ours.
    :param allowed_calling_aets: if not None, only these calling AE titles.
    :param max_pdu: our Maximum Length Received (0 = unlimited).
    :param peers: per-peer rules (host check, permissions) by calling AE
        title; see :mod:`dicomtwist.access`.
    :param extended_negotiation: SOP class -> the options we support in its
        SOP Class Extended Negotiation (PS3.7 D.3.3.5), one byte per
        sub-field of the Service-class-application-information, non-zero
        where supported (see :func:`answer_extended`).
    """

    ae_title: str
    contexts: Mapping[str, Sequence[str]]
    scu_role_classes: frozenset[str] = frozenset()
    require_called_aet: bool = False
    allowed_calling_aets: frozenset[str] | None = None
    max_pdu: int = DEFAULT_MAX_PDU
    peers: Mapping[str, PeerRule] = field(default_factory=dict)
    #: The Asynchronous Operations Window we grant a requestor that
    #: proposes one, ``(invoked, performed)`` as PS3.7 D.3.3.3 counts them
    #: (the requestor's; 0 unlimited); None: not answered, so one each.
    window: tuple[int, int] | None = None
    extended_negotiation: Mapping[str, bytes] = field(default_factory=dict)

    @cached_property
    def access(self) -> AccessRules:
        """The access rules of this policy (built once: checked per association)."""
        return AccessRules(self.require_called_aet, self.allowed_calling_aets, self.peers)


@dataclass(frozen=True)
class Negotiated:
    """The outcome of a successful negotiation, as either side sees it."""

    contexts: dict[int, PresentationContext]
    #: The peer's Maximum Length Received: the limit for what we send.
    peer_max_pdu: int
    #: Our Maximum Length Received.
    our_max_pdu: int
    peer_implementation_class_uid: str | None = None
    peer_implementation_version_name: str | None = None
    #: SOP Class Extended Negotiation information, by SOP class UID: what
    #: the acceptor answered (the options agreed), as either side sees it.
    extended: dict[str, bytes] = field(default_factory=dict)
    #: The Asynchronous Operations Window (PS3.7 D.3.3.3): how many
    #: operations the association *requestor* may have invoked, and
    #: performed, at once (0: unlimited); one each unless negotiated.
    window: tuple[int, int] = (1, 1)

    def outstanding(self, requestor: bool) -> int:
        """How many requests one side may have outstanding at once (0:
        unlimited): the requestor invokes up to the window's first number;
        the acceptor up to its second, what the requestor performs."""
        return self.window[0] if requestor else self.window[1]

    @cached_property
    def by_abstract_syntax(self) -> dict[str, tuple[PresentationContext, ...]]:
        """The accepted contexts of each abstract syntax, in the order of
        :attr:`contexts` (made once: C-STORE sub-operations ask it per
        instance, and a C-GET SCU may have proposed a hundred contexts)."""
        grouped: dict[str, list[PresentationContext]] = {}
        for context in self.contexts.values():
            grouped.setdefault(context.abstract_syntax, []).append(context)
        return {syntax: tuple(contexts) for syntax, contexts in grouped.items()}

    def extended_option(self, sop_class_uid: str, number: int) -> bool:
        """Whether sub-field ``number`` (1 for the first byte) of the
        Service-class-application-information was agreed for a SOP class
        (for a C-FIND class, 1 is relational-queries: PS3.4 C.5.1.1).
        A sub-field the acceptor left out (or the whole sub-item) means 0."""
        info = self.extended.get(sop_class_uid, b"")
        return len(info) >= number and info[number - 1] == 1


def narrower(proposed: int, answered: int) -> int:
    """The smaller of two window values, 0 meaning unlimited (PS3.7 D.3.3.3)."""
    if proposed == 0:
        return answered
    if answered == 0:
        return proposed
    return min(proposed, answered)


def user_information(max_pdu: int, roles: Iterable[RoleSelectionSubItem] = (),
                     extra: Iterable[object] = (),
                     window: tuple[int, int] | None = None) -> UserInformationItem:
    """Build our User Information item (PS3.7 D.3.3)."""
    subs: list[object] = [
        MaximumLengthSubItem(max_pdu),
        ImplementationClassUIDSubItem(IMPLEMENTATION_CLASS_UID),
    ]
    if window is not None:
        subs.append(AsynchronousOperationsWindowSubItem(*window))
    subs.extend(roles)
    subs.append(ImplementationVersionNameSubItem(IMPLEMENTATION_VERSION_NAME))
    subs.extend(extra)
    return UserInformationItem(tuple(subs))


def answer_extended(proposed: bytes, supported: bytes) -> bytes:
    """Our answer to one SOP Class Extended Negotiation sub-item.

    Each sub-field (byte) the requestor proposed as 1 is answered 1 when we
    support it and 0 otherwise; any other value is answered 0 (PS3.4
    C.5.1.1.2, C.5.2.1.2, C.5.3.1.2: the acceptor accepts a proposal by
    returning the same value, 1, or turns it down with 0).  The answer has
    the proposal's length: a one-byte proposal gets one byte back, and
    so on.

    :param proposed: the requestor's Service-class-application-information.
    :param supported: non-zero for each sub-field we support.
    """
    return bytes(int(value == 1 and index < len(supported) and supported[index] != 0)
                 for index, value in enumerate(proposed))


def check_provider(rq: AAssociateRQ) -> AAssociateRJ | None:
    """The Upper Layer provider's acceptance test (protocol version, AE-6)."""
    return check_protocol_version(rq)


def explain_unacceptable(rq: AAssociateRQ, policy: AcceptorPolicy,
                         peer_host: str | None = None) -> Refusal | None:
    """Apply the service user's rules to an A-ASSOCIATE-RQ (PS3.8 Table 9-21):
    the application context, then the access rules.

    :param peer_host: the address the connection comes from (for host checks).
    :returns: why it is refused, or None if acceptable.
    """
    if rq.application_context != APPLICATION_CONTEXT_NAME:
        return Refusal(RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED,
                       f"application context {rq.application_context!r} not supported")
    return check_association(policy.access, policy.ae_title, rq.called_ae_title,
                             rq.calling_ae_title, peer_host)


def check_acceptable(rq: AAssociateRQ, policy: AcceptorPolicy,
                     peer_host: str | None = None) -> AAssociateRJ | None:
    """Apply the service user's rules to an A-ASSOCIATE-RQ (PS3.8 Table 9-21).

    :returns: the A-ASSOCIATE-RJ to send (rejected-permanent, service-user),
        or None if acceptable.
    """
    refusal = explain_unacceptable(rq, policy, peer_host)
    return None if refusal is None else refusal.reject()


#: Recent negotiations by the identity of the request and the policy, which
#: are immutable (a peer associating again and again sends the same bytes,
#: and :meth:`AAssociateRQ.decode` then gives the same object).  Each entry
#: holds its policy and a weak reference to its request, which tells
#: whether an id met again is still that request's.
_NEGOTIATIONS: dict[tuple[int, int], tuple[weakref.ref, AcceptorPolicy,
                                           AAssociateAC, Negotiated]] = {}
#: At most this many; emptied when full.
NEGOTIATIONS_MEMO_SIZE = 64
#: Requests proposing more contexts than there are valid context IDs (odd,
#: 1-255) are not kept: their answers may be big.
NEGOTIATIONS_MEMO_MAX_CONTEXTS = 128


def negotiate_acceptor(rq: AAssociateRQ, policy: AcceptorPolicy) -> tuple[AAssociateAC, Negotiated]:
    """Answer every proposed presentation context and role (PS3.8 9.3.3.2).

    Each context gets one of the results 0-4: acceptance with the first of
    our preferred transfer syntaxes the peer proposed; 3 when we do not
    support the abstract syntax; 4 when we support it but none of the
    proposed transfer syntaxes; 2 (provider rejection) for an invalid
    (even or duplicate) context ID.

    The same request and policy objects give the same answer objects,
    which callers must not change (``Negotiated.contexts`` is shared).
    """
    key = (id(rq), id(policy))
    known = _NEGOTIATIONS.get(key)
    if known is not None and known[0]() is rq and known[1] is policy:
        return known[2], known[3]
    ac, negotiated = _negotiate_acceptor(rq, policy)
    if len(rq.presentation_contexts) <= NEGOTIATIONS_MEMO_MAX_CONTEXTS:
        if len(_NEGOTIATIONS) >= NEGOTIATIONS_MEMO_SIZE:
            _NEGOTIATIONS.clear()
        _NEGOTIATIONS[key] = (weakref.ref(rq), policy, ac, negotiated)
    return ac, negotiated


def _negotiate_acceptor(rq: AAssociateRQ,
                        policy: AcceptorPolicy) -> tuple[AAssociateAC, Negotiated]:
    """:func:`negotiate_acceptor`, computed."""
    info = rq.user_information
    proposed_roles = {r.sop_class_uid: r for r in info.role_selections}
    answers: list[PresentationContextACItem] = []
    accepted: dict[int, PresentationContext] = {}
    role_answers: dict[str, RoleSelectionSubItem] = {}
    seen: set[int] = set()
    for pc in rq.presentation_contexts:
        cid = pc.context_id
        if cid % 2 == 0 or cid in seen:
            answers.append(PresentationContextACItem(cid, ContextResult.PROVIDER_REJECTION, ""))
            continue
        seen.add(cid)
        ours = policy.contexts.get(pc.abstract_syntax)
        if ours is None:
            answers.append(PresentationContextACItem(
                cid, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
            continue
        chosen = next((ts for ts in ours if ts in pc.transfer_syntaxes), None)
        if chosen is None:
            answers.append(PresentationContextACItem(
                cid, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
            continue
        scu, scp = True, False
        proposal = proposed_roles.get(pc.abstract_syntax)
        if proposal is not None:
            # PS3.7 D.3.3.4: the acceptor may accept or refuse each proposed
            # role; we refuse being SCU unless the policy allows it.
            scu = proposal.scu_role
            scp = proposal.scp_role and pc.abstract_syntax in policy.scu_role_classes
            role_answers[pc.abstract_syntax] = RoleSelectionSubItem(pc.abstract_syntax, scu, scp)
            if not (scu or scp):
                answers.append(PresentationContextACItem(cid, ContextResult.USER_REJECTION, ""))
                continue
        answers.append(PresentationContextACItem(cid, ContextResult.ACCEPTANCE, chosen))
        accepted[cid] = PresentationContext(cid, pc.abstract_syntax, chosen, scu, scp)
    # PS3.7 D.3.3.3: answered only when proposed, never above the proposal.
    window = None
    proposed_window = info.async_ops_window
    if proposed_window is not None and policy.window is not None:
        window = (narrower(proposed_window.invoked, policy.window[0]),
                  narrower(proposed_window.performed, policy.window[1]))
    # SOP Class Extended Negotiation: answered for the SOP classes we
    # negotiate options for and accepted a context of; the others are left
    # out (PS3.7 D.3.3.5: no sub-item in the answer, no option agreed).
    extended: dict[str, bytes] = {}
    accepted_classes = {c.abstract_syntax for c in accepted.values()}
    for item in info.sop_class_extended:
        supported = policy.extended_negotiation.get(item.sop_class_uid)
        if (supported is not None and item.sop_class_uid in accepted_classes
                and item.sop_class_uid not in extended):
            extended[item.sop_class_uid] = answer_extended(bytes(item.info), supported)
    ac = AAssociateAC(
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        presentation_contexts=tuple(answers),
        user_information=user_information(
            policy.max_pdu, role_answers.values(),
            [SOPClassExtendedNegotiationSubItem(uid, answer)
             for uid, answer in extended.items()], window=window),
        application_context=APPLICATION_CONTEXT_NAME,
    )
    negotiated = Negotiated(
        contexts=accepted,
        peer_max_pdu=info.maximum_length or 0,
        our_max_pdu=policy.max_pdu,
        peer_implementation_class_uid=info.implementation_class_uid,
        peer_implementation_version_name=info.implementation_version_name,
        extended=extended,
        window=window or (1, 1),
    )
    return ac, negotiated


def build_rq(called_ae_title: str, calling_ae_title: str,
             contexts: Sequence[tuple[str, Sequence[str]]], max_pdu: int = DEFAULT_MAX_PDU,
             scp_role_classes: Iterable[str] = (),
             extended: Mapping[str, bytes] | None = None,
             roles: Mapping[str, tuple[bool, bool]] | None = None,
             window: tuple[int, int] | None = None) -> AAssociateRQ:
    """Build an A-ASSOCIATE-RQ proposing ``contexts`` (abstract, transfer syntaxes).

    Context IDs are 1, 3, 5, ... in order; at most 128 contexts fit.
    :param scp_role_classes: SOP classes for which we propose to be SCP as
        well as SCU (role selection, for C-GET storage sub-operations).
    :param roles: other role proposals, SOP class -> ``(scu, scp)`` (a
        Storage Commitment SCP reporting on its own association proposes
        ``(False, True)``, PS3.4 J.3.3.1.3).
    :param window: the Asynchronous Operations Window to propose,
        ``(invoked, performed)`` (PS3.7 D.3.3.3); None proposes none.
    :raises ValueError: with more than 128 contexts.
    """
    if len(contexts) > 128:
        raise ValueError("at most 128 presentation contexts can be proposed")
    items = tuple(
        PresentationContextRQItem(2 * i + 1, abstract, tuple(syntaxes))
        for i, (abstract, syntaxes) in enumerate(contexts)
    )
    proposals = {uid: (True, True) for uid in scp_role_classes}
    proposals.update(roles or {})
    items_roles = [RoleSelectionSubItem(uid, scu, scp) for uid, (scu, scp) in proposals.items()]
    extra = [SOPClassExtendedNegotiationSubItem(uid, info)
             for uid, info in (extended or {}).items()]
    return AAssociateRQ(
        called_ae_title=called_ae_title,
        calling_ae_title=calling_ae_title,
        presentation_contexts=items,
        user_information=user_information(max_pdu, items_roles, extra, window),
        application_context=APPLICATION_CONTEXT_NAME,
    )


def interpret_ac(rq: AAssociateRQ, ac: AAssociateAC) -> Negotiated:
    """The requestor's view of an A-ASSOCIATE-AC: the accepted contexts.

    A context accepted with a transfer syntax we did not propose, or with an
    ID we did not propose, is ignored (treated as rejected).
    """
    proposed = {pc.context_id: pc for pc in rq.presentation_contexts}
    info = ac.user_information
    roles = {r.sop_class_uid: r for r in info.role_selections}
    ours = {r.sop_class_uid for r in rq.user_information.role_selections}
    accepted: dict[int, PresentationContext] = {}
    for item in ac.presentation_contexts:
        pc = proposed.get(item.context_id)
        if (pc is None or item.result != ContextResult.ACCEPTANCE
                or item.transfer_syntax not in pc.transfer_syntaxes):
            continue
        scu, scp = True, False
        if pc.abstract_syntax in ours:
            # PS3.7 D.3.3.4: no answer to a proposed role means the default.
            role = roles.get(pc.abstract_syntax)
            if role is not None:
                scu, scp = role.scu_role, role.scp_role
        accepted[item.context_id] = PresentationContext(
            item.context_id, pc.abstract_syntax, item.transfer_syntax, scu, scp)
    # PS3.7 D.3.3.3: the acceptor's answer, if any, to what we proposed (an
    # unanswered or unproposed window is one operation each way).
    window = (1, 1)
    proposed_window = rq.user_information.async_ops_window
    answered = info.async_ops_window
    if proposed_window is not None and answered is not None:
        window = (narrower(proposed_window.invoked, answered.invoked),
                  narrower(proposed_window.performed, answered.performed))
    return Negotiated(
        contexts=accepted,
        peer_max_pdu=info.maximum_length or 0,
        our_max_pdu=rq.user_information.maximum_length or 0,
        peer_implementation_class_uid=info.implementation_class_uid,
        peer_implementation_version_name=info.implementation_version_name,
        extended={e.sop_class_uid: bytes(e.info) for e in info.sop_class_extended},
        window=window,
    )
