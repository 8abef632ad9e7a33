//! Audit append throughput with group commit: records per second and fsyncs per record, with
//! 1, 8 and 64 concurrent submitters each waiting for durability (as sessions do).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use phigate_audit::{Pending, Setup, SigningKey, StatementRecord};

fn setup(dir: &std::path::Path) -> phigate_audit::Auditor {
    phigate_audit::open(
        Setup {
            dir: dir.to_owned(),
            mirror_dir: None,
            segment_max_bytes: 256 << 20,
            retention: Duration::from_secs(3600 * 24 * 365),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            full_text: false,
            signing_pkcs8: SigningKey::generate_pkcs8().expect("key"),
            hmac_key: vec![7; 32],
            durability: phigate_audit::DurabilityTier::Strict,
        },
        Vec::new(),
    )
    .expect("open")
}

fn statement(i: u64) -> Pending {
    Pending::Statement {
        meta: StatementRecord {
            session: "bench".into(),
            subject: "agent@example.org".into(),
            role: "ai-agent".into(),
            n: i,
            protocol: "simple".into(),
            kinds: vec!["read".into()],
            tables: vec!["public.pgbench_accounts:select".into()],
            decision: "allow".into(),
            ..Default::default()
        },
        sql: format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i}").into(),
        params: Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("audit_append_durable");
    g.sample_size(10);
    for writers in [1usize, 8, 64] {
        let dir = tempfile::tempdir().expect("dir");
        let auditor = Arc::new(setup(dir.path()));
        g.bench_function(format!("{writers}_writers_x_200"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    rt.block_on(async {
                        let mut tasks = Vec::new();
                        for w in 0..writers {
                            let a = auditor.clone();
                            tasks.push(tokio::spawn(async move {
                                for i in 0..200u64 {
                                    a.write(statement(w as u64 * 1000 + i))
                                        .await
                                        .expect("durable");
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.expect("join");
                        }
                    });
                    total += start.elapsed();
                }
                total
            })
        });
        let s = auditor.stats();
        let records = s.records.load(std::sync::atomic::Ordering::Relaxed);
        let fsyncs = s.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
        let waits = s.waits.load(std::sync::atomic::Ordering::Relaxed);
        let wait_fsyncs = s.wait_fsyncs.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "{writers} writers: {records} records in {fsyncs} fsyncs ({:.1} records per fsync); \
             {waits} waits saw {wait_fsyncs} fsyncs end ({:.2} per wait)",
            records as f64 / fsyncs.max(1) as f64,
            wait_fsyncs as f64 / waits.max(1) as f64
        );
        auditor.shutdown();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
