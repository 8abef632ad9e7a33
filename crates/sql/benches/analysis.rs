//! Analysis cost: cold (parse + walk), cached, and a literal-bearing statement whose folded key
//! is cached. Run with `cargo bench -p phigate-sql`.

use criterion::{criterion_group, criterion_main, Criterion};
use phigate_sql::{analyze, Analyzer};

const STATEMENTS: [(&str, &str); 3] = [
    (
        "pgbench select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    ),
    (
        "join + cte",
        "WITH recent AS (SELECT patient_id, max(admitted_at) AS last FROM encounters GROUP BY 1) \
         SELECT p.mrn, p.last_name, r.last FROM patients p JOIN recent r ON r.patient_id = p.id \
         WHERE p.state = 'MA' ORDER BY r.last DESC LIMIT 50",
    ),
    (
        "update",
        "UPDATE encounters SET discharged_at = now() WHERE id = 42 AND discharged_at IS NULL",
    ),
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("analysis");
    for (name, sql) in STATEMENTS {
        g.bench_function(format!("cold: {name}"), |b| b.iter(|| analyze(sql)));
        let cache = Analyzer::default();
        cache.analyze(sql);
        g.bench_function(format!("cached: {name}"), |b| b.iter(|| cache.analyze(sql)));
    }
    let cache = Analyzer::default();
    cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1;");
    let mut aid = 0u32;
    g.bench_function(
        "folded literal hit: pgbench select with a new aid each time",
        |b| {
            b.iter(|| {
                aid = aid.wrapping_add(7919);
                cache.analyze(&format!(
                    "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
                ))
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
