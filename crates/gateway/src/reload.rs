//! SIGHUP: read the config file again and put in force every part that can change while the
//! process runs — roles, rules and PHI tags (with their masking views), static identities, API
//! keys, OIDC issuers and bindings, client TLS certificates, approvals and their webhook, audit
//! reader roles. Everything is built and checked first; only then is anything swapped, so a
//! file that does not load leaves the running configuration entirely as it was, and says why.
//! Masking views that cannot be provisioned keep the running roles, rules and PHI tags (and say
//! so), while identities, keys, issuers, bindings, TLS and approvals still change: an agent
//! holding a lock on its views cannot keep a removed identity logged in. An unchanged masking
//! plan is not run again at all. Sessions whose credential the new file no
//! longer admits end (the key-revocation channel). What the file changes that only a restart
//! can apply (listen addresses, `data_dir`, `upstream`, ...) is named in the log and in the
//! `config_reload` audit record (`needs_restart`).

use std::path::Path;

use serde_json::Value;

use crate::config::Config;
use crate::state::{ClientTls, Shared};

/// Top-level sections that only a restart applies, except the dotted paths in [`LIVE`].
const RESTART_ONLY: &[&str] = &[
    "data_dir",
    "listen",
    "upstream",
    "audit",
    "recording",
    "limits",
    "log",
    "runtime",
    "auth",
    "console",
    "cluster",
];

/// Parts of [`RESTART_ONLY`] sections that a reload does apply.
const LIVE: &[&str] = &[
    "audit.reader_roles",
    "auth.oidc",
    "auth.saml",
    "auth.leeway_secs",
];

/// Everything a reload puts in force, built before anything changes.
struct Staged {
    config: Config,
    policy: phigate_policy::Policy,
    trust: crate::auth::trust::Trust,
    tls: ClientTls,
    notifier: Option<crate::approvals::Notifier>,
}

fn stage(shared: &Shared, path: &Path) -> anyhow::Result<Staged> {
    let config = Config::load(path)?;
    let policy = config.policy()?;
    let trust = shared.auth.stage(&config)?;
    let tls = ClientTls::from_config(&config).map_err(|e| anyhow::anyhow!("[tls]: {e}"))?;
    let notifier = crate::approvals::Notifier::from_config(
        &config.approvals,
        shared.audit.log.as_ref().map(|a| a.handle()),
    )?;
    Ok(Staged {
        config,
        policy,
        trust,
        tls,
        notifier,
    })
}

/// Reloads `path`; returns the `config_reload` event that says how it went.
pub async fn reload(shared: &Shared, path: &Path) -> phigate_audit::Event {
    let staged = match stage(shared, path) {
        Ok(s) => s,
        Err(e) => return failed(format!("{e:#}")),
    };
    // New views and logins first, then the policy that uses them. If the views cannot be
    // provisioned, the policy does not change (a newly tagged table must never be served under
    // the new policy with its old, raw grant) — but everything else does: removing an identity,
    // a key or a binding must take effect even while the views are busy.
    let provisioned =
        crate::masking::provision(&staged.config, &shared.upstream, &shared.policy.masked_plan)
            .await;
    let Staged {
        config,
        policy,
        trust,
        tls,
        notifier,
    } = staged;
    let policy_error = match provisioned {
        Ok(logins) => {
            if let Ok(mut m) = shared.policy.masked.write() {
                *m = logins;
            }
            shared.policy.store.replace(policy);
            shared.policy.phi_tags.set(crate::state::phi_tags(&config));
            crate::masking::retire_earlier_keys(&config, &shared.upstream).await;
            None
        }
        Err(e) => Some(format!(
            "masking re-provisioning failed: {e:#}; roles, rules and PHI tags are unchanged, \
             everything else was applied"
        )),
    };
    shared.listen.tls.set(tls);
    shared
        .audit
        .reader_roles
        .set(config.audit.reader_roles.clone());
    shared.approvals.config.set(config.approvals.clone());
    shared.approvals.reviews.set_notifier(notifier);
    if let Some(keys) = shared.auth.keys() {
        if let Err(e) = keys.reload_if_changed() {
            tracing::error!(error = %e, "cannot read the API key file");
        }
    }
    // Last: live sessions check their credentials against the new trust.
    shared.auth.replace_trust(trust);
    let effective = crate::state::effective(config, shared.listen.http_addr);
    let needs_restart = needs_restart(&shared.started, &effective);
    let version = shared.policy.store.version();
    if let Some(error) = policy_error {
        tracing::error!(error = %error, "configuration reload incomplete");
        return phigate_audit::Event::ConfigReload {
            ok: false,
            policy_version: Some(version),
            error: Some(error),
            needs_restart,
        };
    }
    if needs_restart.is_empty() {
        tracing::info!(path = %path.display(), version, "configuration reloaded");
    } else {
        tracing::warn!(
            path = %path.display(),
            version,
            needs_restart = %needs_restart.join(", "),
            "configuration reloaded; changed settings that take effect only after a restart: {}",
            needs_restart.join(", ")
        );
    }
    phigate_audit::Event::ConfigReload {
        ok: true,
        policy_version: Some(version),
        error: None,
        needs_restart,
    }
}

fn failed(error: String) -> phigate_audit::Event {
    tracing::error!(error = %error, "configuration reload failed; keeping the running configuration");
    phigate_audit::Event::ConfigReload {
        ok: false,
        policy_version: None,
        error: Some(error),
        needs_restart: Vec::new(),
    }
}

/// The settings `new` changes, against the config the process started with, that only a
/// restart applies: dotted paths (`listen.address`, `upstream.host`, `data_dir`).
pub fn needs_restart(running: &Config, new: &Config) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(running), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for section in RESTART_ONLY {
        let (x, y) = (a.get(*section), b.get(*section));
        match (x, y) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let name = format!("{section}.{k}");
                    if x.get(k) != y.get(k) && !LIVE.contains(&name.as_str()) {
                        out.push(name);
                    }
                }
            }
            _ if x != y => out.push((*section).to_owned()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
data_dir = "/tmp/a"
[listen]
address = "127.0.0.1:6432"
[upstream]
host = "127.0.0.1"
port = 5432
user = "phigate"
database = "clinic"
[audit]
reader_roles = []
[[role]]
name = "ai-agent"
[[identity]]
subject = "a"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
roles = ["ai-agent"]
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).expect("config")
    }

    #[test]
    fn only_restart_only_settings_are_named() {
        let base = parse(BASE);
        assert!(needs_restart(&base, &base).is_empty());
        // Live parts: identities, roles, audit readers, TLS, approvals.
        let live = BASE
            .replace("subject = \"a\"", "subject = \"b\"")
            .replace("reader_roles = []", "reader_roles = [\"ai-agent\"]")
            + "[approvals]\ntimeout_secs = 60\n";
        assert!(needs_restart(&base, &parse(&live)).is_empty());
        let restart = BASE
            .replace("127.0.0.1:6432", "127.0.0.1:6433")
            .replace("/tmp/a", "/tmp/b")
            .replace("port = 5432", "port = 5433");
        assert_eq!(
            needs_restart(&base, &parse(&restart)),
            vec!["data_dir", "listen.address", "upstream.port"]
        );
    }
}
