//! Idempotent produce with an `Idempotency-Key` (RFC 0003): the decisions both index
//! backends take inside their transactions, kept pure here.
//!
//! A key (per topic) is first *begun* by one produce attempt: a pending row with that
//! attempt's token, a fingerprint of the request and a lease that ends at the attempt's
//! deadline. The index transaction that commits the attempt's records marks the row done
//! with the offsets it assigned. A later request with the same key then gets those offsets
//! back (replay) if its fingerprint matches, 422 if not, and 409 while an attempt holds a
//! live lease. A pending row whose lease passed belongs to an attempt that can no longer
//! commit (the index refuses commits past their deadline), so a new attempt takes it over.

use crate::ipc::IncomingRecord;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// A key is 1..=255 visible ASCII characters (`!`..=`~`).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} bytes, got {}",
            key.len()
        ));
    }
    if let Some(c) = key.chars().find(|c| !('!'..='~').contains(c)) {
        return Err(format!(
            "Idempotency-Key must be visible ASCII characters, found {c:?}"
        ));
    }
    Ok(())
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn field(h: u64, bytes: &[u8]) -> u64 {
    // Length-prefixed, so that field boundaries cannot shift between requests.
    fnv(fnv(h, &(bytes.len() as u64).to_le_bytes()), bytes)
}

/// A stable fingerprint of a produce request as the client sent it (requested partition,
/// key, value, headers of every record, in order): equal requests give equal fingerprints
/// on every agent and across restarts. 64-bit FNV-1a: it tells a reused key from a retry,
/// it is not a defence against an adversary choosing colliding bodies for its own key.
pub fn fingerprint(topic: &str, records: &[IncomingRecord]) -> u64 {
    let mut h = field(FNV_OFFSET, topic.as_bytes());
    h = field(h, &(records.len() as u64).to_le_bytes());
    for r in records {
        h = field(h, &r.partition.unwrap_or(-1).to_le_bytes());
        h = match &r.key {
            Some(k) => field(field(h, b"k"), k),
            None => field(h, b"-"),
        };
        h = field(h, &r.value);
        h = field(h, &(r.headers.len() as u64).to_le_bytes());
        for (k, v) in &r.headers {
            h = field(field(h, k.as_bytes()), v.as_bytes());
        }
    }
    h
}

/// What the index holds for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub fingerprint: u64,
    pub done: bool,
    pub lease_until_ms: i64,
    pub expires_ms: i64,
}

/// The decision on a new attempt with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// No live row: write a pending row for this attempt (insert, or replace a dead one).
    Start,
    /// The key completed with the same request: answer with the stored offsets.
    Replay,
    /// The key was used for another request.
    Mismatch,
    /// Another attempt holds the key and may still commit.
    InFlight,
}

/// Decide an attempt with `fingerprint` at `now_ms` against what is stored.
pub fn begin(stored: Option<&Stored>, fingerprint: u64, now_ms: i64) -> Begin {
    match stored {
        None => Begin::Start,
        Some(s) if s.expires_ms <= now_ms => Begin::Start,
        Some(s) if s.done && s.fingerprint == fingerprint => Begin::Replay,
        Some(s) if s.done => Begin::Mismatch,
        // Pending and its attempt can no longer commit: take it over.
        Some(s) if s.lease_until_ms <= now_ms => Begin::Start,
        Some(s) if s.fingerprint != fingerprint => Begin::Mismatch,
        Some(_) => Begin::InFlight,
    }
}

/// The offsets of one request from where its records went (run index, position in the
/// run) and each run's committed (partition, base offset); `None` if a run of the request
/// was not committed (its topic was deleted meanwhile).
pub fn offsets_for(places: &[(u32, u64)], runs: &[Option<(u32, u64)>]) -> Option<Vec<(u32, u64)>> {
    places
        .iter()
        .map(|(run, pos)| {
            runs.get(*run as usize)
                .copied()
                .flatten()
                .map(|(p, base)| (p, base + pos))
        })
        .collect()
}

/// The stored answer: `[[partition, offset], ...]`.
pub fn encode_offsets(offsets: &[(u32, u64)]) -> String {
    serde_json::to_string(offsets).unwrap_or_else(|_| "[]".into())
}

pub fn decode_offsets(s: &str) -> Result<Vec<(u32, u64)>, serde_json::Error> {
    serde_json::from_str(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(v: &str) -> IncomingRecord {
        IncomingRecord {
            key: None,
            value: Bytes::from(v.to_string()),
            headers: Vec::new(),
            partition: None,
        }
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255_bytes() {
        assert!(check_key("order-42/retry_1").is_ok());
        assert!(check_key(&"k".repeat(255)).is_ok());
        for bad in ["", " x", "a b", "é", "x\n"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"k".repeat(256)).is_err());
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = fingerprint("t", &[rec("ab"), rec("c")]);
        assert_eq!(a, fingerprint("t", &[rec("ab"), rec("c")]));
        assert_ne!(a, fingerprint("t", &[rec("a"), rec("bc")]), "boundaries");
        assert_ne!(a, fingerprint("u", &[rec("ab"), rec("c")]), "topic");
        let mut keyed = rec("ab");
        keyed.key = Some(Bytes::from_static(b""));
        assert_ne!(
            fingerprint("t", &[rec("ab")]),
            fingerprint("t", &[keyed]),
            "no key vs empty key"
        );
        let mut placed = rec("ab");
        placed.partition = Some(0);
        assert_ne!(fingerprint("t", &[rec("ab")]), fingerprint("t", &[placed]));
    }

    #[test]
    fn begin_decides_every_case() {
        let s = |done, fp, lease, exp| Stored {
            fingerprint: fp,
            done,
            lease_until_ms: lease,
            expires_ms: exp,
        };
        assert_eq!(begin(None, 1, 0), Begin::Start);
        assert_eq!(begin(Some(&s(true, 1, 0, 100)), 1, 50), Begin::Replay);
        assert_eq!(begin(Some(&s(true, 1, 0, 100)), 2, 50), Begin::Mismatch);
        assert_eq!(
            begin(Some(&s(true, 1, 0, 100)), 2, 100),
            Begin::Start,
            "expired"
        );
        assert_eq!(begin(Some(&s(false, 1, 60, 100)), 1, 50), Begin::InFlight);
        assert_eq!(begin(Some(&s(false, 1, 60, 100)), 2, 50), Begin::Mismatch);
        assert_eq!(
            begin(Some(&s(false, 1, 60, 100)), 1, 60),
            Begin::Start,
            "lease over"
        );
    }

    #[test]
    fn offsets_follow_places_and_refuse_lost_runs() {
        let runs = [Some((0, 10)), Some((3, 0)), None];
        assert_eq!(
            offsets_for(&[(0, 0), (1, 0), (0, 1)], &runs),
            Some(vec![(0, 10), (3, 0), (0, 11)])
        );
        assert_eq!(offsets_for(&[(2, 0)], &runs), None);
        assert_eq!(offsets_for(&[(7, 0)], &runs), None);
        let enc = encode_offsets(&[(1, 2), (3, 4)]);
        assert_eq!(decode_offsets(&enc).unwrap(), vec![(1, 2), (3, 4)]);
    }
}
