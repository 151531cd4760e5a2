//! A small async client for the Floe agent's HTTP API.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub mod analytics;

use floe_api::{
    Assignment, CommitOffset, CommitRequest, CreateTopicRequest, ErrorBody, FetchResponse,
    GroupDescription, GroupFetchResponse, JoinGroupRequest, ProduceRecord, ProduceRequest,
    ProduceResponse, ProducerSessionInfo, QueueDescription, ReceiveRequest, ReceiveResponse,
    SettleRequest, SettleResponse, TopicDescription, TopicFiles, TopicInfo, TopicList,
};
pub use floe_api::{
    BeginTransactionRequest, CommitTransactionRequest, HalfMessage, PrepareHalfRequest,
    TransactionEnd, TransactionInfo, TransactionList, TransactionOffsets,
};
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("unexpected response ({status}): {body}")]
    Unexpected { status: u16, body: String },
}

impl ClientError {
    /// The error code, when the agent sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
    /// The HTTP status of an answer that was an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Unexpected { status, .. } => Some(*status),
            Self::Http(_) => None,
        }
    }
    /// Worth retrying: the agent is overloaded or a dependency is down, or the connection failed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { status, code, .. } => *status == 503 || code == "idempotency_key_in_flight",
            Self::Http(e) if e.is_builder() => false,
            Self::Http(_) => true,
            Self::Unexpected { status, .. } => *status >= 500,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Budget of one produce attempt of an [`IdempotentProducer`].
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Retry policy of an [`IdempotentProducer`].
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per request (at least 1).
    pub attempts: u32,
    /// First backoff; doubled per attempt up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 10,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// A producer whose retries never write twice (RFC 0003 part 2): a producer session,
/// per-partition sequences, and automatic retries of the *same* request (same partitions,
/// same sequences) on 503s, timeouts and connection errors. The agent checks the
/// sequences in the commit: a retry of a batch that was committed gets its first offsets
/// back and writes nothing.
///
/// One request at a time (`&mut self`), so per-partition order is the order of calls.
/// Records without a key or partition go, per request, to one partition in turn (sticky
/// round-robin). If every attempt of a request failed without a verdict, whether it was
/// written is unknown (the error says so); the producer then starts a new session
/// before its next request, as Kafka's idempotent producer bumps its epoch.
#[derive(Debug)]
pub struct IdempotentProducer {
    /// Agents to send to: the first, then the next one on a retryable failure (any agent
    /// of a cluster sharing one index answers a retry the same way).
    clients: Vec<Client>,
    current: usize,
    name: Option<String>,
    session: Option<ProducerSessionInfo>,
    /// Next sequence per (topic, partition) in this session.
    next: HashMap<(String, u32), i64>,
    partitions: HashMap<String, u32>,
    round_robin: u32,
    retry: RetryPolicy,
    stats: ProducerStats,
    /// The session's epoch is an open transaction (RFC 0005): requests carry
    /// `Producer-Transactional: true`.
    in_transaction: bool,
}

/// What an [`IdempotentProducer`] went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// Requests answered as replays: an earlier attempt had been committed (its answer
    /// was lost) and the retry wrote nothing.
    pub replays: u64,
}

/// A request ready to send: partitions chosen, sequences taken from the session.
struct Prepared {
    records: Vec<ProduceRecord>,
    counts: BTreeMap<u32, i64>,
    sequences: BTreeMap<u32, i64>,
    session: ProducerSessionInfo,
}

impl IdempotentProducer {
    /// A producer on `client`; `name` makes the session fence older ones of that name (a
    /// restarted application takes over from its zombie).
    pub fn new(client: Client, name: Option<&str>) -> Self {
        Self {
            clients: vec![client],
            current: 0,
            name: name.map(str::to_string),
            session: None,
            next: HashMap::new(),
            partitions: HashMap::new(),
            round_robin: 0,
            retry: RetryPolicy::default(),
            stats: ProducerStats::default(),
            in_transaction: false,
        }
    }

    /// Begin a transaction (RFC 0005): the session moves to the transaction's epoch and
    /// its sequences start again at 0; every [`IdempotentProducer::send`] until
    /// [`IdempotentProducer::commit`] or [`IdempotentProducer::abort`] belongs to it. A
    /// named producer whose previous process left a transaction open aborts it by
    /// starting its session.
    pub async fn begin(&mut self, timeout_ms: Option<u64>) -> Result<TransactionInfo> {
        let session = match self.session {
            Some(s) => s,
            None => {
                let s = self.client().init_producer(self.name.as_deref()).await?;
                self.session = Some(s);
                s
            }
        };
        let t = self
            .client()
            .begin_transaction(session.producer_id, session.epoch, timeout_ms)
            .await?;
        self.session = Some(ProducerSessionInfo {
            producer_id: t.producer_id,
            epoch: t.epoch,
        });
        self.next.clear();
        self.in_transaction = true;
        Ok(t)
    }

    /// Commit the open transaction, with group offsets to commit atomically with it
    /// (consume-transform-produce). A lost answer may be retried: a repeated commit
    /// answers the same.
    pub async fn commit(&mut self, offsets: Vec<TransactionOffsets>) -> Result<TransactionEnd> {
        self.end(Some(offsets)).await
    }

    /// Abort the open transaction: none of its records is ever served.
    pub async fn abort(&mut self) -> Result<TransactionEnd> {
        self.end(None).await
    }

    async fn end(&mut self, offsets: Option<Vec<TransactionOffsets>>) -> Result<TransactionEnd> {
        let Some(s) = self.session.filter(|_| self.in_transaction) else {
            return Err(ClientError::Unexpected {
                status: 0,
                body: "no open transaction: call begin first".into(),
            });
        };
        let mut attempt = 1;
        loop {
            let r = match &offsets {
                Some(o) => {
                    self.client()
                        .commit_transaction(s.producer_id, s.epoch, o.clone())
                        .await
                }
                None => {
                    self.client()
                        .abort_transaction(s.producer_id, s.epoch)
                        .await
                }
            };
            match r {
                Err(e) if e.is_retryable() && attempt < self.retry.attempts.max(1) => {
                    self.current = (self.current + 1) % self.clients.len();
                    tokio::time::sleep(self.retry.backoff).await;
                    attempt += 1;
                }
                Err(e) if e.code() == Some("transaction_offsets_fenced") => return Err(e),
                other => {
                    self.in_transaction = false;
                    return other;
                }
            }
        }
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Further agents of the same cluster (same bucket and index) to fail over to.
    pub fn with_failover(mut self, others: impl IntoIterator<Item = Client>) -> Self {
        self.clients.extend(others);
        self
    }

    /// The current session, if one was started.
    pub fn session(&self) -> Option<ProducerSessionInfo> {
        self.session
    }

    fn client(&self) -> &Client {
        &self.clients[self.current % self.clients.len()]
    }

    async fn prepare(&mut self, topic: &str, mut records: Vec<ProduceRecord>) -> Result<Prepared> {
        let n = match self.partitions.get(topic) {
            Some(n) => *n,
            None => {
                let d = self.client().describe_topic(topic).await?;
                let n = u32::try_from(d.partitions.len()).unwrap_or(u32::MAX).max(1);
                let _ = self.partitions.insert(topic.to_string(), n);
                n
            }
        };
        let session = match self.session {
            Some(s) => s,
            None => {
                let s = self.client().init_producer(self.name.as_deref()).await?;
                self.next.clear();
                self.session = Some(s);
                s
            }
        };
        let sticky = self.round_robin % n;
        self.round_robin = self.round_robin.wrapping_add(1);
        let mut counts: BTreeMap<u32, i64> = BTreeMap::new();
        for r in &mut records {
            let p = match (r.partition, &r.key, &r.key_b64) {
                (Some(p), _, _) => u32::try_from(p).unwrap_or(u32::MAX),
                (None, Some(k), _) => floe_core::partitioner::partition_for_key(k.as_bytes(), n),
                (None, None, Some(k)) => {
                    // The agent decodes base64 keys; send the partition it would pick.
                    floe_core::partitioner::partition_for_key(&base64_decode(k), n)
                }
                (None, None, None) => sticky,
            };
            r.partition = Some(i64::from(p));
            *counts.entry(p).or_default() += 1;
        }
        let sequences = counts
            .keys()
            .map(|p| (*p, *self.next.get(&(topic.to_string(), *p)).unwrap_or(&0)))
            .collect();
        Ok(Prepared {
            records,
            counts,
            sequences,
            session,
        })
    }

    /// Produce `records` to `topic`, retrying as the policy says (on the next agent, when
    /// there are several). Returns the offsets (on a retry of a committed request: those
    /// of its first commit).
    pub async fn send(
        &mut self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<ProduceResponse> {
        let mut attempt = 1;
        let mut backoff = self.retry.backoff;
        let mut prepared: Option<Prepared> = None;
        loop {
            let result = match &prepared {
                Some(p) => {
                    self.client()
                        .produce_session(
                            topic,
                            p.records.clone(),
                            p.session,
                            &p.sequences,
                            self.in_transaction,
                        )
                        .await
                }
                None => match self.prepare(topic, records.clone()).await {
                    Ok(p) => {
                        let r = self
                            .client()
                            .produce_session(
                                topic,
                                p.records.clone(),
                                p.session,
                                &p.sequences,
                                self.in_transaction,
                            )
                            .await;
                        prepared = Some(p);
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok((resp, replayed)) => {
                    if replayed {
                        self.stats.replays += 1;
                    }
                    if let Some(p) = prepared {
                        for (part, c) in p.counts {
                            *self.next.entry((topic.to_string(), part)).or_default() += c;
                        }
                    }
                    return Ok(resp);
                }
                Err(e) if e.is_retryable() && attempt < self.retry.attempts.max(1) => {
                    self.current = (self.current + 1) % self.clients.len();
                    self.stats.retries += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                Err(e) => {
                    if prepared.is_some()
                        && (e.is_retryable() || e.code() == Some("unknown_producer"))
                    {
                        // Outcome unknown (or the session expired): sequences may be out of
                        // step with the agent's, so the next request starts a new session
                        // (a named producer's open transaction is then aborted).
                        self.session = None;
                        self.in_transaction = false;
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// The producer-session headers of a produce request.
fn with_session(
    req: reqwest::RequestBuilder,
    session: ProducerSessionInfo,
    sequences: &BTreeMap<u32, i64>,
    transactional: bool,
) -> reqwest::RequestBuilder {
    let seqs = sequences
        .iter()
        .map(|(p, s)| format!("{p}={s}"))
        .collect::<Vec<_>>()
        .join(",");
    let req = req
        .header("producer-id", session.producer_id.to_string())
        .header("producer-epoch", session.epoch.to_string())
        .header("producer-sequences", seqs);
    if transactional {
        req.header("producer-transactional", "true")
    } else {
        req
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .unwrap_or_default()
}

/// Options of one fetch.
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchOptions {
    pub max_records: Option<u64>,
    pub max_bytes: Option<u64>,
    pub wait_ms: Option<u64>,
    /// Also read records of open transactions (`isolation=read_uncommitted`); by default
    /// a fetch stops at the partition's stable offset.
    pub read_uncommitted: bool,
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// `base` is the agent URL, e.g. `http://127.0.0.1:7070`.
    pub fn new(base: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
                status: status.as_u16(),
                body: format!("{e}: {}", String::from_utf8_lossy(&bytes)),
            });
        }
        Err(Self::error(status.as_u16(), &bytes))
    }

    fn error(status: u16, bytes: &[u8]) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(b) => ClientError::Api {
                status,
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => ClientError::Unexpected {
                status,
                body: String::from_utf8_lossy(bytes).into_owned(),
            },
        }
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicInfo> {
        self.create_topic_with(CreateTopicRequest {
            name: name.into(),
            partitions: i64::from(partitions),
            retention_ms: None,
            config: None,
        })
        .await
    }

    /// Create a topic with retention and config (e.g. `retention.bytes`, `queue.*`).
    pub async fn create_topic_with(&self, req: CreateTopicRequest) -> Result<TopicInfo> {
        Self::decode(
            self.http
                .post(format!("{}/v1/topics", self.base))
                .json(&req)
                .send()
                .await?,
        )
        .await
    }

    pub async fn list_topics(&self) -> Result<TopicList> {
        Self::decode(
            self.http
                .get(format!("{}/v1/topics", self.base))
                .send()
                .await?,
        )
        .await
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        Self::decode(
            self.http
                .get(format!("{}/v1/topics/{name}", self.base))
                .send()
                .await?,
        )
        .await
    }

    /// The objects holding a topic's committed log (`GET /v1/topics/{topic}/files`);
    /// `None` for the whole retained log of every partition. See [`analytics::duckdb_sql`].
    pub async fn topic_files(
        &self,
        name: &str,
        partition: Option<u32>,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<TopicFiles> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(p) = partition {
            q.push(("partition", p.to_string()));
        }
        if let Some(f) = from {
            q.push(("from", f.to_string()));
        }
        if let Some(t) = to {
            q.push(("to", t.to_string()));
        }
        let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Self::decode(
            self.http
                .get(format!(
                    "{}/v1/topics/{name}/files?{}",
                    self.base,
                    query.join("&")
                ))
                .send()
                .await?,
        )
        .await
    }

    /// [`Client::topic_files`] followed to the end: a partition whose listing the agent
    /// cut at its `max_file_entries` is asked again from where it stopped, until it covers
    /// the asked range. (Pages are listed one after another: an entry compaction swapped
    /// out in between stays listed, and its object is readable until the sweeper deletes
    /// it.)
    pub async fn topic_files_complete(
        &self,
        name: &str,
        partition: Option<u32>,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<TopicFiles> {
        let mut files = self.topic_files(name, partition, from, to).await?;
        for p in &mut files.partitions {
            let end = to.unwrap_or(p.end_offset).min(p.end_offset);
            while p.to < end {
                let more = self
                    .topic_files(name, Some(p.partition), Some(p.to), Some(end))
                    .await?;
                let Some(page) = more.partitions.into_iter().next() else {
                    break;
                };
                if page.to <= p.to {
                    break; // no progress (the log's start moved past it)
                }
                p.entries.extend(page.entries);
                p.to = page.to;
            }
        }
        Ok(files)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let resp = self
            .http
            .delete(format!("{}/v1/topics/{name}", self.base))
            .send()
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        Err(Self::error(status.as_u16(), &resp.bytes().await?))
    }

    pub async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<ProduceResponse> {
        let body = ProduceRequest { records };
        Self::decode(
            self.http
                .post(format!("{}/v1/topics/{topic}/records", self.base))
                .json(&body)
                .send()
                .await?,
        )
        .await
    }

    /// Start a producer session (`POST /v1/producers`): with a name, its id and a new
    /// epoch that fences every older session of that name.
    pub async fn init_producer(&self, name: Option<&str>) -> Result<ProducerSessionInfo> {
        Self::decode(
            self.http
                .post(format!("{}/v1/producers", self.base))
                .json(&floe_api::InitProducerRequest {
                    name: name.map(str::to_string),
                })
                .send()
                .await?,
        )
        .await
    }

    /// Produce as a producer session, naming the sequence of the request's first record in
    /// every partition it writes (the low-level call under [`IdempotentProducer`]). Returns
    /// the answer and whether it replays an earlier commit of the same request.
    pub async fn produce_sequenced(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
        session: ProducerSessionInfo,
        sequences: &BTreeMap<u32, i64>,
    ) -> Result<(ProduceResponse, bool)> {
        self.produce_session(topic, records, session, sequences, false)
            .await
    }

    /// [`Client::produce_sequenced`], inside the session's open transaction when
    /// `transactional` (RFC 0005).
    pub async fn produce_session(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
        session: ProducerSessionInfo,
        sequences: &BTreeMap<u32, i64>,
        transactional: bool,
    ) -> Result<(ProduceResponse, bool)> {
        let req = self
            .http
            .post(format!("{}/v1/topics/{topic}/records", self.base))
            .timeout(SEND_TIMEOUT)
            .json(&ProduceRequest { records });
        Self::decode_replayed(
            with_session(req, session, sequences, transactional)
                .send()
                .await?,
        )
        .await
    }

    /// Begin a transaction of the session `(producer_id, epoch)`; it is the session's
    /// next epoch (RFC 0005).
    pub async fn begin_transaction(
        &self,
        producer_id: i64,
        epoch: u32,
        timeout_ms: Option<u64>,
    ) -> Result<TransactionInfo> {
        Self::decode(
            self.http
                .post(format!(
                    "{}/v1/producers/{producer_id}/transactions",
                    self.base
                ))
                .json(&BeginTransactionRequest { epoch, timeout_ms })
                .send()
                .await?,
        )
        .await
    }

    /// Commit a transaction (with group offsets committed atomically with it).
    pub async fn commit_transaction(
        &self,
        producer_id: i64,
        epoch: u32,
        offsets: Vec<TransactionOffsets>,
    ) -> Result<TransactionEnd> {
        Self::decode(
            self.http
                .post(format!(
                    "{}/v1/producers/{producer_id}/transactions/{epoch}/commit",
                    self.base
                ))
                .json(&CommitTransactionRequest { offsets })
                .send()
                .await?,
        )
        .await
    }

    /// Abort a transaction.
    pub async fn abort_transaction(&self, producer_id: i64, epoch: u32) -> Result<TransactionEnd> {
        Self::decode(
            self.http
                .post(format!(
                    "{}/v1/producers/{producer_id}/transactions/{epoch}/abort",
                    self.base
                ))
                .send()
                .await?,
        )
        .await
    }

    /// Open transactions (and half-messages), or all remembered ones.
    pub async fn transactions(&self, all: bool) -> Result<TransactionList> {
        let state = if all { "all" } else { "open" };
        Self::decode(
            self.http
                .get(format!("{}/v1/transactions?state={state}", self.base))
                .send()
                .await?,
        )
        .await
    }

    /// Prepare a half-message (RFC 0005 §3): stored, invisible until committed;
    /// `check_url` is asked if neither commit nor rollback comes in time.
    pub async fn prepare_half(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
        check_url: &str,
    ) -> Result<HalfMessage> {
        Self::decode(
            self.http
                .post(format!("{}/v1/topics/{topic}/half-messages", self.base))
                .json(&PrepareHalfRequest {
                    records,
                    check_url: check_url.to_string(),
                })
                .send()
                .await?,
        )
        .await
    }

    /// Commit (`true`) or roll back a half-message by its handle.
    pub async fn end_half(&self, handle: &str, commit: bool) -> Result<TransactionEnd> {
        let verb = if commit { "commit" } else { "rollback" };
        Self::decode(
            self.http
                .post(format!("{}/v1/half-messages/{handle}/{verb}", self.base))
                .send()
                .await?,
        )
        .await
    }

    /// A produce answer and whether it replays an earlier commit (`Idempotent-Replayed`).
    async fn decode_replayed(resp: reqwest::Response) -> Result<(ProduceResponse, bool)> {
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes() == b"true");
        Ok((Self::decode(resp).await?, replayed))
    }

    /// Produce with an `Idempotency-Key`: a retry with the same key and records gets the
    /// first request's offsets and writes nothing. Returns the answer and whether it was
    /// such a replay (`Idempotent-Replayed: true`).
    pub async fn produce_with_key(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
        key: &str,
    ) -> Result<(ProduceResponse, bool)> {
        let resp = self
            .http
            .post(format!("{}/v1/topics/{topic}/records", self.base))
            .header("idempotency-key", key)
            .json(&ProduceRequest { records })
            .send()
            .await?;
        Self::decode_replayed(resp).await
    }

    /// [`Client::produce_raw`] as a producer session (see [`Client::produce_sequenced`]).
    pub async fn produce_raw_sequenced(
        &self,
        topic: &str,
        body: bytes::Bytes,
        session: ProducerSessionInfo,
        sequences: &BTreeMap<u32, i64>,
    ) -> Result<ProduceResponse> {
        self.produce_raw_session(topic, body, session, sequences, false)
            .await
    }

    /// [`Client::produce_raw_sequenced`], inside the session's open transaction when
    /// `transactional`.
    pub async fn produce_raw_session(
        &self,
        topic: &str,
        body: bytes::Bytes,
        session: ProducerSessionInfo,
        sequences: &BTreeMap<u32, i64>,
        transactional: bool,
    ) -> Result<ProduceResponse> {
        let req = self
            .http
            .post(format!("{}/v1/topics/{topic}/records", self.base))
            .header("content-type", "application/json")
            .body(body);
        Self::decode(
            with_session(req, session, sequences, transactional)
                .send()
                .await?,
        )
        .await
    }

    /// Produce a pre-serialized JSON body (`{"records": [...]}`).
    pub async fn produce_raw(&self, topic: &str, body: bytes::Bytes) -> Result<ProduceResponse> {
        let resp = self
            .http
            .post(format!("{}/v1/topics/{topic}/records", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        Self::decode(resp).await
    }

    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        opts: FetchOptions,
    ) -> Result<FetchResponse> {
        let url = self.fetch_url(topic, partition, offset, opts);
        Self::decode(self.http.get(url).send().await?).await
    }

    /// Produce an Arrow IPC stream body (see `floe_core::ipc::encode_produce`).
    pub async fn produce_arrow(&self, topic: &str, body: bytes::Bytes) -> Result<ProduceResponse> {
        let resp = self
            .http
            .post(format!("{}/v1/topics/{topic}/records", self.base))
            .header("content-type", floe_core::ipc::ARROW_STREAM)
            .body(body)
            .send()
            .await?;
        Self::decode(resp).await
    }

    fn fetch_url(&self, topic: &str, partition: u32, offset: u64, opts: FetchOptions) -> String {
        let mut url = format!(
            "{}/v1/topics/{topic}/partitions/{partition}/records?offset={offset}",
            self.base
        );
        for (k, v) in [
            ("max_records", opts.max_records),
            ("max_bytes", opts.max_bytes),
            ("wait_ms", opts.wait_ms),
        ] {
            if let Some(v) = v {
                url.push_str(&format!("&{k}={v}"));
            }
        }
        if opts.read_uncommitted {
            url.push_str("&isolation=read_uncommitted");
        }
        url
    }

    /// Fetch as an Arrow IPC stream; returns the records, `next_offset` and `end_offset`.
    pub async fn fetch_arrow(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        opts: FetchOptions,
    ) -> Result<(Vec<floe_core::ipc::FetchedBinary>, u64, u64)> {
        let url = self.fetch_url(topic, partition, offset, opts);
        let resp = self
            .http
            .get(url)
            .header("accept", floe_core::ipc::ARROW_STREAM)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let (next, end) = (header("floe-next-offset"), header("floe-end-offset"));
        let bytes = resp.bytes().await?;
        if status != 200 {
            return Err(Self::error(status, &bytes));
        }
        let (Some(next), Some(end)) = (next, end) else {
            return Err(ClientError::Unexpected {
                status,
                body: "missing floe-next-offset / floe-end-offset headers".into(),
            });
        };
        let records =
            floe_core::ipc::decode_fetch(&bytes).map_err(|e| ClientError::Unexpected {
                status,
                body: format!("bad Arrow response: {e}"),
            })?;
        Ok((records, next, end))
    }

    /// The agent's Prometheus metrics text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Sum of a counter across its labels in the metrics text (e.g. `floe_object_store_requests_total{op="put"}`).
    pub async fn metric(&self, name_with_labels: &str) -> Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name_with_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    async fn no_content(resp: reqwest::Response) -> Result<()> {
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        Err(Self::error(status.as_u16(), &resp.bytes().await?))
    }

    fn group_url(&self, topic: &str, group: &str) -> String {
        format!("{}/v1/topics/{topic}/groups/{group}", self.base)
    }

    /// Join a consumer group; the answer names the member's partitions and generation.
    pub async fn join_group(
        &self,
        topic: &str,
        group: &str,
        req: &JoinGroupRequest,
    ) -> Result<Assignment> {
        let url = format!("{}/members", self.group_url(topic, group));
        Self::decode(self.http.post(url).json(req).send().await?).await
    }

    pub async fn heartbeat(&self, topic: &str, group: &str, member: &str) -> Result<Assignment> {
        let url = format!(
            "{}/members/{member}/heartbeat",
            self.group_url(topic, group)
        );
        Self::decode(self.http.post(url).send().await?).await
    }

    pub async fn leave_group(&self, topic: &str, group: &str, member: &str) -> Result<()> {
        let url = format!("{}/members/{member}", self.group_url(topic, group));
        Self::no_content(self.http.delete(url).send().await?).await
    }

    /// Fetch from the member's partitions; pass the previous answer's `cursor` to go on.
    pub async fn group_fetch(
        &self,
        topic: &str,
        group: &str,
        member: &str,
        cursor: Option<&str>,
        opts: FetchOptions,
    ) -> Result<GroupFetchResponse> {
        let url = format!("{}/members/{member}/records", self.group_url(topic, group));
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(c) = cursor {
            q.push(("cursor", c.to_string()));
        }
        for (k, v) in [
            ("max_records", opts.max_records),
            ("max_bytes", opts.max_bytes),
            ("wait_ms", opts.wait_ms),
        ] {
            if let Some(v) = v {
                q.push((k, v.to_string()));
            }
        }
        let url =
            reqwest::Url::parse_with_params(&url, &q).map_err(|e| ClientError::Unexpected {
                status: 0,
                body: format!("bad url: {e}"),
            })?;
        Self::decode(self.http.get(url).send().await?).await
    }

    /// Commit offsets (next offset to read per partition) for `member` in `generation`.
    pub async fn commit(
        &self,
        topic: &str,
        group: &str,
        member: &str,
        generation: u64,
        offsets: &[(u32, u64)],
    ) -> Result<()> {
        let req = CommitRequest {
            member_id: member.to_string(),
            generation,
            offsets: offsets
                .iter()
                .map(|(partition, offset)| CommitOffset {
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
        };
        let url = format!("{}/commit", self.group_url(topic, group));
        Self::no_content(self.http.post(url).json(&req).send().await?).await
    }

    pub async fn list_groups(&self, topic: &str) -> Result<Vec<String>> {
        let url = format!("{}/v1/topics/{topic}/groups", self.base);
        Self::decode(self.http.get(url).send().await?).await
    }

    pub async fn describe_group(&self, topic: &str, group: &str) -> Result<GroupDescription> {
        Self::decode(self.http.get(self.group_url(topic, group)).send().await?).await
    }

    fn queue_url(&self, topic: &str, group: &str) -> String {
        format!("{}/v1/topics/{topic}/queues/{group}", self.base)
    }

    /// Receive records from a queue (share group).
    pub async fn receive(
        &self,
        topic: &str,
        group: &str,
        req: &ReceiveRequest,
    ) -> Result<ReceiveResponse> {
        let url = format!("{}/receive", self.queue_url(topic, group));
        Self::decode(self.http.post(url).json(req).send().await?).await
    }

    /// Settle receipts: `action` is `ack`, `release`, `reject` or `extend`.
    pub async fn settle(
        &self,
        topic: &str,
        group: &str,
        action: &str,
        req: &SettleRequest,
    ) -> Result<SettleResponse> {
        let url = format!("{}/{action}", self.queue_url(topic, group));
        Self::decode(self.http.post(url).json(req).send().await?).await
    }

    pub async fn ack(
        &self,
        topic: &str,
        group: &str,
        receipts: Vec<String>,
    ) -> Result<SettleResponse> {
        let req = SettleRequest {
            receipts,
            ..SettleRequest::default()
        };
        self.settle(topic, group, "ack", &req).await
    }

    pub async fn describe_queue(&self, topic: &str, group: &str) -> Result<QueueDescription> {
        Self::decode(self.http.get(self.queue_url(topic, group)).send().await?).await
    }
}
