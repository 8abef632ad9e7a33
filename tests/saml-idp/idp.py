#!/usr/bin/env python3
"""Test SAML 2.0 identity provider for phigate's integration tests.

Usage:

    python tests/saml-idp/idp.py --port PORT --dir DIR [--entity-id URL]

Listens on 127.0.0.1:PORT (0 picks a free port) over plain http. The entity id
defaults to http://127.0.0.1:PORT/idp. At start it generates, into DIR (created
if missing):

    idp-key.pem, idp-cert.pem      RSA-2048 signing key, self-signed certificate
    wrong-key.pem, wrong-cert.pem  a second pair, not in the metadata
    idp-metadata.xml               EntityDescriptor with an IDPSSODescriptor: the
                                   signing certificate, NameIDFormat emailAddress,
                                   SingleSignOnService (HTTP-Redirect) at /sso/redirect

then prints exactly one JSON line to stdout and flushes it:

    {"url":"http://127.0.0.1:PORT","entity_id":...,"metadata_file":"DIR/idp-metadata.xml","sso_url":"http://127.0.0.1:PORT/sso/redirect"}

(metadata_file is absolute) and serves until SIGTERM or SIGINT, then exits 0.
Logs go to stderr. Signing uses Debian's xmlsec1 (found on PATH).

No service provider is registered up front: each AuthnRequest describes its
SP. The response goes to the request's AssertionConsumerServiceURL (HTTP-POST),
with Audience = the request's Issuer, Destination and Recipient = the ACS URL
and InResponseTo = the request's ID. NameIDPolicy, ForceAuthn and the like are
ignored; the NameID is always the user's e-mail address.

Users (NameID format emailAddress; attributes groups, uid, mail with NameFormat
basic, each value an xs:string AttributeValue):

    clinician  dr.house@hospital.test         groups clinicians, staff  uid dhouse
    reviewer   privacy.officer@hospital.test  groups reviewers          uid pofficer
    nobody     nobody@hospital.test           groups visitors           uid nobody

Endpoints:

    GET  /sso/redirect?SAMLRequest=...&RelayState=...
        The HTTP-Redirect binding: SAMLRequest is base64 of the raw-DEFLATEd
        AuthnRequest (unsigned). Answers the page "Sign in to the test IdP": one
        form per user, posting SAMLRequest, RelayState and user to /sso/login,
        with a button "Sign in as USER" (id "signin-USER"). 400 with a text
        message if the request cannot be inflated or parsed.
    POST /sso/login  (form: SAMLRequest, RelayState, user)
        Answers an auto-submitting HTML form that posts SAMLResponse (base64 of
        the "good" response) and RelayState to the ACS URL (button id "continue"
        for browsers without JavaScript).
    POST /test/response  (JSON)
        {"saml_request": base64 deflated AuthnRequest | null,
         "relay_state": str | null, "user": "clinician", "variant": "good",
         "acs": URL, "audience": SP entity id}
        user and variant default to those shown; saml_request is the SAMLRequest
        query value, URL-decoded. acs and audience are required when
        saml_request is null (the response is then unsolicited: no
        InResponseTo); given with a saml_request they override the request's.
        Answers {"SAMLResponse": base64, "RelayState": str | null, "acs": URL};
        400 with {"error": ...} for an unknown user or variant or a bad request.
    GET  /healthz
        200 "ok".

Responses: IDs are "_" and 128 random bits in hex. IssueInstant = now;
Conditions NotBefore = now - 60 s, NotOnOrAfter = now + 300 s, with an
AudienceRestriction; a bearer SubjectConfirmation (NotOnOrAfter now + 300 s,
Recipient, InResponseTo); an AuthnStatement (PasswordProtectedTransport).
Signatures are enveloped, placed right after the signed element's Issuer:
exclusive c14n, transforms enveloped-signature then exclusive c14n, Reference
URI "#ID", rsa-sha256 over sha256 digests, KeyInfo with the X509 certificate.

Variants (the response claims the requested user unless said otherwise). A
correct SP accepts good, response-signed and only-response-signed, and refuses
every other one, except that it may accept nameid-comment as long as it reads the
whole signed USER-EMAIL.evil.example, never USER-EMAIL:

    good                  assertion signed, response unsigned
    response-signed       assertion signed, then the response signed too
    only-response-signed  response signed, assertion unsigned (valid)
    unsigned              no signature at all
    wrong-key             assertion signed with the wrong key; its KeyInfo has the wrong certificate
    sha1                  assertion signed with rsa-sha1 over sha1 digests
    xsw1..xsw8            XML Signature Wrapping, the eight variants of Somorovsky et al., "On
                          Breaking SAML: Be Whoever You Want to Be" (USENIX Security 2012). The
                          original, legitimately signed element claims nobody (xsw1-2: a Response
                          signed alone, its assertion unsigned; xsw3-8: an Assertion signed as in
                          good); the evil element, with no signature of its own, claims the
                          requested user; nothing is signed after the wrapping. xmlsec1 verifies
                          xsw2-5 as they are; in xsw1 and xsw6 the enveloped-signature transform
                          removes the whole original (it lies inside the ds:Signature), and xsw7-8
                          repeat the original's ID.
      xsw1                evil Response (new ID): Issuer, the ds:Signature, which holds as its last
                          child the original Response without its signature, Status, evil Assertion
      xsw2                evil Response (new ID): Issuer, the original Response without its
                          signature, the ds:Signature (now detached), Status, evil Assertion
      xsw3                evil Assertion (new ID) inserted before the original signed Assertion
      xsw4                evil Assertion (new ID) in the original's place, with the original signed
                          Assertion as its last child
      xsw5                evil Assertion (new ID) holding the original's ds:Signature, followed by
                          the original Assertion without its signature as the Response's last child
      xsw6                evil Assertion (new ID) holding the original's ds:Signature, which holds
                          the original Assertion without its signature as its last child
      xsw7                samlp:Extensions (after the Response's Issuer) holding the evil Assertion
                          with the original's ID; the original signed Assertion stays in place
      xsw8                evil Assertion with the original's ID in the original's place, holding
                          the original's ds:Signature, whose last child is a ds:Object holding the
                          original Assertion without its signature
    nameid-comment        CVE-2017-11427: signed for NameID (and mail) USER-EMAIL.evil.example,
                          then a comment is inserted: USER-EMAIL<!---->.evil.example
    audience              AudienceRestriction names https://other.example/sp
    no-audience           Conditions without an AudienceRestriction
    recipient             SubjectConfirmationData Recipient https://other.example/acs
    destination           Response Destination https://other.example/acs
    expired               issued now - 900 s, NotBefore now - 900 s, NotOnOrAfter (both) now - 600 s
    not-yet-valid         Conditions NotBefore now + 600 s, NotOnOrAfter now + 900 s
    wrong-in-response-to  InResponseTo (response and confirmation) a fresh random ID
    idp-initiated         no InResponseTo anywhere (unsolicited)
    doctype               the good response with <!DOCTYPE samlp:Response [<!ENTITY x "dr.house">]>
    empty-nameid          signed assertion with an empty NameID
    wrong-issuer          both Issuers https://evil.example/idp, signed with the right key
    status-failure        StatusCode Responder, no assertion
    two-assertions        two separately signed assertions: the requested user's, then nobody's
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
import secrets
import shutil
import signal
import subprocess
import sys
import traceback
import zlib
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, NamedTuple
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"
ASSERTION = "urn:oasis:names:tc:SAML:2.0:assertion"
METADATA = "urn:oasis:names:tc:SAML:2.0:metadata"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
XS = "http://www.w3.org/2001/XMLSchema"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

EMAIL_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
BASIC_NAME_FORMAT = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
PASSWORD_PROTECTED_TRANSPORT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
RESPONDER = "urn:oasis:names:tc:SAML:2.0:status:Responder"
REDIRECT_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"

OTHER_SP = "https://other.example/sp"
OTHER_ACS = "https://other.example/acs"
EVIL_ISSUER = "https://evil.example/idp"
EVIL_SUFFIX = ".evil.example"
EVIL_DOCTYPE = '<!DOCTYPE samlp:Response [<!ENTITY x "dr.house">]>'

# Parses untrusted XML: no DTD loading, no entity expansion, no network.
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


class Algorithms(NamedTuple):
    signature: str
    digest: str


SHA256 = Algorithms(
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256", "http://www.w3.org/2001/04/xmlenc#sha256"
)
SHA1 = Algorithms("http://www.w3.org/2000/09/xmldsig#rsa-sha1", "http://www.w3.org/2000/09/xmldsig#sha1")


@dataclass(frozen=True)
class User:
    email: str
    uid: str
    groups: tuple[str, ...]


USERS = {
    "clinician": User("dr.house@hospital.test", "dhouse", ("clinicians", "staff")),
    "reviewer": User("privacy.officer@hospital.test", "pofficer", ("reviewers",)),
    "nobody": User("nobody@hospital.test", "nobody", ("visitors",)),
}
NOBODY = USERS["nobody"]


class BadRequest(Exception):
    """A request this IdP refuses; the message is shown to the client."""


def new_id() -> str:
    return "_" + secrets.token_hex(16)


def timestamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def saml(name: str) -> str:
    return f"{{{ASSERTION}}}{name}"


def samlp(name: str) -> str:
    return f"{{{PROTOCOL}}}{name}"


def ds(name: str) -> str:
    return f"{{{DSIG}}}{name}"


def md(name: str) -> str:
    return f"{{{METADATA}}}{name}"


def child(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrib)
    element.text = text
    return element


def serialize(root: etree._Element, doctype: str | None = None) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", doctype=doctype)


# --- Keys and metadata ------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    key_file: Path
    cert_file: Path
    cert_base64: str  # DER, as in ds:X509Certificate


def generate_key_pair(directory: Path, name: str, common_name: str) -> KeyPair:
    """Writes NAME-key.pem and NAME-cert.pem (RSA-2048, self-signed, valid for a year)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_file = directory / f"{name}-key.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_file = directory / f"{name}-cert.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der = cert.public_bytes(serialization.Encoding.DER)
    return KeyPair(key_file, cert_file, base64.b64encode(der).decode("ascii"))


def metadata(entity_id: str, sso_url: str, key_pair: KeyPair) -> bytes:
    nsmap = {"md": METADATA, "ds": DSIG}
    root = etree.Element(md("EntityDescriptor"), {"entityID": entity_id}, nsmap=nsmap)
    idp = child(
        root,
        md("IDPSSODescriptor"),
        WantAuthnRequestsSigned="false",
        protocolSupportEnumeration=PROTOCOL,
    )
    key_info = child(child(idp, md("KeyDescriptor"), use="signing"), ds("KeyInfo"))
    child(child(key_info, ds("X509Data")), ds("X509Certificate"), key_pair.cert_base64)
    child(idp, md("NameIDFormat"), EMAIL_FORMAT)
    child(idp, md("SingleSignOnService"), Binding=REDIRECT_BINDING, Location=sso_url)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# --- AuthnRequests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpRequest:
    """What a response answers: the request's ID (None: unsolicited), the SP and its ACS URL."""

    id: str | None
    audience: str | None
    acs: str | None


def decode_authn_request(saml_request: str) -> SpRequest:
    """Reads an AuthnRequest as sent with the HTTP-Redirect binding."""
    try:
        xml = zlib.decompress(base64.b64decode(saml_request), wbits=-15)
    except (ValueError, zlib.error) as err:
        raise BadRequest(f"SAMLRequest is not base64 of raw DEFLATE data: {err}") from err
    try:
        root = etree.fromstring(xml, PARSER)
    except etree.XMLSyntaxError as err:
        raise BadRequest(f"SAMLRequest is not well-formed XML: {err}") from err
    if root.tag != samlp("AuthnRequest"):
        raise BadRequest(f"SAMLRequest is {root.tag}, not a samlp:AuthnRequest")
    found = {
        "ID": root.get("ID"),
        "Issuer": (root.findtext(saml("Issuer")) or "").strip(),
        "AssertionConsumerServiceURL": root.get("AssertionConsumerServiceURL"),
    }
    missing = [name for name, value in found.items() if not value]
    if missing:
        raise BadRequest(f"the AuthnRequest has no {', '.join(missing)}")
    return SpRequest(found["ID"], found["Issuer"], found["AssertionConsumerServiceURL"])


# --- Responses --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """Everything a response and its assertion say; the variants change parts of it."""

    issuer: str
    user: User
    name_id: str
    audience: str | None  # None: no AudienceRestriction
    destination: str
    recipient: str
    in_response_to: str | None
    issue_instant: datetime.datetime
    not_before: datetime.datetime
    not_on_or_after: datetime.datetime
    subject_not_on_or_after: datetime.datetime
    response_id: str = field(default_factory=new_id)
    assertion_id: str = field(default_factory=new_id)


def base_spec(issuer: str, user: User, request: SpRequest) -> Spec:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return Spec(
        issuer=issuer,
        user=user,
        name_id=user.email,
        audience=request.audience,
        destination=request.acs,
        recipient=request.acs,
        in_response_to=request.id,
        issue_instant=now,
        not_before=now - datetime.timedelta(seconds=60),
        not_on_or_after=now + datetime.timedelta(seconds=300),
        subject_not_on_or_after=now + datetime.timedelta(seconds=300),
    )


def for_user(spec: Spec, user: User) -> Spec:
    """The same response for another user, with fresh IDs."""
    return replace(spec, user=user, name_id=user.email, response_id=new_id(), assertion_id=new_id())


def build_assertion(spec: Spec) -> etree._Element:
    assertion = etree.Element(
        saml("Assertion"),
        {"ID": spec.assertion_id, "Version": "2.0", "IssueInstant": timestamp(spec.issue_instant)},
        nsmap={"saml": ASSERTION},
    )
    child(assertion, saml("Issuer"), spec.issuer)
    add_subject(assertion, spec)
    add_conditions(assertion, spec)
    authn = child(
        assertion,
        saml("AuthnStatement"),
        AuthnInstant=timestamp(spec.issue_instant),
        SessionIndex=new_id(),
    )
    context = child(authn, saml("AuthnContext"))
    child(context, saml("AuthnContextClassRef"), PASSWORD_PROTECTED_TRANSPORT)
    add_attributes(assertion, spec.user)
    return assertion


def add_subject(assertion: etree._Element, spec: Spec) -> None:
    subject = child(assertion, saml("Subject"))
    child(subject, saml("NameID"), spec.name_id, Format=EMAIL_FORMAT)
    confirmation = child(subject, saml("SubjectConfirmation"), Method=BEARER)
    data = child(
        confirmation,
        saml("SubjectConfirmationData"),
        NotOnOrAfter=timestamp(spec.subject_not_on_or_after),
        Recipient=spec.recipient,
    )
    if spec.in_response_to:
        data.set("InResponseTo", spec.in_response_to)


def add_conditions(assertion: etree._Element, spec: Spec) -> None:
    conditions = child(
        assertion,
        saml("Conditions"),
        NotBefore=timestamp(spec.not_before),
        NotOnOrAfter=timestamp(spec.not_on_or_after),
    )
    if spec.audience:
        child(child(conditions, saml("AudienceRestriction")), saml("Audience"), spec.audience)


def add_attributes(assertion: etree._Element, user: User) -> None:
    statement = child(assertion, saml("AttributeStatement"))
    for name, values in {"groups": user.groups, "uid": (user.uid,), "mail": (user.email,)}.items():
        attribute = child(statement, saml("Attribute"), Name=name, NameFormat=BASIC_NAME_FORMAT)
        for value in values:
            # As Okta does. xs is used only inside an attribute value, so exclusive c14n drops
            # its declaration; verifiers must not add it back.
            string = etree.SubElement(attribute, saml("AttributeValue"), nsmap={"xs": XS, "xsi": XSI})
            string.set(f"{{{XSI}}}type", "xs:string")
            string.text = value


def build_response(
    spec: Spec, assertions: list[etree._Element], status: str = SUCCESS
) -> etree._Element:
    response = etree.Element(
        samlp("Response"),
        {
            "ID": spec.response_id,
            "Version": "2.0",
            "IssueInstant": timestamp(spec.issue_instant),
            "Destination": spec.destination,
        },
        nsmap={"samlp": PROTOCOL, "saml": ASSERTION},
    )
    if spec.in_response_to:
        response.set("InResponseTo", spec.in_response_to)
    child(response, saml("Issuer"), spec.issuer)
    child(child(response, samlp("Status")), samlp("StatusCode"), Value=status)
    response.extend(assertions)
    return response


def signature_template(element_id: str, algorithms: Algorithms) -> etree._Element:
    """An enveloped ds:Signature for xmlsec1 to fill in."""
    signature = etree.Element(ds("Signature"), nsmap={"ds": DSIG})
    signed_info = child(signature, ds("SignedInfo"))
    child(signed_info, ds("CanonicalizationMethod"), Algorithm=EXC_C14N)
    child(signed_info, ds("SignatureMethod"), Algorithm=algorithms.signature)
    reference = child(signed_info, ds("Reference"), URI=f"#{element_id}")
    transforms = child(reference, ds("Transforms"))
    child(transforms, ds("Transform"), Algorithm=ENVELOPED)
    child(transforms, ds("Transform"), Algorithm=EXC_C14N)
    child(reference, ds("DigestMethod"), Algorithm=algorithms.digest)
    child(reference, ds("DigestValue"))
    child(signature, ds("SignatureValue"))
    child(child(signature, ds("KeyInfo")), ds("X509Data"))
    return signature


def find_by_id(root: etree._Element, element_id: str) -> etree._Element:
    return root.xpath("descendant-or-self::*[@ID = $id]", id=element_id)[0]


def move_signature(source: etree._Element, target: etree._Element) -> etree._Element:
    """Moves source's ds:Signature into target, right after target's Issuer."""
    signature = source.find(ds("Signature"))
    target.find(saml("Issuer")).addnext(signature)
    return signature


class IdentityProvider:
    """Builds and signs responses as this IdP."""

    def __init__(self, entity_id: str, key: KeyPair, wrong_key: KeyPair, xmlsec1: str):
        self.entity_id = entity_id
        self.key = key
        self.wrong_key = wrong_key
        self.xmlsec1 = xmlsec1

    def sign(
        self,
        root: etree._Element,
        element_id: str,
        key: KeyPair | None = None,
        algorithms: Algorithms = SHA256,
    ) -> etree._Element:
        """Signs the element with ID element_id inside root; returns the signed document's root."""
        key = key or self.key
        template = signature_template(element_id, algorithms)
        find_by_id(root, element_id).find(saml("Issuer")).addnext(template)
        command = [
            self.xmlsec1,
            "--sign",
            "--privkey-pem",
            f"{key.key_file},{key.cert_file}",
            "--id-attr:ID",
            f"{ASSERTION}:Assertion",
            "--id-attr:ID",
            f"{PROTOCOL}:Response",
            # The start node; xmlsec1 fills in the first ds:Signature inside it.
            "--node-id",
            element_id,
            "-",
        ]
        result = subprocess.run(command, input=serialize(root), capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"xmlsec1 --sign failed: {result.stderr.decode(errors='replace')}")
        return etree.fromstring(result.stdout, PARSER)

    def response_tree(
        self,
        spec: Spec,
        sign_assertion: bool = True,
        sign_response: bool = False,
        key: KeyPair | None = None,
        algorithms: Algorithms = SHA256,
    ) -> etree._Element:
        """A response with one assertion; the assertion is signed before the response."""
        root = build_response(spec, [build_assertion(spec)])
        if sign_assertion:
            root = self.sign(root, spec.assertion_id, key, algorithms)
        if sign_response:
            root = self.sign(root, spec.response_id, key, algorithms)
        return root

    def respond(self, spec: Spec, **signing: object) -> bytes:
        return serialize(self.response_tree(spec, **signing))

    def build(self, variant: str, user: User, request: SpRequest) -> bytes:
        return VARIANTS[variant](self, base_spec(self.entity_id, user, request))


# --- Variants ---------------------------------------------------------------------------------


def shifted(spec: Spec, **offsets: int) -> Spec:
    """spec with the named times set to its issue instant plus the given seconds."""
    now = spec.issue_instant
    return replace(spec, **{name: now + datetime.timedelta(seconds=s) for name, s in offsets.items()})


# How XSW1/2 place the original Response, and XSW3-8 the original and evil Assertions; the
# module docstring describes each.
PlaceOriginal = Callable[[etree._Element, etree._Element], None]
Wrap = Callable[[etree._Element, etree._Element, etree._Element], None]


def xsw_response(idp: IdentityProvider, spec: Spec, place_original: PlaceOriginal) -> bytes:
    """XSW1/2: the original Response is signed (only it) for nobody; the evil one is unsigned."""
    original = idp.response_tree(for_user(spec, NOBODY), sign_assertion=False, sign_response=True)
    evil = idp.response_tree(spec, sign_assertion=False)
    signature = move_signature(original, evil)
    place_original(signature, original)
    return serialize(evil)


def xsw_assertion(idp: IdentityProvider, spec: Spec, wrap: Wrap) -> bytes:
    """XSW3-8: the original Assertion is signed for nobody; the evil one is built unsigned."""
    response = idp.response_tree(for_user(spec, NOBODY))
    original = response.find(saml("Assertion"))
    evil = build_assertion(spec)
    wrap(response, original, evil)
    return serialize(response)


def xsw1(signature: etree._Element, original: etree._Element) -> None:
    signature.append(original)


def xsw2(signature: etree._Element, original: etree._Element) -> None:
    signature.addprevious(original)


def xsw3(response: etree._Element, original: etree._Element, evil: etree._Element) -> None:
    original.addprevious(evil)


def xsw4(response: etree._Element, original: etree._Element, evil: etree._Element) -> None:
    original.addprevious(evil)
    evil.append(original)


def xsw5(response: etree._Element, original: etree._Element, evil: etree._Element) -> None:
    original.addprevious(evil)  # the original, now last, loses its signature to the evil one
    move_signature(original, evil)


def xsw6(response: etree._Element, original: etree._Element, evil: etree._Element) -> None:
    original.addprevious(evil)
    move_signature(original, evil).append(original)


def xsw7(response: etree._Element, original: etree._Element, evil: etree._Element) -> None:
    evil.set("ID", original.get("ID"))
    extensions = etree.Element(samlp("Extensions"))
    extensions.append(evil)
    response.find(saml("Issuer")).addnext(extensions)


def xsw8(response: etree._Element, original: etree._Element, evil: etree._Element) -> None:
    evil.set("ID", original.get("ID"))
    original.addprevious(evil)
    child(move_signature(original, evil), ds("Object")).append(original)


def nameid_comment(idp: IdentityProvider, spec: Spec) -> bytes:
    """Signs for USER-EMAIL.evil.example, then splits the NameID text with an empty comment."""
    attacker = replace(spec.user, email=spec.user.email + EVIL_SUFFIX)
    root = idp.response_tree(replace(spec, user=attacker, name_id=attacker.email))
    name_id = root.find(f"{saml('Assertion')}/{saml('Subject')}/{saml('NameID')}")
    name_id.text = spec.user.email
    comment = etree.Comment("")
    comment.tail = EVIL_SUFFIX
    name_id.append(comment)
    return serialize(root)


def two_assertions(idp: IdentityProvider, spec: Spec) -> bytes:
    other = for_user(spec, NOBODY)
    root = build_response(spec, [build_assertion(spec), build_assertion(other)])
    root = idp.sign(root, spec.assertion_id)
    return serialize(idp.sign(root, other.assertion_id))


Variant = Callable[[IdentityProvider, Spec], bytes]

VARIANTS: dict[str, Variant] = {
    "good": lambda idp, spec: idp.respond(spec),
    "response-signed": lambda idp, spec: idp.respond(spec, sign_response=True),
    "only-response-signed": lambda idp, spec: idp.respond(
        spec, sign_assertion=False, sign_response=True
    ),
    "unsigned": lambda idp, spec: idp.respond(spec, sign_assertion=False),
    "wrong-key": lambda idp, spec: idp.respond(spec, key=idp.wrong_key),
    "sha1": lambda idp, spec: idp.respond(spec, algorithms=SHA1),
    "xsw1": lambda idp, spec: xsw_response(idp, spec, xsw1),
    "xsw2": lambda idp, spec: xsw_response(idp, spec, xsw2),
    "xsw3": lambda idp, spec: xsw_assertion(idp, spec, xsw3),
    "xsw4": lambda idp, spec: xsw_assertion(idp, spec, xsw4),
    "xsw5": lambda idp, spec: xsw_assertion(idp, spec, xsw5),
    "xsw6": lambda idp, spec: xsw_assertion(idp, spec, xsw6),
    "xsw7": lambda idp, spec: xsw_assertion(idp, spec, xsw7),
    "xsw8": lambda idp, spec: xsw_assertion(idp, spec, xsw8),
    "nameid-comment": nameid_comment,
    "audience": lambda idp, spec: idp.respond(replace(spec, audience=OTHER_SP)),
    "no-audience": lambda idp, spec: idp.respond(replace(spec, audience=None)),
    "recipient": lambda idp, spec: idp.respond(replace(spec, recipient=OTHER_ACS)),
    "destination": lambda idp, spec: idp.respond(replace(spec, destination=OTHER_ACS)),
    "expired": lambda idp, spec: idp.respond(
        shifted(
            spec, issue_instant=-900, not_before=-900, not_on_or_after=-600, subject_not_on_or_after=-600
        )
    ),
    "not-yet-valid": lambda idp, spec: idp.respond(shifted(spec, not_before=600, not_on_or_after=900)),
    "wrong-in-response-to": lambda idp, spec: idp.respond(replace(spec, in_response_to=new_id())),
    "idp-initiated": lambda idp, spec: idp.respond(replace(spec, in_response_to=None)),
    "doctype": lambda idp, spec: serialize(idp.response_tree(spec), doctype=EVIL_DOCTYPE),
    "empty-nameid": lambda idp, spec: idp.respond(replace(spec, name_id="")),
    "wrong-issuer": lambda idp, spec: idp.respond(replace(spec, issuer=EVIL_ISSUER)),
    "status-failure": lambda idp, spec: serialize(build_response(spec, [], status=RESPONDER)),
    "two-assertions": two_assertions,
}


# --- HTML -------------------------------------------------------------------------------------


def hidden(name: str, value: str | None) -> str:
    if value is None:
        return ""
    return f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'


def page(title: str, body: str, onload: str = "") -> bytes:
    onload_attribute = f' onload="{html.escape(onload)}"' if onload else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
        f"<body{onload_attribute}>\n{body}\n</body></html>\n"
    ).encode("utf-8")


def login_page(request: SpRequest, saml_request: str, relay_state: str | None) -> bytes:
    forms = "\n".join(
        '<form method="post" action="/sso/login">'
        f"{hidden('SAMLRequest', saml_request)}{hidden('RelayState', relay_state)}{hidden('user', name)}"
        f'<button type="submit" id="signin-{html.escape(name)}">Sign in as {html.escape(name)}</button>'
        "</form>"
        for name in USERS
    )
    body = f"<h1>Sign in to the test IdP</h1>\n<p>For {html.escape(request.audience)}</p>\n{forms}"
    return page("Sign in to the test IdP", body)


def post_page(acs: str, saml_response: str, relay_state: str | None) -> bytes:
    body = (
        f'<form method="post" action="{html.escape(acs)}">'
        f"{hidden('SAMLResponse', saml_response)}{hidden('RelayState', relay_state)}"
        '<button type="submit" id="continue">Continue</button></form>'
    )
    return page("Signing in", body, onload="document.forms[0].submit()")


# --- HTTP -------------------------------------------------------------------------------------


class Reply(NamedTuple):
    status: HTTPStatus
    content_type: str
    body: bytes


def text(status: HTTPStatus, message: str) -> Reply:
    return Reply(status, "text/plain; charset=utf-8", f"{message}\n".encode("utf-8"))


def html_reply(body: bytes) -> Reply:
    return Reply(HTTPStatus.OK, "text/html; charset=utf-8", body)


def json_reply(status: HTTPStatus, value: object) -> Reply:
    return Reply(status, "application/json", json.dumps(value).encode("utf-8"))


def first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def authn_request_in(params: dict[str, list[str]]) -> tuple[str, SpRequest]:
    """The SAMLRequest parameter as sent, and what it asks for."""
    saml_request = first(params, "SAMLRequest")
    if not saml_request:
        raise BadRequest("missing SAMLRequest")
    return saml_request, decode_authn_request(saml_request)


def user_named(name: str | None) -> User:
    if name not in USERS:
        raise BadRequest(f"unknown user {name!r}; known: {', '.join(USERS)}")
    return USERS[name]


def string_field(order: dict, name: str) -> str | None:
    value = order.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string or null")
    return value


def answer_order(idp: IdentityProvider, order: dict) -> dict:
    """Answers a POST /test/response order (see the module docstring)."""
    user = user_named(string_field(order, "user") or "clinician")
    variant = string_field(order, "variant") or "good"
    if variant not in VARIANTS:
        raise BadRequest(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    saml_request = string_field(order, "saml_request")
    request = decode_authn_request(saml_request) if saml_request else SpRequest(None, None, None)
    request = replace(
        request,
        acs=string_field(order, "acs") or request.acs,
        audience=string_field(order, "audience") or request.audience,
    )
    if not (request.acs and request.audience):
        raise BadRequest("acs and audience are required without a saml_request")
    return {
        "SAMLResponse": base64.b64encode(idp.build(variant, user, request)).decode("ascii"),
        "RelayState": string_field(order, "relay_state"),
        "acs": request.acs,
    }


class Handler(BaseHTTPRequestHandler):
    server: IdpServer

    def do_GET(self) -> None:
        self.dispatch({"/healthz": self.healthz, "/sso/redirect": self.sso_redirect})

    def do_POST(self) -> None:
        self.dispatch({"/sso/login": self.sso_login, "/test/response": self.test_response})

    def dispatch(self, routes: dict[str, Callable[[str], Reply]]) -> None:
        url = urlsplit(self.path)
        route = routes.get(url.path)
        try:
            reply = route(url.query) if route else text(HTTPStatus.NOT_FOUND, "not found")
        except BadRequest as err:
            reply = text(HTTPStatus.BAD_REQUEST, str(err))
        except Exception:  # a bug here: report it, keep serving
            traceback.print_exc()
            reply = text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the IdP's log)")
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(reply.body)

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def healthz(self, _query: str) -> Reply:
        return text(HTTPStatus.OK, "ok")

    def sso_redirect(self, query: str) -> Reply:
        params = parse_qs(query)
        saml_request, request = authn_request_in(params)
        return html_reply(login_page(request, saml_request, first(params, "RelayState")))

    def sso_login(self, _query: str) -> Reply:
        form = parse_qs(self.read_body().decode("utf-8", errors="replace"))
        user = user_named(first(form, "user"))
        _, request = authn_request_in(form)
        xml = self.server.idp.build("good", user, request)
        saml_response = base64.b64encode(xml).decode("ascii")
        return html_reply(post_page(request.acs, saml_response, first(form, "RelayState")))

    def test_response(self, _query: str) -> Reply:
        try:
            order = json.loads(self.read_body())
            if not isinstance(order, dict):
                raise BadRequest("the body must be a JSON object")
            return json_reply(HTTPStatus.OK, answer_order(self.server.idp, order))
        except (BadRequest, ValueError) as err:
            return json_reply(HTTPStatus.BAD_REQUEST, {"error": str(err)})


class IdpServer(ThreadingHTTPServer):
    daemon_threads = True
    idp: IdentityProvider


# --- Main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test SAML 2.0 identity provider (see its docstring).")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--dir", type=Path, required=True, help="where keys and metadata are written")
    parser.add_argument("--entity-id", help="default: http://127.0.0.1:PORT/idp")
    return parser.parse_args()


def stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    args = parse_args()
    xmlsec1 = shutil.which("xmlsec1")
    if xmlsec1 is None:
        sys.exit("xmlsec1 not found on PATH (Debian: apt-get install xmlsec1)")
    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    server = IdpServer(("127.0.0.1", args.port), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    entity_id = args.entity_id or f"{url}/idp"
    sso_url = f"{url}/sso/redirect"
    key = generate_key_pair(directory, "idp", "phigate test SAML IdP")
    wrong_key = generate_key_pair(directory, "wrong", "phigate test SAML IdP (wrong key)")
    server.idp = IdentityProvider(entity_id, key, wrong_key, xmlsec1)
    metadata_file = directory / "idp-metadata.xml"
    metadata_file.write_bytes(metadata(entity_id, sso_url, key))
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ready = {"url": url, "entity_id": entity_id, "metadata_file": str(metadata_file), "sso_url": sso_url}
    print(json.dumps(ready, separators=(",", ":")), flush=True)
    print(f"test SAML IdP {entity_id} listening on {url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
