//! A small async client for the Floe agent's HTTP API.

use std::time::Duration;

use floe_api::{
    Assignment, CommitOffset, CommitRequest, CreateTopicRequest, ErrorBody, FetchResponse,
    GroupDescription, GroupFetchResponse, JoinGroupRequest, ProduceRecord, ProduceRequest,
    ProduceResponse, QueueDescription, ReceiveRequest, ReceiveResponse, SettleRequest,
    SettleResponse, TopicDescription, TopicInfo, TopicList,
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
            Self::Http(_) => true,
            Self::Unexpected { status, .. } => *status >= 500,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Options of one fetch.
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchOptions {
    pub max_records: Option<u64>,
    pub max_bytes: Option<u64>,
    pub wait_ms: Option<u64>,
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
        let req = CreateTopicRequest {
            name: name.into(),
            partitions: i64::from(partitions),
            retention_ms: None,
            config: None,
        };
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

    /// Produce with an `Idempotency-Key`: a retry with the same key and records gets the
    /// first request's offsets and writes nothing. Returns the answer and whether it was
    /// such a replay (`Idempotent-Replayed: true`).
    pub async fn produce_with_key(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
        key: &str,
    ) -> Result<(ProduceResponse, bool)> {
        let body = ProduceRequest { records };
        let resp = self
            .http
            .post(format!("{}/v1/topics/{topic}/records", self.base))
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await?;
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes() == b"true");
        Ok((Self::decode(resp).await?, replayed))
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
