"""Tests for dicomtwist.config: the qrscp configuration file."""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dicomtwist.config import Config, ConfigError, Destination, load

#: The configuration file of qrscp.rst ("Configuration File"), verbatim:
#: comments, indented destination keys, an empty bind address.
SPEC_EXAMPLE = """\
[DEFAULT]
# Our AE Title
ae_title: QRSCP
# Our listen port
port: 11112
# Our maximum PDU size; 0 for unlimited
max_pdu: 16382
# The ACSE, DIMSE and network timeouts (in seconds)
acse_timeout: 30
dimse_timeout: 30
network_timeout: 30
# The address of the network interface to listen on
# If unset, listen on all interfaces
bind_address:
# Directory where SOP Instances received from Storage SCUs will be stored
#   This directory contains the QR service's managed SOP Instances
instance_location: instances
# Location of sqlite3 database for the QR service's managed SOP Instances
database_location: instances.sqlite

# Move Destination 1
# The AE title of the move destination, as ASCII
[STORESCP]
    # The IP address and listen port of the destination
    address: 8.8.8.8
    port: 11112

# Move Destination 2
[PACS_SCP]
    address: 192.168.2.1
    port: 104
"""

#: Shaped like pynetdicom's apps/qrscp/default.ini: every [DEFAULT] key
#: indented, a ``log_identifier`` key, ``##`` comments, one destination.
PYNETDICOM_STYLE = """\
# Default configuration file for qrscp.py

## Application settings
[DEFAULT]
    # Our AE Title
    ae_title: MYQR
    # Our listen port
    port: 11113
    # Our maximum PDU size; 0 for unlimited
    max_pdu: 0
    # The ACSE, DIMSE and network timeouts (in seconds)
    acse_timeout: 60
    dimse_timeout: 45
    network_timeout: 15.5
    # If unset, listen on all interfaces
    bind_address: 127.0.0.1
    instance_location: store/files
    database_location: store/index.sqlite
    # Log C-FIND, C-GET and C-MOVE Identifier datasets
    log_identifier: False


## Move Destinations
# The AE title of the move destination, as ASCII
[STORESCP]
    address: 127.0.0.1
    port: 11114
"""


class ConfigFileTestCase(SynchronousTestCase):
    """Base: write configuration text to a temporary file and load it."""

    def write(self, text: str) -> str:
        """Write ``text`` to a new file and return its path."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as fp:
            fp.write(text)
        return path

    def load_text(self, text: str) -> Config:
        """Load a configuration from ``text``."""
        return load(self.write(text))

    def assertConfigError(self, text: str, *fragments: str) -> str:
        """Loading ``text`` raises ConfigError whose message has every fragment."""
        with self.assertRaises(ConfigError) as caught:
            self.load_text(text)
        message = str(caught.exception)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message


class ValidFileTests(ConfigFileTestCase):
    """Files that load."""

    def test_spec_example(self) -> None:
        """The example file of qrscp.rst loads with its values and two destinations."""
        config = self.load_text(SPEC_EXAMPLE)
        self.assertEqual(
            (config.ae_title, config.port, config.max_pdu, config.acse_timeout,
             config.dimse_timeout, config.network_timeout, config.bind_address,
             config.instance_location, config.database_location),
            ("QRSCP", 11112, 16382, 30.0, 30.0, 30.0, "", "instances", "instances.sqlite"))
        self.assertEqual(config.destinations, {
            "STORESCP": Destination("STORESCP", "8.8.8.8", 11112),
            "PACS_SCP": Destination("PACS_SCP", "192.168.2.1", 104),
        })

    def test_pynetdicom_style_file(self) -> None:
        """A file shaped like pynetdicom's default.ini (indented keys, log_identifier) loads."""
        config = self.load_text(PYNETDICOM_STYLE)
        self.assertEqual(
            (config.ae_title, config.port, config.max_pdu, config.acse_timeout,
             config.dimse_timeout, config.network_timeout, config.bind_address,
             config.instance_location, config.database_location, config.log_identifier),
            ("MYQR", 11113, 0, 60.0, 45.0, 15.5, "127.0.0.1", "store/files",
             "store/index.sqlite", False))
        self.assertEqual(config.destinations,
                         {"STORESCP": Destination("STORESCP", "127.0.0.1", 11114)})

    def test_pynetdicom_default_ini(self) -> None:
        """pynetdicom's own qrscp default.ini, as installed, loads unchanged."""
        try:
            import pynetdicom
        except ImportError:
            raise SkipTest("pynetdicom not installed")
        path = os.path.join(os.path.dirname(pynetdicom.__file__), "apps", "qrscp", "default.ini")
        if not os.path.exists(path):
            raise SkipTest(f"{path} not shipped by this pynetdicom")
        config = load(path)
        self.assertEqual((config.ae_title, config.port), ("QRSCP", 11112))
        self.assertIn("STORESCP", config.destinations)

    def test_defaults_without_default_section(self) -> None:
        """A file with only a destination keeps every default setting."""
        config = self.load_text("[PACS]\naddress: 10.0.0.1\nport: 104\n")
        expected = Config(destinations={"PACS": Destination("PACS", "10.0.0.1", 104)})
        self.assertEqual(config, expected)

    def test_destination_does_not_inherit(self) -> None:
        """A destination's port is its own, not [DEFAULT]'s, even when both are set."""
        config = self.load_text("[DEFAULT]\nport: 2000\n[PACS]\naddress: ::1\nport: 3000\n")
        self.assertEqual((config.port, config.destinations["PACS"].port), (2000, 3000))

    def test_empty_timeout_means_none(self) -> None:
        """An empty timeout value means no timeout."""
        config = self.load_text("[DEFAULT]\nacse_timeout:\ndimse_timeout: none\n")
        self.assertEqual((config.acse_timeout, config.dimse_timeout), (None, None))


class InvalidFileTests(ConfigFileTestCase):
    """Files that are refused with a one-line error naming the problem."""

    def test_missing_file(self) -> None:
        """A file that does not exist is named in the error."""
        path = os.path.join(self.mktemp(), "nope.ini")
        with self.assertRaises(ConfigError) as caught:
            load(path)
        self.assertIn(path, str(caught.exception))
        self.assertIn("does not exist", str(caught.exception))

    def test_unknown_key(self) -> None:
        """An unknown [DEFAULT] key is named with its section."""
        self.assertConfigError("[DEFAULT]\nae_tilte: X\n", "'ae_tilte'", "[DEFAULT]")

    def test_unknown_destination_key(self) -> None:
        """An unknown key in a destination is named with the destination."""
        self.assertConfigError("[PACS]\naddress: 10.0.0.1\nport: 104\nhost: x\n",
                               "[PACS]", "'host'")

    def test_non_numeric_port(self) -> None:
        """A non-numeric port is named with its value."""
        self.assertConfigError("[DEFAULT]\nport: eleven\n", "port", "'eleven'")

    def test_port_out_of_range(self) -> None:
        """A port above 65535 is refused."""
        self.assertConfigError("[DEFAULT]\nport: 70000\n", "port", "'70000'")

    def test_destination_non_numeric_port(self) -> None:
        """A destination's non-numeric port is named with the destination."""
        self.assertConfigError("[PACS]\naddress: 10.0.0.1\nport: 1o4\n", "[PACS]", "port",
                               "'1o4'")

    def test_destination_without_address(self) -> None:
        """A destination without an address is named."""
        self.assertConfigError("[PACS]\nport: 104\n", "[PACS]", "no address")

    def test_destination_without_port(self) -> None:
        """A destination without a port is an error, not a copy of [DEFAULT]'s port."""
        self.assertConfigError("[DEFAULT]\nport: 11112\n[PACS]\naddress: 10.0.0.1\n",
                               "[PACS]", "no port")

    def test_bad_max_pdu(self) -> None:
        """A max_pdu that is not a number is named."""
        self.assertConfigError("[DEFAULT]\nmax_pdu: big\n", "max_pdu", "'big'")

    def test_max_pdu_too_small(self) -> None:
        """A non-zero max_pdu below the minimum is refused."""
        self.assertConfigError("[DEFAULT]\nmax_pdu: 100\n", "max_pdu", "'100'")

    def test_bad_timeout(self) -> None:
        """A timeout that is not a number of seconds is named."""
        self.assertConfigError("[DEFAULT]\ndimse_timeout: soon\n", "dimse_timeout", "'soon'")

    def test_negative_timeout(self) -> None:
        """A negative timeout is refused."""
        self.assertConfigError("[DEFAULT]\nnetwork_timeout: -1\n", "network_timeout", "'-1'")

    def test_bad_ae_title(self) -> None:
        """An AE title longer than 16 characters is named."""
        self.assertConfigError("[DEFAULT]\nae_title: ABCDEFGHIJKLMNOPQ\n", "ae_title")

    def test_bad_destination_title(self) -> None:
        """A destination section that is not a valid AE title is named."""
        self.assertConfigError("[A_VERY_LONG_DESTINATION]\naddress: 10.0.0.1\nport: 104\n",
                               "[A_VERY_LONG_DESTINATION]", "AE title")

    def test_bad_bind_address(self) -> None:
        """A bind address that is not an IP address is named."""
        self.assertConfigError("[DEFAULT]\nbind_address: localhost:1\n", "bind_address")

    def test_bad_boolean(self) -> None:
        """A log_identifier that is not a boolean is named."""
        self.assertConfigError("[DEFAULT]\nlog_identifier: maybe\n", "log_identifier")

    def test_not_a_config_file(self) -> None:
        """A file with no section header is reported, not a traceback."""
        self.assertConfigError("port = 1\n", "cannot be read")

    def test_duplicate_key(self) -> None:
        """A key given twice in one section is reported."""
        self.assertConfigError("[DEFAULT]\nport: 1\nport: 2\n", "port")
