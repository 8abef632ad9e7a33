//! Enveloped XML signatures (XMLDSig 1.0) of exactly the shape the SAML profiles use, and
//! nothing else: one `Reference` to the element that holds the signature, by that element's
//! `ID`; transforms exactly `enveloped-signature` then exclusive C14N; exclusive C14N for
//! `SignedInfo`; RSA PKCS#1 v1.5 with SHA-256/384/512 (keys of 2048 to 8192 bits); SHA-2
//! digests. No `Object`, no other reference, no key from the message: the signature must verify
//! with a certificate from the identity provider's metadata.
//!
//! The caller passes the element it will read (`signed`); what is digested is that element's
//! own subtree, so what is verified and what is consumed cannot come apart.

use base64::Engine;
use roxmltree::Node;
use rustls_pki_types::CertificateDer;
use sha2::Digest;

use crate::c14n::canonicalize;
use crate::xml::{elements, is, no_text, simple_text, DSIG};
use crate::Error;

const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";

/// A signature algorithm an identity provider may sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    RsaSha256,
    RsaSha384,
    RsaSha512,
}

impl SignatureAlgorithm {
    /// All supported algorithms (the default). SHA-1 is not one of them.
    pub const ALL: [SignatureAlgorithm; 3] = [
        SignatureAlgorithm::RsaSha256,
        SignatureAlgorithm::RsaSha384,
        SignatureAlgorithm::RsaSha512,
    ];

    /// From a configured name: `rsa-sha256`, `rsa-sha384`, `rsa-sha512` (or the URI).
    pub fn from_name(name: &str) -> Result<SignatureAlgorithm, String> {
        let n = name.trim();
        if let Some(a) = Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(n) || a.uri() == n)
        {
            return Ok(a);
        }
        if n.to_ascii_lowercase().contains("sha1") {
            return Err(format!(
                "signature algorithm {n:?}: SHA-1 signatures can be forged (SHA-1 collisions are \
                 practical) and are never accepted"
            ));
        }
        Err(format!(
            "unknown signature algorithm {n:?} (rsa-sha256, rsa-sha384 or rsa-sha512)"
        ))
    }

    pub fn name(self) -> &'static str {
        match self {
            SignatureAlgorithm::RsaSha256 => "rsa-sha256",
            SignatureAlgorithm::RsaSha384 => "rsa-sha384",
            SignatureAlgorithm::RsaSha512 => "rsa-sha512",
        }
    }

    pub fn uri(self) -> &'static str {
        match self {
            SignatureAlgorithm::RsaSha256 => "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            SignatureAlgorithm::RsaSha384 => "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
            SignatureAlgorithm::RsaSha512 => "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
        }
    }

    fn verifier(self) -> &'static dyn rustls_pki_types::SignatureVerificationAlgorithm {
        match self {
            SignatureAlgorithm::RsaSha256 => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            SignatureAlgorithm::RsaSha384 => webpki::ring::RSA_PKCS1_2048_8192_SHA384,
            SignatureAlgorithm::RsaSha512 => webpki::ring::RSA_PKCS1_2048_8192_SHA512,
        }
    }
}

fn digest(uri: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
    Ok(match uri {
        "http://www.w3.org/2001/04/xmlenc#sha256" => sha2::Sha256::digest(data).to_vec(),
        "http://www.w3.org/2001/04/xmldsig-more#sha384" => sha2::Sha384::digest(data).to_vec(),
        "http://www.w3.org/2001/04/xmlenc#sha512" => sha2::Sha512::digest(data).to_vec(),
        "http://www.w3.org/2000/09/xmldsig#sha1" => {
            return Err(Error::Signature("SHA-1 digests are not accepted".into()))
        }
        _ => {
            return Err(Error::Signature(
                "the digest algorithm is not supported".into(),
            ))
        }
    })
}

fn signature_algorithm(
    uri: &str,
    allowed: &[SignatureAlgorithm],
) -> Result<SignatureAlgorithm, Error> {
    if uri == "http://www.w3.org/2000/09/xmldsig#rsa-sha1" {
        return Err(Error::Signature(
            "SHA-1 signatures (rsa-sha1) are not accepted".into(),
        ));
    }
    SignatureAlgorithm::ALL
        .into_iter()
        .find(|a| a.uri() == uri && allowed.contains(a))
        .ok_or_else(|| {
            Error::Signature("the signature algorithm is not supported or not allowed".into())
        })
}

/// Verifies `sig`, an enveloped signature over `signed` (its parent), with one of `certs`.
pub fn verify(
    signed: Node,
    sig: Node,
    certs: &[CertificateDer<'static>],
    allowed: &[SignatureAlgorithm],
) -> Result<(), Error> {
    let malformed = |what: &str| Error::Signature(format!("malformed signature: {what}"));
    if sig.parent() != Some(signed) {
        return Err(malformed("not enveloped in the signed element"));
    }
    no_text(sig)?;
    let mut parts = elements(sig);
    let signed_info = next_ds(&mut parts, "SignedInfo", "SignedInfo must come first")?;
    let value = next_ds(
        &mut parts,
        "SignatureValue",
        "SignatureValue must follow SignedInfo",
    )?;
    for rest in parts {
        // The key in the message is never used; an Object could smuggle signed content.
        if !is(rest, DSIG, "KeyInfo") {
            return Err(malformed("only KeyInfo may follow SignatureValue"));
        }
    }

    no_text(signed_info)?;
    let mut si = elements(signed_info);
    let c14n_method = next_ds(
        &mut si,
        "CanonicalizationMethod",
        "CanonicalizationMethod must come first",
    )?;
    let method = next_ds(&mut si, "SignatureMethod", "SignatureMethod must follow")?;
    let reference = next_ds(&mut si, "Reference", "there must be a Reference")?;
    if si.next().is_some() {
        return Err(malformed("exactly one Reference is accepted"));
    }
    let si_prefixes = exc_c14n(c14n_method)?;
    let algorithm = signature_algorithm(method.attribute("Algorithm").unwrap_or(""), allowed)?;
    if elements(method).next().is_some() {
        return Err(malformed("SignatureMethod takes no parameters"));
    }

    // The reference must be the signed element itself.
    let id = signed
        .attribute("ID")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| malformed("the signed element has no ID"))?;
    let uri = reference.attribute("URI").unwrap_or("");
    if uri.strip_prefix('#') != Some(id) {
        return Err(Error::Signature(
            "the signature does not cover the element that holds it".into(),
        ));
    }
    no_text(reference)?;
    let mut r = elements(reference);
    let transforms = next_ds(&mut r, "Transforms", "Reference needs Transforms")?;
    let digest_method = next_ds(
        &mut r,
        "DigestMethod",
        "DigestMethod must follow Transforms",
    )?;
    let digest_value = next_ds(
        &mut r,
        "DigestValue",
        "DigestValue must follow DigestMethod",
    )?;
    if r.next().is_some() {
        return Err(malformed("unexpected element in Reference"));
    }
    no_text(transforms)?;
    let t: Vec<Node> = elements(transforms).collect();
    let [first, second] = t.as_slice() else {
        return Err(malformed(
            "the transforms must be enveloped-signature then exclusive C14N",
        ));
    };
    let enveloped = is(*first, DSIG, "Transform")
        && first.attribute("Algorithm") == Some(ENVELOPED)
        && elements(*first).next().is_none();
    if !enveloped || !is(*second, DSIG, "Transform") {
        return Err(malformed(
            "the transforms must be enveloped-signature then exclusive C14N",
        ));
    }
    let ref_prefixes = exc_c14n(*second)?;

    let expected = b64(&simple_text(digest_value)?)?;
    let actual = digest(
        digest_method.attribute("Algorithm").unwrap_or(""),
        &canonicalize(signed, Some(sig), &ref_prefixes),
    )?;
    if expected != actual {
        return Err(Error::Signature(
            "the signed content was changed after signing (digest mismatch)".into(),
        ));
    }

    let signature = b64(&simple_text(value)?)?;
    let message = canonicalize(signed_info, None, &si_prefixes);
    let verified = certs.iter().any(|der| {
        webpki::EndEntityCert::try_from(der).is_ok_and(|cert| {
            cert.verify_signature(algorithm.verifier(), &message, &signature)
                .is_ok()
        })
    });
    if !verified {
        return Err(Error::Signature(
            "the signature does not verify with the identity provider's certificate".into(),
        ));
    }
    Ok(())
}

/// The next element of `children`, which must be `ds:{local}`; else a malformed signature,
/// saying `rule`.
fn next_ds<'a, 'i>(
    children: &mut impl Iterator<Item = Node<'a, 'i>>,
    local: &str,
    rule: &str,
) -> Result<Node<'a, 'i>, Error> {
    children
        .next()
        .filter(|n| is(*n, DSIG, local))
        .ok_or_else(|| Error::Signature(format!("malformed signature: {rule}")))
}

/// The `InclusiveNamespaces PrefixList` of an exclusive C14N algorithm element (its
/// `Algorithm` must be exclusive C14N without comments).
fn exc_c14n(n: Node) -> Result<Vec<String>, Error> {
    if n.attribute("Algorithm") != Some(EXC_C14N) {
        return Err(Error::Signature(
            "only exclusive XML canonicalization (without comments) is accepted".into(),
        ));
    }
    no_text(n)?;
    let mut prefixes = Vec::new();
    for c in elements(n) {
        if !is(c, EXC_C14N, "InclusiveNamespaces") {
            return Err(Error::Signature(
                "malformed signature: unexpected canonicalization parameter".into(),
            ));
        }
        prefixes.extend(
            c.attribute("PrefixList")
                .unwrap_or("")
                .split_ascii_whitespace()
                .map(str::to_owned),
        );
    }
    if prefixes.len() > crate::xml::MAX_NAMESPACES {
        return Err(Error::Signature(
            "malformed signature: the prefix list is too long".into(),
        ));
    }
    Ok(prefixes)
}

/// Base64 with the line breaks XML signatures carry.
pub fn b64(text: &str) -> Result<Vec<u8>, Error> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| Error::Malformed("invalid base64".into()))
}
