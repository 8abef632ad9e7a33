//! The per-statement CPU cost of the audit, without the disk: what a session spends on the
//! records of one statement (`statement`: redaction with keyed hashes of literals and
//! parameters, JSON, SHA-256 chaining; its `statement_end`), appended to a store that keeps
//! nothing. Records per second per core = 1 / time.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use phigate_audit::checkpoint::Checkpoint;
use phigate_audit::store::{CheckpointSink, Store, Syncer};
use phigate_audit::writer::Options;
use phigate_audit::{
    Auditor, DurabilityTier, Event, Param, Pending, Record, SigningKey, StatementRecord,
};

/// A store that keeps nothing: the writer's CPU cost alone.
struct Nowhere;

impl CheckpointSink for Nowhere {
    fn write(&self, _cp: &Checkpoint) -> std::io::Result<()> {
        Ok(())
    }
}

impl Store for Nowhere {
    fn write(&mut self, _first_seq: u64, _lines: &[u8]) -> std::io::Result<bool> {
        Ok(false)
    }
    fn syncer(&self) -> Option<Arc<dyn Syncer>> {
        None
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn broken(&self) -> bool {
        false
    }
    fn checkpoints(&self) -> Arc<dyn CheckpointSink> {
        Arc::new(Nowhere)
    }
    fn wants_rotation(&self, _next_bytes: usize) -> bool {
        false
    }
}

fn auditor() -> Auditor {
    Auditor::start(
        Box::new(Nowhere),
        (0, phigate_audit::chain::GENESIS.to_owned()),
        Options {
            checkpoint_every: u64::MAX,
            checkpoint_interval: Duration::from_secs(3600),
            full_text: false,
            signing: SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("key"))
                .expect("key"),
            hmac_key: vec![7; 32],
            durability: DurabilityTier::Strict,
        },
        Vec::new(),
    )
}

fn meta(n: u64, protocol: &str) -> StatementRecord {
    StatementRecord {
        session: "9f86d081884c7d65".into(),
        subject: "clinician@example.org".into(),
        role: "clinician".into(),
        n,
        protocol: protocol.into(),
        kinds: vec!["read".into()],
        tables: vec!["public.patients:select".into()],
        masked_columns: vec!["public.patients.ssn".into(), "public.patients.name".into()],
        decision: "allow".into(),
        ..Default::default()
    }
}

/// pgbench's extended point read: one bound parameter.
fn extended(n: u64) -> Pending {
    Pending::Statement {
        meta: meta(n, "extended"),
        sql: "SELECT id, name, birth_date FROM patients WHERE id = $1".into(),
        params: vec![Some(Param {
            binary: false,
            value: (n % 100_000).to_string().into_bytes(),
        })],
    }
}

/// The same read over the simple protocol: the literal is redacted and hashed.
fn simple(n: u64) -> Pending {
    Pending::Statement {
        meta: meta(n, "simple"),
        sql: format!(
            "SELECT id, name, birth_date FROM patients WHERE id = {}",
            n % 100_000
        )
        .into(),
        params: Vec::new(),
    }
}

fn end(n: u64) -> Pending {
    Pending::Event(Event::StatementEnd {
        session: "9f86d081884c7d65".into(),
        n,
        sqlstate: "00000".into(),
        rows: Some(1),
        command: Some("SELECT".into()),
        duration_us: 180,
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit_statement_cpu");
    g.throughput(Throughput::Elements(1));
    let a = auditor();
    let mut n = 0u64;
    g.bench_function("extended_statement_and_end", |b| {
        b.iter(|| {
            n += 1;
            a.append(vec![extended(n)]).expect("append");
            a.submit(end(n));
        })
    });
    g.bench_function("simple_statement_and_end", |b| {
        b.iter(|| {
            n += 1;
            a.append(vec![simple(n)]).expect("append");
            a.submit(end(n));
        })
    });
    g.bench_function("extended_statement", |b| {
        b.iter(|| {
            n += 1;
            a.append(vec![extended(n)]).expect("append");
        })
    });
    a.shutdown();

    // The chain's line alone: JSON and SHA-256 of a redacted statement record.
    let record = Record {
        seq: 1,
        ts: "2026-12-05T07:00:00.000000Z".into(),
        prev: phigate_audit::chain::GENESIS.into(),
        event: Event::Statement(StatementRecord {
            text: "SELECT id, name, birth_date FROM patients WHERE id = $1".into(),
            fingerprint: "0123456789abcdef0123456789abcdef".into(),
            params: vec![Some("hmac:0123456789abcdef0123456789abcdef".into())],
            ..meta(1, "extended")
        }),
    };
    let mut out = Vec::with_capacity(4096);
    g.bench_function("encode_statement_line", |b| {
        b.iter(|| {
            out.clear();
            phigate_audit::chain::encode(&record, &mut out).expect("encode")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
