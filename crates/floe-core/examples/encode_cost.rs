//! CPU cost of encoding one flush into a Parquet segment (issue #9: agent CPU per MiB).
//! Records like `floe bench`'s: a short key, a 1 KiB value of printable text.
//!   cargo run --release -p floe-core --example encode_cost -- [RECORDS_PER_FLUSH] [PARTITIONS] [FLUSHES] [same|distinct]
//! `same` (default): every value alike, as `floe bench` and `bench/peers` send them;
//! `distinct`: every value different (pseudo-random letters).
//! Deterministic work, so `valgrind --tool=callgrind` instruction counts compare builds.
use std::time::Instant;

use bytes::Bytes;
use floe_core::Record;
use floe_core::segment::{EncodeOptions, RunRef, encode_segment};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let records = args.next().transpose()?.unwrap_or(4000);
    let partitions = args.next().transpose()?.unwrap_or(8).max(1);
    let flushes = args.next().transpose()?.unwrap_or(50);
    let distinct = std::env::args().nth(4).is_some_and(|a| a == "distinct");
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut by_partition: Vec<Vec<Record>> = vec![Vec::new(); partitions];
    for i in 0..records {
        let value: Vec<u8> = (0..1024)
            .map(|j| {
                if distinct {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b'a' + (seed % 26) as u8
                } else {
                    b'a' + (j % 26) as u8
                }
            })
            .collect();
        by_partition[i % partitions].push(Record {
            timestamp_ms: 1_764_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("p{}-{}", i % 64, i % 100))),
            value: Bytes::from(value),
            headers: Vec::new(),
        });
    }
    let runs: Vec<RunRef<'_>> = by_partition
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(p, r)| RunRef {
            topic: "bench",
            partition: p as u32,
            records: r,
        })
        .collect();
    let mut bytes = 0usize;
    let start = Instant::now();
    for _ in 0..flushes {
        let (out, _) = encode_segment(&runs, EncodeOptions::default())?;
        bytes = out.len();
    }
    let el = start.elapsed().as_secs_f64();
    let mib = (records * 1024 * flushes) as f64 / (1024.0 * 1024.0);
    println!(
        "{records} records x 1 KiB over {partitions} partitions, {flushes} flushes: {:.2} ms per flush, {:.2} ms CPU per MiB of values, segment {bytes} B",
        el * 1e3 / flushes as f64,
        el * 1e3 / mib
    );
    Ok(())
}
