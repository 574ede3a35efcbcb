"""Tests for dicomtwist.status: status codes, classes and names (PS3.7 Annex C)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.status import Category, Status, category, status_name


class StatusTests(SynchronousTestCase):
    """Status code values and aliases."""

    def test_values(self) -> None:
        """Named codes have the values of PS3.7 Annex C and PS3.4."""
        self.assertEqual(Status.SUCCESS, 0x0000)
        self.assertEqual(Status.PENDING, 0xFF00)
        self.assertEqual(Status.PENDING_WARNING, 0xFF01)
        self.assertEqual(Status.CANCEL, 0xFE00)
        self.assertEqual(Status.MOVE_DESTINATION_UNKNOWN, 0xA801)
        self.assertEqual(Status.OUT_OF_RESOURCES_SUB_OPERATIONS, 0xA702)
        self.assertEqual(Status.UNABLE_TO_PROCESS, 0xC001)
        self.assertEqual(Status.SOP_CLASS_NOT_SUPPORTED, 0x0122)
        self.assertEqual(Status.RESOURCE_LIMITATION, 0x0213)

    def test_aliases(self) -> None:
        """Codes shared between services are aliases of one member."""
        self.assertIs(Status.STORE_COERCION_OF_DATA_ELEMENTS,
                      Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES)
        self.assertIs(Status.REFUSED_OUT_OF_RESOURCES, Status.OUT_OF_RESOURCES)
        self.assertIs(Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                      Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)


class CategoryTests(SynchronousTestCase):
    """category() follows the Status Class convention of PS3.7 Annex C."""

    def test_success(self) -> None:
        """0x0000 is Success."""
        self.assertIs(category(0x0000), Category.SUCCESS)

    def test_pending(self) -> None:
        """0xFF00 and 0xFF01 are Pending."""
        self.assertIs(category(Status.PENDING), Category.PENDING)
        self.assertIs(category(0xFF01), Category.PENDING)

    def test_cancel(self) -> None:
        """0xFE00 is Cancel."""
        self.assertIs(category(0xFE00), Category.CANCEL)

    def test_warning(self) -> None:
        """0x0001, 0x0107, 0x0116 and every 0xBxxx are Warning."""
        for code in (0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007, 0xBFFF):
            self.assertIs(category(code), Category.WARNING, hex(code))

    def test_failure(self) -> None:
        """0xAxxx, 0xCxxx, other 0x01xx and 0x02xx codes are Failure."""
        for code in (0xA700, 0xA801, 0xA900, 0xC000, 0xC001, 0xCFFF,
                     0x0105, 0x0110, 0x0122, 0x0210, 0x0213):
            self.assertIs(category(code), Category.FAILURE, hex(code))

    def test_unlisted_is_failure(self) -> None:
        """Codes outside the Annex C table, such as 0xFFFF, are treated as Failure."""
        for code in (0x0002, 0xFFFF, 0xFE01, 0x1234):
            self.assertIs(category(code), Category.FAILURE, hex(code))

    def test_every_member(self) -> None:
        """Every named status has a class consistent with its member name."""
        for member in Status:
            if member.name.startswith("PENDING"):
                self.assertIs(category(member), Category.PENDING)
            elif member is Status.SUCCESS:
                self.assertIs(category(member), Category.SUCCESS)


class StatusNameTests(SynchronousTestCase):
    """status_name() gives readable meanings."""

    def test_names(self) -> None:
        """Common codes have the names a Move SCU prints."""
        self.assertEqual(status_name(0x0000), "Success")
        self.assertEqual(status_name(0xFF00), "Pending")
        self.assertEqual(status_name(0xFE00), "Cancel")
        self.assertEqual(status_name(Status.MOVE_DESTINATION_UNKNOWN),
                         "Move Destination Unknown")
        self.assertEqual(status_name(0xB000), "Sub-operations Complete With Failures")

    def test_unknown(self) -> None:
        """A code dicomtwist does not name is "Unknown"."""
        self.assertEqual(status_name(0x1234), "Unknown")

    def test_every_member_named(self) -> None:
        """Every Status member has a name other than "Unknown"."""
        for member in Status:
            self.assertNotEqual(status_name(member), "Unknown", member.name)
