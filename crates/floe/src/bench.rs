//! `floe bench`: a produce + consume load over HTTP against a running agent.
//!
//! Producers send batches of fixed-size records as fast as acks come back; one consumer
//! per partition long-polls from offset 0. Each record carries its send time (µs) in the
//! header `t`, so consumers measure end-to-end latency (send → fetched).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use floe_client::{Client, FetchOptions};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

use crate::Conn;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    conn: Conn,
    /// More agent URLs (comma-separated): producers and consumers are spread over `--url`
    /// and these, e.g. three agents sharing one bucket and index.
    #[arg(long, value_delimiter = ',')]
    also: Vec<String>,
    /// Topic to use (created if missing). Default: a fresh `bench-<time>` topic.
    #[arg(long)]
    topic: Option<String>,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Concurrent producers.
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// Records per produce request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// How long producers run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Wire format for produce and fetch: json or arrow (Arrow IPC streams).
    #[arg(long, default_value = "json", value_parser = ["json", "arrow"])]
    format: String,
    /// Skip the consumers (produce only).
    #[arg(long)]
    no_consume: bool,
    /// Records carry one of 1 024 different values (cycled through), as `bench/peers`
    /// sends them, instead of one value for every record (which Parquet's dictionary
    /// makes unrealistically cheap to encode and store).
    #[arg(long)]
    distinct_values: bool,
    /// Records carry no key (JSON only): the agent puts each request's records in one
    /// partition, the next in turn. By default each producer's records are keyed
    /// `p<producer>-<i>`, so a request spreads over up to `--batch` partitions.
    #[arg(long, conflicts_with_all = ["idempotent", "transactional"])]
    keyless: bool,
    /// Offered load, records per second over all producers: each producer sends a
    /// request every `producers x batch / rate` seconds (staggered), and at once when its
    /// previous request was acked late, until it has caught up. Default: each producer
    /// sends its next request as soon as the previous one is acked (a closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Producers use producer sessions (RFC 0003): every request carries its sequence per
    /// partition, checked in the commit (JSON only).
    #[arg(long)]
    idempotent: bool,
    /// Producers write in transactions (RFC 0005) of `--transaction-requests` requests
    /// each: begin, produce, commit. Counted as produced at commit; consumers read
    /// committed data only, so end-to-end latency includes the transaction (JSON only).
    #[arg(long, conflicts_with = "idempotent")]
    transactional: bool,
    #[arg(long, default_value_t = 10)]
    transaction_requests: usize,
    /// Queue benchmark instead: preload `--records` records, then `--consumers` competing
    /// consumers receive (batches of `--batch`) and ack until all are acked; then, as the
    /// side-by-side baseline, a consumer group with as many members reads and commits the
    /// same backlog.
    #[arg(long)]
    queue: bool,
    #[arg(long, default_value_t = 5)]
    consumers: usize,
    #[arg(long, default_value_t = 50_000)]
    records: usize,
}

/// End-to-end latency needs the wall clock shared with the records' timestamps; the
/// benchmark is a client, not the engine.
#[allow(clippy::disallowed_methods)]
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn hist() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

/// An Arrow IPC produce body: send time in the key (`<µs>-<i>`), partitions spread
/// explicitly (Arrow records carry no headers here).
fn arrow_body(
    values: &[String],
    batch: usize,
    producer: usize,
    partitions: u32,
) -> anyhow::Result<Bytes> {
    let t = now_us();
    let keys: Vec<String> = (0..batch).map(|i| format!("{t}-{i}")).collect();
    let recs: Vec<floe_core::ipc::RecordParts<'_>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                Some(k.as_bytes()),
                pick(values, producer, batch, i).as_bytes(),
                Some(((producer + i) % partitions as usize) as i32),
            )
        })
        .collect();
    Ok(floe_core::ipc::encode_produce(&recs)?)
}

/// How often each of `producers` sends a request of `batch` records so that together they
/// offer `rate` records per second.
fn request_period(producers: usize, batch: usize, rate: f64) -> anyhow::Result<Duration> {
    if !(rate.is_finite() && rate > 0.0) {
        anyhow::bail!("--rate must be a positive number of records per second, got {rate}");
    }
    Duration::try_from_secs_f64(producers as f64 * batch as f64 / rate)
        .with_context(|| format!("--rate {rate}: no request period fits"))
}

/// A JSON produce body with `batch` records, each stamped with the current time.
fn body(values: &[String], batch: usize, producer: usize, keyed: bool) -> Bytes {
    let t = now_us();
    let len = values.first().map_or(0, String::len);
    let mut s = String::with_capacity(batch * (len + 64) + 16);
    s.push_str("{\"records\":[");
    for i in 0..batch {
        if i > 0 {
            s.push(',');
        }
        let value = pick(values, producer, batch, i);
        if keyed {
            s.push_str(&format!("{{\"key\":\"p{producer}-{i}\","));
        } else {
            s.push('{');
        }
        s.push_str(&format!(
            "\"value\":\"{value}\",\"headers\":{{\"t\":\"{t}\"}}}}"
        ));
    }
    s.push_str("]}");
    Bytes::from(s)
}

pub(crate) async fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.queue {
        return run_queue(a).await;
    }
    let period = a
        .rate
        .map(|r| request_period(a.producers, a.batch, r))
        .transpose()?;
    let client = Client::new(&a.conn.url)?;
    let mut clients = vec![client.clone()];
    for u in &a.also {
        clients.push(Client::new(u)?);
    }
    let topic = a
        .topic
        .clone()
        .unwrap_or_else(|| format!("bench-{}", now_us()));
    match client.create_topic(&topic, a.partitions).await {
        Ok(_) => {}
        Err(e) if e.code() == Some("topic_exists") => {}
        Err(e) => return Err(e.into()),
    }
    let puts_before = total_puts(&clients).await?;
    let value = Arc::new(value_pool(a.record_bytes, a.distinct_values));
    let produce_lat = Arc::new(Mutex::new(hist()?));
    let commit_lat = Arc::new(Mutex::new(hist()?));
    let e2e_lat = Arc::new(Mutex::new(hist()?));
    let produced = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);

    let arrow = a.format == "arrow";
    if arrow && a.keyless {
        anyhow::bail!("--keyless is for --format json (Arrow bodies name each record's partition)");
    }
    let partitions = a.partitions;
    let mut consumers = Vec::new();
    if !a.no_consume {
        for p in 0..a.partitions {
            let (c, topic, e2e, consumed, stop) = (
                clients[p as usize % clients.len()].clone(),
                topic.clone(),
                e2e_lat.clone(),
                consumed.clone(),
                stop_consumers.clone(),
            );
            consumers.push(tokio::spawn(async move {
                let mut offset = 0;
                let mut local = hist()?;
                while !stop.load(Ordering::Relaxed) {
                    let opts = FetchOptions {
                        max_records: Some(5000),
                        max_bytes: Some(8 << 20),
                        wait_ms: Some(500),
                        ..FetchOptions::default()
                    };
                    let (sent, next) = if arrow {
                        let Ok((recs, next, _)) = c.fetch_arrow(&topic, p, offset, opts).await
                        else {
                            continue;
                        };
                        let sent: Vec<Option<u64>> = recs
                            .iter()
                            .map(|r| {
                                let k = std::str::from_utf8(r.key.as_deref()?).ok()?;
                                k.split('-').next()?.parse().ok()
                            })
                            .collect();
                        (sent, next)
                    } else {
                        let Ok(r) = c.fetch(&topic, p, offset, opts).await else {
                            continue;
                        };
                        let sent = r
                            .records
                            .iter()
                            .map(|rec| rec.headers.get("t").and_then(|t| t.parse::<u64>().ok()))
                            .collect();
                        (sent, r.next_offset)
                    };
                    let now = now_us();
                    for t in sent.iter().flatten() {
                        let _ = local.record(now.saturating_sub(*t).max(1)).ok();
                    }
                    let _ = consumed.fetch_add(sent.len() as u64, Ordering::Relaxed);
                    offset = next;
                }
                let _ = e2e.lock().await.add(&local).ok();
                anyhow::Ok(())
            }));
        }
    }

    let mut producers = Vec::new();
    for i in 0..a.producers {
        let (c, topic, value, lat, produced, errors) = (
            clients[i % clients.len()].clone(),
            topic.clone(),
            value.clone(),
            produce_lat.clone(),
            produced.clone(),
            errors.clone(),
        );
        let batch = a.batch;
        let transactional = a.transactional && !arrow;
        let keyed = !a.keyless;
        let idempotent = (a.idempotent || transactional) && !arrow;
        let per_txn = a.transaction_requests.max(1);
        let commit_lat = commit_lat.clone();
        let mut ticker = match period {
            Some(period) => {
                let first =
                    tokio::time::Instant::now() + period.mul_f64(i as f64 / a.producers as f64);
                let mut t = tokio::time::interval_at(first, period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                Some(t)
            }
            _ => None,
        };
        producers.push(tokio::spawn(async move {
            let mut local = hist()?;
            let mut commits = hist()?;
            // Producer session: the body's keys are the same every request, so each
            // partition's share of a request (and so each sequence step) is fixed.
            let mut session = if idempotent {
                Some(c.init_producer(None).await?)
            } else {
                None
            };
            let mut in_txn = 0usize;
            let mut pending = 0u64;
            let mut per_partition: std::collections::BTreeMap<u32, i64> = Default::default();
            for k in 0..batch {
                let key = format!("p{i}-{k}");
                *per_partition
                    .entry(floe_core::partitioner::partition_for_key(
                        key.as_bytes(),
                        partitions,
                    ))
                    .or_default() += 1;
            }
            let mut next: std::collections::BTreeMap<u32, i64> =
                per_partition.keys().map(|p| (*p, 0)).collect();
            while Instant::now() < end {
                if let Some(t) = ticker.as_mut() {
                    let _ = t.tick().await;
                    if Instant::now() >= end {
                        break;
                    }
                }
                if let (true, 0, Some(s)) = (transactional, in_txn, session) {
                    // A transaction is the session's next epoch; sequences start at 0.
                    let t = c.begin_transaction(s.producer_id, s.epoch, None).await?;
                    session = Some(floe_api::ProducerSessionInfo {
                        producer_id: t.producer_id,
                        epoch: t.epoch,
                    });
                    next.values_mut().for_each(|v| *v = 0);
                }
                let t0 = Instant::now();
                let sent = if arrow {
                    c.produce_arrow(&topic, arrow_body(&value, batch, i, partitions)?)
                        .await
                } else if let Some(s) = session {
                    c.produce_raw_session(
                        &topic,
                        body(&value, batch, i, true),
                        s,
                        &next,
                        transactional,
                    )
                    .await
                } else {
                    c.produce_raw(&topic, body(&value, batch, i, keyed)).await
                };
                match sent {
                    Ok(r) => {
                        if session.is_some() {
                            for (p, n) in &per_partition {
                                *next.entry(*p).or_default() += n;
                            }
                        }
                        let _ = local.record(t0.elapsed().as_micros().max(1) as u64).ok();
                        if transactional {
                            pending += r.offsets.len() as u64;
                            in_txn += 1;
                        } else {
                            let _ = produced.fetch_add(r.offsets.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        let _ = errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                if let (true, Some(s)) = (transactional && in_txn > 0, session)
                    && (in_txn >= per_txn || Instant::now() >= end)
                {
                    let t1 = Instant::now();
                    match c
                        .commit_transaction(s.producer_id, s.epoch, Vec::new())
                        .await
                    {
                        Ok(_) => {
                            let _ = commits.record(t1.elapsed().as_micros().max(1) as u64).ok();
                            let _ = produced.fetch_add(pending, Ordering::Relaxed);
                        }
                        Err(_) => {
                            let _ = errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    in_txn = 0;
                    pending = 0;
                }
            }
            let _ = commit_lat.lock().await.add(&commits).ok();
            let _ = lat.lock().await.add(&local).ok();
            anyhow::Ok(())
        }));
    }
    for p in producers {
        p.await??;
    }
    let produce_secs = start.elapsed().as_secs_f64();
    let total = produced.load(Ordering::Relaxed);
    // Let consumers catch up (bounded).
    let catch_up = Instant::now() + Duration::from_secs(30);
    while !a.no_consume && consumed.load(Ordering::Relaxed) < total && Instant::now() < catch_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let consume_secs = start.elapsed().as_secs_f64();
    stop_consumers.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await??;
    }
    let puts = total_puts(&clients).await? - puts_before;
    let mib = (total as f64 * a.record_bytes as f64) / (1024.0 * 1024.0);
    let pl = produce_lat.lock().await;
    let el = e2e_lat.lock().await;
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "floe bench: {} producers x {} records x {} B, {} partitions, {}s, {}, topic {topic}",
        a.producers,
        a.batch,
        a.record_bytes,
        a.partitions,
        a.seconds,
        a.rate.map_or_else(
            || "closed loop".to_string(),
            |r| format!("offered {r:.0} records/s")
        )
    );
    println!(
        "produced      {total} records in {produce_secs:.1}s: {:.0} records/s, {:.1} MiB/s (errors: {})",
        total as f64 / produce_secs,
        mib / produce_secs,
        errors.load(Ordering::Relaxed)
    );
    println!(
        "produce ms    p50 {:.1}  p99 {:.1}  max {:.1}",
        ms(pl.value_at_quantile(0.5)),
        ms(pl.value_at_quantile(0.99)),
        ms(pl.max())
    );
    if a.transactional {
        let cl = commit_lat.lock().await;
        println!(
            "commit ms     p50 {:.1}  p99 {:.1}  max {:.1}  ({} transactions of up to {} requests)",
            ms(cl.value_at_quantile(0.5)),
            ms(cl.value_at_quantile(0.99)),
            ms(cl.max()),
            cl.len(),
            a.transaction_requests.max(1)
        );
    }
    if !a.no_consume {
        let got = consumed.load(Ordering::Relaxed);
        println!(
            "consumed      {got} records ({:.0} records/s over {consume_secs:.1}s)",
            got as f64 / consume_secs
        );
        println!(
            "end-to-end ms p50 {:.1}  p99 {:.1}  max {:.1}",
            ms(el.value_at_quantile(0.5)),
            ms(el.value_at_quantile(0.99)),
            ms(el.max())
        );
    }
    println!(
        "object PUTs   {puts:.0} ({:.2} per MiB)",
        if mib > 0.0 { puts / mib } else { 0.0 }
    );
    Ok(())
}

async fn total_puts(clients: &[Client]) -> anyhow::Result<f64> {
    let mut n = 0.0;
    for c in clients {
        n += c
            .metric("floe_object_store_requests_total{op=\"put\"}")
            .await?;
    }
    Ok(n)
}

/// Record `i` of a request from `producer`: producers and positions spread over the pool.
fn pick(values: &[String], producer: usize, batch: usize, i: usize) -> &str {
    values
        .get((producer * batch + i) % values.len().max(1))
        .map_or("", String::as_str)
}

/// The values records carry: one, or 1 024 different ones (`--distinct-values`).
fn value_pool(n: usize, distinct: bool) -> Vec<String> {
    let count: u64 = if distinct { 1024 } else { 1 };
    (0..count).map(|k| printable_value(n, k)).collect()
}

/// A printable, poorly compressible value of `n` bytes (`k` picks which).
fn printable_value(n: usize, k: u64) -> String {
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'a' + (seed % 26) as u8)
        })
        .collect()
}

/// Create `topic` and fill it with `records` records carrying `values` (not timed).
async fn preload(
    c: &Client,
    topic: &str,
    partitions: u32,
    records: usize,
    values: &[String],
) -> anyhow::Result<()> {
    let _ = c.create_topic(topic, partitions).await?;
    let per_req = 1000.min(records.max(1));
    let mut sent = 0;
    while sent < records {
        let n = per_req.min(records - sent);
        let _ = c.produce_raw(topic, body(values, n, sent, true)).await?;
        sent += n;
    }
    Ok(())
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// `floe bench --queue`: records acked per second by competing consumers, next to a
/// consumer group reading and committing the same backlog.
async fn run_queue(a: BenchArgs) -> anyhow::Result<()> {
    let mut clients = vec![Client::new(&a.conn.url)?];
    for u in &a.also {
        clients.push(Client::new(u)?);
    }
    let value = value_pool(a.record_bytes, a.distinct_values);
    let base = a
        .topic
        .clone()
        .unwrap_or_else(|| format!("qbench-{}", now_us()));
    let (qtopic, gtopic) = (format!("{base}-queue"), format!("{base}-group"));
    preload(&clients[0], &qtopic, a.partitions, a.records, &value).await?;
    preload(&clients[0], &gtopic, a.partitions, a.records, &value).await?;
    let total = a.records as u64;
    let mib = (total as f64 * a.record_bytes as f64) / (1024.0 * 1024.0);

    // Queue: receive a batch, ack it, repeat.
    let acked = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new((hist()?, hist()?)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.consumers {
        let (c, topic, acked, lat) = (
            clients[i % clients.len()].clone(),
            qtopic.clone(),
            acked.clone(),
            lat.clone(),
        );
        let batch = a.batch as u64;
        tasks.push(tokio::spawn(async move {
            let req = floe_api::ReceiveRequest {
                consumer: Some(format!("c{i}")),
                max_records: Some(batch),
                wait_ms: Some(200),
                visibility_timeout_ms: Some(60_000),
                encoding: None,
            };
            while acked.load(Ordering::Relaxed) < total {
                let t0 = Instant::now();
                let r = c.receive(&topic, "bench", &req).await?;
                let t1 = Instant::now();
                if r.records.is_empty() {
                    continue;
                }
                let receipts: Vec<String> = r.records.into_iter().map(|r| r.receipt).collect();
                let s = c.ack(&topic, "bench", receipts).await?;
                let t2 = Instant::now();
                let _ = acked.fetch_add(s.settled, Ordering::Relaxed);
                let mut l = lat.lock().await;
                l.0.record((t1 - t0).as_micros() as u64)?;
                l.1.record((t2 - t1).as_micros() as u64)?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let q_secs = started.elapsed().as_secs_f64();
    let l = lat.lock().await;
    let q_rate = total as f64 / q_secs;
    println!(
        "queue: {} consumers, {} partitions, batch {}: {} records acked in {:.2} s = {:.0} acked/s ({:.1} MiB/s); receive p50 {:.1} / p99 {:.1} ms, ack p50 {:.1} / p99 {:.1} ms",
        a.consumers,
        a.partitions,
        a.batch,
        total,
        q_secs,
        q_rate,
        mib / q_secs,
        ms(&l.0, 0.5),
        ms(&l.0, 0.99),
        ms(&l.1, 0.5),
        ms(&l.1, 0.99)
    );
    drop(l);

    // Baseline: a consumer group with as many members; fetch, commit, repeat.
    let mut members = Vec::new();
    for i in 0..a.consumers {
        let c = clients[i % clients.len()].clone();
        let m = c
            .join_group(&gtopic, "bench", &floe_api::JoinGroupRequest::default())
            .await?;
        members.push((c, m.member_id));
    }
    let read = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, member) in members {
        let (topic, read) = (gtopic.clone(), read.clone());
        let batch = a.batch as u64;
        tasks.push(tokio::spawn(async move {
            let mut cursor: Option<String> = None;
            while read.load(Ordering::Relaxed) < total {
                let r = c
                    .group_fetch(
                        &topic,
                        "bench",
                        &member,
                        cursor.as_deref(),
                        FetchOptions {
                            max_records: Some(batch),
                            wait_ms: Some(200),
                            ..FetchOptions::default()
                        },
                    )
                    .await?;
                let offsets: Vec<(u32, u64)> = r
                    .partitions
                    .iter()
                    .filter(|p| !p.records.is_empty())
                    .map(|p| (p.partition, p.next_offset))
                    .collect();
                let n: usize = r.partitions.iter().map(|p| p.records.len()).sum();
                if n > 0 {
                    c.commit(&topic, "bench", &member, r.generation, &offsets)
                        .await?;
                    let _ = read.fetch_add(n as u64, Ordering::Relaxed);
                }
                cursor = Some(r.cursor);
            }
            c.leave_group(&topic, "bench", &member).await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let g_secs = started.elapsed().as_secs_f64();
    let g_rate = total as f64 / g_secs;
    println!(
        "group baseline: {} members, same backlog: {:.2} s = {:.0} records/s committed ({:.1} MiB/s)",
        a.consumers,
        g_secs,
        g_rate,
        mib / g_secs
    );
    println!("ratio queue/group: {:.2}x", q_rate / g_rate);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_period_spreads_the_rate_over_producers() {
        // 8 producers x 100 records at 40 000 records/s: each sends every 20 ms.
        assert_eq!(
            request_period(8, 100, 40_000.0).unwrap(),
            Duration::from_millis(20)
        );
        assert_eq!(
            request_period(1, 1, 4.0).unwrap(),
            Duration::from_millis(250)
        );
        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY, 1e-300] {
            assert!(request_period(8, 100, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn distinct_values_are_distinct_and_the_default_is_one_value() {
        let one = value_pool(64, false);
        assert_eq!(one.len(), 1);
        let pool = value_pool(64, true);
        assert_eq!(pool.len(), 1024);
        assert!(pool.iter().all(|v| v.len() == 64));
        let unique: std::collections::HashSet<&String> = pool.iter().collect();
        assert_eq!(unique.len(), 1024);
        assert_eq!(pool[0], one[0], "the default value is the pool's first");
        // A request spreads its records over the pool, and producers differ.
        let b: serde_json::Value =
            serde_json::from_slice(&body(&pool, 3, 1, true)).unwrap_or_default();
        let vals: Vec<&str> = b["records"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x["value"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(vals, [&pool[3], &pool[4], &pool[5]]);
    }

    #[test]
    fn keyless_bodies_carry_no_key_and_keyed_ones_a_key_per_record() {
        let pool = value_pool(8, false);
        let keys = |keyed| -> Vec<Option<String>> {
            let b: serde_json::Value =
                serde_json::from_slice(&body(&pool, 3, 2, keyed)).unwrap_or_default();
            b["records"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|x| x.get("key").and_then(|k| k.as_str()).map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            keys(true),
            [
                Some("p2-0".into()),
                Some("p2-1".into()),
                Some("p2-2".into())
            ]
        );
        assert_eq!(keys(false), [None, None, None]);
    }
}
