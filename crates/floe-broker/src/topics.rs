//! Topics: create / list / describe / delete, name and partition validation, and the
//! topic metadata cache in front of the index (positive entries only, with a short TTL so
//! topic changes made through other agents become visible).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use floe_core::compaction::CleanupPolicy;
use floe_index::{Index, IndexError, NewTopic, PartitionOffsets, TopicMeta};

use crate::Broker;
use crate::error::{BrokerError, BrokerResult};
use crate::names::{topic_name, valid_name};

#[derive(Clone)]
pub struct TopicCache {
    index: Arc<dyn Index>,
    cache: moka::future::Cache<String, Arc<TopicMeta>>,
}

impl std::fmt::Debug for TopicCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl TopicCache {
    pub fn new(index: Arc<dyn Index>, ttl: Duration) -> Self {
        Self {
            index,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<Arc<TopicMeta>>, IndexError> {
        if let Some(t) = self.cache.get(name).await {
            return Ok(Some(t));
        }
        match self.index.get_topic(name).await? {
            Some(t) => {
                let t = Arc::new(t);
                self.cache.insert(name.to_string(), t.clone()).await;
                Ok(Some(t))
            }
            None => Ok(None),
        }
    }

    pub async fn invalidate(&self, name: &str) {
        self.cache.invalidate(name).await;
    }
}

/// A topic to create, as a front end received it (validated here).
#[derive(Debug, Clone, Default)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i64,
    pub retention_ms: Option<i64>,
    pub config: Option<BTreeMap<String, String>>,
}

/// A topic with the offsets of each partition.
#[derive(Debug, Clone)]
pub struct TopicDescription {
    pub topic: TopicMeta,
    pub partitions: Vec<PartitionOffsets>,
}

/// Topic config: keep at most this many bytes per partition (whole runs, oldest first;
/// RFC 0004). Overrides the agent's `--default-retention-bytes`.
pub const RETENTION_BYTES_CONFIG: &str = "retention.bytes";

/// Topic config (Kafka's name): `delete` (default), `compact` or `compact,delete` —
/// [`floe_core::compaction::CleanupPolicy`]. A compact-only topic has no retention by time
/// or size (neither its own nor the agent's defaults); its compactor keeps the latest
/// record per key.
pub const CLEANUP_POLICY_CONFIG: &str = "cleanup.policy";
/// Topic config: how long a compacted topic keeps a key's tombstone (a keyed record with an
/// empty value) once it is the key's latest record, so consumers see the deletion.
pub const DELETE_RETENTION_MS_CONFIG: &str = "delete.retention.ms";
/// Kafka's default `delete.retention.ms`: one day.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 86_400_000;

/// A topic's cleanup policy (`delete` unless its config says otherwise; the config was
/// validated at creation).
pub fn cleanup_policy(t: &TopicMeta) -> CleanupPolicy {
    t.config
        .get(CLEANUP_POLICY_CONFIG)
        .and_then(|v| CleanupPolicy::parse(v))
        .unwrap_or(CleanupPolicy::DELETE)
}

/// A compacted topic's `delete.retention.ms`.
pub fn delete_retention_ms(t: &TopicMeta) -> i64 {
    t.config
        .get(DELETE_RETENTION_MS_CONFIG)
        .and_then(|v| parse_plain_number(v))
        .and_then(|v| i64::try_from(v).ok())
        .unwrap_or(DEFAULT_DELETE_RETENTION_MS)
}

/// A decimal number written plainly (no sign, no leading zeros except `0` itself, at most
/// 18 digits).
fn parse_plain_number(v: &str) -> Option<u64> {
    (!v.is_empty()
        && v.len() <= 18
        && v.bytes().all(|b| b.is_ascii_digit())
        && (v == "0" || !v.starts_with('0')))
    .then(|| v.parse().ok())
    .flatten()
}

/// `retention.bytes`: 1..=999 999 999 999 999 999 written plainly.
pub fn parse_retention_bytes(v: &str) -> Option<u64> {
    parse_plain_number(v).filter(|n| *n > 0)
}

impl Broker {
    /// The topic named `raw` (cached), or `topic_not_found`.
    pub async fn existing_topic(&self, raw: &str) -> BrokerResult<Arc<TopicMeta>> {
        let name = topic_name(raw)?;
        self.topics
            .get(name.as_str())
            .await
            .map_err(|e| BrokerError::index(&e))?
            .ok_or_else(|| BrokerError::topic_not_found(name.as_str()))
    }

    /// A topic and a validated group name.
    pub(crate) async fn topic_and_group(
        &self,
        topic: &str,
        group: &str,
    ) -> BrokerResult<(Arc<TopicMeta>, String)> {
        let group = valid_name("group", group)?;
        let topic = self.existing_topic(topic).await?;
        Ok((topic, group))
    }

    /// Create a topic: name rules, 1..=`max_partitions` partitions, retention >= 0 and a
    /// valid `queue.*` config, else `Invalid`; `topic_exists` / `too_many_topics` conflicts.
    pub async fn create_topic(&self, spec: TopicSpec) -> BrokerResult<TopicMeta> {
        let name = topic_name(&spec.name)?;
        let max = self.config.limits.max_partitions;
        let partitions = u32::try_from(spec.partitions)
            .ok()
            .filter(|p| (1..=max).contains(p))
            .ok_or_else(|| {
                BrokerError::invalid(
                    "invalid_partitions",
                    format!(
                        "partitions must be between 1 and {max}, got {}",
                        spec.partitions
                    ),
                )
            })?;
        if let Some(r) = spec.retention_ms.filter(|r| *r < 0) {
            return Err(BrokerError::invalid(
                "invalid_retention",
                format!("retention_ms must be >= 0, got {r}"),
            ));
        }
        if let Some(c) = &spec.config {
            crate::queues::validate_queue_config(c)?;
            if let Some(v) = c.get(RETENTION_BYTES_CONFIG) {
                let _ = parse_retention_bytes(v).ok_or_else(|| {
                    BrokerError::invalid(
                        "invalid_topic_config",
                        format!("topic config {RETENTION_BYTES_CONFIG}={v:?} is not an integer between 1 and 999999999999999999"),
                    )
                })?;
            }
            if let Some(v) = c.get(CLEANUP_POLICY_CONFIG) {
                let _ = CleanupPolicy::parse(v).ok_or_else(|| {
                    BrokerError::invalid(
                        "invalid_topic_config",
                        format!("topic config {CLEANUP_POLICY_CONFIG}={v:?}: use \"delete\", \"compact\" or \"compact,delete\""),
                    )
                })?;
            }
            if let Some(v) = c.get(DELETE_RETENTION_MS_CONFIG) {
                let _ = parse_plain_number(v).ok_or_else(|| {
                    BrokerError::invalid(
                        "invalid_topic_config",
                        format!("topic config {DELETE_RETENTION_MS_CONFIG}={v:?} is not an integer between 0 and 999999999999999999"),
                    )
                })?;
            }
        }
        let t = self
            .index
            .create_topic(NewTopic {
                name: name.to_string(),
                partitions,
                retention_ms: spec.retention_ms,
                config: spec.config.unwrap_or_default(),
                created_ms: self.clock.now_ms(),
                max_topics: self.config.limits.max_topics,
            })
            .await
            .map_err(|e| match e {
                IndexError::TopicExists(n) => {
                    BrokerError::conflict("topic_exists", format!("topic {n:?} already exists"))
                }
                IndexError::TooManyTopics(n) => BrokerError::conflict(
                    "too_many_topics",
                    format!("the agent's limit of {n} topics is reached"),
                ),
                other => BrokerError::index(&other),
            })?;
        self.topics.invalidate(&t.name).await;
        Ok(t)
    }

    pub async fn list_topics(&self) -> BrokerResult<Vec<TopicMeta>> {
        self.index
            .list_topics()
            .await
            .map_err(|e| BrokerError::index(&e))
    }

    /// A topic and its partitions' start and end offsets (read from the index, not cached).
    pub async fn describe_topic(&self, raw: &str) -> BrokerResult<TopicDescription> {
        let name = topic_name(raw)?;
        let topic = self
            .index
            .get_topic(name.as_str())
            .await
            .map_err(|e| BrokerError::index(&e))?
            .ok_or_else(|| BrokerError::topic_not_found(raw))?;
        let partitions = self
            .index
            .partition_offsets(topic.id)
            .await
            .map_err(|e| BrokerError::index(&e))?;
        Ok(TopicDescription { topic, partitions })
    }

    /// Delete a topic and all its records (`topic_not_found` if there was none).
    pub async fn delete_topic(&self, raw: &str) -> BrokerResult<()> {
        let name = topic_name(raw)?;
        let existed = self
            .index
            .delete_topic(name.as_str())
            .await
            .map_err(|e| BrokerError::index(&e))?;
        self.topics.invalidate(name.as_str()).await;
        if existed {
            Ok(())
        } else {
            Err(BrokerError::topic_not_found(raw))
        }
    }
}
