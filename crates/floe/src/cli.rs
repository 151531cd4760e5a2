//! Client subcommands: topics, produce, consume.

use std::io::BufRead;

use anyhow::Context;
use clap::{Args, Subcommand};
use floe_client::{Client, FetchOptions};
use floe_core::api::ProduceRecord;

use crate::Conn;

#[derive(Subcommand, Debug)]
pub enum TopicsCmd {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
    /// List topics.
    List,
    /// Show partitions and offsets of a topic.
    Describe { name: String },
    /// Delete a topic and its records.
    Delete { name: String },
}

pub async fn topics(conn: &Conn, cmd: TopicsCmd) -> anyhow::Result<()> {
    let c = Client::new(&conn.url)?;
    let out = match cmd {
        TopicsCmd::Create { name, partitions } => {
            serde_json::to_string_pretty(&c.create_topic(&name, partitions).await?)?
        }
        TopicsCmd::List => serde_json::to_string_pretty(&c.list_topics().await?)?,
        TopicsCmd::Describe { name } => {
            serde_json::to_string_pretty(&c.describe_topic(&name).await?)?
        }
        TopicsCmd::Delete { name } => {
            c.delete_topic(&name).await?;
            format!("deleted {name}")
        }
    };
    println!("{out}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    conn: Conn,
    topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Key for every record.
    #[arg(long)]
    key: Option<String>,
    /// Partition for every record (default: by key, else round-robin).
    #[arg(long)]
    partition: Option<u32>,
    /// Lines per produce request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

pub async fn produce(a: ProduceArgs) -> anyhow::Result<()> {
    let c = Client::new(&a.conn.url)?;
    let reader: Box<dyn BufRead> = match &a.file {
        Some(f) => Box::new(std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut batch = Vec::new();
    let mut total = 0usize;
    let send = |batch: Vec<ProduceRecord>| {
        let c = c.clone();
        let topic = a.topic.clone();
        async move {
            let r = c.produce(&topic, batch).await?;
            for o in &r.offsets {
                eprintln!("partition {} offset {}", o.partition, o.offset);
            }
            anyhow::Ok(r.offsets.len())
        }
    };
    for line in reader.lines() {
        let line = line?;
        batch.push(ProduceRecord {
            key: a.key.clone(),
            value: Some(line),
            partition: a.partition.map(i64::from),
            ..ProduceRecord::default()
        });
        if batch.len() >= a.batch.max(1) {
            total += send(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        total += send(batch).await?;
    }
    eprintln!("produced {total} records");
    Ok(())
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
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
}

pub async fn consume(a: ConsumeArgs) -> anyhow::Result<()> {
    let c = Client::new(&a.conn.url)?;
    let mut offset = match (a.from_beginning, a.offset) {
        (true, _) => 0,
        (false, Some(o)) => o,
        (false, None) => {
            let d = c.describe_topic(&a.topic).await?;
            d.partitions
                .iter()
                .find(|p| p.partition == a.partition)
                .map(|p| p.end_offset)
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
            if a.json {
                println!("{}", serde_json::to_string(rec)?);
            } else {
                let v = rec.value_bytes().unwrap_or_default();
                println!("{}", String::from_utf8_lossy(&v));
            }
        }
        offset = r.next_offset;
        if !a.follow && offset >= r.end_offset {
            return Ok(());
        }
    }
}
