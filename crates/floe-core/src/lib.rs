//! Core types of Floe: records, validated names, limits, Kafka-compatible partitioner,
//! the Parquet segment format, pure log planning and the consumer state machines.
//!
//! Nothing in this crate does I/O; everything here is pure and unit-testable.

pub mod clock;
pub mod compaction;
pub mod group;
pub mod idempotency;
pub mod ipc;
pub mod limits;
pub mod log;
pub mod name;
pub mod partitioner;
pub mod producer;
pub mod record;
pub mod segment;
pub mod share;
pub mod stored;
pub mod txn;

pub use limits::Limits;
pub use name::{NameError, TopicName};
pub use record::Record;
