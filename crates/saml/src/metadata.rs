//! SAML metadata: the identity provider's (read: its entity id, signing certificates and
//! single sign-on endpoint) and the service provider's own (written).
//!
//! The IdP's metadata is configuration the operator vouches for (a file, or fetched over HTTPS
//! by the gateway); its own signature, if any, is not checked here. Metadata without a signing
//! certificate is refused: nothing from such an IdP could be verified.

use rustls_pki_types::CertificateDer;

use crate::dsig::b64;
use crate::xml::{elements, is, parse_metadata, simple_text, DSIG, METADATA, PROTOCOL};
use crate::Error;

const REDIRECT_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
pub(crate) const POST_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";

/// A trusted identity provider, from its metadata.
#[derive(Debug, Clone)]
pub struct IdentityProvider {
    /// `entityID`: the `Issuer` of its responses and assertions.
    pub entity_id: String,
    /// Where AuthnRequests go (HTTP-Redirect binding).
    pub sso_url: String,
    /// The certificates whose keys may sign (`KeyDescriptor use="signing"` or no `use`).
    pub signing_certs: Vec<CertificateDer<'static>>,
}

impl IdentityProvider {
    /// Reads IdP metadata: an `EntityDescriptor` (or an `EntitiesDescriptor` holding exactly
    /// one identity provider) with an `IDPSSODescriptor` for SAML 2.0.
    pub fn from_metadata(xml: &str) -> Result<IdentityProvider, Error> {
        let bad = |m: &str| Error::Metadata(m.to_owned());
        let doc = parse_metadata(xml)?;
        let root = doc.root_element();
        let entity = if is(root, METADATA, "EntityDescriptor") {
            root
        } else if is(root, METADATA, "EntitiesDescriptor") {
            let idps: Vec<_> = root
                .descendants()
                .filter(|n| is(*n, METADATA, "EntityDescriptor"))
                .filter(|n| elements(*n).any(|c| is(c, METADATA, "IDPSSODescriptor")))
                .collect();
            match idps.as_slice() {
                [one] => *one,
                _ => return Err(bad("it must describe exactly one identity provider")),
            }
        } else {
            return Err(bad("the root element is not an md:EntityDescriptor"));
        };
        let entity_id = entity
            .attribute("entityID")
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| bad("the EntityDescriptor has no entityID"))?;
        let idp: Vec<_> = elements(entity)
            .filter(|n| is(*n, METADATA, "IDPSSODescriptor"))
            .filter(|n| {
                n.attribute("protocolSupportEnumeration")
                    .is_some_and(|p| p.split_ascii_whitespace().any(|p| p == PROTOCOL))
            })
            .collect();
        let [idp] = idp.as_slice() else {
            return Err(bad("it needs exactly one IDPSSODescriptor for SAML 2.0"));
        };
        let mut signing_certs = Vec::new();
        for kd in elements(*idp).filter(|n| is(*n, METADATA, "KeyDescriptor")) {
            if kd.attribute("use").is_some_and(|u| u != "signing") {
                continue;
            }
            for c in kd.descendants().filter(|n| is(*n, DSIG, "X509Certificate")) {
                let der = b64(&simple_text(c)?)
                    .map_err(|_| bad("a signing certificate is not valid base64"))?;
                let der = CertificateDer::from(der);
                webpki::EndEntityCert::try_from(&der)
                    .map_err(|_| bad("a signing certificate is not a valid X.509 certificate"))?;
                signing_certs.push(der);
            }
        }
        if signing_certs.is_empty() {
            return Err(bad(
                "it has no signing certificate (KeyDescriptor use=\"signing\" with an \
                 X509Certificate): nothing it sends could be verified",
            ));
        }
        let sso_url = elements(*idp)
            .filter(|n| is(*n, METADATA, "SingleSignOnService"))
            .find(|n| n.attribute("Binding") == Some(REDIRECT_BINDING))
            .and_then(|n| n.attribute("Location"))
            .filter(|l| !l.trim().is_empty())
            .ok_or_else(|| bad("it has no SingleSignOnService with the HTTP-Redirect binding"))?;
        Ok(IdentityProvider {
            entity_id: entity_id.to_owned(),
            sso_url: sso_url.to_owned(),
            signing_certs,
        })
    }
}

/// This gateway as a SAML service provider.
#[derive(Debug, Clone)]
pub struct ServiceProvider {
    /// Our `entityID`: the audience assertions must name.
    pub entity_id: String,
    /// The assertion consumer service (HTTP-POST): responses' Destination and Recipient.
    pub acs_url: String,
}

impl ServiceProvider {
    /// The SP metadata to register at the IdP: assertions must be signed; requests are not
    /// (they carry nothing the IdP must trust: the response is checked against them here).
    pub fn metadata(&self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <md:EntityDescriptor xmlns:md=\"{METADATA}\" entityID=\"{}\">\n  \
             <md:SPSSODescriptor AuthnRequestsSigned=\"false\" WantAssertionsSigned=\"true\" \
             protocolSupportEnumeration=\"{PROTOCOL}\">\n    \
             <md:AssertionConsumerService Binding=\"{POST_BINDING}\" Location=\"{}\" \
             index=\"0\" isDefault=\"true\"/>\n  \
             </md:SPSSODescriptor>\n\
             </md:EntityDescriptor>\n",
            escape(&self.entity_id),
            escape(&self.acs_url),
        )
    }
}

/// Escapes text for an XML attribute value or element content.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}
