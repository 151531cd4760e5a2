//! Client subcommands: topics, produce, consume, groups, queues.

use std::io::BufRead;

use anyhow::Context;
use clap::{Args, Subcommand};
use floe_api::{FetchedRecord, JoinGroupRequest, ProduceRecord, ReceiveRequest, SettleRequest};
use floe_client::{Client, FetchOptions};

use crate::Conn;

#[derive(Subcommand, Debug)]
pub(crate) enum TopicsCmd {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Drop records older than this (by record time, whole runs).
        #[arg(long)]
        retention_ms: Option<i64>,
        /// Keep at most this many bytes per partition (topic config `retention.bytes`).
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// More topic config, KEY=VALUE (e.g. queue.ordering=key); repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// List topics.
    List,
    /// Show partitions and offsets of a topic.
    Describe { name: String },
    /// Delete a topic and its records.
    Delete { name: String },
    /// List the objects (and the rows in them) that make up a topic's committed log, or
    /// with --duckdb print the DuckDB query that reads exactly that log from the bucket.
    Files {
        name: String,
        #[arg(long)]
        partition: Option<u32>,
        /// First offset (default: each partition's start).
        #[arg(long)]
        from: Option<u64>,
        /// End offset, exclusive (default: each partition's end).
        #[arg(long)]
        to: Option<u64>,
        /// Print a DuckDB query over the bucket at this location (a local folder such as
        /// ./floe-data/bucket, or s3://bucket/prefix with DuckDB's httpfs).
        #[arg(long, value_name = "BUCKET")]
        duckdb: Option<String>,
    },
}

pub(crate) async fn topics(conn: &Conn, cmd: TopicsCmd) -> anyhow::Result<()> {
    let c = Client::new(&conn.url)?;
    let out = match cmd {
        TopicsCmd::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            config,
        } => {
            let mut cfg = std::collections::BTreeMap::new();
            for kv in config {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--config {kv:?}: expected KEY=VALUE"))?;
                let _ = cfg.insert(k.to_string(), v.to_string());
            }
            if let Some(b) = retention_bytes {
                let _ = cfg.insert("retention.bytes".to_string(), b.to_string());
            }
            let req = floe_api::CreateTopicRequest {
                name,
                partitions: i64::from(partitions),
                retention_ms,
                config: (!cfg.is_empty()).then_some(cfg),
            };
            serde_json::to_string_pretty(&c.create_topic_with(req).await?)?
        }
        TopicsCmd::List => serde_json::to_string_pretty(&c.list_topics().await?)?,
        TopicsCmd::Describe { name } => {
            serde_json::to_string_pretty(&c.describe_topic(&name).await?)?
        }
        TopicsCmd::Delete { name } => {
            c.delete_topic(&name).await?;
            format!("deleted {name}")
        }
        TopicsCmd::Files {
            name,
            partition,
            from,
            to,
            duckdb,
        } => {
            let files = c.topic_files_complete(&name, partition, from, to).await?;
            match duckdb {
                Some(bucket) => floe_client::analytics::duckdb_sql(&files, &bucket),
                None => serde_json::to_string_pretty(&files)?,
            }
        }
    };
    println!("{out}");
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct ProduceArgs {
    #[command(flatten)]
    conn: Conn,
    topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Key for every record.
    #[arg(long)]
    key: Option<String>,
    /// Partition for every record (default: by key, else one partition per request, in turn).
    #[arg(long)]
    partition: Option<u32>,
    /// Lines per produce request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Attempts per request on a retryable failure (503, timeout, connection error). The
    /// records go through an idempotent producer session (RFC 0003): a retry never writes
    /// a batch twice.
    #[arg(long, default_value_t = 10)]
    attempts: u32,
    /// Producer name: a new run with the same name fences an older one still running.
    #[arg(long)]
    producer_name: Option<String>,
    /// Produce every line in one transaction (RFC 0005): consumers see all of them at once
    /// or, if the run fails or is interrupted, none (the transaction is aborted, or times
    /// out).
    #[arg(long)]
    transactional: bool,
    /// With --transactional: the transaction's timeout.
    #[arg(long, requires = "transactional")]
    transaction_timeout_ms: Option<u64>,
}

pub(crate) async fn produce(a: ProduceArgs) -> anyhow::Result<()> {
    let c = Client::new(&a.conn.url)?;
    let reader: Box<dyn BufRead> = match &a.file {
        Some(f) => Box::new(std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut producer = floe_client::IdempotentProducer::new(c, a.producer_name.as_deref())
        .with_retry(floe_client::RetryPolicy {
            attempts: a.attempts.max(1),
            ..floe_client::RetryPolicy::default()
        });
    if a.transactional {
        let t = producer.begin(a.transaction_timeout_ms).await?;
        eprintln!(
            "transaction begun: producer {} epoch {}",
            t.producer_id, t.epoch
        );
    }
    let mut batch = Vec::new();
    let mut total = 0usize;
    let mut lines = reader.lines();
    loop {
        let line = lines.next().transpose()?;
        let end = line.is_none();
        if let Some(line) = line {
            batch.push(ProduceRecord {
                key: a.key.clone(),
                value: Some(line),
                partition: a.partition.map(i64::from),
                ..ProduceRecord::default()
            });
        }
        if !batch.is_empty() && (end || batch.len() >= a.batch.max(1)) {
            let r = match producer.send(&a.topic, std::mem::take(&mut batch)).await {
                Ok(r) => r,
                Err(e) => {
                    if producer.in_transaction() {
                        let _ = producer.abort().await;
                        eprintln!("transaction aborted: nothing of it is visible");
                    }
                    return Err(e.into());
                }
            };
            for o in &r.offsets {
                eprintln!("partition {} offset {}", o.partition, o.offset);
            }
            total += r.offsets.len();
        }
        if end {
            break;
        }
    }
    if a.transactional {
        let _ = producer.commit(Vec::new()).await?;
        eprintln!("transaction committed");
    }
    eprintln!("produced {total} records");
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(crate) enum TxnCmd {
    /// List open transactions and half-messages (with --all, also ended ones still
    /// remembered) and the partitions they hold back.
    List {
        #[arg(long)]
        all: bool,
    },
    /// Abort a transaction (an operator releasing a stuck one before its timeout).
    Abort { producer_id: i64, epoch: u32 },
}

pub(crate) async fn transactions(conn: &Conn, cmd: TxnCmd) -> anyhow::Result<()> {
    let c = Client::new(&conn.url)?;
    let out = match cmd {
        TxnCmd::List { all } => serde_json::to_string_pretty(&c.transactions(all).await?)?,
        TxnCmd::Abort { producer_id, epoch } => {
            serde_json::to_string_pretty(&c.abort_transaction(producer_id, epoch).await?)?
        }
    };
    println!("{out}");
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(crate) enum HalfCmd {
    /// Prepare a half-message: the values (one record each) are stored, invisible until
    /// committed; prints the handle. If neither commit nor rollback comes in time, the
    /// agent asks --check-url.
    Prepare {
        topic: String,
        /// `POST {"handle", ...}` answered `{"outcome": "commit"|"rollback"|"unknown"}`.
        #[arg(long)]
        check_url: String,
        #[arg(long)]
        key: Option<String>,
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Commit a half-message: its records become visible.
    Commit { handle: String },
    /// Roll a half-message back: its records are never served.
    Rollback { handle: String },
}

pub(crate) async fn half(conn: &Conn, cmd: HalfCmd) -> anyhow::Result<()> {
    let c = Client::new(&conn.url)?;
    let out = match cmd {
        HalfCmd::Prepare {
            topic,
            check_url,
            key,
            values,
        } => {
            let records = values
                .into_iter()
                .map(|v| ProduceRecord {
                    key: key.clone(),
                    value: Some(v),
                    ..ProduceRecord::default()
                })
                .collect();
            serde_json::to_string_pretty(&c.prepare_half(&topic, records, &check_url).await?)?
        }
        HalfCmd::Commit { handle } => {
            serde_json::to_string_pretty(&c.end_half(&handle, true).await?)?
        }
        HalfCmd::Rollback { handle } => {
            serde_json::to_string_pretty(&c.end_half(&handle, false).await?)?
        }
    };
    println!("{out}");
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct ConsumeArgs {
    #[command(flatten)]
    conn: Conn,
    topic: String,
    #[arg(long, default_value_t = 0)]
    partition: u32,
    /// Start at offset 0.
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset (default: the end of the log).
    #[arg(long)]
    offset: Option<u64>,
    /// Keep waiting for new records.
    #[arg(long)]
    follow: bool,
    /// Print records as JSON lines (default: values only).
    #[arg(long)]
    json: bool,
    /// Consume as a member of this consumer group: read the member's assigned partitions
    /// from the group's committed offsets, and commit after printing each batch.
    #[arg(long, conflicts_with_all = ["offset", "from_beginning"])]
    group: Option<String>,
    /// Member id to (re)join the group with (default: a new one).
    #[arg(long, requires = "group")]
    member: Option<String>,
}

fn print_record(json: bool, rec: &FetchedRecord, value: Option<Vec<u8>>) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(rec)?);
    } else {
        println!("{}", String::from_utf8_lossy(&value.unwrap_or_default()));
    }
    Ok(())
}

/// `floe consume --group G`: join, fetch, print, commit; leave on exit (or Ctrl-C).
async fn consume_group(c: &Client, a: &ConsumeArgs, group: &str) -> anyhow::Result<()> {
    let joined = c
        .join_group(
            &a.topic,
            group,
            &JoinGroupRequest {
                member_id: a.member.clone(),
                ..JoinGroupRequest::default()
            },
        )
        .await?;
    let member = joined.member_id;
    eprintln!(
        "joined group {group} as {member} (generation {}, partitions {:?})",
        joined.generation, joined.partitions
    );
    let run = async {
        let mut cursor: Option<String> = None;
        loop {
            let r = c
                .group_fetch(
                    &a.topic,
                    group,
                    &member,
                    cursor.as_deref(),
                    FetchOptions {
                        wait_ms: a.follow.then_some(5_000),
                        ..FetchOptions::default()
                    },
                )
                .await?;
            let mut commits = Vec::new();
            for p in &r.partitions {
                for rec in &p.records {
                    print_record(a.json, rec, rec.value_bytes())?;
                }
                if !p.records.is_empty() {
                    commits.push((p.partition, p.next_offset));
                }
            }
            if !commits.is_empty() {
                // Committed only after the records were printed: at-least-once.
                c.commit(&a.topic, group, &member, r.generation, &commits)
                    .await?;
            }
            let caught_up = r.partitions.iter().all(|p| p.next_offset >= p.end_offset);
            if !a.follow && caught_up {
                return anyhow::Ok(());
            }
            cursor = Some(r.cursor);
        }
    };
    let out = tokio::select! {
        r = run => r,
        r = tokio::signal::ctrl_c() => r.map_err(anyhow::Error::from),
    };
    c.leave_group(&a.topic, group, &member).await?;
    out
}

pub(crate) async fn consume(a: ConsumeArgs) -> anyhow::Result<()> {
    let c = Client::new(&a.conn.url)?;
    if let Some(g) = &a.group {
        return consume_group(&c, &a, g).await;
    }
    let mut offset = match (a.from_beginning, a.offset) {
        (true, _) => 0,
        (false, Some(o)) => o,
        (false, None) => {
            let d = c.describe_topic(&a.topic).await?;
            d.partitions
                .iter()
                .find(|p| p.partition == a.partition)
                .map(|p| p.stable_offset)
                .context("no such partition")?
        }
    };
    loop {
        let wait = if a.follow { Some(10_000) } else { None };
        let r = c
            .fetch(
                &a.topic,
                a.partition,
                offset,
                FetchOptions {
                    wait_ms: wait,
                    ..FetchOptions::default()
                },
            )
            .await?;
        for rec in &r.records {
            print_record(a.json, rec, rec.value_bytes())?;
        }
        offset = r.next_offset;
        // Read committed: the end is the stable offset (RFC 0005).
        if !a.follow && offset >= r.stable_offset {
            return Ok(());
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum GroupCmd {
    /// Show a consumer group: generation, members, committed offsets, lag.
    Describe { topic: String, group: String },
    /// List the consumer groups of a topic.
    List { topic: String },
}

pub(crate) async fn group(conn: &Conn, cmd: GroupCmd) -> anyhow::Result<()> {
    let c = Client::new(&conn.url)?;
    let out = match cmd {
        GroupCmd::Describe { topic, group } => {
            serde_json::to_string_pretty(&c.describe_group(&topic, &group).await?)?
        }
        GroupCmd::List { topic } => serde_json::to_string_pretty(&c.list_groups(&topic).await?)?,
    };
    println!("{out}");
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(crate) enum QueueCmd {
    /// Receive records (printed as JSON lines, each with its `receipt`).
    Receive {
        topic: String,
        group: String,
        /// Most records to receive.
        #[arg(long, short = 'n', default_value_t = 10)]
        max: u64,
        /// Long-poll this long when nothing is available.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// Keep the records invisible to others this long.
        #[arg(long)]
        visibility_ms: Option<u64>,
        #[arg(long)]
        consumer: Option<String>,
        /// Acknowledge the records right after printing them.
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge receipts: done, never delivered again.
    Ack {
        topic: String,
        group: String,
        receipts: Vec<String>,
    },
    /// Release receipts: deliver again (after --delay-ms).
    Release {
        topic: String,
        group: String,
        receipts: Vec<String>,
        #[arg(long)]
        delay_ms: Option<u64>,
    },
    /// Reject receipts: dead-letter them now.
    Reject {
        topic: String,
        group: String,
        receipts: Vec<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Extend the visibility timeout of receipts.
    Extend {
        topic: String,
        group: String,
        receipts: Vec<String>,
        #[arg(long)]
        visibility_ms: u64,
    },
    /// Show a queue's state per partition.
    Describe { topic: String, group: String },
}

pub(crate) async fn queue(conn: &Conn, cmd: QueueCmd) -> anyhow::Result<()> {
    let c = Client::new(&conn.url)?;
    let (topic, group, action, req) = match cmd {
        QueueCmd::Receive {
            topic,
            group,
            max,
            wait_ms,
            visibility_ms,
            consumer,
            ack,
        } => {
            let r = c
                .receive(
                    &topic,
                    &group,
                    &ReceiveRequest {
                        consumer,
                        max_records: Some(max),
                        wait_ms: Some(wait_ms),
                        visibility_timeout_ms: visibility_ms,
                        encoding: None,
                    },
                )
                .await?;
            for rec in &r.records {
                println!("{}", serde_json::to_string(rec)?);
            }
            if ack && !r.records.is_empty() {
                let receipts = r.records.iter().map(|r| r.receipt.clone()).collect();
                let s = c.ack(&topic, &group, receipts).await?;
                eprintln!("acked {} ({} failed)", s.settled, s.failed.len());
            }
            return Ok(());
        }
        QueueCmd::Describe { topic, group } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&c.describe_queue(&topic, &group).await?)?
            );
            return Ok(());
        }
        QueueCmd::Ack {
            topic,
            group,
            receipts,
        } => (
            topic,
            group,
            "ack",
            SettleRequest {
                receipts,
                ..SettleRequest::default()
            },
        ),
        QueueCmd::Release {
            topic,
            group,
            receipts,
            delay_ms,
        } => (
            topic,
            group,
            "release",
            SettleRequest {
                receipts,
                delay_ms,
                ..SettleRequest::default()
            },
        ),
        QueueCmd::Reject {
            topic,
            group,
            receipts,
            reason,
        } => (
            topic,
            group,
            "reject",
            SettleRequest {
                receipts,
                reason,
                ..SettleRequest::default()
            },
        ),
        QueueCmd::Extend {
            topic,
            group,
            receipts,
            visibility_ms,
        } => (
            topic,
            group,
            "extend",
            SettleRequest {
                receipts,
                visibility_timeout_ms: Some(visibility_ms),
                ..SettleRequest::default()
            },
        ),
    };
    let r = c.settle(&topic, &group, action, &req).await?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    if !r.failed.is_empty() {
        anyhow::bail!(
            "{} of {} receipts failed",
            r.failed.len(),
            req.receipts.len()
        );
    }
    Ok(())
}
