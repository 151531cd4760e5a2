//! Helpers shared by the integration tests: run `floe serve` as a real process on an
//! ephemeral port, talk to it over real HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floe_client::Client;

pub(crate) mod outbox;
pub(crate) mod scenarios;
pub(crate) mod txn;

pub(crate) struct AgentProc {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl AgentProc {
    /// Start `floe serve` on the embedded default in `data_dir` with extra flags.
    pub(crate) fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_env(data_dir, extra, &[])
    }

    fn spawn(mut cmd: Command, data_dir: &Path) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn floe serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            assert!(Instant::now() < deadline, "agent did not start in time");
            let line = lines
                .next()
                .expect("agent exited before listening")
                .expect("read stdout");
            if let Some(u) = line.strip_prefix("floe listening on ") {
                break u.trim().to_string();
            }
        };
        // Keep draining stdout so the agent never blocks on a full pipe.
        let _ = std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(&self.url).unwrap()
    }

    /// SIGKILL: no flush, no cleanup.
    pub(crate) fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY-free: libc::kill on our own child's pid.
        unsafe_kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, sig: i32) {
    // SAFETY: sending a signal to a child process we spawned and still own.
    unsafe {
        let _ = libc::kill(pid, sig);
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Segment objects in the bucket folder of an embedded agent.
pub(crate) fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("bucket").join("segments");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The value of an unlabelled counter or gauge in a Prometheus text exposition (0 when
/// absent).
pub(crate) fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0) as u64
}

/// Read a whole partition from offset 0 to its end.
pub(crate) async fn read_all(
    c: &Client,
    topic: &str,
    partition: u32,
) -> Vec<floe_api::FetchedRecord> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = c
            .fetch(
                topic,
                partition,
                offset,
                floe_client::FetchOptions {
                    max_records: Some(10_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        out.extend(r.records);
        offset = r.next_offset;
        if offset >= r.stable_offset {
            return out;
        }
    }
}

/// Raw HTTP for hostile-input tests: (status, parsed JSON body or Null).
pub(crate) async fn raw(
    method: reqwest::Method,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let mut req = http.request(method, url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// The S3 endpoint the shared-storage tests use (started by tests/run-all.sh: moto, then LocalStack).
pub(crate) fn s3_endpoint() -> String {
    std::env::var("FLOE_TEST_S3_ENDPOINT").expect(
        "FLOE_TEST_S3_ENDPOINT is not set: run the suite with `bash tests/run-all.sh`, or start moto with `eval \"$(bash infra/moto.sh)\"`",
    )
}

pub(crate) fn s3_bucket() -> String {
    std::env::var("FLOE_TEST_BUCKET").unwrap_or_else(|_| "floe-test".into())
}

/// Environment for agents and test clients talking to the test S3 server.
pub(crate) fn s3_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", s3_endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// A fresh `s3://bucket/<unique prefix>` URL.
pub(crate) fn fresh_bucket_url() -> String {
    format!("s3://{}/t-{}", s3_bucket(), unique())
}

#[allow(clippy::disallowed_methods)] // unique names, not engine time
pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}{}{}",
        t % 1_000_000_000_000,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh PostgreSQL database on the test server; returns its URL.
pub(crate) async fn fresh_pg_db() -> String {
    let admin = std::env::var("FLOE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (bash infra/postgres.sh)");
    drop(tokio::spawn(conn));
    let name = format!("floe_t_{}", unique());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    format!("{base}/{name}")
}

/// The object store the agents use, opened directly (to plant and list objects).
pub(crate) fn test_store(bucket_url: &str) -> std::sync::Arc<dyn object_store::ObjectStore> {
    let rest = bucket_url.strip_prefix("s3://").unwrap();
    let (bucket, prefix) = rest.split_once('/').unwrap();
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(s3_endpoint())
        .with_allow_http(true)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .build()
        .unwrap();
    std::sync::Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
}

impl AgentProc {
    /// Start an agent on a shared bucket and index.
    pub(crate) fn start_shared(data_dir: &Path, bucket: &str, index: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--bucket", bucket, "--index", index];
        args.extend_from_slice(extra);
        Self::start_env(data_dir, &args, &s3_env())
    }

    pub(crate) fn start_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&'static str, String)],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_floe"));
        let _ = cmd
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            let _ = cmd.env(k, v);
        }
        Self::spawn(cmd, data_dir)
    }
}

pub(crate) fn rec(value: String) -> floe_api::ProduceRecord {
    floe_api::ProduceRecord {
        value: Some(value),
        ..Default::default()
    }
}

/// Start a 10 s long-poll at the end of `topic`/0 on `waiter`, produce `value` through
/// `producer`, and return how long after the produce the poll returned with the record.
pub(crate) async fn long_poll_wake_time(
    waiter: &Client,
    producer: &Client,
    topic: &str,
    value: &str,
) -> Duration {
    let (w, t) = (waiter.clone(), topic.to_string());
    let poll = tokio::spawn(async move {
        w.fetch(
            &t,
            0,
            0,
            floe_client::FetchOptions {
                wait_ms: Some(10_000),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll returned before anything was produced"
    );
    let t_produce = Instant::now();
    let _ = producer
        .produce(topic, vec![rec(value.to_string())])
        .await
        .unwrap();
    let r = poll.await.unwrap();
    let woke = t_produce.elapsed();
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.records[0].value.as_deref(), Some(value));
    woke
}

/// Flags for an agent whose compactor works at once (every 200 ms, nothing too young,
/// nothing waits, two entries suffice); tests add the target and sizes they need.
#[allow(dead_code)] // not every test binary compacts
pub(crate) const EAGER_COMPACTION: [&str; 8] = [
    "--compaction-interval-ms",
    "200",
    "--compaction-min-age-ms",
    "0",
    "--compaction-max-wait-ms",
    "0",
    "--compaction-min-entries",
    "2",
];

/// `FLOE_KILL_TRIALS`, or `default` (the kill -9 tests' number of trials).
#[allow(dead_code)]
pub(crate) fn kill_trials(default: usize) -> usize {
    std::env::var("FLOE_KILL_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A half-message producer's check-back endpoint (RFC 0005 §3): a minimal HTTP/1.1 server
/// on an ephemeral port that answers each `POST` with the next scripted outcome
/// (`"commit"`, `"rollback"`, `"unknown"`; `None`: HTTP 500) — the last one repeats — and
/// records every call's JSON body.
pub(crate) struct CheckServer {
    pub url: String,
    pub calls: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CheckServer {
    pub(crate) async fn start(script: Vec<Option<&'static str>>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/check", listener.local_addr().unwrap());
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (seen, script) = (seen.clone(), script.clone());
                drop(tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read headers, then the body by Content-Length.
                    let (head_end, len) = loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body: serde_json::Value =
                        serde_json::from_slice(&buf[head_end..head_end + len])
                            .unwrap_or(serde_json::Value::Null);
                    let answer = {
                        let mut c = seen.lock().unwrap();
                        c.push(body);
                        let i = (c.len() - 1).min(script.len().saturating_sub(1));
                        script.get(i).copied().flatten()
                    };
                    let resp = match answer {
                        Some(o) => {
                            let b = format!("{{\"outcome\":\"{o}\"}}");
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                                b.len()
                            )
                        }
                        None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                    };
                    let _ = sock.write_all(resp.as_bytes()).await;
                }));
            }
        });
        Self { url, calls, task }
    }

    pub(crate) fn calls(&self) -> Vec<serde_json::Value> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for CheckServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
