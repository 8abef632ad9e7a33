//! Codec micro-benchmarks: splitting frames out of a read buffer and decoding the messages the
//! relay looks at. Run with `cargo bench -p phigate-wire`.

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use phigate_wire::backend::DataRow;
use phigate_wire::frame::{put_cstr, write_message};
use phigate_wire::frontend::FrontendMessage;
use phigate_wire::{Frame, FrameReader};

/// What pgbench -M extended sends per transaction: Parse, Bind, Describe, Execute, Sync.
fn extended_batch() -> BytesMut {
    let mut out = BytesMut::new();
    write_message(&mut out, b'P', |b| {
        put_cstr(b, "");
        put_cstr(b, "SELECT abalance FROM pgbench_accounts WHERE aid = $1;");
        b.put_i16(0);
    });
    write_message(&mut out, b'B', |b| {
        put_cstr(b, "");
        put_cstr(b, "");
        b.put_i16(0);
        b.put_i16(1);
        b.put_i32(5);
        b.extend_from_slice(b"12345");
        b.put_i16(0);
    });
    write_message(&mut out, b'D', |b| {
        b.put_u8(b'P');
        put_cstr(b, "");
    });
    write_message(&mut out, b'E', |b| {
        put_cstr(b, "");
        b.put_i32(0);
    });
    write_message(&mut out, b'S', |_| {});
    out
}

fn data_row(cols: usize) -> Frame {
    let mut out = BytesMut::new();
    write_message(&mut out, b'D', |b| {
        b.put_i16(cols as i16);
        for i in 0..cols {
            let v = format!("value-{i}-xxxxxxxxxxxx");
            b.put_i32(v.len() as i32);
            b.extend_from_slice(v.as_bytes());
        }
    });
    Frame::from_raw(out.freeze()).expect("valid")
}

fn bench(c: &mut Criterion) {
    let batch = extended_batch();
    let mut g = c.benchmark_group("frontend");
    g.throughput(Throughput::Elements(5));
    g.bench_function("split+decode extended batch (5 messages)", |b| {
        let mut reader = FrameReader::new(1 << 20);
        b.iter(|| {
            reader.buf_mut().extend_from_slice(&batch);
            let mut n = 0;
            while let Some(f) = reader.next_frame().expect("valid") {
                if FrontendMessage::decode(&f).is_ok() {
                    n += 1;
                }
            }
            assert_eq!(n, 5);
        })
    });
    g.finish();

    let row = data_row(15);
    let mut g = c.benchmark_group("backend");
    g.throughput(Throughput::Elements(1));
    g.bench_function("iterate DataRow of 15 columns", |b| {
        b.iter(|| {
            let total: usize = DataRow::decode(&row)
                .expect("row")
                .map(|v| v.expect("value").map_or(0, <[u8]>::len))
                .sum();
            assert!(total > 0);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
