//! Query cancellation. Each session gets a key minted by the gateway: the database's process id
//! (what `pg_backend_pid()` says, what notifications carry, what `pg_terminate_backend` takes,
//! as direct) with a secret of the gateway's own; clients never learn the database's secret. A
//! CancelRequest quoting a gateway key is relayed, with the upstream key, to the server that
//! runs that session.

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
        if let Ok(mut map) = self.registry.inner.lock() {
            map.remove(&self.key);
        }
    }
}

impl CancelRegistry {
    /// Mints a key for a session whose upstream is `addr` / `key`: the database's pid (unique
    /// among its live sessions) and a fresh, unguessable secret.
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
                pid: key.0.pid,
                secret: rng.gen(),
            });
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(k) {
                let held: Arc<tokio::sync::Notify> = Arc::default();
                e.insert(Target {
                    addr,
                    key,
                    held: held.clone(),
                });
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

    /// Relays a client's CancelRequest. Unknown keys are ignored, as PostgreSQL does.
    pub async fn cancel(&self, key: FrontendKey) -> bool {
        self.relay(key).await
    }

    /// Like [`CancelRegistry::cancel`], with the key looked up now: the returned future relays
    /// the cancel even if the session ends before it runs (an MCP call dropped mid-statement
    /// closes its session at once).
    pub fn relay(
        &self,
        key: FrontendKey,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let target = self.inner.lock().ok().and_then(|m| m.get(&key).cloned());
        async move {
            let Some(target) = target else {
                tracing::debug!("cancel request with an unknown key");
                return false;
            };
            send_cancel(target).await
        }
    }
}

/// Sends a CancelRequest for `target` to the database, and waits until it is read.
async fn send_cancel(target: Target) -> bool {
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
