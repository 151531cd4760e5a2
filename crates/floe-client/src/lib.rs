//! A small async client for the Floe agent's HTTP API.

use std::time::Duration;

use floe_core::api::{
    CreateTopicRequest, ErrorBody, FetchResponse, ProduceRecord, ProduceRequest, ProduceResponse,
    TopicDescription, TopicInfo, TopicList,
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
    /// Worth retrying: the agent is overloaded or a dependency is down, or the connection failed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status == 503,
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
}
