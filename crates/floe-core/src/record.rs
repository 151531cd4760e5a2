//! A record as the agent buffers it: owned, `Bytes`-backed, no per-field copies after parsing.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    /// Header names and values, in the order given.
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// Bytes this record counts against record, request and buffer limits.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}
