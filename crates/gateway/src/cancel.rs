//! Query cancellation. Each session gets a key minted by the gateway; clients never learn the
//! database's own key. A CancelRequest quoting a gateway key is relayed, with the upstream key, to
//! the server that runs that session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use phigate_wire::startup::{write_cancel, CancelKey};
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The key the gateway gave the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrontendKey(pub CancelKey);

/// The key the database gave the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamKey(pub CancelKey);

#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    key: UpstreamKey,
    /// Woken by a CancelRequest: a statement held for review is withdrawn.
    held: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default, Clone)]
pub struct CancelRegistry {
    inner: Arc<Mutex<HashMap<FrontendKey, Target>>>,
    /// The database's backend pid of each session → the pid its client was given, so a
    /// notification names its sender as that sender's client knows it. One entry per live
    /// session (bounded as sessions are).
    pids: Arc<Mutex<HashMap<i32, i32>>>,
}

/// Removes the session's key when the session ends, however it ends.
pub struct Registration {
    registry: CancelRegistry,
    key: FrontendKey,
    /// Notified when the client asks to cancel (withdraws a held statement).
    pub cancelled: Arc<tokio::sync::Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let upstream = match self.registry.inner.lock() {
            Ok(mut map) => map.remove(&self.key).map(|t| t.key.0.pid),
            Err(_) => None,
        };
        if let (Some(pid), Ok(mut pids)) = (upstream, self.registry.pids.lock()) {
            if pids.get(&pid) == Some(&self.key.0.pid) {
                pids.remove(&pid);
            }
        }
    }
}

impl CancelRegistry {
    /// Mints a fresh, unguessable key for a session whose upstream is `addr` / `key`.
    pub fn register(&self, addr: SocketAddr, key: UpstreamKey) -> (FrontendKey, Registration) {
        let mut rng = rand::thread_rng();
        let Ok(mut map) = self.inner.lock() else {
            // A poisoned lock means another thread panicked while holding it; cancellation is
            // best effort, so hand out a key that simply never matches.
            let k = FrontendKey(CancelKey {
                pid: -1,
                secret: rng.gen(),
            });
            return (
                k,
                Registration {
                    registry: self.clone(),
                    key: k,
                    cancelled: Arc::default(),
                },
            );
        };
        loop {
            let k = FrontendKey(CancelKey {
                pid: rng.gen_range(1..i32::MAX),
                secret: rng.gen(),
            });
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(k) {
                let held: Arc<tokio::sync::Notify> = Arc::default();
                e.insert(Target {
                    addr,
                    key,
                    held: held.clone(),
                });
                if let Ok(mut pids) = self.pids.lock() {
                    pids.insert(key.0.pid, k.0.pid);
                }
                return (
                    k,
                    Registration {
                        registry: self.clone(),
                        key: k,
                        cancelled: held,
                    },
                );
            }
        }
    }

    /// The pid the client of the session whose database pid is `upstream` was given, if that
    /// session runs through this gateway.
    pub fn client_pid(&self, upstream: i32) -> Option<i32> {
        self.pids.lock().ok()?.get(&upstream).copied()
    }

    /// Relays a client's CancelRequest. Unknown keys are ignored, as PostgreSQL does.
    pub async fn cancel(&self, key: FrontendKey) -> bool {
        let target = self.inner.lock().ok().and_then(|m| m.get(&key).cloned());
        let Some(target) = target else {
            tracing::debug!("cancel request with an unknown key");
            return false;
        };
        // A statement waiting for review is withdrawn; one running is cancelled in the database.
        target.held.notify_waiters();
        let mut buf = BytesMut::with_capacity(16);
        write_cancel(&mut buf, target.key.0);
        match TcpStream::connect(target.addr).await {
            Ok(mut s) => {
                if let Err(e) = s.write_all(&buf).await {
                    tracing::warn!(error = %e, "could not relay cancel request");
                    return false;
                }
                // The server closes the connection once it has read the request; wait for that
                // so the cancel has been delivered when we return.
                let mut sink = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut sink).await;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not reach the database to cancel");
                false
            }
        }
    }
}
