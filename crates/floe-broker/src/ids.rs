//! Every identifier the engine makes, in one place: time-ordered ones take their time
//! from the engine's [`Clock`](floe_core::clock::Clock) (so controlled-time tests control
//! them too), the random part from the OS.

/// A UUIDv7 whose time is `now_ms` (random in its other 74 bits).
pub(crate) fn uuid_v7_at(now_ms: i64) -> uuid::Uuid {
    let ms = u64::try_from(now_ms).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        u32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    );
    uuid::Uuid::new_v7(ts)
}

/// The Unix time in ms of a UUIDv7 in its text form; `None` for anything else.
pub(crate) fn uuid_v7_ms(text: &str) -> Option<i64> {
    let id = uuid::Uuid::parse_str(text).ok()?;
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    i64::try_from(secs * 1000 + u64::from(nanos) / 1_000_000).ok()
}

/// A consumer-group member id made by the agent (`m-<uuidv7>`).
pub(crate) fn member_id(now_ms: i64) -> String {
    format!("m-{}", uuid_v7_at(now_ms).simple())
}

/// The identity of one produce attempt holding an idempotency key.
pub(crate) fn attempt_token() -> i64 {
    rand::random::<i64>()
}
