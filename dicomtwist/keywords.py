"""Keyword pathing: build a query Identifier from ``-k PATH=VALUE`` arguments.

The rules are those of ``keyword-pathing.md``:

* ``PATH`` is a dot-separated list of elements, each a keyword
  (``PatientName``) or a tag ``(gggg,eeee)`` in hex, optionally followed by
  an item index ``[n]`` when the element is a sequence;
* everything after the first ``=`` is the value, taken literally; an empty
  value gives an element with no value (universal matching);
* the value is converted by the element's VR from the data dictionary:
  numbers for numeric VRs, hex for byte VRs (``OB or OW`` is ``OW``),
  strings otherwise; a backslash separates multiple values;
* ``Seq=`` is an empty sequence, ``Seq[n]=`` makes items up to ``n``, and
  ``Seq[n].Element=value`` sets an element inside item ``n``, creating any
  missing items, at any depth.

Every mistake raises :class:`KeywordError`, whose message is one line naming
the argument and the reason.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

__all__ = [
    "KeywordError",
    "PathComponent",
    "apply_keyword",
    "build_identifier",
    "parse_path",
    "read_query_file",
]

#: One path component: a keyword or (gggg,eeee) tag, and an optional [index].
_COMPONENT = re.compile(
    r"^(?P<name>\((?P<group>[0-9A-Fa-f]{4}),(?P<element>[0-9A-Fa-f]{4})\)"
    r"|[A-Za-z][A-Za-z0-9]*)"
    r"(?:\[(?P<index>[^\[\]]*)\])?$"
)

#: Integer VRs and their value ranges (PS3.5 6.2).
_INT_RANGES: dict[str, tuple[int, int]] = {
    "US": (0, 0xFFFF),
    "SS": (-0x8000, 0x7FFF),
    "UL": (0, 0xFFFFFFFF),
    "SL": (-0x80000000, 0x7FFFFFFF),
    "UV": (0, 0xFFFFFFFFFFFFFFFF),
    "SV": (-0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
}
_FLOAT_VRS = frozenset({"FL", "FD"})
_BYTE_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Text VRs whose value may contain a backslash: always one value (PS3.5 6.2).
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
#: Integer String range (PS3.5 6.2: a 32-bit signed integer).
_IS_RANGE = (-(2**31), 2**31 - 1)
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM",
                       "UC", "UI", "UR", "UT"})
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class KeywordError(ValueError):
    """A ``-k`` argument that does not follow the keyword-pathing rules.

    :param argument: the argument as given.
    :param reason: what is wrong with it.
    """

    def __init__(self, argument: str, reason: str) -> None:
        super().__init__(f"invalid -k argument {argument!r}: {reason}")
        self.argument = argument
        self.reason = reason


class PathComponent:
    """One step of a path: an element and, for a sequence, an item index.

    :ivar tag: the element's tag as an int.
    :ivar vr: its VR from the data dictionary (possibly ``"OB or OW"``).
    :ivar index: the item index, or None.
    :ivar text: the component as written, for messages.
    """

    __slots__ = ("tag", "vr", "index", "text")

    def __init__(self, tag: int, vr: str, index: int | None, text: str) -> None:
        self.tag = tag
        self.vr = vr
        self.index = index
        self.text = text

    def __repr__(self) -> str:
        return f"PathComponent({self.tag:#010x}, {self.vr!r}, {self.index!r})"


def _dictionary_vr(tag: int) -> str | None:
    """The data dictionary VR of a tag (private creators are LO), or None."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        pass
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 1 and group > 0x0008 and 0x0010 <= element <= 0x00FF:
        return "LO"  # Private Creator (PS3.5 7.8.1)
    return None


def _split_path(path: str) -> list[str]:
    """Split a path at the dots that are not inside ``[...]``."""
    parts, depth, start = [], 0, 0
    for position, char in enumerate(path):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == "." and depth == 0:
            parts.append(path[start:position])
            start = position + 1
    parts.append(path[start:])
    return parts


def parse_path(argument: str, path: str) -> list[PathComponent]:
    """Split a path into components, each checked against the dictionary.

    :param argument: the whole ``-k`` argument, for error messages.
    :raises KeywordError: a component that is not a known keyword or tag, or
        whose index is not a non-negative integer.
    """
    if not path:
        raise KeywordError(argument, "no element named before '='")
    components = []
    for text in _split_path(path):
        match = _COMPONENT.match(text)
        if match is None:
            raise KeywordError(argument, f"{text!r} is not a keyword or a (gggg,eeee) tag,"
                                         " optionally followed by [index]")
        name = match.group("name")
        if match.group("group") is not None:
            tag = int(match.group("group") + match.group("element"), 16)
            vr = _dictionary_vr(tag)
            if vr is None:
                raise KeywordError(argument, f"tag {name} is not in the DICOM data dictionary")
        else:
            found = tag_for_keyword(name)
            if found is None:
                raise KeywordError(argument, f"unknown keyword {name!r}")
            tag = found
            vr = dictionary_VR(tag)
        index = None
        raw_index = match.group("index")
        if raw_index is not None:
            if not raw_index.isdigit() or not raw_index.isascii():
                raise KeywordError(argument, f"index [{raw_index}] of {name} is not a"
                                             " non-negative integer")
            index = int(raw_index)
        components.append(PathComponent(tag, vr, index, text))
    return components


def _choose_vr(vr: str, parts: list[str], existing: DataElement | None) -> str:
    """A single VR for a dictionary VR like ``"OB or OW"`` or ``"US or SS"``."""
    options = [v.strip() for v in vr.split(" or ")]
    if len(options) == 1:
        return options[0]
    if existing is not None and existing.VR in options:
        return existing.VR
    if "OB" in options and "OW" in options:
        return "OW"  # keyword-pathing.md: Pixel Data and the like are OW
    if "US" in options:
        negative = any(p.strip().startswith("-") for p in parts)
        return "SS" if negative and "SS" in options else "US"
    return options[0]


def _convert_one(argument: str, name: str, vr: str, text: str) -> Any:
    """Convert one value for a non-byte VR."""
    if vr in _INT_RANGES:
        low, high = _INT_RANGES[vr]
        try:
            number = int(text.strip())
        except ValueError:
            raise KeywordError(argument, f"{text!r} is not an integer, as {name} ({vr})"
                                         " needs") from None
        if not low <= number <= high:
            raise KeywordError(argument, f"{number} is out of range for {name} ({vr}:"
                                         f" {low} to {high})")
        return number
    if vr in _FLOAT_VRS:
        try:
            return float(text.strip())
        except ValueError:
            raise KeywordError(argument, f"{text!r} is not a number, as {name} ({vr})"
                                         " needs") from None
    if vr == "IS":
        try:
            number = int(text.strip())
        except ValueError:
            raise KeywordError(argument, f"{text!r} is not an integer string, as {name}"
                                         " (IS) needs") from None
        if not _IS_RANGE[0] <= number <= _IS_RANGE[1]:
            raise KeywordError(argument, f"{number} is out of range for {name} (IS)")
        return text.strip()
    if vr == "DS":
        try:
            float(text.strip())
        except ValueError:
            raise KeywordError(argument, f"{text!r} is not a decimal string, as {name}"
                                         " (DS) needs") from None
        if len(text.strip()) > 16:
            raise KeywordError(argument, f"{text!r} is longer than 16 characters ({name}, DS)")
        return text.strip()
    if vr == "AT":
        match = _COMPONENT.match(text.strip())
        if match is not None and match.group("group") is not None:
            return int(match.group("group") + match.group("element"), 16)
        if re.fullmatch(r"[0-9A-Fa-f]{8}", text.strip()):
            return int(text.strip(), 16)
        found = tag_for_keyword(text.strip())
        if found is None:
            raise KeywordError(argument, f"{text!r} is not a tag ((gggg,eeee), ggggeeee or a"
                                         f" keyword), as {name} (AT) needs")
        return found
    if vr == "UI" and text and not (len(text) <= 64 and _UID.match(text)):
        raise KeywordError(argument, f"{text!r} is not a UID (digits and dots, at most 64"
                                     f" characters), as {name} (UI) needs")
    return text


def convert_value(argument: str, component: PathComponent, value: str,
                  existing: DataElement | None = None) -> tuple[str, Any]:
    """The VR and pydicom value for ``value`` set on ``component``'s element.

    :raises KeywordError: the value cannot be converted for the VR.
    """
    name = keyword_for_tag(component.tag) or component.text
    parts = value.split("\\")
    vr = _choose_vr(component.vr, parts, existing)
    if value == "":
        return vr, "" if vr in _TEXT_VRS else None
    if vr in _BYTE_VRS:
        try:
            return vr, bytes.fromhex(value)
        except ValueError:
            raise KeywordError(argument, f"{value!r} is not hex bytes, as {name} ({vr})"
                                         " needs (e.g. 00FFEA08)") from None
    if vr in _SINGLE_TEXT_VRS:
        return vr, value
    values = [_convert_one(argument, name, vr, part) for part in parts]
    # The dictionary VM is not enforced: a query may hold a list of UIDs in
    # a single-valued element (PS3.4 C.2.2.2.2, List of UID Matching).
    return vr, values if len(values) > 1 else values[0]


def apply_keyword(dataset: Dataset, argument: str) -> None:
    """Set or add the element one ``-k`` argument describes.

    :param dataset: the Identifier being built; changed in place.
    :param argument: ``PATH=VALUE``.
    :raises KeywordError: the argument breaks a rule.
    """
    path, equals, value = argument.partition("=")
    if not equals:
        raise KeywordError(argument, "expected PATH=VALUE (e.g. PatientName=CITIZEN^Jan)")
    components = parse_path(argument, path.strip())
    current = dataset
    for position, component in enumerate(components):
        last = position == len(components) - 1
        is_sequence = component.vr == "SQ"
        if component.index is not None:
            if not is_sequence:
                raise KeywordError(argument, f"{component.text} has an index but is not a"
                                             f" sequence ({component.vr})")
            element = current.get(component.tag)
            if element is None or element.VR != "SQ":
                current[component.tag] = DataElement(component.tag, "SQ", Sequence())
                element = current[component.tag]
            items = element.value
            while len(items) <= component.index:
                items.append(Dataset())
            if last:
                if value != "":
                    raise KeywordError(argument, f"a sequence item ({component.text}) takes"
                                                 " no value; set an element inside it")
                return
            current = items[component.index]
            continue
        if not last:
            if is_sequence:
                raise KeywordError(argument, f"{component.text} is a sequence: name an item,"
                                             f" as in {component.text}[0]")
            raise KeywordError(argument, f"{component.text} is not a sequence, so nothing"
                                         " can be inside it")
        if is_sequence:
            if value != "":
                raise KeywordError(argument, f"a sequence ({component.text}) takes no value;"
                                             " use [index] to add items")
            current[component.tag] = DataElement(component.tag, "SQ", Sequence())
            return
        vr, converted = convert_value(argument, component, value, current.get(component.tag))
        current[component.tag] = DataElement(component.tag, vr, converted)


def read_query_file(path: str) -> Dataset:
    """Read a DICOM file to use as the query Identifier (``-f``).

    The File Meta Information is dropped: the Identifier is sent in the
    transfer syntax of the presentation context.

    :raises ValueError: the file cannot be read or is not DICOM; the message
        names the file.
    """
    try:
        try:
            ds = dcmread(path)
        except Exception as strict_error:
            if isinstance(strict_error, OSError):
                raise
            ds = dcmread(path, force=True)
        for _ in ds.iterall():
            pass  # converts every raw element, so a bad file fails here
    except OSError as e:
        raise ValueError(f"cannot read -f file {path!r}: {e.strerror or e}") from None
    except Exception as e:
        raise ValueError(f"-f file {path!r} is not a readable DICOM data set: {e}") from None
    if len(ds) == 0:
        raise ValueError(f"-f file {path!r} holds no DICOM data elements")
    identifier = Dataset()
    for element in ds:
        if element.tag.group != 0x0002:
            identifier.add(element)
    return identifier


def build_identifier(arguments: Iterable[str], base: Dataset | None = None) -> Dataset:
    """Build the query Identifier: ``base`` (from ``-f``) then each ``-k``.

    :raises KeywordError: at the first bad argument.
    """
    dataset = base if base is not None else Dataset()
    for argument in arguments:
        apply_keyword(dataset, argument)
    return dataset
