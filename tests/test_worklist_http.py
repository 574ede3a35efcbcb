"""Tests for dicomtwist.web.worklist: worklist items added, replaced, read
and removed over HTTP as DICOM JSON, in memory through the archive's real
Site (as ``tests.test_dicomweb`` does for DICOMweb).  What is written is
read back as the worklist reads it (:class:`WorklistDirectory`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tests.test_dicomweb import WebTestCase
from tests.test_webserver import basic, users_file
from tests.worklist_items import bad_items, extra_items
from dicomtwist.services.worklist import WorklistDirectory
from dicomtwist.web import auth
from dicomtwist.web import worklist as web_worklist

ROOT = "http://archive.example"
JSON = {"Content-Type": "application/dicom+json"}


def as_json(ds: Any) -> bytes:
    """An item's DICOM JSON body."""
    return json.dumps(ds.to_json_dict()).encode("utf-8")


class WorklistHttpCase(WebTestCase):
    """Base: the Site with a worklist directory."""

    def configure(self) -> dict[str, Any]:
        self.worklist = os.path.abspath(self.mktemp())
        os.makedirs(self.worklist)
        return {"worklist_location": self.worklist, **self.more()}

    def more(self) -> dict[str, Any]:
        """Further settings of the test case."""
        return {}

    def call(self, method: str, path: str = "", body: bytes | None = None,
             **headers: Any) -> Any:
        """A request to ``/worklist{path}``."""
        all_headers = dict(JSON) if body is not None else {}
        all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
        return self.request(method, f"{ROOT}/worklist{path}", all_headers, body)

    def files(self) -> list[str]:
        """Everything in the worklist directory."""
        return sorted(os.listdir(self.worklist))

    def items(self) -> dict[str, Any]:
        """The items the worklist answers from, by name."""
        found, problems = WorklistDirectory(self.worklist).items()
        self.assertEqual(problems, [])
        return dict(found)


class ItemTests(WorklistHttpCase):
    """Adding, replacing, reading and removing items."""

    def test_post_adds_an_item(self) -> None:
        """POST writes the item under a new ``*.wl`` name (201, Location);
        the worklist answers from it and GET gives it back."""
        item = extra_items()["ct-morning.wl"]
        response = self.call("POST", body=as_json(item))
        self.assertEqual(response.code, 201, response.body)
        name = response.json()["name"]
        self.assertTrue(name.endswith(".wl"))
        self.assertEqual(response.header("location"), f"/worklist/{name}")
        self.assertEqual(self.files(), [name])
        self.assertEqual(self.items()[name].PatientID, "P1")
        listed = self.call("GET")
        self.assertEqual(listed.code, 200)
        self.assertEqual([entry["name"] for entry in listed.json()], [name])
        got = self.call("GET", f"/{name}")
        self.assertEqual(got.header("content-type"), "application/dicom+json")
        self.assertEqual(got.json()["00100020"], {"vr": "LO", "Value": ["P1"]})

    def test_file_meta_kept_out(self) -> None:
        """File meta elements in the body do not go into the data set."""
        body = extra_items()["ct-morning.wl"].to_json_dict()
        body["00020010"] = {"vr": "UI", "Value": ["1.2.840.10008.1.2"]}
        self.assertEqual(self.call("PUT", "/m.wl", json.dumps(body).encode()).code, 201)
        written = self.items()["m.wl"]
        self.assertNotIn(0x00020010, written)
        self.assertEqual(written.file_meta.TransferSyntaxUID, "1.2.840.10008.1.2.1")

    def test_array_of_one(self) -> None:
        """An array holding one data set is taken as that data set."""
        body = json.dumps([extra_items()["ct-morning.wl"].to_json_dict()]).encode()
        self.assertEqual(self.call("POST", body=body).code, 201)

    def test_put_adds_then_replaces(self) -> None:
        """PUT to a name adds (201), then replaces (200) the item."""
        item = extra_items()["mr-next-day.wl"]
        self.assertEqual(self.call("PUT", "/mr.wl", as_json(item)).code, 201)
        item.PatientID = "P3-NEW"
        replaced = self.call("PUT", "/mr.wl", as_json(item))
        self.assertEqual(replaced.code, 200)
        self.assertEqual(self.files(), ["mr.wl"])
        self.assertEqual(self.items()["mr.wl"].PatientID, "P3-NEW")

    def test_unicode_text(self) -> None:
        """Text outside ASCII is written with Specific Character Set
        ISO_IR 192 when the item names none."""
        item = extra_items()["us-no-physician.wl"]
        item.PatientName = "Ødegård^Åse"
        self.assertNotIn("SpecificCharacterSet", item)
        self.assertEqual(self.call("PUT", "/u.wl", as_json(item)).code, 201)
        written = self.items()["u.wl"]
        self.assertEqual(written.SpecificCharacterSet, "ISO_IR 192")
        self.assertEqual(str(written.PatientName), "Ødegård^Åse")

    def test_delete(self) -> None:
        """DELETE removes the item (204); a second one is 404."""
        self.call("PUT", "/a.wl", as_json(extra_items()["ct-morning.wl"]))
        self.assertEqual(self.call("DELETE", "/a.wl").code, 204)
        self.assertEqual(self.files(), [])
        self.assertEqual(self.call("DELETE", "/a.wl").code, 404)
        self.assertEqual(self.call("GET", "/a.wl").code, 404)

    def test_incomplete_refused(self) -> None:
        """An incomplete item is a 400 naming what it lacks; nothing is written."""
        response = self.call("POST", body=as_json(bad_items()["no-patient-id.wl"]))
        self.assertEqual(response.code, 400)
        self.assertIn("PatientID is missing or empty", response.json()["error"])
        self.assertEqual(self.files(), [])

    def test_bad_bodies(self) -> None:
        """Bodies that are not one DICOM JSON data set are 400s."""
        one = extra_items()["ct-morning.wl"].to_json_dict()
        for body in (b"{", b"\xff", b"[]", json.dumps([one, one]).encode(), b"42",
                     json.dumps({"00100010": {"vr": "XX", "Value": ["A"]}}).encode()):
            response = self.call("POST", body=body)
            self.assertEqual(response.code, 400, body)
        self.assertEqual(self.call("POST").code, 400)
        self.assertEqual(self.files(), [])

    def test_too_large(self) -> None:
        """A body over the limit is a 413."""
        self.patch(web_worklist, "MAX_BODY", 100)
        response = self.call("POST", body=as_json(extra_items()["ct-morning.wl"]))
        self.assertEqual(response.code, 413)
        self.assertEqual(self.files(), [])

    def test_names(self) -> None:
        """Only plain ``*.wl`` names are items: others are 404 and touch
        nothing."""
        body = as_json(extra_items()["ct-morning.wl"])
        for path in ("/x.dcm", "/.hidden.wl", "/a/b.wl", "/%2e%2e%2fx.wl", "/..%2Fx.wl"):
            self.assertEqual(self.call("PUT", path, body).code, 404, path)
            self.assertEqual(self.call("DELETE", path).code, 404, path)
        self.assertEqual(self.files(), [])
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.worklist), "x.wl")))

    def test_methods(self) -> None:
        """Other methods are 405 with Allow."""
        response = self.call("DELETE")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header("allow"), "GET, POST")
        self.assertEqual(self.call("POST", "/a.wl", b"{}").code, 405)


class PermissionTests(WorklistHttpCase):
    """Reading takes ``query``, writing ``store``, removing ``delete``."""

    def more(self) -> dict[str, Any]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        fast = dict(iterations=1000)
        users = users_file(directory, [
            f"admin:{auth.hash_password('a', **fast)}:all",
            f"reader:{auth.hash_password('r', **fast)}:query",
            f"writer:{auth.hash_password('w', **fast)}:query,store",
        ])
        return {"http_users": users}

    def test_permissions(self) -> None:
        """Each user may do what its permissions allow, no more."""
        body = as_json(extra_items()["ct-morning.wl"])
        self.assertEqual(self.call("GET").code, 401)
        self.assertEqual(self.call("GET", authorization=basic("reader", "r")).code, 200)
        self.assertEqual(self.call("PUT", "/a.wl", body,
                                   authorization=basic("reader", "r")).code, 403)
        self.assertEqual(self.files(), [])
        self.assertEqual(self.call("PUT", "/a.wl", body,
                                   authorization=basic("writer", "w")).code, 201)
        self.assertEqual(self.call("DELETE", "/a.wl",
                                   authorization=basic("writer", "w")).code, 403)
        self.assertEqual(self.call("DELETE", "/a.wl",
                                   authorization=basic("admin", "a")).code, 204)


class WithoutWorklistTests(WebTestCase):
    """Without a worklist directory there is no ``/worklist``."""

    def test_not_served(self) -> None:
        """``/worklist`` is a 404."""
        self.assertEqual(self.request("GET", f"{ROOT}/worklist").code, 404)
