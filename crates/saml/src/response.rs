//! Reading a `samlp:Response` from the HTTP-POST binding, as the Web Browser SSO profile
//! (SAML profiles §4.1.4.3) and its known attacks demand.
//!
//! The shape is fixed before anything is verified: the response is the document's root; it
//! holds exactly one `saml:Assertion`, as its direct child, and no other assertion anywhere;
//! every `ds:Signature` in the document is the direct child of the response or of that
//! assertion; IDs are unique. Each signature present must verify over the element that holds
//! it, and at least one must be there. Identity is then read from that same assertion node —
//! never found again by searching — so a wrapped copy (XSW1–8) is either refused by shape or is
//! not what the digest covered.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use roxmltree::Node;

use crate::dsig::{self, b64, SignatureAlgorithm};
use crate::metadata::{IdentityProvider, ServiceProvider};
use crate::xml::{
    elements, is, no_text, only_child, parse, required_child, simple_text, time_attr, ASSERTION,
    DSIG, PROTOCOL,
};
use crate::Error;

/// The largest decoded response accepted.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// The longest subject (NameID or subject attribute) and group name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Groups beyond this many are refused rather than silently dropped.
pub const MAX_GROUPS: usize = 256;
/// The longest bearer window accepted (IdPs use minutes): the replay cache keeps every
/// assertion ID this long at most.
pub const MAX_BEARER_WINDOW: Duration = Duration::from_secs(3600);

const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const ENTITY_FORMAT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity";

/// What a response must match.
pub struct Expect<'a> {
    pub idp: &'a IdentityProvider,
    pub sp: &'a ServiceProvider,
    /// The ID of the AuthnRequest this answers. `None`: an unsolicited (IdP-initiated) response,
    /// which must then name no request at all.
    pub in_response_to: Option<&'a str>,
    pub now: SystemTime,
    /// Clock skew tolerated on every time bound.
    pub skew: Duration,
    pub algorithms: &'a [SignatureAlgorithm],
    /// The attribute naming the individual; `None`: the NameID.
    pub subject_attribute: Option<&'a str>,
    pub groups_attribute: Option<&'a str>,
}

/// Who a verified assertion names.
#[derive(Debug, Clone)]
pub struct Assertion {
    /// The assertion's ID (for the replay cache).
    pub id: String,
    pub subject: String,
    pub groups: Vec<String>,
    /// Until when this assertion could be presented: keep its ID in the replay cache that long.
    pub valid_until: SystemTime,
    /// The IdP's bound on the session it started, if it set one.
    pub session_not_on_or_after: Option<SystemTime>,
}

/// Decodes, verifies and reads the `SAMLResponse` form field.
pub fn read_response(saml_response: &str, expect: &Expect) -> Result<Assertion, Error> {
    if saml_response.len() > MAX_RESPONSE_BYTES * 4 / 3 + 4096 {
        return Err(Error::Malformed("the response is too large".into()));
    }
    let bytes = b64(saml_response)?;
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(Error::Malformed("the response is too large".into()));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Malformed("the response is not UTF-8".into()))?;
    let doc = parse(&text)?;
    let root = doc.root_element();
    if !is(root, PROTOCOL, "Response") {
        return Err(Error::Malformed(
            "the root element is not a samlp:Response".into(),
        ));
    }
    check_ids(root)?;
    let assertion = shape(root, expect)?;
    read_assertion(assertion, expect)
}

/// Every `ID` in the document is unique: a reference by ID names one element.
fn check_ids(root: Node) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for n in root.descendants().filter(Node::is_element) {
        if let Some(id) = n.attribute("ID") {
            if !seen.insert(id) {
                return Err(Error::Malformed("an ID is used twice".into()));
            }
        }
    }
    Ok(())
}

/// Checks the response's own fields and shape, verifies its signatures, and returns its one
/// assertion.
fn shape<'a, 'i>(root: Node<'a, 'i>, expect: &Expect) -> Result<Node<'a, 'i>, Error> {
    if root.attribute("Version") != Some("2.0") {
        return Err(Error::Malformed("the response is not SAML 2.0".into()));
    }
    no_text(root)?;
    for c in elements(root) {
        let known = is(c, ASSERTION, "Issuer")
            || is(c, DSIG, "Signature")
            || is(c, PROTOCOL, "Status")
            || is(c, ASSERTION, "Assertion");
        if is(c, ASSERTION, "EncryptedAssertion") {
            return Err(Error::Unsupported(
                "encrypted assertions are not supported (the response travels over HTTPS)".into(),
            ));
        }
        if !known {
            return Err(Error::Malformed(
                "the response holds an element the profile does not allow there".into(),
            ));
        }
    }
    let status = required_child(root, PROTOCOL, "Status")?;
    let code = required_child(status, PROTOCOL, "StatusCode")?;
    if code.attribute("Value") != Some(SUCCESS) {
        let short = code
            .attribute("Value")
            .and_then(|v| v.rsplit(':').next())
            .filter(|v| v.len() <= 40 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
            .unwrap_or("unknown");
        return Err(Error::Refused(format!(
            "the identity provider did not sign the person in (status {short})"
        )));
    }
    if let Some(issuer) = only_child(root, ASSERTION, "Issuer")? {
        check_issuer(issuer, expect)?;
    }
    match (root.attribute("InResponseTo"), expect.in_response_to) {
        (None, _) => {}
        (Some(got), Some(want)) if got == want => {}
        (Some(_), _) => return Err(in_response_to_error(expect)),
    }

    let assertions: Vec<_> = root
        .descendants()
        .filter(|n| is(*n, ASSERTION, "Assertion"))
        .collect();
    let [assertion] = assertions.as_slice() else {
        return Err(Error::Malformed(format!(
            "the response must hold exactly one assertion (it holds {})",
            assertions.len()
        )));
    };
    if assertion.parent() != Some(root) {
        return Err(Error::Malformed(
            "the assertion is not a direct child of the response".into(),
        ));
    }
    let response_sig = only_child(root, DSIG, "Signature")?;
    let assertion_sig = only_child(*assertion, DSIG, "Signature")?;
    let signatures = root
        .descendants()
        .filter(|n| is(*n, DSIG, "Signature"))
        .count();
    if signatures != usize::from(response_sig.is_some()) + usize::from(assertion_sig.is_some()) {
        return Err(Error::Malformed(
            "a signature sits somewhere other than on the response or its assertion".into(),
        ));
    }
    if response_sig.is_none() && assertion_sig.is_none() {
        return Err(Error::Signature(
            "neither the assertion nor the response is signed".into(),
        ));
    }
    match root.attribute("Destination") {
        Some(d) if d == expect.sp.acs_url => {}
        Some(_) => {
            return Err(Error::Refused(
                "the response's Destination is not this gateway's assertion consumer service"
                    .into(),
            ))
        }
        // SAML bindings §3.5.5.2: a signed response must name its destination.
        None if response_sig.is_some() => {
            return Err(Error::Refused(
                "the signed response names no Destination".into(),
            ))
        }
        None => {}
    }
    let certs = &expect.idp.signing_certs;
    if let Some(sig) = response_sig {
        dsig::verify(root, sig, certs, expect.algorithms)?;
    }
    if let Some(sig) = assertion_sig {
        dsig::verify(*assertion, sig, certs, expect.algorithms)?;
    }
    Ok(*assertion)
}

fn in_response_to_error(expect: &Expect) -> Error {
    match expect.in_response_to {
        Some(_) => {
            Error::Refused("the response answers a different sign-in request (InResponseTo)".into())
        }
        None => Error::Refused(
            "the response names a sign-in request this gateway is not waiting for".into(),
        ),
    }
}

fn check_issuer(issuer: Node, expect: &Expect) -> Result<(), Error> {
    let format_ok = issuer
        .attribute("Format")
        .is_none_or(|f| f == ENTITY_FORMAT);
    if !format_ok || simple_text(issuer)?.trim() != expect.idp.entity_id {
        return Err(Error::Refused(
            "the issuer is not the configured identity provider".into(),
        ));
    }
    Ok(())
}

/// The assertion's conditions, subject and attributes. `assertion` was verified (by its own
/// signature, or by the response's, which covers it).
fn read_assertion(assertion: Node, expect: &Expect) -> Result<Assertion, Error> {
    if assertion.attribute("Version") != Some("2.0") {
        return Err(Error::Malformed("the assertion is not SAML 2.0".into()));
    }
    let id = assertion
        .attribute("ID")
        .filter(|id| !id.is_empty() && id.len() <= 256)
        .ok_or_else(|| Error::Malformed("the assertion has no ID".into()))?;
    no_text(assertion)?;
    for c in elements(assertion) {
        let known = [
            "Issuer",
            "Subject",
            "Conditions",
            "AuthnStatement",
            "AttributeStatement",
        ]
        .iter()
        .any(|l| is(c, ASSERTION, l))
            || is(c, DSIG, "Signature");
        if !known {
            return Err(Error::Malformed(
                "the assertion holds an element the profile does not allow there".into(),
            ));
        }
    }
    check_issuer(required_child(assertion, ASSERTION, "Issuer")?, expect)?;
    let conditions_until = conditions(required_child(assertion, ASSERTION, "Conditions")?, expect)?;
    let subject = required_child(assertion, ASSERTION, "Subject")?;
    let confirmed_until = confirmation(subject, expect)?;
    let mut session_not_on_or_after: Option<SystemTime> = None;
    let mut authn = 0;
    for s in elements(assertion).filter(|n| is(*n, ASSERTION, "AuthnStatement")) {
        authn += 1;
        if let Some(t) = time_attr(s, "SessionNotOnOrAfter")? {
            session_not_on_or_after = Some(session_not_on_or_after.map_or(t, |u| u.min(t)));
        }
    }
    if authn == 0 {
        return Err(Error::Malformed(
            "the assertion has no AuthnStatement".into(),
        ));
    }
    let attributes = attributes(assertion)?;
    let name = match expect.subject_attribute {
        None => {
            no_text(subject)?;
            let name_id = required_child(subject, ASSERTION, "NameID")?;
            simple_text(name_id)?
        }
        Some(attr) => match attributes
            .iter()
            .filter(|(n, _)| n == attr)
            .collect::<Vec<_>>()[..]
        {
            [(_, value)] => value.clone(),
            [] => {
                return Err(Error::Refused(format!(
                    "the assertion has no {attr} attribute"
                )))
            }
            _ => {
                return Err(Error::Refused(format!(
                    "the assertion has more than one {attr} value"
                )))
            }
        },
    };
    let subject_name = checked_name(&name, "the subject")?;
    let mut groups = Vec::new();
    if let Some(attr) = expect.groups_attribute {
        for (_, v) in attributes.iter().filter(|(n, _)| n == attr) {
            let g = checked_name(v, "a group")?;
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        if groups.len() > MAX_GROUPS {
            return Err(Error::Refused(format!(
                "the assertion names more than {MAX_GROUPS} groups"
            )));
        }
    }
    let valid_until = conditions_until.map_or(confirmed_until, |c| c.min(confirmed_until));
    Ok(Assertion {
        id: id.to_owned(),
        subject: subject_name,
        groups,
        valid_until: valid_until + expect.skew,
        session_not_on_or_after,
    })
}

/// Characters that render as nothing (format characters: zero-width spaces and joiners,
/// bidirectional controls, the soft hyphen, the byte-order mark): `alice\u{200b}` would be
/// someone other than `alice` who looks the same.
fn invisible(c: char) -> bool {
    matches!(c, '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

/// A subject or group: trimmed, 1 to [`MAX_NAME_CHARS`] characters, none a control or
/// invisible character.
fn checked_name(raw: &str, what: &str) -> Result<String, Error> {
    let v = raw.trim();
    if v.is_empty() {
        return Err(Error::Refused(format!("{what} is empty")));
    }
    if v.chars().count() > MAX_NAME_CHARS || v.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(Error::Refused(format!(
            "{what} is longer than {MAX_NAME_CHARS} characters or holds control or invisible \
             characters"
        )));
    }
    Ok(v.to_owned())
}

/// Checks `Conditions`: its time window and an `AudienceRestriction` naming us (every one
/// present must). Returns its `NotOnOrAfter`.
fn conditions(c: Node, expect: &Expect) -> Result<Option<SystemTime>, Error> {
    let (now, skew) = (expect.now, expect.skew);
    if time_attr(c, "NotBefore")?.is_some_and(|t| now + skew < t) {
        return Err(Error::Refused("the assertion is not yet valid".into()));
    }
    let until = time_attr(c, "NotOnOrAfter")?;
    if until.is_some_and(|t| now >= t + skew) {
        return Err(Error::Refused("the assertion has expired".into()));
    }
    no_text(c)?;
    let mut restrictions = 0;
    for e in elements(c) {
        if is(e, ASSERTION, "AudienceRestriction") {
            restrictions += 1;
            let ours = elements(e)
                .filter(|a| is(*a, ASSERTION, "Audience"))
                .any(|a| simple_text(a).is_ok_and(|t| t.trim() == expect.sp.entity_id));
            if !ours {
                return Err(Error::Refused(
                    "the assertion is for another audience (AudienceRestriction does not name \
                     this gateway)"
                        .into(),
                ));
            }
        } else if !is(e, ASSERTION, "OneTimeUse") && !is(e, ASSERTION, "ProxyRestriction") {
            return Err(Error::Refused(
                "the assertion carries a condition this gateway does not understand".into(),
            ));
        }
    }
    if restrictions == 0 {
        return Err(Error::Refused(
            "the assertion has no AudienceRestriction: it could be for any service".into(),
        ));
    }
    Ok(until)
}

/// Finds a bearer `SubjectConfirmation` whose data names our ACS, the request and a time
/// window that holds now; returns its `NotOnOrAfter`. With none, the first one's fault.
fn confirmation(subject: Node, expect: &Expect) -> Result<SystemTime, Error> {
    let mut first_error = None;
    for sc in elements(subject).filter(|n| is(*n, ASSERTION, "SubjectConfirmation")) {
        if sc.attribute("Method") != Some(BEARER) {
            continue;
        }
        match bearer(sc, expect) {
            Ok(t) => return Ok(t),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        Error::Refused("the assertion has no bearer subject confirmation".into())
    }))
}

fn bearer(sc: Node, expect: &Expect) -> Result<SystemTime, Error> {
    let data = required_child(sc, ASSERTION, "SubjectConfirmationData")?;
    if data.attribute("Recipient") != Some(expect.sp.acs_url.as_str()) {
        return Err(Error::Refused(
            "the assertion's Recipient is not this gateway's assertion consumer service".into(),
        ));
    }
    let until = time_attr(data, "NotOnOrAfter")?
        .ok_or_else(|| Error::Refused("the subject confirmation has no NotOnOrAfter".into()))?;
    if expect.now >= until + expect.skew {
        return Err(Error::Refused("the assertion has expired".into()));
    }
    if until > expect.now + MAX_BEARER_WINDOW + expect.skew {
        return Err(Error::Refused(
            "the assertion may be presented for more than an hour (its subject confirmation's \
             NotOnOrAfter); the identity provider's window is too long"
                .into(),
        ));
    }
    if time_attr(data, "NotBefore")?.is_some_and(|t| expect.now + expect.skew < t) {
        return Err(Error::Refused("the assertion is not yet valid".into()));
    }
    match (data.attribute("InResponseTo"), expect.in_response_to) {
        (Some(got), Some(want)) if got == want => Ok(until),
        (None, None) => Ok(until),
        (None, Some(_)) => Err(Error::Refused(
            "the assertion does not say which sign-in request it answers".into(),
        )),
        (Some(_), _) => Err(in_response_to_error(expect)),
    }
}

/// Every attribute value, by attribute `Name`, in document order.
fn attributes(assertion: Node) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for st in elements(assertion).filter(|n| is(*n, ASSERTION, "AttributeStatement")) {
        for a in elements(st) {
            if !is(a, ASSERTION, "Attribute") {
                return Err(Error::Unsupported(
                    "encrypted attributes are not supported".into(),
                ));
            }
            let name = a.attribute("Name").unwrap_or_default();
            for v in elements(a).filter(|n| is(*n, ASSERTION, "AttributeValue")) {
                out.push((name.to_owned(), simple_text(v)?));
            }
        }
    }
    Ok(out)
}
