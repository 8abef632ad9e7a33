//! Checks of a config's meaning that point at the file: errors in the policy with the place
//! they are and the values that would be valid; warnings for what is legal but surely not
//! meant (a rule no statement can reach, an OIDC client whose tokens the gateway refuses).

use phigate_policy::PolicyError;

use super::locate::Place;
use super::{Config, ConfigError};

/// A warning: what, and where in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub place: Place,
    pub message: String,
}

impl Config {
    /// The roles the file defines, for messages listing valid values.
    pub(super) fn role_names(&self) -> String {
        let names: Vec<&str> = self.roles.iter().map(|r| r.name.as_str()).collect();
        if names.is_empty() {
            "none (add a [[role]])".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// An error about an undefined role, at its place, with the defined ones.
    pub(super) fn unknown_role(&self, place: Place, what: String) -> ConfigError {
        ConfigError::At {
            message: format!("{what} (defined roles: {})", self.role_names()),
            place: Box::new(place),
        }
    }

    /// A policy compilation error at its place, with the valid values.
    pub(super) fn policy_error(&self, e: PolicyError) -> ConfigError {
        let message = e.to_string();
        let (place, valid) = match &e {
            PolicyError::DuplicateRole(name) => (Place::entry("role", name), String::new()),
            PolicyError::MaskedUnrestricted(name) => {
                (Place::entry("role", name).key("masked"), String::new())
            }
            PolicyError::UnknownRole { rule, role } => (
                Place::entry("rule", rule).value(role),
                format!(" (defined roles: {})", self.role_names()),
            ),
            PolicyError::UnknownKind { rule, kind } => (
                Place::entry("rule", rule).key("kinds").value(kind),
                format!(" (valid kinds: {})", phigate_policy::KIND_NAMES.join(", ")),
            ),
            PolicyError::UnknownAction { role, action } => (
                Place::entry("role", role).key("actions").value(action),
                format!(
                    " (valid actions: {}, write, *)",
                    phigate_policy::ACTIONS.join(", ")
                ),
            ),
            PolicyError::BadApproval { rule, .. } => {
                (Place::entry("rule", rule).key("approval"), String::new())
            }
            PolicyError::BadDuration { role, field, .. } => {
                (Place::entry("role", role).key(field), String::new())
            }
        };
        ConfigError::At {
            place: Box::new(place),
            message: format!("{message}{valid}"),
        }
    }

    /// Held statements need a reviewer, and reviewers decide through the HTTP API (the CLI
    /// and the console use it): without a listener every hold would time out.
    pub(super) fn check_approvals_reachable(&self) -> Result<(), ConfigError> {
        if !self.approvals.enabled || self.listen.http_address.is_some() {
            return Ok(());
        }
        let holding = self
            .rules
            .iter()
            .find(|r| r.action == phigate_policy::RuleAction::RequireApproval);
        let place = match (holding, self.approvals.elevation_roles.is_empty()) {
            (Some(rule), _) => Place::entry("rule", &rule.name).key("action"),
            (None, false) => Place::section("approvals").key("elevation_roles"),
            (None, true) => return Ok(()),
        };
        Err(ConfigError::At {
            place: Box::new(place),
            message: "approvals are enabled and a rule holds statements (or access requests \
                      are allowed), but listen.http_address is not set: reviewers decide \
                      through the HTTP API, so every hold would time out. Set \
                      listen.http_address, or approvals.enabled = false to refuse such \
                      statements at once"
                .into(),
        })
    }

    /// What is legal but surely not meant.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        for (later, earlier) in phigate_policy::shadow::shadowed(&self.rules) {
            let (l, e) = (&self.rules[later], &self.rules[earlier]);
            out.push(Warning {
                place: Place::entry("rule", &l.name),
                message: format!(
                    "rule {} never applies: rule {}, before it, matches every statement it \
                     matches (rules are tried in order; the first match decides). Move it \
                     above {}, or narrow {}",
                    l.name, e.name, e.name, e.name
                ),
            });
        }
        if self.audit.durability == super::audit::Durability::Process
            && self.audit.read_durability == super::ReadDurability::Results
        {
            out.push(Warning {
                place: Place::section("audit").key("read_durability"),
                message: "audit.read_durability = \"results\" has no effect with \
                          audit.durability = \"process\": no statement waits for the disk in \
                          that tier"
                    .into(),
            });
        }
        for o in &self.auth.oidc {
            if let Some(client) = &o.client_id {
                if !o.audience.contains(client) {
                    out.push(Warning {
                        place: Place::entry("auth.oidc", &o.name).key("audience"),
                        message: format!(
                            "auth.oidc {}: client_id {client} is not in audience: the tokens \
                             `phigate login` gets for that client (aud = {client}) will be \
                             refused. Add it to audience",
                            o.name
                        ),
                    });
                }
            }
        }
        out
    }
}
