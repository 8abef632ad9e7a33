//! Enforcing policy on the wire, keeping PostgreSQL's own protocol and transaction semantics.
//!
//! A refused statement is not simply dropped: the database must end up in the state it would be
//! in had it refused the statement itself (inside a transaction block: the transaction failed;
//! in the extended protocol: everything up to Sync discarded), and the client must see the
//! refusal in its place among the other responses. So the gateway substitutes the refused
//! message with one the database is certain to reject *without executing anything*: a Query or
//! Parse whose text is a single unique token (`phigate_denied_<session nonce>_<n>`, a syntax
//! error), or a Bind / Describe naming a statement that does not exist. The database answers
//! with an error mentioning the token; the backward half recognises the token and replaces that
//! error with the gateway's refusal. The refused text never reaches the database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use phigate_policy::{Decision, Policy, Refusal, Role};
use phigate_sql::Analyzer;
use phigate_wire::backend::{Fields, Notice};
use phigate_wire::frontend::{write, FrontendMessage, Target};
use phigate_wire::Frame;
use rand::Rng;

use crate::auth::Identity;

/// Refusals waiting for the database's error that stands in for them.
#[derive(Default)]
pub struct Denials {
    map: Mutex<HashMap<String, Refusal>>,
    pending: AtomicUsize,
}

const TOKEN_PREFIX: &str = "phigate_denied_";

impl Denials {
    fn add(&self, token: String, refusal: Refusal) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(token, refusal);
            self.pending.store(m.len(), Ordering::Release);
        }
    }

    /// If `frame` is the database's error for a substituted message, the gateway's refusal to
    /// send instead.
    pub fn rewrite(&self, frame: &Frame) -> Option<BytesMut> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let fields = Fields::decode(frame).ok()?;
        let message = fields.message()?;
        let start = message.find(TOKEN_PREFIX)?;
        let token: String = message[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let refusal = {
            let mut m = self.map.lock().ok()?;
            let r = m.remove(&token)?;
            self.pending.store(m.len(), Ordering::Release);
            r
        };
        let mut out = BytesMut::new();
        Notice::error(refusal.sqlstate, &refusal.message)
            .with_hint(&refusal.hint)
            .with_position(refusal.position)
            .write(&mut out);
        Some(out)
    }
}

pub struct Guard {
    pub role: Arc<Role>,
    policy: Arc<Policy>,
    policy_version: u64,
    nonce: String,
    counter: u64,
    /// Extended-protocol statement names whose Parse was refused.
    refused_statements: HashSet<String>,
    pub denials: Arc<Denials>,
    identity: Identity,
}

impl Guard {
    pub fn new(
        role: Arc<Role>,
        policy: Arc<Policy>,
        policy_version: u64,
        identity: Identity,
    ) -> Self {
        let nonce: u64 = rand::thread_rng().gen();
        Guard {
            role,
            policy,
            policy_version,
            nonce: format!("{nonce:016x}"),
            counter: 0,
            refused_statements: HashSet::new(),
            denials: Arc::default(),
            identity,
        }
    }

    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }

    /// Takes a newer policy (between transactions). A role removed from the policy keeps the
    /// session on its old snapshot; the next login is refused.
    pub fn update_policy(&mut self, policy: Arc<Policy>, version: u64) {
        if let Some(role) = policy.role(&self.role.name) {
            self.role = role;
            self.policy = policy;
        }
        self.policy_version = version;
    }

    fn token(&mut self) -> String {
        self.counter += 1;
        format!("{TOKEN_PREFIX}{}_{}", self.nonce, self.counter)
    }

    fn refuse(&mut self, decision: Decision, what: &str) -> String {
        let refusal = match decision {
            Decision::Deny(r) | Decision::RequireApproval(r) => r,
            Decision::Allow => unreachable_refusal(),
        };
        tracing::info!(
            subject = %self.identity.subject,
            role = %self.identity.role,
            rule = %refusal.rule,
            kind = what,
            "statement refused"
        );
        let token = self.token();
        self.denials.add(token.clone(), refusal);
        token
    }

    /// Appends to `out` what goes to the database for this client message: the message itself,
    /// or its refusing substitute.
    pub fn filter(
        &mut self,
        frame: &Frame,
        msg: &FrontendMessage<'_>,
        analyzer: &Analyzer,
        out: &mut BytesMut,
    ) {
        match msg {
            FrontendMessage::Query { sql } => {
                let decision = self.policy.decide(&self.role, &analyzer.analyze(sql), &[]);
                if decision == Decision::Allow {
                    out.extend_from_slice(frame.as_bytes());
                } else {
                    let token = self.refuse(decision, "query");
                    write::query(out, &token);
                }
            }
            FrontendMessage::Parse(parse) => {
                let decision = self
                    .policy
                    .decide(&self.role, &analyzer.analyze(parse.sql), &[]);
                if decision == Decision::Allow {
                    self.refused_statements.remove(parse.name);
                    out.extend_from_slice(frame.as_bytes());
                } else {
                    let token = self.refuse(decision, "parse");
                    self.refused_statements.insert(parse.name.to_owned());
                    write::parse(out, parse.name, &token);
                }
            }
            FrontendMessage::Bind(bind) if self.refused_statements.contains(bind.statement) => {
                let refusal = self.statement_refusal(bind.statement);
                let token = self.refuse(refusal, "bind");
                write::bind(out, bind.portal, &token, bind.rest());
            }
            FrontendMessage::Describe {
                target: Target::Statement,
                name,
            } if self.refused_statements.contains(*name) => {
                let refusal = self.statement_refusal(name);
                let token = self.refuse(refusal, "describe");
                write::describe_statement(out, &token);
            }
            FrontendMessage::Close {
                target: Target::Statement,
                name,
            } => {
                self.refused_statements.remove(*name);
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::FunctionCall { .. } if self.role.restricted => {
                let refusal = Decision::Deny(Refusal {
                    rule: "function-call-message".into(),
                    message: "phigate: the FunctionCall protocol message denied by rule function-call-message".into(),
                    hint: "Call functions with SELECT so phigate can see which one.".into(),
                    sqlstate: "42501",
                    position: None,
                });
                let token = self.refuse(refusal, "function-call");
                write::query(out, &token);
            }
            _ => out.extend_from_slice(frame.as_bytes()),
        }
    }

    fn statement_refusal(&self, name: &str) -> Decision {
        Decision::Deny(Refusal {
            rule: "refused-statement".into(),
            message: format!(
                "phigate: prepared statement \"{name}\" was refused and cannot be used"
            ),
            hint: "Its Parse was refused; see the earlier error.".into(),
            sqlstate: "42501",
            position: None,
        })
    }
}

fn unreachable_refusal() -> Refusal {
    Refusal {
        rule: "internal".into(),
        message: "phigate: statement refused".into(),
        hint: String::new(),
        sqlstate: "42501",
        position: None,
    }
}
