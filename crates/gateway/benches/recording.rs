//! The per-statement CPU cost of a session's recording (shape mode, the default for an unmasked
//! role): the `statement` line and what the database answers a point read (RowDescription,
//! DataRow, CommandComplete, ReadyForQuery) turned into `columns`, `complete` and `ready`
//! lines. Statements per second per core = 1 / time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use phigate::auth::{Credential, Identity, RoleName, Subject};
use phigate::config::Config;

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// What PostgreSQL answers `SELECT id, name, birth_date FROM patients WHERE id = $1`.
fn answer() -> Vec<u8> {
    let mut rd = 3u16.to_be_bytes().to_vec();
    for (name, oid) in [("id", 23u32), ("name", 25), ("birth_date", 1082)] {
        rd.extend_from_slice(name.as_bytes());
        rd.push(0);
        rd.extend_from_slice(&16384u32.to_be_bytes());
        rd.extend_from_slice(&1u16.to_be_bytes());
        rd.extend_from_slice(&oid.to_be_bytes());
        rd.extend_from_slice(&(-1i16).to_be_bytes());
        rd.extend_from_slice(&(-1i32).to_be_bytes());
        rd.extend_from_slice(&0u16.to_be_bytes());
    }
    let mut row = 3u16.to_be_bytes().to_vec();
    for v in [&b"42"[..], b"Patient 42", b"1970-01-01"] {
        row.extend_from_slice(&(v.len() as i32).to_be_bytes());
        row.extend_from_slice(v);
    }
    let mut out = message(b'T', &rd);
    out.extend(message(b'D', &row));
    out.extend(message(b'C', b"SELECT 1\0"));
    out.extend(message(b'Z', b"I"));
    out
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let text = format!(
        "data_dir = \"{}\"\n[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\ndatabase = \"db\"\nuser = \"app\"\n\
         [[role]]\nname = \"clinician\"\nrecord = \"shape\"\n[[role.grant]]\nschema = \"public\"\n\
         actions = [\"select\"]\n",
        dir.path().display()
    );
    let config = Config::parse(&text, &dir.path().join("phigate.toml")).expect("config");
    let audit = phigate::audit::open(&config).expect("audit").expect("on");
    let recorder = phigate::recording::Recorder::start(&config, &audit)
        .expect("recorder")
        .expect("on");
    let role = config
        .policy()
        .expect("policy")
        .role("clinician")
        .expect("role");
    let identity = Identity {
        subject: Subject("clinician@example.org".into()),
        role: RoleName("clinician".into()),
        groups: Vec::new(),
        issuer: "static".into(),
        credential: Credential::StaticToken { sha256: [0; 32] },
        expires_at: None,
    };
    let answer = answer();
    let mut g = c.benchmark_group("recording_statement_cpu");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    let mut n = 0u64;
    let mut tapes = 0u64;
    g.bench_function("shape_point_read", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // A fresh session every 1,000 statements: its buffer stays under the cap
                // whether or not the writer thread keeps up, so every line is made.
                tapes += 1;
                let session: Arc<str> = format!("{tapes:016x}").into();
                let tape = recorder.tape(&session, &identity, &role).expect("tape");
                let k = (iters - done).min(1000);
                let start = Instant::now();
                for _ in 0..k {
                    n += 1;
                    tape.statement(n);
                    tape.batch().bytes(&answer, false);
                }
                total += start.elapsed();
                done += k;
            }
            total
        })
    });
    g.finish();
    audit.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
