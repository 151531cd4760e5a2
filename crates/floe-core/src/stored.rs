//! The stored form of consumer-state blobs (group and queue state in the index): JSON with
//! a `format` number, so that the layout can evolve and an agent never misreads a blob
//! written by a newer one.
//!
//! - format 0: the layout before versioning (no `format` field); decoded as format 1,
//!   which has the same fields.
//! - format 1: the state's fields plus `"format": 1`.
//! - format 2: as 1, but a queue partition's `records` are ranges of consecutive offsets
//!   sharing one delivery (`[{"from", "to", "count", "state"}]`) instead of a map with one
//!   entry per offset. Group state is unchanged.
//!
//! Golden files in `tests/golden/` pin what each format looks like.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format this build writes.
pub const FORMAT: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("stored state is not a JSON object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored state is not a JSON object")]
    NotObject,
    #[error(
        "stored state has format {0}; this build reads formats 0..={FORMAT} (written by a newer Floe?)"
    )]
    TooNew(u64),
    #[error("stored state has an invalid format field")]
    BadFormat,
}

#[derive(Serialize)]
struct Envelope<'a, S> {
    format: u64,
    #[serde(flatten)]
    state: &'a S,
}

/// Encode in the current format.
pub fn encode<S: Serialize>(state: &S) -> Result<Vec<u8>, StoredError> {
    Ok(serde_json::to_vec(&Envelope {
        format: FORMAT,
        state,
    })?)
}

/// Decode any format this build knows.
pub fn decode<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, StoredError> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
    let obj = v.as_object_mut().ok_or(StoredError::NotObject)?;
    let format = match obj.remove("format") {
        None => 0,
        Some(f) => f.as_u64().ok_or(StoredError::BadFormat)?,
    };
    if format > FORMAT {
        return Err(StoredError::TooNew(format));
    }
    Ok(serde_json::from_value(v)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::GroupState;
    use crate::share::SharePartition;

    fn golden(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Blobs written before versioning (format 0), by format 1 and by format 2 all decode,
    /// to the same state; re-encoding writes the current format as the golden file.
    #[test]
    fn golden_group_state_decodes_in_every_format() {
        let v0: GroupState = decode(&golden("group_v0.json")).unwrap();
        let v1: GroupState = decode(&golden("group_v1.json")).unwrap();
        let v2: GroupState = decode(&golden("group_v2.json")).unwrap();
        assert_eq!(v0, v1);
        assert_eq!(v1, v2);
        assert_eq!(v1.generation, 3);
        assert_eq!(v1.offsets.get(&1), Some(&42));
        let again = encode(&v1).unwrap();
        let golden_v2: serde_json::Value =
            serde_json::from_slice(&golden("group_v2.json")).unwrap();
        let again: serde_json::Value = serde_json::from_slice(&again).unwrap();
        assert_eq!(again, golden_v2);
    }

    #[test]
    fn golden_share_state_decodes_in_every_format() {
        let v0: SharePartition = decode(&golden("share_v0.json")).unwrap();
        let v1: SharePartition = decode(&golden("share_v1.json")).unwrap();
        let v2: SharePartition = decode(&golden("share_v2.json")).unwrap();
        assert_eq!(v0, v1);
        assert_eq!(v1, v2);
        assert_eq!((v1.start, v1.next), (5, 9));
        assert_eq!(v1.records.len(), 3);
        let again: serde_json::Value = serde_json::from_slice(&encode(&v1).unwrap()).unwrap();
        let golden_v2: serde_json::Value =
            serde_json::from_slice(&golden("share_v2.json")).unwrap();
        assert_eq!(again, golden_v2);
    }

    #[test]
    fn newer_formats_are_refused_not_misread() {
        let e = decode::<GroupState>(
            br#"{"format": 3, "generation": 1, "members": {}, "offsets": {}}"#,
        )
        .unwrap_err();
        assert!(matches!(e, StoredError::TooNew(3)), "{e}");
        assert!(matches!(
            decode::<GroupState>(b"[]"),
            Err(StoredError::NotObject)
        ));
        assert!(matches!(
            decode::<GroupState>(br#"{"format": "x"}"#),
            Err(StoredError::BadFormat)
        ));
    }
}
