//! The engine's one error type: a [`ErrorKind`] that a front end maps to its own status
//! (HTTP: 400/404/409/413/416/500/503), a stable snake_case `code` clients match on, and
//! a message for humans. Nothing here knows about HTTP.

use floe_index::IndexError;

/// What kind of failure, independent of any protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something impossible (HTTP 400).
    Invalid,
    /// A named thing does not exist (HTTP 404).
    NotFound,
    /// The request conflicts with the current state: fenced member, exists, bad stored
    /// config (HTTP 409).
    Conflict,
    /// The request exceeds a configured limit (HTTP 413).
    TooLarge,
    /// An offset outside the log (HTTP 416).
    OutOfRange,
    /// Well-formed but not acceptable in the current state: an idempotency key reused for
    /// a different request (HTTP 422).
    Unprocessable,
    /// A dependency (bucket, index) failed or a deadline passed; retry later (HTTP 503).
    Unavailable,
    /// A bug or corrupt data: an invariant does not hold (HTTP 500).
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BrokerError {
    pub kind: ErrorKind,
    /// Stable, snake_case; part of the API contract.
    pub code: &'static str,
    pub message: String,
}

pub type BrokerResult<T> = Result<T, BrokerError>;

impl BrokerError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, code, message)
    }
    pub fn internal(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, code, message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, message)
    }
    pub fn topic_not_found(topic: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            "topic_not_found",
            format!("topic {topic:?} does not exist"),
        )
    }
    /// An offset beyond the end of a partition's log.
    pub fn out_of_range(offset: u64, partition: u32, end: u64) -> Self {
        Self::new(
            ErrorKind::OutOfRange,
            "offset_out_of_range",
            format!(
                "offset {offset} is beyond the end of partition {partition} (end_offset {end})"
            ),
        )
    }
    /// An offset below the start of a partition's log (dropped by retention).
    pub fn below_start(offset: u64, partition: u32, start: u64) -> Self {
        Self::new(
            ErrorKind::OutOfRange,
            "offset_out_of_range",
            format!(
                "offset {offset} is below the start of partition {partition} (start_offset {start}): older records were dropped by retention"
            ),
        )
    }
    /// An index failure: a passed deadline and unreachable index are retryable, a lost
    /// compare-and-swap inside a commit is a conflict.
    pub fn index(e: &IndexError) -> Self {
        tracing::warn!(error = %e, "index error");
        match e {
            IndexError::DeadlineExceeded { .. } => Self::unavailable(
                "deadline_exceeded",
                format!(
                    "the request's deadline passed before the index commit; nothing was committed ({e})"
                ),
            ),
            IndexError::StateConflict(_) => Self::conflict("state_conflict", e.to_string()),
            IndexError::SegmentTooOld { .. } => Self::unavailable(
                "segment_expired",
                format!(
                    "the segment waited too long for its commit; nothing was committed, retry ({e})"
                ),
            ),
            IndexError::IdempotencyLost(_) => Self::unavailable("idempotency_lost", e.to_string()),
            IndexError::Txn(t) => Self::txn(t),
            _ => Self::unavailable("index_unavailable", format!("metadata index error: {e}")),
        }
    }
}

impl BrokerError {
    /// A refused transaction request (RFC 0005): nothing changed.
    pub fn txn(t: &floe_index::TxnError) -> Self {
        use floe_index::TxnError as T;
        let code = match t {
            T::UnknownProducer(_) => "unknown_producer",
            T::Fenced { .. } => "producer_fenced",
            T::AlreadyOpen { .. } => "transaction_open",
            T::Unknown { .. } => {
                return Self::new(
                    ErrorKind::NotFound,
                    "transaction_not_found",
                    format!("{t}; nothing changed"),
                );
            }
            T::Ended { state, .. } => match state {
                floe_core::txn::TxnState::Committed => "transaction_committed",
                floe_core::txn::TxnState::Aborted => "transaction_aborted",
                floe_core::txn::TxnState::Open => "transaction_open",
            },
            T::Offsets(_) => "transaction_offsets_fenced",
        };
        Self::conflict(code, format!("{t}; nothing changed"))
    }
}

impl From<IndexError> for BrokerError {
    fn from(e: IndexError) -> Self {
        Self::index(&e)
    }
}
