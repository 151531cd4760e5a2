//! Consumer state (groups and queues) in the index, changed by optimistic concurrency:
//! load the blob, apply a pure change from `floe_core::{group, share}`, store it only if
//! nobody else stored a newer version meanwhile; otherwise retry on the fresh state.
//! This is what makes any agent able to serve any consumer.

use std::sync::Arc;
use std::time::Duration;

use floe_index::{Index, StateKey};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BrokerError, ErrorKind};
use crate::metrics::Metrics;

/// Conflicting writers retry this many times before the request gets a 503.
const MAX_ATTEMPTS: u32 = 64;

fn decode<S: DeserializeOwned>(key: &StateKey, data: &[u8]) -> Result<S, BrokerError> {
    floe_core::stored::decode(data).map_err(|e| {
        tracing::error!(?key, error = %e, "consumer state unreadable");
        BrokerError::new(
            ErrorKind::Internal,
            "state_corrupt",
            format!(
                "stored consumer state for {:?} is unreadable: {e}",
                key.group
            ),
        )
    })
}

/// The stored state with its version, or `None` when nothing is stored.
pub async fn load_versioned<S: DeserializeOwned>(
    index: &Arc<dyn Index>,
    key: &StateKey,
) -> Result<Option<(S, i64)>, BrokerError> {
    match index
        .load_state(key)
        .await
        .map_err(|e| BrokerError::index(&e))?
    {
        Some(v) => decode(key, &v.data).map(|s| Some((s, v.version))),
        None => Ok(None),
    }
}

/// The state's invariants (`GroupState::check`, `SharePartition::check`), asserted before
/// every store: a change that would break one is refused (500 `invariant_violated`) and
/// nothing is written, rather than persisting a state that later operations misread.
pub fn checked<S>(
    key: &StateKey,
    state: &S,
    check: impl Fn(&S) -> Result<(), String>,
) -> Result<(), BrokerError> {
    check(state).map_err(|broken| {
        tracing::error!(
            ?key,
            broken,
            "consumer state invariant violated; not stored"
        );
        BrokerError::new(
            ErrorKind::Internal,
            "invariant_violated",
            format!(
                "refusing to store consumer state of {:?}: {broken}",
                key.group
            ),
        )
    })
}

/// The stored form (`floe_core::stored`: JSON with a format number).
pub fn encode<S: Serialize>(state: &S) -> Result<Vec<u8>, BrokerError> {
    floe_core::stored::encode(state)
        .map_err(|e| BrokerError::new(ErrorKind::Internal, "state_encode_failed", e.to_string()))
}

/// The current state, or `None` when nothing is stored.
pub async fn load<S: DeserializeOwned>(
    index: &Arc<dyn Index>,
    key: &StateKey,
) -> Result<Option<S>, BrokerError> {
    match index
        .load_state(key)
        .await
        .map_err(|e| BrokerError::index(&e))?
    {
        Some(v) => decode(key, &v.data).map(Some),
        None => Ok(None),
    }
}

/// Apply `change` to the stored state (or to `init()` when none is stored) and store the
/// result. `change` returns its answer and whether it changed the state; it may run more
/// than once (on conflicts), always on the latest state, so it must not have side effects.
/// An `Err` from `change` stores nothing.
pub async fn update<S, R>(
    index: &Arc<dyn Index>,
    metrics: &Metrics,
    key: &StateKey,
    init: impl Fn() -> S,
    check: impl Fn(&S) -> Result<(), String>,
    mut change: impl FnMut(&mut S) -> Result<(R, bool), BrokerError>,
) -> Result<R, BrokerError>
where
    S: Serialize + DeserializeOwned,
{
    let mut insert_refused = false;
    for attempt in 0..MAX_ATTEMPTS {
        let current = index
            .load_state(key)
            .await
            .map_err(|e| BrokerError::index(&e))?;
        if insert_refused && current.is_none() {
            // The first write of a state is refused only when its topic no longer exists
            // (a lost insert race leaves the winner's state behind).
            return Err(BrokerError::new(
                ErrorKind::NotFound,
                "topic_not_found",
                "the topic was deleted",
            ));
        }
        let (mut state, version) = match &current {
            Some(v) => (decode::<S>(key, &v.data)?, Some(v.version)),
            None => (init(), None),
        };
        let (answer, changed) = change(&mut state)?;
        if !changed {
            return Ok(answer);
        }
        checked(key, &state, &check)?;
        let data = encode(&state)?;
        if index
            .store_state(key, version, data)
            .await
            .map_err(|e| BrokerError::index(&e))?
        {
            return Ok(answer);
        }
        insert_refused = version.is_none();
        metrics.state_conflicts.inc();
        // Back off a little, with jitter, so that competing writers spread out.
        let jitter = rand::random::<u64>() % 1000;
        let base = 200 * u64::from(attempt.min(10));
        tokio::time::sleep(Duration::from_micros(base + jitter)).await;
    }
    Err(BrokerError::unavailable(
        "contention",
        format!(
            "consumer state of {:?} changed concurrently {MAX_ATTEMPTS} times in a row; retry",
            key.group
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_core::share::SharePartition;
    use floe_index::StateKind;

    #[test]
    fn a_state_that_breaks_its_invariants_is_refused() {
        let key = StateKey {
            kind: StateKind::Share,
            topic_id: 1,
            group: "g".into(),
            partition: 0,
        };
        let ok = SharePartition::starting_at(3);
        assert!(checked(&key, &ok, |s: &SharePartition| s.check(u64::MAX)).is_ok());
        let broken = SharePartition {
            start: 5,
            next: 2,
            ..SharePartition::default()
        };
        let e = checked(&key, &broken, |s: &SharePartition| s.check(u64::MAX)).unwrap_err();
        assert_eq!(e.code, "invariant_violated");
        assert!(e.message.contains("start 5 > next 2"), "{}", e.message);
    }
}
