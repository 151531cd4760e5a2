//! Names and partitions as a front end passes them (text), validated.

use floe_core::TopicName;
use floe_index::TopicMeta;

use crate::error::{BrokerError, BrokerResult};

pub(crate) fn topic_name(raw: &str) -> BrokerResult<TopicName> {
    TopicName::new(raw).map_err(|e| BrokerError::invalid("invalid_topic_name", e.to_string()))
}

/// Group and member names follow the topic-name rules (`[A-Za-z0-9._-]`, 1–249).
pub(crate) fn valid_name(what: &'static str, raw: &str) -> BrokerResult<String> {
    TopicName::new(raw).map(|n| n.to_string()).map_err(|e| {
        BrokerError::invalid(
            if what == "group" {
                "invalid_group_name"
            } else {
                "invalid_member_id"
            },
            format!(
                "{what} name: {}",
                e.to_string().replace("topic name", "name")
            ),
        )
    })
}

/// A partition of `topic` given as text (`invalid_partition` when it does not exist).
pub(crate) fn partition_of(topic: &TopicMeta, part: &str) -> BrokerResult<u32> {
    part.parse::<u32>()
        .ok()
        .filter(|p| *p < topic.partitions)
        .ok_or_else(|| {
            BrokerError::invalid(
                "invalid_partition",
                format!(
                    "partition {part:?} does not exist; topic {:?} has partitions 0..{}",
                    topic.name, topic.partitions
                ),
            )
        })
}
