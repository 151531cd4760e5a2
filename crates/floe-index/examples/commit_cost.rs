//! Cost of one index commit as a function of how many partitions a flush touches
//! (issue #9: the index commit is the wall at 1 000 partitions).
//!   cargo run --release -p floe-index --example commit_cost -- [RUNS_PER_COMMIT] [COMMITS] [PARTITIONS] [RECENT_LIMIT]
use std::collections::BTreeMap;
use std::time::Instant;

use floe_index::{Index, NewTopic, RunCommit, SegmentCommit, SqliteIndex};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u32>());
    let runs = args.next().transpose()?.unwrap_or(325);
    let commits = args.next().transpose()?.unwrap_or(2000);
    let partitions = args.next().transpose()?.unwrap_or(1000);
    let recent = args
        .next()
        .transpose()?
        .unwrap_or(floe_index::RECENT_RUNS_LIMIT);
    let dir = tempfile::tempdir()?;
    let ix = SqliteIndex::open(&dir.path().join("index.db"))
        .await?
        .with_recent_limit(recent);
    let topic = ix
        .create_topic(NewTopic {
            name: "t".into(),
            partitions,
            retention_ms: None,
            config: BTreeMap::new(),
            created_ms: 1,
            max_topics: 10,
        })
        .await?;
    let mut times = Vec::with_capacity(commits as usize);
    let mut next = 0u32;
    let start = Instant::now();
    for c in 0..commits {
        let mut rs = Vec::new();
        for i in 0..runs {
            let p = (next + i * 3) % partitions;
            rs.push(RunCommit {
                topic_id: topic.id,
                partition: p,
                records: 2,
                row_group_first: 0,
                row_group_count: 1,
                byte_start: u64::from(i) * 2048,
                byte_end: u64::from(i + 1) * 2048,
                min_timestamp_ms: 1,
                max_timestamp_ms: 1,
            });
        }
        rs.sort_by_key(|r| r.partition);
        rs.dedup_by_key(|r| r.partition);
        next = next.wrapping_add(7);
        let t = Instant::now();
        let _ = ix
            .commit_segment(SegmentCommit {
                key: format!("segments/0000000000001/{c:020}-agent.parquet"),
                size: 700_000,
                runs: rs,
                deadline_unix_ms: i64::MAX,
                created_ms: 0,
                state_writes: Vec::new(),
                idempotency: Vec::new(),
                producers: Vec::new(),
            })
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = start.elapsed().as_secs_f64();
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let q = |f: f64| times[((times.len() - 1) as f64 * f) as usize];
    println!(
        "runs/commit {runs} partitions {partitions} recent limit {recent} commits {commits}: mean {mean:.2} ms p50 {:.2} p99 {:.2} max {:.2} ({:.1} commits/s)",
        q(0.5),
        q(0.99),
        q(1.0),
        f64::from(commits) / total
    );
    Ok(())
}
