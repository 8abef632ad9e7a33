//! Who may take how much: connections on the PostgreSQL port, sessions per individual and per
//! role, and the file descriptors all of that costs.
//!
//! Every cap refuses at once with a clear error (SQLSTATE 53300) instead of queueing, and every
//! cap is sized so that what the gateway needs for itself (its API key file, audit segments and
//! checkpoints, recordings, the probes of `/readyz`, TLS files on reload) always has a file
//! descriptor: a flood of clients gets refused, never the gateway's own work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;

/// Descriptors kept for the gateway's own files and connections, whatever the clients hold.
pub const RESERVED_FDS: u64 = 128;
/// What one PostgreSQL session may hold: the client's socket, the database's, and a recording.
pub const FDS_PER_SESSION: u64 = 3;
/// What one HTTP connection holds.
pub const FDS_PER_HTTP: u64 = 1;

/// The caps in force, after the descriptor budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The process's descriptor limit (after raising the soft limit to the hard one).
    pub nofile: u64,
    pub pg_connections: usize,
    pub http_connections: usize,
}

/// Raises the soft descriptor limit to the hard one, and fits the configured connection caps
/// into it, keeping [`RESERVED_FDS`] for the gateway itself. Caps that do not fit are lowered
/// in proportion (and the log says so).
pub fn budget(pg_wanted: usize, http_wanted: usize) -> Budget {
    let nofile = raise_nofile();
    fit(nofile, pg_wanted, http_wanted)
}

fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (limit.current, limit.maximum) {
        if cur < max {
            limit.current = Some(max);
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!(error = %e, "cannot raise the file descriptor limit");
                limit.current = Some(cur);
            }
        }
    }
    // No limit at all: count as many as a typical hard limit.
    limit.current.unwrap_or(1 << 20)
}

/// The caps that fit in `nofile` descriptors.
pub fn fit(nofile: u64, pg_wanted: usize, http_wanted: usize) -> Budget {
    let room = nofile.saturating_sub(RESERVED_FDS);
    let need = pg_wanted as u64 * FDS_PER_SESSION + http_wanted as u64 * FDS_PER_HTTP;
    if need <= room {
        return Budget {
            nofile,
            pg_connections: pg_wanted,
            http_connections: http_wanted,
        };
    }
    // Scale both down, keeping at least a few of each so that the gateway stays usable.
    let scale = room as f64 / need.max(1) as f64;
    let pg = ((pg_wanted as f64 * scale) as usize).max(1);
    let http = ((http_wanted as f64 * scale) as usize).max(1);
    tracing::warn!(
        nofile,
        reserved = RESERVED_FDS,
        max_connections = pg,
        http_max_connections = http,
        "the file descriptor limit cannot carry limits.max_connections and \
         listen.http_max_connections; lowered to fit (raise the limit, e.g. LimitNOFILE=65536)"
    );
    Budget {
        nofile,
        pg_connections: pg,
        http_connections: http,
    }
}

/// Who holds a session: an individual (issuer and subject) in a role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Individual {
    issuer: String,
    subject: String,
}

#[derive(Default)]
struct Counts {
    by_individual: HashMap<Individual, usize>,
    by_role: HashMap<String, usize>,
}

/// Why a session was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many connections to the gateway ({0} at once)")]
    Gateway(usize),
    #[error("you already hold {0} sessions (limits.sessions_per_identity); close one and retry")]
    Individual(usize),
    #[error("role {role} already holds {cap} sessions (its max_sessions); try again shortly")]
    Role { role: String, cap: usize },
    #[error("too many connections from your address still logging in ({0} at once)")]
    Source(usize),
}

/// Connections at once per source address (IPv6: per /64): one host cannot take every place
/// of a listener however many sockets it opens. The map holds only sources with a connection
/// now, so it is bounded by the listener's own connection cap.
pub struct PerSource {
    cap: usize,
    by_source: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// A source's place, given back when dropped.
pub struct SourceSlot {
    sources: Arc<PerSource>,
    source: std::net::IpAddr,
}

impl PerSource {
    pub fn new(cap: usize) -> Arc<PerSource> {
        Arc::new(PerSource {
            cap,
            by_source: Mutex::default(),
        })
    }

    /// A place for one more connection from `ip`, or why not.
    pub fn acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<SourceSlot, Refused> {
        let source = crate::auth::limiter::source(ip);
        let mut by = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        if by.get(&source).is_some_and(|n| *n >= self.cap) {
            return Err(Refused::Source(self.cap));
        }
        *by.entry(source).or_default() += 1;
        Ok(SourceSlot {
            sources: self.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut by = self
            .sources
            .by_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        crate::counts::release(&mut by, &self.source);
    }
}

/// The session caps, shared by every session.
pub struct Admission {
    connections: Arc<Semaphore>,
    /// Connections still logging in, per source address.
    pub startups: Arc<PerSource>,
    max_connections: usize,
    per_individual: usize,
    per_role: usize,
    counts: Mutex<Counts>,
}

/// A connection on the PostgreSQL port: given back when dropped.
pub struct Connection {
    _permit: OwnedSemaphorePermit,
}

/// A session's place under its individual's and its role's caps: given back when dropped.
pub struct Seat {
    admission: Arc<Admission>,
    individual: Individual,
    role: String,
}

impl Admission {
    pub fn new(limits: &Limits, max_connections: usize) -> Arc<Admission> {
        Arc::new(Admission {
            connections: Arc::new(Semaphore::new(max_connections)),
            startups: PerSource::new(limits.startups_per_source),
            max_connections,
            per_individual: limits.sessions_per_identity,
            per_role: limits.sessions_per_role,
            counts: Mutex::default(),
        })
    }

    /// A place for one more connection, or `None` when the gateway is full.
    pub fn connection(&self) -> Result<Connection, Refused> {
        self.connections
            .clone()
            .try_acquire_owned()
            .map(|p| Connection { _permit: p })
            .map_err(|_| Refused::Gateway(self.max_connections))
    }

    /// The cap of `role`: its own `max_sessions`, else `limits.sessions_per_role`.
    pub fn role_cap(&self, role: &phigate_policy::Role) -> usize {
        role.max_sessions.unwrap_or(self.per_role)
    }

    /// A seat for a session of `subject` (vouched for by `issuer`) in `role`, or why not.
    pub fn seat(
        self: &Arc<Self>,
        issuer: &str,
        subject: &str,
        role: &phigate_policy::Role,
    ) -> Result<Seat, Refused> {
        let individual = Individual {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
        };
        let role_cap = self.role_cap(role);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mine = c.by_individual.get(&individual).copied().unwrap_or(0);
        if mine >= self.per_individual {
            return Err(Refused::Individual(self.per_individual));
        }
        let theirs = c.by_role.get(&role.name).copied().unwrap_or(0);
        if theirs >= role_cap {
            return Err(Refused::Role {
                role: role.name.clone(),
                cap: role_cap,
            });
        }
        *c.by_individual.entry(individual.clone()).or_default() += 1;
        *c.by_role.entry(role.name.clone()).or_default() += 1;
        Ok(Seat {
            admission: self.clone(),
            individual,
            role: role.name.clone(),
        })
    }

    /// Sessions held now.
    pub fn sessions(&self) -> usize {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.by_role.values().sum()
    }

    /// Sessions held now, by role (roles with none are absent).
    pub fn sessions_by_role(&self) -> Vec<(String, usize)> {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.by_role.iter().map(|(r, n)| (r.clone(), *n)).collect()
    }

    /// Connections on the PostgreSQL port now (sessions and logins in progress).
    pub fn connections(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        crate::counts::release(&mut c.by_individual, &self.individual);
        crate::counts::release(&mut c.by_role, &self.role);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_has_a_cap_of_its_own_and_ipv6_counts_per_64() {
        let sources = PerSource::new(2);
        let a: std::net::IpAddr = "2001:db8::1".parse().expect("ip");
        let a2: std::net::IpAddr = "2001:db8::ffff:2".parse().expect("ip");
        let b: std::net::IpAddr = "192.0.2.7".parse().expect("ip");
        let first = sources.acquire(a).expect("first");
        let _second = sources.acquire(a2).expect("second, same /64");
        assert_eq!(sources.acquire(a).err(), Some(Refused::Source(2)));
        let _other = sources.acquire(b).expect("another source is not affected");
        drop(first);
        let _again = sources.acquire(a).expect("a place came back");
    }

    fn role(name: &str, cap: Option<usize>) -> phigate_policy::Role {
        let config = format!(
            "[[role]]\nname = \"{name}\"\n{}",
            cap.map(|c| format!("max_sessions = {c}\n"))
                .unwrap_or_default()
        );
        #[derive(serde::Deserialize)]
        struct Roles {
            role: Vec<phigate_policy::RoleConfig>,
        }
        let roles: Roles = toml::from_str(&config).expect("role");
        let policy = phigate_policy::Policy::new(&roles.role, &[]).expect("policy");
        (*policy.role(name).expect("compiled")).clone()
    }

    #[test]
    fn an_individual_and_a_role_each_have_a_cap_and_seats_come_back() {
        let limits = Limits {
            sessions_per_identity: 2,
            sessions_per_role: 3,
            ..Limits::default()
        };
        let a = Admission::new(&limits, 10);
        let agent = role("ai-agent", None);
        let one = a.seat("idp", "ann", &agent).expect("first");
        let _two = a.seat("idp", "ann", &agent).expect("second");
        assert_eq!(
            a.seat("idp", "ann", &agent).err(),
            Some(Refused::Individual(2))
        );
        // The same subject text at another issuer is someone else.
        let _three = a.seat("other", "ann", &agent).expect("another individual");
        assert!(matches!(
            a.seat("idp", "bob", &agent),
            Err(Refused::Role { cap: 3, .. })
        ));
        // Another role is not affected by this one's cap.
        let _four = a
            .seat("idp", "bob", &role("clinician", None))
            .expect("other role");
        drop(one);
        let _five = a.seat("idp", "ann", &agent).expect("seat given back");
        assert_eq!(a.sessions(), 4);
    }

    #[test]
    fn a_role_may_set_its_own_cap() {
        let a = Admission::new(&Limits::default(), 10);
        let small = role("etl", Some(1));
        let _one = a.seat("idp", "ann", &small).expect("first");
        assert!(matches!(
            a.seat("idp", "bob", &small),
            Err(Refused::Role { cap: 1, .. })
        ));
    }

    #[test]
    fn the_gateway_cap_refuses_connections_beyond_it() {
        let a = Admission::new(&Limits::default(), 2);
        let one = a.connection().expect("one");
        let _two = a.connection().expect("two");
        assert!(a.connection().is_err());
        drop(one);
        assert!(a.connection().is_ok());
    }

    #[test]
    fn caps_that_do_not_fit_the_descriptor_limit_are_lowered_keeping_the_reserve() {
        let b = fit(65_536, 1000, 256);
        assert_eq!((b.pg_connections, b.http_connections), (1000, 256));
        let b = fit(1024, 1000, 256);
        let used = b.pg_connections as u64 * FDS_PER_SESSION + b.http_connections as u64;
        assert!(used + RESERVED_FDS <= 1024, "{b:?}");
        assert!(b.pg_connections >= 1 && b.http_connections >= 1);
    }
}
