//! Failed logins per source address. Past the limit, an address is refused without any check
//! until its window passes: guessing tokens or keys gets `max_failures` tries per window.
//!
//! In a cluster each node adds its failures to the control database's counts every second and
//! reads every node's back (docs/cluster.md): an address is refused on every node once the
//! cluster's count reaches the limit, a second or so after it does.
//!
//! IPv6 addresses count per /64 (one host usually holds a whole /64, and could otherwise rotate
//! through it). A success does not reset the count: one valid credential must not buy an attacker
//! fresh guesses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 10_000;

pub struct FailedLogins {
    max: u32,
    window: Duration,
    by_source: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// A cluster: failures counted here and not yet added to the control database's counts
    /// (bounded like `by_source`).
    unpublished: Mutex<HashMap<IpAddr, u32>>,
    /// A cluster: every node's failures per source within its window, as last read from the
    /// control database (at most `SWEEP_AT`).
    cluster: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
        v4 => v4,
    }
}

impl FailedLogins {
    pub fn new(max: u32, window: Duration) -> Self {
        FailedLogins {
            max,
            window,
            by_source: Mutex::new(HashMap::new()),
            unpublished: Mutex::new(HashMap::new()),
            cluster: Mutex::new(HashMap::new()),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// A cluster: the failures counted here since the last call, to add to the control
    /// database's counts.
    pub fn take_unpublished(&self) -> Vec<(IpAddr, u32)> {
        let mut u = self.unpublished.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *u).into_iter().collect()
    }

    /// A cluster: failures taken with [`take_unpublished`](Self::take_unpublished) that could
    /// not be shared, to share the next time (within the same bound).
    pub fn put_back(&self, counts: Vec<(IpAddr, u32)>) {
        let mut u = self.unpublished.lock().unwrap_or_else(|p| p.into_inner());
        for (ip, n) in counts {
            if u.len() < SWEEP_AT || u.contains_key(&ip) {
                let e = u.entry(ip).or_insert(0);
                *e = e.saturating_add(n);
            }
        }
    }

    /// A cluster: every node's failures per source, each with the age of its window.
    pub fn set_cluster_counts(&self, counts: Vec<(IpAddr, u32, Duration)>) {
        let now = Instant::now();
        let map = counts
            .into_iter()
            .take(SWEEP_AT)
            .map(|(ip, n, age)| (ip, (n, now.checked_sub(age).unwrap_or(now))))
            .collect();
        *self.cluster.lock().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// Failures of `source` in its current window: this node's, or the cluster's if more.
    fn count(
        &self,
        map: &HashMap<IpAddr, (u32, Instant)>,
        source: IpAddr,
    ) -> Option<(u32, Instant)> {
        // Only counts of a window still running: a stale higher count must not hide a
        // current one over the limit.
        let current = |e: &(u32, Instant)| e.1.elapsed() < self.window;
        let here = map.get(&source).copied().filter(current);
        let cluster = self
            .cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&source)
            .copied()
            .filter(current);
        match (here, cluster) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// `Err(seconds to wait)` while the address is over its limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        match self.count(&map, source(ip)) {
            Some((n, since)) if n >= self.max => {
                let elapsed = since.elapsed();
                if elapsed < self.window {
                    Err(self.window.saturating_sub(elapsed).as_secs() + 1)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure; returns the count in the current window.
    pub fn failed(&self, ip: IpAddr) -> u32 {
        let mut map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            let window = self.window;
            map.retain(|_, (_, since)| since.elapsed() < window);
        }
        let entry = map.entry(source(ip)).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        let n = entry.0;
        drop(map);
        let mut u = self.unpublished.lock().unwrap_or_else(|p| p.into_inner());
        if u.len() < SWEEP_AT || u.contains_key(&source(ip)) {
            let e = u.entry(source(ip)).or_insert(0);
            *e = e.saturating_add(1);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_per_source_and_v6_prefix() {
        let l = FailedLogins::new(2, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(l.check(a).is_ok());
        l.failed(a);
        assert!(l.check(a).is_ok());
        l.failed(a);
        assert!(l.check(a).is_err());
        assert!(l.check(b).is_ok());
        let v6a: IpAddr = "2001:db8::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8::ffff:2".parse().expect("ip");
        l.failed(v6a);
        l.failed(v6b);
        assert!(l.check(v6a).is_err(), "same /64 counts together");
        // The cluster's counts: over the limit refuses here too; a count whose window has
        // passed counts for nothing, even when higher than a current one over the limit.
        let c = FailedLogins::new(2, Duration::from_secs(60));
        let d: IpAddr = "10.0.0.4".parse().expect("ip");
        c.set_cluster_counts(vec![(d, 2, Duration::from_secs(1))]);
        assert!(c.check(d).is_err(), "the cluster's count applies");
        c.failed(d);
        c.failed(d);
        c.failed(d);
        c.set_cluster_counts(vec![(d, 9, Duration::from_secs(120))]);
        assert!(c.check(d).is_err(), "this node's current count applies");
        // Counts that could not be shared are shared the next time.
        let taken = c.take_unpublished();
        assert_eq!(taken, vec![(d, 3)]);
        c.put_back(taken);
        assert_eq!(c.take_unpublished(), vec![(d, 3)]);
        let w = FailedLogins::new(1, Duration::ZERO);
        w.failed(a);
        assert!(w.check(a).is_ok(), "window passed");
    }
}
