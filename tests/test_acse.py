"""Tests for dicomtwist.acse, association negotiation (PS3.8 Annex D, PS3.7 D.3.3)."""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from dicomtwist import acse
from dicomtwist.acse import APPLICATION_CONTEXT_NAME, check_acceptable, check_provider
from dicomtwist.ul.items import (
    MaximumLengthSubItem,
    PresentationContextACItem,
    PresentationContextRQItem,
    RoleSelectionSubItem,
    UserInformationItem,
)
from dicomtwist.ul.pdu import AAssociateAC, AAssociateRQ, ContextResult
from tests.helpers import CT_IMAGE_STORAGE, UNCOMPRESSED, VERIFICATION, policy

IMPLICIT, EXPLICIT = UNCOMPRESSED
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def rq(contexts, max_pdu: int = 16382, roles=(), **kwargs) -> AAssociateRQ:
    """An A-ASSOCIATE-RQ with hand-chosen context IDs.

    :param contexts: ``(context id, abstract syntax, transfer syntaxes)``.
    :param max_pdu: the requestor's Maximum Length Received (None: no sub-item).
    :param roles: role selection sub-items to propose.
    :returns: the PDU.
    """
    subs = [] if max_pdu is None else [MaximumLengthSubItem(max_pdu)]
    subs.extend(roles)
    defaults = dict(
        called_ae_title="TESTSCP",
        calling_ae_title="CALLER",
        presentation_contexts=tuple(PresentationContextRQItem(cid, abstract, tuple(ts))
                                    for cid, abstract, ts in contexts),
        user_information=UserInformationItem(tuple(subs)),
    )
    defaults.update(kwargs)
    return AAssociateRQ(**defaults)


def results(ac: AAssociateAC) -> dict[int, tuple[int, str]]:
    """The AC's answers as ``{context id: (result, transfer syntax)}``."""
    return {pc.context_id: (pc.result, pc.transfer_syntax) for pc in ac.presentation_contexts}


class NegotiateAcceptorTests(SynchronousTestCase):
    """The acceptor's answers to proposed contexts, roles and lengths."""

    def test_context_results(self) -> None:
        """Supported contexts are accepted (0), unknown abstract syntaxes get 3, unknown transfer syntaxes 4."""
        ac, negotiated = acse.negotiate_acceptor(rq([
            (1, VERIFICATION, [IMPLICIT]),
            (3, MR_IMAGE_STORAGE, [IMPLICIT]),
            (5, CT_IMAGE_STORAGE, [JPEG_BASELINE]),
        ]), policy())
        self.assertEqual(results(ac), {
            1: (ContextResult.ACCEPTANCE, IMPLICIT),
            3: (ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
            5: (ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""),
        })
        self.assertEqual(list(negotiated.contexts), [1])
        self.assertEqual(negotiated.contexts[1],
                         acse.PresentationContext(1, VERIFICATION, IMPLICIT, True, False))

    def test_even_and_duplicate_ids_provider_rejected(self) -> None:
        """An even context ID and a repeated one are answered with provider rejection (2)."""
        ac, negotiated = acse.negotiate_acceptor(rq([
            (1, VERIFICATION, [IMPLICIT]),
            (2, VERIFICATION, [IMPLICIT]),
            (1, CT_IMAGE_STORAGE, [IMPLICIT]),
        ]), policy())
        answers = [(pc.context_id, pc.result) for pc in ac.presentation_contexts]
        self.assertEqual(answers, [(1, ContextResult.ACCEPTANCE),
                                   (2, ContextResult.PROVIDER_REJECTION),
                                   (1, ContextResult.PROVIDER_REJECTION)])
        self.assertEqual(negotiated.contexts[1].abstract_syntax, VERIFICATION)
        self.assertEqual(len(negotiated.contexts), 1)

    def test_transfer_syntax_by_our_preference(self) -> None:
        """Of the proposed transfer syntaxes, the first in our order of preference wins."""
        ours = policy(contexts={CT_IMAGE_STORAGE: (EXPLICIT, IMPLICIT)})
        ac, negotiated = acse.negotiate_acceptor(
            rq([(1, CT_IMAGE_STORAGE, [BIG_ENDIAN, IMPLICIT, EXPLICIT])]), ours)
        self.assertEqual(results(ac)[1], (ContextResult.ACCEPTANCE, EXPLICIT))
        ours = policy(contexts={CT_IMAGE_STORAGE: (IMPLICIT, EXPLICIT)})
        ac, negotiated = acse.negotiate_acceptor(
            rq([(1, CT_IMAGE_STORAGE, [EXPLICIT, IMPLICIT])]), ours)
        self.assertEqual(results(ac)[1], (ContextResult.ACCEPTANCE, IMPLICIT))
        self.assertEqual(negotiated.contexts[1].transfer_syntax, IMPLICIT)

    def test_scp_role_allowed(self) -> None:
        """A proposed SCP role is accepted for a class in scu_role_classes and answered in the AC."""
        ours = policy(scu_role_classes=frozenset({CT_IMAGE_STORAGE}))
        ac, negotiated = acse.negotiate_acceptor(
            rq([(1, CT_IMAGE_STORAGE, [IMPLICIT])],
               roles=[RoleSelectionSubItem(CT_IMAGE_STORAGE, True, True)]), ours)
        self.assertEqual(ac.user_information.role_selections,
                         (RoleSelectionSubItem(CT_IMAGE_STORAGE, True, True),))
        self.assertTrue(negotiated.contexts[1].scp_role)
        self.assertTrue(negotiated.contexts[1].scu_role)

    def test_scp_role_refused(self) -> None:
        """A proposed SCP role is refused for a class not in scu_role_classes; SCU stays."""
        ac, negotiated = acse.negotiate_acceptor(
            rq([(1, CT_IMAGE_STORAGE, [IMPLICIT])],
               roles=[RoleSelectionSubItem(CT_IMAGE_STORAGE, True, True)]), policy())
        self.assertEqual(ac.user_information.role_selections,
                         (RoleSelectionSubItem(CT_IMAGE_STORAGE, True, False),))
        self.assertEqual(results(ac)[1][0], ContextResult.ACCEPTANCE)
        self.assertFalse(negotiated.contexts[1].scp_role)

    def test_scp_only_role_refused_rejects_context(self) -> None:
        """A context whose only proposed role (SCP) is refused is rejected by the user (1)."""
        ac, negotiated = acse.negotiate_acceptor(
            rq([(1, CT_IMAGE_STORAGE, [IMPLICIT])],
               roles=[RoleSelectionSubItem(CT_IMAGE_STORAGE, False, True)]), policy())
        self.assertEqual(results(ac)[1][0], ContextResult.USER_REJECTION)
        self.assertEqual(negotiated.contexts, {})

    def test_no_role_proposal_no_answer(self) -> None:
        """Without a role proposal the AC carries no role selection and the defaults hold."""
        ac, negotiated = acse.negotiate_acceptor(
            rq([(1, CT_IMAGE_STORAGE, [IMPLICIT])]),
            policy(scu_role_classes=frozenset({CT_IMAGE_STORAGE})))
        self.assertEqual(ac.user_information.role_selections, ())
        self.assertEqual((negotiated.contexts[1].scu_role, negotiated.contexts[1].scp_role),
                         (True, False))

    def test_max_pdu_both_ways(self) -> None:
        """The peer's maximum becomes peer_max_pdu; ours is sent in the AC and kept as our_max_pdu."""
        ac, negotiated = acse.negotiate_acceptor(
            rq([(1, VERIFICATION, [IMPLICIT])], max_pdu=4096), policy(max_pdu=32768))
        self.assertEqual(negotiated.peer_max_pdu, 4096)
        self.assertEqual(negotiated.our_max_pdu, 32768)
        self.assertEqual(ac.user_information.maximum_length, 32768)

    def test_max_pdu_unlimited_or_absent(self) -> None:
        """A peer maximum of 0, or none at all, means unlimited (0)."""
        _, negotiated = acse.negotiate_acceptor(
            rq([(1, VERIFICATION, [IMPLICIT])], max_pdu=0), policy())
        self.assertEqual(negotiated.peer_max_pdu, 0)
        _, negotiated = acse.negotiate_acceptor(
            rq([(1, VERIFICATION, [IMPLICIT])], max_pdu=None), policy())
        self.assertEqual(negotiated.peer_max_pdu, 0)

    def test_ac_echoes_titles_and_context(self) -> None:
        """The AC echoes both AE titles and names the DICOM application context."""
        ac, _ = acse.negotiate_acceptor(rq([(1, VERIFICATION, [IMPLICIT])]), policy())
        self.assertEqual((ac.called_ae_title, ac.calling_ae_title), ("TESTSCP", "CALLER"))
        self.assertEqual(ac.application_context, APPLICATION_CONTEXT_NAME)
        self.assertIsNotNone(ac.user_information.implementation_class_uid)


class NegotiationMemoTests(SynchronousTestCase):
    """Answers to the same request and policy objects are computed once."""

    def test_same_objects_same_answer(self) -> None:
        """The same RQ and policy give the very same AC and Negotiated."""
        request, ours = rq([(1, VERIFICATION, [IMPLICIT])]), policy()
        ac, negotiated = acse.negotiate_acceptor(request, ours)
        again = acse.negotiate_acceptor(request, ours)
        self.assertIs(again[0], ac)
        self.assertIs(again[1], negotiated)

    def test_other_policy_other_answer(self) -> None:
        """An equal RQ under another policy is negotiated afresh."""
        request = rq([(1, VERIFICATION, [IMPLICIT])])
        ac, _ = acse.negotiate_acceptor(request, policy())
        other, _ = acse.negotiate_acceptor(request, policy(contexts={VERIFICATION: [EXPLICIT]}))
        self.assertEqual(results(ac), {1: (0, IMPLICIT)})
        self.assertEqual(results(other), {1: (ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, "")})

    def test_request_not_kept_alive(self) -> None:
        """The memo does not keep a request alive; a new request is negotiated afresh."""
        import gc
        import weakref
        ours = policy()
        request = rq([(1, VERIFICATION, [IMPLICIT])])
        ac, _ = acse.negotiate_acceptor(request, ours)
        gone = weakref.ref(request)
        del request
        gc.collect()
        self.assertIsNone(gone())
        again, _ = acse.negotiate_acceptor(rq([(1, VERIFICATION, [IMPLICIT])]), ours)
        self.assertEqual(again, ac)

    def test_many_contexts_not_kept(self) -> None:
        """A request proposing more contexts than NEGOTIATIONS_MEMO_MAX_CONTEXTS is not kept."""
        self.patch(acse, "NEGOTIATIONS_MEMO_MAX_CONTEXTS", 1)
        request, ours = rq([(1, VERIFICATION, [IMPLICIT]), (3, VERIFICATION, [IMPLICIT])]), policy()
        ac, _ = acse.negotiate_acceptor(request, ours)
        again, _ = acse.negotiate_acceptor(request, ours)
        self.assertIsNot(again, ac)
        self.assertEqual(again, ac)

    def test_memo_bounded(self) -> None:
        """The memo holds at most NEGOTIATIONS_MEMO_SIZE entries."""
        ours = policy()
        for index in range(acse.NEGOTIATIONS_MEMO_SIZE * 2 + 1):
            acse.negotiate_acceptor(rq([(1, VERIFICATION, [IMPLICIT])],
                                       calling_ae_title=f"CALLER{index}"), ours)
            self.assertLessEqual(len(acse._NEGOTIATIONS), acse.NEGOTIATIONS_MEMO_SIZE)


class CheckTests(SynchronousTestCase):
    """The provider's and the service user's acceptance tests."""

    def test_acceptable(self) -> None:
        """A well-formed request passes both tests."""
        request = rq([(1, VERIFICATION, [IMPLICIT])])
        self.assertIsNone(check_provider(request))
        self.assertIsNone(check_acceptable(request, policy(require_called_aet=True)))

    def test_wrong_application_context(self) -> None:
        """Another application context is rejected permanently by the user, reason 2."""
        rj = check_acceptable(rq([(1, VERIFICATION, [IMPLICIT])],
                                 application_context="1.2.3.4"), policy())
        self.assertEqual((rj.result, rj.source, rj.reason), (1, 1, 2))

    def test_require_called_aet(self) -> None:
        """With require_called_aet, another called AE title is rejected with reason 7."""
        request = rq([(1, VERIFICATION, [IMPLICIT])], called_ae_title="OTHER")
        self.assertIsNone(check_acceptable(request, policy()))
        rj = check_acceptable(request, policy(require_called_aet=True))
        self.assertEqual((rj.result, rj.source, rj.reason), (1, 1, 7))

    def test_allowed_calling_aets(self) -> None:
        """A calling AE title outside allowed_calling_aets is rejected with reason 3."""
        request = rq([(1, VERIFICATION, [IMPLICIT])], calling_ae_title="STRANGER")
        rj = check_acceptable(request, policy(allowed_calling_aets=frozenset({"FRIEND"})))
        self.assertEqual((rj.result, rj.source, rj.reason), (1, 1, 3))
        self.assertIsNone(check_acceptable(
            replace(request, calling_ae_title="FRIEND"),
            policy(allowed_calling_aets=frozenset({"FRIEND"}))))

    def test_protocol_version(self) -> None:
        """A protocol version without bit 0 is rejected by the ACSE provider, reason 2."""
        rj = check_provider(rq([(1, VERIFICATION, [IMPLICIT])], protocol_version=2))
        self.assertEqual((rj.result, rj.source, rj.reason), (1, 2, 2))
        self.assertIsNone(check_provider(rq([(1, VERIFICATION, [IMPLICIT])],
                                            protocol_version=3)))


class RequestorTests(SynchronousTestCase):
    """Building a request and reading the answer."""

    def test_build_rq_context_ids(self) -> None:
        """Contexts get IDs 1, 3, 5, ... in order, with our max PDU and proposed roles."""
        request = acse.build_rq("SCP", "SCU", [(VERIFICATION, [IMPLICIT]),
                                                (CT_IMAGE_STORAGE, UNCOMPRESSED),
                                                (MR_IMAGE_STORAGE, [EXPLICIT])],
                                max_pdu=8192, scp_role_classes=[CT_IMAGE_STORAGE])
        self.assertEqual([(pc.context_id, pc.abstract_syntax, pc.transfer_syntaxes)
                          for pc in request.presentation_contexts],
                         [(1, VERIFICATION, (IMPLICIT,)),
                          (3, CT_IMAGE_STORAGE, UNCOMPRESSED),
                          (5, MR_IMAGE_STORAGE, (EXPLICIT,))])
        self.assertEqual(request.user_information.maximum_length, 8192)
        self.assertEqual(request.user_information.role_selections,
                         (RoleSelectionSubItem(CT_IMAGE_STORAGE, True, True),))
        self.assertEqual((request.called_ae_title, request.calling_ae_title), ("SCP", "SCU"))

    def test_build_rq_128_contexts(self) -> None:
        """128 contexts fit (the last has ID 255); 129 raise ValueError."""
        request = acse.build_rq("SCP", "SCU", [(VERIFICATION, [IMPLICIT])] * 128)
        self.assertEqual(request.presentation_contexts[-1].context_id, 255)
        self.assertRaises(ValueError, acse.build_rq, "SCP", "SCU",
                          [(VERIFICATION, [IMPLICIT])] * 129)

    def test_interpret_ac(self) -> None:
        """Accepted contexts are kept; rejected ones and ones with an unproposed syntax are ignored."""
        request = acse.build_rq("SCP", "SCU", [(VERIFICATION, [IMPLICIT]),
                                                (CT_IMAGE_STORAGE, [IMPLICIT]),
                                                (MR_IMAGE_STORAGE, [IMPLICIT])])
        ac = AAssociateAC(
            called_ae_title="SCP", calling_ae_title="SCU",
            presentation_contexts=(
                PresentationContextACItem(1, 0, IMPLICIT),
                PresentationContextACItem(3, 0, EXPLICIT),
                PresentationContextACItem(5, 3, ""),
                PresentationContextACItem(7, 0, IMPLICIT),
            ),
            user_information=acse.user_information(4096))
        negotiated = acse.interpret_ac(request, ac)
        self.assertEqual(negotiated.contexts,
                         {1: acse.PresentationContext(1, VERIFICATION, IMPLICIT)})
        self.assertEqual(negotiated.peer_max_pdu, 4096)
        self.assertEqual(negotiated.our_max_pdu, acse.DEFAULT_MAX_PDU)

    def test_by_abstract_syntax(self) -> None:
        """The accepted contexts grouped by abstract syntax, in context ID
        order, made once."""
        ct_implicit = acse.PresentationContext(1, CT_IMAGE_STORAGE, IMPLICIT)
        mr = acse.PresentationContext(3, MR_IMAGE_STORAGE, IMPLICIT)
        ct_explicit = acse.PresentationContext(5, CT_IMAGE_STORAGE, EXPLICIT)
        negotiated = acse.Negotiated({1: ct_implicit, 3: mr, 5: ct_explicit}, 16384, 16384)
        grouped = negotiated.by_abstract_syntax
        self.assertEqual(grouped, {CT_IMAGE_STORAGE: (ct_implicit, ct_explicit),
                                   MR_IMAGE_STORAGE: (mr,)})
        self.assertIs(negotiated.by_abstract_syntax, grouped)

    def test_interpret_ac_roles(self) -> None:
        """The AC's role answer for a proposed role sets the context's roles; no answer means the default."""
        request = acse.build_rq("SCP", "SCU", [(CT_IMAGE_STORAGE, [IMPLICIT]),
                                                (MR_IMAGE_STORAGE, [IMPLICIT])],
                                scp_role_classes=[CT_IMAGE_STORAGE, MR_IMAGE_STORAGE])
        ac = AAssociateAC(
            called_ae_title="SCP", calling_ae_title="SCU",
            presentation_contexts=(PresentationContextACItem(1, 0, IMPLICIT),
                                   PresentationContextACItem(3, 0, IMPLICIT)),
            user_information=acse.user_information(
                0, [RoleSelectionSubItem(CT_IMAGE_STORAGE, False, True)]))
        negotiated = acse.interpret_ac(request, ac)
        self.assertEqual((negotiated.contexts[1].scu_role, negotiated.contexts[1].scp_role),
                         (False, True))
        self.assertEqual((negotiated.contexts[3].scu_role, negotiated.contexts[3].scp_role),
                         (True, False))

    def test_round_trip_negotiation(self) -> None:
        """An RQ from build_rq answered by negotiate_acceptor reads back the same contexts on both sides."""
        request = acse.build_rq("TESTSCP", "SCU", [(VERIFICATION, [IMPLICIT]),
                                                    (CT_IMAGE_STORAGE, [EXPLICIT, IMPLICIT])],
                                scp_role_classes=[CT_IMAGE_STORAGE])
        ours = policy(scu_role_classes=frozenset({CT_IMAGE_STORAGE}))
        ac, acceptor_view = acse.negotiate_acceptor(AAssociateRQ.decode(request.encode()[6:]), ours)
        requestor_view = acse.interpret_ac(request, AAssociateAC.decode(ac.encode()[6:]))
        self.assertEqual(acceptor_view.contexts, requestor_view.contexts)
        self.assertTrue(requestor_view.contexts[3].scp_role)
