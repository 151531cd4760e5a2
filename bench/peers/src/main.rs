//! One load, four brokers: producers send batches of records and wait for the broker's
//! durable acknowledgement (Floe: HTTP 200 after the segment and the index commit; NATS
//! JetStream: PubAck; Redis Streams: XADD replies, with `appendfsync always` set by
//! bench/peers.sh; RabbitMQ: publisher confirms on a durable queue with persistent
//! messages). Prints one `RESULT` line per run for bench/peers.sh to collect.
//!
//! - `--mode throughput`: `--producers` closed-loop producers share `--records` records in
//!   batches of `--batch`; reports records/s, MiB/s and the batch-ack latency.
//! Every record is a distinct random alphanumeric value (a pool of 1 024, cycled), so no
//! broker's compression or deduplication gets an easy ride (Floe's segments are LZ4
//! Parquet; a repeated value would compress to almost nothing).
//!
//! - `--mode latency`: single records at a fixed `--rate` for `--seconds` (open loop: each
//!   latency is measured from the record's scheduled send time, so a stalled broker is not
//!   hidden by the generator waiting for it); reports produce p50/p99.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

const NAME: &str = "floebench";
/// Distinct record values per run.
const POOL: usize = 1024;

/// `POOL` random alphanumeric values of `len` bytes (xorshift: reproducible, no extra crate).
fn pool(len: usize) -> Vec<Bytes> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..POOL)
        .map(|_| {
            Bytes::from(
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        ALPHABET[(x % ALPHABET.len() as u64) as usize]
                    })
                    .collect::<Vec<u8>>(),
            )
        })
        .collect()
}

/// Records handed out so far by this process: picks the next values from the pool.
static NEXT_VALUE: AtomicU64 = AtomicU64::new(0);

fn next_values(n: usize) -> usize {
    (NEXT_VALUE.fetch_add(n as u64, Ordering::Relaxed) % POOL as u64) as usize
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Broker {
    Floe,
    Nats,
    Redis,
    Rabbitmq,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum FloeFormat {
    Json,
    Arrow,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    Throughput,
    Latency,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    broker: Broker,
    #[arg(long, value_enum, default_value = "throughput")]
    mode: Mode,
    #[arg(long, default_value_t = 8)]
    producers: usize,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Throughput mode: records in all.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Latency mode: records per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Latency mode: how long.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Broker address (default: the broker's standard local port).
    #[arg(long)]
    url: Option<String>,
    /// The broker's process id: its CPU time during the run is reported.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Floe's produce body: JSON, or an Arrow IPC stream.
    #[arg(long, value_enum, default_value = "json")]
    floe_format: FloeFormat,
}

/// A connection that can send a batch and wait for its durable acknowledgement.
#[derive(Clone)]
enum Sender {
    Floe {
        http: reqwest::Client,
        url: String,
        format: FloeFormat,
    },
    Nats(async_nats::jetstream::Context),
    Redis(redis::aio::MultiplexedConnection),
    Rabbit(lapin::Channel),
}

impl Sender {
    /// Send `n` records with values from `pool` and wait for their durable ack.
    async fn send(&mut self, pool: &[Bytes], n: usize) -> Result<()> {
        let first = next_values(n);
        let values = (0..n).map(|i| &pool[(first + i) % pool.len()]);
        match self {
            Self::Floe { http, url, format } => {
                let (body, content_type) = match format {
                    FloeFormat::Json => (floe_body(values), "application/json"),
                    FloeFormat::Arrow => {
                        let parts: Vec<floe_core::ipc::RecordParts<'_>> =
                            values.map(|v| (None, v.as_ref(), None)).collect();
                        (
                            floe_core::ipc::encode_produce(&parts)?,
                            floe_core::ipc::ARROW_STREAM,
                        )
                    }
                };
                let r = http
                    .post(format!("{url}/v1/topics/{NAME}/records"))
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("floe answered {}: {}", r.status(), r.text().await?);
                }
            }
            Self::Nats(js) => {
                let mut acks = Vec::with_capacity(n);
                for v in values {
                    acks.push(js.publish(NAME, v.clone()).await?);
                }
                for a in acks {
                    let _ = a.await?;
                }
            }
            Self::Redis(con) => {
                let mut pipe = redis::pipe();
                for v in values {
                    let _ = pipe
                        .cmd("XADD")
                        .arg(NAME)
                        .arg("*")
                        .arg("v")
                        .arg(v.as_ref());
                }
                let _: Vec<String> = pipe.query_async(con).await?;
            }
            Self::Rabbit(ch) => {
                let props = lapin::BasicProperties::default().with_delivery_mode(2);
                let mut confirms = Vec::with_capacity(n);
                for v in values {
                    confirms.push(
                        ch.basic_publish(
                            "",
                            NAME,
                            lapin::options::BasicPublishOptions::default(),
                            v,
                            props.clone(),
                        )
                        .await?,
                    );
                }
                for c in confirms {
                    let c = c.await?;
                    if !c.is_ack() {
                        bail!("rabbitmq nacked a message: {c:?}");
                    }
                }
            }
        }
        Ok(())
    }
}

/// A Floe produce body (values are alphanumeric: no JSON escaping needed).
fn floe_body<'a>(values: impl Iterator<Item = &'a Bytes>) -> Bytes {
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(b"{\"records\":[");
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"value\":\"");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// Fresh topic / stream / queue, and one sender per producer.
async fn setup(a: &Args) -> Result<Vec<Sender>> {
    let n = a.producers.max(1);
    match a.broker {
        Broker::Floe => {
            let url = a.url.clone().unwrap_or("http://127.0.0.1:7070".into());
            let http = reqwest::Client::new();
            let _ = http.delete(format!("{url}/v1/topics/{NAME}")).send().await?;
            let r = http
                .post(format!("{url}/v1/topics"))
                .json(&serde_json::json!({"name": NAME, "partitions": 1}))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("create topic: {} {}", r.status(), r.text().await?);
            }
            Ok((0..n)
                .map(|_| Sender::Floe {
                    http: http.clone(),
                    url: url.clone(),
                    format: a.floe_format,
                })
                .collect())
        }
        Broker::Nats => {
            use async_nats::jetstream::stream::{Config, StorageType};
            let url = a.url.clone().unwrap_or("127.0.0.1:4222".into());
            let mut out = Vec::new();
            for i in 0..n {
                let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
                if i == 0 {
                    let _ = js.delete_stream(NAME).await;
                    let _ = js
                        .create_stream(Config {
                            name: NAME.into(),
                            subjects: vec![NAME.into()],
                            storage: StorageType::File,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("create stream: {e}"))?;
                }
                out.push(Sender::Nats(js));
            }
            Ok(out)
        }
        Broker::Redis => {
            let url = a.url.clone().unwrap_or("redis://127.0.0.1:6379/".into());
            let client = redis::Client::open(url)?;
            let mut out = Vec::new();
            for i in 0..n {
                let mut con = client.get_multiplexed_async_connection().await?;
                if i == 0 {
                    let _: i64 = redis::cmd("DEL").arg(NAME).query_async(&mut con).await?;
                }
                out.push(Sender::Redis(con));
            }
            Ok(out)
        }
        Broker::Rabbitmq => {
            use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
            let url = a
                .url
                .clone()
                .unwrap_or("amqp://guest:guest@127.0.0.1:5672/%2f".into());
            let props = lapin::ConnectionProperties::default()
                .with_executor(tokio_executor_trait::Tokio::current())
                .with_reactor(tokio_reactor_trait::Tokio);
            let conn = lapin::Connection::connect(&url, props).await?;
            let admin = conn.create_channel().await?;
            let _ = admin
                .queue_delete(NAME, QueueDeleteOptions::default())
                .await;
            let admin = conn.create_channel().await?;
            let _ = admin
                .queue_declare(
                    NAME,
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await?;
            let mut out = Vec::new();
            for _ in 0..n {
                let ch = conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                out.push(Sender::Rabbit(ch));
            }
            // The connection lives as long as its channels are used.
            std::mem::forget(conn);
            Ok(out)
        }
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn throughput(a: &Args, senders: Vec<Sender>, payload: Arc<Vec<Bytes>>) -> Result<(f64, Histogram<u64>)> {
    let next = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut s in senders {
        let (next, hist, payload) = (next.clone(), hist.clone(), payload.clone());
        let (total, batch) = (a.records, a.batch as u64);
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3)?;
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= total {
                    break;
                }
                let n = batch.min(total - from) as usize;
                let t = Instant::now();
                s.send(&payload, n).await?;
                local.record(t.elapsed().as_micros().max(1) as u64)?;
            }
            hist.lock().await.add(&local)?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let h = hist.lock().await.clone();
    Ok((secs, h))
}

async fn latency(a: &Args, senders: Vec<Sender>, payload: Arc<Vec<Bytes>>) -> Result<(f64, Histogram<u64>)> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let total = a.rate * a.seconds;
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let mut s = senders[i as usize % senders.len()].clone();
        let (hist, payload) = (hist.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            s.send(&payload, 1).await?;
            let us = (tokio::time::Instant::now() - due).as_micros().max(1) as u64;
            hist.lock().await.record(us)?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let h = hist.lock().await.clone();
    Ok((secs, h))
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let payload = Arc::new(pool(a.record_bytes));
    let senders = setup(&a).await.context("setting up the broker")?;
    let cpu0 = a.broker_pid.and_then(cpu_seconds);
    let (secs, h) = match a.mode {
        Mode::Throughput => throughput(&a, senders, payload).await?,
        Mode::Latency => latency(&a, senders, payload).await?,
    };
    let cpu = match (cpu0, a.broker_pid.and_then(cpu_seconds)) {
        (Some(c0), Some(c1)) => format!("{:.0}", (c1 - c0) / secs * 100.0),
        _ => "-".into(),
    };
    let records = h.len()
        * if a.mode == Mode::Throughput {
            a.batch as u64
        } else {
            1
        };
    let records = records.min(if a.mode == Mode::Throughput {
        a.records
    } else {
        a.rate * a.seconds
    });
    let rate = records as f64 / secs;
    println!(
        "RESULT broker={:?}{} mode={:?} producers={} records={} secs={:.2} rec_s={:.0} mib_s={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} broker_cpu_pct={}",
        a.broker,
        if a.broker == Broker::Floe && a.floe_format == FloeFormat::Arrow {
            "-arrow"
        } else {
            ""
        },
        a.mode,
        a.producers,
        records,
        secs,
        rate,
        rate * a.record_bytes as f64 / (1024.0 * 1024.0),
        ms(&h, 0.5),
        ms(&h, 0.99),
        h.max() as f64 / 1000.0,
        cpu
    );
    Ok(())
}
