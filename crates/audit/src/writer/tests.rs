//! The writer against an in-memory store whose syncs can be held and failed.

use super::*;
use crate::checkpoint::Checkpoint;
use crate::store::Syncer;

/// A store in memory whose syncs can be held back or made to fail: what a real disk cannot
/// be made to do on demand.
#[derive(Default)]
struct Disk {
    data: Vec<u8>,
    synced: usize,
    hold: bool,
    fail_next: bool,
    syncs: u64,
}

#[derive(Clone, Default)]
struct Mem(Arc<(Mutex<Disk>, Condvar)>);

impl Mem {
    fn with<R>(&self, f: impl FnOnce(&mut Disk) -> R) -> R {
        let r = f(&mut self.0 .0.lock().expect("lock"));
        self.0 .1.notify_all();
        r
    }

    fn lines(&self) -> Vec<(Record, String)> {
        self.with(|d| {
            d.data
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| chain::decode(l).expect("decodes"))
                .collect()
        })
    }
}

impl Syncer for Mem {
    fn sync(&self) -> std::io::Result<()> {
        let (lock, cv) = &*self.0;
        let mut d = lock.lock().expect("lock");
        let len = d.data.len();
        while d.hold {
            d = cv.wait(d).expect("lock");
        }
        if std::mem::take(&mut d.fail_next) {
            return Err(std::io::Error::other("injected EIO"));
        }
        d.synced = d.synced.max(len);
        d.syncs += 1;
        Ok(())
    }
}

impl Store for Mem {
    fn write(&mut self, _first_seq: u64, lines: &[u8]) -> std::io::Result<bool> {
        self.with(|d| d.data.extend_from_slice(lines));
        Ok(false)
    }
    fn syncer(&self) -> Option<Arc<dyn Syncer>> {
        Some(Arc::new(self.clone()))
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Syncer::sync(self)
    }
    fn broken(&self) -> bool {
        false
    }
    fn checkpoints(&self) -> Arc<dyn crate::store::CheckpointSink> {
        struct Nowhere;
        impl crate::store::CheckpointSink for Nowhere {
            fn write(&self, _cp: &Checkpoint) -> std::io::Result<()> {
                Ok(())
            }
        }
        Arc::new(Nowhere)
    }
    fn wants_rotation(&self, _next_bytes: usize) -> bool {
        false
    }
}

fn start(mem: &Mem) -> Auditor {
    start_with(mem, 1_000_000)
}

fn start_with(mem: &Mem, checkpoint_every: u64) -> Auditor {
    start_tier(mem, checkpoint_every, DurabilityTier::Strict)
}

fn start_tier(mem: &Mem, checkpoint_every: u64, durability: DurabilityTier) -> Auditor {
    Auditor::start(
        Box::new(mem.clone()),
        (0, chain::GENESIS.to_owned()),
        Options {
            checkpoint_every,
            checkpoint_interval: Duration::from_secs(3600),
            full_text: false,
            signing: SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("key"))
                .expect("key"),
            hmac_key: vec![1; 32],
            durability,
        },
        Vec::new(),
    )
}

fn event(n: u64) -> Pending {
    Pending::Event(Event::ConfigReload {
        ok: true,
        policy_version: Some(n),
        error: None,
        needs_restart: Vec::new(),
    })
}

/// Until the store holds `n` records (queued events are written by the writer thread).
async fn lines_written(mem: &Mem, n: usize) {
    while mem.lines().len() < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("in time")
}

#[tokio::test]
async fn a_record_is_written_before_the_disk_has_it_and_durable_after() {
    let mem = Mem::default();
    mem.with(|d| d.hold = true);
    let auditor = start(&mem);
    let t = auditor.submit(event(1));
    within(lines_written(&mem, 1)).await;
    assert_eq!(mem.lines().len(), 1, "the record is in the store");
    // The sync is held: the record is written, not durable, and a second one is written
    // meanwhile (writing never waits for a sync).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!auditor.is_durable(t));
    let t2 = auditor.submit(event(2));
    within(lines_written(&mem, 2)).await;
    assert!(!auditor.is_durable(t2));
    mem.with(|d| d.hold = false);
    within(auditor.durable(t2)).await.expect("durable");
    assert!(auditor.is_durable(t));
    auditor.shutdown();
}

#[tokio::test]
async fn a_write_waiting_for_the_sync_thread_is_synced_whatever_else_runs() {
    let mem = Mem::default();
    let auditor = start(&mem);
    mem.with(|d| d.hold = true);
    let first = auditor.append(vec![event(1)]).expect("written");
    // The sync thread is inside the first fsync; the second waits for it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = auditor.append(vec![event(2)]).expect("written");
    // The writer thread wakes (at most 1 s apart) with nothing to write, meanwhile.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    mem.with(|d| d.hold = false);
    within(auditor.durable(second)).await.expect("durable");
    assert!(auditor.is_durable(first));
    auditor.shutdown();
}

#[tokio::test]
async fn a_checkpoint_waits_for_the_disk_without_holding_up_writes() {
    let mem = Mem::default();
    let auditor = start_with(&mem, 1);
    mem.with(|d| d.hold = true);
    let first = auditor.append(vec![event(1)]).expect("written");
    // The writer thread's checkpoint now waits for the held disk, as the sync thread does;
    // sessions still write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let second = auditor.append(vec![event(2)]).expect("written");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(auditor.stats().checkpoints.load(Ordering::Relaxed), 0);
    mem.with(|d| d.hold = false);
    within(auditor.durable(second)).await.expect("durable");
    assert!(auditor.is_durable(first));
    for _ in 0..100 {
        if auditor.stats().checkpoints.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(auditor.stats().checkpoints.load(Ordering::Relaxed) > 0);
    auditor.shutdown();
}

#[tokio::test]
async fn append_writes_on_the_callers_thread_with_what_is_queued_first() {
    let mem = Mem::default();
    let auditor = start(&mem);
    within(auditor.durable(auditor.submit(event(1))))
        .await
        .expect("durable");
    mem.with(|d| d.hold = true);
    let queued = auditor.submit(event(2));
    let mine = auditor.append(vec![event(3), event(4)]).expect("written");
    // Written when append returns, in ticket order, the queued event first.
    let versions: Vec<Option<u64>> = mem
        .lines()
        .iter()
        .map(|(r, _)| match &r.event {
            Event::ConfigReload { policy_version, .. } => *policy_version,
            _ => None,
        })
        .collect();
    assert_eq!(versions, [Some(1), Some(2), Some(3), Some(4)]);
    assert!(queued < mine);
    assert!(!auditor.is_durable(mine));
    mem.with(|d| d.hold = false);
    within(auditor.durable(mine)).await.expect("durable");
    auditor.shutdown();
    assert_eq!(auditor.append(vec![event(5)]), Err(AuditError::Stopped));
}

#[tokio::test]
async fn a_failed_sync_stops_the_log_until_restart() {
    let mem = Mem::default();
    let auditor = start(&mem);
    let first = auditor.append(vec![event(1)]).expect("written");
    within(auditor.durable(first)).await.expect("durable");
    mem.with(|d| {
        d.hold = true;
        d.fail_next = true;
    });
    let lost = auditor.append(vec![event(2)]).expect("written");
    // Written while the failing sync runs: covered by no successful fsync either.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = auditor.append(vec![event(3)]).expect("written");
    mem.with(|d| d.hold = false);
    assert_eq!(
        within(auditor.durable(lost)).await,
        Err(AuditError::Unavailable)
    );
    assert_eq!(
        within(auditor.durable(after)).await,
        Err(AuditError::Unavailable)
    );
    assert!(!auditor.is_durable(lost) && !auditor.is_durable(after));
    // Nothing more is taken, however long one waits; what was durable stays so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(auditor.append(vec![event(4)]), Err(AuditError::Unavailable));
    let queued = auditor.submit(event(5));
    assert_eq!(
        within(auditor.durable(queued)).await,
        Err(AuditError::Unavailable)
    );
    assert!(!auditor.healthy());
    assert!(auditor
        .last_error()
        .is_some_and(|e| e.contains("restart the gateway")));
    assert!(auditor.is_durable(first));
    auditor.shutdown();
}

#[tokio::test]
async fn a_statement_of_many_literals_keeps_a_bounded_record() {
    let mem = Mem::default();
    let auditor = start(&mem);
    let values: Vec<String> = (0..2000).map(|i| format!("'v{i}'")).collect();
    let sql = format!("SELECT ARRAY[{}]", values.join(","));
    let pending = Pending::Statement {
        meta: crate::record::StatementRecord::default(),
        sql: std::sync::Arc::from(sql.as_str()),
        params: Vec::new(),
    };
    let t = auditor.append(vec![pending]).expect("written");
    within(auditor.durable(t)).await.expect("durable");
    let (record, line) = mem.lines().pop().expect("a record");
    let Event::Statement(st) = record.event else {
        panic!("a statement record");
    };
    assert_eq!(st.literals.len(), super::redact::MAX_LITERALS);
    assert_eq!(
        st.literals_omitted,
        2000 - super::redact::MAX_LITERALS as u64
    );
    assert!(st.text_sha256.is_some(), "the whole is still covered");
    assert!(!line.contains("v1999"), "no literal in the clear");
    assert!(line.len() < 64 * 1024, "{} bytes", line.len());
}

#[tokio::test]
async fn the_process_tier_forwards_once_written_and_flushes_in_the_background() {
    let mem = Mem::default();
    let flush_interval = Duration::from_millis(400);
    let auditor = start_tier(&mem, 1_000_000, DurabilityTier::Process { flush_interval });
    mem.with(|d| d.hold = true);
    let t = auditor.append(vec![event(1)]).expect("written");
    // Written (in the store) and not on disk: the statement may go on at once.
    within(auditor.forwardable(t)).await.expect("forwardable");
    assert_eq!(mem.lines().len(), 1);
    assert!(!auditor.is_durable(t));
    // Its flush comes in the background without anyone waiting for it.
    mem.with(|d| d.hold = false);
    within(auditor.durable(t)).await.expect("durable");
    assert_eq!(auditor.stats().waits.load(Ordering::Relaxed), 1);

    // A disk that falls behind the interval: statements wait for it, as in the strict tier.
    mem.with(|d| d.hold = true);
    let old = auditor.append(vec![event(2)]).expect("written");
    within(auditor.forwardable(old)).await.expect("forwardable");
    tokio::time::sleep(flush_interval + Duration::from_millis(100)).await;
    let late = auditor.append(vec![event(3)]).expect("written");
    let waiting = tokio::time::timeout(Duration::from_millis(200), auditor.forwardable(late));
    assert!(waiting.await.is_err(), "forwarded while the disk is behind");
    mem.with(|d| d.hold = false);
    within(auditor.forwardable(late))
        .await
        .expect("forwardable");
    assert!(auditor.is_durable(late));
    auditor.shutdown();
}

#[tokio::test]
async fn a_wait_counts_the_fsyncs_it_saw_end() {
    let mem = Mem::default();
    let auditor = start(&mem);
    mem.with(|d| d.hold = true);
    let first = auditor.append(vec![event(1)]).expect("written");
    // The sync thread is inside the first fsync; the second record needs the next one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = auditor.append(vec![event(2)]).expect("written");
    let waiter = auditor.durable(second);
    let release = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        mem.with(|d| d.hold = false);
    };
    let (r, ()) = tokio::join!(waiter, release);
    r.expect("durable");
    assert!(auditor.is_durable(first));
    let s = auditor.stats();
    assert_eq!(s.waits.load(Ordering::Relaxed), 1);
    assert_eq!(
        s.wait_fsyncs.load(Ordering::Relaxed),
        2,
        "the running fsync and its own"
    );
    auditor.shutdown();
}

#[tokio::test]
async fn a_failed_background_fsync_leaves_its_trace_in_the_run_marker_and_a_clean_stop_none() {
    let flush_interval = Duration::from_millis(50);
    let tier = DurabilityTier::Process { flush_interval };
    let kept = |dir: &std::path::Path| crate::run_marker::previous(dir).expect("read");

    // A clean stop: everything on disk, the marker goes.
    let dir = tempfile::tempdir().expect("tempdir");
    let mem = Mem::default();
    let auditor = start_tier(&mem, 1_000_000, tier);
    auditor.keep_run_marker(
        crate::run_marker::RunMarker::create(dir.path(), flush_interval).expect("marker"),
    );
    let t = auditor.append(vec![event(1)]).expect("written");
    within(auditor.forwardable(t)).await.expect("forwardable");
    auditor.shutdown();
    assert!(kept(dir.path()).is_none(), "a clean stop leaves a marker");

    // The background fsync fails after the statement went on: the marker says so, and stays.
    let dir = tempfile::tempdir().expect("tempdir");
    let mem = Mem::default();
    let auditor = start_tier(&mem, 1_000_000, tier);
    auditor.keep_run_marker(
        crate::run_marker::RunMarker::create(dir.path(), flush_interval).expect("marker"),
    );
    mem.with(|d| d.fail_next = true);
    let t = auditor.append(vec![event(1)]).expect("written");
    within(auditor.forwardable(t))
        .await
        .expect("forwarded before the fsync");
    assert_eq!(
        within(auditor.durable(t)).await,
        Err(AuditError::Unavailable)
    );
    auditor.shutdown();
    match kept(dir.path()) {
        Some(Event::AuditUnsynced { reason, error, .. }) => {
            assert_eq!(reason, "fsync_failed");
            assert!(error.is_some_and(|e| e.contains("injected EIO")));
        }
        other => panic!("expected the failed fsync in the marker, got {other:?}"),
    }
}
