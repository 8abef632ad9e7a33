#!/usr/bin/env python3
"""Self-check of the test SAML identity provider (idp.py) against pysaml2's own service provider.

Usage: target/clients-venv/bin/python tests/saml-idp/selftest.py

Starts idp.py, builds an AuthnRequest as an SP would (pysaml2's Saml2Client, unsigned,
HTTP-Redirect binding) and checks:

- the browser flow (/sso/redirect page, /sso/login auto-submit form) yields a response pysaml2
  accepts, for the user whose button was pressed, with RelayState passed through;
- /test/response: good and response-signed are accepted by an SP wanting signed assertions,
  only-response-signed by one wanting the assertion or the response signed, all with the expected
  NameID and attributes; every other variant is expected to be refused: when pysaml2 accepts one,
  a NOTE is printed (pysaml2's leniency is not this IdP's fault);
- the shape of each variant, independently of pysaml2: signatures that must verify do (xmlsec1
  with the IdP's certificate), wrong-key verifies only with its own certificate, each XSW output
  holds one evil and one legitimate NameID and one ds:Signature, which verifies over the
  legitimate element once put back (and in place, for xsw2-5, where a standard verifier resolves
  the reference to the legitimate element);
- bad input gets a 400, and SIGTERM ends the IdP with status 0.

Exits non-zero on the first failed check.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import logging
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import lxml.html
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig

HERE = Path(__file__).resolve().parent
XMLSEC1 = "/usr/bin/xmlsec1"
SP_ENTITY_ID = "http://127.0.0.1:1/saml/corp/metadata"
ACS = "http://127.0.0.1:1/saml/corp/acs"
RELAY_STATE = "state-<&>\"'"

NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
}
ID_ATTRS = ["--id-attr:ID", f"{NS['saml']}:Assertion", "--id-attr:ID", f"{NS['samlp']}:Response"]

CLINICIAN = {
    "name_id": "dr.house@hospital.test",
    "groups": ["clinicians", "staff"],
    "uid": ["dhouse"],
    "mail": ["dr.house@hospital.test"],
}
NOBODY_EMAIL = "nobody@hospital.test"
VARIANTS = [
    "good", "response-signed", "only-response-signed", "unsigned", "wrong-key", "sha1",
    "xsw1", "xsw2", "xsw3", "xsw4", "xsw5", "xsw6", "xsw7", "xsw8", "nameid-comment", "audience",
    "no-audience", "recipient", "destination", "expired", "not-yet-valid", "wrong-in-response-to",
    "idp-initiated", "doctype", "empty-nameid", "wrong-issuer", "status-failure", "two-assertions",
]  # fmt: skip
ACCEPTED = {"good": "assertions", "response-signed": "assertions", "only-response-signed": "either"}
# What an SP may read from a variant it accepts, though refusing is better.
HARMLESS = {"nameid-comment": "dr.house@hospital.test.evil.example"}
# Variants whose every ds:Signature verifies in place with the IdP's certificate.
VERIFYING = {
    "good", "response-signed", "only-response-signed", "sha1", "nameid-comment", "audience",
    "no-audience", "recipient", "destination", "expired", "not-yet-valid", "wrong-in-response-to",
    "idp-initiated", "doctype", "empty-nameid", "wrong-issuer", "two-assertions",
    "xsw2", "xsw3", "xsw4", "xsw5",
}  # fmt: skip


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- The IdP process and HTTP ------------------------------------------------------------------


def start_idp(directory: Path, log: Path) -> tuple[subprocess.Popen, dict]:
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(HERE / "idp.py"), "--port", "0", "--dir", str(directory)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    ready = json.loads(process.stdout.readline())
    check(set(ready) == {"url", "entity_id", "metadata_file", "sso_url"}, f"ready line: {ready}")
    return process, ready


def http(url: str, data: bytes | None = None, content_type: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8")


def order(idp_url: str, **fields: object) -> tuple[int, dict]:
    status, body = http(f"{idp_url}/test/response", json.dumps(fields).encode(), "application/json")
    return status, json.loads(body)


def form_fields(form: lxml.html.FormElement) -> dict[str, str]:
    return {field.name: field.value for field in form.inputs if field.get("type") == "hidden"}


# --- pysaml2's SP ------------------------------------------------------------------------------


def sp_client(metadata_file: str, signed: str) -> Saml2Client:
    """An SP wanting signed assertions ("assertions") or either signed ("either")."""
    config = SPConfig()
    config.load(
        {
            "entityid": SP_ENTITY_ID,
            "xmlsec_binary": XMLSEC1,
            "metadata": {"local": [metadata_file]},
            "allow_unknown_attributes": True,
            "service": {
                "sp": {
                    "endpoints": {"assertion_consumer_service": [(ACS, BINDING_HTTP_POST)]},
                    "allow_unsolicited": False,
                    "authn_requests_signed": False,
                    "want_response_signed": False,
                    "want_assertions_signed": signed == "assertions",
                    "want_assertions_or_response_signed": signed == "either",
                }
            },
        }
    )
    return Saml2Client(config)


def authn_request(client: Saml2Client, idp_entity_id: str) -> tuple[str, str]:
    """The request ID and the redirect URL carrying SAMLRequest and RelayState."""
    request_id, info = client.prepare_for_authenticate(
        entityid=idp_entity_id, relay_state=RELAY_STATE, binding=BINDING_HTTP_REDIRECT
    )
    return request_id, dict(info["headers"])["Location"]


def sp_verdict(client: Saml2Client, saml_response: str, request_id: str) -> dict | str:
    """The identity pysaml2 accepts from the response, or why it refuses it."""
    try:
        response = client.parse_authn_request_response(
            saml_response, BINDING_HTTP_POST, outstanding={request_id: "/"}
        )
    except Exception as err:  # any refusal will do
        return f"{type(err).__name__}: {err}"
    if response is None or response.name_id is None:
        return "refused (no identity)"
    identity = response.get_identity()
    attributes = {name: identity.get(name) for name in ("groups", "uid", "mail")}
    return {"name_id": response.name_id.text, **attributes}


# --- xmlsec1 -----------------------------------------------------------------------------------


def verifies(xml: bytes, key: list[str], node_id: str | None = None) -> bool:
    """Whether xmlsec1 verifies the first ds:Signature (inside the node_id element, if given)."""
    start = ["--node-id", node_id] if node_id else []
    command = [XMLSEC1, "--verify", *key, *ID_ATTRS, *start, "-"]
    return subprocess.run(command, input=xml, capture_output=True, check=False).returncode == 0


def signatures_verify(xml: bytes, key: list[str]) -> bool:
    root = etree.fromstring(xml)
    signatures = root.xpath("//ds:Signature", namespaces=NS)
    return bool(signatures) and all(verifies(xml, key, s.getparent().get("ID")) for s in signatures)


def embedded_certificate(xml: bytes, directory: Path) -> list[str]:
    der = base64.b64decode(etree.fromstring(xml).findtext(".//ds:X509Certificate", namespaces=NS))
    path = directory / "embedded-cert.der"
    path.write_bytes(der)
    return ["--pubkey-cert-der", str(path)]


def put_back(root: etree._Element) -> bytes:
    """The legitimate element of an XSW output, standalone, with the signature back in place."""
    (signature,) = root.xpath("//ds:Signature", namespaces=NS)
    signed_id = signature.find("ds:SignedInfo/ds:Reference", NS).get("URI")[1:]
    name_id = "saml:Subject/saml:NameID | saml:Assertion/saml:Subject/saml:NameID"
    (original,) = [
        element
        for element in root.xpath("//*[@ID = $id]", id=signed_id)
        if element.xpath(f"string({name_id})", namespaces=NS) == NOBODY_EMAIL
    ]
    original = copy.deepcopy(original)
    if original.find("ds:Signature", NS) is None:
        signature = copy.deepcopy(signature)
        for extra in signature[3:]:  # what the wrapping put after SignedInfo, SignatureValue, KeyInfo
            signature.remove(extra)
        original.find("saml:Issuer", NS).addnext(signature)
    return etree.tostring(original)


# --- Checks ------------------------------------------------------------------------------------


def check_identity(verdict: dict | str, expected: dict, what: str) -> None:
    check(isinstance(verdict, dict), f"{what}: pysaml2 refused it: {verdict}")
    actual = {key: verdict[key] for key in expected}
    check(actual == expected, f"{what}: pysaml2 read {actual}, expected {expected}")


def check_browser_flow(idp: dict, client: Saml2Client) -> None:
    request_id, location = authn_request(client, idp["entity_id"])
    check(location.startswith(idp["sso_url"] + "?"), f"redirect to {location}")
    status, page = http(location)
    check(status == 200 and "Sign in to the test IdP" in page, f"login page: {status} {page[:200]}")
    document = lxml.html.fromstring(page)
    for user in ("clinician", "reviewer", "nobody"):
        button = document.get_element_by_id(f"signin-{user}")
        user_field = form_fields(button.getparent()).get("user")
        check(button.text == f"Sign in as {user}", f"button signin-{user}: {button.text}")
        check(user_field == user, f"button signin-{user} posts user {user_field}")
    form = document.get_element_by_id("signin-clinician").getparent()
    check(form.get("action") == "/sso/login", f"login form action {form.get('action')}")
    status, page = http(f"{idp['url']}/sso/login", urlencode(form_fields(form)).encode())
    check(status == 200, f"/sso/login: {status} {page[:200]}")
    document = lxml.html.fromstring(page)
    check(document.body.get("onload") == "document.forms[0].submit()", "auto-submit onload")
    post = document.forms[0]
    check(post.get("action") == ACS, f"post form action {post.get('action')}")
    fields = form_fields(post)
    check(fields.get("RelayState") == RELAY_STATE, f"RelayState {fields.get('RelayState')!r}")
    verdict = sp_verdict(client, fields["SAMLResponse"], request_id)
    check_identity(verdict, CLINICIAN, "browser flow")
    print("ok  browser flow: /sso/redirect, /sso/login, pysaml2 accepts dr.house")


def check_bad_input(idp: dict) -> None:
    status, body = http(f"{idp['sso_url']}?SAMLRequest=bm90IGRlZmxhdGVk")
    check(status == 400 and "SAMLRequest" in body, f"garbage SAMLRequest: {status} {body}")
    for fields in (
        {"user": "mallory", "acs": ACS, "audience": SP_ENTITY_ID},
        {"variant": "nope", "acs": ACS, "audience": SP_ENTITY_ID},
        {"saml_request": None},
    ):
        status, body = order(idp["url"], **fields)
        check(status == 400 and "error" in body, f"/test/response {fields}: {status} {body}")
    print("ok  bad input: 400")


def xpath(xml: bytes, expression: str) -> object:
    return etree.fromstring(xml).xpath(expression, namespaces=NS)


def xpath_is(expression: str, expected: object) -> Callable[[bytes], bool]:
    return lambda xml: xpath(xml, expression) == expected


def shape_checks(now: str) -> dict[str, Callable[[bytes], bool]]:
    """Per variant, whether the change that defines it is there."""
    evil_name_id = "'dr.house@hospital.test.evil.example'"  # XPath string literals
    responder = "'urn:oasis:names:tc:SAML:2.0:status:Responder'"
    other_acs = "https://other.example/acs"
    return {
        "response-signed": xpath_is("count(//ds:Signature)", 2.0),
        "only-response-signed": xpath_is("count(//ds:Signature) = 1 and boolean(/*/ds:Signature)", True),
        "unsigned": xpath_is("count(//ds:Signature)", 0.0),
        "sha1": xpath_is("string(//ds:SignatureMethod/@Algorithm)", f"{NS['ds']}rsa-sha1"),
        "nameid-comment": xpath_is(f"//saml:NameID = {evil_name_id} and boolean(//saml:NameID/comment())", True),
        "audience": xpath_is("string(//saml:Audience)", "https://other.example/sp"),
        "no-audience": xpath_is("boolean(//saml:Conditions) and not(//saml:AudienceRestriction)", True),
        "recipient": xpath_is("string(//saml:SubjectConfirmationData/@Recipient)", other_acs),
        "destination": xpath_is("string(/samlp:Response/@Destination)", other_acs),
        "expired": lambda xml: xpath(xml, "string(//saml:Conditions/@NotOnOrAfter)") < now,
        "not-yet-valid": lambda xml: xpath(xml, "string(//saml:Conditions/@NotBefore)") > now,
        "wrong-in-response-to": xpath_is("count(//@InResponseTo)", 2.0),
        "idp-initiated": xpath_is("count(//@InResponseTo)", 0.0),
        "doctype": lambda xml: b"\n<!DOCTYPE samlp:Response [" in xml.split(b"<samlp:Response")[0],
        "empty-nameid": xpath_is("boolean(//saml:NameID) and string(//saml:NameID) = ''", True),
        "wrong-issuer": xpath_is("count(//saml:Issuer[. != 'https://evil.example/idp'])", 0.0),
        "status-failure": xpath_is(f"//samlp:StatusCode/@Value = {responder} and not(//saml:Assertion)", True),
        "two-assertions": xpath_is("count(/samlp:Response/saml:Assertion/ds:Signature)", 2.0),
    }


def check_signatures(variant: str, xml: bytes, key: list[str], directory: Path) -> None:
    if variant in VERIFYING:
        check(signatures_verify(xml, key), f"{variant}: a signature does not verify")
    if variant == "wrong-key":
        check(not verifies(xml, key), "wrong-key verifies with the IdP's certificate")
        own = embedded_certificate(xml, directory)
        check(verifies(xml, own), "wrong-key: not signed by the certificate in its KeyInfo")
    if variant.startswith("xsw"):
        name_ids = sorted(xpath(xml, "//saml:NameID/text()"))
        check(name_ids == sorted([CLINICIAN["name_id"], NOBODY_EMAIL]), f"{variant}: NameIDs {name_ids}")
        check(xpath(xml, "count(//ds:Signature)") == 1.0, f"{variant}: not exactly one ds:Signature")
        legitimate = put_back(etree.fromstring(xml))
        check(verifies(legitimate, key), f"{variant}: the signature does not verify over the original")


def sp_notes(variant: str, clients: dict[str, Saml2Client], saml_response: str, request_id: str) -> list[str]:
    """Checks that the SPs accept what they must; notes what they accept though they should not."""
    notes = []
    for signed, client in clients.items():
        verdict = sp_verdict(client, saml_response, request_id)
        if ACCEPTED.get(variant) == signed:
            check_identity(verdict, CLINICIAN, f"{variant} (SP wanting {signed} signed)")
        elif variant not in ACCEPTED and isinstance(verdict, dict):
            if variant not in HARMLESS or verdict["name_id"] != HARMLESS[variant]:
                notes.append(f"NOTE: pysaml2 wanting {signed} signed accepted {variant}, reading {verdict}")
    return notes


def check_variants(idp: dict, clients: dict[str, Saml2Client], directory: Path) -> list[str]:
    key = ["--pubkey-cert-pem", str(directory / "idp-cert.pem")]
    shapes = shape_checks(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    notes = []
    for variant in VARIANTS:
        request_id, location = authn_request(clients["assertions"], idp["entity_id"])
        saml_request = parse_qs(urlsplit(location).query)["SAMLRequest"][0]
        status, answer = order(idp["url"], saml_request=saml_request, relay_state="rs", variant=variant)
        check(status == 200, f"{variant}: /test/response {status} {answer}")
        check((answer["acs"], answer["RelayState"]) == (ACS, "rs"), f"{variant}: {answer}")
        xml = base64.b64decode(answer["SAMLResponse"])
        check(shapes.get(variant, lambda _: True)(xml), f"{variant}: not the expected shape")
        check_signatures(variant, xml, key, directory)
        notes += sp_notes(variant, clients, answer["SAMLResponse"], request_id)
        print(f"ok  {variant}")
    return notes


def check_unsolicited(idp: dict, client: Saml2Client) -> list[str]:
    fields = {"acs": ACS, "audience": SP_ENTITY_ID, "variant": "idp-initiated", "user": "reviewer"}
    status, answer = order(idp["url"], saml_request=None, **fields)
    check(status == 200 and answer["RelayState"] is None, f"unsolicited: {status} {answer}")
    xml = base64.b64decode(answer["SAMLResponse"])
    check(xpath(xml, "string(//saml:NameID)") == "privacy.officer@hospital.test", "unsolicited: NameID")
    check(not xpath(xml, "//@InResponseTo"), "unsolicited: InResponseTo")
    verdict = sp_verdict(client, answer["SAMLResponse"], "_unrelated")
    print("ok  unsolicited (saml_request null)")
    if isinstance(verdict, dict):
        return [f"NOTE: pysaml2 accepted an unsolicited response: {verdict}"]
    return []


def main() -> None:
    logging.getLogger("saml2").setLevel(logging.CRITICAL + 1)  # its refusals are expected here
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        log = directory / "idp.log"
        process, idp = start_idp(directory, log)
        try:
            clients = {signed: sp_client(idp["metadata_file"], signed) for signed in ("assertions", "either")}
            check_browser_flow(idp, clients["assertions"])
            check_bad_input(idp)
            notes = check_variants(idp, clients, directory)
            notes += check_unsolicited(idp, clients["assertions"])
        except CheckFailed:
            sys.stderr.write(f"--- the IdP's log:\n{log.read_text()}---\n")
            raise
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=10)
        check(code == 0, f"the IdP exited with {code} on SIGTERM")
    print("\n".join(notes))
    print(f"selftest passed ({len(VARIANTS)} variants)")


if __name__ == "__main__":
    try:
        main()
    except CheckFailed as failure:
        sys.exit(f"FAILED: {failure}")
