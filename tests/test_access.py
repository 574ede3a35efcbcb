"""Tests for access control: dicomtwist.access rules, their configuration
keys, the acceptor's A-ASSOCIATE-RJ answers and the 0x0124 handler wrapper."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dicomtwist import access, config as configuration, tap
from dicomtwist.access import AccessRules, PeerRule, SERVICES
from dicomtwist.acse import build_rq, check_acceptable
from dicomtwist.association import AcceptorFactory, associate
from dicomtwist.errors import AssociationRejected
from dicomtwist.services.echo import handle_echo
from dicomtwist.status import Status
from dicomtwist.storage.files import instance_path
from dicomtwist.ul.pdu import RejectReason
from tests import peers
from tests.helpers import CT_IMAGE_STORAGE, UNCOMPRESSED, VERIFICATION, connect_in_memory, \
    ct_dataset, free_port, policy
from tests.test_dicomqr_e2e import SOURCE_TREE, TWISTD, inline

LOCAL = "127.0.0.1"


def rules(**kwargs) -> AccessRules:
    """Access rules for the tests."""
    return AccessRules(**kwargs)


class CheckAssociationTests(SynchronousTestCase):
    """access.check_association: who may associate."""

    def check(self, rules_: AccessRules, called: str = "QRSCP", calling: str = "MODALITY",
              host: str | None = LOCAL):
        return access.check_association(rules_, "QRSCP", called, calling, host)

    def test_default_accepts_anyone(self) -> None:
        """With no rules any called and calling AE title, from anywhere, is accepted."""
        self.assertIsNone(self.check(rules(), called="ANY-SCP", calling="X", host=None))

    def test_require_called_aet(self) -> None:
        """require_called_aet refuses another called AE title with reason 7 and accepts ours."""
        refusal = self.check(rules(require_called_aet=True), called="ANY-SCP")
        self.assertEqual(refusal.reason, RejectReason.CALLED_AE_NOT_RECOGNIZED)
        self.assertIn("ANY-SCP", refusal.explanation)
        self.assertIsNone(self.check(rules(require_called_aet=True)))

    def test_called_aet_is_case_sensitive(self) -> None:
        """AE titles compare exactly: case is significant."""
        refusal = self.check(rules(require_called_aet=True), called="qrscp")
        self.assertEqual(refusal.reason, RejectReason.CALLED_AE_NOT_RECOGNIZED)

    def test_allowed_calling_aets(self) -> None:
        """A calling AE title outside allowed_calling_aets is refused with reason 3."""
        allowed = rules(allowed_calling_aets=frozenset({"CT1", "WS"}))
        self.assertIsNone(self.check(allowed, calling="CT1"))
        refusal = self.check(allowed, calling="INTRUDER")
        self.assertEqual(refusal.reason, RejectReason.CALLING_AE_NOT_RECOGNIZED)
        self.assertIn("INTRUDER", refusal.explanation)

    def test_called_checked_before_calling(self) -> None:
        """With both rules broken the called AE title's reason (7) is given."""
        refusal = self.check(rules(require_called_aet=True,
                                   allowed_calling_aets=frozenset({"CT1"})),
                             called="X", calling="Y")
        self.assertEqual(refusal.reason, RejectReason.CALLED_AE_NOT_RECOGNIZED)

    def test_host_check(self) -> None:
        """A peer with a host check is accepted from its address only, else reason 3."""
        checked = rules(peers={"CT1": PeerRule("CT1", addresses=frozenset({"10.0.0.5"}))})
        self.assertIsNone(self.check(checked, calling="CT1", host="10.0.0.5"))
        refusal = self.check(checked, calling="CT1", host="10.0.0.6")
        self.assertEqual(refusal.reason, RejectReason.CALLING_AE_NOT_RECOGNIZED)
        self.assertIn("10.0.0.6", refusal.explanation)
        self.assertEqual(self.check(checked, calling="CT1", host=None).reason,
                         RejectReason.CALLING_AE_NOT_RECOGNIZED)

    def test_host_check_ipv4_mapped(self) -> None:
        """An IPv4-mapped IPv6 peer address matches the IPv4 address of the host check."""
        checked = rules(peers={"CT1": PeerRule("CT1", addresses=frozenset({"10.0.0.5"}))})
        self.assertIsNone(self.check(checked, calling="CT1", host="::ffff:10.0.0.5"))

    def test_host_check_only_for_its_title(self) -> None:
        """Another calling AE title is not bound to that peer's address."""
        checked = rules(peers={"CT1": PeerRule("CT1", addresses=frozenset({"10.0.0.5"}))})
        self.assertIsNone(self.check(checked, calling="CT2", host="192.168.1.1"))

    def test_peer_without_host_check(self) -> None:
        """A peer rule without addresses accepts the title from anywhere."""
        self.assertIsNone(self.check(rules(peers={"CT1": PeerRule("CT1")}), calling="CT1"))

    def test_refusal_reject_pdu(self) -> None:
        """A refusal becomes A-ASSOCIATE-RJ rejected-permanent, service-user, its reason."""
        rj = access.Refusal(RejectReason.CALLING_AE_NOT_RECOGNIZED, "x").reject()
        self.assertEqual((rj.result, rj.source, rj.reason), (1, 1, 3))


class PermissionTests(SynchronousTestCase):
    """access.permissions_for and is_permitted."""

    def test_unknown_peer_has_everything(self) -> None:
        """A peer without a section may use every service."""
        self.assertEqual(access.permissions_for(rules(), "ANYONE"), SERVICES)
        for service in SERVICES:
            self.assertTrue(access.is_permitted(rules(), "ANYONE", service))

    def test_listed_permissions(self) -> None:
        """A peer with permissions may use those services and no others."""
        limited = rules(peers={"VIEWER": PeerRule("VIEWER", frozenset({"echo", "find"}))})
        self.assertEqual({s for s in SERVICES if access.is_permitted(limited, "VIEWER", s)},
                         {"echo", "find"})

    def test_other_services_unrestricted(self) -> None:
        """Services outside echo/store/find/move/get are not this module's business."""
        limited = rules(peers={"VIEWER": PeerRule("VIEWER", frozenset())})
        self.assertTrue(access.is_permitted(limited, "VIEWER", "n-action"))


class ParsingTests(SynchronousTestCase):
    """parse_ae_titles, parse_permissions, normalize_host."""

    def test_ae_titles_commas_and_spaces(self) -> None:
        """AE title lists may be separated by commas, spaces or both; empty means anyone."""
        self.assertEqual(access.parse_ae_titles("CT1, MR1 WS\n  PACS"),
                         frozenset({"CT1", "MR1", "WS", "PACS"}))
        self.assertIsNone(access.parse_ae_titles("  "))

    def test_bad_ae_title(self) -> None:
        """A title longer than 16 characters or with a backslash is refused."""
        self.assertRaises(ValueError, access.parse_ae_titles, "A" * 17)
        self.assertRaises(ValueError, access.parse_ae_titles, "A\\B")

    def test_permissions(self) -> None:
        """Permissions are service names in any case, or all, or none."""
        self.assertEqual(access.parse_permissions("Echo, FIND move"),
                         frozenset({"echo", "find", "move"}))
        self.assertEqual(access.parse_permissions("all"), SERVICES)
        self.assertEqual(access.parse_permissions("none"), frozenset())

    def test_unknown_permission(self) -> None:
        """An unknown service name is an error that names it."""
        with self.assertRaises(ValueError) as caught:
            access.parse_permissions("echo, delete")
        self.assertIn("delete", str(caught.exception))

    def test_normalize_host(self) -> None:
        """Addresses compare in one spelling: compressed IPv6, mapped IPv4 unwrapped."""
        self.assertEqual(access.normalize_host("::FFFF:10.0.0.1"), "10.0.0.1")
        self.assertEqual(access.normalize_host("2001:db8:0:0::1"), "2001:db8::1")
        self.assertEqual(access.normalize_host("Host.Example"), "host.example")


class ConfigTests(SynchronousTestCase):
    """The access control keys of the configuration file."""

    def load(self, text: str) -> configuration.Config:
        path = self.mktemp()
        with open(path, "w") as fp:
            fp.write(text)
        return configuration.load(path)

    def test_defaults_off(self) -> None:
        """Without the keys nothing is restricted."""
        config = self.load("[STORESCP]\naddress: 127.0.0.1\nport: 104\n")
        self.assertEqual(config.access_rules(), AccessRules())

    def test_default_keys(self) -> None:
        """require_called_aet and allowed_calling_aets are read from [DEFAULT]."""
        config = self.load("[DEFAULT]\nrequire_called_aet: yes\n"
                           "allowed_calling_aets: CT1, MR1\n  WS\n")
        self.assertEqual((config.require_called_aet, config.allowed_calling_aets),
                         (True, frozenset({"CT1", "MR1", "WS"})))

    def test_peer_section(self) -> None:
        """A destination with permissions and host_check is also a peer rule."""
        config = self.load("[CT1]\naddress: 10.0.0.5\nport: 104\n"
                           "permissions: echo, store\nhost_check: true\n")
        self.assertEqual(config.destinations["CT1"],
                         configuration.Destination("CT1", "10.0.0.5", 104))
        self.assertEqual(config.peers["CT1"], PeerRule(
            "CT1", frozenset({"echo", "store"}), frozenset({"10.0.0.5"})))

    def test_peer_without_port(self) -> None:
        """A section with access rules but no port is a peer, not a move destination."""
        config = self.load("[VIEWER]\npermissions: find\n")
        self.assertEqual(config.destinations, {})
        self.assertEqual(config.peers["VIEWER"], PeerRule("VIEWER", frozenset({"find"})))

    def test_host_check_needs_address(self) -> None:
        """host_check without an address is an error naming the section."""
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load("[CT1]\nhost_check: yes\n")
        self.assertIn("[CT1] has no address", str(caught.exception))

    def test_host_check_resolves_names(self) -> None:
        """A host name's addresses are resolved when the file is read."""
        config = self.load("[WS]\naddress: localhost\nhost_check: on\n")
        self.assertIn("127.0.0.1", config.peers["WS"].addresses)

    def test_host_check_off(self) -> None:
        """host_check: false keeps every address allowed, with all permissions."""
        config = self.load("[WS]\naddress: 10.1.1.1\nport: 104\nhost_check: false\n")
        self.assertEqual(config.peers["WS"], PeerRule("WS"))

    def test_bad_permission(self) -> None:
        """An unknown permission is an error naming the section and the value."""
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load("[CT1]\naddress: 10.0.0.5\nport: 104\npermissions: echo, erase\n")
        self.assertIn("[CT1]", str(caught.exception))
        self.assertIn("erase", str(caught.exception))

    def test_bad_allowed_calling_aets(self) -> None:
        """A bad AE title in allowed_calling_aets is an error naming the key."""
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load("[DEFAULT]\nallowed_calling_aets: OK, " + "X" * 17 + "\n")
        self.assertIn("allowed_calling_aets", str(caught.exception))

    def test_pynetdicom_destination_unchanged(self) -> None:
        """A plain pynetdicom destination section still needs address and port."""
        with self.assertRaises(configuration.ConfigError):
            self.load("[STORESCP]\naddress: 127.0.0.1\n")


class AcceptorTests(SynchronousTestCase):
    """The rules at work in an acceptor, joined in memory (client 127.0.0.1)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def connect(self, acceptor_policy, handlers=None, calling="MODALITY",
                called="TESTSCP", contexts=((VERIFICATION, UNCOMPRESSED),)):
        factory = AcceptorFactory(self.reactor, acceptor_policy,
                                  handlers or {"echo": handle_echo})
        d = associate(self.reactor, LOCAL, 11112, contexts=list(contexts),
                      called_ae_title=called, calling_ae_title=calling)
        client, server, pump = connect_in_memory(self.reactor, factory)
        return d, client, server, pump, factory

    def warnings(self) -> list[str]:
        from twisted.logger import LogLevel, formatEvent
        return [formatEvent(e) for e in self.events if e["log_level"] >= LogLevel.warn]

    def test_rejected_calling(self) -> None:
        """An unlisted calling AE title gets RJ (1, 1, 3), one warning naming it and its address, and is not counted."""
        d, client, server, pump, factory = self.connect(
            policy(allowed_calling_aets=frozenset({"FRIEND"})), calling="STRANGER")
        failure = self.failureResultOf(d, AssociationRejected)
        self.assertEqual((failure.value.result, failure.value.source, failure.value.reason),
                         (1, 1, 3))
        lines = self.warnings()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("STRANGER", lines[0])
        self.assertIn("127.0.0.1", lines[0])
        self.assertEqual(factory.active, set())

    def test_host_check_in_acceptor(self) -> None:
        """The acceptor compares the connection's address with the peer's host check."""
        other = {"MODALITY": PeerRule("MODALITY", addresses=frozenset({"10.9.9.9"}))}
        d, *_ = self.connect(policy(peers=other))
        self.assertEqual(self.failureResultOf(d, AssociationRejected).value.reason, 3)
        here = {"MODALITY": PeerRule("MODALITY", addresses=frozenset({LOCAL}))}
        d, client, server, pump, _ = self.connect(policy(peers=here))
        self.assertIs(self.successResultOf(d), client)

    def test_check_acceptable_with_host(self) -> None:
        """acse.check_acceptable applies the peer rules given the peer's address."""
        rq = build_rq("TESTSCP", "CT1", [(VERIFICATION, UNCOMPRESSED)])
        peers = {"CT1": PeerRule("CT1", addresses=frozenset({"10.0.0.5"}))}
        self.assertIsNone(check_acceptable(rq, policy(peers=peers), "10.0.0.5"))
        self.assertEqual(check_acceptable(rq, policy(peers=peers), "10.0.0.7").reason, 3)

    def test_not_authorized_status(self) -> None:
        """A service outside the peer's permissions is answered 0x0124, with one warning naming the peer."""
        limited = policy(peers={"MODALITY": PeerRule("MODALITY", frozenset({"store"}))})
        handlers = {name: tap.authorized(limited.access, name, handler)
                    for name, handler in {"echo": handle_echo,
                                          "store": lambda request: Status.SUCCESS}.items()}
        d, client, server, pump, _ = self.connect(
            limited, handlers, contexts=((VERIFICATION, UNCOMPRESSED),
                                         (CT_IMAGE_STORAGE, UNCOMPRESSED)))
        self.successResultOf(d)
        echo = client.echo()
        pump.flush()
        self.assertEqual(self.successResultOf(echo).status, Status.NOT_AUTHORIZED)
        store = client.store(ct_dataset())
        pump.flush()
        self.assertEqual(self.successResultOf(store).status, Status.SUCCESS)
        lines = self.warnings()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("echo", lines[0])
        self.assertIn("MODALITY", lines[0])
        self.assertIn("127.0.0.1", lines[0])

    def test_refused_store_leaves_no_temporary_file(self) -> None:
        """A refused C-STORE's temporary file is removed."""
        from dicomtwist.dimse.assembly import TempFileSink, memory_sink
        from dicomtwist.dimse.messages import CStoreRQ

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)

        def sink_for(message, context):
            if isinstance(message, CStoreRQ):
                return TempFileSink(directory, b"")
            return memory_sink(message, context)

        limited = policy(peers={"MODALITY": PeerRule("MODALITY", frozenset({"echo"}))})
        factory = AcceptorFactory(self.reactor, limited, {
            "store": tap.authorized(limited.access, "store", lambda r: Status.SUCCESS)},
            sink_for=sink_for)
        d = associate(self.reactor, LOCAL, 11112, contexts=[(CT_IMAGE_STORAGE, UNCOMPRESSED)],
                      called_ae_title="TESTSCP", calling_ae_title="MODALITY")
        client, server, pump = connect_in_memory(self.reactor, factory)
        self.successResultOf(d)
        store = client.store(ct_dataset())
        pump.flush()
        self.assertEqual(self.successResultOf(store).status, Status.NOT_AUTHORIZED)
        self.assertEqual(os.listdir(directory), [])


class DaemonTests(TestCase):
    """The rules in the real ``twistd -n dicomqr``, driven by DCMTK's tools."""

    timeout = 60

    @inline
    async def test_config_rules_enforced(self) -> None:
        """The config file's access keys refuse a wrong called AE title, an unlisted caller and a service outside the permissions, and serve the rest."""
        peers.dcmtk("echoscu")
        work = os.path.abspath(self.mktemp())
        cwd = os.path.join(work, "archive")
        os.makedirs(cwd)
        port = free_port()
        config = os.path.join(work, "qrscp.ini")
        with open(config, "w") as fp:
            fp.write(f"[DEFAULT]\nae_title: QRSCP\nport: {port}\nbind_address: 127.0.0.1\n"
                     "require_called_aet: true\nallowed_calling_aets: ECHOSCU, STORESCU\n"
                     "[STORESCU]\naddress: 127.0.0.1\nhost_check: true\npermissions: echo\n")
        archive = peers.PeerProcess(reactor, "twistd dicomqr")
        env = peers.peer_env()
        env["PYTHONPATH"] = os.pathsep.join([SOURCE_TREE, *filter(None, [env.get("PYTHONPATH")])])
        reactor.spawnProcess(archive, TWISTD[0], [*TWISTD, "-n", "--pidfile=", "dicomqr",
                                                  "-c", config], env=env, path=cwd)
        self.addCleanup(archive.stop)
        await peers.wait_for_port(reactor, port, archive, attempts=400)

        async def tool(name: str, *args: str, files: tuple[str, ...] = ()) -> tuple[str, int]:
            out, err, code = await peers.run_tool(reactor, peers.dcmtk(name),
                                                  [*args, LOCAL, str(port), *files])
            return (out + err).decode("utf-8", "replace"), code

        output, code = await tool("echoscu", "-aec", "ANY-SCP")
        self.assertNotEqual(code, 0, output)
        output, code = await tool("echoscu", "-aet", "INTRUDER", "-aec", "QRSCP")
        self.assertNotEqual(code, 0, output)
        output, code = await tool("echoscu", "-aec", "QRSCP")
        self.assertEqual(code, 0, output)
        path = os.path.join(work, "ct.dcm")
        ds = ct_dataset()
        ds.save_as(path, enforce_file_format=True)
        output, code = await tool("storescu", "-v", "-aet", "STORESCU", "-aec", "QRSCP",
                                  files=(path,))
        self.assertIn("Status: 0x124", output)
        self.assertFalse(os.path.exists(instance_path(os.path.join(cwd, "instances"),
                                                      ds.SOPInstanceUID)))
        log = archive.output()
        self.assertIn("Refusing association from ECHOSCU at 127.0.0.1", log)
        self.assertIn("Refusing association from INTRUDER at 127.0.0.1", log)
        self.assertIn("Refusing store from STORESCU at 127.0.0.1", log)
