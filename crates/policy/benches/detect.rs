//! Content detectors: throughput over clinical-looking text (MB/s), with and without matches,
//! and over masked values that the prefilter skips. Run with `cargo bench -p phigate-policy`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use phigate_policy::detect::scrub;

/// A megabyte of note-like text: sentences with dates, doses, codes and, every few lines, an
/// identifier of each shape.
fn notes(with_identifiers: bool) -> Vec<u8> {
    let mut out = String::new();
    let mut i = 0u32;
    while out.len() < 1 << 20 {
        out.push_str(&format!(
            "Seen on 2024-03-{:02} for follow-up; BP 132/84, HR 71. Continue lisinopril 10 mg daily, \
             recheck A1c in 3 months (ICD E11.9). ",
            i % 28 + 1
        ));
        if with_identifiers && i.is_multiple_of(4) {
            out.push_str(&format!(
                "Call 555-{:03}-{:04} or mail pt{i}@example.org; SSN 078-05-{:04}; from 10.0.{}.{}. ",
                i % 1000,
                i % 10000,
                i % 10000,
                i % 256,
                (i * 7) % 256
            ));
        }
        i += 1;
    }
    out.into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("detect");
    for (name, text) in [
        ("notes with identifiers", notes(true)),
        ("notes without identifiers", notes(false)),
        (
            "masked tokens (prefilter)",
            "tok_de0f94a1e0d967c9 ".repeat((1 << 20) / 21).into_bytes(),
        ),
    ] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || text.clone(),
                |t| scrub(t),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    // Per row: what the gateway does to each row a masked role receives (the masking itself is
    // computed by the database, in the role's views): the detectors over every text value of a
    // demo patient row as the agent sees it (tokens, partial SSN and phone, generalized dates,
    // a free-text note).
    let row: Vec<Vec<u8>> = [
        "tok_5b1e0c93a2f4d7e8",
        "tok_0a9c7e11b3d2f465",
        "1962-01-01",
        "***-**-6789",
        "***-***-0142",
        "tok_77c0e2a9d41b3f06",
        "021**",
        "MRN-tok_c2d4e6f8a0b1c3d5",
        "Seen for follow-up; BP 132/84. Continue lisinopril 10 mg daily, recheck A1c in 3 months.",
        "female",
        "2024-03-01",
    ]
    .iter()
    .map(|v| v.as_bytes().to_vec())
    .collect();
    let mut g = c.benchmark_group("detect_per_row");
    g.throughput(Throughput::Elements(1));
    g.bench_function("masked patient row, 11 text values", |b| {
        b.iter_batched_ref(
            || row.clone(),
            |r| r.iter_mut().map(|v| scrub(v)).sum::<usize>(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
