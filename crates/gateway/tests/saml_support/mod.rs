//! The SAML test identity provider (`tests/saml-idp/idp.py`) and a gateway that trusts it, for
//! `saml.rs` and the console's browser test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use phigate_testkit::{Gateway, GatewayOptions};
use serde_json::{json, Value};

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    std::env::var("PHIGATE_PYTHON").unwrap_or_else(|_| {
        repo_root()
            .join("target/clients-venv/bin/python")
            .display()
            .to_string()
    })
}

/// A `tests/saml-idp/idp.py` process.
pub struct Idp {
    child: Child,
    pub url: String,
    pub metadata_file: String,
    _dir: tempfile::TempDir,
}

impl Idp {
    pub fn start() -> Idp {
        Idp::start_as(None)
    }

    /// An IdP with its own fresh signing key, as `entity_id` if given (the same IdP after a
    /// key rotation).
    pub fn start_as(entity_id: Option<&str>) -> Idp {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/saml-idp/idp.py"))
            .args(["--port", "0", "--dir"])
            .arg(dir.path());
        if let Some(e) = entity_id {
            cmd.args(["--entity-id", e]);
        }
        let (child, ready) = phigate_testkit::spawn_ready(&mut cmd)
            .unwrap_or_else(|e| panic!("cannot start the SAML IdP (run scripts/client-deps): {e}"));
        Idp {
            child,
            url: ready["url"].as_str().expect("url").to_owned(),
            metadata_file: ready["metadata_file"]
                .as_str()
                .expect("metadata")
                .to_owned(),
            _dir: dir,
        }
    }

    /// The IdP's answer to `request` (a redirect URL the gateway sent the browser to), for
    /// `user`, shaped by `variant`: (SAMLResponse, RelayState).
    pub async fn answer(
        &self,
        request: Option<&str>,
        user: &str,
        variant: &str,
        acs: &str,
    ) -> (String, Option<String>) {
        let (saml_request, relay) = match request {
            Some(url) => {
                let url = reqwest::Url::parse(url).expect("redirect URL");
                assert!(url.as_str().starts_with(&self.url), "sent to {url}");
                let get = |k: &str| {
                    url.query_pairs()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.into_owned())
                };
                (get("SAMLRequest"), get("RelayState"))
            }
            None => (None, None),
        };
        let body = json!({
            "saml_request": saml_request,
            "relay_state": relay,
            "user": user,
            "variant": variant,
            "acs": acs,
        });
        let mut body = body;
        if request.is_none() {
            body["audience"] = json!("https://phigate.test/saml/portal");
        }
        let resp: Value = reqwest::Client::new()
            .post(format!("{}/test/response", self.url))
            .json(&body)
            .send()
            .await
            .expect("IdP")
            .json()
            .await
            .expect("IdP JSON");
        let response = resp["SAMLResponse"]
            .as_str()
            .unwrap_or_else(|| panic!("IdP answered {resp}"))
            .to_owned();
        (response, resp["RelayState"].as_str().map(str::to_owned))
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway trusting the IdP twice: `hospital` (SP-initiated only, NameID is the subject) and
/// `portal` (IdP-initiated allowed, the `mail` attribute is the subject).
pub fn gateway(idp: &Idp) -> Gateway {
    gateway_for(&idp.metadata_file)
}

/// [`gateway`], with the IdP's metadata at `md`.
pub fn gateway_for(md: &str) -> Gateway {
    let mut opts = GatewayOptions::for_cluster(phigate_testkit::clinic(phigate::demo::SEED_SQL));
    opts.policy = phigate::demo::policy_toml().expect("policy");
    opts.extra = format!(
        r#"
[auth]
leeway_secs = 5

[auth.failed_logins]
max_failures = 1000

[[auth.saml]]
name = "hospital"
idp_metadata_file = "{md}"
sp_entity_id = "https://phigate.test/saml/hospital"
acs_url = "http://127.0.0.1:{{http_port}}/saml/hospital/acs"
groups_attribute = "groups"

[[auth.saml]]
name = "portal"
idp_metadata_file = "{md}"
sp_entity_id = "https://phigate.test/saml/portal"
acs_url = "http://127.0.0.1:{{http_port}}/saml/portal/acs"
subject_attribute = "mail"
groups_attribute = "groups"
allow_idp_initiated = true

[[binding]]
issuer = "hospital"
groups = ["clinicians"]
roles = ["clinician"]

[[binding]]
issuer = "hospital"
groups = ["reviewers"]
roles = ["reviewer"]

[[binding]]
issuer = "portal"
groups = ["clinicians"]
roles = ["clinician"]

[approvals]
reviewer_roles = ["reviewer"]
"#,
    );
    Gateway::start_with_identities(bin(), opts, &[])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}
